"""A :class:`Link` whose frames cross inside the secure channel (SPEC.md section 9).

    async with await SerialLink.open(port, 115200, mtu=1024) as raw:
        link = await SecureLink.connect(raw, gateway_key, device_public)
        await Updater(link).push(ota)

The gateway is the handshake's initiator: ``connect`` sends MSG1 (again after
``rto``, doubling, while no MSG2 comes, up to ``retries`` times) and returns
once the channel is up; the handshake is the sans-IO ``protocol.handshake``
machine, and ``rto`` defaults to a few round trips of the inner link's medium
(``handshake_rto``: its line rate or air time and turnaround). Afterwards
every frame body is sealed (10 bytes: counter + AES-CCM-8 tag), so ``mtu``
is the inner link's minus 10. A device that lost the channel (it was reset)
answers sealed frames with REJECT(BAD_STATE); the link then runs a fresh
handshake by itself and the session above it resumes through its own
device-driven resume. Any other REJECT ends the link with a
:class:`RemoteError` carrying the device's reason. Frames that fail to open
(tampered, replayed, stale) are dropped and counted in ``stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from ..protocol.errors import ClosedError, Reason, RemoteError
from ..protocol.handshake import Handshake, handshake_rto
from ..protocol.pacing import Pacing
from ..protocol.secure import (
    OVERHEAD,
    Initiator,
    RecordKind,
    SecureChannel,
    open_resume,
    record_kind,
    resumption_secret,
)
from ..protocol.x25519keys import LinkPrivateKey, LinkPublicKey
from .link import Link, check_frame

__all__ = ["PROLOGUE", "SecureLink"]

PROLOGUE = b"otaferry/link/v1"


class SecureLink(Link):
    def __init__(
        self,
        inner: Link,
        static: LinkPrivateKey,
        device: LinkPublicKey,
        *,
        rto: float | None = None,
        retries: int = 8,
        max_rehandshakes: int = 20,
        on_retry: Callable[[int, float], None] | None = None,
    ) -> None:
        self.inner = inner
        self.static = static
        self.device = device
        self.rto = rto
        self.retries = retries
        self.max_rehandshakes = max_rehandshakes
        self.on_retry = on_retry  # (attempts so far, deadline of the next) while MSG1 waits
        self.channel: SecureChannel | None = None
        self.handshakes = 0
        self.dropped_records = 0
        # A re-handshake runs as its own task so that a caller's timeout
        # (the Updater waits on receive() with its timer) cannot cut it in half.
        self._hs_task: asyncio.Task[None] | None = None
        self._established_at = float("-inf")
        # handshakes since a record last opened: a link that lives across many
        # device reboots must not run out of re-handshakes
        self._in_a_row = 0
        self._resume_uid: bytes | None = None  # the update whose resumption may come

    @classmethod
    async def connect(
        cls, inner: Link, static: LinkPrivateKey, device: LinkPublicKey, **kw: Any
    ) -> SecureLink:
        link = cls(inner, static, device, **kw)
        await link.handshake()
        return link

    @property
    def mtu(self) -> int:
        return self.inner.mtu - OVERHEAD

    @property
    def pacing(self) -> Pacing:
        return self.inner.pacing

    async def handshake(self) -> None:
        """Run the KK handshake (MSG1 -> MSG2); raises RemoteError / TimeoutError_."""
        if self._in_a_row > self.max_rehandshakes:
            raise RemoteError("the device keeps losing the secure channel", Reason.BAD_STATE)
        self.handshakes += 1
        self._in_a_row += 1
        self.channel = None
        initiator = Initiator(self.static, self.device, LinkPrivateKey.generate(), PROLOGUE)
        keys = (self.static.public.key_id.hex(), self.device.key_id.hex())
        hs = Handshake(initiator, rto=self._rto(), retries=self.retries, keys=keys)
        loop = asyncio.get_running_loop()
        while not hs.done:  # the thin driver of a sans-IO machine
            for packet in hs.datagrams_to_send(loop.time()):
                await self.inner.send(packet)
                hs.departed(loop.time())
            deadline = hs.get_timer()
            try:
                async with asyncio.timeout_at(deadline):
                    packet = await self.inner.receive()
            except TimeoutError:
                hs.handle_timer(loop.time())
                if self.on_retry is not None and not hs.done:
                    self.on_retry(hs.attempts, hs.get_timer() or 0.0)
                continue
            hs.receive(packet, loop.time())
        self.dropped_records += hs.dropped
        if hs.error is not None:
            raise hs.error
        assert hs.channel is not None
        self.channel = hs.channel
        self._established_at = loop.time()

    def _rto(self) -> float:
        return self.rto if self.rto is not None else handshake_rto(self.inner.pacing)

    async def _settle(self) -> None:
        """Wait for a re-handshake in progress (shielded from our caller's cancel)."""
        task = self._hs_task
        if task is not None:
            try:
                await asyncio.shield(task)
            finally:
                if task.done():
                    self._hs_task = None
        if self.channel is None:
            raise ClosedError("secure link is not established")

    @property
    def compact_mtu(self) -> int:
        """The largest compact DATA body (SPEC 8.8) this link carries: one more than
        ``mtu``, as the short sealed record folds its first byte into the header."""
        return self.mtu + 1

    resumes = True
    """This link can resume its channel after the device's reboot (SPEC 9.11)."""

    def expect_resume(self, update_id: bytes) -> None:
        """The device accepted ``update_id`` in a session that asked for resumption
        (SPEC 8.9): after its DONE and reboot it may send a RESUME record made from
        the channel that carried that DONE. The secret is derived from the running
        channel when the record comes, so a RESUME opens only on the channel it was
        made from (not after a full handshake since) and only once (the resumed
        channel has no resume key)."""
        self._resume_uid = bytes(update_id)

    def _open_resume(self, packet: bytes) -> bytes | None:
        channel, uid = self.channel, self._resume_uid
        opened = None
        if channel is not None and channel.resume_key is not None and uid is not None:
            opened = open_resume(resumption_secret(channel.resume_key, uid), packet)
        if opened is None:
            self.dropped_records += 1
            return None
        self.channel, body = opened
        self._resume_uid = None
        self._established_at = asyncio.get_running_loop().time()
        self._in_a_row = 0
        return body

    async def send(self, frame: bytes) -> None:
        check_frame(frame, self.compact_mtu if frame[:1] and frame[0] < 0x80 else self.mtu)
        await self._settle()
        assert self.channel is not None
        await self.inner.send(self.channel.seal(frame))

    async def receive(self) -> bytes:
        while True:
            await self._settle()
            assert self.channel is not None
            packet = await self.inner.receive()
            kind = record_kind(packet)
            if kind is RecordKind.RESUME:
                body = self._open_resume(packet)
                if body is not None:
                    return body
                continue
            if kind is RecordKind.REJECT:
                code = packet[1] if len(packet) > 1 else -1
                if code == Reason.BAD_STATE:
                    # The device was reset and lost the channel: new keys, same
                    # session. REJECTs for frames that were in flight during the
                    # last handshake are stale and ignored.
                    if asyncio.get_running_loop().time() - self._established_at > self._rto():
                        self._hs_task = asyncio.ensure_future(self.handshake())
                    continue
                reason = Reason(code) if code in Reason._value2member_map_ else Reason.ABORTED
                raise RemoteError("device refused the secure channel", reason)
            body = self.channel.open(packet)
            if body is None:
                self.dropped_records += 1
                continue
            self._in_a_row = 0
            return body

    async def aclose(self) -> None:
        task, self._hs_task = self._hs_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task  # retrieve its outcome: no "exception never retrieved"
        await self.inner.aclose()
