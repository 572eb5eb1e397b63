"""Offline install on the simulated device: real firmware, hostile artifacts,
power cuts, confirm and rollback. The device side (device_fw) is driven with
artifacts built by the host side (protocol), so the two are checked against
each other, not against themselves."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
from pathlib import Path

import pytest
from otaferry.device_fw import reasons as R
from otaferry.device_fw.device import Device
from otaferry.device_fw.flash import PowerCut
from otaferry.device_fw.installer import install_stream
from otaferry.device_fw.partition_csv import parse_csv
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.artifact import HEADER_SIZE, build_full
from otaferry.protocol.keys import SigningKey
from paths import ESP8266_V110, ESP8266_V194, SIMBA_SHELL_NEW, SIMBA_SHELL_OLD

KEY = SigningKey.from_seed(hashlib.sha256(b"install tests vendor").digest())
OTHER = SigningKey.from_seed(hashlib.sha256(b"install tests stranger").digest())
HW = "board-rev-b"
CHIP = "esp8266"


def make_device(
    tmp_path: Path,
    image: bytes,
    *,
    counter: int = 0,
    csv: str | None = None,
    name: str = "flash.bin",
) -> Path:
    path = tmp_path / name
    Device.create(
        str(path),
        hw=HW,
        chip=CHIP,
        trusted_keys=[KEY.public.raw],
        image=image,
        version="old",
        security_counter=counter,
        partitions_csv=csv,
    ).close()
    return path


def build(
    image: bytes,
    *,
    key: SigningKey = KEY,
    hw: str = HW,
    chip: str = CHIP,
    counter: int = 1,
    version: str = "new",
) -> bytes:
    return build_full(image, key, hw=[hw], chip=chip, version=version, security_counter=counter)


def install(path: Path, artifact: bytes, **kw: object) -> dict[str, object]:
    with Device(str(path), **kw) as dev:  # type: ignore[arg-type]
        return install_stream(dev, io.BytesIO(artifact))  # type: ignore[no-any-return]


def slot_bytes(path: Path, index: int) -> bytes:
    with Device(str(path), read_only=True) as dev:  # callers may hold the device open
        s = dev.slots[index]
        return dev.flash.read(s.offset, s.size)


@pytest.fixture(scope="module")
def old_image() -> bytes:
    return ESP8266_V194.read_bytes()


@pytest.fixture(scope="module")
def new_image() -> bytes:
    return ESP8266_V110.read_bytes()


@pytest.fixture(scope="module")
def new_artifact(new_image: bytes) -> bytes:
    return build(new_image)


# ------------------------------------------------------------------ happy paths


def test_install_boot_confirm_real_firmware(
    tmp_path: Path, old_image: bytes, new_image: bytes, new_artifact: bytes
) -> None:
    flash = make_device(tmp_path, old_image)
    active_before = slot_bytes(flash, 0)
    result = install(flash, new_artifact)
    assert result["slot"] == "ota_1" and result["skipped"] == 0
    assert slot_bytes(flash, 0) == active_before
    with Device(str(flash)) as dev:
        info = dev.info()
        assert info["running_slot"] == 0 and info["next_boot_slot"] == 1
        assert info["slots"][1]["state"] == "NEW"
        assert info["slots"][1]["sha256"] == hashlib.sha256(new_image).hexdigest()
        assert info["security_counter"] == 0  # advances only on confirm
        boot = dev.power_on(self_test=True)
        assert boot["label"] == "ota_1" and boot["state"] == "VALID" and not boot["rolled_back"]
        info = dev.info()
    assert info["running_slot"] == 1 and info["security_counter"] == 1
    assert info["slots"][1]["version"] == "new" and info["slots"][0]["state"] == "VALID"
    assert slot_bytes(flash, 1)[: len(new_image)] == new_image


def test_failed_self_test_rolls_back(tmp_path: Path, old_image: bytes, new_artifact: bytes) -> None:
    flash = make_device(tmp_path, old_image)
    install(flash, new_artifact)
    with Device(str(flash)) as dev:
        boot = dev.power_on(self_test=False)
        assert boot["rolled_back"] and boot["label"] == "ota_0" and boot["version"] == "old"
        info = dev.info()
    assert info["running_slot"] == 0 and info["security_counter"] == 0
    assert info["slots"][1]["state"] in ("INVALID", "ABORTED")
    with Device(str(flash)) as dev:  # and it stays on the old image
        assert dev.power_on(self_test=True)["label"] == "ota_0"


def test_unconfirmed_boot_is_aborted_on_next_reset(
    tmp_path: Path, old_image: bytes, new_artifact: bytes
) -> None:
    flash = make_device(tmp_path, old_image)
    install(flash, new_artifact)
    with Device(str(flash)) as dev:
        first = dev.power_on(self_test=None)
        assert first["label"] == "ota_1" and first["state"] == "PENDING_VERIFY"
    with Device(str(flash)) as dev:
        second = dev.power_on(self_test=True)
        assert second["label"] == "ota_0" and second["rolled_back"]
        assert dev.info()["slots"][1]["state"] == "ABORTED"


def test_second_update_goes_to_the_other_slot(
    tmp_path: Path, old_image: bytes, new_image: bytes, new_artifact: bytes
) -> None:
    flash = make_device(tmp_path, old_image)
    install(flash, new_artifact)
    with Device(str(flash)) as dev:
        dev.power_on(self_test=True)
    third = build(old_image, counter=2, version="third")
    ota1 = slot_bytes(flash, 1)
    assert install(flash, third)["slot"] == "ota_0"
    assert slot_bytes(flash, 1) == ota1  # the running slot, now ota_1, untouched
    with Device(str(flash)) as dev:
        boot = dev.power_on(self_test=True)
        assert boot["label"] == "ota_0" and boot["version"] == "third"
        assert dev.info()["security_counter"] == 2


# ------------------------------------------------------------------ hostile artifacts


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x01
    return bytes(b)


def _manifest_len(art: bytes) -> int:
    return int.from_bytes(art[6:10], "little")


SMALL_CSV = """# slots too small for the esp8266 image
nvs,      data, nvs,     0x9000,  0x4000,
otadata,  data, ota,     0xd000,  0x2000,
phy_init, data, phy,     0xf000,  0x1000,
ota_0,    app,  ota_0,   0x10000, 0x90000,
ota_1,    app,  ota_1,   0xa0000, 0x90000,
"""


def _hostile_cases(image: bytes, art: bytes) -> list[tuple[str, bytes, int, dict[str, object]]]:
    m = _manifest_len(art)
    sig_at = HEADER_SIZE + m
    payload_at = sig_at + 64
    return [
        ("bad signature", _flip(art, sig_at + 5), R.BAD_SIGNATURE, {}),
        ("unknown key", build(image, key=OTHER), R.UNKNOWN_KEY, {}),
        ("tampered manifest", _flip(art, HEADER_SIZE + m - 20), R.BAD_SIGNATURE, {}),
        ("truncated in header", art[:7], R.TRUNCATED, {}),
        ("truncated in manifest", art[: HEADER_SIZE + m // 2], R.TRUNCATED, {}),
        ("truncated in signature", art[: sig_at + 10], R.TRUNCATED, {}),
        ("truncated in payload", art[: len(art) - 1000], R.TRUNCATED, {}),
        ("corrupted first segment", _flip(art, payload_at + 40), R.SEGMENT_CORRUPT, {}),
        ("corrupted last segment", _flip(art, len(art) - 3), R.SEGMENT_CORRUPT, {}),
        ("trailing bytes", art + b"\0", R.MALFORMED, {}),
        ("bad magic", b"XTAF" + art[4:], R.BAD_MAGIC, {}),
        ("downgrade", build(image, counter=2), R.DOWNGRADE, {"counter": 3}),
        ("wrong hw", build(image, hw="board-rev-a"), R.WRONG_HW, {}),
        ("wrong chip", build(image, chip="esp32"), R.WRONG_CHIP, {}),
        ("larger than slot", art, R.TOO_LARGE, {"csv": SMALL_CSV}),
    ]


def test_every_hostile_artifact_is_rejected_and_nothing_is_lost(
    tmp_path: Path, new_image: bytes, new_artifact: bytes
) -> None:
    running = SIMBA_SHELL_OLD.read_bytes()
    seen = set()
    for name, art, reason, opts in _hostile_cases(new_image, new_artifact):
        flash = make_device(
            tmp_path,
            running,
            counter=int(opts.get("counter", 0)),  # type: ignore[call-overload]
            csv=opts.get("csv"),
            name=name.replace(" ", "_") + ".bin",
        )  # type: ignore[arg-type]
        before = flash.read_bytes()
        active = slot_bytes(flash, 0)
        with pytest.raises(DeviceError) as exc:
            install(flash, art)
        assert exc.value.reason == reason, f"{name}: got {exc.value}"
        assert slot_bytes(flash, 0) == active, name
        with Device(str(flash)) as dev:
            assert dev.info()["next_boot_slot"] == 0, name
            boot = dev.power_on(self_test=True)
            assert boot["label"] == "ota_0" and boot["version"] == "old", name
        if reason not in (R.SEGMENT_CORRUPT, R.MALFORMED):
            # rejected before any data: not one byte of flash changed except the store
            # (a file too short for its signed segment table included)
            after = flash.read_bytes()
            assert after[0x10000:] == before[0x10000:], name
        seen.add(reason)
    assert len(seen) == 10


def test_writing_the_active_slot_is_impossible(tmp_path: Path) -> None:
    flash = make_device(tmp_path, SIMBA_SHELL_OLD.read_bytes())
    with Device(str(flash)) as dev:
        active = dev.active_slot()
        with pytest.raises(DeviceError) as exc:
            dev.flash.erase_sector(active.offset)
        assert exc.value.reason == R.FLASH_ERROR


def test_seed_partition_table_refused_for_ota(tmp_path: Path) -> None:
    seed_csv = """# ESP-IDF Partition Table
