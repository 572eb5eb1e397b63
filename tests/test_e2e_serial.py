"""End to end over real pseudo-terminals: the line simulator in this process, the
device as its own process (``otaferry device run``, so it can be SIGKILLed =
power cut), the sender through the async Updater or the ``otaferry push`` CLI."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from otaferry.device_fw.device import Device
from otaferry.protocol import errors
from otaferry.protocol.artifact import build_delta, build_full
from otaferry.protocol.keys import SigningKey
from otaferry.protocol.session import (
    CheckedIn,
    Completed,
    Confirmed,
    DeviceInfo,
    Progress,
    Rebooting,
)
from otaferry.protocol.x25519keys import LinkPrivateKey, LinkPublicKey
from otaferry.transport.linesim import LineSim
from otaferry.transport.link import Link
from otaferry.transport.secure_link import SecureLink
from otaferry.transport.serial_link import SerialLink
from otaferry.transport.updater import PushOptions, Updater
from paths import ESP8266_V110, ESP8266_V194, SIMBA_SHELL_NEW, SIMBA_SHELL_OLD

KEY = SigningKey.from_seed(hashlib.sha256(b"e2e serial").digest())
GATEWAY = LinkPrivateKey.from_raw(hashlib.sha256(b"e2e gateway link key").digest())
OTAFERRY = str(Path(sys.executable).with_name("otaferry"))
FAST = PushOptions(rto=0.3, max_retries=30, max_restarts=100, line_rate=46_080.0)


def make_flash(tmp_path: Path, image: bytes) -> Path:
    path = tmp_path / "flash.bin"
    Device.create(
        str(path),
        hw="hw",
        chip="chip",
        trusted_keys=[KEY.public.raw],
        image=image,
        version="old",
        gateways=[GATEWAY.public.raw],
    ).close()
    return path


def device_public(flash: Path) -> LinkPublicKey:
    with Device(str(flash)) as dev:
        return LinkPublicKey.from_raw(dev.link_public())


@asynccontextmanager
async def gateway(a: Path, flash: Path) -> AsyncIterator[Link]:
    """The gateway's end: a serial link with the secure channel on top."""
    async with await SerialLink.open(str(a), 460_800, mtu=1024) as raw:
        yield await SecureLink.connect(raw, GATEWAY, device_public(flash), rto=0.3, retries=20)


def full(image: bytes, counter: int = 1) -> bytes:
    return build_full(image, KEY, hw=["hw"], chip="chip", version="new", security_counter=counter)


def slot_bytes(flash: Path, index: int, size: int) -> bytes:
    with Device(str(flash)) as dev:
        return bytes(dev.flash.read(dev.slots[index].offset, size))


