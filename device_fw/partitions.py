"""ESP-IDF partition tables as a device reads them: the binary table the
bootloader reads at 0x8000 (entries of 32 bytes, then the MD5 row), checked
as gen_esp32part.py's verify() checks a table, and the OTA layout in it.
Writing a table and the CSV it is made from: device_fw/partition_csv.py."""

import hashlib
import struct

from .reasons import NO_OTA_SLOT, PARTITION_TABLE, DeviceError

TABLE_OFFSET = 0x8000
TABLE_SECTOR = 0x1000
TABLE_MAX_LEN = 0xC00
ENTRY_SIZE = 32
MAGIC = b"\xaa\x50"
MD5_MAGIC = b"\xeb\xeb" + b"\xff" * 14
ENTRY_FMT = "<2sBBII16sI"
DEFAULT_FLASH_SIZE = 4 * 1024 * 1024

TYPE_APP = 0x00
TYPE_DATA = 0x01

SUBTYPE_FACTORY = 0x00
SUBTYPE_OTA_0 = 0x10
NUM_OTA_SLOTS = 16
SUBTYPE_TEST = 0x20
DATA_OTA = 0x00
DATA_NVS = 0x02
DATA_COREDUMP = 0x03

FLAG_ENCRYPTED = 1 << 0
FLAG_READONLY = 1 << 1

APP_ALIGN = 0x10000
DATA_ALIGN = 0x1000
OTADATA_SIZE = 0x2000
NVS_RW_MIN_SIZE = 0x3000

_MD5_K = (
    0xD76AA478, 0xE8C7B756, 0x242070DB, 0xC1BDCEEE, 0xF57C0FAF, 0x4787C62A,
    0xA8304613, 0xFD469501, 0x698098D8, 0x8B44F7AF, 0xFFFF5BB1, 0x895CD7BE,
    0x6B901122, 0xFD987193, 0xA679438E, 0x49B40821, 0xF61E2562, 0xC040B340,
    0x265E5A51, 0xE9B6C7AA, 0xD62F105D, 0x02441453, 0xD8A1E681, 0xE7D3FBC8,
    0x21E1CDE6, 0xC33707D6, 0xF4D50D87, 0x455A14ED, 0xA9E3E905, 0xFCEFA3F8,
    0x676F02D9, 0x8D2A4C8A, 0xFFFA3942, 0x8771F681, 0x6D9D6122, 0xFDE5380C,
    0xA4BEEA44, 0x4BDECFA9, 0xF6BB4B60, 0xBEBFBC70, 0x289B7EC6, 0xEAA127FA,
    0xD4EF3085, 0x04881D05, 0xD9D4D039, 0xE6DB99E5, 0x1FA27CF8, 0xC4AC5665,
    0xF4292244, 0x432AFF97, 0xAB9423A7, 0xFC93A039, 0x655B59C3, 0x8F0CCC92,
    0xFFEFF47D, 0x85845DD1, 0x6FA87E4F, 0xFE2CE6E0, 0xA3014314, 0x4E0811A1,
    0xF7537E82, 0xBD3AF235, 0x2AD7D2BB, 0xEB86D391,
)  # RFC 1321: floor(abs(sin(i + 1)) * 2**32)


def _md5_pure(data):
    """MD5 (RFC 1321), for MicroPython builds whose hashlib has no md5 (those
    built without an SSL library): the table's checksum row is MD5."""
    s = (7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21)
    k = _MD5_K
    a0, b0, c0, d0 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    n = len(data)
    msg = bytes(data) + b"\x80" + bytes((55 - n) % 64) + struct.pack("<Q", (n * 8) & (2**64 - 1))
    for pos in range(0, len(msg), 64):
        m = struct.unpack("<16I", msg[pos : pos + 64])
        a, b, c, d = a0, b0, c0, d0
        for i in range(64):
            r = i >> 4
            if r == 0:
                f, g = (b & c) | (~b & d), i
            elif r == 1:
                f, g = (d & b) | (~d & c), (5 * i + 1) & 15
            elif r == 2:
                f, g = b ^ c ^ d, (3 * i + 5) & 15
            else:
                f, g = c ^ (b | (~d & 0xFFFFFFFF)), (7 * i) & 15
            f = (f + a + k[i] + m[g]) & 0xFFFFFFFF
            sh = s[(r << 2) | (i & 3)]
            a, d, c = d, c, b
            b = (b + ((f << sh) | (f >> (32 - sh)))) & 0xFFFFFFFF
        a0, b0 = (a0 + a) & 0xFFFFFFFF, (b0 + b) & 0xFFFFFFFF
        c0, d0 = (c0 + c) & 0xFFFFFFFF, (d0 + d) & 0xFFFFFFFF
    return struct.pack("<4I", a0, b0, c0, d0)


