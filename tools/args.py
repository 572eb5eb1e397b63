"""Argument parsing for the CLI: typed validators and one-line errors.

Every numeric option takes one of the validators below as its ``type``, so a
value out of range is refused while the arguments are parsed, with a line
that says what range is allowed, instead of surfacing later as a traceback
or a manifest error. :class:`Parser` turns argparse's usage errors into the
same one-line form as every other error (``otaferry: error[USAGE]: ...``,
exit status 2) and every subparser inherits it.

``USAGE`` and ``INTERNAL`` are the CLI's own labels next to the wire reason
names of ``protocol/errors.py``: a mistake in the command line, and a bug in
otaferry (``OTAFERRY_DEBUG=1`` shows its traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

USAGE = "USAGE"
INTERNAL = "INTERNAL"
USAGE_EXIT = 2


class UsageError(Exception):
    """A command line that cannot work, found after parsing (exit status 2)."""


def error_line(reason: str, message: str) -> str:
    """The one line every failure prints: newlines inside messages are folded."""
    text = " ".join(str(message).split())
    return f"otaferry: error[{reason}]: {text}"


def warn(message: str) -> None:
    print(f"otaferry: warning: {message}", file=sys.stderr)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and point at ``--help``."""

    def error(self, message: str) -> NoReturn:
        print(error_line(USAGE, f"{self.prog}: {message} (see '{self.prog} --help')"),
              file=sys.stderr)  # fmt: skip
        sys.exit(USAGE_EXIT)


# ---------------------------------------------------------------- validators


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer in ``lo..hi`` (``hi`` None: no upper bound)."""

    def check(text: str) -> int:
        value = _int(text)
        if value < lo or (hi is not None and value > hi):
            allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{value} is out of range ({allowed})")
        return value

    check.__name__ = "integer"  # argparse names the type in its messages
    return check


positive_int = int_range(1)
non_negative_int = int_range(0)


def multiple_of(step: int) -> Callable[[str], int]:
    """A positive integer that is a multiple of ``step`` (e.g. the 4 KiB flash sector)."""

    def check(text: str) -> int:
        value = _int(text)
        if value <= 0 or value % step:
            raise argparse.ArgumentTypeError(f"{value} is not a positive multiple of {step}")
        return value

    check.__name__ = "integer"
    return check


def probability(text: str) -> float:
    """A loss rate: 0 <= p < 1 (1 would never finish)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be within 0..<1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def hex_bytes(size: int) -> Callable[[str], bytes]:
    """Exactly ``size`` bytes written as ``2 * size`` hex digits."""

    def check(text: str) -> bytes:
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not hex") from None
        if len(value) != size:
            raise argparse.ArgumentTypeError(
                f"{text!r} is {len(value)} bytes, {size} wanted ({2 * size} hex digits)"
            )
        return value

    check.__name__ = "hex"
    return check


_SIZE_SUFFIX = {"K": 1024, "M": 1024 * 1024}


def flash_size(text: str) -> int:
    """``4M``, ``512K``, ``0x400000``: a positive multiple of the 4 KiB sector."""
    t = text.strip().upper()
    mult = _SIZE_SUFFIX.get(t[-1:], 1)
    if mult != 1:
        t = t[:-1]
    try:
        value = int(t, 0) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4M, 512K)") from None
    if value <= 0 or value % 4096:
        raise argparse.ArgumentTypeError(f"{text} is not a positive multiple of 4096 bytes")
    return value
