"""The device's manifest and header reader agrees with the host's (the reference)
on the golden vectors and refuses everything the host refuses."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from otaferry.device_fw import manifest as DM
from otaferry.device_fw import reasons as R
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.artifact import ArtifactReader
from otaferry.protocol.manifest import Manifest
from test_manifest import NON_CANONICAL, golden_delta, golden_full, read_hex


@pytest.mark.parametrize(
    "name,expected", [("manifest_v1.hex", golden_full), ("manifest_v1_delta.hex", golden_delta)]
)
def test_device_reads_golden_manifest_like_the_host(name: str, expected: object) -> None:
    data = read_hex(name)
    host = Manifest.decode(data)
    assert host == expected()  # type: ignore[operator]
    dev = DM.parse_manifest(data)
    for field in (
        "hw",
        "chip",
        "version",
        "security_counter",
        "target_size",
        "target_sha256",
        "payload_kind",
        "codec",
        "window_log",
        "segment_size",
        "key_id",
    ):
        value = dev[field]
        want = getattr(host, field)
        assert (tuple(value) if isinstance(value, list) else value) == want, field
    assert [(e[0], bytes(e[1])) for e in dev["segments"]] == [tuple(s) for s in host.segments]
    assert dev.get("base_sha256") == host.base_sha256
    assert dev.get("project") == host.project


@pytest.mark.parametrize("data", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_device_refuses_what_the_host_refuses(data: bytes) -> None:
    with pytest.raises(DeviceError) as exc:
        DM.parse_manifest(data)
    assert exc.value.reason == R.MALFORMED, exc.value


def test_device_truncations() -> None:
    data = read_hex("manifest_v1.hex")
    for cut in range(len(data)):
        with pytest.raises(DeviceError) as exc:
            DM.parse_manifest(data[:cut])
        assert exc.value.reason in (R.TRUNCATED, R.MALFORMED), cut


def test_device_reads_golden_artifact_header() -> None:
    art = read_hex("artifact_small.ota.hex")
    manifest_bytes, signature = DM.read_header(io.BytesIO(art))
    host = ArtifactReader(io.BytesIO(art))
    assert manifest_bytes == host.manifest_bytes and signature == host.signature


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_device_random_bytes_raise_only_device_errors(raw: bytes) -> None:
    with contextlib.suppress(DeviceError):
        DM.parse_manifest(raw)
