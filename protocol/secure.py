"""The secure link (SPEC.md section 9): a Noise-KK-style handshake and AES-CCM-8 sealed frames.

Sits between the session frames (msgpack bodies, ``frames.py``) and what a link
carries (a radio packet, or a body for ``framing.py``)::

    session frame  --SecureChannel.seal-->  record  --link-->  open  --> frame

The first byte of every record says what it is (:func:`record_kind`): a sealed
frame (``0x00..0x7F``: the low 7 bits of its counter), a handshake message
(``0xE1``, ``0xE2``, ``0xE3`` reject), or a plaintext msgpack frame
(``0x90..0x9F``, ``0xDC``, ``0xDD``), which only a bench setup may accept.

Sans-IO and deterministic: ephemeral keys come in as arguments, nothing here
reads a clock or draws randomness. Handshake failures raise the project's
errors with a reason code; :meth:`SecureChannel.open` never raises — a frame
that fails any check is dropped and counted in :attr:`SecureChannel.stats`.

The symmetric state (chaining key ``ck``, handshake hash ``h``, MixKey,
MixHash, Split) follows the Noise framework (revision 34, sections 5.1-5.2)
with HKDF-SHA256; the cipher is AES-128-CCM with an 8-byte tag, which Noise
does not define, hence the protocol name :data:`PROTOCOL_NAME` of our own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from .errors import DecodeError, ProtocolError, Reason, RemoteError
from .x25519keys import KEY_SIZE as DH_SIZE
from .x25519keys import LinkPrivateKey, LinkPublicKey

PROTOCOL_NAME = b"otaferry-link-v1_KK_25519_AESCCM8_SHA256"
MSG1 = 0xE1
MSG2 = 0xE2
REJECT = 0xE3
IDENTIFY = 0xE4  # first contact: "who are you?" (padded to the answer's size)
IDENTITY = 0xE5  # the device's static X25519 public key, unauthenticated

AEAD_KEY_SIZE = 16
TAG_SIZE = 8
NONCE_SIZE = 13
HEADER_SIZE = 2
OVERHEAD = HEADER_SIZE + TAG_SIZE
"""Bytes a sealed frame adds to its body: 2-byte counter header + 8-byte tag."""
MSG1_SIZE = 2 + DH_SIZE + TAG_SIZE  # 42 with an empty payload
MSG2_SIZE = 1 + DH_SIZE + TAG_SIZE  # 41 with an empty payload
REJECT_SIZE = 2
MAX_BODY = 0xFFFF
SHORT_FIRST = 0xA0
"""Short sealed records (SPEC 9.5) start with 0xA0..0xBF: a compact DATA frame
(first byte < 0x80, SPEC 8.8) folded with the counter's low 6 bits into 2 bytes."""
SHORT_LAST = 0xBF
SHORT_GAP = 64
"""CCM with a 13-byte nonce has a 2-byte length field: bodies up to 65535 bytes."""
MAX_PAYLOAD = MAX_BODY

COUNTER_BITS = 15
COUNTER_MOD = 1 << COUNTER_BITS
MAX_GAP = COUNTER_MOD // 2
"""A receiver reads a 15-bit counter as the full counter nearest to the next expected one."""
EPOCH_FRAMES = COUNTER_MOD
"""Frames per key: the key of each direction ratchets one way every 32768 frames."""
WINDOW = 64
COUNTER_LIMIT = 1 << 32
"""Frames per direction per handshake; then ``seal`` refuses and a new handshake is due."""

DIR_I2R = 0x01
DIR_R2I = 0x02
_HS_NONCE = bytes(NONCE_SIZE)
_RATCHET_LABEL = b"otaferry-link-v1 ratchet"
_RESUME_LABEL = b"otaferry-link-v1 resume"
RESUME = 0xE6
"""A resumed channel's first record, device -> gateway (SPEC 9.11)."""
RESUME_NONCE_SIZE = 8

