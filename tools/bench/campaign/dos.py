"""What an unauthenticated peer can make the device do (issue [M] 6).

- **flood**: ``msg1s`` forged MSG1s (the right key hint, garbage keys) sent to
  the device's SecureEndpoint over ``seconds`` of its clock: how many handshakes
  it even tried (each costs X25519 work), and bytes out per byte in;
- **replay**: a genuine handshake, then recorded MSG1s injected right after its
  MSG2 (7 once made a push time out): does the genuine gateway's first sealed
  frame still open;
- **loop**: fresh MSG1s to a whole DeviceLoop on a real device after its first
  handshake: bytes out per byte in (the unasked HELLO once made this 3.4).
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path
from typing import Any

from ....device_fw import secure as DS
from ....device_fw.device import Device
from ....device_fw.loop import LINK_PROLOGUE, DeviceLoop
from ....protocol.secure import Initiator
from ....protocol.x25519keys import LinkPrivateKey, LinkPublicKey
from .common import firmware, make_small_device


def _key(label: str) -> LinkPrivateKey:
    return LinkPrivateKey.from_raw(hashlib.sha256(label.encode()).digest())


def flood(msg1s: int = 1000, seconds: float = 10.0, seed: int = 6) -> dict[str, Any]:
    gw, dev = _key("dos gateway"), _key("dos device")
    ep = DS.SecureEndpoint(dev.raw(), [gw.public.raw])
    rng = random.Random(seed)
    bytes_in = bytes_out = 0
    for i in range(msg1s):
        msg1 = bytes([0xE1, gw.public.hint]) + rng.randbytes(40)
        reply, _ = ep.receive(msg1, i * seconds / msg1s)
        bytes_in += len(msg1)
        bytes_out += len(reply) if reply else 0
    tried = ep.stats["responder_runs"]
    return {
        "msg1s": msg1s,
        "seconds": seconds,
        "handshakes_tried": tried,
        "x25519_at_most": 2 * tried,
        "x25519_before": 2 * msg1s,
        "rate_limited": ep.stats["rate_limited"],
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "out_per_in": round(bytes_out / bytes_in, 4),
    }


def replay(injections: int = 7) -> dict[str, Any]:
    gw, dev = _key("dos gateway"), _key("dos device")
    ep = DS.SecureEndpoint(dev.raw(), [gw.public.raw])
    recorded = [Initiator(gw, dev.public, _key(f"old {i}")).start() for i in range(injections)]
    ini = Initiator(gw, dev.public, _key("genuine"))
    msg2 = ep.receive(ini.start(), 10.0)[0]
    answered = sum(ep.receive(m, 10.0 + i * 0.01)[0] is not None for i, m in enumerate(recorded))
    assert msg2 is not None
    channel = ini.receive(msg2)
    opened = ep.receive(channel.seal(b"\x91\x01"), 10.2)[1] == b"\x91\x01"
    return {"injections": injections, "answered": answered, "genuine_opened": opened}


def loop(msg1s: int = 20) -> dict[str, Any]:
    gw = _key("dos gateway")
    with tempfile.TemporaryDirectory(prefix="otaferry-dos-") as tmp:
        flash = make_small_device(Path(tmp) / "f.bin", firmware("simba").old)
        with Device(str(flash)) as dev:
            dev.provision(gateways=[gw.public.raw])
            lp = DeviceLoop(dev, mtu=256)
            public = LinkPublicKey.from_raw(dev.link_public())
            first = lp.receive(Initiator(gw, public, LinkPrivateKey.generate(),
                                         LINK_PROLOGUE).start(), 0.0)  # fmt: skip
            bytes_in = bytes_out = 0
            for i in range(msg1s):
                msg1 = Initiator(gw, public, LinkPrivateKey.generate(), LINK_PROLOGUE).start()
                bytes_in += len(msg1)
                bytes_out += sum(map(len, lp.receive(msg1, 1.0 + i)))
    return {"first_handshake_packets": len(first), "msg1s": msg1s, "bytes_in": bytes_in,
            "bytes_out": bytes_out, "out_per_in": round(bytes_out / bytes_in, 4)}  # fmt: skip


def dos_campaign() -> dict[str, Any]:
    return {"flood": flood(), "replay": replay(), "loop": loop()}


def dos_ok(s: dict[str, Any]) -> bool:
    f, r, lp = s["flood"], s["replay"], s["loop"]
    budget = DS.HANDSHAKE_BURST + f["seconds"] / DS.HANDSHAKE_INTERVAL + 1
    return (f["handshakes_tried"] <= budget and f["out_per_in"] < 0.01 and r["genuine_opened"]
            and lp["out_per_in"] <= 1.0)  # fmt: skip
