"""Encoder side of the ``fdelta3`` codec (format: protocol/SPEC.md section 7.8).

``fdelta3`` is ``fdelta2`` whose literal runs may also copy bytes this segment
has already written (LZ77 inside the segment): a large change brings new code
whose instruction sequences, strings and tables repeat inside the new image,
where the old image has no match. The decoder reads those bytes back from what
it wrote itself (its output chunk, or the passive slot it is filling, within
this segment only), so segments stay independent and the old image is still
read only within the running image.

The decoder is ``otaferry.device_fw.delta3_apply``; both sides keep identical
models (tests/test_delta.py, tests/vectors/delta/fdelta3.json).
"""

from __future__ import annotations

import bisect
from array import array

from . import delta as D

DELTA_CODEC3 = "fdelta3"
# Two more number slots after fdelta2's table, then the match flags.
SLOT_DIST, SLOT_MLEN = 4, 5
O_NUM3 = D.N_PROBS2
O_MFLAG = O_NUM3 + 2 * D.N_NUM  # match or literal?, ctx = the last token (0 lit, 1 match, 2 rep)
O_REP = O_MFLAG + 4  # match at the last distance?, ctx = the last token
N_PROBS3 = O_REP + 4
# Bytes the decoder reads back per call when a match source was already written.
NEW_CHUNK = 256
MODEL_BYTES3 = D.MODEL_BYTES2 + 3 * (N_PROBS3 - D.N_PROBS2)
# The interpreter's share (closures, cells; tracemalloc, tests/test_delta_install.py)
INTERPRETER3 = 8192

# Encoder choices (the format allows any match of length >= 1).
MIN_MATCH = 3  # shortest match at a new distance
MIN_REP = 2  # shortest match at the last distance
HKEY = 3  # bytes hashed to find match candidates
CHAIN = 48  # candidates tried per position, nearest first


def ram_budget3(segment_payload_max: int) -> int:
    """SPEC 7.8: fdelta2's sum + the new probabilities + one read-back chunk."""
    return (
        segment_payload_max + MODEL_BYTES3 + D.CHUNK + D.OLD_CHUNK + NEW_CHUNK + INTERPRETER3
    )


class _Coder3(D._SegmentCoder):
    """fdelta2's models plus the literal-run matcher (mirror of delta3_apply)."""

    def __init__(self, arch: int, lz: int, new: bytes, start: int, end: int) -> None:
        super().__init__(D.DELTA_CODEC2, arch)  # codes the 2 arch bits
        self.P = array("H", [32768]) * N_PROBS3
        self.C = bytearray(N_PROBS3)
        self.rc.direct(lz, 1)
        self.lz = lz
        self.new = new
        self.start = start
        self.rep = 0
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

    def _find(self, q: int, end: int) -> tuple[int, int]:
        """The match to code at new offset ``q`` (run ends at ``end``): (length, distance)."""
        new = self.new
        lo = self.start
        best = bd = 0
        rep = self.rep
        if rep and q - rep >= lo:
            n = 0
            while q + n < end and new[q + n] == new[q - rep + n]:
                n += 1
            if n >= MIN_REP:
                best, bd = n, rep
        cands = self.heads.get(new[q : q + HKEY]) if q + HKEY <= end else None
        if cands:
            i = bisect.bisect_left(cands, q)
            for p in reversed(cands[max(0, i - CHAIN) : i]):
                n = 0
                while q + n < end and new[q + n] == new[p + n]:
                    n += 1
                # a new distance must beat the rep match by more than its extra cost
                if n >= MIN_MATCH and n > best + (1 if bd == rep and best else 0):
                    best, bd = n, q - p
        return best, bd

    def extra(self, new: bytes, npos: int, n: int) -> None:
        if not self.lz:
            super().extra(new, npos, n)
            return
        prev = self.prev
        end = npos + n
        q = npos
        while q < end:
            ln, d = self._find(q, end)
            last = self.last
            if ln:
                isrep = d == self.rep
                self.bit(O_MFLAG + last, 1)
                self.bit(O_REP + last, 0 if isrep else 1)
                if not isrep:
                    self.number_at(O_NUM3, d - 1)
                self.number_at(O_NUM3 + D.N_NUM, ln - 1)
                self.rep = d
                self.last = 2 if isrep else 1
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
) -> bytes:
    """One fdelta3 segment rebuilding ``new[start:end]`` from ``pieces``."""
    return D._code_ops(old, new, start, pieces, _Coder3(arch, lz, new, start, end))
