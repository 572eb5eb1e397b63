"""``otaferry gateway`` (the service) and ``otaferry job submit|status|cancel|list``."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..protocol.errors import OtaferryError, Reason
from .args import UsageError
from .files import read_file

if TYPE_CHECKING:
    from ..transport.gateway.mqtt import MqttSettings

# The service and MQTT modules are imported by the commands that use them, so that
# building the CLI's parser (every otaferry command) does not load aiomqtt.

# ---------------------------------------------------------------- the service


def gateway(args: argparse.Namespace) -> int:
    from ..transport.gateway.config import load_config
    from ..transport.gateway.service import Gateway, Log

    config = load_config(args.config)
    log = Log(args.log or config.log)
    service = Gateway(config, log=log)
    service.open()  # keys, store, cache: a bad file is one line before anything connects

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)

    asyncio.run(main())
    return 0


def broker(args: argparse.Namespace) -> int:
    from ..transport.gateway.broker import Broker, BrokerLimits, BrokerLog, is_loopback

    host, _, port_text = args.listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(f"--listen {args.listen!r}: HOST:PORT, PORT 0..65535") from None
    if not is_loopback(host) and not args.allow_remote:
        raise UsageError(f"--listen {args.listen!r}: the broker has no authentication, so it "
                         "listens on loopback only (--allow-remote to override)")  # fmt: skip
    limits = BrokerLimits(max_packet=args.max_packet, max_queued=args.max_queued)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Broker(limits, log=BrokerLog(args.log)) as b:
            try:
                await b.start(host, port, allow_remote=args.allow_remote)
            except OSError as exc:
                raise OtaferryError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                    Reason.IO_ERROR) from None  # fmt: skip
            await stop.wait()

    asyncio.run(main())
    return 0


# ---------------------------------------------------------------- the submitter


def add_broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, help="mqtt://[user[:pass]@]host[:port] or mqtts://")
    p.add_argument("--tls", action="store_true", help="TLS even with an mqtt:// URL")
    p.add_argument("--ca", help="CA certificate (PEM) that signed the broker's certificate")
    p.add_argument("--cert", help="client certificate (PEM), for mutual TLS")
    p.add_argument("--key", help="the client certificate's private key (PEM)")
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password", help="MQTT password")
    p.add_argument("--prefix", default="otaferry", help="topic prefix (default otaferry)")
    p.add_argument("--gateway", required=True, help="the gateway id")


def settings_from(args: argparse.Namespace) -> MqttSettings:
    from ..transport.gateway.config import parse_broker_url
    from ..transport.gateway.mqtt import MqttSettings

    try:
        host, port, tls, user, password = parse_broker_url(args.broker, "--broker")
    except OtaferryError as exc:
        raise UsageError(exc.message.replace("config: ", "")) from None
    tls = tls or args.tls or bool(args.ca or args.cert)
    if bool(args.cert) != bool(args.key):
        raise UsageError("--cert and --key go together (mutual TLS)")
    if tls and not (args.broker.startswith(("mqtts:", "ssl:"))) and ":" not in args.broker[8:]:
        port = 8883
    return MqttSettings(
        host=host, port=port, tls=tls,
        ca=Path(args.ca) if args.ca else None,
        cert=Path(args.cert) if args.cert else None,
        key=Path(args.key) if args.key else None,
        username=args.username or user, password=args.password or password,
        client_id=f"otaferry-cli-{secrets.token_hex(6)}", timeout=5.0,
    )  # fmt: skip


class StatePrinter:
    """One progress line per device state: redrawn in place on a terminal."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.tty = sys.stderr.isatty()
        self.last_phase: dict[str, str] = {}

    def __call__(self, device: str, st: dict[str, Any]) -> None:
        if self.json:
            print(json.dumps({"device": device, **st}, sort_keys=True), flush=True)
            return
        phase = st.get("phase", "?")
        total = st.get("total_bytes") or 0
        done = st.get("confirmed_bytes") or 0
        parts = [f"device {device}: {phase:<12}"]
        if total and phase == "transferring":
            pct = 100 * done / total
            bar = "#" * int(pct / 5)
            parts.append(f"[{bar:<20}] {pct:5.1f} % {done}/{total} B")
            if st.get("rate_bps"):
                parts.append(f"{st['rate_bps'] / 1024:6.1f} KiB/s")
            if st.get("eta_s") is not None:
                parts.append(f"ETA {st['eta_s']:5.0f} s")
        if st.get("reason"):
            parts.append(f"({st['reason']}: {st.get('message') or ''})")
        if st.get("running_version") and phase in ("done", "checking_in", "rolled_back"):
            parts.append(f"runs {st['running_version']}")
        line = "  ".join(parts)
        same = self.last_phase.get(device) == phase == "transferring"
        if self.tty and same:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            if self.tty and self.last_phase.get(device) == "transferring":
                print(file=sys.stderr)
            print(line, file=sys.stderr, flush=True, end="" if self.tty and
                  phase == "transferring" else "\n")  # fmt: skip
        self.last_phase[device] = phase


