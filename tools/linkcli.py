"""``otaferry push`` and ``otaferry device run``: an update across a real serial line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import replace
from typing import Any

from ..protocol.errors import OtaferryError, Reason, TimeoutError_
from ..protocol.lora import LoRaParams, Region, RegionPacing, region
from ..protocol.manifest import PAYLOAD_DELTA
from ..protocol.pacing import Pacing
from ..protocol.session import (
    Completed,
    Confirmed,
)
from ..protocol.shared_artifact import Artifact
from ..protocol.x25519keys import load_link_private_key, load_link_public_key
from ..transport.link import Link
from ..transport.lora_hub import ModemHub
from ..transport.secure_link import SecureLink
from ..transport.serial_link import SerialLink
from ..transport.updater import PushOptions, Updater, choose_artifact, over_the_air
from .args import UsageError
from .files import read_file
from .progress import ProgressView


async def push_async(args: argparse.Namespace) -> Completed | Confirmed:
    candidates = [read_file(p) for p in args.artifacts]
    options = PushOptions(
        window=args.window,
        line_rate=args.baud / 10,
        rto=args.rto,
        max_retries=args.retries,
        await_checkin=not args.no_await_checkin,
        checkin_timeout=args.checkin_timeout or 180.0,
    )
    printer = args._view
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
            options = over_the_air(
                replace(options, window=args.window), pacing, link.mtu,
                checkin_timeout=args.checkin_timeout,
            )  # fmt: skip
        else:
            link = await stack.enter_async_context(
                await SerialLink.open(
                    args.port, args.baud, mtu=args.mtu or 1024, before=args.before, after=args.after
                )
            )
        raw = link
        if not args.insecure_plaintext:
            view = printer

            def retrying(attempts: int, deadline: float) -> None:
                view.waiting(f"waiting for the device on {args.port}: no handshake answer yet "
                             f"(try {attempts} of {args.retries + 1})")  # fmt: skip

            link = await SecureLink.connect(
                raw,
                load_link_private_key(args.link_key),
                load_link_public_key(args.device_pub),
                rto=None,  # from the medium (a few round trips), doubling
                retries=args.retries,
                on_retry=retrying,
            )
        up = Updater(link, options)
        if len(candidates) == 1 and not args.no_full_fallback:
            printer.say(f"sending {_describe(candidates[0])}")
            return await up.push(candidates[0], printer)
        info = await up.hello()
        chosen = choose_artifact(candidates, info, allow_full=not args.no_full_fallback)
        printer.say(f"chose {_describe(chosen)} of {len(candidates)}: {_why(chosen, info)}")
        return await up.push(chosen, printer)


def _describe(ota: bytes | Artifact) -> str:
    m = Artifact.of(ota).manifest if isinstance(ota, Artifact) else _manifest(ota)
    kind = "delta" if m.payload_kind == PAYLOAD_DELTA else "full image"
    size = ota.size if isinstance(ota, Artifact) else len(ota)
    return f"{kind} {m.version} ({size} B)"


def _manifest(ota: bytes) -> Any:
    import io

    from ..protocol.artifact import ArtifactReader

    return ArtifactReader(io.BytesIO(ota)).manifest


def _why(chosen: bytes | Artifact, info: Any) -> str:
    m = _manifest(chosen) if isinstance(chosen, bytes) else chosen.manifest
    if m.payload_kind == PAYLOAD_DELTA:
        return f"its base is the image the device runs ({info.running_version}); fewest bytes"
    return "fewest bytes: no delta for the image the device runs is smaller"


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
    view = ProgressView(args.json_progress)
    args._view = view
    try:
        asyncio.run(_with_timeout(push_async(args), args.timeout))
    except KeyboardInterrupt:
        view.close()
        last = view.last
        where = f" at {last.confirmed_bytes}/{last.total_bytes} B confirmed" if last else ""
        print(f"\notaferry: interrupted{where}: run the same push again to resume where the "
              "device stands", file=sys.stderr)  # fmt: skip
        return 130
    except OtaferryError as exc:
        view.failed(exc.reason.name, exc.message)
        raise _with_cause(exc, args) from None
    view.close()
    return 0


def _quiet_transport_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A port that vanishes mid-push makes pyserial-asyncio report "Fatal write error
    on serial transport" with a traceback through the loop's handler; the push then
    fails with one line of its own (TransportError), so that report is dropped.
    Anything else goes to the default handler."""
    if isinstance(context.get("exception"), OSError) or "serial" in str(context.get("message")):
        return
    loop.default_exception_handler(context)


async def _with_timeout(work: Any, seconds: float | None) -> Any:
    asyncio.get_running_loop().set_exception_handler(_quiet_transport_errors)
    if seconds is None:
        return await work
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise TimeoutError_(f"gave up after --timeout {seconds:g} s") from None


