"""File access for the CLI: every failure becomes an IO_ERROR with the path."""

from __future__ import annotations

from pathlib import Path

from ..protocol.errors import OtaferryError, Reason


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OtaferryError(f"cannot read {path}: {exc.strerror}", Reason.IO_ERROR) from exc


def write_file(path: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise OtaferryError(f"cannot write {path}: {exc.strerror}", Reason.IO_ERROR) from exc
