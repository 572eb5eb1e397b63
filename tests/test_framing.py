"""Byte-stream framing: COBS, CRC-32 and the incremental frame decoder."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from otaferry.protocol.errors import DecodeError, Reason
from otaferry.protocol.framing import (
    CRC_SIZE,
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    crc32,
    encode_frame,
    max_stuffed_size,
    max_wire_size,
)

# --- known answers -----------------------------------------------------------

_R = bytes(range(256))

# The worked examples of COBS on Wikipedia ("Consistent Overhead Byte Stuffing",
# Encoding examples 1-11); the long ones are written as slices of 00..FF.
COBS_VECTORS = [
    (bytes.fromhex("00"), bytes.fromhex("0101")),
    (bytes.fromhex("0000"), bytes.fromhex("010101")),
    (bytes.fromhex("001100"), bytes.fromhex("01021101")),
    (bytes.fromhex("11220033"), bytes.fromhex("0311220233")),
    (bytes.fromhex("11223344"), bytes.fromhex("0511223344")),
    (bytes.fromhex("11000000"), bytes.fromhex("0211010101")),
    (_R[1:255], b"\xff" + _R[1:255]),
    (_R[0:255], b"\x01\xff" + _R[1:255]),
    (_R[1:256], b"\xff" + _R[1:255] + b"\x02\xff"),
    (_R[2:256] + b"\x00", b"\xff" + _R[2:256] + b"\x01\x01"),
    (_R[3:256] + b"\x00\x01", b"\xfe" + _R[3:256] + b"\x02\x01"),
]


@pytest.mark.parametrize(("raw", "stuffed"), COBS_VECTORS)
def test_cobs_known_answers(raw: bytes, stuffed: bytes) -> None:
    assert cobs_encode(raw) == stuffed
    assert cobs_decode(stuffed) == raw


def test_cobs_empty_and_alternative_full_block_form() -> None:
    assert cobs_encode(b"") == b"\x01"
    assert cobs_decode(b"\x01") == b""
    assert cobs_decode(b"") == b""
    # The paper's encoder leaves an empty group after a final full block; accept it.
    assert cobs_decode(b"\xff" + _R[1:255] + b"\x01") == _R[1:255]


@pytest.mark.parametrize("bad", [b"\x05\x11\x22", b"\x02\x11\x03", b"\x02\x00", b"\x00"])
def test_cobs_decode_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        cobs_decode(bad)
    assert info.value.reason is Reason.BAD_FRAME


def test_crc32_check_value() -> None:
    # CRC-32/ISO-HDLC check value from the CRC catalogue (reveng).
    assert crc32(b"123456789") == 0xCBF43926
    assert crc32(b"") == 0


@given(st.binary(max_size=600), st.binary(max_size=100))
def test_crc32_matches_zlib_and_continues(a: bytes, b: bytes) -> None:
    assert crc32(a) == zlib.crc32(a)
    assert crc32(b, crc32(a)) == crc32(a + b)


def test_encode_frame_golden() -> None:
    # Frozen wire bytes (protocol/SPEC.md section 6): msgpack [0, 1] = 92 00 01,
    # CRC-32 76D1851A stored little-endian, COBS-stuffed, 0x00 on both sides.
    assert encode_frame(bytes.fromhex("920001")) == bytes.fromhex("00029206011a85d17600")
    assert encode_frame(b"123456789") == bytes.fromhex("000e3132333435363738392639f4cb00")


def test_encode_frame_layout() -> None:
    wire = encode_frame(b"\x11\x00\x22")
    assert wire[0] == 0 and wire[-1] == 0
    assert 0 not in wire[1:-1]
    raw = cobs_decode(wire[1:-1])
    assert raw[:-CRC_SIZE] == b"\x11\x00\x22"
    assert raw[-CRC_SIZE:] == zlib.crc32(b"\x11\x00\x22").to_bytes(4, "little")


@given(st.binary(max_size=1100))
def test_cobs_round_trip_and_size_bound(raw: bytes) -> None:
    stuffed = cobs_encode(raw)
    assert 0 not in stuffed
    assert cobs_decode(stuffed) == raw
    assert len(stuffed) <= max_stuffed_size(len(raw)) - CRC_SIZE
    assert len(encode_frame(raw)) <= max_wire_size(len(raw))


# --- the decoder -------------------------------------------------------------

bodies_st = st.lists(st.binary(max_size=300), max_size=8)


def _feed_in_pieces(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += decoder.feed(data[last:cut])
        last = cut
    return out


@given(bodies_st)
def test_decoder_whole_and_byte_by_byte(bodies: list[bytes]) -> None:
    wire = b"".join(encode_frame(b) for b in bodies)
    whole = FrameDecoder(max_frame=300)
    assert whole.feed(wire) == bodies
    single = FrameDecoder(max_frame=300)
    got: list[bytes] = []
    for i in range(len(wire)):
        got += single.feed(wire[i : i + 1])
    assert got == bodies
    for dec in (whole, single):
        assert dec.stats.frames == len(bodies)
        assert dec.stats.bad_frames == 0
        assert dec.stats.garbage_bytes == 0
        assert dec.buffered == 0


@given(bodies_st, st.data())
def test_decoder_random_splits(bodies: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(b) for b in bodies)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=20))
    assert _feed_in_pieces(FrameDecoder(max_frame=300), wire, cuts) == bodies


@given(bodies_st, st.binary(max_size=200), st.binary(max_size=200))
def test_decoder_leading_and_trailing_garbage(
    bodies: list[bytes], head: bytes, tail: bytes
) -> None:
    # Garbage may contain delimiters or not; the frames' own leading 0x00 resyncs.
    wire = head + b"".join(encode_frame(b) for b in bodies) + tail
    decoder = FrameDecoder(max_frame=300)
    assert decoder.feed(wire) == bodies
    # Nothing from the garbage got out; a later frame is still found.
    assert decoder.feed(encode_frame(b"after")) == [b"after"]


def test_decoder_counts_garbage_and_bad_frames() -> None:
    good = encode_frame(b"payload")
    bad_crc = bytearray(good)
    bad_crc[3] ^= 0x01  # a data byte (not a code byte)
    decoder = FrameDecoder(max_frame=64)
    assert decoder.feed(b"noise" + bytes(bad_crc) + good + b"\x00\x02\x00") == [b"payload"]
    stats = decoder.stats
    assert stats.frames == 1
    assert stats.crc_errors == 1
    # "noise" became a frame candidate (runt) and "\x02" too short for a CRC.
    assert stats.cobs_errors == 2
    assert stats.garbage_bytes == len(b"noise") + len(bad_crc) - 2 + 1


def test_every_single_bit_flip_is_caught() -> None:
    body = bytes(random.Random(7).randrange(4) for _ in range(51))  # many zeros
    wire = encode_frame(body)
    for bit in range(len(wire) * 8):
        damaged = bytearray(wire)
        damaged[bit // 8] ^= 1 << (bit % 8)
        decoder = FrameDecoder(max_frame=64)
        got = decoder.feed(bytes(damaged)) + decoder.feed(b"\x00")
        assert got == [], f"bit {bit} went through"
        if 0 < bit // 8 < len(wire) - 1:
            assert decoder.stats.bad_frames >= 1


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=240), st.data())
def test_bit_flips_never_yield_a_wrong_body(body: bytes, data: st.DataObject) -> None:
    wire = bytearray(encode_frame(body))
    positions = data.draw(
        st.lists(st.integers(0, len(wire) * 8 - 1), min_size=1, max_size=6, unique=True)
    )
    for bit in positions:
        wire[bit // 8] ^= 1 << (bit % 8)
    decoder = FrameDecoder(max_frame=240)
    got = decoder.feed(bytes(wire)) + decoder.feed(b"\x00")
    assert got == []
    # And the decoder recovers for the next frame.
    assert decoder.feed(encode_frame(b"next")) == [b"next"]


def test_oversize_frame_dropped_then_recovers() -> None:
    decoder = FrameDecoder(max_frame=100)
    wire = encode_frame(bytes(101)) + encode_frame(bytes(100)) + encode_frame(b"x" * 101)
    assert decoder.feed(wire) == [bytes(100)]
    assert decoder.stats.oversize == 2
    assert decoder.stats.frames == 1


def test_oversize_stream_is_never_buffered_without_bound() -> None:
    decoder = FrameDecoder(max_frame=240)
    limit = max_stuffed_size(240)
    noise = bytes(range(1, 256)) * 40  # ~10 KB with no delimiter
    for i in range(0, len(noise), 97):
        assert decoder.feed(noise[i : i + 97]) == []
        assert decoder.buffered <= limit
    assert decoder.stats.garbage_bytes == len(noise)
    assert decoder.feed(b"\x00") == []
    assert decoder.stats.oversize == 1
    assert decoder.feed(encode_frame(b"ok")) == [b"ok"]


def test_body_of_exactly_max_frame_with_full_blocks() -> None:
    body = bytes(range(1, 256)) * 4  # no zeros: full 254-byte COBS blocks
    decoder = FrameDecoder(max_frame=len(body))
    assert decoder.feed(encode_frame(body)) == [body]


def test_reset_drops_partial_frame() -> None:
    decoder = FrameDecoder()
    wire = encode_frame(b"hello")
    decoder.feed(wire[:4])
    decoder.reset()
    assert decoder.buffered == 0
    assert decoder.feed(wire[4:]) == []  # the tail alone is a bad frame
    assert decoder.feed(wire) == [b"hello"]


def test_max_frame_must_not_be_negative() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=-1)