def _with_cause(exc: OtaferryError, args: argparse.Namespace) -> OtaferryError:
    """A timeout in the handshake says what is likely wrong."""
    if exc.reason != Reason.TIMEOUT or "handshake" not in exc.message:
        return exc
    if args.insecure_plaintext:
        hint = ("a device that requires the secure channel ignores plaintext: drop "
                "--insecure-plaintext and give --link-key/--device-pub, or allow it with "
                "'device provision --allow-plaintext'")  # fmt: skip
    else:
        hint = (f"no device answered on {args.port}: is 'otaferry device run' (or the board) "
                f"on that port, at {args.baud} baud?")  # fmt: skip
    return TimeoutError_(f"{exc.message}; {hint}")


def device_run(args: argparse.Namespace) -> int:
    from ..device_fw.port import open_serial
    from ..device_fw.serve import serve
    from .devicecli import require_flash_file

    require_flash_file(args.flash)  # before the port is opened and "serving" is said
    if getattr(args, "runtime", "cpython") == "micropython":
        return _device_run_micropython(args)
    lora = None
    if args.lora_modem:
        params, plan, freq = radio(args)
        lora = (params.sf, params.bw, params.cr, params.preamble, freq, plan.name)
    stopping = []

    def _stop(*_: object) -> None:
        stopping.append(True)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    port = _open_device_port(args, stopping)

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
        elif kind == "port":
            print(f"device: port {args.port} failed ({detail['error']}); waiting for it to come "
                  "back", file=sys.stderr, flush=True)  # fmt: skip
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
            # None: 120 s on a UART, derived from the air behind a modem (SPEC 8.7)
            "checkin_timeout": args.checkin_timeout or ("air" if lora else 120.0),
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

            def reopen() -> Any:
                nonlocal port
                with contextlib.suppress(Exception):
                    port.close()
                while not stopping:
                    try:
                        port = open_serial(args.port, args.baud)
                    except Exception:  # not back yet
                        time.sleep(0.5)
                        continue
                    if not args.quiet:
                        print(f"device: port {args.port} is back", file=sys.stderr, flush=True)
                    return port
                return None

            serve(args.flash, port, mtu=args.mtu or 1024, stop=lambda: bool(stopping),
                  on_event=log, reopen=reopen, **life)  # fmt: skip
    finally:
        port.close()
    return 0


def _device_run_micropython(args: argparse.Namespace) -> int:
    """``device run --runtime micropython``: device_fw's main loop (``mp_run
    serve``) in the ``micropython`` command on the tty at ``--port``, until
    SIGINT / SIGTERM (passed on) or SIGKILL (a power cut, as on CPython)."""
    import os
    import subprocess

    from ..device_fw.flash import lock
    from .mpy import DEFAULT_HEAP, mp_argv, mp_env

    # One flash file, one owner, as on CPython: the lock is taken here and its
    # file handed to the child, which holds it as long as it runs.
    held = open(args.flash, "r+b")  # noqa: SIM115 - lives as long as the device
    lock(held, args.flash)
    deadline = time.monotonic() + PORT_APPEAR_S
    while not os.path.exists(args.port):
        if time.monotonic() > deadline:
            raise OtaferryError(f"no port {args.port}", Reason.IO_ERROR)
        time.sleep(0.1)
    flags = [f"--checkin-timeout={args.checkin_timeout or ('air' if args.lora_modem else 120.0)}"]
    if args.no_reboot:
        flags.append("--no-reboot")
    if args.fail_self_test:
        flags.append("--fail-self-test")
    if args.no_checkin:
        flags.append("--no-checkin")
    if args.lora_modem:  # device_fw/lora.py behind the modem, under micropython
        params, plan, freq = radio(args)
        flags += [f"--time-scale={args.time_scale}"]
        flags += [f"--mtu={args.mtu}"] if args.mtu else []
        flags += [f"--duty-cycle={args.duty_cycle}"] if args.duty_cycle is not None else []
        cmd = ["serve-lora", args.flash, args.port, args.lora_modem, str(args.address),
               str(params.sf), str(params.bw), str(params.cr), str(params.preamble), str(freq),
               plan.name, *flags]  # fmt: skip
    else:
        cmd = ["serve", args.flash, args.port, str(args.mtu or 1024), *flags]
    argv = mp_argv(cmd, args.heap or DEFAULT_HEAP, args.code)
    out = subprocess.DEVNULL if args.quiet else sys.stderr
    # stdout: the one JSON line mp_run ends with (the device's reason when it stops)
    child = subprocess.Popen(argv, env=mp_env(args.code), stdout=subprocess.PIPE, stderr=out,
                             text=True, pass_fds=(held.fileno(),),
                             preexec_fn=_die_with_parent)  # fmt: skip
    held.close()  # the child's copy holds the lock now

    def _pass_on(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, _pass_on)
    signal.signal(signal.SIGINT, _pass_on)
    said = child.communicate()[0] or ""
    code = child.returncode
    if code in (0, -signal.SIGTERM, -signal.SIGINT):
        return 0
    import json

    for line in reversed(said.strip().splitlines()):
        try:
            end = json.loads(line)
        except ValueError:
            continue
        if isinstance(end, dict) and not end.get("ok", True):
            name = str(end.get("reason_name", ""))
            reason = Reason[name] if name in Reason.__members__ else Reason.IO_ERROR
            raise OtaferryError(f"the device under micropython stopped: {end.get('message')}",
                                reason)  # fmt: skip
        break
    raise OtaferryError(f"micropython exited with status {code}: {said.strip()[-200:]}",
                        Reason.IO_ERROR)  # fmt: skip


