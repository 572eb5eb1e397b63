"""The device's reader of the signed manifest and of the .ota header.

Byte-compatible with ``otaferry.protocol.manifest`` (the reference): both read
the golden vectors in ``tests/vectors/``. The device checks the same rules the
host does (types, ranges, canonical bytes) because it must never trust the
host's checks.
"""

from . import mpack
from . import reasons as R
from .reasons import DeviceError

MAGIC = b"OTAF"
FILE_FORMAT = 1
HEADER_SIZE = 10
SIGNATURE_SIZE = 64
MAX_MANIFEST = 1 << 20
SIGNING_DOMAIN = b"otaferry/manifest/v1\x00"
CHECK_SIZE = 16

PAYLOAD_FULL = 0
PAYLOAD_DELTA = 1

U32_MAX = 0xFFFFFFFF
K_SEGMENTS = 14
K_KEY_ID = 15

# The one table of manifest fields and their ranges (SPEC section 2); the host's
# ``otaferry.protocol.manifest.FIELDS`` is the same table, and both are checked
# against tests/vectors/manifest_fields.json. key -> (name, kind, lo, hi, required):
# "int": lo <= value <= hi; "str": lo..hi UTF-8 bytes; "strlist": a non-empty
# array of such strings; "bin": exactly lo (= hi) bytes; "segments": entries
# [length, check] with lo <= length <= hi and a CHECK_SIZE-byte check.
FIELDS = {
    1: ("format", "int", 1, 1, True),
    2: ("hw", "strlist", 1, 32, True),
    3: ("chip", "str", 1, 16, True),
    4: ("version", "str", 1, 32, True),
    5: ("security_counter", "int", 0, U32_MAX, True),
    6: ("target_size", "int", 1, U32_MAX, True),
    7: ("target_sha256", "bin", 32, 32, True),
    8: ("payload_kind", "int", PAYLOAD_FULL, PAYLOAD_DELTA, True),
    9: ("base_sha256", "bin", 32, 32, False),
    10: ("base_size", "int", 0, U32_MAX, False),
    11: ("codec", "str", 1, 16, True),
    12: ("window_log", "int", 10, 22, True),
    13: ("segment_size", "int", 4096, U32_MAX, True),
    14: ("segments", "segments", 1, U32_MAX, True),
    15: ("key_id", "bin", 8, 8, True),
    16: ("project", "str", 1, 32, False),
}
SEGMENT_ALIGN = 4096


class SegmentTable:
    """The manifest's segment table packed into two byte strings.

    Parsed msgpack lists cost ~150 bytes of heap per segment; packed, an entry
    costs 20 (4-byte length + 16-byte check), so the table a device keeps for
    a 1 MiB slot of 8 KiB segments is 2.5 KiB instead of ~20 KiB. The parser
    fills it straight from the manifest bytes, never building the lists.
    """

    def __init__(self, lengths, checks):
        self.lengths = bytes(lengths)
        self.checks = bytes(checks)

    def __len__(self):
        return len(self.lengths) // 4

    def __getitem__(self, index):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        length = int.from_bytes(self.lengths[4 * index : 4 * index + 4], "little")
        return length, self.checks[CHECK_SIZE * index : CHECK_SIZE * (index + 1)]

    def largest(self):
        out = 0
        for i in range(len(self)):
            n = int.from_bytes(self.lengths[4 * i : 4 * i + 4], "little")
            if n > out:
                out = n
        return out


def _bad(message):
    return DeviceError(R.MALFORMED, "manifest: " + message)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check(spec, value):
    name, kind, lo, hi = spec[0], spec[1], spec[2], spec[3]
    if kind == "int":
        if not _is_int(value):
            raise _bad("%s must be an integer" % name)
        if not lo <= value <= hi:
            raise _bad("%s=%d out of range %d..%d" % (name, value, lo, hi))
    elif kind == "str":
        if not isinstance(value, str):
            raise _bad("%s must be a string" % name)
        n = len(value.encode())
        if not lo <= n <= hi:
            raise _bad("%s must be %d..%d UTF-8 bytes, got %d" % (name, lo, hi, n))
    elif kind == "strlist":
        if not isinstance(value, list) or not value:
            raise _bad("%s must be a non-empty list" % name)
        for item in value:
            _check((name, "str", lo, hi), item)
    elif kind == "bin" and (not isinstance(value, (bytes, bytearray)) or len(value) != lo):
        raise _bad("%s must be %d bytes" % (name, lo))


def _segments(data, pos, spec):
    """Decode the segment table at ``pos`` straight into a SegmentTable."""
    kind, n, pos = mpack.head(data, pos, canonical=True)
    if kind != "array":
        raise _bad("segments must be a list")
    lo, hi = spec[2], spec[3]
    lengths = bytearray()
    checks = bytearray()
    for _ in range(n):
        kind, count, pos = mpack.head(data, pos, canonical=True)
        if kind != "array" or count != 2:
            raise _bad("segment entry must be [length, %d-byte check]" % CHECK_SIZE)
        length, pos = mpack.decode(data, pos, max_depth=0, canonical=True)
        check, pos = mpack.decode(data, pos, max_depth=0, canonical=True)
        if not _is_int(length) or not lo <= length <= hi:
            raise _bad("segment length must be %d..%d" % (lo, hi))
        if not isinstance(check, bytes) or len(check) != CHECK_SIZE:
            raise _bad("segment check must be %d bytes" % CHECK_SIZE)
        lengths += length.to_bytes(4, "little")
        checks += check
    return SegmentTable(lengths, checks), pos


