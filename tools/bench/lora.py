"""``otaferry bench lora``: updates over emulated LoRa, on a virtual clock.

    otaferry bench lora [--sf 7,9] [--mtu 51,115,222] [--loss 0,0.1,0.3] [--modem rak3172]
                        [--cases delta,full] [--seed 1] [--json OUT]

Each run is one whole update, in one process: the Updater and the secure link
(``transport/updater.py``, ``secure_link.py``), the gateway's ``ModemHub``
speaking the modem's AT protocol (``protocol/modems.py``), the emulator of
``otaferry lora-sim`` (``transport/lorasim.py``: the same ``AirChannel`` and
modem command parsers, with in-process UARTs instead of ptys), and the device
behind its own modem (``device_fw/lora.ModemLoop``, the code ``device run
--lora-modem`` runs) with a file-backed flash; the device boots the new image
and checks in (the run ends at ``Confirmed``). The event loop runs on a
virtual clock (``transport/vclock.py``): idle time jumps to the next timer, so
hours of 1 % duty cycle take seconds, and a seed gives the same figures again.
Not modelled: CPU time (flash writes, crypto) and the UART's byte time.

Cases (tests/firmware): the delta micropython-esp8266 v1.9.4 -> v1.10 and the
full image programmer-cortex-m4/0.9.0. Radio: EU868 868.1 MHz (1 % sub-band),
125 kHz, 4/5, preamble 8. Per run:

- ``air_over_floor``: all air time (gateway and device, handshakes, offer,
  data, acknowledgements, retransmissions, the check-in) over the floor
  ``ceil(artifact / MTU) x time on air of a full MTU packet`` (the modem's own
  bytes on the air, RAK3172: 2, counted in both);
- ``wall_s``: virtual time from the first command to ``Confirmed``;
- ``violations``: duty-cycle and dwell violations the emulator counted;
- ``planned_air_s`` (``otaferry plan``) and ``plan_error``: planned / emulated - 1;
- ``breakdown``: the air by phase (``setup`` up to the first DATA, ``data`` up to the
  first COMMIT, ``check-in`` after it) and frame kind, as
  ``{phase: {kind: [packets, air over the floor]}}`` (``--breakdown`` prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...device_fw import secure as device_secure
from ...device_fw.device import Device
from ...device_fw.loop import power_up
from ...device_fw.lora import ModemLoop
from ...protocol import secure as host_secure
from ...protocol.artifact import build_delta, build_full
from ...protocol.keys import SigningKey
from ...protocol.lora import LoRaParams, RegionPacing, region
from ...protocol.modems import codec_for
from ...protocol.x25519keys import LinkPrivateKey, LinkPublicKey
from ...transport.lora_hub import ModemHub
from ...transport.lorasim import LoRaSim
from ...transport.secure_link import SecureLink
from ...transport.updater import PushOptions, Updater, over_the_air
from ...transport.vclock import run_virtual
from ..args import Parser

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "tests" / "firmware"
KEY = SigningKey.from_seed(hashlib.sha256(b"bench lora").digest())
GATEWAY = LinkPrivateKey.from_raw(hashlib.sha256(b"bench lora gateway").digest())
HW, CHIP = "bench-lora", "bench"
CHECKIN_TIMEOUT = 7200.0
"""The device's check-in deadline here: at SF9 and 1 % a device's HELLO parts alone
take minutes of duty-cycle off time, past the 120 s default (see the README)."""


def cases(names: list[str], cache: Path | None = None) -> dict[str, tuple[bytes, bytes]]:
    """name -> (old image the device runs, .ota). The delta takes ~40 s to build:
    it is kept in ``cache`` when given."""
    out: dict[str, tuple[bytes, bytes]] = {}
    if "delta" in names:
        old = (FIRMWARE / "micropython-esp8266" / "esp8266-20180511-v1.9.4.bin").read_bytes()
        new = (FIRMWARE / "micropython-esp8266" / "esp8266-20190125-v1.10.bin").read_bytes()
        path = None if cache is None else cache / "esp8266-v1.10-delta.ota"
        if path is not None and path.exists():
            ota = path.read_bytes()
        else:
            ota = build_delta(old, new, KEY, hw=[HW], chip=CHIP, version="v1.10",
                              security_counter=1)  # fmt: skip
            if path is not None:
                path.write_bytes(ota)
        out["delta"] = (old, ota)
    if "full" in names:
        old = (FIRMWARE / "programmer-cortex-m4" / "0.8.0.bin").read_bytes()
        new = (FIRMWARE / "programmer-cortex-m4" / "0.9.0.bin").read_bytes()
        out["full"] = (old, build_full(new, KEY, hw=[HW], chip=CHIP, version="0.9.0",
                                       security_counter=1))  # fmt: skip
    return out


FRAME_KINDS = {1: "query", 2: "hello", 3: "offer", 4: "accept", 5: "reject", 6: "data",
               7: "status", 8: "commit", 9: "done", 10: "abort", 11: "confirm",
               12: "confirmed", 13: "poll", 14: "checkin"}  # fmt: skip
RECORD_KINDS = {0xE1: "handshake", 0xE2: "handshake", 0xE3: "reject", 0xE4: "identify",
                0xE5: "identify", 0xE6: "resume"}  # fmt: skip


def frame_kind(body: bytes) -> str:
    """The kind of a session frame body (SPEC 8.2), for the breakdown."""
    if body[0] < 0x80:
        return "data"  # compact DATA (SPEC 8.8)
    code = body[1] if 0x90 <= body[0] <= 0x9F else body[3] if body[0] == 0xDC else -1
    return FRAME_KINDS.get(code & ~0x20 if code in (0x23, 0x26) else code, "other")


class _Breakdown:
    """Air time by phase and frame kind. Both sides' sealing is watched (the
    records are opaque on the air), so a packet is named by the frame it carries."""

    def __init__(self) -> None:
        self.kinds: dict[bytes, str] = {}
        self.phase = "setup"
        self.air: dict[str, dict[str, list[float]]] = {}

    @contextlib.contextmanager
    def watching(self) -> Any:
        host_seal = host_secure.SecureChannel.seal
        device_seal = device_secure.SecureChannel.seal

        def host(channel: host_secure.SecureChannel, body: bytes) -> bytes:
            record = host_seal(channel, body)
            self.kinds[record] = frame_kind(body)
            return record

        def device(channel: Any, body: bytes) -> bytes:
            record: bytes = device_seal(channel, body)
            self.kinds[record] = frame_kind(body)
            return record

        host_secure.SecureChannel.seal = host  # type: ignore[method-assign,assignment]
        device_secure.SecureChannel.seal = device
        try:
            yield self
        finally:
            host_secure.SecureChannel.seal = host_seal  # type: ignore[method-assign]
            device_secure.SecureChannel.seal = device_seal

    def on_air(self, address: int, air: bytes, seconds: float) -> None:
        kind = "other"
        for skip in range(4):  # the modem's own bytes in front of the record (RAK: 2)
            if air[skip:] in self.kinds:
                kind = self.kinds.pop(air[skip:])
                break
            if air[skip : skip + 1] == b"\xe6" and air[skip + 9 :] in self.kinds:
                kind = "resume+" + self.kinds.pop(air[skip + 9 :])  # SPEC 9.11
                break
        else:
            for skip in range(4):
                if air[skip : skip + 1] and air[skip] in RECORD_KINDS:
                    kind = RECORD_KINDS[air[skip]]
                    break
        if kind == "data" and self.phase == "setup":
            self.phase = "data"
        elif kind in ("commit", "done"):
            self.phase = "check-in"
        cell = self.air.setdefault(self.phase, {}).setdefault(kind, [0, 0.0])
        cell[0] += 1
        cell[1] += seconds

    def over(self, floor: float) -> dict[str, dict[str, list[float]]]:
        return {phase: {kind: [int(n), round(s / floor, 4)] for kind, (n, s) in kinds.items()}
                for phase, kinds in self.air.items()}  # fmt: skip


class _UART:
    """The gateway's side of an in-process UART to an emulated modem."""

    def __init__(self, feed: Callable[[bytes], None], hub: ModemHub) -> None:
        self._feed = feed
        self._hub = hub

    def write(self, data: bytes) -> None:
        asyncio.get_running_loop().call_soon(self._feed, bytes(data))

    def close(self) -> None:
        protocol = self._hub._protocol
        if protocol is not None:
            protocol.connection_lost(None)


