"""The layering rules of DESIGN.md, checked on the source text.

protocol/ is sans-IO: it may not import asyncio, serial, aiomqtt, socket,
threading, time, random or read a clock. device_fw/ must be copyable onto a
device, so it may not import otaferry.protocol (nor anything host-only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROTOCOL_FORBIDDEN_MODULES = {
    "asyncio",
    "serial",
    "serial_asyncio",
    "aiomqtt",
    "paho",
    "socket",
    "selectors",
    "threading",
    "subprocess",
    "time",
    "random",
    "secrets",
    "datetime",
    "sqlite3",
}
# Attribute calls that read a clock or entropy even when the module is allowed.
PROTOCOL_FORBIDDEN_CALLS = {("os", "urandom"), ("os", "getrandom")}

DEVICE_FORBIDDEN_PREFIXES = ("otaferry.protocol", "otaferry.transport", "otaferry.tools")
DEVICE_FORBIDDEN_MODULES = {"asyncio", "aiomqtt", "msgpack", "sqlite3"}

# Files in protocol/ allowed to open files: key files and the .ota convenience
# openers. Everything else takes bytes or file-like objects.
PROTOCOL_FILE_IO_ALLOWED = {"keys.py", "artifact.py"}


def _py_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _imports(tree: ast.AST, path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Resolve relative imports against the installed package name.
                pkg = [
                    "otaferry",
                    path.relative_to(ROOT).parts[0],
                    *path.relative_to(ROOT).parts[1:-1],
                ]
                base = pkg[: len(pkg) - (node.level - 1)]
                names.append(".".join([*base, node.module] if node.module else base))
            elif node.module:
                names.append(node.module)
    return names


def _calls(tree: ast.AST) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            out.add((node.value.id, node.attr))
    return out


@pytest.mark.parametrize("path", _py_files("protocol"), ids=lambda p: p.name)
def test_protocol_is_sans_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for name in _imports(tree, path):
        top = name.split(".")[0]
        assert top not in PROTOCOL_FORBIDDEN_MODULES, f"{path.name} imports {name}"
        assert not name.startswith(
            ("otaferry.transport", "otaferry.tools", "otaferry.device_fw")
        ), f"{path.name} imports {name}: protocol/ is the bottom layer"
    bad = _calls(tree) & PROTOCOL_FORBIDDEN_CALLS
    assert not bad, f"{path.name} reads entropy: {bad}"
    if path.name not in PROTOCOL_FILE_IO_ALLOWED:
        called = {
            n.func.id
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        attrs = {attr for _, attr in _calls(tree)}
        assert "open" not in called, f"{path.name} opens files"
        assert not attrs & {"read_bytes", "write_bytes", "read_text", "write_text"}, (
            f"{path.name} does file I/O"
        )


@pytest.mark.parametrize("path", _py_files("device_fw"), ids=lambda p: p.name)
def test_device_fw_is_self_contained(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for name in _imports(tree, path):
        assert not name.startswith(DEVICE_FORBIDDEN_PREFIXES), f"{path.name} imports {name}"
        assert name.split(".")[0] not in DEVICE_FORBIDDEN_MODULES, f"{path.name} imports {name}"


def test_checker_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself must catch an import, or the tests above prove nothing."""
    fake = ROOT / "protocol" / "x.py"
    tree = ast.parse("import asyncio\nfrom ..transport import link\nimport time\n")
    names = _imports(tree, fake)
    assert "asyncio" in names and "otaferry.transport" in names and "time" in names
