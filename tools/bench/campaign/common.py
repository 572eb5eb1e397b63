"""What every campaign shares: the release pairs, the keys, and device helpers."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ....device_fw import bootrec
from ....device_fw import secure as DS
from ....device_fw.device import Device
from ....device_fw.flash import SECTOR_SIZE
from ....protocol import secure as HS
from ....protocol.artifact import build_delta, build_full
from ....protocol.errors import Reason
from ....protocol.keys import SigningKey
from ....protocol.manifest import Manifest
from ....protocol.session import split_artifact
from ....protocol.x25519keys import LinkPrivateKey

ROOT = Path(__file__).resolve().parents[3]
FIRMWARE = Path(os.environ.get("OTAFERRY_FIRMWARE", ROOT / "tests" / "firmware"))
PAIRS = {
    "esp8266": (
        "micropython-esp8266/esp8266-20180511-v1.9.4.bin",
        "micropython-esp8266/esp8266-20190125-v1.10.bin",
    ),
    "simba": ("simba-shell-cortex-m4/old.bin", "simba-shell-cortex-m4/new.bin"),
    "synth": ("simba-synthesizer-cortex-m4/1.bin", "simba-synthesizer-cortex-m4/2.bin"),
    "programmer": ("programmer-cortex-m4/0.8.0.bin", "programmer-cortex-m4/0.9.0.bin"),
    "rpi3": ("baremetal-rpi3-aarch64/1.bin", "baremetal-rpi3-aarch64/2.bin"),
}
RELEASES = [f"simba-synthesizer-cortex-m4/{i}.bin" for i in (1, 2, 3)]

VENDOR = SigningKey.from_seed(hashlib.sha256(b"otaferry campaign vendor").digest())
STRANGER = SigningKey.from_seed(hashlib.sha256(b"otaferry campaign stranger").digest())
GATEWAY = LinkPrivateKey.from_raw(hashlib.sha256(b"otaferry campaign gateway").digest())
DEVICE_LINK = LinkPrivateKey.from_raw(hashlib.sha256(b"otaferry campaign device").digest())
HW = "board-rev-b"
CHIP = "esp8266"
NEW_COUNTER = 1

# A small flash for the fuzz and hostile campaigns (copied once per scenario).
SMALL_FLASH = 0x70000
SMALL_CSV = """\
nvs,      data, nvs,     0x9000,  0x4000,
otadata,  data, ota,     0xd000,  0x2000,
phy_init, data, phy,     0xf000,  0x1000,
ota_0,    app,  ota_0,   0x10000, 0x30000,
ota_1,    app,  ota_1,   0x40000, 0x30000,
"""
TINY_SLOTS_CSV = """\
nvs,      data, nvs,     0x9000,  0x4000,
otadata,  data, ota,     0xd000,  0x2000,
phy_init, data, phy,     0xf000,  0x1000,
ota_0,    app,  ota_0,   0x10000, 0x10000,
ota_1,    app,  ota_1,   0x20000, 0x10000,
"""


def read_firmware(rel: str) -> bytes:
    return (FIRMWARE / rel).read_bytes()


def build(image: bytes, *, counter: int = NEW_COUNTER, version: str = "new", **kw: Any) -> bytes:
    kw.setdefault("hw", [HW])
    kw.setdefault("chip", CHIP)
    key = kw.pop("key", VENDOR)
    return build_full(image, key, version=version, security_counter=counter, **kw)


def build_d(base: bytes, image: bytes, *, counter: int = NEW_COUNTER, **kw: Any) -> bytes:
    key = kw.pop("key", VENDOR)
    return build_delta(
        base, image, key, hw=[HW], chip=CHIP, version="new", security_counter=counter, **kw
    )


@dataclass(frozen=True)
class Firmware:
    """A real release pair and the two artifacts that take the device from old to new."""

    name: str
    old: bytes
    new: bytes
    full: bytes
    delta: bytes


_FW_CACHE: dict[str, Firmware] = {}


def firmware(name: str) -> Firmware:
    if name not in _FW_CACHE:
        old_rel, new_rel = PAIRS[name]
        old, new = read_firmware(old_rel), read_firmware(new_rel)
        _FW_CACHE[name] = Firmware(name, old, new, build(new), build_d(old, new))
    return _FW_CACHE[name]


def make_device(
    path: Path,
    image: bytes,
    *,
    counter: int = 0,
    csv: str | None = None,
    size: int | None = None,
    limits: dict[str, int] | None = None,
    version: str = "old",
) -> Path:
    kw: dict[str, Any] = {} if size is None else {"size": size}
    Device.create(
        str(path),
        hw=HW,
        chip=CHIP,
        trusted_keys=[VENDOR.public.raw],
        image=image,
        version=version,
        security_counter=counter,
        partitions_csv=csv,
        limits=limits,
        **kw,
    ).close()
    return path


def make_small_device(path: Path, image: bytes, **kw: Any) -> Path:
    """A device on the small flash (SMALL_CSV): quick to copy once per scenario."""
    return make_device(path, image, csv=SMALL_CSV, size=SMALL_FLASH, **kw)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def slot_digest(dev: Device, index: int) -> bytes:
    """SHA-256 of the slot's image area: all of it but its boot record, which the
    device rewrites in the passive slot when its security counter rises (once the
    new image confirmed, slot 0 is passive). Writes to the active slot's record are
    refused by Flash.protect and counted as such."""
    slot = dev.slots[index]
    size = bootrec.capacity(slot)
    h = hashlib.sha256()
    for pos in range(0, size, 0x10000):
        h.update(dev.flash.read(slot.offset + pos, min(0x10000, size - pos)))
    return h.digest()


def slot_bytes(dev: Device, index: int, size: int) -> bytes:
    return bytes(dev.flash.read(dev.slots[index].offset, size))


def recorded_image(dev: Device, index: int) -> tuple[dict[str, Any] | None, bytes]:
    """The device's record of a slot's image, and that many bytes of the slot
    (no record: None and no bytes)."""
    rec = dev.state["slots"].get(dev.slots[index].label)
    return rec, slot_bytes(dev, index, rec["size"]) if rec else b""


def sector_extent(size: int) -> int:
    """``size`` rounded up to a whole flash sector."""
    return -(-size // SECTOR_SIZE) * SECTOR_SIZE


def max_target(artifacts: Iterable[bytes]) -> int:
    return max(Manifest.decode(split_artifact(a)[0]).target_size for a in artifacts)


def stray_text(s: tuple[str, int, int, str]) -> str:
    kind, addr, length, region = s
    return f"stray {kind} at {addr:#x}+{length} ({region})"


def reason_name(code: int) -> str:
    try:
        return Reason(code).name
    except ValueError:
        return f"REASON_{code}"


def device_endpoint(**kw: Any) -> DS.SecureEndpoint:
    """The device's end of the secure link, trusting the campaign gateway."""
    return DS.SecureEndpoint(DEVICE_LINK.raw(), [GATEWAY.public.raw], **kw)


def gateway_initiator(ephemeral: bytes) -> HS.Initiator:
    """The gateway's handshake with the campaign device, with a given ephemeral key."""
    return HS.Initiator(GATEWAY, DEVICE_LINK.public, LinkPrivateKey.from_raw(ephemeral))


@dataclass
class Problems:
    """Distinct problem messages and how often each was seen (base of the stats)."""

    problems: Counter[str] = field(default_factory=Counter)

    def problem(self, message: str) -> None:
        self.problems[message] += 1
