"""A LoRa modem emulator: one real pseudo-terminal per modem, one shared channel.

``otaferry lora-sim --modem rylr998 --region EU868 --sf 7 GW DEV1 [DEV2 ...]``
creates a pty per modem and points each symlink at its slave; the program that
opens one finds a modem there speaking that modem's serial protocol
(``protocol/modems.py`` documents the three). The first modem has address 0
(the gateway's), the others 1..N.

The air, modelled by :class:`AirChannel` (also used, in virtual time, by
``otaferry bench lora``):

- **time on air**: Semtech's formula (``protocol/lora.py``) for the bytes the
  modem really puts on the air (REYAX: the ASCII characters + 8);
- **one channel, half duplex**: one packet on the air at a time; a modem that
  is asked to send while the channel is busy waits for it to clear, plus a
  ``guard`` (listen before talk); a RAK3172 stops listening when it sends and
  hears nothing until its host re-arms RX: packets that arrive then are lost;
- **loss**: each (sender, receiver) link loses packets independently with
  ``loss``, or by a two-state Gilbert-Elliott chain (``burst``: P(good→bad),
  P(bad→good), loss in the bad state);
- **regulation checked, not enforced**: a packet that starts before its
  transmitter's duty-cycle off time ended (``T * (1/dc - 1)`` after a packet of
  air time ``T``, 2 % + 2 ms of tolerance for scheduling jitter) counts as a
  ``duty_cycle_violations``; one longer than the dwell limit as a
  ``dwell_violations``. The modem still sends it: the count is the verdict on
  the host's pacing.
- ``time_scale`` < 1 runs the air faster than real (CI): every air and off
  time is multiplied by it; ``air_time_s`` in the statistics stays real.

On SIGINT/SIGTERM the CLI writes ``--stats`` (JSON): per modem (by address)
``tx_packets``, ``tx_bytes``, ``air_time_s``, ``duty_cycle_violations``,
``dwell_violations``, ``dropped`` (packets for it that it did not get), plus
``rx_packets`` and ``deferred``.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import json
import os
import random
import signal
import sys
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..protocol.errors import Reason, TransportError
from ..protocol.lora import LoRaParams, Region, region

__all__ = ["AirChannel", "LoRaSim", "Station", "main"]

KINDS = ("rylr998", "rylr896", "rak3172", "e22", "e32")


@dataclass
class Station:
    """One transmitter/receiver on the channel and its counters."""

    address: int
    params: LoRaParams
    freq_hz: int
    tx_packets: int = 0
    tx_bytes: int = 0
    air_time_s: float = 0.0
    duty_cycle_violations: int = 0
    dwell_violations: int = 0
    dropped: int = 0
    rx_packets: int = 0
    deferred: int = 0
    last_start: float = float("-inf")
    last_air: float = 0.0  # scaled
    listening: bool = True
    links: dict[int, bool] = field(default_factory=dict)  # sender -> in the bad state

    def stats(self) -> dict[str, Any]:
        return {
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "air_time_s": round(self.air_time_s, 6),
            "duty_cycle_violations": self.duty_cycle_violations,
            "dwell_violations": self.dwell_violations,
            "dropped": self.dropped,
            "rx_packets": self.rx_packets,
            "deferred": self.deferred,
        }


class AirChannel:
    """The shared channel, clock-free: callers pass ``now`` (see the module docstring)."""

    def __init__(
        self,
        plan: Region,
        *,
        rng: random.Random,
        loss: float = 0.0,
        burst: tuple[float, float, float] | None = None,
        time_scale: float = 1.0,
        guard: float = 0.01,
        duty_cycle: float | None = None,
    ) -> None:
        self.region = plan
        self.rng = rng
        self.loss = loss
        self.burst = burst
        self.time_scale = time_scale
        self.guard = guard
        self.duty_cycle = duty_cycle
        self.busy_until = float("-inf")
        self.busy_by: Station | None = None
        self.stations: dict[int, Station] = {}

    def add(self, address: int, params: LoRaParams, freq_hz: int) -> Station:
        station = Station(address, params, freq_hz)
        self.stations[address] = station
        return station

    def _dc(self, station: Station) -> float:
        if self.duty_cycle is not None:
            return self.duty_cycle
        return self.region.duty_cycle(station.freq_hz)

    def begin(self, station: Station, air_bytes: int, now: float) -> tuple[float, float]:
        """A packet of ``air_bytes`` handed to ``station``'s radio at ``now``:
        (start, end) on the channel, in the caller's (scaled) time."""
        real = station.params.time_on_air(air_bytes)
        air = real * self.time_scale
        start = now
        if self.busy_by is station:
            start = max(now, self.busy_until)  # its own radio: busy, not deferred
        elif self.busy_until + self.guard > now:
            start = self.busy_until + self.guard
            station.deferred += 1
        off = station.last_air * (1 / self._dc(station) - 1)
        earliest = station.last_start + station.last_air + off
        if start < earliest - 0.02 * off - 0.002:
            station.duty_cycle_violations += 1
        if self.region.dwell is not None and real > self.region.dwell:
            station.dwell_violations += 1
        station.last_start, station.last_air = start, air
        station.tx_packets += 1
        station.tx_bytes += air_bytes
        station.air_time_s += real
        self.busy_until = start + air
        self.busy_by = station
        return start, start + air

    def hears(self, sender: Station, receiver: Station) -> bool:
        """Whether ``receiver`` gets the packet ``sender`` just finished (counted)."""
        if (
            not receiver.listening
            or receiver.params != sender.params
            or receiver.freq_hz != sender.freq_hz
        ):
            receiver.dropped += 1
            return False
        lost = False
        if self.burst is not None:
            p_bad, p_good, bad_loss = self.burst
            bad = receiver.links.get(sender.address, False)
            bad = (self.rng.random() >= p_good) if bad else (self.rng.random() < p_bad)
            receiver.links[sender.address] = bad
            lost = bad and self.rng.random() < bad_loss
        if not lost and self.loss > 0:
            lost = self.rng.random() < self.loss
        if lost:
            receiver.dropped += 1
            return False
        receiver.rx_packets += 1
        return True


