"""The segment codecs this port really decodes (SPEC sections 4, 4a, 7): the
registry the HELLO announces and the installer consults before any erase.

A full-image decoder is ``decode(payload, out_size, window_log, write, buf)``:
it hands the ``out_size`` bytes of one segment, in order, to ``write`` in
pieces of at most ``len(buf)`` bytes (``buf``: the caller's one output
buffer, reused for every segment), and raises ValueError when the payload is
not exactly one stream of ``out_size`` bytes within a ``2**window_log`` window.

- ``zstd``: only where a zstd library exists (CPython's ``zstandard``); no
  MicroPython build has one, so such a port neither announces nor accepts it.
- ``deflate``: raw deflate (RFC 1951, no zlib/gzip wrapper), window
  ``2**window_log`` (9..15): ``zlib`` on CPython, ``deflate.DeflateIO`` on
  MicroPython 1.21+.
- the delta codecs of ``delta_apply`` (they read the running image, so they
  are not in this table; see ``delta_codecs``).
"""

from . import port

ZSTD = "zstd"
DEFLATE = "deflate"
DEFLATE_MIN_WBITS = 9
DEFLATE_MAX_WBITS = 15

try:
    import zlib as _zlib

    if not hasattr(_zlib, "decompressobj"):  # MicroPython's old zlib shim
        _zlib = None
except ImportError:
    _zlib = None

try:
    import deflate as _deflate  # MicroPython 1.21+
except ImportError:
    _deflate = None


def _zstd_decode(payload, out_size, window_log, write, buf):
    data = port.zstd_decompress(payload, out_size, window_log)
    view = memoryview(data)
    step = len(buf)
    for pos in range(0, out_size, step):
        write(view[pos : pos + step])


def _check_wbits(window_log):
    if not DEFLATE_MIN_WBITS <= window_log <= DEFLATE_MAX_WBITS:
        raise ValueError("deflate window 2**%d outside 2**9..2**15" % window_log)


def _deflate_zlib(payload, out_size, window_log, write, buf):
    _check_wbits(window_log)
    d = _zlib.decompressobj(-window_log)
    step = len(buf)
    done = 0
    data = memoryview(payload)
    try:
        while done < out_size:
            # at most one output piece at a time: RAM is the window and buf's worth
            piece = d.decompress(data, min(step, out_size - done))
            data = d.unconsumed_tail
            if not piece:
                raise ValueError("deflate stream ends after %d of %d bytes" % (done, out_size))
            write(piece)
            done += len(piece)
        if d.decompress(data, 1) or not d.eof:
            raise ValueError("deflate stream is longer than %d bytes" % out_size)
        if d.unused_data:
            raise ValueError("bytes after the deflate stream's last block")
    except _zlib.error as exc:
        raise ValueError("deflate: %s" % exc)


try:
    from io import IOBase as _Stream  # a Python stream C code can read (MicroPython too)
except ImportError:  # pragma: no cover
    _Stream = object


class _Reader(_Stream):
    """A stream over a buffer (no copy of the payload), for DeflateIO: a
    BytesIO copies the segment into a new 8 KB block each time."""

    def __init__(self, data):
        self.data = memoryview(data)
        self.pos = 0

    def readinto(self, b):
        n = min(len(b), len(self.data) - self.pos)
        b[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


LEND = []  # callables that free memory idle during a full install (device_fw/mp_run.py)
SPARE = []  # [the block that keeps the window's place between segments]
DEFLATE_STATE = 2048  # DeflateIO's state besides its window (~1.7 KB measured)


def _deflate_mpy(payload, out_size, window_log, write, buf):
    import gc

    _check_wbits(window_log)
    # DeflateIO allocates 2**window_log bytes of window and ~1.7 KB of state for
    # every segment. In a heap that small objects have split, a fresh 8 KB block
    # soon does not exist (a full install died for an 8 KB window with 83 KB
    # free), so LEND frees what is idle now (the delta applier's tables: a full
    # install and a delta are never applied at once), and after each segment a
    # SPARE block takes the window's place at once, before the session's small
    # objects can split it (they did, by the 35th segment); it goes just before
    # the next window is made.
    spare = len(SPARE[0]) if SPARE else (1 << window_log) + DEFLATE_STATE
    for free in LEND:
        free()
    SPARE[:] = []
    gc.collect()
    d = _deflate.DeflateIO(_Reader(payload), _deflate.RAW, window_log)
    view = memoryview(buf)
    done = 0
    try:
        while done < out_size:
            want = min(len(buf), out_size - done)
            n = d.readinto(view[:want])
            if not n:
                raise ValueError("deflate stream ends after %d of %d bytes" % (done, out_size))
            write(view[:n])
            done += n
        if d.read(1):
            raise ValueError("deflate stream is longer than %d bytes" % out_size)
    except (OSError, EOFError) as exc:  # uzlib: a bad block, a distance past the window, EOF
        raise ValueError("deflate: %r" % (exc,))
    finally:
        d.close()
        if LEND:  # a port that budgets its heap (the others need no spare)
            d = None
            gc.collect()
            try:
                SPARE.append(bytearray(spare))
            except MemoryError:  # pragma: no cover - the next segment looks for its own
                pass


FULL = {}
if port.ZSTD_AVAILABLE:
    FULL[ZSTD] = _zstd_decode
if _zlib is not None:
    FULL[DEFLATE] = _deflate_zlib
elif _deflate is not None:
    FULL[DEFLATE] = _deflate_mpy


def full_decoder(name):
    """The decoder of full-image codec ``name``, or None if this port has none."""
    return FULL.get(name)


def delta_codecs():
    try:
        from .delta_apply import CODECS
    except ImportError:  # a port without the delta applier
        return ()
    return CODECS


def names():
    """Every codec this port decodes, in the HELLO's order: full, then delta."""
    out = [n for n in (ZSTD, DEFLATE) if n in FULL]
    for c in delta_codecs():
        out.append(c)
    return out
