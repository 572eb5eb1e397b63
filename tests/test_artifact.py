"""The .ota file: build, streaming read, hostile inputs; the zstd segment codec."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path

import pytest
import zstandard
from helpers_artifacts import (
    ESP8266_V110,
    PROGRAMMER_080,
    NonSeekable,
    key_a,
    key_b,
    small_artifact,
    small_image,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from otaferry.protocol.artifact import (
    HEADER_SIZE,
    MAGIC,
    SIGNATURE_SIZE,
    ArtifactReader,
    assemble,
    build_full,
    inspect_artifact,
    open_artifact,
)
from otaferry.protocol.errors import (
    DecodeError,
    IntegrityError,
    OtaferryError,
    ProtocolError,
    Reason,
    SignatureError,
)
from otaferry.protocol.keys import SigningKey
from otaferry.protocol.manifest import Manifest, SegmentEntry, segment_check, signing_message
from otaferry.protocol.payload import (
    DEFAULT_SEGMENT_SIZE,
    DEFAULT_WINDOW_LOG,
    compress_segments,
    decoder_ram_bytes,
    decompress_segment,
    window_log_for,
)

VECTORS = Path(__file__).parent / "vectors"


def rebuild(reader: ArtifactReader) -> bytes:
    m = reader.manifest
    out = bytearray()
    for i, seg in enumerate(reader.iter_segments()):
        _, length = m.segment_target_range(i)
        out += decompress_segment(seg, length, m.window_log)
    return bytes(out)


def reason_of(data: bytes, trusted: tuple[SigningKey, ...] = ()) -> Reason | None:
    """Read *data* fully (verify if keys are given); the reason it fails, or None."""
    try:
        reader = ArtifactReader(io.BytesIO(data))
        if trusted:
            reader.verify(k.public for k in trusted)
        for _ in reader.iter_segments():
            pass
    except OtaferryError as exc:
        return exc.reason
    return None


@pytest.fixture(scope="module")
def small() -> bytes:
    return small_artifact()


def regions(data: bytes) -> tuple[int, int, int]:
    """(manifest start, signature start, payload start)."""
    (m_len,) = struct.unpack_from("<I", data, 6)
    return HEADER_SIZE, HEADER_SIZE + m_len, HEADER_SIZE + m_len + SIGNATURE_SIZE


# --- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [ESP8266_V110, PROGRAMMER_080], ids=lambda p: p.name)
def test_round_trip_real_firmware_non_seekable(path: Path) -> None:
    image = path.read_bytes()
    key = key_a()
    ota = build_full(image, key, hw=("nodemcu-v3",), chip="esp8266", version="1.10")
    stream = NonSeekable(ota, chunk=1000)
    reader = ArtifactReader(stream)
    assert reader.verify([key_b().public, key.public]) == key.public
    m = reader.manifest
    assert m.target_size == len(image)
    assert m.target_sha256 == hashlib.sha256(image).digest()
    assert m.window_log == DEFAULT_WINDOW_LOG and m.segment_size == DEFAULT_SEGMENT_SIZE
    assert reader.header_size + m.payload_size == len(ota)
    assert rebuild(reader) == image
    # Streaming: the reader never asked for more than one segment at a time.
    assert stream.max_read_request <= max(e.length for e in m.segments)
    assert m.payload_size < len(image)  # zstd actually compressed something


def test_golden_artifact() -> None:
    """A stored small .ota reads, verifies and re-assembles to the same bytes.

    The payload bytes depend on the zstd version, so the golden file is
    checked by reading it, not by rebuilding it with the compressor; assembling
    its own manifest and segments must reproduce it exactly (Ed25519 is
    deterministic).
    """
    data = bytes.fromhex("".join((VECTORS / "artifact_small.ota.hex").read_text().split()))
    assert data[:10] == MAGIC + b"\x01\x00" + struct.pack("<I", regions(data)[1] - HEADER_SIZE)
    reader = ArtifactReader(io.BytesIO(data))
    assert reader.verify([key_a().public]) == key_a().public
    segments = list(ArtifactReader(io.BytesIO(data)).iter_segments())
    assert rebuild(reader) == small_image(10_000)
    assert assemble(reader.manifest, segments, key_a()) == data
    assert reader.manifest.segment_size == 4096 and reader.manifest.window_log == 12


def test_build_is_deterministic_and_signed_over_domain(small: bytes) -> None:
    assert small_artifact() == small
    reader = ArtifactReader(io.BytesIO(small))
    key_a().public.verify(reader.signature, signing_message(reader.manifest_bytes))
    with pytest.raises(SignatureError):
        key_a().public.verify(reader.signature, reader.manifest_bytes)  # no domain prefix


def test_open_and_inspect(tmp_path: Path, small: bytes) -> None:
    path = tmp_path / "u.ota"
    path.write_bytes(small)
    with open_artifact(path) as reader:
        assert rebuild(reader) == small_image()
    info = inspect_artifact(path)
    json.dumps(info)  # stable, JSON-ready
    m = ArtifactReader(io.BytesIO(small)).manifest
    assert info["format"] == 1
    assert info["payload_kind"] == "full"
    assert info["payload_size"] == m.payload_size
    assert info["file_size"] == len(small)
    assert info["target_size"] == len(small_image())
    assert info["target_sha256"] == hashlib.sha256(small_image()).hexdigest()
    assert info["base_sha256"] is None
    assert (info["version"], info["hw"], info["chip"]) == ("1.0.0", ["test-board"], "esp32c3")
    assert (info["project"], info["security_counter"], info["codec"]) == ("demo", 3, "zstd")
    assert (info["window_log"], info["segment_size"], info["segments"]) == (13, 8192, 3)
    assert info["key_id"] == key_a().public.key_id.hex()
    assert info["decoder_ram_bytes"] == 59_484
    assert info["segments_ok"] is True and info["bad_segments"] == []
    assert inspect_artifact(path, [key_a().public])["signature_ok"] is True
    assert inspect_artifact(path, [key_b().public])["signature_error"] == "UNKNOWN_KEY"


def test_inspect_reports_bad_payload_without_raising(tmp_path: Path, small: bytes) -> None:
    start = regions(small)[2]
    path = tmp_path / "bad.ota"
    corrupt = bytearray(small)
    corrupt[start + 5] ^= 0x10
    path.write_bytes(bytes(corrupt))
    info = inspect_artifact(path)
    assert info["segments_ok"] is False
    assert info["bad_segments"] == [0]
    assert info["payload_error"] == "SEGMENT_CORRUPT"
    path.write_bytes(small[:-1])
    assert inspect_artifact(path)["payload_error"] == "TRUNCATED"
    path.write_bytes(small + b"\x00")
    assert inspect_artifact(path)["payload_error"] == "MALFORMED"
    path.write_bytes(small[:30])
    with pytest.raises(DecodeError):
        inspect_artifact(path)


def test_segments_can_be_read_once(small: bytes) -> None:
    reader = ArtifactReader(io.BytesIO(small))
    list(reader.iter_segments())
    with pytest.raises(ProtocolError) as info:
        list(reader.iter_segments())
    assert info.value.reason is Reason.BAD_STATE


def test_assemble_checks_table_and_key(small: bytes) -> None:
    reader = ArtifactReader(io.BytesIO(small))
    segments = list(reader.iter_segments())
    m = reader.manifest
    with pytest.raises(ProtocolError) as info:
        assemble(m, segments, key_b())
    assert info.value.reason is Reason.UNKNOWN_KEY
    with pytest.raises(IntegrityError):
        assemble(m, [segments[0], segments[2], segments[1]], key_a())
    with pytest.raises(ProtocolError):
        assemble(m, segments[:2], key_a())


# --- hostile artifacts ----------------------------------------------------------------


def test_bad_magic(small: bytes) -> None:
    assert reason_of(b"OTAX" + small[4:]) is Reason.BAD_MAGIC
    assert reason_of(b"\x00") is Reason.BAD_MAGIC
    assert reason_of(b"PK\x03\x04" + bytes(100)) is Reason.BAD_MAGIC


def test_unknown_format_and_flags(small: bytes) -> None:
    assert reason_of(small[:4] + b"\x02" + small[5:]) is Reason.UNSUPPORTED_FORMAT
    assert reason_of(small[:4] + b"\x00" + small[5:]) is Reason.UNSUPPORTED_FORMAT
    assert reason_of(small[:5] + b"\x01" + small[6:]) is Reason.MALFORMED
    assert reason_of(small[:5] + b"\x80" + small[6:]) is Reason.MALFORMED


@pytest.mark.parametrize("m_len", [0, (1 << 20) + 1, 0xFFFFFFFF])
def test_manifest_length_out_of_range(small: bytes, m_len: int) -> None:
    assert reason_of(small[:6] + struct.pack("<I", m_len) + small[10:]) is Reason.MALFORMED


def test_truncation_everywhere(small: bytes) -> None:
    _, s_start, p_start = regions(small)
    cuts = set(range(81)) | {s_start - 1, s_start, s_start + 1, p_start - 1, p_start}
    cuts |= {p_start + 1, p_start + 500, len(small) - 1}
    first = ArtifactReader(io.BytesIO(small)).manifest.segments[0].length
    cuts |= {p_start + first - 1, p_start + first, p_start + first + 1}
    for cut in sorted(cuts):
        assert cut < len(small)
        assert reason_of(small[:cut]) is Reason.TRUNCATED, cut
        # Through a stream that dribbles one byte per read, too.
        with pytest.raises(DecodeError) as info:
            reader = ArtifactReader(NonSeekable(small[:cut], chunk=1))
            list(reader.iter_segments())
        assert info.value.reason is Reason.TRUNCATED, cut


def test_flipped_bit_in_manifest(small: bytes) -> None:
    m_start, s_start, _ = regions(small)
    allowed = {
        Reason.BAD_SIGNATURE,
        Reason.MALFORMED,
        Reason.TRUNCATED,
        Reason.UNSUPPORTED_FORMAT,
        Reason.UNKNOWN_KEY,
    }
    seen = set()
    for offset in range(m_start, s_start):
        for bit in (0, 3, 7):
            bad = bytearray(small)
            bad[offset] ^= 1 << bit
            reason = reason_of(bytes(bad), (key_a(),))
            assert reason in allowed, (offset, bit, reason)
            seen.add(reason)
    assert Reason.BAD_SIGNATURE in seen and Reason.MALFORMED in seen


def test_flipped_bit_in_signature(small: bytes) -> None:
    _, s_start, _ = regions(small)
    for offset in (s_start, s_start + 31, s_start + 32, s_start + 63):
        bad = bytearray(small)
        bad[offset] ^= 0x01
        assert reason_of(bytes(bad), (key_a(),)) is Reason.BAD_SIGNATURE


def test_flipped_bit_in_segment(small: bytes) -> None:
    _, _, p_start = regions(small)
    for offset in (p_start, p_start + 100, len(small) - 1):
        bad = bytearray(small)
        bad[offset] ^= 0x40
        assert reason_of(bytes(bad), (key_a(),)) is Reason.SEGMENT_CORRUPT
    # The corrupt segment is never handed out: the earlier ones are, then it stops.
    bad = bytearray(small)
    bad[len(small) - 1] ^= 0x40
    reader = ArtifactReader(io.BytesIO(bytes(bad)))
    got = []
    with pytest.raises(IntegrityError) as info:
        for seg in reader.iter_segments():
            got.append(seg)
    assert len(got) == reader.manifest.segment_count - 1
    assert info.value.fields["index"] == reader.manifest.segment_count - 1


def test_trailing_byte(small: bytes) -> None:
    assert reason_of(small + b"\x00", (key_a(),)) is Reason.MALFORMED
    assert reason_of(small + small, (key_a(),)) is Reason.MALFORMED


def test_untrusted_key(small: bytes) -> None:
    assert reason_of(small, (key_b(),)) is Reason.UNKNOWN_KEY
    assert reason_of(small, (key_a(),)) is None
    with pytest.raises(ProtocolError) as info:
        ArtifactReader(io.BytesIO(small)).verify([])
    assert info.value.reason is Reason.UNKNOWN_KEY


def test_resigned_with_trusted_key_id_but_other_key(small: bytes) -> None:
    """An attacker copies a trusted key id into a manifest and signs it with their key."""
    reader = ArtifactReader(io.BytesIO(small))
    assert reader.manifest.key_id == key_a().public.key_id
    evil = key_b()
    sig = evil.sign(signing_message(reader.manifest_bytes))
    _, s_start, p_start = regions(small)
    forged = small[:s_start] + sig + small[p_start:]
    assert reason_of(forged, (key_a(),)) is Reason.BAD_SIGNATURE


def test_stream_returning_none_is_truncated(small: bytes) -> None:
    class WouldBlock:
        def read(self, n: int = -1, /) -> bytes | None:
            return None

    with pytest.raises(DecodeError) as info:
        ArtifactReader(WouldBlock())
    assert info.value.reason is Reason.TRUNCATED


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_random_mutation_only_raises_otaferry_errors(small: bytes, data: st.DataObject) -> None:
    raw = bytearray(small)
    action = data.draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
    if action == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    elif action == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif action == "insert":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=20))
    else:
        i = data.draw(st.integers(0, 300))
        raw[i : i + data.draw(st.integers(0, 40))] = data.draw(st.binary(max_size=40))
    reason = reason_of(bytes(raw), (key_a(),))
    if bytes(raw) != small:
        assert reason is not None and reason is not Reason.OK


# --- payload codec --------------------------------------------------------------------


def test_decoder_ram_formula() -> None:
    assert decoder_ram_bytes(DEFAULT_SEGMENT_SIZE, DEFAULT_WINDOW_LOG) == 59_484
    assert decoder_ram_bytes(DEFAULT_SEGMENT_SIZE, DEFAULT_WINDOW_LOG) <= 65_536
    assert decoder_ram_bytes(16_384, window_log_for(16_384)) == 92_252
    assert decoder_ram_bytes(16_384, window_log_for(16_384)) > 65_536
    # Block maximum stops growing at 128 KiB.
    assert decoder_ram_bytes(4096, 18) == (1 << 18) + 2 * (128 << 10) + 26_652 + 4096 + 64


def test_window_log_for() -> None:
    assert window_log_for(4096) == 12
    assert window_log_for(8192) == 13
    assert window_log_for(12_288) == 14
    assert window_log_for(100) == 10


@pytest.mark.parametrize("segment_size", [4096, 8192, 16_384])
def test_frames_respect_window_and_header_rules(segment_size: int) -> None:
    image = ESP8266_V110.read_bytes()[:70_000]
    wl = window_log_for(segment_size)
    segments = compress_segments(image, segment_size, level=19)
    assert len(segments) == -(-len(image) // segment_size)
    for i, seg in enumerate(segments):
        params = zstandard.get_frame_parameters(seg)
        want = min(segment_size, len(image) - i * segment_size)
        assert params.content_size == want
        assert params.window_size <= 1 << wl
        assert params.dict_id == 0 and params.has_checksum is False
        assert (
            decompress_segment(seg, want, wl) == image[i * segment_size : i * segment_size + want]
        )


def test_incompressible_segment_stays_bounded() -> None:
    noise = hashlib.shake_256(b"noise").digest(8192)
    (seg,) = compress_segments(noise)
    assert len(seg) <= 8192 + 64  # the slack decoder_ram_bytes budgets
    assert decompress_segment(seg, 8192, 13) == noise


def test_decompress_rejects() -> None:
    image = small_image(8192)
    (seg,) = compress_segments(image)
    big_window = zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters.from_level(
            3, window_log=16, write_content_size=0
        )
    ).compress(image * 4)
    cases = {
        "wrong size": (seg, 8191, 13),
        "trailing": (seg + b"\x00", 8192, 13),
        "short": (seg[:-3], 8192, 13),
        "garbage": (b"not zstd at all", 8192, 13),
        "empty": (b"", 8192, 13),
        "window too small for frame": (seg, 8192, 12),
        "no content size, big window": (big_window, 8192 * 4, 13),
    }
    for name, (data, size, wl) in cases.items():
        with pytest.raises(DecodeError) as info:
            decompress_segment(data, size, wl)
        assert info.value.reason is Reason.DECODE_ERROR, name


def test_compress_argument_checks() -> None:
    for bad in (0, 1000, 6000):
        with pytest.raises(ValueError):
            compress_segments(b"x", bad)
    with pytest.raises(ValueError):
        compress_segments(b"")


def test_manifest_segment_table_matches_payload(small: bytes) -> None:
    reader = ArtifactReader(io.BytesIO(small))
    table = reader.manifest.segments
    for entry, seg in zip(table, reader.iter_segments(), strict=True):
        assert entry == SegmentEntry(len(seg), segment_check(seg))
    assert Manifest.decode(reader.manifest_bytes) == reader.manifest