def md5(data):
    """The MD5 digest of ``data``: hashlib's where it has one, else ours."""
    if hasattr(hashlib, "md5"):
        return hashlib.md5(data).digest()
    return _md5_pure(bytes(data))


class Partition:
    def __init__(self, label, type, subtype, offset, size, flags=0):
        self.label = label
        self.type = type
        self.subtype = subtype
        self.offset = offset
        self.size = size
        self.flags = flags

    @property
    def end(self):
        return self.offset + self.size

    @property
    def encrypted(self):
        return bool(self.flags & FLAG_ENCRYPTED)

    @property
    def readonly(self):
        return bool(self.flags & FLAG_READONLY)

    @property
    def ota_index(self):
        """0..15 for an OTA app slot, else None."""
        if self.type == TYPE_APP and SUBTYPE_OTA_0 <= self.subtype < SUBTYPE_OTA_0 + NUM_OTA_SLOTS:
            return self.subtype - SUBTYPE_OTA_0
        return None

    def _key(self):
        return (self.label, self.type, self.subtype, self.offset, self.size, self.flags)

    def __eq__(self, other):
        return isinstance(other, Partition) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return "Partition(%r, 0x%x, 0x%x, 0x%x, 0x%x, %d)" % self._key()


def _err(message, **fields):
    return DeviceError(PARTITION_TABLE, message, **fields)


def check(parts, table_offset=TABLE_OFFSET, flash_size=None):
    """The checks gen_esp32part.py's verify() makes; raises PARTITION_TABLE."""
    seen = set()
    for p in parts:
        if p.label in seen:
            raise _err("duplicate partition name %r" % p.label, label=p.label)
        seen.add(p.label)
        align = APP_ALIGN if p.type == TYPE_APP else DATA_ALIGN
        if p.offset % align:
            raise _err("%s: offset 0x%x is not aligned to 0x%x" % (p.label, p.offset, align),
                       label=p.label)
        if p.type == TYPE_APP and p.size % DATA_ALIGN:
            raise _err("%s: app size 0x%x is not a multiple of 0x1000" % (p.label, p.size),
                       label=p.label)
        if p.type == TYPE_DATA and p.subtype in (DATA_OTA, DATA_COREDUMP) and p.readonly:
            raise _err("%s: otadata/coredump partitions cannot be readonly" % p.label,
                       label=p.label)
        if (p.type == TYPE_DATA and p.subtype == DATA_NVS and p.size < NVS_RW_MIN_SIZE
                and not p.readonly):
            raise _err("%s: a read/write nvs partition needs at least 0x3000 bytes" % p.label,
                       label=p.label)
        if flash_size is not None and p.end > flash_size:
            raise _err("%s ends at 0x%x, beyond the 0x%x-byte flash" % (p.label, p.end, flash_size),
                       label=p.label)
    prev = None
    for p in sorted(parts, key=lambda q: q.offset):
        if p.offset < table_offset + TABLE_SECTOR:
            raise _err("%s: offset 0x%x is below 0x%x (bootloader and partition table)"
                       % (p.label, p.offset, table_offset + TABLE_SECTOR), label=p.label)
        if prev is not None and p.offset < prev.end:
            raise _err("%s at 0x%x overlaps %s (0x%x-0x%x)"
                       % (p.label, p.offset, prev.label, prev.offset, prev.end), label=p.label)
        prev = p
    otadata = [p for p in parts if p.type == TYPE_DATA and p.subtype == DATA_OTA]
    if len(otadata) > 1:
        raise _err("more than one otadata partition (data, ota)")
    if otadata and otadata[0].size != OTADATA_SIZE:
        raise _err("otadata partition must have size 0x2000, not 0x%x" % otadata[0].size)


