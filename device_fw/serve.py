"""The device main loop on a port: read bytes, feed them to the sans-IO
:class:`~otaferry.device_fw.loop.StreamLoop`, write what it returns, run its
timer. "Power on" is starting it; SIGKILL is a power cut (every flash write is
already in the file), and starting it again resumes.

With ``lifecycle`` the loop behaves like a device across reboots: power-on runs
the bootloader and the app's self-test; after an update is installed (DONE) the
device resets into it; the new image, pending verify, waits for its check-in
answer and rolls back (resets to the previous image) when none comes in time.

The port is anything with ``read(n)`` (returning b"" after a short timeout)
and ``write(data)``: pyserial on CPython (``port.open_serial``), a UART
driver on a board. No threads, no asyncio.
"""

from .device import Device
from .flash import PowerCut
from .loop import LINK_PROLOGUE, StreamLoop, power_up
from .reasons import DeviceError

READ_SIZE = 512
DEFAULT_CHECKIN_TIMEOUT = 120.0
"""Seconds a new image waits for its update server's check-in answer before it
rolls back. ESP RainMaker waits 90 s for MQTT; a gateway that lost the channel
with the reset re-handshakes with a doubling timeout (0.5 s .. 32 s: 63.5 s for
seven tries) before it can answer, so 90 s leaves too little margin on a slow
line; 120 s covers that and a few LoRa round trips."""

__all__ = ["DEFAULT_CHECKIN_TIMEOUT", "LINK_PROLOGUE", "READ_SIZE", "serve"]


def monotonic_clock():
    """Seconds from a monotonic clock: ``time.monotonic`` on CPython, the
    millisecond ticks on MicroPython (which has no ``time.monotonic``)."""
    import time

    if hasattr(time, "monotonic"):
        return time.monotonic
    start = time.ticks_ms()

    def clock():
        return time.ticks_diff(time.ticks_ms(), start) / 1000.0

    return clock


def serve(flash_path, port, mtu=1024, clock=None, stop=None, on_event=None, lifecycle=False,
          self_test=True, checkin=True, checkin_timeout=DEFAULT_CHECKIN_TIMEOUT, reopen=None,
          open_device=None):
    """Serve one device until ``stop()`` returns True (forever by default).

    ``on_event(kind, detail)`` is told "ready" once the device is open, its
    flash held, and it listens; "boot" with the boot log after every power-on
    (``lifecycle``); "reset" with the reason before every reset; and the
    receiver's phase at every change. ``self_test``: the verdict of a pending
    image's self-test (False: it fails and rolls back). ``checkin``: False
    models a new image whose link driver is broken: it never answers the
    server, and rolls back when ``checkin_timeout`` passes. ``reopen()``: when
    the port fails (a USB adapter pulled, the other end gone), called for a new
    port (None: stop); the device keeps running meanwhile, as a board would.
    Without it a port error ends ``serve``. ``open_device()``: the Device at
    every power-on, for a platform other than the simulator's flash file
    (``flash_path`` is then unused).
    """
    if clock is None:
        clock = monotonic_clock()
    receiver = None
    while stop is None or not stop():
        device = Device(flash_path) if open_device is None else open_device()
        try:
            silent = power_up(device, lifecycle, self_test, checkin, on_event)
            loop = StreamLoop(device, mtu, on_event, checkin_timeout if lifecycle else None)
            receiver = loop.receiver
            if on_event is not None:
                on_event("ready", dict(loop.receiver.stats))
            hello = loop.start(clock())
            if hello and not silent:
                port.write(hello)
            while stop is None or not stop():
                deadline = loop.next_deadline()
                if deadline is not None and clock() >= deadline:
                    out = loop.tick(clock())
                    if out and not silent:
                        port.write(out)
                if lifecycle and loop.reset_requested is not None:
                    break
                try:
                    data = port.read(READ_SIZE)
                    if not data or silent:
                        continue  # a broken link driver hears nothing and says nothing
                    out = loop.feed(data, clock())
                    if out:
                        port.write(out)
                except Exception as exc:
                    if reopen is None or isinstance(exc, (DeviceError, PowerCut)):
                        raise
                    if on_event is not None:
                        on_event("port", {"error": str(exc)})
                    port = reopen()
                    if port is None:
                        return receiver
            else:
                return receiver
            if on_event is not None:
                on_event("reset", {"why": loop.reset_requested})
        finally:
            if receiver is not None:
                receiver.release()  # its buffers go before the next power-on's are made
            loop = None
            device.close()
    return receiver