class _Modem:
    """The serial side of one emulated modem on a pty master."""

    kind = "modem"

    def __init__(self, sim: LoRaSim, station: Station, fd: int) -> None:
        self.sim = sim
        self.station = station
        self.fd = fd
        self.buf = bytearray()
        self.busy = False  # a packet of ours is on (or waiting for) the air
        self.out = bytearray()
        self.sink: Any = None  # in-process UART (bench lora): called with the modem's bytes

    def write(self, data: bytes) -> None:
        if self.sink is not None:
            self.sim.loop.call_soon(self.sink, bytes(data))
            return
        self.out += data
        self._flush()

    def _flush(self) -> None:
        while self.out:
            try:
                n = os.write(self.fd, self.out)
            except BlockingIOError:
                self.sim.loop.call_later(0.002, self._flush)
                return
            except OSError:  # nobody has the slave open: the bytes fall on the floor
                self.out.clear()
                return
            del self.out[:n]

    def feed(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\n")) >= 0:
            line = bytes(self.buf[:end]).strip(b"\r")
            del self.buf[: end + 1]
            if line:
                self.command(line)
        if len(self.buf) > 1024:
            self.buf.clear()

    def command(self, line: bytes) -> None:
        raise NotImplementedError

    def transmit(self, air: bytes, on_air_done: Any, **meta: Any) -> None:
        self.busy = True
        self.sim.send(self, air, on_air_done, meta)

    def deliver(self, sender: _Modem, air: bytes, meta: dict[str, Any]) -> bool:
        raise NotImplementedError


class _Reyax(_Modem):
    kind = "rylr998"
    BANDWIDTHS: ClassVar[dict[int, int]] = {7: 125_000, 8: 250_000, 9: 500_000}

    def __init__(self, sim: LoRaSim, station: Station, fd: int) -> None:
        super().__init__(sim, station, fd)
        self.network_id = 18

    def command(self, line: bytes) -> None:
        st = self.station
        if line == b"AT":
            return self.write(b"+OK\r\n")
        if not line.startswith(b"AT+"):
            return self.write(b"+ERR=2\r\n")
        name, _, arg = line[3:].partition(b"=")
        try:
            if name == b"ADDRESS":
                addr = int(arg)
                if not 0 <= addr <= 65535:
                    raise ValueError
                self.sim.readdress(self, addr)
            elif name == b"NETWORKID":
                self.network_id = int(arg)
            elif name == b"BAND":
                st.freq_hz = int(arg)
            elif name == b"PARAMETER":
                sf, bw, cr, pre = (int(x) for x in arg.split(b","))
                st.params = LoRaParams(sf, self.BANDWIDTHS[bw], cr + 4, pre)
            elif name == b"CPIN":
                if len(arg) != 8:
                    raise ValueError
            elif name == b"SEND":
                return self._send(arg)
            else:
                return self.write(b"+ERR=4\r\n")
        except (ValueError, KeyError):
            return self.write(b"+ERR=4\r\n")
        self.write(b"+OK\r\n")

    def _send(self, arg: bytes) -> None:
        try:
            addr, length, data = arg.split(b",", 2)
            dest, n = int(addr), int(length)
        except ValueError:
            return self.write(b"+ERR=4\r\n")
        if n > 240:
            return self.write(b"+ERR=13\r\n")  # the guide: TX data exceeds 240 bytes
        if n != len(data) or n < 1 or not data.isascii():
            return self.write(b"+ERR=5\r\n")  # the data does not match the length
        if self.busy:
            return self.write(b"+ERR=17\r\n")  # the last TX has not finished
        self.transmit(
            data + bytes(8),  # the modem's own 8 bytes on the air
            lambda: self.write(b"+OK\r\n"),
            dest=dest,
            net=self.network_id,
        )

    def deliver(self, sender: _Modem, air: bytes, meta: dict[str, Any]) -> bool:
        if not isinstance(sender, _Reyax) or meta["net"] != self.network_id:
            return False
        if meta["dest"] not in (0, self.station.address):
            return False
        data = air[:-8]
        self.write(b"+RCV=%d,%d,%s,-40,11\r\n" % (sender.station.address, len(data), data))
        return True


class _RAK(_Modem):
    kind = "rak3172"

    def __init__(self, sim: LoRaSim, station: Station, fd: int) -> None:
        super().__init__(sim, station, fd)
        self.p2p = False
        self.rx_only = False
        station.listening = False  # until AT+PRECV

    def command(self, line: bytes) -> None:
        st = self.station
        if line == b"AT":
            return self.write(b"OK\r\n")
        name, _, arg = line.partition(b"=")
        try:
            if name == b"AT+NWM":
                self.p2p = arg == b"0"
            elif name == b"AT+P2P":
                f, sf, bw, cr, pre, _pw = (int(x) for x in arg.split(b":"))
                st.freq_hz = f
                st.params = LoRaParams(sf, bw * 1000, cr + 5, pre)
            elif name == b"AT+PRECV":
                mode = int(arg)
                if self.busy:
                    return self.write(b"AT_BUSY_ERROR\r\n")
                st.listening = mode != 0
                # RUI3 >= 3.4.0: 65534 listens "until AT+PRECV=0" and takes no TX;
                # 65533 listens and still sends (then listens again once re-armed).
                self.rx_only = mode == 65534
            elif name == b"AT+PSEND":
                return self._send(arg)
            else:
                return self.write(b"AT_ERROR\r\n")
        except ValueError:
            return self.write(b"AT_PARAM_ERROR\r\n")
        self.write(b"OK\r\n")

    def _send(self, arg: bytes) -> None:
        if not self.p2p:
            return self.write(b"AT_ERROR\r\n")
        try:
            packet = binascii.unhexlify(arg)
        except (binascii.Error, ValueError):
            return self.write(b"AT_PARAM_ERROR\r\n")
        if not 1 <= len(packet) <= 250:
            return self.write(b"AT_PARAM_ERROR\r\n")
        if self.busy or self.rx_only:
            return self.write(b"AT_BUSY_ERROR\r\n")
        self.write(b"OK\r\n")
        self.station.listening = False  # the radio leaves RX to send

        def done() -> None:
            self.write(b"+EVT:TXP2P DONE\r\n")

        self.transmit(packet, done)

    def deliver(self, sender: _Modem, air: bytes, meta: dict[str, Any]) -> bool:
        if not isinstance(sender, _RAK):
            return False
        self.write(b"+EVT:RXP2P:-40:11:" + binascii.hexlify(air).upper() + b"\r\n")
        return True


class _Ebyte(_Modem):
    kind = "e22"
    IDLE = 0.003  # the module ends a packet after about 3 byte times of silence

    def __init__(self, sim: LoRaSim, station: Station, fd: int, sub_packet: int) -> None:
        super().__init__(sim, station, fd)
        self.sub_packet = sub_packet
        self.channel = 0x12
        self.queue: list[tuple[int, int, bytes]] = []
        self._timer: asyncio.TimerHandle | None = None

    def feed(self, data: bytes) -> None:
        self.buf += data
        if self._timer is not None:
            self._timer.cancel()
        while len(self.buf) >= 3 + self.sub_packet:
            self._cut(3 + self.sub_packet)
        self._timer = self.sim.loop.call_later(self.IDLE, self._idle)

    def _idle(self) -> None:
        self._timer = None
        if len(self.buf) > 3:
            self._cut(len(self.buf))
        else:
            self.buf.clear()

    def _cut(self, n: int) -> None:
        chunk = bytes(self.buf[:n])
        del self.buf[:n]
        dest = chunk[0] << 8 | chunk[1]
        self.queue.append((dest, chunk[2], chunk[3:]))
        self._next()

    def _next(self) -> None:
        if self.busy or not self.queue:
            return
        dest, chan, data = self.queue.pop(0)

        def done() -> None:
            self.busy = False
            self._next()

        self.transmit(data, done, dest=dest, chan=chan)

    def deliver(self, sender: _Modem, air: bytes, meta: dict[str, Any]) -> bool:
        if not isinstance(sender, _Ebyte) or meta["chan"] != self.channel:
            return False
        if meta["dest"] not in (0xFFFF, self.station.address):
            return False
        self.write(air)
        return True


class LoRaSim:
    """The emulator: ``paths[0]`` the gateway's modem (address 0), the rest 1..N."""

    def __init__(
        self,
        kind: str,
        paths: Sequence[str | Path],
        *,
        params: LoRaParams,
        plan: Region,
        freq_hz: int | None = None,
        loss: float = 0.0,
        burst: tuple[float, float, float] | None = None,
        seed: int | None = None,
        time_scale: float = 1.0,
        duty_cycle: float | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown modem {kind!r} (known: {', '.join(KINDS)})")
        if len(paths) < 2:
            raise ValueError("lora-sim needs a gateway modem and at least one device modem")
        self.kind = kind
        self.paths = [Path(p) for p in paths]
        self.params = params
        self.freq_hz = plan.default_hz if freq_hz is None else freq_hz
        plan.check(params, self.freq_hz)
        self.seed = random.randrange(2**32) if seed is None else seed
        self.channel = AirChannel(
            plan,
            rng=random.Random(self.seed),
            loss=loss,
            burst=burst,
            time_scale=time_scale,
            duty_cycle=duty_cycle,
        )
        self.modems: list[_Modem] = []
        # Told of every packet as it goes on the air: (address, packet, seconds on air);
        # ``bench lora`` sorts the air time by frame kind with it.
        self.on_air: Callable[[int, bytes, float], None] | None = None
        self._fds: list[int] = []
        self._links: list[Path] = []
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:  # made outside a loop: start() takes the running one
            self.loop = asyncio.get_event_loop_policy().get_event_loop()

    async def __aenter__(self) -> LoRaSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def devices(self) -> list[str]:
        return [os.readlink(p) for p in self._links]

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            for address, path in enumerate(self.paths):
                master, slave = os.openpty()
                self._fds += [master, slave]
                tty.setraw(slave)
                os.set_blocking(master, False)
                if path.is_symlink():
                    path.unlink()
                elif path.exists():
                    raise TransportError(f"lora-sim: {path} exists", Reason.IO_ERROR)
                path.symlink_to(os.ttyname(slave))
                self._links.append(path)
                station = self.channel.add(address, self.params, self.freq_hz)
                modem: _Modem
                if self.kind in ("rylr998", "rylr896"):
                    modem = _Reyax(self, station, master)
                elif self.kind == "rak3172":
                    modem = _RAK(self, station, master)
                else:
                    modem = _Ebyte(self, station, master, 58 if self.kind == "e32" else 240)
                self.modems.append(modem)
                self.loop.add_reader(master, self._readable, modem)
        except OSError as exc:
            await self.aclose()
            raise TransportError(
                f"lora-sim: cannot create the ptys: {exc}", Reason.IO_ERROR
            ) from exc

    def start_in_process(self, loop: asyncio.AbstractEventLoop) -> list[Any]:
        """The same modems with in-process UARTs instead of ptys (``otaferry bench
        lora``, on a virtual clock): returns one ``feed(bytes)`` per modem, in
        address order; set each modem's ``sink`` to receive what it says."""
        self.loop = loop
        for address in range(len(self.paths)):
            station = self.channel.add(address, self.params, self.freq_hz)
            modem: _Modem
            if self.kind in ("rylr998", "rylr896"):
                modem = _Reyax(self, station, -1)
            elif self.kind == "rak3172":
                modem = _RAK(self, station, -1)
            else:
                modem = _Ebyte(self, station, -1, 58 if self.kind == "e32" else 240)
            self.modems.append(modem)
        return [m.feed for m in self.modems]

    def _readable(self, modem: _Modem) -> None:
        try:
            data = os.read(modem.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO: no program has the slave open right now
        if data:
            modem.feed(data)

    def readdress(self, modem: _Modem, address: int) -> None:
        st = modem.station
        if address == st.address:
            return
        del self.channel.stations[st.address]
        st.address = address
        self.channel.stations[address] = st

    def send(self, modem: _Modem, air: bytes, on_air_done: Any, meta: dict[str, Any]) -> None:
        now = self.loop.time()
        _, end = self.channel.begin(modem.station, len(air), now)
        if self.on_air is not None:
            station = modem.station
            self.on_air(station.address, air, station.params.time_on_air(len(air)))

        def finish() -> None:
            for other in self.modems:
                if other is modem:
                    continue
                # Only modems the packet is for count a loss as "dropped".
                if self._addressed(other, modem, air, meta) and self.channel.hears(
                    modem.station, other.station
                ):
                    other.deliver(modem, air, meta)
            modem.busy = False
            on_air_done()

        self.loop.call_at(end, finish)

    @staticmethod
    def _addressed(receiver: _Modem, sender: _Modem, air: bytes, meta: dict[str, Any]) -> bool:
        """Whether the packet is for ``receiver`` (RAK P2P: the first byte is the
        destination by otaferry's convention, 0xFF all; REYAX: 0 is everyone)."""
        me = receiver.station.address
        if isinstance(sender, _RAK):
            return air[0] in (0xFF, me)
        if isinstance(sender, _Reyax):
            return meta["dest"] in (0, me)
        return meta["dest"] in (0xFFFF, me)

    def stats(self) -> dict[str, Any]:
        return {
            "modem": self.kind,
            "region": self.channel.region.name,
            "sf": self.params.sf,
            "bw": self.params.bw,
            "cr": self.params.cr,
            "seed": self.seed,
            "modems": {str(s.address): s.stats() for s in self.channel.stations.values()},
        }

    async def aclose(self) -> None:
        for modem in self.modems:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(modem.fd)
        for path in self._links:
            with contextlib.suppress(OSError):
                if path.is_symlink():
                    path.unlink()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._links.clear()


# --- command line ------------------------------------------------------------


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be a probability within 0..1")
    return value


def _burst(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(":"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or not all(0 <= p <= 1 for p in parts):
        raise argparse.ArgumentTypeError("is P_ENTER:P_LEAVE:LOSS, three probabilities")
    return parts[0], parts[1], parts[2]


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="otaferry lora-sim",
        description="Emulated LoRa modems on pseudo-terminals, one shared channel "
        "(time on air, half duplex, loss; duty cycle and dwell counted).",
    )
    p.add_argument("--modem", choices=KINDS, required=True)
    p.add_argument("--region", default="EU868", help="EU868 or US915 (default EU868)")
    p.add_argument("--freq", type=int, help="channel in Hz (default: the region's)")
    p.add_argument("--sf", type=int, default=7, choices=range(6, 13), metavar="7..12")
    p.add_argument("--bw", type=int, default=125, choices=(125, 250, 500), help="kHz")
    p.add_argument("--cr", type=int, default=5, choices=range(5, 9), metavar="5..8")
    p.add_argument("--preamble", type=int, default=8)
    p.add_argument("--loss", type=_probability, default=0.0, metavar="P")
    p.add_argument("--burst-loss", type=_burst, metavar="P_ENTER:P_LEAVE:LOSS")
    p.add_argument("--seed", type=int)
    p.add_argument("--stats", help="write STATS.json here on SIGINT/SIGTERM")
    p.add_argument(
        "--time-scale", type=_positive, default=1.0, help="air runs this many times real time"
    )
    p.add_argument("--duty-cycle", type=_probability, help="override the sub-band's")
    p.add_argument("ports", nargs="+", metavar="PTY", help="GW_PTY DEV1_PTY [DEV2_PTY ...]")
    return p


async def _serve(args: argparse.Namespace) -> int:
    plan = region(args.region)
    params = LoRaParams(args.sf, args.bw * 1000, args.cr, args.preamble)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    sim = LoRaSim(
        args.modem,
        args.ports,
        params=params,
        plan=plan,
        freq_hz=args.freq,
        loss=args.loss,
        burst=args.burst_loss,
        seed=args.seed,
        time_scale=args.time_scale,
        duty_cycle=args.duty_cycle,
    )
    async with sim:
        for path, dev in zip(sim.paths, sim.devices(), strict=True):
            print(f"{path} -> {dev}")
        print(
            f"{args.modem} {plan.name} SF{params.sf} {args.bw} kHz 4/{params.cr}, seed {sim.seed}",
            flush=True,
        )
        await stop.wait()
        stats = sim.stats()
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats["modems"]), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return asyncio.run(_serve(args))
    except (TransportError, ValueError) as exc:
        print(f"otaferry lora-sim: {exc}", file=sys.stderr)
        return 1
