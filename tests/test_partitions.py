import hashlib

import pytest
from otaferry.device_fw import partition_csv as pc
from otaferry.device_fw import partitions as pt
from otaferry.device_fw.flash import Flash
from otaferry.device_fw.reasons import NO_OTA_SLOT, PARTITION_TABLE, DeviceError

# The table from shared/seed/ota-seed.md: ESP-IDF's "Single factory app, no OTA".
SEED_CSV = """\
# ESP-IDF Partition Table
# Name,   Type, SubType, Offset,  Size, Flags
nvs,      data, nvs,     0x9000,  0x6000,
phy_init, data, phy,     0xf000,  0x1000,
factory,  app,  factory, 0x10000, 1M,
"""

# ESP-IDF's "Factory app, two OTA definitions" (partitions_two_ota.csv).
TWO_OTA_CSV = """\
# Name,   Type, SubType, Offset,  Size, Flags
nvs,      data, nvs,     0x9000,  0x4000,
otadata,  data, ota,     0xd000,  0x2000,
phy_init, data, phy,     0xf000,  0x1000,
factory,  app,  factory, 0x10000,  1M,
ota_0,    app,  ota_0,   0x110000, 1M,
ota_1,    app,  ota_1,   0x210000, 1M,
"""


def reason(exc_info):
    return exc_info.value.reason


def test_seed_table_parses_but_cannot_do_ota():
    parts = pc.parse_csv(SEED_CSV)
    assert [(p.label, p.type, p.subtype, p.offset, p.size) for p in parts] == [
        ("nvs", 1, 2, 0x9000, 0x6000),
        ("phy_init", 1, 1, 0xF000, 0x1000),
        ("factory", 0, 0, 0x10000, 0x100000),
    ]
    with pytest.raises(DeviceError) as ei:
        pt.ota_layout(parts)
    assert reason(ei) == NO_OTA_SLOT
    msg = ei.value.message
    assert "no otadata partition" in msg and "fewer than two OTA app slots" in msg
    assert "otadata + ota_0 + ota_1" in msg


def test_default_table():
    parts = pc.parse_csv(pc.DEFAULT_CSV, flash_size=pt.DEFAULT_FLASH_SIZE)
    otadata, slots = pt.ota_layout(parts)
    assert (otadata.offset, otadata.size) == (0xD000, 0x2000)
    assert [(s.label, s.offset, s.size) for s in slots] == [
        ("ota_0", 0x10000, 0x100000), ("ota_1", 0x110000, 0x100000)]
    assert pt.find(parts, "nvs").size == 0x4000
    assert pt.find(parts, "nope") is None


def test_two_ota_table_and_slot_order():
    parts = pc.parse_csv(TWO_OTA_CSV)
    _, slots = pt.ota_layout(parts)
    assert [s.ota_index for s in slots] == [0, 1]
    # slots listed out of subtype order still come back in subtype order
    swapped = pc.parse_csv(TWO_OTA_CSV.replace("ota_0,    app,  ota_0", "x,    app,  ota_1")
                           .replace("ota_1,    app,  ota_1", "y,    app,  ota_0"))
    assert [s.label for s in pt.ota_layout(swapped)[1]] == ["y", "x"]


def test_auto_offsets_suffixes_spaces_and_flags():
    csv = """
    # comment line
      nvs , data , nvs , , 24K
    phy_init,data,phy,,4k
    factory, app, factory, , 0x100000
    # another comment

    storage, Data, 0x99, , 1M, encrypted:readonly
    custom, 0x40, 7, , 4096, readonly
    """
    parts = pc.parse_csv(csv)
    got = [(p.label, p.type, p.subtype, p.offset, p.size, p.flags) for p in parts]
    assert got == [
        ("nvs", 1, 2, 0x9000, 0x6000, 0),
        ("phy_init", 1, 1, 0xF000, 0x1000, 0),
        ("factory", 0, 0, 0x10000, 0x100000, 0),  # app: rounded up to 0x10000
        ("storage", 1, 0x99, 0x110000, 0x100000, 3),
        ("custom", 0x40, 7, 0x210000, 0x1000, 2),
    ]
    assert parts[3].encrypted and parts[3].readonly and not parts[0].encrypted


def test_auto_offset_alignment():
    parts = pc.parse_csv("a, data, nvs, , 0x3000\nb, data, phy, , 0x10\nc, data, phy, , 0x10\n"
                         "app0, app, ota_0, , 64K\n")
    assert [p.offset for p in parts] == [0x9000, 0xC000, 0xD000, 0x10000]


def test_subtype_names_and_numbers():
    csv = "".join(f"o{i}, app, ota_{i}, , 64K\n" for i in range(16))
    parts = pc.parse_csv(csv + "t, app, test, , 64K\nd, data, , , 4K\n")
    assert [p.subtype for p in parts[:16]] == list(range(0x10, 0x20))
    assert parts[16].subtype == 0x20
    assert parts[17].subtype == 0x06  # empty data subtype -> undefined
    names = {"ota": 0, "phy": 1, "nvs": 2, "coredump": 3, "nvs_keys": 4, "efuse": 5,
             "undefined": 6, "fat": 0x81, "spiffs": 0x82}
    for name, value in names.items():
        size = "0x2000" if name == "ota" else "0x3000"
        assert pc.parse_csv(f"x, data, {name}, , {size}\n")[0].subtype == value


