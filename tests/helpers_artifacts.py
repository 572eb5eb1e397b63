"""Shared helpers for artifact tests: fixed keys, small images, a non-seekable stream.

Import with ``from helpers_artifacts import ...`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import hashlib
import io

from otaferry.protocol.artifact import build_full
from otaferry.protocol.keys import SigningKey
from paths import FIRMWARE

ESP8266_V110 = FIRMWARE / "micropython-esp8266" / "esp8266-20190125-v1.10.bin"
ESP8266_V194 = FIRMWARE / "micropython-esp8266" / "esp8266-20180511-v1.9.4.bin"
PROGRAMMER_080 = FIRMWARE / "programmer-cortex-m4" / "0.8.0.bin"

# Deterministic test keys (never use for anything real).
SEED_A = hashlib.sha256(b"otaferry test key A").digest()
SEED_B = hashlib.sha256(b"otaferry test key B").digest()


def key_a() -> SigningKey:
    return SigningKey.from_seed(SEED_A)


def key_b() -> SigningKey:
    return SigningKey.from_seed(SEED_B)


def small_image(size: int = 20_000) -> bytes:
    """A compressible, non-trivial image of *size* bytes (3 segments at 8 KiB)."""
    block = hashlib.sha256(b"block").digest() * 8
    out = bytearray()
    i = 0
    while len(out) < size:
        out += block[: 1 + i % 200] + i.to_bytes(4, "little")
        i += 1
    return bytes(out[:size])


def small_artifact(key: SigningKey | None = None, image: bytes | None = None) -> bytes:
    return build_full(
        small_image() if image is None else image,
        key or key_a(),
        hw=("test-board",),
        chip="esp32c3",
        version="1.0.0",
        security_counter=3,
        project="demo",
        level=3,
    )


class NonSeekable(io.RawIOBase):
    """Only ``read``; returns at most *chunk* bytes per call to exercise short reads."""

    def __init__(self, data: bytes, chunk: int = 4096) -> None:
        self._data = data
        self._pos = 0
        self._chunk = chunk
        self.max_read_request = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            raise AssertionError("reader asked for the whole stream")
        self.max_read_request = max(self.max_read_request, size)
        n = min(size, self._chunk)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def seek(self, *args: object) -> int:
        raise io.UnsupportedOperation("not seekable")

    def tell(self) -> int:
        raise io.UnsupportedOperation("not seekable")
