"""What hostile or merely large input costs in RAM, measured (issue [M] items 3 and 4).

    otaferry bench memory [--pairs PAIRS.txt] [--json OUT.json]

Every figure is a ``tracemalloc`` peak (CPython heap bytes allocated while the
input is taken, above what was held before) and is printed next to the bound the
code promises, so a regression shows as ``over`` in the last column:

- **device, unauthenticated**: an unsigned 16 KiB OFFER over the link, one OFFER
  frame claiming 16,384 parts, 8,191 two-byte parts, 2,730 six-byte parts, and an
  unsigned 1 MiB manifest handed to the installer. The device verifies before it
  parses, so each costs about its own bytes (bound: a few times ``max_offer``, or
  8 KiB where nothing may be buffered at all);
- **host, unauthenticated**: a Sender (the gateway's side) fed HELLO parts by a
  hostile device: 676 parts of a claimed 65,534 (nothing is buffered above
  ``MAX_HELLO_PARTS``), then 512 parts of 200 B (at most ``MAX_HELLO_BYTES`` held);
- **RAM check vs applier**: for each delta codec, an artifact whose largest segment
  sits at the device's RAM check (SPEC 7.6 / 7.7) is installed segment by segment;
  the measured peak (installer heap + the segment payload it holds) must not exceed
  the formula, and should come close (the formula is not padded). With ``--pairs``,
  each real pair is built with the defaults and measured the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import random
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from ...device_fw import frames as DF
from ...device_fw import manifest as DM
from ...device_fw import receiver as RX
from ...device_fw.delta_apply import _TABLES, ram_budget
from ...device_fw.device import Device
from ...device_fw.installer import Installer, install_stream
from ...device_fw.manifest import read_header
from ...device_fw.reasons import DeviceError
from ...protocol.artifact import build_delta, build_full, encode_header
from ...protocol.delta import ARCH_XTENSA, encode_delta
from ...protocol.frames import Hello, Query
from ...protocol.keys import SigningKey
from ...protocol.session import MAX_HELLO_BYTES, MAX_HELLO_PARTS, Sender
from ...protocol.shared_artifact import Artifact
from .delta import read_pairs

KEY = SigningKey.from_seed(hashlib.sha256(b"unauthenticated memory").digest())
MAX_OFFER = RX.DEFAULT_MAX_OFFER
FIRMWARE = Path(__file__).resolve().parents[2] / "tests" / "firmware"


def peak(fn: Callable[[], object]) -> int:
    """Heap bytes ``fn`` allocates at its peak, above what was held before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def make_device(path: Path, image: bytes = b"\x5a" * 9000, **kw: Any) -> Device:
    Device.create(
        str(path),
        hw="hw",
        chip="chip",
        trusted_keys=[KEY.public.raw],
        image=image,
        version="old",
        **kw,
    ).close()
    return Device(str(path))


