"""The device's codec for link frames; byte-compatible with otaferry.protocol.frames.

The host module is the reference and SPEC.md section 8 the spec; both codecs are held to
the golden vectors in ``tests/vectors/frames/``. Kept to the subset MicroPython
runs (plain functions and tuples, device_fw.mpack for msgpack).

``decode(body)`` returns a tuple ``(type, poll, fields)``: ``type`` one of the
constants below, ``poll`` True for an OFFER or DATA frame with the poll flag,
``fields`` the list of checked fields in wire order (for STATUS the echo is
folded into one item, ``None`` or ``(segment, chunk)``). Anything that is not
a valid frame raises ``DeviceError(BAD_FRAME)`` and nothing else.
"""

from . import mpack
from . import reasons as R
from .reasons import DeviceError

VERSION = 1
POLL = 0x20
NO_SESSION = 0
OFFER_SEGMENT = -1

QUERY = 1
HELLO = 2
OFFER = 3
ACCEPT = 4
REJECT = 5
DATA = 6
STATUS = 7
COMMIT = 8
DONE = 9
ABORT = 10
CONFIRM = 11  # host -> device: the check-in answer (update id, the boot's nonce)
CONFIRMED = 12  # device -> host: the running image is confirmed (VALID)
POLL_FRAME = 13  # host -> device: answer with a STATUS echoing (segment, chunk)
CHECKIN = 14  # device -> host: pending verify (update id, the boot's nonce), SPEC 8.9
COMPACT = 0x80  # not a wire code: what decode() calls a compact DATA frame (SPEC 8.8)

# HELLO field 17 (SPEC 8.8): what this receiver understands besides version 1.
FEATURE_BATCH = 1  # acknowledges DATA per poll and per segment, not per gap
FEATURE_COMPACT = 2  # takes compact DATA frames (and the short sealed record)
FEATURE_COMMIT = 8  # commits by itself once the last segment is written (SPEC 8.9)
FEATURES = FEATURE_BATCH | FEATURE_COMPACT | FEATURE_COMMIT
FEATURE_RESUME = 4  # resumes the secure channel after the reboot (SPEC 8.9): a link-key device
# HELLO field 18 (SPEC 8.3): the delta RAM budget (SPEC 7.6), sent only when not this
# default (installer.DEFAULT_RAM_BUDGET, device.DEFAULT_LIMITS["ram_budget"]).
DEFAULT_RAM_BUDGET = 65536
# OfferBlob field 4 (SPEC 8.8): what the sender uses in this session.
OFFER_BATCH = 1
OFFER_COMPACT = 2
OFFER_RESUME = 4
OFFER_COMMIT = 8
COMPACT_POLL = 0x40  # in a compact DATA frame's first byte
COMPACT_MASK = 0x3F  # ... the low 6 bits of the chunk index

U16 = 0xFFFF
U32 = 0xFFFFFFFF
SIGNATURE_SIZE = 64
HELLO_FIELDS = 14

# type -> allowed field counts (after the type code)
_ARITY = {
    QUERY: (2,), HELLO: (4,), OFFER: (3,), ACCEPT: (3,), REJECT: (2,),
    DATA: (3,), STATUS: (3, 5), COMMIT: (0,), DONE: (0,), ABORT: (2,),
    CONFIRM: (2,), CONFIRMED: (1,), POLL_FRAME: (2,), CHECKIN: (2,),
}


def _bad(message):
    return DeviceError(R.BAD_FRAME, "frame: " + message)


def _int(name, v, lo, hi):
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > hi:
        raise _bad("%s must be an int in %d..%d" % (name, lo, hi))
    return v


def _bin(name, v, lo=0, hi=None):
    if not isinstance(v, (bytes, bytearray)):
        raise _bad("%s must be bytes" % name)
    if len(v) < lo or (hi is not None and len(v) > hi):
        raise _bad("%s has a bad length %d" % (name, len(v)))
    return bytes(v)


