"""otaferry's embedded MQTT 3.1.1 broker (transport/gateway/broker.py).

At three levels: the packet codec with no I/O; the broker in this process on a real
loopback socket, spoken to byte by byte by a raw client (CONNACK / SUBACK codes,
persistent sessions and DUP redelivery, wills, retained messages, limits, malformed
packets: one log line, that connection closed, the broker goes on) and by aiomqtt
(what the gateway and the job CLI use); and ``otaferry broker`` as a process spoken
to by the real ``mosquitto_pub`` / ``mosquitto_sub``."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from otaferry.transport.gateway import mqttwire as w
from otaferry.transport.gateway.broker import Broker, BrokerLimits
from otaferry.transport.gateway.mqtt import MqttSession, MqttSettings

pytestmark = pytest.mark.timeout(60)
OTAFERRY = str(Path(sys.executable).with_name("otaferry"))

# ---------------------------------------------------------------- the codec


def test_topic_filters_and_matching() -> None:
    assert w.filter_ok("a/+/c") and w.filter_ok("#") and w.filter_ok("a/#") and w.filter_ok("+")
    for bad in ("", "a/#/b", "a#", "a/b+", "#/a", "++"):
        assert not w.filter_ok(bad), bad
    assert w.topic_ok("a/b") and not w.topic_ok("a/+") and not w.topic_ok("") \
        and not w.topic_ok("a/#")  # fmt: skip
    cases = [("a/+/c", "a/b/c", True), ("a/+/c", "a/b/d", False), ("a/#", "a", True),
             ("a/#", "a/b/c", True), ("a/+", "a/b/c", False), ("+", "a", True),
             ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("$SYS/#", "$SYS/x", True),
             ("a/b", "a/b", True), ("a/b", "a/b/", False), ("+/+", "/x", True)]  # fmt: skip
    for f, topic, want in cases:
        assert w.matches(f, topic) is want, (f, topic)


def _connect_body(client_id: str = "c", *, clean: bool = True, keepalive: int = 30,
                  level: int = 4, will: tuple[str, bytes, int, bool] | None = None,
                  user: str | None = None, password: bytes | None = None,
                  flags_extra: int = 0) -> bytes:  # fmt: skip
    def s(x: str | bytes) -> bytes:
        raw = x.encode() if isinstance(x, str) else x
        return len(raw).to_bytes(2, "big") + raw

    flags = (0x02 if clean else 0) | flags_extra
    payload = s(client_id)
    if will:
        flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
        payload += s(will[0]) + s(will[1])
    if user is not None:
        flags |= 0x80
        payload += s(user)
    if password is not None:
        flags |= 0x40
        payload += s(password)
    return s("MQTT") + bytes([level, flags]) + keepalive.to_bytes(2, "big") + payload


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + w.encode_length(len(body)) + body


def test_codec_refuses_what_the_standard_calls_malformed() -> None:
    c = w.decode_connect(0, _connect_body("x", clean=False, keepalive=7,
                                          will=("w/t", b"gone", 1, True), user="u",
                                          password=b"p"))  # fmt: skip
    assert (c.client_id, c.clean, c.keepalive, c.username, c.password) == ("x", False, 7, "u",
                                                                          b"p")  # fmt: skip
    assert c.will == w.Publish("w/t", b"gone", 1, True)
    bad = {
        "BAD_FLAGS": [_connect_body(flags_extra=0x01), _connect_body(flags_extra=0x08),
                      _connect_body(password=b"p")],
        "TRUNCATED": [_connect_body()[:-1]],
        "TRAILING": [_connect_body() + b"x"],
    }  # fmt: skip
    for code, bodies in bad.items():
        for body in bodies:
            with pytest.raises(w.PacketError) as got:
                w.decode_connect(0, body)
            assert got.value.code == code
    # an MQTT 5 CONNECT is given back unread, for a CONNACK 1
    assert w.decode_connect(0, _connect_body(level=5) + b"\x00").level == 5
    topic = b"\x00\x03a/b"
    assert w.decode_publish(0x02 | 0x08, topic + b"\x00\x07hi") == w.Publish("a/b", b"hi", 1,
                                                                             False, True, 7)
    for flags, body, code in [(0x06, topic, "BAD_FLAGS"), (0x08, topic, "BAD_FLAGS"),
                              (0x02, topic + b"\x00\x00", "BAD_PACKET_ID"),
                              (0, b"\x00\x03a/+", "BAD_TOPIC"),
                              (0, b"\x00\x02\xff\xfe", "BAD_STRING"),
                              (0, b"\x00\x01\x00", "BAD_STRING"),
                              (0, b"\x00\x09a", "TRUNCATED")]:  # fmt: skip
        with pytest.raises(w.PacketError) as got:
            w.decode_publish(flags, body)
        assert got.value.code == code, (flags, body)
    with pytest.raises(w.PacketError, match="BAD_QOS"):
        w.decode_subscribe(2, b"\x00\x01" + topic + b"\x04")
    with pytest.raises(w.PacketError, match="EMPTY"):
        w.decode_subscribe(2, b"\x00\x01")
    with pytest.raises(w.PacketError, match="BAD_FLAGS"):
        w.decode_subscribe(0, b"\x00\x01" + topic + b"\x01")
    assert [w.encode_length(n) for n in (0, 127, 128, 16_383, 268_435_455)] == [
        b"\x00", b"\x7f", b"\x80\x01", b"\xff\x7f", b"\xff\xff\xff\x7f"]  # fmt: skip


# ---------------------------------------------------------------- a raw client


class Raw:
    """A client that speaks bytes: for what aiomqtt would never send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def packet(self, timeout: float = 5.0) -> tuple[int, int, bytes]:
        async with asyncio.timeout(timeout):
            first = (await self.reader.readexactly(1))[0]
            n = shift = 0
            while True:
                b = (await self.reader.readexactly(1))[0]
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            return first >> 4, first & 0x0F, await self.reader.readexactly(n)

    async def connect(self, client_id: str = "raw", **kw: Any) -> bytes:
        self.send(_packet(1, 0, _connect_body(client_id, **kw)))
        kind, _, body = await self.packet()
        assert kind == w.PacketType.CONNACK
        return body

    async def subscribe(self, *filters: tuple[str, int], pid: int = 1) -> bytes:
        body = pid.to_bytes(2, "big") + b"".join(
            len(f).to_bytes(2, "big") + f.encode() + bytes([q]) for f, q in filters)
        self.send(_packet(8, 2, body))
        kind, _, got = await self.packet()
        assert kind == w.PacketType.SUBACK and got[:2] == pid.to_bytes(2, "big")
        return got[2:]

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                pid: int = 1) -> None:  # fmt: skip
        self.send(w.publish(w.Publish(topic, payload, qos, retain, False, pid)))

    async def message(self, timeout: float = 5.0) -> w.Publish:
        kind, flags, body = await self.packet(timeout)
        assert kind == w.PacketType.PUBLISH, kind
        return w.decode_publish(flags, body)

    async def closed(self, timeout: float = 5.0) -> bool:
        async with asyncio.timeout(timeout):
            return await self.reader.read(1) == b""

    def close(self) -> None:
        self.writer.close()


