"""Hub conformance suite (transport/hub.py), run against every hub.

The same tests run over: an in-memory broadcast medium with three peers; a
point-to-point in-memory pair as a hub of one; a SerialLink joined to the far
SerialLink through the line simulator (real pseudo-terminals) as a hub of one.
Each peer's :class:`PeerLink` view also runs the link conformance suite in
``tests/test_links.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from otaferry.protocol.errors import ClosedError, Reason, TransportError
from otaferry.protocol.lora import EU868, LoRaParams
from otaferry.protocol.pacing import AirTime, LineRate, Unlimited
from otaferry.transport.hub import Address, Hub, LinkHub, MemoryHub, memory_hub
from otaferry.transport.linesim import LineSim
from otaferry.transport.link import Link, memory_pair
from otaferry.transport.lora_hub import ModemHub
from otaferry.transport.lorasim import LoRaSim
from otaferry.transport.serial_link import SerialLink

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("error")]

MTU = 200
Medium = tuple[Hub, dict[Address, Link]]
MediumFactory = Callable[[], AbstractAsyncContextManager[Medium]]


@contextlib.asynccontextmanager
async def memory_medium() -> AsyncIterator[Medium]:
    hub = memory_hub(["a", "b", "c"], mtu=MTU)
    async with hub:
        yield hub, {p: hub.device(p) for p in ("a", "b", "c")}


@contextlib.asynccontextmanager
async def pair_medium() -> AsyncIterator[Medium]:
    a, b = memory_pair(mtu=MTU)
    async with LinkHub(a, address=7) as hub, b:
        yield hub, {7: b}


@contextlib.asynccontextmanager
async def serial_medium(tmp_path: Path) -> AsyncIterator[Medium]:
    async with LineSim(tmp_path / "a", tmp_path / "b", baud=921600, seed=3) as sim:
        gw = await SerialLink.open(str(sim.path_a), 921600, mtu=MTU)
        dev = await SerialLink.open(str(sim.path_b), 921600, mtu=MTU)
        async with LinkHub(gw, address=1) as hub, dev:
            yield hub, {1: dev}


@contextlib.asynccontextmanager
async def lora_medium(tmp_path: Path, modem: str) -> AsyncIterator[Medium]:
    """The gateway's modem hub against two device modems (their own hubs' views of
    the gateway, address 0) through lora-sim's emulated modems on real ptys; the
    air runs 100 times real time without a duty cycle (hubs test the contract)."""
    params = LoRaParams(sf=7, bw=250_000)
    fast = {"time_scale": 0.01, "duty_cycle": 1.0}
    paths = [tmp_path / n for n in ("gw", "d1", "d2")]
    async with LoRaSim(modem, paths, params=params, plan=EU868, seed=2, **fast):  # type: ignore[arg-type]
        gw = await ModemHub.open(str(paths[0]), modem, params, peers=(1, 2), mtu=MTU, **fast)
        ends = [
            await ModemHub.open(
                str(paths[i]), modem, params, address=i, peers=(0,), mtu=MTU, **fast
            )
            for i in (1, 2)
        ]
        try:
            async with gw:
                yield gw, {1: ends[0].link(0), 2: ends[1].link(0)}
        finally:
            for end in ends:
                await end.aclose()


@pytest.fixture(params=["memory", "pair", "serial", "lora-rak3172", "lora-e22"])
def make_medium(request: pytest.FixtureRequest, tmp_path: Path) -> MediumFactory:
    if request.param == "memory":
        return memory_medium
    if request.param == "pair":
        return pair_medium
    if request.param.startswith("lora-"):
        return lambda: lora_medium(tmp_path, request.param[5:])
    return lambda: serial_medium(tmp_path)


async def _get(link: Link) -> bytes:
    async with asyncio.timeout(5):
        return await link.receive()


async def _hub_get(hub: Hub) -> tuple[Address, bytes]:
    async with asyncio.timeout(5):
        return await hub.receive()


@pytest.mark.asyncio
async def test_send_reaches_only_its_peer_in_order(make_medium: MediumFactory) -> None:
    async with make_medium() as (hub, devices):
        assert hub.peers == frozenset(devices)
        for peer in devices:
            for i in range(5):
                await hub.send(peer, b"%s:%d" % (str(peer).encode(), i))
        for peer, dev in devices.items():
            got = [await _get(dev) for _ in range(5)]
            assert got == [b"%s:%d" % (str(peer).encode(), i) for i in range(5)]


@pytest.mark.asyncio
async def test_receive_names_the_sender(make_medium: MediumFactory) -> None:
    async with make_medium() as (hub, devices):
        for peer, dev in devices.items():
            await dev.send(b"from " + str(peer).encode())
            await dev.send(b"again " + str(peer).encode())
        got = [await _hub_get(hub) for _ in range(2 * len(devices))]
        for peer in devices:
            mine = [body for who, body in got if who == peer]
            assert mine == [b"from " + str(peer).encode(), b"again " + str(peer).encode()]


@pytest.mark.asyncio
async def test_every_size_up_to_the_peer_mtu_and_no_more(make_medium: MediumFactory) -> None:
    async with make_medium() as (hub, devices):
        peer, dev = next(iter(devices.items()))
        assert hub.mtu(peer) == MTU
        for size in (1, 2, MTU - 1, MTU):
            body = bytes(range(256))[:size] * 1 if size <= 256 else bytes(size)
            await hub.send(peer, body)
            assert await _get(dev) == body
        with pytest.raises(TransportError) as err:
            await hub.send(peer, bytes(MTU + 1))
        assert err.value.reason == Reason.TOO_LARGE
        with pytest.raises(TransportError):
            await hub.send(peer, b"")


@pytest.mark.asyncio
async def test_unknown_peer_is_refused_by_name(make_medium: MediumFactory) -> None:
    async with make_medium() as (hub, _devices):
        with pytest.raises(TransportError, match="no peer 'nobody'"):
            await hub.send("nobody", b"x")
        with pytest.raises(TransportError):
            hub.mtu("nobody")


@pytest.mark.asyncio
async def test_broadcast_reaches_every_peer(make_medium: MediumFactory) -> None:
    async with make_medium() as (hub, devices):
        assert 1 <= hub.broadcast_mtu <= min(hub.mtu(p) for p in devices)
        await hub.broadcast(b"to all")
        for dev in devices.values():
            assert await _get(dev) == b"to all"
        with pytest.raises(TransportError):
            await hub.broadcast(bytes(hub.broadcast_mtu + 1))


@pytest.mark.asyncio
async def test_closed_hub_refuses_and_wakes_its_views(make_medium: MediumFactory) -> None:
    async with make_medium() as (hub, devices):
        peer = next(iter(devices))
        view = hub.link(peer)
        waiting = asyncio.ensure_future(view.receive())
        await asyncio.sleep(0.01)
        await hub.aclose()
        with pytest.raises(ClosedError):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(ClosedError):
            await hub.send(peer, b"x")
        with pytest.raises(ClosedError):
            await view.send(b"x")
        await hub.aclose()  # idempotent


@pytest.mark.asyncio
async def test_views_route_by_peer(make_medium: MediumFactory) -> None:
    async with make_medium() as (hub, devices):
        views = {p: hub.link(p) for p in devices}
        assert hub.link(next(iter(devices))) is views[next(iter(devices))]  # made once
        for peer, dev in devices.items():
            await dev.send(b"hello from " + str(peer).encode())
        for peer, view in views.items():
            assert await _get(view) == b"hello from " + str(peer).encode()
            assert view.mtu == hub.mtu(peer) and view.pacing is hub.pacing
            await view.send(b"reply")
            assert await _get(devices[peer]) == b"reply"


# --- specifics ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_memory_hub_per_peer_mtu_and_unrouted_frames() -> None:
    async with MemoryHub({"small": 51, "big": 222}) as hub:
        assert hub.mtu("small") == 51 and hub.mtu("big") == 222 and hub.broadcast_mtu == 51
        await hub.send("big", bytes(222))
        with pytest.raises(TransportError):
            await hub.send("small", bytes(52))
        view = hub.link("big")
        await hub.device("small").send(b"nobody listens for me")
        await hub.device("big").send(b"for the view")
        assert await _get(view) == b"for the view"
        assert hub.stats["unrouted"] == 1


@pytest.mark.asyncio
async def test_a_view_closing_leaves_the_hub_and_other_views_working() -> None:
    async with memory_hub([1, 2], mtu=64) as hub:
        one, two = hub.link(1), hub.link(2)
        await one.aclose()
        with pytest.raises(ClosedError):
            await one.send(b"x")
        await two.send(b"still here")
        assert await _get(hub.device(2)) == b"still here"
        assert hub.link(1) is not one  # a closed view is replaced by a fresh one


@pytest.mark.asyncio
async def test_send_returns_when_the_budget_lets_the_frame_go() -> None:
    """The medium's budget is obeyed inside send: on a 50 % duty cycle with 20 ms of
    air per frame, the third frame cannot leave before 80 ms."""
    air = AirTime(lambda n: 0.02, duty_cycle=0.5)
    async with memory_hub([1], mtu=64, pacing=air) as hub:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(3):
            await hub.send(1, b"x")
        assert loop.time() - t0 >= 0.08 - 0.005
        assert air.air_s == pytest.approx(0.06)


def test_pacing_budgets_are_pure_functions_of_time() -> None:
    free = Unlimited()
    assert free.delay(1000, 0.0) == 0.0 and free.line_rate is None
    line = LineRate(1000.0, burst=100)
    assert line.delay(100, 0.0) == 0.0
    line.spend(500, 0.0)  # the wire is busy until 0.5 s; 0.1 s of burst allowed
    assert line.delay(100, 0.0) == pytest.approx(0.4)
    assert line.delay(100, 0.45) == 0.0
    radio = AirTime(lambda n: n / 100, duty_cycle=0.01, dwell=0.4)
    assert radio.allowed(40) and not radio.allowed(41)
    radio.spend(10, 5.0)  # 0.1 s of air, then 9.9 s off
    assert radio.delay(10, 5.0) == pytest.approx(10.0)
    assert radio.delay(10, 20.0) == 0.0
    with pytest.raises(ValueError):
        AirTime(lambda n: 0.1, duty_cycle=0)
