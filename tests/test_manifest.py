"""Manifest: golden bytes, strict canonical decoding, field validation."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from otaferry.protocol.errors import DecodeError, Reason
from otaferry.protocol.manifest import (
    PAYLOAD_DELTA,
    PAYLOAD_FULL,
    SIGNING_DOMAIN,
    Manifest,
    SegmentEntry,
    segment_check,
    signing_message,
)

VECTORS = Path(__file__).parent / "vectors"
RFC8032_TEST1_PUBLIC = bytes.fromhex(
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
)


def golden_full() -> Manifest:
    return Manifest(
        hw=("esp32c3-devkit", "otaferry-ref-board"),
        chip="esp32c3",
        version="2.1.0",
        security_counter=5,
        target_size=20_000,
        target_sha256=hashlib.sha256(b"otaferry golden target").digest(),
        payload_kind=PAYLOAD_FULL,
        codec="zstd",
        window_log=13,
        segment_size=8192,
        segments=(
            SegmentEntry(3000, segment_check(b"segment 0")),
            SegmentEntry(2900, segment_check(b"segment 1")),
            SegmentEntry(1200, segment_check(b"segment 2")),
        ),
        key_id=hashlib.sha256(RFC8032_TEST1_PUBLIC).digest()[:8],
        project="otaferry-demo",
    )


def golden_delta() -> Manifest:
    """All 16 keys present: the map header takes the map16 form."""
    return dataclasses.replace(
        golden_full(),
        payload_kind=PAYLOAD_DELTA,
        codec="bsdiff",
        base_sha256=hashlib.sha256(b"otaferry golden base").digest(),
        base_size=19_000,
        security_counter=70_000,
    )


def read_hex(name: str) -> bytes:
    return bytes.fromhex("".join((VECTORS / name).read_text().split()))


def test_golden_full_bytes() -> None:
    data = read_hex("manifest_v1.hex")
    # SPEC section 2 by hand: fixmap of 14 entries, key 1 (format) = 1,
    # key 2 (hw) = fixarray of 2 fixstr, key 3 (chip) = fixstr "esp32c3" ...
    assert data[:4] == bytes([0x8E, 0x01, 0x01, 0x02])
    assert data[4:6] == bytes([0x92, 0xA0 | len("esp32c3-devkit")])
    assert golden_full().encode() == data
    assert Manifest.decode(data) == golden_full()


def test_golden_delta_bytes() -> None:
    data = read_hex("manifest_v1_delta.hex")
    assert data[:3] == bytes([0xDE, 0x00, 0x10])  # map16, 16 entries
    assert golden_delta().encode() == data
    decoded = Manifest.decode(data)
    assert decoded == golden_delta()
    assert decoded.is_delta and decoded.base_size == 19_000


# --- non-canonical and ill-typed encodings -------------------------------------------


def pairs_of(m: Manifest) -> list[tuple[bytes, bytes]]:
    """The manifest as (packed key, packed value) pairs, in canonical order."""
    plain = msgpack.unpackb(m.encode(), strict_map_key=False)
    return [(msgpack.packb(k), msgpack.packb(v, use_bin_type=True)) for k, v in plain.items()]


def raw_map(pairs: list[tuple[bytes, bytes]], header: bytes | None = None) -> bytes:
    if header is None:
        n = len(pairs)
        header = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return header + b"".join(k + v for k, v in pairs)


def replace_value(key: int, value: bytes) -> list[tuple[bytes, bytes]]:
    pairs = pairs_of(golden_full())
    return [(k, value if k == msgpack.packb(key) else v) for k, v in pairs]


def test_raw_map_reproduces_canonical() -> None:
    assert raw_map(pairs_of(golden_full())) == golden_full().encode()


def _swapped() -> bytes:
    pairs = pairs_of(golden_full())
    pairs[3], pairs[4] = pairs[4], pairs[3]
    return raw_map(pairs)


def _wide_key() -> bytes:
    pairs = pairs_of(golden_full())
    pairs[4] = (b"\xcc\x05", pairs[4][1])
    return raw_map(pairs)


def _with_extra(key: bytes, value: bytes) -> bytes:
    return raw_map([*pairs_of(golden_full()), (key, value)])


def _without(key: int) -> bytes:
    return raw_map([p for p in pairs_of(golden_full()) if p[0] != msgpack.packb(key)])


def _duplicate() -> bytes:
    pairs = pairs_of(golden_full())
    return raw_map([*pairs[:5], pairs[4], *pairs[5:]])


NON_CANONICAL = {
    "keys out of order": _swapped(),
    "int wider than needed (uint8 for 5)": raw_map(replace_value(5, b"\xcc\x05")),
    "int wider than needed (uint32 for 20000)": raw_map(replace_value(6, b"\xce\x00\x00\x4e\x20")),
    "key wider than needed": _wide_key(),
    "unknown key 17": _with_extra(b"\x11", b"\x01"),
    "unknown key 0": raw_map([(b"\x00", b"\x01"), *pairs_of(golden_full())]),
    "nil for optional project": raw_map(replace_value(16, b"\xc0")),
    "str where bin required (key_id)": raw_map(replace_value(15, msgpack.packb("abcdefgh"))),
    "bin where str required (chip)": raw_map(
        replace_value(3, msgpack.packb(b"esp32c3", use_bin_type=True))
    ),
    "str8 for a short string": raw_map(replace_value(3, b"\xd9\x07esp32c3")),
    "bin16 for a short bin": raw_map(replace_value(15, b"\xc5\x00\x08" + bytes(8))),
    "map16 header for 14 entries": raw_map(pairs_of(golden_full()), b"\xde\x00\x0e"),
    "array16 for hw": raw_map(
        replace_value(2, b"\xdc\x00\x02" + msgpack.packb("a") + msgpack.packb("b"))
    ),
    "bool for int": raw_map(replace_value(8, b"\xc2")),
    "negative int": raw_map(replace_value(5, b"\xff")),
    "float for int": raw_map(replace_value(5, msgpack.packb(5.0))),
    "duplicate key": _duplicate(),
    "missing required key (chip)": _without(3),
    "full image with base_size": raw_map(
        [*pairs_of(golden_full())[:9], (b"\x0a", b"\x05"), *pairs_of(golden_full())[9:]]
    ),
    "trailing byte": golden_full().encode() + b"\x00",
    "top level is an array": msgpack.packb([1, 2, 3]),
    "invalid utf-8 in str": raw_map(replace_value(4, b"\xa2\xff\xfe")),
    "segment entry of 3 elements": raw_map(replace_value(14, b"\x91\x93\x01\x02\x03")),
    "too deeply nested": raw_map(replace_value(14, b"\x91\x92\x91\x01\x01")),
    "ext type": raw_map(replace_value(4, b"\xd4\x01\x00")),
}


@pytest.mark.parametrize("data", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_non_canonical_is_malformed(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        Manifest.decode(data)
    assert info.value.reason is Reason.MALFORMED, info.value


def test_unsupported_format() -> None:
    with pytest.raises(DecodeError) as info:
        Manifest.decode(raw_map(replace_value(1, b"\x02")))
    assert info.value.reason is Reason.UNSUPPORTED_FORMAT
    # A future format may carry keys this reader does not know: still UNSUPPORTED_FORMAT.
    future = raw_map([(b"\x01", b"\x02"), (b"\x63", b"\x00")])
    with pytest.raises(DecodeError) as info:
        Manifest.decode(future)
    assert info.value.reason is Reason.UNSUPPORTED_FORMAT


def test_every_truncation_is_truncated() -> None:
    data = golden_full().encode()
    for cut in range(len(data)):
        with pytest.raises(DecodeError) as info:
            Manifest.decode(data[:cut])
        assert info.value.reason is Reason.TRUNCATED, (cut, info.value)


def test_huge_declared_lengths_do_not_allocate() -> None:
    for data in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff\x00"):
        with pytest.raises(DecodeError) as info:
            Manifest.decode(data)
        assert info.value.reason is Reason.TRUNCATED


# --- field validation ------------------------------------------------------------------

BAD_FIELDS: list[tuple[str, Any]] = [
    ("hw", ()),
    ("hw", ("",)),
    ("hw", ("x" * 33,)),
    ("hw", (b"bytes",)),
    ("chip", ""),
    ("chip", "x" * 17),
    ("version", ""),
    ("version", "é" * 17),  # 34 UTF-8 bytes
    ("security_counter", -1),
    ("security_counter", 2**32),
    ("security_counter", True),
    ("target_size", 0),
    ("target_sha256", bytes(31)),
    ("target_sha256", "00" * 32),
    ("payload_kind", 2),
    ("codec", ""),
    ("window_log", 9),
    ("window_log", 23),
    ("segment_size", 0),
    ("segment_size", 6000),
    ("segment_size", 4095),
    ("segments", ()),
    ("segments", (SegmentEntry(10, bytes(16)),) * 4),
    ("segments", (SegmentEntry(0, bytes(16)),) * 3),
    ("segments", (SegmentEntry(10, bytes(15)),) * 3),
    ("key_id", bytes(7)),
    ("project", ""),
    ("project", "p" * 33),
    ("base_size", 10),
    ("base_sha256", bytes(32)),
]


@pytest.mark.parametrize(
    ("field", "value"), BAD_FIELDS, ids=[f"{f}={v!r:.20}" for f, v in BAD_FIELDS]
)
def test_bad_field_is_malformed(field: str, value: Any) -> None:
    with pytest.raises(DecodeError) as info:
        dataclasses.replace(golden_full(), **{field: value})
    assert info.value.reason is Reason.MALFORMED
    assert "manifest:" in str(info.value)


def test_delta_needs_base_fields() -> None:
    with pytest.raises(DecodeError, match="base_sha256 and base_size"):
        dataclasses.replace(golden_full(), payload_kind=PAYLOAD_DELTA)
    with pytest.raises(DecodeError):
        dataclasses.replace(golden_delta(), base_sha256=bytes(5))


def test_format_2_is_unsupported() -> None:
    with pytest.raises(DecodeError) as info:
        dataclasses.replace(golden_full(), format=2)
    assert info.value.reason is Reason.UNSUPPORTED_FORMAT


def test_lists_are_stored_as_tuples() -> None:
    m = dataclasses.replace(
        golden_full(),
        hw=["a"],  # type: ignore[arg-type]
        segments=[(1, bytes(16)), [2, bytes(16)], SegmentEntry(3, bytes(16))],  # type: ignore[arg-type]
    )
    assert m.hw == ("a",)
    assert all(isinstance(e, SegmentEntry) for e in m.segments)
    assert Manifest.decode(m.encode()) == m


# --- helpers ---------------------------------------------------------------------------


def test_segment_target_range() -> None:
    m = golden_full()
    assert m.segment_count == 3
    assert m.segment_target_range(0) == (0, 8192)
    assert m.segment_target_range(1) == (8192, 8192)
    assert m.segment_target_range(2) == (16384, 20_000 - 16384)
    assert m.payload_size == 3000 + 2900 + 1200
    for bad in (-1, 3):
        with pytest.raises(DecodeError):
            m.segment_target_range(bad)


def test_signing_message_and_segment_check() -> None:
    assert signing_message(b"abc") == b"otaferry/manifest/v1\x00abc"
    assert SIGNING_DOMAIN.endswith(b"\x00") and len(SIGNING_DOMAIN) == 21
    assert segment_check(b"x") == hashlib.sha256(b"x").digest()[:16]


# --- properties ------------------------------------------------------------------------

# codec="utf-8" leaves out lone surrogates; 4 characters are at most 16 UTF-8 bytes.
_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=4)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    segment_size = 4096 * draw(st.integers(1, 64))
    target_size = draw(st.integers(1, 2**32 - 1).filter(lambda t: t // segment_size < 200))
    count = -(-target_size // segment_size)
    delta = draw(st.booleans())
    return Manifest(
        hw=tuple(draw(st.lists(_text, min_size=1, max_size=3))),
        chip=draw(_text),
        version=draw(_text),
        security_counter=draw(st.integers(0, 2**32 - 1)),
        target_size=target_size,
        target_sha256=draw(st.binary(min_size=32, max_size=32)),
        payload_kind=PAYLOAD_DELTA if delta else PAYLOAD_FULL,
        codec=draw(_text),
        window_log=draw(st.integers(10, 22)),
        segment_size=segment_size,
        segments=tuple(
            SegmentEntry(draw(st.integers(1, 2**32 - 1)), draw(st.binary(min_size=16, max_size=16)))
            for _ in range(count)
        ),
        key_id=draw(st.binary(min_size=8, max_size=8)),
        base_sha256=draw(st.binary(min_size=32, max_size=32)) if delta else None,
        base_size=draw(st.integers(0, 2**32 - 1)) if delta else None,
        project=draw(st.none() | _text),
    )


@settings(max_examples=150, deadline=None)
@given(manifests())
def test_round_trip(m: Manifest) -> None:
    data = m.encode()
    assert Manifest.decode(data) == m
    assert Manifest.decode(data).encode() == data


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_golden_is_rejected_or_canonical(data: st.DataObject) -> None:
    raw = bytearray(golden_delta().encode())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        m = Manifest.decode(bytes(raw))
    except DecodeError as exc:
        assert exc.reason in (Reason.MALFORMED, Reason.TRUNCATED, Reason.UNSUPPORTED_FORMAT)
    else:
        assert m.encode() == bytes(raw)  # whatever decodes is canonical


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        Manifest.decode(raw)