def from_binary(data, table_offset=TABLE_OFFSET):
    """Parse and check a binary table; the MD5 row is required."""
    data = memoryview(data)[:TABLE_MAX_LEN]  # rows copied one at a time, not the table
    parts = []
    for pos in range(0, len(data) - ENTRY_SIZE + 1, ENTRY_SIZE):
        row = bytes(data[pos : pos + ENTRY_SIZE])
        if row[:2] == MD5_MAGIC[:2]:
            if row[:16] != MD5_MAGIC or row[16:] != md5(data[:pos]):
                raise _err("partition table MD5 does not match (row at 0x%x)" % pos, offset=pos)
            end = bytes(data[pos + ENTRY_SIZE : pos + 2 * ENTRY_SIZE])
            if end and end != b"\xff" * len(end):
                raise _err("data after the MD5 row at 0x%x" % pos, offset=pos)
            check(parts, table_offset)
            return parts
        if row == b"\xff" * ENTRY_SIZE:
            break
        magic, ptype, subtype, offset, size, label, flags = struct.unpack(ENTRY_FMT, row)
        if magic != MAGIC:
            raise _err("bad entry magic %s at 0x%x" % (magic.hex(), pos), offset=pos)
        label = label.split(b"\x00", 1)[0]
        try:
            label = label.decode()
        except UnicodeError:
            raise _err("partition label at 0x%x is not UTF-8" % pos, offset=pos) from None
        parts.append(Partition(label, ptype, subtype, offset, size, flags))
    raise _err("partition table has no MD5 row (%d entries read)" % len(parts))


def find(parts, label):
    for p in parts:
        if p.label == label:
            return p
    return None


def ota_layout(parts):
    """(otadata partition, [ota_0, ota_1, ...]) or DeviceError(NO_OTA_SLOT).

    The slots must be ota_0..ota_{n-1} without gaps: the bootloader maps a
    sequence number to slot ``(seq - 1) % n`` by index.
    """
    otadata = None
    for p in parts:
        if p.type == TYPE_DATA and p.subtype == DATA_OTA:
            otadata = p
    slots = sorted((p for p in parts if p.ota_index is not None), key=lambda p: p.subtype)
    missing = []
    if otadata is None:
        missing.append("no otadata partition")
    if len(slots) < 2:
        missing.append("fewer than two OTA app slots (ota_0, ota_1)")
    if missing:
        raise DeviceError(
            NO_OTA_SLOT,
            "partition table has %s: this table (factory-only, as in ESP-IDF's default) cannot "
            "receive OTA updates; use a table with otadata + ota_0 + ota_1" % " and ".join(missing),
            slots=len(slots),
            otadata=otadata is not None,
        )
    for i, p in enumerate(slots):
        if p.ota_index != i:
            raise DeviceError(
                NO_OTA_SLOT,
                "OTA slots must be ota_0..ota_%d without gaps; found %s"
                % (len(slots) - 1, ", ".join("ota_%d" % q.ota_index for q in slots)),
                slots=len(slots),
            )
    return otadata, slots


def factory_of(parts):
    """The factory app partition (app, factory), or None. ESP-IDF's bootloader
    boots it when otadata selects nothing, and tries it after the lower OTA
    slots when an image fails; the device never writes it (updates go to
    OTA slots only)."""
    for p in parts:
        if p.type == TYPE_APP and p.subtype == SUBTYPE_FACTORY:
            return p
    return None


def read_table(flash, offset=TABLE_OFFSET):
    from .platform import SCRATCH

    if SCRATCH and len(SCRATCH[0]) >= TABLE_MAX_LEN:  # read into, not a 3 KB allocation
        data = memoryview(SCRATCH[0])[:TABLE_MAX_LEN]
        flash.readinto(offset, data)
        return from_binary(data, offset)
    return from_binary(flash.read(offset, TABLE_MAX_LEN), offset)
