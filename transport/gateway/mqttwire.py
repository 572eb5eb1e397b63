"""MQTT 3.1.1 packets (OASIS standard, 2014), the part the embedded broker speaks.

Pure functions over bytes: decoders raise :class:`PacketError` with a short reason
(``BAD_FLAGS``, ``BAD_STRING``, ``TRUNCATED``, ...) for anything the standard calls
malformed, encoders build whole packets. Only what a broker receives is decoded
(CONNECT, PUBLISH, PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT) and only
what it sends is encoded. Topic names and filters are checked here too (section
4.7): wildcards only as whole levels, ``#`` last, none in a topic name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "Connect",
    "PacketError",
    "PacketType",
    "Publish",
    "Subscribe",
    "Unsubscribe",
    "connack",
    "decode_connect",
    "decode_packet_id",
    "decode_publish",
    "decode_subscribe",
    "decode_unsubscribe",
    "encode_length",
    "filter_ok",
    "matches",
    "pingresp",
    "puback",
    "publish",
    "suback",
    "topic_ok",
    "unsuback",
]


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


# CONNACK return codes (3.2.2.3)
ACCEPTED = 0
REFUSED_PROTOCOL = 1
REFUSED_IDENTIFIER = 2
REFUSED_UNAVAILABLE = 3
SUBACK_FAILURE = 0x80
MAX_LENGTH = 268_435_455  # four bytes of remaining length


class PacketError(Exception):
    """A packet the standard calls malformed; ``code`` is a short reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Connect:
    protocol: str
    level: int
    clean: bool
    keepalive: int
    client_id: str
    will: Publish | None
    username: str | None
    password: bytes | None


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False
    packet_id: int = 0


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    filters: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]


class _Cursor:
    """Reads fields off a packet body; running short is TRUNCATED."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.body):
            raise PacketError("TRUNCATED", f"the packet ends {self.at + n - len(self.body)} "
                              "byte(s) short")  # fmt: skip
        out = self.body[self.at : self.at + n]
        self.at += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def text(self) -> str:
        raw = self.binary()
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PacketError("BAD_STRING", "a string is not UTF-8 (MQTT-1.5.3-1)") from None
        if "\x00" in s:
            raise PacketError("BAD_STRING", "a string holds U+0000 (MQTT-1.5.3-2)")
        return s

    @property
    def left(self) -> int:
        return len(self.body) - self.at

    def rest(self) -> bytes:
        out = self.body[self.at :]
        self.at = len(self.body)
        return out


def _expect_flags(flags: int, want: int, what: str) -> None:
    if flags != want:
        raise PacketError("BAD_FLAGS", f"{what} with header flags {flags:#x}, not {want:#x}")


def topic_ok(topic: str) -> bool:
    """A topic name a client may publish to (4.7.3: not empty, no wildcard)."""
    return bool(topic) and "+" not in topic and "#" not in topic


def filter_ok(f: str) -> bool:
    """A topic filter (4.7.1): ``+`` and ``#`` only as whole levels, ``#`` last."""
    if not f:
        return False
    levels = f.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def matches(f: str, topic: str) -> bool:
    """Whether filter ``f`` matches ``topic``; wildcards first do not match ``$`` topics."""
    if topic.startswith("$") and f[:1] in ("+", "#"):
        return False
    fl, tl = f.split("/"), topic.split("/")
    for i, level in enumerate(fl):
        if level == "#":
            return True  # "a/#" matches "a" too (4.7.1.2)
        if i >= len(tl) or (level != "+" and level != tl[i]):
            return False
    return len(fl) == len(tl)


