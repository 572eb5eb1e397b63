"""Link frames: golden vectors both ways (host encoder -> device decoder, device
encoder -> host decoder), round trips, hostile bodies, and the data-frame budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from otaferry.device_fw import frames as D
from otaferry.device_fw import reasons as R
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.errors import DecodeError, Reason
from otaferry.protocol.frames import (
    Abort,
    Accept,
    Checkin,
    Commit,
    CompactData,
    Confirm,
    Confirmed,
    Data,
    Done,
    Frame,
    Hello,
    HelloInfo,
    Offer,
    OfferBlob,
    Poll,
    Query,
    Reject,
    Status,
    data_overhead,
    decode_frame,
    max_chunk_size,
    max_part_size,
    offer_overhead,
)

VECTOR_DIR = Path(__file__).resolve().parent / "vectors" / "frames"

SID = 0x1234_5678
SIG = bytes(range(64))

# name, host frame, the device decoder's view of it: (type, poll, fields)
VECTORS: list[tuple[str, Frame, tuple[int, bool, list[Any]]]] = [
    ("query", Query(SID), (1, False, [1, SID])),
    ("hello", Hello(SID, 1, 3, b"\x01\x02\x03"), (2, False, [SID, 1, 3, b"\x01\x02\x03"])),
    ("offer", Offer(0, 3, bytes(range(8))), (3, False, [0, 3, bytes(range(8))])),
    ("offer_poll", Offer(2, 3, b"xyz", poll=True), (3, True, [2, 3, b"xyz"])),
    ("accept", Accept(5, 8, b"\x05"), (4, False, [5, 8, b"\x05"])),
    ("accept_fresh", Accept(0), (4, False, [0, 0, b""])),
    ("reject", Reject(Reason.WRONG_HW, "update is for board-a"),
     (5, False, [9, "update is for board-a"])),
    ("data", Data(3, 17, bytes(range(32))), (6, False, [3, 17, bytes(range(32))])),
    ("data_poll_wide", Data(300, 200, b"\xaa" * 40, poll=True),
     (6, True, [300, 200, b"\xaa" * 40])),
    ("status", Status(3, 8, b"\x0b", (3, 12)), (7, False, [3, 8, b"\x0b", (3, 12)])),
    ("status_offer", Status(-1, 0, b"\x05", (-1, 2)), (7, False, [-1, 0, b"\x05", (-1, 2)])),
    ("status_bare", Status(4), (7, False, [4, 0, b"", None])),
    ("commit", Commit(), (8, False, [])),
    ("done", Done(), (9, False, [])),
    ("abort", Abort(Reason.TIMEOUT, "no answer"), (10, False, [25, "no answer"])),
    ("confirm", Confirm(bytes(range(16)), bytes(range(8))),
     (11, False, [bytes(range(16)), bytes(range(8))])),
    ("confirmed", Confirmed(bytes(range(16))), (12, False, [bytes(range(16))])),
    # SPEC 8.8: compact DATA (chunk 70 = 64 + 6, bytes 00..27) and POLL
    ("compact_data", CompactData(70 & 0x3F, bytes(range(40))),
     (D.COMPACT, False, [6, bytes(range(40))])),
    ("compact_data_poll", CompactData(63, b"\xaa" * 3, poll=True),
     (D.COMPACT, True, [63, b"\xaa" * 3])),
    ("poll", Poll(3, 300), (13, False, [3, 300])),
    ("checkin", Checkin(bytes(range(16)), bytes(range(8))),
     (14, False, [bytes(range(16)), bytes(range(8))])),
]

HELLO_INFO = HelloInfo(
    device_id=bytes.fromhex("0102030405060708"),
    hw="board-rev-b",
    chip="esp8266",
    running_version="v1.9.4",
    running_sha256=bytes(range(32)),
    security_counter=3,
    slot_size=0x100000,
    max_frame=1024,
    codecs=("zstd", "lzrc"),
    max_window_log=13,
    max_segment_payload=8256,
    max_offer=16384,
    resume_uid=bytes(range(16, 32)),
    resume_next=7,
)
HELLO_DEVICE = {
    "version": 1, "device_id": HELLO_INFO.device_id, "hw": "board-rev-b", "chip": "esp8266",
    "running_version": "v1.9.4", "running_sha256": bytes(range(32)), "security_counter": 3,
    "slot_size": 0x100000, "max_frame": 1024, "codecs": ["zstd", "lzrc"], "max_window_log": 13,
    "max_segment_payload": 8256, "max_offer": 16384, "resume_uid": bytes(range(16, 32)),
    "resume_next": 7, "pending_uid": None, "pending_sha256": None, "pending_nonce": None,
    "failed_uid": None, "failed_reason": None, "features": 0, "ram_budget": 65536,
}
# A pending image awaiting its check-in, on a device whose previous update rolled back.
CHECKIN_INFO = dataclasses.replace(
    HELLO_INFO, resume_uid=None, resume_next=None, pending_uid=bytes(range(32, 48)),
    pending_sha256=bytes(range(48, 80)), pending_nonce=b"nonce-08", failed_uid=bytes(16),
    failed_reason=int(Reason.CHECKIN_TIMEOUT),
)  # fmt: skip
CHECKIN_DEVICE = dict(
    HELLO_DEVICE, resume_uid=None, resume_next=None, pending_uid=bytes(range(32, 48)),
    pending_sha256=bytes(range(48, 80)), pending_nonce=b"nonce-08", failed_uid=bytes(16),
    failed_reason=31,
)  # fmt: skip
OFFER_BLOB = OfferBlob(1017, b"\x8f\x01\x01", SIG)
# SPEC 8.8: a device that announces batched acks and compact DATA (field 17, nil for 15-16),
# and an offer that uses both (field 4).
FEATURES_INFO = dataclasses.replace(HELLO_INFO, features=3)
FEATURES_DEVICE = dict(HELLO_DEVICE, features=3)
OFFER_BLOB_FLAGS = OfferBlob(40, b"\x8f\x01\x01", SIG, flags=3)
# SPEC 8.3: a device whose delta RAM budget is not the default 65,536 says so in field 18
# (nil for 15-16 and 0 for 17 when those are unset).
RAM_INFO = dataclasses.replace(HELLO_INFO, ram_budget=60000)
RAM_DEVICE = dict(HELLO_DEVICE, ram_budget=60000)

# name, host value, device encoder, device decoder (result compared with `expected`)
BLOB_VECTORS: list[tuple[str, HelloInfo | OfferBlob, Any, Any]] = [
    ("hello_info", HELLO_INFO, lambda: D.encode_hello_info(HELLO_DEVICE),
     lambda b: D.decode_hello_info(b) == HELLO_DEVICE),
    ("hello_info_checkin", CHECKIN_INFO, lambda: D.encode_hello_info(CHECKIN_DEVICE),
     lambda b: D.decode_hello_info(b) == CHECKIN_DEVICE),
    ("offer_blob", OFFER_BLOB, lambda: D.encode_offer_blob(1017, b"\x8f\x01\x01", SIG),
     lambda b: D.decode_offer_blob(b) == (1017, b"\x8f\x01\x01", SIG, 0)),
    ("hello_info_features", FEATURES_INFO, lambda: D.encode_hello_info(FEATURES_DEVICE),
     lambda b: D.decode_hello_info(b) == FEATURES_DEVICE),
    ("hello_info_ram", RAM_INFO, lambda: D.encode_hello_info(RAM_DEVICE),
     lambda b: D.decode_hello_info(b) == RAM_DEVICE),
    ("offer_blob_flags", OFFER_BLOB_FLAGS,
     lambda: D.encode_offer_blob(40, b"\x8f\x01\x01", SIG, 3),
     lambda b: D.decode_offer_blob(b) == (40, b"\x8f\x01\x01", SIG, 3)),
]


def _golden(name: str) -> bytes:
    return bytes.fromhex((VECTOR_DIR / f"{name}.hex").read_text().strip())


def device_encode(frame: Frame) -> bytes:
    """The device's encoder for the same frame (device_fw has its own)."""
    if isinstance(frame, Query):
        return D.query(frame.session_id, frame.version)
    if isinstance(frame, Hello):
        return D.hello(frame.session_id, frame.part, frame.count, frame.chunk)
    if isinstance(frame, Offer):
        return D.offer(frame.part, frame.count, frame.chunk, frame.poll)
    if isinstance(frame, Accept):
        return D.accept(frame.next_segment, frame.base, frame.bitmap)
    if isinstance(frame, Reject):
        return D.reject(frame.reason, frame.message)
    if isinstance(frame, Data):
        return D.data(frame.segment, frame.chunk, frame.payload, frame.poll)
    if isinstance(frame, Status):
        return D.status(frame.segment, frame.base, frame.bitmap, frame.echo)
    if isinstance(frame, Commit):
        return D.commit()
    if isinstance(frame, Done):
        return D.done()
    if isinstance(frame, Confirm):
        return D.confirm(frame.update_id, frame.nonce)
    if isinstance(frame, Confirmed):
        return D.confirmed(frame.update_id)
    if isinstance(frame, CompactData):
        return D.compact_data(frame.low, frame.payload, frame.poll)
    if isinstance(frame, Poll):
        return D.poll_frame(frame.segment, frame.chunk)
    if isinstance(frame, Checkin):
        return D.checkin(frame.update_id, frame.nonce)
    return D.abort(frame.reason, frame.message)


