"""Boot robustness against hostile or damaged flash (the simulated flash file is
the device's whole memory): each test is an attack that stopped or misled the
bootloader, the installer or ``device info`` before."""

from __future__ import annotations

import io
import itertools
import os
import struct
import time
import zlib
from pathlib import Path

import pytest
from helpers_artifacts import key_a, small_image
from otaferry.device_fw import bootrec, mpack
from otaferry.device_fw import otadata as od
from otaferry.device_fw.device import Device
from otaferry.device_fw.flash import SECTOR_SIZE, PowerCut
from otaferry.device_fw.installer import install_stream
from otaferry.device_fw.reasons import BAD_STATE, DeviceError, FlashError
from otaferry.device_fw.store import Store
from otaferry.protocol.artifact import build_full
from otaferry.tools.bench.campaign.boot import erase_otadata, table, wreck_store

OLD = small_image(9000)
NEW = small_image(12_000)[::-1]


def _device(tmp_path: Path, counter: int = 0) -> Path:
    path = tmp_path / "flash.bin"
    Device.create(str(path), hw="test-board", chip="esp32c3", trusted_keys=[key_a().public.raw],
                  image=OLD, version="old", security_counter=counter).close()  # fmt: skip
    return path


def _art(image: bytes, counter: int, version: str) -> bytes:
    return build_full(image, key_a(), hw=("test-board",), chip="esp32c3", version=version,
                      security_counter=counter, level=3)  # fmt: skip


def _update(path: Path, counter: int = 1, confirm: bool | None = True) -> dict[str, object]:
    with Device(str(path)) as dev:
        install_stream(dev, io.BytesIO(_art(NEW, counter, "new")))
    with Device(str(path)) as dev:
        return dev.power_on(self_test=confirm)


def test_otadata_sequence_near_2_32_installs_at_once_and_boots(tmp_path: Path) -> None:
    """A CRC-valid seq near 2^32: the next seq was counted up to (~100 s) and came
    out as 0xFFFFFFFF, the blank value, so the update never booted."""
    path = _device(tmp_path)
    with Device(str(path)) as dev:
        dev.otadata.write_entry(0, od.Entry(0xFFFF_FFFD, od.VALID))  # selects ota_0
    t0 = time.monotonic()
    boot = _update(path)
    assert boot["label"] == "ota_1" and boot["version"] == "new" and boot["state"] == "VALID"
    with Device(str(path)) as dev:  # and once more: the sequence is used up, renumbered
        install_stream(dev, io.BytesIO(_art(OLD, 2, "again")))
        seqs = [e.seq for e in dev.otadata.read()]
    assert od.SEQ_BLANK not in seqs and max(seqs) < 16, seqs
    with Device(str(path)) as dev:
        boot = dev.power_on(self_test=True)
    assert boot["label"] == "ota_0" and boot["version"] == "again"
    assert time.monotonic() - t0 < 10


def test_crafted_state_records_count_as_absent(tmp_path: Path) -> None:
    """State records with good CRCs but impossible contents crashed boot and info
    (IndexError, TypeError, ...); running=7 left the device unable to boot."""
    path = _device(tmp_path)
    with Device(str(path)) as dev:
        good = dict(dev.state)
        crafted = [
            dict(good, running=7),
            dict(good, slots={"ota_0": {"sha256": 5}}),
            dict(good, slots=[1, 2]),
            dict(good, progress={"uid": b"x", "slot": "ota_9", "next": -1}),
            dict(good, counter="high"),
            dict(good, limits=None),
            dict(good, trusted=[b"short"]),
        ]
    for state in crafted:
        with Device(str(path)) as dev:
            dev.store.save(state)
        with Device(str(path)) as dev:
            assert dev.state == good, state
            info = dev.info()
            boot = dev.power_on(self_test=True)
        assert info["running_slot"] == 0 and boot["label"] == "ota_0"


def test_read_error_in_the_selected_slot_falls_back(tmp_path: Path) -> None:
    """A flash file cut short inside the selected slot stopped boot with FLASH_ERROR
    although ota_0 held an intact image: fall back, as ESP-IDF does (both images at
    the same security counter: an older counter would be refused, see below)."""
    path = _device(tmp_path)
    _update(path, counter=0)
    with Device(str(path)) as dev:
        cut = dev.slots[1].offset + 4096
    os.truncate(path, cut)
    with Device(str(path)) as dev:
        boot = dev.power_on(self_test=True)
    assert boot["label"] == "ota_0" and boot["version"] == "old"


def test_both_otadata_copies_corrupt_never_boot_below_the_counter(tmp_path: Path) -> None:
    """With otadata erased the bootloader tries ota_0: the older image, below the
    security counter the device has confirmed. The counter is checked at boot."""
    path = _device(tmp_path)
    _update(path, counter=4)
    with Device(str(path)) as dev:
        assert dev.identity()["security_counter"] == 4
        erase_otadata(dev)
    with Device(str(path)) as dev:
        boot = dev.power_on(self_test=True)
    assert boot["label"] == "ota_1" and boot["version"] == "new"


