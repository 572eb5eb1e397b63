"""Secure-layer fuzzing: tampered records and handshake messages, both ways."""

from __future__ import annotations

import functools
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ....device_fw import secure as DS
from ....protocol.errors import OtaferryError
from .common import Problems, device_endpoint, gateway_initiator, sha
from .mutations import BYTE_KINDS, flip_bit, mutate_bytes, pack

RECEIVERS = {"device": "device SecureEndpoint.receive", "host": "host SecureChannel.open"}


@dataclass
class SecureStats(Problems):
    sessions: int = 0
    to_device: int = 0
    to_host: int = 0
    msg2_to_host: int = 0
    skipped_genuine: int = 0
    exceptions: int = 0
    tampered_bodies: int = 0
    genuine_sent: int = 0
    genuine_opened: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    device_drops: Counter[str] = field(default_factory=Counter)
    host_drops: Counter[str] = field(default_factory=Counter)


class SecureFuzzCampaign:
    KINDS: ClassVar[dict[str, int]] = {
        "bitflip": 25, "truncate": 8, "extend": 5, "counter": 10, "splice": 8, "replay": 10,
        "reflect": 6, "foreign": 8, "random": 6, "msg1": 8, "kind_flip": 6,
    }  # fmt: skip

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.st = SecureStats()
        self.foreign: list[bytes] = []
        self.foreign_msg1: list[bytes] = []

    def _random_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def mutate(
        self, pool: list[bytes], reflect: list[bytes], msg1: bytes, old_msg1: bool = True
    ) -> tuple[str, bytes]:
        rng = self.rng
        kind = rng.choices(list(self.KINDS), list(self.KINDS.values()))[0]
        base = rng.choice(pool)
        b = bytearray(base)
        if kind in BYTE_KINDS:
            b = bytearray(mutate_bytes(rng, kind, base, pool, self.foreign))
        elif kind == "counter":  # same ciphertext and tag under another counter
            n = (b[0] | b[1] << 7) + rng.choice(
                [-2, -1, 1, 2, 64, 128, 16384, rng.randrange(32768)]
            )
            b[0], b[1] = n & 0x7F, (n >> 7) & 0xFF
        elif kind == "replay":
            b = bytearray(base)
        elif kind == "reflect" and reflect:
            b = bytearray(rng.choice(reflect))
        elif kind == "foreign" and self.foreign:
            b = bytearray(rng.choice(self.foreign))
        elif kind == "random":
            b = bytearray([rng.randrange(0x80)]) + rng.randbytes(rng.randrange(60))
        elif kind == "msg1":
            choice = rng.randrange(3)
            if choice == 0 and self.foreign_msg1 and old_msg1:
                b = bytearray(rng.choice(self.foreign_msg1))  # a genuine MSG1 of an old session
            elif choice == 1:
                b = bytearray(msg1)
                flip_bit(rng, b)
            else:
                b = bytearray([DS.MSG1]) + rng.randbytes(rng.randrange(60))
        elif kind == "kind_flip" and b:
            b[0] = rng.choice([0x90, 0x93, 0x9F, 0xDC, 0xE2, 0xE3, 0xFF, 0x80])
        return kind, bytes(b)

    def session(self, budget: int) -> None:
        rng, st = self.rng, self.st
        st.sessions += 1
        ep = device_endpoint(random_bytes=self._random_bytes)
        eph = rng.randbytes(32)
        ini = gateway_initiator(eph)
        msg1 = ini.start()
        msg2, body = ep.receive(msg1)
        if body is not None or msg2 is None:
            st.problem("handshake: no MSG2")
            return
        # mutated MSG2s to fresh initiators that sent the same MSG1
        for _ in range(rng.randint(1, 4)):
            kind, bad = self.mutate([msg2], [msg1], msg1)
            if bad == msg2:
                st.skipped_genuine += 1
                continue
            again = gateway_initiator(eph)
            again.start()
            st.msg2_to_host += 1
            try:
                again.receive(bad)
                st.tampered_bodies += 1
                st.problem(f"host Initiator accepted a {kind} MSG2")
            except OtaferryError:
                pass
            except Exception as exc:
                st.exceptions += 1
                st.problem(f"Initiator.receive: {type(exc).__name__}: {exc}")
        host = ini.receive(msg2)
        k = max(4, min(40, budget // 8))
        up_bodies = [pack([6, i, 0, rng.randbytes(rng.randint(1, 40))]) for i in range(k)]
        up = [host.seal(b) for b in up_bodies]
        pending = set(up)
        delivered: list[bytes] = []
        down: list[bytes] = []
        for i, record in enumerate(up):
            for _ in range(rng.randint(0, 8)):
                # (a genuine old MSG1 before the first frame displaces the pending
                # handshake: see pending_displaced())
                self._inject(
                    "device",
                    lambda bad: self._call(lambda: ep.receive(bad))[1],
                    (delivered or [record], down, msg1, i > 0),
                    pending,
                )
            _reply, got = self._call(functools.partial(ep.receive, record))
            self._genuine(
                record,
                got == up_bodies[i],
                pending,
                delivered,
                f"genuine record {i} did not open on the device",
            )
            if i % 4 == 0:
                down.append(ep.seal(pack([7, i, 0, b""])))
        down_bodies = [pack([7, 100 + i, 0, rng.randbytes(rng.randint(0, 9))]) for i in range(k)]
        fresh = [ep.seal(b) for b in down_bodies]
        for r in down:
            host.open(r)  # the earlier ones, in order
        pending = set(fresh)
        opened: list[bytes] = list(down)
        for i, record in enumerate(fresh):
            for _ in range(rng.randint(0, 6)):
                self._inject(
                    "host",
                    lambda bad: self._call(lambda: host.open(bad), None),
                    (opened or [record], delivered, msg1, True),
                    pending,
                )
            got = host.open(record)
            self._genuine(
                record,
                got == down_bodies[i],
                pending,
                opened,
                f"genuine device record {i} did not open on the host",
            )
        for name, value in ep.stats.items():
            st.device_drops[name] += value
        hs = host.stats
        for name in ("malformed", "auth_failed", "replayed", "too_old", "exhausted"):
            st.host_drops[name] += getattr(hs, name)
        self.foreign += up[:8] + fresh[:8]
        self.foreign = self.foreign[-400:]
        self.foreign_msg1 = ([*self.foreign_msg1, msg1])[-20:]

    def _genuine(
        self, record: bytes, ok: bool, pending: set[bytes], done: list[bytes], failure: str
    ) -> None:
        """A genuine record has been delivered; ``ok``: it opened to its body."""
        pending.discard(record)
        done.append(record)
        self.st.genuine_sent += 1
        if ok:
            self.st.genuine_opened += 1
        else:
            self.st.problem(failure)

    def _inject(
        self,
        side: str,
        open_body: Callable[[bytes], bytes | None],
        mutate_args: tuple[list[bytes], list[bytes], bytes, bool],
        pending: set[bytes],
    ) -> None:
        """One mutated record to one side (``side``: "device", its SecureEndpoint,
        or "host", its SecureChannel); ``open_body`` returns the body it let through.
        A mutation identical to a genuine record not yet delivered is not sent."""
        st = self.st
        kind, bad = self.mutate(*mutate_args)
        if bad in pending:
            st.skipped_genuine += 1
            return
        st.kinds[kind] += 1
        if side == "device":
            st.to_device += 1
        else:
            st.to_host += 1
        if open_body(bad) is not None:
            st.tampered_bodies += 1
            st.problem(f"{RECEIVERS[side]} returned a body for a {kind} record")

    def _call(self, fn: Callable[[], Any], failed: Any = (None, None)) -> Any:
        try:
            return fn()
        except Exception as exc:
            self.st.exceptions += 1
            self.st.problem(f"{type(exc).__name__}: {exc}")
            return failed

    def pending_displaced(self) -> bool:
        """Does a replayed (genuine, older) MSG1 that arrives between MSG2 and the
        gateway's first sealed frame knock out the handshake in progress?"""
        ep = device_endpoint()
        old = gateway_initiator(sha(b"old"))
        old_msg1 = old.start()
        ep.receive(old_msg1)
        ini = gateway_initiator(sha(b"new"))
        msg1 = ini.start()
        host = ini.receive(ep.receive(msg1)[0])
        ep.receive(old_msg1)  # the attacker's replay
        return ep.receive(host.seal(b"\x91\x08"))[1] is None

    def run(self, records: int) -> dict[str, Any]:
        t0 = time.monotonic()
        st = self.st
        while st.to_device + st.to_host + st.msg2_to_host < records:
            self.session(records - (st.to_device + st.to_host + st.msg2_to_host))
        return {
            "sessions": st.sessions,
            "records": st.to_device + st.to_host + st.msg2_to_host,
            "to_device_endpoint": st.to_device,
            "to_host_channel": st.to_host,
            "msg2_to_host_initiator": st.msg2_to_host,
            "mutations": dict(st.kinds.most_common()),
            "exceptions": st.exceptions,
            "tampered_bodies_returned": st.tampered_bodies,
            "genuine_sent": st.genuine_sent,
            "genuine_opened": st.genuine_opened,
            "skipped_identical_to_genuine": st.skipped_genuine,
            "device_stats": dict(st.device_drops),
            "host_drops": dict(st.host_drops),
            "problems": dict(st.problems.most_common(30)),
            "observation_pending_handshake_displaced_by_replayed_msg1": self.pending_displaced(),
            "seconds": round(time.monotonic() - t0, 1),
        }


def secure_campaign(records: int, seed: int) -> dict[str, Any]:
    return SecureFuzzCampaign(seed).run(records)


def secure_ok(s: dict[str, Any], records: int) -> bool:
    return (
        s["records"] >= records
        and s["exceptions"] == 0
        and s["tampered_bodies_returned"] == 0
        and s["genuine_opened"] == s["genuine_sent"]
    )
