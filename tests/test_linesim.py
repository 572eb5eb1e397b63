"""The line simulator over real pseudo-terminals: pacing, impairments, reopen, CLI."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from otaferry.protocol.errors import TransportError
from otaferry.protocol.framing import FrameDecoder, encode_frame
from otaferry.transport.linesim import LineSim, main
from otaferry.transport.serial_link import SerialLink

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("error")]


class RawEnd:
    """A program's end of the line: the symlinked pty slave, opened raw."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.data = bytearray()
        self._arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        self.data += chunk
        self._arrived.set()

    async def write(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self.fd, data) :]
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def read_until(self, done: int | bytes, timeout: float = 10.0) -> bytes:
        """Wait until ``done`` bytes have arrived, or the byte string ``done`` has."""
        async with asyncio.timeout(timeout):
            while (len(self.data) < done) if isinstance(done, int) else (done not in self.data):
                self._arrived.clear()
                await self._arrived.wait()
        return bytes(self.data)

    def close(self) -> None:
        self._loop.remove_reader(self.fd)
        os.close(self.fd)


@pytest.mark.asyncio
async def test_pacing_at_9600_baud(tmp_path: Path) -> None:
    payload = bytes(random.Random(3).randrange(256) for _ in range(960))
    async with LineSim(tmp_path / "a", tmp_path / "b", baud=9600) as sim:
        a, b = RawEnd(sim.path_a), RawEnd(sim.path_b)
        try:
            started = time.monotonic()
            await a.write(payload)
            got = await b.read_until(len(payload))
            elapsed = time.monotonic() - started
        finally:
            a.close()
            b.close()
    assert got == payload
    # 960 bytes * 10 bits / 9600 baud = 1.0 s; only a loose lower bound is checked.
    assert elapsed >= 0.8
    assert sim.a_to_b.bytes_in == sim.a_to_b.bytes_out == 960


@pytest.mark.asyncio
async def test_fixed_latency(tmp_path: Path) -> None:
    async with LineSim(tmp_path / "a", tmp_path / "b", baud=1_000_000, latency_ms=300) as sim:
        a, b = RawEnd(sim.path_a), RawEnd(sim.path_b)
        try:
            started = time.monotonic()
            await b.write(b"hello")
            assert await a.read_until(b"hello") == b"hello"
            assert time.monotonic() - started >= 0.25
        finally:
            a.close()
            b.close()


async def _corrupt(tmp_path: Path, payload: bytes, seed: int) -> tuple[bytes, int]:
    async with LineSim(
        tmp_path / "a", tmp_path / "b", baud=2_000_000, byte_error_rate=0.05, seed=seed
    ) as sim:
        a, b = RawEnd(sim.path_a), RawEnd(sim.path_b)
        try:
            await a.write(payload)
            got = await b.read_until(len(payload))
        finally:
            a.close()
            b.close()
    assert sim.b_to_a.corrupted == 0
    return got, sim.a_to_b.corrupted


@pytest.mark.asyncio
async def test_byte_error_rate_is_honoured_and_reproducible(tmp_path: Path) -> None:
    payload = bytes(random.Random(4).randrange(256) for _ in range(4000))
    got, corrupted = await _corrupt(tmp_path, payload, seed=11)
    assert len(got) == len(payload)
    damaged = [i for i in range(len(payload)) if got[i] != payload[i]]
    # Every damaged byte has exactly one bit flipped, and the counter agrees.
    assert all(bin(got[i] ^ payload[i]).count("1") == 1 for i in damaged)
    assert len(damaged) == corrupted
    # 5 % of 4000 = 200 expected; sd ~ 14.
    assert 150 <= corrupted <= 250
    again, _ = await _corrupt(tmp_path, payload, seed=11)
    assert again == got
    other, _ = await _corrupt(tmp_path, payload, seed=12)
    assert other != got


@pytest.mark.asyncio
async def test_drops_lose_whole_frames(tmp_path: Path) -> None:
    bodies = [f"frame {i:03d}".encode() for i in range(300)]
    async with LineSim(
        tmp_path / "a", tmp_path / "b", baud=2_000_000, drop_rate=0.3, seed=5
    ) as sim:
        a, b = RawEnd(sim.path_a), RawEnd(sim.path_b)
        try:
            await a.write(b"".join(encode_frame(body) for body in bodies))
            await a.write(encode_frame(b"end") * 20)  # some copy of it survives
            raw = await b.read_until(encode_frame(b"end")[1:])
            await asyncio.sleep(0.05)  # let the last copies through before counting
        finally:
            a.close()
            b.close()
    decoder = FrameDecoder()
    got = [body for body in decoder.feed(raw) if body != b"end"]
    # A dropped unit is a whole frame: the survivors decode cleanly, in order.
    assert decoder.stats.bad_frames == 0
    assert got == [body for body in bodies if body in set(got)]
    assert 180 <= len(got) <= 240  # 70 % of 300 expected
    stats = sim.a_to_b
    assert stats.dropped == stats.bytes_in - stats.bytes_out
    assert stats.corrupted == 0


