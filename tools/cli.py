"""The ``otaferry`` command line.

It composes protocol/ (build, inspect, verify), device_fw/ (the simulated
device) and transport/ (links); it holds no protocol logic of its own. Every
error leaves through :func:`main` as one line ``otaferry: error[REASON]: ...``
and exit status 1: otaferry's own errors with their reason, OSError as
IO_ERROR, ValueError / UnicodeError as MALFORMED, anything else as INTERNAL
(``OTAFERRY_DEBUG=1`` prints the traceback too). Usage errors, including a
numeric option out of range (checked while parsing, see ``args.py``), are
``error[USAGE]`` with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..device_fw.flash import FlashBusy
from ..device_fw.reasons import DeviceError
from ..device_fw.reasons import name as reason_name
from ..protocol.errors import OtaferryError, Reason
from . import args as A
from .args import UsageError

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


@contextmanager
def _naming(path: str) -> Iterator[None]:
    """Errors about a file's content say which file (the readers take streams)."""
    try:
        yield
    except OtaferryError as exc:
        if path in exc.message:
            raise
        raise OtaferryError(f"{path}: {exc.message}", exc.reason, **exc.fields) from exc


def _print_table(info: dict[str, Any]) -> None:
    width = max(len(k) for k in info)
    for key in sorted(info):
        value = info[key]
        if key == "segments" and isinstance(value, list):
            value = "; ".join(
                f"0x{s['load_addr']:08x} {s['length']} B at 0x{s['offset']:x}" for s in value
            )
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif key.endswith("_addr") and isinstance(value, int):
            value = f"0x{value:08x}"
        print(f"{key:<{width}}  {value}")


