"""A UART line simulator between two pseudo-terminals.

``otaferry linesim --baud 115200 LINK_A LINK_B`` creates two pseudo-terminals,
points the symlinks ``LINK_A`` and ``LINK_B`` at their slave devices, and
relays bytes between them in both directions the way a UART line would carry
them, so two programs that each open "a serial port" can talk, slowly and
imperfectly, on one machine.

The line model, per direction (A→B and B→A are independent):

- **Pacing.** A byte takes 10 bit times (start, 8 data, stop) at ``baud``; a
  byte cannot start before the previous one finished. Its last bit reaches the
  far end ``latency_ms`` later. Bytes are handed over in batches at most about
  1 ms apart; each one leaves no earlier than its modelled arrival time.
- **Sender backpressure.** The sending side holds at most ``tx_buffer`` bytes
  that have not yet gone onto the line (a UART driver's transmit buffer); past
  that the simulator stops reading the sender's pty, so the sender's writes
  block or queue as they would on a real port.
- **Byte errors.** Each byte is, with probability ``byte_error_rate``, damaged
  by flipping one random bit of it (delimiters included).
- **Drops.** ``drop_rate`` drops whole *units*: a unit runs up to and including
  the next 0x00 byte (the framing delimiter, see protocol/framing.py), or 512
  bytes if no 0x00 comes first. Each unit is lost entirely with probability
  ``drop_rate``, so on an otaferry stream one drop loses exactly one frame,
  cleanly, the way a LoRa packet is lost; damaged-but-delivered frames are
  what ``byte_error_rate`` is for. Dropped bytes still take their line time.
- **Receiver overrun.** If the receiving program does not read its port, the
  kernel's pty buffer fills, then at most ``rx_buffer`` more bytes wait in the
  simulator; beyond that bytes are lost (counted as ``overflow``), as on a UART
  nobody is reading. After the program reopens the port it may get some of
  those old bytes first (pyserial flushes the kernel's input queue on open, not
  the simulator's); the framing decoder skips partial frames.

Randomness comes from ``random.Random`` seeded per direction from ``seed``, so
a run is reproducible given the same bytes in the same order (which unit
boundaries the bytes form does not depend on timing).

The simulator keeps its own file descriptor on each slave open for its whole
life. Without it, the master side reads EIO whenever no program has the slave
open; with it, a peer can open, close and reopen its end (a device process
killed and restarted) and traffic resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import math
import os
import random
import signal
import sys
import tty
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from ..protocol.errors import Reason, TransportError

BITS_PER_BYTE = 10
DROP_UNIT_MAX = 512
DEFAULT_TX_BUFFER = 4096
DEFAULT_RX_BUFFER = 4096
_MIN_WAIT = 0.001  # batch bytes instead of waking once per byte time
_READ_SIZE = 65536
_EIO_RETRY = 0.05


@dataclass(frozen=True, slots=True)
class DirectionStats:
    """Counters of one direction of the line."""

    bytes_in: int = 0
    """Bytes read from the sending side."""
    bytes_out: int = 0
    """Bytes written to the receiving side."""
    corrupted: int = 0
    dropped: int = 0
    overflow: int = 0
    """Bytes lost because the receiving side did not take them."""


class _Direction:
    """One direction: reads ``src`` (a pty master), paces, impairs, writes ``dst``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: int,
        dst: int,
        *,
        baud: int,
        latency: float,
        byte_error_rate: float,
        drop_rate: float,
        rng: random.Random,
        tx_buffer: int,
        rx_buffer: int,
    ) -> None:
        self._loop = loop
        self._src = src
        self._dst = dst
        self._byte_time = BITS_PER_BYTE / baud
        self._latency = latency
        self._ber = byte_error_rate
        self._drop = drop_rate
        self._rng = rng
        self._tx_buffer = tx_buffer
        self._rx_buffer = rx_buffer
        # (line time the chunk's first byte starts, the chunk); bytes before
        # self._offset of the head chunk have been delivered already.
        self._chunks: deque[tuple[float, bytes]] = deque()
        self._offset = 0
        self._line_free_at = 0.0
        self._out = bytearray()  # due, impaired, not yet taken by dst
        self._wakeup = asyncio.Event()
        self._reading = False
        self._writing = False
        self._resume: asyncio.TimerHandle | None = None
        self._unit_start = True
        self._unit_len = 0
        self._dropping = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.corrupted = 0
        self.dropped = 0
        self.overflow = 0

    def stats(self) -> DirectionStats:
        return DirectionStats(
            self.bytes_in, self.bytes_out, self.corrupted, self.dropped, self.overflow
        )

    # --- reading the sender --------------------------------------------------

    def start(self) -> None:
        self._start_reading()

    def stop(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._reading:
            self._loop.remove_reader(self._src)
            self._reading = False
        if self._writing:
            self._loop.remove_writer(self._dst)
            self._writing = False

    def _start_reading(self) -> None:
        self._resume = None
        if not self._reading:
            self._loop.add_reader(self._src, self._on_readable)
            self._reading = True

    def _pause_reading(self, until: float) -> None:
        if self._reading:
            self._loop.remove_reader(self._src)
            self._reading = False
        if self._resume is None:
            self._resume = self._loop.call_at(until, self._start_reading)

    def _on_readable(self) -> None:
        now = self._loop.time()
        queued = math.ceil(max(0.0, self._line_free_at - now) / self._byte_time - 1e-9)
        room = self._tx_buffer - queued
        if room <= 0:
            # Resume once half of the transmit buffer has gone onto the line.
            self._pause_reading(self._line_free_at - (self._tx_buffer / 2) * self._byte_time)
            return
        try:
            data = os.read(self._src, min(room, _READ_SIZE))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # EIO: no program has the slave open (cannot happen while we hold
            # our own slave fd, but never spin on it).
            if exc.errno != errno.EIO:
                print(f"otaferry linesim: read error: {exc}", file=sys.stderr)
            self._pause_reading(now + _EIO_RETRY)
            return
        if not data:
            self._pause_reading(now + _EIO_RETRY)
            return
        start = max(now, self._line_free_at)
        self._chunks.append((start, data))
        self._line_free_at = start + len(data) * self._byte_time
        self.bytes_in += len(data)
        self._wakeup.set()

    # --- delivering to the receiver ------------------------------------------

    def _take_due(self, now: float) -> bytes:
        """Bytes whose last bit has arrived at the far end by ``now``."""
        horizon = now - self._latency
        due = bytearray()
        while self._chunks:
            start, data = self._chunks[0]
            arrived = int((horizon - start) / self._byte_time + 1e-9)
            if arrived <= self._offset:
                break
            if arrived >= len(data):
                due += data[self._offset :]
                self._chunks.popleft()
                self._offset = 0
                continue
            due += data[self._offset : arrived]
            self._offset = arrived
            break
        return bytes(due)

    def _next_due(self) -> float | None:
        if not self._chunks:
            return None
        start, _ = self._chunks[0]
        return start + (self._offset + 1) * self._byte_time + self._latency

    def _impair(self, data: bytes) -> bytes:
        if not self._ber and not self._drop:
            return data
        rng = self._rng
        out = bytearray()
        for byte in data:
            if self._unit_start:
                self._unit_start = False
                self._unit_len = 0
                self._dropping = bool(self._drop) and rng.random() < self._drop
            self._unit_len += 1
            if byte == 0 or self._unit_len >= DROP_UNIT_MAX:
                self._unit_start = True
            if self._dropping:
                self.dropped += 1
                continue
            if self._ber and rng.random() < self._ber:
                byte ^= 1 << rng.randrange(8)
                self.corrupted += 1
            out.append(byte)
        return bytes(out)

    def _deliver(self, data: bytes) -> None:
        room = self._rx_buffer - len(self._out)
        if len(data) > room:
            self.overflow += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self._out += data

    def _flush(self) -> None:
        while self._out:
            try:
                written = os.write(self._dst, self._out)
            except (BlockingIOError, InterruptedError):
                if not self._writing:
                    self._loop.add_writer(self._dst, self._on_writable)
                    self._writing = True
                return
            except OSError as exc:
                print(f"otaferry linesim: write error: {exc}", file=sys.stderr)
                self.overflow += len(self._out)
                self._out.clear()
                return
            self.bytes_out += written
            del self._out[:written]

    def _on_writable(self) -> None:
        self._loop.remove_writer(self._dst)
        self._writing = False
        self._wakeup.set()

    async def run(self) -> None:
        loop = self._loop
        while True:
            due = self._take_due(loop.time())
            if due:
                self._deliver(self._impair(due))
            self._flush()
            next_due = self._next_due()
            timer = None
            if next_due is not None:
                timer = loop.call_at(max(next_due, loop.time() + _MIN_WAIT), self._wakeup.set)
            self._wakeup.clear()
            try:
                await self._wakeup.wait()
            finally:
                if timer is not None:
                    timer.cancel()


def _make_symlink(path: Path, target: str) -> None:
    if path.is_symlink():
        path.unlink()  # left behind by an earlier run that was killed
    elif path.exists():
        raise TransportError(f"linesim: {path} exists and is not a symlink", Reason.IO_ERROR)
    path.symlink_to(target)


def _remove_symlink(path: Path, target: str) -> None:
    with contextlib.suppress(OSError):
        if path.is_symlink() and os.readlink(path) == target:
            path.unlink()


class LineSim:
    """Two pseudo-terminals joined by a simulated UART line.

    ``async with LineSim("/tmp/link-a", "/tmp/link-b", baud=115200) as sim:``
    opens both ptys and the symlinks; on exit it stops relaying, closes every
    descriptor and removes the symlinks (if they still point at its ptys).
    """

    def __init__(
        self,
        path_a: str | os.PathLike[str],
        path_b: str | os.PathLike[str],
        *,
        baud: int = 115200,
        latency_ms: float = 0.0,
        byte_error_rate: float = 0.0,
        drop_rate: float = 0.0,
        seed: int | None = None,
        tx_buffer: int = DEFAULT_TX_BUFFER,
        rx_buffer: int = DEFAULT_RX_BUFFER,
    ) -> None:
        if baud <= 0:
            raise ValueError("baud must be > 0")
        if latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        for name, rate in (("byte_error_rate", byte_error_rate), ("drop_rate", drop_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if tx_buffer < 1 or rx_buffer < 0:
            raise ValueError("tx_buffer must be >= 1 and rx_buffer >= 0")
        self.path_a = Path(path_a)
        self.path_b = Path(path_b)
        self.baud = baud
        self.latency_ms = latency_ms
        self.byte_error_rate = byte_error_rate
        self.drop_rate = drop_rate
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self._tx_buffer = tx_buffer
        self._rx_buffer = rx_buffer
        self._fds: list[int] = []
        self._device_a = ""
        self._device_b = ""
        self._a_to_b: _Direction | None = None
        self._b_to_a: _Direction | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def device_a(self) -> str:
        """The pty slave device ``path_a`` points at."""
        return self._device_a

    @property
    def device_b(self) -> str:
        return self._device_b

    @property
    def a_to_b(self) -> DirectionStats:
        """Bytes written by the program on A, going to B."""
        return self._a_to_b.stats() if self._a_to_b else DirectionStats()

    @property
    def b_to_a(self) -> DirectionStats:
        return self._b_to_a.stats() if self._b_to_a else DirectionStats()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._tasks:
            raise TransportError("linesim: already started", Reason.BAD_STATE)
        loop = asyncio.get_running_loop()
        try:
            master_a, slave_a = os.openpty()
            self._fds += [master_a, slave_a]
            master_b, slave_b = os.openpty()
            self._fds += [master_b, slave_b]
            for slave in (slave_a, slave_b):
                tty.setraw(slave)
            for master in (master_a, master_b):
                os.set_blocking(master, False)
            self._device_a = os.ttyname(slave_a)
            self._device_b = os.ttyname(slave_b)
            _make_symlink(self.path_a, self._device_a)
            _make_symlink(self.path_b, self._device_b)
        except (OSError, TransportError) as exc:
            _remove_symlink(self.path_a, self._device_a)
            _remove_symlink(self.path_b, self._device_b)
            self._close_fds()
            if isinstance(exc, TransportError):
                raise
            message = f"linesim: cannot create the ptys: {exc}"
            raise TransportError(message, Reason.IO_ERROR) from exc

        def direction(src: int, dst: int, name: str) -> _Direction:
            return _Direction(
                loop,
                src,
                dst,
                baud=self.baud,
                latency=self.latency_ms / 1000.0,
                byte_error_rate=self.byte_error_rate,
                drop_rate=self.drop_rate,
                rng=random.Random(f"{self.seed}:{name}"),
                tx_buffer=self._tx_buffer,
                rx_buffer=self._rx_buffer,
            )

        self._a_to_b = direction(master_a, master_b, "a->b")
        self._b_to_a = direction(master_b, master_a, "b->a")
        for name, relay in (("a->b", self._a_to_b), ("b->a", self._b_to_a)):
            relay.start()
            self._tasks.append(asyncio.create_task(relay.run(), name=f"linesim {name}"))

    async def wait(self) -> None:
        """Wait until a relay stops on its own (only by a bug: its error is raised)."""
        if self._tasks:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()

    async def aclose(self) -> None:
        for relay in (self._a_to_b, self._b_to_a):
            if relay is not None:
                relay.stop()
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for relay in (self._a_to_b, self._b_to_a):
            if relay is not None:
                relay.stop()  # again: a relay woken before its cancellation may re-arm
        _remove_symlink(self.path_a, self._device_a)
        _remove_symlink(self.path_b, self._device_b)
        self._close_fds()
        for result in results:
            if isinstance(result, Exception):
                raise result

    def _close_fds(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


# --- command line ------------------------------------------------------------


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be a probability within 0..1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otaferry linesim",
        description="Join two pseudo-terminals with a simulated UART line "
        "(pacing, latency, byte errors, dropped frames).",
    )
    parser.add_argument("--baud", type=_positive_int, default=115200)
    parser.add_argument("--latency-ms", type=_non_negative, default=0.0)
    parser.add_argument("--byte-error-rate", type=_rate, default=0.0, metavar="P")
    parser.add_argument(
        "--drop-rate",
        type=_rate,
        default=0.0,
        metavar="P",
        help="probability of losing each 0x00-delimited unit (one frame)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("link_a", metavar="LINK_A", help="symlink to create for end A")
    parser.add_argument("link_b", metavar="LINK_B", help="symlink to create for end B")
    return parser


async def _serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with LineSim(
            args.link_a,
            args.link_b,
            baud=args.baud,
            latency_ms=args.latency_ms,
            byte_error_rate=args.byte_error_rate,
            drop_rate=args.drop_rate,
            seed=args.seed,
        ) as sim:
            print(f"{sim.path_a} -> {sim.device_a}")
            print(f"{sim.path_b} -> {sim.device_b}")
            print(f"baud {sim.baud}, seed {sim.seed}", flush=True)
            stopping = asyncio.create_task(stop.wait())
            failing = asyncio.create_task(sim.wait())
            await asyncio.wait((stopping, failing), return_when=asyncio.FIRST_COMPLETED)
            for task in (stopping, failing):
                task.cancel()
            await asyncio.gather(stopping, failing, return_exceptions=True)
            if failing.done() and not failing.cancelled() and failing.exception():
                raise TransportError(f"linesim: relay failed: {failing.exception()}")
        for name, stats in (("a->b", sim.a_to_b), ("b->a", sim.b_to_a)):
            print(
                f"{name}: in {stats.bytes_in} out {stats.bytes_out} corrupted "
                f"{stats.corrupted} dropped {stats.dropped} overflow {stats.overflow}",
                file=sys.stderr,
            )
        return 0
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_serve(args))
    except TransportError as exc:
        print(f"otaferry linesim: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
