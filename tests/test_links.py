"""Link conformance suite, run against every link, plus SerialLink specifics.

The same tests run over: the in-memory pair; a SerialLink on a real pty slave
talking to the raw master fd (framed by hand); and two SerialLinks joined by
the line simulator. Real pseudo-terminals throughout, no mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from otaferry.protocol.errors import ClosedError, Reason, TransportError
from otaferry.protocol.framing import FrameDecoder, encode_frame
from otaferry.protocol.lora import EU868, LoRaParams
from otaferry.protocol.secure import OVERHEAD, Responder, SecureChannel
from otaferry.protocol.x25519keys import LinkPrivateKey, LinkPublicKey
from otaferry.transport.hub import LinkHub, PeerLink, memory_hub
from otaferry.transport.linesim import LineSim
from otaferry.transport.link import FrameInbox, Link, check_frame, memory_pair
from otaferry.transport.lora_hub import ModemHub
from otaferry.transport.lorasim import LoRaSim
from otaferry.transport.secure_link import PROLOGUE, SecureLink
from otaferry.transport.serial_link import SerialLink

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("error")]

MTU = 240
Pair = tuple[Link, Link]
PairFactory = Callable[[], AbstractAsyncContextManager[Pair]]


class MasterFdLink(Link):
    """The far side of a raw pty: the master fd, framed by hand (test helper)."""

    def __init__(self, fd: int, mtu: int) -> None:
        self._fd = fd
        self._mtu = mtu
        self._decoder = FrameDecoder(max_frame=mtu)
        self._inbox = FrameInbox()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._on_readable)
        self._reading = True

    @property
    def mtu(self) -> int:
        return self._mtu

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: the slave side is gone
            self._stop_reading()
            self._inbox.fail(lambda: ClosedError("pty slave closed"), drain=True)
            return
        for frame in self._decoder.feed(data):
            self._inbox.put(frame)

    async def write_raw(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self._fd, data) :]
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def send(self, frame: bytes) -> None:
        if self._closed:
            raise ClosedError("master closed")
        await self.write_raw(encode_frame(check_frame(frame, self._mtu)))

    async def receive(self) -> bytes:
        if self._closed:
            raise ClosedError("master closed")
        return await self._inbox.get()

    async def aclose(self) -> None:
        self._closed = True
        self._stop_reading()
        self._inbox.fail(lambda: ClosedError("master closed"), drain=False)


@contextlib.asynccontextmanager
async def memory_links() -> AsyncIterator[Pair]:
    a, b = memory_pair(mtu=MTU)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


@contextlib.asynccontextmanager
async def pty_links() -> AsyncIterator[Pair]:
    master, slave = os.openpty()  # we hold the slave too: no EIO on the master
    try:
        link = await SerialLink.open(os.ttyname(slave), 115200, mtu=MTU)
        raw = MasterFdLink(master, MTU)
        try:
            yield link, raw
        finally:
            await link.aclose()
            await raw.aclose()
    finally:
        os.close(master)
        os.close(slave)


class ResponderLink(Link):
    """The device's end of a SecureLink for the conformance suite (test helper):
    answers MSG1 with MSG2, then opens and seals like the device's endpoint."""

    def __init__(self, inner: Link, static: LinkPrivateKey, gateway: LinkPublicKey) -> None:
        self.inner = inner
        self.responder = Responder(
            static, [gateway], LinkPrivateKey.from_raw(bytes(range(32))), PROLOGUE
        )
        self.channel: SecureChannel | None = None

    @property
    def mtu(self) -> int:
        return self.inner.mtu - OVERHEAD

    async def accept(self) -> None:
        await self.inner.send(self.responder.receive(await self.inner.receive()))
        self.channel = self.responder.channel

    async def send(self, frame: bytes) -> None:
        check_frame(frame, self.mtu)
        assert self.channel is not None
        await self.inner.send(self.channel.seal(frame))

    async def receive(self) -> bytes:
        assert self.channel is not None
        while (body := self.channel.open(await self.inner.receive())) is None:
            pass
        return body

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextlib.asynccontextmanager
async def secure_links() -> AsyncIterator[Pair]:
    """SecureLink (gateway) over an in-memory pair, against ResponderLink."""
    inner_a, inner_b = memory_pair(mtu=MTU + OVERHEAD)
    gw = LinkPrivateKey.from_raw(bytes(range(1, 33)))
    dev = LinkPrivateKey.from_raw(bytes(range(2, 34)))
    b = ResponderLink(inner_b, dev, gw.public)
    accepting = asyncio.ensure_future(b.accept())
    a = await SecureLink.connect(inner_a, gw, dev.public)
    await accepting
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


