"""A gateway site for the tests, the demo's tests and the benchmark: real parts only.

Keys and flash files in a folder; per device a line simulator (``otaferry linesim``,
two real pseudo-terminals) and the simulated device as its own process (``otaferry
device run``, which lives across reboots and checks in); the gateway as its own process
(``otaferry gateway --config``) so it can be SIGKILLed; a Mosquitto of the test's own
when it needs TLS or a restart.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otaferry.device_fw.device import Device
from otaferry.protocol.artifact import build_full
from otaferry.protocol.keys import write_keypair
from otaferry.protocol.x25519keys import LinkPublicKey, write_link_keypair
from otaferry.tools.sample_fw import make_image

OTAFERRY = str(Path(sys.executable).with_name("otaferry"))
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HW, CHIP = "gw-test-board", "esp32"
BAUD = 921_600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Broker:
    """A Mosquitto of the test's own on a free loopback port (plain, or TLS with client
    certificates required), with persistence so that a restart keeps sessions and
    retained messages."""

    def __init__(self, folder: Path, *, tls: dict[str, Path] | None = None,
                 extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {folder}/",
            "autosave_interval 1",
            # keep the user running the test: no drop to user 'mosquitto', files stay readable
            f"user {os.environ.get('USER') or 'root'}" if os.geteuid() == 0 else "",
        ]
        if tls:
            lines += [
                f"cafile {tls['ca']}",
                f"certfile {tls['server_cert']}",
                f"keyfile {tls['server_key']}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        lines += extra
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 10, "mosquitto")
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto did not start: {self.proc.stderr.read()!r}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # saves its persistence file
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"


class EmbeddedBroker:
    """``otaferry broker`` (otaferry's own MQTT 3.1.1 broker) as its own process on a free
    loopback port; its log lines in ``log``."""

    def __init__(self, folder: Path | None = None) -> None:
        self.port = free_port()
        self.log = (folder or Path(os.environ.get("TMPDIR", "/tmp"))) / f"broker-{self.port}.log"
        out = open(self.log, "wb")  # noqa: SIM115 - the process holds it
        self.proc = subprocess.Popen([OTAFERRY, "broker", "--listen", f"127.0.0.1:{self.port}"],
                                     stdout=out, stderr=out)  # fmt: skip
        out.close()
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 10,
                 "otaferry broker")  # fmt: skip
        if self.proc.poll() is not None:
            raise AssertionError(f"otaferry broker did not start: {self.log.read_text()}")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def make_pki(folder: Path, clients: list[str]) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1, and one client certificate per name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
        path.chmod(0o644)  # readable by a broker that runs as another user

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    out = {"ca": folder / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(cn: str, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        )  # fmt: skip
        if server:
            import ipaddress

            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)  # fmt: skip
        cert = b.sign(ca_key, hashes.SHA256())
        cp, kp = folder / f"{cn}.pem", folder / f"{cn}-key.pem"
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, kp)
        return cp, kp

    out["server_cert"], out["server_key"] = issue("server", True)
    for cn in clients:
        out[f"{cn}_cert"], out[f"{cn}_key"] = issue(cn, False)
    return out


@dataclass
class SimDevice:
    name: str
    flash: Path
    gw_port: Path
    dev_port: Path
    device_id: str
    pub: Path
    flags: tuple[str, ...] = ()
    linesim: subprocess.Popen[bytes] | None = None
    proc: subprocess.Popen[bytes] | None = None
    lora: tuple[str, ...] = ()  # device run's LoRa options: behind a lora-sim, no linesim

    def start(self) -> None:
        if self.lora:
            wait_for(self.dev_port.exists, 10, "the lora-sim pty")
            self.proc = subprocess.Popen(
                [OTAFERRY, "device", "run", "--quiet", *self.lora, "--port", str(self.dev_port),
                 "--flash", str(self.flash), "--checkin-timeout", "60", *self.flags],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            return
        if self.linesim is None:
            self.linesim = subprocess.Popen(
                [OTAFERRY, "linesim", "--baud", str(BAUD), "--latency-ms", "1",
                 str(self.gw_port), str(self.dev_port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            wait_for(lambda: self.gw_port.exists() and self.dev_port.exists(), 10, "linesim ptys")
        self.proc = subprocess.Popen(
            [OTAFERRY, "device", "run", "--quiet", "--port", str(self.dev_port), "--flash",
             str(self.flash), "--baud", str(BAUD), "--checkin-timeout", "30", *self.flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        for p in (self.proc, self.linesim):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.proc = self.linesim = None

    def info(self) -> dict[str, Any]:
        with Device(str(self.flash), read_only=True) as dev:
            info: dict[str, Any] = dev.info()
        return info

    def running(self) -> dict[str, Any]:
        info = self.info()
        slot: dict[str, Any] = info["slots"][info["running_slot"]]
        return slot


@dataclass
class Site:
    """Keys, devices, a gateway config; the gateway as a process."""

    folder: Path
    broker_url: str
    prefix: str = field(default_factory=lambda: f"t{secrets.token_hex(4)}")
    gateway_id: str = "site-1"
    devices: list[SimDevice] = field(default_factory=list)
    tls: dict[str, str] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    lora_modem: str | None = None  # all devices behind one LoRa modem link on a lora-sim
    lora_radio: tuple[str, ...] = ("--region", "US915", "--sf", "7", "--bw", "500", "--cr", "5")
    lorasim: subprocess.Popen[bytes] | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # more top-level config keys
    tables: str = ""  # more config tables (TOML), appended

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.vendor = write_keypair(self.folder / "vendor.key")
        self.gw_key = write_link_keypair(self.folder / "gateway.key")
        self.old = make_image("1.0.0", revision=0, code_size=48_000)
        self.new = make_image("1.1.0", revision=1, secure_version=1, code_size=48_000)

    def add_device(self, name: str, *flags: str) -> SimDevice:
        flash = self.folder / f"{name}.flash"
        dev_id = secrets.token_bytes(8)
        Device.create(str(flash), hw=HW, chip=CHIP, trusted_keys=[self.vendor.public.raw],
                      image=self.old, version="1.0.0", device_id=dev_id,
                      gateways=[self.gw_key.public.raw]).close()  # fmt: skip
        with Device(str(flash)) as d:
            pub = LinkPublicKey.from_raw(d.link_public())
        pub_path = self.folder / f"{name}.pub"
        pub_path.write_bytes(pub.to_pem())
        dev = SimDevice(name, flash, self.folder / f"{name}-gw.tty", self.folder / f"{name}.tty",
                        dev_id.hex(), pub_path, flags)  # fmt: skip
        self.devices.append(dev)
        return dev

    def artifact(self, image: bytes | None = None, version: str = "1.1.0") -> Path:
        ota = build_full(image or self.new, self.vendor, hw=[HW], chip=CHIP, version=version,
                         security_counter=1)  # fmt: skip
        path = self.folder / f"v{version}.ota"
        path.write_bytes(ota)
        return path

    def write_config(self, **extra: Any) -> Path:
        lines = [
            f'gateway_id = "{self.gateway_id}"',
            'link_key = "gateway.key"',
            'trusted_keys = ["vendor.key.pub"]',
            'cache_dir = "cache"',
            'job_store = "jobs.sqlite"',
            'log = "json"',
            "progress_interval = 0.2",
            "rto = 0.3",
            "checkin_timeout = 60",
            *(f"{k} = {json.dumps(v)}" for k, v in {**self.settings, **extra}.items()),
            "[broker]",
            f'url = "{self.broker_url}"',
            f'prefix = "{self.prefix}"',
            "keepalive = 5",
        ]
        if self.tls:
            lines += [f'{k} = "{v}"' for k, v in self.tls.items()]
        if self.lora_modem:
            radio = dict(zip(self.lora_radio[::2], self.lora_radio[1::2], strict=True))
            lines += ["[[links]]", 'name = "lora0"', 'kind = "lora"',
                      f'modem = "{self.lora_modem}"', f'port = "{self.folder / "lora-gw.tty"}"',
                      f'region = "{radio["--region"]}"', f"sf = {radio['--sf']}",
                      f"bw = {radio['--bw']}", f"cr = {radio['--cr']}",
                      f"concurrency = {len(self.devices)}"]  # fmt: skip
            for i, dev in enumerate(self.devices):
                lines += ["[[links.devices]]", f'id = "{dev.device_id}"',
                          f'public_key = "{dev.pub.name}"', f"address = {i + 1}"]  # fmt: skip
        for dev in self.devices if not self.lora_modem else []:
            lines += [
                "[[links]]",
                f'name = "{dev.name}"',
                f'port = "{dev.gw_port}"',
                f"baud = {BAUD}",
                "[[links.devices]]",
                f'id = "{dev.device_id}"',
                f'public_key = "{dev.pub.name}"',
            ]
        path = self.folder / "gateway.toml"
        path.write_text("\n".join(lines) + "\n" + self.tables)
        return path

    def start_lora(self) -> None:
        """One ``otaferry lora-sim``: the gateway's modem (address 0) and one per device
        (addresses 1..N), each device's ``device run --lora-modem`` behind its own."""
        assert self.lora_modem is not None
        self.stats = self.folder / "lora-stats.json"
        ports = [self.folder / "lora-gw.tty"] + [d.dev_port for d in self.devices]
        self.lorasim = subprocess.Popen(
            [OTAFERRY, "lora-sim", "--modem", self.lora_modem, *self.lora_radio, "--seed", "3",
             "--stats", str(self.stats), *map(str, ports)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: all(p.exists() for p in ports), 10, "lora-sim ptys")
        for i, dev in enumerate(self.devices):
            dev.lora = ("--lora-modem", self.lora_modem, "--address", str(i + 1),
                        *self.lora_radio)  # fmt: skip
            dev.start()

    def start_gateway(self) -> subprocess.Popen[bytes]:
        config = self.write_config()
        self.log_path = self.folder / "gateway.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process holds it
        self.gateway = subprocess.Popen([OTAFERRY, "gateway", "--config", str(config)],
                                        stdout=log, stderr=log)  # fmt: skip
        log.close()
        return self.gateway

    def log_events(self) -> list[dict[str, Any]]:
        assert self.log_path is not None
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def kill_gateway(self, sig: int = signal.SIGKILL) -> int:
        assert self.gateway is not None
        self.gateway.send_signal(sig)
        rc = self.gateway.wait(timeout=20)
        self.gateway = None
        return rc

    def broker_args(self) -> list[str]:
        args = ["--broker", self.broker_url, "--prefix", self.prefix, "--gateway", self.gateway_id]
        if self.tls:
            args += ["--ca", self.tls["ca"], "--cert", self.tls["cert"], "--key", self.tls["key"]]
        return args

    def job(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([OTAFERRY, "job", *args], capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def submit(self, *args: str, wait: bool = True, timeout: float = 120) -> subprocess.Popen[str]:
        cmd = [OTAFERRY, "job", "submit", *self.broker_args(), *args]
        if wait:
            cmd.append("--wait")
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def close(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.kill()
            self.gateway.wait()
        for dev in self.devices:
            dev.stop()
        if self.lorasim is not None and self.lorasim.poll() is None:
            self.lorasim.terminate()  # writes its stats
            self.lorasim.wait(timeout=10)


class Watcher:
    """``mosquitto_sub`` would do; this is the same in Python: every message under a
    filter, in a thread, for assertions about what reached the broker."""

    def __init__(self, url: str, topic_filter: str, tls: dict[str, str] | None = None) -> None:
        import threading

        self.messages: list[tuple[str, bytes, bool]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.url, self.filter, self.tls = url, topic_filter, tls
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self._ready.wait(10):
            raise AssertionError("watcher did not connect")

    def _run(self) -> None:
        import asyncio

        from otaferry.transport.gateway.config import parse_broker_url
        from otaferry.transport.gateway.mqtt import MqttSession, MqttSettings

        host, port, tls, _, _ = parse_broker_url(self.url)
        t = self.tls or {}
        settings = MqttSettings(host, port, tls=tls, ca=Path(t["ca"]) if t else None,
                                cert=Path(t["cert"]) if t else None,
                                key=Path(t["key"]) if t else None)  # fmt: skip

        async def main() -> None:
            while not self._stop.is_set():
                try:
                    async with MqttSession(settings) as s:
                        await s.subscribe(self.filter)
                        self._ready.set()
                        async for m in s.messages():
                            self.messages.append((m.topic, m.payload, m.retain))
                            if self._stop.is_set():
                                return
                except Exception:
                    await asyncio.sleep(0.2)

        asyncio.run(main())

    def states(self, suffix: str) -> list[dict[str, Any]]:
        out = []
        for topic, payload, _ in list(self.messages):
            if topic.endswith(suffix) and payload:
                out.append(json.loads(payload))
        return out

    def stop(self) -> None:
        self._stop.set()


@contextlib.contextmanager
def site(folder: Path, broker_url: str, n: int = 1, flags: dict[int, tuple[str, ...]] | None = None,
         tls: dict[str, str] | None = None) -> Iterator[Site]:  # fmt: skip
    s = Site(folder, broker_url, tls=tls)
    try:
        for i in range(n):
            dev = s.add_device(f"dev{i}", *(flags or {}).get(i, ()))
            dev.start()
        yield s
    finally:
        s.close()
