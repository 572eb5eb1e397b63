"""The device's seam to what a port provides natively: hashes, randomness,
signatures, the link's X25519 / AES-CCM-8, and the zstd decoder.

On CPython (the simulator) these come from hashlib, cryptography and
zstandard. Where those are missing (MicroPython) the primitives come from
``device_fw.mpcrypto``, pure Python over ``cryptolib`` AES and ``hashlib``;
zstd has no MicroPython decoder, so such a port does not announce it
(``codecs.full_codecs``) and refuses it before anything is erased. Nothing
else in device_fw imports these libraries.
"""

import hashlib
import os


def sha256(data=b""):
    return hashlib.sha256(data)


try:
    _urandom = os.urandom
except AttributeError:  # pragma: no cover - a MicroPython build without os.urandom
    _urandom = None


def random_bytes(n):
    if _urandom is not None:
        return _urandom(n)
    import random  # pragma: no cover

    return bytes(random.getrandbits(8) for _ in range(n))  # pragma: no cover


def _mpcrypto(name):
    """``name`` from device_fw.mpcrypto (the pure-Python primitives), or None."""
    try:
        from . import mpcrypto
    except ImportError:
        return None
    return getattr(mpcrypto, name, None)


try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # a port without cryptography (MicroPython)
    Ed25519PublicKey = None
_mp_ed25519 = _mpcrypto("ed25519_verify") if Ed25519PublicKey is None else None
HAVE_ED25519 = Ed25519PublicKey is not None or _mp_ed25519 is not None


def ed25519_verify(public_raw, signature, message):
    """True if ``signature`` is a valid Ed25519 signature of ``message``.

    A port without any verifier returns False: nothing it cannot check is
    installed (the installer says why before touching flash)."""
    if Ed25519PublicKey is None:
        if _mp_ed25519 is None:
            return False
        return bool(_mp_ed25519(bytes(public_raw), bytes(signature), bytes(message)))
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_raw)).verify(
            bytes(signature), bytes(message)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


ZSTD_AVAILABLE = True
try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover
    ZSTD_AVAILABLE = False


def zstd_decompress(data, expected_size, max_window_log):
    """Decode one zstd frame of exactly ``expected_size`` bytes.

    The decoder refuses frames whose window exceeds 2**max_window_log, the RAM
    bound the manifest promised. Raises ValueError on any failure.
    """
    if not ZSTD_AVAILABLE:  # never reached: codecs.py does not register zstd then
        raise ValueError("this port has no zstd decoder")
    try:
        params = _zstd.get_frame_parameters(data)
    except _zstd.ZstdError as exc:
        raise ValueError("bad zstd frame header: %s" % exc)
    if params.window_size > (1 << max_window_log):
        raise ValueError("frame window %d exceeds 2**%d" % (params.window_size, max_window_log))
    if params.content_size != expected_size:
        raise ValueError(
            "frame declares %d bytes, expected %d" % (params.content_size, expected_size)
        )
    # One-shot decode straight into a buffer of the announced size: the
    # streaming object would allocate a second output buffer and copy. A
    # segment is exactly one frame (SPEC section 4): bytes after its end are
    # refused (DECODE_ERROR), as the host's reference decoder refuses them; a
    # port's own decoder must do the same.
    dctx = _zstd.ZstdDecompressor(max_window_size=1 << max(max_window_log, 10))
    try:
        out = dctx.decompress(data, max_output_size=expected_size, allow_extra_data=False)
    except _zstd.ZstdError as exc:
        raise ValueError("zstd: %s" % exc)
    if len(out) != expected_size:
        raise ValueError("decoded %d bytes, expected %d" % (len(out), expected_size))
    return out


def open_serial(url, baudrate=115200, timeout=0.05):
    """The device's UART: any pyserial URL (a pty path, socket://, loop://)."""
    import serial

    return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout)


