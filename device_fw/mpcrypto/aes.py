"""AES-128 encryption (FIPS-197) in plain Python, for ports without ``cryptolib``.

Only the forward cipher: CCM needs nothing else. :class:`AES128` has the
interface of MicroPython's ``cryptolib.aes(key, 1)`` (ECB) that the CCM code
uses: ``encrypt(data)`` on a whole number of 16-byte blocks. The state is
16 bytes in FIPS-197 order (byte ``4 * column + row``).
"""

SBOX = bytes.fromhex(
    "637c777bf26b6fc53001672bfed7ab76ca82c97dfa5947f0add4a2af9ca472c0"
    "b7fd9326363ff7cc34a5e5f171d8311504c723c31896059a071280e2eb27b275"
    "09832c1a1b6e5aa0523bd6b329e32f8453d100ed20fcb15b6acbbe394a4c58cf"
    "d0efaafb434d338545f9027f503c9fa851a3408f929d38f5bcb6da2110fff3d2"
    "cd0c13ec5f974417c4a77e3d645d197360814fdc222a908846eeb814de5e0bdb"
    "e0323a0a4906245cc2d3ac629195e479e7c8376d8dd54ea96c56f4ea657aae08"
    "ba78252e1ca6b4c6e8dd741f4bbd8b8a703eb5664803f60e613557b986c11d9e"
    "e1f8981169d98e949b1e87e9ce5528df8ca1890dbfe6426841992d0fb054bb16"
)
_RCON = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1B, 0x36)
# ShiftRows as a gather: new[i] = old[_SHIFT[i]]
_SHIFT = (0, 5, 10, 15, 4, 9, 14, 3, 8, 13, 2, 7, 12, 1, 6, 11)


def _xtime(b):
    b <<= 1
    return (b ^ 0x1B) & 0xFF if b & 0x100 else b


_XTIME = bytes(_xtime(b) for b in range(256))


def expand_key(key):
    """The 176 bytes of the 11 round keys of a 16-byte key (FIPS-197 section 5.2)."""
    key = bytes(key)
    if len(key) != 16:
        raise ValueError("AES-128 keys are 16 bytes")
    w = bytearray(176)
    w[:16] = key
    sbox = SBOX
    for i in range(4, 44):
        t0, t1, t2, t3 = w[4 * i - 4], w[4 * i - 3], w[4 * i - 2], w[4 * i - 1]
        if i % 4 == 0:
            t0, t1, t2, t3 = sbox[t1] ^ _RCON[i // 4 - 1], sbox[t2], sbox[t3], sbox[t0]
        j = 4 * i
        w[j] = w[j - 16] ^ t0
        w[j + 1] = w[j - 15] ^ t1
        w[j + 2] = w[j - 14] ^ t2
        w[j + 3] = w[j - 13] ^ t3
    return bytes(w)


def encrypt_block(round_keys, block, out, at):
    """AES-128 of the 16 bytes ``block`` into ``out[at:at + 16]``."""
    sbox = SBOX
    xt = _XTIME
    shift = _SHIFT
    s = bytearray(16)
    for i in range(16):
        s[i] = block[i] ^ round_keys[i]
    t = bytearray(16)
    for rnd in range(1, 10):
        for i in range(16):
            t[i] = sbox[s[shift[i]]]
        base = 16 * rnd
        for c in range(0, 16, 4):
            a0, a1, a2, a3 = t[c], t[c + 1], t[c + 2], t[c + 3]
            x = a0 ^ a1 ^ a2 ^ a3
            s[c] = a0 ^ x ^ xt[a0 ^ a1] ^ round_keys[base + c]
            s[c + 1] = a1 ^ x ^ xt[a1 ^ a2] ^ round_keys[base + c + 1]
            s[c + 2] = a2 ^ x ^ xt[a2 ^ a3] ^ round_keys[base + c + 2]
            s[c + 3] = a3 ^ x ^ xt[a3 ^ a0] ^ round_keys[base + c + 3]
    for i in range(16):
        out[at + i] = sbox[s[shift[i]]] ^ round_keys[160 + i]


class AES128:
    """ECB encryption under one key, like ``cryptolib.aes(key, 1)``."""

    def __init__(self, key):
        self._keys = expand_key(key)

    def encrypt(self, data):
        data = bytes(data)
        if len(data) % 16:
            raise ValueError("ECB data must be a whole number of 16-byte blocks")
        out = bytearray(len(data))
        for at in range(0, len(data), 16):
            encrypt_block(self._keys, data[at : at + 16], out, at)
        return bytes(out)
