"""The otadata partition, byte-compatible with ESP-IDF.

Two ``esp_ota_select_entry_t`` (32 bytes: uint32 ota_seq, uint8 seq_label[20],
uint32 ota_state, uint32 crc), one at the start of each of the partition's two
sectors. ``crc`` is ESP-IDF's ``crc32_le(UINT32_MAX, &ota_seq, 4)``, which is
``binascii.crc32(seq_le, 0xFFFFFFFF)``; it covers the sequence number only.

An entry is valid (bootable) when its seq is not 0xFFFFFFFF, its CRC checks and
its state is neither INVALID nor ABORTED. The active entry is the valid one
with the highest seq; it boots OTA slot ``(seq - 1) % number_of_slots``.

Power-cut safety, as ESP-IDF does it:

- ``select()`` (a new boot target) erases and programs the sector *not*
  holding the active entry, so the active entry survives any cut.
- ``set_state()`` rewrites an entry in its own sector (erase, then program;
  this is what esp_ota_ops.c's rewrite_ota_seq() and the bootloader's
  write_otadata() do). A cut after the erase leaves that sector blank or
  half-programmed; a half-programmed entry fails its CRC, because the CRC is
  the last field written and any byte not yet written reads 0xFF. Either way
  the entry is not valid and the *other* entry (the previous boot target) is
  active again: the next boot is the previous image. So a cut while
  confirming loses the confirmation (the update is rolled back), a cut while
  marking invalid/aborted has the intended effect, and no cut can leave the
  device without a valid image it booted before. We keep ESP-IDF's choice
  rather than invent another layout, so a real bootloader reads our otadata.
"""

import binascii
import struct

from .flash import SECTOR_SIZE
from .reasons import BAD_STATE, NO_OTA_SLOT, DeviceError

NEW = 0
PENDING_VERIFY = 1
VALID = 2
INVALID = 3
ABORTED = 4
UNDEFINED = 0xFFFFFFFF

STATE_NAMES = {
    NEW: "NEW",
    PENDING_VERIFY: "PENDING_VERIFY",
    VALID: "VALID",
    INVALID: "INVALID",
    ABORTED: "ABORTED",
    UNDEFINED: "UNDEFINED",
}

ENTRY_FMT = "<I20sII"
ENTRY_SIZE = 32
SEQ_BLANK = 0xFFFFFFFF


def state_name(state):
    return STATE_NAMES.get(state, "0x%x" % state)


def seq_crc(seq):
    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


class Entry:
    def __init__(self, seq, state, label=b"\xff" * 20, crc=None, index=None):
        self.seq = seq
        self.state = state
        self.label = label
        self.crc = seq_crc(seq) if crc is None else crc
        self.index = index  # 0 or 1: which sector it was read from / written to

    @classmethod
    def unpack(cls, data, index=None):
        seq, label, state, crc = struct.unpack(ENTRY_FMT, data[:ENTRY_SIZE])
        return cls(seq, state, label, crc, index)

    def pack(self):
        return struct.pack(ENTRY_FMT, self.seq, self.label, self.state, self.crc)

    @property
    def crc_ok(self):
        return self.seq != SEQ_BLANK and self.crc == seq_crc(self.seq)

    @property
    def valid(self):
        """ESP-IDF bootloader_common_ota_select_valid()."""
        return self.crc_ok and self.state not in (INVALID, ABORTED)

    def slot(self, num_slots):
        # uint32 arithmetic, as in C: seq 0 wraps to 0xFFFFFFFF
        return ((self.seq - 1) & 0xFFFFFFFF) % num_slots

    def __repr__(self):
        return "Entry(index=%r, seq=%d, state=%s, crc_ok=%r)" % (
            self.index, self.seq, state_name(self.state), self.crc_ok)


SEQ_MAX = 0xFFFFFFFE  # 0xFFFFFFFF reads as blank flash: never written as a seq


