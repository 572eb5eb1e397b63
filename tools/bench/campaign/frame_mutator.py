"""Inputs for frame fuzzing: real sessions recorded, and frames mutated from them."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import msgpack

from ....device_fw import frames as DF
from ....device_fw import receiver as RX
from ....device_fw.device import Device
from ....protocol.frames import Hello, Offer, Query, decode_frame
from .link import Link, make_sender
from .mutations import (
    BYTE_KINDS,
    FRAME_CODES,
    ODD_CODES,
    mutate_bytes,
    mutate_fields,
    pack,
    rand_value,
    split,
)

MUTATIONS = {
    "bitflip": 20, "truncate": 8, "extend": 5, "splice": 8, "field": 25,
    "random_array": 15, "replay": 8, "reflect": 3, "random_bytes": 5, "blob": 3,
    "claim": 6,
}  # fmt: skip


@dataclass
class Capture:
    """Frames of one real session, both directions, and its joined blobs."""

    name: str
    up: list[bytes]
    down: list[bytes]
    hello_blob: bytes
    offer_blob: bytes


def capture(name: str, flash: Path, art: bytes, mtu: int, window: int, work: Path) -> Capture:
    path = work / "capture.bin"
    shutil.copy(flash, path)
    with Device(str(path)) as dev:
        link = Link(make_sender(art, mtu=mtu, window=window), RX.Receiver(dev, mtu=mtu)).run()
    return Capture(name, link.up, link.down, _joined(link.down, Hello), _joined(link.up, Offer))


def _joined(bodies: list[bytes], kind: type[Hello] | type[Offer]) -> bytes:
    """The blob carried in the parts of the HELLO or OFFER frames among ``bodies``."""
    parts: dict[int, bytes] = {}
    for body in bodies:
        f = decode_frame(body)
        if isinstance(f, kind):
            parts[f.part] = f.chunk
    return b"".join(parts[i] for i in sorted(parts))


class Mutator:
    """Mutated frames for one scenario, made from its own capture and the others'."""

    def __init__(self, rng: random.Random, own: Capture, others: list[Capture]) -> None:
        self.rng = rng
        self.own = own
        self.foreign = [b for c in others for b in c.up + c.down]
        self.kinds = list(MUTATIONS)
        self.weights = list(MUTATIONS.values())

    def make(self, up: bool, session_id: int, mtu: int) -> tuple[str, list[bytes]]:
        rng, own = self.rng, self.own
        pool = own.up if up else own.down
        base = rng.choice(pool)
        kind = rng.choices(self.kinds, self.weights)[0]
        if kind in BYTE_KINDS:
            return kind, [mutate_bytes(rng, kind, base, pool, self.foreign)]
        if kind == "field":
            return kind, [self._mutated(base, rng.choice([1, 1, 1, 2, 3]))]
        if kind == "random_array":
            code = rng.choice(FRAME_CODES) if rng.random() < 0.9 else rng.choice(ODD_CODES)
            return kind, [pack([code] + [rand_value(rng) for _ in range(rng.randrange(7))])]
        if kind == "replay":
            return kind, [rng.choice(self.foreign)]
        if kind == "reflect":
            return kind, [rng.choice(own.down if up else own.up)]
        if kind == "random_bytes":
            return kind, [rng.randbytes(rng.randrange(80))]
        if kind == "claim":
            return kind, [self._claim()] if not up else [rng.choice(pool)]
        return kind, self._offer(session_id, mtu) if up else self._hello(session_id, mtu)

    def _claim(self) -> bytes:
        """A well-formed STATUS that claims what the device may not hold: chunks
        of a segment near the session's (all below ``base``, or a bitmap), with
        or without an echo. The sender must not believe it for ever (issue [E]:
        one such frame once kept a session running without end)."""
        rng = self.rng
        segment = rng.choice([-1, 0, 0, 1, 2, rng.randrange(8)])
        base = rng.choice([0, 8, 64, 255, 0xFFFF, rng.randrange(300)])
        bitmap = bytes(
            rng.choice([0xFF, 0xF0, rng.randrange(256)]) for _ in range(rng.randrange(12))
        )
        echo = [] if rng.random() < 0.5 else [segment, rng.randrange(300)]
        return pack([DF.STATUS, segment, base, bitmap, *echo])

    def _mutated(self, blob: bytes, rounds: int) -> bytes:
        """A msgpack array (a frame, a HELLO or OFFER blob) after ``rounds`` field changes."""
        items = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        for _ in range(rounds):
            items = mutate_fields(self.rng, items)
        return pack(items)

    def _offer(self, session_id: int, mtu: int) -> list[bytes]:
        """A whole OFFER (after a QUERY of a new session, half the time) of a mutated blob:
        drives Installer.begin with it."""
        rng = self.rng
        blob = self._mutated(self.own.offer_blob, rng.randint(1, 2))
        size = max(1, min(rng.choice([mtu - 12, 20, 200]), len(blob)))
        parts = split(blob, size)
        out = [] if rng.random() < 0.5 else [Query(rng.randint(1, 2**32 - 1)).encode()]
        for i, part in enumerate(parts):
            poll = 0x20 if i == len(parts) - 1 else 0
            out.append(pack([DF.OFFER | poll, i, len(parts), part]))
        return out

    def _hello(self, session_id: int, mtu: int) -> list[bytes]:
        """HELLO parts, for the sender's own session, of a mutated HelloInfo."""
        rng = self.rng
        blob = self._mutated(self.own.hello_blob, rng.randint(1, 3))
        parts = split(blob, max(1, rng.choice([mtu - 12, 16, 5])))
        return [pack([DF.HELLO, session_id, i, len(parts), p]) for i, p in enumerate(parts)]