def _decoding(fn, *args):
    try:
        return fn(*args)
    except DeviceError as exc:
        if exc.reason == R.TRUNCATED:
            raise DeviceError(R.TRUNCATED, "manifest: " + exc.message)
        if exc.message.startswith("manifest: "):
            raise
        raise _bad(exc.message)


def key_id_of(data):
    """The key id field of unverified manifest bytes, found by stepping over
    everything else without building it: what is needed to pick the key that
    verifies the signature, before anything of the manifest is trusted."""
    return _decoding(_key_id_of, data)


def _key_id_of(data):
    kind, n, pos = mpack.head(data, 0)
    if kind != "map":
        raise _bad("not a map")
    for _ in range(n):
        kind, key, pos = mpack.head(data, pos)
        if kind != "int":
            raise _bad("map keys must be integers")
        if key == K_KEY_ID:
            value, _end = mpack.decode(data, pos, max_depth=0)
            _check(FIELDS[K_KEY_ID], value)
            return value
        pos = mpack.skip(data, pos, max_depth=3)
    raise _bad("missing key_id")


def parse_manifest(data):
    """Decode and validate manifest bytes; return a dict keyed by field name.

    Walks the map field by field (canonical forms only, so the bytes are the
    one encoding of the value without a re-encode); the segment table goes
    straight into packed bytes. Call it on verified bytes: the RAM it takes
    is proportional to the input.
    """
    return _decoding(_parse, data)


def _parse(data):
    kind, n, pos = mpack.head(data, 0, canonical=True)
    if kind != "map":
        raise _bad("not a map")
    out = {}
    last = 0
    for _ in range(n):
        key, pos = mpack.decode(data, pos, max_depth=0, canonical=True)
        spec = FIELDS.get(key) if _is_int(key) else None
        if spec is None:
            raise _bad("unknown key %r" % (key,))
        if key <= last:
            raise _bad("keys not in ascending order")
        last = key
        if key == K_SEGMENTS:
            value, pos = _segments(data, pos, spec)
        else:
            value, pos = mpack.decode(data, pos, max_depth=1, canonical=True)
            if key == 1 and value != 1:
                raise DeviceError(
                    R.UNSUPPORTED_FORMAT, "manifest format %r, this device reads 1" % (value,)
                )
            _check(spec, value)
        out[spec[0]] = value
    if pos != len(data):
        raise _bad("%d trailing bytes after the map" % (len(data) - pos))
    for spec in FIELDS.values():
        if spec[4] and spec[0] not in out:
            raise _bad("missing %s" % spec[0])
    kind = out["payload_kind"]
    if kind == PAYLOAD_DELTA:
        if "base_sha256" not in out or "base_size" not in out:
            raise _bad("delta without base_sha256 / base_size")
    elif "base_sha256" in out or "base_size" in out:
        raise _bad("full image with base fields")
    seg = out["segment_size"]
    if seg % SEGMENT_ALIGN:
        raise _bad("segment_size must be a multiple of %d" % SEGMENT_ALIGN)
    if len(out["segments"]) != (out["target_size"] + seg - 1) // seg:
        raise _bad("segment count does not cover target_size")
    return out


def signing_message(manifest_bytes):
    return SIGNING_DOMAIN + bytes(manifest_bytes)


def update_id(manifest_bytes):
    """What identifies one update across sessions and power cuts."""
    from .port import sha256

    return sha256(bytes(manifest_bytes)).digest()[:16]


def read_exact(stream, n, what):
    data = stream.read(n)
    if data is None or len(data) != n:
        raise DeviceError(R.TRUNCATED, "artifact ends inside the %s" % what)
    return data


def read_header(stream, max_manifest=MAX_MANIFEST):
    """Read magic, version, manifest and signature; return (manifest_bytes, signature).

    ``max_manifest``: the largest manifest this reader holds in RAM (a device's
    own limit, below the format's 1 MiB); a longer one is RESOURCE_LIMIT, refused
    before a byte of it is read.
    """
    head = read_exact(stream, HEADER_SIZE, "header")
    if head[:4] != MAGIC:
        raise DeviceError(R.BAD_MAGIC, "not an .ota artifact (magic %r)" % (bytes(head[:4]),))
    if head[4] != FILE_FORMAT:
        raise DeviceError(R.UNSUPPORTED_FORMAT, "artifact format %d, this device reads 1" % head[4])
    if head[5] != 0:
        raise DeviceError(R.MALFORMED, "artifact flags %d must be 0" % head[5])
    length = int.from_bytes(head[6:10], "little")
    if not 1 <= length <= MAX_MANIFEST:
        raise DeviceError(R.MALFORMED, "manifest length %d out of range" % length)
    if length > max_manifest:
        raise DeviceError(
            R.RESOURCE_LIMIT,
            "manifest of %d bytes exceeds this device's %d" % (length, max_manifest),
        )
    manifest_bytes = read_exact(stream, length, "manifest")
    signature = read_exact(stream, SIGNATURE_SIZE, "signature")
    return manifest_bytes, signature
