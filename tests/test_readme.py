"""The README's bench recipe, run as written (issue [N] 10): every command of it, in
bash, in a fresh folder, on two real pseudo-terminals. Only the /tmp paths move into
the test's folder, and old.bin / new.bin are two real firmware builds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from paths import SIMBA_SHELL_NEW, SIMBA_SHELL_OLD

ROOT = Path(__file__).resolve().parent.parent


def _recipe() -> str:
    text = (ROOT / "README.md").read_text()
    at = text.index("The bench recipe")
    match = re.search(r"```sh\n(.*?)```", text[at:], re.S)
    assert match, "the README has no bench recipe"
    return match.group(1)


@pytest.mark.timeout(240)
def test_the_bench_recipe_runs_as_written(tmp_path: Path) -> None:
    recipe = _recipe()
    assert recipe.startswith(". .venv/bin/activate")
    shutil.copy(SIMBA_SHELL_OLD, tmp_path / "old.bin")
    shutil.copy(SIMBA_SHELL_NEW, tmp_path / "new.bin")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    script = "set -euo pipefail\n" + recipe.replace("/tmp/", f"{tmp_path}/")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=200, env=env)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "confirmed in" in run.stderr  # the push waited for the check-in
    info = [ln for ln in run.stdout.splitlines() if "ota_1" in ln]
    assert info and "VALID" in info[-1] and "1.1" in info[-1], run.stdout
    assert "security counter 1" in run.stdout
    assert "Traceback" not in run.stderr


def test_the_quick_start_is_two_commands_the_first_the_gateway_demo() -> None:
    """The quick start: exactly two commands on a fresh machine. The first sets up and
    runs the main job (architecture 2, ``demo --gateway``, on the embedded broker
    where nothing else is installed: tests/test_gateway_embedded.py runs it so); the
    second is what CI runs (.ci/run's last line)."""
    text = (ROOT / "README.md").read_text()
    quick = text[text.index("## Quick start") : text.index("## Command line")]
    blocks = re.findall(r"```sh\n(.*?)```", quick, re.S)
    assert [b.strip() for b in blocks] == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && "
        ".venv/bin/otaferry demo --gateway",
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && "
        ".venv/bin/python -m pytest",
    ]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == blocks[1].strip()
