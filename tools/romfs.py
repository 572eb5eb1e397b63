"""device_fw as a board keeps it: bytecode precompiled with ``mpy-cross`` and,
for ``--code romfs``, packed into a MicroPython ROMFS image (the read-only
filesystem whose .mpy files run in place, from flash, since MicroPython 1.25).

ROMFS layout (MicroPython's ``extmod/vfs_rom.c`` describes it): a record is a
varuint kind, a varuint payload length, then the payload; varuints are
big-endian base-128 with the high bit set on all but the last byte. The image
is one record of kind 0x14A6B1 (encoded D2 CD 31, "RM1") holding directory
records (kind 4: name length, name, nested records) and file records (kind 5:
name length, name, then a verbatim-data record, kind 2, with the bytes). Its
total length must be even (a one-byte padding record cannot exist).

Data is not aligned here: the unix port reads .mpy bytecode byte-wise, and
MicroPython only needs alignment for native code it copies out anyway.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..protocol.errors import OtaferryError, Reason

KIND_PADDING = 1
KIND_DATA = 2
KIND_DIR = 4
KIND_FILE = 5
KIND_ROMFS = 0x14A6B1


def varuint(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def record(kind: int, payload: bytes) -> bytes:
    return varuint(kind) + varuint(len(payload)) + payload


def _entries(folder: Path) -> bytes:
    out = b""
    for p in sorted(folder.iterdir()):
        name = p.name.encode()
        if p.is_dir():
            out += record(KIND_DIR, varuint(len(name)) + name + _entries(p))
        elif p.suffix == ".mpy":
            out += record(KIND_FILE, varuint(len(name)) + name + record(KIND_DATA, p.read_bytes()))
    return out


def romfs_image(folder: Path) -> bytes:
    """The ROMFS image of the .mpy files (and folders) under ``folder``."""
    body = _entries(folder)
    img = record(KIND_ROMFS, body)
    pad = 0
    while len(img) % 2:  # a padding record (2 bytes and up) makes the length even
        img = record(KIND_ROMFS, body + record(KIND_PADDING, bytes(pad)))
        pad += 1
    return img


def compile_tree(src_root: Path, package: str, out_root: Path, march: str = "x64") -> int:
    """mpy-cross every module of ``src_root/package`` into ``out_root/package``
    (``-march`` for the viper functions, which compile to machine code).
    Returns the total .mpy bytes."""
    total = 0
    from .mpy import dev_command

    cmd = dev_command("mpy-cross", "mpy-cross")
    for src in sorted((src_root / package).rglob("*.py")):
        rel = src.relative_to(src_root)
        dst = (out_root / rel).with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([cmd, f"-march={march}", "-s", str(rel), "-o", str(dst), str(src)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode:
            raise OtaferryError(f"mpy-cross {rel}: {done.stderr.strip()}", Reason.IO_ERROR)
        total += dst.stat().st_size
    return total