__all__ = [
    "COUNTER_LIMIT",
    "EPOCH_FRAMES",
    "MSG1_SIZE",
    "MSG2_SIZE",
    "OVERHEAD",
    "PROTOCOL_NAME",
    "TAG_SIZE",
    "WINDOW",
    "ChannelStats",
    "Initiator",
    "PlaintextChannel",
    "RecordKind",
    "Responder",
    "SecureChannel",
    "encode_reject",
    "open_resume",
    "ratchet",
    "record_kind",
    "resumed_channel",
    "resumption_secret",
]


class RecordKind(Enum):
    SEALED = "sealed"
    MSG1 = "msg1"
    MSG2 = "msg2"
    REJECT = "reject"
    IDENTIFY = "identify"
    IDENTITY = "identity"
    RESUME = "resume"
    PLAIN = "plain"
    UNKNOWN = "unknown"


def record_kind(packet: bytes | bytearray | memoryview) -> RecordKind:
    """What a link packet is, from its first byte alone (no check beyond that)."""
    if not packet:
        return RecordKind.UNKNOWN
    first = packet[0]
    if first < 0x80 or SHORT_FIRST <= first <= SHORT_LAST:
        return RecordKind.SEALED
    if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):  # msgpack fixarray, array16/32
        return RecordKind.PLAIN
    return {
        MSG1: RecordKind.MSG1,
        MSG2: RecordKind.MSG2,
        REJECT: RecordKind.REJECT,
        IDENTIFY: RecordKind.IDENTIFY,
        IDENTITY: RecordKind.IDENTITY,
        RESUME: RecordKind.RESUME,
    }.get(first, RecordKind.UNKNOWN)


def encode_identify() -> bytes:
    """First contact (SPEC 9.10): ask a device for its static public key. Padded
    to the answer's size, so the device never sends more than it receives."""
    return bytes([IDENTIFY]) + bytes(DH_SIZE)


def decode_identity(packet: bytes) -> LinkPublicKey | None:
    """The device's answer to :func:`encode_identify`, or None for anything else.
    Unauthenticated: trust it only after checking its fingerprint out of band."""
    if len(packet) != 1 + DH_SIZE or packet[0] != IDENTITY:
        return None
    return LinkPublicKey.from_raw(bytes(packet[1:]))


def encode_reject(reason: Reason | int) -> bytes:
    """``E3 reason``: what a responder may send back when a MSG1 fails.

    Unauthenticated (an attacker on the link can forge it, as it can jam); it
    only tells an honest gateway why it got no MSG2.
    """
    return bytes([REJECT, int(reason) & 0xFF])


# --- primitives ------------------------------------------------------------------------


