"""The link contract every transport implements, and an in-memory pair.

A :class:`Link` carries whole frames (msgpack frame bodies), never a byte
stream: delimiting, checking and dropping damaged frames happen below it. The
contract, checked for every implementation by ``tests/test_links.py``:

- ``mtu``: the largest frame body ``send`` accepts, in bytes.
- ``pacing``: the medium's budget (``protocol/pacing.py``): ``send`` returns
  once the frame has left as the budget allows, so a caller stamps departures.
- ``await send(frame)``: queue one frame of 1..mtu bytes for the peer. It may
  wait for room (flow control) but not for the peer to receive it. A frame is
  delivered whole or not at all; links may lose frames (UART noise, LoRa) but
  never deliver a damaged one. Frames a link does deliver arrive in order.
- ``await receive()``: the next frame body. No timeout of its own: wrap it in
  ``asyncio.timeout()``; cancelling it loses no frame.
- ``await aclose()``: idempotent. Afterwards ``send`` and ``receive`` raise
  :class:`ClosedError`; a ``receive`` waiting at that moment is woken with
  :class:`ClosedError` too. Frames still queued for reading are discarded.
- ``async with link:`` closes the link on exit.

Errors come only from ``otaferry.protocol.errors``: :class:`TransportError`
(I/O failure, oversize frame), :class:`ClosedError` (the link, or the peer's
end of an in-memory pair, is closed), :class:`TimeoutError_`.
"""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Generic, Self, TypeVar

from ..protocol.errors import ClosedError, Reason, TransportError
from ..protocol.pacing import Pacing, Unlimited

ErrorFactory = Callable[[], TransportError]
T = TypeVar("T")


_UNLIMITED = Unlimited()


class ClosesOnExit:
    """``async with x:`` closes ``x`` (its ``aclose``) on the way out."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Link(ClosesOnExit, abc.ABC):
    """Abstract frame link; see the module docstring for the contract."""

    @property
    @abc.abstractmethod
    def mtu(self) -> int:
        """Largest frame body, in bytes, that :meth:`send` accepts."""

    @property
    def pacing(self) -> Pacing:
        """The medium's budget (``protocol/pacing.py``); ``send`` already obeys it,
        this says how fast the medium is (window sizing, first timeouts)."""
        return _UNLIMITED

    @abc.abstractmethod
    async def send(self, frame: bytes) -> None: ...

    @abc.abstractmethod
    async def receive(self) -> bytes: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


def check_frame(frame: bytes, mtu: int) -> bytes:
    """Return ``frame`` as bytes if it may be sent on a link with this MTU."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise TransportError(f"a frame is bytes, not {type(frame).__name__}", Reason.BAD_FRAME)
    data = bytes(frame)
    if not data:
        raise TransportError("empty frame", Reason.BAD_FRAME)
    if len(data) > mtu:
        raise TransportError(
            f"frame of {len(data)} bytes exceeds the link MTU of {mtu}",
            Reason.TOO_LARGE,
            expected=mtu,
            actual=len(data),
        )
    return data


class Inbox(Generic[T]):
    """Items (frames; for a hub, (peer, frame) pairs) waiting to be received,
    and the error that ends the wait.

    Any number of coroutines may wait in :meth:`get`. :meth:`fail` ends the
    inbox: with ``drain=True`` (the peer went away) frames already queued are
    still handed out first; with ``drain=False`` (closed locally) they are not.
    Each raise builds a fresh exception from the factory, so a traceback never
    accumulates across callers.
    """

    def __init__(self) -> None:
        self._frames: deque[T] = deque()
        self._error: ErrorFactory | None = None
        self._drain = True
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def put(self, frame: T) -> None:
        if self._error is None:
            self._frames.append(frame)
            self._changed.set()

    def fail(self, error: ErrorFactory, *, drain: bool) -> None:
        """End the inbox. A local close (``drain=False``) overrides an earlier failure."""
        if self._error is None or not drain:
            self._error = error
            self._drain = drain
        if not drain:
            self._frames.clear()
        self._changed.set()

    async def get(self) -> T:
        while True:
            if self._frames:
                return self._frames.popleft()
            if self._error is not None:
                raise self._error()
            self._changed.clear()
            await self._changed.wait()


class FrameInbox(Inbox[bytes]):
    """An inbox of frame bodies."""


class MemoryLink(Link):
    """One end of :func:`memory_pair`: frames go straight to the peer's inbox.

    Lossless, in order and unbounded (``send`` never waits for room; it yields
    once so a busy sender cannot starve its peer). When one end closes, the
    other can still receive what was already sent, then gets
    :class:`ClosedError`, and its ``send`` raises :class:`ClosedError`.
    """

    def __init__(self, mtu: int, name: str) -> None:
        self._mtu = mtu
        self._name = name
        self._inbox = FrameInbox()
        self._peer: MemoryLink | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryLink({self._name!r}, mtu={self._mtu})"

    @property
    def mtu(self) -> int:
        return self._mtu

    def _closed_error(self) -> ClosedError:
        return ClosedError(f"memory link {self._name} is closed")

    async def send(self, frame: bytes) -> None:
        if self._closed:
            raise self._closed_error()
        data = check_frame(frame, self._mtu)
        peer = self._peer
        if peer is None or peer._closed:
            raise ClosedError(f"memory link {self._name}: the peer is closed")
        peer._inbox.put(data)
        await asyncio.sleep(0)

    async def receive(self) -> bytes:
        if self._closed:
            raise self._closed_error()
        return await self._inbox.get()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.fail(self._closed_error, drain=False)
        peer = self._peer
        if peer is not None:
            name = self._name
            peer._inbox.fail(
                lambda: ClosedError(f"memory link {name}: the peer closed"), drain=True
            )


def memory_pair(mtu: int = 240) -> tuple[MemoryLink, MemoryLink]:
    """Two connected in-memory links, for protocol tests without I/O."""
    if mtu < 1:
        raise ValueError("mtu must be >= 1")
    a = MemoryLink(mtu, "a")
    b = MemoryLink(mtu, "b")
    a._peer = b
    b._peer = a
    return a, b