def device_view(frame: Frame) -> tuple[int, bool, list[Any]]:
    """What device_fw.frames.decode must return for this frame."""
    if isinstance(frame, Query):
        return 1, False, [frame.version, frame.session_id]
    if isinstance(frame, Hello):
        return 2, False, [frame.session_id, frame.part, frame.count, frame.chunk]
    if isinstance(frame, Offer):
        return 3, frame.poll, [frame.part, frame.count, frame.chunk]
    if isinstance(frame, Accept):
        return 4, False, [frame.next_segment, frame.base, frame.bitmap]
    if isinstance(frame, Reject):
        return 5, False, [frame.reason, frame.message]
    if isinstance(frame, Data):
        return 6, frame.poll, [frame.segment, frame.chunk, frame.payload]
    if isinstance(frame, Status):
        return 7, False, [frame.segment, frame.base, frame.bitmap, frame.echo]
    if isinstance(frame, Commit):
        return 8, False, []
    if isinstance(frame, Done):
        return 9, False, []
    if isinstance(frame, Confirm):
        return 11, False, [frame.update_id, frame.nonce]
    if isinstance(frame, Confirmed):
        return 12, False, [frame.update_id]
    if isinstance(frame, CompactData):
        return D.COMPACT, frame.poll, [frame.low, frame.payload]
    if isinstance(frame, Poll):
        return 13, False, [frame.segment, frame.chunk]
    if isinstance(frame, Checkin):
        return 14, False, [frame.update_id, frame.nonce]
    return 10, False, [frame.reason, frame.message]