def next_seq(current_seq, slot, num_slots):
    """Smallest seq > current_seq that selects ``slot`` (esp_ota_ops.c), computed,
    not counted up to (a seq near 2^32 took ~2^31 steps). It may exceed SEQ_MAX:
    ``OtaData.select`` renumbers then."""
    return current_seq + 1 + (slot - current_seq) % num_slots


class OtaData:
    def __init__(self, flash, offset, num_slots):
        """``offset`` is the otadata partition's offset (or a Partition)."""
        if hasattr(offset, "offset"):
            if offset.size != 2 * SECTOR_SIZE:
                raise DeviceError(NO_OTA_SLOT, "otadata partition must be 0x2000 bytes")
            offset = offset.offset
        if num_slots < 1:
            raise DeviceError(NO_OTA_SLOT, "no OTA slots")
        self.flash = flash
        self.offset = offset
        self.num_slots = num_slots

    def read(self):
        return [
            Entry.unpack(self.flash.read(self.offset + i * SECTOR_SIZE, ENTRY_SIZE), i)
            for i in (0, 1)
        ]

    def active(self, entries=None):
        """The active entry (valid, highest seq) or None."""
        best = None
        for e in entries or self.read():
            if e.valid and (best is None or e.seq > best.seq):
                best = e
        return best

    def boot_slot(self):
        """OTA slot the active entry selects, or None (bootloader tries ota_0)."""
        e = self.active()
        return None if e is None else e.slot(self.num_slots)

    def state_of(self, slot):
        """State recorded for ``slot`` (esp_ota_get_state_partition), or None."""
        for e in self.read():
            if e.crc_ok and e.slot(self.num_slots) == slot:
                return e.state
        return None

    def write_entry(self, index, entry):
        """Erase sector ``index`` and program ``entry`` at its start."""
        addr = self.offset + index * SECTOR_SIZE
        self.flash.erase_sector(addr)
        self.flash.write(addr, entry.pack())
        entry.index = index
        return entry

    def select(self, slot, state=NEW):
        """Make ``slot`` the next boot target (esp_rewrite_ota_data).

        If the active entry already selects ``slot`` only its state is
        rewritten; otherwise a higher seq goes into the other sector.
        """
        if not 0 <= slot < self.num_slots:
            raise DeviceError(BAD_STATE, "no OTA slot %d (have %d)" % (slot, self.num_slots))
        entries = self.read()
        cur = self.active(entries)
        if cur is None:
            return self.write_entry(0, Entry(slot + 1, state))
        if cur.slot(self.num_slots) == slot:
            return self.write_entry(cur.index, Entry(cur.seq, state, cur.label))
        seq = next_seq(cur.seq, slot, self.num_slots)
        if seq > SEQ_MAX:
            # The sequence is used up (a crafted or ancient otadata). Renumber
            # from the bottom in two writes, each leaving a valid entry for
            # the running slot if power fails: first a copy of the active
            # entry with the lowest seq for its slot in the other sector (the
            # active one still wins), then the new entry above that copy in
            # the active entry's sector (the copy wins while it is rewritten).
            low = Entry(cur.slot(self.num_slots) + 1, cur.state, cur.label)
            self.write_entry(1 - cur.index, low)
            seq = next_seq(low.seq, slot, self.num_slots)
            return self.write_entry(cur.index, Entry(seq, state))
        return self.write_entry(1 - cur.index, Entry(seq, state))

    def set_state(self, state, entry=None):
        """Rewrite the state of ``entry`` (default: the active one) in place."""
        if entry is None:
            entry = self.active()
            if entry is None:
                raise DeviceError(BAD_STATE, "no valid otadata entry to update")
        new = Entry(entry.seq, state, entry.label, entry.crc)
        return self.write_entry(entry.index, new)

    def erase_entry(self, index):
        self.flash.erase_sector(self.offset + index * SECTOR_SIZE)
