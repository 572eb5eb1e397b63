import hashlib
import shutil

import pytest
from otaferry.device_fw import boot as bt
from otaferry.device_fw import otadata as od
from otaferry.device_fw import partition_csv as pc
from otaferry.device_fw import partitions as pt
from otaferry.device_fw.flash import SECTOR_SIZE, Flash, PowerCut
from otaferry.device_fw.reasons import BAD_STATE, NO_OTA_SLOT, DeviceError

# A small flash (192 KiB) with the default layout's shape and 64 KiB slots.
CSV = """\
nvs,      data, nvs,     0x9000,  0x4000,
otadata,  data, ota,     0xd000,  0x2000,
phy_init, data, phy,     0xf000,  0x1000,
ota_0,    app,  ota_0,   0x10000, 64K,
ota_1,    app,  ota_1,   0x20000, 64K,
"""
FLASH_SIZE = 0x30000
PARTS = pc.parse_csv(CSV, flash_size=FLASH_SIZE)
SLOTS = pt.ota_layout(PARTS)[1]
IMG_A = bytes(range(256)) * 24  # 6 KiB: the factory-flashed image in ota_0
IMG_B = bytes(255 - b for b in IMG_A) + b"new"  # the update


class Device:
    """Test harness: images recorded by SHA-256, verify() reads them back."""

    def __init__(self, path, cut_at=None):
        self.flash = Flash(path, cut_at=cut_at)
        self.expected = {0: IMG_A, 1: IMG_B}

    def verify(self, slot):
        img = self.expected[slot]
        data = self.flash.read(SLOTS[slot].offset, len(img))
        return hashlib.sha256(data).digest() == hashlib.sha256(img).digest()

    def boot(self):
        return bt.boot(self.flash, PARTS, self.verify)

    def install(self, slot, image):
        p = SLOTS[slot]
        span = (len(image) + SECTOR_SIZE - 1) // SECTOR_SIZE * SECTOR_SIZE
        self.flash.erase_range(p.offset, span)
        self.flash.write(p.offset, image)
        bt.set_boot(self.flash, PARTS, slot)


@pytest.fixture
def factory(tmp_path):
    """A freshly flashed device: table, ota_0 = IMG_A, blank otadata."""
    path = str(tmp_path / "factory.bin")
    f = Flash.create(path, FLASH_SIZE)
    pc.write_table(f, PARTS)
    f.write(SLOTS[0].offset, IMG_A)
    f.close()
    return path


def copy(factory, tmp_path, name):
    p = str(tmp_path / name)
    shutil.copyfile(factory, p)
    return p


def test_first_boot_writes_initial_otadata(factory):
    d = Device(factory)
    r = d.boot()
    assert (r.slot, r.label, r.state, r.seq, r.fallback) == (0, "ota_0", od.VALID, 1, False)
    assert any("blank otadata" in line for line in r.log)
    r2 = d.boot()
    assert (r2.slot, r2.state) == (0, od.VALID)
    assert d.flash.ops == 2  # the second boot wrote nothing


def test_confirm_flow(factory):
    d = Device(factory)
    r = d.boot()
    d.flash.protect(SLOTS[0].offset, SLOTS[0].size, "running")
    d.install(1, IMG_B)  # never touches the running slot
    # the app cannot "confirm" the armed, never-booted image
    with pytest.raises(DeviceError) as ei:
        bt.confirm(d.flash, PARTS, r.slot)
    assert ei.value.reason == BAD_STATE
    d.flash.unprotect("running")
    r = d.boot()
    assert (r.slot, r.state, r.pending) == (1, od.PENDING_VERIFY, True)
    assert any("PENDING_VERIFY" in line for line in r.log)
    e = bt.confirm(d.flash, PARTS, r.slot)
    assert e.state == od.VALID
    ops = d.flash.ops
    bt.confirm(d.flash, PARTS, r.slot)  # already valid: no write
    assert d.flash.ops == ops
    r = d.boot()
    assert (r.slot, r.state) == (1, od.VALID)
    assert bt.state_of(d.flash, PARTS, 1) == od.VALID
    assert bt.next_update_slot(PARTS, r.slot) == 0


def test_rollback_when_never_confirmed(factory):
    d = Device(factory)
    d.boot()
    d.install(1, IMG_B)
    assert d.boot().slot == 1  # pending, the app dies without confirming
    r = d.boot()
    assert (r.slot, r.state) == (0, od.VALID)
    assert any("never confirmed: ABORTED" in line for line in r.log)
    assert bt.state_of(d.flash, PARTS, 1) == od.ABORTED
    assert d.boot().slot == 0
    # a second attempt at the update works
    d.install(1, IMG_B)
    r = d.boot()
    assert (r.slot, r.state) == (1, od.PENDING_VERIFY)


