"""What ``otaferry push`` shows while it works: a progress bar people read.

On a terminal: a rich progress bar (terminal-width aware) with the phase
(handshake, offer, data, verify, reboot, check-in), bytes the device has
confirmed, the rate over the last seconds and an ETA, plus one line for each
step. Elsewhere (a pipe, a log): one plain line per step and at most one
progress line a second. With ``--json-progress``: one JSON object per event on
stdout, with phase, rate and ETA, and failures as ``{"event": "Error", ...}``.

The rate is measured over a sliding window of the device's acknowledgements,
never from bytes merely sent, and there is no ETA until it is measured (no
"0.0 KiB/s ETA inf" after a resume).
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from typing import Any, TextIO

from ..protocol.session import (
    Accepted,
    CheckedIn,
    Completed,
    Confirmed,
    DeviceInfo,
    Event,
    Progress,
    Rebooting,
)

RATE_WINDOW = 5.0  # seconds of acknowledgements the rate is measured over


class Rate:
    """Bytes per second over the last RATE_WINDOW seconds of samples."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, confirmed: int) -> None:
        if self.samples and confirmed < self.samples[-1][1]:
            self.samples.clear()  # went backwards (device reset): start over
        self.samples.append((t, confirmed))
        while len(self.samples) > 2 and t - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()

    def value(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 and b1 > b0 else None


class ProgressView:
    """The push's view of its session events (see the module docstring)."""

    def __init__(self, json_lines: bool, stream: TextIO | None = None, *, tty: bool | None = None):
        self.json = json_lines
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.t0 = time.monotonic()
        self.phase = "handshake"
        self.rate = Rate()
        self.last: Progress | None = None
        self.last_plain = -1.0
        self._bar: Any = None
        self._task: Any = None

    # --- output ---------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.json:
            return
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def _start_bar(self, total: int) -> None:
        if self._bar is not None or not self.tty or self.json:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import (
            Progress as Bar,
        )

        console = Console(file=self.stream, force_terminal=True)
        self._bar = Bar(
            TextColumn("{task.fields[phase]:<9}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("push", total=total, phase=self.phase)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        if self._bar is not None:
            self._bar.update(self._task, phase=phase)

    # --- events ---------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        now = time.monotonic() - self.t0
        self._follow(event, now)
        if self.json:
            print(json.dumps(self.as_dict(event, now)), flush=True)

    def _follow(self, event: Event, now: float) -> None:
        if isinstance(event, DeviceInfo):
            info = event.info
            resume = f", resuming at segment {event.resume_from}" if event.resume_from else ""
            self._set_phase("offer")
            self.say(f"device {info.device_id.hex()} hw {info.hw} chip {info.chip} runs "
                     f"{info.running_version}{resume}")  # fmt: skip
        elif isinstance(event, Accepted):
            self._set_phase("data")
            self.say(f"accepted: signature and compatibility checked by the device, starting "
                     f"at segment {event.next_segment}")  # fmt: skip
        elif isinstance(event, Progress):
            self._progress(event, now)
        elif isinstance(event, Completed):
            self._set_phase("reboot")
            if self._bar is not None:
                self._bar.update(self._task, completed=event.total_bytes)
            self.say(f"transferred: {event.total_bytes} B written and verified by the device, "
                     f"set to boot ({now:.1f} s)")  # fmt: skip
        elif isinstance(event, Rebooting):
            self._set_phase("reboot")
            self.say(f"rebooting: waiting up to {event.deadline_s:g} s for the new image to "
                     "check in")  # fmt: skip
        elif isinstance(event, CheckedIn):
            self._set_phase("check-in")
            self.say(f"checked in: {event.version} booted, passed its self-test and reached us")
        elif isinstance(event, Confirmed):
            self._set_phase("confirmed")
            self.close()
            self.say(f"confirmed in {now:.1f} s: {event.version} is valid on the device")

    def _progress(self, event: Progress, now: float) -> None:
        last = self.last
        if last is not None and event.confirmed_bytes < last.confirmed_bytes:
            self.say(f"the device restarted its session: {event.confirmed_bytes} B confirmed "
                     f"(it resumes at segment {event.segments_done}; the segment in flight "
                     "is sent again)")  # fmt: skip
        self.last = event
        self.rate.add(now, event.confirmed_bytes)
        if event.segments_done < event.segments_total or event.confirmed_bytes < event.total_bytes:
            self._set_phase("data")
        else:
            self._set_phase("verify")
        if self.tty and not self.json:
            self._start_bar(event.total_bytes)
            self._bar.update(self._task, completed=event.confirmed_bytes)
            return
        if not self.json and (now - self.last_plain >= 1.0 or event.confirmed_bytes
                              == event.total_bytes):  # fmt: skip
            self.last_plain = now
            self.say(self.line(event))

    def line(self, event: Progress) -> str:
        pct = 100 * event.confirmed_bytes / max(1, event.total_bytes)
        rate = self.rate.value()
        if rate is None:
            speed, eta = "-- KiB/s", "ETA --"
        else:
            left = event.total_bytes - event.confirmed_bytes
            speed, eta = f"{rate / 1024:.1f} KiB/s", f"ETA {left / rate:.0f} s"
        done = f"{event.confirmed_bytes}/{event.total_bytes} B"
        seg = f"segment {event.segments_done}/{event.segments_total}"
        return f"{self.phase:<9} {pct:5.1f} %  {done}  {speed}  {eta}  {seg}"

    def waiting(self, what: str) -> None:
        """Something takes long (a retry, a silent device): say so."""
        self.say(what)
        if self.json:
            print(json.dumps({"event": "Waiting", "t": round(time.monotonic() - self.t0, 3),
                              "phase": self.phase, "message": what}), flush=True)  # fmt: skip

    def failed(self, reason: str, message: str) -> None:
        self.close()
        if self.json:
            print(json.dumps({"event": "Error", "t": round(time.monotonic() - self.t0, 3),
                              "phase": self.phase, "reason": reason, "message": message}),
                  flush=True)  # fmt: skip

    def as_dict(self, event: Event, t: float) -> dict[str, Any]:
        out: dict[str, Any] = {"event": type(event).__name__, "t": round(t, 3),
                               "phase": self.phase}  # fmt: skip
        if isinstance(event, DeviceInfo):
            out.update(device_id=event.info.device_id.hex(), hw=event.info.hw,
                       chip=event.info.chip, running_version=event.info.running_version,
                       resume_from=event.resume_from)  # fmt: skip
        elif isinstance(event, Accepted):
            out["next_segment"] = event.next_segment
        elif isinstance(event, Progress):
            rate = self.rate.value()
            left = event.total_bytes - event.confirmed_bytes
            out.update(confirmed_bytes=event.confirmed_bytes, total_bytes=event.total_bytes,
                       segments_done=event.segments_done, segments_total=event.segments_total,
                       rate_bytes_per_s=None if rate is None else round(rate, 1),
                       eta_s=None if rate is None else round(left / rate, 1))  # fmt: skip
        elif isinstance(event, Completed):
            out.update(total_bytes=event.total_bytes, segments_total=event.segments_total,
                       resumed_from=event.resumed_from)  # fmt: skip
        elif isinstance(event, Rebooting):
            out["deadline_s"] = event.deadline_s
        elif isinstance(event, (CheckedIn, Confirmed)):
            out["version"] = event.version
        return out