async def _device(flash: Path, kind: str, radio: tuple[Any, ...], mtu: int,
                  inbox: asyncio.Queue[bytes], feed: Callable[[bytes], None]) -> None:  # fmt: skip
    """``device run --lora-modem`` (device_fw.lora.serve_modem), driven by the loop:
    reset into an installed image, self-test, check in."""
    loop = asyncio.get_running_loop()
    off_until = 0.0  # the radio's off time outlives a reset
    while True:
        device = Device(str(flash))
        try:
            power_up(device, True, True, True, None)
            ml = ModemLoop(device, kind, 1, radio, mtu, checkin_timeout=CHECKIN_TIMEOUT,
                           off_until=off_until)  # fmt: skip
            out = ml.start(loop.time())
            while True:
                if out:
                    loop.call_soon(feed, out)
                if ml.reset_requested is not None:
                    off_until = ml.off_until
                    break
                deadline = ml.next_deadline()
                wait = None if deadline is None else max(0.0, deadline - loop.time())
                data = b""
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        data = await inbox.get()
                now = loop.time()
                out = ml.feed(data, now) if data else b""
                deadline = ml.next_deadline()
                if not out and deadline is not None and now >= deadline:
                    out = ml.tick(now)
        finally:
            device.close()


async def emulate(
    ota: bytes, old: bytes, work: Path, *, modem: str = "rak3172", sf: int = 9, bw: int = 125,
    cr: int = 5, mtu: int = 51, loss: float = 0.0, seed: int = 1, region_name: str = "EU868",
    duty_cycle: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One update over the emulated air (see the module docstring); the figures."""
    loop = asyncio.get_running_loop()
    plan = region(region_name)
    params = LoRaParams(sf, bw * 1000, cr)
    freq = plan.default_hz
    flash = work / f"flash-{sf}-{mtu}-{loss}-{seed}.bin"
    Device.create(str(flash), hw=HW, chip=CHIP, trusted_keys=[KEY.public.raw], image=old,
                  version="old", gateways=[GATEWAY.public.raw]).close()  # fmt: skip
    with Device(str(flash)) as dev:
        device_pub = LinkPublicKey.from_raw(dev.link_public())
    sim = LoRaSim(modem, ["gw", "dev1"], params=params, plan=plan, loss=loss, seed=seed,
                  duty_cycle=duty_cycle)  # fmt: skip
    tally = _Breakdown()
    sim.on_air = tally.on_air
    feeds = sim.start_in_process(loop)
    codec = codec_for(modem)
    pacing = RegionPacing(params, plan, freq, wire_size=codec.wire_size, mtu=mtu,
                          duty_cycle=duty_cycle)  # fmt: skip
    hub = ModemHub(codec, port="emulated", address=0, peers=frozenset({1}), mtu=mtu,
                   pacing=pacing)  # fmt: skip
    protocol = hub.protocol_factory()
    sim.modems[0].sink = protocol.data_received
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    sim.modems[1].sink = inbox.put_nowait
    radio = (sf, bw * 1000, cr, 8, freq, region_name)
    with tally.watching():
        device = asyncio.ensure_future(_device(flash, modem, radio, mtu, inbox, feeds[1]))
        start = loop.time()
        try:
            await hub.attach(_UART(feeds[0], hub), params, freq)
            link = await SecureLink.connect(hub.link(1), GATEWAY, device_pub, retries=8)
            options = over_the_air(PushOptions(max_retries=12), pacing, link.inner.mtu,
                                   checkin_timeout=CHECKIN_TIMEOUT + 600)  # fmt: skip
            updater = Updater(link, options, clock=loop.time)
            outcome = await updater.push(ota)
            sender = updater.last_sender
            await link.aclose()
        finally:
            device.cancel()
            with contextlib.suppress(BaseException):
                await device
            await hub.aclose()
    wall = loop.time() - start
    stats = sim.stats()["modems"]
    air = sum(m["air_time_s"] for m in stats.values())
    full = params.time_on_air(codec.wire_size(mtu))
    floor = math.ceil(len(ota) / mtu) * full
    assert sender is not None
    return {
        "outcome": type(outcome).__name__,
        "artifact_bytes": len(ota),
        "air_time_s": round(air, 3),
        "gateway_air_s": round(stats["0"]["air_time_s"], 3),
        "device_air_s": round(stats["1"]["air_time_s"], 3),
        "floor_air_s": round(floor, 3),
        "air_over_floor": round(air / floor, 4),
        "wall_s": round(wall, 1),
        "violations": sum(
            m["duty_cycle_violations"] + m["dwell_violations"] for m in stats.values()
        ),
        "gateway_packets": stats["0"]["tx_packets"],
        "device_packets": stats["1"]["tx_packets"],
        "chunk": sender.chunk_size,
        "compact": sender.compact,
        "window": sender.window,
        "retransmits": sender.stats.retransmits,
        "timeouts": sender.stats.timeouts,
        "breakdown": tally.over(floor),
    }


def planned(ota: bytes, *, modem: str, sf: int, bw: int, cr: int, mtu: int, loss: float,
            region_name: str = "EU868") -> dict[str, Any]:  # fmt: skip
    from ..plan import plan

    args = argparse.Namespace(region=region_name, sf=sf, bw=bw, cr=cr, mtu=mtu, loss=loss,
                              modem=modem, freq=None, devices=1)  # fmt: skip
    return plan(ota, args)


def format_breakdown(breakdown: dict[str, dict[str, list[float]]]) -> str:
    """``phase: kind packets x air, ...`` lines, air over the floor."""
    lines = []
    for phase, kinds in breakdown.items():
        total = sum(share for _, share in kinds.values())
        parts = ", ".join(f"{kind} {n} {share:.3f}" for kind, (n, share)
                          in sorted(kinds.items(), key=lambda kv: -kv[1][1]))  # fmt: skip
        lines.append(f"    {phase:8} {total:.3f}: {parts}")
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="otaferry bench lora", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sf", type=_ints, default=[7, 9], help="spreading factors (7,9)")
    ap.add_argument("--mtu", type=_ints, default=[51, 115, 222], help="frame sizes (51,115,222)")
    ap.add_argument("--loss", type=_floats, default=[0.0, 0.1, 0.3], help="losses (0,0.1,0.3)")
    ap.add_argument("--cases", default="delta,full", help="delta,full")
    ap.add_argument("--modem", default="rak3172", choices=("rak3172", "e22", "rylr998"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="OUT", help="write every run's figures here")
    ap.add_argument("--breakdown", action="store_true",
                    help="print each run's air by phase and frame kind")  # fmt: skip
    args = ap.parse_args(argv)
    names = [n for n in args.cases.split(",") if n]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        work = Path(tmp)
        for name, (old, ota) in cases(names, work).items():
            for sf in args.sf:
                for mtu in args.mtu:
                    for loss in args.loss:
                        began = time.monotonic()
                        row = run_virtual(emulate(ota, old, work, modem=args.modem, sf=sf,
                                                  mtu=mtu, loss=loss, seed=args.seed))  # fmt: skip
                        plan_out = planned(ota, modem=args.modem, sf=sf, bw=125, cr=5,
                                           mtu=mtu, loss=loss)  # fmt: skip
                        row = {"case": name, "sf": sf, "mtu": mtu, "loss": loss, **row,
                               "planned_air_s": plan_out["air_time_s"],
                               "plan_error": round(plan_out["air_time_s"] / row["air_time_s"] - 1,
                                                   4),
                               "cpu_s": round(time.monotonic() - began, 1)}  # fmt: skip
                        rows.append(row)
                        print(
                            f"{name:5} SF{sf} mtu {mtu:3} loss {loss:4.0%}: "
                            f"air {row['air_over_floor']:.3f}x floor "
                            f"({row['air_time_s']:.0f} s), wall {row['wall_s'] / 3600:.2f} h, "
                            f"violations {row['violations']}, plan {row['plan_error']:+.1%} "
                            f"[{row['outcome']}, chunk {row['chunk']}, window {row['window']}]",
                            flush=True,
                        )
                        if args.breakdown:
                            print(format_breakdown(row["breakdown"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    bad = [r for r in rows if r["violations"] or r["outcome"] != "Confirmed"]
    if bad:
        print(f"{len(bad)} run(s) with violations or without Confirmed", file=sys.stderr)
        return 1
    return 0
