"""The device side of a link session: a sans-IO Receiver driving the Installer.

Shape: ``replies = receiver.receive_frame(body, now)`` returns the frame bodies
to send back, in order (often none). The device needs no timer: it only ever
answers, and every retransmission is the sender's job, so a device main loop is
"read a frame, feed it, write the replies". ``announce()`` gives HELLO frames
the device may send unasked at boot (session id 0), so a sender that was talking
to it before a reset learns at once that the session is gone.

Nothing but a power cut escapes ``receive_frame``: a body that does not decode
is counted (``stats['bad_frames']``) and ignored; installer refusals become
REJECT frames. ``device_fw.flash.PowerCut`` does propagate: it models the chip
losing power, which no code on the device survives.

Session rules (SPEC.md section 8 "Session"):

- QUERY with a new session id starts a session (dropping any other); the same id
  again is a duplicate and only gets the HELLO again.
- OFFER parts are collected into the offer blob ([chunk_size, manifest,
  signature]); when complete, ``Installer.begin`` runs and the answer is ACCEPT
  (next segment + bitmap of what the device already holds of it) or REJECT.
- DATA for the segment in flight is stored in the one segment buffer; when the
  segment is complete it goes to ``Installer.segment`` and a STATUS acknowledges
  it (a segment that fails its signed check is refused with REJECT: a chunk the
  device has reported holding is never given up within a session, which is what
  lets the sender merge STATUS frames however late they come). Data for any
  other segment is dropped (see "Why drop" below).
- STATUS is sent when a segment completes, when a frame has the poll flag, when a
  chunk arrives past a hole (a loss; not when the offer asked for batched
  acknowledgements, SPEC 8.8: then the next poll reports every hole at once),
  and — once per new chunk stored — when a frame shows the sender is out of
  step (data for another segment). A POLL frame is answered like a polled copy
  of the DATA frame it names.
- Compact DATA (SPEC 8.8) names its chunk by the low 6 bits only: the chunk is
  the one with those bits at or above the lowest chunk still missing of the
  segment in flight (the sender sends a compact frame only for a chunk it
  knows is missing, within 63 of the lowest one it knows missing).
- COMMIT runs ``Installer.finish`` once; DONE (or REJECT) is the answer, repeated
  for repeated COMMITs.

Why drop data for a later segment instead of buffering it: the device holds one
segment payload (SPEC section 4 counts exactly one compressed buffer), and on an
in-order link the next segment's frames only arrive early when a frame of the
current one was lost. Then the current segment's hole is reported at once (the
chunk after the hole triggers a STATUS), the retransmission overtakes nothing,
and what is lost is at most the frames the sender had in flight for the next
segment — bounded by its window, which the sender sizes to the link.

A partial segment survives a new session of the same update with the same
chunk size (the buffer is tagged with update id, chunk size and segment), and
ACCEPT reports it, so a reconnect does not resend chunks the device holds.
"""

import gc

from . import bootrec
from . import codecs as C
from . import frames as F
from . import reasons as R
from .installer import Installer, payload_buffer
from .reasons import DeviceError

IDLE = "idle"
OFFER = "offer"
DATA = "data"
DONE = "done"
REJECTED = "rejected"

DEFAULT_MTU = 1024
MIN_MTU = 16
DEFAULT_MAX_OFFER = 16384
# The smallest OFFER part a sender sends (but the last): an OFFER frame's
# header takes at most 10 bytes of the smallest mtu (MIN_MTU), leaving 6. So an
# offer of max_offer bytes has at most max_offer / 6 parts.
MIN_OFFER_PART = MIN_MTU - 10