def _show(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(info)
    else:
        _print_table(info)


def cmd_inspect(args: argparse.Namespace) -> int:
    """An ``.ota`` artifact (manifest, segment checks, signature with --pubkey), or a
    raw ESP app image (header, segments, app description, checksum and hash)."""
    from ..protocol.artifact import HEADER_SIZE, SIGNATURE_SIZE, inspect_artifact
    from ..protocol.espimage import IMAGE_MAGIC, describe_esp_image
    from ..protocol.keys import load_verify_key
    from .files import read_file

    trusted = [load_verify_key(p) for p in args.pubkey] if args.pubkey else None
    try:
        with open(args.artifact, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise OtaferryError(
            f"cannot read {args.artifact}: {exc.strerror}", Reason.IO_ERROR
        ) from exc
    if head[:1] == bytes([IMAGE_MAGIC]):  # an .ota starts with "OTAF"
        if trusted is not None:
            raise UsageError(f"{args.artifact} is a raw ESP image: there is no signature to check")
        esp = describe_esp_image(read_file(args.artifact))
        if esp is None:
            raise OtaferryError(
                f"{args.artifact} starts like an ESP image (0xE9) but its header is not one",
                Reason.BAD_MAGIC,
            )
        _show(esp, args.json)
        if esp["truncated"]:
            raise OtaferryError(
                f"{args.artifact}: the image ends inside its segments or checksum "
                f"({esp['image_size']} bytes)",
                Reason.TRUNCATED,
            )
        if esp["checksum_ok"] is False or esp["sha256_ok"] is False:
            bad = "checksum" if esp["checksum_ok"] is False else "appended SHA-256"
            raise OtaferryError(
                f"{args.artifact}: the image's {bad} does not match", Reason.SEGMENT_CORRUPT
            )
        return 0

    with _naming(args.artifact):
        info = inspect_artifact(args.artifact, trusted)
    _show(info, args.json)
    if info["signature_ok"] is False:
        raise OtaferryError(
            f"{args.artifact}: signature not valid for the given key(s)",
            Reason[info["signature_error"]],
        )
    if info["payload_error"]:
        expected = HEADER_SIZE + info["manifest_size"] + SIGNATURE_SIZE + info["payload_size"]
        sizes = f"the file is {info['file_size']} bytes, its manifest describes {expected}"
        message = {
            "TRUNCATED": f"the file ends inside the payload: {sizes}",
            "MALFORMED": f"trailing bytes after the last segment: {sizes}",
        }.get(
            info["payload_error"],
            f"segment(s) {', '.join(map(str, info['bad_segments']))} do not match their "
            "signed checks",
        )
        raise OtaferryError(f"{args.artifact}: {message}", Reason[info["payload_error"]])
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..protocol.artifact import open_artifact
    from ..protocol.keys import load_verify_key

    trusted = [load_verify_key(p) for p in args.pubkey]
    with _naming(args.artifact), open_artifact(args.artifact, trusted) as reader:  # verified first
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


def cmd_lorasim(args: argparse.Namespace) -> int:
    from ..transport import lorasim

    return lorasim.main(args.rest)


# ---------------------------------------------------------------- parser

U32_MAX = 2**32 - 1
SECTOR = 4096
# 16-byte frames (the session's minimum) + the 10 bytes the secure channel adds to each.
MIN_MTU, MAX_MTU = 26, 65535
security_counter = A.int_range(0, U32_MAX)
mtu = A.int_range(MIN_MTU, MAX_MTU)
key_id = A.hex_bytes(8)

# Old flag names still accepted but not shown in --help: (command, old, new).
HIDDEN_ALIASES = [("flash init", "--trust", "--pubkey")]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("otaferry")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


LORA_MODEMS = ("rylr998", "rylr896", "rak3172", "e22", "e32")


def _radio_options(s: argparse.ArgumentParser) -> None:
    """The LoRa options shared by push and device run (with --lora-modem)."""
    s.add_argument(
        "--lora-modem",
        choices=LORA_MODEMS,
        help="the port is this LoRa modem (AT / fixed-address protocol), not a framed UART",
    )
    s.add_argument("--region", default="EU868", help="EU868 or US915 (default EU868)")
    s.add_argument("--freq", type=A.positive_int, help="channel in Hz (default: the region's)")
    s.add_argument("--sf", type=A.int_range(7, 12), default=7, help="spreading factor (7)")
    s.add_argument("--bw", type=A.int_range(125, 500), default=125, help="kHz (125)")
    s.add_argument("--cr", type=A.int_range(5, 8), default=5, help="coding rate 4/N (5)")
    s.add_argument("--preamble", type=A.int_range(6, 65535), default=8, help="symbols (8)")
    s.add_argument(
        "--duty-cycle",
        type=A.positive_float,
        help="override the sub-band's (a bench only)",
    )
    s.add_argument(
        "--time-scale",
        type=A.positive_float,
        default=1.0,
        help="only against lora-sim --time-scale: the air runs this many times real time",
    )


def build_parser() -> argparse.ArgumentParser:
    p = A.Parser(
        prog="otaferry",
        description="Build, verify and ferry signed firmware updates into A/B flash slots.",
        epilog="Errors: one line 'otaferry: error[REASON]: ...', exit 1 (usage errors: 2). "
        "OTAFERRY_DEBUG=1 adds a traceback.",
    )
    p.add_argument("--version", action="version", version=f"otaferry {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "keygen", help="create a key pair: Ed25519 signing (default) or X25519 link (--link)"
    )
    s.add_argument("--link", action="store_true", help="an X25519 link key (gateway identity)")
    s.add_argument("keyfile", help="private key file to create; the public key goes to KEYFILE.pub")
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
        type=security_counter,
        help=f"anti-rollback counter, 0..{U32_MAX} (default: ESP secure_version or 0)",
    )
    s.add_argument("--base", help="old image: build a delta against it")
    s.add_argument(
        "--segment-size",
        type=A.multiple_of(SECTOR),
        help="target bytes per segment, a multiple of 4096 (default 8192 full; a delta tries "
        "several sizes and keeps the smallest that fits --device-ram)",
    )
    s.add_argument(
        "--device-ram",
        type=A.int_range(4096, U32_MAX),
        default=65536,
        metavar="BYTES",
        help="delta only: the target device's RAM budget; segments are sized so that its "
        "check (SPEC 7.6) passes, or the build is refused (default 65536)",
    )
    s.add_argument(
        "--delta-codecs",
        metavar="LIST",
        help="delta only: the delta codecs the target device decodes, comma-separated "
        "(fdelta1 among them; default fdelta1,fdelta2,fdelta3): the builder weighs only "
        "those, for a device whose hello does not announce them all",
    )
    s.add_argument(
        "--codec",
        choices=("zstd", "deflate"),
        default="zstd",
        help="full image only: zstd (default), or raw deflate for a device without zstd "
        "(MicroPython: deflate.DeflateIO; SPEC 4.1)",
    )
    s.add_argument(
        "--level",
        type=A.int_range(1, 22),
        default=None,
        help="compression level: zstd 1..22 (default 19), deflate 1..9 (default 9)",
    )
    s.add_argument(
        "--force", action="store_true", help="build even if --chip contradicts the image header"
    )
    s.add_argument("-o", "--output", required=True, help="output .ota file")
    s.add_argument("image", help="new firmware image")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser(
        "inspect",
        help="show an artifact's manifest and check its segments, or a raw ESP image's header",
    )
    s.add_argument("--json", action="store_true", help="stable JSON output")
    s.add_argument(
        "--pubkey",
        action="append",
        help="also check the signature against this public key (repeatable)",
    )
    s.add_argument("artifact", help="an .ota artifact or a raw ESP app image (.bin)")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("verify", help="verify signature and every segment (exit 0 only if valid)")
    s.add_argument(
        "--pubkey", action="append", required=True, help="trusted public key (repeatable)"
    )
    s.add_argument("artifact", help="the .ota artifact")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("flash", help="simulated device flash")
    fsub = s.add_subparsers(dest="flash_command", required=True, metavar="SUBCOMMAND")
    f = fsub.add_parser("init", help="create a flash file with a running firmware in ota_0")
    f.add_argument("--hw", required=True, help="device hardware id")
    f.add_argument("--chip", help="device chip (default: from an ESP image's header)")
    f.add_argument(
        "--pubkey",
        action="append",
        help="public key the device trusts for artifacts (repeatable; required)",
    )
    f.add_argument("--trust", dest="pubkey", action="append", help=argparse.SUPPRESS)
    f.add_argument("--image", required=True, help="firmware installed in ota_0 as valid")
    f.add_argument(
        "--version",
        dest="fw_version",
        help="version of that firmware (default: from an ESP image, else 'factory')",
    )
    f.add_argument(
        "--security-counter",
        type=security_counter,
        help="the device's anti-rollback counter (default: ESP secure_version or 0)",
    )
    f.add_argument(
        "--partitions",
        help="ESP-IDF partition table CSV (default: nvs, otadata, phy_init, ota_0, ota_1)",
    )
    f.add_argument(
        "--size", type=A.flash_size, default=4 * 1024 * 1024, help="flash size (default 4M)"
    )
    f.add_argument(
        "--device-id", type=A.hex_bytes(8), help="device id, 16 hex digits (default random)"
    )
    f.add_argument("--gateway-pub", action="append", help="accepted gateway link key (repeatable)")
    f.add_argument(
        "--force", action="store_true", help="use --chip even if it contradicts the image header"
    )
    f.add_argument("flash", help="flash file to create (refused while a device holds it)")
    f.set_defaults(func=_lazy("devicecli", "flash_init"))

    s = sub.add_parser("device", help="act as the simulated device")
    dsub = s.add_subparsers(dest="device_command", required=True, metavar="SUBCOMMAND")
    flash_help = "the device's flash file (otaferry flash init)"
    d = dsub.add_parser("install", help="install an artifact into the passive slot (offline)")
    d.add_argument("--flash", required=True, help=flash_help)
    d.add_argument("artifact", help="the .ota artifact")
    d.set_defaults(func=_lazy("devicecli", "install"))
    d = dsub.add_parser("boot", help="reset the device: bootloader, then the app's self-test")
    d.add_argument("--flash", required=True, help=flash_help)
    d.add_argument(
        "--fail-self-test", action="store_true", help="the new image fails its self-test"
    )
    d.add_argument(
        "--no-confirm",
        action="store_true",
        help="the app dies before it confirms (no self-test verdict)",
    )
    d.add_argument("--json", action="store_true", help="stable JSON output")
    d.set_defaults(func=_lazy("devicecli", "boot"))
    d = dsub.add_parser("run", help="serve the link protocol on a port until killed")
    d.add_argument("--port", required=True, help="pyserial URL or device path")
    d.add_argument("--flash", required=True, help=flash_help)
    d.add_argument("--baud", type=A.positive_int, default=115200, help="line rate (default 115200)")
    d.add_argument(
        "--mtu",
        type=mtu,
        help=f"largest frame body, {MIN_MTU}..{MAX_MTU} (default 1024; LoRa: the modem's)",
    )
    _radio_options(d)
    d.add_argument(
        "--address", type=A.int_range(1, 65534), default=1, help="LoRa: this device's address (1)"
    )
    d.add_argument("--quiet", action="store_true", help="no log lines on stderr")
    d.add_argument(
        "--fail-self-test",
        action="store_true",
        help="a new image fails its self-test (and rolls back)",
    )
    d.add_argument(
        "--no-checkin",
        action="store_true",
        help="a new image never talks to its server (a broken link driver): it rolls back "
        "when the check-in deadline passes",
    )
    d.add_argument(
        "--checkin-timeout",
        type=A.positive_float,
        help="seconds a new image waits for its server's check-in answer before it rolls "
        "back (default 120 on a UART; behind a LoRa modem derived from the air: SF, "
        "bandwidth, frame size and duty cycle, e.g. 38 min at SF9, 51 B, 1 %%)",
    )
    d.add_argument(
        "--no-reboot",
        action="store_true",
        help="serve only: no bootloader at start, no reset after an install (boot it with "
        "'device boot')",
    )
    d.add_argument(
        "--runtime",
        choices=("cpython", "micropython"),
        default="cpython",
        help="run the device main loop in this interpreter, or under the MicroPython unix "
        "port (the 'micropython' command; --port must then be a tty path)",
    )
    d.add_argument(
        "--heap",
        type=A.int_range(16384, 1 << 30),
        metavar="BYTES",
        help="--runtime micropython: its heap (-X heapsize; default 1 MiB)",
    )
    d.add_argument(
        "--code",
        choices=("source", "mpy", "romfs"),
        default="source",
        help="--runtime micropython: device_fw as .py source, as mpy-cross .mpy files, or as "
        ".mpy in a ROMFS image imported in place, outside the heap, as from a board's romfs "
        "partition (default source)",
    )
    d.set_defaults(func=_lazy("linkcli", "device_run"))
    d = dsub.add_parser(
        "provision", help="the device's link identity: X25519 key, accepted gateways, policy"
    )
    d.add_argument("--flash", required=True, help=flash_help)
    d.add_argument("--gateway-pub", action="append", help="accepted gateway key (replaces list)")
    d.add_argument("--new-key", action="store_true", help="generate a new device key")
    d.add_argument(
        "--revoke",
        action="append",
        type=key_id,
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
    d = dsub.add_parser(
        "query", help="ask a device over its port who it is and where it stands (or its key)"
    )
    d.add_argument("--port", required=True, help="pyserial URL or device path")
    d.add_argument("--baud", type=A.positive_int, default=115200, help="line rate (default 115200)")
    d.add_argument(
        "--mtu", type=mtu, default=1024, help=f"largest frame body, {MIN_MTU}..{MAX_MTU}"
    )
    d.add_argument("--link-key", help="this gateway's X25519 link key (otaferry keygen --link)")
    d.add_argument("--device-pub", help="the device's link public key")
    d.add_argument(
        "--insecure-plaintext", action="store_true", help="no secure channel (bench only)"
    )
    d.add_argument(
        "--identify",
        action="store_true",
        help="first contact: fetch the device's link public key (unauthenticated: check its "
        "key id out of band before trusting it)",
    )
    d.add_argument("--save", help="with --identify: write the key (PEM) to this new file")
    d.add_argument(
        "--retries", type=A.non_negative_int, default=5, help="unanswered tries (default 5)"
    )
    d.add_argument("--json", action="store_true", help="stable JSON output")
    d.set_defaults(func=_lazy("linkcli", "device_query"))
    d = dsub.add_parser("info", help="slots, states, versions, security counter")
    d.add_argument("--flash", required=True, help=flash_help + "; read even while it runs")
    d.add_argument("--json", action="store_true", help="stable JSON output")
    d.set_defaults(func=_lazy("devicecli", "info"))

    s = sub.add_parser("push", help="push an update to a device over a serial line or LoRa")
    s.add_argument("--port", required=True, help="pyserial URL: /dev/ttyUSB0, socket://h:p, ...")
    s.add_argument("--baud", type=A.positive_int, default=115200, help="line rate (default 115200)")
    s.add_argument(
        "--window", type=A.positive_int, help="frames in flight (default: from baud and mtu)"
    )
    s.add_argument(
        "--mtu",
        type=mtu,
        help=f"largest frame body, {MIN_MTU}..{MAX_MTU} (default 1024; LoRa: the modem's)",
    )
    _radio_options(s)
    s.add_argument(
        "--to", type=A.int_range(1, 65534), help="LoRa: the device's address (with --lora-modem)"
    )
    s.add_argument(
        "--rto", type=A.positive_float, default=1.0, help="first retransmit timeout, s (default 1)"
    )
    s.add_argument(
        "--retries",
        type=A.non_negative_int,
        default=5,
        help="silent timeouts in a row before giving up, in the handshake and in the session "
        "(default 5: about a minute with the doubling timeout)",
    )
    s.add_argument("--json-progress", action="store_true", help="one JSON line per event")
    s.add_argument(
        "--before",
        choices=["no-reset", "reset"],
        default="no-reset",
        help="at open: hold DTR/RTS inactive (no-reset, the default: no accidental reset of "
        "an auto-reset board) or pulse EN through RTS (reset), as esptool's --before",
    )
    s.add_argument(
        "--after",
        choices=["no-reset", "reset"],
        default="no-reset",
        help="at the end: leave the board alone (no-reset) or pulse EN (reset)",
    )
    s.add_argument(
        "--timeout",
        type=A.positive_float,
        help="give up after this many seconds in all (default: the protocol's own limits)",
    )
    s.add_argument(
        "--no-await-checkin",
        action="store_true",
        help="end at DONE (written, verified, set to boot) instead of after the new image "
        "has booted, checked in and confirmed",
    )
    s.add_argument(
        "--checkin-timeout",
        type=A.positive_float,
        help="seconds after DONE for the new image to check in (default 180; over LoRa "
        "derived from the air, a minute longer than the device's own deadline)",
    )
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
        help="with several artifacts: only a delta matching the device, never a full image "
        "(else the smallest of both goes)",
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
    s.add_argument("rest", nargs=argparse.REMAINDER, help="linesim's own arguments (-h for them)")
    s.set_defaults(func=cmd_linesim)

    s = sub.add_parser(
        "lora-sim",
        help="emulated LoRa modems (RYLR998, RAK3172, E22) on pseudo-terminals, one channel",
        add_help=False,
    )
    s.add_argument("rest", nargs=argparse.REMAINDER, help="lora-sim's own arguments (-h for them)")
    s.set_defaults(func=cmd_lorasim)

    s = sub.add_parser(
        "bench",
        help="benchmarks: 'otaferry bench NAME -h' for each of " + ", ".join(BENCHES),
        add_help=False,
    )
    s.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark and its arguments")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("plan", help="packets, air time and wall time of an update over LoRa")
    s.add_argument("artifact", metavar="UPDATE.ota", help="the update to plan")
    s.add_argument("--link", choices=("lora",), default="lora", help="the medium (lora)")
    s.add_argument("--region", default="EU868", help="EU868 or US915 (default EU868)")
    s.add_argument("--freq", type=A.positive_int, help="channel in Hz (default: the region's)")
    s.add_argument("--sf", type=A.int_range(7, 12), default=9, help="spreading factor (9)")
    s.add_argument("--bw", type=A.int_range(125, 500), default=125, help="kHz (125)")
    s.add_argument("--cr", type=A.int_range(5, 8), default=5, help="coding rate 4/N (5)")
    s.add_argument("--mtu", type=A.int_range(26, 255), default=222, help="frame bytes (222)")
    s.add_argument("--modem", choices=LORA_MODEMS, help="count this modem's air bytes")
    s.add_argument("--loss", type=A.probability, default=0.0, help="packet loss 0..<1")
    s.add_argument("--devices", type=A.positive_int, default=1, help="devices, one after another")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.set_defaults(func=_lazy("plan", "run"))

    from .gatewaycli import add_parsers as gateway_parsers

    gateway_parsers(sub, _lazy)

    s = sub.add_parser("demo", help="the whole flow on a simulated device (the quick start)")
    s.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    s.add_argument(
        "--image",
        help="firmware for the first update (default: a generated ESP32 app image v1.1.0)",
    )
    s.add_argument(
        "--gateway",
        action="store_true",
        help="architecture 2: a broker, the gateway service, two devices, a job over MQTT",
    )
    s.add_argument(
        "--broker",
        metavar="embedded|mosquitto|URL",
        help="with --gateway: the broker (default: 127.0.0.1:1883 if it answers, else a "
        "mosquitto started here if installed, else the embedded one)",
    )
    s.add_argument(
        "--lora",
        action="store_true",
        help="over emulated LoRa modems (lora-sim on ptys, EU868 10 %% sub-band, SF7)",
    )
    s.set_defaults(func=_lazy("demo", "run"))

    return p


# The benchmarks: name -> module of tools/bench whose main(argv) runs it (imported
# only when that benchmark runs: some pull in the gateway or the delta peers).
BENCHES = {
    "delta": "delta",
    "artifact": "artifact",
    "link": "link",
    "campaign": "campaign",
    "fleet": "fleet",
    "memory": "memory",
    "gateway": "gateway",
    "crypto": "crypto",
    "lora": "lora",
    "micropython": "micropython",
}


def cmd_bench(args: argparse.Namespace) -> int:
    if not args.rest or args.rest[0] not in BENCHES:
        print(f"usage: otaferry bench {{{','.join(BENCHES)}}} [ARGS] [options]  (-h for each)")
        return 2
    module = importlib.import_module(f"{__package__}.bench.{BENCHES[args.rest[0]]}")
    main: Callable[[list[str]], int] = module.main
    return main(args.rest[1:])


# Commands that own their argument parsing (listed in the help via build_parser).
PASSTHROUGH = {"linesim": cmd_linesim, "lora-sim": cmd_lorasim, "bench": cmd_bench}


def _describe(exc: BaseException) -> tuple[str, str]:
    """(reason name, one-line message) for anything a command raised."""
    if isinstance(exc, OtaferryError):
        return exc.reason.name, exc.message
    if isinstance(exc, FlashBusy):
        from .files import lock_holder

        holder = lock_holder(exc.fields["path"])
        who = f"held by {holder}" if holder else "held by another process"
        return reason_name(exc.reason), f"flash file {exc.fields['path']} is {who}: stop it first"
    if isinstance(exc, DeviceError):
        return reason_name(exc.reason), exc.message
    if isinstance(exc, UsageError):
        return A.USAGE, str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return Reason.IO_ERROR.name, f"{where}{exc.strerror or exc}"
    if isinstance(exc, UnicodeError):
        return Reason.MALFORMED.name, f"text that is not valid UTF-8 ({exc})"
    if isinstance(exc, ValueError):
        return Reason.MALFORMED.name, str(exc)
    return A.INTERNAL, (
        f"{type(exc).__name__}: {exc} (a bug in otaferry; OTAFERRY_DEBUG=1 shows the traceback)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure leaves as one line on stderr and exit 1
    (usage errors: 2). ``OTAFERRY_DEBUG=1`` prints the traceback first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        args = argparse.Namespace(rest=argv[1:], func=PASSTHROUGH[argv[0]])
    else:
        args = build_parser().parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("otaferry: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("OTAFERRY_DEBUG"):
            traceback.print_exc()
        reason, message = _describe(exc)
        print(A.error_line(reason, message), file=sys.stderr)
        return A.USAGE_EXIT if isinstance(exc, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
