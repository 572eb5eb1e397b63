"""Link frames (SPEC.md section 8): one msgpack array per frame, a small integer type code first.

A frame *body* is what a :class:`~otaferry.transport.link.Link` carries; byte-stream
links wrap it in COBS + CRC (``framing.py``), the AEAD of a later issue wraps it in
a tag. Every body must fit the link MTU, so the header of the data frame is
budgeted byte by byte (:func:`data_overhead`, SPEC.md section 8 "Overhead").

Each frame is a frozen dataclass that checks its fields when built;
:func:`decode_frame` turns a body back into one of them or raises
:class:`DecodeError` with reason ``BAD_FRAME`` — never anything else, whatever
the input (truncated, trailing bytes, wrong types, floats, ext types ...).
Decoding accepts any valid msgpack form of a field (a wide int is not an
error); encoding always gives the shortest form, which is what the golden
vectors freeze and what ``device_fw/frames.py`` produces too.

Two payloads larger than a frame travel split into parts: the device's
:class:`HelloInfo` (HELLO frames) and the :class:`OfferBlob` holding the signed
manifest (OFFER frames).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, TypeAlias

import msgpack

from .errors import DecodeError, Reason

PROTOCOL_VERSION = 1
POLL_FLAG = 0x20
"""OR-ed into the type code of OFFER and DATA frames: "answer with a STATUS"."""

NO_SESSION = 0
"""Session id of a HELLO the device sends unasked (at boot): it belongs to no session."""
OFFER_SEGMENT = -1
"""The 'segment' number STATUS uses for the parts of the offer blob."""

U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
SIGNATURE_SIZE = 64
UID_SIZE = 16
NONCE_SIZE = 8  # the check-in nonce a pending image announces
DEVICE_ID_SIZE = 8
SHA256_SIZE = 32

# SPEC 8.8: HELLO field 17, what a device understands besides version 1 ...
FEATURE_BATCH = 1  # it acknowledges DATA per poll and per segment, not per gap
FEATURE_COMPACT = 2  # it takes compact DATA frames and the short sealed record
FEATURE_RESUME = 4  # it resumes the secure channel after the reboot (SPEC 8.9, 9.11)
FEATURE_COMMIT = 8  # it commits by itself once the last segment is written (SPEC 8.9)
# SPEC 8.3: HELLO field 18, the delta RAM budget (SPEC 7.6) a device announces only
# when it is not this default (protocol.delta.DEFAULT_DEVICE_RAM, what builds target).
DEFAULT_RAM_BUDGET = 65536
# ... and OfferBlob field 4, what the sender uses in this session.
OFFER_BATCH = 1
OFFER_COMPACT = 2
OFFER_RESUME = 4
OFFER_COMMIT = 8
COMPACT_POLL = 0x40
COMPACT_MASK = 0x3F

__all__ = [
    "NO_SESSION",
    "OFFER_SEGMENT",
    "POLL_FLAG",
    "PROTOCOL_VERSION",
    "Abort",
    "Accept",
    "Checkin",
    "Commit",
    "CompactData",
    "Confirm",
    "Confirmed",
    "Data",
    "Done",
    "Frame",
    "FrameType",
    "Hello",
    "HelloInfo",
    "Offer",
    "OfferBlob",
    "Poll",
    "Query",
    "Reject",
    "Status",
    "bitmap_chunks",
    "data_overhead",
    "decode_frame",
    "max_chunk_size",
    "max_part_size",
    "offer_overhead",
    "split_blob",
    "truncate_message",
]


class FrameType(IntEnum):
    QUERY = 1  # host -> device: start (or re-find) a session, ask for HELLO
    HELLO = 2  # device -> host: one part of HelloInfo
    OFFER = 3  # host -> device: one part of the OfferBlob (| POLL_FLAG)
    ACCEPT = 4  # device -> host: offer verified, next segment + bitmap held
    REJECT = 5  # device -> host: installer check failed (reason, message)
    DATA = 6  # host -> device: one chunk of one segment (| POLL_FLAG)
    STATUS = 7  # device -> host: next segment + bitmap of the one in flight
    COMMIT = 8  # host -> device: all segments sent, verify and arm boot
    DONE = 9  # device -> host: image verified and selected for boot
    ABORT = 10  # either way: session over (reason, message)
    CONFIRM = 11  # host -> device: check-in answer (update id, the boot's nonce)
    CONFIRMED = 12  # device -> host: the running image is confirmed (VALID)
    POLL = 13  # host -> device: answer with a STATUS echoing (segment, chunk)
    CHECKIN = 14  # device -> host: pending verify for (update id, the boot's nonce)


def _bad(message: str) -> DecodeError:
    return DecodeError(f"frame: {message}", Reason.BAD_FRAME)


def _int(name: str, value: object, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise _bad(f"{name} must be an int in {lo}..{hi}, got {value!r:.40}")
    return value


def _bytes(name: str, value: object, lo: int = 0, hi: int | None = None) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise _bad(f"{name} must be bytes, got {type(value).__name__}")
    data = bytes(value)
    if len(data) < lo or (hi is not None and len(data) > hi):
        raise _bad(f"{name} has {len(data)} bytes, allowed {lo}..{hi}")
    return data


def _str(name: str, value: object) -> str:
    if type(value) is not str:
        raise _bad(f"{name} must be a str, got {type(value).__name__}")
    return value


def _pack(items: Sequence[Any]) -> bytes:
    out = msgpack.packb(list(items), use_bin_type=True)
    assert isinstance(out, bytes)
    return out


# --- frames -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """``[1, version, session_id]`` — host asks for HELLO; a new id starts a session."""

    session_id: int
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _int("version", self.version, 0, 255)
        _int("session_id", self.session_id, 0, U32_MAX)

    def encode(self) -> bytes:
        return _pack([FrameType.QUERY, self.version, self.session_id])


@dataclass(frozen=True, slots=True)
class Hello:
    """``[2, session_id, part, count, bytes]`` — one part of the encoded HelloInfo."""

    session_id: int
    part: int
    count: int
    chunk: bytes

    def __post_init__(self) -> None:
        _int("session_id", self.session_id, 0, U32_MAX)
        _parts_check(self.part, self.count)
        _bytes("chunk", self.chunk, 1)

    def encode(self) -> bytes:
        return _pack([FrameType.HELLO, self.session_id, self.part, self.count, self.chunk])


@dataclass(frozen=True, slots=True)
class Offer:
    """``[3 | poll, part, count, bytes]`` — one part of the encoded OfferBlob."""

    part: int
    count: int
    chunk: bytes
    poll: bool = False

    def __post_init__(self) -> None:
        _parts_check(self.part, self.count)
        _bytes("chunk", self.chunk, 1)

    def encode(self) -> bytes:
        code = FrameType.OFFER | (POLL_FLAG if self.poll else 0)
        return _pack([code, self.part, self.count, self.chunk])


@dataclass(frozen=True, slots=True)
class Accept:
    """``[4, next_segment, base, bitmap]`` — begin() passed; what the device holds."""

    next_segment: int
    base: int = 0
    bitmap: bytes = b""

    def __post_init__(self) -> None:
        _int("next_segment", self.next_segment, 0, U16_MAX + 1)
        _int("base", self.base, 0, U16_MAX + 1)
        _bytes("bitmap", self.bitmap)

    def encode(self) -> bytes:
        return _pack([FrameType.ACCEPT, self.next_segment, self.base, self.bitmap])

    def held(self, count: int) -> set[int]:
        """The chunk indices of ``next_segment`` below ``count`` the device holds."""
        return bitmap_chunks(self.base, self.bitmap, count)


def _check_reason_frame(frame: Reject | Abort) -> None:
    if isinstance(frame.reason, Reason):  # store the plain number, as decoding does
        object.__setattr__(frame, "reason", int(frame.reason))
    _int("reason", frame.reason, 0, 255)
    _str("message", frame.message)


@dataclass(frozen=True, slots=True)
class Reject:
    """``[5, reason, message]`` — the installer refused (a device_fw reason code)."""

    reason: int
    message: str = ""

    def __post_init__(self) -> None:
        _check_reason_frame(self)

    def encode(self) -> bytes:
        return _pack([FrameType.REJECT, self.reason, self.message])


@dataclass(frozen=True, slots=True)
class Data:
    """``[6 | poll, segment, chunk, bytes]`` — chunk ``chunk`` of segment ``segment``.

    Chunk k covers payload bytes ``k*chunk_size .. (k+1)*chunk_size`` of the
    segment, ``chunk_size`` being fixed for the session by the offer.
    """

    segment: int
    chunk: int
    payload: bytes
    poll: bool = False

    def __post_init__(self) -> None:
        _int("segment", self.segment, 0, U16_MAX)
        _int("chunk", self.chunk, 0, U16_MAX)
        _bytes("payload", self.payload, 1)

    def encode(self) -> bytes:
        code = FrameType.DATA | (POLL_FLAG if self.poll else 0)
        return _pack([code, self.segment, self.chunk, self.payload])


@dataclass(frozen=True, slots=True)
class CompactData:
    """``b | payload`` with ``b`` < 0x80: DATA in one byte (SPEC 8.8).

    ``b`` = poll (0x40) | the chunk index mod 64; the segment is the one the
    device is filling and the chunk the one with these low bits at or above
    its lowest missing chunk. Not a msgpack array (those start 0x90-0x9F, 0xDC,
    0xDD), so a body tells its form from its first byte. Only for devices that
    announce ``FEATURE_COMPACT``, inside the secure channel (a plaintext record
    starting below 0x80 would read as sealed).
    """

    low: int
    payload: bytes
    poll: bool = False

    def __post_init__(self) -> None:
        _int("low", self.low, 0, COMPACT_MASK)
        _bytes("payload", self.payload, 1)

    def encode(self) -> bytes:
        return bytes([(COMPACT_POLL if self.poll else 0) | self.low]) + self.payload


@dataclass(frozen=True, slots=True)
class Poll:
    """``[13, segment, chunk]`` — answer with a STATUS echoing (segment, chunk) (SPEC 8.8).

    What a compact sender probes with when its timer fires: it carries no data,
    so it can name a chunk the device may already hold."""

    segment: int
    chunk: int

    def __post_init__(self) -> None:
        _int("segment", self.segment, 0, U16_MAX)
        _int("chunk", self.chunk, 0, U16_MAX)

    def encode(self) -> bytes:
        return _pack([FrameType.POLL, self.segment, self.chunk])


@dataclass(frozen=True, slots=True)
class Status:
    """``[7, segment, base, bitmap]`` or ``[7, segment, base, bitmap, echo_seg, echo_chunk]``.

    Every segment below ``segment`` is written; of ``segment`` (``-1``: the offer
    parts) the device holds chunks ``0 .. base-1`` and chunk ``base + i`` for each
    set bit i of ``bitmap`` (bit i is ``bitmap[i // 8] >> (i % 8) & 1``). The echo
    names the frame that made the device send this status (the OFFER part with
    echo_seg -1, or the DATA chunk); it lets the sender date the status.
    """

    segment: int
    base: int = 0
    bitmap: bytes = b""
    echo: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        _int("segment", self.segment, OFFER_SEGMENT, U16_MAX + 1)
        _int("base", self.base, 0, U16_MAX + 1)
        _bytes("bitmap", self.bitmap)
        if self.echo is not None:
            if not isinstance(self.echo, tuple) or len(self.echo) != 2:
                raise _bad("echo must be a (segment, chunk) pair")
            _int("echo segment", self.echo[0], OFFER_SEGMENT, U16_MAX)
            _int("echo chunk", self.echo[1], 0, U16_MAX)

    def encode(self) -> bytes:
        items: list[Any] = [FrameType.STATUS, self.segment, self.base, self.bitmap]
        if self.echo is not None:
            items.extend(self.echo)
        return _pack(items)

    def held(self, count: int) -> set[int]:
        """The chunk indices below ``count`` this status says the device holds."""
        return bitmap_chunks(self.base, self.bitmap, count)


@dataclass(frozen=True, slots=True)
class Commit:
    """``[8]`` — every segment acknowledged: verify the image, arm boot."""

    def encode(self) -> bytes:
        return _pack([FrameType.COMMIT])


@dataclass(frozen=True, slots=True)
class Done:
    """``[9]`` — the image is written, verified and selected for the next boot."""

    def encode(self) -> bytes:
        return _pack([FrameType.DONE])


@dataclass(frozen=True, slots=True)
class Abort:
    """``[10, reason, message]`` — either side ends the session."""

    reason: int
    message: str = ""

    def __post_init__(self) -> None:
        _check_reason_frame(self)

    def encode(self) -> bytes:
        return _pack([FrameType.ABORT, self.reason, self.message])


@dataclass(frozen=True, slots=True)
class _UpdateBoot:
    """Fields of a frame naming one boot of one update: ``[type, update_id, nonce]``."""

    update_id: bytes
    nonce: bytes

    TYPE: ClassVar[FrameType]

    def __post_init__(self) -> None:
        _bytes("update_id", self.update_id, UID_SIZE, UID_SIZE)
        _bytes("nonce", self.nonce, NONCE_SIZE, NONCE_SIZE)

    def encode(self) -> bytes:
        return _pack([self.TYPE, self.update_id, self.nonce])


@dataclass(frozen=True, slots=True)
class Confirm(_UpdateBoot):
    """``[11, update_id, nonce]`` — the update server's answer to a check-in: the
    image of update ``update_id`` that the device booted with check-in ``nonce``
    (fresh each boot, SPEC 8.7) reached its server; mark it valid."""

    TYPE: ClassVar[FrameType] = FrameType.CONFIRM


@dataclass(frozen=True, slots=True)
class Confirmed:
    """``[12, update_id]`` — the running image of that update is now VALID."""

    update_id: bytes

    def __post_init__(self) -> None:
        _bytes("update_id", self.update_id, UID_SIZE, UID_SIZE)

    def encode(self) -> bytes:
        return _pack([FrameType.CONFIRMED, self.update_id])


@dataclass(frozen=True, slots=True)
class Checkin(_UpdateBoot):
    """``[14, update_id, nonce]`` — the new image of update ``update_id`` booted,
    pending verify, with check-in ``nonce``: the short check-in a device sends
    first on a resumed channel (SPEC 8.9), in place of a HELLO's field 15."""

    TYPE: ClassVar[FrameType] = FrameType.CHECKIN


Frame: TypeAlias = (
    Query | Hello | Offer | Accept | Reject | Data | Status | Commit | Done | Abort | Confirm
    | Confirmed | CompactData | Poll | Checkin
)


def _parts_check(part: int, count: int) -> None:
    _int("count", count, 1, U16_MAX)
    _int("part", part, 0, count - 1)


def decode_frame(body: bytes | bytearray | memoryview) -> Frame:
    """Parse one frame body; ``DecodeError(BAD_FRAME)`` for anything else."""
    if body and body[0] < 0x80:
        if len(body) < 2:
            raise _bad("compact DATA without payload")
        first = body[0]
        return CompactData(first & COMPACT_MASK, bytes(body[1:]), bool(first & COMPACT_POLL))
    try:
        items = msgpack.unpackb(
            bytes(body), raw=False, use_list=True, strict_map_key=True, max_ext_len=0
        )
    except Exception as exc:  # msgpack raises a zoo of types; none may escape
        raise _bad(f"not one msgpack value ({type(exc).__name__}: {exc})") from None
    if not isinstance(items, list) or not items:
        raise _bad("not a non-empty msgpack array")
    code = items[0]
    if type(code) is not int:
        raise _bad(f"type code {code!r:.20} is not an int")
    poll = bool(code & POLL_FLAG) and (code & ~POLL_FLAG) in (FrameType.OFFER, FrameType.DATA)
    if poll:
        code &= ~POLL_FLAG
    try:
        ftype = FrameType(code)
    except ValueError:
        raise _bad(f"unknown type code {code}") from None
    args = items[1:]
    n = len(args)
    try:
        return _build(ftype, args, n, poll)
    except TypeError as exc:  # a wrong arity reaches a constructor: still BAD_FRAME
        raise _bad(str(exc)) from None


_ARITY = {
    FrameType.QUERY: (2,),
    FrameType.HELLO: (4,),
    FrameType.OFFER: (3,),
    FrameType.ACCEPT: (3,),
    FrameType.REJECT: (2,),
    FrameType.DATA: (3,),
    FrameType.STATUS: (3, 5),
    FrameType.COMMIT: (0,),
    FrameType.DONE: (0,),
    FrameType.ABORT: (2,),
    FrameType.CONFIRM: (2,),
    FrameType.CONFIRMED: (1,),
    FrameType.POLL: (2,),
    FrameType.CHECKIN: (2,),
}


def _build(ftype: FrameType, a: list[Any], n: int, poll: bool) -> Frame:
    if n not in _ARITY[ftype]:
        raise _bad(f"{ftype.name} has {n} fields, expected {' or '.join(map(str, _ARITY[ftype]))}")
    if ftype is FrameType.QUERY:
        return Query(version=a[0], session_id=a[1])
    if ftype is FrameType.HELLO:
        return Hello(a[0], a[1], a[2], _bytes("chunk", a[3], 1))
    if ftype is FrameType.OFFER:
        return Offer(a[0], a[1], _bytes("chunk", a[2], 1), poll)
    if ftype is FrameType.ACCEPT:
        return Accept(a[0], a[1], _bytes("bitmap", a[2]))
    if ftype is FrameType.REJECT:
        return Reject(a[0], a[1])
    if ftype is FrameType.DATA:
        return Data(a[0], a[1], _bytes("payload", a[2], 1), poll)
    if ftype is FrameType.STATUS:
        echo = (a[3], a[4]) if n == 5 else None
        return Status(a[0], a[1], _bytes("bitmap", a[2]), echo)
    if ftype is FrameType.COMMIT:
        return Commit()
    if ftype is FrameType.DONE:
        return Done()
    if ftype is FrameType.CONFIRM:
        return Confirm(_bytes("update_id", a[0]), _bytes("nonce", a[1]))
    if ftype is FrameType.CONFIRMED:
        return Confirmed(_bytes("update_id", a[0]))
    if ftype is FrameType.POLL:
        return Poll(a[0], a[1])
    if ftype is FrameType.CHECKIN:
        return Checkin(_bytes("update_id", a[0]), _bytes("nonce", a[1]))
    return Abort(a[0], a[1])


# --- split payloads ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloInfo:
    """What a device says about itself (HELLO parts joined).

    Encoded as the msgpack array ``[version, device_id, hw, chip, running_version,
    running_sha256, security_counter, slot_size, max_frame, codecs, max_window_log,
    max_segment_payload, max_offer, resume (, pending (, failed (, features
    (, ram_budget))))]`` where ``resume`` is nil or ``[update_id, next_segment]``.
    Later versions may append fields; a reader ignores elements past the ones it
    knows.
    """

    device_id: bytes
    hw: str
    chip: str
    running_version: str | None
    running_sha256: bytes | None
    security_counter: int
    slot_size: int
    max_frame: int
    codecs: tuple[str, ...]
    max_window_log: int
    max_segment_payload: int
    max_offer: int
    resume_uid: bytes | None = None
    resume_next: int | None = None
    version: int = PROTOCOL_VERSION
    # fields 15-16 (SPEC 8.1), on the wire only when set:
    pending_uid: bytes | None = None  # the running image awaits its check-in ...
    pending_sha256: bytes | None = None  # ... with this SHA-256
    pending_nonce: bytes | None = None  # ... and this boot's nonce
    failed_uid: bytes | None = None  # the last update that rolled back ...
    failed_reason: int | None = None  # ... and why (SELF_TEST_FAILED, CHECKIN_TIMEOUT, ...)
    features: int = 0  # field 17 (SPEC 8.8): FEATURE_BATCH | FEATURE_COMPACT
    ram_budget: int = DEFAULT_RAM_BUDGET  # field 18 (SPEC 8.3): the delta RAM budget (7.6)

    FIELDS = 14

    def __post_init__(self) -> None:
        _int("version", self.version, 0, 255)
        _bytes("device_id", self.device_id, DEVICE_ID_SIZE, DEVICE_ID_SIZE)
        _str("hw", self.hw)
        _str("chip", self.chip)
        if self.running_version is not None:
            _str("running_version", self.running_version)
        if self.running_sha256 is not None:
            _bytes("running_sha256", self.running_sha256, SHA256_SIZE, SHA256_SIZE)
        for name in ("security_counter", "slot_size", "max_segment_payload", "max_offer"):
            _int(name, getattr(self, name), 0, U32_MAX)
        _int("max_frame", self.max_frame, 1, U32_MAX)
        _int("max_window_log", self.max_window_log, 0, 63)
        if not isinstance(self.codecs, tuple):
            raise _bad("codecs must be a tuple of str")
        for codec in self.codecs:
            _str("codec", codec)
        if (self.resume_uid is None) != (self.resume_next is None):
            raise _bad("resume needs both update id and next segment")
        if self.resume_uid is not None:
            _bytes("resume uid", self.resume_uid, UID_SIZE, UID_SIZE)
            _int("resume next", self.resume_next, 0, U16_MAX + 1)
        pending = (self.pending_uid, self.pending_sha256, self.pending_nonce)
        if any(v is not None for v in pending):
            _bytes("pending uid", self.pending_uid, UID_SIZE, UID_SIZE)
            _bytes("pending sha256", self.pending_sha256, SHA256_SIZE, SHA256_SIZE)
            _bytes("pending nonce", self.pending_nonce, NONCE_SIZE, NONCE_SIZE)
        if (self.failed_uid is None) != (self.failed_reason is None):
            raise _bad("failed needs both update id and reason")
        if self.failed_uid is not None:
            _bytes("failed uid", self.failed_uid, UID_SIZE, UID_SIZE)
            _int("failed reason", self.failed_reason, 0, 255)
        _int("features", self.features, 0, U32_MAX)
        _int("ram_budget", self.ram_budget, 0, U32_MAX)

    def encode(self) -> bytes:
        resume = None if self.resume_uid is None else [self.resume_uid, self.resume_next]
        return _pack(
            [
                self.version,
                self.device_id,
                self.hw,
                self.chip,
                self.running_version,
                self.running_sha256,
                self.security_counter,
                self.slot_size,
                self.max_frame,
                list(self.codecs),
                self.max_window_log,
                self.max_segment_payload,
                self.max_offer,
                resume,
                *self._tail(),
            ]
        )

    def _tail(self) -> list[Any]:
        # Each optional field is on the wire only when it differs from its default,
        # so a hello without them is what a version-1 device sends; an earlier one
        # is filled in (nil for 15-16, 0 for 17, which a reader of 17 takes as an
        # int) only when a later one is there.
        tail: list[Any] = []
        if self.ram_budget != DEFAULT_RAM_BUDGET:
            tail = [None, None, self.features, self.ram_budget]
        elif self.features:
            tail = [None, None, self.features]
        if self.failed_uid is not None:
            tail = [None, [self.failed_uid, self.failed_reason], *tail[2:]]
        if self.pending_uid is not None:
            tail = [[self.pending_uid, self.pending_sha256, self.pending_nonce], *tail[1:]]
        return tail

    @classmethod
    def decode(cls, blob: bytes) -> HelloInfo:
        items = _unpack_array(blob, "hello info")
        if len(items) < cls.FIELDS:
            raise _bad(f"hello info has {len(items)} fields, needs {cls.FIELDS}")
        codecs = items[9]
        if not isinstance(codecs, list):
            raise _bad("hello codecs must be an array")
        resume = items[13]
        if resume is not None and (not isinstance(resume, list) or len(resume) != 2):
            raise _bad("hello resume must be nil or [update_id, next_segment]")
        pending = items[14] if len(items) > 14 else None
        failed = items[15] if len(items) > 15 else None
        features = items[16] if len(items) > 16 else 0
        ram_budget = items[17] if len(items) > 17 else DEFAULT_RAM_BUDGET
        if pending is not None and (not isinstance(pending, list) or len(pending) != 3):
            raise _bad("hello pending must be nil or [update_id, sha256, nonce]")
        if failed is not None and (not isinstance(failed, list) or len(failed) != 2):
            raise _bad("hello failed must be nil or [update_id, reason]")
        try:
            return cls(
                version=items[0],
                device_id=_bytes("device_id", items[1]),
                hw=items[2],
                chip=items[3],
                running_version=items[4],
                running_sha256=None if items[5] is None else _bytes("sha256", items[5]),
                security_counter=items[6],
                slot_size=items[7],
                max_frame=items[8],
                codecs=tuple(codecs),
                max_window_log=items[10],
                max_segment_payload=items[11],
                max_offer=items[12],
                resume_uid=None if resume is None else _bytes("resume uid", resume[0]),
                resume_next=None if resume is None else resume[1],
                pending_uid=None if pending is None else _bytes("pending uid", pending[0]),
                pending_sha256=None if pending is None else _bytes("pending sha", pending[1]),
                pending_nonce=None if pending is None else _bytes("pending nonce", pending[2]),
                failed_uid=None if failed is None else _bytes("failed uid", failed[0]),
                failed_reason=None if failed is None else failed[1],
                features=features,
                ram_budget=ram_budget,
            )
        except TypeError as exc:
            raise _bad(str(exc)) from None


@dataclass(frozen=True, slots=True)
class OfferBlob:
    """``[chunk_size, manifest, signature (, flags)]``: what OFFER parts carry, joined.

    ``chunk_size`` fixes the DATA chunking for the session (the device places
    chunk k at byte ``k * chunk_size`` of its segment buffer). ``flags``
    (SPEC 8.8: OFFER_BATCH, OFFER_COMPACT) only when not 0, and only to a device
    whose HELLO announced those features.
    """

    chunk_size: int
    manifest: bytes
    signature: bytes
    flags: int = 0

    def __post_init__(self) -> None:
        _int("chunk_size", self.chunk_size, 1, U16_MAX)
        _bytes("manifest", self.manifest, 1)
        _bytes("signature", self.signature, SIGNATURE_SIZE, SIGNATURE_SIZE)
        _int("flags", self.flags, 0, 255)

    def encode(self) -> bytes:
        tail = [self.flags] if self.flags else []
        return _pack([self.chunk_size, self.manifest, self.signature, *tail])

    @classmethod
    def decode(cls, blob: bytes) -> OfferBlob:
        items = _unpack_array(blob, "offer")
        if len(items) not in (3, 4):
            raise _bad(f"offer blob has {len(items)} fields, expected 3 or 4")
        flags = items[3] if len(items) == 4 else 0
        return cls(items[0], _bytes("manifest", items[1]), _bytes("signature", items[2]), flags)


def _unpack_array(blob: bytes, what: str) -> list[Any]:
    try:
        items = msgpack.unpackb(bytes(blob), raw=False, use_list=True, max_ext_len=0)
    except Exception as exc:
        raise _bad(f"{what}: not one msgpack value ({type(exc).__name__})") from None
    if not isinstance(items, list):
        raise _bad(f"{what}: not a msgpack array")
    return items


def split_blob(blob: bytes, part_size: int) -> list[bytes]:
    """Cut ``blob`` into parts of ``part_size`` bytes (the last may be shorter)."""
    if part_size < 1:
        raise ValueError("part_size must be >= 1")
    if not blob:
        raise ValueError("cannot split an empty blob")
    return [blob[i : i + part_size] for i in range(0, len(blob), part_size)]


def bitmap_chunks(base: int, bitmap: bytes, count: int) -> set[int]:
    """Chunk indices below ``count`` held per a (base, bitmap) pair."""
    held = set(range(min(base, count)))
    for index, byte in enumerate(bitmap):
        if not byte:
            continue
        for bit in range(8):
            chunk = base + index * 8 + bit
            if byte >> bit & 1 and chunk < count:
                held.add(chunk)
    return held


def truncate_message(message: str, limit: int) -> str:
    """``message`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    raw = message.encode()
    if len(raw) <= limit:
        return message
    return raw[: max(limit, 0)].decode("utf-8", "ignore")


# --- overhead ------------------------------------------------------------------


def int_size(value: int) -> int:
    """Bytes of the shortest msgpack encoding of an int."""
    if -32 <= value <= 127:
        return 1
    if value >= 0:
        return 2 if value <= 0xFF else 3 if value <= 0xFFFF else 5 if value <= U32_MAX else 9
    return 2 if value >= -128 else 3 if value >= -32768 else 5 if value >= -(1 << 31) else 9


def bin_header_size(length: int) -> int:
    return 2 if length <= 0xFF else 3 if length <= 0xFFFF else 5


def data_overhead(segment: int, chunk: int, length: int) -> int:
    """Bytes of a DATA frame besides its payload: array, type, segment, chunk, bin header."""
    return 1 + 1 + int_size(segment) + int_size(chunk) + bin_header_size(length)


def offer_overhead(part: int, count: int, length: int) -> int:
    return 1 + 1 + int_size(part) + int_size(count) + bin_header_size(length)


def max_chunk_size(mtu: int, segment_count: int, largest_segment: int) -> int:
    """Largest chunk size whose every DATA frame fits ``mtu`` (0 if none does).

    The worst header is the one of the last segment's last chunk; it depends on
    the chunk size (more chunks, wider index; longer payload, wider bin header,
    so not monotonically), hence shrink one byte at a time until it fits.
    """
    size = min(mtu, U16_MAX, largest_segment)
    while size > 0:  # at most ~10 steps: a header is never longer than that
        chunks = -(-largest_segment // size)
        if data_overhead(max(segment_count - 1, 0), chunks - 1, size) + size <= mtu:
            return size
        size -= 1
    return 0


def max_part_size(mtu: int, blob_size: int) -> int:
    """Largest part size whose every OFFER frame fits ``mtu`` (0 if none does)."""
    size = min(mtu, blob_size, U16_MAX)
    while size > 0:
        count = -(-blob_size // size)
        if count <= U16_MAX and offer_overhead(count - 1, count, size) + size <= mtu:
            return size
        size -= 1
    return 0
