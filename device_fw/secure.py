"""The device side of the secure link (protocol/SPEC.md section 9).

Byte-compatible with ``otaferry.protocol.secure`` (the reference); the tests
run each side against the other and both against ``tests/vectors/secure/``.
All cryptography goes through ``port`` (x25519, x25519_public, hmac_sha256,
sha256, aes_ccm8_encrypt / aes_ccm8_decrypt), so a MicroPython port plugs in
its own primitives and this file stays as it is.

:class:`SecureEndpoint` is what the device loop puts between its link and its
receiver: it answers handshakes, opens and seals frames, and applies the
policy ``require_secure`` (default True: plaintext frames are refused and
nothing goes out unsealed).
"""

from . import port
from . import reasons as R
from .reasons import DeviceError

PROTOCOL_NAME = b"otaferry-link-v1_KK_25519_AESCCM8_SHA256"
MSG1 = 0xE1
MSG2 = 0xE2
REJECT = 0xE3
IDENTIFY = 0xE4  # first contact: asks for the static public key (SPEC 9.10)
IDENTITY = 0xE5
RESUME = 0xE6  # a resumed channel's first record, device -> gateway (SPEC 9.11)
RESUME_NONCE_SIZE = 8
RESUME_REPEATS = 2  # a RESUME sent again for a record that opens on nothing, per boot
_RESUME_LABEL = b"otaferry-link-v1 resume"

KEY_SIZE = 32
AEAD_KEY_SIZE = 16
TAG_SIZE = 8
NONCE_SIZE = 13
HEADER_SIZE = 2
OVERHEAD = HEADER_SIZE + TAG_SIZE
MSG1_SIZE = 2 + KEY_SIZE + TAG_SIZE
MSG2_SIZE = 1 + KEY_SIZE + TAG_SIZE
MAX_BODY = 0xFFFF

# The short sealed record (SPEC 9.5): a compact DATA frame's one byte and the
# counter's low 6 bits folded into a 2-byte header 0xA0..0xBF, xx.
SHORT_FIRST = 0xA0
SHORT_LAST = 0xBF
SHORT_GAP = 64  # its counter is read forward only, within 64 of the next expected
COUNTER_MOD = 1 << 15
MAX_GAP = COUNTER_MOD // 2
EPOCH_FRAMES = COUNTER_MOD
WINDOW = 64
WINDOW_MASK = (1 << WINDOW) - 1
COUNTER_LIMIT = 1 << 32

DIR_I2R = 0x01
DIR_R2I = 0x02
_HS_NONCE = bytes(NONCE_SIZE)
_RATCHET_LABEL = b"otaferry-link-v1 ratchet"
_ZERO32 = bytes(32)

PENDING_SLOTS = 5  # answered handshakes waiting for their first sealed frame (> the burst)
OPENED_MEMORY = 16  # MSG1s of sessions that ran, refused unanswered if replayed
HANDSHAKE_BURST = 4  # handshakes (X25519 work) at once ...
HANDSHAKE_INTERVAL = 0.5  # ... then one per this many seconds

STAT_NAMES = ("sealed", "opened", "malformed", "auth_failed", "replayed", "too_old", "exhausted")


def record_kind(packet):
    """'sealed', 'msg1', 'msg2', 'reject', 'plain' or 'unknown', from the first byte."""
    if not packet:
        return "unknown"
    first = packet[0]
    if first < 0x80 or SHORT_FIRST <= first <= SHORT_LAST:
        return "sealed"
    if 0x90 <= first <= 0x9F or first == 0xDC or first == 0xDD:
        return "plain"
    if first == MSG1:
        return "msg1"
    if first == MSG2:
        return "msg2"
    if first == REJECT:
        return "reject"
    if first == IDENTIFY:
        return "identify"
    if first == IDENTITY:
        return "identity"  # a device never gets one; named so both sides agree
    if first == RESUME:
        return "resume"  # nor this one (SPEC 9.11)
    return "unknown"


def encode_reject(reason):
    return bytes([REJECT, reason & 0xFF])


def key_hint(public_raw):
    """The 1-byte hint MSG1 carries: first byte of SHA-256 of the raw public key."""
    return port.sha256(bytes(public_raw)).digest()[0]


def _sha256(data):
    return port.sha256(data).digest()


def _hkdf2(chaining_key, ikm):
    prk = port.hmac_sha256(chaining_key, ikm)
    out1 = port.hmac_sha256(prk, b"\x01")
    return out1, port.hmac_sha256(prk, out1 + b"\x02")