@pytest.mark.asyncio
async def test_sender_backpressure_and_receiver_overrun(tmp_path: Path) -> None:
    async with LineSim(tmp_path / "a", tmp_path / "b", baud=9600, tx_buffer=4096) as slow:
        a = RawEnd(slow.path_a)
        try:
            await a.write(bytes(12000))  # the kernel's pty buffer takes it all
            await asyncio.sleep(0.1)
            # The sim took no more than its transmit buffer (+ what has been sent
            # since, ~1 byte per ms): the rest waits on the sender's side.
            assert 4096 <= slow.a_to_b.bytes_in < 8000
        finally:
            a.close()
    # Nobody ever reads B: once the kernel buffer is full, bytes are lost.
    async with LineSim(tmp_path / "c", tmp_path / "d", baud=10_000_000, rx_buffer=4096) as fast:
        c = RawEnd(fast.path_a)
        try:
            await c.write(bytes(100_000))
            async with asyncio.timeout(10):
                while fast.a_to_b.bytes_in < 100_000:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
        finally:
            c.close()
    stats = fast.a_to_b
    assert stats.overflow > 0
    assert 0 <= stats.bytes_in - stats.bytes_out - stats.overflow <= 4096


@pytest.mark.asyncio
async def test_peer_can_close_and_reopen(tmp_path: Path) -> None:
    async with LineSim(tmp_path / "gw", tmp_path / "dev", baud=921600) as sim:
        gateway = await SerialLink.open(str(sim.path_a), 921600)
        try:
            # Nobody has the device end open yet: bytes sent now go nowhere useful.
            await gateway.send(b"before anyone listens")
            await asyncio.sleep(0.05)
            for generation in range(3):
                device = await SerialLink.open(str(sim.path_b), 921600)
                try:
                    marker = f"hello #{generation}".encode()

                    async def keep_sending(marker: bytes = marker) -> None:
                        while True:
                            await gateway.send(marker)
                            await asyncio.sleep(0.02)

                    sender = asyncio.create_task(keep_sending())
                    try:
                        async with asyncio.timeout(10):
                            while await device.receive() != marker:
                                pass
                    finally:
                        sender.cancel()
                        await asyncio.gather(sender, return_exceptions=True)
                    await device.send(b"ack " + marker)
                    async with asyncio.timeout(10):
                        while await gateway.receive() != b"ack " + marker:
                            pass
                finally:
                    await device.aclose()  # the device "dies"; the sim keeps running
                await gateway.send(b"while the device is away")
                await asyncio.sleep(0.02)
        finally:
            await gateway.aclose()


@pytest.mark.asyncio
async def test_symlinks_replace_stale_refuse_files_and_clean_up(tmp_path: Path) -> None:
    stale = tmp_path / "a"
    stale.symlink_to("/dev/pts/does-not-exist")
    sim = LineSim(stale, tmp_path / "b")
    async with sim:
        assert os.readlink(stale) == sim.device_a
        assert os.readlink(tmp_path / "b") == sim.device_b
        assert os.path.realpath(stale).startswith("/dev/pts/")
    assert not stale.exists() and not stale.is_symlink()
    assert not (tmp_path / "b").is_symlink()
    assert asyncio.all_tasks() == {asyncio.current_task()}

    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(TransportError):
        async with LineSim(tmp_path / "x", regular):
            pass
    assert regular.read_text() == "keep me"
    assert not (tmp_path / "x").is_symlink()


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        LineSim("a", "b", baud=0)
    with pytest.raises(ValueError):
        LineSim("a", "b", byte_error_rate=1.5)
    with pytest.raises(SystemExit):
        main(["--drop-rate", "2", "a", "b"])


def test_cli_runs_until_sigterm(tmp_path: Path) -> None:
    link_a, link_b = tmp_path / "A", tmp_path / "B"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from otaferry.transport.linesim import main; sys.exit(main(sys.argv[1:]))",
            "--baud",
            "115200",
            "--seed",
            "9",
            str(link_a),
            str(link_b),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        third = proc.stdout.readline()
        assert first.startswith(f"{link_a} -> /dev/pts/")
        assert second.startswith(f"{link_b} -> /dev/pts/")
        assert "seed 9" in third
        assert os.readlink(link_a) == first.split(" -> ")[1].strip()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "a->b: in 0" in err
    assert not link_a.is_symlink() and not link_b.is_symlink()