# --- golden vectors -------------------------------------------------------------


def test_every_frame_type_has_a_vector() -> None:
    assert {v[2][0] for v in VECTORS} == set(range(1, 15)) | {D.COMPACT}
    files = {p.stem for p in VECTOR_DIR.glob("*.hex")}
    assert files == {v[0] for v in VECTORS} | {v[0] for v in BLOB_VECTORS}


@pytest.mark.parametrize(("name", "frame", "view"), VECTORS, ids=[v[0] for v in VECTORS])
def test_golden_host_to_device(name: str, frame: Frame, view: tuple[int, bool, list[Any]]) -> None:
    golden = _golden(name)
    assert frame.encode() == golden
    assert D.decode(golden) == view


@pytest.mark.parametrize(("name", "frame", "view"), VECTORS, ids=[v[0] for v in VECTORS])
def test_golden_device_to_host(name: str, frame: Frame, view: tuple[int, bool, list[Any]]) -> None:
    golden = _golden(name)
    assert device_encode(frame) == golden
    assert decode_frame(golden) == frame


@pytest.mark.parametrize(
    ("name", "value", "dev_encode", "dev_check"), BLOB_VECTORS, ids=[v[0] for v in BLOB_VECTORS]
)
def test_golden_blobs_both_ways(name: str, value: Any, dev_encode: Any, dev_check: Any) -> None:
    golden = _golden(name)
    assert value.encode() == golden
    assert dev_encode() == golden
    assert type(value).decode(golden) == value
    assert dev_check(golden)


