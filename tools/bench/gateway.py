"""The gateway under load: one process, a real broker, many sessions at once.

    otaferry bench gateway [--memory 1000] [--ptys 20] [--image IMAGE] [--json]

One :class:`~otaferry.transport.gateway.Gateway` (the service ``otaferry gateway``
runs), connected to a real MQTT broker (the Mosquitto on 127.0.0.1:1883, else a
``mosquitto`` started on a free port), takes one job over MQTT for every device:

- ``--memory`` N devices on one in-memory hub (:class:`MemoryHub`, concurrency N),
  each a real :class:`DeviceLoop` writing its own flash file with its own identity and
  link key, inside the same process (as in ``bench fleet``; they do not reboot, so
  their sessions end at DONE);
- ``--ptys`` M devices as ``otaferry device run`` processes behind M line simulators
  (real pseudo-terminals, 921,600 baud), which reboot and check in.

The artifact is uploaded in chunks and the job submitted with :class:`JobClient`, as
``otaferry job submit`` does. Reported: ``completed`` (devices whose state is done),
``wall_s`` (job submitted to final result), ``cpu_s_per_mb`` (this process's CPU:
gateway, broker client and the in-memory devices, per MB of payload delivered),
``peak_rss_bytes``, ``rss_per_session_bytes`` ((peak − RSS before the sessions) / sessions
on memory devices), ``mqtt_messages_per_update`` (messages the gateway published and
received during the job, per device), ``state_messages_per_update``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ...device_fw.device import Device
from ...device_fw.loop import DeviceLoop
from ...protocol.artifact import build_full
from ...protocol.keys import write_keypair
from ...protocol.x25519keys import LinkPublicKey, write_link_keypair
from ...transport.gateway.client import JobClient
from ...transport.gateway.config import (
    BrokerConfig,
    DeviceConfig,
    GatewayConfig,
    LinkConfig,
)
from ...transport.gateway.mqtt import MqttSettings
from ...transport.gateway.service import Gateway, Log
from ...transport.hub import MemoryHub
from ...transport.updater import PushOptions
from ..demo_gateway import _broker
from ..simdevice import boards_on_lines
from .fleet import _csv, _device, _rss

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = ROOT / "tests" / "firmware" / "simba-shell-cortex-m4" / "new.bin"
OLD_IMAGE = ROOT / "tests" / "firmware" / "simba-shell-cortex-m4" / "old.bin"
HW, CHIP = "bench-board", "cortex-m4"
BAUD = 921_600


async def run(
    n_mem: int, n_pty: int, image: bytes, old: bytes, work: Path, port: int, mtu: int
) -> dict[str, Any]:
    vendor = write_keypair(work / "vendor.key")
    gw_key = write_link_keypair(work / "gateway.key")
    ota = build_full(image, vendor, hw=[HW], chip=CHIP, version="new", security_counter=1)
    csv, size = _csv(max(len(old), len(image)))
    keys: dict[str, LinkPublicKey] = {}
    mem_devs: list[DeviceConfig] = []
    devices: list[Device] = []
    for i in range(n_mem):
        dev_id = secrets.token_bytes(8)
        dev = Device.create(
            str(work / f"mem{i}.bin"),
            hw=HW,
            chip=CHIP,
            trusted_keys=[vendor.public.raw],
            image=old,
            version="old",
            partitions_csv=csv,
            size=size,
            device_id=dev_id,
            gateways=[gw_key.public.raw],
        )
        keys[dev_id.hex()] = LinkPublicKey.from_raw(dev.link_public())
        mem_devs.append(DeviceConfig(dev_id.hex(), work / "unused.pub", i))
        devices.append(dev)
    links = (
        [
            LinkConfig(
                "memory",
                "memory",
                kind="memory",
                concurrency=max(1, n_mem),
                devices=tuple(mem_devs),
            )
        ]
        if n_mem
        else []
    )
    pty_flashes = []
    for i in range(n_pty):
        dev_id = secrets.token_bytes(8)
        flash = work / f"pty{i}.bin"
        with Device.create(
            str(flash),
            hw=HW,
            chip=CHIP,
            trusted_keys=[vendor.public.raw],
            image=old,
            version="old",
            partitions_csv=csv,
            size=size,
            device_id=dev_id,
            gateways=[gw_key.public.raw],
        ) as dev:
            keys[dev_id.hex()] = LinkPublicKey.from_raw(dev.link_public())
        pty_flashes.append(flash)
        links.append(
            LinkConfig(
                f"pty{i}",
                str(work / f"gw{i}.tty"),
                baud=BAUD,
                devices=(DeviceConfig(dev_id.hex(), work / "unused.pub"),),
            )
        )
    prefix = f"bench-{secrets.token_hex(3)}"
    config = GatewayConfig(
        gateway_id="bench",
        broker=BrokerConfig("127.0.0.1", port, prefix=prefix),
        link_key=work / "gateway.key",
        trusted_keys=(work / "vendor.key.pub",),
        cache_dir=work / "cache",
        job_store=work / "jobs.sqlite",
        links=tuple(links),
        progress_interval=1.0,
        rto=2.0,
        checkin_timeout=120,
    )
    hub = MemoryHub(dict.fromkeys(range(n_mem), mtu)) if n_mem else None
    log_file = open(work / "gateway.log", "w")  # noqa: SIM115
    options = {"memory": PushOptions(rto=2.0, max_retries=8, await_checkin=False)}
    gateway = Gateway(
        config,
        log=Log("json", stream=log_file),
        hubs={"memory": hub} if hub else {},
        options=options,
        device_keys=keys,
    )
    clock = asyncio.get_running_loop().time
    result: dict[str, Any] = {}
    async with boards_on_lines(pty_flashes, work, BAUD, latency_ms=1):
        tasks = []
        if hub is not None:
            loops = [DeviceLoop(d, mtu) for d in devices]
            tasks = [
                asyncio.ensure_future(_device(lp, hub.device(i), clock))
                for i, lp in enumerate(loops)
            ]
        stop = asyncio.Event()
        service = asyncio.ensure_future(gateway.run(stop))
        try:
            # the submitter shares this loop with every session: a 10 s PUBACK wait is
            # not a broker fault when a thousand sessions keep the loop busy
            settings = MqttSettings("127.0.0.1", port, timeout=60.0)
            async with JobClient(settings, prefix, "bench") as client:
                sha = await client.upload(ota)
                while gateway.north is None or not gateway.north.connected.is_set():
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # the artifact accepted; the process settled
                baseline = _rss()
                north = gateway.north
                msgs0 = north.stats["published"] + north.stats["received"]
                cpu0, t0 = time.process_time(), time.monotonic()
                await client.submit("bench-job", list(keys), [sha])
                states = 0

                def on_state(device: str, st: dict[str, Any]) -> None:
                    nonlocal states
                    states += 1

                result = await client.follow("bench-job", on_state=on_state, timeout=1800)
                wall = time.monotonic() - t0
                cpu = time.process_time() - cpu0
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                msgs = north.stats["published"] + north.stats["received"] - msgs0
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await service
            if hub is not None:
                await hub.aclose()
                await asyncio.gather(*tasks)
            for d in devices:
                d.close()
            log_file.close()
    n = n_mem + n_pty
    done = sum(1 for r in result.get("devices", {}).values() if r.get("phase") == "done")
    mb = n * len(ota) / 1e6  # the artifact's bytes, delivered to each device
    return {
        "devices_memory": n_mem,
        "devices_pty": n_pty,
        "completed": done,
        "result": result.get("state"),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_mb": round(cpu / mb, 3),
        "artifact_bytes": len(ota),
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline,
        "rss_per_session_bytes": max(0, (peak - baseline) // max(1, n)),
        "mqtt_messages": msgs,
        "mqtt_messages_per_update": round(msgs / n, 2),
        "state_messages_seen_by_submitter": states,
        "state_messages_per_update": round(states / n, 2),
        "outbox_coalesced": north.stats["coalesced"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="otaferry bench gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--memory", type=int, default=1000, help="devices on the in-memory hub")
    ap.add_argument("--ptys", type=int, default=20, help="devices on real pseudo-terminals")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE), help="the new image (full update)")
    ap.add_argument("--mtu", type=int, default=1024, help="frame size on the in-memory hub")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--broker", default="auto", metavar="auto|embedded|mosquitto|URL",
                    help="auto: 127.0.0.1:1883 if it answers, else a mosquitto started here, "
                    "else otaferry's embedded broker (in this process: it shares the CPU); "
                    "a URL: a broker on 127.0.0.1 (e.g. otaferry broker in its own process)")
    args = ap.parse_args(argv)
    if args.broker not in ("auto", "embedded", "mosquitto") and not args.broker.startswith(
        ("mqtt://127.0.0.1:", "mqtt://localhost:")
    ):
        ap.error("--broker: auto, embedded, mosquitto or mqtt://127.0.0.1:PORT")
    if args.memory < 0 or args.ptys < 0 or args.memory + args.ptys < 1:
        ap.error("give at least one device")
    image = Path(args.image).read_bytes()
    old = OLD_IMAGE.read_bytes()
    with tempfile.TemporaryDirectory(prefix="otaferry-benchgw-") as tmp:
        work = Path(tmp)

        async def go() -> dict[str, Any]:
            async with _broker(work, args.broker) as where:
                got = await run(args.memory, args.ptys, image, old, work, where.settings.port,
                                args.mtu)  # fmt: skip
                got["broker"] = where.kind
                return got

        result = asyncio.run(go())
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key in sorted(result):
            print(f"{key:<34} {result[key]}")
    return 0 if result["completed"] == args.memory + args.ptys else 1


if __name__ == "__main__":
    sys.exit(main())
