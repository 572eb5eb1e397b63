"""Delta artifacts on the device: real release pairs, wrong base, power cuts, RAM limit."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest
from otaferry.device_fw import reasons as R
from otaferry.device_fw.device import Device
from otaferry.device_fw.flash import PowerCut
from otaferry.device_fw.installer import install_stream
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.artifact import build_delta, inspect_artifact
from otaferry.protocol.keys import SigningKey
from paths import ESP8266_V110, ESP8266_V194, SIMBA_SHELL_NEW, SIMBA_SHELL_OLD

KEY = SigningKey.from_seed(hashlib.sha256(b"delta install tests").digest())


def device(tmp_path: Path, image: bytes, name: str = "flash.bin", **kw: object) -> Path:
    path = tmp_path / name
    Device.create(
        str(path),
        hw="hw",
        chip="chip",
        trusted_keys=[KEY.public.raw],
        image=image,
        version="old",
        **kw,
    ).close()  # type: ignore[arg-type]
    return path


def delta(old: bytes, new: bytes, counter: int = 1) -> bytes:
    return build_delta(
        old, new, KEY, hw=["hw"], chip="chip", version="new", security_counter=counter
    )


def slot(path: Path, index: int, size: int) -> bytes:
    with Device(str(path)) as dev:
        return bytes(dev.flash.read(dev.slots[index].offset, size))


def test_delta_of_real_release_pair_installs_and_boots(tmp_path: Path) -> None:
    old, new = ESP8266_V194.read_bytes(), ESP8266_V110.read_bytes()
    art = delta(old, new)
    assert len(art) < len(new) // 5  # a delta, not a full image
    flash = device(tmp_path, old)
    decoded: list[int] = []
    with Device(str(flash)) as dev:
        result = install_stream(dev, io.BytesIO(art), decode_hook=decoded.append)
    assert result["slot"] == "ota_1" and decoded == list(range(len(decoded)))
    assert slot(flash, 1, len(new)) == new and slot(flash, 0, len(old)) == old
    with Device(str(flash)) as dev:
        boot = dev.power_on(self_test=True)
        assert boot["label"] == "ota_1" and boot["version"] == "new" and boot["state"] == "VALID"


def test_delta_against_the_wrong_base_is_refused(tmp_path: Path) -> None:
    art = delta(ESP8266_V194.read_bytes(), ESP8266_V110.read_bytes())
    running = SIMBA_SHELL_OLD.read_bytes()
    flash = device(tmp_path, running)
    before = flash.read_bytes()
    with pytest.raises(DeviceError) as exc:
        install(flash, art)
    assert exc.value.reason == R.WRONG_BASE
    assert flash.read_bytes() == before


def install(flash: Path, art: bytes, **kw: object) -> dict[str, object]:
    with Device(str(flash), **kw) as dev:  # type: ignore[arg-type]
        return install_stream(dev, io.BytesIO(art))  # type: ignore[no-any-return]


def test_delta_over_the_device_ram_budget_is_refused(tmp_path: Path) -> None:
    old, new = ESP8266_V194.read_bytes(), ESP8266_V110.read_bytes()
    flash = device(
        tmp_path,
        old,
        limits={"max_window_log": 13, "max_segment_payload": 8256, "ram_budget": 40_000},
    )
    with pytest.raises(DeviceError) as exc:
        install(flash, delta(old, new))
    assert exc.value.reason == R.RESOURCE_LIMIT


def test_inspect_reports_a_delta(tmp_path: Path) -> None:
    old, new = SIMBA_SHELL_OLD.read_bytes(), SIMBA_SHELL_NEW.read_bytes()
    p = tmp_path / "d.ota"
    p.write_bytes(delta(old, new))
    info = inspect_artifact(str(p))
    assert info["payload_kind"] == "delta" and info["codec"] == "fdelta1"
    assert info["base_sha256"] == hashlib.sha256(old).hexdigest()
    assert info["segments_ok"]


def test_power_cut_at_every_op_of_a_delta_install_then_resume(tmp_path: Path) -> None:
    old, new = SIMBA_SHELL_OLD.read_bytes(), SIMBA_SHELL_NEW.read_bytes()
    art = delta(old, new)
    pristine = device(tmp_path, old, name="pristine.bin")
    probe = tmp_path / "probe.bin"
    shutil.copy(pristine, probe)
    with Device(str(probe)) as dev:
        install_stream(dev, io.BytesIO(art))
        total = dev.flash.ops
    work = tmp_path / "work.bin"
    for cut in range(total):
        shutil.copy(pristine, work)
        with Device(str(work), cut_at=cut) as dev, pytest.raises(PowerCut):
            install_stream(dev, io.BytesIO(art))
        with Device(str(work)) as dev:
            progress = dev.progress()
            done = progress["next"] if progress else 0
            boot = dev.power_on(self_test=True)
            assert boot["label"] == "ota_0", cut  # the old image, always
        again: list[int] = []
        with Device(str(work)) as dev:
            install_stream(dev, io.BytesIO(art), decode_hook=again.append)
        assert again == list(range(done, len(again) + done)), (cut, done, again)
        assert slot(work, 1, len(new)) == new, cut
        assert slot(work, 0, len(old)) == old, cut