# --- secure link (protocol/SPEC.md section 9): X25519, HMAC-SHA256, AES-128-CCM-8 -------------

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM
except ImportError:  # pragma: no cover - a port without cryptography
    X25519PrivateKey = None

try:
    import hmac as _hmac
except ImportError:  # pragma: no cover - MicroPython: HMAC below, over hashlib
    _hmac = None


_mp_x25519 = _mpcrypto("x25519") if X25519PrivateKey is None else None
_mp_x25519_public = _mpcrypto("x25519_public") if X25519PrivateKey is None else None
_mp_ccm_encrypt = _mpcrypto("aes_ccm8_encrypt") if X25519PrivateKey is None else None
_mp_ccm_decrypt = _mpcrypto("aes_ccm8_decrypt") if X25519PrivateKey is None else None
HAVE_SECURE_LINK = X25519PrivateKey is not None or (
    _mp_x25519 is not None and _mp_ccm_encrypt is not None
)


def _missing(what):
    # A DeviceError, not NotImplementedError: the secure endpoint turns it
    # into a refused handshake with a reason, nothing crashes.
    from .reasons import BAD_KEY, DeviceError

    return DeviceError(BAD_KEY, "this port has no %s" % what)


def x25519(private_raw, public_raw):
    """X25519 (RFC 7748) of a 32-byte private and a 32-byte public key.

    Raises ValueError when the result is all zero (a low-order public point);
    a port whose library does not check may return the zeros, the caller
    checks again.
    """
    if X25519PrivateKey is None:
        if _mp_x25519 is None:
            raise _missing("X25519")
        return _mp_x25519(bytes(private_raw), bytes(public_raw))
    private = X25519PrivateKey.from_private_bytes(bytes(private_raw))
    return private.exchange(X25519PublicKey.from_public_bytes(bytes(public_raw)))


def x25519_public(private_raw):
    """The 32-byte public key of a 32-byte X25519 private key."""
    if X25519PrivateKey is None:
        if _mp_x25519_public is None:
            raise _missing("X25519")
        return _mp_x25519_public(bytes(private_raw))
    public = X25519PrivateKey.from_private_bytes(bytes(private_raw)).public_key()
    return public.public_bytes_raw()


def hmac_sha256(key, data):
    """HMAC-SHA256 (RFC 2104) of ``data`` under ``key``: 32 bytes."""
    if _hmac is None:  # MicroPython: no hmac module
        return hmac_sha256_generic(key, data)
    return _hmac.digest(bytes(key), bytes(data), "sha256")


def hmac_sha256_generic(key, data):
    """HMAC-SHA256 over :func:`sha256` alone, for ports without an hmac module."""
    key = bytes(key)
    if len(key) > 64:
        key = sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = sha256(bytes(b ^ 0x36 for b in key) + bytes(data)).digest()
    return sha256(bytes(b ^ 0x5C for b in key) + inner).digest()


def aes_ccm8_encrypt(key, nonce, plaintext, ad):
    """AES-CCM (RFC 3610), 16-byte key, 13-byte nonce, 8-byte tag: ciphertext || tag."""
    if X25519PrivateKey is None:
        if _mp_ccm_encrypt is None:
            raise _missing("AES-CCM")
        return _mp_ccm_encrypt(bytes(key), bytes(nonce), bytes(plaintext), bytes(ad))
    return AESCCM(bytes(key), tag_length=8).encrypt(bytes(nonce), bytes(plaintext), bytes(ad))


def aes_ccm8_decrypt(key, nonce, data, ad):
    """The plaintext of ``ciphertext || tag``, or None if the tag does not verify."""
    if X25519PrivateKey is None:
        if _mp_ccm_decrypt is None:
            raise _missing("AES-CCM")
        try:
            return _mp_ccm_decrypt(bytes(key), bytes(nonce), data, bytes(ad))  # data: a view
        except ValueError:
            return None
    try:
        return AESCCM(bytes(key), tag_length=8).decrypt(bytes(nonce), bytes(data), bytes(ad))
    except InvalidTag:
        return None
