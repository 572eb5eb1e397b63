"""The device behind its own LoRa modem on a UART (MicroPython subset).

The device's MCU talks to a REYAX RYLR998/896, a RAK3172 (P2P) or an Ebyte
E22/E32 over a UART; :class:`ModemLoop` drives it sans-IO around the
:class:`~otaferry.device_fw.loop.DeviceLoop`: bytes from the UART and the time
in, bytes for the UART out, one deadline. It configures the modem, feeds every
packet from the gateway to ``DeviceLoop.receive``, and sends the answers one
at a time (half duplex: the next only after the modem said the last one is
off the air) and no sooner than the region's duty cycle allows
(``T * (1/dc - 1)`` off after a packet of ``T`` seconds on the air).

The wire conventions are the host's (``protocol/modems.py``, which documents
them and each vendor's command set): REYAX data in base85 (RFC 1924
alphabet), RAK packets prefixed by destination and source bytes, E22 packets
framed with COBS + CRC-32 around ``source (2 bytes) || body``.
"""

import binascii

from . import framing
from .loop import DeviceLoop

B85 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~"
_B85_INDEX = {}
for _i, _c in enumerate(B85):
    _B85_INDEX[_c] = _i

BROADCAST = 0xFFFF
GATEWAY = 0

# (low Hz, high Hz, duty cycle): the EU868 sub-bands (ETSI EN 300 220-2).
EU868_BANDS = (
    (863000000, 865000000, 0.001),
    (865000000, 868000000, 0.01),
    (868000000, 868600000, 0.01),
    (868700000, 869200000, 0.001),
    (869400000, 869650000, 0.1),
    (869700000, 870000000, 0.01),
)


def b85encode(data):
    out = bytearray()
    n = len(data)
    for i in range(0, n, 4):
        chunk = bytes(data[i : i + 4])
        pad = 4 - len(chunk)
        word = int.from_bytes(chunk + bytes(pad), "big")
        digits = bytearray(5)
        for k in range(4, -1, -1):
            digits[k] = B85[word % 85]
            word //= 85
        out += digits[: 5 - pad]
    return bytes(out)


def b85decode(text):
    out = bytearray()
    n = len(text)
    for i in range(0, n, 5):
        chunk = text[i : i + 5]
        pad = 5 - len(chunk)
        word = 0
        for c in chunk:
            word = word * 85 + _B85_INDEX[c]  # KeyError: not base85
        for _ in range(pad):
            word = word * 85 + 84
        if word > 0xFFFFFFFF:
            raise ValueError("base85 group out of range")
        out += word.to_bytes(4, "big")[: 4 - pad]
    return bytes(out)


