"""A simulated board behind a line simulator, for the demos and benchmarks:
``otaferry device run`` in its own process (so SIGKILL is a power cut) on the B
end of an in-process :class:`LineSim`."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from ..transport.linesim import LineSim


def otaferry_command() -> list[str]:
    """How to run this installation's CLI: its console script, else ``python -m``."""
    exe = Path(sys.executable).with_name("otaferry")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "otaferry"]


def start_device(flash: Path, port: Path, baud: int, *flags: str) -> subprocess.Popen[bytes]:
    """``otaferry device run --quiet`` on ``port`` (extra ``flags`` as given)."""
    return subprocess.Popen(
        [*otaferry_command(), "device", "run", "--quiet", "--port", str(port),
         "--flash", str(flash), "--baud", str(baud), *flags],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def stop_device(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def boards_on_lines(
    flashes: list[Path], work: Path, baud: int, latency_ms: int
) -> AsyncIterator[list[Path]]:
    """One line simulator and one ``device run`` per flash file; yields the gateway
    ends (``work/gw<i>.tty``) and stops everything on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    async with contextlib.AsyncExitStack() as stack:
        try:
            for i, flash in enumerate(flashes):
                gw, dev = work / f"gw{i}.tty", work / f"dev{i}.tty"
                await stack.enter_async_context(
                    LineSim(str(gw), str(dev), baud=baud, latency_ms=latency_ms, seed=i)
                )
                procs.append(start_device(flash, dev, baud))
            yield [work / f"gw{i}.tty" for i in range(len(flashes))]
        finally:
            for proc in procs:
                stop_device(proc)
