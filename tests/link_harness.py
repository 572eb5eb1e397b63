"""A device's main loop (``serve()``) in a thread behind a queue "port", and a
gateway Link on the other end: fast link tests where a device reset is
stopping the thread and starting a new one on the same flash file."""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading

from otaferry.device_fw.device import Device
from otaferry.device_fw.serve import serve
from otaferry.protocol.artifact import build_full
from otaferry.protocol.errors import ClosedError
from otaferry.protocol.framing import FrameDecoder, encode_frame
from otaferry.protocol.keys import SigningKey
from otaferry.protocol.x25519keys import LinkPrivateKey, LinkPublicKey
from otaferry.transport.link import FrameInbox, Link, check_frame

KEY = SigningKey.from_seed(hashlib.sha256(b"review").digest())
GATEWAY = LinkPrivateKey.from_raw(hashlib.sha256(b"review gw").digest())


def image(n_kib: int = 64, salt: bytes = b"") -> bytes:
    out = b"".join(
        hashlib.sha256(salt + i.to_bytes(4, "little")).digest()[:6] + bytes(26)
        for i in range(n_kib * 32)
    )
    return out


def make_flash(path: str, img: bytes) -> str:
    Device.create(
        path,
        hw="hw",
        chip="chip",
        trusted_keys=[KEY.public.raw],
        image=img,
        version="old",
        gateways=[GATEWAY.public.raw],
    ).close()
    return path


def device_public(path: str) -> LinkPublicKey:
    with Device(path, read_only=True) as d:  # a serving thread may hold the flash
        return LinkPublicKey.from_raw(d.link_public())


def full(img: bytes, counter: int = 1) -> bytes:
    return build_full(img, KEY, hw=["hw"], chip="chip", version="new", security_counter=counter)


class DevicePort:
    def __init__(self) -> None:
        self.inq: queue.Queue[bytes] = queue.Queue()
        self.on_write = None
        self._early: list[bytes] = []  # written before a link attached (the power-on HELLO)
        self._lock = threading.Lock()

    def attach(self, on_write) -> None:
        with self._lock:
            self.on_write = on_write
            early, self._early = self._early, []
        for data in early:
            on_write(data)

    def read(self, n):
        try:
            return self.inq.get(timeout=0.005)
        except queue.Empty:
            return b""

    def write(self, data):
        with self._lock:
            if self.on_write is None:  # the device thread may speak before the link exists
                self._early.append(data)
                return
        self.on_write(data)


class DeviceThread:
    """serve() on a flash file; reset() = power cut between flash ops + restart."""

    def __init__(self, flash: str, port: DevicePort, mtu: int = 1024) -> None:
        self.flash, self.port, self.mtu = flash, port, mtu
        self.thread = None
        self.stop = threading.Event()

    def start(self):
        self.stop = threading.Event()
        stop = self.stop
        self.thread = threading.Thread(
            target=serve,
            args=(self.flash, self.port),
            kwargs=dict(mtu=self.mtu, stop=stop.is_set),
            daemon=True,
        )
        self.thread.start()

    def halt(self):
        self.stop.set()
        self.thread.join(5)
        # drop whatever was on the wire to the dead device
        while not self.port.inq.empty():
            self.port.inq.get_nowait()

    def reset(self):
        self.halt()
        self.start()


class ThreadLink(Link):
    def __init__(self, port: DevicePort, mtu: int = 1024) -> None:
        self._mtu = mtu
        self.port = port
        self.inbox = FrameInbox()
        self.decoder = FrameDecoder(max_frame=mtu)
        loop = asyncio.get_running_loop()
        port.attach(lambda data: loop.call_soon_threadsafe(self._feed, data))
        self.closed = False

    def _feed(self, data):
        for f in self.decoder.feed(data):
            self.inbox.put(f)

    @property
    def mtu(self):
        return self._mtu

    async def send(self, frame):
        if self.closed:
            raise ClosedError("closed")
        self.port.inq.put(encode_frame(check_frame(frame, self._mtu)))
        await asyncio.sleep(0)

    async def receive(self):
        return await self.inbox.get()

    async def aclose(self):
        self.closed = True
        self.inbox.fail(lambda: ClosedError("closed"), drain=False)
