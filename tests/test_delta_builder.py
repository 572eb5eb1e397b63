"""The builder never emits a delta its target cannot apply (issue [L]).

Small synthetic images only: the segment-size search encodes each image
several times, and the real corpus belongs to ``otaferry bench delta``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from pathlib import Path

import pytest
from otaferry.device_fw.delta_apply import apply_segment
from otaferry.device_fw.delta_apply import ram_budget as device_ram_budget
from otaferry.protocol.artifact import build_delta, build_full, device_ram_bytes
from otaferry.protocol.delta import (
    DEFAULT_DEVICE_RAM,
    encode_delta_for_device,
    max_payload_for,
)
from otaferry.protocol.errors import OtaferryError, Reason, RemoteError
from otaferry.protocol.frames import HelloInfo
from otaferry.protocol.keys import SigningKey
from otaferry.protocol.shared_artifact import Artifact
from otaferry.transport.updater import choose_artifact

KEY = SigningKey.from_seed(hashlib.sha256(b"delta builder tests").digest())


def _apply(
    old: bytes, new_size: int, res_segments: list[bytes], seg: int, codec: str = "fdelta1"
) -> bytes:
    out = bytearray()
    for i, p in enumerate(res_segments):
        apply_segment(p, lambda o, n: old[o : o + n], len(old), min(seg, new_size - i * seg),
                      out.extend, codec=codec,
                      read_new=lambda o, n, b=i * seg: bytes(out[b + o : b + o + n]))  # fmt: skip
    return bytes(out)


def _unrelated(n: int, seed: int) -> tuple[bytes, bytes]:
    rnd = random.Random(seed)
    return rnd.randbytes(n), rnd.randbytes(n)


def test_segments_shrink_until_the_device_check_passes() -> None:
    # nothing in common: every segment is literals, its payload about its size,
    # so 24 KiB segments (payload > 22,077 B) would be refused by the device
    old, new = _unrelated(40_000, 1)
    res = encode_delta_for_device(old, new)
    assert res.max_segment_payload <= max_payload_for(DEFAULT_DEVICE_RAM)
    assert device_ram_budget(res.max_segment_payload) == res.device_ram <= DEFAULT_DEVICE_RAM
    assert res.segment_size == 16384
    assert _apply(old, len(new), res.segments, res.segment_size, res.codec) == new


def test_a_smaller_budget_gets_smaller_segments() -> None:
    old, new = _unrelated(40_000, 2)
    res = encode_delta_for_device(old, new, device_ram=43_971 + 9000)  # SPEC 7.6
    assert res.segment_size == 8192 and res.device_ram <= 43_971 + 9000
    assert _apply(old, len(new), res.segments, res.segment_size, res.codec) == new


def test_similar_images_get_large_segments() -> None:
    old = random.Random(3).randbytes(60_000)
    new = bytearray(old)
    new[1000:1010] = b"0123456789"
    res = encode_delta_for_device(old, bytes(new))
    assert res.segment_size >= 65536 and len(res.segments) == 1
    assert _apply(old, len(new), res.segments, res.segment_size, res.codec) == new


def test_no_segmentation_fits_is_one_clear_error() -> None:
    old, new = _unrelated(8192, 4)
    with pytest.raises(OtaferryError) as exc:
        encode_delta_for_device(old, new, device_ram=45_000)
    assert exc.value.reason == Reason.RESOURCE_LIMIT
    assert "no segmentation" in exc.value.message and "\n" not in exc.value.message
    assert "4096 B segments need" in exc.value.message


def test_a_forced_segment_size_that_does_not_fit_is_refused() -> None:
    old, new = _unrelated(40_000, 5)
    with pytest.raises(OtaferryError) as exc:
        build_delta(old, new, KEY, hw=["hw"], chip="c", version="2", segment_size=32768)
    assert exc.value.reason == Reason.RESOURCE_LIMIT and "--segment-size" in exc.value.message


def _hello(running: bytes) -> HelloInfo:
    return HelloInfo(
        device_id=b"\x01" * 8, hw="hw", chip="c", running_version="1",
        running_sha256=hashlib.sha256(running).digest(), security_counter=0,
        slot_size=1 << 20, max_frame=255, codecs=("zstd", "fdelta1"), max_window_log=13,
        max_segment_payload=8256, max_offer=4096,
    )  # fmt: skip


def test_the_sender_picks_the_smaller_of_delta_and_full() -> None:
    old, new = _unrelated(12_000, 6)
    new = new[:4000] * 3  # compresses well alone, shares nothing with old
    # (without fdelta3, whose matches inside a segment would find the repeats too)
    enc = encode_delta_for_device(old, new, lz=False)
    delta = build_delta(old, new, KEY, hw=["hw"], chip="c", version="2", encoded=enc)
    full = build_full(new, KEY, hw=["hw"], chip="c", version="2")
    assert len(full) < len(delta)
    info = _hello(old)
    for offered in ([delta, full], [full, delta], [Artifact.parse(delta), Artifact.parse(full)]):
        chosen = choose_artifact(offered, info)
        assert Artifact.of(chosen).is_delta is False
    assert choose_artifact([delta, full], info, allow_full=False) is delta
    with pytest.raises(RemoteError):
        choose_artifact([full], info, allow_full=False)
    # a delta that is smaller goes
    near = bytearray(old)
    near[5:9] = b"abcd"
    small = build_delta(old, bytes(near), KEY, hw=["hw"], chip="c", version="3")
    big_full = build_full(bytes(near), KEY, hw=["hw"], chip="c", version="3")
    assert choose_artifact([big_full, small], info) is small


def test_the_sender_skips_a_delta_above_the_devices_ram_budget() -> None:
    """HELLO field 18 (SPEC 8.3): a device that allows less RAM than a delta needs
    gets the full image (or a delta built for its budget), and with full images not
    allowed the refusal says how to rebuild, not that no delta matched."""
    rng = random.Random(7)
    old = rng.randbytes(32 * 1024)
    new = rng.randbytes(20 * 1024) + old[20 * 1024 :]  # no compression: big payloads
    wide = build_delta(old, new, KEY, hw=["hw"], chip="c", version="2", codecs=["fdelta1"])
    need = device_ram_bytes(Artifact.parse(wide).manifest)
    assert 60_000 < need <= 65_536
    fitted = build_delta(old, new, KEY, hw=["hw"], chip="c", version="2", codecs=["fdelta1"],
                         device_ram=60_000)  # fmt: skip
    full = build_full(new, KEY, hw=["hw"], chip="c", version="2")
    assert len(wide) < len(fitted) < len(full)
    default, small = _hello(old), dataclasses.replace(_hello(old), ram_budget=60_000)
    assert choose_artifact([full, wide], default) is wide
    assert choose_artifact([full, wide], small) is full
    assert choose_artifact([full, wide, fitted], small) is fitted
    with pytest.raises(RemoteError) as exc:
        choose_artifact([full, wide], small, allow_full=False)
    assert exc.value.reason == Reason.RESOURCE_LIMIT
    assert exc.value.message == (
        f"delta needs {need} bytes of RAM, the device allows 60000: "
        "rebuild it with otaferry build --base ... --device-ram 60000"
    )


def test_cli_build_warns_when_the_delta_is_not_smaller(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otaferry.tools.cli import main

    old, new = _unrelated(12_000, 7)
    (tmp_path / "old.bin").write_bytes(old)
    (tmp_path / "new.bin").write_bytes(new)  # nothing in common, nothing repeats
    assert main(["keygen", str(tmp_path / "k")]) == 0
    args = ["build", "--key", str(tmp_path / "k"), "--hw", "hw", "--chip", "c", "--version", "2"]
    out = str(tmp_path / "d.ota")
    files = ["--base", str(tmp_path / "old.bin"), str(tmp_path / "new.bin"), "-o", out]
    assert main([*args, *files]) == 0
    err = capsys.readouterr().err
    assert "warning: the delta" in err and "not smaller than the full image" in err
    assert main([*args, "--device-ram", "40000", *files]) == 1
    err = capsys.readouterr().err
    assert "error[RESOURCE_LIMIT]: no segmentation" in err and err.count("\n") == 1


def test_new_code_repeating_itself_gets_fdelta3_within_the_budget() -> None:
    # the new image adds a block that repeats inside itself and a few short pieces
    # of old code: fdelta3's matches code it, and the builder still fits the device
    rnd = random.Random(7)
    old = rnd.randbytes(30_000)
    block = rnd.randbytes(600)
    new = old[:10_000] + block * 6 + old[100:140] + rnd.randbytes(64) + block + old[10_000:]
    res = encode_delta_for_device(old, new)
    assert res.codec == "fdelta3" and res.device_ram <= DEFAULT_DEVICE_RAM
    plain = encode_delta_for_device(old, new, lz=False)
    assert res.payload_size < plain.payload_size - 1000
    assert _apply(old, len(new), res.segments, res.segment_size, res.codec) == new
