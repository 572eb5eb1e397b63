"""X25519 (RFC 7748 section 5), in plain Python.

The Montgomery ladder of RFC 7748 on the u coordinate, with the RFC's
clamping of the scalar, the top bit of u masked and u >= p taken mod p (as
the RFC requires). As ``cryptography`` does, an all-zero shared secret (a
low-order public point) raises ValueError, and so do keys that are not 32
bytes; device_fw/secure.py checks for zeros again.

The swap is the RFC's masked cswap, so the ladder's branches do not depend on
the key; Python big ints still make no promise of constant time, which is the
limit of any interpreted port (the handshake rate limit in secure.py bounds
how many ladders an unauthenticated peer can have timed).
"""

P = 2**255 - 19
A24 = 121665
_U_MASK = (1 << 255) - 1
_BASE_U = (9).to_bytes(32, "little")


def _clamp(k):
    k = bytearray(k)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


def _ladder(k, u):
    x1 = u
    x2, z2 = 1, 0
    x3, z3 = u, 1
    swap = 0
    p = P
    for t in range(254, -1, -1):
        bit = (k >> t) & 1
        swap ^= bit
        mask = -swap  # 0 or all ones
        dummy = mask & (x2 ^ x3)
        x2 ^= dummy
        x3 ^= dummy
        dummy = mask & (z2 ^ z3)
        z2 ^= dummy
        z3 ^= dummy
        swap = bit
        a = x2 + z2
        aa = a * a % p
        b = x2 - z2
        bb = b * b % p
        e = aa - bb
        c = x3 + z3
        d = x3 - z3
        da = d * a % p
        cb = c * b % p
        x3 = da + cb
        x3 = x3 * x3 % p
        z3 = da - cb
        z3 = x1 * (z3 * z3 % p) % p
        x2 = aa * bb % p
        z2 = e * (aa + A24 * e) % p
    mask = -swap
    dummy = mask & (x2 ^ x3)
    x2 ^= dummy
    dummy = mask & (z2 ^ z3)
    z2 ^= dummy
    return x2 * pow(z2, p - 2, p) % p


def x25519(private_raw, public_raw):
    """The 32-byte shared secret of a private scalar and a peer's u coordinate.

    ValueError if either is not 32 bytes or the result is all zero.
    """
    k = bytes(private_raw)
    u = bytes(public_raw)
    if len(k) != 32 or len(u) != 32:
        raise ValueError("X25519 keys are 32 bytes")
    out = _ladder(_clamp(k), (int.from_bytes(u, "little") & _U_MASK) % P)
    if out == 0:
        raise ValueError("X25519: all-zero shared secret (low-order public key)")
    return out.to_bytes(32, "little")


def x25519_public(private_raw):
    """The public key (u coordinate) of a 32-byte private key: X25519(k, 9)."""
    return x25519(private_raw, _BASE_U)
