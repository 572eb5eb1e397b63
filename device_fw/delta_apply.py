"""Device-side applier for the ``fdelta1``, ``fdelta2`` and ``fdelta3`` delta
codecs (format: protocol/SPEC.md section 7; 7.7 and 7.8 for the later two).

One segment payload rebuilds ``out_size`` bytes of the new image. It reads the
old image (the active slot) by random access through ``read_old`` and hands the
new bytes, in order, to ``write`` in chunks of at most ``CHUNK`` bytes.

The payload is one binary range-coded stream (LZMA-style coder, 16-bit
probabilities with a per-entry adaptation count). All model state is reset
per segment, so segments decode independently and in any order. One segment
driver serves the three codecs: fdelta2 adds a branch predictor in the add
runs, fdelta3 adds matches in the literal runs; each part is switched on by
the codec and, within a segment, by its header bits.

Written in the subset of Python that MicroPython runs: no dataclasses, no
typing, no f-strings; only ``array`` from the standard library.
"""

import sys
from array import array

from .reasons import DECODE_ERROR, RESOURCE_LIMIT, DeviceError

CODEC = "fdelta1"
CODEC2 = "fdelta2"  # fdelta1 + a per-segment branch predictor (SPEC 7.7)
CODEC3 = "fdelta3"  # fdelta2 + matches in the literal runs (SPEC 7.8)
CODECS = (CODEC, CODEC2, CODEC3)  # what this applier decodes (announced in the hello)
CHUNK = 4096  # largest write() chunk
OLD_CHUNK = 512  # bytes fetched from the old image per read_old() call
MAX_OUT = 1 << 30

# Model layout: one flat table of probabilities (uint16, P(bit = 0) * 65536)
# and one of adaptation counts (uint8). Keep equal to protocol/delta.py.
N_NUM = 64 + 33 * 8  # one number: 6-bit length tree + 3 modelled bits per length
SLOT_ADD, SLOT_EXTRA, SLOT_SEEK, SLOT_START = 0, 1, 2, 3
O_NUM = 0
O_SIGN = O_NUM + 4 * N_NUM
O_ZERO = O_SIGN + 1
O_DVAL = O_ZERO + 16
O_LIT = O_DVAL + 8 * 256
O_WORD = O_LIT + 16 * 256
N_PROBS = O_WORD + 16
O_BR = N_PROBS  # fdelta2: branch-prediction hit flags
N_PROBS2 = O_BR + 16
# fdelta3: three more number slots (4 match distance, 5 match length, 6 old
# delta) and the match flags. Keep equal to protocol/delta3.py.
O_NUM3 = N_PROBS2
O_MFLAG = O_NUM3 + 3 * N_NUM
O_MSRC = O_MFLAG + 4
O_REP = O_MSRC + 4
O_OSIGN = O_REP + 8
N_PROBS3 = O_OSIGN + 1
NEW_CHUNK = 256  # fdelta3: bytes read back per read_new() call
# Word-relocation predictor: 2^WBITS entries of (last 32-bit delta, state).
WBITS = 11
WMASK = (1 << WBITS) - 1
WLIM = 1 << 16  # a first delta is remembered only if |delta| < WLIM
# fdelta2 branch predictor: exact-target and target-page tables (SPEC 7.7).
EBITS = 9
EMASK = (1 << EBITS) - 1
PBITS = 7
PMASK = (1 << PBITS) - 1
BR_LEN = (0, 3, 4, 4)  # none, Xtensa, Thumb-2, AArch64
# Adaptation shift by count: the first updates move fast, then 1/16.
RATE = b"\x01\x02\x03\x03\x04"
RMAX = len(RATE) - 1


_MPY = sys.implementation.name == "micropython"


