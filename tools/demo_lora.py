"""``otaferry demo --lora``: an update over emulated LoRa modems, on real ptys.

``otaferry lora-sim`` presents two RAK3172 modems (P2P) on pseudo-terminals,
one channel between them; ``otaferry device run --lora-modem rak3172`` is the
device behind its modem, ``otaferry push --lora-modem rak3172 --to 1`` the
gateway on the other. The device runs v1.0.0; the demo pushes a signed delta to
v1.1.0, sealed end to end; the device boots it, self-tests and checks in over
the air. The emulator's STATS.json then gives each modem's packets, air time
and duty-cycle violations.

Radio: EU868 sub-band g3 (869.4-869.65 MHz, the one with a 10 % duty cycle),
869.525 MHz, SF7, 125 kHz, 4/5: real air times and a real ETSI limit, yet short
enough for a demo (the 1 % sub-bands would make the same update take ten times
as long: ``otaferry plan`` and ``otaferry bench lora`` give those figures).
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ..device_fw.device import Device
from ..protocol.artifact import build_delta
from ..protocol.keys import SigningKey
from ..protocol.x25519keys import LinkPrivateKey, LinkPublicKey
from .sample_fw import make_image
from .simdevice import otaferry_command

HW = "otaferry-lora-node"
MODEM = "rak3172"
RADIO = ["--region", "EU868", "--freq", "869525000", "--sf", "7", "--bw", "125", "--cr", "5"]


def _say(step: str, text: str) -> None:
    print(f"[{step:>7}] {text}", flush=True)


def _wait_for(path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.05)


def run(workdir: str | None) -> int:
    if workdir:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        return _run(work)
    with tempfile.TemporaryDirectory(prefix="otaferry-demo-lora-") as tmp:
        return _run(Path(tmp))


def _run(work: Path) -> int:
    cli = otaferry_command()
    key = SigningKey.generate()
    gateway = LinkPrivateKey.generate()
    v1 = make_image("1.0.0", code_size=12_000, seed=7)
    v2 = make_image("1.1.0", code_size=12_000, seed=7, revision=1)
    flash = work / "device-flash.bin"
    Device.create(str(flash), hw=HW, chip="esp32", trusted_keys=[key.public.raw], image=v1,
                  version="1.0.0", gateways=[gateway.public.raw]).close()  # fmt: skip
    with Device(str(flash)) as dev:
        (work / "device.pem").write_bytes(LinkPublicKey.from_raw(dev.link_public()).to_pem())
    (work / "gateway.key").write_bytes(gateway.to_pem())
    ota = work / "v1.1.0-delta.ota"
    ota.write_bytes(build_delta(v1, v2, key, hw=[HW], chip="esp32", version="1.1.0",
                                security_counter=1))  # fmt: skip
    _say("build", f"device runs 1.0.0 ({len(v1)} B); delta to 1.1.0: {ota.stat().st_size} B")
    gw_pty, dev_pty, stats = work / "gw-modem", work / "dev-modem", work / "STATS.json"
    sim = subprocess.Popen(
        [*cli, "lora-sim", "--modem", MODEM, *RADIO, "--seed", "1", "--stats", str(stats),
         str(gw_pty), str(dev_pty)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    device = None
    try:
        _wait_for(gw_pty)
        _wait_for(dev_pty)
        _say("air", f"lora-sim: two {MODEM} modems, EU868 869.525 MHz (10 % duty cycle), SF7")
        device = subprocess.Popen(
            [*cli, "device", "run", "--quiet", "--lora-modem", MODEM, "--address", "1", *RADIO,
             "--port", str(dev_pty), "--flash", str(flash)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        began = time.monotonic()
        push = subprocess.Popen(
            [*cli, "push", "--lora-modem", MODEM, "--to", "1", *RADIO, "--port", str(gw_pty),
             "--link-key", str(work / "gateway.key"), "--device-pub", str(work / "device.pem"),
             "--json-progress", str(ota)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert push.stdout is not None
        last = ""
        for line in push.stdout:
            event = json.loads(line)
            kind = event.get("event", "")
            if kind == "Progress":
                done, total = event.get("confirmed_bytes", 0), event.get("total_bytes", 1)
                if done == total or kind != last:
                    _say("push", f"acknowledged {done} of {total} B")
            elif kind:
                _say("push", f"{kind} after {time.monotonic() - began:.0f} s")
            last = kind
        code = push.wait(timeout=300)
        if code != 0:
            assert push.stderr is not None
            _say("failed", push.stderr.read().decode().strip().splitlines()[-1])
            return 1
    finally:
        if device is not None:
            device.send_signal(signal.SIGTERM)
            device.wait(timeout=10)
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=10)
    with Device(str(flash)) as dev:
        running = (dev.running_image() or {}).get("version")
    report = json.loads(stats.read_text())["modems"]
    for addr, who in (("0", "gateway"), ("1", "device")):
        m = report[addr]
        _say("stats", f"{who}: {m['tx_packets']} packets, {m['air_time_s']:.2f} s on the air, "
                      f"{m['duty_cycle_violations']} duty-cycle violations")  # fmt: skip
    _say("done", f"device runs {running}, confirmed over the air in "
                 f"{time.monotonic() - began:.0f} s")  # fmt: skip
    return 0 if running == "1.1.0" else 1