def time_on_air(n, sf, bw, cr, preamble=8):
    """Semtech's formula (explicit header, CRC on, LDRO when a symbol >= 16 ms)."""
    ts = (1 << sf) / bw
    de = 1 if ts >= 0.016 else 0
    bits = 8 * n - 4 * sf + 28 + 16
    div = 4 * (sf - 2 * de)
    blocks = -(-bits // div) if bits > 0 else 0
    return (preamble + 4.25) * ts + (8 + blocks * cr) * ts


CHECKIN_PACKETS = 12  # as protocol/lora.py: full frames of a check-in besides the HELLO


def checkin_timeout_for(radio, mtu, air_bytes, duty_cycle, time_scale=1.0, floor=120.0):
    """The check-in deadline a new image gets behind a modem (SPEC 8.7): the
    UART's ``floor`` plus the duty-cycle cycles of twice CHECKIN_PACKETS +
    ceil(1024 / mtu) full frames (``air_bytes`` on the air each). A fixed 120 s
    rolled back every update at SF9 and 1 %: the HELLO's parts alone wait
    minutes of off time."""
    sf, bw, cr, preamble = radio
    air = time_on_air(air_bytes, sf, bw, cr, preamble) * time_scale
    return floor + 2 * (CHECKIN_PACKETS + -(-1024 // mtu)) * air / duty_cycle


def duty_cycle_for(region, freq):
    if region == "US915":
        return 1.0
    for low, high, dc in EU868_BANDS:
        if low <= freq <= high:
            return dc
    raise ValueError("%d Hz is outside every EU868 sub-band" % freq)


class _Lines:
    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\n")
            if end < 0:
                if len(self.buf) > 1024:
                    self.buf = bytearray()
                return out
            line = bytes(self.buf[:end]).strip()
            self.buf = self.buf[end + 1 :]
            if line:
                out.append(line)


class ReyaxModem:
    """RYLR998 / RYLR896: AT+SEND / +OK / +RCV, data in base85."""

    mtu = 192
    answers = ("ok",)
    BANDWIDTHS = {125000: 7, 250000: 8, 500000: 9}

    def __init__(self):
        self.lines = _Lines()

    def setup(self, address, freq, sf, bw, cr, preamble):
        return [
            b"AT+ADDRESS=%d\r\n" % address,
            b"AT+NETWORKID=18\r\n",
            b"AT+BAND=%d\r\n" % freq,
            b"AT+PARAMETER=%d,%d,%d,%d\r\n" % (sf, self.BANDWIDTHS[bw], cr - 4, preamble),
        ]

    def after_send(self):
        return []

    def air_size(self, n):
        return 5 * (n // 4) + (n % 4 + 1 if n % 4 else 0) + 8

    def encode(self, dest, body):
        data = b85encode(body)
        return b"AT+SEND=%d,%d,%s\r\n" % (dest, len(data), data)

    def feed(self, data):
        out = []
        for line in self.lines.feed(data):
            if line == b"+OK":
                out.append(("ok",))
            elif line.startswith(b"+ERR="):
                out.append(("err", line[5:]))
            elif line.startswith(b"+RCV="):
                try:
                    addr, length, tail = line[5:].split(b",", 2)
                    n = int(length)
                    out.append(("rx", int(addr), b85decode(tail[:n])))
                except (ValueError, KeyError):
                    pass  # a damaged line loses its packet
        return out


class RakModem:
    """RAK3172 in LoRa P2P: AT+PSEND=<hex> / OK / +EVT:TXP2P DONE / +EVT:RXP2P."""

    mtu = 248
    answers = ("ok", "done")

    def __init__(self):
        self.lines = _Lines()
        self.address = 0

    def setup(self, address, freq, sf, bw, cr, preamble):
        self.address = address
        return [
            b"AT+NWM=0\r\n",
            b"AT+P2P=%d:%d:%d:%d:%d:14\r\n" % (freq, sf, bw // 1000, cr - 5, preamble),
            b"AT+PRECV=65533\r\n",  # RX, TX still allowed (65534: RX only)
        ]

    def after_send(self):
        return [b"AT+PRECV=65533\r\n"]  # re-armed after every TX (idempotent)

    def air_size(self, n):
        return n + 2

    def encode(self, dest, body):
        dst = 0xFF if dest == BROADCAST else dest
        packet = bytes([dst, self.address]) + body
        return b"AT+PSEND=" + binascii.hexlify(packet).upper() + b"\r\n"

    def feed(self, data):
        out = []
        for line in self.lines.feed(data):
            if line == b"OK":
                out.append(("ok",))
            elif line == b"+EVT:TXP2P DONE":
                out.append(("done",))
            elif line.startswith(b"AT_") and line.endswith(b"ERROR"):
                out.append(("err", line))
            elif line.startswith(b"+EVT:RXP2P:"):
                try:
                    packet = binascii.unhexlify(line[11:].split(b":", 2)[2])
                except (ValueError, IndexError):
                    continue
                if len(packet) > 2 and packet[0] in (self.address, 0xFF):
                    out.append(("rx", packet[1], packet[2:]))
        return out


class EbyteModem:
    """E22 / E32 in fixed transmission: ADDH ADDL CHAN + a COBS/CRC frame."""

    answers = ()

    def __init__(self, sub_packet=240, channel=0x12):
        self.channel = channel
        self.address = 0
        n = sub_packet
        while framing.max_wire_size(n + 2) > sub_packet:
            n -= 1
        self.mtu = n
        self.decoder = framing.FrameDecoder(max_frame=n + 2)

    def setup(self, address, freq, sf, bw, cr, preamble):
        self.address = address
        return []  # the module is configured beforehand (M0/M1 configuration mode)

    def after_send(self):
        return []

    def air_size(self, n):
        return framing.max_wire_size(n + 2)

    def encode(self, dest, body):
        head = bytes([(dest >> 8) & 0xFF, dest & 0xFF, self.channel])
        return head + framing.encode_frame(self.address.to_bytes(2, "big") + body)

    def feed(self, data):
        out = []
        for frame in self.decoder.feed(data):
            if len(frame) > 2:
                out.append(("rx", int.from_bytes(frame[:2], "big"), frame[2:]))
        return out


def modem_for(kind):
    if kind in ("rylr998", "rylr896"):
        return ReyaxModem()
    if kind == "rak3172":
        return RakModem()
    if kind == "e22":
        return EbyteModem()
    if kind == "e32":
        return EbyteModem(58)
    raise ValueError("unknown modem %r" % kind)


class ModemLoop:
    """A :class:`DeviceLoop` behind a LoRa modem (see the module docstring).

    ``radio``: (sf, bw Hz, cr 5..8, preamble, freq Hz, region name).
    ``time_scale`` < 1 only against an emulator running faster than the air.
    """

    COMMAND_TIMEOUT = 2.0

    def __init__(
        self,
        device,
        kind,
        address,
        radio,
        mtu=None,
        on_event=None,
        time_scale=1.0,
        duty_cycle=None,
        gateway=GATEWAY,
        checkin_timeout=None,
        off_until=0.0,
    ):
        self.modem = modem_for(kind)
        self.address = address
        self.gateway = gateway
        sf, bw, cr, preamble, freq, region = radio
        self.radio = (sf, bw, cr, preamble)
        self.duty_cycle = duty_cycle_for(region, freq) if duty_cycle is None else duty_cycle
        self.dwell = 0.4 if region == "US915" else None
        self.time_scale = time_scale
        size = self.modem.mtu if mtu is None else min(mtu, self.modem.mtu)
        if self.dwell is not None:
            while (
                size > 1
                and time_on_air(self.modem.air_size(size), sf, bw, cr, preamble) > self.dwell
            ):
                size -= 1
        self.mtu = size
        if checkin_timeout == "air":  # derived from this air (the default of serve_modem)
            checkin_timeout = checkin_timeout_for(
                self.radio, size, self.modem.air_size(size), self.duty_cycle, time_scale
            )
        self.checkin_timeout = checkin_timeout
        self.loop = DeviceLoop(device, size, on_event, checkin_timeout)
        self.commands = self.modem.setup(address, freq, sf, bw, cr, preamble)
        self.outbox = []  # packets for the gateway, in order
        self.waiting = []  # answers the modem still owes for the command in flight
        self.wait_until = None  # E22: the packet's air time; commands: a timeout
        # The radio's duty-cycle off time outlives a reset of the MCU: a loop made
        # after one is given the last loop's (a board keeps it in RTC memory, or
        # waits one full frame's off time after power-on).
        self.off_until = off_until
        self.last_air = 0.0
        self.started = False
        self.announced = []  # the unasked HELLO of power-on, while unsent
        self.stats = {"rx": 0, "tx": 0, "modem_errors": 0, "foreign": 0}

    @property
    def receiver(self):
        return self.loop.receiver

    def airtime(self, n):
        sf, bw, cr, preamble = self.radio
        return time_on_air(self.modem.air_size(n), sf, bw, cr, preamble) * self.time_scale

    def start(self, now):
        """Bytes to write at power-on (the first setup command)."""
        return self._pump(now)

    @property
    def reset_requested(self):
        """The device's reason to reset, once everything it had to say is on the air."""
        if self.outbox or self.waiting or self.wait_until is not None:
            return None
        return self.loop.reset_requested

    def next_deadline(self):
        own = None
        if self.waiting or self.wait_until is not None:
            own = self.wait_until
        elif self.outbox or self.commands:
            own = max(self.off_until, 0.0)
        inner = self.loop.next_deadline()
        if own is None or inner is None:
            return own if inner is None else inner
        return min(own, inner)

    def tick(self, now):
        self.outbox.extend(self.loop.tick(now))
        if self.wait_until is not None and now >= self.wait_until:
            if self.waiting:  # the modem never answered: go on, count it
                self.stats["modem_errors"] += 1
                self.waiting = []
            self._sent(now)
        return self._pump(now)

    def feed(self, data, now):
        """Bytes from the modem's UART in; bytes for it out."""
        for event in self.modem.feed(data):
            kind = event[0]
            if kind == "rx":
                if event[1] != self.gateway:
                    self.stats["foreign"] += 1  # another device's answer (REYAX 0 = all)
                    continue
                self.stats["rx"] += 1
                if self.announced:
                    # The gateway talks to us: what is left of the boot announcement
                    # is stale, and at 1 % each part would hold the answers up for
                    # a minute of off time.
                    self.outbox = [p for p in self.outbox if p not in self.announced]
                    self.announced = []
                replies = self.loop.receive(event[2], now)
                if len(replies) > 1 and replies[0][:1] == b"\xe2":
                    self.announced = replies[1:]  # MSG2, then the HELLO of a new boot
                self.outbox.extend(replies)
            elif kind == "err":
                self.stats["modem_errors"] += 1
                self.waiting = []
                self._sent(now)
            elif self.waiting and kind == self.waiting[0]:
                self.waiting.pop(0)
                if not self.waiting:
                    self._sent(now)
        return self._pump(now)

    def _sent(self, now):
        """The command (or packet) in flight is finished."""
        was_packet = self.wait_until is not None and self.last_air > 0
        self.wait_until = None
        if was_packet:
            self.off_until = now + self.last_air * (1 / self.duty_cycle - 1)
            self.last_air = 0.0
            self.commands.extend(self.modem.after_send())

    def _pump(self, now):
        if self.waiting or self.wait_until is not None:
            return b""
        if self.commands:
            command = self.commands.pop(0)
            self.waiting = ["ok"]
            self.wait_until = now + self.COMMAND_TIMEOUT
            self.last_air = 0.0
            return command
        if not self.started:
            self.started = True
            self.announced = list(self.loop.start(now))
            self.outbox.extend(self.announced)
        if not self.outbox or now < self.off_until:
            return b""
        packet = self.outbox.pop(0)
        self.stats["tx"] += 1
        air = self.airtime(len(packet))
        self.last_air = air
        self.waiting = list(self.modem.answers)
        # E22: no answer; its air time (and the 3-byte-time gap that ends a packet).
        self.wait_until = now + (
            self.COMMAND_TIMEOUT + 4 * air + 1.0 if self.waiting else max(air, 0.005)
        )
        return self.modem.encode(self.gateway, packet)


def serve_modem(
    flash_path,
    port,
    kind,
    address,
    radio,
    mtu=None,
    clock=None,
    stop=None,
    on_event=None,
    time_scale=1.0,
    duty_cycle=None,
    lifecycle=False,
    self_test=True,
    checkin=True,
    checkin_timeout="air",
    open_device=None,
):
    """Serve one device behind its modem until ``stop()`` returns True.

    ``port``: ``read(n)`` (b"" after a short timeout) and ``write(data)``.
    ``lifecycle``, ``self_test``, ``checkin``, ``checkin_timeout``: as for
    ``serve.serve`` (the device resets into an installed update, and a new
    image that sees no check-in answer in time rolls back); ``"air"`` (the
    default) derives the deadline from the radio settings and the duty cycle
    (``checkin_timeout_for``). ``open_device()``: the Device at every
    power-on, as for ``serve.serve`` (a MicroPython port's, device_fw/mp_run.py).
    """
    from .device import Device
    from .loop import power_up
    from .serve import monotonic_clock

    if clock is None:
        clock = monotonic_clock()  # MicroPython has no time.monotonic
    loop = None
    while stop is None or not stop():
        device = Device(flash_path) if open_device is None else open_device()
        try:
            silent = power_up(device, lifecycle, self_test, checkin, on_event)
            loop = ModemLoop(device, kind, address, radio, mtu, on_event, time_scale, duty_cycle,
                             checkin_timeout=checkin_timeout if lifecycle else None,
                             off_until=0.0 if loop is None else loop.off_until)  # fmt: skip
            if on_event is not None:
                on_event("ready", dict(loop.receiver.stats))
            out = loop.start(clock())
            while stop is None or not stop():
                if out:
                    port.write(out)
                if lifecycle and loop.reset_requested is not None:
                    break
                deadline = loop.next_deadline()
                if deadline is not None and hasattr(port, "timeout"):
                    # Wake for the deadline (a duty-cycle off time ending), not later.
                    port.timeout = min(0.05, max(0.001, deadline - clock()))
                data = port.read(512)
                now = clock()
                if silent:  # a broken link driver: the modem's words go unread
                    data = b""
                out = loop.feed(data, now) if data else b""
                deadline = loop.next_deadline()
                if not out and deadline is not None and now >= deadline:
                    out = loop.tick(now)
            else:
                return loop
            if on_event is not None:
                on_event("reset", {"why": loop.reset_requested})
        finally:
            if loop is not None:
                loop.receiver.release()  # its buffers go before the next power-on's are made
            device.close()
    return loop
