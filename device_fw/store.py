"""Device state (identity, policy, progress) in the nvs partition, safe
against a power cut at any flash op.

This is not ESP-IDF's NVS format: it is an append-only record log that owns
the partition. A record never spans sectors::

    magic "ST" | length u16 LE | seq u32 LE | body (msgpack map) | crc32 u32 LE

with the CRC over everything before it. ``load`` returns the body of the
valid record with the highest seq. ``save`` appends a record with seq + 1 in
the sector holding the newest record; when it does not fit (or the sector
holds a torn record whose length cannot be trusted), it erases the *next*
sector and writes there. The newest valid record is never erased and a
record becomes visible only once its last byte (the CRC) is programmed, so
after a cut ``load`` returns the old state or the new one.
"""

import binascii
import struct

from . import mpack
from .flash import SECTOR_SIZE
from .platform import SCRATCH
from .reasons import RESOURCE_LIMIT, DeviceError

MAGIC = b"ST"
HEADER = "<2sHI"
HEADER_SIZE = 8
CRC_SIZE = 4
MAX_BODY = SECTOR_SIZE - HEADER_SIZE - CRC_SIZE


def _crc(data):
    return binascii.crc32(data) & 0xFFFFFFFF


def scan_sector(data):
    """Parse one sector image: ([(seq, body_bytes)], free offset or None).

    The free offset is where the next record may go, None when the sector
    holds bytes that do not parse (a record torn inside its header).
    """
    records = []
    pos = 0
    while pos + HEADER_SIZE <= len(data):
        head = data[pos : pos + HEADER_SIZE]
        if head == b"\xff" * HEADER_SIZE:
            return records, pos
        magic, length, seq = struct.unpack(HEADER, head)
        end = pos + HEADER_SIZE + length + CRC_SIZE
        if magic != MAGIC or end > len(data):
            return records, None
        body_end = end - CRC_SIZE
        (crc,) = struct.unpack("<I", data[body_end:end])
        if crc == _crc(data[pos:body_end]):
            records.append((seq, data[pos + HEADER_SIZE : body_end]))
        pos = end
    return records, None if pos < len(data) else pos


class Store:
    def __init__(self, flash, offset, size, valid=None):
        """``offset``/``size`` of the nvs partition (at least two sectors);
        ``valid(state)``: False for a decoded record that must count as absent
        (the newest record that passes is the state)."""
        if offset % SECTOR_SIZE or size % SECTOR_SIZE or size < 2 * SECTOR_SIZE:
            raise DeviceError(
                RESOURCE_LIMIT,
                "store needs >= 2 whole sectors, got 0x%x+0x%x" % (offset, size),
                offset=offset,
                size=size,
            )
        self.flash = flash
        self.offset = offset
        self.sectors = size // SECTOR_SIZE
        self.valid = valid
        self._scanned = False

    @classmethod
    def on_partition(cls, flash, partition, valid=None):
        return cls(flash, partition.offset, partition.size, valid)

    def _scan(self):
        """Find the newest valid record: sets _seq, _state, _sector, _free."""
        best = None  # (seq, sector, body)
        top = 0  # highest seq of any record, valid or not: new records go above it
        frees = []
        buf = SCRATCH[0] if SCRATCH and len(SCRATCH[0]) == SECTOR_SIZE else None
        for i in range(self.sectors):
            if buf is None:
                data = self.flash.read(self.offset + i * SECTOR_SIZE, SECTOR_SIZE)
            else:
                self.flash.readinto(self.offset + i * SECTOR_SIZE, buf)
                data = buf
            records, free = scan_sector(data)
            frees.append(free)
            for seq, body in records:
                top = max(top, seq)
                if best is None or seq > best[0]:
                    try:
                        state = mpack.decode_all(body)
                    except DeviceError:
                        continue
                    if isinstance(state, dict) and (self.valid is None or self.valid(state)):
                        best = (seq, i, state)
        if best is None:
            self._seq, self._sector, self._state = 0, None, None
            self._free = frees[0]
        else:
            self._seq, self._sector, self._state = best
            self._seq = max(self._seq, top)
            self._free = frees[self._sector]
        self._scanned = True

    def load(self):
        """The last state saved, or None if none was ever saved."""
        if not self._scanned:
            self._scan()
        return None if self._state is None else dict(self._state)

    def save(self, state):
        """Persist ``state`` (a dict, whole, small) as the new current state."""
        if not isinstance(state, dict):
            raise DeviceError(RESOURCE_LIMIT, "store state must be a dict")
        body = mpack.encode(state)
        if len(body) > MAX_BODY:
            raise DeviceError(
                RESOURCE_LIMIT,
                "state is %d bytes encoded; a record holds at most %d" % (len(body), MAX_BODY),
                size=len(body),
            )
        if not self._scanned:
            self._scan()
        seq = self._seq + 1
        record = struct.pack(HEADER, MAGIC, len(body), seq) + body
        record += struct.pack("<I", _crc(record))
        sector = 0 if self._sector is None else self._sector
        free = self._free
        if free is None or free + len(record) > SECTOR_SIZE:
            if self._sector is not None:
                sector = (sector + 1) % self.sectors
            base = self.offset + sector * SECTOR_SIZE
            if not self.flash.is_erased(base, SECTOR_SIZE):
                self.flash.erase_sector(base)
            free = 0
        kept = dict(state)  # made first: running out of memory after the write would
        # leave this object behind the flash (every later save over a programmed record)
        self.flash.write(self.offset + sector * SECTOR_SIZE + free, record)
        self._seq, self._sector, self._state = seq, sector, kept
        self._free = free + len(record)
