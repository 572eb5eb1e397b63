"""Benchmark of the delta codec on any list of firmware pairs, against its peers.

    otaferry bench delta [--pairs PAIRS.txt] [--json OUT.json] [--device-ram BYTES]
                         [--segment-size N] [--lofo] [--no-baselines] [--jobs N]

PAIRS.txt holds one pair a line, ``OLD.bin NEW.bin``, paths relative to the file
(``#`` starts a comment); the default is ``tests/firmware/pairs.txt``, every
release pair under tests/firmware. For each pair the delta is built exactly as
``otaferry build --base`` builds it (segment size searched under the device's
RAM budget, signed ``.ota``), installed on a simulated device with the default
limits (its RAM check included; RAM measured with tracemalloc per segment) and
the passive slot compared byte for byte with the new image. Peers, each applied back
and compared too: bsdiff4, zstd patch-from (old image as raw-content
dictionary, level 19, long window), detools sequential patches with heatshrink
and with lzma, detools hdiffpatch+lzma, and xz -9e of the whole new image.

The score is the delta payload total over the sum, per pair, of the best peer.
The family of a pair is the folder of its new image. ``--lofo`` adds the
leave-one-family-out figure: for each family, the encoder configuration (from
:data:`CONFIGS`) with the best score on the *other* families is used to score
it, so no choice is ever made on the pairs it is scored on.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bsdiff4
import zstandard

from ...protocol.artifact import build_delta, device_ram_bytes
from ...protocol.delta import DEFAULT_DEVICE_RAM, encode_delta_for_device
from ...protocol.keys import SigningKey
from ...protocol.manifest import Manifest
from ..args import Parser, int_range, multiple_of

DEFAULT_PAIRS = Path(__file__).resolve().parents[2] / "tests" / "firmware" / "pairs.txt"
KEY = SigningKey.from_seed(hashlib.sha256(b"otaferry bench delta").digest())

BASELINES = [
    "bsdiff4",
    "zstd_patch_from",
    "detools_heatshrink",
    "detools_lzma",
    "detools_hdiffpatch_lzma",
    "xz_full",
]

# Encoder configurations the leave-one-family-out figure chooses between:
# name -> keyword arguments of encode_delta_for_device. "auto" is what the
# builder does (segment size searched, instruction set tried per artifact);
# the others are the choices that could have been fixed by looking at a corpus:
# the old 32 KiB default, and fdelta1 alone (no branch predictor).
CONFIGS: dict[str, dict[str, Any]] = {
    "auto": {},
    "fixed-32k": {"segment_size": 32768},
    "fdelta1-only": {"archs": (), "lz": False},
    "no-matches": {"lz": False},
}


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """``(old, new)`` paths, relative to ``path``'s folder, one pair a line."""
    pairs: list[tuple[str, str]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2:
            raise SystemExit(f"{path}:{n}: expected 'OLD.bin NEW.bin', got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def family(new: str) -> str:
    """A pair's family: the first folder of its new image's path."""
    return Path(new).parts[0] if len(Path(new).parts) > 1 else new


def _install(old: bytes, new: bytes, ota: bytes) -> tuple[bool, int, float]:
    """Install ``ota`` on a simulated device with the default limits, running
    ``old``, the way the device does (Installer: RAM check, each segment checked,
    applied, written): whether the passive slot then holds ``new``, the largest
    tracemalloc peak of one segment plus the payload it holds (the measured side
    of SPEC 7.6, as tests/test_delta_install.py measures it), the apply time."""
    from ...device_fw import manifest as DM
    from ...device_fw.device import Device
    from ...device_fw.installer import Installer

    peak = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "flash.bin")
        Device.create(
            path,
            hw="bench",
            chip="bench",
            trusted_keys=[KEY.public.raw],
            image=old,
            version="old",
        ).close()
        with Device(path) as dev:
            manifest_bytes, signature = DM.read_header(io.BytesIO(ota))
            inst = Installer(dev)
            inst.begin(manifest_bytes, signature)
            pos = 10 + len(manifest_bytes) + len(signature)
            t0 = time.perf_counter()
            for i, (length, _check) in enumerate(inst.manifest["segments"]):
                payload = bytearray(ota[pos : pos + length])  # the receiver's buffer
                pos += length
                tracemalloc.start()
                try:
                    base = tracemalloc.get_traced_memory()[0]
                    inst.segment(i, memoryview(payload))
                    peak = max(peak, tracemalloc.get_traced_memory()[1] - base + length)
                finally:
                    tracemalloc.stop()
            apply_s = time.perf_counter() - t0
            inst.finish()
            slot = dev.slots[1]
            ok = bytes(dev.flash.read(slot.offset, len(new))) == new
    return ok, peak, apply_s


def _check(name: str, ok: bool) -> None:
    if not ok:
        raise AssertionError(f"{name} round trip failed")


def _zstd_patch_from(old: bytes, new: bytes) -> int:
    wlog = max(10, min(31, (len(old) + len(new)).bit_length()))
    dd = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    params = zstandard.ZstdCompressionParameters.from_level(
        19, window_log=wlog, enable_ldm=True, source_size=len(new)
    )
    patch = zstandard.ZstdCompressor(dict_data=dd, compression_params=params).compress(new)
    dd2 = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    back = zstandard.ZstdDecompressor(dict_data=dd2, max_window_size=1 << wlog).decompress(patch)
    _check("zstd patch-from", back == new)
    return len(patch)


def _bsdiff4(old: bytes, new: bytes) -> int:
    patch = bsdiff4.diff(old, new)
    _check("bsdiff4", bsdiff4.patch(old, patch) == new)
    return len(patch)


def _detools(old: bytes, new: bytes, **kw: Any) -> int:
    import detools  # only the benchmark needs it

    f = io.BytesIO()
    detools.create_patch(io.BytesIO(old), io.BytesIO(new), f, use_mmap=False, **kw)
    out = io.BytesIO()
    detools.apply_patch(io.BytesIO(old), io.BytesIO(f.getvalue()), out)
    _check(f"detools {kw}", out.getvalue() == new)
    return len(f.getvalue())


def _xz_full(_old: bytes, new: bytes) -> int:
    packed = lzma.compress(new, preset=9 | lzma.PRESET_EXTREME)
    _check("xz", lzma.decompress(packed) == new)
    return len(packed)


PEERS: dict[str, Callable[[bytes, bytes], int]] = {
    "bsdiff4": _bsdiff4,
    "zstd_patch_from": _zstd_patch_from,
    "detools_heatshrink": lambda o, n: _detools(o, n, compression="heatshrink"),
    "detools_lzma": lambda o, n: _detools(o, n, compression="lzma"),
    "detools_hdiffpatch_lzma": lambda o, n: _detools(
        o, n, compression="lzma", patch_type="hdiffpatch", algorithm="hdiffpatch"
    ),
    "xz_full": _xz_full,
}


def bench_pair(
    old: bytes, new: bytes, device_ram: int, baselines: bool = True, **enc: Any
) -> dict[str, Any]:
    """One pair: otaferry's artifact as the builder makes it, and every peer."""
    t0 = time.perf_counter()
    res = encode_delta_for_device(old, new, device_ram, **enc)
    create_s = time.perf_counter() - t0
    ota = build_delta(old, new, KEY, hw=["bench"], chip="bench", version="new", encoded=res)
    from ...protocol.artifact import ArtifactReader

    manifest: Manifest = ArtifactReader(io.BytesIO(ota)).manifest
    ok, measured, apply_s = _install(old, new, ota)
    row: dict[str, Any] = {
        "old_size": len(old),
        "new_size": len(new),
        "payload_bytes": res.payload_size,
        "ota_bytes": len(ota),
        "codec": res.codec,
        "segment_size": res.segment_size,
        "segments": len(res.segments),
        "max_segment_payload": res.max_segment_payload,
        "device_ram_bytes": device_ram_bytes(manifest),
        "device_ram_measured_bytes": measured,
        "installable": device_ram_bytes(manifest) <= DEFAULT_DEVICE_RAM,
        "applied_ok": ok,
        "create_s": round(create_s, 2),
        "apply_s": round(apply_s, 2),
    }
    if baselines:
        for name in BASELINES:
            row[name] = PEERS[name](old, new)
        best = min(BASELINES, key=lambda n: row[n])
        row["best_peer"] = best
        row["best_peer_bytes"] = row[best]
        row["vs_best_peer"] = round(res.payload_size / row[best], 4)
    return row


def _config_size(job: tuple[str, str, int, dict[str, Any]]) -> int:
    a, b, device_ram, kw = job
    old, new = Path(a).read_bytes(), Path(b).read_bytes()
    try:
        return encode_delta_for_device(old, new, device_ram, **kw).payload_size
    except Exception:  # a fixed size that does not fit: unusable on this pair
        return 1 << 40


def _pair_row(job: tuple[Path, str, str, int, bool, dict[str, Any]]) -> dict[str, Any]:
    root, a, b, device_ram, baselines, enc = job
    old, new = (root / a).read_bytes(), (root / b).read_bytes()
    row: dict[str, Any] = {"old": a, "new": b, "family": family(b)}
    row.update(bench_pair(old, new, device_ram, baselines, **enc))
    return row


def _map(fn: Callable[[Any], Any], items: list[Any], jobs_n: int) -> list[Any]:
    """``map`` in ``jobs_n`` worker processes (pairs are independent), in order."""
    if jobs_n <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs_n) as pool:
        return list(pool.map(fn, items))


