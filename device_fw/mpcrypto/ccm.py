"""AES-128-CCM with an 8-byte tag (RFC 3610, NIST SP 800-38C), over any AES-ECB.

The block cipher is MicroPython's ``cryptolib.aes(key, 1)`` (ECB) where the
port has cryptolib, else :class:`aes.AES128` (plain Python, so CPython runs
this too). Where cryptolib exists its CBC mode (``aes(key, 2, iv)``, in every
cryptolib build alongside ECB) computes the CBC-MAC in one call; it is the
same cipher, and the per-block loop it replaces costs a Python XOR per block.

The nonce is 7..13 bytes (the link uses 13: a length field of 2 bytes, so
at most 65,535 bytes of plaintext); associated data up to 2**32 - 1 bytes.
Data is encrypted in chunks of ``_CHUNK`` bytes, so the RAM a call needs
beyond its input and output is bounded whatever the frame size.
"""

try:
    import cryptolib as _cryptolib
except ImportError:
    _cryptolib = None

from . import aes as _aes

TAG_SIZE = 8
_CHUNK = 256  # bytes of keystream per ECB call (16 blocks)
_ZERO_IV = bytes(16)


def _ecb(key):
    if _cryptolib is not None:
        return _cryptolib.aes(key, 1)
    return _aes.AES128(key)


def _cbc_mac(key, ecb, head, data):
    """The last block of AES-CBC with a zero IV over ``head`` (whole blocks)
    then ``data`` zero-padded to whole blocks, in pieces of ``_CHUNK`` bytes:
    no copy of the frame (a split MicroPython heap may hold no 1 KB block)."""
    if _cryptolib is not None:
        cbc = _cryptolib.aes(key, 2, _ZERO_IV)  # chains across calls
        last = cbc.encrypt(head)
        for at in range(0, len(data), _CHUNK):
            piece = data[at : at + _CHUNK]
            if len(piece) % 16:
                piece = bytes(piece) + bytes(-len(piece) % 16)
            last = cbc.encrypt(piece)
        return last[-16:]
    x = 0
    for part in (head, data):
        for at in range(0, len(part), 16):
            block = part[at : at + 16]
            if len(block) < 16:
                block = bytes(block) + bytes(16 - len(block))
            x ^= int.from_bytes(block, "big")
            x = int.from_bytes(ecb.encrypt(x.to_bytes(16, "big")), "big")
    return x.to_bytes(16, "big")


def _pad(data):
    return data + bytes(-len(data) % 16)


def _check(key, nonce, length):
    key = bytes(key)
    nonce = bytes(nonce)
    if len(key) != 16:
        raise ValueError("AES-128-CCM keys are 16 bytes")
    if not 7 <= len(nonce) <= 13:
        raise ValueError("CCM nonces are 7 to 13 bytes")
    q = 15 - len(nonce)
    if length >= 1 << (8 * q):
        raise ValueError("CCM: %d bytes do not fit a %d-byte nonce" % (length, len(nonce)))
    return key, nonce, q


def _tag(key, ecb, nonce, q, plaintext, ad):
    """T, the CBC-MAC of B0 || encoded AD || plaintext (RFC 3610 section 2.2), 8 bytes."""
    flags = (0x40 if ad else 0) | (((TAG_SIZE - 2) // 2) << 3) | (q - 1)
    head = bytes([flags]) + nonce + len(plaintext).to_bytes(q, "big")
    if ad:
        n = len(ad)
        if n < 0xFF00:
            head += n.to_bytes(2, "big")
        elif n < 1 << 32:
            head += b"\xff\xfe" + n.to_bytes(4, "big")
        else:
            raise ValueError("CCM associated data too long")
        head = head + ad
    return _cbc_mac(key, ecb, _pad(head), plaintext)[:TAG_SIZE]


def _xor(a, b):
    """a XOR b for equal-length byte strings, via one int operation."""
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(n, "big")


def _ctr(ecb, nonce, q, data):
    """(data XOR S_1 S_2 ..., S_0): the counter-mode pass and the tag's key block."""
    prefix = bytes([q - 1]) + nonce
    s0 = ecb.encrypt(prefix + bytes(q))
    out = bytearray(len(data))
    counter = 1
    for at in range(0, len(data), _CHUNK):
        piece = data[at : at + _CHUNK]
        blocks = b""
        for _ in range((len(piece) + 15) // 16):
            blocks += prefix + counter.to_bytes(q, "big")
            counter += 1
        out[at : at + len(piece)] = _xor(piece, ecb.encrypt(blocks)[: len(piece)])
    return bytes(out), s0


def encrypt(key, nonce, plaintext, ad):
    """ciphertext || 8-byte tag."""
    plaintext = bytes(plaintext)
    ad = bytes(ad)
    key, nonce, q = _check(key, nonce, len(plaintext))
    ecb = _ecb(key)
    ciphertext, s0 = _ctr(ecb, nonce, q, plaintext)
    return ciphertext + _xor(_tag(key, ecb, nonce, q, plaintext, ad), s0[:TAG_SIZE])


def decrypt(key, nonce, data, ad):
    """The plaintext of ``ciphertext || tag``; ValueError if the tag does not verify.
    ``data`` is read through a view (any buffer), not copied."""
    data = memoryview(data)
    ad = bytes(ad)
    if len(data) < TAG_SIZE:
        raise ValueError("CCM: %d bytes are shorter than the tag" % len(data))
    key, nonce, q = _check(key, nonce, len(data) - TAG_SIZE)
    ecb = _ecb(key)
    plaintext, s0 = _ctr(ecb, nonce, q, data[: len(data) - TAG_SIZE])
    expected = _xor(_tag(key, ecb, nonce, q, plaintext, ad), s0[:TAG_SIZE])
    got = data[len(data) - TAG_SIZE :]
    diff = 0
    for i in range(TAG_SIZE):  # every byte, whatever the first difference
        diff |= expected[i] ^ got[i]
    if diff:
        raise ValueError("CCM: the tag does not verify")
    return plaintext