def _run(limits: BrokerLimits | None,
         body: Callable[[Broker, list[tuple[str, dict[str, Any]]]], Awaitable[None]]) -> list[
             tuple[str, dict[str, Any]]]:  # fmt: skip
    """Run ``body`` against a broker on a free loopback port; its log lines."""
    log: list[tuple[str, dict[str, Any]]] = []

    async def main() -> None:
        async with Broker(limits, log=lambda event, **f: log.append((event, f))) as b:
            await b.start("127.0.0.1", 0)
            await body(b, log)

    asyncio.run(main())
    return log


def test_connack_and_suback_codes() -> None:
    async def body(b: Broker, log: list[Any]) -> None:
        c = await Raw.open(b.port)
        assert await c.connect(level=5) == b"\x00\x01"  # only 3.1.1
        assert await c.closed()
        c = await Raw.open(b.port)
        assert await c.connect("", clean=False) == b"\x00\x02"
        assert await c.closed()
        c = await Raw.open(b.port)
        assert await c.connect("", clean=True) == b"\x00\x00"  # an id of the broker's own
        # QoS 2 granted as 1; a bad filter 0x80; the per-session limit 0x80
        codes = await c.subscribe(("a/#", 2), ("a/#/b", 0), ("x", 0), ("y", 1))
        assert codes == b"\x01\x80\x00\x80"
        other = await Raw.open(b.port)
        assert await other.connect("two") == b"\x00\x00"
        third = await Raw.open(b.port)
        assert await third.connect("three") == b"\x00\x03"  # max_sessions
        assert await third.closed()
        # a PUBLISH with QoS 2 is refused: the connection closes, the broker says why
        other.publish("q/2", b"x", qos=2)
        assert await other.closed()
        c.close()

    log = _run(BrokerLimits(max_sessions=2, max_subscriptions=2), body)
    refused = [f["reason"] for e, f in log if e == "refused"]
    assert refused == ["PROTOCOL", "IDENTIFIER", "UNAVAILABLE", "QOS2"]