def linesim_links(tmp_path: Path) -> PairFactory:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[Pair]:
        async with LineSim(tmp_path / "a", tmp_path / "b", baud=921600, seed=1) as sim:
            a = await SerialLink.open(str(sim.path_a), 921600, mtu=MTU)
            try:
                b = await SerialLink.open(str(sim.path_b), 921600, mtu=MTU)
                try:
                    yield a, b
                finally:
                    await b.aclose()
            finally:
                await a.aclose()

    return factory


@contextlib.asynccontextmanager
async def hub_peer_links() -> AsyncIterator[Pair]:
    """A peer's view of a MemoryHub (the gateway side) against that device's end;
    a second device on the same hub is there too, and must not disturb it."""
    hub = memory_hub([1, 2], mtu=MTU)
    view = hub.link(1)
    other = hub.link(2)
    try:
        yield view, hub.device(1)
        assert other.closed is False
    finally:
        await hub.aclose()


@contextlib.asynccontextmanager
async def line_hub_links() -> AsyncIterator[Pair]:
    """The one peer's view of a LinkHub over an in-memory pair."""
    a, b = memory_pair(mtu=MTU)
    hub = LinkHub(a, address="dev")
    try:
        yield hub.link("dev"), b
    finally:
        await hub.aclose()
        await b.aclose()


def lora_links(tmp_path: Path) -> PairFactory:
    """The gateway hub's view of device 1 against the device hub's view of the
    gateway, RAK3172 modems in lora-sim (real ptys), air at 100 times real time."""

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[Pair]:
        params = LoRaParams(sf=7, bw=250_000)
        fast = {"time_scale": 0.01, "duty_cycle": 1.0}
        gw_path, dev_path = tmp_path / "gw", tmp_path / "dev"
        async with LoRaSim("rak3172", [gw_path, dev_path], params=params, plan=EU868, **fast):  # type: ignore[arg-type]
            gw = await ModemHub.open(str(gw_path), "rak3172", params, peers=(1,), mtu=MTU, **fast)
            dev = await ModemHub.open(
                str(dev_path), "rak3172", params, address=1, peers=(0,), mtu=MTU, **fast
            )
            try:
                yield gw.link(1), dev.link(0)
            finally:
                await gw.aclose()
                await dev.aclose()

    return factory


@pytest.fixture(
    params=["memory", "pty", "linesim", "secure", "hub-peer", "line-hub", "lora-rak3172"]
)
def make_pair(request: pytest.FixtureRequest, tmp_path: Path) -> PairFactory:
    if request.param == "lora-rak3172":
        return lora_links(tmp_path)
    if request.param == "memory":
        return memory_links
    if request.param == "hub-peer":
        return hub_peer_links
    if request.param == "line-hub":
        return line_hub_links
    if request.param == "secure":
        return secure_links
    if request.param == "pty":
        return pty_links
    return linesim_links(tmp_path)


def _half_duplex(link: Link) -> bool:
    return isinstance(link, PeerLink) and isinstance(link.hub, ModemHub)


def _frame(size: int, rng: random.Random) -> bytes:
    kind = size % 4
    if kind == 0:
        return bytes(size)  # all delimiters: worst case for COBS
    if kind == 1:
        return b"\xff" * size
    return bytes(rng.randrange(256) for _ in range(size))


# --- the conformance suite ----------------------------------------------------


@pytest.mark.asyncio
async def test_every_size_up_to_mtu_both_ways(make_pair: PairFactory) -> None:
    rng = random.Random(5)
    frames = [_frame(size, rng) for size in range(1, MTU + 1)]
    async with make_pair() as (a, b):
        assert a.mtu == b.mtu == MTU

        async def pump(src: Link, dst: Link, items: list[bytes]) -> list[bytes]:
            async def sender() -> None:
                for item in items:
                    await src.send(item)

            task = asyncio.create_task(sender())
            got = [await dst.receive() for _ in items]
            await task
            return got

        async with asyncio.timeout(20):
            if _half_duplex(a):  # a radio loses what arrives while it sends: one way at a time
                forward = await pump(a, b, frames)
                backward = await pump(b, a, frames[::-7])
            else:
                forward, backward = await asyncio.gather(
                    pump(a, b, frames), pump(b, a, frames[::-7])
                )
        assert forward == frames
        assert backward == frames[::-7]


