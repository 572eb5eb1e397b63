"""``otaferry push`` and ``otaferry device run``: an update across a real serial line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

from ..protocol.errors import OtaferryError, Reason
from ..protocol.lora import LoRaParams, Region, RegionPacing, region
from ..protocol.pacing import Pacing
from ..protocol.session import (
    Accepted,
    CheckedIn,
    Completed,
    Confirmed,
    DeviceInfo,
    Event,
    Progress,
    Rebooting,
)
from ..protocol.x25519keys import load_link_private_key, load_link_public_key
from ..transport.link import Link
from ..transport.lora_hub import ModemHub
from ..transport.secure_link import SecureLink
from ..transport.serial_link import SerialLink
from ..transport.updater import PushOptions, Updater
from .args import UsageError
from .files import read_file


class ProgressPrinter:
    """One line of bytes / rate / ETA, redrawn in place on a terminal."""

    def __init__(self, json_lines: bool) -> None:
        self.json = json_lines
        self.t0 = time.monotonic()
        self.first_bytes: int | None = None
        self.tty = sys.stderr.isatty()
        self.last_line = -1.0

    def __call__(self, event: Event) -> None:
        now = time.monotonic() - self.t0
        if self.json:
            print(json.dumps(_event_dict(event, now)), flush=True)
            return
        if isinstance(event, DeviceInfo):
            info = event.info
            resume = f", resuming at segment {event.resume_from}" if event.resume_from else ""
            print(
                f"device {info.device_id.hex()} hw {info.hw} chip {info.chip} runs "
                f"{info.running_version}{resume}",
                file=sys.stderr,
            )
        elif isinstance(event, Accepted):
            print(
                f"accepted: signature and compatibility checked by the device, "
                f"starting at segment {event.next_segment}",
                file=sys.stderr,
            )
        elif isinstance(event, Progress):
            if self.first_bytes is None:
                self.first_bytes = event.confirmed_bytes
                self.t_first = now
            done = event.confirmed_bytes - self.first_bytes
            rate = done / max(now - self.t_first, 1e-6)
            left = event.total_bytes - event.confirmed_bytes
            eta = left / rate if rate > 0 else float("inf")
            pct = 100 * event.confirmed_bytes / max(1, event.total_bytes)
            line = (
                f"{pct:5.1f} %  {event.confirmed_bytes}/{event.total_bytes} B  "
                f"{rate / 1024:6.1f} KiB/s  ETA {eta:5.0f} s  "
                f"segment {event.segments_done}/{event.segments_total}"
            )
            print(
                ("\r" + line) if self.tty else line,
                end="" if self.tty else "\n",
                file=sys.stderr,
                flush=True,
            )
        elif isinstance(event, Completed):
            if self.tty:
                print(file=sys.stderr)
            print(
                f"transferred in {now:.1f} s: {event.total_bytes} B written, verified by the "
                "device and set to boot",
                file=sys.stderr,
            )
        elif isinstance(event, Rebooting):
            print(
                f"rebooting: waiting up to {event.deadline_s:g} s for the new image to check in",
                file=sys.stderr,
            )
        elif isinstance(event, CheckedIn):
            print(
                f"checked in: {event.version} booted, passed its self-test and reached us",
                file=sys.stderr,
            )
        elif isinstance(event, Confirmed):
            print(f"confirmed in {now:.1f} s: {event.version} is valid on the device",
                  file=sys.stderr)  # fmt: skip


def _event_dict(event: Event, t: float) -> dict[str, Any]:
    out: dict[str, Any] = {"event": type(event).__name__, "t": round(t, 3)}
    if isinstance(event, DeviceInfo):
        out.update(
            device_id=event.info.device_id.hex(),
            hw=event.info.hw,
            chip=event.info.chip,
            running_version=event.info.running_version,
            resume_from=event.resume_from,
        )
    elif isinstance(event, Accepted):
        out["next_segment"] = event.next_segment
    elif isinstance(event, Progress):
        out.update(
            confirmed_bytes=event.confirmed_bytes,
            total_bytes=event.total_bytes,
            segments_done=event.segments_done,
            segments_total=event.segments_total,
        )
    elif isinstance(event, Completed):
        out.update(
            total_bytes=event.total_bytes,
            segments_total=event.segments_total,
            resumed_from=event.resumed_from,
        )
    return out


async def push_async(args: argparse.Namespace) -> Completed | Confirmed:
    candidates = [read_file(p) for p in args.artifacts]
    options = PushOptions(
        window=args.window,
        line_rate=args.baud / 10,
        rto=args.rto,
        max_retries=args.retries,
        await_checkin=not args.no_await_checkin,
        checkin_timeout=args.checkin_timeout,
    )
    printer = ProgressPrinter(args.json_progress)
    if not args.insecure_plaintext and not (args.link_key and args.device_pub):
        raise OtaferryError(
            "push is encrypted: give --link-key (otaferry keygen --link) and --device-pub "
            "(otaferry device provision --out), or --insecure-plaintext on a bench",
            Reason.BAD_KEY,
        )
    async with contextlib.AsyncExitStack() as stack:
        link: Link
        if args.lora_modem:
            link = await stack.enter_async_context(await _open_lora(args))
            pacing = link.pacing
            assert isinstance(pacing, RegionPacing)
            options = PushOptions(
                window=args.window,
                rto=max(args.rto, pacing.first_rto(link.mtu)),
                max_retries=args.retries,
                await_checkin=not args.no_await_checkin,
                checkin_timeout=args.checkin_timeout,
            )
        else:
            link = await stack.enter_async_context(
                await SerialLink.open(args.port, args.baud, mtu=args.mtu or 1024)
            )
        raw = link
        if not args.insecure_plaintext:
            link = await SecureLink.connect(
                raw,
                load_link_private_key(args.link_key),
                load_link_public_key(args.device_pub),
                rto=args.rto,
            )
        up = Updater(link, options)
        if len(candidates) == 1 and not args.no_full_fallback:
            return await up.push(candidates[0], printer)
        return await up.push_best(
            candidates, allow_full=not args.no_full_fallback, on_event=printer
        )


def radio(args: argparse.Namespace) -> tuple[LoRaParams, Region, int]:
    """The LoRa settings of a command line (checked: one-line errors)."""
    plan = region(args.region)
    params = LoRaParams(args.sf, args.bw * 1000, args.cr, args.preamble)
    freq = args.freq or plan.default_hz
    plan.check(params, freq)
    return params, plan, freq


async def _open_lora(args: argparse.Namespace) -> Link:
    """The device's view of the gateway's modem hub (closing it closes the hub)."""
    if args.to is None:
        raise UsageError("push --lora-modem needs --to ADDR (the device's address)")
    params, plan, freq = radio(args)
    hub = await ModemHub.open(
        args.port,
        args.lora_modem,
        params,
        region=plan,
        freq_hz=freq,
        address=0,
        peers=(args.to,),
        mtu=args.mtu,
        baudrate=args.baud,
        duty_cycle=args.duty_cycle,
        time_scale=args.time_scale,
    )
    return _HubLink(hub, args.to)


class _HubLink(Link):
    """One peer's view that owns its hub: closing it closes the modem port."""

    def __init__(self, hub: ModemHub, peer: int) -> None:
        self.hub = hub
        self.view = hub.link(peer)

    @property
    def mtu(self) -> int:
        return self.view.mtu

    @property
    def pacing(self) -> Pacing:
        return self.view.pacing

    async def send(self, frame: bytes) -> None:
        await self.view.send(frame)

    async def receive(self) -> bytes:
        return await self.view.receive()

    async def aclose(self) -> None:
        await self.hub.aclose()


