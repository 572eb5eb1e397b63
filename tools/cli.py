"""The ``otaferry`` command line.

It composes protocol/ (build, inspect, verify), device_fw/ (the simulated
device) and transport/ (links); it holds no protocol logic of its own. Every
error leaves through :func:`main` as one line ``otaferry: error[REASON]: ...``
and a non-zero exit status (1), usage errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..device_fw.reasons import DeviceError
from ..device_fw.reasons import name as reason_name
from ..protocol.errors import OtaferryError

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


# ---------------------------------------------------------------- artifacts


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.link:
        from ..protocol.x25519keys import write_link_keypair

        link = write_link_keypair(args.keyfile)
        print(
            f"wrote {args.keyfile} (X25519 link key, private) and {args.keyfile}.pub; "
            f"public {link.public.raw.hex()}"
        )
        return 0
    from ..protocol.keys import write_keypair

    key = write_keypair(args.keyfile)
    print(
        f"wrote {args.keyfile} (private) and {args.keyfile}.pub; key id {key.public.key_id.hex()}"
    )
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from . import build as build_mod

    info = build_mod.build_from_args(args)
    print(info)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..protocol.artifact import inspect_artifact

    info = inspect_artifact(args.artifact)
    if args.json:
        _print_json(info)
    else:
        width = max(len(k) for k in info)
        for key in sorted(info):
            value = info[key]
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            print(f"{key:<{width}}  {value}")
    return 0 if info.get("segments_ok", True) else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from ..protocol.artifact import open_artifact
    from ..protocol.keys import load_verify_key

    trusted = [load_verify_key(p) for p in args.pubkey]
    with open_artifact(args.artifact, trusted) as reader:  # verified before parsed
        key = reader.verify(trusted)
        count = sum(1 for _ in reader.iter_segments())
    m = reader.manifest
    print(
        f"OK: {args.artifact}: version {m.version}, {count} segments checked, "
        f"signed by key {key.key_id.hex()}"
    )
    return 0


# ---------------------------------------------------------------- device, link, demo


def _lazy(module: str, func: str) -> Handler:
    """A handler importing ``otaferry.tools.<module>`` only when its command runs."""

    def run(args: argparse.Namespace) -> int:
        handler: Handler = getattr(importlib.import_module(f"{__package__}.{module}"), func)
        return handler(args)

    return run


def cmd_linesim(args: argparse.Namespace) -> int:
    from ..transport import linesim

    return linesim.main(args.rest)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="otaferry",
        description="Build, verify and ferry signed firmware updates into A/B flash slots.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "keygen", help="create a key pair: Ed25519 signing (default) or X25519 link (--link)"
    )
    s.add_argument("--link", action="store_true", help="an X25519 link key (gateway identity)")
    s.add_argument("keyfile")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("build", help="build a signed .ota artifact from a firmware image")
    s.add_argument("--key", required=True, help="private signing key (PEM)")
    s.add_argument("--hw", action="append", help="compatible hardware id (repeatable)")
    s.add_argument("--chip", help="chip / architecture (default: from an ESP image)")
    s.add_argument(
        "--version", dest="fw_version", help="firmware version (default: from an ESP image)"
    )
    s.add_argument("--project", help="project name (default: from an ESP image)")
    s.add_argument(
        "--security-counter",
        type=int,
        help="anti-rollback counter (default: ESP secure_version or 0)",
    )
    s.add_argument("--base", help="old image: build a delta against it")
    s.add_argument("--segment-size", type=int, help="target bytes per segment (multiple of 4096)")
    s.add_argument("--level", type=int, default=19, help="zstd level (default 19)")
    s.add_argument("-o", "--output", required=True, help="output .ota file")
    s.add_argument("image", help="new firmware image")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("inspect", help="show an artifact's manifest and check its segments")
    s.add_argument("--json", action="store_true", help="stable JSON output")
    s.add_argument("artifact")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("verify", help="verify signature and every segment (exit 0 only if valid)")
    s.add_argument(
        "--pubkey", action="append", required=True, help="trusted public key (repeatable)"
    )
    s.add_argument("artifact")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("flash", help="simulated device flash")
    fsub = s.add_subparsers(dest="flash_command", required=True, metavar="SUBCOMMAND")
    f = fsub.add_parser("init", help="create a flash file with a running firmware in ota_0")
    f.add_argument("--hw", required=True, help="device hardware id")
    f.add_argument("--chip", default="esp32", help="device chip (default esp32)")
    f.add_argument(
        "--trust", action="append", required=True, help="trusted public key (repeatable)"
    )
    f.add_argument("--image", required=True, help="firmware installed in ota_0 as valid")
    f.add_argument(
        "--version",
        dest="fw_version",
        help="version of that firmware (default: from an ESP image, else 'factory')",
    )
    f.add_argument("--security-counter", type=int, default=0)
    f.add_argument(
        "--partitions",
        help="ESP-IDF partition table CSV (default: nvs, otadata, phy_init, ota_0, ota_1)",
    )
    f.add_argument("--size", default="4M", help="flash size (default 4M)")
    f.add_argument("--device-id", help="device id (hex, default random)")
    f.add_argument("--gateway-pub", action="append", help="accepted gateway link key (repeatable)")
    f.add_argument("flash")
    f.set_defaults(func=_lazy("devicecli", "flash_init"))

    s = sub.add_parser("device", help="act as the simulated device")
    dsub = s.add_subparsers(dest="device_command", required=True, metavar="SUBCOMMAND")
    d = dsub.add_parser("install", help="install an artifact into the passive slot (offline)")
    d.add_argument("--flash", required=True)
    d.add_argument("artifact")
    d.set_defaults(func=_lazy("devicecli", "install"))
    d = dsub.add_parser("boot", help="reset the device: bootloader, then the app's self-test")
    d.add_argument("--flash", required=True)
    d.add_argument(
        "--fail-self-test", action="store_true", help="the new image fails its self-test"
    )
    d.add_argument(
        "--no-confirm",
        action="store_true",
        help="the app dies before it confirms (no self-test verdict)",
    )
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_lazy("devicecli", "boot"))
    d = dsub.add_parser("run", help="serve the link protocol on a port until killed")
    d.add_argument("--port", required=True, help="pyserial URL or device path")
    d.add_argument("--flash", required=True)
    d.add_argument("--baud", type=int, default=115200)
    d.add_argument("--mtu", type=int, default=1024, help="largest frame body (default 1024)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_lazy("linkcli", "device_run"))
    d = dsub.add_parser(
        "provision", help="the device's link identity: X25519 key, accepted gateways, policy"
    )
    d.add_argument("--flash", required=True)
    d.add_argument("--gateway-pub", action="append", help="accepted gateway key (replaces list)")
    d.add_argument("--new-key", action="store_true", help="generate a new device key")
    d.add_argument(
        "--revoke",
        action="append",
        metavar="KEYID",
        help="refuse artifacts signed by this key id (16 hex digits; repeatable)",
    )
    d.add_argument("--out", help="write the device's public key (PEM) here")
    pol = d.add_mutually_exclusive_group()
    pol.add_argument(
        "--require-secure",
        dest="require_secure",
        action="store_true",
        default=None,
        help="refuse plaintext link frames (the default)",
    )
    pol.add_argument(
        "--allow-plaintext",
        dest="require_secure",
        action="store_false",
        help="also accept plaintext frames (bench only)",
    )
    d.set_defaults(func=_lazy("devicecli", "provision"))
    d = dsub.add_parser("info", help="slots, states, versions, security counter")
    d.add_argument("--flash", required=True)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_lazy("devicecli", "info"))

    s = sub.add_parser("push", help="push an update to a device over a serial line")
    s.add_argument("--port", required=True, help="pyserial URL: /dev/ttyUSB0, socket://h:p, ...")
    s.add_argument("--baud", type=int, default=115200)
    s.add_argument("--window", type=int, help="frames in flight (default: from baud and mtu)")
    s.add_argument("--mtu", type=int, default=1024, help="largest frame body (default 1024)")
    s.add_argument("--rto", type=float, default=1.0, help="first retransmit timeout, s")
    s.add_argument("--retries", type=int, default=8, help="silent timeouts before giving up")
    s.add_argument("--json-progress", action="store_true", help="one JSON line per event")
    s.add_argument("--link-key", help="this gateway's X25519 link key (otaferry keygen --link)")
    s.add_argument("--device-pub", help="the device's link public key (device provision --out)")
    s.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="no secure channel (bench only; the device must allow plaintext)",
    )
    s.add_argument(
        "--no-full-fallback",
        action="store_true",
        help="with several artifacts: only a delta matching the device, never a full image",
    )
    s.add_argument(
        "artifacts",
        nargs="+",
        metavar="OUT.ota",
        help="one artifact, or several (deltas and full) to choose from",
    )
    s.set_defaults(func=_lazy("linkcli", "push"))

    s = sub.add_parser(
        "linesim",
        help="two pseudo-terminals joined by a simulated UART (baud, latency, errors, drops)",
        add_help=False,
    )
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_linesim)

    s = sub.add_parser(
        "bench",
        help="benchmarks: 'bench delta|artifact DIR', 'bench link [IMAGE]', 'bench campaign', "
        "'bench fleet [--sessions N]'",
        add_help=False,
    )
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("demo", help="the whole flow on a simulated device (the quick start)")
    s.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    s.add_argument(
        "--image",
        help="firmware for the first update (default: a generated ESP32 app image v1.1.0)",
    )
    s.set_defaults(func=_lazy("demo", "run"))

    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import artifact, campaign, delta, fleet, link

    benches = {
        "delta": delta.main,
        "artifact": artifact.main,
        "link": link.main,
        "campaign": campaign.main,
        "fleet": fleet.main,
    }
    if not args.rest or args.rest[0] not in benches:
        print(f"usage: otaferry bench {{{','.join(benches)}}} [ARGS] [options]  (-h for each)")
        return 2
    return benches[args.rest[0]](args.rest[1:])


# Commands that own their argument parsing (listed in the help via build_parser).
PASSTHROUGH = {"linesim": cmd_linesim, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        args = argparse.Namespace(rest=argv[1:], func=PASSTHROUGH[argv[0]])
    else:
        args = build_parser().parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except OtaferryError as exc:
        print(f"otaferry: error[{exc.reason.name}]: {exc.message}", file=sys.stderr)
    except DeviceError as exc:
        print(f"otaferry: error[{reason_name(exc.reason)}]: {exc.message}", file=sys.stderr)
    except KeyboardInterrupt:
        print("otaferry: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