def _hmac(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF with two outputs (= RFC 5869, salt ``ck``, empty info)."""
    prk = _hmac(chaining_key, ikm)
    out1 = _hmac(prk, b"\x01")
    return out1, _hmac(prk, out1 + b"\x02")


def ratchet(key: bytes) -> bytes:
    """The next epoch's key: HMAC-SHA256(key, label), first 16 bytes. One-way."""
    return _hmac(key, _RATCHET_LABEL)[:AEAD_KEY_SIZE]


def resumption_secret(resume_key: bytes, update_id: bytes) -> bytes:
    """The secret both sides keep across the device's reboot into ``update_id``
    (SPEC 9.11): HMAC(the handshake's resume key, update id)."""
    return _hmac(resume_key, bytes(update_id))


def resumed_channel(secret: bytes, nonce: bytes, *, initiator: bool) -> SecureChannel:
    """The channel a resumption opens: ``k_i2r, k_r2i = HKDF2(secret, nonce)``."""
    k1, k2 = _hkdf2(secret, bytes(nonce))
    k_i2r, k_r2i = k1[:AEAD_KEY_SIZE], k2[:AEAD_KEY_SIZE]
    if initiator:
        return SecureChannel(k_i2r, k_r2i, initiator=True, handshake_hash=bytes(nonce))
    return SecureChannel(k_r2i, k_i2r, initiator=False, handshake_hash=bytes(nonce))


def open_resume(secret: bytes, packet: bytes) -> tuple[SecureChannel, bytes] | None:
    """A RESUME record ``E6 | nonce (8) | sealed record`` (SPEC 9.11) opened with
    ``secret``: the gateway's end of the resumed channel and the first body, or
    None (not a RESUME, or it does not authenticate)."""
    head = 1 + RESUME_NONCE_SIZE
    if len(packet) < head + 2 + TAG_SIZE or packet[0] != RESUME:
        return None
    channel = resumed_channel(secret, bytes(packet[1:head]), initiator=True)
    body = channel.open(bytes(packet[head:]))
    return None if body is None else (channel, body)


def _nonce(direction: int, counter: int) -> bytes:
    return bytes([direction]) + counter.to_bytes(NONCE_SIZE - 1, "little")


def _dh(private: LinkPrivateKey, public: LinkPublicKey, what: str, reason: Reason) -> bytes:
    shared = private.exchange(public)
    if shared is None:
        raise ProtocolError(f"handshake: {what} is a low-order X25519 point", reason)
    return shared


class _Symmetric:
    """Noise's SymmetricState: ``ck``, ``h`` and the current handshake key.

    Every handshake key encrypts exactly one payload (a MixKey always comes
    before each EncryptAndHash), so its nonce is the constant zero nonce.
    """

    __slots__ = ("ck", "h", "k")

    def __init__(self, prologue: bytes, initiator: LinkPublicKey, responder: LinkPublicKey):
        self.h = hashlib.sha256(PROTOCOL_NAME).digest()  # name > 32 bytes: hashed
        self.ck = self.h
        self.k = b""
        self.mix_hash(prologue)
        self.mix_hash(initiator.raw)  # KK pre-messages: -> s, <- s
        self.mix_hash(responder.raw)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp = _hkdf2(self.ck, ikm)
        self.k = temp[:AEAD_KEY_SIZE]

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        sealed = AESCCM(self.k, tag_length=TAG_SIZE).encrypt(_HS_NONCE, plaintext, self.h)
        self.mix_hash(sealed)
        return sealed

    def decrypt_and_hash(self, sealed: bytes) -> bytes | None:
        try:
            plain = AESCCM(self.k, tag_length=TAG_SIZE).decrypt(_HS_NONCE, sealed, self.h)
        except InvalidTag:
            return None
        self.mix_hash(sealed)
        return plain

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = _hkdf2(self.ck, b"")
        return k1[:AEAD_KEY_SIZE], k2[:AEAD_KEY_SIZE]

    def resume_key(self) -> bytes:
        """SPEC 9.11: HMAC(ck, label), bound to this handshake, independent of Split's keys."""
        return _hmac(self.ck, _RESUME_LABEL)


def _payload_check(payload: bytes) -> bytes:
    data = bytes(payload)
    if len(data) > MAX_PAYLOAD:
        raise ProtocolError(f"handshake payload of {len(data)} bytes", Reason.TOO_LARGE)
    return data


# --- handshake -------------------------------------------------------------------------


class _HsState(Enum):
    NEW = "new"
    SENT = "sent"
    DONE = "done"
    FAILED = "failed"


class Initiator:
    """The side that sends MSG1 (normally the gateway). KK: both statics known.

    ``start()`` gives MSG1; ``receive(msg2)`` checks MSG2 and returns the
    channel, or raises: ``RemoteError`` (the responder's REJECT reason),
    ``DecodeError`` ``BAD_FRAME`` (not a MSG2 / too short), ``ProtocolError``
    ``BAD_SIGNATURE`` (MSG2 does not authenticate: the peer does not hold the
    expected device key, or the message was altered). Any failure is final.
    """

    def __init__(
        self,
        static: LinkPrivateKey,
        responder: LinkPublicKey,
        ephemeral: LinkPrivateKey,
        prologue: bytes = b"",
    ) -> None:
        self._static = static
        self._peer = responder
        self._ephemeral = ephemeral
        self._sym = _Symmetric(bytes(prologue), static.public, responder)
        self._state = _HsState.NEW
        self.remote_payload: bytes | None = None
        """MSG2's payload once received (forward-secret, authenticated)."""

    def start(self, payload: bytes = b"") -> bytes:
        """MSG1: ``E1 | hint | e (32) | AEAD(payload) (len + 8)``.

        The payload is encrypted but replayable (a responder must not act on
        it before the first sealed frame confirms the session).
        """
        if self._state is not _HsState.NEW:
            raise ProtocolError("handshake already started", Reason.BAD_STATE)
        self._state = _HsState.FAILED
        sym = self._sym
        header = bytes([MSG1, self._static.public.hint])
        sym.mix_hash(header)
        sym.mix_hash(self._ephemeral.public.raw)
        sym.mix_key(_dh(self._ephemeral, self._peer, "the device key", Reason.BAD_KEY))
        sym.mix_key(_dh(self._static, self._peer, "the device key", Reason.BAD_KEY))
        sealed = sym.encrypt_and_hash(_payload_check(payload))
        self._state = _HsState.SENT
        return header + self._ephemeral.public.raw + sealed

    def receive(self, msg2: bytes, *, final: bool = True) -> SecureChannel:
        """Check MSG2 (see the class docstring). With ``final=False`` a MSG2 that
        does not authenticate (or is not a MSG2) is only dropped: the raise says
        why, and the initiator still waits for the right one (a stale MSG2 of an
        earlier handshake must not kill this one)."""
        if self._state is not _HsState.SENT:
            raise ProtocolError(f"no MSG2 expected ({self._state.value})", Reason.BAD_STATE)
        saved = (self._sym.ck, self._sym.h, self._sym.k)
        try:
            return self._receive(msg2)
        except (DecodeError, ProtocolError) as exc:
            if not final and not isinstance(exc, RemoteError):
                self._sym.ck, self._sym.h, self._sym.k = saved
                self._state = _HsState.SENT
            raise

    def _receive(self, msg2: bytes) -> SecureChannel:
        self._state = _HsState.FAILED
        data = bytes(msg2)
        if len(data) == REJECT_SIZE and data[0] == REJECT:
            try:
                reason = Reason(data[1])
            except ValueError:
                reason = Reason.ABORTED
            raise RemoteError(
                f"device refused the handshake ({reason.name})", reason, remote_code=data[1]
            )
        if len(data) < MSG2_SIZE or data[0] != MSG2:
            raise DecodeError(
                "handshake: not a MSG2", Reason.BAD_FRAME, expected=MSG2_SIZE, actual=len(data)
            )
        sym = self._sym
        remote_e = LinkPublicKey.from_raw(data[1 : 1 + DH_SIZE])
        sym.mix_hash(data[:1])
        sym.mix_hash(remote_e.raw)
        sym.mix_key(_dh(self._ephemeral, remote_e, "MSG2's ephemeral", Reason.BAD_FRAME))
        sym.mix_key(_dh(self._static, remote_e, "MSG2's ephemeral", Reason.BAD_FRAME))
        payload = sym.decrypt_and_hash(data[1 + DH_SIZE :])
        if payload is None:
            raise ProtocolError(
                "handshake: MSG2 does not authenticate (the device does not hold the "
                "expected key, or the message was altered)",
                Reason.BAD_SIGNATURE,
                device_key=self._peer.key_id.hex(),
            )
        self.remote_payload = payload
        self._state = _HsState.DONE
        send, recv = sym.split()
        channel = SecureChannel(send, recv, initiator=True, handshake_hash=sym.h)
        channel.resume_key = sym.resume_key()
        return channel


class Responder:
    """The side that answers MSG1 (normally the device), for a set of accepted keys.

    ``receive(msg1)`` returns MSG2 and makes :attr:`channel` available, or
    raises: ``DecodeError`` ``BAD_FRAME`` (not a MSG1, too short, bad point),
    ``ProtocolError`` ``BAD_KEY`` (the key hint matches no accepted initiator
    key) or ``BAD_SIGNATURE`` (no candidate key authenticates MSG1). Several
    accepted keys may share a hint byte: each is tried.

    MSG1 alone does not prove the initiator is live (it may be a replay) nor,
    if this side's static key has leaked, who sent it (key-compromise
    impersonation, a property of KK's first message). The first frame that
    opens on the channel proves both: see :attr:`SecureChannel.confirmed`.
    """

    def __init__(
        self,
        static: LinkPrivateKey,
        accepted: Iterable[LinkPublicKey],
        ephemeral: LinkPrivateKey,
        prologue: bytes = b"",
    ) -> None:
        self._static = static
        self._accepted = tuple(accepted)
        self._ephemeral = ephemeral
        self._prologue = bytes(prologue)
        self._state = _HsState.NEW
        self._channel: SecureChannel | None = None
        self.initiator: LinkPublicKey | None = None
        """The accepted key that MSG1 authenticated under."""
        self.remote_payload: bytes | None = None

    @property
    def channel(self) -> SecureChannel:
        if self._channel is None:
            raise ProtocolError("handshake not complete", Reason.BAD_STATE)
        return self._channel

    def receive(self, msg1: bytes, payload: bytes = b"") -> bytes:
        """Check MSG1; return MSG2: ``E2 | e (32) | AEAD(payload) (len + 8)``."""
        if self._state is not _HsState.NEW:
            raise ProtocolError("handshake already answered", Reason.BAD_STATE)
        self._state = _HsState.FAILED
        data = bytes(msg1)
        payload = _payload_check(payload)
        if len(data) < MSG1_SIZE or data[0] != MSG1:
            raise DecodeError(
                "handshake: not a MSG1", Reason.BAD_FRAME, expected=MSG1_SIZE, actual=len(data)
            )
        candidates = [k for k in self._accepted if k.hint == data[1]]
        if not candidates:
            raise ProtocolError(
                f"handshake: initiator key hint {data[1]:02x} matches no accepted key",
                Reason.BAD_KEY,
                hint=data[1],
            )
        remote_e = LinkPublicKey.from_raw(data[2 : 2 + DH_SIZE])
        es = _dh(self._static, remote_e, "MSG1's ephemeral", Reason.BAD_FRAME)
        found = None
        for candidate in candidates:
            ss = self._static.exchange(candidate)
            if ss is None:
                continue
            trial = _Symmetric(self._prologue, candidate, self._static.public)
            trial.mix_hash(data[:2])
            trial.mix_hash(remote_e.raw)
            trial.mix_key(es)
            trial.mix_key(ss)
            got = trial.decrypt_and_hash(data[2 + DH_SIZE :])
            if got is not None:
                found = (candidate, trial, got)
                break
        if found is None:
            raise ProtocolError(
                "handshake: MSG1 does not authenticate under any accepted key",
                Reason.BAD_SIGNATURE,
                hint=data[1],
            )
        key, sym, self.remote_payload = found
        self.initiator = key
        header = bytes([MSG2])
        sym.mix_hash(header)
        sym.mix_hash(self._ephemeral.public.raw)
        sym.mix_key(_dh(self._ephemeral, remote_e, "MSG1's ephemeral", Reason.BAD_FRAME))
        sym.mix_key(_dh(self._ephemeral, key, "the initiator key", Reason.BAD_KEY))
        sealed = sym.encrypt_and_hash(payload)
        recv, send = sym.split()
        self._channel = SecureChannel(send, recv, initiator=False, handshake_hash=sym.h)
        self._channel.resume_key = sym.resume_key()
        self._state = _HsState.DONE
        return header + self._ephemeral.public.raw + sealed


# --- sealed frames ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """What a channel has sealed, opened and dropped (per reason)."""

    sealed: int = 0
    opened: int = 0
    malformed: int = 0
    """Too short, or not a sealed record (a plaintext or handshake record here)."""
    auth_failed: int = 0
    """The tag does not verify: altered, or sealed under another key (another session)."""
    replayed: int = 0
    """Its counter was already accepted."""
    too_old: int = 0
    """Its counter is older than the replay window."""
    exhausted: int = 0
    """Its counter is at or past the channel's limit."""

    @property
    def dropped(self) -> int:
        return self.malformed + self.auth_failed + self.replayed + self.too_old + self.exhausted


class SecureChannel:
    """Seals and opens frames after a handshake; one per session, both directions.

    Record: ``counter15 (2) | AES-CCM(body) | tag (8)``; byte 0 holds counter
    bits 0-6 (so it is < 0x80), byte 1 bits 7-14. The nonce is ``direction |
    full counter (12 bytes LE)``, the associated data the 2 header bytes. The
    receiver rebuilds the full counter from the 15 bits as the value nearest
    the next one it expects (within +-16384), then checks a 64-frame replay
    window. Every 32768 frames the key of a direction ratchets one way
    (:func:`ratchet`); after ``limit`` frames a direction is exhausted and a
    new handshake is needed.
    """

    def __init__(
        self,
        send_key: bytes,
        recv_key: bytes,
        *,
        initiator: bool,
        handshake_hash: bytes = b"",
        limit: int = COUNTER_LIMIT,
    ) -> None:
        if len(send_key) != AEAD_KEY_SIZE or len(recv_key) != AEAD_KEY_SIZE:
            raise ValueError("channel keys are 16 bytes")
        if not 1 <= limit <= COUNTER_LIMIT:
            raise ValueError(f"limit must be in 1..{COUNTER_LIMIT}")
        self._send_dir, self._recv_dir = (DIR_I2R, DIR_R2I) if initiator else (DIR_R2I, DIR_I2R)
        self._limit = limit
        self.handshake_hash = handshake_hash
        """Noise's final ``h``: a channel binding both sides share (e.g. for logs)."""
        self.resume_key: bytes | None = None
        """A handshake's channel: the key its resumption secrets come from (SPEC 9.11)."""
        self._send_next = 0
        self._send_epoch = 0
        self._send_aead = AESCCM(bytes(send_key), tag_length=TAG_SIZE)
        self._send_key = bytes(send_key)
        self._top = -1  # highest counter accepted; -1: none yet
        self._seen = 0  # bit i: counter top - i accepted
        self._recv_epoch = 0
        self._recv_key = bytes(recv_key)
        self._prev_key: bytes | None = None  # the previous epoch's, while the window spans it
        self._counts = dict.fromkeys(
            ("sealed", "opened", "malformed", "auth_failed", "replayed", "too_old", "exhausted"),
            0,
        )

    @property
    def stats(self) -> ChannelStats:
        return ChannelStats(**self._counts)

    @property
    def overhead(self) -> int:
        return OVERHEAD

    @property
    def confirmed(self) -> bool:
        """True once a frame from the peer opened: the peer holds the session keys."""
        return self._counts["opened"] > 0

    @property
    def remaining(self) -> int:
        """Frames this side may still seal before a new handshake is needed."""
        return self._limit - self._send_next

    def seal(self, body: bytes) -> bytes:
        """Protect one frame body. ``ProtocolError`` ``BAD_STATE`` once exhausted."""
        data = bytes(body)
        if len(data) > MAX_BODY:
            raise ProtocolError(f"frame body of {len(data)} bytes", Reason.TOO_LARGE)
        n = self._send_next
        if n >= self._limit:
            raise ProtocolError(
                "secure channel exhausted its counter: run a new handshake", Reason.BAD_STATE
            )
        epoch = n // EPOCH_FRAMES
        if epoch != self._send_epoch:  # one step: counters go up one at a time
            self._send_key = ratchet(self._send_key)
            self._send_aead = AESCCM(self._send_key, tag_length=TAG_SIZE)
            self._send_epoch = epoch
        if data and data[0] < 0x80:
            # A compact DATA frame (SPEC 8.8): its first byte and the counter's low
            # 6 bits share the 2 header bytes; the receiver reads the counter
            # forward, within 64 of the next it expects (SPEC 9.5).
            v = (n & 0x3F) << 7 | data[0]
            header = bytes([SHORT_FIRST | v >> 8, v & 0xFF])
            data = data[1:]
        else:
            header = bytes([n & 0x7F, (n >> 7) & 0xFF])
        self._send_next = n + 1
        self._counts["sealed"] += 1
        return header + self._send_aead.encrypt(_nonce(self._send_dir, n), data, header)

    def open(self, data: bytes) -> bytes | None:
        """The body of a sealed record, or None (dropped and counted). Never raises."""
        reason, body = self._open(data)
        self._counts[reason] += 1
        return body

    def _drop(self, reason: str) -> tuple[str, None]:
        return reason, None

    def _open(self, data: bytes) -> tuple[str, bytes | None]:
        try:
            record = bytes(data)
        except (TypeError, ValueError):
            return self._drop("malformed")
        if len(record) < OVERHEAD:
            return self._drop("malformed")
        expected = self._top + 1
        folded: int | None = None
        if SHORT_FIRST <= record[0] <= SHORT_LAST:
            if len(record) < OVERHEAD + 1:
                return self._drop("malformed")
            v = (record[0] & 0x1F) << 8 | record[1]
            folded = v & 0x7F
            n = expected + ((v >> 7) - expected) % SHORT_GAP
        elif record[0] >= 0x80:
            return self._drop("malformed")
        else:
            short = record[0] | record[1] << 7
            n = expected + ((short - expected + MAX_GAP) % COUNTER_MOD) - MAX_GAP
        if n < 0:
            return self._drop("too_old")
        if n >= self._limit:
            return self._drop("exhausted")
        if n <= self._top:
            age = self._top - n
            if age >= WINDOW:
                return self._drop("too_old")
            if self._seen >> age & 1:
                return self._drop("replayed")
        epoch = n // EPOCH_FRAMES
        if epoch == self._recv_epoch:
            key: bytes | None = self._recv_key
        elif epoch == self._recv_epoch + 1:
            key = ratchet(self._recv_key)
        elif epoch == self._recv_epoch - 1:
            key = self._prev_key
        else:  # pragma: no cover - MAX_GAP < EPOCH_FRAMES makes this unreachable
            key = None
        if key is None:
            return self._drop("too_old")
        header = record[:HEADER_SIZE]
        try:
            body = AESCCM(key, tag_length=TAG_SIZE).decrypt(
                _nonce(self._recv_dir, n), record[HEADER_SIZE:], header
            )
        except InvalidTag:
            return self._drop("auth_failed")
        self._accept(n, epoch, key)
        if folded is not None:
            body = bytes([folded]) + body
        return "opened", body

    def _accept(self, n: int, epoch: int, key: bytes) -> None:
        if n > self._top:
            shift = n - self._top
            self._seen = ((self._seen << shift) | 1) & ((1 << WINDOW) - 1)
            self._top = n
        else:
            self._seen |= 1 << (self._top - n)
        if epoch > self._recv_epoch:
            self._prev_key = self._recv_key
            self._recv_key = key
            self._recv_epoch = epoch
        if self._prev_key is not None and self._top - WINDOW + 1 >= (
            self._recv_epoch * EPOCH_FRAMES
        ):
            self._prev_key = None  # the window left the old epoch: forget its key


class PlaintextChannel:
    """No protection at all: for a bench link only, chosen explicitly.

    Same surface as :class:`SecureChannel`. ``open`` passes plaintext msgpack
    frames and drops (as ``malformed``) sealed or handshake records;
    ``seal`` refuses a body that would look like a secure record.
    """

    def __init__(self) -> None:
        self._counts = dict.fromkeys(("sealed", "opened", "malformed"), 0)

    @property
    def stats(self) -> ChannelStats:
        return ChannelStats(**self._counts)

    @property
    def overhead(self) -> int:
        return 0

    def seal(self, body: bytes) -> bytes:
        data = bytes(body)
        if record_kind(data) is not RecordKind.PLAIN:
            raise ProtocolError("a plaintext frame must be a msgpack array", Reason.BAD_FRAME)
        self._counts["sealed"] += 1
        return data

    def open(self, data: bytes) -> bytes | None:
        try:
            record = bytes(data)
        except (TypeError, ValueError):
            record = b""
        if record_kind(record) is not RecordKind.PLAIN:
            self._counts["malformed"] += 1
            return None
        self._counts["opened"] += 1
        return record
