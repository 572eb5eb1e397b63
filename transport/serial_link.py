"""A :class:`Link` over a serial port, framed with ``protocol/framing.py``.

The port is any pyserial URL: a device path (``/dev/ttyUSB0``, a pty slave
``/dev/pts/N`` or a symlink to one), ``socket://host:port``, ``rfc2217://…``,
``loop://``. Ports with a file descriptor run on pyserial-asyncio's transport
(the event loop watches the fd; nothing polls). pyserial's ``loop://`` and
``rfc2217://`` handlers have no descriptor; for those one worker thread does
blocking reads with a short timeout and hands the bytes to the loop.

Damaged or oversize frames are dropped and counted (:attr:`SerialLink.stats`);
the link itself never raises for line noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import threading
from collections import deque
from typing import Any, Protocol

import serial
import serial_asyncio

from ..protocol.errors import ClosedError, Reason, TransportError
from ..protocol.framing import DecoderStats, FrameDecoder, encode_frame, max_wire_size
from ..protocol.pacing import LineRate, Pacing, Unlimited
from .link import ErrorFactory, FrameInbox, Link, check_frame

DEFAULT_MTU = 1024
CLOSE_TIMEOUT = 2.0
"""Seconds a graceful close may spend flushing before the port is aborted."""

_THREAD_POLL = 0.01  # read timeout of the fd-less worker: the write latency bound


class _PortTransport(Protocol):
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class _FramedProtocol(asyncio.Protocol):
    """Feeds received bytes through a FrameDecoder into the link's inbox."""

    def __init__(self, port: str, mtu: int, inbox: FrameInbox) -> None:
        self._port = port
        self._inbox = inbox
        self.decoder = FrameDecoder(max_frame=mtu)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: ErrorFactory | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            self._inbox.put(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        port = self._port
        error: ErrorFactory
        if exc is None:
            error = functools.partial(ClosedError, f"{port}: port closed", port=port)
        else:
            error = functools.partial(TransportError, f"{port}: {exc}", Reason.IO_ERROR, port=port)
        self.error = error
        self._inbox.fail(error, drain=True)
        self._can_write.set()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    async def drain(self) -> None:
        await self._can_write.wait()


class _ThreadedPort(asyncio.Transport):
    """Transport for pyserial ports without a file descriptor (loop://, rfc2217://).

    One daemon thread owns the port: it writes what :meth:`write` queued, then
    reads with a short timeout, and reports through ``call_soon_threadsafe``.
    """

    def __init__(
        self,
        ser: Any,
        protocol: _FramedProtocol,
        loop: asyncio.AbstractEventLoop,
        name: str,
    ) -> None:
        super().__init__()
        self._ser = ser
        self._protocol = protocol
        self._loop = loop
        self._out: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._abort = False
        ser.timeout = _THREAD_POLL
        ser.write_timeout = None
        loop.call_soon(protocol.connection_made, self)
        self._thread = threading.Thread(target=self._run, name=f"otaferry {name}", daemon=True)
        self._thread.start()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._stop.is_set():
            with self._lock:
                self._out.append(bytes(data))

    def is_closing(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._stop.set()

    def abort(self) -> None:
        self._abort = True
        self._stop.set()

    def _flush_writes(self) -> None:
        with self._lock:
            data = b"".join(self._out)
            self._out.clear()
        if data:
            self._ser.write(data)

    def _report(self, callback: Any, *args: Any) -> None:
        # RuntimeError: the loop is closed, nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        error: Exception | None = None
        try:
            while not self._stop.is_set():
                self._flush_writes()
                data = self._ser.read(max(1, self._ser.in_waiting))
                if data:
                    self._report(self._protocol.data_received, data)
            if not self._abort:
                self._flush_writes()
        except Exception as exc:  # any pyserial/OS failure ends the port
            error = exc
        finally:
            with contextlib.suppress(Exception):
                self._ser.close()
            self._report(self._protocol.connection_lost, error)


BEFORE = ("no-reset", "reset")
AFTER = ("no-reset", "reset")
RESET_PULSE = 0.1  # s EN is held low (esptool's classic reset holds it 100 ms)


def rfc2217_url(url: str) -> str:
    """``url`` with ``ign_set_control`` for rfc2217:// (esp_rfc2217_server resets
    the chip when the client moves DTR/RTS), unless the URL sets control itself."""
    if not url.startswith("rfc2217://") or "ign_set_control" in url:
        return url
    return url + ("&" if "?" in url else "?") + "ign_set_control"


def _pulse_reset(ser: Any) -> None:
    """EN low for RESET_PULSE through RTS (IO0 left high: DTR inactive): a reset
    into the application, as esptool's hard_reset."""
    import time

    ser.dtr = False
    ser.rts = True
    time.sleep(RESET_PULSE)
    ser.rts = False


def _open_port(url: str, baudrate: int, before: str, options: dict[str, Any]) -> Any:
    """Open with DTR and RTS inactive from the first moment: pyserial applies the
    line states set before open(), so no edge reaches an auto-reset circuit."""
    ser = serial.serial_for_url(rfc2217_url(url), baudrate=baudrate, do_not_open=True, **options)
    ser.dtr = False
    ser.rts = False
    ser.open()
    if before == "reset":
        _pulse_reset(ser)
    return ser


def _read_without_select(ser: Any) -> None:
    """pyserial's POSIX ``read`` waits in ``select()``, which fails with "filedescriptor
    out of range" for descriptors >= 1024: a gateway holding many files (a thousand
    device sessions' state, its job store, MQTT) could not read its serial ports.
    pyserial-asyncio only reads when the event loop (epoll) says the descriptor is
    readable, so a plain non-blocking ``os.read`` does the same job without select."""
    import os

    fd = ser.fileno()

    def read(size: int = 1) -> bytes:
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise serial.SerialException(f"read failed: {exc}") from exc
        if not data:  # readable but nothing: the other end hung up (as pyserial says)
            raise serial.SerialException(
                "device reports readiness to read but returned no data "
                "(device disconnected or multiple access on port?)"
            )
        return data

    ser.read = read


def _has_fileno(ser: Any) -> bool:
    try:
        ser.fileno()
    except (io.UnsupportedOperation, OSError, AttributeError):
        return False
    return True


def _close_quietly(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        with contextlib.suppress(Exception):
            fut.result().close()


class SerialLink(Link):
    """Frames over a serial port. Create with :meth:`open`."""

    def __init__(
        self,
        transport: _PortTransport,
        protocol: _FramedProtocol,
        inbox: FrameInbox,
        *,
        port: str,
        mtu: int,
        pacing: Pacing,
    ) -> None:
        self._pacing = pacing
        self._tx = asyncio.Lock()
        self._ser: Any = None
        self._after = "no-reset"
        self._transport = transport
        self._protocol = protocol
        self._inbox = inbox
        self._port = port
        self._mtu = mtu
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        baudrate: int = 115200,
        *,
        mtu: int = DEFAULT_MTU,
        pace: bool = True,
        before: str = "no-reset",
        after: str = "no-reset",
        **serial_options: Any,
    ) -> SerialLink:
        """Open ``url`` (any pyserial URL) at ``baudrate``; extra options go to pyserial.

        ``mtu``: the largest frame body (default 1024, what the CLI and the device
        use). ``pace``: hand frames to the port no faster than ``baudrate`` (8N1:
        ten bits a byte) carries them, one frame ahead of the wire, so ``send``
        returns about when a frame starts on the line and the sender's send times
        are departures; off for ports that pace themselves.

        ``before`` / ``after`` (as esptool's): DTR and RTS are held inactive by
        default, so opening the port does not reset a board wired for
        auto-reset (ESP32 dev kits: RTS to EN, DTR to IO0); "reset" pulses EN
        through RTS at open / at close. An ``rfc2217://`` URL gets
        ``ign_set_control`` unless it asks otherwise: esptool's
        ``esp_rfc2217_server`` resets the chip when it sees control lines move.

        Failures (no such port, permission, bad settings) raise
        :class:`TransportError` naming the port.
        """
        if mtu < 1:
            raise ValueError("mtu must be >= 1")
        loop = asyncio.get_running_loop()
        if before not in BEFORE or after not in AFTER:
            raise ValueError(f"before must be one of {BEFORE}, after one of {AFTER}")
        # serial_for_url may block (socket:// connects, rfc2217:// negotiates).
        opening = loop.run_in_executor(
            None,
            functools.partial(_open_port, url, baudrate, before, serial_options),
        )
        try:
            ser = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_quietly)
            raise
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"{url}: cannot open: {exc}", Reason.IO_ERROR, port=url) from exc

        inbox = FrameInbox()
        protocol = _FramedProtocol(url, mtu, inbox)
        transport: _PortTransport
        if _has_fileno(ser):
            _read_without_select(ser)
            serial_transport, _ = await serial_asyncio.connection_for_serial(
                loop, lambda: protocol, ser
            )
            # Keep send() close to the line: wait once a few frames are queued.
            high = 4 * max_wire_size(mtu)
            serial_transport.set_write_buffer_limits(high=high, low=high // 4)
            transport = serial_transport
        else:
            transport = _ThreadedPort(ser, protocol, loop, url)
        pacing: Pacing = Unlimited()
        if pace:
            pacing = LineRate(
                baudrate / 10,
                burst=max_wire_size(mtu),
                overhead=lambda n: max_wire_size(n) - n,
            )
        link = cls(transport, protocol, inbox, port=url, mtu=mtu, pacing=pacing)
        link._ser = ser
        link._after = after
        return link

    def __repr__(self) -> str:
        return f"SerialLink({self._port!r}, mtu={self._mtu})"

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def port(self) -> str:
        return self._port

    @property
    def pacing(self) -> Pacing:
        return self._pacing

    @property
    def stats(self) -> DecoderStats:
        """Receive-side framing counters (good frames, CRC/COBS errors, garbage)."""
        return self._protocol.decoder.stats

    def _closed_error(self) -> ClosedError:
        return ClosedError(f"{self._port}: link closed", port=self._port)

    async def send(self, frame: bytes) -> None:
        if self._closed:
            raise self._closed_error()
        data = check_frame(frame, self._mtu)
        if self._protocol.error is not None:
            raise self._protocol.error()
        async with self._tx:  # one frame at a time through the budget
            loop = asyncio.get_running_loop()
            wait = self._pacing.delay(len(data), loop.time())
            if wait > 0:
                await asyncio.sleep(wait)
            self._transport.write(encode_frame(data))
            self._pacing.spend(len(data), loop.time())
        await self._protocol.drain()
        if self._closed:
            raise self._closed_error()
        if self._protocol.error is not None:
            raise self._protocol.error()

    async def receive(self) -> bytes:
        if self._closed:
            raise self._closed_error()
        return await self._inbox.get()

    async def aclose(self) -> None:
        if not self._closed and self._after == "reset" and self._ser is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(None, _pulse_reset, self._ser)
        if not self._closed:
            self._closed = True
            self._inbox.fail(self._closed_error, drain=False)
            self._transport.close()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.shield(self._protocol.lost)
                return
            except TimeoutError:
                self._transport.abort()
        await asyncio.shield(self._protocol.lost)