def ratchet(key):
    return port.hmac_sha256(key, _RATCHET_LABEL)[:AEAD_KEY_SIZE]


def resumption_secret(resume_key, update_id):
    """The secret a device keeps across the reboot into ``update_id`` (SPEC 9.11)."""
    return port.hmac_sha256(resume_key, bytes(update_id))


def resumed_channel(secret, nonce, initiator):
    """The channel of a resumption: keys from the secret and the device's fresh nonce."""
    k1, k2 = _hkdf2(secret, bytes(nonce))
    k_i2r, k_r2i = k1[:AEAD_KEY_SIZE], k2[:AEAD_KEY_SIZE]
    if initiator:
        return SecureChannel(k_i2r, k_r2i, True, bytes(nonce))
    return SecureChannel(k_r2i, k_i2r, False, bytes(nonce))


def encode_resume(channel, nonce, body):
    """``E6 | nonce | the channel's first sealed record`` (SPEC 9.11)."""
    return bytes([RESUME]) + bytes(nonce) + channel.seal(body)


def _nonce(direction, counter):
    return bytes([direction]) + counter.to_bytes(NONCE_SIZE - 1, "little")


def _dh(private, public, reason, what):
    try:
        shared = port.x25519(private, public)
    except ValueError:
        shared = None
    if shared is None or shared == _ZERO32:
        raise DeviceError(reason, "handshake: %s is a low-order X25519 point" % what)
    return shared


class _Symmetric:
    """Noise's SymmetricState (ck, h, current handshake key); see the host module."""

    def __init__(self, prologue, initiator_public, responder_public):
        self.h = _sha256(PROTOCOL_NAME)
        self.ck = self.h
        self.k = b""
        self.mix_hash(prologue)
        self.mix_hash(initiator_public)
        self.mix_hash(responder_public)

    def mix_hash(self, data):
        self.h = _sha256(self.h + bytes(data))

    def mix_key(self, ikm):
        self.ck, temp = _hkdf2(self.ck, ikm)
        self.k = temp[:AEAD_KEY_SIZE]

    def encrypt_and_hash(self, plaintext):
        sealed = port.aes_ccm8_encrypt(self.k, _HS_NONCE, plaintext, self.h)
        self.mix_hash(sealed)
        return sealed

    def decrypt_and_hash(self, sealed):
        plain = port.aes_ccm8_decrypt(self.k, _HS_NONCE, sealed, self.h)
        if plain is not None:
            self.mix_hash(sealed)
        return plain

    def split(self):
        k1, k2 = _hkdf2(self.ck, b"")
        return k1[:AEAD_KEY_SIZE], k2[:AEAD_KEY_SIZE]

    def resume_key(self):
        """SPEC 9.11: bound to this handshake's ck, independent of the Split keys."""
        return port.hmac_sha256(self.ck, _RESUME_LABEL)


def _ephemeral(value):
    return bytes(value) if value is not None else port.random_bytes(KEY_SIZE)


def _check_payload(payload):
    payload = bytes(payload)
    if len(payload) > MAX_BODY:
        raise DeviceError(R.TOO_LARGE, "handshake payload of %d bytes" % len(payload))
    return payload


