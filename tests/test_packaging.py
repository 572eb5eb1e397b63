"""The wheel installs the fixed top-level folders as otaferry.* and the CLI runs.

Builds the wheel from a copy of the source (so the checkout is not touched),
installs it with --no-deps into a fresh venv whose only other path is the
current environment's site-packages (for cryptography, msgpack, zstandard: no
downloads at test time), and runs ``otaferry --help`` from that venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["protocol", "transport", "device_fw", "tools", "pyproject.toml", "README.md"]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=240, **kw)  # type: ignore[call-overload,no-any-return]


def source_packages() -> list[str]:
    """Every package folder under the four top-level folders, by its path in the
    wheel (tools/top is the top-level ``otaferry`` package itself)."""
    out = []
    for top in ("protocol", "transport", "device_fw", "tools"):
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT).as_posix()
            out.append("otaferry" if rel == "tools/top" else f"otaferry/{rel}")
    return out


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_wheel_installs_and_cli_runs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        s = ROOT / name
        if s.is_dir():
            shutil.copytree(s, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(s, src / name)
    dist = tmp_path / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(src),
        ]
    )
    wheels = list(dist.glob("otaferry-*.whl"))
    assert len(wheels) == 1
    missing = [
        pkg for pkg in source_packages() if f"{pkg}/__init__.py" not in wheel_files(wheels[0])
    ]
    assert not missing, f"packages in the tree but not in the wheel (pyproject packages): {missing}"

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(
        _run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    # Dependencies come from the running environment; otaferry itself only from the wheel.
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "-q",
            str(wheels[0]),
        ]
    )

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = _run([str(env_dir / "bin" / "otaferry"), "--help"], env=env, cwd=tmp_path)
    assert "keygen" in out.stdout and "build" in out.stdout and "demo" in out.stdout
    # the top-level package is installed too: python -m otaferry is the same CLI
    module = _run([str(py), "-m", "otaferry", "--version"], env=env, cwd=tmp_path)
    assert module.stdout.strip() == f"otaferry {version('otaferry')}"
    where = _run(
        [
            str(py),
            "-c",
            "import otaferry.protocol, otaferry.transport, otaferry.device_fw, otaferry.tools;"
            "import pathlib;"
            "print(pathlib.Path(otaferry.protocol.__file__).parent)",
        ],
        env=env,
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where
    assert (Path(where) / "SPEC.md").is_file()