class _Bits:
    """Which of ``n`` chunks are held, as a bitmap (bit i of byte i // 8)."""

    def __init__(self, n):
        self.n = n
        self.b = bytearray((n + 7) // 8)
        self.have = 0
        self.highest = -1
        self.low = 0  # every chunk below it is held

    def has(self, i):
        return bool(self.b[i >> 3] & (1 << (i & 7)))

    def set(self, i):
        mask = 1 << (i & 7)
        if self.b[i >> 3] & mask:
            return False
        self.b[i >> 3] |= mask
        self.have += 1
        if i > self.highest:
            self.highest = i
        while self.low < self.n and self.b[self.low >> 3] & (1 << (self.low & 7)):
            self.low += 1
        return True

    def complete(self):
        return self.have == self.n

    def window(self, limit):
        """(base, bitmap): all chunks < base held, bitmap from base, at most ``limit`` bytes."""
        b = self.b
        first = 0
        while first < len(b) and b[first] == 0xFF:
            first += 1
        last = len(b) - 1
        while last >= first and b[last] == 0:
            last -= 1
        return first * 8, bytes(b[first : min(last + 1, first + max(limit, 0))])


class Receiver:
    """One device's end of the link; see the module docstring."""

    def __init__(self, device, mtu=DEFAULT_MTU, max_offer=DEFAULT_MAX_OFFER, decode_hook=None):
        if mtu < MIN_MTU:
            raise DeviceError(R.RESOURCE_LIMIT, "mtu %d below the minimum %d" % (mtu, MIN_MTU))
        self.device = device
        self.mtu = mtu
        self.max_offer = max_offer
        self.decode_hook = decode_hook
        self.stats = {
            "frames": 0, "bad_frames": 0, "duplicates": 0, "dropped": 0, "stray": 0,
            "segments": 0, "statuses": 0, "replies": 0, "sessions": 0, "confirmed": 0,
        }
        self.confirmed = False  # the running image was confirmed by a check-in answer
        self.phase = IDLE
        self.session_id = None
        self.last_frame_at = None
        self._installer = None
        self._parts = None
        self._part_bits = None
        self._part_bytes = 0
        self._part_size = 0
        self._last_part = None
        self._chunk_size = 0
        self._buf = None
        self._tag = None  # (uid, chunk_size, segment) the buffer holds chunks of
        self._bits = None
        self._seg_len = 0
        self._armed = True
        self._answered = False
        self._final = None  # REJECT frame repeated in REJECTED
        self._flags = 0  # the offer's field 4: batched acks, compact DATA, resumption
        # HELLO field 17 bits the layers around this receiver add (DeviceLoop with a
        # secure endpoint: FEATURE_RESUME, SPEC 8.9).
        self.extra_features = 0

    @property
    def offer_flags(self):
        """The running session's OfferBlob flags (SPEC 8.8, 8.9); 0 before its offer."""
        return self._flags

    @property
    def update_id(self):
        """The update id of the session's verified offer, else None."""
        return None if self._installer is None else self._installer.uid

    # ------------------------------------------------------------ public

    def announce(self):
        """HELLO frames (session 0) to send unasked, e.g. after boot."""
        return self._hello(F.NO_SESSION)

    def receive_frame(self, body, now):
        """Feed one frame body; return the list of reply bodies."""
        self.stats["frames"] += 1
        self.last_frame_at = now
        try:
            code, poll, f = F.decode(body)
        except DeviceError:
            self.stats["bad_frames"] += 1
            return []
        try:
            out = self._dispatch(code, poll, f)
        except DeviceError as exc:
            # e.g. a flash or store error outside the installer's own checks
            out = self._fail(exc.reason, exc.message)
        except MemoryError:
            # a heap too small or too split for this session (a MicroPython
            # port): the same, and the device lives on; what is in flash is
            # what a power cut would leave (the progress record resumes it)
            gc.collect()
            out = self._fail(R.RESOURCE_LIMIT, "out of memory")
        self.stats["replies"] += len(out)
        return out

    # ------------------------------------------------------------ dispatch

    def _dispatch(self, code, poll, f):
        if code == F.QUERY:
            return self._on_query(f[0], f[1])
        if code == F.CONFIRM:
            return self._on_confirm(f[0], f[1])
        if code == F.ABORT:
            self._drop_session()
            return []
        if code not in (F.OFFER, F.DATA, F.COMMIT, F.COMPACT, F.POLL_FRAME):
            self.stats["stray"] += 1  # a device -> host frame echoed back at us
            return []
        must = poll or code in (F.COMMIT, F.POLL_FRAME)
        if self.phase == IDLE:
            return self._answer_once(must, F.abort(R.BAD_STATE, "no session"))
        if self.phase == REJECTED:
            return self._answer_once(must, self._final)
        if code == F.OFFER:
            return self._on_offer(poll, f[0], f[1], f[2])
        if code == F.DATA:
            return self._on_data(poll, f[0], f[1], f[2])
        if code == F.COMPACT:
            return self._on_compact(poll, f[0], f[1])
        if code == F.POLL_FRAME:
            return self._on_poll(f[0], f[1])
        return self._on_commit()

    def _on_confirm(self, uid, nonce):
        """The check-in answer (SPEC 8.7). Only the update the running image came
        from, with this boot's nonce, confirms; a repeat after that is answered
        again (its CONFIRMED may have been lost); anything else is refused."""
        dev = self.device
        pending = dev.pending_checkin()
        if pending is not None and pending["uid"] == uid and pending["nonce"] == nonce:
            dev.confirm_running()
            self.stats["confirmed"] += 1
            self.confirmed = True
            return [F.confirmed(uid)]
        running = dev.running_image() or {}
        if pending is None and not dev.running_pending() and running.get("uid") == uid:
            return [F.confirmed(uid)]
        return [F.reject(R.BAD_STATE, "nothing to confirm for that update and boot")]

    def _answer_once(self, must, frame):
        if must or not self._answered:
            self._answered = True
            return [frame]
        return []

    def _fail(self, reason, message):
        """The session cannot go on: forget it and the segment being assembled
        (its chunks may be what it failed on), and say why (ABORT)."""
        self._drop_session()
        self._tag = self._bits = None
        return [F.abort(reason, F.truncate_message(message, self.mtu - 8))]

    def release(self):
        """Let go of the session and the segment buffer (the device resets):
        a port that reserved its payload buffer (device_fw/mp_run.py) may then
        make it again in another size, the old one free."""
        self._drop_session()
        self._buf = self._tag = self._bits = None

    def _drop_session(self):
        self.phase = IDLE
        self.session_id = None
        self._installer = None
        self._parts = None
        self._part_bits = None
        self._last_part = None
        self._answered = False
        self._final = None
        self._flags = 0

    def _reject(self, reason, message):
        session_id = self.session_id
        self._drop_session()
        self.session_id = session_id  # a duplicate QUERY must not reopen it
        self.phase = REJECTED
        self._answered = True
        self._final = F.reject(reason, F.truncate_message(message, self.mtu - 8))
        return [self._final]

    # ------------------------------------------------------------ handshake

    def _on_query(self, version, session_id):
        if version != F.VERSION:
            message = "link protocol %d, this device speaks %d" % (version, F.VERSION)
            return [F.abort(R.UNSUPPORTED_FORMAT, F.truncate_message(message, self.mtu - 8))]
        if session_id == F.NO_SESSION:
            self.stats["stray"] += 1
            return []
        if session_id != self.session_id:
            self._drop_session()
            self.session_id = session_id
            self.phase = OFFER
            self.stats["sessions"] += 1
        return self._hello(session_id)

    def _hello(self, session_id):
        dev = self.device
        ident = dev.identity()
        running = dev.running_image() or {}
        limits = dev.limits()
        progress = dev.progress() or {}
        info = {
            "device_id": bytes(ident["device_id"]),
            "hw": ident["hw"],
            "chip": ident["chip"],
            "running_version": running.get("version"),
            "running_sha256": running.get("sha256"),
            "security_counter": ident["security_counter"],
            "slot_size": bootrec.capacity(dev.passive_slot()),
            "max_frame": self.mtu,
            "codecs": C.names(),  # what this port really decodes
            "max_window_log": limits["max_window_log"],
            "max_segment_payload": limits["max_segment_payload"],
            "max_offer": self.max_offer,
            "resume_uid": progress.get("uid"),
            "resume_next": progress.get("next"),
            "features": F.FEATURES | self.extra_features,
            # what the installer checks a delta against (SPEC 7.6), so the host can
            # refuse before the offer; on the wire only when not the default
            "ram_budget": limits.get("ram_budget", F.DEFAULT_RAM_BUDGET),
        }
        pending = dev.pending_checkin()
        if pending is not None:
            info["pending_uid"] = pending["uid"]
            info["pending_sha256"] = pending["sha256"]
            info["pending_nonce"] = pending["nonce"]
        failures = dev.failures()
        if failures:
            info["failed_uid"] = bytes(failures[-1]["uid"])
            info["failed_reason"] = failures[-1]["reason"]
        blob = F.encode_hello_info(info)
        fixed = 2 + F.int_size(session_id)  # array, type, session id
        size = min(self.mtu, len(blob))
        while True:  # the largest part whose frame fits (header widths vary)
            count = (len(blob) + size - 1) // size
            need = fixed + F.int_size(count - 1) + F.int_size(count) + F.bin_header_size(size)
            if need + size <= self.mtu or size == 1:
                break
            size -= 1
        out = []
        for i in range(count):
            out.append(F.hello(session_id, i, count, blob[i * size : (i + 1) * size]))
        return out

    def _on_offer(self, poll, part, count, chunk):
        """Collect OFFER parts into one buffer of at most ``max_offer`` bytes.

        Every part but the last has the same size (SPEC 8.3), so part ``k`` of
        size ``s`` goes to ``k * s``: the memory is the bytes that arrived (up to
        ``max_offer``) and a bitmap of ``count`` bits, with ``count`` at most
        ``max_offer / MIN_OFFER_PART``; nothing is allocated per part, and
        nothing in proportion to a count no signature has vouched for yet.
        """
        if self.phase != OFFER:  # DATA or DONE: our ACCEPT was lost
            return self._out_of_step(poll, self._accept)
        if self._parts is None:
            most = (self.max_offer + MIN_OFFER_PART - 1) // MIN_OFFER_PART
            if count > most:
                return self._reject(R.RESOURCE_LIMIT, "offer of %d parts exceeds %d bytes"
                                    % (count, self.max_offer))
            self._parts = bytearray()
            self._part_bits = _Bits(count)
            self._part_size = 0
            self._last_part = None
            self._part_bytes = 0
        bits = self._part_bits
        if count != bits.n:
            self.stats["bad_frames"] += 1
            return []
        last = part == count - 1
        size = self._part_size
        if not last and size and len(chunk) != size:
            self.stats["bad_frames"] += 1  # parts of one offer have one size
            return []
        if last and size and len(chunk) > size:
            self.stats["bad_frames"] += 1
            return []
        gap = part > bits.highest + 1
        if bits.has(part):
            self.stats["duplicates"] += 1
            return self._status_if(poll, (F.OFFER_SEGMENT, part))
        if not last and not size:
            size = self._part_size = len(chunk)
            if (count - 1) * size >= self.max_offer:
                return self._reject(R.RESOURCE_LIMIT, "offer exceeds %d bytes" % self.max_offer)
            if self._last_part is not None and len(self._last_part) > size:
                self.stats["bad_frames"] += 1
                return []
        if self._part_bytes + len(chunk) > self.max_offer:
            return self._reject(R.RESOURCE_LIMIT, "offer exceeds %d bytes" % self.max_offer)
        bits.set(part)
        self._part_bytes += len(chunk)
        self._armed = True
        if last and not size:
            self._last_part = bytes(chunk)  # its place is known once a full part came
        else:
            self._place(part, chunk)
        if bits.complete():
            if self._last_part is not None:  # an offer of one part
                self._place(count - 1, self._last_part)
            return self._begin()
        return self._status_if(poll or gap, (F.OFFER_SEGMENT, part))

    def _place(self, part, chunk):
        buf = self._parts
        size = self._part_size
        held, self._last_part = self._last_part, None
        if held is not None and held is not chunk:
            self._place(self._part_bits.n - 1, held)
        at = part * size
        if len(buf) < at + len(chunk):
            buf.extend(bytes(at + len(chunk) - len(buf)))
        buf[at : at + len(chunk)] = chunk

    def _begin(self):
        blob, self._parts = self._parts, None
        try:
            chunk_size, manifest, signature, flags = F.decode_offer_blob(blob)
        except DeviceError as exc:
            return self._reject(R.MALFORMED, exc.message)
        del blob  # the manifest is a copy: the reassembly buffer goes now
        inst = Installer(self.device, self.decode_hook)
        try:
            inst.check(manifest, signature)  # verified before it is parsed
        except DeviceError as exc:
            return self._reject(exc.reason, exc.message)
        problem = self._chunking_problem(chunk_size, inst.manifest, flags)
        if problem is not None:  # refused before start() touches flash
            return self._reject(R.RESOURCE_LIMIT, problem)
        try:
            nxt = inst.start()
        except DeviceError as exc:
            return self._reject(exc.reason, exc.message)
        self._installer = inst
        self._chunk_size = chunk_size
        self._flags = flags
        self.phase = DATA
        self._load(nxt)
        return [self._accept()]

    def _chunking_problem(self, chunk_size, m, flags=0):
        """Why DATA frames of this chunk size cannot reach us, or None."""
        largest = m["segments"].largest()
        chunks = (largest + chunk_size - 1) // chunk_size
        worst = (2 + F.int_size(len(m["segments"]) - 1) + F.int_size(chunks - 1)
                 + F.bin_header_size(chunk_size) + chunk_size)
        if flags & F.OFFER_COMPACT:
            # Compact DATA only: one byte, which the short sealed record folds
            # into its header (SPEC 8.8), so a chunk as large as our mtu fits.
            worst = chunk_size
        if worst > self.mtu or chunks > F.U16 + 1:
            return "chunk size %d does not fit frames of %d bytes" % (chunk_size, self.mtu)
        return None

    def _accept(self):
        inst = self._installer
        base, bitmap = 0, b""
        if self._bits is not None and inst.next_segment < inst.segment_count:
            base, bitmap = self._bits.window(self.mtu - 12)
        return F.accept(inst.next_segment, base, bitmap)

    # ------------------------------------------------------------ data

    def _load(self, index):
        """Make the buffer hold segment ``index`` (keeping chunks already held of it)."""
        inst = self._installer
        if index >= inst.segment_count:
            self._bits = None
            return
        tag = (inst.uid, self._chunk_size, index)
        if tag == self._tag and self._bits is not None:
            return
        length = inst.manifest["segments"][index][0]
        if self._buf is None or len(self._buf) < length:
            self._buf = payload_buffer(length, self.device.limits()["max_segment_payload"])
        self._tag = tag
        self._seg_len = length
        self._bits = _Bits((length + self._chunk_size - 1) // self._chunk_size)

    def _on_data(self, poll, segment, chunk, payload):
        echo = (segment, chunk)
        if self.phase == OFFER:
            self.stats["dropped"] += 1
            return self._out_of_step(poll, lambda: self._status(echo))
        inst = self._installer
        nxt = inst.next_segment
        if self.phase == DONE or segment != nxt or self._bits is None:
            if segment < nxt:
                self.stats["duplicates"] += 1
            else:
                self.stats["dropped"] += 1
            return self._out_of_step(poll, lambda: self._status(echo))
        bits = self._bits
        cs = self._chunk_size
        start = chunk * cs
        if chunk >= bits.n or len(payload) != min(cs, self._seg_len - start):
            self.stats["bad_frames"] += 1
            if poll:
                # A sender chunking differently from the session this device
                # runs (another gateway took over, or a replay did): STATUS
                # would keep it alive forever without progress, so tell it to
                # start its session again.
                return [F.abort(R.BAD_STATE, "chunk does not fit this session's chunking")]
            return []
        gap = chunk > bits.highest + 1 and not self._flags & F.OFFER_BATCH
        if not bits.set(chunk):
            self.stats["duplicates"] += 1
            return self._status_if(poll, echo)
        self._buf[start : start + len(payload)] = payload
        self._armed = True
        if bits.complete():
            return self._complete(echo)
        return self._status_if(poll or gap, echo)

    def _on_compact(self, poll, low, payload):
        """Compact DATA (SPEC 8.8): the chunk is the one with these low 6 bits at or
        above the lowest chunk missing of the segment in flight."""
        if self.phase != DATA or self._bits is None or not self._flags & F.OFFER_COMPACT:
            self.stats["dropped"] += 1
            return self._out_of_step(poll, lambda: self._status(None))
        first = self._bits.low
        chunk = first + ((low - first) & F.COMPACT_MASK)
        return self._on_data(poll, self._installer.next_segment, chunk, payload)

    def _on_poll(self, segment, chunk):
        """POLL (SPEC 8.8): a STATUS echoing (segment, chunk), as for a polled copy of it."""
        return [self._status((segment, chunk))]

    def _complete(self, echo):
        inst = self._installer
        index = inst.next_segment
        try:
            inst.segment(index, memoryview(self._buf)[: self._seg_len])
        except DeviceError as exc:
            # SEGMENT_CORRUPT included: the link checks every frame, so bytes
            # that fail the signed check are the sender's, and sending them
            # again would not help. The buffer is not reused by a later session.
            self._tag = None
            return self._reject(exc.reason, exc.message)
        self.stats["segments"] += 1
        self._load(index + 1)
        if self._flags & F.OFFER_COMMIT and inst.next_segment == inst.segment_count:
            return self._on_commit()  # SPEC 8.9: the last segment's answer is DONE
        return [self._status(echo)]

    def _on_commit(self):
        if self.phase == DONE:
            return [F.done()]
        inst = self._installer
        if self.phase != DATA or inst.next_segment < inst.segment_count:
            return [self._status(None)]
        try:
            inst.finish()
        except DeviceError as exc:
            return self._reject(exc.reason, exc.message)
        self.phase = DONE
        self._tag = None
        self._bits = None
        return [F.done()]

    # ------------------------------------------------------------ status

    def _status_if(self, cond, echo):
        return [self._status(echo)] if cond else []

    def _out_of_step(self, poll, make):
        """Answer a frame that shows the sender out of step: always when polled,
        otherwise once per new chunk stored (a burst of stale frames gets one)."""
        if poll or self._armed:
            self._armed = False
            return [make()]
        return []

    def _status(self, echo):
        self.stats["statuses"] += 1
        if self.phase == OFFER:
            segment, bits = F.OFFER_SEGMENT, self._part_bits
        else:
            inst = self._installer
            segment = inst.next_segment
            bits = self._bits if segment < inst.segment_count else None
        base, bitmap = 0, b""
        if bits is not None:
            base, bitmap = bits.window(self.mtu)
            room = self.mtu - F.status_overhead(segment, base, len(bitmap), echo)
            if room < len(bitmap):
                bitmap = bitmap[: max(room, 0)]
        return F.status(segment, base, bitmap, echo)