def _fill(a, value):
    """Set every item of array / bytearray ``a`` to ``value`` in place.

    MicroPython: doubling copies through a memoryview (a memmove, no
    temporary, a few dozen steps instead of ~10,000 bytecode loops). CPython
    copies such a self-overlapping slice through a temporary as large as the
    slice, so there a plain loop it is."""
    n = len(a)
    if not _MPY:
        for i in range(n):
            a[i] = value
        return
    a[0] = value
    m = memoryview(a)
    k = 1
    while k < n:
        t = k if k < n - k else n - k
        m[k : k + t] = m[0:t]
        k += t


# The model tables, allocated once (at the first segment) and reset for each:
# a fresh set per segment fragments a small heap (MicroPython's needed ~110 KB
# for a 64 KB budget that way).
_TABLES = {}


def _array(tc, n):
    """An array of ``n`` items of type ``tc``, contents unspecified (_tables
    fills it). Allocated in place: MicroPython has no array * int, and
    array(tc, bytes(...)) would need a temporary as large as the table, two
    blocks of up to 17 KB at once in a fragmented heap; from a range (it has
    a length) the array is allocated once and filled from the iterator."""
    try:
        return array(tc, [0]) * n  # CPython: no temporary
    except TypeError:
        return array(tc, range(n))


def reserve(codec=CODEC3):
    """Allocate the tables now, sized for ``codec`` (every codec before it in
    CODECS uses them too: its probabilities are a prefix). A MicroPython port
    calls this when the device opens, before the session's long-lived objects
    (device_fw/mp_run.py); the RAM formula (ram_budget) stays per codec, as
    without it."""
    _tables(codec)


def reserved_chunk():
    """The output chunk of the reserved tables (CHUNK bytes), or None: idle
    between segments, so a full-image decoder may share it."""
    for t in _TABLES.values():
        return t[4]
    return None


def reserved():
    """True while tables are held (reserve, or an earlier segment)."""
    return bool(_TABLES)


def ensure(codec):
    """The tables for ``codec`` now, before anything is erased: a heap that
    cannot hold them refuses the delta (RESOURCE_LIMIT) instead of running out
    at its first segment."""
    try:
        _tables(codec)
        return
    except MemoryError:
        release()
    import gc

    from . import codecs  # the block a full install kept for its window: idle now

    codecs.SPARE[:] = []
    gc.collect()
    try:
        _tables(codec)
    except MemoryError:
        release()
        raise DeviceError(RESOURCE_LIMIT, "no room in the heap for the %s tables" % codec)


_KEPT_CHUNK = []  # the output chunk of released tables: the installer may share it


def release():
    """Drop the reserved tables (lent to a full install, or a heap too small to
    hold them all); their output chunk is kept for the next ones."""
    for t in _TABLES.values():
        _KEPT_CHUNK[:] = [t[4]]
    _TABLES.clear()


def _tables(codec):
    """The model tables for ``codec``, reset: probabilities, counts, word
    predictor, output chunk; for fdelta2 and fdelta3 the branch predictor's."""
    n = N_PROBS if codec == CODEC else N_PROBS2 if codec == CODEC2 else N_PROBS3
    t = _TABLES.get(codec)
    if t is None:
        for k in _TABLES:  # reserved for a larger codec: use them
            if len(_TABLES[k][0]) >= n and (codec == CODEC or len(_TABLES[k]) > 5):
                t = _TABLES[k]
    if t is None:
        _TABLES.clear()  # one codec's tables at a time
        chunk = _KEPT_CHUNK.pop() if _KEPT_CHUNK else bytearray(CHUNK)
        t = [_array("H", n), bytearray(n), _array("I", 1 << WBITS), bytearray(1 << WBITS), chunk]
        if codec != CODEC:
            t += [_array("i", 1 << EBITS), bytearray(1 << EBITS), bytearray(1 << EBITS),
                  _array("i", 1 << PBITS), bytearray(1 << PBITS)]  # fmt: skip
        _TABLES[codec] = t
    _fill(t[0], 32768)
    for a in t[1:]:
        if a is not t[4]:
            _fill(a, 0)
    return t