class Initiator:
    """Sends MSG1 (a device that must speak first, e.g. a LoRa class A node).

    ``static`` and ``ephemeral`` are raw 32-byte private keys (``ephemeral``
    None: drawn from port.random_bytes), ``responder`` the raw public key of
    the gateway. ``start()`` -> MSG1; ``receive(msg2)`` -> SecureChannel or
    DeviceError (BAD_FRAME, BAD_SIGNATURE, BAD_STATE, or the peer's REJECT
    reason).
    """

    def __init__(self, static, responder, ephemeral=None, prologue=b""):
        self.static = bytes(static)
        self.static_public = port.x25519_public(self.static)
        self.peer = bytes(responder)
        self.ephemeral = _ephemeral(ephemeral)
        self.sym = _Symmetric(bytes(prologue), self.static_public, self.peer)
        self.state = "new"
        self.remote_payload = None

    def start(self, payload=b""):
        if self.state != "new":
            raise DeviceError(R.BAD_STATE, "handshake already started")
        self.state = "failed"
        sym = self.sym
        header = bytes([MSG1, key_hint(self.static_public)])
        e_public = port.x25519_public(self.ephemeral)
        sym.mix_hash(header)
        sym.mix_hash(e_public)
        sym.mix_key(_dh(self.ephemeral, self.peer, R.BAD_KEY, "the gateway key"))
        sym.mix_key(_dh(self.static, self.peer, R.BAD_KEY, "the gateway key"))
        sealed = sym.encrypt_and_hash(_check_payload(payload))
        self.state = "sent"
        return header + e_public + sealed

    def receive(self, msg2):
        if self.state != "sent":
            raise DeviceError(R.BAD_STATE, "no MSG2 expected (%s)" % self.state)
        self.state = "failed"
        data = bytes(msg2)
        if len(data) == 2 and data[0] == REJECT:
            raise DeviceError(data[1], "gateway refused the handshake (%s)" % R.name(data[1]))
        if len(data) < MSG2_SIZE or data[0] != MSG2:
            raise DeviceError(R.BAD_FRAME, "handshake: not a MSG2")
        remote_e = data[1 : 1 + KEY_SIZE]
        sym = self.sym
        sym.mix_hash(data[:1])
        sym.mix_hash(remote_e)
        sym.mix_key(_dh(self.ephemeral, remote_e, R.BAD_FRAME, "MSG2's ephemeral"))
        sym.mix_key(_dh(self.static, remote_e, R.BAD_FRAME, "MSG2's ephemeral"))
        payload = sym.decrypt_and_hash(data[1 + KEY_SIZE :])
        if payload is None:
            raise DeviceError(R.BAD_SIGNATURE, "handshake: MSG2 does not authenticate")
        self.remote_payload = payload
        self.state = "done"
        send, recv = sym.split()
        channel = SecureChannel(send, recv, True, sym.h)
        channel.resume_key = sym.resume_key()
        return channel


class Responder:
    """Answers MSG1 for a list of accepted initiator (gateway) public keys.

    ``receive(msg1)`` -> MSG2 and sets ``channel``, ``initiator`` (the raw key
    that authenticated) and ``remote_payload``; or DeviceError with BAD_FRAME
    (not a MSG1), BAD_KEY (hint matches no accepted key), BAD_SIGNATURE (no
    candidate authenticates). MSG1 may be a replay: act on the channel only
    once a frame from the initiator opened on it (``channel.confirmed``).
    """

    def __init__(self, static, accepted, ephemeral=None, prologue=b""):
        self.static = bytes(static)
        self.static_public = port.x25519_public(self.static)
        self.accepted = [bytes(k) for k in accepted]
        self.ephemeral = _ephemeral(ephemeral)
        self.prologue = bytes(prologue)
        self.state = "new"
        self.channel = None
        self.initiator = None
        self.remote_payload = None

    def receive(self, msg1, payload=b""):
        if self.state != "new":
            raise DeviceError(R.BAD_STATE, "handshake already answered")
        self.state = "failed"
        data = bytes(msg1)
        payload = _check_payload(payload)
        if len(data) < MSG1_SIZE or data[0] != MSG1:
            raise DeviceError(R.BAD_FRAME, "handshake: not a MSG1")
        candidates = [k for k in self.accepted if key_hint(k) == data[1]]
        if not candidates:
            raise DeviceError(
                R.BAD_KEY, "handshake: key hint %02x matches no accepted gateway key" % data[1]
            )
        remote_e = data[2 : 2 + KEY_SIZE]
        es = _dh(self.static, remote_e, R.BAD_FRAME, "MSG1's ephemeral")
        found = None
        for candidate in candidates:
            try:
                ss = _dh(self.static, candidate, R.BAD_KEY, "an accepted key")
            except DeviceError:
                continue
            trial = _Symmetric(self.prologue, candidate, self.static_public)
            trial.mix_hash(data[:2])
            trial.mix_hash(remote_e)
            trial.mix_key(es)
            trial.mix_key(ss)
            got = trial.decrypt_and_hash(data[2 + KEY_SIZE :])
            if got is not None:
                found = (candidate, trial, got)
                break
        if found is None:
            raise DeviceError(R.BAD_SIGNATURE, "handshake: MSG1 does not authenticate")
        key, sym, self.remote_payload = found
        self.initiator = key
        header = bytes([MSG2])
        e_public = port.x25519_public(self.ephemeral)
        sym.mix_hash(header)
        sym.mix_hash(e_public)
        sym.mix_key(_dh(self.ephemeral, remote_e, R.BAD_FRAME, "MSG1's ephemeral"))
        sym.mix_key(_dh(self.ephemeral, key, R.BAD_KEY, "the gateway key"))
        sealed = sym.encrypt_and_hash(payload)
        recv, send = sym.split()
        self.channel = SecureChannel(send, recv, False, sym.h)
        self.channel.resume_key = sym.resume_key()
        self.state = "done"
        return header + e_public + sealed