@pytest.mark.asyncio
async def test_many_frames_arrive_in_order(make_pair: PairFactory) -> None:
    async with make_pair() as (a, b):
        frames = [i.to_bytes(2, "little") + bytes(i % 7) for i in range(400)]
        for frame in frames:
            await a.send(frame)
        async with asyncio.timeout(20):
            got = [await b.receive() for _ in frames]
        assert got == frames


@pytest.mark.asyncio
async def test_closed_link_refuses_send_and_receive(make_pair: PairFactory) -> None:
    async with make_pair() as (a, _):
        await a.aclose()
        await a.aclose()  # idempotent
        with pytest.raises(ClosedError):
            await a.receive()
        with pytest.raises(ClosedError) as info:
            await a.send(b"x")
        assert info.value.reason is Reason.CLOSED


@pytest.mark.asyncio
async def test_close_wakes_a_waiting_receive(make_pair: PairFactory) -> None:
    async with make_pair() as (_, b):
        waiting = asyncio.create_task(b.receive())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await b.aclose()
        async with asyncio.timeout(5):
            with pytest.raises(ClosedError):
                await waiting


@pytest.mark.asyncio
async def test_cancelled_receive_loses_no_frame(make_pair: PairFactory) -> None:
    async with make_pair() as (a, b):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await b.receive()
        await a.send(b"still here")
        async with asyncio.timeout(5):
            assert await b.receive() == b"still here"


@pytest.mark.asyncio
async def test_async_context_manager_closes(make_pair: PairFactory) -> None:
    async with make_pair() as (a, b):
        async with a as entered:
            assert entered is a
            await a.send(b"ping")
            async with asyncio.timeout(5):
                assert await b.receive() == b"ping"
        with pytest.raises(ClosedError):
            await a.receive()
        with pytest.raises(ClosedError):
            await a.send(b"x")


@pytest.mark.asyncio
async def test_bad_frames_are_refused(make_pair: PairFactory) -> None:
    async with make_pair() as (a, _):
        with pytest.raises(TransportError) as info:
            # a frame body (msgpack array bytes): on a secure link a body that starts
            # below 0x80 is compact DATA, one byte longer (SPEC 8.8), tested below
            await a.send(b"\x90" * (MTU + 1))
        assert info.value.reason is Reason.TOO_LARGE
        if isinstance(a, SecureLink):
            with pytest.raises(TransportError) as info:
                await a.send(bytes(MTU + 2))
            assert info.value.reason is Reason.TOO_LARGE
        with pytest.raises(TransportError) as info:
            await a.send(b"")
        assert info.value.reason is Reason.BAD_FRAME


# --- in-memory pair ----------------------------------------------------------


@pytest.mark.asyncio
async def test_memory_peer_close_drains_then_closes() -> None:
    a, b = memory_pair(mtu=16)
    await a.send(b"one")
    await a.send(b"two")
    await a.aclose()
    assert await b.receive() == b"one"
    assert await b.receive() == b"two"
    with pytest.raises(ClosedError):
        await b.receive()
    with pytest.raises(ClosedError):
        await b.send(b"x")
    await b.aclose()


# --- SerialLink specifics ------------------------------------------------------


@pytest.mark.asyncio
async def test_serial_link_skips_noise_and_damaged_frames() -> None:
    async with pty_links() as (link, raw):
        assert isinstance(link, SerialLink) and isinstance(raw, MasterFdLink)
        damaged = bytearray(encode_frame(b"damaged frame"))
        damaged[5] ^= 0x10
        await raw.write_raw(
            b"boot: hello\r\n"  # a device printing before the protocol starts
            + encode_frame(b"first")
            + bytes(damaged)
            + encode_frame(bytes(MTU + 1))  # oversize for this link
            + b"\x13\x37"
            + encode_frame(b"second")
        )
        async with asyncio.timeout(5):
            assert await link.receive() == b"first"
            assert await link.receive() == b"second"
        stats = link.stats
        assert stats.frames == 2
        assert stats.crc_errors + stats.cobs_errors >= 2  # the banner, the damaged frame
        assert stats.oversize == 1
        assert stats.garbage_bytes > 0


