"""The CLI's contract with a person at a bench: every mistake is one line with a
reason, never a traceback; numeric options are checked while parsing; every
option has help; ``--version`` and ``python -m otaferry`` work.

The mistakes run as real processes (``python -m otaferry``), so what is
checked is exactly what a user sees on stderr and in ``$?``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import pytest
from otaferry.tools import cli
from otaferry.tools.bench import artifact as bench_artifact
from otaferry.tools.bench import delta as bench_delta
from otaferry.tools.bench import link as bench_link
from otaferry.tools.sample_fw import make_image

LINE = re.compile(r"otaferry: error\[([A-Z_]+)\]: \S.*")


def otaferry(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otaferry", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a key, an image, a good artifact, a truncated one and odd files."""
    d = tmp_path_factory.mktemp("bench")
    assert cli.main(["keygen", str(d / "k.key")]) == 0
    (d / "fw.bin").write_bytes(make_image("1.0.0"))
    assert cli.main(["build", "--key", str(d / "k.key"), "--hw", "b", str(d / "fw.bin"),
                     "-o", str(d / "ok.ota")]) == 0  # fmt: skip
    data = (d / "ok.ota").read_bytes()
    (d / "cut.ota").write_bytes(data[: len(data) // 2])
    (d / "head.ota").write_bytes(data[:6])
    (d / "latin1.csv").write_bytes(
        "nvs, data, nvs, 0x9000, 0x6000, # \xe9t\xe9\n".encode("latin-1")
    )
    (d / "adir").mkdir()
    (d / "tiny.bin").write_bytes(b"x")
    return d


KEY = ["--pubkey", "k.key.pub"]
INIT = ["flash", "init", "--hw", "b", *KEY, "--image", "fw.bin"]
BUILD = ["build", "--key", "k.key", "--hw", "b", "-o", "x.ota", "fw.bin"]
PUSH = ["push", "--port", "loop://", "--insecure-plaintext", "ok.ota"]

# (argv, reason, exit status)
MISTAKES: list[tuple[list[str], str, int]] = [
    (["inspect", "nope.ota"], "IO_ERROR", 1),
    (["inspect", "cut.ota"], "TRUNCATED", 1),
    (["inspect", "head.ota"], "TRUNCATED", 1),
    (["verify", *KEY, "cut.ota"], "TRUNCATED", 1),
    (["flash", "init", "--hw", "b", *KEY, "--image", "nope.bin", "f.bin"], "IO_ERROR", 1),
    ([*INIT, "adir"], "IO_ERROR", 1),
    ([*INIT, "--partitions", "nope.csv", "f.bin"], "IO_ERROR", 1),
    ([*INIT, "--partitions", "adir", "f.bin"], "IO_ERROR", 1),
    ([*INIT, "--partitions", "latin1.csv", "f.bin"], "PARTITION_TABLE", 1),
    ([*INIT, "--device-id", "zz", "f.bin"], "USAGE", 2),
    ([*INIT, "--device-id", "0102", "f.bin"], "USAGE", 2),
    ([*INIT, "--size", "1000", "f.bin"], "USAGE", 2),
    ([*INIT, "--security-counter", "-5", "f.bin"], "USAGE", 2),
    (["flash", "init", "--hw", "b", "--image", "fw.bin", "f.bin"], "USAGE", 2),  # no --pubkey
    ([*BUILD, "--segment-size", "1000"], "USAGE", 2),
    ([*BUILD, "--segment-size", "0"], "USAGE", 2),
    ([*BUILD, "--security-counter", "-5"], "USAGE", 2),
    ([*BUILD, "--level", "99"], "USAGE", 2),
    ([*BUILD, "--level", "x"], "USAGE", 2),
    ([*BUILD, "--chip", "esp32s3"], "WRONG_CHIP", 1),
    (["build", "--key", "k.key", "-o", "x.ota", "fw.bin"], "MALFORMED", 1),  # no --hw
    (["build", "--key", "nope.key", "--hw", "b", "-o", "x.ota", "fw.bin"], "BAD_KEY", 1),
    ([*PUSH, "--baud", "0"], "USAGE", 2),
    ([*PUSH, "--mtu", "0"], "USAGE", 2),
    ([*PUSH, "--window", "0"], "USAGE", 2),
    ([*PUSH, "--rto", "-1"], "USAGE", 2),
    (["push", "--port", "loop://", "ok.ota"], "BAD_KEY", 1),  # neither keys nor plaintext
    (["device", "run", "--port", "loop://", "--flash", "nope.bin"], "IO_ERROR", 1),
    (["device", "run", "--port", "loop://", "--flash", "f.bin", "--mtu", "0"], "USAGE", 2),
    (["device", "info", "--flash", "tiny.bin"], "FLASH_ERROR", 1),
    (["device", "provision", "--flash", "nope.bin", "--revoke", "12"], "USAGE", 2),
    (["bench", "delta", "/nonexistent"], "IO_ERROR", 1),
    (["bench", "delta", "--segment-size", "3"], "USAGE", 2),
    (["bench", "link", "--baud", "0"], "USAGE", 2),
    (["demo", "--image", "nope.bin"], "IO_ERROR", 1),
    (["keygen", "k.key"], "BAD_KEY", 1),  # refuses to overwrite
    (["no-such-command"], "USAGE", 2),
]


def test_every_mistake_is_one_line_with_a_reason(bench: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:  # two shared cores
        results = list(pool.map(lambda m: otaferry(*m[0], cwd=bench), MISTAKES))
    wrong = []
    for (argv, reason, status), proc in zip(MISTAKES, results, strict=True):
        lines = proc.stderr.splitlines()
        match = LINE.fullmatch(lines[0]) if len(lines) == 1 else None
        got = match.group(1) if match else None
        quiet = argv[0] == "inspect" or not proc.stdout.strip()  # inspect shows what it read
        if proc.returncode != status or got != reason or not quiet:
            wrong.append(f"{' '.join(argv)}: exit {proc.returncode}, stderr {proc.stderr!r}")
    assert not wrong, "\n".join(wrong)
    assert not list(bench.glob("f.bin")), "a refused flash init left a file behind"


def test_debug_env_shows_the_traceback(bench: Path) -> None:
    proc = otaferry("inspect", "nope.ota", cwd=bench, env=dict(os.environ, OTAFERRY_DEBUG="1"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert LINE.fullmatch(proc.stderr.splitlines()[-1])


def test_unexpected_exceptions_become_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last resort: an exception nobody mapped is still one line (INTERNAL);
    a stray UnicodeError or ValueError is MALFORMED, an OSError IO_ERROR."""
    cases = [
        (KeyError("boom"), "otaferry: error[INTERNAL]: KeyError: 'boom' (a bug in otaferry"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"), "otaferry: error[MALFORMED]: "),
        (ValueError("bad\nvalue"), "otaferry: error[MALFORMED]: bad value"),
        (PermissionError(13, "Permission denied", "f.bin"), "otaferry: error[IO_ERROR]: f.bin: "),
    ]
    for exc, start in cases:

        def handler(args: argparse.Namespace, exc: Exception = exc) -> int:
            raise exc

        monkeypatch.setattr(cli, "cmd_inspect", handler)
        assert cli.main(["inspect", "x.ota"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(start), err


# ---------------------------------------------------------------- the parsers themselves


def _parsers() -> list[argparse.ArgumentParser]:
    """Every parser: the CLI's, each subcommand's, and the benchmarks' own."""
    out: list[argparse.ArgumentParser] = []
    todo = [cli.build_parser()]
    while todo:
        p = todo.pop()
        out.append(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    out += [bench_artifact.build_parser(), bench_delta.build_parser(), bench_link.build_parser()]
    return out


def test_every_option_has_help_and_aliases_are_hidden() -> None:
    hidden = {(f"otaferry {cmd}", old): new for cmd, old, new in cli.HIDDEN_ALIASES}
    missing = []
    seen_alias = set()
    for p in _parsers():
        dests = {a.dest: a for a in p._actions if a.help != argparse.SUPPRESS}
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            key = (p.prog, a.option_strings[0] if a.option_strings else a.dest)
            if key in hidden:
                # a hidden alias: out of --help, same destination as the name it stands for
                assert a.help == argparse.SUPPRESS, key
                assert hidden[key] in dests[a.dest].option_strings, key
                seen_alias.add(key)
            elif not a.help or a.help == argparse.SUPPRESS:
                missing.append(f"{p.prog} {'/'.join(a.option_strings) or a.dest}")
    assert not missing, missing
    assert seen_alias == set(hidden)
    assert len(_parsers()) >= 15


def test_numeric_options_use_checked_types() -> None:
    """A bare int/float type lets 0 or -5 through to a traceback later."""
    bare = [
        f"{p.prog} {'/'.join(a.option_strings)}"
        for p in _parsers()
        for a in p._actions
        if a.type in (int, float)
        and not (p.prog == "otaferry bench link" and a.dest == "seed")  # any int is a seed
    ]
    assert not bare, bare


def test_the_key_flag_is_pubkey_everywhere(tmp_path: Path) -> None:
    """verify, inspect and flash init all take --pubkey; --trust still works."""
    by_prog = {p.prog: p for p in _parsers()}
    for prog in ("otaferry verify", "otaferry inspect", "otaferry flash init"):
        opts = {o for a in by_prog[prog]._actions for o in a.option_strings}
        assert "--pubkey" in opts, prog
    assert "--trust" not in by_prog["otaferry flash init"].format_help()
    args = cli.build_parser().parse_args(
        ["flash", "init", "--hw", "b", "--trust", "a.pub", "--pubkey", "b.pub",
         "--image", "x", "f.bin"]
    )  # fmt: skip
    assert args.pubkey == ["a.pub", "b.pub"]


def test_version_and_python_dash_m(tmp_path: Path) -> None:
    proc = otaferry("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"otaferry {version('otaferry')}"
    exe = Path(sys.executable).with_name("otaferry")
    script = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    module = otaferry("--help", cwd=tmp_path)
    assert module.returncode == 0 and module.stdout == script.stdout