class SecureChannel:
    """Seal / open after a handshake: same records, counters and window as the host.

    ``open`` returns the body or None (dropped, counted in ``stats`` by
    reason); it never raises. ``seal`` raises DeviceError BAD_STATE once the
    counter limit is reached (a new handshake is due).
    """

    def __init__(self, send_key, recv_key, initiator, handshake_hash=b"", limit=COUNTER_LIMIT):
        if len(send_key) != AEAD_KEY_SIZE or len(recv_key) != AEAD_KEY_SIZE:
            raise ValueError("channel keys are 16 bytes")
        if not 1 <= limit <= COUNTER_LIMIT:
            raise ValueError("bad counter limit")
        if initiator:
            self.send_dir, self.recv_dir = DIR_I2R, DIR_R2I
        else:
            self.send_dir, self.recv_dir = DIR_R2I, DIR_I2R
        self.limit = limit
        self.handshake_hash = handshake_hash
        self.resume_key = None  # a handshake's channel: its key for resumption (SPEC 9.11)
        self.send_next = 0
        self.send_epoch = 0
        self.send_key = bytes(send_key)
        self.top = -1
        self.seen = 0
        self.recv_epoch = 0
        self.recv_key = bytes(recv_key)
        self.prev_key = None
        self.stats = {}
        for name in STAT_NAMES:
            self.stats[name] = 0

    @property
    def confirmed(self):
        return self.stats["opened"] > 0

    def seal(self, body):
        body = bytes(body)
        if len(body) > MAX_BODY:
            raise DeviceError(R.TOO_LARGE, "frame body of %d bytes" % len(body))
        n = self.send_next
        if n >= self.limit:
            raise DeviceError(R.BAD_STATE, "secure channel exhausted: handshake again")
        epoch = n // EPOCH_FRAMES
        if epoch != self.send_epoch:
            self.send_key = ratchet(self.send_key)
            self.send_epoch = epoch
        header = bytes([n & 0x7F, (n >> 7) & 0xFF])
        self.send_next = n + 1
        self.stats["sealed"] += 1
        return header + port.aes_ccm8_encrypt(self.send_key, _nonce(self.send_dir, n), body, header)

    def open(self, data):
        reason, body = self.try_open(data)
        self.stats[reason] += 1
        return body

    def try_open(self, data):
        """(reason, body): 'opened' and the body, or a drop reason and None.

        Commits the counter only on success; counts nothing (``open`` does).
        """
        try:
            record = bytes(data)
        except (TypeError, ValueError):
            return "malformed", None
        if len(record) < OVERHEAD:
            return "malformed", None
        expected = self.top + 1
        folded = None
        if SHORT_FIRST <= record[0] <= SHORT_LAST:
            if len(record) < OVERHEAD + 1:
                return "malformed", None
            v = (record[0] & 0x1F) << 8 | record[1]
            folded = v & 0x7F  # the compact DATA frame's first byte
            n = expected + (((v >> 7) - expected) % SHORT_GAP)
        elif record[0] >= 0x80:
            return "malformed", None
        else:
            short = record[0] | record[1] << 7
            n = expected + ((short - expected + MAX_GAP) % COUNTER_MOD) - MAX_GAP
        if n < 0:
            return "too_old", None
        if n >= self.limit:
            return "exhausted", None
        if n <= self.top:
            age = self.top - n
            if age >= WINDOW:
                return "too_old", None
            if self.seen >> age & 1:
                return "replayed", None
        epoch = n // EPOCH_FRAMES
        if epoch == self.recv_epoch:
            key = self.recv_key
        elif epoch == self.recv_epoch + 1:
            key = ratchet(self.recv_key)
        elif epoch == self.recv_epoch - 1:
            key = self.prev_key
        else:  # pragma: no cover - unreachable while MAX_GAP < EPOCH_FRAMES
            key = None
        if key is None:
            return "too_old", None
        header = record[:HEADER_SIZE]
        body = port.aes_ccm8_decrypt(key, _nonce(self.recv_dir, n),
                                     memoryview(record)[HEADER_SIZE:], header)  # no copy
        if body is None:
            return "auth_failed", None
        if folded is not None:
            body = bytes([folded]) + body
        if n > self.top:
            self.seen = ((self.seen << (n - self.top)) | 1) & WINDOW_MASK
            self.top = n
        else:
            self.seen |= 1 << (self.top - n)
        if epoch > self.recv_epoch:
            self.prev_key = self.recv_key
            self.recv_key = key
            self.recv_epoch = epoch
        if self.prev_key is not None and self.top - WINDOW + 1 >= self.recv_epoch * EPOCH_FRAMES:
            self.prev_key = None
        return "opened", body


