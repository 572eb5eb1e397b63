"""Minimal msgpack for the device: nil, bool, int, str, bin, array, map.

``encode`` emits the shortest form of everything (the bytes
``msgpack.packb(v, use_bin_type=True)`` gives); maps keep insertion order.
``decode`` accepts every form of those types, rejects floats, ext types and
the never-used byte 0xC1 (MALFORMED), duplicate or unhashable map keys
(MALFORMED), nesting deeper than ``max_depth`` containers (MALFORMED), and
checks every declared length against the remaining input before allocating
anything (TRUNCATED).
"""

import struct

from .reasons import MALFORMED, TRUNCATED, DeviceError

MAX_DEPTH = 8


def _bad(message, pos):
    return DeviceError(MALFORMED, message, offset=pos)


# -- encoding ----------------------------------------------------------------


def _int(v, out):
    if 0 <= v < 0x80 or -32 <= v < 0:
        out.extend(struct.pack("b", v) if v < 0 else bytes((v,)))
    elif v >= 0:
        for limit, code, fmt in ((0xFF, 0xCC, ">B"), (0xFFFF, 0xCD, ">H"),
                                 (0xFFFFFFFF, 0xCE, ">I"), (0xFFFFFFFFFFFFFFFF, 0xCF, ">Q")):
            if v <= limit:
                out.extend(bytes((code,)) + struct.pack(fmt, v))
                return
        raise _bad("integer %d too large for msgpack" % v, 0)
    else:
        for bits, code, fmt in ((8, 0xD0, ">b"), (16, 0xD1, ">h"),
                                (32, 0xD2, ">i"), (64, 0xD3, ">q")):
            if v >= -(1 << (bits - 1)):
                out.extend(bytes((code,)) + struct.pack(fmt, v))
                return
        raise _bad("integer %d too small for msgpack" % v, 0)


def _head(n, fix_base, fix_max, codes, out):
    """Length header: a fix form when n <= fix_max, else 8/16/32-bit forms."""
    if n <= fix_max:
        out.extend(bytes((fix_base | n,)))
        return
    for i, limit in enumerate((0xFF, 0xFFFF, 0xFFFFFFFF)):
        code = codes[i]
        if code is not None and n <= limit:
            out.extend(bytes((code,)) + struct.pack((">B", ">H", ">I")[i], n))
            return
    raise _bad("length %d too large for msgpack" % n, 0)


def _enc(v, out, depth):
    if v is None:
        out.extend(b"\xc0")
    elif v is True:
        out.extend(b"\xc3")
    elif v is False:
        out.extend(b"\xc2")
    elif isinstance(v, int):
        _int(v, out)
    elif isinstance(v, str):
        b = v.encode()
        _head(len(b), 0xA0, 31, (0xD9, 0xDA, 0xDB), out)
        out.extend(b)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        _head(len(v), 0xC4, -1, (0xC4, 0xC5, 0xC6), out)
        out.extend(v)
    elif isinstance(v, (list, tuple, dict)):
        if depth >= MAX_DEPTH:
            raise _bad("nesting deeper than %d" % MAX_DEPTH, 0)
        if isinstance(v, dict):
            _head(len(v), 0x80, 15, (None, 0xDE, 0xDF), out)
            for k, x in v.items():
                _enc(k, out, depth + 1)
                _enc(x, out, depth + 1)
        else:
            _head(len(v), 0x90, 15, (None, 0xDC, 0xDD), out)
            for x in v:
                _enc(x, out, depth + 1)
    else:
        raise _bad("cannot encode %s" % type(v).__name__, 0)


def encode(value):
    # One growing bytearray, not a list of small bytes joined at the end: the
    # store encodes the whole device state while the delta applier's tables
    # are held, and a list of ~150 pieces cost 11 KB there.
    out = bytearray()
    _enc(value, out, 0)
    return bytes(out)


# -- decoding ----------------------------------------------------------------

# code -> (struct format, size) for the fixed-width scalars
_SCALARS = {
    0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8),
    0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8),
}
# code -> (kind, length-field format, size)
_SIZED = {
    0xD9: ("str", ">B", 1), 0xDA: ("str", ">H", 2), 0xDB: ("str", ">I", 4),
    0xC4: ("bin", ">B", 1), 0xC5: ("bin", ">H", 2), 0xC6: ("bin", ">I", 4),
    0xDC: ("array", ">H", 2), 0xDD: ("array", ">I", 4),
    0xDE: ("map", ">H", 2), 0xDF: ("map", ">I", 4),
}


# Canonical (shortest-form) checks: the smallest value each wide form may hold.
# Non-negative integers are unsigned forms, negative ones signed forms, as
# msgpack's own packers write them.
_MIN_UNSIGNED = {0xCC: 0x80, 0xCD: 0x100, 0xCE: 0x10000, 0xCF: 0x100000000}
_MAX_SIGNED = {0xD0: -33, 0xD1: -129, 0xD2: -32769, 0xD3: -(1 << 31) - 1}
_MIN_LENGTH = {
    0xD9: 32, 0xDA: 0x100, 0xDB: 0x10000,  # str8/16/32
    0xC4: 0, 0xC5: 0x100, 0xC6: 0x10000,  # bin8/16/32
    0xDC: 16, 0xDD: 0x10000, 0xDE: 16, 0xDF: 0x10000,  # array16/32, map16/32
}


