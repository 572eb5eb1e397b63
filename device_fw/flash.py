"""A file-backed NOR flash with the rules real SPI NOR flash enforces.

- Erased bytes read 0xFF. Programming can only clear bits (1 -> 0); a program
  that would need a 0 -> 1 change is refused as a whole (checked before any
  byte is touched), as a driver that verifies would.
- Erase works on whole 4 KiB sectors; ``erase_range`` is one op per sector.
- Every program/erase is written through to the file at once, so a process
  killed with SIGKILL leaves the file exactly as a powered-off chip.

Power-cut injection: with ``cut_at=N`` the op whose 0-based index is N (ops
counted per program and per erased sector, i.e. ``self.ops`` before the op)
raises ``PowerCut`` after being partly applied:

- a program keeps its first ``k`` bytes, ``k = len(data) * (N % 4) // 4``
  (nothing, a quarter, a half, three quarters);
- an erase of a sector is complete when N is odd, not started when N is even.

After that the instance is dead: every call raises ``PowerCut``, like a CPU
that has stopped. ``Flash(path)`` continues from the file.

One flash file, one owner: a Flash opened for writing (and ``Flash.create``,
before it clears anything) holds an exclusive advisory lock (``flock``) on
the file for as long as it is open, so a second device process, or a
``flash init`` over a device that is running, is refused with
:class:`FlashBusy` instead of rewriting the file under it. The kernel drops
the lock when the holder dies, as a power cut drops a chip; a dead instance
drops it too. ``read_only=True`` opens without a lock and refuses writes (a
reader of a running device's file sees what a power cut would leave).
MicroPython has no ``fcntl``: there the device is the only process, and the
lock is skipped.
"""

from .reasons import BAD_STATE, DeviceError, FlashError

try:
    import fcntl
except ImportError:  # MicroPython
    fcntl = None


class FlashBusy(DeviceError):
    """Another open Flash holds the file's lock."""

    def __init__(self, path):
        super().__init__(
            BAD_STATE, "flash file %s is in use by another process" % path, path=path
        )


def lock(f, path):
    """Take the exclusive lock on an open file, or close it and raise FlashBusy."""
    if fcntl is None:
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise FlashBusy(path)
    except OSError:
        f.close()
        raise

SECTOR_SIZE = 4096
# One erased sector, made once: an erase costs the device no 4 KiB temporary
# (a real chip erases in the controller; the simulator must not count one).
ERASED_SECTOR = b"\xff" * SECTOR_SIZE
ERASED = 0xFF

PIECE = 256  # bytes the simulator checks at a time

PROGRAM = "program"
ERASE = "erase"


class PowerCut(Exception):
    """Power failed during a flash op. Deliberately not a DeviceError: nothing
    on the device can catch and handle it."""


