"""The hub contract: one medium, many peers, each with an address.

A :class:`Hub` is what a gateway holds for one medium: a LoRa channel with a
modem on it, an MQTT broker, an RS-485 bus — or a point-to-point serial line,
which is a hub of one (:class:`LinkHub`). The contract, checked for every
implementation by ``tests/test_hubs.py``:

- ``peers``: the addresses the hub knows now (may grow as peers speak up).
- ``mtu(peer)``: the largest frame body ``send`` accepts for that peer.
- ``await send(peer, body)``: one frame to one peer. It returns once the frame
  has *left* (the medium's pacing budget allowed it and it was handed to the
  wire), so a caller that stamps its send time afterwards stamps the departure.
  Delivery is whole or not at all; frames that are delivered arrive in order.
- ``await broadcast(body)``: one frame to every peer, at most
  ``broadcast_mtu`` bytes; on a point-to-point line that is the one peer.
- ``await receive() -> (peer, body)``: the next frame from any peer.
- ``pacing``: the medium's budget (:mod:`otaferry.protocol.pacing`), shared by
  every session on it.
- ``link(peer)``: a :class:`Link` view that sends to and receives from that
  peer only, so one :class:`~otaferry.transport.updater.Updater` (and one
  :class:`~otaferry.transport.secure_link.SecureLink`) runs per device on a
  shared medium. Once any view exists, the hub routes every received frame to
  its peer's view (frames from peers without one are counted in
  ``stats["unrouted"]`` and dropped); do not mix views and ``receive()``.
- ``await aclose()``: idempotent; closes every view; afterwards everything
  raises :class:`ClosedError`.

Errors come only from ``otaferry.protocol.errors``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Hashable, Iterable

from ..protocol.errors import ClosedError, Reason, TransportError
from ..protocol.pacing import Pacing, Unlimited
from .link import ClosesOnExit, FrameInbox, Inbox, Link, check_frame

__all__ = ["Address", "Hub", "LinkHub", "MemoryHub", "PeerLink", "memory_hub"]

Address = Hashable


class Hub(ClosesOnExit, abc.ABC):
    """Abstract addressed medium; see the module docstring for the contract."""

    def __init__(self) -> None:
        self._views: dict[Address, PeerLink] = {}
        self._pump: asyncio.Task[None] | None = None
        self.stats: dict[str, int] = {"unrouted": 0}

    # --- what a medium implements

    @property
    @abc.abstractmethod
    def peers(self) -> frozenset[Address]: ...

    @abc.abstractmethod
    def mtu(self, peer: Address) -> int: ...

    @property
    @abc.abstractmethod
    def broadcast_mtu(self) -> int: ...

    @property
    @abc.abstractmethod
    def pacing(self) -> Pacing: ...

    @abc.abstractmethod
    async def send(self, peer: Address, body: bytes) -> None: ...

    @abc.abstractmethod
    async def broadcast(self, body: bytes) -> None: ...

    @abc.abstractmethod
    async def receive(self) -> tuple[Address, bytes]: ...

    @abc.abstractmethod
    async def _close_medium(self) -> None: ...

    # --- shared by every medium

    def link(self, peer: Address) -> PeerLink:
        """The :class:`Link` to one peer (made once; the same view after that)."""
        view = self._views.get(peer)
        if view is None or view.closed:
            view = PeerLink(self, peer)
            self._views[peer] = view
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._route())
        return view

    async def _route(self) -> None:
        try:
            while True:
                peer, body = await self.receive()
                view = self._views.get(peer)
                if view is None or view.closed:
                    self.stats["unrouted"] += 1
                else:
                    view._inbox.put(body)
        except TransportError as exc:
            error = exc
            for view in list(self._views.values()):
                view._inbox.fail(lambda e=error: type(e)(e.message, e.reason), drain=True)  # type: ignore[misc]

    async def aclose(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
        for view in list(self._views.values()):
            view._shut("hub closed")
        await self._close_medium()


class PeerLink(Link):
    """A :class:`Link` to one peer of a hub (see :meth:`Hub.link`)."""

    def __init__(self, hub: Hub, peer: Address) -> None:
        self.hub = hub
        self.peer = peer
        self._inbox = FrameInbox()
        self.closed = False

    def __repr__(self) -> str:
        return f"PeerLink({self.peer!r} on {type(self.hub).__name__})"

    @property
    def mtu(self) -> int:
        return self.hub.mtu(self.peer)

    @property
    def pacing(self) -> Pacing:
        return self.hub.pacing

    def _error(self) -> ClosedError:
        return ClosedError(f"link to peer {self.peer!r} is closed")

    def _shut(self, why: str) -> None:
        self.closed = True
        self._inbox.fail(lambda: ClosedError(f"link to peer {self.peer!r}: {why}"), drain=False)

    async def send(self, frame: bytes) -> None:
        if self.closed:
            raise self._error()
        await self.hub.send(self.peer, frame)

    async def receive(self) -> bytes:
        if self.closed:
            raise self._error()
        return await self._inbox.get()

    async def aclose(self) -> None:
        """Closes this view only; the hub and its other peers go on."""
        if not self.closed:
            self._shut("closed")


class LinkHub(Hub):
    """A point-to-point :class:`Link` as a hub of one peer (``address``)."""

    def __init__(self, link: Link, address: Address = 0) -> None:
        super().__init__()
        self.inner = link
        self.address = address

    @property
    def peers(self) -> frozenset[Address]:
        return frozenset({self.address})

    def _check_peer(self, peer: Address) -> None:
        if peer != self.address:
            raise TransportError(
                f"no peer {peer!r} on this line (its one peer is {self.address!r})",
                Reason.BAD_STATE,
            )

    def mtu(self, peer: Address) -> int:
        self._check_peer(peer)
        return self.inner.mtu

    @property
    def broadcast_mtu(self) -> int:
        return self.inner.mtu

    @property
    def pacing(self) -> Pacing:
        return self.inner.pacing

    async def send(self, peer: Address, body: bytes) -> None:
        self._check_peer(peer)
        await self.inner.send(body)

    async def broadcast(self, body: bytes) -> None:
        await self.inner.send(body)

    async def receive(self) -> tuple[Address, bytes]:
        return self.address, await self.inner.receive()

    def link(self, peer: Address) -> PeerLink:
        self._check_peer(peer)
        return super().link(peer)

    async def _close_medium(self) -> None:
        await self.inner.aclose()


class _DeviceEnd(Link):
    """A device's own end of a :class:`MemoryHub`: a plain point-to-point Link."""

    def __init__(self, hub: MemoryHub, address: Address, mtu: int) -> None:
        self._hub = hub
        self.address = address
        self._mtu = mtu
        self._inbox = FrameInbox()
        self._closed = False

    @property
    def mtu(self) -> int:
        return self._mtu

    async def send(self, frame: bytes) -> None:
        if self._closed:
            raise ClosedError(f"device end {self.address!r} is closed")
        data = check_frame(frame, self._mtu)
        if self._hub._closed:
            raise ClosedError("the hub is closed")
        self._hub._inbox.put((self.address, data))
        await asyncio.sleep(0)

    async def receive(self) -> bytes:
        if self._closed:
            raise ClosedError(f"device end {self.address!r} is closed")
        return await self._inbox.get()

    async def aclose(self) -> None:
        self._closed = True
        self._inbox.fail(lambda: ClosedError(f"device end {self.address!r} is closed"), drain=False)