def _str(name, v):
    if not isinstance(v, str):
        raise _bad("%s must be a str" % name)
    return v


def _parts(part, count):
    _int("count", count, 1, U16)
    _int("part", part, 0, count - 1)


# --- encoders ----------------------------------------------------------------


def query(session_id, version=VERSION):
    return mpack.encode([QUERY, version, session_id])


def hello(session_id, part, count, chunk):
    return mpack.encode([HELLO, session_id, part, count, chunk])


def offer(part, count, chunk, poll=False):
    return mpack.encode([OFFER | (POLL if poll else 0), part, count, chunk])


def accept(next_segment, base=0, bitmap=b""):
    return mpack.encode([ACCEPT, next_segment, base, bitmap])


def reject(reason, message=""):
    return mpack.encode([REJECT, reason, message])


def data(segment, chunk, payload, poll=False):
    return mpack.encode([DATA | (POLL if poll else 0), segment, chunk, payload])


def compact_data(chunk, payload, poll=False):
    """A compact DATA frame (SPEC 8.8): one byte, poll flag and chunk mod 64, then the payload."""
    return bytes([(COMPACT_POLL if poll else 0) | (chunk & COMPACT_MASK)]) + bytes(payload)


def poll_frame(segment, chunk):
    return mpack.encode([POLL_FRAME, segment, chunk])


def status(segment, base=0, bitmap=b"", echo=None):
    items = [STATUS, segment, base, bitmap]
    if echo is not None:
        items.append(echo[0])
        items.append(echo[1])
    return mpack.encode(items)


def commit():
    return mpack.encode([COMMIT])


def confirm(update_id, nonce):
    return mpack.encode([CONFIRM, update_id, nonce])


def confirmed(update_id):
    return mpack.encode([CONFIRMED, update_id])


def checkin(update_id, nonce):
    return mpack.encode([CHECKIN, update_id, nonce])


def done():
    return mpack.encode([DONE])


def abort(reason, message=""):
    return mpack.encode([ABORT, reason, message])


# --- decoder -----------------------------------------------------------------


def decode(body):
    """Parse one frame body; see the module docstring for the result.

    A body whose first byte is below 0x80 is a compact DATA frame (no msgpack
    array starts so): ``(COMPACT, poll, [chunk mod 64, payload])``.
    """
    if body and body[0] < 0x80:
        if len(body) < 2:
            raise _bad("compact DATA without payload")
        return COMPACT, bool(body[0] & COMPACT_POLL), [body[0] & COMPACT_MASK, bytes(body[1:])]
    try:
        items = mpack.decode_all(body, max_depth=1)  # frames never nest
    except DeviceError as exc:
        raise _bad(exc.message)
    if not isinstance(items, list) or not items:
        raise _bad("not a non-empty msgpack array")
    code = items[0]
    if not isinstance(code, int) or isinstance(code, bool):
        raise _bad("type code is not an int")
    poll = False
    if code & POLL and (code & ~POLL) in (OFFER, DATA):
        poll = True
        code &= ~POLL
    arity = _ARITY.get(code)
    if arity is None:
        raise _bad("unknown type code %d" % code)
    a = items[1:]
    if len(a) not in arity:
        raise _bad("type %d has %d fields" % (code, len(a)))
    if code == QUERY:
        f = [_int("version", a[0], 0, 255), _int("session_id", a[1], 0, U32)]
    elif code == HELLO:
        _int("session_id", a[0], 0, U32)
        _parts(a[1], a[2])
        f = [a[0], a[1], a[2], _bin("chunk", a[3], 1)]
    elif code == OFFER:
        _parts(a[0], a[1])
        f = [a[0], a[1], _bin("chunk", a[2], 1)]
    elif code == ACCEPT:
        f = [_int("next", a[0], 0, U16 + 1), _int("base", a[1], 0, U16 + 1), _bin("bitmap", a[2])]
    elif code in (CONFIRM, CHECKIN):
        f = [_bin("update_id", a[0], 16, 16), _bin("nonce", a[1], 8, 8)]
    elif code == CONFIRMED:
        f = [_bin("update_id", a[0], 16, 16)]
    elif code in (REJECT, ABORT):
        f = [_int("reason", a[0], 0, 255), _str("message", a[1])]
    elif code == POLL_FRAME:
        f = [_int("segment", a[0], 0, U16), _int("chunk", a[1], 0, U16)]
    elif code == DATA:
        f = [_int("segment", a[0], 0, U16), _int("chunk", a[1], 0, U16), _bin("payload", a[2], 1)]
    elif code == STATUS:
        echo = None
        if len(a) == 5:
            echo = (_int("echo segment", a[3], OFFER_SEGMENT, U16),
                    _int("echo chunk", a[4], 0, U16))
        f = [_int("segment", a[0], OFFER_SEGMENT, U16 + 1), _int("base", a[1], 0, U16 + 1),
             _bin("bitmap", a[2]), echo]
    else:  # COMMIT, DONE
        f = []
    return code, poll, f