def test_info_reports_what_the_next_boot_really_does(tmp_path: Path) -> None:
    """After a boot without confirming, otadata still names the pending slot, but the
    next reset marks it ABORTED and boots the other: info says the latter."""
    path = _device(tmp_path)
    boot = _update(path, confirm=None)
    assert boot["label"] == "ota_1" and boot["state"] == "PENDING_VERIFY"
    with Device(str(path)) as dev:
        assert dev.info()["next_boot_slot"] == 0
        assert dev.power_on(self_test=True)["label"] == "ota_0"


def _factory_device(tmp_path: Path) -> Path:
    path = tmp_path / "factory.bin"
    csv, size = table(0x10000, factory=True)
    Device.create(str(path), hw="test-board", chip="esp32c3", trusted_keys=[key_a().public.raw],
                  image=OLD, version="old", partitions_csv=csv, size=size).close()  # fmt: skip
    return path


def test_a_factory_app_boots_when_otadata_is_erased(tmp_path: Path) -> None:
    """ESP-IDF boots the factory app when otadata selects nothing; otaferry booted
    ota_0. A factory-running device updates into ota_0, never into factory, and
    an update that does not confirm returns to factory."""
    path = _factory_device(tmp_path)
    with Device(str(path)) as dev:
        info = dev.info()
        assert (info["running_label"], info["next_boot_label"]) == ("factory", "factory")
        assert dev.passive_slot().label == "ota_0"
        with pytest.raises(FlashError):  # never an update target, never written
            dev.factory.erase(0, SECTOR_SIZE)
        with pytest.raises(DeviceError):
            dev.platform.set_boot(dev.factory.index)
        boot = dev.power_on(self_test=True)
    assert (boot["label"], boot["state"]) == ("factory", "FACTORY")
    assert _update(path, counter=0, confirm=None)["label"] == "ota_0"  # pending, then reset
    with Device(str(path)) as dev:
        assert dev.info()["next_boot_label"] == "factory"
        assert dev.power_on(self_test=True)["label"] == "factory"
    boot = _update(path, counter=0)
    assert (boot["label"], boot["state"]) == ("ota_0", "VALID")
    with Device(str(path)) as dev:
        assert dev.info()["running_label"] == "ota_0"
        erase_otadata(dev)
        assert dev.info()["next_boot_label"] == "factory"
        boot = dev.power_on(self_test=True)
    assert (boot["label"], boot["version"]) == ("factory", "old")


def test_a_factory_app_below_the_counter_does_not_boot(tmp_path: Path) -> None:
    """The factory app is held to the security counter like any image (ESP-IDF's
    load loop runs check_anti_rollback on it too), so erased otadata after a
    confirmed counter-1 update boots ota_0, not the counter-0 factory app."""
    path = _factory_device(tmp_path)
    _update(path, counter=1)
    with Device(str(path)) as dev:
        erase_otadata(dev)
        assert dev.info()["next_boot_label"] == "ota_0"
        boot = dev.power_on(self_test=True)
    assert (boot["label"], boot["version"]) == ("ota_0", "new")


def test_all_store_records_corrupt_boots_an_intact_image(tmp_path: Path) -> None:
    """With every store record corrupt the device refused to boot although both
    images were intact. It boots from the apps' boot records (bootrec.py), never
    below its counter (even with otadata erased too, the older image stays
    refused), and takes no update: its trusted keys went with the store."""
    path = _device(tmp_path)
    _update(path, counter=4)
    with Device(str(path)) as dev:
        wreck_store(dev)
        assert Store(dev.flash, dev.store.offset, dev.store.sectors * SECTOR_SIZE).load() is None
    with Device(str(path)) as dev:
        info = dev.info()
        assert info["state_lost"] and info["security_counter"] == 4
        assert info["next_boot_label"] == "ota_1"
        boot = dev.power_on(self_test=True)
        assert (boot["label"], boot["version"], boot["state"]) == ("ota_1", "new", "VALID")
        with pytest.raises(DeviceError) as exc:
            install_stream(dev, io.BytesIO(_art(OLD, 5, "again")))
        assert exc.value.reason == BAD_STATE
        erase_otadata(dev)
    with Device(str(path)) as dev:
        assert dev.slot_image_ok(0) is False  # old, counter 0: below the floor of 4
        boot = dev.power_on(self_test=True)
    assert (boot["label"], boot["version"]) == ("ota_1", "new")