def test_persistent_session_redelivers_unacknowledged_messages_with_dup() -> None:
    async def body(b: Broker, log: list[Any]) -> None:
        sub = await Raw.open(b.port)
        assert await sub.connect("gw", clean=False) == b"\x00\x00"
        assert await sub.subscribe(("jobs/+", 1)) == b"\x01"
        pub = await Raw.open(b.port)
        await pub.connect("pub")
        pub.publish("jobs/1", b"one", qos=1, pid=5)
        kind, _, got = await pub.packet()
        assert (kind, got) == (w.PacketType.PUBACK, b"\x00\x05")
        first = await sub.message()
        assert (first.payload, first.qos, first.dup) == (b"one", 1, False)
        sub.close()  # gone without a PUBACK
        await asyncio.sleep(0.1)
        pub.publish("jobs/2", b"two", qos=1, pid=6)  # while it is away
        pub.publish("jobs/3", b"three", qos=0)  # QoS 0: not kept for an absent client
        await pub.packet()
        sub = await Raw.open(b.port)
        assert await sub.connect("gw", clean=False) == b"\x01\x00"  # session present
        again = await sub.message()
        assert (again.payload, again.dup, again.packet_id) == (b"one", True, first.packet_id)
        queued = await sub.message()
        assert (queued.payload, queued.dup) == (b"two", False)
        for m in (again, queued):
            sub.send(_packet(4, 0, m.packet_id.to_bytes(2, "big")))
        sub.send(_packet(12, 0, b""))  # PINGREQ: nothing else was waiting
        assert (await sub.packet())[0] == w.PacketType.PINGRESP
        sub.send(_packet(14, 0, b""))
        assert await sub.closed()
        # acknowledged: nothing comes again; a clean session forgets it all
        sub = await Raw.open(b.port)
        assert await sub.connect("gw", clean=False) == b"\x01\x00"
        sub.send(_packet(12, 0, b""))
        assert (await sub.packet())[0] == w.PacketType.PINGRESP
        sub.close()
        await asyncio.sleep(0.1)
        sub = await Raw.open(b.port)
        assert await sub.connect("gw", clean=True) == b"\x00\x00"
        sub.close()
        pub.close()

    _run(None, body)


def test_wills_retained_messages_and_takeover() -> None:
    async def body(b: Broker, log: list[Any]) -> None:
        watch = await Raw.open(b.port)
        await watch.connect("watch")
        await watch.subscribe(("h/#", 1))
        for name, ending in (("lost", "close"), ("polite", "disconnect"), ("twin", "takeover")):
            c = await Raw.open(b.port)
            await c.connect(name, will=(f"h/{name}", b"offline", 1, True))
            if ending == "close":
                c.close()
            elif ending == "disconnect":
                c.send(_packet(14, 0, b""))
                assert await c.closed()
            else:
                again = await Raw.open(b.port)
                await again.connect(name)  # the same client id: the first one is closed
                assert await c.closed()
                again.close()
        got = [await watch.message(), await watch.message()]
        assert [(m.topic, m.payload, m.retain) for m in got] == [
            ("h/lost", b"offline", False), ("h/twin", b"offline", False)]  # fmt: skip
        # retained: the wills (retain set), kept for new subscribers with RETAIN set
        late = await Raw.open(b.port)
        await late.connect("late")
        await late.subscribe(("h/+", 1))
        got = sorted([(m.topic, m.retain) for m in [await late.message(), await late.message()]])
        assert got == [("h/lost", True), ("h/twin", True)]
        late.publish("h/lost", b"", retain=True)  # an empty payload clears it
        late.publish("h/lost", b"x")  # (and the cleared message goes to subscribers)
        await asyncio.sleep(0.1)
        assert "h/lost" not in b.retained and "h/twin" in b.retained
        # the keepalive: 1.5 x 1 s of silence closes the connection and sends the will
        quiet = await Raw.open(b.port)
        await quiet.connect("quiet", keepalive=1, will=("h/quiet", b"timed out", 0, False))
        assert await quiet.closed(timeout=5)
        while (m := await watch.message()).topic != "h/quiet":
            pass
        assert m.payload == b"timed out"
        watch.close()
        late.close()

    log = _run(None, body)
    assert [e for e, _ in log].count("keepalive_timeout") == 1