# --- split payloads ------------------------------------------------------------


def encode_offer_blob(chunk_size, manifest, signature, flags=0):
    items = [chunk_size, manifest, signature]
    if flags:
        items.append(flags)
    return mpack.encode(items)


def decode_offer_blob(blob):
    """-> (chunk_size, manifest_bytes, signature, flags); DeviceError(BAD_FRAME) otherwise.

    ``flags`` (field 4, SPEC 8.8) is 0 when absent (a version-1 sender)."""
    try:
        items = mpack.decode_all(blob, max_depth=1)
    except DeviceError as exc:
        raise _bad("offer: " + exc.message)
    if not isinstance(items, list) or len(items) not in (3, 4):
        raise _bad("offer blob must be [chunk_size, manifest, signature (, flags)]")
    flags = _int("flags", items[3], 0, 255) if len(items) == 4 else 0
    return (
        _int("chunk_size", items[0], 1, U16),
        _bin("manifest", items[1], 1),
        _bin("signature", items[2], SIGNATURE_SIZE, SIGNATURE_SIZE),
        flags,
    )


def encode_hello_info(info):
    """``info``: dict with the keys of HELLO_KEYS (see SPEC.md section 8, HelloInfo)."""
    resume = None
    if info.get("resume_uid") is not None:
        resume = [info["resume_uid"], info["resume_next"]]
    # Fields 15 and 16 (SPEC 8.1), sent only when set, so a hello without them
    # is byte for byte what version 1 devices send: pending = [update id, image
    # SHA-256, check-in nonce] while the running image awaits its check-in;
    # failed = [update id, reason] of the last update that rolled back.
    # Field 17 (SPEC 8.8): the features bitmask, sent only when not 0 (nil for
    # 15 and 16 then if they are not set). Field 18 (SPEC 8.3): the delta RAM
    # budget, sent only when not DEFAULT_RAM_BUDGET (17 is then 0 if unset: a
    # reader of 17 takes an int there).
    tail = []
    ram = info.get("ram_budget", DEFAULT_RAM_BUDGET)
    if ram != DEFAULT_RAM_BUDGET:
        tail = [None, None, info.get("features") or 0, ram]
    elif info.get("features"):
        tail = [None, None, info["features"]]
    if info.get("failed_uid") is not None:
        tail = [None, [info["failed_uid"], info["failed_reason"]]] + tail[2:]
    if info.get("pending_uid") is not None:
        pending = [info["pending_uid"], info["pending_sha256"], info["pending_nonce"]]
        tail = [pending] + tail[1:]
    return mpack.encode([
        VERSION,
        info["device_id"],
        info["hw"],
        info["chip"],
        info.get("running_version"),
        info.get("running_sha256"),
        info["security_counter"],
        info["slot_size"],
        info["max_frame"],
        list(info["codecs"]),
        info["max_window_log"],
        info["max_segment_payload"],
        info["max_offer"],
        resume,
    ] + tail)


