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
from .secure import OVERHEAD, SecureEndpoint

READ_SIZE = 512
# Bound into every handshake transcript; equal to transport/secure_link.PROLOGUE.
LINK_PROLOGUE = b"otaferry/link/v1"


def serve(flash_path, port, mtu=1024, clock=None, stop=None, on_event=None):
    """Serve one device until ``stop()`` returns True (forever by default).

    ``on_event(kind, detail)`` is told about sessions for logging: "ready"
    (the device is open, its flash held, and it listens), then "hello",
    "accept", "reject", "done", "bad_frames".
    """
    if clock is None:
        import time

        clock = time.monotonic
    device = Device(flash_path)
    try:
        endpoint = None
        if device.link_key() is not None:
            endpoint = SecureEndpoint(
                device.link_key(), device.gateways(), device.require_secure(), LINK_PROLOGUE
            )
            mtu -= OVERHEAD
        receiver = Receiver(device, mtu=mtu)
        decoder = framing.FrameDecoder(max_frame=mtu + (OVERHEAD if endpoint else 0))
        if endpoint is None or not endpoint.require_secure:
            for body in receiver.announce():
                port.write(framing.encode_frame(body))
        last_phase = receiver.phase
        if on_event is not None:
            on_event("ready", dict(receiver.stats))
        while stop is None or not stop():
            data = port.read(READ_SIZE)
            if not data:
                continue
            out = []
            for packet in decoder.feed(data):
                body = packet
                if endpoint is not None:
                    handshakes = endpoint.stats["handshakes"]
                    reply, body = endpoint.receive(packet)
                    if reply is not None:
                        out.append(reply)
                    if (
                        endpoint.stats["handshakes"] != handshakes
                        and endpoint.pending
                        and endpoint.channel is None
                    ):
                        # A new channel after a reset (none was running): say at once
                        # who we are and where we stand (session 0), so a sender whose
                        # session died with our power cut resumes now instead of after
                        # its backed-off timer. With a channel running, a MSG1 may be a
                        # replay or forgery: the session goes on untouched.
                        # Sealed: only the holder of the gateway static key can read it.
                        for hello in receiver.announce():
                            out.append(endpoint.pending.seal(hello))
                    if body is None:
                        continue
                for r in receiver.receive_frame(body, clock()):
                    out.append(endpoint.seal(r) if endpoint is not None else r)
            if out:
                port.write(b"".join(framing.encode_frame(r) for r in out))
            if on_event is not None and receiver.phase != last_phase:
                on_event(receiver.phase, dict(receiver.stats))
                last_phase = receiver.phase
    finally:
        device.close()
    return receiver
