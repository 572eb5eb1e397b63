"""``otaferry device query`` against ``otaferry device run`` over real ptys (issue [N] 6)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from otaferry.device_fw.device import Device
from otaferry.protocol.keys import SigningKey
from otaferry.protocol.x25519keys import LinkPrivateKey, LinkPublicKey, load_link_public_key
from paths import SIMBA_SHELL_OLD

OTAFERRY = str(Path(sys.executable).with_name("otaferry"))


def _board(tmp_path: Path, gw: LinkPrivateKey) -> Path:
    """A simulated board running 1.0 that accepts the gateway ``gw``."""
    flash = tmp_path / "flash.bin"
    vendor = SigningKey.from_seed(bytes(32)).public.raw
    Device.create(str(flash), hw="board", chip="esp32", trusted_keys=[vendor],
                  image=SIMBA_SHELL_OLD.read_bytes(), version="1.0",
                  gateways=[gw.public.raw]).close()  # fmt: skip
    return flash


def test_query_identifies_the_device_and_reads_its_state_over_the_link(tmp_path: Path) -> None:
    gw = LinkPrivateKey.from_raw(bytes(range(1, 33)))
    (tmp_path / "gw.key").write_bytes(gw.to_pem())
    flash = _board(tmp_path, gw)
    with Device(str(flash)) as dev:
        real = LinkPublicKey.from_raw(dev.link_public())
    a, b = tmp_path / "a", tmp_path / "b"
    procs = [subprocess.Popen([OTAFERRY, "linesim", "--baud", "921600", str(a), str(b)],
                              stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        for _ in range(100):
            if a.exists() and b.exists():
                break
            time.sleep(0.05)
        procs.append(subprocess.Popen([OTAFERRY, "device", "run", "--quiet", "--port", str(b),
                                       "--baud", "921600", "--flash", str(flash)]))  # fmt: skip
        common = ["device", "query", "--port", str(a), "--baud", "921600"]
        first = subprocess.run([OTAFERRY, *common, "--identify", "--save",
                                str(tmp_path / "dev.pub")],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert real.key_id.hex() in first.stdout and "unauthenticated" in first.stderr
        assert load_link_public_key(tmp_path / "dev.pub").raw == real.raw
        state = subprocess.run([OTAFERRY, *common, "--link-key", str(tmp_path / "gw.key"),
                                "--device-pub", str(tmp_path / "dev.pub"), "--json"],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert state.returncode == 0, state.stderr
        doc = json.loads(state.stdout)
        assert doc["hw"] == "board" and doc["chip"] == "esp32"
        assert doc["running_version"] == "1.0" and doc["security_counter"] == 0
        assert doc["pending_checkin"] is None and doc["last_failure"] is None
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)


def test_device_run_waits_for_its_port_to_come_back(tmp_path: Path) -> None:
    """Issue [N] 1: device run died with a raw SerialException when its port went
    away. A board does not: it says so, waits, and serves again on the same path."""
    gw = LinkPrivateKey.from_raw(bytes(range(1, 33)))
    flash = _board(tmp_path, gw)
    a, b = tmp_path / "a", tmp_path / "b"

    def line() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([OTAFERRY, "linesim", "--baud", "921600", str(a), str(b)],
                                stderr=subprocess.DEVNULL)  # fmt: skip
        for _ in range(100):
            if a.exists() and b.exists():
                break
            time.sleep(0.05)
        return proc

    sim = line()
    log = tmp_path / "device.log"
    device = subprocess.Popen([OTAFERRY, "device", "run", "--port", str(b), "--baud", "921600",
                               "--flash", str(flash)], stderr=log.open("wb"))  # fmt: skip
    try:
        for _ in range(600):  # until it serves (on a loaded machine, seconds)
            if "device: serving" in log.read_text():
                break
            time.sleep(0.05)
        assert "device: serving" in log.read_text(), log.read_text()
        sim.terminate()
        sim.wait(10)
        for _ in range(400):
            if "waiting for it to come back" in log.read_text():
                break
            time.sleep(0.05)
        assert device.poll() is None, log.read_text()  # still running
        sim = line()
        for _ in range(300):
            if "is back" in log.read_text():
                break
            time.sleep(0.1)
        assert "is back" in log.read_text(), log.read_text()
        query = subprocess.run([OTAFERRY, "device", "query", "--port", str(a), "--baud",
                                "921600", "--identify"], capture_output=True, text=True,
                               timeout=60)  # fmt: skip
        assert query.returncode == 0, query.stderr + log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        device.terminate()
        device.wait(10)
        sim.terminate()
        sim.wait(10)