def test_limits_bound_memory_with_one_log_line() -> None:
    async def body(b: Broker, log: list[Any]) -> None:
        sub = await Raw.open(b.port)
        await sub.connect("slow", clean=False)
        await sub.subscribe(("t", 1))
        sub.close()
        await asyncio.sleep(0.1)
        pub = await Raw.open(b.port)
        await pub.connect("pub")
        for i in range(12):
            pub.publish("t", b"m%d" % i, qos=1, pid=i + 1)
            await pub.packet()  # PUBACK: the broker took it, kept or not
        sub = await Raw.open(b.port)
        await sub.connect("slow", clean=False)
        got = [await sub.message() for _ in range(5)]
        assert [m.payload for m in got] == [b"m%d" % i for i in range(5)]
        # a packet longer than max_packet: refused from its header, before the body
        big = await Raw.open(b.port)
        await big.connect("big")
        big.send(bytes([0x30]) + w.encode_length(2 << 20) + b"\x00\x01t")
        assert await big.closed()
        # retained messages: bounded too
        for i in range(4):
            pub.publish(f"r/{i}", b"keep", retain=True)
        await asyncio.sleep(0.1)
        assert len(b.retained) == 3
        sub.close()
        pub.close()

    log = _run(BrokerLimits(max_queued=5, max_packet=1 << 20, max_retained=3), body)
    events = [e for e, _ in log]
    assert events.count("queue_full") == 1 and events.count("retained_full") == 1
    assert [f["reason"] for e, f in log if e == "malformed"] == ["TOO_LARGE"]


MALFORMED = [
    ("not CONNECT first", _packet(12, 0, b""), "NOT_CONNECT"),
    ("reserved CONNECT flag", _packet(1, 0, _connect_body(flags_extra=1)), "BAD_FLAGS"),
    ("length over 4 bytes", b"\x10\xff\xff\xff\xff\x01", "BAD_LENGTH"),
    ("truncated CONNECT", _packet(1, 0, _connect_body()[:9]), "TRUNCATED"),
    ("not MQTT", _packet(1, 0, b"\x00\x04HTTP\x04\x02\x00\x1e\x00\x01c"), "BAD_PROTOCOL"),
]  # fmt: skip
AFTER_CONNECT = [
    ("second CONNECT", _packet(1, 0, _connect_body())),
    ("PUBLISH to a wildcard", _packet(3, 0, b"\x00\x03a/#x")),
    ("SUBSCRIBE with flags 0", _packet(8, 0, b"\x00\x01\x00\x01a\x00")),
    ("PUBREL", _packet(6, 2, b"\x00\x01")),
    ("type 15", _packet(15, 0, b"")),
    ("PUBACK of 3 bytes", _packet(4, 0, b"\x00\x01\x00")),
    ("invalid UTF-8 topic", _packet(3, 0, b"\x00\x02\xc3\x28")),
]  # fmt: skip