def decode_hello_info(blob):
    """The device never needs this; it exists so the golden vectors run both ways."""
    try:
        items = mpack.decode_all(blob, max_depth=2)
    except DeviceError as exc:
        raise _bad("hello: " + exc.message)
    if not isinstance(items, list) or len(items) < HELLO_FIELDS:
        raise _bad("hello info must be an array of %d fields" % HELLO_FIELDS)
    resume = items[13]
    if resume is not None and (not isinstance(resume, list) or len(resume) != 2):
        raise _bad("hello resume must be nil or [uid, next]")
    codecs = items[9]
    if not isinstance(codecs, list):
        raise _bad("hello codecs must be an array")
    for c in codecs:
        _str("codec", c)
    pending = items[14] if len(items) > 14 else None
    failed = items[15] if len(items) > 15 else None
    features = _int("features", items[16], 0, U32) if len(items) > 16 else 0
    ram = _int("ram_budget", items[17], 0, U32) if len(items) > 17 else DEFAULT_RAM_BUDGET
    if pending is not None and (not isinstance(pending, list) or len(pending) != 3):
        raise _bad("hello pending must be nil or [uid, sha256, nonce]")
    if failed is not None and (not isinstance(failed, list) or len(failed) != 2):
        raise _bad("hello failed must be nil or [uid, reason]")
    return {
        "version": _int("version", items[0], 0, 255),
        "device_id": _bin("device_id", items[1], 8, 8),
        "hw": _str("hw", items[2]),
        "chip": _str("chip", items[3]),
        "running_version": None if items[4] is None else _str("running_version", items[4]),
        "running_sha256": None if items[5] is None else _bin("sha256", items[5], 32, 32),
        "security_counter": _int("security_counter", items[6], 0, U32),
        "slot_size": _int("slot_size", items[7], 0, U32),
        "max_frame": _int("max_frame", items[8], 1, U32),
        "codecs": codecs,
        "max_window_log": _int("max_window_log", items[10], 0, 63),
        "max_segment_payload": _int("max_segment_payload", items[11], 0, U32),
        "max_offer": _int("max_offer", items[12], 0, U32),
        "resume_uid": None if resume is None else _bin("resume uid", resume[0], 16, 16),
        "resume_next": None if resume is None else _int("resume next", resume[1], 0, U16 + 1),
        "pending_uid": None if pending is None else _bin("pending uid", pending[0], 16, 16),
        "pending_sha256": None if pending is None else _bin("pending sha", pending[1], 32, 32),
        "pending_nonce": None if pending is None else _bin("pending nonce", pending[2], 8, 8),
        "failed_uid": None if failed is None else _bin("failed uid", failed[0], 16, 16),
        "failed_reason": None if failed is None else _int("failed reason", failed[1], 0, 255),
        "features": features,
        "ram_budget": ram,
    }


# --- sizes -------------------------------------------------------------------


def int_size(v):
    if -32 <= v <= 127:
        return 1
    if v >= 0:
        return 2 if v <= 0xFF else 3 if v <= 0xFFFF else 5 if v <= U32 else 9
    return 2 if v >= -128 else 3 if v >= -32768 else 5 if v >= -(1 << 31) else 9


def bin_header_size(n):
    return 2 if n <= 0xFF else 3 if n <= 0xFFFF else 5


def status_overhead(segment, base, bitmap_len, echo):
    n = 1 + 1 + int_size(segment) + int_size(base) + bin_header_size(bitmap_len)
    if echo is not None:
        n += int_size(echo[0]) + int_size(echo[1])
    return n


def truncate_message(message, limit):
    """``message`` cut to at most ``limit`` UTF-8 bytes on a character boundary."""
    raw = message.encode()
    if len(raw) <= limit:
        return message
    raw = raw[: max(limit, 0)]
    while raw:
        try:
            return raw.decode()
        except UnicodeError:
            raw = raw[:-1]
    return ""