_vbit = None
if _MPY:
    # The range decoder's bit, native: on 32-bit ports ``rng`` and ``code``
    # (up to 2**32) are not small ints, so the Python version allocates a long
    # int at almost every step (4.9 MB per 100k steps, the issue measured);
    # viper computes in machine words and allocates nothing. Same arithmetic
    # as ``bit`` below, state in st = array("I", [code, rng, ip]).
    try:
        import micropython

        @micropython.viper
        def _vbit(st, P, C, R, pl, n_in: int, i: int) -> int:
            s = ptr32(st)  # noqa: F821
            p16 = ptr16(P)  # noqa: F821
            c8 = ptr8(C)  # noqa: F821
            r8 = ptr8(R)  # noqa: F821
            b8 = ptr8(pl)  # noqa: F821
            mask = (uint(0xFFFF) << 16) | uint(0xFFFF)  # noqa: F821 - 2**32-1, also on 64-bit
            code = uint(s[0])  # noqa: F821
            rng = uint(s[1])  # noqa: F821
            ip = int(s[2])
            p = uint(p16[i])  # noqa: F821
            c = int(c8[i])
            sh = int(r8[c])
            if c < 4:
                c8[i] = c + 1
            bound = (rng >> 16) * p
            b = 0
            if code < bound:
                rng = bound
                p16[i] = p + ((uint(65536) - p) >> sh)  # noqa: F821
            else:
                code = code - bound
                rng = rng - bound
                p = p - (p >> sh)
                p16[i] = p if p > uint(31) else uint(32)  # noqa: F821
                b = 1
            while rng < uint(0x1000000):  # noqa: F821
                rng = (rng << 8) & mask
                nxt = uint(0)  # noqa: F821
                if ip < n_in:
                    nxt = uint(b8[ip])  # noqa: F821
                code = ((code << 8) | nxt) & mask
                ip += 1
            s[0] = code
            s[1] = rng
            s[2] = ip
            return b
    except (ImportError, AttributeError, SyntaxError):  # a port without viper
        _vbit = None


def _err(msg, **fields):
    return DeviceError(DECODE_ERROR, msg, **fields)


def _read(read, offset, n):
    """``n`` bytes from ``read`` (read_old or read_new); a failing or short
    flash read fails this segment."""
    try:
        b = read(offset, n)
    except DeviceError:
        raise
    except Exception as e:
        raise _err("flash read failed: %r" % (e,), offset=offset) from e
    if len(b) != n:
        raise _err("flash short read", offset=offset, length=n)
    return b


# What the interpreter itself takes while a segment is applied, on top of the
# buffers counted below: object headers, the decoder's closures and their
# cells, integers, the frames of write / read_old and the flash driver's
# temporaries. Measured with tracemalloc at 5,122 B on CPython 3.11
# (tests/test_delta_install.py test_ram_check_agrees_with_the_applier), rounded up.
INTERPRETER = 6656
# fdelta2 adds the learn closure and its cells: measured 6,461 B, counted as 7,168.
INTERPRETER2 = 7168


# fdelta3 adds the read-back path: measured 7,049 B, counted as 7,680.
INTERPRETER3 = 7680


def ram_budget(segment_payload_max, chunk=CHUNK, old_chunk=OLD_CHUNK, codec=CODEC):
    """Peak device RAM in bytes to apply one segment (SPEC 7.6, 7.7, 7.8).

    = the checked payload held in RAM + model tables (probabilities, counts,
    word predictor; for fdelta2 and fdelta3 also the branch predictor's
    tables) + one output chunk (handed to write as a view, not copied) + one
    old-image read chunk (fdelta3: and one read-back chunk) + the
    interpreter's own share (INTERPRETER*).
    """
    if codec == CODEC:
        models = 3 * N_PROBS + 5 * (1 << WBITS)
        return segment_payload_max + models + chunk + old_chunk + INTERPRETER
    branch = 5 * (1 << WBITS) + 6 * (1 << EBITS) + 5 * (1 << PBITS)
    if codec == CODEC2:
        return segment_payload_max + 3 * N_PROBS2 + branch + chunk + old_chunk + INTERPRETER2
    return (segment_payload_max + 3 * N_PROBS3 + branch + chunk + old_chunk + NEW_CHUNK
            + INTERPRETER3)  # fmt: skip


