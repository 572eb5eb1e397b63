"""Many sessions in one process: one gateway, N devices on one in-memory medium.

    otaferry bench fleet [--sessions 1000] [--image IMAGE] [--mtu 1024] [--json]

One shared :class:`Artifact` (the full-image artifact of IMAGE, default
MicroPython ESP8266 v1.10 from tests/firmware) is pushed by N concurrent
:class:`Updater` sessions, each inside its own :class:`SecureLink` (handshake,
AES-CCM-8 on every frame), over the :class:`PeerLink` views of one
:class:`MemoryHub` to N simulated devices on the same hub. Every device is real:
a :class:`DeviceLoop` (Receiver + installer) writing its own file-backed NOR
flash, so the install, the whole-image SHA-256 check and otadata all run; the
flash files are copies of one freshly made device (one device id; the hub
address tells them apart).

Reported (JSON keys as named):

- ``sessions``, ``completed``: sessions started and ending in Completed with
  the device's passive slot armed (checked on every device afterwards);
- ``wall_s``; ``cpu_s_per_mb``: process CPU seconds (gateway *and* devices: they
  share the process) per MB (10^6 B) of artifact payload delivered;
  ``line_rate_cpu_bound``: the CPU seconds per MB a 921,600-baud line allows
  (10^6 / 92,160 = 10.85); CPU is not the bottleneck while ``cpu_s_per_mb`` is
  below it;
- ``peak_rss_bytes``: the process's peak RSS; ``baseline_rss_bytes``: RSS once
  the shared artifact is parsed and every device is open, before any session;
  ``rss_per_session_bytes``: (peak - baseline) / sessions — what one session
  costs beyond the shared artifact, its device's session buffers included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ...device_fw.device import Device
from ...device_fw.loop import DeviceLoop
from ...protocol.artifact import build_full
from ...protocol.keys import SigningKey
from ...protocol.session import Completed
from ...protocol.shared_artifact import Artifact
from ...protocol.x25519keys import LinkPrivateKey, LinkPublicKey
from ...transport.hub import MemoryHub
from ...transport.link import Link
from ...transport.secure_link import SecureLink
from ...transport.updater import PushOptions, Updater

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = ROOT / "tests" / "firmware" / "micropython-esp8266" / "esp8266-20190125-v1.10.bin"
KEY = SigningKey.from_seed(bytes(32))
GATEWAY = LinkPrivateKey.from_raw(bytes(range(1, 33)))
HW, CHIP = "fleet-board", "esp8266"
LINE_921600 = 921_600 / 10  # bytes/s


def _csv(image_size: int) -> tuple[str, int]:
    slot = -(-image_size // 0x10000) * 0x10000
    csv = (
        "nvs,      data, nvs,     0x9000,  0x4000,\n"
        "otadata,  data, ota,     0xd000,  0x2000,\n"
        f"ota_0,    app,  ota_0,   0x10000, {slot:#x},\n"
        f"ota_1,    app,  ota_1,   {0x10000 + slot:#x}, {slot:#x},\n"
    )
    return csv, 0x10000 + 2 * slot


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _device(loop: DeviceLoop, link: Link, clock: Any) -> None:
    try:
        for packet in loop.start():
            await link.send(packet)
        while True:
            packet = await link.receive()
            for reply in loop.receive(packet, clock()):
                await link.send(reply)
    except Exception:  # the hub closed: the device is switched off
        return


def make_devices(work: Path, old: bytes, n: int, slot_for: int) -> list[Path]:
    csv, size = _csv(max(len(old), slot_for))
    pristine = work / "pristine.bin"
    Device.create(
        str(pristine), hw=HW, chip=CHIP, trusted_keys=[KEY.public.raw], image=old,
        version="old", partitions_csv=csv, size=size, gateways=[GATEWAY.public.raw],
    ).close()  # fmt: skip
    paths = []
    for i in range(n):
        path = work / f"dev{i}.bin"
        shutil.copyfile(pristine, path)  # one identity for all: the hub address tells them apart
        paths.append(path)
    return paths


async def run(n: int, image: bytes, old: bytes, mtu: int, work: Path) -> dict[str, Any]:
    ota = build_full(image, KEY, hw=[HW], chip=CHIP, version="new", security_counter=1)
    paths = make_devices(work, old, n, len(image))
    artifact = Artifact.parse(ota)
    clock = asyncio.get_running_loop().time
    devices = [Device(str(p)) for p in paths]
    device_pub = LinkPublicKey.from_raw(devices[0].link_public())
    hub = MemoryHub(dict.fromkeys(range(n), mtu))
    loops = [DeviceLoop(d, mtu) for d in devices]
    baseline = _rss()
    cpu0, t0 = time.process_time(), time.monotonic()
    device_tasks = [
        asyncio.ensure_future(_device(loop, hub.device(i), clock)) for i, loop in enumerate(loops)
    ]
    # The devices here do not reboot (no bootloader in the loop): the bench measures
    # the transfer sessions, so it ends at DONE.
    options = PushOptions(rto=2.0, max_retries=8, await_checkin=False)

    async def push(i: int) -> bool:
        link = await SecureLink.connect(hub.link(i), GATEWAY, device_pub, rto=2.0)
        up = Updater(link, options, clock=clock)
        event = await up.push(artifact, job_id=f"fleet-{i}")
        return isinstance(event, Completed) and event.job_id == f"fleet-{i}"

    results = await asyncio.gather(*(push(i) for i in range(n)), return_exceptions=True)
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    await hub.aclose()
    await asyncio.gather(*device_tasks)
    armed = 0
    for dev in devices:
        info = dev.info()
        armed += info["next_boot_slot"] == 1
        dev.close()
    completed = sum(1 for r in results if r is True)
    errors = sorted({f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)})
    mb = n * artifact.payload_size / 1e6
    return {
        "sessions": n,
        "completed": min(completed, armed),
        "armed": armed,
        "errors": errors[:5],
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_mb": round(cpu / mb, 3),
        "line_rate_cpu_bound": round(1e6 / LINE_921600, 2),
        "payload_bytes_per_session": artifact.payload_size,
        "artifact_bytes": len(ota),
        "mtu": mtu,
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline,
        "rss_per_session_bytes": max(0, (peak - baseline) // n),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="otaferry bench fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--sessions", type=int, default=1000, help="concurrent sessions (devices)")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE), help="the new image (full update)")
    ap.add_argument("--mtu", type=int, default=1024, help="frame size on the medium")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if args.sessions < 1 or args.mtu < 64:
        ap.error("--sessions must be >= 1 and --mtu >= 64")
    image = Path(args.image).read_bytes()
    old = bytes(b ^ 0x5A for b in image[: len(image) // 2])  # any other image will do
    with tempfile.TemporaryDirectory(prefix="otaferry-fleet-") as tmp:
        result = asyncio.run(run(args.sessions, image, old, args.mtu, Path(tmp)))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key in sorted(result):
            print(f"{key:<26} {result[key]}")
    ok = result["completed"] == result["sessions"]
    return 0 if ok else 1