def test_a_torn_or_stale_boot_record_never_boots_what_it_does_not_describe(
        tmp_path: Path) -> None:
    """Without the store, a slot boots only if its bytes hash to its boot record:
    a slot overwritten since its record was written fails, and so does a slot
    whose record is damaged; with nothing left that verifies, boot refuses."""
    path = _device(tmp_path)
    _update(path, counter=0)
    with Device(str(path)) as dev:
        wreck_store(dev)
        dev.flash.unprotect("active slot")
        ota1 = dev.slots[1]
        dev.flash.write(ota1.offset + 100, bytes(4))  # the new image, damaged
        dev.flash.write(ota1.offset + ota1.size - SECTOR_SIZE + 5, bytes(1))  # its record
    with Device(str(path)) as dev:
        assert dev.slot_image_ok(1) is False
        boot = dev.power_on(self_test=True)
        assert (boot["label"], boot["version"]) == ("ota_0", "old")
        ota0 = dev.slots[0]
    with Device(str(path)) as dev:  # and the old one damaged too: nothing verifies
        dev.platform.lock_active(1)
        dev.flash.write(ota0.offset + 100, bytes(4))
    with Device(str(path)) as dev, pytest.raises(DeviceError) as exc:
        dev.power_on(self_test=True)
    assert exc.value.reason == BAD_STATE


def test_store_lost_after_a_cut_at_any_op_still_boots_at_or_above_the_counter(
        tmp_path: Path) -> None:
    """A power cut at every flash op of an install and its confirming boot (an
    erase cut before it starts and after it ends, a program cut at 0 and at
    1/4), then
    every store record corrupt (and otadata erased as well): the device still
    boots an image whose bytes match its boot record, and never one below the
    counter the store held."""
    base = _device(tmp_path, counter=1)
    art = _art(NEW, 2, "new")

    def run(dev: Device, shift: int) -> None:
        for _ in range(shift):  # a no-op program: each op is cut in both variants
            dev.flash.write(0, b"\xff")
        install_stream(dev, io.BytesIO(art))
        dev.power_on(self_test=True)

    ref = tmp_path / "ref.bin"
    ref.write_bytes(base.read_bytes())
    with Device(str(ref)) as dev:
        run(dev, 0)
        total = dev.flash.ops
    assert total > 10, total
    for cut, shift, otadata_too in itertools.product(range(total), (0, 1), (False, True)):
        path = tmp_path / "cut.bin"
        path.write_bytes(base.read_bytes())
        dev = Device(str(path), cut_at=cut + shift)
        with pytest.raises(PowerCut):
            run(dev, shift)
        with Device(str(path)) as dev:
            counter = dev.identity()["security_counter"]
            wreck_store(dev)
            if otadata_too:
                erase_otadata(dev)
        with Device(str(path)) as dev:
            assert dev.recovered
            boot = dev.power_on(self_test=True)
            rec = dev.state["slots"][boot["label"]]
            assert dev.slot_image_ok(boot["slot"]), (cut, boot["log"])
            assert rec["security_counter"] >= counter, (cut, boot["log"])
            assert dev.identity()["security_counter"] >= counter, cut


def test_a_crafted_boot_record_with_a_good_crc_counts_as_absent(tmp_path: Path) -> None:
    """Boot records are read as the store's records are: out-of-range values, wrong
    shapes and trailing bytes are no record at all, never a crash or a claim."""
    path = _device(tmp_path)
    with Device(str(path)) as dev:
        slot = dev.slots[1]
        image = dict(dev.running_image() or {})
        bootrec.write(slot, 3, image)
        assert bootrec.read(slot) == (3, image)
        assert bootrec.raise_floor(slot, 3) is False and bootrec.raise_floor(slot, 5) is True
        assert bootrec.read(slot) == (5, image)

        def crafted(body: bytes) -> object:
            head = struct.pack("<2sH", b"OB", len(body)) + body
            slot.erase(bootrec.capacity(slot), slot.erase_size)
            slot.write(bootrec.capacity(slot), head + struct.pack("<I", zlib.crc32(head)))
            return bootrec.read(slot)

        fields = [image["sha256"], image["size"], "v", 0, None]
        assert crafted(mpack.encode([1, fields])) == (1, {**image, "version": "v"})
        for bad in ([1 << 32, None], [1, [b"short", *fields[1:]]], [1, fields[:4]],
                    [1, [fields[0], -1, *fields[2:]]], {"floor": 1}, [1]):  # fmt: skip
            assert crafted(mpack.encode(bad)) is None, bad
        assert crafted(mpack.encode([1, None]) + b"\x00") is None


def test_a_counter_raise_writes_the_passive_slots_record_never_the_running_one(
        tmp_path: Path) -> None:
    """The boot that confirms an update raises the floor in the slot it left (now
    passive); the record of the image that now runs stays as its install wrote it."""
    path = _device(tmp_path)
    with Device(str(path)) as dev:
        install_stream(dev, io.BytesIO(_art(NEW, 3, "new")))
        written = bootrec.read(dev.slots[1])
    assert written is not None and written[0] == 0
    with Device(str(path)) as dev:
        assert dev.power_on(self_test=True)["label"] == "ota_1"
        assert bootrec.read(dev.slots[1]) == written
        floor, image = bootrec.read(dev.slots[0]) or (None, None)
    assert floor == 3 and image is not None and image["version"] == "old"
