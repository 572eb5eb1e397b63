"""Frame fuzzing: mutated and random frames injected into real sessions, both ways.

Each scenario starts a real session on a fresh device, stops it at a random
point, injects a batch of frames from :class:`Mutator` to either side, lets the
session run to its end, and checks the device (see the package docstring).
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ....device_fw import receiver as RX
from ....device_fw.device import Device
from ....device_fw.reasons import DeviceError
from ....protocol.session import Completed, Sender
from .audit import FlashAudit, Guard
from .common import (
    STRANGER,
    Problems,
    build,
    firmware,
    make_small_device,
    max_target,
    recorded_image,
    sector_extent,
    sha,
    slot_bytes,
    slot_digest,
    stray_text,
)
from .frame_mutator import Capture, Mutator, capture
from .link import Link, make_sender, outcome


@dataclass
class FuzzConfig:
    name: str
    pristine: Path
    art: bytes
    new: bytes
    mtu: int
    window: int

    def sender(self, session_id: int) -> Sender:
        return make_sender(self.art, mtu=self.mtu, window=self.window, session_id=session_id)


@dataclass
class FuzzStats(Problems):
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


class FrameFuzzCampaign:
    def __init__(self, work: Path, seed: int) -> None:
        self.work = work
        self.rng = random.Random(seed)
        self.guard = Guard()
        self.stats = FuzzStats()
        prog = firmware("programmer")
        synth = firmware("synth")
        p_dev = make_small_device(work / "p.bin", prog.old)
        s_dev = make_small_device(work / "s.bin", synth.old)
        self.configs = [
            FuzzConfig("programmer full, mtu 64", p_dev, prog.full, prog.new, 64, 8),
            FuzzConfig("programmer full, mtu 1024", p_dev, prog.full, prog.new, 1024, 4),
            FuzzConfig("programmer delta, mtu 43", p_dev, prog.delta, prog.new, 43, 16),
            FuzzConfig("synth full, mtu 256", s_dev, synth.full, synth.new, 256, 8),
            FuzzConfig("synth delta, mtu 64", s_dev, synth.delta, synth.new, 64, 8),
        ]
        self.signed_targets = {sha(prog.new), sha(synth.new), sha(prog.old), sha(synth.old)}
        self.extent = sector_extent(max_target([prog.full, synth.full]))
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
            sender = cfg.sender(rng.randint(1, 2**32 - 1))
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
            rec, image = recorded_image(dev, armed)
            if rec is None or sha(image) not in self.signed_targets:
                st.armed_unverified += 1
                st.problem(f"{cfg.name}: otadata selects ota_{armed}, not a signed image")
        if result == "completed" and (
            armed != passive or sha(slot_bytes(dev, passive, len(cfg.new))) != target
        ):
            st.false_completions += 1
            st.problem(f"{cfg.name}: sender Completed, device has not armed the image")
        if result != "completed" or armed != passive:
            rx = RX.Receiver(dev, mtu=cfg.mtu)
            again = Link(cfg.sender(0xFEED), rx, now=link.now + 100, guard=self.guard)
            again.run(50_000)
            if not again.of(Completed):
                st.recovery_failed += 1
                st.problem(f"{cfg.name}: a fresh session after fuzzing: {outcome(again.events)}")
        try:
            boot = dev.power_on(self_test=True)
            if sha(recorded_image(dev, boot["slot"])[1]) not in self.signed_targets:
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
