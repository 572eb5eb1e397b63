"""Hostile files against the host tools and one rule for host and device.

Each test is a regression for an outside attack: allocation from an unverified
length in ``inspect``, a zstd segment with bytes after its frame (the device
accepted it, the host refused it), and an unsigned manifest parsed before its
signature was checked.
"""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import msgpack
import pytest
import zstandard
from helpers_artifacts import key_a, key_b, small_artifact, small_image
from otaferry.device_fw import port
from otaferry.device_fw import reasons as R
from otaferry.device_fw.device import Device
from otaferry.device_fw.installer import install_stream
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.artifact import (
    HEADER_SIZE,
    ArtifactReader,
    assemble,
    encode_header,
    inspect_artifact,
)
from otaferry.protocol.errors import DecodeError, ProtocolError, Reason
from otaferry.protocol.manifest import Manifest, build_segment_table
from otaferry.protocol.payload import decompress_segment


def _peak(fn: object) -> int:
    tracemalloc.start()
    try:
        fn()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_inspect_never_allocates_a_declared_length(tmp_path: Path) -> None:
    """A 196-byte unsigned file whose one segment claims 0xFFFFFFFF bytes: inspect
    reports TRUNCATED and allocates what the file has, not 4 GiB."""
    raw = {1: 1, 2: ["b"], 3: "c", 4: "1", 5: 0, 6: 0xFFFF_F000, 7: b"\x01" * 32, 8: 0,
           11: "zstd", 12: 13, 13: 0xFFFF_F000, 14: [[0xFFFF_FFFF, b"\x02" * 16]],
           15: b"\x03" * 8}  # fmt: skip
    manifest = msgpack.packb(raw, use_bin_type=True)
    data = encode_header(len(manifest)) + manifest + b"\x00" * 64
    data += b"\x00" * (196 - len(data))
    path = tmp_path / "evil.ota"
    path.write_bytes(data)
    info: dict[str, object] = {}
    used = _peak(lambda: info.update(inspect_artifact(path)))
    assert info["payload_error"] == "TRUNCATED" and info["segments_ok"] is False
    assert used < 1 << 20, used


def _with_trailing(extra: bytes) -> tuple[bytes, bytes]:
    """A signed artifact whose first segment is its zstd frame followed by ``extra``."""
    image = small_image(6000)
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True,
                                     write_checksum=False).compress(image)  # fmt: skip
    segment = frame + extra
    manifest = Manifest.decode(
        ArtifactReader(io.BytesIO(small_artifact(image=image))).manifest_bytes
    )
    import dataclasses

    manifest = dataclasses.replace(manifest, segments=build_segment_table([segment]))
    return assemble(manifest, [segment], key_a()), segment


def test_bytes_after_the_zstd_frame_are_one_rule(tmp_path: Path) -> None:
    art, segment = _with_trailing(b"\x00garbage")
    with pytest.raises(DecodeError) as host:
        decompress_segment(segment, 6000, 13)
    assert host.value.reason == Reason.DECODE_ERROR
    with pytest.raises(ValueError):
        port.zstd_decompress(segment, 6000, 13)
    path = tmp_path / "flash.bin"
    Device.create(str(path), hw="test-board", chip="esp32c3", trusted_keys=[key_a().public.raw],
                  image=small_image(9000), version="0").close()  # fmt: skip
    with Device(str(path)) as dev, pytest.raises(DeviceError) as device:
        install_stream(dev, io.BytesIO(art))
    assert device.value.reason == R.DECODE_ERROR == int(host.value.reason)


def test_reader_with_keys_verifies_before_it_parses() -> None:
    """Given trusted keys, an unsigned 1 MiB manifest costs its bytes and the signed
    message, not the ~10 MB its parse would (segment lists, re-encoding)."""
    n = ((1 << 20) - 200) // 21
    raw = {1: 1, 2: ["b"], 3: "c", 4: "1", 5: 0, 6: n * 4096, 7: b"\x01" * 32, 8: 0,
           11: "zstd", 12: 13, 13: 4096, 14: [[100, b"\x02" * 16]] * n,
           15: key_a().public.key_id}  # fmt: skip
    manifest = msgpack.packb(raw, use_bin_type=True)
    data = encode_header(len(manifest)) + manifest + b"\x00" * 64
    errors: list[ProtocolError] = []

    def read() -> None:
        try:
            ArtifactReader(io.BytesIO(data), trusted=[key_a().public])
        except ProtocolError as exc:
            errors.append(exc)

    used = _peak(read)
    assert errors and errors[0].reason == Reason.BAD_SIGNATURE
    assert used < 3 * len(manifest) + (1 << 16), used
    with pytest.raises(ProtocolError) as exc:  # another vendor's file: its key is unknown
        ArtifactReader(io.BytesIO(small_artifact(key_b())), trusted=[key_a().public])
    assert exc.value.reason == Reason.UNKNOWN_KEY
    assert ArtifactReader(io.BytesIO(small_artifact()), trusted=[key_a().public]).verified_key
    assert HEADER_SIZE == 10
