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
        out.append(struct.pack("b", v) if v < 0 else bytes((v,)))
    elif v >= 0:
        for limit, code, fmt in ((0xFF, 0xCC, ">B"), (0xFFFF, 0xCD, ">H"),
                                 (0xFFFFFFFF, 0xCE, ">I"), (0xFFFFFFFFFFFFFFFF, 0xCF, ">Q")):
            if v <= limit:
                out.append(bytes((code,)) + struct.pack(fmt, v))
                return
        raise _bad("integer %d too large for msgpack" % v, 0)
    else:
        for bits, code, fmt in ((8, 0xD0, ">b"), (16, 0xD1, ">h"),
                                (32, 0xD2, ">i"), (64, 0xD3, ">q")):
            if v >= -(1 << (bits - 1)):
                out.append(bytes((code,)) + struct.pack(fmt, v))
                return
        raise _bad("integer %d too small for msgpack" % v, 0)


def _head(n, fix_base, fix_max, codes, out):
    """Length header: a fix form when n <= fix_max, else 8/16/32-bit forms."""
    if n <= fix_max:
        out.append(bytes((fix_base | n,)))
        return
    for i, limit in enumerate((0xFF, 0xFFFF, 0xFFFFFFFF)):
        code = codes[i]
        if code is not None and n <= limit:
            out.append(bytes((code,)) + struct.pack((">B", ">H", ">I")[i], n))
            return
    raise _bad("length %d too large for msgpack" % n, 0)


def _enc(v, out, depth):
    if v is None:
        out.append(b"\xc0")
    elif v is True:
        out.append(b"\xc3")
    elif v is False:
        out.append(b"\xc2")
    elif isinstance(v, int):
        _int(v, out)
    elif isinstance(v, str):
        b = v.encode()
        _head(len(b), 0xA0, 31, (0xD9, 0xDA, 0xDB), out)
        out.append(b)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        _head(len(b), 0xC4, -1, (0xC4, 0xC5, 0xC6), out)
        out.append(b)
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
    out = []
    _enc(value, out, 0)
    return b"".join(out)


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


class _Reader:
    def __init__(self, data, max_depth):
        self.data = data
        self.max_depth = max_depth

    def take(self, pos, n):
        if n > len(self.data) - pos:
            raise DeviceError(
                TRUNCATED, "msgpack needs %d bytes at offset %d, %d left"
                % (n, pos, len(self.data) - pos), offset=pos)
        return pos + n

    def value(self, pos, depth):
        end = self.take(pos, 1)
        c = self.data[pos]
        if c <= 0x7F:
            return c, end
        if c >= 0xE0:
            return c - 0x100, end
        if c == 0xC0:
            return None, end
        if c == 0xC2:
            return False, end
        if c == 0xC3:
            return True, end
        if c in _SCALARS:
            fmt, size = _SCALARS[c]
            stop = self.take(end, size)
            return struct.unpack_from(fmt, self.data, end)[0], stop
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
        else:
            raise _bad("unsupported msgpack type byte 0x%02x" % c, pos)
        if kind == "str" or kind == "bin":
            stop = self.take(end, n)
            raw = bytes(self.data[end:stop])
            if kind == "bin":
                return raw, stop
            try:
                return raw.decode(), stop
            except UnicodeError:
                raise _bad("invalid UTF-8 in str at offset %d" % pos, pos) from None
        if depth >= self.max_depth:
            raise _bad("nesting deeper than %d at offset %d" % (self.max_depth, pos), pos)
        # every element takes at least one byte: reject impossible counts early
        self.take(end, n * (2 if kind == "map" else 1))
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


def decode(data, pos=0, max_depth=MAX_DEPTH):
    """Decode one value at ``pos``; returns (value, end offset)."""
    return _Reader(data, max_depth).value(pos, 0)


def decode_all(data, max_depth=MAX_DEPTH):
    """Decode exactly one value filling ``data``; trailing bytes are MALFORMED."""
    value, end = decode(data, 0, max_depth)
    if end != len(data):
        raise _bad("%d trailing bytes after msgpack value" % (len(data) - end), end)
    return value
