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
from dataclasses import dataclass, field

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
N_PROBS = O_WORD + 16  # fdelta1
# fdelta2 adds one context group: the branch predictor's hit flag (SPEC 7.7).
O_BR = N_PROBS
N_PROBS2 = O_BR + 16
WBITS = 11
WMASK = (1 << WBITS) - 1
WLIM = 1 << 16
RATE = b"\x01\x02\x03\x03\x04"
RMAX = len(RATE) - 1
CHUNK = 4096
OLD_CHUNK = 512
# probabilities (2 B) + adaptation counts (1 B) + word predictor (4 B delta + 1 B state)
MODEL_BYTES = 3 * N_PROBS + 5 * (1 << WBITS)
# fdelta2: + the branch predictor: exact-target table (4 B delta, 1 B tag,
# 1 B state) and target-page table (4 B delta, 1 B state)
EBITS = 9
PBITS = 7
MODEL_BYTES2 = 3 * N_PROBS2 + 5 * (1 << WBITS) + 6 * (1 << EBITS) + 5 * (1 << PBITS)
DELTA_CODEC2 = "fdelta2"
# Instruction sets of the fdelta2 branch predictor (SPEC 7.7), coded per segment.
ARCH_NONE, ARCH_XTENSA, ARCH_THUMB2, ARCH_AARCH64 = 0, 1, 2, 3
ARCHS = (ARCH_XTENSA, ARCH_THUMB2, ARCH_AARCH64)
BR_LEN = (0, 3, 4, 4)  # instruction bytes the predictor reads and writes

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
        return ram_budget(self.max_segment_payload, self.codec)


# The interpreter's own share while a segment is applied (object headers,
# closures, driver temporaries); the device's delta_apply.INTERPRETER, measured.
INTERPRETER = 6656
# fdelta2's own share: the learn closure and its cells on top (measured 6,461 B
# with tracemalloc on CPython 3.11, tests/test_delta_install.py), rounded up.
INTERPRETER2 = 7168


def ram_budget(segment_payload_max: int, codec: str = DELTA_CODEC) -> int:
    """Payload held until its hash checks + model tables + one output chunk
    (handed to write as a view) + one old-image read chunk + the interpreter's
    share: SPEC 7.6, equal to ``device_fw.delta_apply.ram_budget``."""
    if codec == "fdelta3":
        from .delta3 import ram_budget3

        return ram_budget3(segment_payload_max)
    if codec == DELTA_CODEC2:
        return segment_payload_max + MODEL_BYTES2 + CHUNK + OLD_CHUNK + INTERPRETER2
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


# ---- fdelta2 branch predictor (SPEC 7.7); mirror of device_fw/delta_apply.py ----
#
# A PC-relative branch, call or literal load in code that moved changes its
# offset field whenever its target moved by a different amount than itself,
# and those changed offsets are most of the non-zero diff bytes of a large
# update. The predictor learns, per target, by how much it moved (new target -
# old target, in image offsets), from every instruction in an add run, and
# predicts the new instruction from the old one and the new position: one
# flag bit instead of two or three diff bytes. ``ins`` is the instruction as a
# little-endian integer of BR_LEN[arch] bytes; -1 means "no instruction here".


