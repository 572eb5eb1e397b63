"""Encoder side of the ``fdelta3`` codec (format: protocol/SPEC.md section 7.8).

``fdelta3`` is ``fdelta2`` whose literal runs may also copy bytes this segment
has already written (LZ77 inside the segment): a large change brings new code
whose instruction sequences, strings and tables repeat inside the new image,
where the old image has no match. The decoder reads those bytes back from what
it wrote itself (its output chunk, or the passive slot it is filling, within
this segment only), so segments stay independent and the old image is still
read only within the running image.

The decoder is ``otaferry.device_fw.delta_apply`` (one driver for the three
codecs); both sides keep identical models (tests/test_delta.py, tests/vectors/delta/fdelta3.json).
"""

from __future__ import annotations

import bisect
from array import array

from . import delta as D

DELTA_CODEC3 = "fdelta3"
# Three more number slots after fdelta2's table, then the match flags; each
# flag's context is the last token of the segment's literal runs (0 literal,
# 1 match in this segment, 2 match in the old image).
SLOT_DIST, SLOT_MLEN, SLOT_ODELTA = 4, 5, 6
O_NUM3 = D.N_PROBS2
O_MFLAG = O_NUM3 + 3 * D.N_NUM  # match or literal?
O_MSRC = O_MFLAG + 4  # match in this segment (0) or in the old image (1)?
O_REP = O_MSRC + 4  # 4 + 4: new distance / new old delta (1) or the last one (0)?
O_OSIGN = O_REP + 8  # sign of a new old delta
N_PROBS3 = O_OSIGN + 1
# Bytes the decoder reads back per call when a match source was already written.
NEW_CHUNK = 256
MODEL_BYTES3 = D.MODEL_BYTES2 + 3 * (N_PROBS3 - D.N_PROBS2)
# The interpreter's share (closures, cells): measured 7,049 B with tracemalloc on
# CPython 3.11 (tests/test_delta_install.py), counted as 7,680.
INTERPRETER3 = 7680

# Encoder choices (the format allows any match of length >= 1).
MIN_MATCH = 3  # shortest match at a new distance
MIN_REP = 2  # shortest match at the last distance
MIN_OLD = 4  # shortest match in the old image
LIT_BITS = 7  # what a literal byte costs, roughly, for the greedy choice of a match
HKEY = 3  # bytes hashed to find match candidates
CHAIN = 48  # candidates tried per position, nearest first


def ram_budget3(segment_payload_max: int) -> int:
    """SPEC 7.8: fdelta2's sum + the new probabilities + one read-back chunk."""
    return segment_payload_max + MODEL_BYTES3 + D.CHUNK + D.OLD_CHUNK + NEW_CHUNK + INTERPRETER3


