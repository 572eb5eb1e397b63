"""A Sender and a Receiver joined in memory, and helpers to start and judge sessions."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ....device_fw import receiver as RX
from ....protocol.frames import Data, decode_frame
from ....protocol.session import Completed, Event, Failed, Rejected, Sender
from ....protocol.shared_artifact import Artifact
from .audit import Guard
from .common import reason_name


class Link:
    """A Sender and a Receiver joined in memory: lossless, in order, no latency, fake clock.

    Without ``guard`` everything raised (a ``PowerCut`` above all) propagates;
    with one, exceptions out of either side are recorded and the run goes on.
    """

    def __init__(
        self,
        sender: Sender,
        rx: RX.Receiver | None,
        *,
        now: float = 0.0,
        guard: Guard | None = None,
    ) -> None:
        self.sender = sender
        self.rx = rx
        self.now = now
        self.guard = guard
        self.events: list[Event] = []
        self.up: list[bytes] = []  # host -> device bodies, in order
        self.down: list[bytes] = []
        self.stalled = False

    def _call(self, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self.guard is None:
            return fn(*args)
        try:
            return fn(*args)
        except Exception as exc:
            self.guard.exception(where, exc)
            return None

    def _drain(self) -> None:
        while (event := self.sender.next_event()) is not None:
            self.events.append(event)

    def to_device(self, body: bytes) -> None:
        self.up.append(body)
        if self.rx is None:
            return
        replies = self._call("Receiver.receive_frame", self.rx.receive_frame, body, self.now)
        for reply in replies or []:
            if self.guard is not None:
                self.guard.check_reply(reply, self.rx.mtu)
            self.to_sender(reply)

    def to_sender(self, body: bytes) -> None:
        self.down.append(body)
        self._call("Sender.receive_frame", self.sender.receive_frame, body, self.now)
        self._drain()

    def step(self) -> bool:
        """One round; False once the sender is done (or stuck with no timer)."""
        out = self._call("Sender.datagrams_to_send", self.sender.datagrams_to_send, self.now)
        self._drain()
        if out:
            for body in out:
                if self.guard is not None:
                    self.guard.check_sent(body, self.sender.mtu)
                self.to_device(body)
            self.now += 0.001
            return True
        if self.sender.done:
            return False
        deadline = self.sender.get_timer()
        if deadline is None:
            self.stalled = True
            return False
        self.now = max(self.now, deadline)
        self._call("Sender.handle_timer", self.sender.handle_timer, self.now)
        self._drain()
        return True

    def run(self, max_steps: int = 200_000) -> Link:
        for _ in range(max_steps):
            if not self.step():
                return self
        self.stalled = True
        return self

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def data_segments(self, start: int = 0) -> set[int]:
        """Segments the sender sent DATA for, from up[start:]."""
        out = set()
        for body in self.up[start:]:
            frame = decode_frame(body)
            if isinstance(frame, Data):
                out.add(frame.segment)
        return out


@functools.lru_cache(maxsize=32)
def parsed(art: bytes) -> Artifact:
    """The artifact parsed once (the campaigns send the same few many times)."""
    return Artifact.parse(art)


def make_sender(art: bytes, *, mtu: int = 1024, window: int = 4, **kw: Any) -> Sender:
    kw.setdefault("rto", 0.5)
    return Sender(parsed(art), mtu=mtu, window=window, **kw)


def outcome(events: list[Event]) -> str:
    for e in events:
        if isinstance(e, Completed):
            return "completed"
        if isinstance(e, Rejected):
            return f"rejected:{reason_name(e.reason)}" + (" (local)" if e.local else "")
        if isinstance(e, Failed):
            return f"failed:{reason_name(e.reason)}"
    return "open"
