"""One flash file, one owner: a device holding its flash locks out every other
writer (a second device, ``flash init``, ``device install`` / ``boot``), and
the lock goes when the holder does, as power does on a power cut."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
from otaferry.device_fw.device import Device
from otaferry.device_fw.flash import Flash, FlashBusy, PowerCut
from otaferry.device_fw.reasons import FlashError
from otaferry.tools.sample_fw import make_image


def make(path: Path) -> Path:
    Device.create(
        str(path),
        hw="b",
        chip="esp32",
        trusted_keys=[bytes(32)],
        image=make_image("1.0.0"),
        version="1.0.0",
    ).close()
    return path


def test_a_second_writer_is_refused_and_the_file_left_alone(tmp_path: Path) -> None:
    path = make(tmp_path / "f.bin")
    before = path.read_bytes()
    with Device(str(path)):
        with pytest.raises(FlashBusy) as exc:
            Device(str(path))
        assert exc.value.fields["path"] == str(path)
        with pytest.raises(FlashBusy):
            Flash.create(str(path), 4096 * 16)  # would have truncated the file
        assert path.read_bytes() == before
        # a reader needs no lock, and cannot write
        with Device(str(path), read_only=True) as ro:
            assert ro.info()["slots"][0]["version"] == "1.0.0"
            with pytest.raises(FlashError):
                ro.flash.erase_sector(0x9000)
    with Device(str(path)) as again:  # released on close
        assert again.info()["running_slot"] == 0


def test_a_power_cut_releases_the_lock(tmp_path: Path) -> None:
    path = make(tmp_path / "f.bin")
    dev = Device(str(path), cut_at=0)
    with pytest.raises(PowerCut):
        dev.provision(new_key=True)  # the first flash op is cut
    # the dead instance is not closed, as a crashed device is not; power is off anyway
    with Device(str(path)) as after:
        assert after.link_key() is not None


def test_create_holds_the_lock_from_the_first_byte(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    flash = Flash.create(str(path), 4096 * 4)
    try:
        with open(path, "rb") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        flash.close()
