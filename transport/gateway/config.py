"""The gateway's configuration file (TOML), checked whole before anything starts.

A mistake is one :class:`ConfigError` naming the key (``links[1].devices[0].public_key``)
and what is wrong, so ``otaferry gateway`` can print one line and exit. Paths are taken
relative to the config file's folder. Example::

    gateway_id = "site-7"
    link_key = "gateway.key"                 # this gateway's X25519 link key (PEM)
    trusted_keys = ["vendor.key.pub"]        # vendor Ed25519 keys artifacts must be signed by
    cache_dir = "cache"                      # artifacts by SHA-256
    job_store = "jobs.sqlite"
    log = "json"                             # or "text"
    progress_interval = 1.0                  # s between progress messages per device
    retries = 12                             # retransmissions before a session times out

    [retry]                                  # new attempts after a TIMEOUT (default none)
    timed_out = 2
    backoff = 60.0                           # s before the first, doubling
    max_backoff = 3600.0

    [broker]
    url = "mqtts://broker.example:8883"      # mqtt:// (1883) or mqtts:// (8883)
    prefix = "otaferry"
    ca = "ca.pem"                            # TLS: CA to check the broker against
    cert = "gw.pem"                          # mutual TLS: this gateway's client certificate
    key = "gw-key.pem"
    username = "site-7"                      # optional
    password = "..."

    [[links]]
    name = "uart0"
    port = "/dev/ttyUSB0"                    # any pyserial URL
    baud = 921600
    concurrency = 1                          # sessions at once on this link
    [[links.devices]]
    id = "0011223344556677"                  # device id (16 hex digits)
    public_key = "dev1.pub"                  # its X25519 link public key
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ...protocol.errors import OtaferryError, Reason

__all__ = [
    "BrokerConfig",
    "ConfigError",
    "DeviceConfig",
    "GatewayConfig",
    "LinkConfig",
    "RetryPolicy",
    "load_config",
    "parse_broker_url",
]

LORA_MODEMS = ("rylr998", "rylr896", "rak3172", "e22", "e32")


class ConfigError(OtaferryError):
    """A gateway configuration that cannot work; ``key`` names the setting."""

    reason = Reason.MALFORMED

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config: {key}: {message}", Reason.MALFORMED, key=key)
        self.key = key


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str
    port: int
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password: str | None = None
    prefix: str = "otaferry"
    keepalive: int = 30


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    id: str  # 16 lower-case hex digits
    public_key: Path
    address: int = 0  # LoRa: the device's modem address; a serial line has one peer


@dataclass(frozen=True, slots=True)
class LinkConfig:
    name: str
    port: str
    baud: int = 115_200
    mtu: int = 1024
    concurrency: int = 1
    kind: str = "serial"  # or "lora"
    modem: str | None = None
    region: str = "EU868"
    sf: int = 7
    bw: int = 125
    cr: int = 5  # coding rate 4/cr
    devices: tuple[DeviceConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """New attempts of an execution whose device stopped answering (reason TIMEOUT,
    AWS ``TIMED_OUT``): AWS IoT Jobs' ``jobExecutionsRetryConfig`` with the
    ``TIMED_OUT`` criterion. Attempt n+1 starts ``backoff * 2**n`` s (at most
    ``max_backoff``) after attempt n ended. Other failures are not retried: a
    rollback or a refusal would end the same way again."""

    timed_out: int = 0  # new attempts (0: none, the execution fails TIMED_OUT at once)
    backoff: float = 60.0
    max_backoff: float = 3600.0

    def delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt`` (1 = the first new one)."""
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    gateway_id: str
    broker: BrokerConfig
    link_key: Path
    trusted_keys: tuple[Path, ...]
    cache_dir: Path
    job_store: Path
    links: tuple[LinkConfig, ...]
    log: str = "text"
    progress_interval: float = 1.0
    rto: float = 1.0
    checkin_timeout: float | None = None  # None: 180 s on a UART, derived over LoRa
    retries: int = 12  # retransmissions of a frame or handshake message before TIMEOUT
    retry: RetryPolicy = RetryPolicy()

    def device(self, device_id: str) -> tuple[LinkConfig, DeviceConfig] | None:
        for link in self.links:
            for dev in link.devices:
                if dev.id == device_id:
                    return link, dev
        return None


