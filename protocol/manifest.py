"""The signed manifest (SPEC section 2): one value, exactly one byte string.

Encoding uses ``msgpack.packb`` (shortest forms, insertion-ordered maps, ``bin``
for bytes). Decoding does *not* use msgpack's unpacker: a small strict reader
below accepts only the five msgpack families a manifest may contain (positive
int, str, bin, array, map), tells a truncated input (``TRUNCATED``) from a
malformed one (``MALFORMED``) and never allocates more than the input implies.
After the type and range checks the decoded manifest is re-encoded and must
equal the input byte for byte, so every non-canonical form (wide ints, keys
out of order, duplicate keys, str8 where fixstr fits ...) is rejected.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from .errors import DecodeError, Reason

MANIFEST_FORMAT = 1
PAYLOAD_FULL = 0
PAYLOAD_DELTA = 1
SIGNING_DOMAIN = b"otaferry/manifest/v1\x00"
MAX_MANIFEST_SIZE = 1 << 20
SEGMENT_CHECK_SIZE = 16
KEY_ID_SIZE = 8
SHA256_SIZE = 32
SEGMENT_ALIGN = 4096
MIN_WINDOW_LOG = 10
MAX_WINDOW_LOG = 22
U32_MAX = 0xFFFF_FFFF

# Manifest map keys (SPEC section 2 table).
K_FORMAT = 1
K_HW = 2
K_CHIP = 3
K_VERSION = 4
K_SECURITY_COUNTER = 5
K_TARGET_SIZE = 6
K_TARGET_SHA256 = 7
K_PAYLOAD_KIND = 8
K_BASE_SHA256 = 9
K_BASE_SIZE = 10
K_CODEC = 11
K_WINDOW_LOG = 12
K_SEGMENT_SIZE = 13
K_SEGMENTS = 14
K_KEY_ID = 15
K_PROJECT = 16

class Field(NamedTuple):
    """One manifest field and its range: ``int`` lo <= value <= hi; ``str`` lo..hi
    UTF-8 bytes; ``strlist`` a non-empty array of such strings; ``bin`` exactly
    lo (= hi) bytes; ``segments`` entries [length, 16-byte check], lo <= length <= hi."""

    name: str
    kind: str
    lo: int
    hi: int
    required: bool


# The one table of ranges (SPEC section 2). The device's copy is
# ``device_fw.manifest.FIELDS``; tests/vectors/manifest_fields.json holds both.
FIELDS: dict[int, Field] = {
    K_FORMAT: Field("format", "int", MANIFEST_FORMAT, MANIFEST_FORMAT, True),
    K_HW: Field("hw", "strlist", 1, 32, True),
    K_CHIP: Field("chip", "str", 1, 16, True),
    K_VERSION: Field("version", "str", 1, 32, True),
    K_SECURITY_COUNTER: Field("security_counter", "int", 0, U32_MAX, True),
    K_TARGET_SIZE: Field("target_size", "int", 1, U32_MAX, True),
    K_TARGET_SHA256: Field("target_sha256", "bin", SHA256_SIZE, SHA256_SIZE, True),
    K_PAYLOAD_KIND: Field("payload_kind", "int", PAYLOAD_FULL, PAYLOAD_DELTA, True),
    K_BASE_SHA256: Field("base_sha256", "bin", SHA256_SIZE, SHA256_SIZE, False),
    K_BASE_SIZE: Field("base_size", "int", 0, U32_MAX, False),
    K_CODEC: Field("codec", "str", 1, 16, True),
    K_WINDOW_LOG: Field("window_log", "int", MIN_WINDOW_LOG, MAX_WINDOW_LOG, True),
    K_SEGMENT_SIZE: Field("segment_size", "int", SEGMENT_ALIGN, U32_MAX, True),
    K_SEGMENTS: Field("segments", "segments", 1, U32_MAX, True),
    K_KEY_ID: Field("key_id", "bin", KEY_ID_SIZE, KEY_ID_SIZE, True),
    K_PROJECT: Field("project", "str", 1, 32, False),
}
_KNOWN_KEYS = frozenset(FIELDS)
_REQUIRED_KEYS = frozenset(k for k, f in FIELDS.items() if f.required)

__all__ = [
    "FIELDS",
    "MANIFEST_FORMAT",
    "MAX_MANIFEST_SIZE",
    "PAYLOAD_DELTA",
    "PAYLOAD_FULL",
    "SIGNING_DOMAIN",
    "Field",
    "Manifest",
    "SegmentEntry",
    "manifest_key_id",
    "segment_check",
    "signing_message",
]


def signing_message(manifest_bytes: bytes) -> bytes:
    """The exact bytes an artifact signature covers (domain prefix + manifest)."""
    return SIGNING_DOMAIN + bytes(manifest_bytes)


def segment_check(payload: bytes) -> bytes:
    """A segment's check value: the first 16 bytes of SHA-256 of its payload bytes."""
    return hashlib.sha256(payload).digest()[:SEGMENT_CHECK_SIZE]