class _Reader:
    def __init__(self, data, max_depth, canonical=False):
        self.data = data
        self.max_depth = max_depth
        self.canonical = canonical

    def take(self, pos, n):
        if n > len(self.data) - pos:
            raise DeviceError(
                TRUNCATED, "msgpack needs %d bytes at offset %d, %d left"
                % (n, pos, len(self.data) - pos), offset=pos)
        return pos + n

    def head(self, pos):
        """(kind, x, end) of the value at ``pos`` without building it.

        kind "int" / "nil" / "bool": x is the value, end follows it; "str" /
        "bin": x is the byte length, end is where the bytes start (checked to
        be there); "array" / "map": x is the element count (checked against the
        remaining input), end is where the first element starts.
        """
        end = self.take(pos, 1)
        c = self.data[pos]
        if c <= 0x7F:
            return "int", c, end
        if c >= 0xE0:
            return "int", c - 0x100, end
        if c == 0xC0:
            return "nil", None, end
        if c == 0xC2:
            return "bool", False, end
        if c == 0xC3:
            return "bool", True, end
        if c in _SCALARS:
            fmt, size = _SCALARS[c]
            stop = self.take(end, size)
            v = struct.unpack_from(fmt, self.data, end)[0]
            if self.canonical and (
                v < _MIN_UNSIGNED[c] if c in _MIN_UNSIGNED else v > _MAX_SIGNED[c]
            ):
                raise _bad("integer %d at offset %d not in its shortest form" % (v, pos), pos)
            return "int", v, stop
        if 0xA0 <= c <= 0xBF:
            kind, n = "str", c & 0x1F
        elif 0x90 <= c <= 0x9F:
            kind, n = "array", c & 0x0F
        elif 0x80 <= c <= 0x8F:
            kind, n = "map", c & 0x0F
        elif c in _SIZED:
            kind, fmt, size = _SIZED[c]
            start = end
            end = self.take(end, size)
            n = struct.unpack_from(fmt, self.data, start)[0]
            if self.canonical and n < _MIN_LENGTH[c]:
                raise _bad("length %d at offset %d not in its shortest form" % (n, pos), pos)
        else:
            raise _bad("unsupported msgpack type byte 0x%02x" % c, pos)
        if kind == "str" or kind == "bin":
            self.take(end, n)
        else:
            # every element takes at least one byte: reject impossible counts early
            self.take(end, n * (2 if kind == "map" else 1))
        return kind, n, end

    def value(self, pos, depth):
        kind, n, end = self.head(pos)
        if kind == "str" or kind == "bin":
            stop = end + n
            raw = bytes(self.data[end:stop])
            if kind == "bin":
                return raw, stop
            try:
                return raw.decode(), stop
            except UnicodeError:
                raise _bad("invalid UTF-8 in str at offset %d" % pos, pos) from None
        if kind != "array" and kind != "map":
            return n, end
        if depth >= self.max_depth:
            raise _bad("nesting deeper than %d at offset %d" % (self.max_depth, pos), pos)
        if kind == "array":
            items = []
            for _ in range(n):
                v, end = self.value(end, depth + 1)
                items.append(v)
            return items, end
        result = {}
        for _ in range(n):
            kpos = end
            k, end = self.value(end, depth + 1)
            if isinstance(k, (list, dict)):
                raise _bad("map key at offset %d is not a scalar" % kpos, kpos)
            if k in result:
                raise _bad("duplicate map key %r at offset %d" % (k, kpos), kpos)
            v, end = self.value(end, depth + 1)
            result[k] = v
        return result, end

    def skip(self, pos, depth):
        kind, n, end = self.head(pos)
        if kind == "str" or kind == "bin":
            return end + n
        if kind != "array" and kind != "map":
            return end
        if depth >= self.max_depth:
            raise _bad("nesting deeper than %d at offset %d" % (self.max_depth, pos), pos)
        for _ in range(n * 2 if kind == "map" else n):
            end = self.skip(end, depth + 1)
        return end


def head(data, pos=0, canonical=False):
    """(kind, x, end) of the value at ``pos``, building nothing (see _Reader.head)."""
    return _Reader(data, 0, canonical).head(pos)


def skip(data, pos=0, max_depth=MAX_DEPTH):
    """End offset of the value at ``pos``: every length checked, nothing built
    (what a reader of untrusted input uses to step over what it does not need)."""
    return _Reader(data, max_depth).skip(pos, 0)


def decode(data, pos=0, max_depth=MAX_DEPTH, canonical=False):
    """Decode one value at ``pos``; returns (value, end offset).

    ``canonical``: refuse (MALFORMED) any integer or length header wider than
    needed, so that ``encode(value) == data`` holds for maps whose keys come in
    the encoder's order, without re-encoding (which costs RAM on a device).
    """
    return _Reader(data, max_depth, canonical).value(pos, 0)


def decode_all(data, max_depth=MAX_DEPTH, canonical=False):
    """Decode exactly one value filling ``data``; trailing bytes are MALFORMED."""
    value, end = decode(data, 0, max_depth, canonical)
    if end != len(data):
        raise _bad("%d trailing bytes after msgpack value" % (len(data) - end), end)
    return value
