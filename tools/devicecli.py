"""``otaferry flash init`` and ``otaferry device ...``: the simulated device on the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..device_fw.device import Device
from ..device_fw.installer import install_stream
from ..protocol.errors import OtaferryError, Reason
from ..protocol.keys import load_verify_key
from ..protocol.x25519keys import LinkPublicKey, load_link_public_key
from .args import UsageError
from .build import image_facts
from .files import read_file, write_file


def require_flash_file(path: str) -> None:
    if not Path(path).is_file():
        raise OtaferryError(
            f"no flash file {path} (create one with 'otaferry flash init')", Reason.IO_ERROR
        )


def _open_device(path: str, read_only: bool = False) -> Device:
    require_flash_file(path)
    return Device(path, read_only=read_only)


def _read_text(path: str, what: str) -> str:
    data = read_file(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OtaferryError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            Reason.PARTITION_TABLE,
        ) from None


def flash_init(args: argparse.Namespace) -> int:
    if not args.pubkey:
        raise UsageError("otaferry flash init: --pubkey KEY.pub required (a key the device trusts)")
    if Path(args.flash).is_dir():
        raise OtaferryError(f"{args.flash} is a directory, not a flash file", Reason.IO_ERROR)
    image = read_file(args.image)
    facts = image_facts(
        image,
        args.image,
        chip=args.chip,
        version=args.fw_version,
        security_counter=args.security_counter,
        force=args.force,
    )
    if not facts.chip:
        raise OtaferryError(
            f"--chip required: {args.image} is not an ESP app image, so its chip is not known",
            Reason.MALFORMED,
        )
    csv = _read_text(args.partitions, "partition table") if args.partitions else None
    trusted = [load_verify_key(p).raw for p in args.pubkey]
    gateways = [load_link_public_key(p).raw for p in args.gateway_pub or ()]
    dev = Device.create(
        args.flash,
        hw=args.hw,
        chip=facts.chip,
        trusted_keys=trusted,
        image=image,
        version=facts.version or "factory",
        security_counter=facts.security_counter,
        partitions_csv=csv,
        size=args.size,
        device_id=args.device_id,
        gateways=gateways,
    )
    with dev:
        info = dev.info()
    running = info["slots"][info["running_slot"]]
    print(
        f"created {args.flash}: {info['flash_size']} bytes, {len(dev.slots)} OTA slots, "
        f"chip {info['chip']}, running {running['label']} version {running['version']} "
        f"(security counter {info['security_counter']}), trusting {len(trusted)} key(s)"
    )
    return 0


def install(args: argparse.Namespace) -> int:
    with _open_device(args.flash) as dev:
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
        public = dev.provision(
            gateways,
            new_key=args.new_key,
            require_secure=args.require_secure,
            revoke=list(args.revoke or ()),
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
    verdict = None if args.no_confirm else not args.fail_self_test
    with _open_device(args.flash) as dev:
        result = dev.power_on(self_test=verdict)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        _print_boot(result)
    return 0


def info(args: argparse.Namespace) -> int:
    # Read-only and unlocked: a device that is running may be looked at.
    with _open_device(args.flash, read_only=True) as dev:
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
    if data["next_boot_slot"] != data["running_slot"]:
        print(f"   next reset boots {data['next_boot_label'] or 'nothing (no image verifies)'}")
    if data["state_lost"]:
        print("   state store unreadable: booted from the slots' boot records; no update is "
              "taken until the device is provisioned again")
    if data.get("install"):
        p = data["install"]
        print(f"   install in progress into {p['slot']}: next segment {p['next']}")
    return 0
