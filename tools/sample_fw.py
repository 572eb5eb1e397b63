"""Sample ESP32 application images for the demo and the tests.

The demo must run from a clone alone, so it cannot rely on firmware files from
elsewhere. These images follow the ESP32 app image layout (24-byte header with
the extended header, segments, XOR checksum, appended SHA-256) and carry an
``esp_app_desc_t``, so they exercise the same path a real ESP-IDF build does.
Their code is pseudo-random "instructions" drawn from a small vocabulary, so
they compress roughly like real firmware; successive versions differ the way
releases do (a few functions changed, code inserted, addresses shifted).
"""

from __future__ import annotations

import hashlib
import random
import struct

ESP_IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
CHIP_IDS = {"esp32": 0, "esp32s2": 2, "esp32c3": 5, "esp32s3": 9, "esp32c2": 12, "esp32c6": 13}
DROM_ADDR = 0x3F400020
IROM_ADDR = 0x400D0020


def app_desc(version: str, project: str, secure_version: int, idf_ver: str = "v5.3") -> bytes:
    """A 256-byte esp_app_desc_t."""
    body = struct.pack(
        "<II8x32s32s16s16s32s32s",
        APP_DESC_MAGIC,
        secure_version,
        version.encode()[:31],
        project.encode()[:31],
        b"12:00:00",
        b"Nov 26 2026",
        idf_ver.encode()[:31],
        hashlib.sha256(version.encode() + project.encode()).digest(),
    )
    return body.ljust(256, b"\0")


def _code(rng: random.Random, size: int) -> bytes:
    """Instruction-like bytes: a small vocabulary of 4-byte words, some repeated runs."""
    vocab = [rng.getrandbits(32) for _ in range(2048)]
    out = bytearray()
    while len(out) < size:
        r = rng.random()
        if r < 0.05 and len(out) > 64:
            start = rng.randrange(0, len(out) - 32)
            out += out[start : start + rng.randrange(8, 32)]
        elif r < 0.55:
            # an opcode with a fresh immediate / address operand
            word = vocab[int(rng.paretovariate(0.8)) % len(vocab)]
            out += struct.pack("<I", (word & 0xFFFF0000) | rng.getrandbits(16))
        else:
            out += struct.pack("<I", vocab[int(rng.paretovariate(0.8)) % len(vocab)])
    return bytes(out[:size])


def make_image(
    version: str,
    *,
    project: str = "otaferry-demo",
    secure_version: int = 0,
    chip: str = "esp32",
    code_size: int = 200_000,
    seed: int = 1,
    revision: int = 0,
) -> bytes:
    """An ESP32 app image. Same ``seed`` with a higher ``revision`` = a later release."""
    rng = random.Random(seed)
    code = bytearray(_code(rng, code_size))
    edit = random.Random(seed * 1000 + revision)
    for _ in range(revision * 6):  # each release: rewrite a few "functions", insert some code
        at = edit.randrange(0, len(code) - 256) & ~3
        n = edit.randrange(16, 256) & ~3
        if edit.random() < 0.5:
            code[at : at + n] = _code(edit, n)
        else:
            code[at:at] = _code(edit, n)
    rodata = app_desc(version, project, secure_version) + _code(random.Random(seed + 7), 4096)
    segments = [(DROM_ADDR, bytes(rodata)), (IROM_ADDR, bytes(code))]

    header = struct.pack("<BBBBI", ESP_IMAGE_MAGIC, len(segments), 2, 0x20, IROM_ADDR + 0x100)
    ext = struct.pack("<B3sHBHH4sB", 0xEE, b"\0\0\0", CHIP_IDS[chip], 0, 0, 0xFFFF, b"\0" * 4, 1)
    out = bytearray(header + ext)
    checksum = 0xEF
    for addr, data in segments:
        data = data + b"\0" * (-len(data) % 4)
        out += struct.pack("<II", addr, len(data)) + data
        for b in data:
            checksum ^= b
    out += b"\0" * (15 - len(out) % 16) + bytes([checksum])
    out += hashlib.sha256(out).digest()
    return bytes(out)
