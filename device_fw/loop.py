"""The device's main loop, sans-IO: packets (or bytes) and time in, packets
(or bytes) out, and the next deadline.

:class:`DeviceLoop` holds the device's whole link-side state: the secure
endpoint (when the device has a link key) and the :class:`Receiver`. It does
no I/O and reads no clock, so the same loop runs behind a UART (bytes framed
with COBS + CRC: :class:`StreamLoop`), a LoRa modem (one packet per radio
frame) or MQTT (one packet per message): the port code around it only moves
bytes and passes ``now``.

    loop = DeviceLoop(device, mtu=1024)
    out = loop.start()                       # what to say at power-on
    ...
    out = loop.receive(packet, now)          # for every packet the medium delivers
    deadline = loop.next_deadline()          # None: nothing to do until a packet
"""

import gc

from . import frames as F
from . import framing
from . import reasons as R
from .receiver import DONE, Receiver

# Bound into every handshake transcript; equal to transport/secure_link.PROLOGUE.
LINK_PROLOGUE = b"otaferry/link/v1"


class DeviceLoop:
    """One device's link side: secure endpoint + receiver (see the module docstring).

    ``mtu``: the largest packet the medium carries; with a secure endpoint the
    receiver's frames are ``OVERHEAD`` bytes smaller. ``on_event(phase, stats)``
    is told when the receiver's phase changes (for logging).
    """

    def __init__(self, device, mtu=1024, on_event=None, checkin_timeout=None):
        self.device = device
        self.checkin_timeout = checkin_timeout
        self.checkin_deadline = None
        self.reset_requested = None  # why the device wants to reset, once it does
        self.packet_mtu = mtu
        self.endpoint = None
        if device.link_key() is not None:
            # imported only by a device with a link key: a plaintext-only device
            # never holds the channel's code (device_fw/mpcrypto's curve, AES, CCM)
            from .secure import OVERHEAD, SecureEndpoint

            self.endpoint = SecureEndpoint(
                device.link_key(), device.gateways(), device.require_secure(), LINK_PROLOGUE
            )
            mtu -= OVERHEAD
        self.receiver = Receiver(device, mtu=mtu)
        if self.endpoint is not None:
            self.receiver.extra_features = F.FEATURE_RESUME  # SPEC 8.9
        self._announced = False  # the sealed HELLO after the boot's first handshake
        self.on_event = on_event
        self._phase = self.receiver.phase

    def start(self, now=0.0):
        """Packets to send at power-on: the HELLO of a device that may speak in
        plaintext (a device that requires the channel says nothing unasked).
        A running image that awaits its check-in arms its deadline now."""
        if self.checkin_timeout is not None and self.device.pending_checkin() is not None:
            self.checkin_deadline = now + self.checkin_timeout
        resumed = self._resume()
        if resumed:
            return resumed
        if self.endpoint is None or not self.endpoint.require_secure:
            return list(self.receiver.announce())
        return []

    def _resume(self):
        """SPEC 8.9 / 9.11: a pending image whose update left a resumption secret
        checks in at once, on a channel resumed from it (no handshake): [RESUME]."""
        if self.endpoint is None:
            return []
        record = self.device.take_resume()  # single use: erased before anything is sent
        pending = self.device.pending_checkin()
        if record is None or pending is None:
            return []
        body = F.checkin(pending["uid"], pending["nonce"])
        return [self.endpoint.resume(record["secret"], pending["nonce"], record["gateway"], body)]

    def _keep_resumption(self):
        """DONE is about to go: keep this channel's resumption secret for the
        reboot, if the session asked for it (OfferBlob flag RESUME)."""
        endpoint = self.endpoint
        receiver = self.receiver
        if (
            endpoint is None
            or endpoint.channel is None
            or endpoint.channel.resume_key is None
            or not receiver.offer_flags & F.OFFER_RESUME
            or receiver.update_id is None
        ):
            return
        from .secure import resumption_secret

        uid = receiver.update_id
        secret = resumption_secret(endpoint.channel.resume_key, uid)
        self.device.save_resume(uid, secret, endpoint.gateway)

    def next_deadline(self):
        """When :meth:`tick` has work to do; None: only packets wake the device."""
        if self.reset_requested is not None:
            return None
        return self.checkin_deadline

    def tick(self, now):
        """Run the timers: a pending image that saw no check-in answer by its
        deadline gives up (CHECKIN_TIMEOUT, marked INVALID) and asks for a reset,
        so the bootloader returns to the previous image."""
        deadline = self.checkin_deadline
        if deadline is not None and now >= deadline and self.reset_requested is None:
            self.checkin_deadline = None
            if self.device.pending_checkin() is not None:
                self.device.abandon_running(R.CHECKIN_TIMEOUT)
                self.reset_requested = "no check-in answer in %ds: rolling back" % (
                    self.checkin_timeout or 0
                )
        return []

    def receive(self, packet, now):
        """Feed one packet; return the packets to send back, in order.

        Out of memory (a MicroPython heap too split for this packet's objects)
        loses the packet or its replies, as a lossy medium would: the sender
        repeats. Inside a session the receiver makes it an ABORT first."""
        out = []
        try:
            self._receive(packet, now, out)
        except MemoryError:
            gc.collect()
        return out

    def _receive(self, packet, now, out):
        body = packet
        endpoint = self.endpoint
        if endpoint is not None:
            handshakes = endpoint.stats["handshakes"]
            reply, body = endpoint.receive(packet, now)
            if reply is not None:
                out.append(reply)
            if (
                endpoint.stats["handshakes"] != handshakes
                and endpoint.pending
                and endpoint.channel is None
                and not self._announced
            ):
                # Once per boot: later handshakes with no channel may be forged
                # MSG1s, and a HELLO for each would make the device answer
                # several bytes for every byte an attacker sends.
                self._announced = True
                # A new channel after a reset (none was running): say at once who
                # we are and where we stand (session 0), so a sender whose session
                # died with our power cut resumes now instead of after its
                # backed-off timer. With a channel running, a MSG1 may be a replay
                # or forgery: the session goes on untouched. Sealed: only the
                # holder of the gateway static key can read it.
                for hello in self.receiver.announce():
                    out.append(endpoint.pending.seal(hello))
            if body is None:
                return
        for r in self.receiver.receive_frame(body, now):
            out.append(endpoint.seal(r) if endpoint is not None else r)
        if self.receiver.confirmed:
            self.checkin_deadline = None
        if self.receiver.phase == DONE and self.reset_requested is None:
            # Installed, verified, boot selected: the app resets into the new image.
            self._keep_resumption()
            self.reset_requested = "update installed: resetting into it"
        if self.on_event is not None and self.receiver.phase != self._phase:
            self._phase = self.receiver.phase
            self.on_event(self._phase, dict(self.receiver.stats))