# Name,   Type, SubType, Offset,  Size, Flags
nvs,      data, nvs,     0x9000,  0x6000,
phy_init, data, phy,     0xf000,  0x1000,
factory,  app,  factory, 0x10000, 1M,
"""
    assert [p.label for p in parse_csv(seed_csv)] == ["nvs", "phy_init", "factory"]
    with pytest.raises(DeviceError) as exc:
        make_device(tmp_path, b"\x01" * 100, csv=seed_csv)
    assert exc.value.reason == R.NO_OTA_SLOT
    assert "ota_0" in exc.value.message and "otadata" in exc.value.message


# ------------------------------------------------------------------ power cuts


def _count_ops(flash: Path, art: bytes) -> int:
    work = flash.with_name("count.bin")
    shutil.copy(flash, work)
    with Device(str(work)) as dev:
        install_stream(dev, io.BytesIO(art))
        return int(dev.flash.ops)


def test_power_cut_at_every_flash_op_then_resume(tmp_path: Path) -> None:
    """Cut power at each flash op of an install; then: the device boots its old
    image, a rerun finishes without decoding again any segment recorded as done,
    and the new image boots and confirms."""
    old, new = SIMBA_SHELL_OLD.read_bytes(), SIMBA_SHELL_NEW.read_bytes()
    art = build(new)
    pristine = make_device(tmp_path, old, name="pristine.bin")
    total_ops = _count_ops(pristine, art)
    nsegs = (len(new) + 8191) // 8192
    assert total_ops > 2 * nsegs
    work = tmp_path / "work.bin"
    for cut in range(total_ops):
        shutil.copy(pristine, work)
        decoded_first: list[int] = []
        with Device(str(work), cut_at=cut) as dev, pytest.raises(PowerCut):
            install_stream(dev, io.BytesIO(art), decode_hook=decoded_first.append)
        with Device(str(work)) as dev:
            progress = dev.progress()
            done = progress["next"] if progress else 0
            assert slot_bytes(work, 0)[: len(old)] == old
        # reboot after the cut: the old image, always
        with Device(str(work)) as dev:
            boot = dev.power_on(self_test=True)
            assert boot["label"] == "ota_0" and boot["version"] == "old", cut
        decoded_again: list[int] = []
        with Device(str(work)) as dev:
            result = install_stream(dev, io.BytesIO(art), decode_hook=decoded_again.append)
        assert not set(decoded_again) & set(range(done)), (cut, done, decoded_again)
        assert result["skipped"] == done
        assert decoded_again == list(range(done, nsegs))
        with Device(str(work)) as dev:
            boot = dev.power_on(self_test=True)
            assert boot["label"] == "ota_1" and boot["state"] == "VALID", cut
        assert slot_bytes(work, 1)[: len(new)] == new


def test_power_cut_during_boot_and_confirm_always_leaves_a_bootable_image(tmp_path: Path) -> None:
    old, new = SIMBA_SHELL_OLD.read_bytes(), SIMBA_SHELL_NEW.read_bytes()
    base = make_device(tmp_path, old, name="base.bin")
    install(base, build(new))
    for cut in range(12):
        work = tmp_path / "w.bin"
        shutil.copy(base, work)
        with Device(str(work), cut_at=cut) as dev, contextlib.suppress(PowerCut):
            dev.power_on(self_test=True)
        with Device(str(work)) as dev:
            boot = dev.power_on(self_test=True)
        assert (boot["label"], boot["version"]) in (("ota_0", "old"), ("ota_1", "new")), cut
        assert boot["state"] == "VALID"


def test_no_install_while_the_running_image_is_unconfirmed(
    tmp_path: Path, old_image: bytes, new_artifact: bytes
) -> None:
    """The other slot then holds the only image that ever confirmed: writing it
    would leave no way back (a review found this; ESP-IDF refuses the same)."""
    flash = make_device(tmp_path, old_image)
    install(flash, new_artifact)
    with Device(str(flash)) as dev:
        assert dev.power_on(self_test=None)["state"] == "PENDING_VERIFY"
    before = slot_bytes(flash, 0)
    third = old_image[:-1] + bytes([old_image[-1] ^ 1])  # neither image (not ALREADY_INSTALLED)
    with pytest.raises(DeviceError) as exc:
        install(flash, build(third, counter=2, version="third"))
    assert exc.value.reason == R.BAD_STATE
    assert slot_bytes(flash, 0) == before
    with Device(str(flash)) as dev:
        dev.power_on(self_test=True)  # the unconfirmed image is aborted: back on ota_0
    assert install(flash, build(third, counter=2, version="third"))["slot"] == "ota_1"


# --- check-in policy (issue [F] 4) --------------------------------------------------


def test_an_update_that_failed_its_self_test_is_never_re_armed(
    tmp_path: Path, old_image: bytes, new_image: bytes, new_artifact: bytes
) -> None:
    flash = make_device(tmp_path, old_image)
    install(flash, new_artifact)
    with Device(str(flash)) as dev:
        boot = dev.power_on(self_test=False, checkin=True)
        assert boot["label"] == "ota_0" and boot["rolled_back"]
        assert [f["reason"] for f in dev.failures()] == [R.SELF_TEST_FAILED]
    with pytest.raises(DeviceError) as exc:
        install(flash, new_artifact)  # the same artifact: refused before any erase
    assert exc.value.reason == R.PREVIOUSLY_FAILED and "SELF_TEST_FAILED" in exc.value.message
    again = build(new_image, version="new-fixed")  # a new artifact of that image: accepted
    assert install(flash, again)["slot"] == "ota_1"
    with Device(str(flash)) as dev:
        assert dev.failures()[-1]["reason"] == R.SELF_TEST_FAILED  # the old one, kept


def test_a_missed_check_in_blocks_but_a_reset_while_pending_does_not(
    tmp_path: Path, old_image: bytes, new_artifact: bytes
) -> None:
    flash = make_device(tmp_path, old_image)
    install(flash, new_artifact)
    with Device(str(flash)) as dev:
        dev.power_on(checkin=True)
        assert dev.pending_checkin() is not None
        # power cut while pending: the next boot returns to ota_0 and says so
    with Device(str(flash)) as dev:
        assert dev.power_on(checkin=True)["label"] == "ota_0"
        assert [f["reason"] for f in dev.failures()] == [R.ROLLED_BACK]
    install(flash, new_artifact)  # ROLLED_BACK may be retried: re-armed, failure cleared
    with Device(str(flash)) as dev:
        assert dev.failures() == []
        dev.power_on(checkin=True)
        dev.abandon_running(R.CHECKIN_TIMEOUT)  # the deadline passes without an answer
        assert dev.power_on(checkin=True)["label"] == "ota_0"
    with pytest.raises(DeviceError) as exc:
        install(flash, new_artifact)
    assert exc.value.reason == R.PREVIOUSLY_FAILED


def test_the_running_image_is_not_offered_again(
    tmp_path: Path, old_image: bytes, new_artifact: bytes
) -> None:
    flash = make_device(tmp_path, old_image)
    install(flash, new_artifact)
    with Device(str(flash)) as dev:
        dev.power_on(self_test=True)  # confirmed (no check-in asked)
    with pytest.raises(DeviceError) as exc:
        install(flash, new_artifact)
    assert exc.value.reason == R.ALREADY_INSTALLED