class MemoryHub(Hub):
    """An in-memory broadcast medium for protocol tests and benchmarks: lossless,
    in order, with a per-peer MTU and an optional pacing budget. Each device's
    end is a plain :class:`Link` (:meth:`device`)."""

    def __init__(self, mtus: dict[Address, int], *, pacing: Pacing | None = None) -> None:
        super().__init__()
        if not mtus or min(mtus.values()) < 1:
            raise ValueError("a memory hub needs peers with mtu >= 1")
        self._mtus = dict(mtus)
        self._ends = {a: _DeviceEnd(self, a, m) for a, m in self._mtus.items()}
        self._inbox: Inbox[tuple[Address, bytes]] = Inbox()
        self._pacing: Pacing = pacing if pacing is not None else Unlimited()
        self._tx = asyncio.Lock()
        self._closed = False

    def device(self, peer: Address) -> Link:
        """The device's end for ``peer``."""
        return self._ends[peer]

    @property
    def peers(self) -> frozenset[Address]:
        return frozenset(self._mtus)

    def mtu(self, peer: Address) -> int:
        try:
            return self._mtus[peer]
        except KeyError:
            raise TransportError(f"no peer {peer!r} on this hub", Reason.BAD_STATE) from None

    @property
    def broadcast_mtu(self) -> int:
        return min(self._mtus.values())

    @property
    def pacing(self) -> Pacing:
        return self._pacing

    async def _leave(self, size: int) -> None:
        """Wait for the budget, then spend it (one frame on the medium at a time)."""
        async with self._tx:
            loop = asyncio.get_running_loop()
            wait = self._pacing.delay(size, loop.time())
            if wait > 0:
                await asyncio.sleep(wait)
            self._pacing.spend(size, loop.time())

    def _deliver(self, peer: Address, data: bytes) -> None:
        end = self._ends[peer]
        if not end._closed:
            end._inbox.put(data)

    async def send(self, peer: Address, body: bytes) -> None:
        if self._closed:
            raise ClosedError("the hub is closed")
        data = check_frame(body, self.mtu(peer))
        await self._leave(len(data))
        self._deliver(peer, data)
        await asyncio.sleep(0)

    async def broadcast(self, body: bytes) -> None:
        if self._closed:
            raise ClosedError("the hub is closed")
        data = check_frame(body, self.broadcast_mtu)
        await self._leave(len(data))
        for peer in self._ends:
            self._deliver(peer, data)
        await asyncio.sleep(0)

    async def receive(self) -> tuple[Address, bytes]:
        if self._closed:
            raise ClosedError("the hub is closed")
        return await self._inbox.get()

    async def _close_medium(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.fail(lambda: ClosedError("the hub is closed"), drain=False)
        for end in self._ends.values():
            end._inbox.fail(lambda: ClosedError("the hub closed"), drain=True)


def memory_hub(
    peers: Iterable[Address], mtu: int = 240, *, pacing: Pacing | None = None
) -> MemoryHub:
    """A :class:`MemoryHub` with every peer at ``mtu``."""
    return MemoryHub(dict.fromkeys(peers, mtu), pacing=pacing)
