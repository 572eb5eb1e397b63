"""Sessions recorded against the CPython device, for replay into device_fw
under the real ``micropython`` command (tests/test_micropython.py).

A session is recorded with the device's main loop (``serve``) in a thread and
the host's Updater on the other end (link_harness), with the device's
randomness made a seeded stream (``mp_run.drbg``) and its codec list the one a
MicroPython port announces (no zstd), so that the MicroPython device, fed the
same bytes from a copy of the same flash, must answer byte for byte the same.
The clock of the k-th feed is k in both (``mp_run.cmd_replay``).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

from link_harness import GATEWAY, DevicePort, ThreadLink, device_public
from otaferry.device_fw import codecs, port
from otaferry.device_fw.mp_run import drbg
from otaferry.device_fw.serve import serve
from otaferry.protocol.errors import OtaferryError
from otaferry.transport.secure_link import SecureLink
from otaferry.transport.updater import PushOptions, Updater

SEED = "5eed"


class RecordingPort(DevicePort):
    def __init__(self) -> None:
        super().__init__()
        self.fed: list[bytes] = []
        self.replies: list[bytes] = [b""]  # index 0: what the device said at power-on

    def read(self, n):
        data = super().read(n)
        if data:
            self.fed.append(data)
            self.replies.append(b"")
        return data

    def write(self, data):
        self.replies[-1] += data
        super().write(data)


def _records(items: list[bytes]) -> bytes:
    return b"".join(len(x).to_bytes(4, "little") + x for x in items)


def parse_records(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos : pos + 4], "little")
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


async def record(flash: str, artifact: bytes, secure: bool, workdir: Path) -> dict:
    """Push ``artifact`` to the CPython device on ``flash``; returns the paths of
    the untouched flash copy, the fed chunks and the device's replies."""
    before = workdir / "before.bin"
    shutil.copy(flash, before)
    saved_random, saved_full = port.random_bytes, dict(codecs.FULL)
    port.random_bytes = drbg(bytes.fromhex(SEED))
    codecs.FULL.pop(codecs.ZSTD, None)
    feeds = [0]

    def clock() -> float:  # start() is 0, the k-th feed is k (serve calls it once per feed)
        t = float(feeds[0])
        feeds[0] += 1
        return t

    p = RecordingPort()
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(flash, p),
                              kwargs=dict(stop=stop.is_set, clock=clock), daemon=True)  # fmt: skip
    thread.start()
    error = None
    try:
        link = ThreadLink(p)
        if secure:
            link = await SecureLink.connect(link, GATEWAY, device_public(flash), rto=0.5)
        up = Updater(link, PushOptions(rto=0.5, max_retries=10, await_checkin=False))
        try:
            async for _ev in up.events(artifact):
                pass
        except OtaferryError as exc:  # the device refused: what it said is recorded too
            error = exc
        await asyncio.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)
        port.random_bytes = saved_random
        codecs.FULL.clear()
        codecs.FULL.update(saved_full)
    fed = workdir / "fed.bin"
    fed.write_bytes(_records(p.fed))
    return {"before": str(before), "fed": str(fed), "replies": p.replies, "error": error}
