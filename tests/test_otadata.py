import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from otaferry.device_fw import otadata as od
from otaferry.device_fw.flash import SECTOR_SIZE, Flash, PowerCut
from otaferry.device_fw.reasons import BAD_STATE, DeviceError

OFF = 2 * SECTOR_SIZE  # otadata partition at sector 2 of a small flash


@pytest.fixture
def path(tmp_path):
    p = str(tmp_path / "f.bin")
    Flash.create(p, 4 * SECTOR_SIZE).close()
    return p


def open_od(path, slots=2, cut_at=None):
    f = Flash(path, cut_at=cut_at)
    return f, od.OtaData(f, OFF, slots)


def test_crc_known_answer():
    # ESP-IDF: crc32_le(UINT32_MAX, &ota_seq, 4); seq 1 -> 0x4743989A
    assert od.seq_crc(1) == 0x4743989A


def test_entry_bytes():
    e = od.Entry(1, od.VALID)
    raw = e.pack()
    assert len(raw) == 32
    assert raw == (b"\x01\x00\x00\x00" + b"\xff" * 20 + b"\x02\x00\x00\x00"
                   + struct.pack("<I", 0x4743989A))
    back = od.Entry.unpack(raw, 1)
    assert (back.seq, back.state, back.crc, back.index) == (1, od.VALID, 0x4743989A, 1)
    assert back.valid and back.crc_ok


def test_validity_rules():
    assert not od.Entry.unpack(b"\xff" * 32).valid  # blank
    assert not od.Entry(3, od.VALID, crc=0).valid  # bad CRC
    assert not od.Entry(3, od.INVALID).valid
    assert not od.Entry(3, od.ABORTED).valid
    for s in (od.NEW, od.PENDING_VERIFY, od.VALID, od.UNDEFINED):
        assert od.Entry(3, s).valid
    assert od.Entry(3, od.VALID).slot(2) == 0
    assert od.Entry(4, od.VALID).slot(2) == 1
    assert od.Entry(0, od.VALID).slot(3) == 0  # uint32 wrap as in C: 0xFFFFFFFF % 3


def esp_idf_next_seq(cur, slot, count):
    base = (slot + 1) % count
    i = 0
    while cur > base + i * count:
        i += 1
    return base + i * count


@given(st.integers(1, 10_000), st.integers(1, 16), st.data())
def test_next_seq_matches_esp_idf(cur, count, data):
    slot = data.draw(st.integers(0, count - 1))
    if (cur - 1) % count == slot:
        return  # same slot: ESP-IDF rewrites in place instead
    seq = od.next_seq(cur, slot, count)
    assert seq == esp_idf_next_seq(cur, slot, count)
    assert seq > cur and (seq - 1) % count == slot


def test_fresh_then_select_sequence(path):
    f, o = open_od(path)
    assert o.active() is None and o.boot_slot() is None
    e = o.select(1)
    assert (e.index, e.seq, e.state) == (0, 2, od.NEW)
    assert o.boot_slot() == 1
    o.set_state(od.VALID)
    e = o.select(0)
    assert (e.index, e.seq) == (1, 3)
    assert o.boot_slot() == 0
    e = o.select(1)
    assert (e.index, e.seq) == (0, 4)  # never the sector holding the active entry
    assert o.state_of(1) == od.NEW and o.state_of(0) == od.NEW
    # selecting the slot the active entry already points to rewrites its state only
    e = o.select(1, od.UNDEFINED)
    assert (e.index, e.seq, e.state) == (0, 4, od.UNDEFINED)
    f.close()


def test_set_state_and_fallback(path):
    f, o = open_od(path)
    o.select(0, od.VALID)
    o.select(1)
    assert o.boot_slot() == 1
    e = o.set_state(od.PENDING_VERIFY)
    assert (e.index, e.seq) == (1, 2)
    o.set_state(od.ABORTED)
    assert o.boot_slot() == 0  # previous entry takes over
    assert o.state_of(1) == od.ABORTED
    o.set_state(od.INVALID)  # now acts on ota_0's entry
    assert o.active() is None
    with pytest.raises(DeviceError) as ei:
        o.set_state(od.VALID)
    assert ei.value.reason == BAD_STATE
    with pytest.raises(DeviceError):
        o.select(2)
    f.close()


def test_reads_esp_idf_image(path):
    # otadata as ESP-IDF writes it after esp_ota_set_boot_partition(ota_1) on a
    # blank otadata with rollback enabled: entry 0 = seq 2, NEW.
    f = Flash(path)
    raw = struct.pack("<I", 2) + b"\xff" * 20 + struct.pack("<II", 0, od.seq_crc(2))
    f.write(OFF, raw)
    o = od.OtaData(f, OFF, 2)
    assert o.boot_slot() == 1 and o.active().state == od.NEW
    f.close()


def _trace_len(path, action):
    f, o = open_od(path)
    before = f.ops
    action(o)
    n = f.ops - before
    f.close()
    return n


@pytest.mark.parametrize("target_state", [od.VALID, od.ABORTED, od.INVALID, od.PENDING_VERIFY])
def test_power_cut_set_state(tmp_path, target_state):
    base = str(tmp_path / "base.bin")
    Flash.create(base, 4 * SECTOR_SIZE).close()
    f, o = open_od(base)
    o.select(0, od.VALID)
    o.select(1)
    o.set_state(od.PENDING_VERIFY)
    f.close()
    with open(base, "rb") as fh:
        image = fh.read()
    n_ops = _trace_len(base, lambda o: o.set_state(target_state))
    assert n_ops == 2
    for cut in range(n_ops):
        p = str(tmp_path / f"c{cut}.bin")
        with open(p, "wb") as fh:
            fh.write(image)
        f, o = open_od(p, cut_at=cut)
        with pytest.raises(PowerCut):
            o.set_state(target_state)
        f.close()
        f, o = open_od(p)
        act = o.active()
        # either the update landed or the previous boot target (ota_0, VALID) is back
        assert act is not None
        got = (act.slot(2), act.state)
        assert got in {(1, target_state), (1, od.PENDING_VERIFY), (0, od.VALID)}
        # the other sector (ota_0's entry) is never touched
        assert o.read()[0].seq == 1 and o.read()[0].state == od.VALID
        f.close()


def test_power_cut_select_keeps_active(tmp_path):
    base = str(tmp_path / "base.bin")
    Flash.create(base, 4 * SECTOR_SIZE).close()
    f, o = open_od(base)
    o.select(0, od.VALID)
    f.close()
    with open(base, "rb") as fh:
        image = fh.read()
    n_ops = _trace_len(base, lambda o: o.select(1))
    for cut in range(n_ops):
        p = str(tmp_path / f"c{cut}.bin")
        with open(p, "wb") as fh:
            fh.write(image)
        f, o = open_od(p, cut_at=cut)
        with pytest.raises(PowerCut):
            o.select(1)
        f.close()
        f, o = open_od(p)
        assert o.boot_slot() in (0, 1)
        assert o.read()[0].valid and o.read()[0].seq == 1  # old entry untouched
        f.close()
