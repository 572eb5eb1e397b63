"""``otaferry flash init`` and ``otaferry device ...``: the simulated device on the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..device_fw.device import Device
from ..device_fw.installer import install_stream
from ..protocol.errors import OtaferryError, Reason
from ..protocol.espimage import parse_esp_image
from ..protocol.keys import load_verify_key
from ..protocol.x25519keys import LinkPublicKey, load_link_public_key
from .files import read_file, write_file


def parse_size(text: str) -> int:
    t = text.strip().upper()
    mult = 1
    if t.endswith("K"):
        mult, t = 1024, t[:-1]
    elif t.endswith("M"):
        mult, t = 1024 * 1024, t[:-1]
    try:
        return int(t, 0) * mult
    except ValueError:
        raise OtaferryError(f"bad size {text!r}", Reason.MALFORMED) from None


def _open_device(path: str) -> Device:
    if not Path(path).is_file():
        raise OtaferryError(
            f"no flash file {path} (create one with 'otaferry flash init')", Reason.IO_ERROR
        )
    return Device(path)


def flash_init(args: argparse.Namespace) -> int:
    image = read_file(args.image)
    esp = parse_esp_image(image)
    version = args.fw_version or (esp.version if esp and esp.version else "factory")
    csv = Path(args.partitions).read_text() if args.partitions else None
    trusted = [load_verify_key(p).raw for p in args.trust]
    device_id = bytes.fromhex(args.device_id) if args.device_id else None
    gateways = [load_link_public_key(p).raw for p in args.gateway_pub or ()]
    dev = Device.create(
        args.flash,
        hw=args.hw,
        chip=args.chip,
        trusted_keys=trusted,
        image=image,
        version=version,
        security_counter=args.security_counter,
        partitions_csv=csv,
        size=parse_size(args.size),
        device_id=device_id,
        gateways=gateways,
    )
    info = dev.info()
    running = info["slots"][info["running_slot"]]
    print(
        f"created {args.flash}: {info['flash_size']} bytes, {len(info['slots'])} OTA slots, "
        f"running {running['label']} version {running['version']}, trusting {len(trusted)} key(s)"
    )
    return 0


def install(args: argparse.Namespace) -> int:
    dev = _open_device(args.flash)
    try:
        with open(args.artifact, "rb") as stream:
            result = install_stream(dev, stream)
    except OSError as exc:
        raise OtaferryError(
            f"cannot read {args.artifact}: {exc.strerror}", Reason.IO_ERROR
        ) from exc
    m = result["manifest"]
    slot = result["slot"]
    resumed = f", resumed after {result['skipped']} segments" if result["skipped"] else ""
    print(
        f"installed version {m['version']} into {slot}: {result['decoded']} segments "
        f"decoded{resumed}; image verified, set to boot once (pending verify)"
    )
    return 0


def provision(args: argparse.Namespace) -> int:
    with _open_device(args.flash) as dev:
        gateways = (
            [load_link_public_key(p).raw for p in args.gateway_pub] if args.gateway_pub else None
        )
        try:
            revoke = [bytes.fromhex(k) for k in args.revoke or ()]
        except ValueError:
            raise OtaferryError("--revoke takes a key id in hex", Reason.BAD_KEY) from None
        public = dev.provision(
            gateways, new_key=args.new_key, require_secure=args.require_secure, revoke=revoke
        )
        info = dev.info()
    if args.out:
        write_file(args.out, LinkPublicKey.from_raw(public).to_pem())
    print(
        f"device {info['device_id']} link public key {public.hex()}"
        + (f" (written to {args.out})" if args.out else "")
    )
    print(
        f"accepts {len(info['gateways'])} gateway key(s); "
        f"plaintext {'refused' if info['require_secure'] else 'allowed (bench only)'}"
    )
    return 0


def _print_boot(result: dict[str, Any]) -> None:
    for line in result["log"]:
        print(line)


def boot(args: argparse.Namespace) -> int:
    dev = _open_device(args.flash)
    verdict = None if args.no_confirm else not args.fail_self_test
    result = dev.power_on(self_test=verdict)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        _print_boot(result)
    return 0


def info(args: argparse.Namespace) -> int:
    dev = _open_device(args.flash)
    data = dev.info()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print(
        f"device {data['device_id']}  hw {data['hw']}  chip {data['chip']}  "
        f"security counter {data['security_counter']}"
    )
    for i, s in enumerate(data["slots"]):
        mark = "*" if i == data["running_slot"] else " "
        sha = (s["sha256"] or "-")[:16]
        print(
            f" {mark} {s['label']:<8} {s['state']:<15} version {s['version'] or '-':<12} "
            f"sha256 {sha}"
        )
    if data.get("install"):
        p = data["install"]
        print(f"   install in progress into {p['slot']}: next segment {p['next']}")
    return 0
