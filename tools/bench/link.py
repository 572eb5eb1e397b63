"""Benchmark of a push across the simulated UART: efficiency at 0, ~1 and ~5 % frame loss.

    otaferry bench link [IMAGE] [--baud 115200] [--latency-ms 20] [--losses 0,1,5] [--json]

The image (default: MicroPython ESP8266 v1.10 from tests/firmware) is built
into a full-image artifact and pushed by the Updater over a SerialLink (plain,
and inside the secure channel: 10 more bytes a frame), through
the line simulator (two real pseudo-terminals paced like a UART, 10 bits per
byte), to ``otaferry device run`` in its own process. Frame loss comes from
byte errors: for a target loss L the byte-error rate is chosen so a full data
frame on the wire (about 1,040 bytes) is hit with probability L; the CRC then
drops it. Reported per run:

- goodput / line rate: artifact payload bytes / push time / (baud / 10);
- wire / artifact: bytes the line carried to the device / artifact bytes;
- frames lost: frames the device's decoder dropped (line simulator counters)
  and the sender's retransmissions.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ...device_fw.device import Device
from ...protocol.artifact import build_full
from ...protocol.framing import max_wire_size
from ...protocol.keys import SigningKey
from ...protocol.session import Completed
from ...protocol.x25519keys import LinkPrivateKey, LinkPublicKey
from ...transport.linesim import LineSim
from ...transport.link import Link
from ...transport.secure_link import SecureLink
from ...transport.serial_link import SerialLink
from ...transport.updater import PushOptions, Updater
from ..args import Parser, non_negative_int, positive_int

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = ROOT / "tests" / "firmware" / "micropython-esp8266" / "esp8266-20190125-v1.10.bin"
MTU = 1024


async def one_run(
    image: bytes, loss: float, baud: int, latency_ms: int, work: Path, seed: int, secure: bool
) -> dict[str, object]:
    key = SigningKey.from_seed(hashlib.sha256(b"bench link").digest())
    gateway = LinkPrivateKey.from_raw(hashlib.sha256(b"bench gateway").digest())
    art = build_full(image, key, hw=["bench"], chip="bench", version="1")
    flash = work / "flash.bin"
    with Device.create(
        str(flash),
        hw="bench",
        chip="bench",
        trusted_keys=[key.public.raw],
        image=b"\0" * 4096,
        version="0",
        gateways=[gateway.public.raw],
    ) as dev:
        if not secure:
            dev.provision(require_secure=False)
        device_pub = LinkPublicKey.from_raw(dev.link_public())
    frame_wire = max_wire_size(MTU)
    byte_error = 1 - (1 - loss) ** (1 / frame_wire) if loss > 0 else 0.0
    a, b = work / "A", work / "B"
    exe = Path(sys.executable).with_name("otaferry")
    async with LineSim(
        str(a), str(b), baud=baud, latency_ms=latency_ms, byte_error_rate=byte_error, seed=seed
    ) as sim:
        dev = subprocess.Popen(
            [
                str(exe),
                "device",
                "run",
                "--quiet",
                "--port",
                str(b),
                "--flash",
                str(flash),
                "--baud",
                str(baud),
                "--mtu",
                str(MTU),
            ]
        )
        try:
            await asyncio.sleep(0.3)
            async with await SerialLink.open(str(a), baud, mtu=MTU) as raw:
                link: Link = raw
                if secure:
                    link = await SecureLink.connect(raw, gateway, device_pub)
                up = Updater(
                    link,
                    PushOptions(
                        line_rate=baud / 10,
                        rtt=2 * latency_ms / 1000,
                        max_retries=20,
                        await_checkin=False,  # the transfer is what this bench measures
                    ),
                )
                t0 = time.monotonic()
                done = await up.push(art)
                elapsed = time.monotonic() - t0
                stats = up.last_sender.stats if up.last_sender else None
        finally:
            dev.terminate()
            dev.wait(timeout=10)
        to_dev = sim.a_to_b.bytes_out
        back = sim.b_to_a.bytes_out
        corrupted = sim.a_to_b.corrupted
    assert isinstance(done, Completed)
    payload = done.total_bytes
    return {
        "secure": secure,
        "target_frame_loss": loss,
        "byte_error_rate": byte_error,
        "artifact_bytes": len(art),
        "payload_bytes": payload,
        "seconds": round(elapsed, 2),
        "goodput_over_line_rate": round(payload / elapsed / (baud / 10), 3),
        "wire_over_artifact": round(to_dev / len(art), 3),
        "wire_to_device": to_dev,
        "wire_to_gateway": back,
        "bytes_corrupted": corrupted,
        "data_frames": stats.data_frames if stats else None,
        "retransmits": stats.retransmits if stats else None,
        "measured_frame_loss": round(stats.retransmits / stats.data_frames, 4)
        if stats and stats.data_frames
        else None,
    }


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="otaferry bench link",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("image", nargs="?", default=str(DEFAULT_IMAGE), help="firmware to push")
    ap.add_argument("--baud", type=positive_int, default=115_200, help="line rate (default 115200)")
    ap.add_argument(
        "--latency-ms", type=non_negative_int, default=20, help="one-way latency (default 20)"
    )
    ap.add_argument("--losses", default="0,1,5", help="target frame-loss percentages")
    ap.add_argument("--seed", type=int, default=1, help="line simulator seed (default 1)")
    ap.add_argument("--modes", default="plain,secure", help="plain, secure or both")
    ap.add_argument("--json", action="store_true", help="JSON output")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    image = Path(args.image).read_bytes()
    rows = []
    for pct in (float(x) for x in args.losses.split(",")):
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(
                    asyncio.run(
                        one_run(
                            image,
                            pct / 100,
                            args.baud,
                            args.latency_ms,
                            Path(tmp),
                            args.seed,
                            mode == "secure",
                        )
                    )
                )
            if not args.json:
                r = rows[-1]
                print(
                    f"{mode:>6} loss {pct:4.1f} %: goodput/line "
                    f"{r['goodput_over_line_rate']:.3f}  wire/artifact "
                    f"{r['wire_over_artifact']:.3f}  {r['seconds']} s  retransmits "
                    f"{r['retransmits']}/{r['data_frames']} data frames  "
                    f"(byte error rate {r['byte_error_rate']:.2e})",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            f"{Path(args.image).name}: artifact {rows[0]['artifact_bytes']} B, "
            f"{args.baud} baud ({args.baud // 10} B/s), {args.latency_ms} ms latency, "
            f"mtu {MTU}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
