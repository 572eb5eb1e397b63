import struct

import pytest
from otaferry.device_fw import store as st
from otaferry.device_fw.flash import SECTOR_SIZE, Flash, PowerCut
from otaferry.device_fw.reasons import RESOURCE_LIMIT, DeviceError

OFF = SECTOR_SIZE
SIZE = 3 * SECTOR_SIZE


def new_flash(tmp_path, name="f.bin"):
    p = str(tmp_path / name)
    Flash.create(p, 5 * SECTOR_SIZE).close()
    return p


def states(n):
    # ~600-byte states so a series of saves wraps through every sector
    return [{"seq": i, "id": b"dev-1", "progress": [i, i * 7], "pad": "x" * 580} for i in range(n)]


def test_empty_then_save_load(tmp_path):
    p = new_flash(tmp_path)
    f = Flash(p)
    s = st.Store(f, OFF, SIZE)
    assert s.load() is None
    s.save({"a": 1})
    assert s.load() == {"a": 1}
    s.save({"a": 2, "b": b"\x00"})
    assert s.load() == {"a": 2, "b": b"\x00"}
    f.close()
    f = Flash(p)
    assert st.Store(f, OFF, SIZE).load() == {"a": 2, "b": b"\x00"}
    f.close()


def test_record_layout(tmp_path):
    f = Flash(new_flash(tmp_path))
    st.Store(f, OFF, SIZE).save({"k": 5})
    raw = f.read(OFF, 32)
    body = b"\x81\xa1k\x05"
    assert raw[:8] == b"ST" + struct.pack("<HI", len(body), 1)
    assert raw[8:12] == body
    (crc,) = struct.unpack("<I", raw[12:16])
    assert crc == st._crc(raw[:12])
    assert raw[16:] == b"\xff" * 16
    f.close()


def test_wraps_and_never_erases_newest(tmp_path):
    f = Flash(new_flash(tmp_path))
    s = st.Store(f, OFF, SIZE)
    f.protect(0, OFF, "below")
    f.protect(OFF + SIZE, SECTOR_SIZE, "above")
    for i, state in enumerate(states(40)):
        s.save(state)
        assert s.load() == state
        assert st.Store(f, OFF, SIZE).load() == state, i
    assert f.erases > 3  # it went round the sectors more than once
    f.close()


def test_limits(tmp_path):
    f = Flash(new_flash(tmp_path))
    with pytest.raises(DeviceError) as ei:
        st.Store(f, OFF, SECTOR_SIZE)
    assert ei.value.reason == RESOURCE_LIMIT
    s = st.Store(f, OFF, SIZE)
    with pytest.raises(DeviceError) as ei:
        s.save({"big": b"\x00" * SECTOR_SIZE})
    assert ei.value.reason == RESOURCE_LIMIT
    s.save({"big": b"\x00" * (st.MAX_BODY - 10)})  # the largest that fits
    assert len(s.load()["big"]) == st.MAX_BODY - 10
    f.close()


def test_garbage_partition_is_reclaimed(tmp_path):
    # e.g. an ESP-IDF NVS image left in the partition
    f = Flash(new_flash(tmp_path))
    f.write(OFF, b"\xfe\xff\xff\xff" + bytes(range(200)))
    f.write(OFF + SECTOR_SIZE, b"ST\x10\x00" + b"\x00" * 30)  # bad CRC
    s = st.Store(f, OFF, SIZE)
    assert s.load() is None
    s.save({"x": 1})
    assert st.Store(f, OFF, SIZE).load() == {"x": 1}
    f.close()


def test_torn_record_with_intact_header_is_skipped():
    data = bytearray(b"\xff" * SECTOR_SIZE)
    rec1 = b"ST" + struct.pack("<HI", 1, 1) + b"\xc0"
    rec1 += struct.pack("<I", st._crc(rec1))
    torn = b"ST" + struct.pack("<HI", 3, 2) + b"\x81"  # body and CRC never written
    data[: len(rec1)] = rec1
    data[len(rec1) : len(rec1) + len(torn)] = torn
    records, free = st.scan_sector(bytes(data))
    assert records == [(1, b"\xc0")]
    assert free == len(rec1) + 8 + 3 + 4
    data[len(rec1) + 1] = 0xFF  # torn inside the magic: length cannot be trusted
    assert st.scan_sector(bytes(data))[1] is None


@pytest.mark.parametrize("shift", [0, 1, 2, 3])
def test_power_cut_at_every_op(tmp_path, shift):
    """A cut at any op during a series of saves: load() gives the old or the new state.

    ``shift`` no-op programs first, so every op is cut in each variant Flash
    derives from the op index."""
    seq = states(24)

    def saves(f):
        for _ in range(shift):
            f.write(0, b"\xff")  # legal, changes nothing, counts as an op
        s = st.Store(f, OFF, SIZE)
        for i, state in enumerate(seq):
            s.save(state)
            yield i

    ref = new_flash(tmp_path, "ref.bin")
    f = Flash(ref)
    it = saves(f)
    next(it)
    first_ops = f.ops
    for _ in it:
        pass
    total = f.ops
    f.close()
    assert total > 20
    for cut in range(first_ops, total):
        p = new_flash(tmp_path, "c.bin")
        f = Flash(p, cut_at=cut)
        done = -1
        with pytest.raises(PowerCut):
            for done in saves(f):  # noqa: B007 - ``done`` is read after the cut
                pass
        f.close()
        f = Flash(p)
        got = st.Store(f, OFF, SIZE).load()
        assert got in (seq[done], seq[done + 1]), (cut, done)
        # and the store keeps working after the cut
        s2 = st.Store(f, OFF, SIZE)
        s2.save(seq[0])
        assert st.Store(f, OFF, SIZE).load() == seq[0]
        f.close()
