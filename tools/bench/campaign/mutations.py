"""Mutations shared by the fuzzers: of raw bytes, and of msgpack arrays of fields."""

from __future__ import annotations

import random
from typing import Any

import msgpack

FRAME_CODES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0x23, 0x26]
ODD_CODES = [0, 11, 0x21, 0x27, 0x2A, 0x7F, 0xFF, -1]
INTERESTING = [
    0, 1, -1, 2, 7, 8, 127, 128, 255, 256, -33, -129, 0x7FFF, 0xFFFF, 0x10000,
    0xFFFFFFFF, 0x100000000, 2**63 - 1, -(2**63), 2**64 - 1,
]  # fmt: skip
BYTE_KINDS = ("bitflip", "truncate", "extend", "splice")


def flip_bit(rng: random.Random, b: bytearray) -> None:
    """One random bit of ``b`` flipped, in place (position drawn before the bit)."""
    at = rng.randrange(len(b))
    b[at] ^= 1 << rng.randrange(8)


def mutate_bytes(
    rng: random.Random, kind: str, base: bytes, pool: list[bytes], foreign: list[bytes]
) -> bytes:
    """One of BYTE_KINDS applied to ``base``; a splice joins it to a tail of a body
    drawn from ``pool`` and ``foreign``."""
    if kind == "bitflip":
        b = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            flip_bit(rng, b)
        return bytes(b)
    if kind == "truncate":
        return base[: rng.randrange(len(base))]
    if kind == "extend":
        return base + rng.randbytes(rng.randint(1, 8))
    assert kind == "splice", kind
    other = rng.choice(pool + foreign)
    return base[: rng.randrange(len(base) + 1)] + other[rng.randrange(len(other)) :]


def rand_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.randrange(10 if depth < 2 else 7)
    if r == 0:
        return rng.choice(INTERESTING)
    if r == 1:
        return rng.randint(-(2**40), 2**40)
    if r == 2:
        return rng.randbytes(rng.choice([0, 1, 2, 8, 16, 32, 33, 64, rng.randrange(300)]))
    if r == 3:
        return "".join(rng.choice("ab\u00e9\u4e2d\x00") for _ in range(rng.randrange(40)))
    if r == 4:
        return rng.choice([None, True, False, 0.5, float("nan")])
    if r in (5, 6):
        return rng.randrange(20)
    if r in (7, 8):
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.randrange(20): rand_value(rng, depth + 1) for _ in range(rng.randrange(3))}


def pack(items: Any) -> bytes:
    try:
        return msgpack.packb(items, use_bin_type=True)  # type: ignore[no-any-return]
    except (OverflowError, ValueError, TypeError):  # an int pushed past 64 bits
        return msgpack.packb([items[0] if isinstance(items, list) and items else 0, 2**64 - 1])  # type: ignore[no-any-return]


def mutate_fields(rng: random.Random, items: list[Any]) -> list[Any]:
    """One msgpack-level change to a frame's (or a blob's) array of fields."""
    items = list(items)
    op = rng.randrange(7)
    if op == 0 and len(items) >= 2:
        i, j = rng.sample(range(len(items)), 2)
        items[i], items[j] = items[j], items[i]
    elif op == 1 and items:
        items[rng.randrange(len(items))] = rand_value(rng)
    elif op == 2 and len(items) > 1:
        del items[rng.randrange(1, len(items))]
    elif op == 3:
        items.insert(rng.randrange(1, len(items) + 1), rand_value(rng))
    elif op == 4 and items:
        items[0] = rng.choice(FRAME_CODES + ODD_CODES)
    elif op == 5:
        ints = [i for i, v in enumerate(items) if type(v) is int]
        if ints:
            i = rng.choice(ints)
            items[i] = items[i] + rng.choice([-2, -1, 1, 2, 8, 256, -256])
    else:
        bins = [i for i, v in enumerate(items) if isinstance(v, bytes)]
        if bins:
            i = rng.choice(bins)
            b = bytearray(items[i])
            if b and rng.random() < 0.7:  # same length: passes every length check
                flip_bit(rng, b)
            else:
                b = b[: rng.randrange(len(b) + 1)] + rng.randbytes(rng.randrange(3))
            items[i] = bytes(b)
    return items


def split(blob: bytes, size: int) -> list[bytes]:
    return [blob[i : i + size] for i in range(0, len(blob), size)] or [b""]
