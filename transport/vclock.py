"""An asyncio event loop on a virtual clock, for emulations that have no real I/O.

``otaferry bench lora`` runs a whole LoRa update — the Updater and the secure
link, the gateway's :class:`~otaferry.transport.lora_hub.ModemHub`, the emulated
modems and air of ``transport/lorasim.py``, the device's sans-IO modem loop —
in one process, over in-process UARTs. At a 1 % duty cycle such an update takes
hours of air; here the clock jumps: whenever no callback is ready, the loop's
time moves straight to its next timer. Every timer, ``asyncio.sleep`` and
``asyncio.timeout`` of the code under test keeps its meaning, and the run is
deterministic (same seed, same figures), but nothing may wait for real I/O
(sockets, ptys, threads): with nothing scheduled and nothing ready the loop
raises instead of sleeping forever. CPU time is not modelled (a device writes
flash in zero virtual time).
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

__all__ = ["VirtualClockLoop", "run_virtual"]


class _VirtualSelector(selectors.DefaultSelector):
    """Holds the loop's self-pipe registration; ``select`` never waits."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualClockLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)  # the self-pipe only (call_soon_threadsafe)
        if ready or timeout == 0:
            return list(ready)
        if timeout is None:
            raise RuntimeError("virtual clock: nothing is scheduled and nothing can arrive")
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual: it starts at 0 and jumps to the next timer when idle."""

    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)


def run_virtual(main: Any) -> Any:
    """``asyncio.run`` on a fresh :class:`VirtualClockLoop`."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
