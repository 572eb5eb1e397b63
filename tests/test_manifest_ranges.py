"""One table of manifest ranges, enforced alike by the host and the device.

The table is ``tests/vectors/manifest_fields.json``; ``protocol.manifest.FIELDS``
and ``device_fw.manifest.FIELDS`` must equal it. Every bound of every field is
then tried on both readers, at the bound (both accept) and one past it (both
refuse, with the same reason code), so a range one side lacks fails here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers_artifacts import key_a, small_artifact, small_image
from otaferry.device_fw import manifest as DM
from otaferry.device_fw import reasons as R
from otaferry.device_fw.device import Device
from otaferry.device_fw.installer import install_stream
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.artifact import HEADER_SIZE, encode_header
from otaferry.protocol.errors import DecodeError
from otaferry.protocol.manifest import FIELDS, Manifest, segment_check, signing_message
from test_manifest import VECTORS, golden_delta

TABLE = json.loads((VECTORS / "manifest_fields.json").read_text())
U32 = 0xFFFF_FFFF


def test_host_and_device_tables_are_the_shared_vector() -> None:
    want = {int(k): tuple(v) for k, v in TABLE["fields"].items()}
    assert {k: tuple(f) for k, f in FIELDS.items()} == want
    assert dict(DM.FIELDS) == want
    assert TABLE["segment_check_size"] == DM.CHECK_SIZE
    assert TABLE["segment_align"] == DM.SEGMENT_ALIGN


def _base() -> dict[int, Any]:
    """The golden delta manifest (all 16 keys) as a raw map."""
    raw = msgpack.unpackb(golden_delta().encode(), strict_map_key=False)
    assert isinstance(raw, dict)
    return raw


def _with(key: int, value: object) -> dict[int, Any]:
    raw = _base()
    if key == 6:  # a target this large needs segments as large to stay 2 entries
        raw[13] = 0xFFFF_F000
        raw[14] = [[1, segment_check(b"a")], [1, segment_check(b"b")]]
    if key == 13:
        raw[6] = 1
        raw[14] = [[1, segment_check(b"a")]]
    raw[key] = value
    return raw


def _value(kind: str, size: int) -> object:
    if kind == "str":
        return "x" * size
    if kind == "strlist":
        return ["x" * size]
    return size


def _bounds() -> Iterator[tuple[str, dict[int, Any], bool]]:
    """(label, raw manifest, accepted?) at and just past every bound of the table."""
    for key, (name, kind, lo, hi, _req) in ((int(k), v) for k, v in TABLE["fields"].items()):
        if kind == "bin":
            yield f"{name} {lo} bytes", _with(key, b"\x01" * lo), True
            yield f"{name} {lo + 1} bytes", _with(key, b"\x01" * (lo + 1)), False
            yield f"{name} {lo - 1} bytes", _with(key, b"\x01" * (lo - 1)), False
            continue
        if kind == "segments":
            for length, ok in ((hi, True), (hi + 1, False), (lo, True), (lo - 1, False)):
                raw = _base()
                raw[14] = [[length, segment_check(b"s")], *raw[14][1:]]
                yield f"segment length {length}", raw, ok
            continue
        if name == "format" or name == "payload_kind":
            continue  # other reasons / other shapes: covered in test_manifest.py
        top = hi - hi % TABLE["segment_align"] if name == "segment_size" else hi
        yield f"{name}={top}", _with(key, _value(kind, top)), True
        yield f"{name}={hi + 1}", _with(key, _value(kind, hi + 1)), False
        if lo > 0:
            yield f"{name}={lo - 1}", _with(key, _value(kind, lo - 1)), False


BOUNDS = list(_bounds())


@pytest.mark.parametrize(("raw", "ok"), [b[1:] for b in BOUNDS], ids=[b[0] for b in BOUNDS])
def test_every_bound_is_one_rule_on_host_and_device(raw: dict[int, Any], ok: bool) -> None:
    data = msgpack.packb(raw, use_bin_type=True)
    try:
        Manifest.decode(data)
        host = "OK"
    except DecodeError as exc:
        host = exc.reason.name
    try:
        DM.parse_manifest(data)
        device = "OK"
    except DeviceError as exc:
        device = R.name(exc.reason)
    assert host == device, (host, device)
    assert (host == "OK") == ok, host
    if not ok:
        assert host == "MALFORMED"


def _signed_raw(raw: dict[int, Any], segments: list[bytes]) -> bytes:
    """An .ota whose manifest is ``raw`` exactly as given, signed by the test key."""
    data = msgpack.packb(raw, use_bin_type=True)
    sig = key_a().sign(signing_message(data))
    return encode_header(len(data)) + data + sig + b"".join(segments)


def test_vendor_signed_counter_of_2_32_is_refused_by_the_device(tmp_path: Path) -> None:
    """The attack: a signed counter the host can never match would lock the device
    out of every later update. The device refuses it like the host does."""
    art = small_artifact()
    m = int.from_bytes(art[6:10], "little")
    manifest = Manifest.decode(art[HEADER_SIZE : HEADER_SIZE + m])
    raw = msgpack.unpackb(manifest.encode(), strict_map_key=False)
    raw[5] = 1 << 32
    segments, pos = [], HEADER_SIZE + m + 64
    for entry in manifest.segments:
        segments.append(art[pos : pos + entry.length])
        pos += entry.length
    path = tmp_path / "flash.bin"
    Device.create(str(path), hw="test-board", chip="esp32c3", trusted_keys=[key_a().public.raw],
                  image=small_image(9000), version="0").close()  # fmt: skip
    with Device(str(path)) as dev, pytest.raises(DeviceError) as exc:
        install_stream(dev, io.BytesIO(_signed_raw(raw, segments)))
    assert exc.value.reason == R.MALFORMED and "security_counter" in exc.value.message
    with Device(str(path)) as dev:
        assert dev.identity()["security_counter"] == 0 and dev.progress() is None