def test_golden_bytes_read_by_hand() -> None:
    """Two vectors spelled out byte by byte (SPEC.md section 8 quotes them)."""
    assert _golden("data") == bytes([0x94, 0x06, 0x03, 0x11, 0xC4, 0x20, *range(32)])
    assert _golden("status") == bytes.fromhex("960703" "08" "c4010b" "03" "0c")
    assert _golden("data_poll_wide")[:9] == bytes.fromhex("9426cd012cccc8c428")


# --- round trips ---------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
blob = st.binary(min_size=1, max_size=80)
text = st.text(max_size=30)


@st.composite
def parts(draw: st.DrawFn) -> tuple[int, int]:
    count = draw(st.integers(1, 0xFFFF))
    return draw(st.integers(0, count - 1)), count


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.integers(1, 10))
    if kind == 1:
        return Query(draw(u32), draw(st.integers(0, 255)))
    if kind == 2:
        p, c = draw(parts())
        return Hello(draw(u32), p, c, draw(blob))
    if kind == 3:
        p, c = draw(parts())
        return Offer(p, c, draw(blob), draw(st.booleans()))
    if kind == 4:
        return Accept(draw(st.integers(0, 0x10000)), draw(st.integers(0, 0x10000)),
                      draw(st.binary(max_size=40)))
    if kind == 5:
        return Reject(draw(st.integers(0, 255)), draw(text))
    if kind == 6:
        return Data(draw(u16), draw(u16), draw(blob), draw(st.booleans()))
    if kind == 7:
        echo = draw(st.none() | st.tuples(st.integers(-1, 0xFFFF), u16))
        return Status(draw(st.integers(-1, 0x10000)), draw(st.integers(0, 0x10000)),
                      draw(st.binary(max_size=40)), echo)
    if kind == 8:
        return Commit()
    if kind == 9:
        return Done()
    return Abort(draw(st.integers(0, 255)), draw(text))


@settings(max_examples=300, deadline=None)
@given(frames())
def test_round_trip_every_frame_both_codecs(frame: Frame) -> None:
    body = frame.encode()
    assert decode_frame(body) == frame
    assert D.decode(body) == device_view(frame)
    assert device_encode(frame) == body


@settings(max_examples=50, deadline=None)
@given(
    st.builds(
        HelloInfo,
        device_id=st.binary(min_size=8, max_size=8),
        hw=text, chip=text,
        running_version=st.none() | text,
        running_sha256=st.none() | st.binary(min_size=32, max_size=32),
        security_counter=u32, slot_size=u32, max_frame=st.integers(1, 0xFFFF_FFFF),
        codecs=st.lists(text, max_size=4).map(tuple),
        max_window_log=st.integers(0, 63), max_segment_payload=u32, max_offer=u32,
        features=st.just(0) | u32, ram_budget=st.just(65536) | u32,
    )
)
def test_hello_info_round_trip(info: HelloInfo) -> None:
    blob_bytes = info.encode()
    assert HelloInfo.decode(blob_bytes) == info
    view = D.decode_hello_info(blob_bytes)
    assert view["hw"] == info.hw and view["codecs"] == list(info.codecs)
    assert view["resume_uid"] is None
    assert (view["features"], view["ram_budget"]) == (info.features, info.ram_budget)
    # the device's encoder gives the same bytes from the same fields
    assert D.encode_hello_info(view) == blob_bytes


def test_hello_ram_budget_is_field_18_only_when_not_the_default() -> None:
    """SPEC 8.3: a default device's hello is unchanged (no field 18); another budget
    goes after 17, which is then 0 (an int, so a reader of 17 takes it), and a reader
    that stops at 17 sees the same hello with the default budget."""
    assert len(msgpack.unpackb(HELLO_INFO.encode())) == 14
    assert len(msgpack.unpackb(FEATURES_INFO.encode())) == 17
    items = msgpack.unpackb(RAM_INFO.encode())
    assert items[14:] == [None, None, 0, 60000]
    assert msgpack.unpackb(dataclasses.replace(RAM_INFO, features=3).encode())[16:] == [3, 60000]
    up_to_17 = msgpack.packb(items[:17], use_bin_type=True)
    assert HelloInfo.decode(up_to_17) == HELLO_INFO
    assert D.decode_hello_info(up_to_17) == HELLO_DEVICE