def decode_connect(flags: int, body: bytes) -> Connect:
    """A CONNECT. A protocol name or level this broker does not speak is returned as
    is (the caller refuses it with CONNACK 1) without reading further: an MQTT 5
    CONNECT continues differently."""
    _expect_flags(flags, 0, "CONNECT")
    c = _Cursor(body)
    protocol = c.text()
    level = c.u8()
    if protocol != "MQTT" or level != 4:
        return Connect(protocol, level, True, 0, "", None, None, None)
    cflags = c.u8()
    if cflags & 0x01:
        raise PacketError("BAD_FLAGS", "CONNECT reserved flag set (MQTT-3.1.2-3)")
    keepalive = c.u16()
    client_id = c.text()
    will = None
    will_qos = (cflags >> 3) & 3
    will_retain = bool(cflags & 0x20)
    if cflags & 0x04:
        if will_qos == 3:
            raise PacketError("BAD_FLAGS", "CONNECT will QoS 3 (MQTT-3.1.2-14)")
        topic = c.text()
        if not topic_ok(topic):
            raise PacketError("BAD_TOPIC", f"will topic {topic!r}")
        will = Publish(topic, c.binary(), will_qos, will_retain)
    elif will_qos or will_retain:
        raise PacketError("BAD_FLAGS", "CONNECT will QoS/retain without a will (MQTT-3.1.2-13)")
    username = c.text() if cflags & 0x80 else None
    if cflags & 0x40 and username is None:
        raise PacketError("BAD_FLAGS", "CONNECT password without user name (MQTT-3.1.2-22)")
    password = c.binary() if cflags & 0x40 else None
    if c.left:
        raise PacketError("TRAILING", f"{c.left} byte(s) after the CONNECT payload")
    return Connect(protocol, level, bool(cflags & 0x02), keepalive, client_id, will,
                   username, password)  # fmt: skip


def decode_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise PacketError("BAD_FLAGS", "PUBLISH QoS 3 (MQTT-3.3.1-4)")
    c = _Cursor(body)
    topic = c.text()
    if not topic_ok(topic):
        raise PacketError("BAD_TOPIC", f"PUBLISH to {topic!r}: empty or a wildcard")
    packet_id = 0
    if qos:
        packet_id = c.u16()
        if packet_id == 0:
            raise PacketError("BAD_PACKET_ID", "PUBLISH packet identifier 0")
    elif flags & 0x08:
        raise PacketError("BAD_FLAGS", "PUBLISH QoS 0 with DUP set (MQTT-3.3.1-2)")
    return Publish(topic, c.rest(), qos, bool(flags & 0x01), bool(flags & 0x08), packet_id)


def decode_packet_id(flags: int, body: bytes, what: str) -> int:
    _expect_flags(flags, 0, what)
    if len(body) != 2:
        raise PacketError("BAD_LENGTH", f"{what} of {len(body)} bytes, not 2")
    return int.from_bytes(body, "big")


def decode_subscribe(flags: int, body: bytes) -> Subscribe:
    _expect_flags(flags, 2, "SUBSCRIBE")
    c = _Cursor(body)
    packet_id = c.u16()
    out = []
    while c.left:
        f = c.text()
        qos = c.u8()
        if qos & 0xFC:
            raise PacketError("BAD_QOS", f"SUBSCRIBE requested QoS byte {qos:#x} (MQTT-3.8.3-4)")
        out.append((f, qos))
    if not out:
        raise PacketError("EMPTY", "SUBSCRIBE with no topic filter (MQTT-3.8.3-3)")
    return Subscribe(packet_id, tuple(out))


def decode_unsubscribe(flags: int, body: bytes) -> Unsubscribe:
    _expect_flags(flags, 2, "UNSUBSCRIBE")
    c = _Cursor(body)
    packet_id = c.u16()
    out = []
    while c.left:
        out.append(c.text())
    if not out:
        raise PacketError("EMPTY", "UNSUBSCRIBE with no topic filter (MQTT-3.10.3-2)")
    return Unsubscribe(packet_id, tuple(out))


def encode_length(n: int) -> bytes:
    if not 0 <= n <= MAX_LENGTH:
        raise ValueError(f"remaining length {n}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: PacketType, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + encode_length(len(body)) + body


def _str(s: str) -> bytes:
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


def connack(session_present: bool, code: int) -> bytes:
    return _packet(PacketType.CONNACK, 0, bytes([int(session_present), code]))


def publish(p: Publish) -> bytes:
    flags = (p.dup << 3) | (p.qos << 1) | int(p.retain)
    pid = p.packet_id.to_bytes(2, "big") if p.qos else b""
    return _packet(PacketType.PUBLISH, flags, _str(p.topic) + pid + p.payload)


def puback(packet_id: int) -> bytes:
    return _packet(PacketType.PUBACK, 0, packet_id.to_bytes(2, "big"))


def suback(packet_id: int, codes: list[int]) -> bytes:
    return _packet(PacketType.SUBACK, 0, packet_id.to_bytes(2, "big") + bytes(codes))


def unsuback(packet_id: int) -> bytes:
    return _packet(PacketType.UNSUBACK, 0, packet_id.to_bytes(2, "big"))


def pingresp() -> bytes:
    return _packet(PacketType.PINGRESP, 0, b"")
