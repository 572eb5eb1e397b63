"""The device main loop on a port: read bytes, feed them to the sans-IO
:class:`~otaferry.device_fw.loop.StreamLoop`, write what it returns. "Power on"
is starting it; SIGKILL is a power cut (every flash write is already in the
file), and starting it again resumes.

The port is anything with ``read(n)`` (returning b"" after a short timeout)
and ``write(data)``: pyserial on CPython (``port.open_serial``), a UART
driver on a board. No threads, no asyncio; the clock only stamps frames.
"""

from .device import Device
from .loop import LINK_PROLOGUE, StreamLoop

READ_SIZE = 512

__all__ = ["LINK_PROLOGUE", "READ_SIZE", "serve"]


def serve(flash_path, port, mtu=1024, clock=None, stop=None, on_event=None):
    """Serve one device until ``stop()`` returns True (forever by default).

    ``on_event(kind, detail)`` is told "ready" once the device is open, its
    flash held, and it listens; then the receiver's phase at every change.
    """
    if clock is None:
        import time

        clock = time.monotonic
    device = Device(flash_path)
    try:
        loop = StreamLoop(device, mtu, on_event)
        if on_event is not None:
            on_event("ready", dict(loop.receiver.stats))
        hello = loop.start()
        if hello:
            port.write(hello)
        while stop is None or not stop():
            data = port.read(READ_SIZE)
            if not data:
                continue
            out = loop.feed(data, clock())
            if out:
                port.write(out)
    finally:
        device.close()
    return loop.receiver