@pytest.mark.asyncio
async def test_serial_link_open_failure_names_the_port(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-tty")
    with pytest.raises(TransportError) as info:
        await SerialLink.open(missing, 115200)
    assert missing in str(info.value)
    assert info.value.reason is Reason.IO_ERROR


@pytest.mark.asyncio
async def test_serial_link_reports_a_vanished_port() -> None:
    master, slave = os.openpty()
    link = await SerialLink.open(os.ttyname(slave), 115200, mtu=MTU)
    os.close(slave)
    os.write(master, encode_frame(b"last words"))
    await asyncio.sleep(0.05)
    os.close(master)  # hang up: reading the slave now fails
    async with asyncio.timeout(5):
        assert await link.receive() == b"last words"
        with pytest.raises(TransportError) as info:
            await link.receive()
    assert link.port in str(info.value)
    with pytest.raises(TransportError):
        await link.send(b"x")
    await link.aclose()


@pytest.mark.asyncio
async def test_serial_link_loop_url_without_a_file_descriptor() -> None:
    # pyserial's loop:// echoes what is written and has no fd: the worker-thread path.
    async with await SerialLink.open("loop://", 115200, mtu=64) as link:
        frames = [b"\x00" * 3, b"abc", bytes(range(1, 65))]
        for frame in frames:
            await link.send(frame)
        async with asyncio.timeout(5):
            assert [await link.receive() for _ in frames] == frames
    with pytest.raises(ClosedError):
        await link.receive()


@pytest.mark.asyncio
async def test_serial_link_socket_url() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with await SerialLink.open(f"socket://127.0.0.1:{port}", mtu=MTU) as link:
            await link.send(b"over tcp\x00")
            async with asyncio.timeout(5):
                assert await link.receive() == b"over tcp\x00"
    finally:
        server.close()
        await server.wait_closed()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.asyncio
async def test_serial_link_closes_cleanly(tmp_path: Path) -> None:
    before = _open_fds()
    async with linesim_links(tmp_path)() as (a, b):
        await a.send(b"x" * 100)
        async with asyncio.timeout(5):
            assert await b.receive() == b"x" * 100
        await a.send(b"unread at close")
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert _open_fds() == before
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_device_and_gateway_bind_the_same_prologue() -> None:
    from otaferry.device_fw.serve import LINK_PROLOGUE

    assert LINK_PROLOGUE == PROLOGUE


# --- the board on the bench (issue [N] 5) ------------------------------------------


def test_rfc2217_urls_get_ign_set_control_unless_they_say_otherwise() -> None:
    from otaferry.transport.serial_link import rfc2217_url

    assert rfc2217_url("rfc2217://host:4000") == "rfc2217://host:4000?ign_set_control"
    assert rfc2217_url("rfc2217://h:1?logging=debug") == "rfc2217://h:1?logging=debug&ign_set_control"
    assert rfc2217_url("rfc2217://h:1?ign_set_control") == "rfc2217://h:1?ign_set_control"
    assert rfc2217_url("/dev/ttyUSB0") == "/dev/ttyUSB0"


@pytest.mark.asyncio
async def test_opening_holds_dtr_and_rts_inactive_and_reset_is_explicit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ESP32 dev kit resets when RTS (EN) goes active: opening the port must not
    move the lines; --before/--after reset pulse EN and leave both inactive."""
    import serial

    moves: list[tuple[str, bool]] = []
    real = serial.serial_for_url

    def watched(*args: object, **kw: object) -> object:
        ser = real(*args, **kw)
        cls = type(ser)

        class Watched(cls):  # type: ignore[misc, valid-type]
            @cls.rts.setter  # type: ignore[attr-defined, untyped-decorator]
            def rts(self, value: bool) -> None:
                moves.append(("rts", value))
                cls.rts.fset(self, value)  # type: ignore[attr-defined]

        ser.__class__ = Watched
        return ser

    monkeypatch.setattr(serial, "serial_for_url", watched)
    async with await SerialLink.open("loop://", 115200, mtu=64) as link:
        assert link._ser.dtr is False and link._ser.rts is False
    assert ("rts", True) not in moves
    moves.clear()
    async with await SerialLink.open("loop://", 115200, mtu=64, before="reset", after="reset"):
        pass
    assert moves.count(("rts", True)) == 2 and moves[-1] == ("rts", False)


@pytest.mark.asyncio
async def test_serial_link_works_above_descriptor_1024() -> None:
    """pyserial's read used select(), which refuses descriptors >= 1024: a gateway with
    a thousand open files could not read its serial ports (found by bench gateway)."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"this process may open only {soft} files")  # not the feature: the host
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        async with pty_links() as (link, raw):
            assert link._protocol.decoder is not None
            await raw.send(b"above 1024")
            async with asyncio.timeout(5):
                assert await link.receive() == b"above 1024"
            await link.send(b"and back")
            async with asyncio.timeout(5):
                assert await raw.receive() == b"and back"
    finally:
        for fd in filler:
            os.close(fd)