def push(args: argparse.Namespace) -> int:
    asyncio.run(push_async(args))
    return 0


def device_run(args: argparse.Namespace) -> int:
    from ..device_fw.port import open_serial
    from ..device_fw.serve import serve
    from .devicecli import require_flash_file

    require_flash_file(args.flash)  # before the port is opened and "serving" is said
    lora = None
    if args.lora_modem:
        params, plan, freq = radio(args)
        lora = (params.sf, params.bw, params.cr, params.preamble, freq, plan.name)
    stopping = []

    def _stop(*_: object) -> None:
        stopping.append(True)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        port = open_serial(args.port, args.baud)
    except Exception as exc:  # pyserial raises SerialException / OSError / ValueError
        raise OtaferryError(f"cannot open {args.port}: {exc}", Reason.IO_ERROR) from exc

    ready_said: list[bool] = []

    def log(kind: str, detail: dict[str, Any]) -> None:
        if args.quiet:
            return
        if kind == "ready":  # said only once the flash is ours: a refusal stays one line
            if not ready_said:
                via = f" via {args.lora_modem} address {args.address}" if args.lora_modem else ""
                print(f"device: serving {args.flash} on {args.port}{via}", file=sys.stderr,
                      flush=True)  # fmt: skip
                ready_said.append(True)
        elif kind == "boot":
            for entry in detail["log"]:
                print(f"device: boot: {entry}", file=sys.stderr, flush=True)
        elif kind == "reset":
            print(f"device: reset ({detail['why']})", file=sys.stderr, flush=True)
        else:
            print(
                f"device: {kind} (frames {detail['frames']}, bad {detail['bad_frames']}, "
                f"segments {detail['segments']})",
                file=sys.stderr,
                flush=True,
            )

    try:
        life = {
            "lifecycle": not args.no_reboot,
            "self_test": not args.fail_self_test,
            "checkin": not args.no_checkin,
            "checkin_timeout": args.checkin_timeout,
        }
        if lora is not None:
            from ..device_fw.lora import serve_modem

            serve_modem(
                args.flash,
                port,
                args.lora_modem,
                args.address,
                lora,
                mtu=args.mtu,
                stop=lambda: bool(stopping),
                on_event=log,
                time_scale=args.time_scale,
                duty_cycle=args.duty_cycle,
                **life,
            )
        else:
            serve(args.flash, port, mtu=args.mtu or 1024, stop=lambda: bool(stopping),
                  on_event=log, **life)  # fmt: skip
    finally:
        port.close()
    return 0
