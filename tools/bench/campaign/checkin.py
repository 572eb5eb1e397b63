"""Power cuts in the check-in window (issue [F]).

The device holds an installed update, armed (otadata NEW). Three legs, each
run to its end once to count its flash ops, then cut at every op:

- ``confirm``: power on (the new image boots PENDING_VERIFY, self-test passes,
  it waits for its server), then the check-in answer (CONFIRM) arrives and the
  device marks the image valid and raises its security counter;
- ``silent``: power on, then no answer comes: the deadline passes and the image
  gives up (records CHECKIN_TIMEOUT, marks itself INVALID);
- ``self-test``: power on with a failing self-test.

After each cut power returns and the same firmware behaves the same way again
(the server still answers in ``confirm``; the image is still broken in the
others), then the device is powered on once more. Judged: every boot finds a
bootable image whose bytes match its record (0 bricks); in ``confirm`` the
device ends on the new image, VALID, counter raised; in the others it ends on
the old image and the new one is **never** seen VALID at any power-on, i.e. no
device is left confirmed on an image that never checked in; the active slot
is never written.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ....device_fw import frames as DF
from ....device_fw import reasons as R
from ....device_fw.device import Device
from ....device_fw.flash import PowerCut
from ....device_fw.receiver import Receiver
from .common import (
    NEW_COUNTER,
    Firmware,
    firmware,
    make_device,
    make_small_device,
    slot_digest,
)

LEGS = ("confirm", "silent", "self-test")


def _app(dev: Device, leg: str) -> None:
    """One power-on of the device and what its app does next, in this leg."""
    boot = dev.power_on(self_test=leg != "self-test", checkin=True)
    pending = dev.pending_checkin()
    if pending is None:
        return  # back on a confirmed image: nothing to wait for
    if leg == "confirm":
        rx = Receiver(dev, mtu=256)
        replies = rx.receive_frame(DF.confirm(pending["uid"], pending["nonce"]), 0.0)
        if replies != [DF.confirmed(pending["uid"])]:
            raise AssertionError(f"CONFIRM answered {replies!r} (boot {boot['label']})")
    elif leg == "silent":
        dev.abandon_running(R.CHECKIN_TIMEOUT)


class CheckinCutCampaign:
    def __init__(self, fw: Firmware, work: Path) -> None:
        self.fw = fw
        self.work = work
        small = max(len(fw.old), len(fw.new)) <= 0x30000  # SMALL_CSV's slots
        make = make_small_device if small else make_device
        pristine = make(work / "pristine.bin", fw.old)
        self.armed = work / "armed.bin"
        shutil.copy(pristine, self.armed)
        import io

        from ....device_fw.installer import install_stream

        with Device(str(self.armed)) as dev:
            install_stream(dev, io.BytesIO(fw.full))
            self.old_slot0 = slot_digest(dev, 0)
        self.rows: list[dict[str, Any]] = []

    def _ops(self, leg: str) -> int:
        work = self.work / "dry.bin"
        shutil.copy(self.armed, work)
        with Device(str(work)) as dev:
            start = dev.flash.ops
            _app(dev, leg)
            return dev.flash.ops - start

    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        for leg in LEGS:
            n = self._ops(leg)
            for index in range(n):
                self.rows.append(self._cut(leg, index))
            if progress is not None:
                progress(f"checkin: {leg}: {n} cuts")
        return self.summary()

    def _cut(self, leg: str, index: int) -> dict[str, Any]:
        work = self.work / "cut.bin"
        shutil.copy(self.armed, work)
        row: dict[str, Any] = {"leg": leg, "index": index, "problems": []}
        seen_new_valid = False
        rolled_back_reported = False
        with Device(str(work)) as probe:
            offset = probe.flash.ops
        dev = Device(str(work), cut_at=offset + index)
        try:
            _app(dev, leg)
            row["problems"].append("no cut happened")
        except PowerCut:
            pass
        finally:
            dev.close()
        for attempt in ("again", "final"):
            with Device(str(work)) as dev:
                try:
                    if attempt == "again":
                        _app(dev, leg)
                    else:
                        dev.power_on(self_test=leg != "self-test", checkin=True)
                except Exception as exc:
                    row["problems"].append(f"{attempt}: {type(exc).__name__}: {exc}")
                    row["bricked"] = True
                    return row
                info = dev.info()
                running = info["slots"][info["running_slot"]]
                new_valid = running["version"] == "new" and running["state"] == "VALID"
                seen_new_valid |= new_valid
                if slot_digest(dev, 0) != self.old_slot0:
                    row["problems"].append("the active slot's bytes changed")
                row["final"] = (running["version"], running["state"], info["security_counter"])
                rolled_back_reported = any(
                    f["reason"] in (R.ROLLED_BACK, R.CHECKIN_TIMEOUT, R.SELF_TEST_FAILED)
                    for f in dev.failures()
                )
        version, state, counter = row["final"]
        if leg == "confirm":
            # A cut before the confirmation is written is a reset while pending: the
            # device returns to the old image and says so (ROLLED_BACK). After it, the
            # new image is VALID with its counter. Nothing else is acceptable.
            if (version, state) == ("new", "VALID"):
                if counter != NEW_COUNTER:
                    row["problems"].append(f"new image VALID with counter {counter}")
                row["outcome"] = "confirmed"
            elif (version, state) == ("old", "VALID") and rolled_back_reported:
                row["outcome"] = "rolled back"
            else:
                row["problems"].append(f"confirm leg ended on {version} {state}")
        if leg != "confirm":
            if seen_new_valid:
                row["problems"].append("the image that never checked in was seen VALID")
                row["confirmed_without_checkin"] = True
            if (version, state) != ("old", "VALID") or not rolled_back_reported:
                row["problems"].append(f"{leg} leg ended on {version} {state}, "
                                       f"failure reported: {rolled_back_reported}")  # fmt: skip
        return row

    def summary(self) -> dict[str, Any]:
        rows = self.rows
        return {
            "cuts": len(rows),
            "legs": {leg: sum(r["leg"] == leg for r in rows) for leg in LEGS},
            "bricks": sum(bool(r.get("bricked")) for r in rows),
            "confirmed_without_checkin": sum(
                bool(r.get("confirmed_without_checkin")) for r in rows
            ),
            "failed": sum(bool(r["problems"]) for r in rows),
            "confirm_outcomes": {
                o: sum(r.get("outcome") == o for r in rows) for o in ("confirmed", "rolled back")
            },
            "problems": [r for r in rows if r["problems"]][:10],
        }


def checkin_campaign(pair: str = "simba", progress: Callable[[str], None] | None = None) -> Any:
    with tempfile.TemporaryDirectory(prefix="otaferry-checkin-") as tmp:
        return CheckinCutCampaign(firmware(pair), Path(tmp)).run(progress)


def checkin_ok(s: dict[str, Any]) -> bool:
    return s["cuts"] > 0 and s["failed"] == 0 and s["bricks"] == 0 and not (
        s["confirmed_without_checkin"]
    )
