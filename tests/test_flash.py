import os
import signal
import subprocess
import sys

import pytest
from otaferry.device_fw.flash import SECTOR_SIZE, Flash, PowerCut
from otaferry.device_fw.reasons import FLASH_ERROR, FlashError


@pytest.fixture
def flash(tmp_path):
    f = Flash.create(str(tmp_path / "flash.bin"), 4 * SECTOR_SIZE)
    yield f
    f.close()


def test_create_is_erased(flash, tmp_path):
    assert flash.size == 4 * SECTOR_SIZE
    assert flash.read(0, flash.size) == b"\xff" * flash.size
    assert os.path.getsize(tmp_path / "flash.bin") == 4 * SECTOR_SIZE


def test_program_clears_bits_only(flash):
    flash.write(10, b"\x0f\xf0")
    assert flash.read(10, 2) == b"\x0f\xf0"
    flash.write(10, b"\x0e\x00")  # only clears bits: allowed
    assert flash.read(10, 2) == b"\x0e\x00"
    with pytest.raises(FlashError) as ei:
        flash.write(9, b"\xff\x1e\x00")  # byte at 10 needs a 0->1 change
    assert ei.value.reason == FLASH_ERROR
    assert ei.value.fields["addr"] == 10
    assert "0xa" in ei.value.message
    assert flash.read(9, 3) == b"\xff\x0e\x00"  # nothing written


def test_erase_sector_and_range(flash):
    flash.write(0, b"\x00" * (2 * SECTOR_SIZE))
    flash.erase_sector(SECTOR_SIZE)
    assert flash.read(SECTOR_SIZE - 1, 2) == b"\x00\xff"
    flash.erase_range(0, 2 * SECTOR_SIZE)
    assert flash.is_erased(0, 2 * SECTOR_SIZE)
    with pytest.raises(FlashError):
        flash.erase_sector(100)
    with pytest.raises(FlashError):
        flash.erase_range(0, 100)


def test_out_of_range(flash):
    with pytest.raises(FlashError):
        flash.read(flash.size - 1, 2)
    with pytest.raises(FlashError):
        flash.write(flash.size, b"\x00")
    with pytest.raises(FlashError):
        flash.erase_sector(flash.size)
    with pytest.raises(FlashError):
        flash.read(-1, 1)


def test_counters_and_trace(flash):
    flash.trace = []
    seen = []
    flash.on_op = lambda *a: seen.append(a)
    flash.write(0, b"\x00\x01")
    flash.erase_range(0, 2 * SECTOR_SIZE)
    flash.read(0, 10)
    assert flash.ops == 3 and flash.programs == 1 and flash.erases == 2
    assert flash.bytes_programmed == 2
    assert flash.trace == [("program", 0, 2), ("erase", 0, SECTOR_SIZE),
                           ("erase", SECTOR_SIZE, SECTOR_SIZE)]
    assert seen == flash.trace


def test_protect(flash):
    flash.protect(SECTOR_SIZE, SECTOR_SIZE, "ota_0")
    flash.write(SECTOR_SIZE - 1, b"\x00")  # just outside
    flash.read(SECTOR_SIZE, 10)  # reads are fine
    with pytest.raises(FlashError) as ei:
        flash.write(SECTOR_SIZE - 1, b"\x00\x00")
    assert ei.value.fields["region"] == "ota_0"
    with pytest.raises(FlashError) as ei:
        flash.erase_range(0, 2 * SECTOR_SIZE)
    assert ei.value.fields["region"] == "ota_0"
    assert flash.read(0, 1) == b"\xff"  # the range erase did nothing
    assert flash.ops == 1
    flash.unprotect("ota_0")
    flash.erase_sector(SECTOR_SIZE)


def test_file_size_must_be_sectors(tmp_path):
    p = tmp_path / "bad.bin"
    p.write_bytes(b"\xff" * 100)
    with pytest.raises(FlashError):
        Flash(str(p))
    with pytest.raises(FlashError):
        Flash.create(str(p), 1000)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_power_cut_program_partial(tmp_path, n):
    path = str(tmp_path / "f.bin")
    Flash.create(path, SECTOR_SIZE).close()
    f = Flash(path, cut_at=n)
    data = bytes(range(16))
    for i in range(n):
        f.write(100 + i, b"\x00")
    with pytest.raises(PowerCut):
        f.write(0, data)
    keep = 16 * (n % 4) // 4
    with pytest.raises(PowerCut):  # dead CPU: everything refused
        f.read(0, 1)
    f.close()
    g = Flash(path)
    assert g.read(0, 16) == data[:keep] + b"\xff" * (16 - keep)
    assert g.read(100, n) == b"\x00" * n
    g.close()


@pytest.mark.parametrize("n", [0, 1])
def test_power_cut_erase(tmp_path, n):
    path = str(tmp_path / "f.bin")
    f = Flash.create(path, 2 * SECTOR_SIZE)
    f.write(0, b"\x00" * (2 * SECTOR_SIZE))
    f.close()
    f = Flash(path)
    f.cut_at = f.ops + n  # settable attribute too
    if n:
        f.write(0, b"\x00")  # op 0: no-op program of zeros
    with pytest.raises(PowerCut):
        f.erase_range(0, 2 * SECTOR_SIZE)
    f.close()
    g = Flash(path)
    assert g.is_erased(0, SECTOR_SIZE) == bool(n % 2)
    assert g.read(SECTOR_SIZE, SECTOR_SIZE) == b"\x00" * SECTOR_SIZE  # second sector untouched
    g.close()


def test_sigkill_leaves_written_data(tmp_path):
    path = str(tmp_path / "f.bin")
    Flash.create(path, SECTOR_SIZE).close()
    code = (
        "import os, signal, sys\n"
        "from otaferry.device_fw.flash import Flash\n"
        "f = Flash(sys.argv[1])\n"
        "f.write(0, b'hello')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, path], check=False)
    assert proc.returncode == -signal.SIGKILL
    g = Flash(path)
    assert g.read(0, 6) == b"hello\xff"
    g.close()
