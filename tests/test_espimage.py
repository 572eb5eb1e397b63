"""ESP image recognition: synthetic ESP32-family images, real ESP8266 images, junk."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from helpers_artifacts import ESP8266_V110, ESP8266_V194, PROGRAMMER_080
from hypothesis import given, settings
from hypothesis import strategies as st
from otaferry.protocol.espimage import (
    CHIP_IDS,
    EspImageInfo,
    describe_esp_image,
    parse_esp_image,
)
from paths import ESP32_BLINK, ESP32_HELLO

APP_DESC_MAGIC = 0xABCD5432


def app_desc(
    version: bytes = b"v2.3.4-rc1",
    project: bytes = b"otaferry-blinky",
    secure_version: int = 7,
) -> bytes:
    """A 256-byte esp_app_desc_t, laid out field by field."""
    desc = struct.pack("<II", APP_DESC_MAGIC, secure_version)
    desc += bytes(8)  # reserv1[2]
    desc += version.ljust(32, b"\x00")
    desc += project.ljust(32, b"\x00")
    desc += b"12:34:56".ljust(16, b"\x00")  # time
    desc += b"Jan  1 2025".ljust(16, b"\x00")  # date
    desc += b"v5.3.1".ljust(32, b"\x00")  # idf_ver
    desc += hashlib.sha256(b"elf").digest()  # app_elf_sha256
    desc += bytes(256 - len(desc))
    assert len(desc) == 256
    return desc


def esp32_image(chip_id: int = 0x0005, desc: bytes | None = None, hash_appended: int = 1) -> bytes:
    """A minimal ESP32-family app image: header, extended header, 2 segments."""
    seg0 = (app_desc() if desc is None else desc) + b"\x11" * 64
    seg1 = b"\x22" * 100
    header = struct.pack("<BBBBI", 0xE9, 2, 2, 0x1F, 0x40380000)
    # Extended header, byte by byte: wp_pin, spi_pin_drv[3], chip_id u16 LE,
    # min_chip_rev, min_chip_rev_full u16 LE, max_chip_rev_full u16 LE,
    # reserved[4], hash_appended.
    extended = bytes([0xEE, 0, 0, 0, chip_id & 0xFF, chip_id >> 8, 3, 3, 0, 199, 0])
    extended += bytes(4) + bytes([hash_appended])
    assert len(header) + len(extended) == 24
    body = struct.pack("<II", 0x3C000020, len(seg0)) + seg0
    body += struct.pack("<II", 0x40380000, len(seg1)) + seg1
    image = header + extended + body
    image += bytes(15 - len(image) % 16) + b"\xef"  # padding + checksum byte
    return image + hashlib.sha256(image).digest()


def test_synthetic_esp32c3_every_field() -> None:
    info = parse_esp_image(esp32_image())
    assert info == EspImageInfo(
        family="esp32",
        chip="esp32c3",
        chip_id=5,
        version="v2.3.4-rc1",
        project="otaferry-blinky",
        secure_version=7,
        idf_ver="v5.3.1",
        segment_count=2,
        entry_addr=0x40380000,
        min_chip_rev_full=3,
        max_chip_rev_full=199,
    )


@pytest.mark.parametrize("chip_id", sorted(CHIP_IDS))
def test_every_known_chip(chip_id: int) -> None:
    info = parse_esp_image(esp32_image(chip_id))
    assert info is not None and info.chip == CHIP_IDS[chip_id] and info.family == "esp32"


def test_chip_names_cover_the_brief() -> None:
    names = set(CHIP_IDS.values())
    assert {"esp32", "esp32s2", "esp32c3", "esp32s3", "esp32c2", "esp32c6", "esp32h2"} <= names
    assert {"esp32p4", "esp32c5", "esp32c61"} <= names
    assert CHIP_IDS[0x0017] == "esp32c5" and CHIP_IDS[0x0014] == "esp32c61"


def test_full_32_byte_strings_without_nul() -> None:
    info = parse_esp_image(esp32_image(desc=app_desc(version=b"V" * 32, project=b"P" * 32)))
    assert info is not None and info.version == "V" * 32 and info.project == "P" * 32


def test_empty_or_invalid_strings_are_none() -> None:
    info = parse_esp_image(esp32_image(desc=app_desc(version=b"", project=b"\xff\xfe")))
    assert info is not None
    assert info.version is None and info.project is None and info.secure_version == 7


def test_no_app_desc() -> None:
    info = parse_esp_image(esp32_image(desc=b"\x00" * 256))
    assert info is not None and info.chip == "esp32c3"
    assert info.version is None and info.project is None and info.secure_version is None


def test_unknown_chip_or_bad_header_is_not_an_image() -> None:
    assert parse_esp_image(esp32_image(chip_id=0x7777)) is None
    assert parse_esp_image(esp32_image(hash_appended=5)) is None
    img = bytearray(esp32_image())
    img[0] = 0xE8
    assert parse_esp_image(bytes(img)) is None
    img = bytearray(esp32_image())
    img[1] = 0  # zero segments
    assert parse_esp_image(bytes(img)) is None
    img[1] = 17  # more than ESP_IMAGE_MAX_SEGMENTS
    assert parse_esp_image(bytes(img)) is None


def test_truncated_esp32_images() -> None:
    image = esp32_image()
    for cut in range(0, 24):
        assert parse_esp_image(image[:cut]) is None, cut
    for cut in (24, 31, 32, 100, 32 + 143):
        info = parse_esp_image(image[:cut])
        assert info is not None and info.chip == "esp32c3", cut
        assert info.version is None and info.secure_version is None, cut
    info = parse_esp_image(image[: 32 + 144])  # exactly up to idf_ver
    assert info is not None and info.version == "v2.3.4-rc1"


@pytest.mark.parametrize("path", [ESP8266_V110, ESP8266_V194], ids=lambda p: p.name)
def test_real_esp8266_images(path: Path) -> None:
    data = path.read_bytes()
    info = parse_esp_image(data)
    assert info is not None
    assert (info.family, info.chip, info.chip_id) == ("esp8266", "esp8266", None)
    assert info.version is None and info.project is None and info.secure_version is None
    assert info.segment_count == data[1] == 3
    assert info.entry_addr == struct.unpack_from("<I", data, 4)[0]
    # Truncated to just the header and first segment header: still recognised.
    assert parse_esp_image(data[:16]) == info
    assert parse_esp_image(data[:15]) is None


def test_other_firmware_is_not_esp() -> None:
    assert parse_esp_image(PROGRAMMER_080.read_bytes()) is None
    assert parse_esp_image(b"") is None
    assert parse_esp_image(b"\xe9") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    info = parse_esp_image(data)
    assert info is None or isinstance(info, EspImageInfo)
    with_magic = b"\xe9" + data
    info = parse_esp_image(with_magic)
    assert info is None or info.family in ("esp32", "esp8266")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_esp32_image_never_raises(data: st.DataObject) -> None:
    image = bytearray(esp32_image())
    for _ in range(data.draw(st.integers(1, 6))):
        image[data.draw(st.integers(0, 200))] = data.draw(st.integers(0, 255))
    image = image[: data.draw(st.integers(0, len(image)))]
    info = parse_esp_image(bytes(image))
    assert info is None or info.family in ("esp32", "esp8266")


# ---------------------------------------------------------------- describe (inspect on raw images)


@pytest.mark.parametrize(
    ("path", "project", "version", "entry"),
    [
        (ESP32_BLINK, "blink", "1", 0x40081150),
        (ESP32_HELLO, "hello_world", "6970792-dirty", 0x4008129C),
    ],
    ids=["blink", "hello_world"],
)
def test_describe_real_esp32_images(path: Path, project: str, version: str, entry: int) -> None:
    """What esptool image-info says of the two real ESP-IDF builds (SOURCES.md)."""
    data = path.read_bytes()
    d = describe_esp_image(data)
    assert d is not None
    assert (d["chip"], d["project"], d["version"], d["entry_addr"]) == (
        "esp32",
        project,
        version,
        entry,
    )
    assert d["segment_count"] == 5 and len(d["segments"]) == 5
    assert d["segments"][0]["load_addr"] == 0x3F400020 and d["segments"][0]["offset"] == 32
    assert d["checksum_ok"] is True and d["hash_appended"] is True and d["sha256_ok"] is True
    assert d["image_end"] == len(data) and d["truncated"] is False
    # the segments tile the file exactly: header, (8-byte header + data)*, checksum block, hash
    end = d["segments"][-1]["offset"] + d["segments"][-1]["length"]
    assert (end | 15) + 1 + 32 == len(data)


def test_describe_sees_a_flipped_byte_and_truncation() -> None:
    data = bytearray(ESP32_BLINK.read_bytes())
    data[1000] ^= 0x01  # inside segment 0: the XOR checksum and the SHA-256 both break
    d = describe_esp_image(bytes(data))
    assert d is not None and d["checksum_ok"] is False and d["sha256_ok"] is False
    cut = describe_esp_image(ESP32_BLINK.read_bytes()[:100_000])
    assert cut is not None and cut["truncated"] is True and cut["checksum_ok"] is None
    assert cut["chip"] == "esp32" and cut["version"] == "1"  # the header still reads


def test_describe_esp8266_has_no_hash_and_a_valid_checksum() -> None:
    d = describe_esp_image(ESP8266_V110.read_bytes())
    assert d is not None and d["family"] == "esp8266" and d["app_desc"] is False
    assert d["checksum_ok"] is True and d["sha256_ok"] is None and d["segment_count"] == 3
    assert describe_esp_image(PROGRAMMER_080.read_bytes()) is None


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_describe_never_raises_on_mutations(data: st.DataObject) -> None:
    image = bytearray(esp32_image())
    for _ in range(data.draw(st.integers(1, 6))):
        image[data.draw(st.integers(0, 200))] = data.draw(st.integers(0, 255))
    image = image[: data.draw(st.integers(0, len(image)))]
    d = describe_esp_image(bytes(image))
    assert d is None or d["family"] in ("esp32", "esp8266")