def _final(result: dict[str, Any]) -> int:
    if result.get("state") == "done":
        return 0
    bad = [(d, r) for d, r in result.get("devices", {}).items() if r.get("phase") != "done"]
    what = "; ".join(f"{d} {r.get('phase')} ({r.get('reason')}: {r.get('message')})"
                     for d, r in bad)  # fmt: skip
    reason = next((r.get("reason") for _, r in bad if r.get("reason")), None)
    code = Reason[str(reason)] if reason in Reason.__members__ else Reason.ABORTED
    raise OtaferryError(f"job {result.get('job_id')}: {result.get('state')}: {what}", code)


def job_submit(args: argparse.Namespace) -> int:
    from ..transport.gateway.client import JobClient
    from ..transport.gateway.topics import valid_job_id

    otas = [read_file(p) for p in args.artifacts]
    job_id = args.job_id or f"job-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    if not valid_job_id(job_id):
        raise UsageError(f"--job-id {job_id!r}: 1..64 of A-Z a-z 0-9 _ . : -")
    devices = [d.lower() for d in args.device]
    for d in devices:
        try:
            ok = len(bytes.fromhex(d)) == 8
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"--device {d!r}: a device id is 16 hex digits")

    async def main() -> int:
        async with JobClient(settings_from(args), args.prefix, args.gateway) as client:
            shas = [await client.upload(ota) for ota in otas]
            await client.submit(job_id, devices, shas)
            print(f"submitted job {job_id}: {len(devices)} device(s), artifacts "
                  f"{', '.join(s[:12] for s in shas)}", file=sys.stderr)  # fmt: skip
            if not args.wait:
                print(job_id)
                return 0
            printer = StatePrinter(args.json)
            result = await client.follow(job_id, on_state=printer,
                                         artifacts=dict(zip(shas, otas, strict=True)),
                                         timeout=args.timeout)  # fmt: skip
            if printer.tty:
                print(file=sys.stderr)
            if args.json:
                print(json.dumps({"result": result}, sort_keys=True))
            else:
                print(f"job {job_id}: {result['state']} ({result.get('aws')})")
            return _final(result)

    return asyncio.run(main())


def job_status(args: argparse.Namespace) -> int:
    from ..transport.gateway.client import JobClient

    async def main() -> int:
        async with JobClient(settings_from(args), args.prefix, args.gateway) as client:
            got = await client.status(args.job_id)
        if got is None:
            raise OtaferryError(f"job {args.job_id}: no result from gateway {args.gateway} "
                                "(unknown, or not seen yet)", Reason.BAD_STATE)  # fmt: skip
        if args.json:
            print(json.dumps(got, indent=2, sort_keys=True))
        else:
            r = got["result"]
            print(f"job {r['job_id']}: {r['state']} ({r.get('aws')})")
            for dev, d in sorted(r.get("devices", {}).items()):
                st = got["states"].get(dev, {})
                prog = ""
                if st.get("total_bytes"):
                    prog = f" {st.get('confirmed_bytes', 0)}/{st['total_bytes']} B"
                why = f" {d['reason']}: {d.get('message')}" if d.get("reason") else ""
                print(f"  {dev}: {d['phase']} ({d['aws']}){prog}{why}")
        return 0

    return asyncio.run(main())