def parse_broker_url(
    url: str, key: str = "broker.url"
) -> tuple[str, int, bool, str | None, str | None]:
    """``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://...``: host, port, tls, user, password."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(key, f"{url!r}: the scheme must be mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ConfigError(key, f"{url!r} names no host")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError(key, f"{url!r}: the port is not a number 1..65535") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, tls, user, password


class _Table:
    """One TOML table being read: every key taken is checked, unknown keys are errors."""

    def __init__(self, data: Any, where: str, base: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(where or "(top level)", "must be a table")
        self.data = data
        self.where = where
        self.base = base
        self.taken: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.taken.add(key)
        if key not in self.data:
            if default is ...:
                raise ConfigError(self.name(key), "missing")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(self.name(key), f"must be {_kind(kinds)}, not {value!r}")
        if not isinstance(value, kinds):
            raise ConfigError(self.name(key), f"must be {_kind(kinds)}, not {value!r}")
        return value

    def text(self, key: str, default: Any = ...) -> Any:
        value = self.get(key, str, default)
        if isinstance(value, str) and not value:
            raise ConfigError(self.name(key), "must not be empty")
        return value

    def number(
        self, key: str, lo: float, hi: float, default: Any = ..., *, integer: bool = True
    ) -> Any:
        value = self.get(key, int if integer else (int, float), default)
        if value is not None and not lo <= value <= hi:
            raise ConfigError(self.name(key), f"{value} is out of range ({lo:g}..{hi:g})")
        return value

    def path(self, key: str, default: Any = ..., *, must_exist: bool = True) -> Path | None:
        value = self.text(key, default)
        if value is None:
            return None
        path: Path = (self.base / os.path.expanduser(str(value))).resolve()
        if must_exist and not path.exists():
            raise ConfigError(self.name(key), f"{value}: no such file")
        return path

    def table(self, key: str, default: Any = ...) -> _Table:
        return _Table(self.get(key, dict, default), self.name(key), self.base)

    def tables(self, key: str) -> list[_Table]:
        items = self.get(key, list, [])
        return [_Table(item, f"{self.name(key)}[{i}]", self.base) for i, item in enumerate(items)]

    def done(self) -> None:
        for key in self.data:
            if key not in self.taken:
                raise ConfigError(self.name(key), "unknown setting")


def _kind(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", dict: "a table",
             list: "a list", bool: "true or false"}  # fmt: skip
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _hex_id(value: str, key: str) -> str:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise ConfigError(key, f"{value!r} is not a device id of 16 hex digits")
    return raw.hex()


def _check_radio(t: _Table, region_name: str, sf: int, bw: int) -> None:
    """A LoRa link's region and modulation, as the modem hub will take them."""
    from ...protocol.lora import LoRaParams, region

    try:
        plan = region(region_name)
    except ValueError as exc:
        raise ConfigError(t.name("region"), str(exc)) from None
    if bw not in (125, 250, 500):
        raise ConfigError(t.name("bw"), f"{bw}: 125, 250 or 500 (kHz)")
    try:
        plan.check(LoRaParams(sf, bw * 1000), plan.default_hz)
    except ValueError as exc:
        raise ConfigError(t.name("bw"), str(exc)) from None


def _retry_policy(t: _Table) -> RetryPolicy:
    policy = RetryPolicy(
        timed_out=t.number("timed_out", 0, 10, 0),  # AWS allows 0..10 as well
        backoff=t.number("backoff", 0, 86_400, 60.0, integer=False),
        max_backoff=t.number("max_backoff", 0, 7 * 86_400, 3600.0, integer=False),
    )
    t.done()
    return policy


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and check ``path``; raises :class:`ConfigError` (or OtaferryError IO_ERROR)."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise OtaferryError(f"{p}: {exc.strerror}", Reason.IO_ERROR) from exc
    except UnicodeError:
        raise ConfigError("(file)", f"{p} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", f"{p}: {exc}") from None
    return config_from_dict(data, p.resolve().parent)


