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

# key -> (name, kind, required)
FIELDS = {
    1: ("format", "int", True),
    2: ("hw", "strlist", True),
    3: ("chip", "str", True),
    4: ("version", "str", True),
    5: ("security_counter", "int", True),
    6: ("target_size", "int", True),
    7: ("target_sha256", "bin32", True),
    8: ("payload_kind", "int", True),
    9: ("base_sha256", "bin32", False),
    10: ("base_size", "int", False),
    11: ("codec", "str", True),
    12: ("window_log", "int", True),
    13: ("segment_size", "int", True),
    14: ("segments", "segments", True),
    15: ("key_id", "bin8", True),
    16: ("project", "str", False),
}


class SegmentTable:
    """The manifest's segment table packed into two byte strings.

    Parsed msgpack lists cost ~150 bytes of heap per segment; packed, an entry
    costs 20 (4-byte length + 16-byte check), so the table a device keeps for
    a 1 MiB slot of 8 KiB segments is 2.5 KiB instead of ~20 KiB.
    """

    def __init__(self, entries):
        lengths = bytearray()
        checks = bytearray()
        for length, check in entries:
            lengths += length.to_bytes(4, "little")
            checks += check
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


def _bad(message):
    return DeviceError(R.MALFORMED, "manifest: " + message)


def _check(kind, name, value):
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _bad("%s must be a non-negative integer" % name)
    elif kind == "str":
        if not isinstance(value, str) or not value or len(value.encode()) > 32:
            raise _bad("%s must be a string of 1..32 bytes" % name)
    elif kind == "strlist":
        if not isinstance(value, list) or not value:
            raise _bad("%s must be a non-empty list" % name)
        for item in value:
            _check("str", name, item)
    elif kind in ("bin32", "bin8"):
        size = 32 if kind == "bin32" else 8
        if not isinstance(value, (bytes, bytearray)) or len(value) != size:
            raise _bad("%s must be %d bytes" % (name, size))
    elif kind == "segments":
        if not isinstance(value, list):
            raise _bad("segments must be a list")
        for entry in value:
            if (
                not isinstance(entry, list)
                or len(entry) != 2
                or not isinstance(entry[0], int)
                or isinstance(entry[0], bool)
                or not 1 <= entry[0] <= 0xFFFFFFFF
                or not isinstance(entry[1], (bytes, bytearray))
                or len(entry[1]) != CHECK_SIZE
            ):
                raise _bad("segment entry must be [length >= 1, 16-byte check]")


def parse_manifest(data):
    """Decode and validate manifest bytes; return a dict keyed by field name."""
    try:
        raw = mpack.decode_all(data, canonical=True)
    except DeviceError as exc:
        if exc.reason == R.TRUNCATED:
            raise DeviceError(R.TRUNCATED, "manifest: " + exc.message)
        raise _bad(exc.message)
    if not isinstance(raw, dict):
        raise _bad("not a map")
    fmt = raw.get(1)
    if fmt != 1:
        raise DeviceError(R.UNSUPPORTED_FORMAT, "manifest format %r, this device reads 1" % (fmt,))
    out = {}
    last = 0
    for key, value in raw.items():
        spec = FIELDS.get(key) if isinstance(key, int) and not isinstance(key, bool) else None
        if spec is None:
            raise _bad("unknown key %r" % (key,))
        if key <= last:
            raise _bad("keys not in ascending order")
        last = key
        _check(spec[1], spec[0], value)
        out[spec[0]] = value
    for spec in FIELDS.values():
        if spec[2] and spec[0] not in out:
            raise _bad("missing %s" % spec[0])
    kind = out["payload_kind"]
    if kind == PAYLOAD_DELTA:
        if "base_sha256" not in out or "base_size" not in out:
            raise _bad("delta without base_sha256 / base_size")
    elif kind == PAYLOAD_FULL:
        if "base_sha256" in out or "base_size" in out:
            raise _bad("full image with base fields")
    else:
        raise _bad("payload_kind %d unknown" % kind)
    seg = out["segment_size"]
    if seg < 4096 or seg % 4096:
        raise _bad("segment_size must be a positive multiple of 4096")
    if not 10 <= out["window_log"] <= 22:
        raise _bad("window_log out of range 10..22")
    if out["target_size"] < 1:
        raise _bad("target_size must be >= 1")
    if len(out["segments"]) != (out["target_size"] + seg - 1) // seg:
        raise _bad("segment count does not cover target_size")
    out["segments"] = SegmentTable(out["segments"])
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


def read_header(stream):
    """Read magic, version, manifest and signature; return (manifest_bytes, signature)."""
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
    manifest_bytes = read_exact(stream, length, "manifest")
    signature = read_exact(stream, SIGNATURE_SIZE, "signature")
    return manifest_bytes, signature
