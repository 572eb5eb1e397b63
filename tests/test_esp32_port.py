"""device_fw/ports/esp32.py against a stand-in with esp32.Partition's exact API
(tests/fake_esp32.py): installs (full deflate and delta) land byte for byte in
the next-update slot through readblocks/writeblocks(offset)/ioctl(6), boot is
switched with set_boot(), a new image confirms with
mark_app_valid_cancel_rollback(), the state lives in its own partition, and
nothing touches the running slot or is erased before the codec is known."""

import io

import pytest
from fake_esp32 import Board, Module
from link_harness import KEY, image
from otaferry.device_fw import otadata as OD
from otaferry.device_fw.device import Device
from otaferry.device_fw.installer import install_stream
from otaferry.device_fw.ports import esp32 as E
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.artifact import build_delta, build_full
from otaferry.protocol.errors import Reason

CSV = """\
nvs,      data, nvs,   0x9000,   0x4000,
otadata,  data, ota,   0xd000,   0x2000,
phy_init, data, phy,   0xf000,   0x1000,
ota_0,    app,  ota_0, 0x10000,  0x40000,
ota_1,    app,  ota_1, 0x50000,  0x40000,
otaferry, data, 0x40,  0x90000,  0x4000,
"""
OLD = image(64)
NEW = image(64, b"new")[:40000] + OLD[40000:]


def board(tmp_path):
    """A board as esptool leaves it: table, otadata, OLD in ota_0 (the simulator
    flashes it; its nvs state is ignored by the esp32 port)."""
    path = tmp_path / "factory.bin"
    Device.create(str(path), hw="hw", chip="esp32", trusted_keys=[KEY.public.raw], image=OLD,
                  version="1.0", partitions_csv=CSV, size=0x100000).close()  # fmt: skip
    b = Board(path.read_bytes())
    esp32 = Module(b)
    E.setup("hw", "esp32", [KEY.public.raw], "1.0", len(OLD), esp32=esp32).close()
    return b, esp32


def ota(kind, counter=1, **kw):
    common = dict(hw=["hw"], chip="esp32", version="2.0", security_counter=counter)
    if kind == "delta":
        return build_delta(OLD, NEW, KEY, **common)
    return build_full(NEW, KEY, **common, **kw)


@pytest.mark.parametrize("kind", ["delta", "deflate"])
def test_install_boot_confirm(tmp_path, kind):
    b, esp32 = board(tmp_path)
    ota0 = bytes(b.flash[0x10000 : 0x50000])
    with E.open_device(esp32) as dev:
        assert dev.platform.running == 0 and dev.passive_slot().label == "ota_1"
        art = ota(kind, codec="deflate") if kind == "deflate" else ota(kind)
        result = install_stream(dev, io.BytesIO(art))
        assert result["slot"] == "ota_1"
    assert bytes(b.flash[0x50000 : 0x50000 + len(NEW)]) == NEW  # byte for byte
    assert bytes(b.flash[0x10000 : 0x50000]) == ota0  # the running slot untouched
    b.reboot()  # set_boot() selected ota_1 (NEW): the bootloader makes it PENDING_VERIFY
    assert b.running.label == "ota_1"
    with E.open_device(esp32) as dev:
        boot = dev.power_on(checkin=True)
        assert boot["label"] == "ota_1" and boot["state"] == "PENDING_VERIFY"
        assert dev.running_pending()
        dev.confirm_running()  # mark_app_valid_cancel_rollback()
        assert dev.platform.state_of(1) == OD.VALID
        assert dev.identity()["security_counter"] == 1
    b.reboot()
    assert b.running.label == "ota_1"


def test_unconfirmed_image_rolls_back_on_reset(tmp_path):
    b, esp32 = board(tmp_path)
    with E.open_device(esp32) as dev:
        install_stream(dev, io.BytesIO(ota("delta")))
    b.reboot()
    with E.open_device(esp32) as dev:
        dev.power_on(checkin=True)
        dev.abandon_running(Reason.CHECKIN_TIMEOUT)  # no check-in: give up, then reset
    b.reboot()  # the bootloader aborts the PENDING_VERIFY entry
    assert b.running.label == "ota_0"
    with E.open_device(esp32) as dev:
        boot = dev.power_on(checkin=True)
        assert boot["label"] == "ota_0"
        assert dev.failures()[-1]["reason"] == Reason.CHECKIN_TIMEOUT


def test_unsupported_codec_refused_before_any_erase(tmp_path):
    b, esp32 = board(tmp_path)
    with E.open_device(esp32) as dev:
        art = ota("full", codec="zstd")
        from otaferry.device_fw import codecs

        saved = codecs.FULL.pop("zstd")  # a MicroPython board: no zstd decoder
        try:
            erases = b.erases
            with pytest.raises(DeviceError) as exc:
                install_stream(dev, io.BytesIO(art))
            assert exc.value.reason == Reason.UNSUPPORTED_CODEC
            assert b.erases == erases
        finally:
            codecs.FULL["zstd"] = saved


def test_running_slot_is_locked(tmp_path):
    _b, esp32 = board(tmp_path)
    with E.open_device(esp32) as dev:
        with pytest.raises(DeviceError) as exc:
            dev.active_slot().erase(0, 4096)
        assert exc.value.reason == Reason.FLASH_ERROR
        with pytest.raises(DeviceError):
            dev.active_slot().write(0, b"\x00")
        with pytest.raises(DeviceError):  # a slot refuses offsets outside itself
            dev.passive_slot().read(0x40000 - 2, 4)


def test_state_lives_in_its_own_partition(tmp_path):
    b, esp32 = board(tmp_path)
    nvs = bytes(b.flash[0x9000 : 0xD000])
    with E.open_device(esp32) as dev:
        dev.provision(require_secure=False)
    assert bytes(b.flash[0x9000 : 0xD000]) == nvs  # ESP-IDF's nvs is MicroPython's own
    with E.open_device(esp32) as dev:
        assert dev.require_secure() is False


def test_missing_store_partition_is_one_clear_error(tmp_path):
    _b, esp32 = board(tmp_path)
    with pytest.raises(DeviceError) as exc:
        E.Esp32Platform(esp32, store_label="nothere")
    assert exc.value.reason == Reason.PARTITION_TABLE
