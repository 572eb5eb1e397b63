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
  whether it had written the update's slot: refused before, or out of memory
  mid-install; the store's progress record does not count),
  ``failed_after_writing``: how many of the failed probes had written flash;

and once, the deflate full-image codec's bytes against zstd -19 over the
firmware images under tests/firmware.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ...device_fw.device import DEFAULT_LIMITS, Device
from ...protocol.artifact import build_delta, build_full
from ...protocol.errors import Reason
from ...protocol.keys import SigningKey
from ...protocol.x25519keys import LinkPrivateKey, LinkPublicKey
from ..mpy import CODE_MODES, mp_argv, mp_env, run_mp
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
        r["wrote"] = _passive_written(flash, trial)
    return r


def _passive_written(flash: Path, trial: Path) -> bool:
    """Whether the update's slot changed (the store's progress record does not
    count: a refusal at the offer may write it)."""
    if filecmp.cmp(flash, trial, shallow=False):
        return False
    with Device(str(flash), read_only=True) as dev:
        slot = dev.passive_slot()
        offset, size = slot.offset, slot.size
    with open(flash, "rb") as a, open(trial, "rb") as b:
        a.seek(offset)
        b.seek(offset)
        return a.read(size) != b.read(size)


def _session(flash: Path, ota: Path, work: Path, heap: int, code: str = "source",
             secure: bool = False) -> dict[str, Any]:  # fmt: skip
    """One push of ``ota`` over a real pty pair (``otaferry linesim`` at 2 Mbaud)
    to device_fw's main loop under ``micropython`` (``mp_run serve
    --no-reboot``) in ``heap``: ok when the push ends with the update
    installed; else the push's last line, or the device's when it died."""
    trial = work / "trial.bin"
    shutil.copy(flash, trial)
    host, dev = work / "host.tty", work / "dev.tty"
    for path in (host, dev):
        path.unlink(missing_ok=True)
    cli = [sys.executable, "-m", "otaferry"]
    line = subprocess.Popen([*cli, "linesim", "--baud", "2000000", str(host), str(dev)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    procs: list[subprocess.Popen[Any]] = [line]
    try:
        deadline = time.monotonic() + 20
        while not (host.exists() and dev.exists()):
            if time.monotonic() > deadline or line.poll() is not None:
                return {"ok": False, "error": "linesim did not start"}
            time.sleep(0.05)
        serve = ["serve", str(trial), str(dev), "1024", "--no-reboot"]
        device = subprocess.Popen(mp_argv(serve, heap, code), env=mp_env(code), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        procs.append(device)
        if secure:
            (work / "gw.key").write_bytes(GATEWAY.to_pem())
            with Device(str(flash), read_only=True) as d:
                pub = LinkPublicKey.from_raw(d.link_public()).to_pem()
            (work / "dev.pub").write_bytes(pub)
            keys = ["--link-key", str(work / "gw.key"), "--device-pub", str(work / "dev.pub")]
        else:
            keys = ["--insecure-plaintext"]
        push = subprocess.Popen([*cli, "push", "--port", str(host), "--baud", "2000000",
                                 "--no-await-checkin", "--timeout", "60", *keys, str(ota)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)  # fmt: skip
        procs.append(push)
        while push.poll() is None:
            if device.poll() is not None:  # the device died: its JSON line says why
                push.kill()
                break
            time.sleep(0.05)
        out = (push.communicate()[0] or "").strip().splitlines()
        r: dict[str, Any] = {"ok": push.returncode == 0, "push": out[-1:] if out else []}
        if device.poll() is not None:
            lines = (device.communicate()[0] or "").strip().splitlines()
            try:
                r.update(json.loads(lines[-1]), ok=False)
            except (IndexError, ValueError):
                r["error"] = lines[-1:]
        if not r["ok"]:
            r.setdefault("message", " ".join(out[-3:]))
            if "reason_name" not in r:  # the device refused and lived: the push names why
                named = [x.name for x in Reason if x.name in r["message"]]
                r["reason_name"] = named[0] if named else None
            r["wrote"] = _passive_written(flash, trial)
        return r
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def measure(old: bytes, new: bytes, work: Path, step: int, device_ram: int = 65536,
            code: str = "source", secure: bool = False,
            session: bool = False, full_image: bool = False) -> dict[str, Any]:  # fmt: skip
    flash = work / "flash.bin"
    size = max(4 << 20, 1 << (2 * len(old) + 0x20000).bit_length())
    csv = ("nvs, data, nvs, 0x9000, 0x4000,\notadata, data, ota, 0xd000, 0x2000,\n"
           f"ota_0, app, ota_0, 0x10000, {size // 2 - 0x10000:#x},\n"
           f"ota_1, app, ota_1, {size // 2:#x}, {size // 2 - 0x10000:#x},\n")  # fmt: skip
    # provisioned with the budget the delta is built for (the device reserves its payload
    # buffer from it: device_fw/mp_run.heap_payload)
    with Device.create(str(flash), hw="hw", chip="chip", trusted_keys=[KEY.public.raw],
                       image=old, version="old", partitions_csv=csv, size=size,
                       gateways=[GATEWAY.public.raw] if secure else None,
                       limits=dict(DEFAULT_LIMITS, ram_budget=device_ram)) as dev:  # fmt: skip
        if not secure:
            dev.provision(require_secure=False)
    ota = work / "update.ota"
    if full_image:  # the new image whole, in the codec MicroPython decodes
        ota.write_bytes(build_full(new, KEY, hw=["hw"], chip="chip", version="new",
                                   codec="deflate"))  # fmt: skip
    else:
        ota.write_bytes(build_delta(old, new, KEY, hw=["hw"], chip="chip", version="new",
                                    device_ram=device_ram))  # fmt: skip

    def probe(heap: int, hwm: bool = False) -> dict[str, Any]:
        if session:
            return _session(flash, ota, work, heap, code, secure)
        return _install(flash, ota, work, heap, hwm=hwm, code=code)

    t0 = time.monotonic()
    full = probe(1 << 20, hwm=True)
    wall = time.monotonic() - t0
    timed = full if session else probe(1 << 20)
    if not (full.get("ok") and timed.get("ok")):
        return {"ok": False, "error": full.get("error") or full.get("message")}
    lo, hi = 0, 1 << 20  # lo fails, hi works
    below: dict[str, Any] = {}
    failed = []
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        r = probe(mid)
        if r.get("ok"):
            hi = mid
        else:
            lo, below = mid, r
            failed.append(r)
    out = {"ok": True, "artifact": ota.stat().st_size, "min_heap": hi,
           "below": {"heap": lo, "reason": below.get("reason_name"),
                     "message": below.get("message") or below.get("error"),
                     "wrote": below.get("wrote")},
           "failed_after_writing": sum(1 for r in failed if r.get("wrote"))}  # fmt: skip
    if session:  # the device's heap figures end with it (SIGTERM): the push's wall time only
        return {**out, "seconds": wall}
    return {**out, "live_peak": full["heap_peak"], "code": full["heap_code"],
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
    ap.add_argument("--session", action="store_true",
                    help="a push over a real pty pair to the device's main loop (mp_run serve) "
                         "instead of the offline install")  # fmt: skip
    ap.add_argument("--full", action="store_true",
                    help="the new image as a full deflate artifact instead of the delta")
    args = ap.parse_args(argv)
    pairs = read_pairs(args.pairs)[: args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for old_name, new_name in pairs:
            old = (args.pairs.parent / old_name).read_bytes()
            new = (args.pairs.parent / new_name).read_bytes()
            r = measure(old, new, Path(tmp), args.step, args.device_ram, args.code, args.secure,
                        args.session, args.full)  # fmt: skip
            r["pair"] = f"{old_name} -> {new_name}"
            rows.append(r)
            if r["ok"]:
                what = (f"live peak {r['live_peak']} B (modules {r['code']} B, install "
                        f"{r['install_peak']} B), {r['seconds']:.1f} s" if "live_peak" in r
                        else f"push {r['seconds']:.1f} s in 1 MiB")  # fmt: skip
                print(f"{r['pair']}: min heap {r['min_heap'] // 1024} KiB, {what}; at "
                      f"{r['below']['heap'] // 1024} KiB: {r['below']['reason']}"
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
