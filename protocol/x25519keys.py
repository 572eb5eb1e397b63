"""X25519 link keys (SPEC.md section 9 "Keys"): static identities and ephemerals.

Each device and each gateway holds one static X25519 key pair for the link
handshake (separate from the Ed25519 signing keys of SPEC section 1, which
only the vendor holds). Files follow the Ed25519 convention: the private key
as unencrypted PKCS#8 PEM in ``PATH`` (mode 0600), the public key as
SubjectPublicKeyInfo PEM in ``PATH.pub``. A device's store and the gateway's
device table hold raw 32-byte public keys.

Bad key material raises :class:`KeyFileError` (``BAD_KEY``); no third-party
key object or exception escapes. File I/O goes through the helpers of
``keys.py`` (the one module of protocol/ allowed to touch key files).
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .errors import KeyFileError, Reason
from .keys import (
    load_key_file,
    pem_private,
    pem_public,
    private_to_pem,
    private_to_raw,
    public_to_pem,
    write_pem_pair,
)

KEY_SIZE = 32
KEY_ID_SIZE = 8

__all__ = [
    "KEY_ID_SIZE",
    "KEY_SIZE",
    "LinkPrivateKey",
    "LinkPublicKey",
    "load_link_private_key",
    "load_link_public_key",
    "write_link_keypair",
]


def _raw_check(raw: object, what: str) -> bytes:
    if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_SIZE:
        raise KeyFileError(f"a raw X25519 {what} key is {KEY_SIZE} bytes", Reason.BAD_KEY)
    return bytes(raw)


class LinkPublicKey:
    """An X25519 public key. Compares and hashes by its raw 32 bytes."""

    __slots__ = ("_key", "_raw")

    def __init__(self, key: X25519PublicKey) -> None:
        self._key = key
        self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @classmethod
    def from_raw(cls, raw: bytes) -> LinkPublicKey:
        data = _raw_check(raw, "public")
        try:
            return cls(X25519PublicKey.from_public_bytes(data))
        except (ValueError, UnsupportedAlgorithm) as exc:  # pragma: no cover - any 32 B parse
            raise KeyFileError(f"not an X25519 public key: {exc}", Reason.BAD_KEY) from exc

    @classmethod
    def from_pem(cls, data: bytes) -> LinkPublicKey:
        return cls(pem_public(data, X25519PublicKey, "X25519"))

    def to_pem(self) -> bytes:
        return public_to_pem(self._key)

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def key_id(self) -> bytes:
        """First 8 bytes of SHA-256 of the raw key (as for Ed25519 keys, SPEC section 1)."""
        return hashlib.sha256(self._raw).digest()[:KEY_ID_SIZE]

    @property
    def hint(self) -> int:
        """The 1-byte key hint a handshake's first message carries: ``key_id[0]``."""
        return self.key_id[0]

    @property
    def crypto_key(self) -> X25519PublicKey:
        return self._key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LinkPublicKey):
            return NotImplemented
        return self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"LinkPublicKey(key_id={self.key_id.hex()})"


class LinkPrivateKey:
    """An X25519 private key (static or ephemeral). ``repr`` shows only the key id."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self._public = LinkPublicKey(key.public_key())

    @classmethod
    def from_raw(cls, raw: bytes) -> LinkPrivateKey:
        """From 32 secret bytes (RFC 7748: any 32 bytes; clamping happens inside X25519)."""
        return cls(X25519PrivateKey.from_private_bytes(_raw_check(raw, "private")))

    @classmethod
    def generate(cls) -> LinkPrivateKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> LinkPrivateKey:
        return cls(pem_private(data, X25519PrivateKey, "X25519"))

    def to_pem(self) -> bytes:
        return private_to_pem(self._key)

    def raw(self) -> bytes:
        """The 32 secret bytes (what a device store holds; handle with care)."""
        return private_to_raw(self._key)

    @property
    def public(self) -> LinkPublicKey:
        return self._public

    def exchange(self, peer: LinkPublicKey) -> bytes | None:
        """X25519(self, peer); None when the result is all zero (a low-order peer point)."""
        try:
            return self._key.exchange(peer.crypto_key)
        except ValueError:  # cryptography refuses the all-zero shared secret
            return None

    def __repr__(self) -> str:
        return f"LinkPrivateKey(key_id={self._public.key_id.hex()})"


# --- key files ----------------------------------------------------------------------


def write_link_keypair(path: str | os.PathLike[str]) -> LinkPrivateKey:
    """Generate a key; write PATH (PKCS#8 PEM, 0600) and PATH.pub (SPKI PEM).

    Refuses (``KeyFileError``) if either file exists, so a link identity is
    never silently replaced.
    """
    key = LinkPrivateKey.generate()
    write_pem_pair(path, key.to_pem(), key.public.to_pem())
    return key


def load_link_private_key(path: str | os.PathLike[str]) -> LinkPrivateKey:
    return load_key_file(path, LinkPrivateKey.from_pem)


def _link_public_from(data: bytes) -> LinkPublicKey:
    if b"PRIVATE KEY-----" in data:
        return LinkPrivateKey.from_pem(data).public
    return LinkPublicKey.from_pem(data)


def load_link_public_key(path: str | os.PathLike[str]) -> LinkPublicKey:
    """Load a public key PEM, or derive the public key from a private key PEM."""
    return load_key_file(path, _link_public_from)