def _sext(v, bits):
    return v - (1 << bits) if v >> (bits - 1) else v


def br_kind(arch, ins, pc):
    """Which predicted instruction ``ins`` at new offset ``pc`` is (0/1), or -1."""
    if arch == 1:  # Xtensa: CALL0/CALLn (op0 5), L32R (op0 1)
        op = ins & 15
        if op == 5:
            return 0
        return 1 if op == 1 else -1
    if arch == 2:  # Thumb-2 BL, B.W (T4)
        if pc & 1 or (ins & 0xF800) != 0xF000 or (ins >> 16) & 0x9000 != 0x9000:
            return -1
        return 0
    if pc & 3:  # AArch64 BL, B
        return -1
    op = ins >> 26
    if op == 0x25:
        return 0
    return 1 if op == 0x05 else -1


def br_fixed(arch, kind, ins):
    if arch == 1:
        return ins & (0x3F if kind == 0 else 0xFF)
    if arch == 2:
        return (ins >> 16) & 0xD000
    return ins >> 26


def br_target(arch, kind, ins, pc):
    """Image offset the instruction at offset ``pc`` refers to."""
    if arch == 1:
        if kind == 0:
            return (pc & ~3) + (_sext(ins >> 6, 18) << 2) + 4
        return ((pc + 3) & ~3) + (((ins >> 8) - 65536) << 2)
    if arch == 2:
        hw1 = ins & 0xFFFF
        hw2 = ins >> 16
        sb = (hw1 >> 10) & 1
        i1 = 1 ^ ((hw2 >> 13) & 1) ^ sb
        i2 = 1 ^ ((hw2 >> 11) & 1) ^ sb
        off = (sb << 24) | (i1 << 23) | (i2 << 22) | ((hw1 & 0x3FF) << 12) | ((hw2 & 0x7FF) << 1)
        return pc + 4 + _sext(off, 25)
    return pc + (_sext(ins & 0x3FFFFFF, 26) << 2)


def br_insert(arch, kind, ins, target, pc):
    """``ins`` re-pointed at ``target`` from offset ``pc``; -1 if not encodable."""
    if arch == 1:
        if kind == 0:
            d = target - (pc & ~3) - 4
            if d & 3 or d < -(1 << 19) or d >= (1 << 19):
                return -1
            return (ins & 0x3F) | (((d >> 2) & 0x3FFFF) << 6)
        d = target - ((pc + 3) & ~3)
        if d & 3 or d < -(1 << 18) or d >= 0:
            return -1
        return (ins & 0xFF) | (((d >> 2) + 65536) << 8)
    if arch == 2:
        d = target - pc - 4
        if d & 1 or d < -(1 << 24) or d >= (1 << 24):
            return -1
        sb = (d >> 24) & 1
        j1 = (1 ^ ((d >> 23) & 1)) ^ sb
        j2 = (1 ^ ((d >> 22) & 1)) ^ sb
        hw1 = 0xF000 | (sb << 10) | ((d >> 12) & 0x3FF)
        hw2 = ((ins >> 16) & 0xD000) | (j1 << 13) | (j2 << 11) | ((d >> 1) & 0x7FF)
        return hw1 | (hw2 << 16)
    d = target - pc
    if d & 3 or d < -(1 << 27) or d >= (1 << 27):
        return -1
    return (ins & 0xFC000000) | ((d >> 2) & 0x3FFFFFF)


