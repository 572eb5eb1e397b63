"""Device-side applier for the ``fdelta3`` delta codec (format: protocol/SPEC.md 7.8).

``fdelta3`` is ``fdelta2`` (delta_apply.py) whose literal runs may also copy
bytes this segment has already produced: LZ77 matches inside the segment, for
new code that repeats inside the new image. The copied bytes come from the
output chunk still in RAM or, once written, back from the passive slot through
``read_new`` (offsets within this segment only): segments stay independent, and
the old image is still read only through ``read_old``, within the running image.

Written in the subset of Python that MicroPython runs (see delta_apply.py).
"""

from array import array

from .delta_apply import (
    BR_LEN,
    CHUNK,
    EBITS,
    EMASK,
    MAX_OUT,
    N_NUM,
    N_PROBS2,
    O_BR,
    O_DVAL,
    O_LIT,
    O_NUM,
    O_SIGN,
    O_WORD,
    O_ZERO,
    OLD_CHUNK,
    PBITS,
    PMASK,
    RATE,
    RMAX,
    SLOT_ADD,
    SLOT_EXTRA,
    SLOT_SEEK,
    SLOT_START,
    WBITS,
    WLIM,
    WMASK,
    _err,
    br_fixed,
    br_insert,
    br_kind,
    br_target,
)
from .reasons import DeviceError

CODEC3 = "fdelta3"
# fdelta2's table, then two number slots (match distance, match length) and
# the match flags. Keep equal to protocol/delta3.py.
O_NUM3 = N_PROBS2  # number slots 4 (distance), 5 (match length), 6 (old delta)
O_MFLAG = O_NUM3 + 3 * N_NUM
O_MSRC = O_MFLAG + 4
O_REP = O_MSRC + 4
O_OSIGN = O_REP + 8
N_PROBS3 = O_OSIGN + 1
NEW_CHUNK = 256  # bytes read back per read_new() call
# The interpreter's share (closures and cells on top of fdelta2's): measured
# 7,049 B with tracemalloc on CPython 3.11 (tests/test_delta_install.py), counted as 7,680.
INTERPRETER3 = 7680


def _table(tc, n, value):
    """An array of ``n`` items of type ``tc``, each ``value``."""
    try:
        return array(tc, [value]) * n  # CPython: no temporary list
    except TypeError:  # MicroPython has no array * int
        a = array(tc, bytes(n * (2 if tc == "H" else 4)))
        if value:
            for i in range(n):
                a[i] = value
        return a


def ram_budget3(segment_payload_max, chunk=CHUNK, old_chunk=OLD_CHUNK):
    """Peak device RAM to apply one fdelta3 segment (SPEC 7.8): fdelta2's
    tables with the larger probability table, plus one read-back chunk."""
    models = 3 * N_PROBS3 + 5 * (1 << WBITS) + 6 * (1 << EBITS) + 5 * (1 << PBITS)
    return segment_payload_max + models + chunk + old_chunk + NEW_CHUNK + INTERPRETER3


def apply_segment3(payload, read_old, old_size, out_size, write, read_new):
    """Rebuild ``out_size`` new-image bytes from one fdelta3 segment ``payload``.

    As delta_apply.apply_segment, plus ``read_new(offset, length)``: bytes
    this segment has already handed to ``write``, ``offset`` counted from the
    segment's first byte (the installer reads them back from the passive slot).
    Raises DeviceError(DECODE_ERROR) on any inconsistency.
    """
    if not isinstance(old_size, int) or old_size < 0:
        raise _err("bad old_size")
    if not isinstance(out_size, int) or out_size < 1 or out_size > MAX_OUT:
        raise _err("bad out_size", out_size=out_size)
    n_in = len(payload)
    if n_in < 1:
        raise _err("empty segment payload")

    P = _table("H", N_PROBS3, 32768)
    C = bytearray(N_PROBS3)
    wt = _table("I", 1 << WBITS, 0)
    ws = bytearray(1 << WBITS)

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

    obuf = bytearray(CHUNK)
    # write() gets a view of obuf itself, not a copy: it must take the bytes
    # before it returns (the installer programs them at once), and a 4 KiB
    # copy per chunk is not in the RAM budget.
    view = memoryview(obuf)
    on = 0  # bytes in obuf
    done = 0  # bytes handed to write()
    ob = b""  # old-image buffer: old[ostart : ostart + len(ob)]
    ostart = 0

    arch = direct(2)
    lz = direct(1)  # literal runs may copy from this segment's own output
    bl = BR_LEN[arch]
    if arch:
        et = _table("i", 1 << EBITS, 0)  # exact target: its last move
        etag = bytearray(1 << EBITS)
        es = bytearray(1 << EBITS)
        pt = _table("i", 1 << PBITS, 0)  # target page: its last move
        ps = bytearray(1 << PBITS)
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
    rep = 0  # distance of the last match in this segment
    orep = 0  # old delta of the last match in the old image
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
                try:
                    ob = read_old(opos, ln)
                except DeviceError:
                    raise
                except Exception as e:  # a failing flash read fails this segment
                    raise _err("old image read failed: %r" % (e,), offset=opos) from e
                if len(ob) != ln:
                    raise _err("old image short read", offset=opos, length=ln)
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
                    while m:
                        k = m if m < OLD_CHUNK else OLD_CHUNK
                        try:
                            nb = read_old(src, k)
                        except DeviceError:
                            raise
                        except Exception as e:
                            raise _err("old image read failed: %r" % (e,), offset=src) from e
                        if len(nb) != k:
                            raise _err("old image short read", offset=src, length=k)
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
                while m:
                    if src >= done:  # still in the output chunk
                        prev = obuf[src - done]
                        obuf[on] = prev
                        on += 1
                        src += 1
                        m -= 1
                    else:  # already written: read back, at most up to the chunk
                        k = done - src
                        if k > m:
                            k = m
                        if k > NEW_CHUNK:
                            k = NEW_CHUNK
                        try:
                            nb = read_new(src, k)
                        except DeviceError:
                            raise
                        except Exception as e:
                            raise _err("read back failed: %r" % (e,), offset=src) from e
                        if len(nb) != k:
                            raise _err("read back short", offset=src, length=k)
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
        if ip > n_in + 4:
            raise _err("segment payload exhausted", consumed=ip)
    if ip > n_in + 4:
        raise _err("segment payload exhausted", consumed=ip)
    if on:
        write(view[:on])
