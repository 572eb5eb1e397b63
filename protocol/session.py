"""The host side of a link session: a sans-IO :class:`Sender` (SPEC.md section 8 "Session").

Shape (aioquic): the driver feeds every frame body the link delivers to
:meth:`Sender.receive_frame`, writes what :meth:`Sender.datagrams_to_send`
returns, arms one timer at :meth:`Sender.get_timer` and calls
:meth:`Sender.handle_timer` when it fires, and drains :meth:`Sender.next_event`.
Time is always passed in (``now``, seconds, any monotonic origin); nothing here
reads a clock or does I/O.

The session, in phases::

    HANDSHAKE  QUERY (retried) ............ HELLO parts -> DeviceInfo
    OFFER      OFFER parts (windowed) ..... ACCEPT(next, bitmap) -> Accepted | REJECT
    DATA       DATA chunks (windowed) ..... STATUS(next, bitmap, echo) -> Progress
    COMMIT     COMMIT (retried) ........... DONE -> Completed | REJECT -> Rejected
    DONE / REJECTED / FAILED  (terminal: no timer, nothing more to send)

Selective repeat over "units": (segment, chunk) for data, (-1, part) for the
offer. A unit is *in flight* from its send until a STATUS/ACCEPT shows it held
(acknowledged) or shows it lost. Loss is inferred from the echo a STATUS carries
(the frame that triggered it): links deliver in order, so every unit sent
before the echoed one and not held by the device is lost and goes to the front
of the queue. A retransmit timer (RFC 6298 estimator, Karn's rule, doubling
backoff) covers lost statuses and a silent device; after ``max_retries``
expiries in a row with no valid frame from the device, the session fails with
``TIMEOUT``. Within a session the device never gives up a chunk it reported (a
segment that fails its signed check ends the session with REJECT), so a stale
STATUS never makes the sender go back; but a STATUS made after a claim that
lacks what the claim said is held proves the claim false, and the sender sends
those chunks again (SPEC 8.3 "Claims are reconciled"). A progress watchdog
bounds every session: ``max_stalls`` rounds in a row without a newly held unit
end it with ``TIMEOUT``, however alive the link looks.

Errors never escape :meth:`receive_frame`: a body that does not decode, or a
frame that makes no sense now (stale, duplicate, out of range) is counted in
:attr:`Sender.stats` and ignored. The constructor raises the project's errors
for a bad manifest, segments that do not match it, or impossible parameters.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeAlias

from .artifact import ArtifactReader, device_ram_bytes
from .errors import DecodeError, ProtocolError, Reason
from .frames import (
    FEATURE_BATCH,
    FEATURE_COMMIT,
    FEATURE_COMPACT,
    FEATURE_RESUME,
    NO_SESSION,
    OFFER_BATCH,
    OFFER_COMMIT,
    OFFER_COMPACT,
    OFFER_RESUME,
    OFFER_SEGMENT,
    Abort,
    Accept,
    Checkin,
    Commit,
    CompactData,
    Confirm,
    Data,
    Done,
    Hello,
    HelloInfo,
    Offer,
    Poll,
    Query,
    Reject,
    Status,
    decode_frame,
    max_chunk_size,
    max_part_size,
    split_blob,
    truncate_message,
)
from .frames import Confirmed as ConfirmedFrame
from .manifest import PAYLOAD_DELTA, PAYLOAD_FULL, Manifest
from .shared_artifact import Artifact

__all__ = [
    "MIN_MTU",
    "Accepted",
    "CheckedIn",
    "Completed",
    "Confirmed",
    "DeviceInfo",
    "Event",
    "Failed",
    "Phase",
    "Progress",
    "Rebooting",
    "Rejected",
    "Sender",
    "SenderStats",
    "precheck",
    "split_artifact",
    "window_for",
]

MIN_MTU = 16
COMPACT_SPAN = 0x3F  # a compact DATA frame reaches 63 chunks past the lowest missing one
U16_CHUNK = 0xFFFF
# What a sender buffers of an unauthenticated HELLO (issue [M] 3: 65,534 parts once held
# 72 MB). A HelloInfo is a few hundred bytes; at the smallest mtu it takes ~40 parts.
MAX_HELLO_PARTS = 512
MAX_HELLO_BYTES = 4096
Unit: TypeAlias = tuple[int, int]


# --- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """The device answered: who it is, and where it stands with *this* update.

    ``resume_from`` is the device's next segment if it holds progress of this
    very update (same update id), else None.
    """

    info: HelloInfo
    resume_from: int | None
    update_id: bytes = field(default=b"", compare=False)
    device_id: bytes | None = field(default=None, compare=False)
    job_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The device verified the signed manifest and will take data from ``next_segment``."""

    next_segment: int
    update_id: bytes = field(default=b"", compare=False)
    device_id: bytes | None = field(default=None, compare=False)
    job_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Progress:
    """What the device has acknowledged (never what was merely sent)."""

    confirmed_bytes: int
    total_bytes: int
    segments_done: int
    segments_total: int
    update_id: bytes = field(default=b"", compare=False)
    device_id: bytes | None = field(default=None, compare=False)
    job_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Rejected:
    """The update cannot go to this device: ``reason`` from the device's installer
    checks (or, with ``local``, from the sender's own check of the HELLO)."""

    reason: Reason
    message: str
    local: bool = False
    update_id: bytes = field(default=b"", compare=False)
    device_id: bytes | None = field(default=None, compare=False)
    job_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Completed:
    """The image is written, verified against the signed SHA-256 and set to boot."""

    total_bytes: int
    segments_total: int
    resumed_from: int
    update_id: bytes = field(default=b"", compare=False)
    device_id: bytes | None = field(default=None, compare=False)
    job_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Rebooting:
    """(``await_checkin``) After Completed: the device resets into the new image;
    the sender waits for it to check in, at most ``deadline_s`` seconds."""

    deadline_s: float
    update_id: bytes = field(default=b"", compare=False)
    device_id: bytes | None = field(default=None, compare=False)
    job_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class CheckedIn:
    """The new image booted, passed its self-test and reached this sender over the
    same path: its HELLO says "pending verify" for this update and image."""

    version: str | None
    update_id: bytes = field(default=b"", compare=False)
    device_id: bytes | None = field(default=None, compare=False)
    job_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The device marked the new image valid (and raised its security counter):
    the update is done. The last event of a session that awaits the check-in."""

    version: str | None
    update_id: bytes = field(default=b"", compare=False)
    device_id: bytes | None = field(default=None, compare=False)
    job_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Failed:
    """The session broke: timeout, abort (either side), or a device that keeps losing it."""

    reason: Reason
    message: str
    update_id: bytes = field(default=b"", compare=False)
    device_id: bytes | None = field(default=None, compare=False)
    job_id: str | None = field(default=None, compare=False)


# Every event also names its session: ``update_id`` (the update's id), ``device_id``
# (once the device said HELLO) and ``job_id`` (when the caller gave one). They do
# not take part in ``==``, so an event compares by what it says.
Event: TypeAlias = (
    DeviceInfo | Accepted | Progress | Rejected | Completed | Rebooting | CheckedIn | Confirmed
    | Failed
)


class Phase(Enum):
    HANDSHAKE = "handshake"
    OFFER = "offer"
    DATA = "data"
    COMMIT = "commit"
    REBOOT = "reboot"  # DONE received; waiting for the new image's check-in HELLO
    CONFIRM = "confirm"  # CONFIRM sent; waiting for CONFIRMED
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"


_ACTIVE = (Phase.HANDSHAKE, Phase.OFFER, Phase.DATA, Phase.COMMIT, Phase.REBOOT, Phase.CONFIRM)


@dataclass(frozen=True, slots=True)
class SenderStats:
    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    data_frames: int = 0
    data_payload_bytes: int = 0
    retransmits: int = 0
    offer_frames: int = 0
    polls: int = 0
    bad_frames: int = 0
    ignored_frames: int = 0
    timeouts: int = 0
    restarts: int = 0
    false_claims: int = 0
    stalls: int = 0
    srtt: float | None = None


@dataclass(slots=True)
class _Sent:
    order: int
    time: float
    count: int
    first: int  # order of the unit's first transmission


# --- helpers -------------------------------------------------------------------


def split_artifact(ota: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """``(manifest_bytes, signature, segments)`` of an ``.ota`` file's bytes.

    Every segment is checked against the signed table on the way
    (``SEGMENT_CORRUPT``); the signature is not verified here — the device does.
    """
    reader = ArtifactReader(io.BytesIO(ota))
    return reader.manifest_bytes, reader.signature, list(reader.iter_segments())


def window_for(line_rate: float, rtt: float, mtu: int) -> int:
    """A window (frames in flight) for a link of ``line_rate`` bytes/s.

    ``rtt``: the round-trip latency of a short frame, serialisation not
    counted (UART: twice the one-way latency; LoRa: the modem turnaround).
    The sender polls for a STATUS every half window and runs half a window
    ahead into the next segment, so half a window must cover the frames the
    line carries in one round trip, plus the one being written. Measured on
    the simulated UART (115200 baud, 20 ms each way, 1 KiB frames): 4, which
    keeps goodput >= 0.97 of the line rate lossless and ~0.87 at 5% loss;
    larger windows lose more to frames the device must drop after a loss.
    """
    if line_rate <= 0 or rtt < 0 or mtu < 1:
        raise ValueError("line_rate must be > 0, rtt >= 0, mtu >= 1")
    in_flight = math.ceil(line_rate * rtt / mtu)
    return max(2, 2 * (in_flight + 1))


def precheck(manifest: Manifest, info: HelloInfo) -> tuple[Reason, str] | None:
    """The checks the gateway can make from a HELLO before sending anything.

    The device repeats all of them (and the signature check); this only saves
    the air time of offering an update that cannot be taken.
    """
    if info.hw not in manifest.hw:
        return Reason.WRONG_HW, f"update is for {', '.join(manifest.hw)}, device is {info.hw}"
    if manifest.chip != info.chip:
        return Reason.WRONG_CHIP, f"update is for chip {manifest.chip}, device is {info.chip}"
    if manifest.security_counter < info.security_counter:
        return (
            Reason.DOWNGRADE,
            f"security counter {manifest.security_counter} is below the device's "
            f"{info.security_counter}",
        )
    if manifest.target_size > info.slot_size:
        return (
            Reason.TOO_LARGE,
            f"image of {manifest.target_size} bytes does not fit the {info.slot_size}-byte slot",
        )
    if manifest.codec not in info.codecs:
        return Reason.UNSUPPORTED_CODEC, f"device does not decode {manifest.codec}"
    if manifest.window_log > info.max_window_log:
        return (
            Reason.RESOURCE_LIMIT,
            f"window 2**{manifest.window_log} exceeds the device's 2**{info.max_window_log}",
        )
    biggest = max(e.length for e in manifest.segments)
    # The hello's buffer size is for full-image segments (SPEC section 4).
    if manifest.payload_kind == PAYLOAD_FULL and max(biggest, manifest.segment_size) > (
        info.max_segment_payload
    ):
        return (
            Reason.RESOURCE_LIMIT,
            f"segments need {max(biggest, manifest.segment_size)} bytes, device buffers "
            f"{info.max_segment_payload}",
        )
    if manifest.target_sha256 == info.running_sha256 and info.pending_uid is None:
        return Reason.ALREADY_INSTALLED, f"the device already runs this image ({manifest.version})"
    if manifest.payload_kind == PAYLOAD_DELTA and manifest.base_sha256 != info.running_sha256:
        return Reason.WRONG_BASE, "delta base is not the image the device runs"
    # Last: a device that already runs the image is done, and a wrong base is not
    # mended by rebuilding for more RAM. A delta's RAM need (section 7.6) is held to
    # the budget in HELLO field 18 (65,536 when a device does not send it). The
    # device checks it again from the signed segment table: it is the authority,
    # this only saves the offer's air.
    if manifest.payload_kind == PAYLOAD_DELTA:
        need = device_ram_bytes(manifest)
        if need > info.ram_budget:
            return Reason.RESOURCE_LIMIT, too_much_ram(need, info.ram_budget)
    return None


def too_much_ram(need: int, budget: int) -> str:
    """Why a delta that needs ``need`` bytes of RAM is refused, and the remedy."""
    return (f"delta needs {need} bytes of RAM, the device allows {budget}: rebuild it with "
            f"otaferry build --base ... --device-ram {budget}")  # fmt: skip


def _reason(code: int) -> tuple[Reason, str]:
    try:
        return Reason(code), ""
    except ValueError:
        return Reason.MALFORMED, f"(unknown reason code {code}) "


# --- the sender ----------------------------------------------------------------


class Sender:
    """Sends one signed update to one device over one link; see the module docstring.

    ``mtu``: the largest frame body the link carries (after any tag the link adds).
    ``window``: frames (OFFER/DATA) in flight; see :func:`window_for`.
    ``chunk_size``: DATA payload bytes; default and maximum: the most that fits.
    ``lookahead``: frames in flight for segments after the one the device is
    filling. The device drops those while a chunk of its segment is missing, so
    this bounds the waste of one loss; it must cover the wait for a segment's
    acknowledgement (round trip + the device writing the segment) for the line
    to stay busy across segment boundaries. Default: half the window.
    ``session_id``: 1 .. 2**32-1, new for each session; the driver should pass
    random bits. The default is derived from the update and the link parameters,
    so a retried *identical* Sender is recognised by the device as the same session.
    ``rto``: the first retransmit timeout (s), before any round trip is measured.
    ``max_retries``: timer expiries in a row without a valid frame from the
    device before the session fails with ``TIMEOUT``.
    ``max_stalls``: rounds in a row without a newly held unit (a fresh STATUS
    that adds nothing, or an expiry) before the session fails with ``TIMEOUT``,
    however alive the link looks; default ``2 * max_retries + 4``.
    ``max_restarts``: how often the device may lose the session (reset, power
    cut) and have it re-established from its HELLO, within this Sender.
    ``precheck``: refuse locally (``Rejected(local=True)``) what the HELLO shows
    the device would refuse. ``job_id``: the caller's name for the job, carried
    by every event (with the update id, and the device id once it said HELLO).
    ``compact_mtu``: the largest compact DATA body the link carries (SPEC 8.8;
    a secure link's ``compact_mtu``), None: never compact. ``batch``: ask for
    batched acknowledgements (SPEC 8.8). ``query_interval``: the longest wait
    between QUERYs while the new image reboots (a radio whose answers take
    long needs more than the 8 s default, or the device queues HELLO after
    HELLO); ``reboot_wait``: the first of those waits (None: the current
    RTO). Compact and batch are used only with a device
    whose HELLO announces it; compact DATA also runs no lookahead and keeps
    what it sends within 63 chunks of the lowest one it knows missing, and its
    timer probes with POLL frames (so it never resends a chunk the device
    might hold, which the one-byte index could not tell apart). Both are for
    links that keep order (LoRa: one packet on the air at a time).
    """

    def __init__(
        self,
        artifact: Artifact,
        *,
        mtu: int,
        window: int,
        chunk_size: int | None = None,
        lookahead: int | None = None,
        session_id: int | None = None,
        rto: float = 1.0,
        min_rto: float = 0.05,
        max_rto: float = 60.0,
        max_retries: int = 8,
        max_stalls: int | None = None,
        max_restarts: int = 3,
        precheck: bool = True,
        job_id: str | None = None,
        paced: bool = False,
        await_checkin: bool = False,
        checkin_timeout: float = 180.0,
        compact_mtu: int | None = None,
        batch: bool = False,
        query_interval: float = 8.0,
        reboot_wait: float | None = None,
        resume: bool = False,
    ) -> None:
        if not isinstance(artifact, Artifact):
            raise TypeError("Sender takes an Artifact (Artifact.parse(ota_bytes), shared)")
        self.artifact = artifact
        self.manifest_bytes = artifact.manifest_bytes
        self.manifest = artifact.manifest
        self.signature = artifact.signature
        self._segments = artifact.segments
        self.job_id = job_id
        self._await_checkin = await_checkin
        self._checkin_timeout = checkin_timeout
        self._checkin_deadline: float | None = None
        self._completed = False
        self._paced = paced
        self._pending: deque[_Sent | None] = deque()
        if mtu < MIN_MTU:
            raise ProtocolError(f"mtu {mtu} is below the minimum {MIN_MTU}", Reason.RESOURCE_LIMIT)
        if window < 1:
            raise ProtocolError(f"window {window} must be >= 1", Reason.MALFORMED)
        if lookahead is not None and lookahead < 0:
            raise ProtocolError(f"lookahead {lookahead} must be >= 0", Reason.MALFORMED)
        if chunk_size is not None and chunk_size < 1:
            raise ProtocolError(f"chunk_size {chunk_size} must be >= 1", Reason.MALFORMED)
        if (
            not 0 < min_rto <= rto <= max_rto
            or max_retries < 0
            or max_restarts < 0
            or (max_stalls is not None and max_stalls < 1)
        ):
            raise ProtocolError("need 0 < min_rto <= rto <= max_rto", Reason.MALFORMED)
        self.mtu = mtu
        self.window = window
        self.uid = artifact.update_id
        if session_id is None:
            seed = b"otaferry/session\x00%s%d,%d,%d" % (self.uid, mtu, window, chunk_size or 0)
            session_id = int.from_bytes(hashlib.sha256(seed).digest()[:4], "little") or 1
        if not 1 <= session_id <= 0xFFFF_FFFF:
            raise ProtocolError(f"session_id {session_id} out of 1..2**32-1", Reason.MALFORMED)
        self.session_id = session_id
        self._chunk_param = chunk_size
        self._rto = rto
        self._min_rto = min_rto
        self._max_rto = max_rto
        self._max_retries = max_retries
        self._max_stalls = 2 * max_retries + 4 if max_stalls is None else max_stalls
        self._max_restarts = max_restarts
        self._precheck = precheck
        self._query_interval = query_interval
        self._reboot_wait = reboot_wait
        self._last_query = float("-inf")
        self._compact_mtu = compact_mtu
        self._want_batch = batch
        self.compact = False  # set from the HELLO: compact DATA in this session
        self.batch = False  # ... batched acknowledgements
        # ``resume``: the link can resume its secure channel after the reboot (SPEC
        # 8.9); ``self.resume``: this session asked the device to (OFFER_RESUME).
        self._want_resume = resume
        self.resume = False
        self.autocommit = False  # OFFER_COMMIT: the last segment's answer is DONE
        self._nonce: bytes | None = None  # the pending boot's check-in nonce
        self._poll_every = max(1, (window + 1) // 2)
        self._loss = 0.0
        self._lookahead = lookahead
        self._n = self.manifest.segment_count
        self._prefix = artifact.prefix

        self.phase = Phase.HANDSHAKE
        self.info: HelloInfo | None = None
        self.chunk_size = 0
        self._events: deque[Event] = deque()
        self._stats: dict[str, int] = dict.fromkeys(SenderStats.__slots__, 0)
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._deadline: float | None = None
        self._retries = 0
        self._stalls = 0
        self._restarts = 0
        self._control: bytes | None = None  # QUERY / COMMIT / ABORT to send next
        self._hello: dict[int, bytes] = {}
        self._hello_bytes = 0
        self._hello_count = 0
        self._parts: list[bytes] = []
        self._resumed_from = 0
        self._confirmed = -1
        self._order = 0
        self._inflight: dict[Unit, _Sent] = {}  # oldest send first
        self._last_sent: dict[Unit, _Sent] = {}
        self._lost: set[Unit] = set()
        self._held: set[int] = set()  # chunks of group self._next the device holds
        self._held_at: dict[int, int] = {}  # chunk -> self._order when it was claimed
        self._next_at = 0  # self._order when self._next was last moved by a status
        self._next = OFFER_SEGMENT  # the group the device is filling (-1: the offer)
        self._cursor: Unit | None = None  # next unit never sent yet
        self._probe: Unit | None = None
        self._echo_floor = -1
        self._since_poll = 0
        self._polls: dict[int, float] = {}  # order -> departure of unanswered polls
        self._control = Query(self.session_id).encode()

    # ------------------------------------------------------------ public API

    @property
    def stats(self) -> SenderStats:
        s = dict(self._stats)
        s.pop("srtt", None)
        return SenderStats(**s, srtt=self._srtt)

    @property
    def done(self) -> bool:
        """True once the session is over (completed, rejected or failed)."""
        return self.phase not in _ACTIVE

    def _ids(self) -> dict[str, Any]:
        """The session's names that every event carries."""
        device = self.info.device_id if self.info is not None else None
        return {"update_id": self.uid, "device_id": device, "job_id": self.job_id}

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self._pending or self.phase not in _ACTIVE:
            return None
        return self._deadline

    def abort(self, reason: Reason = Reason.ABORTED, message: str = "aborted by the host") -> None:
        """End the session now: an ABORT goes out with the next datagrams."""
        if self.phase in _ACTIVE:
            self._fail(reason, message)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The frames to send now, in order. With ``paced``, report each one's
        departure with :meth:`departed` once the medium has let it go."""
        out: list[bytes] = []
        recs: list[_Sent | None] = []
        if self._control is not None:
            if self._control[1:2] == b"\x01":  # a QUERY ([1, ...])
                self._last_query = now
            out.append(self._control)
            recs.append(None)
            self._control = None
            if self.phase in _ACTIVE:
                self._deadline = now + self._rto
        if self.phase in (Phase.OFFER, Phase.DATA):
            last: Unit | None = None
            if self._probe is not None:
                last, self._probe = self._probe, None
                out.append(self._send_unit(last, now, poll=True))
                recs.append(self._inflight[last])
            while len(self._inflight) < self.window:
                picked = self._pick()
                if picked is None:
                    break
                out.append(self._send_unit(picked, now, poll=False))
                recs.append(self._inflight[picked])
                last = picked
            if last is not None and self._inflight[last].order not in self._polls:
                # The newest frame in flight always asks for an answer: then a
                # STATUS is always due, and the deadline always means something.
                out[-1] = self._encode(last, poll=True)
                self._stats["polls"] += 1
                self._since_poll = 0
                self._polls[self._inflight[last].order] = self._inflight[last].time
            if last is not None or self._deadline is None:
                self._deadline = self._wait_base(now) + self._rto
        if self._paced:
            self._pending.extend(recs)
        self._stats["frames_sent"] += len(out)
        self._stats["bytes_sent"] += sum(map(len, out))
        return out

    def departed(self, now: float) -> None:
        """(``paced``) The oldest frame handed out and not yet reported left at ``now``.

        Its send time, for round-trip samples and for the retransmit deadline, is
        this departure, not the handover: time spent waiting for the medium's
        budget (air time, a busy line) is neither round trip nor loss. While any
        frame waits to leave there is no timer: nothing sent is overdue yet.
        """
        if not self._pending:
            return
        rec = self._pending.popleft()
        if self.phase not in _ACTIVE:
            return
        if rec is None:  # QUERY / COMMIT / ABORT
            self._deadline = now + self._rto
            return
        rec.time = now
        if rec.order in self._polls:
            self._polls[rec.order] = now
        if self.phase in (Phase.OFFER, Phase.DATA):
            self._deadline = self._wait_base(now) + self._rto

    @property
    def waiting_to_leave(self) -> int:
        """Frames handed out that the driver has not reported departed."""
        return len(self._pending)

    def handle_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline or self.phase not in _ACTIVE:
            return
        if self.phase is Phase.REBOOT:
            self._reboot_timer(now)
            return
        self._stats["timeouts"] += 1
        self._retries += 1
        if self._retries > self._max_retries:
            self._fail(
                Reason.TIMEOUT,
                f"no answer from the device after {self._retries} attempts "
                f"(in phase {self.phase.value})",
            )
            return
        self._rto = min(self._rto * 2, self._max_rto)
        self._deadline = now + self._rto
        if self.phase is Phase.HANDSHAKE:
            self._control = Query(self.session_id).encode()
        elif self.phase is Phase.COMMIT:
            self._control = Commit().encode()
        elif self.phase is Phase.CONFIRM:
            self._control = self._confirm_frame()
        else:
            self._stall("the timer expired")
            if self.phase not in _ACTIVE:
                return
            self._polls.clear()  # overdue: the probe is the poll to wait for now
            if self.compact and self.phase is Phase.DATA:
                self._control = self._poll_frame()
            elif self._probe is None:
                self._probe = self._probe_unit()

    def receive_frame(self, body: bytes, now: float) -> None:
        self._stats["frames_received"] += 1
        self._stats["bytes_received"] += len(body)
        try:
            frame = decode_frame(body)
        except DecodeError:
            self._stats["bad_frames"] += 1
            return
        if self.phase not in _ACTIVE:
            self._ignore()
        elif isinstance(frame, Hello):
            self._on_hello(frame, now)
        elif isinstance(frame, Status):
            self._on_status(frame, len(body), now)
        elif isinstance(frame, Accept):
            self._on_accept(frame, now)
        elif isinstance(frame, Reject):
            self._on_reject(frame, now)
        elif isinstance(frame, Done):
            self._on_done(now)
        elif isinstance(frame, Abort):
            self._on_abort(frame, now)
        elif isinstance(frame, ConfirmedFrame):
            self._on_confirmed(frame)
        elif isinstance(frame, Checkin):
            self._on_checkin(frame, now)
        else:  # a host -> device frame: not for us
            self._ignore()

    # ------------------------------------------------------------ incoming

    def _ignore(self) -> None:
        self._stats["ignored_frames"] += 1

    def _alive(self, now: float) -> None:
        """A frame that made sense now: the device is there, the give-up count restarts."""
        self._retries = 0

    def _on_hello(self, frame: Hello, now: float) -> None:
        checking_in = self.phase in (Phase.REBOOT, Phase.CONFIRM)
        if checking_in and frame.session_id not in (NO_SESSION, self.session_id):
            self._ignore()
            return
        if not checking_in and frame.session_id != self.session_id:
            if frame.session_id == NO_SESSION and self.phase is not Phase.HANDSHAKE:
                self._restart(now, "device announced itself (reset?)")
            elif frame.session_id == NO_SESSION:
                self._ask_now(now, frame.part)  # it is there: ask now
            else:
                self._ignore()
            return
        if self.phase is not Phase.HANDSHAKE and not checking_in:
            self._ignore()  # a duplicate answer to our QUERY
            return
        if frame.count > MAX_HELLO_PARTS:
            self._stats["bad_frames"] += 1  # no device needs that many: not buffered
            return
        if frame.count != self._hello_count:
            self._hello = {}
            self._hello_bytes = 0
            self._hello_count = frame.count
        old = self._hello.get(frame.part)
        held = self._hello_bytes - (len(old) if old is not None else 0) + len(frame.chunk)
        if held > MAX_HELLO_BYTES:
            self._stats["bad_frames"] += 1  # the HELLO blob is small: start over
            self._hello = {}
            self._hello_bytes = 0
            return
        self._hello[frame.part] = frame.chunk
        self._hello_bytes = held
        if len(self._hello) < self._hello_count:
            # The answer is arriving (on a duty-cycled radio a part may take a
            # minute): asking again now would only queue another whole HELLO.
            if self._deadline is not None:
                self._deadline = max(self._deadline, now + self._rto)
            return
        blob = b"".join(self._hello[i] for i in range(self._hello_count))
        self._hello = {}
        self._hello_bytes = 0
        self._hello_count = 0
        try:
            info = HelloInfo.decode(blob)
        except DecodeError:
            self._stats["bad_frames"] += 1
            return
        # No RTT sample from QUERY/HELLO: a few bytes each way say nothing about
        # a window of full frames queued on a slow line; ``rto`` stands until the
        # first echoed OFFER/DATA frame is measured.
        self._alive(now)
        if checking_in:
            self.info = info
            if not self._on_checkin_info(info, now) and frame.session_id == NO_SESSION:
                self._ask_now(now, frame.part)  # it is back: ask now
            return
        self._on_info(info, now)

    def _ask_now(self, now: float, frame_part: int) -> None:
        """QUERY at once for an unasked HELLO — unless one left within half an RTO:
        the device is answering that one (a boot announcement in several parts
        must not draw a QUERY per part, each answered by a whole HELLO)."""
        if frame_part == 0 and now - self._last_query >= self._rto / 2:
            self._control = Query(self.session_id).encode()

    def _on_info(self, info: HelloInfo, now: float) -> None:
        self.info = info
        resume = info.resume_next if info.resume_uid == self.uid else None
        self._events.append(DeviceInfo(info, resume, **self._ids()))
        if self._await_checkin and info.pending_uid == self.uid:
            self._on_checkin_info(info, now)  # installed in an earlier session, booted
            return
        if info.failed_uid == self.uid and info.failed_reason in (
            Reason.SELF_TEST_FAILED,
            Reason.CHECKIN_TIMEOUT,
        ):
            reason, _ = _reason(info.failed_reason)
            self._reject_locally(
                Reason.PREVIOUSLY_FAILED,
                f"this update failed on this device before ({reason.name}): build a new artifact",
            )
            return
        if self._precheck:
            problem = precheck(self.manifest, info)
            if problem is not None:
                self._reject_locally(*problem)
                return
        mtu = min(self.mtu, info.max_frame)
        largest = max(len(s) for s in self._segments)
        self.compact = self._compact_mtu is not None and bool(info.features & FEATURE_COMPACT)
        self.batch = self._want_batch and bool(info.features & FEATURE_BATCH)
        if self.compact and self._compact_mtu is not None:
            # One byte of header, folded into the short sealed record: a chunk as
            # large as the device's frame (SPEC 8.8).
            size = min(self._compact_mtu - 1, info.max_frame, largest, U16_CHUNK)
        else:
            size = max_chunk_size(mtu, self._n, largest)
        if self._chunk_param is not None:
            size = min(size, self._chunk_param)
        if size < 1:
            self._reject_locally(Reason.RESOURCE_LIMIT, f"no DATA frame fits a {mtu}-byte mtu")
            return
        self.resume = (
            self._want_resume and self._await_checkin and bool(info.features & FEATURE_RESUME)
        )
        self.autocommit = self.batch and bool(info.features & FEATURE_COMMIT)
        flags = (
            (OFFER_COMMIT if self.autocommit else 0)
            | (OFFER_BATCH if self.batch else 0)
            | (OFFER_COMPACT if self.compact else 0)
            | (OFFER_RESUME if self.resume else 0)
        )
        if self.batch:
            self._poll_every = self.window
        blob = self.artifact.offer_blob(size, flags)
        if self._precheck and len(blob) > info.max_offer:
            self._reject_locally(
                Reason.RESOURCE_LIMIT,
                f"offer of {len(blob)} bytes exceeds the device's {info.max_offer}",
            )
            return
        part = max_part_size(mtu, len(blob))
        if part < 1:
            self._reject_locally(Reason.RESOURCE_LIMIT, f"no OFFER frame fits a {mtu}-byte mtu")
            return
        self.chunk_size = size
        self._parts = split_blob(blob, part)
        self.phase = Phase.OFFER
        self._reset_units(OFFER_SEGMENT)
        self._cursor = (OFFER_SEGMENT, 0)
        self._deadline = now + self._rto

    def _on_accept(self, frame: Accept, now: float) -> None:
        if self.phase is not Phase.OFFER or frame.next_segment > self._n:
            self._ignore()  # a repeated ACCEPT, or nonsense
            return
        self._alive(now)
        nxt = frame.next_segment
        self._resumed_from = nxt
        self.phase = Phase.DATA
        self._reset_units(nxt)
        if nxt < self._n:
            self._held = frame.held(self._chunks(nxt))
            self._held_at = dict.fromkeys(self._held, self._order)
            self._cursor = (nxt, 0)
        self._events.append(Accepted(nxt, **self._ids()))
        self._report_progress()
        self._deadline = now + self._rto
        if nxt == self._n:
            self._enter_commit()

    def _on_status(self, st: Status, size: int, now: float) -> None:
        group = st.segment
        # The echo dates the status. Only a status newer than every one applied
        # ("fresh") may declare losses and give an RTT sample; an older one
        # (reordered, or echoing the first copy of a chunk since resent) may
        # only add what it says is held. A status whose echoed unit was first
        # sent after a claim was applied was made after that claim, whatever
        # the links reorder: it may correct the claim (``after``).
        fresh: _Sent | None = None
        after = -1
        if st.echo is not None:
            rec = self._last_sent.get(st.echo)
            if rec is not None:
                after = rec.first
                if rec.order >= self._echo_floor:
                    fresh = rec
        if self.phase is Phase.OFFER:
            valid = group == OFFER_SEGMENT
        elif self.phase is Phase.DATA:
            top = self._cursor[0] if self._cursor is not None else self._n
            # Below the segment we believe the device is on: only a status made
            # after the claim that moved us here may say so; the claim was false.
            valid = self._next <= group <= top or (
                0 <= group < self._next and self._next_at < after
            )
        else:
            valid = False
        if not valid:
            self._ignore()
            return
        self._alive(now)
        progressed = False
        if fresh is not None:
            self._echo_floor = fresh.order
            if fresh.count == 1:
                self._rtt_sample(now - fresh.time)
            while self._polls and next(iter(self._polls)) <= fresh.order:
                del self._polls[next(iter(self._polls))]  # answered (or overtaken)
        if group < self._next:
            self._rewind_to(group)
        elif group > self._next:
            self._advance_to(group)
            progressed = True
        count = self._chunks(group) if group < self._end() else 0
        claimed = st.held(count)
        if count and after >= 0:
            self._reconcile(group, claimed, st, count, after, complete=self._complete(size))
        new = claimed - self._held
        if new:
            self._held |= new
            self._held_at.update(dict.fromkeys(new, self._order))
            progressed = True
            for chunk in new:
                self._inflight.pop((group, chunk), None)
                self._lost.discard((group, chunk))
        if fresh is not None:
            lost = 0
            for unit, rec in list(self._inflight.items()):
                if rec.order > fresh.order:
                    break
                if not self._is_held(unit):
                    del self._inflight[unit]
                    self._lost.add(unit)
                    lost += 1
            self._adapt_cadence(lost, len(new))
        if progressed:
            self._stalls = 0
            self._deadline = self._wait_base(now) + self._rto
        elif fresh is not None:
            self._stall("the device's statuses show nothing new")
            if self.phase not in _ACTIVE:
                return
        if self.phase is Phase.DATA:
            self._report_progress()
            if self._next == self._n:
                self._enter_commit()

    def _adapt_cadence(self, lost: int, acked: int) -> None:
        """Ask for statuses more often as loss rises: each status repairs the
        holes before it, and a lost poll costs a whole timeout. Lossless: every
        half window (SPEC 8.3); the interval shrinks to a quarter of that at
        >= 25 % loss (an EWMA over statuses of the units each one judged)."""
        judged = lost + acked
        if judged:
            self._loss = 0.8 * self._loss + 0.2 * (lost / judged)
        if self.batch:
            # Batched (SPEC 8.8): one STATUS per window lossless; as loss rises,
            # down to one per half window, so a lost poll strands fewer frames.
            self._poll_every = max(1, round(self.window * (1 - min(0.5, 2 * self._loss))))
            return
        half = max(1, (self.window + 1) // 2)
        self._poll_every = max(1, round(half * (1 - min(0.75, 3 * self._loss))))

    @property
    def loss_estimate(self) -> float:
        """The sender's running estimate of the fraction of frames lost."""
        return self._loss

    def _complete(self, size: int) -> bool:
        """Whether a STATUS of ``size`` bytes carries its segment's whole bitmap:
        the device cuts the bitmap only to fit its frame, so a status shorter
        than the device's largest frame was not cut."""
        return self.info is not None and size < self.info.max_frame

    def _reconcile(
        self, group: int, claimed: set[int], st: Status, count: int, after: int, *, complete: bool
    ) -> None:
        """Drop what an earlier status claimed and this fresh one contradicts.

        A genuine device never gives up a chunk within a session, so a status
        made after a claim (its echo first sent after the claim was applied)
        that lacks the chunk shows that the claim was false (a forged frame on
        a plaintext link): that chunk is sent again. Only the span the status
        covers is judged: all of the segment when its bitmap was not cut, else
        up to its bitmap's end.
        """
        span = count if complete else min(count, st.base + 8 * len(st.bitmap))
        false = {
            c for c in self._held if c < span and c not in claimed and self._held_at[c] < after
        }
        if not false:
            return
        self._stats["false_claims"] += len(false)
        self._held -= false
        for chunk in false:
            del self._held_at[chunk]
        for chunk in false:
            self._lost.add((group, chunk))

    def _stall(self, why: str) -> None:
        """A round (a fresh status, or a timer expiry) with no newly held unit:
        the progress watchdog. Any other frame keeps the link alive, but only
        progress keeps the session alive."""
        self._stalls += 1
        self._stats["stalls"] += 1
        if self._stalls > self._max_stalls:
            self._fail(
                Reason.TIMEOUT,
                f"no progress in {self._stalls} rounds (in phase {self.phase.value}): {why}",
            )

    def _on_reject(self, frame: Reject, now: float) -> None:
        if self.phase in (Phase.HANDSHAKE, Phase.REBOOT):
            self._ignore()  # no offer made in this session yet: stale
            return
        if self.phase is Phase.CONFIRM:
            # "nothing to confirm": the device reset again (a new nonce): ask again
            self._enter_reboot(now)
            self._control = Query(self.session_id).encode()
            return
        reason, prefix = _reason(frame.reason)
        self.phase = Phase.REJECTED
        self._deadline = None
        self._events.append(Rejected(reason, prefix + frame.message, **self._ids()))

    def _on_done(self, now: float) -> None:
        # With OFFER_COMMIT the device answers the last segment with DONE (SPEC 8.9).
        if self.phase is not Phase.COMMIT and not (self.phase is Phase.DATA and self.autocommit):
            self._ignore()
            return
        self._complete_transfer(now)

    def _complete_transfer(self, now: float) -> None:
        self._events.append(Completed(self._prefix[-1], self._n, self._resumed_from, **self._ids()))
        self._completed = True
        if not self._await_checkin:
            self.phase = Phase.DONE
            self._deadline = None
            return
        self._enter_reboot(now)

    # ------------------------------------------------------------ check-in (SPEC 8.7)

    def _enter_reboot(self, now: float) -> None:
        """Wait for the new image to come back and say it is pending verify."""
        self.phase = Phase.REBOOT
        self._reset_units(self._n)
        self._hello = {}
        self._hello_bytes = 0
        self._hello_count = 0
        if self._checkin_deadline is None:
            self._checkin_deadline = now + self._checkin_timeout
            self._events.append(Rebooting(self._checkin_timeout, **self._ids()))
        self._rto = max(self._rto, self._min_rto, self._reboot_wait or 0.0)
        self._deadline = now + self._rto

    def _reboot_timer(self, now: float) -> None:
        """Ask again (QUERY), backing off, until the check-in deadline."""
        assert self._checkin_deadline is not None
        if now >= self._checkin_deadline:
            self._fail(
                Reason.CHECKIN_TIMEOUT,
                f"the new image did not check in within {self._checkin_timeout:g} s "
                "(the device rolls back when its own deadline passes)",
            )
            return
        self._rto = min(self._rto * 2, self._max_rto, max(self._query_interval, self._min_rto))
        self._deadline = min(now + self._rto, self._checkin_deadline)
        self._control = Query(self.session_id).encode()

    def _confirm_frame(self) -> bytes:
        assert self._nonce is not None
        return Confirm(self.uid, self._nonce).encode()

    def _on_checkin(self, frame: Checkin, now: float) -> None:
        """The short check-in on a resumed channel (SPEC 8.9): this update's image
        booted pending verify with that nonce. After this session's offer was
        accepted (the channel it arrives on was resumed from this session's own); it
        also stands for a DONE that was lost."""
        active = (Phase.DATA, Phase.COMMIT, Phase.REBOOT, Phase.CONFIRM)
        if not self.resume or self.phase not in active or frame.update_id != self.uid:
            self._ignore()
            return
        self._alive(now)
        if not self._completed:
            self._complete_transfer(now)  # its DONE was lost: the device is past it
        self._go_confirm(frame.nonce, now)

    def _go_confirm(self, nonce: bytes, now: float) -> None:
        if self.phase is not Phase.CONFIRM:
            self._events.append(CheckedIn(self.manifest.version, **self._ids()))
        self.phase = Phase.CONFIRM
        self._nonce = nonce
        self._retries = 0
        self._control = self._confirm_frame()
        self._deadline = now + self._rto

    def _on_checkin_info(self, info: HelloInfo, now: float) -> bool:
        """A HELLO after the transfer (or at the start of a later session): True
        if it settled where this update stands on the device."""
        target = self.manifest.target_sha256
        if info.failed_uid == self.uid and info.failed_reason is not None:
            reason, prefix = _reason(info.failed_reason)
            self._fail(
                reason,
                f"{prefix}the device rolled back to its previous image "
                f"({reason.name}); it runs {info.running_version}",
                send_abort=False,
            )
            return True
        if info.pending_uid == self.uid and info.pending_sha256 == target:
            if not self._completed:
                self._resumed_from = self._n
                self._complete_transfer(now)
            assert info.pending_nonce is not None
            self._go_confirm(info.pending_nonce, now)
            return True
        if self._completed and info.pending_uid is None and info.running_sha256 == target:
            self._finish_confirmed()
            return True
        return False

    def _finish_confirmed(self) -> None:
        self.phase = Phase.DONE
        self._deadline = None
        self._control = None
        self._events.append(Confirmed(self.manifest.version, **self._ids()))

    def _on_confirmed(self, frame: ConfirmedFrame) -> None:
        if self.phase is not Phase.CONFIRM or frame.update_id != self.uid:
            self._ignore()
            return
        self._finish_confirmed()

    def _on_abort(self, frame: Abort, now: float) -> None:
        if frame.reason == Reason.BAD_STATE:
            if self.phase in (Phase.HANDSHAKE, Phase.REBOOT, Phase.CONFIRM):
                self._ignore()
            else:
                self._restart(now, "device has no session (reset?)")
            return
        reason, prefix = _reason(frame.reason)
        self._fail(reason, f"device aborted: {prefix}{frame.message}", send_abort=False)

    # ------------------------------------------------------------ state changes

    def _restart(self, now: float, why: str) -> None:
        self._restarts += 1
        self._stats["restarts"] += 1
        if self._restarts > self._max_restarts:
            self._fail(Reason.BAD_STATE, f"device lost the session {self._restarts} times: {why}")
            return
        self.phase = Phase.HANDSHAKE
        self._hello = {}
        self._hello_bytes = 0
        self._hello_count = 0
        self._reset_units(OFFER_SEGMENT)
        self._control = Query(self.session_id).encode()
        self._deadline = now + self._rto

    def _enter_commit(self) -> None:
        self.phase = Phase.COMMIT
        self._reset_units(self._n)
        self._control = Commit().encode()

    def _reject_locally(self, reason: Reason, message: str) -> None:
        self.phase = Phase.REJECTED
        self._deadline = None
        self._control = self._abort_frame(reason, message)
        self._events.append(Rejected(reason, message, local=True, **self._ids()))

    def _fail(self, reason: Reason, message: str, *, send_abort: bool = True) -> None:
        self.phase = Phase.FAILED
        self._deadline = None
        self._probe = None
        self._control = self._abort_frame(reason, message) if send_abort else None
        self._events.append(Failed(reason, message, **self._ids()))

    def _abort_frame(self, reason: Reason, message: str) -> bytes:
        limit = self.mtu if self.info is None else min(self.mtu, self.info.max_frame)
        # [10, reason, str]: 3 bytes + a str header of at most 3 (messages < 64 KiB)
        return Abort(reason, truncate_message(message, limit - 6)).encode()

    # ------------------------------------------------------------ units

    def _reset_units(self, group: int) -> None:
        self._inflight = {}
        self._last_sent = {}
        self._lost = set()
        self._held = set()
        self._held_at = {}
        self._next = group
        self._next_at = self._order
        self._cursor = None
        self._probe = None
        self._echo_floor = -1
        self._since_poll = 0
        self._polls = {}

    def _chunks(self, group: int) -> int:
        if group == OFFER_SEGMENT:
            return len(self._parts)
        return -(-len(self._segments[group]) // self.chunk_size)

    def _payload(self, unit: Unit) -> bytes:
        group, index = unit
        if group == OFFER_SEGMENT:
            return self._parts[index]
        start = index * self.chunk_size
        return self._segments[group][start : start + self.chunk_size]

    def _end(self) -> int:
        return OFFER_SEGMENT + 1 if self.phase is Phase.OFFER else self._n

    def _is_held(self, unit: Unit) -> bool:
        return unit[0] < self._next or (unit[0] == self._next and unit[1] in self._held)

    def _is_last(self, unit: Unit) -> bool:
        end = self._end()
        return unit[0] == end - 1 and unit[1] == self._chunks(unit[0]) - 1

    def _advance_to(self, group: int) -> None:
        for unit in [u for u in self._inflight if u[0] < group]:
            del self._inflight[unit]
        self._lost = {u for u in self._lost if u[0] >= group}
        for old in range(max(self._next, 0), group):
            for chunk in range(self._chunks(old)):
                self._last_sent.pop((old, chunk), None)
        self._next = group
        self._next_at = self._order
        self._held = set()
        self._held_at = {}
        if self._cursor is not None and self._cursor < (group, 0):
            self._cursor = (group, 0) if group < self._end() else None

    def _rewind_to(self, group: int) -> None:
        """A status made after the claim that moved the sender past ``group``
        shows the device still on it: the claim was false; resume from there."""
        self._stats["false_claims"] += 1
        self._next = group
        self._held = set()
        self._held_at = {}
        self._lost = {u for u in self._lost if u[0] >= group}
        self._cursor = (group, 0)

    def _pick(self) -> Unit | None:
        """The next unit to send: the lowest lost one, else the next never sent;
        none for a later segment once ``lookahead`` of those are in flight."""
        ahead = sum(1 for u in self._inflight if u[0] > self._next)
        limit = self._ahead_limit()
        if self._lost:
            unit = min(self._lost)
            if (unit[0] > self._next and ahead >= limit) or not self._span_ok(unit):
                return None
            self._lost.discard(unit)
            return unit
        while self._cursor is not None:
            unit = self._cursor
            group, index = unit
            if group > self._next and ahead >= limit:
                return None
            if not self._is_held(unit) and not self._span_ok(unit):
                return None
            if index + 1 < self._chunks(group):
                self._cursor = (group, index + 1)
            elif group + 1 < self._end():
                self._cursor = (group + 1, 0)
            else:
                self._cursor = None
            if not self._is_held(unit):
                return unit
        return None

    def _ahead_limit(self) -> int:
        if self.compact and self.phase is Phase.DATA:
            return 0  # a later segment's chunk could not be told from this one's
        return (self.window + 1) // 2 if self._lookahead is None else self._lookahead

    def _span_ok(self, unit: Unit) -> bool:
        """Compact DATA: the chunk is within 63 of the lowest the device may miss."""
        if not self.compact or self.phase is not Phase.DATA:
            return True
        low = 0
        while low in self._held:
            low += 1
        return unit[0] == self._next and unit[1] - low <= COMPACT_SPAN

    def _poll_frame(self) -> bytes:
        """Compact sessions probe with POLL, naming the newest unit in flight (the
        STATUS then judges everything sent before it); the unit's own round-trip
        sample is void (Karn), as for a resend."""
        if self._inflight:
            unit = max(self._inflight, key=lambda u: self._inflight[u].order)
            self._inflight[unit].count += 1
        elif self._lost:
            unit = min(self._lost)
        else:
            unit = next(
                ((self._next, c) for c in range(self._chunks(self._next)) if c not in self._held),
                (self._next, 0),
            )
        return Poll(*unit).encode()

    def _probe_unit(self) -> Unit | None:
        """What to send, polled, when the timer fires: the lowest unit not known
        to be held, the one the device cannot go on without."""
        if self._inflight or self._lost:
            unit = min([*self._inflight, *self._lost])
            self._inflight.pop(unit, None)
            self._lost.discard(unit)
            return unit
        group = self._next
        if group < self._end():
            for chunk in range(self._chunks(group)):
                if chunk not in self._held:
                    return (group, chunk)
        # Everything is held (e.g. the ACCEPT is what got lost): poll with the last unit.
        last = self._end() - 1
        return (last, self._chunks(last) - 1) if last >= OFFER_SEGMENT else None

    def _send_unit(self, unit: Unit, now: float, *, poll: bool) -> bytes:
        prev = self._last_sent.get(unit)
        poll = poll or self._since_poll + 1 >= self._poll_every or self._is_last(unit)
        self._since_poll = 0 if poll else self._since_poll + 1
        body = self._encode(unit, poll)
        if unit[0] == OFFER_SEGMENT:
            self._stats["offer_frames"] += 1
        else:
            self._stats["data_frames"] += 1
            self._stats["data_payload_bytes"] += len(self._payload(unit))
        if prev is not None:
            self._stats["retransmits"] += 1
        self._order += 1
        rec = _Sent(
            self._order, now, prev.count + 1 if prev else 1, prev.first if prev else self._order
        )
        self._inflight.pop(unit, None)
        self._inflight[unit] = rec
        self._last_sent[unit] = rec
        if poll:
            self._stats["polls"] += 1
            self._polls[rec.order] = rec.time
        return body

    def _encode(self, unit: Unit, poll: bool) -> bytes:
        payload = self._payload(unit)
        if unit[0] == OFFER_SEGMENT:
            return Offer(unit[1], len(self._parts), payload, poll).encode()
        if self.compact:
            return CompactData(unit[1] & 0x3F, payload, poll).encode()
        return Data(unit[0], unit[1], payload, poll).encode()

    def _wait_base(self, now: float) -> float:
        """Base of the retransmit deadline: when the oldest unanswered poll was
        handed over (a STATUS is due one round trip later), else now."""
        if self._polls:
            return max(now, next(iter(self._polls.values())))
        return now

    # ------------------------------------------------------------ timing, progress

    def _rtt_sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._rto = min(max(self._srtt + 4 * self._rttvar, self._min_rto), self._max_rto)

    def _report_progress(self) -> None:
        if self._next >= self._n:
            confirmed = self._prefix[-1]
        else:
            seg_len = len(self._segments[self._next])
            cs = self.chunk_size
            confirmed = self._prefix[self._next] + sum(
                min(cs, seg_len - c * cs) for c in self._held
            )
        if confirmed != self._confirmed:
            self._confirmed = confirmed
            self._events.append(
                Progress(
                    confirmed, self._prefix[-1], min(self._next, self._n), self._n, **self._ids()
                )
            )
