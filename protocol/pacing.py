"""Pacing budgets: the medium decides when a frame may leave (sans-IO).

A budget answers one question, :meth:`Pacing.delay`: how long from ``now``
until a frame of ``size`` bytes may start, and is told, :meth:`Pacing.spend`,
when one did. The transport's driver waits for the delay, hands the frame to
the medium and reports its departure to the Sender (``Sender.departed``), so
time spent queueing for air or for a busy line is never taken for round-trip
time or for loss.

- :class:`Unlimited`: no limit (an in-memory link, a medium that paces itself).
- :class:`LineRate`: a byte stream at a known rate (a UART: baud / 10 for
  8N1); the driver keeps at most ``burst`` bytes queued ahead of the wire, so a
  frame's departure is within ``burst / rate`` of when it really starts on the
  line.
- :class:`AirTime`: a shared radio channel: a frame occupies the air for
  ``airtime(size)`` seconds; after it the transmitter stays off until its
  duty cycle is met (``off = air * (1 / duty_cycle - 1)``, the rule LoRaWAN
  regional parameters give for the ETSI sub-bands), and no frame may exceed the
  dwell limit (US915: 400 ms). Issue [H] supplies time-on-air and region plans.

Every budget exposes ``line_rate`` (bytes per second while sending, or None)
and ``rtt_floor`` (seconds of medium turnaround a round trip costs at least),
from which a driver sizes its window and first retransmit timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["AirTime", "LineRate", "Pacing", "Unlimited"]


class Pacing(Protocol):
    line_rate: float | None
    rtt_floor: float

    def delay(self, size: int, now: float) -> float:
        """Seconds from ``now`` until a frame of ``size`` bytes may start (0: now)."""
        ...

    def spend(self, size: int, now: float) -> None:
        """A frame of ``size`` bytes started at ``now``."""
        ...


class Unlimited:
    """No budget: every frame may leave at once."""

    line_rate: float | None = None
    rtt_floor: float = 0.0

    def delay(self, size: int, now: float) -> float:
        return 0.0

    def spend(self, size: int, now: float) -> None:
        return None


class LineRate:
    """A byte stream at ``rate`` bytes/s, ``overhead(size)`` wire bytes per frame
    (framing, CRC), at most ``burst`` bytes queued ahead of the wire."""

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 2048,
        overhead: Callable[[int], int] | None = None,
        latency: float = 0.0,
    ) -> None:
        if rate <= 0 or burst < 0 or latency < 0:
            raise ValueError("rate must be > 0, burst >= 0, latency >= 0")
        self.line_rate: float | None = float(rate)
        self.rate = float(rate)
        self.burst = burst
        self.rtt_floor = 2 * latency
        self._overhead = overhead
        self._busy_until = float("-inf")  # when the wire has sent everything spent

    def wire_size(self, size: int) -> int:
        return size + (self._overhead(size) if self._overhead is not None else 0)

    def delay(self, size: int, now: float) -> float:
        ahead = self._busy_until - now  # seconds of bytes still queued for the wire
        return max(0.0, ahead - self.burst / self.rate)

    def spend(self, size: int, now: float) -> None:
        start = max(now, self._busy_until)
        self._busy_until = start + self.wire_size(size) / self.rate


class AirTime:
    """A radio channel: ``airtime(size)`` seconds per frame, a duty cycle, a dwell limit."""

    def __init__(
        self,
        airtime: Callable[[int], float],
        *,
        duty_cycle: float = 1.0,
        dwell: float | None = None,
        turnaround: float = 0.0,
    ) -> None:
        if not 0 < duty_cycle <= 1 or (dwell is not None and dwell <= 0) or turnaround < 0:
            raise ValueError("need 0 < duty_cycle <= 1, dwell > 0, turnaround >= 0")
        self.airtime = airtime
        self.duty_cycle = duty_cycle
        self.dwell = dwell
        self.line_rate: float | None = None
        self.rtt_floor = 2 * turnaround
        self._free_at = float("-inf")
        self.air_s = 0.0

    def allowed(self, size: int) -> bool:
        """Whether a frame of ``size`` bytes may be sent at all (dwell)."""
        return self.dwell is None or self.airtime(size) <= self.dwell

    def delay(self, size: int, now: float) -> float:
        return max(0.0, self._free_at - now)

    def spend(self, size: int, now: float) -> None:
        air = self.airtime(size)
        start = max(now, self._free_at)
        self.air_s += air
        self._free_at = start + air / self.duty_cycle
