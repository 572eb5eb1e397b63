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
    # streaming object would allocate a second output buffer and copy. Bytes
    # after the frame end are not looked at; the segment's signed hash has
    # already fixed every byte, so only the signer could have put them there.
    dctx = _zstd.ZstdDecompressor(max_window_size=1 << max(max_window_log, 10))
    try:
        out = dctx.decompress(data, max_output_size=expected_size)
    except _zstd.ZstdError as exc:
        raise ValueError("zstd: %s" % exc)
    if len(out) != expected_size:
        raise ValueError("decoded %d bytes, expected %d" % (len(out), expected_size))
    return out