def test_mark_invalid(factory):
    d = Device(factory)
    d.boot()
    d.install(1, IMG_B)
    r = d.boot()
    bt.confirm(d.flash, PARTS, r.slot)
    assert bt.mark_invalid(d.flash, PARTS, r.slot, d.verify) == 0
    r = d.boot()
    assert (r.slot, r.state) == (0, od.VALID)
    assert bt.state_of(d.flash, PARTS, 1) == od.INVALID
    # nothing left to roll back to from ota_0
    with pytest.raises(DeviceError) as ei:
        bt.mark_invalid(d.flash, PARTS, 0)
    assert ei.value.reason == BAD_STATE
    with pytest.raises(DeviceError):
        bt.confirm(d.flash, PARTS, 1)  # not the running slot


def test_bad_image_is_never_booted(factory):
    d = Device(factory)
    d.boot()
    d.install(1, IMG_B)
    d.flash.write(SLOTS[1].offset + 100, b"\x00")  # corrupt it after the check
    r = d.boot()
    assert (r.slot, r.state, r.fallback) == (0, od.VALID, True)
    assert any("image check failed" in line for line in r.log)
    assert bt.state_of(d.flash, PARTS, 1) == od.ABORTED
    assert d.boot().fallback is False  # otadata now agrees with what runs


def test_no_bootable_image(factory):
    d = Device(factory)
    d.boot()
    d.flash.erase_sector(SLOTS[0].offset)
    with pytest.raises(DeviceError) as ei:
        d.boot()
    assert ei.value.reason == BAD_STATE


def test_blank_otadata_without_verify_boots_ota_0(factory):
    f = Flash(factory)
    r = bt.boot(f, PARTS)
    assert r.slot == 0
    f.close()


def test_seed_table_cannot_boot_ota(tmp_path):
    seed = "nvs, data, nvs, 0x9000, 0x6000,\nphy_init, data, phy, 0xf000, 0x1000,\n" \
           "factory, app, factory, 0x10000, 1M,\n"
    f = Flash.create(str(tmp_path / "s.bin"), 0x200000)
    with pytest.raises(DeviceError) as ei:
        bt.boot(f, pc.parse_csv(seed))
    assert ei.value.reason == NO_OTA_SLOT
    f.close()


# -- power cuts ---------------------------------------------------------------


def confirm_scenario(d):
    r = d.boot()
    d.install(1, IMG_B)
    r = d.boot()
    bt.confirm(d.flash, PARTS, r.slot)
    d.boot()


def rollback_scenario(d):
    d.boot()
    d.install(1, IMG_B)
    d.boot()
    d.boot()  # never confirmed: abort
    d.boot()


def invalid_scenario(d):
    r = d.boot()
    d.install(1, IMG_B)
    r = d.boot()
    bt.confirm(d.flash, PARTS, r.slot)
    bt.mark_invalid(d.flash, PARTS, r.slot)
    d.boot()


def update_from_b_scenario(d):
    """Second update, back into ota_0, after B was confirmed (sectors swap roles)."""
    d.expected = {0: IMG_A, 1: IMG_B}
    r = d.boot()
    d.install(1, IMG_B)
    r = d.boot()
    bt.confirm(d.flash, PARTS, r.slot)
    d.install(0, IMG_A)
    r = d.boot()
    bt.confirm(d.flash, PARTS, r.slot)
    d.boot()


@pytest.mark.parametrize("shift", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "scenario, final",
    [(confirm_scenario, 1), (rollback_scenario, 0), (invalid_scenario, 0),
     (update_from_b_scenario, 0)],
)
def test_power_cut_at_every_op(factory, tmp_path, scenario, final, shift):
    """Cut at every op; ``shift`` no-op programs first, so each op is cut in
    every variant Flash derives from the op index (erase done / not done,
    0 / 1/4 / 1/2 / 3/4 of a program)."""

    def run(d):
        for _ in range(shift):
            d.flash.write(0, b"\xff")  # legal, changes nothing, counts as an op
        scenario(d)

    ref = Device(copy(factory, tmp_path, "ref.bin"))
    run(ref)
    total = ref.flash.ops
    assert ref.boot().slot == final
    for cut in range(shift, total):
        d = Device(copy(factory, tmp_path, "cut.bin"), cut_at=cut)
        with pytest.raises(PowerCut):
            run(d)
        d.flash.close()
        d = Device(d.flash.path)
        r = d.boot()  # must not raise: some good image boots
        assert d.verify(r.slot), (cut, r.log)
        # without anyone confirming, repeated boots settle on a VALID slot
        for _ in range(3):
            r = d.boot()
            if r.state == od.PENDING_VERIFY:
                continue
            assert r.state == od.VALID, (cut, r.log)
        assert r.slot in (0, 1) and d.verify(r.slot)
        d.flash.close()


def test_factory_app_order_follows_esp_idf():
    """bootloader_utility_load_boot_image: the chosen slot, lower OTA slots down to
    the factory app, then higher slots; with nothing selected, factory then ota_0 up."""
    assert bt._candidates(2, None, 3, True) == [2, 1, 0, 3]
    assert bt._candidates(0, None, 3, True) == [0, 3, 1, 2]
    assert bt._candidates(3, None, 3, True) == [3, 0, 1, 2]
    assert bt._candidates(1, None, 2, False) == [1, 0]