def unsigned_manifest(size: int) -> bytes:
    """A well-formed manifest of about ``size`` bytes, segments and all, carrying
    the device's trusted key id, but signed by nobody."""
    n = max(1, (size - 200) // 21)
    raw = {
        1: 1,
        2: ["hw"],
        3: "chip",
        4: "1",
        5: 1,
        6: n * 4096,
        7: b"\x01" * 32,
        8: 0,
        11: "zstd",
        12: 13,
        13: 4096,
        14: [[100, b"\x02" * 16]] * n,
        15: KEY.public.key_id,
    }
    return msgpack.packb(raw, use_bin_type=True)  # type: ignore[no-any-return]


def offer_parts(blob: bytes, size: int) -> list[bytes]:
    parts = [blob[i : i + size] for i in range(0, len(blob), size)]
    return [DF.offer(i, len(parts), p, poll=i == len(parts) - 1) for i, p in enumerate(parts)]


def offer(dev: Device, frames: list[bytes]) -> tuple[int, list[bytes]]:
    """The frames to a fresh Receiver in a session: (peak while the OFFER frames
    are taken, the replies). The session start, its HELLO and first imports are
    not counted."""
    rx = RX.Receiver(dev, mtu=1024)
    rx.receive_frame(Query(7).encode(), 0.0)
    rx.receive_frame(DF.offer(0, 2, b"warm-up"), 0.0)
    rx.receive_frame(Query(8).encode(), 0.0)
    replies: list[bytes] = []

    def feed() -> None:
        for body in frames:
            replies.extend(rx.receive_frame(body, 0.0))

    return peak(feed), replies


def unsigned_manifest_artifact(size: int) -> bytes:
    big = unsigned_manifest(size)
    return encode_header(len(big)) + big + b"\x00" * 64


def device_figures(tmp: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(name: str, used: int, bound: int) -> None:
        rows.append(
            {
                "group": "device, unauthenticated",
                "input": name,
                "peak_bytes": used,
                "bound_bytes": bound,
            }
        )

    with make_device(tmp / "flash.bin") as dev:
        blob = DF.encode_offer_blob(1000, unsigned_manifest(MAX_OFFER - 100), b"\x00" * 64)
        row("unsigned 16 KiB OFFER", offer(dev, offer_parts(blob, 1000))[0], 3 * MAX_OFFER + 4096)
        row(
            "one OFFER claiming 16,384 parts",
            offer(dev, [DF.offer(0, MAX_OFFER, b"x", poll=True)])[0],
            8192,
        )
        row("8,191 two-byte OFFER parts", offer(dev, offer_parts(b"\x00" * 16382, 2))[0], 8192)
        six = RX.MIN_OFFER_PART
        row(
            "2,730 six-byte OFFER parts",
            offer(dev, offer_parts(b"\x00" * (six * 2730), six))[0],
            2 * MAX_OFFER + 8192,
        )
        art = unsigned_manifest_artifact(1 << 20)

        def install() -> None:
            with contextlib.suppress(DeviceError):
                install_stream(dev, io.BytesIO(art))

        row("unsigned 1 MiB manifest (install)", peak(install), 8192)
    return rows


def host_figures() -> list[dict[str, Any]]:
    image = random.Random(1).randbytes(20_000)
    art = build_full(image, KEY, hw=["hw"], chip="chip", version="1", security_counter=1)
    shared = Artifact.parse(art)
    rows: list[dict[str, Any]] = []

    def sender() -> Sender:
        return Sender(shared, mtu=1024, window=8, rto=0.5)

    s1 = sender()
    sid = s1.session_id

    claims = [Hello(sid, part, 65_534, b"x" * 200).encode() for part in range(0, 65_534, 97)]
    s1.receive_frame(claims[0], 0.0)  # first-call costs (imports, caches) not counted

    def claimed() -> None:
        for body in claims[1:]:
            s1.receive_frame(body, 0.0)

    rows.append(
        {
            "group": "host, unauthenticated",
            "input": "676 HELLO parts of a claimed 65,534",
            "peak_bytes": peak(claimed),
            "bound_bytes": 8192,
        }
    )
    s2 = sender()
    sid2 = s2.session_id

    parts = [
        Hello(sid2, part, MAX_HELLO_PARTS, b"y" * 200).encode() for part in range(MAX_HELLO_PARTS)
    ]

    def allowed() -> None:
        for body in parts:
            s2.receive_frame(body, 0.0)

    rows.append(
        {
            "group": "host, unauthenticated",
            "input": f"{MAX_HELLO_PARTS} HELLO parts of 200 B",
            "peak_bytes": peak(allowed),
            "bound_bytes": 4 * MAX_HELLO_BYTES + 8192,
        }
    )
    return rows


def build(old: bytes, new: bytes, **kw: Any) -> bytes:
    """A delta signed by the key :func:`make_device` trusts."""
    return build_delta(
        old, new, KEY, hw=["hw"], chip="chip", version="new", security_counter=1, **kw
    )


def near_limit_pair() -> tuple[bytes, bytes]:
    """64 KiB of noise with two thirds of its first 32 KiB rewritten: one 32 KiB
    segment whose fdelta1 payload (~22 KB) puts the RAM check near 64 KiB."""
    rnd = random.Random(4)
    old = rnd.randbytes(0x10000)
    new = bytearray(old)
    for i in range(0, 0x8000, 48):
        new[i : i + 32] = rnd.randbytes(32)
    return old, bytes(new)


def xtensa_slice() -> tuple[bytes, bytes]:
    """64 KiB / 48 KiB of ESP8266 AT v3.0.1 / v3.0.2 code, where fdelta2 wins."""
    at = FIRMWARE / "esp8266-at-nonos"
    old = (at / "at-v3.0.1.bin").read_bytes()[0x20000:0x30000]
    new = (at / "at-v3.0.2.bin").read_bytes()[0x20000:0x2C000]
    return old, new


def ram_limits(art: bytes) -> dict[str, int]:
    """Device limits whose RAM budget is exactly what the check asks for ``art``."""
    manifest_bytes, _ = read_header(io.BytesIO(art))
    parsed = DM.parse_manifest(manifest_bytes)
    budget = ram_budget(parsed["segments"].largest(), codec=parsed.get("codec", "fdelta1"))
    return {"max_window_log": 13, "max_segment_payload": 8256, "ram_budget": budget}


def applier_peak(
    tmp: Path, old: bytes, art: bytes, name: str, new: bytes | None = None
) -> dict[str, Any]:
    """Install ``art`` on a device whose RAM budget is exactly what the check asks
    for its largest segment; the peak is installer heap + the payload it holds.
    With ``new``, ``applied_ok`` says whether the passive slot then holds it."""
    manifest_bytes, signature = read_header(io.BytesIO(art))
    parsed = DM.parse_manifest(manifest_bytes)
    table = parsed["segments"]
    limits = ram_limits(art)
    peaks: list[int] = []
    with make_device(tmp / f"ram-{len(list(tmp.iterdir()))}.bin", image=old, limits=limits) as dev:
        inst = Installer(dev)
        inst.begin(manifest_bytes, signature)
        pos = 10 + len(manifest_bytes) + 64
        for i in range(len(table)):
            length = table[i][0]
            payload = bytearray(art[pos : pos + length])  # the receiver's segment buffer
            pos += length
            # The applier keeps its tables from the first segment on: measured
            # from before they exist, every segment's peak counts them (held).
            _TABLES.clear()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                inst.segment(i, memoryview(payload))
                peaks.append(tracemalloc.get_traced_memory()[1] - base + length)
            finally:
                tracemalloc.stop()
        inst.finish()
        row = {
            "group": "RAM check vs applier",
            "input": name,
            "codec": parsed.get("codec", "fdelta1"),
            "peak_bytes": max(peaks),
            "bound_bytes": limits["ram_budget"],
        }
        if new is not None:
            passive = dev.slots[1]
            row["applied_ok"] = bytes(dev.flash.read(passive.offset, len(new))) == new
    return row


def applier_figures(tmp: Path, pairs: list[tuple[Path, Path]]) -> list[dict[str, Any]]:
    old, new = near_limit_pair()
    art = build(old, new, segment_size=32768, device_ram=1 << 20)
    rows = [applier_peak(tmp, old, art, "fdelta1, one 32 KiB segment", new)]
    if (FIRMWARE / "esp8266-at-nonos").is_dir():
        o, n = xtensa_slice()
        res = encode_delta(o, n, 16384, (ARCH_XTENSA,))
        name = f"{res.codec}, ESP8266 AT v3.0.1→v3.0.2 slice"
        rows.append(applier_peak(tmp, o, build(o, n, encoded=res), name, n))
    for old_path, new_path in pairs:
        o, n = old_path.read_bytes(), new_path.read_bytes()
        rows.append(applier_peak(tmp, o, build(o, n), f"{old_path.name} → {new_path.name}", n))
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="otaferry bench memory", description=__doc__.split("\n")[0])
    p.add_argument(
        "--pairs", type=Path, help="also measure each pair of PAIRS.txt (OLD NEW per line)"
    )
    p.add_argument("--json", type=Path, help="write the rows as JSON to this file")
    args = p.parse_args(argv)
    pairs = []
    if args.pairs:
        base = args.pairs.resolve().parent
        pairs = [(base / o, base / n) for o, n in read_pairs(args.pairs)]
    with tempfile.TemporaryDirectory() as d:
        rows = device_figures(Path(d)) + host_figures() + applier_figures(Path(d), pairs)
    group = ""
    for r in rows:
        if r["group"] != group:
            group = r["group"]
            print(f"\n{group}")
            print(f"  {'input':52s} {'peak':>11s} {'bound':>11s}")
        over = "" if r["peak_bytes"] <= r["bound_bytes"] else "  over"
        print(f"  {r['input']:52s} {r['peak_bytes']:>11,} {r['bound_bytes']:>11,}{over}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["peak_bytes"] <= r["bound_bytes"] for r in rows) else 1