def test_the_default_ram_budget_is_one_number() -> None:
    """Field 18 is left off for the budget builds target and devices assume: the
    host's and the device's codecs, the installer, the device's limits and the
    builder must mean the same 65,536."""
    from otaferry.device_fw import installer
    from otaferry.device_fw.device import DEFAULT_LIMITS
    from otaferry.protocol import frames as H
    from otaferry.protocol.delta import DEFAULT_DEVICE_RAM

    assert H.DEFAULT_RAM_BUDGET == D.DEFAULT_RAM_BUDGET == installer.DEFAULT_RAM_BUDGET
    assert H.DEFAULT_RAM_BUDGET == DEFAULT_LIMITS["ram_budget"] == DEFAULT_DEVICE_RAM == 65536


@pytest.mark.parametrize("bad", [-1, 2**32, "60000", None, 1.5])
def test_hello_ram_budget_out_of_range_is_a_bad_frame(bad: Any) -> None:
    items = msgpack.unpackb(RAM_INFO.encode())
    blob_bytes = msgpack.packb([*items[:17], bad], use_bin_type=True)
    with pytest.raises(DecodeError) as host:
        HelloInfo.decode(blob_bytes)
    assert host.value.reason == Reason.BAD_FRAME
    with pytest.raises(DeviceError) as dev:
        D.decode_hello_info(blob_bytes)
    assert dev.value.reason == R.BAD_FRAME
    with pytest.raises(DecodeError):
        dataclasses.replace(HELLO_INFO, ram_budget=bad)


def test_hello_info_ignores_appended_fields() -> None:
    items = msgpack.unpackb(HELLO_INFO.encode())
    # fields 15-16 (check-in) absent as nil, 17 (features, SPEC 8.8) 0, 18 (RAM budget,
    # SPEC 8.3) the default, then one a later version may add
    longer = msgpack.packb([*items, None, None, 0, 65536, "a later field"], use_bin_type=True)
    assert HelloInfo.decode(longer) == HELLO_INFO
    assert D.decode_hello_info(longer)["resume_next"] == 7


# --- hostile bodies --------------------------------------------------------------


def _host_rejects(body: bytes) -> bool:
    try:
        decode_frame(body)
    except DecodeError as exc:
        assert exc.reason == Reason.BAD_FRAME
        return True
    return False


def _device_rejects(body: bytes) -> bool:
    try:
        D.decode(body)
    except DeviceError as exc:
        assert exc.reason == R.BAD_FRAME
        return True
    return False


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_raises_only_bad_frame(body: bytes) -> None:
    # both codecs agree on what is a frame, and only ever raise BAD_FRAME
    assert _host_rejects(body) == _device_rejects(body)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | text
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.integers(0, 9), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 45), st.lists(msgpack_values, max_size=6))
def test_msgpack_arrays_that_are_not_frames(code: int, fields: list[Any]) -> None:
    """Well-formed msgpack with a type code and arbitrary fields: the two codecs
    accept exactly the same bodies, and agree on what they mean."""
    body = msgpack.packb([code, *fields], use_bin_type=True)
    host_bad, dev_bad = _host_rejects(body), _device_rejects(body)
    assert host_bad == dev_bad
    if not host_bad:
        assert D.decode(body) == device_view(decode_frame(body))


