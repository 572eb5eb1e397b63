"""Campaigns that prove the device side safe: power cuts, fuzzing, hostile artifacts.

    python -m otaferry.tools.bench.campaign [--cuts 500] [--frames 100000]
        [--records 100000] [--seed S] [--pair esp8266] [--only powercut,fuzz,secure,hostile]
        [--json]

Every campaign runs the real device code (device_fw: Device, Installer,
Receiver, SecureEndpoint) on a flash file, driven by the real host code
(protocol: artifacts, Sender, SecureChannel). Nothing is mocked; the only
instrumentation is :class:`FlashAudit`, which sees every program/erase the
device *attempts*.

**Power cuts.** ``Device(path, cut_at=N)`` raises ``PowerCut`` during its N-th
flash op and leaves the file as a killed process would. N is picked across
the whole op range of eight legs (every otadata op, then store and segment ops
evenly spread with seeded jitter; every op of the boot legs): an offline
install (``install_stream``) and a link install (Sender <-> Receiver in
memory) of the full and of the delta artifact of a real release pair, and
power_on when it confirms, rejects (failed self-test), aborts an unconfirmed
image, or finds the new image damaged. After each cut: the device reboots
(``power_on``) and must boot a slot whose bytes match its recorded SHA-256 and
are the expected image (a cut during an install: the old image, always, since
the otadata entry that selects the new one is the install's last write and
its CRC is written last; a cut during power_on: old or new, for confirm and
reject, old for abort and damaged image); then a rerun must finish the update
(offline: decoding only the segments not recorded as done; link: a fresh
Receiver on the reopened device and a fresh Sender, or the old Sender after
the device's unasked HELLO, resuming at the persisted segment and sending
nothing below it); the new image must then boot, confirm, be byte-identical
and have advanced the security counter.

**Legitimate flash writes** (checked by FlashAudit on every attempt, before
the flash model's own ``protect()`` guard): the passive slot, from its start
to the largest image any artifact signed by the trusted key asks for, rounded
up to a 4 KiB sector; the nvs partition (the device's state store); the
otadata partition (boot selection). Anything else is a stray write: the active
slot (also refused by ``Flash.protect()``, whose ``FlashError`` is counted
separately), the partition table, phy_init, the rest of the passive slot.
The active slot's bytes are also hashed before and after every run.

**Frame fuzzing.** Real sessions are recorded (several artifacts, mtus,
rejections). Each scenario starts a real session on a fresh device, stops it
at a random point, injects a batch of mutated frames to the Receiver (its
replies go to the real Sender) and to the Sender (bit flips, truncation,
extension, splicing, msgpack field swaps / replacements / type-code changes,
random msgpack arrays with valid type codes, replays of frames from other
sessions, reflections, random bytes, and whole re-split HELLO / OFFER blobs
with mutated fields), then lets the session run to its end on a fake clock and
checks: no exception escaped, every reply and every sender frame decodes on
the other side and fits the mtu, no stray flash write, the session ended with
Completed or a reason code (Rejected / Failed), otadata never selects an image
that is not a signed target, a Completed session really left the image armed,
and a fresh session afterwards completes the update.

**Secure fuzzing.** Handshake, then genuine sealed records both ways, with
mutated records interleaved (bit flips, truncation, counter rewrites,
splices, replays, reflections, records and MSG1s of other sessions, random
bytes, record-kind flips) fed to the device's ``SecureEndpoint.receive`` and
the host's ``SecureChannel.open``, and mutated MSG2s to the host's
``Initiator.receive``: no exception other than the project's, no body for any
input that is not a not-yet-delivered genuine record, and every genuine
record still opens (the channel is not knocked out of step).

**Hostile artifacts.** Each class over the offline path and over the link (the
device judging, and the Sender's precheck judging from the HELLO): the reason
code, the Sender's ``Rejected`` event carrying it, the device still booting its
image, the active slot untouched, no stray write, and for checks made before
any data not one flash byte changed outside the state store. Plus replays of
a complete earlier session, recorded from the gateway side.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgpack

from ...device_fw import frames as DF
from ...device_fw import receiver as RX
from ...device_fw import secure as DS
from ...device_fw.device import Device
from ...device_fw.flash import SECTOR_SIZE, PowerCut
from ...device_fw.installer import install_stream
from ...device_fw.reasons import DeviceError, FlashError
from ...protocol import secure as HS
from ...protocol.artifact import HEADER_SIZE, assemble, build_delta, build_full
from ...protocol.errors import DecodeError, OtaferryError, Reason
from ...protocol.frames import Data, Hello, Offer, Query, Reject, decode_frame
from ...protocol.keys import SigningKey
from ...protocol.manifest import Manifest, signing_message
from ...protocol.session import (
    Accepted,
    Completed,
    Event,
    Failed,
    Rejected,
    Sender,
    split_artifact,
)
from ...protocol.x25519keys import LinkPrivateKey

ROOT = Path(__file__).resolve().parents[2]
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

LEGIT = ("passive", "nvs", "otadata")
PHASE_OF_REGION = {"passive": "segment", "nvs": "store", "otadata": "otadata"}
PHASES = ("segment", "store", "otadata", "boot")
PHASE_TITLES = {
    "segment": "segment writes (passive slot)",
    "store": "progress/store writes (nvs)",
    "otadata": "otadata writes",
    "boot": "boot: confirm/reject/abort/bad image",
}


# ============================================================ shared parts


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


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def slot_digest(dev: Device, index: int) -> bytes:
    slot = dev.slots[index]
    h = hashlib.sha256()
    for pos in range(0, slot.size, 0x10000):
        h.update(dev.flash.read(slot.offset + pos, min(0x10000, slot.size - pos)))
    return h.digest()


def slot_bytes(dev: Device, index: int, size: int) -> bytes:
    return bytes(dev.flash.read(dev.slots[index].offset, size))


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


class FlashAudit:
    """Every program/erase a Device attempts, checked against the regions it may touch.

    Wraps the instance's ``write``, ``erase_sector`` and ``erase_range`` (so it
    sees attempts before the flash model's ``protect()`` guard refuses them)
    and sets ``on_op`` (so ``ops`` lists every op the flash started, the one a
    power cut hit last). ``extent``: bytes of the passive slot an update may
    write (the largest signed target, rounded up to a sector).
    """

    def __init__(self, dev: Device, extent: int | None = None) -> None:
        self.dev = dev
        self.extent = extent
        self.ops: list[tuple[str, int, int]] = []
        self.attempts = 0
        self.stray: list[tuple[str, int, int, str]] = []
        self.protect_errors = 0
        self._inner = False
        fl = dev.flash
        self._write, self._erase_sector, self._erase_range = (
            fl.write,
            fl.erase_sector,
            fl.erase_range,
        )
        fl.write = self._w  # type: ignore[method-assign]
        fl.erase_sector = self._es  # type: ignore[method-assign]
        fl.erase_range = self._er  # type: ignore[method-assign]
        fl.on_op = self._op

    def _op(self, kind: str, addr: int, length: int) -> None:
        self.ops.append((kind, addr, length))

    def region(self, addr: int, length: int) -> str:
        dev, end = self.dev, addr + length
        running = dev.state["running"]
        passive = (running + 1) % len(dev.slots)
        for i, slot in enumerate(dev.slots):
            if addr < slot.offset + slot.size and slot.offset < end:
                if i == running:
                    return "active"
                limit = slot.size if self.extent is None else min(slot.size, self.extent)
                if i == passive and slot.offset <= addr and end <= slot.offset + limit:
                    return "passive"
                return "other-slot"
        store = dev.store
        if store.offset <= addr and end <= store.offset + store.sectors * SECTOR_SIZE:
            return "nvs"
        od = dev.otadata
        if od.offset <= addr and end <= od.offset + 2 * SECTOR_SIZE:
            return "otadata"
        return "other"

    def phase_of_last_op(self) -> str:
        if not self.ops:
            return "none"
        _kind, addr, length = self.ops[-1]
        return PHASE_OF_REGION.get(self.region(addr, length), "stray")

    def _guard(self, kind: str, addr: int, length: int, call: Callable[[], None]) -> None:
        outer = not self._inner
        if outer:
            self.attempts += 1
            where = self.region(addr, length)
            if where not in LEGIT:
                self.stray.append((kind, addr, length, where))
        try:
            call()
        except FlashError as exc:
            if outer and exc.fields.get("region") == "active slot":
                self.protect_errors += 1
            raise

    def _w(self, addr: int, data: Any) -> None:
        self._guard("program", addr, len(data), lambda: self._write(addr, data))

    def _es(self, addr: int) -> None:
        self._guard("erase", addr, SECTOR_SIZE, lambda: self._erase_sector(addr))

    def _er(self, addr: int, length: int) -> None:
        def call() -> None:
            self._inner = True
            try:
                self._erase_range(addr, length)
            finally:
                self._inner = False

        self._guard("erase", addr, length, call)


class Guard:
    """Collects what must never happen while fuzzing: escaped exceptions, bad frames out."""

    def __init__(self) -> None:
        self.uncaught = 0
        self.bad_outputs = 0
        self.messages: Counter[str] = Counter()  # distinct message -> times

    def exception(self, where: str, exc: BaseException) -> None:
        self.uncaught += 1
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        self.messages[
            f"{where}: {type(exc).__name__}: {exc} ({Path(tb.filename).name}:{tb.lineno})"
        ] += 1

    def bad(self, message: str) -> None:
        self.bad_outputs += 1
        self.messages[message] += 1

    def check_reply(self, body: bytes, mtu: int) -> None:
        """A device reply must fit its mtu and decode with the host's (reference) codec."""
        if len(body) > mtu:
            self.bad(f"device reply of {len(body)} B over mtu {mtu}")
        try:
            decode_frame(body)
        except DecodeError as exc:
            self.bad(f"device reply does not decode on the host: {exc} {body.hex()[:60]}")

    def check_sent(self, body: bytes, mtu: int) -> None:
        """A sender frame must fit its mtu and decode with the device's codec."""
        if len(body) > mtu:
            self.bad(f"sender frame of {len(body)} B over mtu {mtu}")
        try:
            DF.decode(body)
        except DeviceError as exc:
            self.bad(f"sender frame does not decode on the device: {exc} {body.hex()[:60]}")


