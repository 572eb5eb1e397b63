"""The device's framing agrees with the host's (the reference) byte for byte."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from otaferry.device_fw import framing as D
from otaferry.protocol import framing as H

GOLDEN_BODY = bytes.fromhex("920001")
GOLDEN_WIRE = bytes.fromhex("00029206011a85d17600")


def test_golden_vector_both_ways() -> None:
    assert D.encode_frame(GOLDEN_BODY) == GOLDEN_WIRE
    assert D.FrameDecoder().feed(GOLDEN_WIRE) == [GOLDEN_BODY]


def test_cobs_edge_cases_match_reference() -> None:
    cases = [b"", b"\x00", b"\x00\x00", b"\x11\x22\x00\x33", bytes(range(1, 255)),
             bytes(range(1, 256)), bytes(range(0, 256)), bytes(range(2, 256)) + b"\x00",
             b"\x01" * 600, (b"\x00" + b"\x05" * 300) * 2]
    for data in cases:
        assert D.cobs_encode(data) == H.cobs_encode(data), data[:8]
        assert D.cobs_decode(D.cobs_encode(data)) == data


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=700), max_size=5), st.binary(max_size=40),
       st.integers(1, 64))
def test_host_frames_decode_on_device_in_any_split(bodies: list[bytes], garbage: bytes,
                                                   step: int) -> None:
    wire = garbage + b"".join(H.encode_frame(b) for b in bodies)
    for b in bodies:
        assert D.encode_frame(b) == H.encode_frame(b)
    dec = D.FrameDecoder(max_frame=1024)
    got: list[bytes] = []
    for i in range(0, len(wire), step):
        got += dec.feed(wire[i : i + step])
    assert got[-len(bodies):] == bodies if bodies else True
    host = H.FrameDecoder(max_frame=1024).feed(wire)
    assert got == host


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.integers(0, 10_000), st.integers(0, 7))
def test_bit_flips_never_yield_a_wrong_body(body: bytes, pos: int, bit: int) -> None:
    wire = bytearray(D.encode_frame(body))
    i = 1 + pos % (len(wire) - 2)
    wire[i] ^= 1 << bit
    out = D.FrameDecoder().feed(bytes(wire))
    assert all(b == body for b in out)


def test_oversize_is_dropped_and_stream_recovers() -> None:
    dec = D.FrameDecoder(max_frame=64)
    out = dec.feed(D.encode_frame(b"\x07" * 500) + D.encode_frame(b"ok"))
    assert out == [b"ok"] and dec.bad_frames == 1
