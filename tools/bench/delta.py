"""Benchmark of the delta codec against bsdiff4, zstd patch-from and detools.

    python -m otaferry.tools.bench.delta [FIRMWARE_DIR] [--segment-size N] [--json]

For each of the eight firmware pairs of the issue: otaferry delta payload bytes
(sum of the segment payloads), creation time, apply time on CPython, peak
apply RAM (tracemalloc peak while applying a segment + the segment payload the
device holds until its hash checks; the codec has no C-side state), and, in the
same run, the baselines bsdiff4, zstd patch-from (old image as raw-content
dictionary, level 19, long window) and detools sequential patches with lzma
and with heatshrink. Every patch is applied back and compared byte for byte.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import bsdiff4
import zstandard

from ...device_fw.delta_apply import apply_segment
from ...protocol.delta import DEFAULT_SEGMENT_SIZE, encode_delta, ram_budget
from ..args import Parser, multiple_of

# the copies in tests/firmware (the same files as ../shared/firmware, see SOURCES.md)
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "tests" / "firmware"

PAIRS = [
    (
        "esp8266 v1.9.4->v1.10",
        "micropython-esp8266/esp8266-20180511-v1.9.4.bin",
        "micropython-esp8266/esp8266-20190125-v1.10.bin",
    ),
    (
        "pybv11 v1.10->dirty",
        "micropython-pybv11/v1.10/firmware1.bin",
        "micropython-pybv11/1f5d945af-dirty/firmware1.bin",
    ),
    (
        "pybv11 1f5d945af->dirty",
        "micropython-pybv11/1f5d945af/firmware1.bin",
        "micropython-pybv11/1f5d945af-dirty/firmware1.bin",
    ),
    ("simba shell", "simba-shell-cortex-m4/old.bin", "simba-shell-cortex-m4/new.bin"),
    ("synthesizer 1->2", "simba-synthesizer-cortex-m4/1.bin", "simba-synthesizer-cortex-m4/2.bin"),
    ("synthesizer 2->3", "simba-synthesizer-cortex-m4/2.bin", "simba-synthesizer-cortex-m4/3.bin"),
    ("programmer 0.8->0.9", "programmer-cortex-m4/0.8.0.bin", "programmer-cortex-m4/0.9.0.bin"),
    ("rpi3 baremetal 1->2", "baremetal-rpi3-aarch64/1.bin", "baremetal-rpi3-aarch64/2.bin"),
]

ANCHORS = [
    ("best of 32 peers", 113_592),
    ("HPatchLite (<=64 KiB RAM)", 121_837),
    ("detools sequential+lzma", 122_246),
    ("bsdiff4", 129_812),
    ("zstd patch-from -19 --long", 150_100),
    ("esp_delta_ota (detools+heatshrink)", 177_437),
    ("no delta (zstd -19)", 993_059),
]


def _apply_all(
    old: bytes, new_size: int, segments: list[bytes], seg_size: int, trace: bool
) -> tuple[bytes, float, int]:
    out = bytearray(new_size)  # allocated before tracing: the passive slot
    pos = 0

    def write(chunk: bytes) -> None:
        nonlocal pos
        out[pos : pos + len(chunk)] = chunk
        pos += len(chunk)

    def read_old(off: int, n: int) -> bytes:
        return old[off : off + n]

    peak = 0
    t0 = time.perf_counter()
    for i, seg in enumerate(segments):
        size = min(seg_size, new_size - i * seg_size)
        if trace:
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
        apply_segment(seg, read_old, len(old), size, write)
        if trace:
            peak = max(peak, tracemalloc.get_traced_memory()[1] - base)
            tracemalloc.stop()
    dt = time.perf_counter() - t0
    if pos != new_size:
        raise AssertionError(f"applier wrote {pos} of {new_size} bytes")
    return bytes(out), dt, peak


def _zstd_patch_from(old: bytes, new: bytes) -> int:
    wlog = max(10, min(31, (len(old) + len(new)).bit_length()))
    dd = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    params = zstandard.ZstdCompressionParameters.from_level(
        19, window_log=wlog, enable_ldm=True, source_size=len(new)
    )
    patch = zstandard.ZstdCompressor(dict_data=dd, compression_params=params).compress(new)
    dd2 = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    back = zstandard.ZstdDecompressor(dict_data=dd2, max_window_size=1 << wlog).decompress(patch)
    if back != new:
        raise AssertionError("zstd patch-from round trip failed")
    return len(patch)


def _bsdiff4(old: bytes, new: bytes) -> int:
    patch = bsdiff4.diff(old, new)
    if bsdiff4.patch(old, patch) != new:
        raise AssertionError("bsdiff4 round trip failed")
    return len(patch)


def _detools(old: bytes, new: bytes, compression: str) -> int:
    import detools  # only the benchmark needs it

    f = io.BytesIO()
    detools.create_patch(io.BytesIO(old), io.BytesIO(new), f, compression=compression)
    out = io.BytesIO()
    detools.apply_patch(io.BytesIO(old), io.BytesIO(f.getvalue()), out)
    if out.getvalue() != new:
        raise AssertionError("detools round trip failed")
    return len(f.getvalue())


def bench_pair(old: bytes, new: bytes, seg_size: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = encode_delta(old, new, seg_size)
    create_s = time.perf_counter() - t0
    back, apply_s, _ = _apply_all(old, len(new), res.segments, seg_size, trace=False)
    if back != new:
        raise AssertionError("otaferry delta round trip failed")
    back2, _, py_peak = _apply_all(old, len(new), res.segments, seg_size, trace=True)
    if back2 != new:
        raise AssertionError("otaferry delta round trip failed (traced)")
    return {
        "old": len(old),
        "new": len(new),
        "otaferry": res.payload_size,
        "segments": len(res.segments),
        "max_segment_payload": res.max_segment_payload,
        "create_s": round(create_s, 2),
        "apply_s": round(apply_s, 2),
        "apply_peak_tracemalloc": py_peak,
        "apply_ram": py_peak + res.max_segment_payload,
        "ram_budget_formula": ram_budget(res.max_segment_payload),
        "bsdiff4": _bsdiff4(old, new),
        "zstd_patch_from": _zstd_patch_from(old, new),
        "detools_lzma": _detools(old, new, "lzma"),
        "detools_heatshrink": _detools(old, new, "heatshrink"),
    }


COLS = ["otaferry", "bsdiff4", "zstd_patch_from", "detools_lzma", "detools_heatshrink"]


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="otaferry bench delta", description=__doc__.splitlines()[0])
    ap.add_argument(
        "firmware_dir",
        nargs="?",
        default=str(DEFAULT_DIR),
        help="folder holding the pairs (default: tests/firmware)",
    )
    ap.add_argument(
        "--segment-size",
        type=multiple_of(4096),
        default=DEFAULT_SEGMENT_SIZE,
        help=f"target bytes per delta segment (default {DEFAULT_SEGMENT_SIZE})",
    )
    ap.add_argument("--json", action="store_true", help="JSON output")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.firmware_dir)
    rows: list[tuple[str, dict[str, Any]]] = []
    for name, a, b in PAIRS:
        old, new = (root / a).read_bytes(), (root / b).read_bytes()
        rows.append((name, bench_pair(old, new, args.segment_size)))
        if not args.json:
            print(f"  done {name}", file=sys.stderr)
    total = {c: sum(r[c] for _, r in rows) for c in COLS}
    if args.json:
        print(
            json.dumps(
                {"segment_size": args.segment_size, "pairs": dict(rows), "total": total}, indent=1
            )
        )
        return 0
    print(f"segment_size {args.segment_size} (target bytes per segment)\n")
    hdr = (
        f"{'pair':24} {'otaferry':>8} {'create':>6} {'apply':>7} {'RAM':>7} {'max seg':>9}"
        f" {'bsdiff4':>8} {'zstd-pf':>8} {'dt-lzma':>8} {'dt-hs':>8} {'new':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, r in rows:
        print(
            f"{name:24} {r['otaferry']:8d} {r['create_s']:5.1f}s {r['apply_s']:6.1f}s"
            f" {r['apply_ram']:7d} {r['max_segment_payload']:9d} {r['bsdiff4']:8d}"
            f" {r['zstd_patch_from']:8d} {r['detools_lzma']:8d}"
            f" {r['detools_heatshrink']:8d} {r['new']:8d}"
        )
    ram = max(r["apply_ram"] for _, r in rows)
    print(
        f"{'TOTAL':24} {total['otaferry']:8d} {'':6} {'':7} {ram:7d} {'':9}"
        f" {total['bsdiff4']:8d} {total['zstd_patch_from']:8d} {total['detools_lzma']:8d}"
        f" {total['detools_heatshrink']:8d}"
    )
    print(
        "\nRAM = tracemalloc peak during apply_segment + largest segment payload held "
        "until its hash checks (no C-side codec state)."
    )
    print(f"\nAnchors (published, same 8 pairs): otaferry total {total['otaferry']} B")
    for label, v in ANCHORS:
        print(f"  {label:38} {v:8d}  (otaferry {100.0 * (total['otaferry'] - v) / v:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