def config_from_dict(data: dict[str, Any], base: Path) -> GatewayConfig:
    top = _Table(data, "", base)
    gateway_id = top.text("gateway_id")
    if any(c in gateway_id for c in "/+#") or len(gateway_id) > 64:
        raise ConfigError("gateway_id", f"{gateway_id!r}: no '/', '+' or '#', at most 64 chars")
    b = top.table("broker")
    url = b.text("url")
    host, port, tls, user, password = parse_broker_url(url)
    prefix = b.text("prefix", "otaferry")
    if any(c in prefix for c in "+#") or prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError("broker.prefix", f"{prefix!r}: no '+' or '#', no leading/trailing '/'")
    ca = b.path("ca", None)
    cert = b.path("cert", None)
    key = b.path("key", None)
    if (cert is None) != (key is None):
        raise ConfigError("broker.cert" if cert is None else "broker.key",
                          "a client certificate needs both cert and key")  # fmt: skip
    if (ca or cert) and not tls:
        raise ConfigError("broker.url", f"{url!r}: TLS files are given, use mqtts://")
    broker = BrokerConfig(
        host=host,
        port=port,
        tls=tls,
        ca=ca,
        cert=cert,
        key=key,
        username=b.text("username", user),
        password=b.get("password", str, password),
        prefix=prefix,
        keepalive=b.number("keepalive", 5, 3600, 30),
    )
    b.done()
    links: list[LinkConfig] = []
    seen: dict[str, str] = {}
    for t in top.tables("links"):
        kind = t.text("kind", "serial")
        if kind not in ("serial", "lora"):
            raise ConfigError(t.name("kind"), f"{kind!r}: serial or lora")
        modem = t.text("modem", None)
        if kind == "lora" and modem not in LORA_MODEMS:
            raise ConfigError(t.name("modem"), f"{modem!r}: one of {', '.join(LORA_MODEMS)}")
        devices: list[DeviceConfig] = []
        for d in t.tables("devices"):
            dev_id = _hex_id(d.text("id"), d.name("id"))
            if dev_id in seen:
                raise ConfigError(d.name("id"), f"{dev_id} is already behind link {seen[dev_id]}")
            address = d.number("address", 1, 65534, 1 if kind == "lora" else 0) if kind == "lora" \
                else d.number("address", 0, 0, 0)  # fmt: skip
            devices.append(DeviceConfig(dev_id, d.path("public_key"), address))  # type: ignore[arg-type]
            d.done()
        name = t.text("name", f"link{len(links)}")
        for dev in devices:
            seen[dev.id] = name
        if kind == "serial" and len(devices) > 1:
            raise ConfigError(t.name("devices"), "a serial line has one device behind it")
        mtu = t.number("mtu", 26, 65535, 1024) if kind == "serial" else t.number("mtu", 0, 255, 0)
        sf = t.number("sf", 7, 12, 7)
        bw = t.number("bw", 125, 500, 125)
        lora_region = t.text("region", "EU868")
        if kind == "lora":
            _check_radio(t, lora_region, sf, bw)
        link = LinkConfig(
            name=name,
            port=t.text("port"),
            baud=t.number("baud", 300, 16_000_000, 115_200),
            mtu=mtu,
            concurrency=t.number("concurrency", 1, 100_000, 1 if kind == "serial" else 4),
            kind=kind,
            modem=modem,
            region=lora_region,
            sf=sf,
            bw=bw,
            cr=t.number("cr", 5, 8, 5),
            devices=tuple(devices),
        )
        t.done()
        links.append(link)
    log = top.text("log", "text")
    if log not in ("text", "json"):
        raise ConfigError("log", f"{log!r}: text or json")
    trusted = top.get("trusted_keys", list)
    paths: list[Path] = []
    for i, item in enumerate(trusted):
        if not isinstance(item, str) or not item:
            raise ConfigError(f"trusted_keys[{i}]", "must be a path to an Ed25519 public key")
        path = (base / os.path.expanduser(item)).resolve()
        if not path.exists():
            raise ConfigError(f"trusted_keys[{i}]", f"{item}: no such file")
        paths.append(path)
    if not paths:
        raise ConfigError("trusted_keys", "name at least one vendor public key")
    cfg = GatewayConfig(
        gateway_id=gateway_id,
        broker=broker,
        link_key=top.path("link_key"),  # type: ignore[arg-type]
        trusted_keys=tuple(paths),
        cache_dir=top.path("cache_dir", "cache", must_exist=False),  # type: ignore[arg-type]
        job_store=top.path("job_store", "jobs.sqlite", must_exist=False),  # type: ignore[arg-type]
        links=tuple(links),
        log=log,
        progress_interval=top.number("progress_interval", 0.05, 3600, 1.0, integer=False),
        rto=top.number("rto", 0.05, 60, 1.0, integer=False),
        checkin_timeout=top.number("checkin_timeout", 1, 86_400, None, integer=False),
        retries=top.number("retries", 0, 100, 12),
        retry=_retry_policy(top.table("retry", {})),
    )
    top.done()
    return cfg
