"""Benchmark of full-image artifacts: size vs zstd -19 / xz -9e, device install speed and RAM.

    python -m otaferry.tools.bench.artifact [FIRMWARE_DIR] [--json]

For every ``*.bin`` under FIRMWARE_DIR (default ``tests/firmware``, the copies
of ``../shared/firmware``): the .ota file size against ``zstd -19`` and ``lzma -9e`` of the
raw image (whole-image compressors: the floor a segmented, device-decodable
format pays against), then an offline install on the simulated device:
throughput (image bytes per second of wall time, flash file I/O included) and
the device's peak Python heap during install (tracemalloc), beside the codec's
C-side state counted from the format (SPEC.md section 4).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import zstandard

from ...device_fw.device import Device
from ...device_fw.installer import Installer
from ...device_fw.manifest import read_header
from ...protocol.artifact import build_full, inspect_artifact
from ...protocol.keys import SigningKey
from ...protocol.payload import BLOCK_MAX, ENTROPY_TABLE_BYTES
from ..args import Parser

# the copies in tests/firmware (the same files as ../shared/firmware, see SOURCES.md)
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "tests" / "firmware"


def bench_image(path: Path, key: SigningKey, work: Path) -> dict[str, object]:
    image = path.read_bytes()
    t0 = time.perf_counter()
    art = build_full(image, key, hw=["bench"], chip="bench", version="1")
    build_s = time.perf_counter() - t0
    zstd19 = len(zstandard.ZstdCompressor(level=19).compress(image))
    xz9e = len(lzma.compress(image, preset=9 | lzma.PRESET_EXTREME))
    art_path = work / (path.stem + ".ota")
    art_path.write_bytes(art)
    info = inspect_artifact(str(art_path))

    flash = work / "flash.bin"
    base = b"\x00" * 4096  # any running image: a full install does not read it
    Device.create(
        str(flash),
        hw="bench",
        chip="bench",
        trusted_keys=[key.public.raw],
        image=base,
        version="0",
        size=4 * 1024 * 1024,
    ).close()
    dev = Device(str(flash))
    # Two phases that never overlap: begin (parse + verify the manifest) and the
    # segments (one compressed segment + its decode). libzstd exists only in the
    # second, so device RAM = max(begin peak, segment peak + codec state).
    stream = io.BytesIO(art)
    t0 = time.perf_counter()
    tracemalloc.start()
    manifest_bytes, signature = read_header(stream)
    inst = Installer(dev)
    inst.begin(manifest_bytes, signature)
    _, begin_peak = tracemalloc.get_traced_memory()
    seg_peak = 0
    for index in range(inst.segment_count):
        payload = stream.read(inst.manifest["segments"][index][0])
        tracemalloc.reset_peak()
        inst.segment(index, payload)
        del payload
        seg_peak = max(seg_peak, tracemalloc.get_traced_memory()[1])
    tracemalloc.reset_peak()
    inst.finish()
    finish_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    install_s = time.perf_counter() - t0
    codec = min(1 << info["window_log"], BLOCK_MAX) + ENTROPY_TABLE_BYTES
    slot = dev.info()["slots"][1]
    dev.close()
    assert slot["sha256"] == hashlib.sha256(image).hexdigest(), "installed image differs"
    return {
        "image": str(path.relative_to(path.parents[1])),
        "image_bytes": len(image),
        "artifact_bytes": len(art),
        "payload_bytes": info["payload_size"],
        "zstd19_bytes": zstd19,
        "xz9e_bytes": xz9e,
        "vs_zstd19": round(len(art) / zstd19, 3),
        "vs_xz9e": round(len(art) / xz9e, 3),
        "build_s": round(build_s, 2),
        "install_MBps": round(len(image) / install_s / 1e6, 2),
        "begin_peak_heap_bytes": begin_peak,
        "segment_peak_heap_bytes": seg_peak,
        "finish_peak_heap_bytes": finish_peak,
        # libzstd's state is invisible to tracemalloc: a one-shot segment decode
        # needs a literals buffer of one block plus the entropy tables (SPEC 4).
        # The compressed segment and the output (= window) are in the heap figure.
        "codec_state_bytes": codec,
        "device_ram_bytes": max(begin_peak, seg_peak + codec, finish_peak),
        "spec_budget_bytes": info["decoder_ram_bytes"],
    }


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="otaferry bench artifact",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "firmware_dir", nargs="?", default=str(DEFAULT_DIR), help="folder of *.bin images"
    )
    ap.add_argument("--json", action="store_true", help="JSON output")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    images = sorted(Path(args.firmware_dir).rglob("*.bin"))
    if not images:
        print(f"no *.bin under {args.firmware_dir}", file=sys.stderr)
        return 1
    key = SigningKey.from_seed(bytes(32))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in images:
            rows.append(bench_image(path, key, Path(tmp)))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = (
        f"{'image':<48} {'raw':>8} {'.ota':>8} {'zstd-19':>8} {'xz-9e':>8} {'/zstd':>6} "
        f"{'/xz':>6} {'MB/s':>6} {'heap':>7} {'RAM':>7}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['image']:<48} {r['image_bytes']:>8} {r['artifact_bytes']:>8} "
            f"{r['zstd19_bytes']:>8} {r['xz9e_bytes']:>8} {r['vs_zstd19']:>6} {r['vs_xz9e']:>6} "
            f"{r['install_MBps']:>6} {r['segment_peak_heap_bytes']:>7} {r['device_ram_bytes']:>7}"
        )
    tot = {
        k: sum(int(r[k]) for r in rows)  # type: ignore[call-overload]
        for k in ("image_bytes", "artifact_bytes", "zstd19_bytes", "xz9e_bytes")
    }
    print(
        f"{'total':<48} {tot['image_bytes']:>8} {tot['artifact_bytes']:>8} "
        f"{tot['zstd19_bytes']:>8} "
        f"{tot['xz9e_bytes']:>8} {tot['artifact_bytes'] / tot['zstd19_bytes']:>6.3f} "
        f"{tot['artifact_bytes'] / tot['xz9e_bytes']:>6.3f}"
    )
    print(
        "heap: tracemalloc peak while a segment is checked, decoded and written (Python objects:\n"
        "compressed segment, decoded segment = window, state); RAM: the device's peak, the larger\n"
        "of the manifest check (parse + signature) and heap + libzstd's C-side state\n"
        f"({rows[0]['codec_state_bytes']} B: one block of literals + entropy tables);\n"
        f"SPEC.md section 4 streaming budget: {rows[0]['spec_budget_bytes']} B; limit 65536 B"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
