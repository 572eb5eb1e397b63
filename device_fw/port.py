"""The device's seam to what a port provides natively.

CPython (the simulator) uses hashlib, cryptography and zstandard; a MicroPython
build replaces this module with its own (hashlib is built in there, Ed25519
and zstd come from native modules). Nothing else in device_fw imports these
libraries, so porting means rewriting this file only.
"""

import hashlib
import os


def sha256(data=b""):
    return hashlib.sha256(data)


def random_bytes(n):
    return os.urandom(n)


try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover - a port without cryptography
    Ed25519PublicKey = None


def ed25519_verify(public_raw, signature, message):
    """True if ``signature`` is a valid Ed25519 signature of ``message``."""
    if Ed25519PublicKey is None:  # pragma: no cover
        raise NotImplementedError("this port has no Ed25519 verifier")
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
    if not ZSTD_AVAILABLE:  # pragma: no cover
        raise NotImplementedError("this port has no zstd decoder")
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


def x25519(private_raw, public_raw):
    """X25519 (RFC 7748) of a 32-byte private and a 32-byte public key.

    Raises ValueError when the result is all zero (a low-order public point);
    a port whose library does not check may return the zeros, the caller
    checks again.
    """
    if X25519PrivateKey is None:  # pragma: no cover
        raise NotImplementedError("this port has no X25519")
    private = X25519PrivateKey.from_private_bytes(bytes(private_raw))
    return private.exchange(X25519PublicKey.from_public_bytes(bytes(public_raw)))


def x25519_public(private_raw):
    """The 32-byte public key of a 32-byte X25519 private key."""
    if X25519PrivateKey is None:  # pragma: no cover
        raise NotImplementedError("this port has no X25519")
    public = X25519PrivateKey.from_private_bytes(bytes(private_raw)).public_key()
    return public.public_bytes_raw()


def hmac_sha256(key, data):
    """HMAC-SHA256 (RFC 2104) of ``data`` under ``key``: 32 bytes."""
    if _hmac is None:  # pragma: no cover - a port without the hmac module
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
    if X25519PrivateKey is None:  # pragma: no cover
        raise NotImplementedError("this port has no AES-CCM")
    return AESCCM(bytes(key), tag_length=8).encrypt(bytes(nonce), bytes(plaintext), bytes(ad))


def aes_ccm8_decrypt(key, nonce, data, ad):
    """The plaintext of ``ciphertext || tag``, or None if the tag does not verify."""
    if X25519PrivateKey is None:  # pragma: no cover
        raise NotImplementedError("this port has no AES-CCM")
    try:
        return AESCCM(bytes(key), tag_length=8).decrypt(bytes(nonce), bytes(data), bytes(ad))
    except InvalidTag:
        return None