class StreamLoop:
    """A :class:`DeviceLoop` behind a byte stream (a UART): COBS + CRC-32 framing."""

    def __init__(self, device, mtu=1024, on_event=None, checkin_timeout=None):
        self.loop = DeviceLoop(device, mtu, on_event, checkin_timeout)
        self.decoder = framing.FrameDecoder(max_frame=mtu)

    @property
    def receiver(self):
        return self.loop.receiver

    @property
    def reset_requested(self):
        return self.loop.reset_requested

    def start(self, now=0.0):
        return self._wire(self.loop.start(now))

    def next_deadline(self):
        return self.loop.next_deadline()

    def tick(self, now):
        return self._wire(self.loop.tick(now))

    def feed(self, data, now):
        """Bytes from the port in; bytes for the port out (b"" for none)."""
        out = []
        try:
            packets = self.decoder.feed(data)
        except MemoryError:  # the frame being read is lost (the sender repeats it)
            self.decoder.reset()
            return b""
        for packet in packets:
            out.extend(self.loop.receive(packet, now))
        return self._wire(out)

    def _wire(self, packets):
        try:
            return b"".join(framing.encode_frame(p) for p in packets)
        except MemoryError:  # these replies are lost, as on a lossy line
            gc.collect()
            return b""


def power_up(device, lifecycle, self_test, checkin, on_event):
    """Power-on of a device that lives across reboots (``lifecycle``): the
    bootloader and the app's self-test, told to ``on_event("boot", result)``.
    Returns True when the booted image must stay silent (``checkin`` False: a
    new image whose link driver is broken never answers its server)."""
    if not lifecycle:
        return False
    boot = device.power_on(self_test=self_test, checkin=True)
    if on_event is not None:
        on_event("boot", boot)
    return not checkin and device.pending_checkin() is not None