@settings(max_examples=200, deadline=None)
@given(frames(), st.data())
def test_truncated_and_trailing_bytes_rejected(frame: Frame, data: st.DataObject) -> None:
    body = frame.encode()
    cut = data.draw(st.integers(0, len(body) - 1))
    assert _host_rejects(body[:cut]) and _device_rejects(body[:cut])
    tail = data.draw(st.binary(min_size=1, max_size=4))
    assert _host_rejects(body + tail) and _device_rejects(body + tail)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x90",  # empty array
        b"\x91\x0b",  # unknown type 11
        b"\x91\x21",  # poll flag on a type that has none (QUERY)
        b"\x92\x08\x00",  # COMMIT with a field
        b"\x94\x06\x00\x00\xc4\x00",  # DATA with an empty payload
        b"\x94\x06\xff\x00\xc4\x01\x00",  # DATA for segment -1
        b"\x94\x06\x00\x00\xa1a",  # DATA with str payload
        b"\x94\x03\x03\x03\xc4\x01\x00",  # OFFER part 3 of 3
        b"\x93\x01\x01\xcb\x00\x00\x00\x00\x00\x00\x00\x00",  # QUERY with a float id
        b"\x93\x01\xc3\x05",  # QUERY with a bool version
        b"\x95\x07\x00\x00\xc4\x00\x00",  # STATUS with half an echo
        b"\x94\x06\x00\x00\xc7\x01\x05\x00",  # ext type as payload
        b"\xdd\xff\xff\xff\xff",  # array claiming 4G elements
        b"\x93\x05\x09\xa2\xc3\x28",  # REJECT with invalid UTF-8
        b"\x93\x0a\xcd\x01\x00\xa0",  # ABORT reason 256
    ],
)
def test_known_bad_bodies(body: bytes) -> None:
    assert _host_rejects(body)
    assert _device_rejects(body)


def test_frames_check_themselves() -> None:
    with pytest.raises(DecodeError):
        Data(0, 0, b"")
    with pytest.raises(DecodeError):
        Offer(3, 3, b"x")
    with pytest.raises(DecodeError):
        Status(-2)
    with pytest.raises(DecodeError):
        OfferBlob(10, b"m", b"short signature")


def test_non_canonical_ints_are_accepted() -> None:
    """Decoders take any valid msgpack form; encoders give the shortest."""
    wide = bytes.fromhex("94" "06" "cd0003" "ce00000011" "c40101")
    assert decode_frame(wide) == Data(3, 17, b"\x01")
    assert D.decode(wide) == (6, False, [3, 17, b"\x01"])
    assert Data(3, 17, b"\x01").encode() == bytes.fromhex("94060311c40101")


# --- the overhead budget -------------------------------------------------------------

LORA_FRAME = 51
AEAD_TAG = 8


def test_lora_frame_with_tag_carries_at_least_30_payload_bytes() -> None:
    mtu = LORA_FRAME - AEAD_TAG
    # a 4 MiB image in 8 KiB segments: 512 segments, each up to 8256 bytes
    size = max_chunk_size(mtu, 512, 8256)
    assert size >= 30
    chunks = -(-8256 // size)
    worst = Data(511, chunks - 1, b"\xff" * size, poll=True).encode()
    assert len(worst) <= mtu
    assert data_overhead(511, chunks - 1, size) == len(worst) - size == 9
    # the usual case (< 128 segments, < 256 chunks) costs 7 bytes: 36 of 43 are payload
    assert max_chunk_size(mtu, 75, 8256) == 36
    assert len(Data(74, 229, bytes(36)).encode()) == mtu


@pytest.mark.parametrize("mtu", [16, 20, 43, 64, 128, 251, 255, 256, 1024, 4096])
@pytest.mark.parametrize(("segments", "largest"), [(1, 100), (75, 8256), (600, 8256)])
def test_chunk_and_part_sizes_fit_and_are_maximal(mtu: int, segments: int, largest: int) -> None:
    size = max_chunk_size(mtu, segments, largest)
    assert size >= 1
    chunks = -(-largest // size)
    assert data_overhead(segments - 1, chunks - 1, size) + size <= mtu
    if size < largest:  # one byte more would not fit
        bigger = size + 1
        more = -(-largest // bigger)
        assert data_overhead(segments - 1, more - 1, bigger) + bigger > mtu
    blob_size = 1900
    part = max_part_size(mtu, blob_size)
    count = -(-blob_size // part)
    assert offer_overhead(count - 1, count, part) + part <= mtu
    assert len(Offer(count - 1, count, bytes(part), poll=True).encode()) <= mtu