def job_cancel(args: argparse.Namespace) -> int:
    from ..transport.gateway.client import JobClient

    async def main() -> int:
        async with JobClient(settings_from(args), args.prefix, args.gateway) as client:
            await client.cancel(args.job_id)
        print(f"cancel requested for job {args.job_id}")
        return 0

    return asyncio.run(main())


def job_list(args: argparse.Namespace) -> int:
    from ..transport.gateway.client import JobClient

    async def main() -> int:
        async with JobClient(settings_from(args), args.prefix, args.gateway) as client:
            jobs = await client.list_jobs()
            health = await client.health()
        if args.json:
            print(json.dumps({"health": health, "jobs": jobs}, indent=2, sort_keys=True))
            return 0
        if health:
            print(f"gateway {args.gateway}: {health.get('state')}, "
                  f"{health.get('active_sessions', 0)} active, "
                  f"{health.get('queue_depth', 0)} queued")  # fmt: skip
        for j in jobs:
            devs = ", ".join(f"{d}={r.get('phase')}" for d, r in j.get("devices", {}).items())
            print(f"{j['job_id']:<32} {j.get('state'):<12} {j.get('aws', ''):<12} {devs}")
        return 0

    return asyncio.run(main())


def add_parsers(sub: Any, lazy: Any) -> None:
    """The gateway and job commands in the CLI's parser."""
    from . import args as A

    s = sub.add_parser("gateway", help="the gateway service: jobs over MQTT, sessions to devices")
    s.add_argument("--config", required=True, help="gateway.toml (README 'The gateway')")
    s.add_argument("--log", choices=("text", "json"), help="log style (default: the config's)")
    s.set_defaults(func=lazy("gatewaycli", "gateway"))

    s = sub.add_parser("broker", help="a small MQTT 3.1.1 broker (the demo's embedded default)")
    s.add_argument("--listen", default="127.0.0.1:1883",
                   help="HOST:PORT (default 127.0.0.1:1883; port 0: a free one, logged)")
    s.add_argument("--allow-remote", action="store_true",
                   help="listen on a non-loopback address (there is no authentication)")
    s.add_argument("--max-packet", type=A.int_range(64, 1 << 28), default=1 << 20,
                   help="largest packet accepted, bytes (default 1 MiB)")
    s.add_argument("--max-queued", type=A.int_range(1, 1 << 20), default=1000,
                   help="messages kept per session, queued and in flight (default 1000)")
    s.add_argument("--log", choices=("text", "json"), default="text", help="log style")
    s.set_defaults(func=lazy("gatewaycli", "broker"))

    s = sub.add_parser("job", help="submit, follow, cancel and list a gateway's jobs over MQTT")
    jsub = s.add_subparsers(dest="job_command", required=True, metavar="SUBCOMMAND")
    j = jsub.add_parser("submit", help="publish artifacts and a job; --wait follows it")
    add_broker_options(j)
    j.add_argument("--device", action="append", required=True, help="device id (repeatable)")
    j.add_argument("--job-id", help="the job id (default: a new one)")
    j.add_argument("--wait", action="store_true",
                   help="follow the device states; exit 0 only when done after check-in")
    j.add_argument("--timeout", type=A.positive_float, help="with --wait: give up after S s")
    j.add_argument("--json", action="store_true", help="JSON lines of the device states")
    j.add_argument("artifacts", nargs="+", metavar="UPDATE.ota",
                   help="one artifact, or several (deltas and a full one) to choose from")
    j.set_defaults(func=lazy("gatewaycli", "job_submit"))
    for name, func, what in (("status", "job_status", "a job's result and device states"),
                             ("cancel", "job_cancel", "cancel a job")):  # fmt: skip
        j = jsub.add_parser(name, help=what)
        add_broker_options(j)
        if name == "status":
            j.add_argument("--json", action="store_true", help="JSON output")
        j.add_argument("job_id", help="the job id")
        j.set_defaults(func=lazy("gatewaycli", func))
    j = jsub.add_parser("list", help="the gateway's health and its jobs' results")
    add_broker_options(j)
    j.add_argument("--json", action="store_true", help="JSON output")
    j.set_defaults(func=lazy("gatewaycli", "job_list"))
