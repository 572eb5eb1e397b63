"""The device main loop: read bytes from the port, feed frames to the Receiver,
write its replies. "Power on" is starting it; SIGKILL is a power cut (every
flash write is already in the file), and starting it again resumes.

The port is anything with ``read(n)`` (returning b"" after a short timeout)
and ``write(data)``: pyserial on CPython (``port.open_serial``), a UART
driver on a board. The loop itself needs no threads, no asyncio and no clock
beyond ``now`` for the receiver's bookkeeping.
"""

from . import framing
from .device import Device
from .receiver import Receiver

READ_SIZE = 512


def serve(flash_path, port, mtu=1024, clock=None, stop=None, on_event=None):
    """Serve one device until ``stop()`` returns True (forever by default).

    ``on_event(kind, detail)`` is told about sessions for logging: "hello",
    "accept", "reject", "done", "bad_frames".
    """
    if clock is None:
        import time

        clock = time.monotonic
    device = Device(flash_path)
    receiver = Receiver(device, mtu=mtu)
    decoder = framing.FrameDecoder(max_frame=mtu)
    try:
        for body in receiver.announce():
            port.write(framing.encode_frame(body))
        last_phase = receiver.phase
        while stop is None or not stop():
            data = port.read(READ_SIZE)
            if not data:
                continue
            for body in decoder.feed(data):
                replies = receiver.receive_frame(body, clock())
                if replies:
                    port.write(b"".join(framing.encode_frame(r) for r in replies))
            if on_event is not None and receiver.phase != last_phase:
                on_event(receiver.phase, dict(receiver.stats))
                last_phase = receiver.phase
    finally:
        device.close()
    return receiver
