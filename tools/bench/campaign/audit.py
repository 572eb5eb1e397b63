"""Watchers that count what must never happen: stray flash writes, escaped
exceptions, frames that do not decode on the other side."""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ....device_fw import bootrec
from ....device_fw import frames as DF
from ....device_fw.device import Device
from ....device_fw.flash import SECTOR_SIZE
from ....device_fw.reasons import DeviceError, FlashError
from ....protocol.errors import DecodeError
from ....protocol.frames import decode_frame

LEGIT = ("passive", "nvs", "otadata")
PHASE_OF_REGION = {"passive": "segment", "nvs": "store", "otadata": "otadata"}


class FlashAudit:
    """Every program/erase a Device attempts, checked against the regions it may touch.

    Wraps the instance's ``write``, ``erase_sector`` and ``erase_range`` (so it
    sees attempts before the flash model's ``protect()`` guard refuses them)
    and sets ``on_op`` (so ``ops`` lists every op the flash started, the one a
    power cut hit last). ``extent``: bytes of the passive slot an update may
    write (the largest signed target, rounded up to a sector); its last sector,
    the boot record (device_fw/bootrec.py), is the passive slot's too.
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
        # The slot locked as the running one (the boot that confirms an update
        # locks the new slot before its state record names it).
        locked = [s.index for s in dev.slots if s.locked]
        running = locked[0] if locked else dev.state["running"]
        passive = dev.passive_slot(running).index
        for i, slot in enumerate(dev.apps):
            if addr < slot.offset + slot.size and slot.offset < end:
                if i == running:
                    return "active"
                limit = slot.size if self.extent is None else min(slot.size, self.extent)
                if i == passive and slot.offset <= addr and end <= slot.offset + limit:
                    return "passive"
                record = slot.offset + bootrec.capacity(slot)  # its boot record
                if i == passive and record <= addr and end <= slot.offset + slot.size:
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