class SegmentEntry(NamedTuple):
    length: int
    check: bytes


def _bad(message: str, reason: Reason = Reason.MALFORMED) -> DecodeError:
    return DecodeError(f"manifest: {message}", reason)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if type(value) is not int:  # bool is an int subclass; it is not allowed
        raise _bad(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise _bad(f"{name}={value} out of range {lo}..{hi}")


def _check_str(name: str, value: object, lo: int, hi: int) -> None:
    if type(value) is not str:
        raise _bad(f"{name} must be a str, got {type(value).__name__}")
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _bad(f"{name} is not encodable as UTF-8") from None
    if not lo <= n <= hi:
        raise _bad(f"{name} must be {lo}..{hi} UTF-8 bytes, got {n}")


def _check_bin(name: str, value: object, size: int) -> None:
    if type(value) is not bytes:
        raise _bad(f"{name} must be bytes, got {type(value).__name__}")
    if len(value) != size:
        raise _bad(f"{name} must be {size} bytes, got {len(value)}")


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest value; building one validates every field (``DecodeError``)."""

    hw: tuple[str, ...]
    chip: str
    version: str
    security_counter: int
    target_size: int
    target_sha256: bytes
    payload_kind: int
    codec: str
    window_log: int
    segment_size: int
    segments: tuple[SegmentEntry, ...]
    key_id: bytes
    base_sha256: bytes | None = None
    base_size: int | None = None
    project: str | None = None
    format: int = MANIFEST_FORMAT

    def __post_init__(self) -> None:
        # Accept lists / plain pairs for convenience, store canonical tuples.
        if isinstance(self.hw, list):
            object.__setattr__(self, "hw", tuple(self.hw))
        if isinstance(self.segments, list | tuple):
            object.__setattr__(self, "segments", tuple(_entry(e) for e in self.segments))
        self._validate()

    def _validate(self) -> None:
        if type(self.format) is not int:
            raise _bad("format must be an int")
        if self.format != MANIFEST_FORMAT:
            raise _bad(
                f"format {self.format} is not supported (this reader knows {MANIFEST_FORMAT})",
                Reason.UNSUPPORTED_FORMAT,
            )
        if type(self.hw) is not tuple or not self.hw:
            raise _bad("hw must be a non-empty tuple of str")
        for i, hw in enumerate(self.hw):
            _check_str(f"hw[{i}]", hw, FIELDS[K_HW].lo, FIELDS[K_HW].hi)
        for key in (K_CHIP, K_VERSION, K_CODEC):
            f = FIELDS[key]
            _check_str(f.name, getattr(self, f.name), f.lo, f.hi)
        for key in (K_SECURITY_COUNTER, K_TARGET_SIZE, K_PAYLOAD_KIND, K_WINDOW_LOG,
                    K_SEGMENT_SIZE):  # fmt: skip
            f = FIELDS[key]
            _check_int(f.name, getattr(self, f.name), f.lo, f.hi)
        _check_bin("target_sha256", self.target_sha256, FIELDS[K_TARGET_SHA256].lo)
        if self.payload_kind == PAYLOAD_DELTA:
            if self.base_sha256 is None or self.base_size is None:
                raise _bad("a delta manifest needs base_sha256 and base_size")
            _check_bin("base_sha256", self.base_sha256, FIELDS[K_BASE_SHA256].lo)
            f = FIELDS[K_BASE_SIZE]
            _check_int(f.name, self.base_size, f.lo, f.hi)
        elif self.base_sha256 is not None or self.base_size is not None:
            raise _bad("a full-image manifest must not carry base_sha256 / base_size")
        if self.segment_size % SEGMENT_ALIGN:
            raise _bad(f"segment_size={self.segment_size} is not a multiple of {SEGMENT_ALIGN}")
        if type(self.segments) is not tuple:
            raise _bad("segments must be a tuple of SegmentEntry")
        want = math.ceil(self.target_size / self.segment_size)
        if len(self.segments) != want:
            raise _bad(
                f"{len(self.segments)} segments, but target_size={self.target_size} / "
                f"segment_size={self.segment_size} needs {want}"
            )
        seg = FIELDS[K_SEGMENTS]
        for i, entry in enumerate(self.segments):
            _check_int(f"segments[{i}].length", entry.length, seg.lo, seg.hi)
            _check_bin(f"segments[{i}].check", entry.check, SEGMENT_CHECK_SIZE)
        _check_bin("key_id", self.key_id, FIELDS[K_KEY_ID].lo)
        if self.project is not None:
            f = FIELDS[K_PROJECT]
            _check_str(f.name, self.project, f.lo, f.hi)

    # --- derived values ---

    @property
    def is_delta(self) -> bool:
        return self.payload_kind == PAYLOAD_DELTA

    @property
    def segment_count(self) -> int:
        return len(self.segments)

    @property
    def payload_size(self) -> int:
        """Total payload bytes (sum of segment lengths)."""
        return sum(e.length for e in self.segments)

    @property
    def window_size(self) -> int:
        return 1 << self.window_log

    def segment_target_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of the target-image bytes segment *index* produces."""
        if type(index) is not int or not 0 <= index < len(self.segments):
            raise DecodeError(
                f"segment index {index!r} out of range 0..{len(self.segments) - 1}",
                Reason.MALFORMED,
            )
        offset = index * self.segment_size
        return offset, min(self.segment_size, self.target_size - offset)

    # --- bytes ---

    def encode(self) -> bytes:
        """The canonical msgpack bytes (the bytes that get signed)."""
        fields: dict[int, Any] = {
            K_FORMAT: self.format,
            K_HW: list(self.hw),
            K_CHIP: self.chip,
            K_VERSION: self.version,
            K_SECURITY_COUNTER: self.security_counter,
            K_TARGET_SIZE: self.target_size,
            K_TARGET_SHA256: self.target_sha256,
            K_PAYLOAD_KIND: self.payload_kind,
        }
        if self.base_sha256 is not None:
            fields[K_BASE_SHA256] = self.base_sha256
        if self.base_size is not None:
            fields[K_BASE_SIZE] = self.base_size
        fields[K_CODEC] = self.codec
        fields[K_WINDOW_LOG] = self.window_log
        fields[K_SEGMENT_SIZE] = self.segment_size
        fields[K_SEGMENTS] = [[e.length, e.check] for e in self.segments]
        fields[K_KEY_ID] = self.key_id
        if self.project is not None:
            fields[K_PROJECT] = self.project
        out = msgpack.packb(fields, use_bin_type=True)
        assert isinstance(out, bytes)
        return out

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse canonical manifest bytes; anything else raises ``DecodeError``."""
        data = bytes(data)
        if len(data) > MAX_MANIFEST_SIZE:
            raise _bad(f"{len(data)} bytes exceeds the {MAX_MANIFEST_SIZE}-byte limit")
        reader = _StrictReader(data)
        top = reader.value(depth=0)
        if reader.pos != len(data):
            raise _bad(f"{len(data) - reader.pos} trailing bytes after the map")
        if not isinstance(top, dict):
            raise _bad(f"top level must be a map, got {type(top).__name__}")
        if K_FORMAT not in top:
            raise _bad("missing key 1 (format)")
        fmt = top[K_FORMAT]
        _check_int("format", fmt, 0, (1 << 64) - 1)
        if fmt != MANIFEST_FORMAT:
            raise _bad(f"format {fmt} is not supported", Reason.UNSUPPORTED_FORMAT)
        keys = list(top)
        for k in keys:
            if k not in _KNOWN_KEYS:
                raise _bad(f"unknown key {k!r}")
        if keys != sorted(keys):
            raise _bad(f"keys not in ascending order: {keys}")
        missing = sorted(_REQUIRED_KEYS - top.keys())
        if missing:
            raise _bad(f"missing required keys {missing}")
        manifest = cls(
            hw=_tuple_of("hw", top[K_HW]),
            chip=top[K_CHIP],
            version=top[K_VERSION],
            security_counter=top[K_SECURITY_COUNTER],
            target_size=top[K_TARGET_SIZE],
            target_sha256=top[K_TARGET_SHA256],
            payload_kind=top[K_PAYLOAD_KIND],
            codec=top[K_CODEC],
            window_log=top[K_WINDOW_LOG],
            segment_size=top[K_SEGMENT_SIZE],
            segments=_segments(top[K_SEGMENTS]),
            key_id=top[K_KEY_ID],
            base_sha256=top.get(K_BASE_SHA256),
            base_size=top.get(K_BASE_SIZE),
            project=top.get(K_PROJECT),
            format=fmt,
        )
        if manifest.encode() != data:
            raise _bad("not canonically encoded (re-encoding gives different bytes)")
        return manifest


def manifest_key_id(data: bytes) -> bytes:
    """The key id of unverified manifest bytes, found by stepping over every
    other field without building it (``DecodeError`` if there is none): what
    picks the key that verifies the signature before the manifest is parsed."""
    data = bytes(data)
    if len(data) > MAX_MANIFEST_SIZE:
        raise _bad(f"{len(data)} bytes exceeds the {MAX_MANIFEST_SIZE}-byte limit")
    reader = _StrictReader(data)
    b = reader._take(1, "a type byte")[0]
    if 0x80 <= b <= 0x8F:
        n = b & 0x0F
    elif b in (0xDE, 0xDF):
        n = reader._uint(2 if b == 0xDE else 4, "a map length")
    else:
        raise _bad("top level must be a map")
    for _ in range(reader._count(n, "map")):
        key = reader.value(depth=reader.MAX_DEPTH)  # a scalar, or refused
        if key == K_KEY_ID:
            value = reader.value(depth=reader.MAX_DEPTH)
            _check_bin("key_id", value, KEY_ID_SIZE)
            assert isinstance(value, bytes)
            return value
        reader.skip(depth=1)
    raise _bad("missing key 15 (key_id)")


def _entry(value: object) -> SegmentEntry:
    if isinstance(value, SegmentEntry):
        return value
    if isinstance(value, tuple | list) and len(value) == 2:
        return SegmentEntry(value[0], value[1])
    raise _bad(f"a segment entry is [length, check], got {value!r:.40}")


def _tuple_of(name: str, value: object) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise _bad(f"{name} must be an array, got {type(value).__name__}")
    return tuple(value)


def _segments(value: object) -> tuple[SegmentEntry, ...]:
    items = _tuple_of("segments", value)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, list) or len(item) != 2:
            raise _bad(f"segments[{i}] must be a 2-element array [length, check]")
        out.append(SegmentEntry(item[0], item[1]))
    return tuple(out)


class _StrictReader:
    """Reads the msgpack subset a manifest uses. Maps come back as dicts."""

    MAX_DEPTH = 3  # map -> segments array -> [length, check]

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _bad(
                f"input ends inside {what} at offset {self.pos} "
                f"(needs {n} bytes, {len(self.data) - self.pos} left)",
                Reason.TRUNCATED,
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def _uint(self, size: int, what: str) -> int:
        return int.from_bytes(self._take(size, what), "big")

    def _count(self, n: int, what: str) -> int:
        # Every element takes at least one byte: a count beyond the remaining
        # input can only be a truncated (or lying) header.
        if n > len(self.data) - self.pos:
            raise _bad(
                f"{what} of {n} elements at offset {self.pos} exceeds the remaining input",
                Reason.TRUNCATED,
            )
        return n

    def value(self, depth: int) -> object:
        at = self.pos
        b = self._take(1, "a type byte")[0]
        if b <= 0x7F:
            return b
        if b == 0xCC:
            return self._uint(1, "uint8")
        if b == 0xCD:
            return self._uint(2, "uint16")
        if b == 0xCE:
            return self._uint(4, "uint32")
        if b == 0xCF:
            return self._uint(8, "uint64")
        if 0xA0 <= b <= 0xBF:
            return self._str(b & 0x1F)
        if b in (0xD9, 0xDA, 0xDB):
            return self._str(self._uint(1 << (b - 0xD9), "a str length"))
        if b in (0xC4, 0xC5, 0xC6):
            return self._take(self._uint(1 << (b - 0xC4), "a bin length"), "bin data")
        if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
            n = b & 0x0F if b <= 0x9F else self._uint(2 if b == 0xDC else 4, "an array length")
            return self._array(n, depth)
        if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
            n = b & 0x0F if b <= 0x8F else self._uint(2 if b == 0xDE else 4, "a map length")
            return self._map(n, depth)
        raise _bad(f"msgpack type byte 0x{b:02x} at offset {at} is not allowed in a manifest")

    def _str(self, n: int) -> str:
        at = self.pos
        raw = self._take(n, "str data")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(f"str at offset {at} is not valid UTF-8") from None

    def skip(self, depth: int) -> None:
        """Step over one value, checking its lengths, building nothing."""
        at = self.pos
        b = self._take(1, "a type byte")[0]
        if b <= 0x7F:
            return
        sizes = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
        if b in sizes:
            self._take(sizes[b], "an integer")
        elif 0xA0 <= b <= 0xBF:
            self._take(b & 0x1F, "str data")
        elif b in (0xD9, 0xDA, 0xDB):
            self._take(self._uint(1 << (b - 0xD9), "a str length"), "str data")
        elif b in (0xC4, 0xC5, 0xC6):
            self._take(self._uint(1 << (b - 0xC4), "a bin length"), "bin data")
        elif 0x90 <= b <= 0x9F or b in (0xDC, 0xDD) or 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
            is_map = 0x80 <= b <= 0x8F or b in (0xDE, 0xDF)
            n = b & 15 if b <= 159 else self._uint(2 if b in (220, 222) else 4, "a length")
            inner = self._nest(depth)
            for _ in range(self._count(n, "map" if is_map else "array") * (2 if is_map else 1)):
                self.skip(inner)
        else:
            raise _bad(f"msgpack type byte 0x{b:02x} at offset {at} is not allowed in a manifest")

    def _nest(self, depth: int) -> int:
        if depth >= self.MAX_DEPTH:
            raise _bad(f"nesting deeper than {self.MAX_DEPTH} at offset {self.pos}")
        return depth + 1

    def _array(self, n: int, depth: int) -> list[object]:
        inner = self._nest(depth)
        return [self.value(inner) for _ in range(self._count(n, "array"))]

    def _map(self, n: int, depth: int) -> dict[object, object]:
        inner = self._nest(depth)
        out: dict[object, object] = {}
        for _ in range(self._count(n, "map")):
            at = self.pos
            key = self.value(inner)
            if type(key) is not int:
                raise _bad(f"map key at offset {at} must be an int, got {type(key).__name__}")
            if key in out:
                raise _bad(f"duplicate map key {key} at offset {at}")
            out[key] = self.value(inner)
        return out


def build_segment_table(segments: Sequence[bytes]) -> tuple[SegmentEntry, ...]:
    """The manifest segment table for these payload segments."""
    return tuple(SegmentEntry(len(s), segment_check(s)) for s in segments)