def test_malformed_packets_close_that_connection_only() -> None:
    async def body(b: Broker, log: list[Any]) -> None:
        bystander = await Raw.open(b.port)
        await bystander.connect("bystander")
        await bystander.subscribe(("x", 0))
        for _, data, _ in MALFORMED:
            c = await Raw.open(b.port)
            c.send(data)
            assert await c.closed()
        for _, data in AFTER_CONNECT:
            c = await Raw.open(b.port)
            await c.connect("victim")
            c.send(data)
            assert await c.closed()
        # half a packet, then the socket goes: no log line needed, nothing kept
        c = await Raw.open(b.port)
        await c.connect("half")
        c.send(b"\x30\x10\x00")
        c.close()
        # the broker goes on
        pub = await Raw.open(b.port)
        await pub.connect("after")
        pub.publish("x", b"still here")
        assert (await bystander.message()).payload == b"still here"
        pub.close()
        bystander.close()

    log = _run(None, body)
    malformed = [f for e, f in log if e == "malformed"]
    codes = [f["reason"] for f in malformed]
    assert codes[: len(MALFORMED)] == [code for _, _, code in MALFORMED]
    assert len(codes) == len(MALFORMED) + len(AFTER_CONNECT)  # one line each
    assert all(f["error"] for f in malformed)


def test_aiomqtt_persistent_session_with_the_gateways_settings() -> None:
    """What the gateway does: QoS 1, clean_session false, a retained will; it reconnects
    and finds the messages published while it was away."""

    async def body(b: Broker, log: list[Any]) -> None:
        will = ("site/health", b'{"state":"offline"}')
        gw = MqttSettings("127.0.0.1", b.port, client_id="gw-1", persistent=True, will=will)
        op = MqttSettings("127.0.0.1", b.port, client_id="op")
        async with MqttSession(gw) as s:
            await s.subscribe("site/jobs/+")
            await s.publish("site/health", b'{"state":"online"}', retain=True)
        async with MqttSession(op) as o:
            await o.publish("site/jobs/j1", b"job one", retain=True)
            await o.publish("site/jobs/j2", b"job two")
        async with MqttSession(gw) as s:
            await s.subscribe("site/jobs/+")  # again, as the gateway does on every connect
            got: list[tuple[str, bytes]] = []
            async with asyncio.timeout(5):
                async for m in s.messages():
                    got.append((m.topic, m.payload))
                    if len(got) == 3:
                        break
        # queued while away (j1, j2), then j1 again as retained on the new subscription
        assert got == [("site/jobs/j1", b"job one"), ("site/jobs/j2", b"job two"),
                       ("site/jobs/j1", b"job one")]  # fmt: skip
        assert b.retained["site/health"].payload == b'{"state":"online"}'

    _run(None, body)


# ---------------------------------------------------------------- otaferry broker + mosquitto_*

MOSQUITTO_BIN = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_SUB = shutil.which("mosquitto_sub")
MOSQUITTO_PUB = shutil.which("mosquitto_pub")


@pytest.fixture
def broker_process() -> Any:
    from gateway_harness import EmbeddedBroker

    b = EmbeddedBroker()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.skipif(not (MOSQUITTO_SUB and MOSQUITTO_PUB), reason="mosquitto-clients missing")
def test_mosquitto_clients_against_otaferry_broker(broker_process: Any) -> None:
    port = str(broker_process.port)
    assert MOSQUITTO_SUB and MOSQUITTO_PUB

    def pub(*args: str) -> None:
        subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", port, *args], check=True,
                       timeout=10)  # fmt: skip

    pub("-t", "site/health", "-m", '{"state":"online"}', "-r", "-q", "1")
    # a retained message to a new subscriber, with -R (ignore retained) seeing none of it
    got = subprocess.run([MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", port, "-t", "site/#", "-v",
                          "-C", "1", "-W", "5"], capture_output=True, text=True, timeout=10)
    assert got.stdout.strip() == 'site/health {"state":"online"}', got.stderr
    # a persistent subscriber (-c -i, QoS 1) gets what was published while it was away
    sub = [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", port, "-t", "site/jobs/+", "-q", "1",
           "-c", "-i", "op-sub", "-v"]  # fmt: skip
    first = subprocess.run([*sub, "-W", "1"], capture_output=True, text=True, timeout=10)
    assert first.returncode != 0 or not first.stdout  # nothing yet: -W ends it
    pub("-t", "site/jobs/a", "-m", "one", "-q", "1")
    pub("-t", "site/jobs/b", "-m", "two", "-q", "1")
    second = subprocess.run([*sub, "-C", "2", "-W", "5"], capture_output=True, text=True,
                            timeout=10)  # fmt: skip
    assert second.stdout.splitlines() == ["site/jobs/a one", "site/jobs/b two"], second.stderr
    pub("-t", "site/health", "-r", "-n")  # -n: an empty retained message clears it
    got = subprocess.run([MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", port, "-t", "site/health",
                          "-C", "1", "-W", "1"], capture_output=True, text=True, timeout=10)
    assert got.stdout == ""
    # an MQTT 5 client is refused with the right code and a clear message
    v5 = subprocess.run([MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", port, "-t", "x", "-V", "5",
                         "-C", "1", "-W", "2"], capture_output=True, text=True, timeout=10)
    assert v5.returncode != 0
    assert broker_process.alive()


