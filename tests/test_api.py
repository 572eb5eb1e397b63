"""The import surface an integrator sees, and the README's async example run as
written against ``otaferry linesim`` and ``otaferry device run`` (real ptys)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
import time
from pathlib import Path

import otaferry
import pytest
from otaferry.protocol.framing import max_wire_size
from otaferry.protocol.session import window_for
from otaferry.transport.linesim import LineSim
from otaferry.transport.serial_link import SerialLink
from otaferry.transport.updater import Updater
from paths import SIMBA_SHELL_NEW, SIMBA_SHELL_OLD

ROOT = Path(__file__).resolve().parent.parent
OTAFERRY = str(Path(sys.executable).with_name("otaferry"))


def test_the_integrator_names_import_from_otaferry() -> None:
    from otaferry import OtaferryError, SecureLink, SerialLink, Updater  # noqa: F401

    assert "Updater" in otaferry.__all__ and "Artifact" in otaferry.__all__
    assert set(otaferry.__all__) == set(otaferry._WHERE) | {"__version__"}
    for name in otaferry.__all__:
        assert getattr(otaferry, name) is not None, name
    assert otaferry.Updater is Updater
    with pytest.raises(AttributeError):
        otaferry.NoSuchThing  # noqa: B018


def _modules() -> list[str]:
    names = []
    for pkg in ("protocol", "transport", "device_fw", "tools"):
        package = importlib.import_module(f"otaferry.{pkg}")
        for info in pkgutil.walk_packages(package.__path__, f"otaferry.{pkg}."):
            names.append(info.name)
    return names


@pytest.mark.parametrize("module", _modules())
def test_every_all_list_is_true(module: str) -> None:
    if module.endswith("__main__") or module.startswith("otaferry.tools.top"):
        return
    if module == "otaferry.tools.mp_boot":  # a script for the micropython command (uctypes, vfs)
        return
    mod = importlib.import_module(module)
    for name in getattr(mod, "__all__", []):
        assert hasattr(mod, name), f"{module}.__all__ names {name!r}, which it lacks"


@pytest.mark.asyncio
async def test_the_window_follows_the_baud_given_to_serial_link(tmp_path: Path) -> None:
    """Issue [E] 5: at 921,600 baud the window was sized for 115,200."""
    async with LineSim(tmp_path / "a", tmp_path / "b", baud=921600) as sim:
        async with await SerialLink.open(str(sim.path_a), 921600) as link:
            assert link.mtu == 1024  # the CLI's and the device's default
            assert link.pacing.line_rate == 92_160
            assert Updater(link).window() == window_for(92_160, 0.06, 1024)
        async with await SerialLink.open(str(sim.path_a), 115200) as slow:
            assert Updater(slow).window() == window_for(11_520, 0.06, 1024)
    assert window_for(92_160, 0.06, 1024) > window_for(11_520, 0.06, 1024)
    assert max_wire_size(1024) > 1024


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The async API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's async API section has no python example"
    return match.group(1)


def _cli(*args: str, cwd: Path) -> str:
    out = subprocess.run(
        [OTAFERRY, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.timeout(180)
def test_the_readme_async_example_runs_as_written(tmp_path: Path) -> None:
    code = _readme_example()
    assert "/dev/ttyUSB0" in code
    (tmp_path / "old.bin").write_bytes(SIMBA_SHELL_OLD.read_bytes())
    (tmp_path / "new.bin").write_bytes(SIMBA_SHELL_NEW.read_bytes())
    _cli("keygen", "vendor.key", cwd=tmp_path)
    _cli("keygen", "--link", "gateway.key", cwd=tmp_path)
    _cli("flash", "init", "--hw", "board", "--chip", "esp32", "--pubkey", "vendor.key.pub",
         "--gateway-pub", "gateway.key.pub", "--image", "old.bin", "--version", "1.0",
         "flash.bin", cwd=tmp_path)  # fmt: skip
    _cli("device", "provision", "--flash", "flash.bin", "--out", "device.pub", cwd=tmp_path)
    _cli("build", "--key", "vendor.key", "--hw", "board", "--chip", "esp32", "--version", "1.1",
         "--security-counter", "1", "new.bin", "-o", "new.ota", cwd=tmp_path)  # fmt: skip
    gw, dev = tmp_path / "gw", tmp_path / "dev"
    procs = [
        subprocess.Popen(
            [OTAFERRY, "linesim", "--baud", "921600", str(gw), str(dev)],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
        )
    ]
    try:
        for _ in range(200):
            if gw.exists() and dev.exists():
                break
            time.sleep(0.05)
        procs.append(
            subprocess.Popen(
                [OTAFERRY, "device", "run", "--port", str(dev), "--flash", "flash.bin", "--quiet"],
                cwd=tmp_path,
            )
        )
        (tmp_path / "example.py").write_text(code.replace("/dev/ttyUSB0", str(gw)))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        run = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "written, verified, set to boot:" in run.stdout, run.stdout + run.stderr
        assert "failed:" not in run.stdout
        lines = [ln for ln in run.stdout.splitlines() if " / " in ln]
        done, total = (int(x) for x in lines[-1].split(" / "))
        assert done == total > 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
