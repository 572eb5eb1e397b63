"""Damaged and hostile flash at boot (issue [M] 5): each class puts a device in the
state an attack or a fault left it in, resets it, and checks which image boots.

Every case starts from a real release pair: ``old`` factory-flashed (counter 0),
then ``new`` (counter 1) installed and confirmed, unless the case says otherwise.
The expectation is the image that must boot (label and version), or that boot
must refuse. Nothing is mocked: the damage is bytes written into the flash file.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ....device_fw import otadata as OD
from ....device_fw.device import Device
from ....device_fw.flash import SECTOR_SIZE
from ....device_fw.installer import install_stream
from ....device_fw.reasons import BAD_STATE, DeviceError
from .common import PAIRS, build, make_device, read_firmware


@dataclass
class Pair:
    old: bytes
    new: bytes
    arts: dict[int, bytes]  # the full artifact of new, by security counter


def table(slot: int, factory: bool) -> tuple[str, int]:
    """(partition CSV, flash size): app slots of ``slot`` bytes, and with
    ``factory`` a factory app in front of ota_0 and ota_1."""
    apps = (["factory, app, factory"] if factory else []) + ["ota_0, app, ota_0",
                                                             "ota_1, app, ota_1"]
    rows = ["nvs, data, nvs, 0x9000, 0x4000,", "otadata, data, ota, 0xd000, 0x2000,",
            "phy_init, data, phy, 0xf000, 0x1000,"]
    rows += [f"{app}, 0x{0x10000 + i * slot:x}, 0x{slot:x}," for i, app in enumerate(apps)]
    return "\n".join(rows) + "\n", 0x10000 + len(apps) * slot


@dataclass
class BootCase:
    name: str
    damage: Callable[[Device, Path], None]
    expect: tuple[str, str] | None  # (label, version) that boots; None: boot refuses
    counter: int = 1  # the update's security counter
    factory: bool = False
    update: bool = True  # install and confirm the update before the damage


def erase_otadata(dev: Device, _path: Path | None = None) -> None:
    """Both otadata sectors blank, as ``esptool erase_region`` leaves them."""
    for i in (0, 1):
        dev.flash.erase_sector(dev.otadata.offset + i * SECTOR_SIZE)


def wreck_store(dev: Device, _path: Path | None = None) -> None:
    """Every store record corrupt: the whole nvs partition programmed to zeros."""
    dev.flash.write(dev.store.offset, bytes(dev.store.sectors * SECTOR_SIZE))


def _store_and_otadata(dev: Device, path: Path) -> None:
    wreck_store(dev, path)
    erase_otadata(dev, path)


def _crafted_records(dev: Device, _path: Path) -> None:
    good = dict(dev.state)
    for bad in (dict(good, running=7), dict(good, slots={"ota_0": {"sha256": 5}}),
                dict(good, counter="high"), dict(good, limits=None)):  # fmt: skip
        dev.store.save(bad)


def _truncate_running(dev: Device, path: Path) -> None:
    dev.close()
    os.truncate(path, dev.slots[1].offset + SECTOR_SIZE)


def _seq_near_wrap(dev: Device, _path: Path) -> None:
    dev.otadata.write_entry(0, OD.Entry(0xFFFF_FFFD, OD.VALID))  # selects ota_0
    dev.otadata.erase_entry(1)


def _wreck_store_and_new_image(dev: Device, path: Path) -> None:
    wreck_store(dev, path)
    dev.flash.unprotect("active slot")
    dev.flash.write(dev.slots[1].offset + 64, bytes(8))


def boot_cases() -> list[BootCase]:
    return [
        BootCase("otadata seq near 2^32, then an update", _seq_near_wrap, ("ota_1", "new"),
                 update=False),
        BootCase("crafted state records, good CRCs", _crafted_records, ("ota_1", "new")),
        BootCase("read error in the selected slot", _truncate_running, ("ota_0", "old"),
                 counter=0),
        BootCase("both otadata copies erased", erase_otadata, ("ota_1", "new")),
        BootCase("every store record corrupt", wreck_store, ("ota_1", "new")),
        BootCase("store corrupt, otadata erased", _store_and_otadata, ("ota_1", "new")),
        BootCase("store corrupt, the new image damaged, same counter",
                 _wreck_store_and_new_image, ("ota_0", "old"), counter=0),
        BootCase("store corrupt, the new image damaged, counter raised",
                 _wreck_store_and_new_image, None),
        BootCase("factory app, otadata erased", erase_otadata, ("factory", "old"),
                 counter=0, factory=True),
        BootCase("factory app below the counter, otadata erased", erase_otadata,
                 ("ota_0", "new"), factory=True),
    ]  # fmt: skip


def _run_case(case: BootCase, fw: Pair, work: Path) -> dict[str, Any]:
    path = work / "boot.bin"
    # slots of the larger image plus its boot record, in 64 KiB steps
    slot = (max(len(fw.old), len(fw.new)) + SECTOR_SIZE + 0xFFFF) // 0x10000 * 0x10000
    csv, size = table(slot, case.factory)
    make_device(path, fw.old, csv=csv, size=size)
    art = fw.arts[case.counter]
    if case.update:
        with Device(str(path)) as dev:
            install_stream(dev, io.BytesIO(art))
        with Device(str(path)) as dev:
            dev.power_on(self_test=True)
    dev = Device(str(path))
    try:
        case.damage(dev, path)
    finally:
        dev.close()
    if not case.update:
        with Device(str(path)) as dev:
            install_stream(dev, io.BytesIO(art))
    got: tuple[str, str] | None
    try:
        with Device(str(path)) as dev:
            boot = dev.power_on(self_test=True)
            got = (boot["label"], str(boot["version"]))
            verified = dev.slot_image_ok(boot["slot"])
    except DeviceError as exc:
        if exc.reason != BAD_STATE:
            raise
        got, verified = None, True
    ok = got == case.expect and verified
    return {"case": case.name, "expected": _text(case.expect), "booted": _text(got), "ok": ok}


def _text(outcome: tuple[str, str] | None) -> str:
    return "refused" if outcome is None else f"{outcome[0]} {outcome[1]}"


def boot_campaign(pair: str = "simba") -> dict[str, Any]:
    t0 = time.monotonic()
    old, new = (read_firmware(rel) for rel in PAIRS[pair])
    fw = Pair(old, new, {c: build(new, counter=c, level=3) for c in (0, 1)})
    rows = []
    with tempfile.TemporaryDirectory(prefix="otaferry-boot-") as tmp:
        for case in boot_cases():
            rows.append(_run_case(case, fw, Path(tmp)))
    return {"cases": len(rows), "failed": sum(not r["ok"] for r in rows), "rows": rows,
            "seconds": round(time.monotonic() - t0, 2)}  # fmt: skip