def _sext(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


def br_kind(arch: int, ins: int, pc: int) -> int:
    """Which predicted instruction ``ins`` at new offset ``pc`` is (0/1), or -1."""
    if arch == ARCH_XTENSA:
        op = ins & 15
        return 0 if op == 5 else 1 if op == 1 else -1  # CALL0/CALLn, L32R
    if arch == ARCH_THUMB2:
        if pc & 1 or (ins & 0xF800) != 0xF000 or (ins >> 16) & 0x9000 != 0x9000:
            return -1
        return 0  # BL, B.W (T4)
    if pc & 3:
        return -1
    op = ins >> 26
    return 0 if op == 0x25 else 1 if op == 0x05 else -1  # AArch64 BL, B


def br_fixed(arch: int, kind: int, ins: int) -> int:
    """The bits a prediction keeps from the old instruction (all but the offset)."""
    if arch == ARCH_XTENSA:
        return ins & (0x3F if kind == 0 else 0xFF)
    if arch == ARCH_THUMB2:
        return (ins >> 16) & 0xD000
    return ins >> 26


def br_target(arch: int, kind: int, ins: int, pc: int) -> int:
    """Image offset the instruction at offset ``pc`` refers to."""
    if arch == ARCH_XTENSA:
        if kind == 0:
            return (pc & ~3) + (_sext(ins >> 6, 18) << 2) + 4
        return ((pc + 3) & ~3) + (((ins >> 8) - 65536) << 2)
    if arch == ARCH_THUMB2:
        hw1 = ins & 0xFFFF
        hw2 = ins >> 16
        sb = (hw1 >> 10) & 1
        i1 = 1 ^ ((hw2 >> 13) & 1) ^ sb
        i2 = 1 ^ ((hw2 >> 11) & 1) ^ sb
        off = (sb << 24) | (i1 << 23) | (i2 << 22) | ((hw1 & 0x3FF) << 12) | ((hw2 & 0x7FF) << 1)
        return pc + 4 + _sext(off, 25)
    return pc + (_sext(ins & 0x3FFFFFF, 26) << 2)


def br_insert(arch: int, kind: int, ins: int, target: int, pc: int) -> int:
    """``ins`` re-pointed at ``target`` from offset ``pc``; -1 if not encodable."""
    if arch == ARCH_XTENSA:
        if kind == 0:
            d = target - (pc & ~3) - 4
            if d & 3 or not -(1 << 19) <= d < (1 << 19):
                return -1
            return (ins & 0x3F) | (((d >> 2) & 0x3FFFF) << 6)
        d = target - ((pc + 3) & ~3)
        if d & 3 or not -(1 << 18) <= d < 0:
            return -1
        return (ins & 0xFF) | (((d >> 2) + 65536) << 8)
    if arch == ARCH_THUMB2:
        d = target - pc - 4
        if d & 1 or not -(1 << 24) <= d < (1 << 24):
            return -1
        sb = (d >> 24) & 1
        j1 = (1 ^ ((d >> 23) & 1)) ^ sb
        j2 = (1 ^ ((d >> 22) & 1)) ^ sb
        hw1 = 0xF000 | (sb << 10) | ((d >> 12) & 0x3FF)
        hw2 = ((ins >> 16) & 0xD000) | (j1 << 13) | (j2 << 11) | ((d >> 1) & 0x7FF)
        return hw1 | (hw2 << 16)
    d = target - pc
    if d & 3 or not -(1 << 27) <= d < (1 << 27):
        return -1
    return (ins & 0xFC000000) | ((d >> 2) & 0x3FFFFFF)


class _SegmentCoder:
    """Models + range coder for one segment (mirror of the device decoder)."""

    def __init__(self, codec: str = DELTA_CODEC, arch: int = ARCH_NONE) -> None:
        self.rc = _RangeEncoder()
        n = N_PROBS2 if codec == DELTA_CODEC2 else N_PROBS
        self.P = array("H", [32768]) * n
        self.C = bytearray(n)
        self.wt = array("I", [0]) * (1 << WBITS)
        self.ws = bytearray(1 << WBITS)
        self.arch = arch
        if codec == DELTA_CODEC2:
            self.rc.direct(arch, 2)
        self.et = array("i", [0]) * (1 << EBITS)
        self.etag = bytearray(1 << EBITS)
        self.es = bytearray(1 << EBITS)
        self.pt = array("i", [0]) * (1 << PBITS)
        self.ps = bytearray(1 << PBITS)
        self.oh = 0  # last 4 old bytes of the add run, newest in the top byte
        self.nh = 0  # last 4 new bytes
        self.ra = 0  # bytes of the current add run so far
        self.opc = 0  # old offset of the byte being learnt
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

    def _learn(self, o: int, v: int, x: int) -> None:
        """One add byte (old ``o``, new ``v``) at new offset ``x``: shift the
        windows and learn from an instruction ending here (SPEC 7.7)."""
        self.oh = (self.oh >> 8) | (o << 24)
        self.nh = (self.nh >> 8) | (v << 24)
        self.ra += 1
        arch = self.arch
        k = BR_LEN[arch]
        if self.ra < k:
            return
        sh = 32 - 8 * k
        oi = self.oh >> sh
        ni = self.nh >> sh
        pc = x - k + 1
        kind = br_kind(arch, oi, pc)
        if kind < 0 or br_kind(arch, ni, pc) != kind:
            return
        if br_fixed(arch, kind, oi) != br_fixed(arch, kind, ni):
            return
        pco = self.opc - k + 1
        to = br_target(arch, kind, oi, pco)
        dd = br_target(arch, kind, ni, pc) - to
        if not -(1 << 31) <= dd < (1 << 31):
            return
        ei = (to >> 2) & ((1 << EBITS) - 1)
        tag = (to >> (2 + EBITS)) & 255
        if self.es[ei] and self.etag[ei] == tag and self.et[ei] == dd:
            if self.es[ei] < 3:
                self.es[ei] += 1
        else:
            self.et[ei] = dd
            self.etag[ei] = tag
            self.es[ei] = 1
        pi = (to >> 12) & ((1 << PBITS) - 1)
        if self.ps[pi] and self.pt[pi] == dd:
            if self.ps[pi] < 3:
                self.ps[pi] += 1
        else:
            self.pt[pi] = dd
            self.ps[pi] = 1

    def _predict(self, oi: int, po: int, pc: int) -> tuple[int, int]:
        """(flag context, predicted instruction) for old ``oi`` at old offset
        ``po`` rebuilt at new offset ``pc``; (-1, -1) when nothing is predicted."""
        arch = self.arch
        kind = br_kind(arch, oi, pc)
        if kind < 0:
            return -1, -1
        to = br_target(arch, kind, oi, po)
        ei = (to >> 2) & ((1 << EBITS) - 1)
        if self.es[ei] and self.etag[ei] == (to >> (2 + EBITS)) & 255:
            ctx = 4 | self.es[ei]
            dd = self.et[ei]
        else:
            pi = (to >> 12) & ((1 << PBITS) - 1)
            if not self.ps[pi]:
                return -1, -1
            ctx = self.ps[pi]
            dd = self.pt[pi]
        pred = br_insert(arch, kind, oi, to + dd, pc)
        if pred < 0:
            return -1, -1
        return ctx | (kind << 3), pred

    def add(self, old: bytes, new: bytes, opos: int, npos: int, n: int) -> None:
        ws, wt = self.ws, self.wt
        arch = self.arch
        bl = BR_LEN[arch]
        self.ra = 0
        k = 0
        while k < n:
            if arch and k + bl <= n:
                oi = int.from_bytes(old[opos + k : opos + k + bl], "little")
                pc = self.pos + k
                ctx, pred = self._predict(oi, opos + k, pc)
                if ctx >= 0:
                    ni = int.from_bytes(new[npos + k : npos + k + bl], "little")
                    hit = pred == ni
                    self.bit(O_BR + ctx, 0 if hit else 1)
                    if hit:
                        self.p0 = self.p1 = 1 if ni != oi else 0
                        for j in range(bl):
                            self.opc = opos + k + j
                            self._learn(old[opos + k + j], new[npos + k + j], pc + j)
                        k += bl
                        continue
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
                        if arch:
                            for j in range(4):
                                self.opc = opos + k + j
                                self._learn(old[opos + k + j], new[npos + k + j],
                                            self.pos + k + j)  # fmt: skip
                        k += 4
                        continue
                    self.wlast = 0
                for j in range(4):
                    self._byte((new[npos + k + j] - old[opos + k + j]) & 255, j)
                    if arch:
                        self.opc = opos + k + j
                        self._learn(old[opos + k + j], new[npos + k + j],
                                    self.pos + k + j)  # fmt: skip
                dd = (nw - ow) & 0xFFFFFFFF
                if s or (dd and (dd < WLIM or dd > 0x100000000 - WLIM)):
                    ws[key] = 1
                    wt[key] = dd
                k += 4
            else:
                self._byte((new[npos + k] - old[opos + k]) & 255, (self.pos + k) & 3)
                if arch:
                    self.opc = opos + k
                    self._learn(old[opos + k], new[npos + k], self.pos + k)
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


def _split_literals(
    old: bytes, new: bytes, pieces: list[_Piece], sa: list[int], min_match: int = MIN_SHORT_MATCH
) -> list[_Piece]:
    """Cut literal runs at short exact matches in the old image: bsdiff leaves
    them as literals, but an add of a few zero diffs plus a seek codes smaller."""
    out: list[_Piece] = []
    for npos, n, opos in pieces:
        if opos >= 0:
            out.append((npos, n, opos))
            continue
        i = lit = npos
        end = npos + n
        while i < end:
            ln, p = _longest_match(old, sa, new, i, end)
            if ln >= min_match:
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


def _encode_segment(
    old: bytes,
    new: bytes,
    start: int,
    pieces: list[_Piece],
    codec: str = DELTA_CODEC,
    arch: int = ARCH_NONE,
) -> bytes:
    return _code_ops(old, new, start, pieces, _SegmentCoder(codec, arch))


def _code_ops(old: bytes, new: bytes, start: int, pieces: list[_Piece], sc: _SegmentCoder) -> bytes:
    """The stream of SPEC 7.3 for one segment's pieces, coded by ``sc``."""
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
    return _match_all(old, new).pieces


@dataclass(frozen=True, slots=True)
class _Matches:
    """One match of the images, shared by every codec and segment size tried."""

    pieces: list[_Piece]  # fdelta1 / fdelta2: literal runs cut at old matches
    pieces3: list[_Piece]  # fdelta3: cut at long old matches only (its runs match themselves)
    sa: list[int] | None  # the old image's suffix array
    old_matches: dict[int, tuple[int, int]] = field(default_factory=dict)  # fdelta3's, cached


def _match_all(old: bytes, new: bytes) -> _Matches:
    raw = _pieces(old, new)
    if not old:
        return _Matches(raw, raw, None)
    sa: list[int] = bsdiff4.core.suffix_array(old)
    return _Matches(
        _split_literals(old, new, raw, sa),
        _split_literals(old, new, raw, sa, MIN_SPLIT3) if MIN_SPLIT3 else raw,
        sa,
    )


# fdelta3 codes shorter old matches inside its literal runs (no seek there and back)
MIN_SPLIT3 = 32


def _cut(pieces: list[_Piece], length: int, segment_size: int) -> list[list[_Piece]]:
    """The pieces of each segment (an add or literal run cut at segment ends)."""
    out: list[list[_Piece]] = []
    pi = 0
    for start in range(0, length, segment_size):
        end = min(start + segment_size, length)
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
        out.append(seg)
    return out


def _encode_variants(
    old: bytes,
    new: bytes,
    m: _Matches,
    segment_size: int,
    archs: tuple[int, ...] = (),
    device_ram: int | None = None,
    lz: bool = True,
    too_big: list[str] | None = None,
) -> list[DeltaResult]:
    """The fdelta1 coding and, with ``archs`` or ``lz``, the fdelta2 and fdelta3
    codings: each segment with the branch predictor of every arch in ``archs``
    and without, the smallest kept (fdelta2), then that one with the matches of
    fdelta3 if they code smaller. A variant is left out when it is not smaller
    than fdelta1, or (with ``device_ram``) as soon as one of its segments
    cannot fit (its name then goes to ``too_big``)."""
    from .delta3 import DELTA_CODEC3, encode_segment3

    cuts = _cut(m.pieces, len(new), segment_size)
    cuts3 = cuts if m.pieces3 is m.pieces else _cut(m.pieces3, len(new), segment_size)
    plain = [_encode_segment(old, new, i * segment_size, seg) for i, seg in enumerate(cuts)]
    out = [DeltaResult(segments=plain, segment_size=segment_size, window_log=WINDOW_LOG)]
    if not archs and not lz:
        return out
    big = 1 << 62
    limit2 = big if device_ram is None else device_ram - ram_budget(0, DELTA_CODEC2)
    limit3 = big if device_ram is None else device_ram - ram_budget(0, DELTA_CODEC3)
    if not old or not lz:
        limit3 = -1  # no fdelta3
    if not archs:
        limit2 = -1  # no fdelta2
    best2: list[bytes] = [b""] * len(cuts)
    best3: list[bytes] = [b""] * len(cuts)
    for i in sorted(range(len(cuts)), key=lambda j: -len(plain[j])):  # largest first
        start = i * segment_size
        end = min(start + segment_size, len(new))
        choice, carch = b"", ARCH_NONE
        for arch in archs:
            cand = _encode_segment(old, new, start, cuts[i], DELTA_CODEC2, arch)
            if not choice or len(cand) < len(choice):
                choice, carch = cand, arch
        if not archs:  # fdelta3 alone: weighed against fdelta1
            choice = plain[i]
        elif len(choice) >= len(plain[i]):  # no gain: no predictor
            choice, carch = _encode_segment(old, new, start, cuts[i], DELTA_CODEC2), ARCH_NONE
        if limit2 >= 0 and len(choice) > limit2:
            limit2 = -1
            if too_big is not None:
                too_big.append(DELTA_CODEC2)
        best2[i] = choice
        if limit3 >= 0:
            c3 = encode_segment3(old, new, start, end, cuts3[i], carch, 1, m.sa, m.old_matches)
            if len(c3) > len(choice):  # the matches did not pay: fdelta2's coding
                c3 = encode_segment3(old, new, start, end, cuts[i], carch, 0)
            if len(c3) > limit3:
                limit3 = -1
                if too_big is not None:
                    too_big.append(DELTA_CODEC3)
            best3[i] = c3
        if limit2 < 0 and limit3 < 0:
            return out
    total1 = sum(map(len, plain))
    for codec, segs, limit in ((DELTA_CODEC2, best2, limit2), (DELTA_CODEC3, best3, limit3)):
        if limit >= 0 and sum(map(len, segs)) < total1:
            out.append(
                DeltaResult(
                    segments=segs, segment_size=segment_size, window_log=WINDOW_LOG, codec=codec
                )
            )
    return out


def _encode_segments(
    old: bytes,
    new: bytes,
    m: _Matches,
    segment_size: int,
    archs: tuple[int, ...] = (),
    lz: bool = False,
) -> DeltaResult:
    """The smallest of :func:`_encode_variants`."""
    return min(_encode_variants(old, new, m, segment_size, archs, lz=lz), key=_size)


def _size(r: DeltaResult) -> int:
    return r.payload_size


# The builder tries each instruction set's branch predictor on the
# ARCH_SAMPLES segments of ARCH_TRIAL_SEGMENT bytes that code largest in
# fdelta1 (where the change is, and so where a predictor can gain).
ARCH_TRIAL_SEGMENT = 16384
ARCH_SAMPLES = 4


def pick_arch(old: bytes, new: bytes, pieces: list[_Piece]) -> tuple[int, ...]:
    """The instruction set whose branch predictor (fdelta2) codes these images
    smallest, tried on the images themselves (nothing is assumed about the chip,
    no header is read); () when none beats fdelta1 on the sample."""
    if not old:
        return ()
    cuts = _cut(pieces, len(new), ARCH_TRIAL_SEGMENT)
    plain = [
        (len(_encode_segment(old, new, i * ARCH_TRIAL_SEGMENT, seg)), i)
        for i, seg in enumerate(cuts)
    ]
    sample = sorted(plain, reverse=True)[:ARCH_SAMPLES]
    best: tuple[int, ...] = ()
    best_size = sum(n for n, _ in sample)
    for arch in ARCHS:
        size = sum(
            len(_encode_segment(old, new, i * ARCH_TRIAL_SEGMENT, cuts[i], DELTA_CODEC2, arch))
            for _, i in sample
        )
        if size < best_size:
            best, best_size = (arch,), size
    return best


def _check_args(new: bytes, segment_size: int) -> None:
    if segment_size <= 0 or segment_size % 4096:
        raise ValueError("segment_size must be a positive multiple of 4096")
    if not new:
        raise ValueError("new image must not be empty")


def encode_delta(
    old: bytes,
    new: bytes,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    archs: tuple[int, ...] = (),
    lz: bool = False,
) -> DeltaResult:
    """Encode ``new`` against ``old``; one payload per ``segment_size`` target bytes.

    fdelta1, or with ``archs`` (ARCH_XTENSA, ...) fdelta2 when that is smaller,
    or with ``lz`` fdelta3 (matches inside the segment) when that is smaller.
    The segment size is taken as given, whatever RAM its segments need; the
    builder uses :func:`encode_delta_for_device`, which never returns a delta
    the device would refuse.
    """
    _check_args(new, segment_size)
    old, new = bytes(old), bytes(new)
    return _encode_segments(old, new, _match_all(old, new), segment_size, archs, lz)


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
    archs: tuple[int, ...] | None = None,
    lz: bool = True,
) -> DeltaResult:
    """A delta whose every segment the device can apply within ``device_ram`` bytes.

    With ``segment_size`` None, each size of :data:`SEGMENT_LADDER` is tried
    (largest first, one match of the images shared by all) and the smallest
    total payload among those that fit is kept; the search stops at the first
    size that is no better than a larger one while every codec fits it (a
    codec with a larger fixed RAM share, fdelta3, may fit only smaller ones).
    With a ``segment_size``, only that size is tried. Raises
    OtaferryError(RESOURCE_LIMIT) when nothing fits, naming the sizes tried.
    ``archs`` None: the branch predictor is chosen by :func:`pick_arch`; ()
    keeps to fdelta1 (and fdelta3 without a predictor). ``lz`` False: no
    fdelta3 (matches inside a segment).
    """
    sizes = SEGMENT_LADDER if segment_size is None else (segment_size,)
    for s in sizes:
        _check_args(new, s)
    old, new = bytes(old), bytes(new)
    m = _match_all(old, new)
    if archs is None:
        archs = pick_arch(old, new, m.pieces)
    best: DeltaResult | None = None
    tried: list[str] = []
    for s in sizes:
        if s >= 2 * len(new) and s != sizes[-1] and segment_size is None:
            continue  # one segment already at half this size: identical result
        too_big: list[str] = []
        variants = _encode_variants(old, new, m, s, archs, device_ram, lz, too_big)
        tried.append(f"{s} B segments need {min(r.device_ram for r in variants)}")
        fitting = [r for r in variants if r.device_ram <= device_ram]
        if not fitting:
            continue
        res = min(fitting, key=_size)
        if best is not None and res.payload_size >= best.payload_size:
            if not too_big:
                break  # every codec fit, and no better: smaller segments only lose
            continue  # a codec with a larger fixed share may fit smaller segments
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
