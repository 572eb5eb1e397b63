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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..device_fw.device import Device
from ..protocol.artifact import build_delta, build_full
from ..protocol.errors import RemoteError
from ..protocol.keys import write_keypair
from ..protocol.session import (
    Accepted,
    CheckedIn,
    Completed,
    Confirmed,
    DeviceInfo,
    Event,
    Progress,
    Rebooting,
)
from ..protocol.x25519keys import LinkPublicKey, write_link_keypair
from ..transport.linesim import LineSim
from ..transport.secure_link import SecureLink
from ..transport.serial_link import SerialLink
from ..transport.updater import PushOptions, Updater
from .args import UsageError
from .files import read_file
from .sample_fw import make_image
from .simdevice import start_device, stop_device

HW = "otaferry-devkit-v1"
NO_CHECKIN_TIMEOUT = 5  # s: the third case's device deadline (short, to keep the demo quick)
BAUD = 115_200
LATENCY_MS = 20


def _say(step: str, text: str) -> None:
    print(f"[{step:>7}] {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "gateway", False):
        from .demo_gateway import run as run_gateway

        return run_gateway(args.workdir, args.broker or "auto")
    if args.broker:
        raise UsageError("--broker goes with --gateway")
    if getattr(args, "lora", False):
        from .demo_lora import run as run_lora

        return run_lora(args.workdir)
    # Read the given image before anything is made, so a wrong path fails first.
    image = read_file(args.image) if args.image else None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_run(work, image, keep=True))
    with tempfile.TemporaryDirectory(prefix="otaferry-demo-") as tmp:
        return asyncio.run(_run(Path(tmp), image, keep=False))


class _DeviceProcess:
    """``otaferry device run`` on the B end of the line; kill() is a power cut."""

    def __init__(self, flash: Path, port: Path, *flags: str) -> None:
        self.proc = start_device(flash, port, BAUD, *flags)

    def power_cut(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        stop_device(self.proc)


async def _expect_rollback(
    up: Updater, candidates: list[bytes], on_event: Callable[[Event], None]
) -> str:
    """Push, expecting the device to roll back: what happened, in a few words."""
    try:
        await up.push_best(candidates, on_event=on_event)
    except RemoteError as exc:
        _say("result", f"the device rolled back and said why: {exc.reason.name}")
        return f"rolled back by itself ({exc.reason.name}), reported at its next check-in"
    return "confirmed (NOT expected)"


async def _run(work: Path, image: bytes | None, *, keep: bool) -> int:
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
    v130 = make_image("1.3.0", revision=3, secure_version=1)
    delta3 = build_delta(v110, v130, key, hw=[HW], chip="esp32", version="1.3.0",
                         security_counter=1)  # fmt: skip
    (work / "v1.1.0.ota").write_bytes(full)
    (work / "v1.2.0-delta.ota").write_bytes(delta)
    _say(
        "build",
        f"v1.1.0.ota: {len(full)} B (full image, {len(v110)} B); "
        f"v1.2.0-delta.ota: {len(delta)} B (delta against v1.1.0)",
    )

    a, b = work / "gateway.tty", work / "device.tty"
    payloads: list[int] = []
    transfer_s: list[float] = []  # push start to Completed, each push
    t1 = time.monotonic()
    results: list[tuple[str, str]] = []
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
                    PushOptions(
                        line_rate=BAUD / 10,
                        rtt=2 * LATENCY_MS / 1000,
                        max_restarts=10,
                        checkin_timeout=60,
                    ),
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
                    elif isinstance(ev, Completed):
                        _say("push", f"{ev.total_bytes} B written, verified by the device, "
                                     "set to boot")  # fmt: skip
                    elif isinstance(ev, Rebooting):
                        _say("reboot", f"device resets into it; waiting up to "
                                       f"{ev.deadline_s:g} s for its check-in")  # fmt: skip
                    elif isinstance(ev, CheckedIn):
                        _say("checkin", f"{ev.version} booted pending-verify, passed its "
                                        "self-test and checked in over the link")  # fmt: skip
                    elif isinstance(ev, Confirmed):
                        _say("confirm", f"{ev.version} confirmed: VALID, security counter "
                                        "raised")  # fmt: skip
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
                    if isinstance(ev, Completed):
                        payloads.append(ev.total_bytes)
                        transfer_s.append(time.monotonic() - t1)

                restart = asyncio.Event()

                async def restarter() -> None:
                    nonlocal device
                    await restart.wait()
                    await asyncio.sleep(0.3)
                    device = _DeviceProcess(flash, b)

                helper = asyncio.ensure_future(restarter())
                t1 = time.monotonic()
                first = await up.push(full, on_event)
                t_push += time.monotonic() - t1
                helper.cancel()
                results.append(("1.0.0 -> 1.1.0 (full)", "confirmed after its check-in"
                                if isinstance(first, Confirmed) else "NOT confirmed"))  # fmt: skip

                # 2. a delta whose self-test fails: the device rolls back by itself
                device.stop()
                device = _DeviceProcess(flash, b, "--fail-self-test")
                _say("device", "restarted with a broken v1.2.0 in store: its self-test will fail")
                t1 = time.monotonic()
                results.append(("1.1.0 -> 1.2.0 (delta)",
                                await _expect_rollback(up, [delta, full], on_event)))  # fmt: skip
                t_push += time.monotonic() - t1

                # 3. an image that boots but never reaches its server: rolled back at the deadline
                device.stop()
                device = _DeviceProcess(flash, b, "--no-checkin", "--checkin-timeout",
                                        str(NO_CHECKIN_TIMEOUT))  # fmt: skip
                _say(
                    "device",
                    f"restarted; v1.3.0 will boot but never talk to the server (a broken link "
                    f"driver): the device gives up after {NO_CHECKIN_TIMEOUT} s",
                )
                t1 = time.monotonic()
                results.append(("1.1.0 -> 1.3.0 (delta)",
                                await _expect_rollback(up, [delta3], on_event)))  # fmt: skip
                t_push += time.monotonic() - t1
        finally:
            device.stop()
        wire_out = sim.a_to_b.bytes_out
        wire_back = sim.b_to_a.bytes_out
    payload = sum(payloads)
    with Device(str(flash), read_only=True) as dev:
        info2 = dev.info()
    running = info2["slots"][info2["running_slot"]]
    ok = (
        results[0][1].startswith("confirmed")
        and "SELF_TEST_FAILED" in results[1][1]
        and "CHECKIN_TIMEOUT" in results[2][1]
        and running["version"] == "1.1.0"
        and running["state"] == "VALID"
    )
    print()
    print("summary")
    for name, what in results:
        print(f"  {name:<23}: {what}")
    print(f"  running now            : {running['version']} in {running['label']} "
          f"({running['state']})")  # fmt: skip
    print("  (the full update also resumed after a power cut mid-transfer)")
    print(f"  security counter       : {info2['security_counter']}")
    print(f"  payload carried        : {payload} B in {t_push:.1f} s of pushing")
    print(
        f"  bytes on the wire      : {wire_out} B to the device, {wire_back} B back "
        f"({wire_out / max(payload, 1):.3f} wire bytes per payload byte)"
    )
    goodput = payloads[0] / max(transfer_s[0], 1e-9) / (BAUD / 10) if payloads else 0.0
    print(
        f"  efficiency             : {goodput:.2f} of the line rate ({BAUD // 10} B/s) for the "
        "full image's transfer (the restart after the power cut included)"
    )
    where = "kept in " + str(work) if keep else "in a temporary folder, now removed"
    print(f"  total time             : {time.monotonic() - t0:.1f} s; files {where}")
    return 0 if ok else 1
