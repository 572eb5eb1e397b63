"""``otaferry bench micropython``: the delta install of each shared pair under the
real ``micropython`` command (the unix port).

    otaferry bench micropython [--pairs PAIRS.txt] [--only N] [--json OUT.json] [--step BYTES]
                               [--device-ram BYTES] [--code source|mpy|romfs]

Per pair: the delta artifact as ``otaferry build --base`` makes it (``--device-ram``,
default 65,536: the device budget its segments are sized for), a simulated
flash holding the old image, then ``device_fw.mp_run install`` (real Ed25519
verify from device_fw/mpcrypto, the fdelta applier):

- ``min_heap``: the smallest ``-X heapsize`` (to ``--step``, default 4 KiB) in which
  the whole install completes, by bisection;
- ``live_peak``: ``gc.mem_alloc()`` after a collection at every flash write and
  erase, in a 1 MiB heap: the live high-water mark, and ``code`` the part of it
  the imported modules take (``--code source`` and ``mpy``: the bytecode too;
  ``romfs``: only what import creates, module dicts, functions, qstrs, the
  bytecode staying in the image); ``install_peak`` = live_peak - code is what
  the install itself holds (the applier's tables and payload buffer, reserved
  when the device opens, among it);
- ``seconds``: the install's time in the 1 MiB heap (64-bit unix port);
- ``below``: how it fails one step under ``min_heap`` (the device's reason, and
  whether it had written flash: refused at open, or out of memory mid-install),
  ``failed_after_writing``: how many of the failed probes had written flash;

and once, the deflate full-image codec's bytes against zstd -19 over the
firmware images under tests/firmware.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...device_fw.device import DEFAULT_LIMITS, Device
from ...protocol.artifact import build_delta
from ...protocol.keys import SigningKey
from ...protocol.x25519keys import LinkPrivateKey
from ..mpy import CODE_MODES, run_mp
from .delta import DEFAULT_PAIRS, read_pairs

KEY = SigningKey.from_seed(bytes(range(32)))
GATEWAY = LinkPrivateKey.from_raw(bytes(range(32, 64)))


def _install(flash: Path, ota: Path, work: Path, heap: int, hwm: bool = False,
             code: str = "source") -> dict[str, Any]:  # fmt: skip
    trial = work / "trial.bin"
    shutil.copy(flash, trial)
    args = ["install", str(trial), str(ota)] + (["--hwm"] if hwm else [])
    done = run_mp(args, heap=heap, timeout=900, code=code)
    lines = done.stdout.strip().splitlines()
    try:
        r = dict(json.loads(lines[-1]))
    except (IndexError, ValueError):  # it died before its report
        r = {"ok": False, "error": (done.stdout + done.stderr).strip().splitlines()[-1:]}
    if not r.get("ok"):  # refused at open (nothing written) or ran out mid-install?
        r["wrote"] = not filecmp.cmp(flash, trial, shallow=False)
    return r


def measure(old: bytes, new: bytes, work: Path, step: int, device_ram: int = 65536,
            code: str = "source", secure: bool = False) -> dict[str, Any]:  # fmt: skip
    flash = work / "flash.bin"
    size = max(4 << 20, 1 << (2 * len(old) + 0x20000).bit_length())
    csv = ("nvs, data, nvs, 0x9000, 0x4000,\notadata, data, ota, 0xd000, 0x2000,\n"
           f"ota_0, app, ota_0, 0x10000, {size // 2 - 0x10000:#x},\n"
           f"ota_1, app, ota_1, {size // 2:#x}, {size // 2 - 0x10000:#x},\n")  # fmt: skip
    # provisioned with the budget the delta is built for (the device reserves its payload
    # buffer from it: device_fw/mp_run.heap_payload)
    Device.create(str(flash), hw="hw", chip="chip", trusted_keys=[KEY.public.raw], image=old,
                  version="old", partitions_csv=csv, size=size,
                  gateways=[GATEWAY.public.raw] if secure else None,
                  limits=dict(DEFAULT_LIMITS, ram_budget=device_ram)).close()  # fmt: skip
    ota = work / "delta.ota"
    ota.write_bytes(build_delta(old, new, KEY, hw=["hw"], chip="chip", version="new",
                                device_ram=device_ram))  # fmt: skip
    full = _install(flash, ota, work, 1 << 20, hwm=True, code=code)
    timed = _install(flash, ota, work, 1 << 20, code=code)
    if not (full.get("ok") and timed.get("ok")):
        return {"ok": False, "error": full.get("error") or full.get("message")}
    lo, hi = 0, 1 << 20  # lo fails, hi works
    below: dict[str, Any] = {}
    failed = []
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        r = _install(flash, ota, work, mid, code=code)
        if r.get("ok"):
            hi = mid
        else:
            lo, below = mid, r
            failed.append(r)
    return {"ok": True, "artifact": ota.stat().st_size, "min_heap": hi,
            "below": {"heap": lo, "reason": below.get("reason_name"),
                      "message": below.get("message") or below.get("error"),
                      "wrote": below.get("wrote")},
            "failed_after_writing": sum(1 for r in failed if r.get("wrote")),
            "live_peak": full["heap_peak"], "code": full["heap_code"],
            "install_peak": full["heap_peak"] - full["heap_code"],
            "seconds": timed["ms"] / 1000}  # fmt: skip


def deflate_vs_zstd(root: Path) -> dict[str, Any]:
    from ...protocol.payload import compress_segments, compress_segments_deflate

    z = d = n = 0
    for path in sorted(root.rglob("*.bin")):
        img = path.read_bytes()
        z += sum(map(len, compress_segments(img)))
        d += sum(map(len, compress_segments_deflate(img)))
        n += 1
    return {"images": n, "zstd19": z, "deflate9": d, "deflate_over_zstd_pct": 100 * (d - z) / z}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="otaferry bench micropython")
    ap.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS)
    ap.add_argument("--only", type=int, help="the first N pairs only")
    ap.add_argument("--step", type=int, default=4096, help="heap bisection step (4 KiB)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--device-ram", type=int, default=65536, help="build --device-ram (65536)")
    ap.add_argument("--code", choices=CODE_MODES, default="source",
                    help="device_fw as .py source, mpy-cross .mpy files, or .mpy in a ROMFS image "
                         "imported in place (tools/mpy.py)")  # fmt: skip
    ap.add_argument("--secure", action="store_true",
                    help="a device with a link key (a gateway provisioned): it holds the secure "
                         "channel's code too")  # fmt: skip
    args = ap.parse_args(argv)
    pairs = read_pairs(args.pairs)[: args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for old_name, new_name in pairs:
            old = (args.pairs.parent / old_name).read_bytes()
            new = (args.pairs.parent / new_name).read_bytes()
            r = measure(old, new, Path(tmp), args.step, args.device_ram, args.code, args.secure)
            r["pair"] = f"{old_name} -> {new_name}"
            rows.append(r)
            if r["ok"]:
                print(f"{r['pair']}: min heap {r['min_heap'] // 1024} KiB, live peak "
                      f"{r['live_peak']} B (modules {r['code']} B, install {r['install_peak']} B), "
                      f"{r['seconds']:.1f} s; at {r['below']['heap'] // 1024} KiB: "
                      f"{r['below']['reason']}"
                      f"{', after writing' if r['below']['wrote'] else ', nothing written'}",
                      flush=True)  # fmt: skip
            else:
                print(f"{r['pair']}: FAILED {r.get('error')}", flush=True)
    ratio = deflate_vs_zstd(args.pairs.parent)
    print(f"deflate vs zstd -19 over {ratio['images']} images at 8 KiB segments: "
          f"{ratio['deflate9']} B vs {ratio['zstd19']} B ({ratio['deflate_over_zstd_pct']:+.2f} %)")
    if args.json:
        args.json.write_text(json.dumps({"pairs": rows, "deflate": ratio}, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1
