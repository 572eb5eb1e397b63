"""The async API: push a signed update to a device over any :class:`Link`.

    async with await SerialLink.open("/dev/ttyUSB0", 115200, mtu=1024) as link:
        async with Updater(link) as up:
            async for event in up.events(Path("update.ota").read_bytes()):
                print(event)            # DeviceInfo, Accepted, Progress ..., Completed

``push()`` does the same and returns the :class:`Completed` event. Progress is
what the device acknowledged, never what was merely sent. Failures leave as
otaferry's own exceptions: :class:`RemoteError` (the device, or the sender's
check of the device's hello, refused the update: ``.reason``),
:class:`TimeoutError_` (the device went silent past the give-up limit),
:class:`TransportError` / :class:`ClosedError` (the link broke). Cancelling
the task that pushes sends an ABORT on a best-effort basis and re-raises.

The driver is the thin loop of STYLE.md: feed received frames to the sans-IO
:class:`Sender`, write what it returns, arm its one timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self, TypeVar

from ..protocol.artifact import HEADER_SIZE, ArtifactReader, device_ram_bytes
from ..protocol.errors import (
    DecodeError,
    OtaferryError,
    Reason,
    RemoteError,
    TimeoutError_,
    TransportError,
)
from ..protocol.frames import Abort, Hello, HelloInfo, Query, decode_frame
from ..protocol.lora import RegionPacing
from ..protocol.manifest import PAYLOAD_DELTA
from ..protocol.secure import decode_identity, encode_identify
from ..protocol.session import (
    Accepted,
    Completed,
    Confirmed,
    Event,
    Failed,
    Rejected,
    Sender,
    too_much_ram,
    window_for,
)
from ..protocol.shared_artifact import Artifact
from ..protocol.x25519keys import LinkPublicKey
from .link import Link

_T = TypeVar("_T")

__all__ = [
    "PushOptions",
    "Updater",
    "choose_artifact",
    "fetch_device_key",
    "over_the_air",
    "query_device",
]


@dataclass(frozen=True, slots=True)
class PushOptions:
    """Knobs of one push. ``window`` None: sized from the line rate and ``rtt``;
    ``line_rate`` None: the link's own (``link.pacing.line_rate``: a SerialLink
    knows its baud rate), else 11,520 bytes/s (115200 baud, 10 bits a byte)."""

    window: int | None = None
    line_rate: float | None = None
    rtt: float = 0.06
    rto: float = 1.0
    max_retries: int = 8
    max_restarts: int = 3
    await_checkin: bool = True
    """End only when the new image has booted, checked in and confirmed (SPEC
    8.7); False: end at DONE (written, verified, set to boot), as before."""
    compact: bool = False
    """Compact DATA frames (SPEC 8.8) when the device takes them and the link is
    sealed (a link with ``compact_mtu``); for links that keep order (LoRa)."""
    batch: bool = False
    """Batched acknowledgements (SPEC 8.8) when the device offers them."""
    query_interval: float = 8.0
    """The longest wait between QUERYs while the new image reboots."""
    reboot_wait: float | None = None
    """The first of those waits (None: the retransmit timeout)."""
    max_rto: float = 60.0
    """The longest retransmit timeout (a duty-cycled radio whose device may owe a
    minute of off time before it can answer needs more)."""
    checkin_timeout: float = 180.0
    """Seconds from DONE for the device to reset, boot the new image and check
    in; more than the device's own deadline (120 s by default), so a device
    that gives up is heard reporting its rollback."""


def over_the_air(
    options: PushOptions, pacing: RegionPacing, mtu: int, *, checkin_timeout: float | None = None
) -> PushOptions:
    """``options`` for a push over a duty-cycled radio (``push --lora-modem`` and the
    gateway's LoRa links alike): compact DATA and batched acknowledgements (SPEC
    8.8) with a window sized so STATUS air stays ~1.5 % of the data's (unless
    ``options`` names one), retransmit and reboot waits sized for a device that may
    owe a full frame's off time, and a check-in wait a minute past the device's own
    deadline over this air (SPEC 8.7) unless ``checkin_timeout`` is given."""
    first = pacing.first_rto(mtu, answer=mtu)
    return replace(
        options,
        window=options.window or pacing.ack_batch(mtu),
        compact=True,
        batch=True,
        query_interval=first,
        reboot_wait=first / 2,
        max_rto=max(60.0, first),
        # the first answers (MSG2 then the HELLO) are up to a full frame, after
        # the device's own off time: a STATUS-sized guess retransmitted the QUERY
        rto=max(options.rto, first),
        checkin_timeout=checkin_timeout or 60.0 + pacing.checkin_timeout(mtu),
    )


def choose_artifact(
    candidates: Sequence[bytes | Artifact], info: HelloInfo, *, allow_full: bool = True
) -> bytes | Artifact:
    """The artifact to send a device that said ``info``: the fewest bytes among the
    deltas whose base is the image it runs and (if allowed) the full images. A
    delta is not always the smaller: after a large change, or against an old
    base, the full image can be, and on a slow link bytes are time. On a tie
    the delta goes.

    Full images count only in a codec the device's hello announces, deltas only
    within the RAM budget it announces (HELLO field 18, SPEC 7.6).
    Raises RemoteError(WRONG_BASE) when no delta fits and full images are not
    allowed (metered links), RESOURCE_LIMIT when the only deltas that match need
    more RAM than the device allows, UNSUPPORTED_CODEC when the only full images
    are in codecs it does not decode, WRONG_HW when there is nothing for it at all.
    """
    deltas: list[tuple[int, bytes | Artifact]] = []
    fulls: list[tuple[int, bytes | Artifact]] = []
    undecodable: list[str] = []  # codecs of full images the device does not decode
    too_big: list[int] = []  # RAM needs of matching deltas above the device's budget
    for ota in candidates:
        # size: what crosses the link, manifest + signature + payload, either way
        if isinstance(ota, Artifact):
            m = ota.manifest
            size = len(ota.manifest_bytes) + len(ota.signature) + ota.payload_size
        else:  # the header only: no segment hashing
            m, size = ArtifactReader(io.BytesIO(ota)).manifest, len(ota) - HEADER_SIZE
        if info.hw not in m.hw or m.chip != info.chip:
            continue
        if m.payload_kind == PAYLOAD_DELTA:
            if m.base_sha256 == info.running_sha256 and m.codec in info.codecs:
                need = device_ram_bytes(m)
                if need > info.ram_budget:
                    too_big.append(need)
                else:
                    deltas.append((size, ota))
        elif m.codec in info.codecs:  # a full image only in a codec the device decodes
            fulls.append((size, ota))
        else:
            undecodable.append(m.codec)
    if deltas or (fulls and allow_full):
        pool = deltas + (fulls if allow_full else [])
        return min(pool, key=lambda t: t[0])[1]  # min keeps the first: deltas win ties
    if too_big:
        raise RemoteError(too_much_ram(min(too_big), info.ram_budget), Reason.RESOURCE_LIMIT)
    if fulls:
        raise RemoteError(
            "no delta matches the device's running image and full images are not allowed "
            "(--no-full-fallback)",
            Reason.WRONG_BASE,
        )
    if undecodable and allow_full:
        raise RemoteError(
            f"the device decodes {', '.join(info.codecs)}, not "
            f"{', '.join(sorted(set(undecodable)))} "
            "(build the full image with --codec deflate for a device without zstd)",
            Reason.UNSUPPORTED_CODEC,
        )
    raise RemoteError(f"no artifact is for hw {info.hw} / chip {info.chip}", Reason.WRONG_HW)


class Updater:
    """Pushes updates over one link; see the module docstring."""

    def __init__(
        self,
        link: Link,
        options: PushOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.options = options or PushOptions()
        self._clock = clock
        self.last_sender: Sender | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def window(self) -> int:
        """The window for this link: the option, else sized from the line rate."""
        o = self.options
        if o.window is not None:
            return o.window
        pacing = self.link.pacing
        rate = o.line_rate or pacing.line_rate or 11_520.0
        return window_for(rate, max(o.rtt, pacing.rtt_floor), self.link.mtu)

    def _sender(self, ota: bytes | Artifact, job_id: str | None) -> Sender:
        o = self.options
        return Sender(
            Artifact.of(ota),
            mtu=self.link.mtu,
            window=self.window(),
            session_id=secrets.randbits(32) or 1,
            rto=min(o.rto, o.max_rto),
            max_rto=o.max_rto,
            max_retries=o.max_retries,
            max_restarts=o.max_restarts,
            job_id=job_id,
            paced=True,
            await_checkin=o.await_checkin,
            checkin_timeout=o.checkin_timeout,
            compact_mtu=getattr(self.link, "compact_mtu", None) if o.compact else None,
            batch=o.batch,
            query_interval=o.query_interval,
            reboot_wait=o.reboot_wait,
            resume=bool(getattr(self.link, "resumes", False)),
        )

    async def events(
        self, ota: bytes | Artifact, *, job_id: str | None = None
    ) -> AsyncGenerator[Event, None]:
        """Push ``ota`` (an :class:`Artifact`, shared by any number of pushes, or
        the .ota file's bytes), yielding every session event; each names the
        update, the device (once it said HELLO) and ``job_id``.

        The last event is :class:`Confirmed` (with ``await_checkin``, the
        default: the new image booted, checked in and is valid), else
        :class:`Completed`; a refusal, a failure or a rollback raises instead
        (:class:`RemoteError` with the device's reason: SELF_TEST_FAILED,
        CHECKIN_TIMEOUT, ROLLED_BACK ...).
        """
        sender = self._sender(ota, job_id)
        self.last_sender = sender
        link = self.link
        try:
            while True:
                for body in sender.datagrams_to_send(self._clock()):
                    await link.send(body)  # returns once the frame has left
                    sender.departed(self._clock())
                while (event := sender.next_event()) is not None:
                    if isinstance(event, Rejected):
                        raise RemoteError(event.message, event.reason, local=event.local)
                    if isinstance(event, Failed):
                        if event.reason == Reason.TIMEOUT:
                            raise TimeoutError_(event.message)
                        raise RemoteError(event.message, event.reason)
                    if isinstance(event, Accepted) and sender.resume:
                        link.expect_resume(sender.uid)  # type: ignore[attr-defined]
                    yield event
                    if isinstance(event, Confirmed) or (
                        isinstance(event, Completed) and not self.options.await_checkin
                    ):
                        return
                if sender.done:  # terminal without an event: should not happen
                    raise OtaferryError("session ended without an outcome", Reason.BAD_STATE)
                timer = sender.get_timer()
                timeout = None if timer is None else max(0.0, timer - self._clock())
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow
                    # a cancel that lands with the frame it was waiting for.
                    async with asyncio.timeout(timeout):
                        body = await link.receive()
                except TimeoutError:
                    sender.handle_timer(self._clock())
                    continue
                sender.receive_frame(body, self._clock())
        except (asyncio.CancelledError, GeneratorExit):
            await self._abort_quietly(sender)
            raise
        except OSError as exc:  # a link that let an OS error through
            raise TransportError(f"link failed: {exc}") from exc

    async def _abort_quietly(self, sender: Sender) -> None:
        if sender.done:
            return
        sender.abort()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(1.0):
                for body in sender.datagrams_to_send(self._clock()):
                    await self.link.send(body)
                    sender.departed(self._clock())

    async def push(
        self,
        ota: bytes | Artifact,
        on_event: Callable[[Event], None] | None = None,
        *,
        job_id: str | None = None,
    ) -> Completed | Confirmed:
        """Push ``ota``; call ``on_event`` for every event; return the last event:
        :class:`Confirmed` (awaiting the check-in, the default) or :class:`Completed`."""
        # aclosing: if on_event raises, the session is aborted now, not whenever
        # the generator happens to be finalised (maybe inside the next push).
        async with contextlib.aclosing(self.events(ota, job_id=job_id)) as events:
            async for event in events:
                if on_event is not None:
                    on_event(event)
                if isinstance(event, Confirmed) or (
                    isinstance(event, Completed) and not self.options.await_checkin
                ):
                    return event
        raise OtaferryError("session ended without an outcome", Reason.BAD_STATE)

    async def hello(self) -> HelloInfo:
        """Ask the device who it is (QUERY / HELLO), with no update in hand: nothing
        is parsed or sent but the query (:func:`query_device`)."""
        return await query_device(
            self.link, rto=self.options.rto, retries=self.options.max_retries
        )

    async def push_best(
        self,
        candidates: Sequence[bytes | Artifact],
        *,
        allow_full: bool = True,
        on_event: Callable[[Event], None] | None = None,
        job_id: str | None = None,
    ) -> Completed | Confirmed:
        """Pick the artifact for this device from its hello (the fewest bytes among
        the deltas its base matches and, unless ``allow_full`` is False, the full
        images: :func:`choose_artifact`) and push it."""
        if not candidates:
            raise OtaferryError("no artifacts given", Reason.MALFORMED)
        info = await self.hello()
        chosen = choose_artifact(candidates, info, allow_full=allow_full)
        return await self.push(chosen, on_event, job_id=job_id)


async def _ask(
    link: Link, request: bytes, answer: Callable[[bytes], _T | None], rto: float, retries: int
) -> _T | None:
    """Send ``request`` until ``answer(packet)`` gives something, doubling the wait."""
    wait = rto
    for _attempt in range(retries + 1):
        await link.send(request)
        try:
            async with asyncio.timeout(wait):
                while True:
                    got = answer(await link.receive())
                    if got is not None:
                        return got
        except TimeoutError:
            wait = min(wait * 2, 30.0)
    return None


async def query_device(link: Link, *, rto: float = 1.0, retries: int = 5) -> HelloInfo:
    """Ask the device who it is and where it stands (QUERY -> HELLO), with no
    update in hand: its id, hardware, running image, counter, a pending check-in
    or the last rollback. Raises TimeoutError_ when it does not answer."""
    session_id = secrets.randbits(32) or 1
    parts: dict[int, bytes] = {}

    def hello_of(packet: bytes) -> HelloInfo | None:
        try:
            frame = decode_frame(packet)
        except DecodeError:
            return None
        if not isinstance(frame, Hello) or frame.session_id != session_id:
            return None
        parts[frame.part] = frame.chunk
        if len(parts) < frame.count:
            return None
        return HelloInfo.decode(b"".join(parts[i] for i in range(frame.count)))

    info = await _ask(link, Query(session_id).encode(), hello_of, rto, retries)
    if info is None:
        raise TimeoutError_(f"no answer to {retries + 1} queries")
    await link.send(Abort(Reason.ABORTED, "query only").encode())
    return info


async def fetch_device_key(link: Link, *, rto: float = 1.0, retries: int = 5) -> LinkPublicKey:
    """First contact (SPEC 9.10): the device's static X25519 public key, over the
    raw link. Unauthenticated: whoever answers could be an impostor, so the
    caller must show its fingerprint to be checked before it is trusted."""
    key = await _ask(link, encode_identify(), decode_identity, rto, retries)
    if key is None:
        raise TimeoutError_(
            f"no answer to {retries + 1} identity requests (does the device have a link key?)"
        )
    return key
