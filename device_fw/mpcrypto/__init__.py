"""The device's cryptography in plain Python, for ports without native libraries.

MicroPython 1.29 has hashlib (md5, sha1, sha256) and cryptolib (AES) but no
Ed25519, X25519, SHA-512 or CCM; this package provides them with the
signatures of device_fw/port.py, so a MicroPython port's ``port`` module can
forward to it. It also runs under CPython (hashlib.sha512 and a plain-Python
AES stand in for what MicroPython lacks), where the tests hold it against
``cryptography`` and the RFC vectors. Nothing here imports otaferry.protocol.

- ``ed25519_verify(public_raw, signature, message) -> bool``: RFC 8032,
  cofactorless, S >= L and non-canonical public keys refused;
- ``x25519(private_raw, public_raw) -> bytes``, ``x25519_public(private_raw)``:
  RFC 7748; ValueError on an all-zero result or a key that is not 32 bytes;
- ``aes_ccm8_encrypt(key, nonce, plaintext, ad) -> ciphertext || tag`` and
  ``aes_ccm8_decrypt(key, nonce, data, ad) -> plaintext``: AES-128-CCM, 8-byte
  tag; decrypt raises ValueError when the tag does not verify (port.py's
  wrapper turns that into its None);
- ``sha512.new(data)``: a hashlib-style SHA-512 object (hashlib's where it exists).

Each primitive's module is imported at its first call: a device that only
verifies signatures (no secure channel) never holds the curve, AES or CCM code
(about 8 KB of a MicroPython heap even when the code runs in place from ROMFS).
"""

from . import sha512  # noqa: F401 - mpcrypto.sha512.new for callers


def ed25519_verify(public_raw, signature, message):
    """True if ``signature`` is a valid Ed25519 signature of ``message``."""
    from . import ed25519

    return ed25519.verify(public_raw, signature, message)


def x25519(private_raw, public_raw):
    """X25519 (RFC 7748); ValueError when the result is all zero."""
    from . import curve25519

    return curve25519.x25519(private_raw, public_raw)


def x25519_public(private_raw):
    """The 32-byte public key of a 32-byte X25519 private key."""
    from . import curve25519

    return curve25519.x25519_public(private_raw)


def aes_ccm8_encrypt(key, nonce, plaintext, ad):
    """AES-128-CCM with an 8-byte tag: ciphertext || tag."""
    from . import ccm

    return ccm.encrypt(key, nonce, plaintext, ad)


def aes_ccm8_decrypt(key, nonce, data, ad):
    """The plaintext of ``ciphertext || tag``; ValueError if the tag does not verify."""
    from . import ccm

    return ccm.decrypt(key, nonce, data, ad)