class SecureEndpoint:
    """The device's link guard: handshakes, sealed frames and the plaintext policy.

    ``static`` is the device's raw X25519 private key (from its store),
    ``gateways`` the raw public keys it accepts. ``receive(packet)`` returns
    ``(reply, body)``: ``reply`` is bytes to send back at once (a MSG2 or a
    REJECT) or None, ``body`` a session frame for the receiver or None.

    A new handshake does not replace the running channel at once: its channel
    stays *pending* until a frame from the gateway opens on it. So a replayed
    MSG1 (which nobody can complete) never cuts the running session, and the
    device acts on no frame whose sender has not proven it holds the session
    keys. A MSG1 equal to the last one answered gets the same MSG2 again
    (a gateway retransmitting after a lost MSG2), with no new keys.

    The work an unauthenticated peer can cause is bounded: a MSG1 of a session
    that already ran is dropped unanswered (no X25519); new handshakes are rate
    limited (HANDSHAKE_BURST, then one per HANDSHAKE_INTERVAL s: beyond that a
    MSG1 is dropped unanswered); and PENDING_SLOTS answered handshakes wait for
    their first sealed frame side by side, so a replayed MSG1 right after a
    genuine one does not displace it.

    Plaintext frames (msgpack arrays) pass only with ``require_secure=False``
    and only while no secure channel runs, so an attacker cannot slip a
    plaintext frame into a secure session.
    """

    def __init__(self, static, gateways, require_secure=True, prologue=b"", random_bytes=None):
        self.static = bytes(static)
        self.gateways = [bytes(k) for k in gateways]
        self.require_secure = require_secure
        self.prologue = bytes(prologue)
        self.random_bytes = random_bytes or port.random_bytes
        self.channel = None
        self.gateway = None  # raw key of the gateway of the running channel
        self.last_error = None  # reason code of the last failed handshake
        # Answered handshakes whose channel nobody has opened yet, newest first:
        # (msg1, msg2, channel, gateway key, digest). A new MSG1 does not evict the
        # one a genuine gateway is about to use unless PENDING_SLOTS others came
        # since (and those are rate limited), so one replayed MSG1 cannot cut it.
        self._pendings = []
        self._resume_record = None  # the RESUME while its channel is pending (SPEC 9.11)
        self._resume_repeats = 0
        self._opened = []  # digests of MSG1s whose channel opened: replays cost no DH
        self._tokens = float(HANDSHAKE_BURST)
        self._token_time = None
        self.stats = {
            "handshakes": 0,
            "identified": 0,
            "handshake_failed": 0,
            "repeats": 0,
            "replayed_msg1": 0,
            "rate_limited": 0,
            "responder_runs": 0,
            "plain_refused": 0,
            "plain_passed": 0,
            "unexpected": 0,
            "no_channel": 0,
        }
        for name in STAT_NAMES:
            self.stats[name] = 0

    @property
    def pending(self):
        """The newest answered handshake's channel, not yet opened (or None)."""
        return self._pendings[0][2] if self._pendings else None

    @property
    def secure(self):
        return self.channel is not None

    def receive(self, packet, now=None):
        """``now`` (seconds, any origin) enables the handshake rate limit."""
        kind = record_kind(packet)
        if kind == "msg1":
            return self._handshake(packet, now), None
        if kind == "sealed":
            body = self._open(packet)
            if body is None and self.channel is None and self._resume_record is not None:
                if self._resume_repeats < RESUME_REPEATS:
                    # The gateway speaks on the old channel: it missed our RESUME
                    # (SPEC 9.11). The same record again, a bounded number of times.
                    self._resume_repeats += 1
                    return self._resume_record, None
                self._resume_record = None
            if body is None and self.channel is None:
                # No running session (this device was reset, or a replayed MSG1
                # left a pending one nobody can open): tell the gateway, so it
                # runs a new handshake instead of timing out. Unsealed, so an
                # attacker can forge it too: it can only cost a handshake.
                return encode_reject(R.BAD_STATE), None
            return None, body
        if kind == "identify":
            # First contact (SPEC 9.10): the static public key, which is public. The
            # request is padded to the answer's size: no amplification.
            if len(packet) < 1 + KEY_SIZE:
                self.stats["unexpected"] += 1
                return None, None
            self.stats["identified"] += 1
            return bytes([IDENTITY]) + port.x25519_public(self.static), None
        if kind == "plain":
            if self.require_secure or self.channel is not None:
                self.stats["plain_refused"] += 1
                return None, None
            self.stats["plain_passed"] += 1
            return None, bytes(packet)
        self.stats["unexpected"] += 1
        return None, None

    def resume(self, secret, nonce, gateway, body):
        """The RESUME record (SPEC 9.11) that opens a resumed channel with ``body``
        (the device's CHECKIN). The channel waits, pending like a handshake's, for
        a frame from the gateway to open on it; until then a record that opens on
        nothing is answered REJECT(BAD_STATE) as ever, so a gateway that missed
        the RESUME falls back to a full handshake."""
        channel = resumed_channel(secret, nonce, False)
        self._pendings.insert(0, (None, None, channel, bytes(gateway), None))
        del self._pendings[PENDING_SLOTS:]
        self._resume_record = encode_resume(channel, nonce, body)
        return self._resume_record

    def seal(self, body):
        """The record to send for a session frame; DeviceError BAD_STATE if none may go."""
        if self.channel is not None:
            self.stats["sealed"] += 1
            return self.channel.seal(body)
        if self.require_secure:
            raise DeviceError(R.BAD_STATE, "no secure channel and plaintext is refused")
        return bytes(body)

    def _take_token(self, now):
        """The handshake budget: HANDSHAKE_BURST at once, then one per
        HANDSHAKE_INTERVAL seconds. Without a clock (``now`` None), unlimited."""
        if now is None:
            return True
        if self._token_time is not None:
            self._tokens = min(
                float(HANDSHAKE_BURST),
                self._tokens + max(0.0, now - self._token_time) / HANDSHAKE_INTERVAL,
            )
        self._token_time = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _handshake(self, msg1, now=None):
        msg1 = bytes(msg1)
        for entry in self._pendings:
            if entry[0] is not None and entry[0] == msg1:
                # The gateway repeats a MSG1 whose MSG2 it did not get (or an attacker
                # replays it): the same answer again, no new keys. A fresh MSG2 here
                # would leave a gateway that got the first one with keys we dropped.
                self.stats["repeats"] += 1
                return entry[1]
        digest = port.sha256(msg1).digest()[:8]
        if digest in self._opened:
            # A recorded MSG1 of a session that already ran: nobody can finish it,
            # and answering costs X25519 work and air time. Dropped unanswered.
            self.stats["replayed_msg1"] += 1
            return None
        if not self._take_token(now):
            self.stats["rate_limited"] += 1  # unanswered: costs nothing and says nothing
            return None
        self.stats["responder_runs"] += 1
        responder = Responder(
            self.static, self.gateways, self.random_bytes(KEY_SIZE), self.prologue
        )
        try:
            msg2 = responder.receive(msg1)
        except DeviceError as exc:
            self.stats["handshake_failed"] += 1
            self.last_error = exc.reason
            return encode_reject(exc.reason)
        self.stats["handshakes"] += 1
        self._resume_record = None  # the gateway has given up on the resumption
        self._pendings.insert(0, (msg1, msg2, responder.channel, responder.initiator, digest))
        del self._pendings[PENDING_SLOTS:]
        return msg2

    def _open(self, record):
        if self._pendings:
            reason = "auth_failed"
            for entry in self._pendings:
                reason, body = entry[2].try_open(record)
                if body is not None:
                    entry[2].stats["opened"] += 1
                    self.channel = entry[2]
                    self.gateway = entry[3]
                    self._pendings = []
                    self._resume_record = None
                    if entry[4] is not None:  # None: a resumed channel (no MSG1)
                        self._opened.insert(0, entry[4])
                        del self._opened[OPENED_MEMORY:]
                    self.stats["opened"] += 1
                    return body
            if self.channel is None:
                self.stats[reason] += 1
                return None
        if self.channel is None:
            self.stats["no_channel"] += 1
            return None
        reason, body = self.channel.try_open(record)
        self.channel.stats[reason] += 1
        self.stats[reason] += 1
        return body
