"""Recognise Espressif application images and read what a manifest can use.

Two layouts start with the magic byte 0xE9:

* ESP32 family (ESP32 and every later chip): a 24-byte header, i.e. the 8
  common bytes (magic, segment count, SPI mode, SPI speed/size, entry address
  u32) plus a 16-byte extended header (WP pin, 3 drive bytes, chip id u16,
  min_chip_rev u8, min/max_chip_rev_full u16, 4 reserved, hash_appended u8),
  then segment headers (load address u32, length u32) each followed by its
  data. ``esp_app_desc_t`` (magic 0xABCD5432) opens the first segment's data:
  magic u32, secure_version u32, 2 reserved u32, version[32],
  project_name[32], time[16], date[16], idf_ver[32], app_elf_sha256[32], ...
* ESP8266: the 8 common bytes, then directly the segment headers; no chip
  id and no app descriptor.

All integers little-endian. Layout facts from ESP-IDF ``esp_app_format.h`` /
``esp_app_desc.h`` and esptool's chip ids.

Error policy: this function never raises on its input. It returns ``None``
when the bytes are not recognisably an ESP image (wrong magic, shorter than a
header, implausible header fields, unknown chip id), and an
:class:`EspImageInfo` as soon as the header is recognised; fields that could
not be read (a truncated image, a missing or invalid app descriptor, a
string that is empty or not UTF-8) are ``None``. Callers treat ``None`` as
"no hints available" and ask the user instead.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "APP_DESC_MAGIC",
    "CHIP_IDS",
    "IMAGE_MAGIC",
    "EspImageInfo",
    "describe_esp_image",
    "parse_esp_image",
]

IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
MAX_SEGMENTS = 16
COMMON_HEADER_SIZE = 8
ESP32_HEADER_SIZE = 24
SEGMENT_HEADER_SIZE = 8

# esp_chip_id_t values (ESP-IDF) / IMAGE_CHIP_ID (esptool).
CHIP_IDS: dict[int, str] = {
    0x0000: "esp32",
    0x0002: "esp32s2",
    0x0005: "esp32c3",
    0x0009: "esp32s3",
    0x000C: "esp32c2",
    0x000D: "esp32c6",
    0x0010: "esp32h2",
    0x0012: "esp32p4",
    0x0014: "esp32c61",
    0x0017: "esp32c5",
    0x0019: "esp32h21",
    0x001C: "esp32h4",
}

_COMMON = struct.Struct("<BBBBI")  # magic, segment_count, spi_mode, speed/size, entry
_EXTENDED = struct.Struct("<B3sHBHH4sB")  # wp_pin, drv, chip_id, rev, rev_min, rev_max, rsv, hash
_SEGMENT = struct.Struct("<II")  # load_addr, data_len
_APP_DESC_HEAD = struct.Struct("<II8s32s32s16s16s32s")  # up to idf_ver
_APP_DESC_MIN = _APP_DESC_HEAD.size  # 144 bytes
CHECKSUM_SEED = 0xEF

# Plausible ESP8266 load addresses: DRAM, IRAM / flash-mapped IROM, RTC memory.
_ESP8266_RANGES = ((0x3FFE8000, 0x40300000), (0x60001000, 0x60002000))


@dataclass(frozen=True, slots=True)
class EspImageInfo:
    family: str  # "esp32" (extended header) or "esp8266"
    chip: str
    chip_id: int | None
    version: str | None
    project: str | None
    secure_version: int | None
    idf_ver: str | None = None
    segment_count: int = 0
    entry_addr: int = 0
    min_chip_rev_full: int | None = None
    max_chip_rev_full: int | None = None


def _cstr(raw: bytes) -> str | None:
    text = raw.split(b"\x00", 1)[0]
    if not text:
        return None
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_esp_image(data: bytes) -> EspImageInfo | None:
    """Identify an ESP application image; see the module docstring for the policy."""
    data = bytes(data)
    if len(data) < COMMON_HEADER_SIZE:
        return None
    magic, count, spi_mode, _speed_size, entry = _COMMON.unpack_from(data, 0)
    if magic != IMAGE_MAGIC or not 1 <= count <= MAX_SEGMENTS or spi_mode > 5:
        return None
    info = _parse_esp32(data, count, entry)
    if info is not None:
        return info
    return _parse_esp8266(data, count, entry)


def _parse_esp32(data: bytes, count: int, entry: int) -> EspImageInfo | None:
    if len(data) < ESP32_HEADER_SIZE:
        return None
    _wp, _drv, chip_id, _rev, rev_min, rev_max, _rsv, hash_appended = _EXTENDED.unpack_from(
        data, COMMON_HEADER_SIZE
    )
    chip = CHIP_IDS.get(chip_id)
    if chip is None or hash_appended not in (0, 1):
        return None
    version = project = idf_ver = None
    secure_version = None
    desc_at = ESP32_HEADER_SIZE + SEGMENT_HEADER_SIZE
    if len(data) >= desc_at:
        _load, seg_len = _SEGMENT.unpack_from(data, ESP32_HEADER_SIZE)
        if seg_len >= _APP_DESC_MIN and len(data) >= desc_at + _APP_DESC_MIN:
            fields = _APP_DESC_HEAD.unpack_from(data, desc_at)
            if fields[0] == APP_DESC_MAGIC:
                secure_version = fields[1]
                version, project = _cstr(fields[3]), _cstr(fields[4])
                idf_ver = _cstr(fields[7])
    return EspImageInfo(
        family="esp32",
        chip=chip,
        chip_id=chip_id,
        version=version,
        project=project,
        secure_version=secure_version,
        idf_ver=idf_ver,
        segment_count=count,
        entry_addr=entry,
        min_chip_rev_full=rev_min,
        max_chip_rev_full=rev_max,
    )


def _esp8266_addr(addr: int) -> bool:
    return any(lo <= addr < hi for lo, hi in _ESP8266_RANGES)


def _parse_esp8266(data: bytes, count: int, entry: int) -> EspImageInfo | None:
    if len(data) < COMMON_HEADER_SIZE + SEGMENT_HEADER_SIZE:
        return None
    load, seg_len = _SEGMENT.unpack_from(data, COMMON_HEADER_SIZE)
    if seg_len == 0 or not (_esp8266_addr(load) and _esp8266_addr(entry)):
        return None
    return EspImageInfo(
        family="esp8266",
        chip="esp8266",
        chip_id=None,
        version=None,
        project=None,
        secure_version=None,
        segment_count=count,
        entry_addr=entry,
    )


def describe_esp_image(data: bytes) -> dict[str, Any] | None:
    """What esptool's ``image_info`` shows, as a JSON-ready dict (``None``: not an ESP image).

    Walks the segment headers and checks the image's own integrity fields: the
    XOR checksum (seed 0xEF over every segment's data, stored in the last byte
    of the 16-byte block after the last segment) and, when the header says so,
    the SHA-256 appended after it. Like :func:`parse_esp_image` it never
    raises: a segment running past the end makes ``truncated`` True and the
    checks ``None``.
    """
    data = bytes(data)
    info = parse_esp_image(data)
    if info is None:
        return None
    pos = ESP32_HEADER_SIZE if info.family == "esp32" else COMMON_HEADER_SIZE
    hash_appended = info.family == "esp32" and data[ESP32_HEADER_SIZE - 1] == 1
    segments: list[dict[str, int]] = []
    checksum = CHECKSUM_SEED
    truncated = False
    for _ in range(info.segment_count):
        if pos + SEGMENT_HEADER_SIZE > len(data):
            truncated = True
            break
        load, length = _SEGMENT.unpack_from(data, pos)
        segments.append({"load_addr": load, "offset": pos + SEGMENT_HEADER_SIZE, "length": length})
        pos += SEGMENT_HEADER_SIZE
        if pos + length > len(data):
            truncated = True
            break
        for b in data[pos : pos + length]:
            checksum ^= b
        pos += length
    checksum_at = pos | 15
    end = checksum_at + 1 + (32 if hash_appended else 0)
    truncated = truncated or end > len(data)
    checksum_ok = sha_ok = None
    if not truncated:
        checksum_ok = data[checksum_at] == checksum
        if hash_appended:
            digest = hashlib.sha256(data[: checksum_at + 1]).digest()
            sha_ok = data[checksum_at + 1 : end] == digest
    return {
        "kind": "esp-app-image",
        "family": info.family,
        "chip": info.chip,
        "chip_id": info.chip_id,
        "min_chip_rev_full": info.min_chip_rev_full,
        "max_chip_rev_full": info.max_chip_rev_full,
        "entry_addr": info.entry_addr,
        "segment_count": info.segment_count,
        "segments": segments,
        "app_desc": info.version is not None or info.secure_version is not None,
        "version": info.version,
        "project": info.project,
        "secure_version": info.secure_version,
        "idf_ver": info.idf_ver,
        "image_size": len(data),
        "image_end": None if truncated else end,
        "truncated": truncated,
        "checksum_ok": checksum_ok,
        "hash_appended": hash_appended,
        "sha256_ok": sha_ok,
    }