class Flash:
    def __init__(self, path, cut_at=None, read_only=False, _file=None):
        self.path = path
        self.read_only = read_only
        if _file is not None:  # from create(), already locked
            self._f = _file
        else:
            self._f = open(path, "rb" if read_only else "r+b")  # noqa: SIM115 - as long as self
            if not read_only:
                lock(self._f, path)
        self._f.seek(0, 2)
        self.size = self._f.tell()
        if self.size == 0 or self.size % SECTOR_SIZE:
            self._f.close()
            raise FlashError(
                "flash file size %d is not a positive multiple of %d" % (self.size, SECTOR_SIZE),
                size=self.size,
            )
        self.cut_at = cut_at
        self.ops = 0  # program + sector-erase ops started (a cut op counts)
        self.programs = 0
        self.erases = 0
        self.bytes_programmed = 0
        self.trace = None  # set to a list to record (kind, addr, length)
        self.on_op = None  # or a callable(kind, addr, length), called before the op
        self.dead = False
        self._protected = []

    @classmethod
    def create(cls, path, size, cut_at=None):
        if size <= 0 or size % SECTOR_SIZE:
            raise FlashError(
                "flash size %d is not a multiple of %d" % (size, SECTOR_SIZE), size=size
            )
        blank = b"\xff" * SECTOR_SIZE
        if fcntl is None:
            with open(path, "wb") as f:
                for _ in range(size // SECTOR_SIZE):
                    f.write(blank)
            return cls(path, cut_at=cut_at)
        # Lock first, then clear: "wb" would truncate a file another process holds.
        try:
            f = open(path, "r+b")  # noqa: SIM115 - handed to the instance
        except FileNotFoundError:
            f = open(path, "w+b")  # noqa: SIM115 - handed to the instance
        lock(f, path)
        try:
            for _ in range(size // SECTOR_SIZE):
                f.write(blank)
            f.truncate()
            f.flush()
        except BaseException:
            f.close()
            raise
        return cls(path, cut_at=cut_at, _file=f)

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- guards -------------------------------------------------------------

    def protect(self, start, length, name):
        """Refuse any program/erase touching [start, start+length)."""
        self._protected.append((start, start + length, name))

    def unprotect(self, name):
        self._protected = [p for p in self._protected if p[2] != name]

    def _check(self, kind, addr, length):
        if self.dead:
            raise PowerCut("flash is powered off (cut at op %d)" % self.cut_at)
        if addr < 0 or length < 0 or addr + length > self.size:
            raise FlashError(
                "%s out of range: 0x%x+%d beyond flash size 0x%x" % (kind, addr, length, self.size),
                addr=addr,
                length=length,
            )
        if kind == "read":
            return
        if self.read_only:
            raise FlashError(
                "%s at 0x%x: %s is open read-only" % (kind, addr, self.path), addr=addr
            )
        end = addr + length
        for start, stop, name in self._protected:
            if addr < stop and start < end:
                raise FlashError(
                    "%s at 0x%x+%d touches protected region %s (0x%x-0x%x)"
                    % (kind, addr, length, name, start, stop),
                    addr=addr,
                    length=length,
                    region=name,
                )

    def _begin(self, kind, addr, length):
        """Count the op; return True if power fails during it."""
        index = self.ops
        self.ops += 1
        if self.trace is not None:
            self.trace.append((kind, addr, length))
        if self.on_op is not None:
            self.on_op(kind, addr, length)
        return self.cut_at is not None and index == self.cut_at

    def _die(self, kind, addr):
        self.dead = True
        self.close()  # a chip without power holds nothing: the lock goes too
        raise PowerCut("power cut during %s at 0x%x (op %d)" % (kind, addr, self.cut_at))

    def _put(self, addr, data):
        self._f.seek(addr)
        self._f.write(data)
        self._f.flush()

    # -- operations ---------------------------------------------------------

    def read(self, addr, n):
        self._check("read", addr, n)
        self._f.seek(addr)
        return self._f.read(n)

    def readinto(self, addr, buf):
        self._check("read", addr, len(buf))
        self._f.seek(addr)
        if self._f.readinto(buf) != len(buf):
            raise FlashError("short read at 0x%x" % addr, addr=addr, length=len(buf))

    def write(self, addr, data):
        """Program bytes; only 1 -> 0 transitions are allowed.

        ``data`` may be any buffer; it is not copied. The simulator works in
        256-byte pieces so that its own temporaries stay small: they count in
        the device's RAM measurements (tracemalloc), though on a real part the
        flash controller does this.
        """
        view = memoryview(data)
        n = len(view)
        self._check(PROGRAM, addr, n)
        if n == 0:
            return
        for pos in range(0, n, PIECE):
            a = view[pos : pos + PIECE]
            self._f.seek(addr + pos)
            b = self._f.read(len(a))
            if int.from_bytes(a, "big") & ~int.from_bytes(b, "big"):
                for i in range(len(a)):
                    if a[i] & ~b[i] & 0xFF:
                        raise FlashError(
                            "program at 0x%x needs 0->1 bit changes (stored 0x%02x, new 0x%02x): "
                            "erase first" % (addr + pos + i, b[i], a[i]),
                            addr=addr + pos + i,
                        )
        if self._begin(PROGRAM, addr, n):
            keep = n * (self.cut_at % 4) // 4
            if keep:
                self._put(addr, view[:keep])
            self._die(PROGRAM, addr)
        self._put(addr, view)
        self.programs += 1
        self.bytes_programmed += n

    def erase_sector(self, addr):
        if addr % SECTOR_SIZE:
            raise FlashError("erase at 0x%x is not sector-aligned" % addr, addr=addr)
        self._check(ERASE, addr, SECTOR_SIZE)
        if self._begin(ERASE, addr, SECTOR_SIZE):
            if self.cut_at % 2:
                self._put(addr, ERASED_SECTOR)
            self._die(ERASE, addr)
        self._put(addr, ERASED_SECTOR)
        self.erases += 1

    def erase_range(self, addr, length):
        if addr % SECTOR_SIZE or length % SECTOR_SIZE:
            raise FlashError(
                "erase 0x%x+0x%x is not sector-aligned" % (addr, length), addr=addr, length=length
            )
        self._check(ERASE, addr, length)
        for a in range(addr, addr + length, SECTOR_SIZE):
            self.erase_sector(a)

    def is_erased(self, addr, length):
        """All 0xFF? Checked a piece at a time: the store asks this about a
        whole sector while the delta applier's tables are held, and two 4 KiB
        temporaries were the peak of the install."""
        self._check("read", addr, length)
        blank = ERASED_SECTOR[:PIECE]
        for pos in range(addr, addr + length, PIECE):
            n = min(PIECE, addr + length - pos)
            if self.read(pos, n) != blank[:n]:
                return False
        return True