def _die_with_parent() -> None:
    """In the micropython child before it starts: SIGKILL when ``device run``
    dies, so that SIGKILL of ``device run`` is a power cut of the device, as on
    CPython (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a no-op)."""
    import ctypes
    import os

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() == 1:  # the parent died before the prctl: die now
        os._exit(1)


PORT_APPEAR_S = 10.0  # a path that is not there yet (a line simulator starting): wait this long


def _open_device_port(args: argparse.Namespace, stopping: list[bool]) -> Any:
    """The device's port. A device path that does not exist yet is waited for (a
    line simulator or a USB adapter coming up), saying so; then one-line errors."""
    import os

    from ..device_fw.port import open_serial

    deadline = time.monotonic() + PORT_APPEAR_S
    said = False
    while True:
        try:
            return open_serial(args.port, args.baud)
        except Exception as exc:  # pyserial raises SerialException / OSError / ValueError
            missing = "://" not in args.port and not os.path.exists(args.port)
            if not missing or time.monotonic() > deadline or stopping:
                raise OtaferryError(f"cannot open {args.port}: {exc}", Reason.IO_ERROR) from exc
            if not said and not args.quiet:
                print(f"device: waiting for {args.port} to appear", file=sys.stderr, flush=True)
                said = True
            time.sleep(0.1)


def device_query(args: argparse.Namespace) -> int:
    """``otaferry device query``: ask a device over its port who it is and where it
    stands; ``--identify`` fetches its link public key (first contact)."""
    return asyncio.run(_device_query(args))


async def _device_query(args: argparse.Namespace) -> int:
    from ..transport.updater import fetch_device_key, query_device

    async with await SerialLink.open(args.port, args.baud, mtu=args.mtu) as raw:
        if args.identify:
            key = await fetch_device_key(raw, retries=args.retries)
            if args.save:
                with open(args.save, "xb") as f:
                    f.write(key.to_pem())
            out = {"link_public_key": key.raw.hex(), "key_id": key.key_id.hex(),
                   "saved": args.save}  # fmt: skip
            if args.json:
                print(json.dumps(out, indent=2))
            else:
                print(f"device link key {key.raw.hex()} (key id {key.key_id.hex()})")
                if args.save:
                    print(f"saved to {args.save}")
            print(
                "first contact, unauthenticated: anyone on this line could have answered. "
                "Trust the key only after comparing its key id with what "
                "'otaferry device provision --flash F' printed for this board (or its label).",
                file=sys.stderr,
            )
            return 0
        link: Link = raw
        if not args.insecure_plaintext:
            if not (args.link_key and args.device_pub):
                raise OtaferryError(
                    "the query goes inside the secure channel: give --link-key and "
                    "--device-pub (or --identify for first contact, or --insecure-plaintext)",
                    Reason.BAD_KEY,
                )
            link = await SecureLink.connect(
                raw, load_link_private_key(args.link_key), load_link_public_key(args.device_pub),
                retries=args.retries,
            )  # fmt: skip
        info = await query_device(link, retries=args.retries)
    out = {
        "device_id": info.device_id.hex(),
        "hw": info.hw,
        "chip": info.chip,
        "running_version": info.running_version,
        "running_sha256": info.running_sha256.hex() if info.running_sha256 else None,
        "security_counter": info.security_counter,
        "passive_slot_size": info.slot_size,
        "max_frame": info.max_frame,
        "codecs": list(info.codecs),
        "delta_ram_budget": info.ram_budget,  # what a delta may need (SPEC 7.6, HELLO field 18)
        "update_in_progress": None if info.resume_uid is None else {
            "update_id": info.resume_uid.hex(), "next_segment": info.resume_next},
        "pending_checkin": None if info.pending_uid is None else {
            "update_id": info.pending_uid.hex(),
            "image_sha256": info.pending_sha256.hex() if info.pending_sha256 else None},
        "last_failure": None if info.failed_uid is None else {
            "update_id": info.failed_uid.hex(),
            "reason": _reason_name(info.failed_reason)},
    }  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        width = max(map(len, out))
        for k, v in out.items():
            print(f"{k:<{width}}  {v}")
    return 0


def _reason_name(code: int | None) -> str | int | None:
    if code is None:
        return None
    return Reason(code).name if code in Reason._value2member_map_ else code