class _Coder3(D._SegmentCoder):
    """fdelta2's models plus the literal-run matcher (mirror of device_fw.delta_apply)."""

    def __init__(
        self,
        arch: int,
        lz: int,
        old: bytes,
        new: bytes,
        start: int,
        end: int,
        sa: list[int] | None,
        cache: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(D.DELTA_CODEC2, arch)  # codes the 2 arch bits
        self.P = array("H", [32768]) * N_PROBS3
        self.C = bytearray(N_PROBS3)
        self.rc.direct(lz, 1)
        self.lz = lz
        self.old = old
        self.new = new
        self.start = start
        self.rep = 0
        self.orep = 0
        self.optr = 0
        self.sa = sa
        self.cache = {} if cache is None else cache
        self.last = 0
        self.heads: dict[bytes, list[int]] = {}
        if lz:
            for p in range(start, end - HKEY + 1):
                self.heads.setdefault(new[p : p + HKEY], []).append(p)

    def number_at(self, base: int, v: int) -> None:
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

    def add(self, old: bytes, new: bytes, opos: int, npos: int, n: int) -> None:
        super().add(old, new, opos, npos, n)
        self.optr = opos + n  # the old pointer during the next literal run

    def _find(self, old: bytes, q: int, end: int, xo: int) -> tuple[int, int, int]:
        """The match to code at new offset ``q`` (the run ends at ``end``; ``xo``
        = old pointer + offset in the run): (length, source, distance or old
        delta), source 0 = this segment, 1 = the old image; length 0 = none."""
        new = self.new
        lo = self.start
        cands: list[tuple[float, int, int, int]] = []
        rep = self.rep
        if rep and q - rep >= lo:
            n = 0
            while q + n < end and new[q + n] == new[q - rep + n]:
                n += 1
            if n >= MIN_REP:
                cands.append((n * LIT_BITS - 6, n, 0, rep))
        orep = xo + self.orep
        if 0 <= orep < len(old):
            n = 0
            while q + n < end and orep + n < len(old) and new[q + n] == old[orep + n]:
                n += 1
            if n >= MIN_REP:
                cands.append((n * LIT_BITS - 7, n, 1, self.orep))
        heads = self.heads.get(new[q : q + HKEY]) if q + HKEY <= end else None
        if heads:
            i = bisect.bisect_left(heads, q)
            bn = bd = 0
            for p in reversed(heads[max(0, i - CHAIN) : i]):
                n = 0
                while q + n < end and new[q + n] == new[p + n]:
                    n += 1
                if n > bn:
                    bn, bd = n, q - p
            if bn >= MIN_MATCH:
                cands.append((bn * LIT_BITS - 8 - 1.5 * bd.bit_length(), bn, 0, bd))
        if self.sa is not None and q + MIN_OLD <= end:
            hit = self.cache.get(q)
            if hit is None:  # the longest old match of new[q:], up to 255 bytes
                hit = self.cache[q] = D._longest_match(old, self.sa, new, q, len(new))
            n, p = hit
            n = min(n, end - q)
            if n >= MIN_OLD:
                dl = p - xo
                cands.append((n * LIT_BITS - 9 - 1.5 * abs(dl).bit_length(), n, 1, dl))
        if not cands:
            return 0, 0, 0
        gain, n, src, d = max(cands)
        if gain <= 0:
            return 0, 0, 0
        return n, src, d

    def extra(self, new: bytes, npos: int, n: int) -> None:
        if not self.lz:
            super().extra(new, npos, n)
            return
        old = self.old
        prev = self.prev
        end = npos + n
        q = npos
        while q < end:
            ln, src, d = self._find(old, q, end, self.optr + (q - npos))
            last = self.last
            if ln:
                self.bit(O_MFLAG + last, 1)
                self.bit(O_MSRC + last, src)
                if src == 0:
                    isrep = d == self.rep
                    self.bit(O_REP + last, 0 if isrep else 1)
                    if not isrep:
                        self.number_at(O_NUM3, d - 1)
                    self.rep = d
                    self.last = 1
                else:
                    isrep = d == self.orep
                    self.bit(O_REP + 4 + last, 0 if isrep else 1)
                    if not isrep:
                        self.bit(O_OSIGN, 1 if d < 0 else 0)
                        self.number_at(O_NUM3 + 2 * D.N_NUM, -d if d < 0 else d)
                    self.orep = d
                    self.last = 2
                self.number_at(O_NUM3 + D.N_NUM, ln - 1)
                q += ln
                self.pos += ln
                prev = new[q - 1]
                continue
            self.bit(O_MFLAG + last, 0)
            self.last = 0
            v = new[q]
            self.tree8(D.O_LIT + ((((prev >> 5) << 1) | (self.pos & 1)) << 8), v)
            prev = v
            q += 1
            self.pos += 1
        self.prev = prev


def encode_segment3(
    old: bytes,
    new: bytes,
    start: int,
    end: int,
    pieces: list[D._Piece],
    arch: int,
    lz: int = 1,
    sa: list[int] | None = None,
    cache: dict[int, tuple[int, int]] | None = None,
) -> bytes:
    """One fdelta3 segment rebuilding ``new[start:end]`` from ``pieces``
    (``sa``: the old image's suffix array, for matches in the old image;
    ``cache``: their lengths and offsets by new offset, shared between calls)."""
    sc = _Coder3(arch, lz, old, new, start, end, sa, cache)
    return D._code_ops(old, new, start, pieces, sc)