def wkey(w):
    """Word-predictor slot of an old 32-bit word: its 4 KiB "page" mixed with
    its top byte, so pointers into flash, RAM and peripherals rarely share."""
    return ((w >> 12) ^ ((w >> 24) * 0x1D3)) & WMASK


def apply_segment(payload, read_old, old_size, out_size, write, codec=CODEC, read_new=None):
    """Rebuild ``out_size`` new-image bytes from one segment ``payload``.

    ``codec``: the manifest's, fdelta1, fdelta2 or fdelta3. (fdelta2's branch predictor
    needs no image offset: it only learns and applies differences of targets,
    and segments start at multiples of 4096, so the offset within the segment
    has the alignment of the image offset.) Raises DeviceError(DECODE_ERROR) on any inconsistency;
    never writes more than ``out_size`` bytes in total (it may have written a
    prefix when it raises: the caller discards the segment).

    fdelta3 also takes ``read_new(offset, length)``: bytes this segment has
    already handed to ``write``, ``offset`` counted from the segment's first
    byte (the installer reads them back from the passive slot it is filling).
    """
    if codec != CODEC and codec != CODEC2 and codec != CODEC3:
        raise _err("unknown delta codec %s" % (codec,))
    if codec == CODEC3 and read_new is None:
        raise _err("fdelta3 needs read_new")
    if not isinstance(old_size, int) or old_size < 0:
        raise _err("bad old_size")
    if not isinstance(out_size, int) or out_size < 1 or out_size > MAX_OUT:
        raise _err("bad out_size", out_size=out_size)
    n_in = len(payload)
    if n_in < 1:
        raise _err("empty segment payload")

    v2 = codec != CODEC  # the branch predictor's header bits and tables
    tables = _tables(codec)
    P = tables[0]
    C = tables[1]
    wt = tables[2]
    ws = tables[3]
    obuf = tables[4]

    # Range decoder. The stream is the LZMA range coder's output without its
    # constant leading zero byte; reads past the end yield zeros (at most 4).
    code = 0
    for i in range(4):
        code = (code << 8) | (payload[i] if i < n_in else 0)
    rng = 0xFFFFFFFF
    ip = 4

    def bit(i):
        nonlocal code, rng, ip
        p = P[i]
        c = C[i]
        sh = RATE[c]
        if c < RMAX:
            C[i] = c + 1
        bound = (rng >> 16) * p
        if code < bound:
            rng = bound
            P[i] = p + ((65536 - p) >> sh)
            b = 0
        else:
            code -= bound
            rng -= bound
            p -= p >> sh
            P[i] = p if p > 31 else 32
            b = 1
        while rng < 0x1000000:
            rng = (rng << 8) & 0xFFFFFFFF
            code = ((code << 8) | (payload[ip] if ip < n_in else 0)) & 0xFFFFFFFF
            ip += 1
        return b

    def tree8(base):
        t = 1
        while t < 256:
            t = (t << 1) | bit(base + t)
        return t - 256

    def direct(nbits):
        nonlocal code, rng, ip
        v = 0
        for _ in range(nbits):
            rng >>= 1
            if code >= rng:
                code -= rng
                v = (v << 1) | 1
            else:
                v <<= 1
            if rng < 0x1000000:
                rng = (rng << 8) & 0xFFFFFFFF
                code = ((code << 8) | (payload[ip] if ip < n_in else 0)) & 0xFFFFFFFF
                ip += 1
        return v

    st = None
    if _vbit is not None:
        st = array("I", [code, rng, ip])

        def bit(i):
            return _vbit(st, P, C, RATE, payload, n_in, i)

        def direct(nbits):
            code, rng, ip = st[0], st[1], st[2]
            v = 0
            for _ in range(nbits):
                rng >>= 1
                if code >= rng:
                    code -= rng
                    v = (v << 1) | 1
                else:
                    v <<= 1
                if rng < 0x1000000:
                    rng = (rng << 8) & 0xFFFFFFFF
                    code = ((code << 8) | (payload[ip] if ip < n_in else 0)) & 0xFFFFFFFF
                    ip += 1
            st[0], st[1], st[2] = code, rng, ip
            return v

    def number(slot):
        base = O_NUM + slot * N_NUM if slot < 4 else O_NUM3 + (slot - 4) * N_NUM
        m = 1
        while m < 64:
            m = (m << 1) | bit(base + m)
        n = m - 64
        if n > 32:
            raise _err("number too long", bits=n)
        if n <= 1:
            return n
        k = n - 1  # bits below the leading one
        mb = k if k < 3 else 3
        t = 1
        for _ in range(mb):
            t = (t << 1) | bit(base + 64 + n * 8 + t)
        v = (1 << mb) | (t - (1 << mb))
        if k > mb:
            v = (v << (k - mb)) | direct(k - mb)
        return v

    # write() gets a view of obuf itself, not a copy: it must take the bytes
    # before it returns (the installer programs them at once), and a 4 KiB
    # copy per chunk is not in the RAM budget.
    view = memoryview(obuf)
    on = 0  # bytes in obuf
    done = 0  # bytes handed to write()
    ob = b""  # old-image buffer: old[ostart : ostart + len(ob)]
    ostart = 0

    arch = direct(2) if v2 else 0
    lz = direct(1) if codec == CODEC3 else 0  # literal runs may copy (SPEC 7.8)
    bl = BR_LEN[arch]
    if arch:
        # et: exact target's last move (tag etag, state es); pt: target page's
        et, etag, es, pt, ps = tables[5:]
    oh = 0  # the add run's last 4 old bytes, newest in the top byte
    nh = 0  # and new bytes
    ra = 0  # bytes of the current add run so far

    def learn(o, v, x, xo):
        # one add byte: old o at old offset xo, new v at image offset x;
        # learn from an instruction ending here (SPEC 7.7)
        nonlocal oh, nh, ra
        oh = (oh >> 8) | (o << 24)
        nh = (nh >> 8) | (v << 24)
        ra += 1
        if ra < bl:
            return
        sh = 32 - 8 * bl
        oi = oh >> sh
        ni = nh >> sh
        pc = x - bl + 1
        kind = br_kind(arch, oi, pc)
        if kind < 0 or br_kind(arch, ni, pc) != kind:
            return
        if br_fixed(arch, kind, oi) != br_fixed(arch, kind, ni):
            return
        to = br_target(arch, kind, oi, xo - bl + 1)
        dd = br_target(arch, kind, ni, pc) - to
        if dd < -(1 << 31) or dd >= (1 << 31):
            return
        ei = (to >> 2) & EMASK
        tag = (to >> (2 + EBITS)) & 255
        if es[ei] and etag[ei] == tag and et[ei] == dd:
            if es[ei] < 3:
                es[ei] += 1
        else:
            et[ei] = dd
            etag[ei] = tag
            es[ei] = 1
        pi = (to >> 12) & PMASK
        if ps[pi] and pt[pi] == dd:
            if ps[pi] < 3:
                ps[pi] += 1
        else:
            pt[pi] = dd
            ps[pi] = 1

    opos = number(SLOT_START)
    p0 = 0  # last diff byte
    p1 = 0  # diff byte before it
    wlast = 0  # last word prediction hit
    prev = 0  # last output byte
    rep = 0  # fdelta3: distance of the last match in this segment
    orep = 0  # and old delta of the last match in the old image
    last = 0  # last literal-run token: 0 literal, 1 match in this segment, 2 in the old image
    while True:
        # ---- add: new = old + diff ----
        n = n_add = number(SLOT_ADD)
        if n > out_size - done - on:
            raise _err("add run past segment end", length=n)
        if n and (opos < 0 or opos + n > old_size):
            raise _err("add run reads outside old image", offset=opos, length=n)
        ra = 0
        while n:
            oi = opos - ostart
            if oi < 0 or oi + (4 if n >= 4 else n) > len(ob):
                ln = old_size - opos
                if ln > OLD_CHUNK:
                    ln = OLD_CHUNK
                ob = b""  # the last chunk goes before the next is read: one at a time
                ob = _read(read_old, opos, ln)
                ostart = opos
                oi = 0
            if arch and n >= bl:
                # a branch, call or literal load: maybe predicted from its target's move
                ins = ob[oi] | (ob[oi + 1] << 8) | (ob[oi + 2] << 16)
                if bl == 4:
                    ins |= ob[oi + 3] << 24
                pc = done + on
                kind = br_kind(arch, ins, pc)
                pred = -1
                if kind >= 0:
                    to = br_target(arch, kind, ins, opos)
                    ei = (to >> 2) & EMASK
                    if es[ei] and etag[ei] == (to >> (2 + EBITS)) & 255:
                        ctx = 4 | es[ei]
                        pred = br_insert(arch, kind, ins, to + et[ei], pc)
                    else:
                        pi = (to >> 12) & PMASK
                        if ps[pi]:
                            ctx = ps[pi]
                            pred = br_insert(arch, kind, ins, to + pt[pi], pc)
                if pred >= 0 and bit(O_BR + (ctx | (kind << 3))) == 0:
                    p0 = p1 = 1 if pred != ins else 0
                    for j in range(bl):
                        prev = (pred >> (8 * j)) & 255
                        obuf[on] = prev
                        learn(ob[oi + j], prev, pc + j, opos + j)
                        on += 1
                        if on == CHUNK:
                            write(view)
                            done += CHUNK
                            on = 0
                    opos += bl
                    n -= bl
                    continue
            if (on & 3) == 0 and n >= 4:
                # aligned word: maybe predicted as a relocated pointer
                ow = ob[oi] | (ob[oi + 1] << 8) | (ob[oi + 2] << 16) | (ob[oi + 3] << 24)
                key = ((ow >> 12) ^ ((ow >> 24) * 0x1D3)) & WMASK
                s = ws[key]
                if s:
                    if bit(O_WORD + (s | (wlast << 2))) == 0:
                        wlast = 1
                        if s < 3:
                            ws[key] = s + 1
                        dd = wt[key]
                        nw = (ow + dd) & 0xFFFFFFFF
                        obuf[on] = nw & 255
                        obuf[on + 1] = (nw >> 8) & 255
                        obuf[on + 2] = (nw >> 16) & 255
                        obuf[on + 3] = nw >> 24
                        prev = nw >> 24
                        p0 = p1 = 1 if dd else 0
                        if arch:
                            x = done + on
                            for j in range(4):
                                learn(ob[oi + j], obuf[on + j], x + j, opos + j)
                        on += 4
                        opos += 4
                        n -= 4
                        if on == CHUNK:
                            write(view)
                            done += CHUNK
                            on = 0
                        continue
                    wlast = 0
                nw = 0
                for j in range(4):
                    d = 0
                    if bit(O_ZERO + ((p0 != 0) | ((p1 != 0) << 1) | (j << 2))):
                        d = tree8(O_DVAL + (((j) | ((p0 != 0) << 2)) << 8))
                    prev = (ob[oi + j] + d) & 255
                    obuf[on + j] = prev
                    nw |= prev << (8 * j)
                    p1 = p0
                    p0 = d
                    if arch:
                        learn(ob[oi + j], prev, done + on + j, opos + j)
                dd = (nw - ow) & 0xFFFFFFFF
                if s or (dd and (dd < WLIM or dd > 0x100000000 - WLIM)):
                    ws[key] = 1
                    wt[key] = dd
                on += 4
                opos += 4
                n -= 4
            else:
                d = 0
                if bit(O_ZERO + ((p0 != 0) | ((p1 != 0) << 1) | ((on & 3) << 2))):
                    d = tree8(O_DVAL + (((on & 3) | ((p0 != 0) << 2)) << 8))
                prev = (ob[oi] + d) & 255
                obuf[on] = prev
                p1 = p0
                p0 = d
                if arch:
                    learn(ob[oi], prev, done + on, opos)
                on += 1
                opos += 1
                n -= 1
            if on == CHUNK:
                write(view)
                done += CHUNK
                on = 0
        if done + on == out_size:
            break
        # ---- extra: literal bytes ----
        n = n_extra = number(SLOT_EXTRA)
        if n > out_size - done - on:
            raise _err("extra run past segment end", length=n)
        while n:
            if lz and bit(O_MFLAG + last):
                if bit(O_MSRC + last):
                    # a match in the old image, at old pointer + run offset + delta
                    if bit(O_REP + 4 + last):
                        neg = bit(O_OSIGN)
                        orep = number(6)
                        if neg:
                            orep = -orep
                    last = 2
                    m = number(5) + 1
                    if m > n:
                        raise _err("match past the literal run", length=m)
                    src = opos + (n_extra - n) + orep
                    if src < 0 or src + m > old_size:
                        raise _err("match reads outside old image", offset=src, length=m)
                    n -= m
                    ob = b""  # one old-image buffer at a time (the add re-reads)
                    ostart = 0
                    rd = read_old
                else:
                    # a match in this segment: copy bytes it has already produced
                    if bit(O_REP + last):
                        rep = number(4) + 1
                    elif not rep:
                        raise _err("match at the last distance before any match")
                    last = 1
                    m = number(5) + 1
                    if m > n:
                        raise _err("match past the literal run", length=m)
                    if rep > done + on:
                        raise _err("match before the segment start", distance=rep)
                    n -= m
                    src = done + on - rep  # segment offset of the first byte to copy
                    while m and src >= done:  # still in the output chunk
                        prev = obuf[src - done]
                        obuf[on] = prev
                        on += 1
                        src += 1
                        m -= 1
                        if on == CHUNK:
                            write(view)
                            done += CHUNK
                            on = 0
                    rd = read_new
                while m:  # the rest from flash: old image, or what this segment wrote
                    k = m if m < OLD_CHUNK else OLD_CHUNK
                    if rd is read_new:
                        if k > NEW_CHUNK:
                            k = NEW_CHUNK
                        if k > done - src:  # at most up to the output chunk
                            k = done - src
                    if k < 1:  # caught up with the output chunk: copy from RAM
                        prev = obuf[src - done]
                        obuf[on] = prev
                        on += 1
                        src += 1
                        m -= 1
                    else:
                        nb = _read(rd, src, k)
                        for j in range(k):
                            prev = nb[j]
                            obuf[on] = prev
                            on += 1
                            if on == CHUNK:
                                write(view)
                                done += CHUNK
                                on = 0
                        nb = b""
                        src += k
                        m -= k
                        continue
                    if on == CHUNK:
                        write(view)
                        done += CHUNK
                        on = 0
                continue
            if lz:
                last = 0
            prev = tree8(O_LIT + ((((prev >> 5) << 1) | (on & 1)) << 8))
            obuf[on] = prev
            on += 1
            n -= 1
            if on == CHUNK:
                write(view)
                done += CHUNK
                on = 0
        if done + on == out_size:
            break
        if n_add == 0 and n_extra == 0:
            raise _err("empty operation")
        # ---- seek in the old image ----
        neg = bit(O_SIGN)
        v = number(SLOT_SEEK)
        opos += -v if neg else v
        if (ip if st is None else st[2]) > n_in + 4:
            raise _err("segment payload exhausted", consumed=ip if st is None else st[2])
    if (ip if st is None else st[2]) > n_in + 4:
        raise _err("segment payload exhausted", consumed=ip if st is None else st[2])
    if on:
        write(view[:on])
