"""The ESP-IDF partition CSV (what ``gen_esp32part.py`` reads) and writing a
binary table: factory flashing of a simulated device (``Device.create``) and
the host's tools. A device only reads the binary table (device_fw/partitions.py),
so it never imports this module (on MicroPython its code would take heap for
nothing).

Rules follow ESP-IDF's gen_esp32part.py (v5): fields ``name, type, subtype,
offset, size, flags``; ``#`` starts a comment line; missing trailing fields
are empty; numbers in any base ``int(x, 0)`` takes, with K/M suffixes; an
empty offset is the end of the previous partition (the first one: the end of
the table sector, 0x9000) rounded up to 0x10000 for app partitions and
0x1000 for the others; explicit offsets must not go backwards; app offsets
must be 0x10000-aligned and app sizes 4 KiB multiples; labels unique and at
most 16 bytes; at most one otadata partition, of size 0x2000. Flags are
``:``-separated: ``encrypted`` (bit 0) and ``readonly`` (bit 1).
"""

import struct

from .partitions import (
    APP_ALIGN,
    DATA_ALIGN,
    DATA_COREDUMP,
    DATA_NVS,
    DATA_OTA,
    ENTRY_FMT,
    FLAG_ENCRYPTED,
    FLAG_READONLY,
    MAGIC,
    MD5_MAGIC,
    NUM_OTA_SLOTS,
    SUBTYPE_FACTORY,
    SUBTYPE_OTA_0,
    SUBTYPE_TEST,
    TABLE_MAX_LEN,
    TABLE_OFFSET,
    TABLE_SECTOR,
    TYPE_APP,
    TYPE_DATA,
    Partition,
    _err,
    check,
    md5,
)

TYPES = {"app": TYPE_APP, "data": TYPE_DATA}

SUBTYPES = {
    TYPE_APP: {"factory": SUBTYPE_FACTORY, "test": SUBTYPE_TEST},
    TYPE_DATA: {
        "ota": DATA_OTA,
        "phy": 0x01,
        "nvs": DATA_NVS,
        "coredump": DATA_COREDUMP,
        "nvs_keys": 0x04,
        "efuse": 0x05,
        "undefined": 0x06,
        "esphttpd": 0x80,
        "fat": 0x81,
        "spiffs": 0x82,
        "littlefs": 0x83,
    },
}
for _i in range(NUM_OTA_SLOTS):
    SUBTYPES[TYPE_APP]["ota_%d" % _i] = SUBTYPE_OTA_0 + _i

FLAGS = {"encrypted": FLAG_ENCRYPTED, "readonly": FLAG_READONLY}

DEFAULT_CSV = """\
# Name,   Type, SubType, Offset,   Size, Flags
nvs,      data, nvs,     0x9000,   0x4000,
otadata,  data, ota,     0xd000,   0x2000,
phy_init, data, phy,     0xf000,   0x1000,
ota_0,    app,  ota_0,   0x10000,  1M,
ota_1,    app,  ota_1,   0x110000, 1M,
"""


def _parse_int(text, keywords=None, what="value", line=0):
    low = text.lower()
    if keywords and low in keywords:
        return keywords[low]
    mult = 1
    if low.endswith("k"):
        mult, low = 1024, low[:-1]
    elif low.endswith("m"):
        mult, low = 1024 * 1024, low[:-1]
    try:
        return int(low.strip(), 0) * mult
    except ValueError:
        pass
    known = (": known names " + ", ".join(sorted(keywords))) if keywords else ""
    raise _err("line %d: invalid %s %r%s" % (line, what, text, known), line=line, field=what)


def _parse_line(line, line_no):
    fields = [f.strip() for f in (line + ",,,,,").split(",")]
    label = fields[0]
    if not label:
        raise _err("line %d: empty partition name" % line_no, line=line_no)
    if len(label.encode()) > 16:
        raise _err("line %d: name %r longer than 16 bytes" % (line_no, label), line=line_no)
    if not fields[1]:
        raise _err("line %d: type is empty" % line_no, line=line_no)
    ptype = _parse_int(fields[1], TYPES, "type", line_no)
    if not fields[2]:
        if ptype == TYPE_APP:
            raise _err("line %d: app partition needs a subtype" % line_no, line=line_no)
        subtype = SUBTYPES[TYPE_DATA]["undefined"]
    else:
        subtype = _parse_int(fields[2], SUBTYPES.get(ptype, {}), "subtype", line_no)
    offset = _parse_int(fields[3], None, "offset", line_no) if fields[3] else None
    if not fields[4]:
        raise _err("line %d: size is empty" % line_no, line=line_no)
    size = _parse_int(fields[4], None, "size", line_no)
    flags = 0
    for flag in fields[5].split(":"):
        flag = flag.strip()
        if flag in FLAGS:
            flags |= FLAGS[flag]
        elif flag:
            raise _err("line %d: unknown flag %r (known: encrypted, readonly)" % (line_no, flag),
                       line=line_no)
    if not 0 <= ptype <= 0xFE or not 0 <= subtype <= 0xFE:
        raise _err("line %d: type/subtype out of range 0..0xfe" % line_no, line=line_no)
    if size <= 0:
        raise _err("line %d: size must be positive" % line_no, line=line_no)
    return Partition(label, ptype, subtype, offset, size, flags), line_no


def parse_csv(text, table_offset=TABLE_OFFSET, flash_size=None):
    """Parse an ESP-IDF partition CSV into a checked list of Partition."""
    rows = []
    for n, raw in enumerate(text.splitlines()):
        line = raw.strip()
        if line and not line.startswith("#"):
            rows.append(_parse_line(line, n + 1))
    last_end = table_offset + TABLE_SECTOR
    for p, line_no in rows:
        if p.offset is None:
            align = APP_ALIGN if p.type == TYPE_APP else DATA_ALIGN
            p.offset = (last_end + align - 1) // align * align
        elif p.offset < last_end:
            raise _err(
                "line %d: %s at 0x%x overlaps what comes before it (ends at 0x%x)"
                % (line_no, p.label, p.offset, last_end),
                line=line_no,
                label=p.label,
            )
        last_end = p.offset + p.size
    parts = [p for p, _ in rows]
    check(parts, table_offset, flash_size)
    return parts


def to_binary(parts):
    out = b"".join(
        struct.pack(ENTRY_FMT, MAGIC, p.type, p.subtype, p.offset, p.size, p.label.encode(),
                    p.flags)
        for p in parts
    )
    out += MD5_MAGIC + md5(out)
    if len(out) >= TABLE_MAX_LEN:
        raise _err("%d partitions do not fit the 0xC00-byte table" % len(parts))
    return out + b"\xff" * (TABLE_MAX_LEN - len(out))


def write_table(flash, parts, offset=TABLE_OFFSET):
    """Erase the table sector and program the binary table (factory flashing)."""
    data = to_binary(parts)
    flash.erase_sector(offset)
    flash.write(offset, data)
