"""Power cuts: power lost at a chosen flash op of an install or a boot, then the
reboot, the rerun and the final image checked (see the package docstring)."""

from __future__ import annotations

import io
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ....device_fw import receiver as RX
from ....device_fw.device import Device
from ....device_fw.flash import PowerCut
from ....device_fw.installer import install_stream
from ....device_fw.reasons import DeviceError
from ....protocol.errors import Reason
from ....protocol.session import Accepted, Completed, split_artifact
from .audit import FlashAudit
from .common import (
    NEW_COUNTER,
    Firmware,
    build,
    firmware,
    make_device,
    recorded_image,
    sector_extent,
    sha,
    slot_bytes,
    slot_digest,
    stray_text,
)
from .link import Link, outcome, parsed
from .powercut_legs import PHASES, CutResult, Leg, make_legs, pick_ops


class PowerCutCampaign:
    def __init__(self, fw: Firmware, work: Path, seed: int) -> None:
        self.fw = fw
        self.work = work
        self.rng = random.Random(seed)
        self.n_full = len(split_artifact(fw.full)[2])
        self.n_delta = len(split_artifact(fw.delta)[2])
        self.extent = sector_extent(max(len(fw.new), len(fw.old)))
        self.pristine = make_device(work / "pristine.bin", fw.old)
        with Device(str(self.pristine)) as dev:
            self.old_slot0 = slot_digest(dev, 0)
        self.results: list[CutResult] = []

    # ---------------------------------------------------------- one cut

    def cut(self, leg: Leg, index: int) -> CutResult:
        res = CutResult(leg.name, index)
        work = self.work / "work.bin"
        shutil.copy(leg.base, work)
        uid = parsed(leg.art).update_id
        first: Link | None = None
        dev = Device(str(work), cut_at=index)
        audit = FlashAudit(dev, self.extent)
        try:
            first = leg.link_on(dev, 0x1000 + index)
            leg.run_on(dev, first)
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
        rec, got = recorded_image(dev, index)
        image = {"old": self.fw.old, "new": self.fw.new}
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
        n = len(parsed(art).segments)
        for attempt in (1, 2):
            res.rerun_attempts = attempt
            decoded: list[int] = []
            try:
                install_stream(dev, io.BytesIO(art), decode_hook=decoded.append)
            except DeviceError as exc:
                if attempt == 1 and leg.damaged and exc.reason == Reason.IMAGE_HASH_MISMATCH:
                    continue  # it re-verified the slot, found it damaged, starts over next time
                if attempt == 1 and exc.reason == Reason.PREVIOUSLY_FAILED and not leg.self_test:
                    # The self-test verdict was recorded before the cut: that artifact
                    # is never re-armed (issue [F]); a new artifact of the image is.
                    art = build(self.fw.new, version="new-rebuilt")
                    n = len(parsed(art).segments)
                    continue
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
        n = len(parsed(leg.art).segments)
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
            link = Link(leg.sender(0x2000 + index), rx).run()
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
                boot["version"] in ("new", "new-rebuilt")
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
        legs = make_legs(self.fw, self.pristine, self.work)
        if only is not None:
            legs = [leg for leg in legs if leg.name in set(only)]
        boot_ops = sum(len(leg.phases) for leg in legs if leg.path == "boot")
        install = [leg for leg in legs if leg.path != "boot"]
        share = max(3, (cuts - boot_ops) // max(len(install), 1))
        extra = max(0, cuts - boot_ops - share * len(install))
        plan: list[tuple[Leg, int]] = []
        for i, leg in enumerate(legs):
            budget = share + (extra if i == 0 else 0) if leg.path != "boot" else len(leg.phases)
            plan += [(leg, n) for n in pick_ops(leg, budget, self.rng)]
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
