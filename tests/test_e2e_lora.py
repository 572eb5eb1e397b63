"""End to end over emulated LoRa modems: ``otaferry lora-sim`` (real ptys, one per
modem, each speaking its modem's serial protocol), ``otaferry device run
--lora-modem`` behind the device's modem, ``otaferry push --lora-modem --to`` on
the gateway's; then the device boots the new image. One run per modem kind, and
one with the device under ``micropython`` (``device run --runtime micropython``).

US915 at SF7 / 500 kHz keeps it short (no duty cycle to wait out, 400 ms
dwell enforced); the emulator's STATS.json must show no violation.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from otaferry.device_fw.device import Device
from otaferry.protocol.artifact import build_full
from otaferry.protocol.keys import SigningKey
from otaferry.protocol.x25519keys import LinkPrivateKey

pytestmark = pytest.mark.timeout(120)

OTAFERRY = str(Path(sys.executable).with_name("otaferry"))
KEY = SigningKey.from_seed(hashlib.sha256(b"e2e lora").digest())
GATEWAY = LinkPrivateKey.from_raw(hashlib.sha256(b"e2e lora gateway").digest())
RADIO = ["--region", "US915", "--sf", "7", "--bw", "500", "--cr", "5"]


def _image(seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(rng.randbytes(200) * 3 for _ in range(8))  # 4.8 KB, compressible


def _wait_for(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


@pytest.mark.parametrize(("modem", "runtime"), [("rylr998", "cpython"), ("rak3172", "cpython"),
                                               ("e22", "cpython"), ("rak3172", "micropython")])
def test_push_over_lora_sim_completes_and_boots(tmp_path: Path, modem: str, runtime: str) -> None:
    """(``micropython``: the device's loop behind its modem in the interpreter,
    ``device run --runtime micropython --lora-modem``, its full image in deflate.)"""
    old, new = _image(1), _image(2)
    flash = tmp_path / "flash.bin"
    Device.create(
        str(flash), hw="hw", chip="chip", trusted_keys=[KEY.public.raw], image=old,
        version="old", gateways=[GATEWAY.public.raw],
    ).close()  # fmt: skip
    with Device(str(flash)) as dev:
        (tmp_path / "dev.pub").write_bytes(dev.link_public())
    gw_key = tmp_path / "gw.key"
    gw_key.write_bytes(GATEWAY.to_pem())
    dev_pub = tmp_path / "dev.pem"
    from otaferry.protocol.x25519keys import LinkPublicKey

    dev_pub.write_bytes(LinkPublicKey.from_raw((tmp_path / "dev.pub").read_bytes()).to_pem())
    ota = tmp_path / "new.ota"
    codec = "deflate" if runtime == "micropython" else "zstd"  # MicroPython has no zstd
    ota.write_bytes(build_full(new, KEY, hw=["hw"], chip="chip", version="new", security_counter=1,
                               codec=codec))  # fmt: skip
    gw_pty, dev_pty, stats = tmp_path / "gw", tmp_path / "dev1", tmp_path / "STATS.json"
    sim = subprocess.Popen(
        [OTAFERRY, "lora-sim", "--modem", modem, *RADIO, "--seed", "5",
         "--stats", str(stats), str(gw_pty), str(dev_pty)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    device = None
    log = tmp_path / "device.log"
    try:
        _wait_for(dev_pty)
        _wait_for(gw_pty)
        device = subprocess.Popen(
            [OTAFERRY, "device", "run", "--quiet", "--runtime", runtime, "--code", "romfs",
             "--lora-modem", modem, "--address", "1", *RADIO, "--port", str(dev_pty),
             "--flash", str(flash)],
            stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        )  # fmt: skip
        push = subprocess.run(
            [OTAFERRY, "push", "--lora-modem", modem, "--to", "1", *RADIO, "--port", str(gw_pty),
             "--link-key", str(gw_key), "--device-pub", str(dev_pub), "--json-progress",
             str(ota)],
            capture_output=True, timeout=90,
        )  # fmt: skip
        assert push.returncode == 0, push.stderr.decode() + log.read_text()
        events = [json.loads(line) for line in push.stdout.splitlines()]
        kinds = [e["event"] for e in events]
        # the device resets into the image, which checks in over the air: confirmed
        assert kinds[-1] == "Confirmed" and "Completed" in kinds and "CheckedIn" in kinds
    finally:
        if device is not None:
            device.send_signal(signal.SIGTERM)
            device.wait(timeout=10)
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=10)
    boot = subprocess.run(
        [OTAFERRY, "device", "boot", "--json", "--flash", str(flash)], capture_output=True
    )
    assert boot.returncode == 0, boot.stderr.decode()
    booted = json.loads(boot.stdout)
    assert booted["label"] == "ota_1" and booted["state"] == "VALID"
    info = subprocess.run(
        [OTAFERRY, "device", "info", "--json", "--flash", str(flash)], capture_output=True
    )
    assert json.loads(info.stdout)["slots"][1]["version"] == "new"
    report = json.loads(stats.read_text())
    gw, dv = report["modems"]["0"], report["modems"]["1"]
    assert gw["tx_packets"] > ota.stat().st_size // 250 and dv["tx_packets"] > 0
    for one in (gw, dv):
        assert one["duty_cycle_violations"] == 0 and one["dwell_violations"] == 0