def _lofo(
    pairs: list[tuple[str, str]],
    root: Path,
    device_ram: int,
    rows: dict[str, dict[str, Any]],
    rows_are_auto: bool = True,
    jobs_n: int = 1,
) -> dict[str, Any]:
    """Leave one family out: each family scored with the configuration that did
    best on all the others."""
    sizes: dict[str, dict[str, int]] = {c: {} for c in CONFIGS}
    todo: list[tuple[str, str, str]] = []
    for cname, kw in CONFIGS.items():
        for a, b in pairs:
            key = f"{a} -> {b}"
            if not kw and rows_are_auto:  # the builder's own choice: measured already
                sizes[cname][key] = rows[key]["payload_bytes"]
                continue
            todo.append((cname, a, b))
    jobs = [(str(root / a), str(root / b), device_ram, CONFIGS[c]) for c, a, b in todo]
    for (cname, a, b), size in zip(todo, _map(_config_size, jobs, jobs_n), strict=True):
        sizes[cname][f"{a} -> {b}"] = size
    fams = sorted({family(b) for _, b in pairs})
    keys_of = {f: [f"{a} -> {b}" for a, b in pairs if family(b) == f] for f in fams}
    out: dict[str, Any] = {"families": {}, "configs": list(CONFIGS)}
    total = peers = 0
    for f in fams:
        others = [k for g in fams if g != f for k in keys_of[g]]

        def score(c: str, ks: list[str] = others) -> float:
            return sum(sizes[c][k] for k in ks) / max(
                1, sum(rows[k]["best_peer_bytes"] for k in ks)
            )

        chosen = min(CONFIGS, key=score)
        got = sum(sizes[chosen][k] for k in keys_of[f])
        best = sum(rows[k]["best_peer_bytes"] for k in keys_of[f])
        out["families"][f] = {"config": chosen, "payload_bytes": got, "best_peer_bytes": best}
        total += got
        peers += best
    out["payload_bytes"] = total
    out["best_peer_bytes"] = peers
    out["ratio"] = round(total / max(1, peers), 4)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="otaferry bench delta", description=__doc__.splitlines()[0])
    ap.add_argument(
        "firmware_dir",
        nargs="?",
        help="a folder holding pairs.txt (the same as --pairs DIR/pairs.txt)",
    )
    ap.add_argument(
        "--pairs",
        help="file of 'OLD.bin NEW.bin' lines, paths relative to it (default: "
        "tests/firmware/pairs.txt)",
    )
    ap.add_argument(
        "--json",
        metavar="OUT.json",
        help="also write the results as JSON to this file ('-' for stdout, table omitted)",
    )
    ap.add_argument(
        "--device-ram",
        type=int_range(4096),
        default=DEFAULT_DEVICE_RAM,
        help=f"the target device's RAM budget (default {DEFAULT_DEVICE_RAM})",
    )
    ap.add_argument(
        "--segment-size",
        type=multiple_of(4096),
        help="force one delta segment size (default: the builder's search)",
    )
    ap.add_argument(
        "--lofo", action="store_true", help="add the leave-one-family-out figure (slower)"
    )
    ap.add_argument(
        "--no-baselines", action="store_true", help="otaferry only, no peers (quick look)"
    )
    ap.add_argument(
        "--jobs",
        type=int_range(1),
        default=1,
        help="pairs measured in this many processes at once (default 1; figures are the same)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.pairs:
        pairs_file = Path(args.pairs)
    elif args.firmware_dir:
        pairs_file = Path(args.firmware_dir) / "pairs.txt"
    else:
        pairs_file = DEFAULT_PAIRS
    root = pairs_file.resolve().parent
    pairs = read_pairs(pairs_file)
    enc: dict[str, Any] = {}
    if args.segment_size:
        enc["segment_size"] = args.segment_size
    quiet = args.json == "-"
    rows: dict[str, dict[str, Any]] = {}
    jobs = [(root, a, b, args.device_ram, not args.no_baselines, enc) for a, b in pairs]
    for row in _map(_pair_row, jobs, args.jobs):
        rows[f"{row['old']} -> {row['new']}"] = row
        if not quiet:
            print(f"  done {row['old']} -> {row['new']}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {
        "pairs_file": str(pairs_file),
        "device_ram": args.device_ram,
        "payload_bytes": sum(r["payload_bytes"] for r in rows.values()),
        "ota_bytes": sum(r["ota_bytes"] for r in rows.values()),
        "all_applied_ok": all(r["applied_ok"] for r in rows.values()),
        "all_installable": all(r["installable"] for r in rows.values()),
        "max_device_ram_bytes": max(r["device_ram_bytes"] for r in rows.values()),
    }
    if not args.no_baselines:
        for name in BASELINES:
            summary[name] = sum(r[name] for r in rows.values())
        summary["best_peer_bytes"] = sum(r["best_peer_bytes"] for r in rows.values())
        summary["ratio"] = round(summary["payload_bytes"] / summary["best_peer_bytes"], 4)
        summary["worst_pair_vs_best_peer"] = max(r["vs_best_peer"] for r in rows.values())
    doc = {"pairs": list(rows.values()), "total": summary}
    lofo = args.lofo and not args.no_baselines
    if args.json and not quiet:  # the pairs' figures first: the LOFO figure takes a while
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    if lofo:
        if not quiet:
            _print_table(rows, summary, True)
            print("leave-one-family-out: measuring ...", file=sys.stderr, flush=True)
        summary["leave_one_family_out"] = _lofo(
            pairs, root, args.device_ram, rows, not enc, args.jobs
        )
    if args.json:
        text = json.dumps(doc, indent=1)
        if quiet:
            print(text)
            return 0
        Path(args.json).write_text(text + "\n")
    if lofo:
        _print_lofo(summary["leave_one_family_out"])
    else:
        _print_table(rows, summary, not args.no_baselines)
    return 0


def _print_table(rows: dict[str, dict[str, Any]], total: dict[str, Any], peers: bool) -> None:
    hdr = f"{'new image':46} {'otaferry':>8} {'seg':>6} {'RAM':>6} {'ok':>3}"
    if peers:
        hdr += f" {'best peer':>9} {'(which)':24} {'ratio':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows.values():
        line = (
            f"{r['new'][-46:]:46} {r['payload_bytes']:8d} {r['segment_size']:6d}"
            f" {r['device_ram_bytes']:6d} {'yes' if r['applied_ok'] else 'NO':>3}"
        )
        if peers:
            line += f" {r['best_peer_bytes']:9d} {r['best_peer']:24} {r['vs_best_peer']:6.3f}"
        print(line)
    line = (
        f"{'TOTAL':46} {total['payload_bytes']:8d} {'':6} {total['max_device_ram_bytes']:6d}"
        f" {'yes' if total['all_applied_ok'] and total['all_installable'] else 'NO':>3}"
    )
    if peers:
        line += f" {total['best_peer_bytes']:9d} {'':24} {total['ratio']:6.3f}"
    print(line)
    if peers:
        print("\npeer totals: " + ", ".join(f"{n} {total[n]}" for n in BASELINES))
        print(f"worst pair vs its best peer: {total['worst_pair_vs_best_peer']:.3f}")
        lofo = total.get("leave_one_family_out")
        if lofo:
            _print_lofo(lofo)


def _print_lofo(lofo: dict[str, Any]) -> None:
    print(
        f"leave-one-family-out: {lofo['payload_bytes']} vs best peers "
        f"{lofo['best_peer_bytes']} = {lofo['ratio']:.3f} "
        + ", ".join(f"{f}: {v['config']}" for f, v in lofo["families"].items())
    )


if __name__ == "__main__":
    sys.exit(main())
