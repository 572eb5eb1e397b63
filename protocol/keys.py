"""Ed25519 signing and verify keys (SPEC section 1).

A thin typed layer over ``cryptography`` so that the rest of otaferry never
touches a third-party key object or exception: bad key material raises
:class:`KeyFileError` (``BAD_KEY``), a failed verification raises
:class:`SignatureError` (``BAD_SIGNATURE``).

The small ``write_keypair`` / ``load_*`` helpers at the bottom do file I/O on
purpose (they are what the CLI calls); everything above them is pure.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .errors import KeyFileError, Reason, SignatureError

_T = TypeVar("_T")

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
KEY_ID_SIZE = 8

__all__ = [
    "KEY_ID_SIZE",
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "SigningKey",
    "VerifyKey",
    "key_id",
    "load_signing_key",
    "load_verify_key",
    "write_keypair",
]


def key_id(raw_public: bytes) -> bytes:
    """The 8-byte key id: the first 8 bytes of SHA-256 of the raw public key."""
    if len(raw_public) != PUBLIC_KEY_SIZE:
        raise KeyFileError(
            f"a raw Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(raw_public)}",
            Reason.BAD_KEY,
        )
    return hashlib.sha256(raw_public).digest()[:KEY_ID_SIZE]


class VerifyKey:
    """An Ed25519 public key. Compares and hashes by its raw 32 bytes."""

    __slots__ = ("_key", "_raw")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @classmethod
    def from_raw(cls, raw: bytes) -> VerifyKey:
        if not isinstance(raw, bytes | bytearray) or len(raw) != PUBLIC_KEY_SIZE:
            raise KeyFileError(
                f"a raw Ed25519 public key is {PUBLIC_KEY_SIZE} bytes", Reason.BAD_KEY
            )
        try:
            return cls(Ed25519PublicKey.from_public_bytes(bytes(raw)))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"not an Ed25519 public key: {exc}", Reason.BAD_KEY) from exc

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyKey:
        """Parse a SubjectPublicKeyInfo PEM holding an Ed25519 key."""
        return cls(pem_public(data, Ed25519PublicKey, "Ed25519"))

    def to_pem(self) -> bytes:
        return public_to_pem(self._key)

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def key_id(self) -> bytes:
        return key_id(self._raw)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise :class:`SignatureError` (``BAD_SIGNATURE``) unless *signature* is valid."""
        if len(signature) != SIGNATURE_SIZE:
            raise SignatureError(
                f"an Ed25519 signature is {SIGNATURE_SIZE} bytes, got {len(signature)}",
                Reason.BAD_SIGNATURE,
            )
        try:
            self._key.verify(bytes(signature), bytes(message))
        except InvalidSignature:
            raise SignatureError(
                f"signature does not verify under key {self.key_id.hex()}",
                Reason.BAD_SIGNATURE,
                key_id=self.key_id,
            ) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifyKey):
            return NotImplemented
        return self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"VerifyKey(key_id={self.key_id.hex()})"


class SigningKey:
    """An Ed25519 private key. Never printed: ``repr`` shows only the key id."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public = VerifyKey(key.public_key())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Build from the 32-byte RFC 8032 secret key (the "seed")."""
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_SIZE:
            raise KeyFileError(f"an Ed25519 secret key is {SEED_SIZE} bytes", Reason.BAD_KEY)
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(seed)))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        """Parse an unencrypted PKCS#8 PEM holding an Ed25519 private key."""
        return cls(pem_private(data, Ed25519PrivateKey, "Ed25519"))

    def to_pem(self) -> bytes:
        return private_to_pem(self._key)

    def seed(self) -> bytes:
        """The raw 32-byte secret (for tests and key escrow; handle with care)."""
        return private_to_raw(self._key)

    @property
    def public(self) -> VerifyKey:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(bytes(message))

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self._public.key_id.hex()})"


# --- PEM and file helpers, shared with x25519keys.py ---------------------------
# (the only file I/O in protocol/ besides artifact.open_artifact)

def pem_private(data: bytes, kind: type[object], name: str) -> Any:
    """Parse an unencrypted PKCS#8 PEM private key of type ``kind``."""
    try:
        key = serialization.load_pem_private_key(bytes(data), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"not an unencrypted PEM private key: {exc}", Reason.BAD_KEY) from exc
    if not isinstance(key, kind):
        raise KeyFileError(f"PEM private key is {type(key).__name__}, not {name}", Reason.BAD_KEY)
    return key


def pem_public(data: bytes, kind: type[object], name: str) -> Any:
    """Parse a SubjectPublicKeyInfo PEM public key of type ``kind``."""
    try:
        key = serialization.load_pem_public_key(bytes(data))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"not a PEM public key: {exc}", Reason.BAD_KEY) from exc
    if not isinstance(key, kind):
        raise KeyFileError(f"PEM public key is {type(key).__name__}, not {name}", Reason.BAD_KEY)
    return key


def private_to_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_to_raw(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def public_to_pem(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_pem_pair(path: str | os.PathLike[str], private_pem: bytes, public_pem: bytes) -> None:
    """Write PATH (mode 0600) and PATH.pub; refuse if either exists."""
    private_path = Path(os.fspath(path))
    public_path = _pub_path(path)
    for p in (private_path, public_path):
        if p.exists() or p.is_symlink():
            raise KeyFileError(f"{p}: already exists, not overwriting", Reason.BAD_KEY)
    _write_new(private_path, private_pem, 0o600)
    _write_new(public_path, public_pem, 0o644)


def load_key_file(path: str | os.PathLike[str], parse: Callable[[bytes], _T]) -> _T:
    """Read a key file and parse it; errors name the file."""
    data = _read(path)
    try:
        return parse(data)
    except KeyFileError as exc:
        raise KeyFileError(f"{os.fspath(path)}: {exc.message}", Reason.BAD_KEY) from exc


def _pub_path(path: str | os.PathLike[str]) -> Path:
    return Path(os.fspath(path) + ".pub")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists, not overwriting", Reason.BAD_KEY) from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create: {exc.strerror}", Reason.BAD_KEY) from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def write_keypair(path: str | os.PathLike[str]) -> SigningKey:
    """Generate a key; write PATH (PKCS#8 PEM, mode 0600) and PATH.pub (SPKI PEM).

    Refuses (``KeyFileError``) if either file already exists, so a signing key
    is never silently replaced.
    """
    key = SigningKey.generate()
    write_pem_pair(path, key.to_pem(), key.public.to_pem())
    return key


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(1 << 20)
    except OSError as exc:
        raise KeyFileError(
            f"{os.fspath(path)}: cannot read key file: {exc.strerror}", Reason.BAD_KEY
        ) from exc


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    return load_key_file(path, SigningKey.from_pem)


def _verify_key_from(data: bytes) -> VerifyKey:
    if b"PRIVATE KEY-----" in data:
        return SigningKey.from_pem(data).public
    return VerifyKey.from_pem(data)


def load_verify_key(path: str | os.PathLike[str]) -> VerifyKey:
    """Load a public key PEM, or derive the public key from a private key PEM."""
    return load_key_file(path, _verify_key_from)