# ---------------------------------------------------------------- the README's Mosquitto ACL


def _readme_acl() -> str:
    import re

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    at = text.index("### Mosquitto: one gateway, its own topics")
    match = re.search(r"```\n(.*?)```", text[at:], re.S)
    assert match, "the README has no ACL example"
    return match.group(1)


@pytest.mark.skipif(not Path(MOSQUITTO_BIN).exists(), reason="no mosquitto binary")
def test_the_readmes_acl_keeps_each_gateway_to_its_own_topics(tmp_path: Path) -> None:
    from gateway_harness import Broker, make_pki
    from otaferry.transport.gateway.client import JobClient

    acl = tmp_path / "otaferry.acl"
    acl.write_text(_readme_acl())
    acl.chmod(0o644)
    pki = make_pki(tmp_path / "pki", ["site-1", "site-2", "operator"])
    broker = Broker(tmp_path / "broker", tls=pki, extra=(f"acl_file {acl}",))

    def tls(name: str) -> MqttSettings:
        return MqttSettings("127.0.0.1", broker.port, tls=True, ca=pki["ca"],
                            cert=pki[f"{name}_cert"], key=pki[f"{name}_key"],
                            client_id=f"acl-{name}")  # fmt: skip

    async def seen(session: MqttSession, root: str, *filters: str) -> list[str]:
        """Topics delivered on ``filters`` until a marker of our own comes back."""
        marker = f"{root}/client/marker"
        await session.subscribe(*filters, marker)
        await session.publish(marker, b"m")
        got = []
        async with asyncio.timeout(10):
            async for m in session.messages():
                if m.topic == marker:
                    return got
                got.append(m.topic)
        return got

    async def main() -> None:
        async with JobClient(tls("operator"), "otaferry", "site-1") as op:
            await op.submit("j1", ["0011223344556677"], ["0" * 64])
        async with JobClient(tls("operator"), "otaferry", "site-2") as op:
            await op.submit("j2", ["0011223344556677"], ["0" * 64])
        async with MqttSession(tls("site-1")) as gw:
            assert await seen(gw, "otaferry/site-1", "otaferry/site-1/jobs/+") == [
                "otaferry/site-1/jobs/j1"]  # fmt: skip
            assert await seen(gw, "otaferry/site-1", "otaferry/site-2/jobs/+") == []
            await gw.publish("otaferry/site-1/health", b'{"state":"online"}', retain=True)
            await gw.publish("otaferry/site-2/health", b'{"state":"forged"}', retain=True)
            await gw.publish("otaferry/site-2/jobs/j2", b"", retain=True)  # clear another's
        async with JobClient(tls("operator"), "otaferry", "site-2") as op:
            assert await op.health() is None  # the forged state was dropped
            jobs = await op.list_jobs()
            assert [j["job_id"] for j in jobs] == ["j2"]  # still there
        async with JobClient(tls("operator"), "otaferry", "site-1") as op:
            assert (await op.health()) == {"state": "online"}

    try:
        asyncio.run(main())
    finally:
        broker.stop()


def test_broker_cli_listens_on_loopback_only_unless_asked() -> None:
    got = subprocess.run([OTAFERRY, "broker", "--listen", "0.0.0.0:0"], capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert got.returncode == 2 and "loopback only (--allow-remote" in got.stderr
    got = subprocess.run([OTAFERRY, "broker", "--listen", "127.0.0.1:http"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert got.returncode == 2 and "HOST:PORT" in got.stderr
