"""Serial protocols of LoRa modems, host side, sans-IO.

Each codec turns "send this frame body to that address" into the bytes a
gateway writes to its modem's UART, and the bytes the modem writes back into
events (:class:`Received`, :class:`Ok`, :class:`Failed`, :class:`TxDone`). It
reads no port and no clock: ``transport/lora_hub.py`` moves the bytes and
waits. The command sets follow the vendors' manuals:

- **REYAX RYLR998 / RYLR896** (REYAX "LoRa AT Command Guide"): ``AT+SEND=<addr>,
  <len>,<data>`` answered ``+OK`` once sent or ``+ERR=<n>``; unsolicited
  ``+RCV=<addr>,<len>,<data>,<rssi>,<snr>``; setup with ``AT+ADDRESS``,
  ``AT+NETWORKID``, ``AT+BAND``, ``AT+PARAMETER=<sf>,<bw>,<cr>,<preamble>``,
  ``AT+CPIN``. The modem takes ASCII data only, at most 240 characters, and
  puts those characters on the air plus 8 bytes of its own (the guide says the
  payload grows by 8 bytes). Encoding: **base85** (RFC 1924 alphabet, Python's
  ``base64.b85encode``): 5 characters per 4 bytes, so 192 body bytes fit the
  240 characters and each costs 1.25 bytes of air — base64 would give 180 at
  1.33, hex 120 at 2.0. The alphabet has no ``,``, CR or LF, so a ``+RCV``
  line splits unambiguously, and the receiver also knows the length.
- **RAK3172 (RUI3) in LoRa P2P**: ``AT+NWM=0``, ``AT+P2P=<freq>:<sf>:<bw>:<cr>:
  <preamble>:<power>``, ``AT+PRECV=65533`` (listen, and still allow TX: RUI3
  3.4.0's release notes; with ``65534`` the module stays in RX "until
  AT+PRECV=0" and takes no ``AT+PSEND``),
  ``AT+PSEND=<hex>`` (1..250 bytes) answered ``OK`` and, once on the air,
  ``+EVT:TXP2P DONE``; sending ends the listening, so RX is re-armed after
  each TX (a packet that arrives before that is lost); received packets as
  ``+EVT:RXP2P:<rssi>:<snr>:<hex>``; errors ``AT_ERROR``, ``AT_PARAM_ERROR``,
  ``AT_BUSY_ERROR``. P2P has no addresses, so each packet starts with two bytes:
  destination, source.
- **Ebyte E22 / E32 in fixed transmission**: the host writes ``ADDH ADDL CHAN``
  and the data; the module sends the data to that address (0xFFFF:
  broadcast) and the receiving module prints only the data. There are no
  message boundaries on its UART and no source address, so each packet is a
  self-delimiting frame (``protocol/framing.py``: COBS + CRC-32) of
  ``source (2 bytes) || body``, and each fits one sub-packet (E22: 240, 128, 64
  or 32 bytes; E32: 58), so the module never splits one. The module's air
  settings are set beforehand (M0/M1 configuration mode), not over this link.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import ClassVar

from .framing import FrameDecoder, encode_frame, max_wire_size
from .lora import LoRaParams

__all__ = [
    "MODEMS",
    "E22Codec",
    "Failed",
    "ModemCodec",
    "ModemEvent",
    "Ok",
    "RAKCodec",
    "Received",
    "ReyaxCodec",
    "TxDone",
    "b85_size",
    "codec_for",
]

BROADCAST = 0xFFFF


@dataclass(frozen=True, slots=True)
class Received:
    source: int
    body: bytes
    rssi: int = 0
    snr: int = 0


@dataclass(frozen=True, slots=True)
class Ok:
    pass


@dataclass(frozen=True, slots=True)
class TxDone:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    code: str


ModemEvent = Received | Ok | TxDone | Failed


def b85_size(n: int) -> int:
    """Characters of ``base64.b85encode`` (unpadded) for ``n`` bytes."""
    return 5 * (n // 4) + (n % 4 + 1 if n % 4 else 0)


class _Lines:
    """CR LF terminated lines out of a byte stream (bounded: a line longer than
    ``limit`` is noise and is dropped)."""

    def __init__(self, limit: int = 1024) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self._limit:
                    self._buf.clear()
                return out
            line = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[: end + 1]
            if line:
                out.append(line)


class ModemCodec:
    """What every modem codec offers (see the module docstring)."""

    name = "modem"
    max_mtu = 0
    # The answers that end a send, in order (REYAX: +OK once on the air; RAK: OK,
    # then +EVT:TXP2P DONE); none: only its air time ends it (E22 says nothing).
    send_answers: tuple[type[Ok] | type[TxDone], ...] = (Ok,)
    idle_gap = 0.0

    def setup(self, params: LoRaParams, freq_hz: int, address: int) -> list[bytes]:
        """Commands that configure the modem, each answered OK (or FAILED)."""
        return []

    def before_send(self) -> list[bytes]:
        """Commands to send (each answered OK) before a send command."""
        return []

    def after_send(self) -> list[bytes]:
        return []

    def encode_send(self, dest: int, body: bytes) -> bytes:
        raise NotImplementedError

    def wire_size(self, n: int) -> int:
        """Payload bytes on the air for a body of ``n`` bytes."""
        raise NotImplementedError

    def feed(self, data: bytes) -> list[ModemEvent]:
        raise NotImplementedError

    def mtu_for(self, wanted: int | None) -> int:
        return self.max_mtu if wanted is None else min(wanted, self.max_mtu)


class ReyaxCodec(ModemCodec):
    """REYAX RYLR998 / RYLR896 (see the module docstring)."""

    name = "rylr998"
    MAX_CHARS = 240
    AIR_EXTRA = 8
    max_mtu = 192  # b85_size(192) == 240
    BANDWIDTHS: ClassVar[dict[int, int]] = {125_000: 7, 250_000: 8, 500_000: 9}
    # The guide's error codes (REYAX "LoRa AT Command Guide", RYLR998/RYLR498).
    ERRORS: ClassVar[dict[str, str]] = {
        "1": "no CR LF at the end of the command",
        "2": "the command does not start with AT",
        "4": "unknown command",
        "5": "the data does not match its length",
        "10": "TX is over times",
        "12": "CRC error",
        "13": "TX data exceeds 240 bytes",
        "14": "failed to write flash memory",
        "15": "unknown failure",
        "17": "the last TX was not completed",
        "18": "preamble value not allowed",
        "19": "RX failed, header error",
        "20": "smart receiving power saving time not allowed",
    }

    def __init__(self, network_id: int = 18, password: str | None = None) -> None:
        self.network_id = network_id
        self.password = password
        self._lines = _Lines()

    def setup(self, params: LoRaParams, freq_hz: int, address: int) -> list[bytes]:
        try:
            bw = self.BANDWIDTHS[params.bw]
        except KeyError:
            raise ValueError(f"the RYLR998 has no {params.bw} Hz bandwidth") from None
        out = [
            b"AT+ADDRESS=%d" % address,
            b"AT+NETWORKID=%d" % self.network_id,
            b"AT+BAND=%d" % freq_hz,
            b"AT+PARAMETER=%d,%d,%d,%d" % (params.sf, bw, params.cr - 4, params.preamble),
        ]
        if self.password is not None:
            out.append(b"AT+CPIN=" + self.password.encode())
        return [c + b"\r\n" for c in out]

    def encode_send(self, dest: int, body: bytes) -> bytes:
        if not 1 <= len(body) <= self.max_mtu:
            raise ValueError(f"a RYLR998 packet carries 1..{self.max_mtu} bytes")
        data = base64.b85encode(body)
        return b"AT+SEND=%d,%d,%s\r\n" % (0 if dest == BROADCAST else dest, len(data), data)

    def wire_size(self, n: int) -> int:
        return b85_size(n) + self.AIR_EXTRA

    def feed(self, data: bytes) -> list[ModemEvent]:
        out: list[ModemEvent] = []
        for line in self._lines.feed(data):
            if line == b"+OK":
                out.append(Ok())
            elif line.startswith(b"+ERR="):
                code = line[5:].decode("ascii", "replace")
                why = self.ERRORS.get(code)
                out.append(Failed(f"+ERR={code}" + (f" ({why})" if why else "")))
            elif line.startswith(b"+RCV="):
                event = self._rcv(line[5:])
                if event is not None:
                    out.append(event)
        return out

    @staticmethod
    def _rcv(rest: bytes) -> Received | None:
        try:
            addr, length, tail = rest.split(b",", 2)
            n = int(length)
            payload, meta = tail[:n], tail[n:]
            _, rssi, snr = meta.split(b",")
            return Received(int(addr), base64.b85decode(payload), int(rssi), int(snr))
        except (ValueError, TypeError):
            return None  # a damaged line: the frame is lost, not misread


class RAKCodec(ModemCodec):
    """RAK3172 (RUI3) in LoRa P2P (see the module docstring)."""

    name = "rak3172"
    MAX_PAYLOAD = 250
    HEADER = 2  # destination, source
    max_mtu = MAX_PAYLOAD - HEADER
    send_answers = (Ok, TxDone)

    def __init__(self, power: int = 14) -> None:
        self.power = power
        self.address = 0
        self._lines = _Lines()

    def setup(self, params: LoRaParams, freq_hz: int, address: int) -> list[bytes]:
        if not 0 <= address <= 0xFE:
            raise ValueError("a RAK3172 P2P address here is one byte, 0..254")
        self.address = address
        return [
            b"AT+NWM=0\r\n",
            b"AT+P2P=%d:%d:%d:%d:%d:%d\r\n"
            % (freq_hz, params.sf, params.bw // 1000, params.cr - 5, params.preamble, self.power),
            b"AT+PRECV=65533\r\n",
        ]

    def after_send(self) -> list[bytes]:
        return [b"AT+PRECV=65533\r\n"]

    def encode_send(self, dest: int, body: bytes) -> bytes:
        if not 1 <= len(body) <= self.max_mtu:
            raise ValueError(f"a RAK3172 packet carries 1..{self.max_mtu} bytes")
        dst = 0xFF if dest == BROADCAST else dest
        packet = bytes([dst, self.address]) + body
        return b"AT+PSEND=" + binascii.hexlify(packet).upper() + b"\r\n"

    def wire_size(self, n: int) -> int:
        return n + self.HEADER

    def feed(self, data: bytes) -> list[ModemEvent]:
        out: list[ModemEvent] = []
        for line in self._lines.feed(data):
            if line == b"OK":
                out.append(Ok())
            elif line == b"+EVT:TXP2P DONE":
                out.append(TxDone())
            elif line.startswith(b"AT_") and line.endswith(b"ERROR"):
                out.append(Failed(line.decode("ascii", "replace")))
            elif line.startswith(b"+EVT:RXP2P:"):
                event = self._rx(line[len(b"+EVT:RXP2P:") :])
                if event is not None:
                    out.append(event)
        return out

    def _rx(self, rest: bytes) -> Received | None:
        try:
            rssi, snr, payload = rest.split(b":", 2)
            packet = binascii.unhexlify(payload)
        except (ValueError, binascii.Error):
            return None
        if len(packet) <= self.HEADER or packet[0] not in (self.address, 0xFF):
            return None  # for another station
        return Received(packet[1], packet[2:], int(rssi), int(snr))


class E22Codec(ModemCodec):
    """Ebyte E22 / E32 in fixed transmission (see the module docstring)."""

    name = "e22"
    send_answers = ()
    # The module ends a packet after ~3 byte times of UART silence: the next
    # write must wait at least that long, or two packets would run together.
    idle_gap = 0.005
    SUB_PACKETS = (240, 128, 64, 32)

    def __init__(self, sub_packet: int = 240, channel: int = 0x12, *, e32: bool = False) -> None:
        if e32:
            self.name = "e32"
            sub_packet = 58
        elif sub_packet not in self.SUB_PACKETS:
            raise ValueError(f"an E22 sub-packet is one of {self.SUB_PACKETS} bytes")
        self.sub_packet = sub_packet
        self.channel = channel
        self.address = 0
        self.max_mtu = max(n for n in range(1, sub_packet) if max_wire_size(n + 2) <= sub_packet)
        self._decoder = FrameDecoder(max_frame=self.max_mtu + 2)

    def setup(self, params: LoRaParams, freq_hz: int, address: int) -> list[bytes]:
        self.address = address
        return []

    def encode_send(self, dest: int, body: bytes) -> bytes:
        if not 1 <= len(body) <= self.max_mtu:
            raise ValueError(f"an {self.name.upper()} packet carries 1..{self.max_mtu} bytes")
        head = bytes([(dest >> 8) & 0xFF, dest & 0xFF, self.channel])
        return head + encode_frame(self.address.to_bytes(2, "big") + body)

    def wire_size(self, n: int) -> int:
        return max_wire_size(n + 2)

    def feed(self, data: bytes) -> list[ModemEvent]:
        out: list[ModemEvent] = []
        for frame in self._decoder.feed(data):
            if len(frame) > 2:
                out.append(Received(int.from_bytes(frame[:2], "big"), frame[2:]))
        return out


MODEMS = ("rylr998", "rylr896", "rak3172", "e22", "e32")


def codec_for(name: str) -> ModemCodec:
    """A fresh codec for a modem kind (``MODEMS``)."""
    if name in ("rylr998", "rylr896"):
        codec = ReyaxCodec()
        codec.name = name
        return codec
    if name == "rak3172":
        return RAKCodec()
    if name == "e22":
        return E22Codec()
    if name == "e32":
        return E22Codec(e32=True)
    raise ValueError(f"unknown modem {name!r} (known: {', '.join(MODEMS)})")