class Link:
    """A Sender and a Receiver joined in memory: lossless, in order, no latency, fake clock.

    Without ``guard`` everything raised (a ``PowerCut`` above all) propagates;
    with one, exceptions out of either side are recorded and the run goes on.
    """

    def __init__(
        self,
        sender: Sender,
        rx: RX.Receiver | None,
        *,
        now: float = 0.0,
        guard: Guard | None = None,
    ) -> None:
        self.sender = sender
        self.rx = rx
        self.now = now
        self.guard = guard
        self.events: list[Event] = []
        self.up: list[bytes] = []  # host -> device bodies, in order
        self.down: list[bytes] = []
        self.stalled = False

    def _call(self, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self.guard is None:
            return fn(*args)
        try:
            return fn(*args)
        except Exception as exc:
            self.guard.exception(where, exc)
            return None

    def _drain(self) -> None:
        while (event := self.sender.next_event()) is not None:
            self.events.append(event)

    def to_device(self, body: bytes) -> None:
        self.up.append(body)
        if self.rx is None:
            return
        replies = self._call("Receiver.receive_frame", self.rx.receive_frame, body, self.now)
        for reply in replies or []:
            if self.guard is not None:
                self.guard.check_reply(reply, self.rx.mtu)
            self.to_sender(reply)

    def to_sender(self, body: bytes) -> None:
        self.down.append(body)
        self._call("Sender.receive_frame", self.sender.receive_frame, body, self.now)
        self._drain()

    def step(self) -> bool:
        """One round; False once the sender is done (or stuck with no timer)."""
        out = self._call("Sender.datagrams_to_send", self.sender.datagrams_to_send, self.now)
        self._drain()
        if out:
            for body in out:
                if self.guard is not None:
                    self.guard.check_sent(body, self.sender.mtu)
                self.to_device(body)
            self.now += 0.001
            return True
        if self.sender.done:
            return False
        deadline = self.sender.get_timer()
        if deadline is None:
            self.stalled = True
            return False
        self.now = max(self.now, deadline)
        self._call("Sender.handle_timer", self.sender.handle_timer, self.now)
        self._drain()
        return True

    def run(self, max_steps: int = 200_000) -> Link:
        for _ in range(max_steps):
            if not self.step():
                return self
        self.stalled = True
        return self

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def data_segments(self, start: int = 0) -> set[int]:
        """Segments the sender sent DATA for, from up[start:]."""
        out = set()
        for body in self.up[start:]:
            frame = decode_frame(body)
            if isinstance(frame, Data):
                out.add(frame.segment)
        return out


@functools.lru_cache(maxsize=32)
def split_cached(art: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """split_artifact, once per artifact (the campaigns send the same few many times)."""
    return split_artifact(art)


def make_sender(art: bytes, *, mtu: int = 1024, window: int = 4, **kw: Any) -> Sender:
    manifest, signature, segments = split_cached(art)
    kw.setdefault("rto", 0.5)
    return Sender(manifest, signature, segments, mtu=mtu, window=window, **kw)


def outcome(events: list[Event]) -> str:
    for e in events:
        if isinstance(e, Completed):
            return "completed"
        if isinstance(e, Rejected):
            return f"rejected:{reason_name(e.reason)}" + (" (local)" if e.local else "")
        if isinstance(e, Failed):
            return f"failed:{reason_name(e.reason)}"
    return "open"


# ============================================================ power cuts


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


class PowerCutCampaign:
    def __init__(self, fw: Firmware, work: Path, seed: int) -> None:
        self.fw = fw
        self.work = work
        self.rng = random.Random(seed)
        self.n_full = len(split_artifact(fw.full)[2])
        self.n_delta = len(split_artifact(fw.delta)[2])
        self.extent = -(-max(len(fw.new), len(fw.old)) // SECTOR_SIZE) * SECTOR_SIZE
        self.pristine = make_device(work / "pristine.bin", fw.old)
        with Device(str(self.pristine)) as dev:
            self.old_slot0 = slot_digest(dev, 0)
        self.results: list[CutResult] = []

    # ---------------------------------------------------------- legs

    def legs(self) -> list[Leg]:
        fw, w = self.fw, self.work
        armed = w / "armed.bin"
        shutil.copy(self.pristine, armed)
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
            Leg("offline full", "offline", fw.full, self.pristine),
            Leg("offline delta", "offline", fw.delta, self.pristine),
            Leg("link full", "link", fw.full, self.pristine, mtu=1024, window=4),
            Leg("link delta", "link", fw.delta, self.pristine, mtu=64, window=8),
            Leg("boot confirm", "boot", fw.full, armed, self_test=True, allowed=("old", "new")),
            Leg("boot reject", "boot", fw.full, armed, self_test=False, allowed=("old", "new")),
            Leg("boot abort", "boot", fw.full, pending, self_test=True, allowed=("old",)),
            Leg("boot bad image", "boot", fw.full, damaged, allowed=("old",), damaged=True),
        ]
        for leg in legs:
            leg.phases = self._dry_run(leg)
        return legs

    def _dry_run(self, leg: Leg) -> list[str]:
        work = self.work / "dry.bin"
        shutil.copy(leg.base, work)
        with Device(str(work)) as dev:
            audit = FlashAudit(dev)
            regions: list[str] = []
            dev.flash.on_op = lambda kind, addr, length: regions.append(audit.region(addr, length))
            if leg.path == "offline":
                install_stream(dev, io.BytesIO(leg.art))
            elif leg.path == "link":
                link = Link(self._sender(leg, 7), RX.Receiver(dev, mtu=leg.mtu)).run()
                assert link.of(Completed), outcome(link.events)
            else:
                dev.power_on(self_test=leg.self_test)
        if leg.path == "boot":
            return ["boot"] * len(regions)
        return [PHASE_OF_REGION.get(r, "stray") for r in regions]

    def _sender(self, leg: Leg, session_id: int) -> Sender:
        return make_sender(leg.art, mtu=leg.mtu, window=leg.window, session_id=session_id)

    # ---------------------------------------------------------- picking N

    def pick(self, leg: Leg, budget: int) -> list[int]:
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
                chosen.add(pool[self.rng.randrange(lo, max(math.ceil((j + 1) * step), lo + 1))])
        unused = [i for i in range(total) if i not in chosen]
        chosen.update(self.rng.sample(unused, max(0, min(len(unused), budget - len(chosen)))))
        return sorted(chosen)

    # ---------------------------------------------------------- one cut

    def cut(self, leg: Leg, index: int) -> CutResult:
        res = CutResult(leg.name, index)
        work = self.work / "work.bin"
        shutil.copy(leg.base, work)
        uid = sha(split_cached(leg.art)[0])[:16]
        first: Link | None = None
        dev = Device(str(work), cut_at=index)
        audit = FlashAudit(dev, self.extent)
        try:
            if leg.path == "offline":
                install_stream(dev, io.BytesIO(leg.art))
            elif leg.path == "link":
                first = Link(self._sender(leg, 0x1000 + index), RX.Receiver(dev, mtu=leg.mtu))
                first.run()
            else:
                dev.power_on(self_test=leg.self_test)
            res.problems.append("no power cut happened (index past the last op)")
        except PowerCut:
            pass
        except DeviceError as exc:
            res.problems.append(f"run raised {exc}")
        finally:
            dev.close()
        res.phase = "boot" if leg.path == "boot" else audit.phase_of_last_op()
        res.region = audit.region(*audit.ops[-1][1:]) if audit.ops else ""
        self._absorb(res, audit)

        # 1. power returns: the bootloader picks a slot, the app confirms itself
        dev = Device(str(work))
        try:
            audit = FlashAudit(dev, self.extent)
            progress = dev.progress() or {}
            done = progress.get("next", 0) if progress.get("uid") == uid else 0
            try:
                boot = dev.power_on(self_test=True)
            except DeviceError as exc:
                res.unbootable = True
                res.problems.append(f"no bootable slot after the cut: {exc}")
                return self._done(res)
            self._check_boot(dev, boot, leg.allowed, res)
            # 2. the rerun
            if leg.path == "boot" and res.booted == "new" and boot["state"] == "VALID":
                res.rerun_ok = True  # the update finished on this boot
            elif leg.path in ("offline", "boot"):
                self._rerun_offline(dev, leg, done if leg.path == "offline" else None, res)
            else:
                self._rerun_link(dev, leg, done, index, first, res)
            self._absorb(res, audit)
            # ota_0 ran the old image when power failed; whatever booted since, it is
            # never written (a rerun goes to ota_1 while ota_0 runs)
            if slot_digest(dev, 0) != self.old_slot0:
                res.active_changed = True
        finally:
            dev.close()
        # 3. the new image boots, confirms, is byte-identical, and the counter moved
        self._final(work, res)
        return self._done(res)

    def _absorb(self, res: CutResult, audit: FlashAudit) -> None:
        res.stray += len(audit.stray)
        res.active_writes += sum(1 for s in audit.stray if s[3] == "active")
        res.protect_errors += audit.protect_errors
        for s in audit.stray[:2]:
            res.problems.append(stray_text(s))

    def _check_boot(
        self, dev: Device, boot: dict[str, Any], allowed: tuple[str, ...], res: CutResult
    ) -> None:
        index = boot["slot"]
        rec = dev.state["slots"].get(dev.slots[index].label)
        image = {"old": self.fw.old, "new": self.fw.new}
        got = bytes(slot_bytes(dev, index, rec["size"])) if rec else b""
        if rec is None or sha(got) != bytes(rec["sha256"]):
            res.unbootable = True
            res.problems.append(f"booted ota_{index} whose bytes do not match its record")
            return
        res.booted = next((name for name, img in image.items() if got == img), "?")
        if res.booted not in allowed:
            res.wrong_image = True
            res.problems.append(f"booted {res.booted} image, allowed: {allowed}")

    def _rerun_offline(self, dev: Device, leg: Leg, done: int | None, res: CutResult) -> None:
        art = leg.art if leg.path == "offline" else self.fw.full
        n = len(split_cached(art)[2])
        for attempt in (1, 2):
            res.rerun_attempts = attempt
            decoded: list[int] = []
            try:
                install_stream(dev, io.BytesIO(art), decode_hook=decoded.append)
            except DeviceError as exc:
                if attempt == 1 and leg.damaged and exc.reason == Reason.IMAGE_HASH_MISMATCH:
                    continue  # it re-verified the slot, found it damaged, starts over next time
                res.problems.append(f"rerun raised {exc}")
                return
            if done is not None and decoded != list(range(done, n)):
                res.problems.append(f"rerun decoded {decoded[:5]}... after {done} were done")
                return
            res.rerun_ok = True
            return

    def _rerun_link(
        self, dev: Device, leg: Leg, done: int, index: int, old: Link | None, res: CutResult
    ) -> None:
        n = len(split_cached(leg.art)[2])
        decoded: list[int] = []
        rx = RX.Receiver(dev, mtu=leg.mtu, decode_hook=decoded.append)
        res.rerun_attempts = 1
        if old is not None and index % 2:
            # The same Sender goes on: the rebooted device's unasked HELLO tells it
            # the session is gone; it starts over from QUERY and resumes.
            link, start, accepted_before = old, len(old.up), len(old.of(Accepted))
            link.rx = rx
            for hello in rx.announce():
                link.to_sender(hello)
            link.run()
            accepted = link.of(Accepted)[accepted_before:]
        else:
            link = Link(self._sender(leg, 0x2000 + index), rx).run()
            start, accepted = 0, link.of(Accepted)
        if not link.of(Completed):
            res.problems.append(f"link rerun ended {outcome(link.events)}")
            return
        if not accepted or accepted[0].next_segment != done:
            res.problems.append(f"resumed at {accepted[:1]}, persisted progress said {done}")
            return
        below = {s for s in link.data_segments(start) if s < done}
        if below or decoded != list(range(done, n)):
            res.problems.append(f"rerun resent {sorted(below)} / decoded {decoded[:5]}")
            return
        res.rerun_ok = True

    def _final(self, work: Path, res: CutResult) -> None:
        with Device(str(work)) as dev:
            audit = FlashAudit(dev, self.extent)
            boot = dev.power_on(self_test=True)
            new_ok = (
                boot["version"] == "new"
                and boot["state"] == "VALID"
                and slot_bytes(dev, boot["slot"], len(self.fw.new)) == self.fw.new
            )
            other = 1 - boot["slot"]
            old_ok = slot_bytes(dev, other, len(self.fw.old)) == self.fw.old
            if slot_digest(dev, 0) != self.old_slot0:
                res.active_changed = True
            counter = dev.info()["security_counter"]
            self._absorb(res, audit)
        res.final_ok = new_ok and old_ok
        if not res.final_ok:
            res.problems.append(f"final boot {boot['label']} {boot['version']} {boot['state']}")
        if counter != NEW_COUNTER:
            res.counter_lapse = True
            res.problems.append(
                f"running the new image (VALID) with security counter {counter}, "
                f"expected {NEW_COUNTER}: anti-rollback not advanced"
            )

    def _done(self, res: CutResult) -> CutResult:
        self.results.append(res)
        return res

    # ---------------------------------------------------------- the campaign

    def run(
        self,
        cuts: int,
        progress: Callable[[str], None] | None = None,
        only: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """At least ``cuts`` cuts: every op of the boot legs, the rest shared by the
        install legs. ``only``: names of the legs to run (default all)."""
        t0 = time.monotonic()
        legs = self.legs()
        if only is not None:
            legs = [leg for leg in legs if leg.name in set(only)]
        boot_ops = sum(len(leg.phases) for leg in legs if leg.path == "boot")
        install = [leg for leg in legs if leg.path != "boot"]
        share = max(3, (cuts - boot_ops) // max(len(install), 1))
        extra = max(0, cuts - boot_ops - share * len(install))
        plan: list[tuple[Leg, int]] = []
        for i, leg in enumerate(legs):
            budget = share + (extra if i == 0 else 0) if leg.path != "boot" else len(leg.phases)
            plan += [(leg, n) for n in self.pick(leg, budget)]
        for k, (leg, n) in enumerate(plan):
            self.cut(leg, n)
            if progress is not None and (k + 1) % 50 == 0:
                progress(f"power cuts: {k + 1}/{len(plan)}")
        return self.summary(legs, time.monotonic() - t0)

    def summary(self, legs: list[Leg], seconds: float) -> dict[str, Any]:
        def tally(rows: list[CutResult]) -> dict[str, int]:
            return {
                "cuts": len(rows),
                "unbootable": sum(r.unbootable for r in rows),
                "wrong_image": sum(r.wrong_image for r in rows),
                "active_slot_writes": sum(r.active_writes for r in rows),
                "protect_errors": sum(r.protect_errors for r in rows),
                "active_slot_changed": sum(r.active_changed for r in rows),
                "stray_writes": sum(r.stray for r in rows),
                "reruns_completed": sum(r.rerun_ok for r in rows),
                "final_identical": sum(r.final_ok for r in rows),
                "counter_lapses": sum(r.counter_lapse for r in rows),
                "booted_old": sum(r.booted == "old" for r in rows),
                "booted_new": sum(r.booted == "new" for r in rows),
                "reruns_needing_2_attempts": sum(r.rerun_attempts == 2 for r in rows),
            }

        rows = self.results
        bad = [r for r in rows if r.problems]
        return {
            "pair": self.fw.name,
            "images": {"old": len(self.fw.old), "new": len(self.fw.new)},
            "artifacts": {
                "full": [len(self.fw.full), self.n_full],
                "delta": [len(self.fw.delta), self.n_delta],
            },
            "legs": {
                leg.name: {"ops": len(leg.phases), **tally([r for r in rows if r.leg == leg.name])}
                for leg in legs
            },
            "phases": {p: tally([r for r in rows if r.phase == p]) for p in PHASES},
            "total": tally(rows),
            "problems": [
                {
                    "leg": r.leg,
                    "index": r.index,
                    "phase": r.phase,
                    "region": r.region,
                    "problems": r.problems,
                }
                for r in bad[:20]
            ],
            "problem_count": len(bad),
            "seconds": round(seconds, 1),
        }


def powercut_campaign(
    cuts: int, seed: int, pair: str = "esp8266", progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="otaferry-cuts-") as tmp:
        return PowerCutCampaign(firmware(pair), Path(tmp), seed).run(cuts, progress)


def powercut_ok(s: dict[str, Any], cuts: int) -> bool:
    t = s["total"]
    return (
        t["cuts"] >= cuts
        and t["unbootable"] == 0
        and t["wrong_image"] == 0
        and t["active_slot_writes"] == t["protect_errors"] == t["active_slot_changed"] == 0
        and t["stray_writes"] == 0
        and t["reruns_completed"] == t["final_identical"] == t["cuts"]
        and t["counter_lapses"] == 0
    )


# ============================================================ frame fuzzing

FRAME_CODES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0x23, 0x26]
ODD_CODES = [0, 11, 0x21, 0x27, 0x2A, 0x7F, 0xFF, -1]
INTERESTING = [
    0, 1, -1, 2, 7, 8, 127, 128, 255, 256, -33, -129, 0x7FFF, 0xFFFF, 0x10000,
    0xFFFFFFFF, 0x100000000, 2**63 - 1, -(2**63), 2**64 - 1,
]  # fmt: skip
MUTATIONS = {
    "bitflip": 20, "truncate": 8, "extend": 5, "splice": 8, "field": 25,
    "random_array": 15, "replay": 8, "reflect": 3, "random_bytes": 5, "blob": 3,
}  # fmt: skip


def rand_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.randrange(10 if depth < 2 else 7)
    if r == 0:
        return rng.choice(INTERESTING)
    if r == 1:
        return rng.randint(-(2**40), 2**40)
    if r == 2:
        return rng.randbytes(rng.choice([0, 1, 2, 8, 16, 32, 33, 64, rng.randrange(300)]))
    if r == 3:
        return "".join(rng.choice("ab\u00e9\u4e2d\x00") for _ in range(rng.randrange(40)))
    if r == 4:
        return rng.choice([None, True, False, 0.5, float("nan")])
    if r in (5, 6):
        return rng.randrange(20)
    if r in (7, 8):
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.randrange(20): rand_value(rng, depth + 1) for _ in range(rng.randrange(3))}


def pack(items: Any) -> bytes:
    try:
        return msgpack.packb(items, use_bin_type=True)  # type: ignore[no-any-return]
    except (OverflowError, ValueError, TypeError):  # an int pushed past 64 bits
        return msgpack.packb([items[0] if isinstance(items, list) and items else 0, 2**64 - 1])  # type: ignore[no-any-return]


def mutate_fields(rng: random.Random, items: list[Any]) -> list[Any]:
    """One msgpack-level change to a frame's (or a blob's) array of fields."""
    items = list(items)
    op = rng.randrange(7)
    if op == 0 and len(items) >= 2:
        i, j = rng.sample(range(len(items)), 2)
        items[i], items[j] = items[j], items[i]
    elif op == 1 and items:
        items[rng.randrange(len(items))] = rand_value(rng)
    elif op == 2 and len(items) > 1:
        del items[rng.randrange(1, len(items))]
    elif op == 3:
        items.insert(rng.randrange(1, len(items) + 1), rand_value(rng))
    elif op == 4 and items:
        items[0] = rng.choice(FRAME_CODES + ODD_CODES)
    elif op == 5:
        ints = [i for i, v in enumerate(items) if type(v) is int]
        if ints:
            i = rng.choice(ints)
            items[i] = items[i] + rng.choice([-2, -1, 1, 2, 8, 256, -256])
    else:
        bins = [i for i, v in enumerate(items) if isinstance(v, bytes)]
        if bins:
            i = rng.choice(bins)
            b = bytearray(items[i])
            if b and rng.random() < 0.7:  # same length: passes every length check
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            else:
                b = b[: rng.randrange(len(b) + 1)] + rng.randbytes(rng.randrange(3))
            items[i] = bytes(b)
    return items


def split(blob: bytes, size: int) -> list[bytes]:
    return [blob[i : i + size] for i in range(0, len(blob), size)] or [b""]


@dataclass
class Capture:
    """Frames of one real session, both directions, and its joined blobs."""

    name: str
    up: list[bytes]
    down: list[bytes]
    hello_blob: bytes
    offer_blob: bytes


def capture(name: str, flash: Path, art: bytes, mtu: int, window: int, work: Path) -> Capture:
    path = work / "capture.bin"
    shutil.copy(flash, path)
    with Device(str(path)) as dev:
        link = Link(make_sender(art, mtu=mtu, window=window), RX.Receiver(dev, mtu=mtu)).run()
    hello: dict[int, bytes] = {}
    offer: dict[int, bytes] = {}
    for body in link.down:
        f = decode_frame(body)
        if isinstance(f, Hello):
            hello[f.part] = f.chunk
    for body in link.up:
        f = decode_frame(body)
        if isinstance(f, Offer):
            offer[f.part] = f.chunk
    return Capture(
        name,
        link.up,
        link.down,
        b"".join(hello[i] for i in sorted(hello)),
        b"".join(offer[i] for i in sorted(offer)),
    )


class Mutator:
    def __init__(self, rng: random.Random, own: Capture, others: list[Capture]) -> None:
        self.rng = rng
        self.own = own
        self.foreign = [b for c in others for b in c.up + c.down]
        self.kinds = list(MUTATIONS)
        self.weights = list(MUTATIONS.values())

    def make(self, up: bool, session_id: int, mtu: int) -> tuple[str, list[bytes]]:
        rng, own = self.rng, self.own
        pool = own.up if up else own.down
        base = rng.choice(pool)
        kind = rng.choices(self.kinds, self.weights)[0]
        if kind == "bitflip":
            b = bytearray(base)
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            return kind, [bytes(b)]
        if kind == "truncate":
            return kind, [base[: rng.randrange(len(base))]]
        if kind == "extend":
            return kind, [base + rng.randbytes(rng.randint(1, 8))]
        if kind == "splice":
            other = rng.choice(pool + self.foreign)
            return kind, [base[: rng.randrange(len(base) + 1)] + other[rng.randrange(len(other)) :]]
        if kind == "field":
            items = msgpack.unpackb(base, raw=False, strict_map_key=False)
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                items = mutate_fields(rng, items)
            return kind, [pack(items)]
        if kind == "random_array":
            code = rng.choice(FRAME_CODES) if rng.random() < 0.9 else rng.choice(ODD_CODES)
            return kind, [pack([code] + [rand_value(rng) for _ in range(rng.randrange(7))])]
        if kind == "replay":
            return kind, [rng.choice(self.foreign)]
        if kind == "reflect":
            return kind, [rng.choice(own.down if up else own.up)]
        if kind == "random_bytes":
            return kind, [rng.randbytes(rng.randrange(80))]
        return kind, self._offer(session_id, mtu) if up else self._hello(session_id, mtu)

    def _offer(self, session_id: int, mtu: int) -> list[bytes]:
        """A whole OFFER (after a QUERY of a new session, half the time) of a mutated blob:
        drives Installer.begin with it."""
        rng = self.rng
        items = msgpack.unpackb(self.own.offer_blob, raw=False)
        for _ in range(rng.randint(1, 2)):
            items = mutate_fields(rng, items)
        blob = pack(items)
        size = max(1, min(rng.choice([mtu - 12, 20, 200]), len(blob)))
        parts = split(blob, size)
        out = [] if rng.random() < 0.5 else [Query(rng.randint(1, 2**32 - 1)).encode()]
        for i, part in enumerate(parts):
            poll = 0x20 if i == len(parts) - 1 else 0
            out.append(pack([DF.OFFER | poll, i, len(parts), part]))
        return out

    def _hello(self, session_id: int, mtu: int) -> list[bytes]:
        """HELLO parts, for the sender's own session, of a mutated HelloInfo."""
        rng = self.rng
        items = msgpack.unpackb(self.own.hello_blob, raw=False)
        for _ in range(rng.randint(1, 3)):
            items = mutate_fields(rng, items)
        parts = split(pack(items), max(1, rng.choice([mtu - 12, 16, 5])))
        return [pack([DF.HELLO, session_id, i, len(parts), p]) for i, p in enumerate(parts)]


@dataclass
class FuzzConfig:
    name: str
    pristine: Path
    art: bytes
    new: bytes
    mtu: int
    window: int


@dataclass
class FuzzStats:
    scenarios: int = 0
    frames: int = 0
    to_receiver: int = 0
    to_sender: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    stray_writes: int = 0
    protect_errors: int = 0
    active_changed: int = 0
    hung: int = 0
    false_completions: int = 0
    armed_unverified: int = 0
    recovery_failed: int = 0
    unbootable: int = 0
    flash_writes_checked: int = 0
    problems: Counter[str] = field(default_factory=Counter)

    def problem(self, message: str) -> None:
        self.problems[message] += 1


class FrameFuzzCampaign:
    def __init__(self, work: Path, seed: int) -> None:
        self.work = work
        self.rng = random.Random(seed)
        self.guard = Guard()
        self.stats = FuzzStats()
        prog = firmware("programmer")
        synth = firmware("synth")
        p_dev = make_device(work / "p.bin", prog.old, csv=SMALL_CSV, size=SMALL_FLASH)
        s_dev = make_device(work / "s.bin", synth.old, csv=SMALL_CSV, size=SMALL_FLASH)
        self.configs = [
            FuzzConfig("programmer full, mtu 64", p_dev, prog.full, prog.new, 64, 8),
            FuzzConfig("programmer full, mtu 1024", p_dev, prog.full, prog.new, 1024, 4),
            FuzzConfig("programmer delta, mtu 43", p_dev, prog.delta, prog.new, 43, 16),
            FuzzConfig("synth full, mtu 256", s_dev, synth.full, synth.new, 256, 8),
            FuzzConfig("synth delta, mtu 64", s_dev, synth.delta, synth.new, 64, 8),
        ]
        self.signed_targets = {sha(prog.new), sha(synth.new), sha(prog.old), sha(synth.old)}
        self.extent = -(-max_target([prog.full, synth.full]) // SECTOR_SIZE) * SECTOR_SIZE
        self.captures = [
            capture(c.name, c.pristine, c.art, c.mtu, c.window, work) for c in self.configs
        ]
        rejected = [  # sessions that end in a REJECT, and one of another vendor
            capture("wrong hw", p_dev, build(prog.new, hw=["board-x"]), 64, 8, work),
            capture("stranger", p_dev, build(prog.new, key=STRANGER), 256, 4, work),
            capture("other build", s_dev, build(synth.new, counter=0, version="n0"), 64, 8, work),
        ]
        self.foreign = self.captures + rejected

    def run(self, frames: int, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        t0 = time.monotonic()
        mark = 0
        while self.stats.frames < frames:
            k = self.rng.randrange(len(self.configs))
            self.scenario(self.configs[k], self.captures[k], frames - self.stats.frames)
            if progress is not None and self.stats.frames >= mark + 20_000:
                mark = self.stats.frames
                progress(f"fuzz: {self.stats.frames}/{frames} frames")
        return self.summary(time.monotonic() - t0)

    def scenario(self, cfg: FuzzConfig, own: Capture, room: int) -> None:
        rng, st = self.rng, self.stats
        st.scenarios += 1
        work = self.work / "fuzz.bin"
        shutil.copy(cfg.pristine, work)
        dev = Device(str(work))
        try:
            audit = FlashAudit(dev, self.extent)
            before = slot_digest(dev, 0)
            sender = make_sender(
                cfg.art, mtu=cfg.mtu, window=cfg.window, session_id=rng.randint(1, 2**32 - 1)
            )
            link = Link(sender, RX.Receiver(dev, mtu=cfg.mtu), guard=self.guard)
            for _ in range(rng.randrange(len(own.up) + 4)):
                if not link.step():
                    break
            mutator = Mutator(rng, own, [c for c in self.foreign if c is not own])
            batch = min(room, rng.randint(20, 400))
            sent = 0
            while sent < batch:
                up = rng.random() < 0.6
                kind, bodies = mutator.make(up, sender.session_id, cfg.mtu)
                st.kinds[kind] += len(bodies)
                for body in bodies:
                    (link.to_device if up else link.to_sender)(body)
                sent += len(bodies)
                if up:
                    st.to_receiver += len(bodies)
                else:
                    st.to_sender += len(bodies)
                if rng.random() < 0.25:
                    link.step()
            st.frames += sent
            link.run(20_000)
            result = outcome(link.events)
            st.outcomes[result] += 1
            if link.stalled or result == "open":
                st.hung += 1
                s = sender.stats
                st.problem(
                    f"{cfg.name}: session did not end: sender in {sender.phase.value} after "
                    f"{s.data_frames} DATA frames ({s.retransmits} resent), {s.timeouts} "
                    f"timeouts, {s.frames_received} frames from the device"
                )
            self._after(dev, cfg, link, audit, before, result)
        finally:
            dev.close()

    def _after(
        self,
        dev: Device,
        cfg: FuzzConfig,
        link: Link,
        audit: FlashAudit,
        before: bytes,
        result: str,
    ) -> None:
        st = self.stats
        armed = dev.otadata.boot_slot()
        passive = (dev.state["running"] + 1) % len(dev.slots)
        target = sha(cfg.new)
        if armed is not None and armed != dev.state["running"]:
            rec = dev.state["slots"].get(dev.slots[armed].label)
            if rec is None or sha(slot_bytes(dev, armed, rec["size"])) not in self.signed_targets:
                st.armed_unverified += 1
                st.problem(f"{cfg.name}: otadata selects ota_{armed}, not a signed image")
        if result == "completed" and (
            armed != passive or sha(slot_bytes(dev, passive, len(cfg.new))) != target
        ):
            st.false_completions += 1
            st.problem(f"{cfg.name}: sender Completed, device has not armed the image")
        if result != "completed" or armed != passive:
            rx = RX.Receiver(dev, mtu=cfg.mtu)
            again = Link(
                make_sender(cfg.art, mtu=cfg.mtu, window=cfg.window, session_id=0xFEED),
                rx,
                now=link.now + 100,
                guard=self.guard,
            ).run(50_000)
            if not again.of(Completed):
                st.recovery_failed += 1
                st.problem(f"{cfg.name}: a fresh session after fuzzing: {outcome(again.events)}")
        try:
            boot = dev.power_on(self_test=True)
            rec = dev.state["slots"].get(boot["label"]) or {}
            if sha(slot_bytes(dev, boot["slot"], rec.get("size", 0))) not in self.signed_targets:
                st.unbootable += 1
                st.problem(f"{cfg.name}: booted {boot['label']}, not a signed image")
        except DeviceError as exc:
            st.unbootable += 1
            st.problem(f"{cfg.name}: no bootable slot: {exc}")
        if slot_digest(dev, 0) != before:  # ota_0 ran until the final power_on
            st.active_changed += 1
            st.problem(f"{cfg.name}: the active slot's bytes changed")
        st.stray_writes += len(audit.stray)
        st.protect_errors += audit.protect_errors
        st.flash_writes_checked += audit.attempts
        for s in audit.stray[:2]:
            st.problem(f"{cfg.name}: {stray_text(s)}")

    def summary(self, seconds: float) -> dict[str, Any]:
        st = self.stats
        return {
            "scenarios": st.scenarios,
            "frames": st.frames,
            "to_receiver": st.to_receiver,
            "to_sender": st.to_sender,
            "mutations": dict(st.kinds.most_common()),
            "uncaught_exceptions": self.guard.uncaught,
            "bad_outputs": self.guard.bad_outputs,
            "flash_writes_checked": st.flash_writes_checked,
            "stray_writes": st.stray_writes,
            "protect_errors": st.protect_errors,
            "active_slot_changed": st.active_changed,
            "hung": st.hung,
            "false_completions": st.false_completions,
            "armed_unverified": st.armed_unverified,
            "recovery_failed": st.recovery_failed,
            "unbootable": st.unbootable,
            "outcomes": dict(st.outcomes.most_common()),
            "problems": dict((self.guard.messages + st.problems).most_common(30)),
            "seconds": round(seconds, 1),
        }


def fuzz_campaign(
    frames: int, seed: int, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="otaferry-fuzz-") as tmp:
        return FrameFuzzCampaign(Path(tmp), seed).run(frames, progress)


FUZZ_ZERO = (
    "uncaught_exceptions",
    "bad_outputs",
    "stray_writes",
    "protect_errors",
    "active_slot_changed",
    "hung",
    "armed_unverified",
    "recovery_failed",
    "unbootable",
)


def fuzz_ok(s: dict[str, Any], frames: int) -> bool:
    return s["frames"] >= frames and all(s[k] == 0 for k in FUZZ_ZERO)


# ============================================================ secure-layer fuzzing


@dataclass
class SecureStats:
    sessions: int = 0
    to_device: int = 0
    to_host: int = 0
    msg2_to_host: int = 0
    skipped_genuine: int = 0
    exceptions: int = 0
    tampered_bodies: int = 0
    genuine_sent: int = 0
    genuine_opened: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    device_drops: Counter[str] = field(default_factory=Counter)
    host_drops: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)

    def problem(self, message: str) -> None:
        self.problems[message] += 1


class SecureFuzzCampaign:
    KINDS: ClassVar[dict[str, int]] = {
        "bitflip": 25, "truncate": 8, "extend": 5, "counter": 10, "splice": 8, "replay": 10,
        "reflect": 6, "foreign": 8, "random": 6, "msg1": 8, "kind_flip": 6,
    }  # fmt: skip

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.st = SecureStats()
        self.foreign: list[bytes] = []
        self.foreign_msg1: list[bytes] = []

    def _random_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def mutate(
        self, pool: list[bytes], reflect: list[bytes], msg1: bytes, old_msg1: bool = True
    ) -> tuple[str, bytes]:
        rng = self.rng
        kind = rng.choices(list(self.KINDS), list(self.KINDS.values()))[0]
        base = rng.choice(pool)
        b = bytearray(base)
        if kind == "bitflip":
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            b = b[: rng.randrange(len(b))]
        elif kind == "extend":
            b += rng.randbytes(rng.randint(1, 8))
        elif kind == "counter":  # same ciphertext and tag under another counter
            n = (b[0] | b[1] << 7) + rng.choice(
                [-2, -1, 1, 2, 64, 128, 16384, rng.randrange(32768)]
            )
            b[0], b[1] = n & 0x7F, (n >> 7) & 0xFF
        elif kind == "splice":
            other = rng.choice(pool + self.foreign)
            b = b[: rng.randrange(len(b) + 1)] + other[rng.randrange(len(other)) :]
        elif kind == "replay":
            b = bytearray(base)
        elif kind == "reflect" and reflect:
            b = bytearray(rng.choice(reflect))
        elif kind == "foreign" and self.foreign:
            b = bytearray(rng.choice(self.foreign))
        elif kind == "random":
            b = bytearray([rng.randrange(0x80)]) + rng.randbytes(rng.randrange(60))
        elif kind == "msg1":
            choice = rng.randrange(3)
            if choice == 0 and self.foreign_msg1 and old_msg1:
                b = bytearray(rng.choice(self.foreign_msg1))  # a genuine MSG1 of an old session
            elif choice == 1:
                b = bytearray(msg1)
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            else:
                b = bytearray([DS.MSG1]) + rng.randbytes(rng.randrange(60))
        elif kind == "kind_flip" and b:
            b[0] = rng.choice([0x90, 0x93, 0x9F, 0xDC, 0xE2, 0xE3, 0xFF, 0x80])
        return kind, bytes(b)

    def session(self, budget: int) -> None:
        rng, st = self.rng, self.st
        st.sessions += 1
        ep = DS.SecureEndpoint(
            DEVICE_LINK.raw(), [GATEWAY.public.raw], random_bytes=self._random_bytes
        )
        eph = rng.randbytes(32)
        ini = HS.Initiator(GATEWAY, DEVICE_LINK.public, LinkPrivateKey.from_raw(eph))
        msg1 = ini.start()
        msg2, body = ep.receive(msg1)
        if body is not None or msg2 is None:
            st.problem("handshake: no MSG2")
            return
        # mutated MSG2s to fresh initiators that sent the same MSG1
        for _ in range(rng.randint(1, 4)):
            kind, bad = self.mutate([msg2], [msg1], msg1)
            if bad == msg2:
                st.skipped_genuine += 1
                continue
            again = HS.Initiator(GATEWAY, DEVICE_LINK.public, LinkPrivateKey.from_raw(eph))
            again.start()
            st.msg2_to_host += 1
            try:
                again.receive(bad)
                st.tampered_bodies += 1
                st.problem(f"host Initiator accepted a {kind} MSG2")
            except OtaferryError:
                pass
            except Exception as exc:
                st.exceptions += 1
                st.problem(f"Initiator.receive: {type(exc).__name__}: {exc}")
        host = ini.receive(msg2)
        k = max(4, min(40, budget // 8))
        up_bodies = [pack([6, i, 0, rng.randbytes(rng.randint(1, 40))]) for i in range(k)]
        up = [host.seal(b) for b in up_bodies]
        pending = set(up)
        delivered: list[bytes] = []
        down: list[bytes] = []
        for i, record in enumerate(up):
            for _ in range(rng.randint(0, 8)):
                # (a genuine old MSG1 before the first frame displaces the pending
                # handshake: see pending_displaced())
                self._inject_device(ep, delivered or [record], down, msg1, pending, i > 0)
            _reply, got = self._call(lambda r=record: ep.receive(r))
            pending.discard(record)
            delivered.append(record)
            st.genuine_sent += 1
            if got == up_bodies[i]:
                st.genuine_opened += 1
            else:
                st.problem(f"genuine record {i} did not open on the device")
            if i % 4 == 0:
                down.append(ep.seal(pack([7, i, 0, b""])))
        down_bodies = [pack([7, 100 + i, 0, rng.randbytes(rng.randint(0, 9))]) for i in range(k)]
        fresh = [ep.seal(b) for b in down_bodies]
        for r in down:
            host.open(r)  # the earlier ones, in order
        pending = set(fresh)
        opened: list[bytes] = list(down)
        for i, record in enumerate(fresh):
            for _ in range(rng.randint(0, 6)):
                kind, bad = self.mutate(opened or [record], delivered, msg1)
                if bad in pending:
                    st.skipped_genuine += 1
                    continue
                st.kinds[kind] += 1
                st.to_host += 1
                got = self._call(lambda b=bad: host.open(b), None)
                if got is not None:
                    st.tampered_bodies += 1
                    st.problem(f"host SecureChannel.open returned a body for a {kind} record")
            got = host.open(record)
            pending.discard(record)
            opened.append(record)
            st.genuine_sent += 1
            if got == down_bodies[i]:
                st.genuine_opened += 1
            else:
                st.problem(f"genuine device record {i} did not open on the host")
        for name, value in ep.stats.items():
            st.device_drops[name] += value
        hs = host.stats
        for name in ("malformed", "auth_failed", "replayed", "too_old", "exhausted"):
            st.host_drops[name] += getattr(hs, name)
        self.foreign += up[:8] + fresh[:8]
        self.foreign = self.foreign[-400:]
        self.foreign_msg1 = ([*self.foreign_msg1, msg1])[-20:]

    def _inject_device(
        self,
        ep: DS.SecureEndpoint,
        pool: list[bytes],
        reflect: list[bytes],
        msg1: bytes,
        pending: set[bytes],
        old_msg1: bool,
    ) -> None:
        st = self.st
        kind, bad = self.mutate(pool, reflect, msg1, old_msg1)
        if bad in pending:
            st.skipped_genuine += 1
            return
        st.kinds[kind] += 1
        st.to_device += 1
        out = self._call(lambda: ep.receive(bad))
        if out is not None and out[1] is not None:
            st.tampered_bodies += 1
            st.problem(f"device SecureEndpoint.receive returned a body for a {kind} record")

    def _call(self, fn: Callable[[], Any], failed: Any = (None, None)) -> Any:
        try:
            return fn()
        except Exception as exc:
            self.st.exceptions += 1
            self.st.problem(f"{type(exc).__name__}: {exc}")
            return failed

    def pending_displaced(self) -> bool:
        """Does a replayed (genuine, older) MSG1 that arrives between MSG2 and the
        gateway's first sealed frame knock out the handshake in progress?"""
        ep = DS.SecureEndpoint(DEVICE_LINK.raw(), [GATEWAY.public.raw])
        old = HS.Initiator(GATEWAY, DEVICE_LINK.public, LinkPrivateKey.from_raw(sha(b"old")))
        old_msg1 = old.start()
        ep.receive(old_msg1)
        ini = HS.Initiator(GATEWAY, DEVICE_LINK.public, LinkPrivateKey.from_raw(sha(b"new")))
        msg1 = ini.start()
        host = ini.receive(ep.receive(msg1)[0])
        ep.receive(old_msg1)  # the attacker's replay
        return ep.receive(host.seal(b"\x91\x08"))[1] is None

    def run(self, records: int) -> dict[str, Any]:
        t0 = time.monotonic()
        st = self.st
        while st.to_device + st.to_host + st.msg2_to_host < records:
            self.session(records - (st.to_device + st.to_host + st.msg2_to_host))
        return {
            "sessions": st.sessions,
            "records": st.to_device + st.to_host + st.msg2_to_host,
            "to_device_endpoint": st.to_device,
            "to_host_channel": st.to_host,
            "msg2_to_host_initiator": st.msg2_to_host,
            "mutations": dict(st.kinds.most_common()),
            "exceptions": st.exceptions,
            "tampered_bodies_returned": st.tampered_bodies,
            "genuine_sent": st.genuine_sent,
            "genuine_opened": st.genuine_opened,
            "skipped_identical_to_genuine": st.skipped_genuine,
            "device_stats": dict(st.device_drops),
            "host_drops": dict(st.host_drops),
            "problems": dict(st.problems.most_common(30)),
            "observation_pending_handshake_displaced_by_replayed_msg1": self.pending_displaced(),
            "seconds": round(time.monotonic() - t0, 1),
        }


def secure_campaign(records: int, seed: int) -> dict[str, Any]:
    return SecureFuzzCampaign(seed).run(records)


def secure_ok(s: dict[str, Any], records: int) -> bool:
    return (
        s["records"] >= records
        and s["exceptions"] == 0
        and s["tampered_bodies_returned"] == 0
        and s["genuine_opened"] == s["genuine_sent"]
    )


# ============================================================ hostile artifacts


def raw_split(art: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """Manifest, signature and segments cut by the segment table, checking nothing:
    what a gateway that passes everything on would send."""
    m = int.from_bytes(art[6:10], "little")
    manifest = art[HEADER_SIZE : HEADER_SIZE + m]
    pos, segments = HEADER_SIZE + m + 64, []
    for entry in Manifest.decode(manifest).segments:
        segments.append(art[pos : pos + entry.length])
        pos += entry.length
    return manifest, art[HEADER_SIZE + m : HEADER_SIZE + m + 64], segments


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x01
    return bytes(b)


def _resign(art: bytes, key: SigningKey, *, own_key_id: bool) -> bytes:
    """The genuine manifest signed by ``key``: with its key id put in (UNKNOWN_KEY), or
    keeping the vendor's key id (the signature then fails: BAD_SIGNATURE)."""
    manifest_bytes, _sig, segments = split_artifact(art)
    if own_key_id:
        m = Manifest.decode(manifest_bytes)
        fields = {f: getattr(m, f) for f in Manifest.__dataclass_fields__}
        fields["key_id"] = key.public.key_id
        return assemble(Manifest(**fields), segments, key)
    head = art[:HEADER_SIZE]
    return head + manifest_bytes + key.sign(signing_message(manifest_bytes)) + b"".join(segments)


def _with(art: bytes, **changes: Any) -> bytes:
    """A vendor-signed artifact with manifest fields changed (a 'lying' signed manifest)."""
    manifest_bytes, _sig, segments = split_artifact(art)
    m = Manifest.decode(manifest_bytes)
    fields = {f: getattr(m, f) for f in Manifest.__dataclass_fields__}
    fields.update(changes)
    return assemble(Manifest(**fields), segments, VENDOR)


@dataclass
class Hostile:
    name: str
    art: bytes
    reason: Reason
    device: dict[str, Any] = field(default_factory=dict)  # make_device options
    visible: bool = False  # the sender's precheck sees it in the HELLO
    before_data: bool = True  # refused before any segment is written
    link: bool = True  # expressible as a Sender (a truncated file is not)


def hostile_cases(fw: Firmware, other: bytes) -> list[Hostile]:
    art = fw.full
    m = int.from_bytes(art[6:10], "little")
    sig_at = HEADER_SIZE + m
    payload_at = sig_at + 64
    sha_at = art.index(sha(fw.new))
    counter_tampered = bytearray(art)
    manifest_bytes = split_artifact(art)[0]
    # security_counter is key 5: "05 01" in the canonical map (fixint key, fixint value)
    at = manifest_bytes.index(b"\x05\x01")
    counter_tampered[HEADER_SIZE + at + 1] = 0x7F
    last_seg = len(art) - len(split_artifact(art)[2][-1])
    return [
        Hostile("bad signature", _flip(art, sig_at + 5), Reason.BAD_SIGNATURE),
        Hostile("unknown key", build(fw.new, key=STRANGER), Reason.UNKNOWN_KEY),
        Hostile("re-signed, unknown key id", _resign(art, STRANGER, own_key_id=True),
                Reason.UNKNOWN_KEY),
        Hostile("re-signed, vendor key id", _resign(art, STRANGER, own_key_id=False),
                Reason.BAD_SIGNATURE),
        Hostile("tampered manifest (sha)", _flip(art, sha_at + 3), Reason.BAD_SIGNATURE),
        Hostile("tampered manifest (counter)", bytes(counter_tampered), Reason.BAD_SIGNATURE),
        Hostile("truncated in header", art[:7], Reason.TRUNCATED, link=False),
        Hostile("truncated in manifest", art[: HEADER_SIZE + m // 2], Reason.TRUNCATED,
                link=False),
        Hostile("truncated in signature", art[: sig_at + 10], Reason.TRUNCATED, link=False),
        Hostile("truncated in payload", art[:-100], Reason.TRUNCATED, link=False,
                before_data=False),
        Hostile("corrupted first segment", _flip(art, payload_at + 40), Reason.SEGMENT_CORRUPT,
                before_data=False),
        Hostile("corrupted last segment", _flip(art, last_seg + 7), Reason.SEGMENT_CORRUPT,
                before_data=False),
        Hostile("image hash mismatch", _with(art, target_sha256=sha(b"another image")),
                Reason.IMAGE_HASH_MISMATCH, before_data=False),
        Hostile("downgrade", build(fw.new, counter=2), Reason.DOWNGRADE, {"counter": 3},
                visible=True),
        Hostile("wrong hw", build(fw.new, hw=["board-rev-a"]), Reason.WRONG_HW, visible=True),
        Hostile("wrong chip", build(fw.new, chip="esp32"), Reason.WRONG_CHIP, visible=True),
        Hostile("larger than slot", art, Reason.TOO_LARGE, {"csv": TINY_SLOTS_CSV},
                visible=True),
        Hostile("delta against wrong base", fw.delta, Reason.WRONG_BASE, {"image": other},
                visible=True),
    ]  # fmt: skip


class HostileCampaign:
    def __init__(self, work: Path, pair: str) -> None:
        self.work = work
        self.fw = firmware(pair)
        self.other = read_firmware(RELEASES[0])  # a running image no delta here was built for
        self.rows: list[dict[str, Any]] = []

    def _device(self, case: Hostile, name: str) -> Path:
        opts = dict(case.device)
        image = opts.pop("image", self.fw.old)
        if "csv" in opts:
            image = image[:0x8000]  # the tiny slots hold a 32 KiB stand-in image
        size = None if len(image) > 0x30000 or len(self.fw.new) > 0x30000 else SMALL_FLASH
        csv = opts.pop("csv", None) or (SMALL_CSV if size else None)
        return make_device(self.work / name, image, csv=csv, size=size, **opts)

    def check_device(self, path: Path, before: bytes, case: Hostile, row: dict[str, Any]) -> None:
        """After a refusal: the old image boots, the active slot is untouched, and a
        refusal before data changed nothing outside the state store."""
        problems: list[str] = row["problems"]
        after = path.read_bytes()
        with Device(str(path)) as dev:
            store = (dev.store.offset, dev.store.offset + dev.store.sectors * SECTOR_SIZE)
            active = dev.slots[0]
            if dev.otadata.boot_slot() != 0:
                problems.append("otadata no longer selects the running slot")
            a, b = active.offset, active.offset + active.size
            if after[a:b] != before[a:b]:
                problems.append("active slot bytes changed")
            if case.before_data and (
                after[: store[0]] != before[: store[0]] or after[store[1] :] != before[store[1] :]
            ):
                problems.append("flash changed outside the state store")
            boot = dev.power_on(self_test=True)
            if boot["label"] != "ota_0" or boot["version"] != "old":
                problems.append(f"booted {boot['label']} {boot['version']}")

    def offline(self, case: Hostile, row: dict[str, Any]) -> None:
        path = self._device(case, "offline.bin")
        before = path.read_bytes()
        with Device(str(path)) as dev:
            audit = FlashAudit(dev)
            try:
                install_stream(dev, io.BytesIO(case.art))
                row["offline"] = "INSTALLED"
            except DeviceError as exc:
                row["offline"] = reason_name(exc.reason)
            row["stray"] += len(audit.stray)
        self.check_device(path, before, case, row)

    def over_link(self, case: Hostile, row: dict[str, Any], precheck: bool) -> None:
        """``precheck``: an honest gateway (reads the file with its checks, judges the
        HELLO); without: a gateway that passes everything on and the device judges."""
        col = "link precheck" if precheck else "link device"
        if precheck or not case.link:
            try:
                split_artifact(case.art)
            except OtaferryError as exc:  # the gateway refuses to send it at all
                row[col] = f"{reason_name(exc.reason)} (gateway)"
                return
        if not case.link:
            row[col] = "SENT"
            return
        path = self._device(case, "link.bin")
        before = path.read_bytes()
        with Device(str(path)) as dev:
            audit = FlashAudit(dev)
            manifest, signature, segments = raw_split(case.art)
            sender = Sender(manifest, signature, segments, mtu=256, window=8, rto=0.5,
                            precheck=precheck, check_segments=False)  # fmt: skip
            link = Link(sender, RX.Receiver(dev, mtu=256)).run()
            rejected = link.of(Rejected)
            if rejected:
                r = rejected[0]
                row[col] = reason_name(r.reason) + (" (local)" if r.local else "")
                if not r.message:
                    row["problems"].append(f"{col}: Rejected without a message")
                if r.local != (precheck and case.visible):
                    row["problems"].append(f"{col}: local={r.local}")
            else:
                row[col] = outcome(link.events)
            if case.before_data and link.data_segments():
                row["problems"].append(f"{col}: DATA crossed before the refusal")
            row["stray"] += len(audit.stray)
        self.check_device(path, before, case, row)

    def truncated_offer(self) -> dict[str, Any]:
        """Device side of 'truncated' over the link: an OFFER whose manifest is cut short."""
        row = self._row("truncated offer (device)", Reason.TRUNCATED)
        path = self._device(Hostile("", b"", Reason.OK), "offer.bin")
        before = path.read_bytes()
        manifest, signature, _ = split_artifact(self.fw.full)
        blob = DF.encode_offer_blob(200, manifest[: len(manifest) // 2], signature)
        with Device(str(path)) as dev:
            audit = FlashAudit(dev)
            rx = RX.Receiver(dev, mtu=256)
            replies = rx.receive_frame(Query(5).encode(), 0.0)
            parts = split(blob, 200)
            for i, part in enumerate(parts):
                replies += rx.receive_frame(DF.offer(i, len(parts), part, poll=True), 0.0)
            frames = [decode_frame(r) for r in replies]
            rejects = [f for f in frames if isinstance(f, Reject)]
            row["link device"] = reason_name(rejects[0].reason) if rejects else "no REJECT"
            row["stray"] += len(audit.stray)
        row["offline"] = "-"
        self.check_device(path, before, Hostile("", b"", Reason.OK), row)
        return self._finish(row, row["link device"] in ("TRUNCATED", "MALFORMED"))

    def replayed_session(self) -> list[dict[str, Any]]:
        """Record what a gateway sent in complete sessions; replay it later.

        The device runs release 1 (counter 0); session A installs release 2
        (counter 1), session B release 3 (counter 2); each is confirmed. Then
        the host->device frames of session A are replayed, in order, to a fresh
        Receiver (plaintext bench link), and the sealed records of A to a fresh
        SecureEndpoint (secure link).
        """
        r1, r2, r3 = (read_firmware(p) for p in RELEASES)
        art_a = build(r2, counter=1, version="r2")
        art_b = build(r3, counter=2, version="r3")
        path = make_device(self.work / "replay.bin", r1, csv=SMALL_CSV, size=SMALL_FLASH,
                           version="r1")  # fmt: skip
        with Device(str(path)) as dev:
            ep = DS.SecureEndpoint(DEVICE_LINK.raw(), [GATEWAY.public.raw])
            ini = HS.Initiator(GATEWAY, DEVICE_LINK.public, LinkPrivateKey.from_raw(sha(b"eA")))
            msg1 = ini.start()
            host = ini.receive(ep.receive(msg1)[0])
            link = Link(make_sender(art_a, mtu=256, window=8, session_id=0xA), None)
            rx = RX.Receiver(dev, mtu=256)
            records = [msg1]

            def secure_to_device(body: bytes) -> None:  # the same session, sealed
                record = host.seal(body)
                records.append(record)
                link.up.append(body)
                opened = ep.receive(record)[1]
                for reply in rx.receive_frame(opened, link.now):
                    link.to_sender(host.open(ep.seal(reply)) or b"")

            link.to_device = secure_to_device  # type: ignore[method-assign]
            link.run()
            recorded = list(link.up)
            ok_a = bool(link.of(Completed))
        with Device(str(path)) as dev:
            dev.power_on(self_test=True)
        same_counter = self.work / "replay-same.bin"
        shutil.copy(path, same_counter)
        with Device(str(path)) as dev:
            ok_b = bool(Link(make_sender(art_b, mtu=256, session_id=0xB),
                             RX.Receiver(dev, mtu=256)).run().of(Completed))  # fmt: skip
        with Device(str(path)) as dev:
            boot = dev.power_on(self_test=True)
            assert ok_a and ok_b and boot["version"] == "r3", (ok_a, ok_b, boot)
        rows = []
        # (1) plaintext link, device moved on to counter 2
        row = self._row("replayed old session (plaintext link)", Reason.DOWNGRADE)
        before = path.read_bytes()
        with Device(str(path)) as dev:
            audit = FlashAudit(dev)
            rx = RX.Receiver(dev, mtu=256)
            replies = [r for body in recorded for r in rx.receive_frame(body, 0.0)]
            kinds = Counter(type(decode_frame(r)).__name__ for r in replies)
            rejects = [f for f in map(decode_frame, replies) if isinstance(f, Reject)]
            row["link device"] = reason_name(rejects[0].reason) if rejects else "no REJECT"
            row["replies"] = dict(kinds)
            if kinds.get("Done") or kinds.get("Accept"):
                row["problems"].append(f"replay was accepted: {dict(kinds)}")
            row["stray"] += len(audit.stray)
        if path.read_bytes() != before:
            row["problems"].append("flash changed")
        with Device(str(path)) as dev:
            if dev.power_on(self_test=True)["version"] != "r3":
                row["problems"].append("no longer runs release 3")
        row["offline"] = self._offline_reason(path, art_a)
        row["stopped by"] = "Installer.begin: security counter 1 < device's 2"
        rows.append(self._finish(row, row["link device"] == "DOWNGRADE"))
        # (2) secure link: the sealed records of session A to a fresh endpoint
        row = self._row("replayed old session (secure link)", "dropped (AEAD)")
        ep = DS.SecureEndpoint(DEVICE_LINK.raw(), [GATEWAY.public.raw])
        bodies = sum(ep.receive(r)[1] is not None for r in records)
        row["link device"] = f"{bodies} bodies reached the receiver"
        row["device stats"] = {k: v for k, v in ep.stats.items() if v}
        row["stopped by"] = "AEAD: new keys each handshake (auth_failed / no channel)"
        rows.append(self._finish(row, bodies == 0))
        # (3) residual: replay while the device still runs what session A installed
        row = self._row("replayed session, same counter (residual)", "-")
        with Device(str(same_counter)) as dev:
            rx = RX.Receiver(dev, mtu=256)
            replies = [r for body in recorded for r in rx.receive_frame(body, 0.0)]
            kinds = Counter(type(decode_frame(r)).__name__ for r in replies)
            row["link device"] = "re-installed" if kinds.get("Done") else f"{dict(kinds)}"
            row["replies"] = dict(kinds)
            boot = dev.power_on(self_test=True)
            row["offline"] = f"then boots {boot['label']} {boot['version']}"
        row["stopped by"] = "nothing: same security counter (SPEC 9.8, vendor must raise it)"
        rows.append(self._finish(row, True))
        return rows

    def _offline_reason(self, path: Path, art: bytes) -> str:
        work = self.work / "replay-offline.bin"
        shutil.copy(path, work)
        with Device(str(work)) as dev:
            try:
                install_stream(dev, io.BytesIO(art))
                return "INSTALLED"
            except DeviceError as exc:
                return reason_name(exc.reason)

    def _row(self, name: str, expected: Reason | str) -> dict[str, Any]:
        want = expected.name if isinstance(expected, Reason) else expected
        return {"case": name, "expected": want, "offline": "", "link device": "",
                "link precheck": "", "stray": 0, "problems": []}  # fmt: skip

    def _finish(self, row: dict[str, Any], ok: bool) -> dict[str, Any]:
        row["ok"] = ok and not row["problems"] and row["stray"] == 0
        self.rows.append(row)
        return row

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        for case in hostile_cases(self.fw, self.other):
            row = self._row(case.name, case.reason)
            self.offline(case, row)
            self.over_link(case, row, precheck=False)
            self.over_link(case, row, precheck=True)
            want = case.reason.name
            ok = row["offline"] == want and all(
                row[c].split(" ")[0] == want for c in ("link device", "link precheck")
            )
            self._finish(row, ok)
        self.truncated_offer()
        self.replayed_session()
        return {
            "cases": len(self.rows),
            "failed": sum(not r["ok"] for r in self.rows),
            "rows": self.rows,
            "seconds": round(time.monotonic() - t0, 1),
        }


def hostile_campaign(pair: str = "simba") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="otaferry-hostile-") as tmp:
        return HostileCampaign(Path(tmp), pair).run()


# ============================================================ report


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*(str(x) for x in row)) for row in rows]
    return "\n".join(out)


def print_report(results: dict[str, Any]) -> None:
    if "powercut" in results:
        s = results["powercut"]
        print(f"\nPOWER CUTS  pair {s['pair']} (old {s['images']['old']} B -> new "
              f"{s['images']['new']} B; full {s['artifacts']['full'][0]} B / "
              f"{s['artifacts']['full'][1]} segments, delta {s['artifacts']['delta'][0]} B / "
              f"{s['artifacts']['delta'][1]} segments), {s['seconds']} s")  # fmt: skip
        heads = ["", "cuts", "unbootable", "wrong image", "active writes", "protect err",
                 "active changed", "stray", "reruns ok", "final ok", "counter lapse"]  # fmt: skip
        keys = ["cuts", "unbootable", "wrong_image", "active_slot_writes", "protect_errors",
                "active_slot_changed", "stray_writes", "reruns_completed", "final_identical",
                "counter_lapses"]  # fmt: skip
        rows = [[PHASE_TITLES[p]] + [s["phases"][p][k] for k in keys] for p in PHASES]
        rows.append(["total"] + [s["total"][k] for k in keys])
        print(_table(heads, rows))
        print()
        rows = [[name, leg["ops"]] + [leg[k] for k in keys] + [leg["booted_old"], leg["booted_new"]]
                for name, leg in s["legs"].items()]  # fmt: skip
        print(_table(["leg", "ops", *heads[1:], "boot old", "boot new"], rows))
        for p in s["problems"][:8]:
            print(f"  ! {p['leg']} op {p['index']} ({p['phase']}/{p['region']}): "
                  f"{'; '.join(p['problems'])}")  # fmt: skip
    if "fuzz" in results:
        s = results["fuzz"]
        problems = s["problems"]
        print(f"\nFRAME FUZZING  {s['frames']} mutated/random frames ({s['to_receiver']} to the "
              f"Receiver, {s['to_sender']} to the Sender) in {s['scenarios']} sessions, "
              f"{s['seconds']} s")  # fmt: skip
        print("  mutations: " + ", ".join(f"{k} {v}" for k, v in s["mutations"].items()))
        for key in ("uncaught_exceptions", "bad_outputs", "flash_writes_checked", "stray_writes",
                    "protect_errors", "active_slot_changed", "hung", "armed_unverified",
                    "false_completions", "recovery_failed", "unbootable"):  # fmt: skip
            print(f"  {key.replace('_', ' '):28} {s[key]}")
        print("  session outcomes: " + ", ".join(f"{k} {v}" for k, v in s["outcomes"].items()))
        for p, n in problems.items():
            print(f"  ! {n} x {p}")
    if "secure" in results:
        s = results["secure"]
        print(f"\nSECURE LAYER FUZZING  {s['records']} tampered records in {s['sessions']} "
              f"sessions ({s['to_device_endpoint']} to SecureEndpoint.receive, "
              f"{s['to_host_channel']} to SecureChannel.open, {s['msg2_to_host_initiator']} "
              f"MSG2 to Initiator.receive), {s['seconds']} s")  # fmt: skip
        print("  mutations: " + ", ".join(f"{k} {v}" for k, v in s["mutations"].items()))
        print(f"  exceptions {s['exceptions']}, bodies returned for tampered input "
              f"{s['tampered_bodies_returned']}, genuine records opened "
              f"{s['genuine_opened']}/{s['genuine_sent']}")  # fmt: skip
        print("  device drops: " + ", ".join(f"{k} {v}" for k, v in s["device_stats"].items() if v))
        print("  host drops: " + ", ".join(f"{k} {v}" for k, v in s["host_drops"].items() if v))
        print(
            "  a replayed old MSG1 between MSG2 and the first sealed frame displaces the "
            f"pending handshake: {s['observation_pending_handshake_displaced_by_replayed_msg1']}"
        )
        for p, n in s["problems"].items():
            print(f"  ! {n} x {p}")
    if "hostile" in results:
        s = results["hostile"]
        print(f"\nHOSTILE ARTIFACTS  {s['cases']} cases, {s['failed']} failed, {s['seconds']} s")
        rows = [[r["case"], r["expected"], r["offline"], r["link device"], r["link precheck"],
                 r["stray"], "ok" if r["ok"] else "FAIL"] for r in s["rows"]]  # fmt: skip
        print(_table(["case", "expected", "offline", "link (device)", "link (precheck)",
                      "stray", ""], rows))  # fmt: skip
        for r in s["rows"]:
            if r.get("stopped by"):
                print(f"  {r['case']}: stopped by {r['stopped by']}")
            for p in r["problems"]:
                print(f"  ! {r['case']}: {p}")
    print()
    for name, ok in results["verdict"].items():
        print(f"{name:10} {'PASS' if ok else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="otaferry bench campaign",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--cuts", type=int, default=500, help="power cuts (at least)")
    ap.add_argument("--frames", type=int, default=100_000, help="mutated frames to inject")
    ap.add_argument("--records", type=int, default=100_000, help="tampered secure records")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pair", choices=sorted(PAIRS), default="esp8266")
    ap.add_argument("--only", default="powercut,fuzz,secure,hostile")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results: dict[str, Any] = {"seed": args.seed, "pair": args.pair}
    verdict: dict[str, bool] = {}
    t0 = time.monotonic()
    if "powercut" in only:
        results["powercut"] = powercut_campaign(args.cuts, args.seed, args.pair, say)
        verdict["powercut"] = powercut_ok(results["powercut"], args.cuts)
    if "fuzz" in only:
        results["fuzz"] = fuzz_campaign(args.frames, args.seed, say)
        verdict["fuzz"] = fuzz_ok(results["fuzz"], args.frames)
    if "secure" in only:
        results["secure"] = secure_campaign(args.records, args.seed)
        verdict["secure"] = secure_ok(results["secure"], args.records)
    if "hostile" in only:
        results["hostile"] = hostile_campaign(args.pair)
        verdict["hostile"] = results["hostile"]["failed"] == 0
    results["verdict"] = verdict
    results["seconds"] = round(time.monotonic() - t0, 1)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print_report(results)
        print(f"total {results['seconds']} s")
    return 0 if all(verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
