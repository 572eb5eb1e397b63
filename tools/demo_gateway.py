"""``otaferry demo --gateway``: architecture 2 on one machine.

A broker (the one on 127.0.0.1:1883 when it answers, else a ``mosquitto`` the demo
starts on a free loopback port, else otaferry's own embedded broker in this process:
:mod:`~otaferry.transport.gateway.broker`; ``--broker`` forces one), the gateway
service (``transport/gateway``, the same code ``otaferry gateway`` runs, configured by
a ``gateway.toml`` written here), two simulated ESP32s (``otaferry device run``, their
own processes) each behind its own line simulator (two real pseudo-terminals at
921,600 baud), and a job for both submitted over MQTT with
:class:`~otaferry.transport.gateway.client.JobClient`, whose device states are
followed to the check-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..device_fw.device import Device
from ..protocol.artifact import build_full
from ..protocol.errors import OtaferryError, Reason
from ..protocol.keys import write_keypair
from ..protocol.x25519keys import LinkPublicKey, write_link_keypair
from ..transport.gateway.broker import Broker, BrokerLog
from ..transport.gateway.client import JobClient
from ..transport.gateway.config import load_config, parse_broker_url
from ..transport.gateway.mqtt import MqttSettings
from ..transport.gateway.service import Gateway, Log
from .args import UsageError
from .sample_fw import make_image
from .simdevice import boards_on_lines

HW = "otaferry-devkit-v1"
BAUD = 921_600


def _say(step: str, text: str) -> None:
    print(f"[{step:>7}] {text}", flush=True)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class _Where:
    url: str
    settings: MqttSettings
    what: str  # the demo's line about it
    kind: str  # the summary's word for it
    shared: bool = False  # it outlives the demo (not one the demo started)


def _mosquitto() -> str | None:
    exe = shutil.which("mosquitto")
    if exe is None and Path("/usr/sbin/mosquitto").exists():
        exe = "/usr/sbin/mosquitto"
    return exe


@contextlib.asynccontextmanager
async def _start_mosquitto(work: Path, exe: str) -> AsyncIterator[int]:
    port = _free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        for _ in range(200):
            if _port_open(port) or proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        if proc.poll() is not None or not _port_open(port):
            err = (proc.stderr.read() if proc.stderr and proc.poll() is not None else b"")
            raise OtaferryError(f"{exe} did not start on 127.0.0.1:{port}: "
                                f"{err.decode(errors='replace').strip()[:200]}",
                                Reason.IO_ERROR)  # fmt: skip
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def _broker(work: Path, choice: str) -> AsyncIterator[_Where]:
    """The broker the demo uses: ``auto`` (the one on 127.0.0.1:1883 when it answers,
    else a ``mosquitto`` started here, else the embedded one), ``embedded``,
    ``mosquitto``, or a URL."""
    if choice not in ("auto", "embedded", "mosquitto"):
        try:
            host, port, tls, user, password = parse_broker_url(choice, "--broker")
        except OtaferryError as exc:
            raise UsageError(exc.message.replace("config: ", "")) from None
        settings = MqttSettings(host, port, tls=tls, username=user, password=password)
        yield _Where(choice, settings, f"the broker at {settings.where} (--broker)", settings.where,
                     shared=True)
        return
    if choice == "auto" and _port_open(1883):
        yield _Where("mqtt://127.0.0.1:1883", MqttSettings("127.0.0.1", 1883),
                     "the one answering on 127.0.0.1:1883",
                     "the one on 127.0.0.1:1883", shared=True)  # fmt: skip
        return
    exe = _mosquitto() if choice in ("auto", "mosquitto") else None
    if choice == "mosquitto" and exe is None:
        raise OtaferryError("--broker mosquitto: no mosquitto binary (apt-get install "
                            "mosquitto), or --broker embedded", Reason.IO_ERROR)  # fmt: skip
    if exe is not None:
        async with _start_mosquitto(work, exe) as port:
            yield _Where(f"mqtt://127.0.0.1:{port}", MqttSettings("127.0.0.1", port),
                         f"{exe}, started on 127.0.0.1:{port}",
                         f"mosquitto (started, {exe})")  # fmt: skip
        return
    log = open(work / "broker.log", "w")  # noqa: SIM115 - closed below
    try:
        async with Broker(log=BrokerLog("text", stream=log)) as broker:
            await broker.start("127.0.0.1", 0)
            port = broker.port
            yield _Where(f"mqtt://127.0.0.1:{port}", MqttSettings("127.0.0.1", port),
                         f"embedded (otaferry's own MQTT 3.1.1 broker, in this process) on "
                         f"127.0.0.1:{port}, log in broker.log",
                         "embedded (in this process)")  # fmt: skip
    finally:
        log.close()


def run(workdir: str | None, broker: str = "auto") -> int:
    if workdir:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_main(work, broker))
    with tempfile.TemporaryDirectory(prefix="otaferry-gwdemo-") as tmp:
        return asyncio.run(_main(Path(tmp), broker))


async def _main(work: Path, choice: str) -> int:
    async with _broker(work, choice) as where:
        _say("broker", where.what)
        return await _run(work, where)


async def _run(work: Path, where: _Where) -> int:
    t0 = time.monotonic()
    for p in work.glob("*.key*"):
        p.unlink()
    vendor = write_keypair(work / "vendor.key")
    gw_key = write_link_keypair(work / "gateway.key")
    old = make_image("1.0.0", revision=0, code_size=120_000)
    new = make_image("1.1.0", revision=1, secure_version=1, code_size=120_000)
    ota = build_full(new, vendor, hw=[HW], chip="esp32", version="1.1.0", security_counter=1)
    devices = []
    for i in range(2):
        flash = work / f"device{i}.bin"
        flash.unlink(missing_ok=True)
        dev_id = secrets.token_bytes(8)
        with Device.create(
            str(flash),
            hw=HW,
            chip="esp32",
            trusted_keys=[vendor.public.raw],
            image=old,
            version="1.0.0",
            device_id=dev_id,
            gateways=[gw_key.public.raw],
        ) as dev:
            pub = LinkPublicKey.from_raw(dev.link_public())
        (work / f"device{i}.pub").write_bytes(pub.to_pem())
        devices.append((dev_id.hex(), flash))
    prefix = f"otaferry-demo-{secrets.token_hex(3)}"
    links = "".join(
        f'[[links]]\nname = "uart{i}"\nport = "{work / f"gw{i}.tty"}"\nbaud = {BAUD}\n'
        f'[[links.devices]]\nid = "{dev_id}"\npublic_key = "device{i}.pub"\n'
        for i, (dev_id, _) in enumerate(devices)
    )
    (work / "gateway.toml").write_text(
        'gateway_id = "demo-site"\nlink_key = "gateway.key"\ntrusted_keys = ["vendor.key.pub"]\n'
        'cache_dir = "cache"\njob_store = "jobs.sqlite"\nprogress_interval = 0.5\n'
        f'[broker]\nurl = "{where.url}"\nprefix = "{prefix}"\n{links}'
    )
    _say(
        "site",
        f"2 simulated ESP32s running v1.0.0; gateway.toml: 2 UART links at {BAUD} "
        f"baud; topics under {prefix}/demo-site/",
    )
    async with boards_on_lines([flash for _, flash in devices], work, BAUD, latency_ms=2):
        config = load_config(work / "gateway.toml")
        gateway = Gateway(config, log=Log("text", stream=open(work / "gateway.log", "w")))  # noqa: SIM115
        stop = asyncio.Event()
        service = asyncio.ensure_future(gateway.run(stop))
        _say("gateway", "service running (log in gateway.log): subscribed to its jobs")
        async with JobClient(where.settings, prefix, "demo-site") as client:
            sha = await client.upload(ota)
            _say(
                "upload",
                f"v1.1.0.ota ({len(ota)} B) published in 32 KiB chunks; sha256 {sha[:16]}...",
            )
            await client.submit("demo-job-1", [d for d, _ in devices], [sha])
            _say("job", "demo-job-1 submitted over MQTT: both devices, that artifact")
            last: dict[str, str] = {}

            def on_state(device: str, st: dict[str, Any]) -> None:
                phase = st["phase"]
                if phase == "transferring" and st.get("total_bytes"):
                    pct = 100 * st["confirmed_bytes"] / st["total_bytes"]
                    _say(
                        "state",
                        f"{device}: transferring {pct:5.1f} % "
                        f"({st.get('rate_bps') or 0} B/s) seq {st['seq']}",
                    )
                elif last.get(device) != phase:
                    extra = f", runs {st['running_version']}" if phase == "done" else ""
                    _say("state", f"{device}: {phase} ({st['aws']}){extra} seq {st['seq']}")
                last[device] = phase

            result = await client.follow("demo-job-1", on_state=on_state, timeout=120)
            health = await client.health()
        stop.set()
        await service
    if where.shared:  # a broker that outlives the demo: leave no retained states on it
        async with JobClient(where.settings, prefix, "demo-site") as client:
            cleared = await client.clear_retained(f"{prefix}/#")
        _say("broker", f"{cleared} retained demo messages cleared from {where.settings.where}")
    ok = result["state"] == "done"
    print()
    print("summary")
    print(f"  job demo-job-1         : {result['state']} ({result['aws']})")
    for d, flash in devices:
        with Device(str(flash), read_only=True) as dev:
            info = dev.info()
        slot = info["slots"][info["running_slot"]]
        ok = ok and slot["version"] == "1.1.0" and slot["state"] == "VALID"
        print(f"  device {d} : runs {slot['version']} in {slot['label']} ({slot['state']})")
    if health:
        print(f"  gateway health         : {health['state']}, {health['queue_depth']} queued")
    print(f"  broker                 : {where.kind}")
    print(f"  total time             : {time.monotonic() - t0:.1f} s")
    return 0 if ok else 1
