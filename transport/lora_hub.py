"""A LoRa modem on a serial port as a :class:`~otaferry.transport.hub.Hub`.

The gateway's modem (REYAX RYLR998/896, RAK3172 in P2P, Ebyte E22/E32) hangs
on a UART; ``protocol/modems.py`` holds its serial protocol, sans-IO. This
module moves the bytes, and keeps the two rules of the air:

- **half duplex, one packet at a time**: a send waits for the modem to say the
  packet is off the air (REYAX ``+OK``, RAK ``+EVT:TXP2P DONE``; an E22 says
  nothing, so its air time is waited out) before the next command;
- **the region's budget** (``protocol/lora.RegionPacing``): duty-cycle off
  time after each packet and the dwell limit; ``send`` returns once the packet
  has left, so the Sender stamps departures, never queueing.

Peers are the addresses given at open, plus any that speak up. Errors come
only from ``otaferry.protocol.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import serial
import serial_asyncio

from ..protocol.errors import ClosedError, Reason, TimeoutError_, TransportError
from ..protocol.lora import EU868, LoRaParams, Region, RegionPacing
from ..protocol.modems import (
    BROADCAST,
    Failed,
    ModemCodec,
    ModemEvent,
    Ok,
    Received,
    TxDone,
    codec_for,
)
from ..protocol.pacing import Pacing
from .hub import Address, Hub
from .link import Inbox, check_frame

__all__ = ["ModemHub"]

COMMAND_TIMEOUT = 2.0
"""Seconds a modem may take to answer a configuration command."""


class _ModemProtocol(asyncio.Protocol):
    def __init__(self, hub: ModemHub) -> None:
        self.hub = hub
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.hub._on_events(self.hub.codec.feed(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub._on_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)


class ModemHub(Hub):
    """One LoRa modem on a serial port; create with :meth:`open`."""

    def __init__(
        self,
        codec: ModemCodec,
        *,
        port: str,
        address: int,
        peers: frozenset[int],
        mtu: int,
        pacing: RegionPacing,
    ) -> None:
        super().__init__()
        self.codec = codec
        self.port = port
        self.address = address
        self._known = set(peers)
        self._mtu = mtu
        self._pacing = pacing
        self._inbox: Inbox[tuple[Address, bytes]] = Inbox()
        self._answers: asyncio.Queue[ModemEvent] = asyncio.Queue()
        self._tx = asyncio.Lock()
        self._transport: Any = None
        self._protocol: _ModemProtocol | None = None
        self._closed = False
        self._error: TransportError | None = None
        self.stats.update(tx_packets=0, rx_packets=0, modem_errors=0)

    @classmethod
    async def open(
        cls,
        url: str,
        modem: str,
        params: LoRaParams,
        *,
        region: Region = EU868,
        freq_hz: int | None = None,
        address: int = 0,
        peers: tuple[int, ...] = (),
        mtu: int | None = None,
        baudrate: int = 115200,
        duty_cycle: float | None = None,
        time_scale: float = 1.0,
        turnaround: float = 0.05,
    ) -> ModemHub:
        """Open the modem on ``url`` (pyserial URL), configure it (address, channel,
        modulation) and listen. ``mtu`` None: the modem's largest packet, cut to
        what fits the region's dwell limit. ``time_scale`` < 1 only against an
        emulator that runs faster than the air (``lora-sim --time-scale``)."""
        codec = codec_for(modem)
        freq = region.default_hz if freq_hz is None else freq_hz
        probe = RegionPacing(params, region, freq, wire_size=codec.wire_size, mtu=1)
        size = probe.max_mtu(codec.mtu_for(mtu))
        if size < 1:
            raise TransportError(
                f"no {modem} packet fits the {region.name} dwell limit at SF{params.sf}",
                Reason.TOO_LARGE,
            )
        pacing = RegionPacing(
            params,
            region,
            freq,
            wire_size=codec.wire_size,
            mtu=size,
            duty_cycle=duty_cycle,
            time_scale=time_scale,
            turnaround=turnaround,
        )
        hub = cls(codec, port=url, address=address, peers=frozenset(peers), mtu=size, pacing=pacing)
        loop = asyncio.get_running_loop()
        try:
            ser = await loop.run_in_executor(
                None, functools.partial(serial.serial_for_url, url, baudrate=baudrate)
            )
            transport, _ = await serial_asyncio.connection_for_serial(
                loop, hub.protocol_factory, ser
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"{url}: cannot open: {exc}", Reason.IO_ERROR, port=url) from exc
        await hub.attach(transport, params, freq)
        return hub

    def protocol_factory(self) -> asyncio.Protocol:
        """The asyncio protocol that feeds this hub the modem's bytes (made once)."""
        self._protocol = _ModemProtocol(self)
        return self._protocol

    async def attach(self, transport: Any, params: LoRaParams, freq_hz: int) -> None:
        """Use ``transport`` (``write(bytes)``, ``close()``; the bytes the modem says go
        to :meth:`protocol_factory`'s protocol) and configure the modem. ``open``
        does this for a serial port; ``otaferry bench lora`` for the emulator's
        in-process UARTs."""
        if self._protocol is None:
            self.protocol_factory()
        self._transport = transport
        try:
            for command in self.codec.setup(params, freq_hz, self.address):
                await self._command(command)
        except BaseException:
            await self.aclose()
            raise

    def __repr__(self) -> str:
        return f"ModemHub({self.codec.name} on {self.port!r}, address {self.address})"

    # --- modem I/O

    def _on_events(self, events: list[ModemEvent]) -> None:
        for event in events:
            if isinstance(event, Received):
                self.stats["rx_packets"] += 1
                self._known.add(event.source)
                self._inbox.put((event.source, event.body))
            else:
                self._answers.put_nowait(event)

    def _on_lost(self, exc: Exception | None) -> None:
        error: TransportError
        if exc is None:
            error = ClosedError(f"{self.port}: modem port closed", port=self.port)
        else:
            error = TransportError(f"{self.port}: {exc}", Reason.IO_ERROR, port=self.port)
        self._error = error
        self._inbox.fail(lambda: type(error)(error.message, error.reason), drain=True)
        self._answers.put_nowait(Failed("port lost"))

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.port}: hub closed", port=self.port)
        if self._error is not None:
            raise type(self._error)(self._error.message, self._error.reason)

    async def _answer(self, want: type[Ok] | type[TxDone], timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await self._answers.get()
                    if isinstance(event, want):
                        return
                    if isinstance(event, Failed):
                        self.stats["modem_errors"] += 1
                        self._check_open()
                        raise TransportError(
                            f"{self.codec.name} on {self.port}: {event.code}", Reason.IO_ERROR
                        )
        except TimeoutError:
            raise TimeoutError_(
                f"{self.codec.name} on {self.port}: no {want.__name__} within {timeout:.1f}s"
            ) from None

    async def _command(self, command: bytes) -> None:
        while not self._answers.empty():  # stale answers never count for this command
            self._answers.get_nowait()
        self._transport.write(command)
        await self._answer(Ok, COMMAND_TIMEOUT)

    async def _transmit(self, dest: int, data: bytes) -> None:
        self._check_open()
        async with self._tx:
            loop = asyncio.get_running_loop()
            wait = self._pacing.delay(len(data), loop.time())
            if wait > 0:
                await asyncio.sleep(wait)
            self._check_open()
            for command in self.codec.before_send():
                await self._command(command)
            air = self._pacing.airtime(len(data))
            while not self._answers.empty():
                self._answers.get_nowait()
            self._transport.write(self.codec.encode_send(dest, data))
            self._pacing.spend(len(data), loop.time())
            self.stats["tx_packets"] += 1
            # Off the air: the modem says so, or (E22) its air time has passed.
            limit = COMMAND_TIMEOUT + 4 * air + 1.0
            for answer in self.codec.send_answers:
                await self._answer(answer, limit)
            if not self.codec.send_answers:
                await asyncio.sleep(max(air, self.codec.idle_gap))
            self._pacing.finished(loop.time())
            for command in self.codec.after_send():
                await self._command(command)

    # --- the hub contract

    @property
    def peers(self) -> frozenset[Address]:
        return frozenset(self._known)

    def _check_peer(self, peer: Address) -> int:
        if peer not in self._known or not isinstance(peer, int):
            raise TransportError(f"no peer {peer!r} behind this modem", Reason.BAD_STATE)
        return peer

    def mtu(self, peer: Address) -> int:
        self._check_peer(peer)
        return self._mtu

    @property
    def broadcast_mtu(self) -> int:
        return self._mtu

    @property
    def pacing(self) -> Pacing:
        return self._pacing

    async def send(self, peer: Address, body: bytes) -> None:
        self._check_open()
        dest = self._check_peer(peer)
        await self._transmit(dest, check_frame(body, self._mtu))

    async def broadcast(self, body: bytes) -> None:
        self._check_open()
        await self._transmit(BROADCAST, check_frame(body, self._mtu))

    async def receive(self) -> tuple[Address, bytes]:
        self._check_open()
        return await self._inbox.get()

    async def _close_medium(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.fail(lambda: ClosedError(f"{self.port}: hub closed"), drain=False)
        if self._transport is not None:
            self._transport.close()
            if self._protocol is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await asyncio.shield(self._protocol.lost)
