"""The legs of the power-cut campaign: the runs power is cut in, and which ops of
each run are cut."""

from __future__ import annotations

import io
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ....device_fw import receiver as RX
from ....device_fw.device import Device
from ....device_fw.installer import install_stream
from ....protocol.session import Completed, Sender
from .audit import PHASE_OF_REGION, FlashAudit
from .common import Firmware
from .link import Link, make_sender, outcome

PHASES = ("segment", "store", "otadata", "boot")
PHASE_TITLES = {
    "segment": "segment writes (passive slot)",
    "store": "progress/store writes (nvs)",
    "otadata": "otadata writes",
    "boot": "boot: confirm/reject/abort/bad image",
}


@dataclass
class Leg:
    """One sequence of flash ops that power is cut in, and how to check the aftermath."""

    name: str
    path: str  # offline | link | boot
    art: bytes
    base: Path  # the flash file the leg starts from
    mtu: int = 1024
    window: int = 4
    self_test: bool | None = True  # boot legs: the verdict of the cut power_on
    allowed: tuple[str, ...] = ("old",)
    damaged: bool = False  # the new image was damaged after it was verified
    phases: list[str] = field(default_factory=list)  # phase of each op of a full run

    def sender(self, session_id: int) -> Sender:
        return make_sender(self.art, mtu=self.mtu, window=self.window, session_id=session_id)

    def link_on(self, dev: Device, session_id: int) -> Link | None:
        """For a link leg, a fresh Sender joined to a Receiver on ``dev``."""
        if self.path != "link":
            return None
        return Link(self.sender(session_id), RX.Receiver(dev, mtu=self.mtu))

    def run_on(self, dev: Device, link: Link | None) -> None:
        """The leg's flash ops: the offline install, the session over ``link``
        (from :meth:`link_on`), or the power_on."""
        if self.path == "offline":
            install_stream(dev, io.BytesIO(self.art))
        elif link is not None:
            link.run()
        else:
            dev.power_on(self_test=self.self_test)


@dataclass
class CutResult:
    leg: str
    index: int
    phase: str = "none"
    region: str = ""
    booted: str = ""
    unbootable: bool = False
    wrong_image: bool = False
    active_writes: int = 0
    protect_errors: int = 0
    active_changed: bool = False
    stray: int = 0
    rerun_ok: bool = False
    rerun_attempts: int = 0
    final_ok: bool = False
    counter_lapse: bool = False
    problems: list[str] = field(default_factory=list)


def make_legs(fw: Firmware, pristine: Path, w: Path) -> list[Leg]:
    """The eight legs, each with the phase of every op of a full run; ``pristine``:
    the device running the old image, ``w``: where the start files go."""
    armed = w / "armed.bin"
    shutil.copy(pristine, armed)
    with Device(str(armed)) as dev:
        install_stream(dev, io.BytesIO(fw.full))
    pending = w / "pending.bin"
    shutil.copy(armed, pending)
    with Device(str(pending)) as dev:
        dev.power_on(self_test=None)
    damaged = w / "damaged.bin"
    shutil.copy(armed, damaged)
    with Device(str(damaged)) as dev:
        at = dev.slots[1].offset + len(fw.new) // 2
    with damaged.open("r+b") as f:  # bit rot in the new image after it was verified
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x10]))
    legs = [
        Leg("offline full", "offline", fw.full, pristine),
        Leg("offline delta", "offline", fw.delta, pristine),
        Leg("link full", "link", fw.full, pristine, mtu=1024, window=4),
        Leg("link delta", "link", fw.delta, pristine, mtu=64, window=8),
        Leg("boot confirm", "boot", fw.full, armed, self_test=True, allowed=("old", "new")),
        Leg("boot reject", "boot", fw.full, armed, self_test=False, allowed=("old", "new")),
        Leg("boot abort", "boot", fw.full, pending, self_test=True, allowed=("old",)),
        Leg("boot bad image", "boot", fw.full, damaged, allowed=("old",), damaged=True),
    ]
    for leg in legs:
        leg.phases = dry_run(leg, w)
    return legs


def dry_run(leg: Leg, w: Path) -> list[str]:
    """The phase of each flash op of the leg, run to its end without a cut."""
    work = w / "dry.bin"
    shutil.copy(leg.base, work)
    with Device(str(work)) as dev:
        audit = FlashAudit(dev)
        regions: list[str] = []
        dev.flash.on_op = lambda kind, addr, length: regions.append(audit.region(addr, length))
        link = leg.link_on(dev, 7)
        leg.run_on(dev, link)
        if link is not None:
            assert link.of(Completed), outcome(link.events)
    if leg.path == "boot":
        return ["boot"] * len(regions)
    return [PHASE_OF_REGION.get(r, "stray") for r in regions]


def pick_ops(leg: Leg, budget: int, rng: random.Random) -> list[int]:
    """Every otadata op, then store and segment ops evenly spread (seeded jitter)."""
    total = len(leg.phases)
    if leg.path == "boot" or budget >= total:
        return list(range(total))
    by: dict[str, list[int]] = {}
    for i, phase in enumerate(leg.phases):
        by.setdefault(phase, []).append(i)
    chosen = set(by.get("otadata", []))
    left = max(budget - len(chosen), 0)
    store, segment = by.get("store", []), by.get("segment", [])
    want_store = min(len(store), max(left // 4, round(left * len(store) / max(total, 1))))
    for pool, k in ((store, want_store), (segment, left - want_store)):
        k = min(k, len(pool))
        step = len(pool) / k if k else 0
        for j in range(k):  # one op out of each of k equal stretches of the pool
            lo = math.ceil(j * step)
            chosen.add(pool[rng.randrange(lo, max(math.ceil((j + 1) * step), lo + 1))])
    unused = [i for i in range(total) if i not in chosen]
    chosen.update(rng.sample(unused, max(0, min(len(unused), budget - len(chosen)))))
    return sorted(chosen)
