"""Ed25519 signature verification (RFC 8032 section 5.1.7), in plain Python.

Cofactorless, as OpenSSL (and so ``cryptography``) verifies: the signature
(R, S) of message M under key A is good when S < L and the canonical encoding
of [S]B - [k]A equals R, with k = SHA-512(R || A || M) mod L. Comparing the
encodings means a non-canonical or off-curve R is never accepted (the
encoder only writes canonical points). A is decoded strictly (RFC 8032
section 5.1.3): y >= p, x = 0 with the sign bit set, and y with no x on the
curve are refused. Points are in extended coordinates (X:Y:Z:T), x = X/Z,
y = Y/Z, x*y = T/Z, with the a = -1 formulas of RFC 8032 section 5.1.4.

Only public data goes through here, so nothing needs to be constant time.
"""

from . import sha512

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = 37095705934669439343138083508754565189542113879843219016388785533085940283555  # -121665/121666
D2 = (2 * D) % P
SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960  # 4/5
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202  # even root
BASE = (_BX, _BY, 1, (_BX * _BY) % P)
IDENTITY = (0, 1, 1, 0)


def _add(p1, p2):
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * D2 * t2 % P
    d = 2 * z1 * z2 % P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(p1):
    x1, y1, z1, _ = p1
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    s = x1 + y1
    e = h - s * s % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _negate(p1):
    x, y, z, t = p1
    return ((P - x) % P, y, z, (P - t) % P)


def _double_scalar(s, p1, k, p2):
    """[s]p1 + [k]p2 for s, k < 2**254: one doubling chain, two bits of each at a time.

    (Straus / Shamir with a joint 2-bit window: 15 table points, 127 additions
    at most, against some 190 one bit at a time.)
    """
    p1_2 = _double(p1)
    p2_2 = _double(p2)
    firsts = (None, p1, p1_2, _add(p1_2, p1))
    seconds = (None, p2, p2_2, _add(p2_2, p2))
    table = [None] * 16  # table[i + 4 * j] = [i]p1 + [j]p2
    for i in range(1, 4):
        table[i] = firsts[i]
        table[4 * i] = seconds[i]
        for j in range(1, 4):
            table[i + 4 * j] = _add(firsts[i], seconds[j])
    q = IDENTITY
    for i in range(252, -1, -2):  # bits 253..0 (MicroPython ints have no bit_length)
        q = _double(_double(q))
        sel = ((s >> i) & 3) | (((k >> i) & 3) << 2)
        if sel:
            q = _add(q, table[sel])
    return q


def encode_point(p1):
    x, y, z, _ = p1
    zinv = pow(z, P - 2, P)
    x = x * zinv % P
    y = y * zinv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def decode_point(raw):
    """The point of a 32-byte encoding, or None if it is not a canonical curve point."""
    if len(raw) != 32:
        return None
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    yy = y * y % P
    u = (yy - 1) % P
    v = (D * yy + 1) % P
    # x = sqrt(u/v) = u v^3 (u v^7)^((p-5)/8)   (RFC 8032 section 5.1.3)
    v3 = v * v % P * v % P
    x = u * v3 % P * pow(u * v3 % P * v3 % P * v % P, (P - 5) // 8, P) % P
    vxx = v * x % P * x % P
    if vxx != u:
        if vxx != (P - u) % P:
            return None
        x = x * SQRT_M1 % P
    if x == 0 and sign:
        return None
    if (x & 1) != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def verify(public_raw, signature, message):
    """True if ``signature`` (64 bytes) is an Ed25519 signature of ``message`` by ``public_raw``."""
    public = bytes(public_raw)
    sig = bytes(signature)
    if len(public) != 32 or len(sig) != 64:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= L:
        return False
    a = decode_point(public)
    if a is None:
        return False
    h = sha512.new(sig[:32])
    h.update(public)
    h.update(bytes(message))
    k = int.from_bytes(h.digest(), "little") % L
    return encode_point(_double_scalar(s, BASE, k, _negate(a))) == sig[:32]
