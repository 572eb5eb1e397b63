"""File access for the CLI: every failure becomes an IO_ERROR with the path."""

from __future__ import annotations

import os
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


def lock_holder(path: str) -> str | None:
    """Who holds the flock on ``path``: "pid N (command line)", from /proc/locks.

    Linux only and best effort: None when the holder cannot be found (another
    OS, another PID namespace, or the lock already gone).
    """
    try:
        st = os.stat(path)
        locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF": pid, then major:minor:inode
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in locks.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
            pid = fields[4]
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return f"pid {pid}"
            argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
            if argv and os.path.basename(argv[0]).startswith("python") and len(argv) > 1:
                argv = argv[1:]  # "python /venv/bin/otaferry ..." reads as "otaferry ..."
            if argv:
                argv[0] = os.path.basename(argv[0])
            return f"pid {pid} ({' '.join(argv)})" if argv else f"pid {pid}"
    return None