@contextmanager
def device_process(flash: Path, port: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [
            OTAFERRY,
            "device",
            "run",
            "--quiet",
            "--port",
            str(port),
            "--flash",
            str(flash),
            "--baud",
            "460800",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def restart(flash: Path, port: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [OTAFERRY, "device", "run", "--quiet", "--port", str(port), "--flash", str(flash),
         "--baud", "460800"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


@asynccontextmanager
async def line(tmp_path: Path, **faults: float) -> AsyncIterator[tuple[Path, Path]]:
    a, b = tmp_path / "A", tmp_path / "B"
    async with LineSim(str(a), str(b), baud=460_800, latency_ms=2, seed=7, **faults):  # type: ignore[arg-type]
        yield a, b


@pytest.mark.asyncio
async def test_clean_push_through_the_async_api(tmp_path: Path) -> None:
    old, new = SIMBA_SHELL_OLD.read_bytes(), SIMBA_SHELL_NEW.read_bytes()
    flash = make_flash(tmp_path, old)
    events: list[object] = []
    async with line(tmp_path) as (a, b):
        with device_process(flash, b):
            async with gateway(a, flash) as link, Updater(link, FAST) as up:
                done = await up.push(full(new), events.append)
    # device run lives across reboots: the push ends when the new image checked in
    assert isinstance(done, Confirmed)
    kinds = [type(e) for e in events]
    assert kinds.index(Completed) < kinds.index(Rebooting) < kinds.index(CheckedIn)
    assert kinds[-1] is Confirmed
    assert next(e for e in events if isinstance(e, Completed)).resumed_from == 0
    assert isinstance(events[0], DeviceInfo) and events[0].info.running_version == "old"
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress and all(
        x.confirmed_bytes <= y.confirmed_bytes for x, y in itertools.pairwise(progress)
    )
    assert progress[-1].confirmed_bytes == progress[-1].total_bytes
    assert slot_bytes(flash, 1, len(new)) == new
    with Device(str(flash)) as dev:
        info = dev.info()
        boot = dev.power_on(self_test=True)
    assert info["slots"][1]["state"] == "VALID" and info["security_counter"] == 1
    assert boot["label"] == "ota_1" and boot["version"] == "new" and boot["state"] == "VALID"


@pytest.mark.asyncio
async def test_rejection_reaches_the_api_with_its_reason(tmp_path: Path) -> None:
    flash = make_flash(tmp_path, SIMBA_SHELL_OLD.read_bytes())
    stranger = SigningKey.from_seed(bytes(32))
    art = build_full(SIMBA_SHELL_NEW.read_bytes(), stranger, hw=["hw"], chip="chip", version="x")
    async with line(tmp_path) as (a, b):
        with device_process(flash, b):
            async with gateway(a, flash) as link:
                with pytest.raises(errors.RemoteError) as exc:
                    await Updater(link, FAST).push(art)
    assert exc.value.reason == errors.Reason.UNKNOWN_KEY


@pytest.mark.asyncio
async def test_plaintext_only_when_the_device_allows_it(tmp_path: Path) -> None:
    """The bench mode: no secure channel. A default device ignores plaintext."""
    old, new = SIMBA_SHELL_OLD.read_bytes(), SIMBA_SHELL_NEW.read_bytes()
    flash = make_flash(tmp_path, old)
    strict = PushOptions(rto=0.2, max_retries=3, line_rate=46_080.0)
    async with line(tmp_path) as (a, b):
        with device_process(flash, b):
            async with await SerialLink.open(str(a), 460_800, mtu=1024) as raw:
                with pytest.raises(errors.TimeoutError_):
                    await Updater(raw, strict).push(full(new))
        with Device(str(flash)) as dev:
            dev.provision(require_secure=False)
        with device_process(flash, b):
            async with await SerialLink.open(str(a), 460_800, mtu=1024) as raw:
                done = await Updater(raw, FAST).push(full(new))
    assert isinstance(done, Confirmed) and slot_bytes(flash, 1, len(new)) == new


@pytest.mark.asyncio
async def test_secure_channel_refuses_an_unknown_gateway(tmp_path: Path) -> None:
    flash = make_flash(tmp_path, SIMBA_SHELL_OLD.read_bytes())
    impostor = LinkPrivateKey.from_raw(bytes(range(32)))
    async with line(tmp_path) as (a, b):
        with device_process(flash, b):
            async with await SerialLink.open(str(a), 460_800, mtu=1024) as raw:
                with pytest.raises(errors.RemoteError) as exc:
                    await SecureLink.connect(raw, impostor, device_public(flash), rto=0.3)
    assert exc.value.reason == errors.Reason.BAD_KEY


@pytest.mark.asyncio
async def test_push_cli_killed_then_rerun_resumes(tmp_path: Path) -> None:
    old, new = ESP8266_V194.read_bytes(), ESP8266_V110.read_bytes()
    flash = make_flash(tmp_path, old)
    art = tmp_path / "new.ota"
    art.write_bytes(full(new))
    (tmp_path / "gw.key").write_bytes(GATEWAY.to_pem())
    (tmp_path / "dev.pub").write_bytes(device_public(flash).to_pem())
    cmd = [
        OTAFERRY, "push", "--port", "", "--baud", "460800", "--rto", "0.3", "--json-progress",
        "--link-key", str(tmp_path / "gw.key"), "--device-pub", str(tmp_path / "dev.pub"),
        str(art),
    ]  # fmt: skip
    async with line(tmp_path) as (a, b):
        cmd[3] = str(a)
        with device_process(flash, b):
            first = await asyncio.create_subprocess_exec(
                *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            assert first.stdout is not None
            seen = 0
            while seen < 20:  # let 20 progress reports through, then kill the sender
                line_ = await asyncio.wait_for(first.stdout.readline(), 30)
                assert line_, "push ended early"
                seen += json.loads(line_)["event"] == "Progress"
            first.send_signal(signal.SIGKILL)
            await first.wait()
            second = await asyncio.create_subprocess_exec(
                *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            out, err = await asyncio.wait_for(second.communicate(), 120)
    assert second.returncode == 0, err.decode()
    events = [json.loads(x) for x in out.decode().splitlines()]
    info = next(e for e in events if e["event"] == "DeviceInfo")
    done = next(e for e in events if e["event"] == "Completed")
    assert info["resume_from"] and info["resume_from"] > 0
    assert done["resumed_from"] == info["resume_from"]
    assert events[-1]["event"] == "Confirmed"
    assert slot_bytes(flash, 1, len(new)) == new


@pytest.mark.asyncio
async def test_device_power_cut_at_random_moments_until_done(tmp_path: Path) -> None:
    """SIGKILL the device process again and again mid-transfer (a power cut at
    any flash op), restart it, and let the same Updater carry on."""
    old, new = ESP8266_V194.read_bytes(), ESP8266_V110.read_bytes()
    flash = make_flash(tmp_path, old)
    rng = random.Random(int(os.environ.get("OTAFERRY_SEED", "1234")))
    kills = 0
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with line(tmp_path) as (a, b):
            procs.append(restart(flash, b))
            async with gateway(a, flash) as link:  # the handshake needs a live device
                transferred: list[Completed] = []

                def note(event: object) -> None:
                    if isinstance(event, Completed):
                        transferred.append(event)

                task = asyncio.ensure_future(Updater(link, FAST).push(full(new), note))
                for _ in range(6):
                    await asyncio.wait([task], timeout=rng.uniform(0.3, 2.0))
                    if task.done() or transferred:
                        break  # (a cut while the new image is pending would roll it back)
                    procs[-1].send_signal(signal.SIGKILL)  # power cut at whatever flash op
                    procs[-1].wait()
                    kills += 1
                    procs.append(restart(flash, b))
                done = await asyncio.wait_for(task, 120)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert isinstance(done, Confirmed)
    assert kills >= 3
    assert slot_bytes(flash, 0, len(old)) == old  # the active slot: never written
    assert slot_bytes(flash, 1, len(new)) == new
    with Device(str(flash)) as dev:
        boot = dev.power_on(self_test=True)
    assert boot["label"] == "ota_1" and boot["state"] == "VALID"


@pytest.mark.asyncio
async def test_delta_push_picks_the_matching_delta(tmp_path: Path) -> None:
    old, new = ESP8266_V194.read_bytes(), ESP8266_V110.read_bytes()
    flash = make_flash(tmp_path, old)
    # any delta whose base is not the device's image (a small pair: building a
    # delta of v1.10 from an unrelated base took most of this test's 140 s)
    wrong = build_delta(
        SIMBA_SHELL_OLD.read_bytes(),
        SIMBA_SHELL_NEW.read_bytes(),
        KEY,
        hw=["hw"],
        chip="chip",
        version="new",
        security_counter=1,
    )
    right = build_delta(old, new, KEY, hw=["hw"], chip="chip", version="new", security_counter=1)
    events: list[object] = []
    async with line(tmp_path) as (a, b):
        with device_process(flash, b):
            async with gateway(a, flash) as link:
                up = Updater(link, FAST)
                with pytest.raises(errors.RemoteError) as exc:
                    await up.push_best([wrong, full(new)], allow_full=False)
                assert exc.value.reason == errors.Reason.WRONG_BASE
                done = await up.push_best([wrong, full(new), right], on_event=events.append)
    sent = next(e for e in events if isinstance(e, Completed))
    assert sent.total_bytes < len(right)  # the delta went, not the full image
    assert isinstance(done, Confirmed) and slot_bytes(flash, 1, len(new)) == new