@pytest.mark.parametrize(
    "csv, words",
    [
        ("a, data, nvs, 0x9000, 0x4000\nb, data, phy, 0xc000, 0x1000\n", "overlaps"),
        ("a, app, factory, 0x18000, 64K\n", "not aligned"),
        ("a, data, nvs, 0x9800, 0x4000\n", "not aligned"),
        ("a, data, nvs, , 0x4000\na, data, phy, , 0x1000\n", "duplicate"),
        ("a, data, nvs, 0x8000, 0x4000\n", "overlaps"),
        ("a, data, bogus, , 0x4000\n", "subtype"),
        ("a, blob, nvs, , 0x4000\n", "type"),
        ("a, data, nvs, , \n", "size"),
        ("a, data, nvs, , 0x4000, shiny\n", "flag"),
        ("a, app, , , 64K\n", "subtype"),
        ("averyveryverylongname, data, nvs, , 0x4000\n", "16 bytes"),
        ("a, data, ota, , 0x3000\n", "0x2000"),
        ("a, data, ota, , 0x2000\nb, data, ota, , 0x2000\n", "more than one otadata"),
        ("a, data, nvs, , 0x2000\n", "0x3000"),
        ("a, app, ota_0, , 0x10800\n", "multiple"),
        ("a, data, nvs, , 12Q\n", "size"),
    ],
)
def test_csv_errors(csv, words):
    with pytest.raises(DeviceError) as ei:
        pc.parse_csv(csv)
    assert reason(ei) == PARTITION_TABLE
    assert words in ei.value.message


def test_flash_size_check():
    with pytest.raises(DeviceError) as ei:
        pc.parse_csv(TWO_OTA_CSV, flash_size=2 * 1024 * 1024)
    assert "beyond" in ei.value.message


def test_binary_layout_and_round_trip():
    parts = pc.parse_csv(pc.DEFAULT_CSV)
    parts[0].flags = pt.FLAG_ENCRYPTED
    data = pc.to_binary(parts)
    assert len(data) == 0xC00
    first = data[:32]
    assert first[:2] == b"\xaa\x50" and first[2:4] == b"\x01\x02"
    assert first[4:8] == (0x9000).to_bytes(4, "little")
    assert first[8:12] == (0x4000).to_bytes(4, "little")
    assert first[12:28] == b"nvs" + b"\x00" * 13
    assert first[28:32] == b"\x01\x00\x00\x00"
    n = len(parts) * 32
    assert data[n : n + 16] == b"\xeb\xeb" + b"\xff" * 14
    assert data[n + 16 : n + 32] == hashlib.md5(data[:n]).digest()
    assert data[n + 32 :] == b"\xff" * (0xC00 - n - 32)
    assert pt.from_binary(data) == parts


def test_binary_known_answer_two_ota():
    # Entry bytes for "ota_0, app, ota_0, 0x110000, 1M" as gen_esp32part.py packs them.
    parts = pc.parse_csv(TWO_OTA_CSV)
    data = pc.to_binary(parts)
    expected = (b"\xaa\x50\x00\x10" + b"\x00\x00\x11\x00" + b"\x00\x00\x10\x00"
                + b"ota_0" + b"\x00" * 11 + b"\x00" * 4)
    assert data[4 * 32 : 5 * 32] == expected


def test_binary_errors():
    parts = pc.parse_csv(pc.DEFAULT_CSV)
    data = bytearray(pc.to_binary(parts))
    bad_md5 = bytearray(data)
    bad_md5[5 * 32 + 20] ^= 1
    bad_entry = bytearray(data)
    bad_entry[40] ^= 1  # change an offset: the MD5 no longer matches
    bad_magic = bytearray(data)
    bad_magic[32] = 0x00
    no_md5 = bytes(data[: 5 * 32]) + b"\xff" * (0xC00 - 5 * 32)
    for blob in (bad_md5, bad_entry, bad_magic, no_md5, b"", data[:100]):
        with pytest.raises(DeviceError) as ei:
            pt.from_binary(bytes(blob))
        assert reason(ei) == PARTITION_TABLE


def test_binary_with_valid_md5_still_checked():
    # an overlapping table with a correct MD5 is still rejected
    a = pt.Partition("a", 1, 2, 0x9000, 0x4000)
    b = pt.Partition("b", 1, 1, 0xA000, 0x1000)
    with pytest.raises(DeviceError) as ei:
        pt.from_binary(pc.to_binary([a, b]))
    assert "overlaps" in ei.value.message


def test_too_many_entries():
    # as gen_esp32part.py: entries + MD5 row must stay below 0xC00 (room for the end marker)
    parts = [pt.Partition(f"p{i}", 1, 0x81, 0x9000 + i * 0x1000, 0x1000) for i in range(94)]
    assert pt.from_binary(pc.to_binary(parts)) == parts
    with pytest.raises(DeviceError):
        pc.to_binary([*parts, pt.Partition("x", 1, 0x81, 0x100000, 0x1000)])


def test_ota_layout_needs_contiguous_slots():
    csv = "otadata, data, ota, , 0x2000\na, app, ota_0, , 64K\nb, app, ota_2, , 64K\n"
    with pytest.raises(DeviceError) as ei:
        pt.ota_layout(pc.parse_csv(csv))
    assert reason(ei) == NO_OTA_SLOT
    one = "otadata, data, ota, , 0x2000\na, app, ota_0, , 64K\n"
    with pytest.raises(DeviceError) as ei:
        pt.ota_layout(pc.parse_csv(one))
    assert "fewer than two" in ei.value.message and "no otadata" not in ei.value.message


def test_table_on_flash(tmp_path):
    f = Flash.create(str(tmp_path / "f.bin"), pt.DEFAULT_FLASH_SIZE)
    parts = pc.parse_csv(pc.DEFAULT_CSV)
    pc.write_table(f, parts)
    assert pt.read_table(f) == parts
    f.close()
