"""Delta encoder for the ``fdelta1`` codec (host side; format in protocol/SPEC.md section 7).

The new image is matched against the old one with bsdiff's suffix-array
matcher (``bsdiff4.core.diff``, C): the result is a list of operations "add
``n`` bytes (old + diff), copy ``m`` literal bytes, seek in the old image".
The operations are cut at segment boundaries and each segment is coded on its
own with an adaptive binary range coder whose context models start fresh in
every segment, so the device decodes any segment given only the old image.

The decoder is ``otaferry.device_fw.delta_apply``; both sides must keep their
models identical (tests/test_delta.py checks every shared firmware pair).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import bsdiff4.core

from .errors import DecodeError, OtaferryError, Reason

DELTA_CODEC = "fdelta1"
DEFAULT_SEGMENT_SIZE = 32768  # best total on the benchmark pairs; see SPEC.md section 7

# Model layout; keep equal to device_fw/delta_apply.py (see protocol/SPEC.md section 7).
N_NUM = 64 + 33 * 8
SLOT_ADD, SLOT_EXTRA, SLOT_SEEK, SLOT_START = 0, 1, 2, 3
O_NUM = 0
O_SIGN = O_NUM + 4 * N_NUM
O_ZERO = O_SIGN + 1
O_DVAL = O_ZERO + 16
O_LIT = O_DVAL + 8 * 256
O_WORD = O_LIT + 16 * 256
N_PROBS = O_WORD + 16
WBITS = 11
WMASK = (1 << WBITS) - 1
WLIM = 1 << 16
RATE = b"\x01\x02\x03\x03\x04"
RMAX = len(RATE) - 1
CHUNK = 4096
OLD_CHUNK = 512
# probabilities (2 B) + adaptation counts (1 B) + word predictor (4 B delta + 1 B state)
MODEL_BYTES = 3 * N_PROBS + 5 * (1 << WBITS)

# The decoder keeps no window: it reads the old image by random access and
# writes the new one sequentially. window_log records the largest buffer the
# decoder needs besides the payload (one CHUNK), for manifest key 12.
WINDOW_LOG = 12


@dataclass(frozen=True, slots=True)
class DeltaResult:
    """Segments of a delta; ``segments[i]`` rebuilds new[i*size:(i+1)*size]."""

    segments: list[bytes]
    segment_size: int
    window_log: int
    codec: str = DELTA_CODEC

    @property
    def payload_size(self) -> int:
        return sum(len(s) for s in self.segments)

    @property
    def max_segment_payload(self) -> int:
        return max((len(s) for s in self.segments), default=0)

    @property
    def device_ram(self) -> int:
        """Peak device RAM to apply any segment (see ram_budget)."""
        return ram_budget(self.max_segment_payload)


# The interpreter's own share while a segment is applied (object headers,
# closures, driver temporaries); the device's delta_apply.INTERPRETER, measured.
INTERPRETER = 6144


def ram_budget(segment_payload_max: int) -> int:
    """Payload held until its hash checks + model tables + one output chunk
    (handed to write as a view) + one old-image read chunk + the interpreter's
    share: SPEC 7.6, equal to ``device_fw.delta_apply.ram_budget``."""
    return segment_payload_max + MODEL_BYTES + CHUNK + OLD_CHUNK + INTERPRETER


class _RangeEncoder:
    """LZMA-style binary range encoder with 16-bit probabilities (P(bit=0))."""

    __slots__ = ("cache", "cache_size", "low", "out", "rng")

    def __init__(self) -> None:
        self.low = 0
        self.rng = 0xFFFFFFFF
        self.cache = 0
        self.cache_size = 1
        self.out = bytearray()

    def _shift_low(self) -> None:
        low = self.low
        if low < 0xFF000000 or low >= 0x100000000:
            carry = low >> 32
            temp = self.cache
            while True:
                self.out.append((temp + carry) & 0xFF)
                temp = 0xFF
                self.cache_size -= 1
                if self.cache_size == 0:
                    break
            self.cache = (low >> 24) & 0xFF
        self.cache_size += 1
        self.low = (low & 0x00FFFFFF) << 8

    def bit(self, probs: array[int], counts: bytearray, i: int, b: int) -> None:
        p = probs[i]
        c = counts[i]
        sh = RATE[c]
        if c < RMAX:
            counts[i] = c + 1
        bound = (self.rng >> 16) * p
        if b:
            self.low += bound
            self.rng -= bound
            p -= p >> sh
            probs[i] = p if p > 31 else 32
        else:
            self.rng = bound
            probs[i] = p + ((65536 - p) >> sh)
        while self.rng < 0x1000000:
            self.rng = (self.rng << 8) & 0xFFFFFFFF
            self._shift_low()

    def direct(self, v: int, nbits: int) -> None:
        for k in range(nbits - 1, -1, -1):
            self.rng >>= 1
            if (v >> k) & 1:
                self.low += self.rng
            while self.rng < 0x1000000:
                self.rng = (self.rng << 8) & 0xFFFFFFFF
                self._shift_low()

    def finish(self) -> bytes:
        # Any value in [low, low + rng) decodes the same; pick the one with the
        # most trailing zero bytes, then drop up to 4 of them (the decoder
        # reads zeros past the end) and the coder's constant leading zero.
        self.low = (self.low + 0xFFFFFF) & ~0xFFFFFF
        for _ in range(5):
            self._shift_low()
        out = self.out
        trim = 0
        while trim < 4 and len(out) > 2 and out[-1] == 0:
            out.pop()
            trim += 1
        return bytes(out[1:])


def wkey(w: int) -> int:
    """Word-predictor slot of an old 32-bit word (mirror of the device's)."""
    return ((w >> 12) ^ ((w >> 24) * 0x1D3)) & WMASK


class _SegmentCoder:
    """Models + range coder for one segment (mirror of the device decoder)."""

    def __init__(self) -> None:
        self.rc = _RangeEncoder()
        self.P = array("H", [32768]) * N_PROBS
        self.C = bytearray(N_PROBS)
        self.wt = array("I", [0]) * (1 << WBITS)
        self.ws = bytearray(1 << WBITS)
        self.p0 = 0
        self.p1 = 0
        self.wlast = 0
        self.prev = 0
        self.pos = 0  # bytes produced so far in this segment

    def bit(self, i: int, b: int) -> None:
        self.rc.bit(self.P, self.C, i, b)

    def tree8(self, base: int, v: int) -> None:
        t = 1
        for j in range(7, -1, -1):
            b = (v >> j) & 1
            self.rc.bit(self.P, self.C, base + t, b)
            t = (t << 1) | b

    def number(self, slot: int, v: int) -> None:
        if v < 0 or v >= 1 << 32:
            raise ValueError("number out of range")
        base = O_NUM + slot * N_NUM
        n = v.bit_length()
        m = 1
        for k in range(5, -1, -1):
            b = (n >> k) & 1
            self.bit(base + m, b)
            m = (m << 1) | b
        if n <= 1:
            return
        k = n - 1
        mb = min(k, 3)
        t = 1
        for j in range(mb):
            b = (v >> (k - 1 - j)) & 1
            self.bit(base + 64 + n * 8 + t, b)
            t = (t << 1) | b
        if k > mb:
            self.rc.direct(v & ((1 << (k - mb)) - 1), k - mb)

    def seek(self, v: int) -> None:
        self.bit(O_SIGN, 1 if v < 0 else 0)
        self.number(SLOT_SEEK, -v if v < 0 else v)

    def _byte(self, d: int, j: int) -> None:
        """One diff byte at alignment ``j`` (0..3)."""
        zi = O_ZERO + ((self.p0 != 0) | ((self.p1 != 0) << 1) | (j << 2))
        if d == 0:
            self.bit(zi, 0)
        else:
            self.bit(zi, 1)
            self.tree8(O_DVAL + ((j | ((self.p0 != 0) << 2)) << 8), d)
        self.p1 = self.p0
        self.p0 = d

    def add(self, old: bytes, new: bytes, opos: int, npos: int, n: int) -> None:
        ws, wt = self.ws, self.wt
        k = 0
        while k < n:
            if ((self.pos + k) & 3) == 0 and k + 4 <= n:
                ow = int.from_bytes(old[opos + k : opos + k + 4], "little")
                nw = int.from_bytes(new[npos + k : npos + k + 4], "little")
                key = wkey(ow)
                s = ws[key]
                if s:
                    dd = wt[key]
                    hit = (ow + dd) & 0xFFFFFFFF == nw
                    self.bit(O_WORD + (s | (self.wlast << 2)), 0 if hit else 1)
                    if hit:
                        self.wlast = 1
                        if s < 3:
                            ws[key] = s + 1
                        self.p0 = self.p1 = 1 if dd else 0
                        k += 4
                        continue
                    self.wlast = 0
                for j in range(4):
                    self._byte((new[npos + k + j] - old[opos + k + j]) & 255, j)
                dd = (nw - ow) & 0xFFFFFFFF
                if s or (dd and (dd < WLIM or dd > 0x100000000 - WLIM)):
                    ws[key] = 1
                    wt[key] = dd
                k += 4
            else:
                self._byte((new[npos + k] - old[opos + k]) & 255, (self.pos + k) & 3)
                k += 1
        self.pos += n
        if n:
            self.prev = new[npos + n - 1]

    def extra(self, new: bytes, npos: int, n: int) -> None:
        prev = self.prev
        for k in range(n):
            v = new[npos + k]
            self.tree8(O_LIT + ((((prev >> 5) << 1) | ((self.pos + k) & 1)) << 8), v)
            prev = v
        self.prev = prev
        self.pos += n


# A piece of the new image: (new_start, length, old_start) for an add,
# old_start = -1 for literal (extra) bytes.
_Piece = tuple[int, int, int]


def _pieces(old: bytes, new: bytes) -> list[_Piece]:
    if not old:
        return [(0, len(new), -1)] if new else []
    ctl, _diff, _extra = bsdiff4.core.diff(old, new)
    out: list[_Piece] = []
    npos = opos = 0
    for i in range(0, len(ctl), 24):
        x = int.from_bytes(ctl[i : i + 8], "little")
        y = int.from_bytes(ctl[i + 8 : i + 16], "little")
        z = int.from_bytes(ctl[i + 16 : i + 24], "little")
        if z >> 63:
            z = -(z & ((1 << 63) - 1))
        if x:
            out.append((npos, x, opos))
        npos += x
        opos += x
        if y:
            out.append((npos, y, -1))
        npos += y
        opos += z
    if npos != len(new):
        raise DecodeError("matcher did not cover the new image", Reason.DECODE_ERROR)
    return out


MIN_SHORT_MATCH = 5  # literal runs are split at exact old-image matches this long


def _lcp(a: bytes, ai: int, b: bytes, bi: int, limit: int) -> int:
    n = 0
    while n < limit and a[ai + n] == b[bi + n]:
        n += 1
    return n


def _longest_match(old: bytes, sa: list[int], new: bytes, i: int, end: int) -> tuple[int, int]:
    """Longest prefix of new[i:end] (capped at 255) found in old: (length, old offset)."""
    cap = min(end - i, 255)
    lo, hi = 0, len(sa)
    while lo < hi:
        mid = (lo + hi) // 2
        p = sa[mid]
        n = _lcp(old, p, new, i, min(cap, len(old) - p))
        if n == cap:
            return n, p
        if p + n == len(old) or old[p + n] < new[i + n]:
            lo = mid + 1
        else:
            hi = mid
    best, bpos = 0, 0
    for j in (lo - 1, lo):
        if 0 <= j < len(sa):
            p = sa[j]
            n = _lcp(old, p, new, i, min(cap, len(old) - p))
            if n > best:
                best, bpos = n, p
    return best, bpos


def _split_literals(old: bytes, new: bytes, pieces: list[_Piece]) -> list[_Piece]:
    """Cut literal runs at short exact matches in the old image: bsdiff leaves
    them as literals, but an add of a few zero diffs plus a seek codes smaller."""
    sa: list[int] = bsdiff4.core.suffix_array(old)
    out: list[_Piece] = []
    for npos, n, opos in pieces:
        if opos >= 0:
            out.append((npos, n, opos))
            continue
        i = lit = npos
        end = npos + n
        while i < end:
            ln, p = _longest_match(old, sa, new, i, end)
            if ln >= MIN_SHORT_MATCH:
                if i > lit:
                    out.append((lit, i - lit, -1))
                out.append((i, ln, p))
                i += ln
                lit = i
            else:
                i += 1
        if end > lit:
            out.append((lit, end - lit, -1))
    return out


def _encode_segment(old: bytes, new: bytes, start: int, pieces: list[_Piece]) -> bytes:
    # Group into ops: (add_old_start, add_len, extra_len).
    ops: list[list[int]] = []
    for _npos, n, opos in pieces:
        if opos >= 0:
            if ops and ops[-1][2] == 0 and ops[-1][0] + ops[-1][1] == opos:
                ops[-1][1] += n
            else:
                ops.append([opos, n, 0])
        else:
            if not ops:
                ops.append([0, 0, 0])
            ops[-1][2] += n
    sc = _SegmentCoder()
    sc.number(SLOT_START, ops[0][0])
    npos = start
    for i, (opos, a, e) in enumerate(ops):
        sc.number(SLOT_ADD, a)
        sc.add(old, new, opos, npos, a)
        npos += a
        if i == len(ops) - 1 and e == 0:
            break
        sc.number(SLOT_EXTRA, e)
        sc.extra(new, npos, e)
        npos += e
        if i == len(ops) - 1:
            break
        sc.seek(ops[i + 1][0] - (opos + a))
    return sc.rc.finish()


def _match(old: bytes, new: bytes) -> list[_Piece]:
    """The add / literal pieces covering ``new`` (independent of the segmentation)."""
    pieces = _pieces(old, new)
    if old:
        pieces = _split_literals(old, new, pieces)
    return pieces


def _encode_segments(
    old: bytes, new: bytes, pieces: list[_Piece], segment_size: int
) -> DeltaResult:
    segments: list[bytes] = []
    pi = 0
    for start in range(0, len(new), segment_size):
        end = min(start + segment_size, len(new))
        seg: list[_Piece] = []
        while pi < len(pieces):
            npos, n, opos = pieces[pi]
            if npos >= end:
                break
            lo = max(npos, start)
            hi = min(npos + n, end)
            seg.append((lo, hi - lo, opos + (lo - npos) if opos >= 0 else -1))
            if npos + n > end:
                break
            pi += 1
        segments.append(_encode_segment(old, new, start, seg))
    return DeltaResult(segments=segments, segment_size=segment_size, window_log=WINDOW_LOG)


def _check_args(new: bytes, segment_size: int) -> None:
    if segment_size <= 0 or segment_size % 4096:
        raise ValueError("segment_size must be a positive multiple of 4096")
    if not new:
        raise ValueError("new image must not be empty")


def encode_delta(old: bytes, new: bytes, segment_size: int = DEFAULT_SEGMENT_SIZE) -> DeltaResult:
    """Encode ``new`` against ``old``; one payload per ``segment_size`` target bytes.

    The segment size is taken as given, whatever RAM its segments need; the
    builder uses :func:`encode_delta_for_device`, which never returns a delta
    the device would refuse.
    """
    _check_args(new, segment_size)
    old, new = bytes(old), bytes(new)
    return _encode_segments(old, new, _match(old, new), segment_size)


# The device's default RAM budget for applying a delta (device_fw/device.py
# DEFAULT_LIMITS["ram_budget"], installer.DEFAULT_RAM_BUDGET).
DEFAULT_DEVICE_RAM = 65536
# Segment sizes the builder tries, largest first. A larger segment codes
# smaller (the adaptive models restart less often) but holds a larger payload
# in device RAM; the builder takes the smallest total among the sizes whose
# largest segment fits the device (SPEC 7.6). A fixed, generic ladder: nothing
# here is chosen per firmware pair.
SEGMENT_LADDER = (131072, 90112, 65536, 45056, 32768, 24576, 16384, 12288, 8192, 4096)


def max_payload_for(device_ram: int) -> int:
    """Largest segment payload a device with ``device_ram`` bytes accepts (SPEC 7.6)."""
    return device_ram - ram_budget(0)


def encode_delta_for_device(
    old: bytes,
    new: bytes,
    device_ram: int = DEFAULT_DEVICE_RAM,
    segment_size: int | None = None,
) -> DeltaResult:
    """A delta whose every segment the device can apply within ``device_ram`` bytes.

    With ``segment_size`` None, each size of :data:`SEGMENT_LADDER` is tried
    (largest first, one match of the images shared by all) and the smallest
    total payload among those that fit is kept; the search stops at the first
    fitting size whose next smaller one is no better. With a ``segment_size``,
    only that size is tried. Raises OtaferryError(RESOURCE_LIMIT) when nothing
    fits, naming the sizes tried.
    """
    sizes = SEGMENT_LADDER if segment_size is None else (segment_size,)
    for s in sizes:
        _check_args(new, s)
    old, new = bytes(old), bytes(new)
    pieces = _match(old, new)
    best: DeltaResult | None = None
    tried: list[str] = []
    for s in sizes:
        if s >= 2 * len(new) and s != sizes[-1] and segment_size is None:
            continue  # one segment already at half this size: identical result
        res = _encode_segments(old, new, pieces, s)
        tried.append(f"{s} B segments need {res.device_ram}")
        if res.device_ram > device_ram:
            continue
        if best is not None and res.payload_size >= best.payload_size:
            break
        best = res
    if best is None:
        limit = max_payload_for(device_ram)
        raise OtaferryError(
            f"no segmentation of this delta fits a device with {device_ram} bytes of RAM "
            f"(a segment payload may be at most {limit} B, SPEC 7.6): "
            + "; ".join(tried)
            + (" (give a smaller --segment-size or none)" if segment_size is not None else ""),
            Reason.RESOURCE_LIMIT,
        )
    return best
