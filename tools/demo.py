"""``otaferry demo``: the main job on the embedded default.

A simulated ESP32 (its flash in a file, its firmware loop in its own process,
``otaferry device run``) sits behind the line simulator: two real
pseudo-terminals joined like a 115200-baud UART with 20 ms latency. The demo
makes a vendor key, factory-flashes the device with v1.0.0, builds a signed
full v1.1.0 and a delta v1.1.0 -> v1.2.0, pushes v1.1.0 across the line (cutting
the device's power once on the way: it resumes where it stood), reboots it
into the new image as pending-verify, self-tests and confirms; then pushes the
v1.2.0 delta, whose self-test fails, and the device rolls back by itself. The
summary gives bytes on the wire, time and efficiency.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..device_fw.device import Device
from ..protocol.artifact import build_delta, build_full
from ..protocol.keys import write_keypair
from ..protocol.session import Accepted, Completed, DeviceInfo, Event, Progress
from ..protocol.x25519keys import LinkPublicKey, write_link_keypair
from ..transport.linesim import LineSim
from ..transport.secure_link import SecureLink
from ..transport.serial_link import SerialLink
from ..transport.updater import PushOptions, Updater
from .files import read_file
from .sample_fw import make_image

HW = "otaferry-devkit-v1"
BAUD = 115_200
LATENCY_MS = 20


def _say(step: str, text: str) -> None:
    print(f"[{step:>7}] {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    # Read the given image before anything is made, so a wrong path fails first.
    image = read_file(args.image) if args.image else None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_run(work, image))
    with tempfile.TemporaryDirectory(prefix="otaferry-demo-") as tmp:
        return asyncio.run(_run(Path(tmp), image))


class _DeviceProcess:
    """``otaferry device run`` on the B end of the line; kill() is a power cut."""

    def __init__(self, flash: Path, port: Path) -> None:
        exe = Path(sys.executable).with_name("otaferry")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "otaferry.tools.cli"]
        self.proc = subprocess.Popen(
            [
                *cmd,
                "device",
                "run",
                "--quiet",
                "--port",
                str(port),
                "--flash",
                str(flash),
                "--baud",
                str(BAUD),
            ],
            stdout=subprocess.DEVNULL,
        )

    def power_cut(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _boot(flash: Path, self_test: bool) -> dict[str, object]:
    with Device(str(flash)) as dev:
        result = dev.power_on(self_test=self_test)
        for line in result["log"]:  # type: ignore[attr-defined]
            _say("boot", line)
        return dev.info()  # type: ignore[no-any-return]


async def _run(work: Path, image: bytes | None) -> int:
    t0 = time.monotonic()
    key_path = work / "vendor.key"
    gw_path = work / "gateway.key"
    for p in (key_path, Path(f"{key_path}.pub"), gw_path, Path(f"{gw_path}.pub")):
        p.unlink(missing_ok=True)
    key = write_keypair(key_path)
    gw_key = write_link_keypair(gw_path)
    _say(
        "keys",
        f"Ed25519 vendor key {key.public.key_id.hex()} -> {key_path.name}(.pub); "
        f"X25519 gateway link key -> {gw_path.name}(.pub)",
    )

    v100 = make_image("1.0.0", revision=0)
    v110 = image if image is not None else make_image("1.1.0", revision=1, secure_version=1)
    v120 = make_image("1.2.0", revision=2, secure_version=1)
    flash = work / "flash.bin"
    with Device.create(
        str(flash),
        hw=HW,
        chip="esp32",
        trusted_keys=[key.public.raw],
        image=v100,
        version="1.0.0",
        gateways=[gw_key.public.raw],
    ) as dev:
        device_pub = LinkPublicKey.from_raw(dev.link_public())
    _say(
        "flash",
        f"simulated ESP32 {flash.name}: 4 MiB, ota_0 runs v1.0.0 ({len(v100)} B); "
        "provisioned with its own X25519 key, trusting the vendor and the gateway",
    )

    full = build_full(v110, key, hw=[HW], chip="esp32", version="1.1.0", security_counter=1)
    delta = build_delta(v110, v120, key, hw=[HW], chip="esp32", version="1.2.0", security_counter=1)
    (work / "v1.1.0.ota").write_bytes(full)
    (work / "v1.2.0-delta.ota").write_bytes(delta)
    _say(
        "build",
        f"v1.1.0.ota: {len(full)} B (full image, {len(v110)} B); "
        f"v1.2.0-delta.ota: {len(delta)} B (delta against v1.1.0)",
    )

    a, b = work / "gateway.tty", work / "device.tty"
    payload = 0
    t_push = 0.0
    async with LineSim(str(a), str(b), baud=BAUD, latency_ms=LATENCY_MS, seed=1) as sim:
        _say(
            "line",
            f"{a.name} <-> {b.name}: pseudo-terminals at {BAUD} baud, {LATENCY_MS} ms latency",
        )
        device = _DeviceProcess(flash, b)
        try:
            async with await SerialLink.open(str(a), BAUD, mtu=1024) as raw:
                link = await SecureLink.connect(raw, gw_key, device_pub)
                _say(
                    "secure",
                    "handshake done (Noise KK, X25519): every frame now "
                    "AES-CCM sealed, 10 bytes per frame",
                )
                up = Updater(
                    link,
                    PushOptions(line_rate=BAUD / 10, rtt=2 * LATENCY_MS / 1000, max_restarts=10),
                )
                cut_done = False

                def on_event(ev: Event) -> None:
                    nonlocal cut_done
                    if isinstance(ev, DeviceInfo):
                        resume = (
                            f", holds segments up to {ev.resume_from}" if ev.resume_from else ""
                        )
                        _say("push", f"device runs {ev.info.running_version}{resume}")
                    elif isinstance(ev, Accepted):
                        _say(
                            "push",
                            f"device checked signature and compatibility; "
                            f"data from segment {ev.next_segment}",
                        )
                    elif (
                        isinstance(ev, Progress)
                        and not cut_done
                        and (ev.confirmed_bytes * 2 > ev.total_bytes)
                    ):
                        cut_done = True
                        device.power_cut()
                        _say(
                            "power",
                            f"device power cut at {ev.confirmed_bytes}/"
                            f"{ev.total_bytes} B confirmed; restarting it",
                        )
                        restart.set()

                restart = asyncio.Event()

                async def restarter() -> None:
                    nonlocal device
                    await restart.wait()
                    await asyncio.sleep(0.3)
                    device = _DeviceProcess(flash, b)

                helper = asyncio.ensure_future(restarter())
                t1 = time.monotonic()
                done = await up.push(full, on_event)
                t_push += time.monotonic() - t1
                payload += done.total_bytes
                helper.cancel()
                _say(
                    "push",
                    f"v1.1.0 written, verified by the device, set to boot "
                    f"({time.monotonic() - t1:.1f} s)",
                )
                device.stop()
                info = _boot(flash, self_test=True)
                confirmed = info["slots"][info["running_slot"]]["version"]  # type: ignore[index]

                device = _DeviceProcess(flash, b)
                t1 = time.monotonic()
                done2: Completed = await up.push_best([delta, full], on_event=lambda e: None)
                t_push += time.monotonic() - t1
                payload += done2.total_bytes
                _say(
                    "push",
                    f"v1.2.0 delta: {done2.total_bytes} B payload in {time.monotonic() - t1:.1f} s",
                )
                device.stop()
                info2 = _boot(flash, self_test=False)
        finally:
            device.stop()
        wire_out = sim.a_to_b.bytes_out
        wire_back = sim.b_to_a.bytes_out

    running = info2["slots"][info2["running_slot"]]  # type: ignore[index]
    ok = confirmed == "1.1.0" and running["version"] == "1.1.0"
    goodput = payload / max(t_push, 1e-9) / (BAUD / 10)
    print()
    print("summary")
    print(
        f"  1.0.0 -> 1.1.0 (full)  : {'confirmed' if confirmed == '1.1.0' else 'FAILED'}, "
        "resumed after a power cut mid-transfer"
    )
    print(
        f"  1.1.0 -> 1.2.0 (delta) : self-test failed, rolled back to {running['version']} "
        f"in {running['label']} by itself"
    )
    print(f"  security counter       : {info2['security_counter']}")
    print(f"  payload carried        : {payload} B in {t_push:.1f} s of pushing")
    print(
        f"  bytes on the wire      : {wire_out} B to the device, {wire_back} B back "
        f"({wire_out / max(payload, 1):.3f} wire bytes per payload byte)"
    )
    print(
        f"  efficiency             : {goodput:.2f} of the line rate ({BAUD // 10} B/s) "
        "(the restart after the power cut included)"
    )
    print(f"  total time             : {time.monotonic() - t0:.1f} s; files in {work}")
    return 0 if ok else 1
