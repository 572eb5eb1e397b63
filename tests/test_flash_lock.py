"""One flash file, one owner: a device holding its flash locks out every other
writer (a second device, ``flash init``, ``device install`` / ``boot``), and
the lock goes when the holder does, as power does on a power cut."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from otaferry.device_fw.device import Device
from otaferry.device_fw.flash import Flash, FlashBusy, PowerCut
from otaferry.device_fw.reasons import FlashError
from otaferry.tools.cli import main
from otaferry.tools.sample_fw import make_image

ONE_LINE = re.compile(
    r"otaferry: error\[BAD_STATE\]: flash file \S+ is held by (.*): stop it first"
)


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


def _wait_locked(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    with open(path, "rb") as f:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            time.sleep(0.05)
    raise AssertionError("device run never took the flash lock")


def test_cli_refuses_while_device_run_serves_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k.key"
    assert main(["keygen", str(key)]) == 0
    (tmp_path / "fw.bin").write_bytes(make_image("1.0.0"))
    flash = tmp_path / "flash.bin"
    init = ["flash", "init", "--hw", "b", "--pubkey", f"{key}.pub",
            "--image", str(tmp_path / "fw.bin"), str(flash)]  # fmt: skip
    assert main(init) == 0
    (tmp_path / "u.ota").write_bytes(b"")
    capsys.readouterr()
    proc = subprocess.Popen(
        [sys.executable, "-m", "otaferry", "device", "run", "--quiet",
         "--port", "loop://", "--flash", str(flash)],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_locked(flash, proc)
        before = flash.read_bytes()
        for argv in (
            init,
            ["device", "install", "--flash", str(flash), str(tmp_path / "u.ota")],
            ["device", "boot", "--flash", str(flash)],
            ["device", "provision", "--flash", str(flash), "--new-key"],
        ):
            assert main(argv) == 1, argv
            err = capsys.readouterr().err
            m = ONE_LINE.fullmatch(err.rstrip("\n"))
            assert m and err.count("\n") == 1, err
            assert f"pid {proc.pid}" in m.group(1) and "device run" in m.group(1), err
        # a second device on the same file: one line, before it says it serves
        second = subprocess.run(
            [sys.executable, "-m", "otaferry", "device", "run",
             "--port", "loop://", "--flash", str(flash)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1 and ONE_LINE.fullmatch(second.stderr.rstrip("\n"))
        assert flash.read_bytes() == before
        # looking is allowed while it runs
        assert main(["device", "info", "--flash", str(flash)]) == 0
        assert "ota_0" in capsys.readouterr().out
    finally:
        proc.send_signal(signal.SIGKILL)  # a power cut: the kernel drops the lock
        proc.wait()
    assert main(init) == 0
    assert os.path.getsize(flash) == 4 * 1024 * 1024
