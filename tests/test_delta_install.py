"""Delta artifacts on the device: real release pairs, wrong base, power cuts, RAM limit."""

from __future__ import annotations

import functools
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


def delta(old: bytes, new: bytes, counter: int = 1, **kw: int) -> bytes:
    if (old, new, counter, kw) == (ESP8266_V194.read_bytes(), ESP8266_V110.read_bytes(), 1, {}):
        return _esp8266_delta()
    return build_delta(
        old, new, KEY, hw=["hw"], chip="chip", version="new", security_counter=counter, **kw
    )


@functools.cache
def _esp8266_delta() -> bytes:
    """The real release pair's delta, built once for the tests that share it (the
    builder weighs three codecs at each segment size: ~40 s a build)."""
    return build_delta(
        ESP8266_V194.read_bytes(), ESP8266_V110.read_bytes(), KEY,
        hw=["hw"], chip="chip", version="new", security_counter=1,
    )  # fmt: skip


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
    assert info["payload_kind"] == "delta" and info["codec"] in ("fdelta1", "fdelta2", "fdelta3")
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


NVS_AFTER_SLOTS_CSV = """\
otadata,  data, ota,     0xd000,  0x2000,
phy_init, data, phy,     0xf000,  0x1000,
ota_0,    app,  ota_0,   0x10000, 0x10000,
ota_1,    app,  ota_1,   0x20000, 0x10000,
nvs,      data, nvs,     0x30000, 0x4000,
"""


def _reaching_delta(flash: Path, running: bytes, claimed_base: int) -> tuple[bytes, bytes]:
    """A vendor-signed delta for the running image (its SHA-256) that claims a base of
    ``claimed_base`` bytes and copies what lies past the running image, up to the
    nvs sector after the slots (the device's link key): (artifact, what it copies)."""
    from otaferry.protocol.delta import encode_delta
    from otaferry.protocol.manifest import PAYLOAD_DELTA, Manifest, build_segment_table

    flat = flash.read_bytes()
    beyond = flat[0x10000 : 0x10000 + claimed_base]
    stolen = beyond[-0x4000:]
    result = encode_delta(beyond, stolen, 0x4000)
    manifest = Manifest(
        hw=("hw",), chip="chip", version="evil", security_counter=1,
        target_size=len(stolen), target_sha256=hashlib.sha256(stolen).digest(),
        payload_kind=PAYLOAD_DELTA, codec=result.codec, window_log=result.window_log,
        segment_size=result.segment_size, segments=build_segment_table(result.segments),
        key_id=KEY.public.key_id, base_sha256=hashlib.sha256(running).digest(),
        base_size=claimed_base,
    )  # fmt: skip
    from otaferry.protocol.artifact import assemble

    return assemble(manifest, result.segments, KEY), stolen


def test_delta_reads_stay_inside_the_running_image(tmp_path: Path) -> None:
    """The attack: base_size past the running image made the applier read the passive
    slot and the nvs partition behind it (the X25519 link key) into the new image.
    The signed base_size must be the running image's size, and whatever a manifest
    says, reads stop at the running image's own end."""
    running = SIMBA_SHELL_OLD.read_bytes()[:0x8000]
    flash = device(tmp_path, running, partitions_csv=NVS_AFTER_SLOTS_CSV, size=0x40000)
    with Device(str(flash)) as dev:
        link_key = bytes(dev.link_key())
    art, stolen = _reaching_delta(flash, running, 0x24000)
    assert stolen.find(link_key) >= 0  # the bytes it would copy hold the key
    before = flash.read_bytes()
    with pytest.raises(DeviceError) as exc:
        install(flash, art)
    assert exc.value.reason == R.WRONG_BASE
    assert flash.read_bytes() == before
    # The applier's own bound: were the manifest's base_size believed (the install
    # set up by hand, as if the check had passed), reads still stop at the end of
    # the running image and nothing of the key reaches the passive slot.
    from otaferry.device_fw import manifest as DM
    from otaferry.device_fw.installer import Installer

    manifest_bytes, _signature = DM.read_header(io.BytesIO(art))
    payload = art[10 + len(manifest_bytes) + 64 :]
    with Device(str(flash)) as dev:
        inst = Installer(dev)
        inst.manifest = DM.parse_manifest(manifest_bytes)
        inst.manifest_bytes = manifest_bytes
        inst.uid = DM.update_id(manifest_bytes)
        inst.slot = dev.passive_slot()
        inst.start()
        with pytest.raises(DeviceError) as exc:
            inst.segment(0, payload)
        assert exc.value.reason == R.DECODE_ERROR and "outside old image" in exc.value.message
        written = bytes(dev.flash.read(dev.passive_slot().offset, len(stolen)))
    assert written.find(link_key) < 0


def _ram_check_is_tight(tmp_path: Path, old: bytes, new: bytes, art: bytes, codec: str) -> None:
    """The largest delta the RAM check admits must fit the budget it was checked
    against, measured (``bench memory``'s applier row: tracemalloc peak of
    Installer.segment plus the payload it holds); one byte less is refused."""
    from otaferry.tools.bench import memory as M

    row = M.applier_peak(tmp_path, old, art, codec, new)
    assert row["codec"] == codec and row["applied_ok"]
    budget = row["bound_bytes"]
    assert budget - 4096 < row["peak_bytes"] <= budget, row  # tight, not padded
    one_less = dict(M.ram_limits(art), ram_budget=budget - 1)
    tight = M.make_device(tmp_path / "tight.bin", image=old, limits=one_less)
    with tight as dev, pytest.raises(DeviceError) as exc:
        install_stream(dev, io.BytesIO(art))
    assert exc.value.reason == R.RESOURCE_LIMIT


def test_ram_check_agrees_with_the_applier(tmp_path: Path) -> None:
    """SPEC 7.6 (the formula admitted 73-75 KB under a 65,536 budget before)."""
    from otaferry.tools.bench import memory as M

    old, new = M.near_limit_pair()
    art = M.build(old, new, segment_size=32768, device_ram=1 << 20)  # one big segment
    assert M.ram_limits(art)["ram_budget"] > 60_000  # near the default 65,536 budget
    _ram_check_is_tight(tmp_path, old, new, art, "fdelta1")


def test_ram_check_agrees_with_the_fdelta2_applier(tmp_path: Path) -> None:
    """SPEC 7.7: fdelta2's branch predictor tables and learning closure are counted."""
    from otaferry.protocol.delta import ARCH_XTENSA, encode_delta
    from otaferry.tools.bench import memory as M

    old, new = M.xtensa_slice()
    res = encode_delta(old, new, 16384, (ARCH_XTENSA,))
    _ram_check_is_tight(tmp_path, old, new, M.build(old, new, encoded=res), "fdelta2")


def test_ram_check_agrees_with_the_fdelta3_applier(tmp_path: Path) -> None:
    """SPEC 7.8: fdelta3's matches read back what the segment wrote (through the
    installer's read_new) and the old image, and the formula stays tight."""
    from otaferry.protocol.delta import ARCH_XTENSA, encode_delta
    from otaferry.tools.bench import memory as M

    old, new = M.xtensa_slice()
    res = encode_delta(old, new, 16384, (ARCH_XTENSA,), lz=True)
    _ram_check_is_tight(tmp_path, old, new, M.build(old, new, encoded=res), "fdelta3")
