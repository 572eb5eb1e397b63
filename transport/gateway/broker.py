"""otaferry's own small MQTT 3.1.1 broker, on asyncio: the embedded default of
``otaferry demo --gateway`` on a machine without Mosquitto, and ``otaferry broker``.

    async with Broker() as broker:            # 127.0.0.1, a free port
        await broker.start("127.0.0.1", 0)
        print(broker.port)

It speaks what the gateway, the job CLI (aiomqtt / paho) and ``mosquitto_pub`` /
``mosquitto_sub`` use, and refuses the rest the way the standard says:

- CONNECT with clean or persistent sessions (a persistent session keeps its
  subscriptions, its unacknowledged QoS 1 messages and those that arrive while it
  is away; on reconnect the unacknowledged ones go again with DUP set, then the
  rest, in order), keepalive (1.5 x the client's value, then the connection is
  closed), a will published when a connection ends without DISCONNECT (a lost
  socket, a keepalive timeout, a protocol error, a takeover by a new connection
  with the same client id). Other protocol levels: CONNACK 1; an empty client id
  with a persistent session: CONNACK 2; the session limit reached: CONNACK 3.
  There is no authentication: user names and passwords are accepted and ignored,
  which is why ``listen`` refuses non-loopback addresses unless asked.
- SUBSCRIBE / UNSUBSCRIBE with ``+`` and ``#`` (no ``$`` topics under a leading
  wildcard); QoS 2 is granted as 1 (the maximum this broker delivers); an invalid
  filter or one over the per-session limit is SUBACK 0x80.
- PUBLISH QoS 0 and 1 (PUBACK once routed); QoS 2 closes the connection (one log
  line). Retained messages (an empty payload clears), delivered with RETAIN set on
  a new subscription; PINGREQ; DISCONNECT (no will).
- Bounded memory: a packet over ``max_packet`` is refused from its fixed header,
  before its body is read; a session holds at most ``max_queued`` messages and
  ``max_queued_bytes`` (queued and in flight), at most ``max_inflight`` in flight;
  retained messages are bounded in number and bytes; sessions in number. What
  does not fit is dropped with one log line (per session, until it drains).
- A malformed packet (:mod:`.mqttwire`) is one log line with its reason and the
  connection closed; the broker and every other connection go on.

Nothing is persisted: a restart forgets sessions and retained messages (use
Mosquitto where that matters).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..link import ClosesOnExit
from . import mqttwire as w
from .mqttwire import PacketError, PacketType, Publish

__all__ = ["Broker", "BrokerLimits", "BrokerLog", "is_loopback"]


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    max_packet: int = 1 << 20  # bytes of one packet (the gateway's chunks are ~44 KB)
    max_queued: int = 1000  # messages per session, queued and in flight
    max_queued_bytes: int = 16 << 20
    max_inflight: int = 20  # QoS 1 messages sent and not yet acknowledged, per session
    max_sessions: int = 1000
    max_subscriptions: int = 1000  # per session
    max_retained: int = 10_000
    max_retained_bytes: int = 64 << 20
    connect_timeout: float = 10.0  # from TCP accept to CONNECT


class BrokerLog:
    """Log lines on stderr: ``broker: event k=v ...`` or JSON lines."""

    def __init__(self, style: str = "text", stream: TextIO | None = None) -> None:
        self.style = style
        self.stream = stream

    def __call__(self, event: str, **fields: Any) -> None:
        out = self.stream or sys.stderr
        if self.style == "json":
            line = json.dumps({"t": round(time.time(), 3), "event": event, **fields}, default=str)
        else:
            line = "broker: " + event + "".join(f" {k}={v}" for k, v in fields.items())
        print(line, file=out, flush=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Closed(Exception):
    """This connection ends; ``graceful``: by DISCONNECT (no will)."""

    def __init__(self, why: str, *, graceful: bool = False) -> None:
        super().__init__(why)
        self.graceful = graceful


@dataclass(slots=True)
class _Session:
    client_id: str
    clean: bool
    subs: dict[str, int] = field(default_factory=dict)
    pending: deque[Publish] = field(default_factory=deque)
    inflight: dict[int, Publish] = field(default_factory=dict)  # by packet id, in send order
    queued_bytes: int = 0
    next_pid: int = 1
    conn: _Conn | None = None
    dropping: int = 0  # messages dropped since the queue last had room

    @property
    def queued(self) -> int:
        return len(self.pending) + len(self.inflight)

    def new_pid(self) -> int:
        while True:
            pid = self.next_pid
            self.next_pid = pid % 65535 + 1
            if pid not in self.inflight:
                return pid


@dataclass(eq=False, slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    session: _Session | None = None
    will: Publish | None = None
    keepalive: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sender: asyncio.Task[None] | None = None
    handler: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    kicked: str | None = None  # why the broker ended this connection from outside


class Broker(ClosesOnExit):
    """See the module docstring."""

    def __init__(
        self, limits: BrokerLimits | None = None, *, log: Callable[..., None] | None = None
    ) -> None:
        self.limits = limits or BrokerLimits()
        self.log = log or (lambda *a, **k: None)
        self.sessions: dict[str, _Session] = {}
        self.retained: dict[str, Publish] = {}
        self.retained_bytes = 0
        self._retained_full = False
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self.host = ""
        self.port = 0
        self.stats = {"connections": 0, "received": 0, "sent": 0, "dropped": 0, "refused": 0}

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    allow_remote: bool = False) -> None:  # fmt: skip
        """Listen on ``host:port`` (0: a free port, see :attr:`port`)."""
        if not allow_remote and not is_loopback(host):
            raise ValueError(f"{host}: the broker has no authentication; it listens on "
                             "loopback addresses only unless allow_remote")  # fmt: skip
        self._server = await asyncio.start_server(self._accept, host, port)
        sock = self._server.sockets[0].getsockname()
        self.host, self.port = str(sock[0]), int(sock[1])
        self.log("listening", address=f"{self.host}:{self.port}")

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            self._kick(conn, "the broker stops")
        for conn in list(self._conns):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(conn.done.wait(), 5)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    # ------------------------------------------------------------ one connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = _Conn(reader, writer, f"{peer[0]}:{peer[1]}" if peer else "?")
        conn.handler = asyncio.current_task()
        self._conns.add(conn)
        self.stats["connections"] += 1
        graceful = False
        why = "closed"
        try:
            await self._serve(conn)
        except _Closed as exc:
            graceful, why = exc.graceful, str(exc)
        except PacketError as exc:
            why = f"{exc.code}: {exc.message}"
            self.stats["refused"] += 1
            self.log("malformed", peer=conn.peer, client=self._client_of(conn),
                     reason=exc.code, error=exc.message)  # fmt: skip
        except asyncio.IncompleteReadError:
            why = "the client closed the connection"
        except (ConnectionError, OSError) as exc:
            why = f"connection lost ({exc.__class__.__name__})"
        except asyncio.CancelledError:
            why = conn.kicked or "cancelled"
        finally:
            self._end(conn, graceful, conn.kicked or why)
            with contextlib.suppress(Exception):
                writer.close()
            if conn.sender is not None:
                conn.sender.cancel()
            conn.done.set()

    @staticmethod
    def _client_of(conn: _Conn) -> str:
        return conn.session.client_id if conn.session else "-"

    async def _read_packet(self, conn: _Conn, timeout: float | None) -> tuple[int, int, bytes]:
        """One packet: (type, flags, body). The remaining length is checked against
        ``max_packet`` before the body is read."""
        async with asyncio.timeout(timeout):
            first = (await conn.reader.readexactly(1))[0]
            length = 0
            for i in range(4):
                byte = (await conn.reader.readexactly(1))[0]
                length |= (byte & 0x7F) << (7 * i)
                if not byte & 0x80:
                    break
            else:
                raise PacketError("BAD_LENGTH", "remaining length over 4 bytes")
            if length > self.limits.max_packet:
                raise PacketError("TOO_LARGE", f"a packet of {length} bytes, over the limit "
                                  f"of {self.limits.max_packet}")  # fmt: skip
            body = await conn.reader.readexactly(length) if length else b""
        self.stats["received"] += 1
        return first >> 4, first & 0x0F, body

    async def _serve(self, conn: _Conn) -> None:
        try:
            kind, flags, body = await self._read_packet(conn, self.limits.connect_timeout)
        except TimeoutError:
            raise _Closed("no CONNECT in time") from None
        if kind != PacketType.CONNECT:
            raise PacketError("NOT_CONNECT", f"the first packet is type {kind}, not CONNECT")
        await self._connect(conn, w.decode_connect(flags, body))
        timeout = conn.keepalive * 1.5 if conn.keepalive else None
        while True:
            try:
                kind, flags, body = await self._read_packet(conn, timeout)
            except TimeoutError:
                self.log("keepalive_timeout", client=self._client_of(conn),
                         keepalive_s=conn.keepalive)  # fmt: skip
                raise _Closed("keepalive timeout") from None
            await self._handle(conn, kind, flags, body)
            try:  # a peer that stopped reading is closed like a silent one
                async with asyncio.timeout(timeout):
                    await conn.writer.drain()
            except TimeoutError:
                self.log("write_timeout", client=self._client_of(conn))
                raise _Closed("the client stopped reading") from None

    async def _connect(self, conn: _Conn, c: w.Connect) -> None:
        write = conn.writer.write
        if c.protocol not in ("MQTT", "MQIsdp"):
            raise PacketError("BAD_PROTOCOL", f"protocol name {c.protocol!r}")
        if c.protocol != "MQTT" or c.level != 4:
            write(w.connack(False, w.REFUSED_PROTOCOL))
            self.log("refused", peer=conn.peer, reason="PROTOCOL",
                     error=f"{c.protocol} level {c.level}: only MQTT 3.1.1 (level 4)")  # fmt: skip
            await conn.writer.drain()
            raise _Closed("unsupported protocol level")
        client_id = c.client_id
        if not client_id:
            if not c.clean:
                write(w.connack(False, w.REFUSED_IDENTIFIER))
                self.log("refused", peer=conn.peer, reason="IDENTIFIER",
                         error="empty client id with a persistent session")  # fmt: skip
                await conn.writer.drain()
                raise _Closed("identifier rejected")
            client_id = f"auto-{secrets.token_hex(8)}"
        old = self.sessions.get(client_id)
        if old is not None and old.conn is not None:  # takeover (MQTT-3.1.4-2)
            prev = old.conn
            self._kick(prev, "taken over by a new connection with the same client id")
            await prev.done.wait()
            old = self.sessions.get(client_id)
        if old is None and len(self.sessions) >= self.limits.max_sessions:
            write(w.connack(False, w.REFUSED_UNAVAILABLE))
            self.log("refused", peer=conn.peer, client=client_id, reason="UNAVAILABLE",
                     error=f"{self.limits.max_sessions} sessions already")  # fmt: skip
            await conn.writer.drain()
            raise _Closed("server unavailable")
        present = old is not None and not c.clean
        if old is not None and c.clean:
            self._discard(old)
            old = None
        session = old or _Session(client_id, c.clean)
        session.clean = c.clean
        self.sessions[client_id] = session
        session.conn = conn
        conn.session = session
        conn.will = c.will
        conn.keepalive = c.keepalive
        write(w.connack(present, w.ACCEPTED))
        self.log("connected", peer=conn.peer, client=client_id, clean=c.clean,
                 session_present=present, keepalive=c.keepalive)  # fmt: skip
        conn.sender = asyncio.ensure_future(self._send(conn, session))

    def _kick(self, conn: _Conn, why: str) -> None:
        if conn.kicked is None:
            conn.kicked = why
            if conn.handler is not None:
                conn.handler.cancel()

    def _end(self, conn: _Conn, graceful: bool, why: str) -> None:
        self._conns.discard(conn)
        s = conn.session
        if s is None or s.conn is not conn:
            return
        s.conn = None
        self.log("disconnected", client=s.client_id, why=why)
        if not graceful and conn.will is not None:
            self._publish(conn.will)
        if s.clean:
            self._discard(s)
        else:  # kept for the client's return; QoS 0 is not kept for an absent client
            for m in [m for m in s.pending if m.qos == 0]:
                s.pending.remove(m)
                s.queued_bytes -= len(m.payload)

    def _discard(self, s: _Session) -> None:
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]

    async def _handle(self, conn: _Conn, kind: int, flags: int, body: bytes) -> None:
        s = conn.session
        assert s is not None
        write = conn.writer.write
        if kind == PacketType.PUBLISH:
            p = w.decode_publish(flags, body)
            if p.qos == 2:
                self.stats["refused"] += 1
                self.log("refused", client=s.client_id, reason="QOS2", topic=p.topic,
                         error="QoS 2 is not supported (QoS 0 and 1 are)")  # fmt: skip
                raise _Closed("QoS 2 publish")
            self._publish(p)
            if p.qos == 1:
                write(w.puback(p.packet_id))
        elif kind == PacketType.PUBACK:
            pid = w.decode_packet_id(flags, body, "PUBACK")
            m = s.inflight.pop(pid, None)
            if m is not None:
                s.queued_bytes -= len(m.payload)
                conn.wake.set()
        elif kind == PacketType.SUBSCRIBE:
            sub = w.decode_subscribe(flags, body)
            codes = []
            granted = []
            for f, qos in sub.filters:
                if not w.filter_ok(f) or (f not in s.subs
                                          and len(s.subs) >= self.limits.max_subscriptions):
                    codes.append(w.SUBACK_FAILURE)  # fmt: skip
                    self.log("subscribe_refused", client=s.client_id, filter=f,
                             reason="BAD_FILTER" if not w.filter_ok(f) else "RESOURCE_LIMIT")
                    continue
                q = min(qos, 1)
                s.subs[f] = q
                codes.append(q)
                granted.append((f, q))
            write(w.suback(sub.packet_id, codes))
            for f, q in granted:  # retained messages, after the SUBACK (3.8.4)
                for topic, m in list(self.retained.items()):
                    if w.matches(f, topic):
                        self._enqueue(s, Publish(topic, m.payload, min(m.qos, q), True))
        elif kind == PacketType.UNSUBSCRIBE:
            unsub = w.decode_unsubscribe(flags, body)
            for f in unsub.filters:
                s.subs.pop(f, None)
            write(w.unsuback(unsub.packet_id))
        elif kind == PacketType.PINGREQ:
            if flags or body:
                raise PacketError("BAD_FLAGS", "PINGREQ with flags or a body")
            write(w.pingresp())
        elif kind == PacketType.DISCONNECT:
            if flags or body:
                raise PacketError("BAD_FLAGS", "DISCONNECT with flags or a body")
            raise _Closed("DISCONNECT", graceful=True)
        elif kind == PacketType.CONNECT:
            raise PacketError("SECOND_CONNECT", "a second CONNECT (MQTT-3.1.0-2)")
        elif kind in (PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP):
            raise PacketError("QOS2", f"{PacketType(kind).name}: QoS 2 is not supported")
        else:
            raise PacketError("BAD_TYPE", f"packet type {kind} from a client")

    # ------------------------------------------------------------ routing

    def _publish(self, p: Publish) -> None:
        if p.retain:
            self._retain(p)
        for s in list(self.sessions.values()):
            best = -1
            for f, q in s.subs.items():
                if q > best and w.matches(f, p.topic):
                    best = q
            if best < 0:
                continue
            qos = min(p.qos, best)
            if qos == 0 and s.conn is None:
                continue  # QoS 0 is not queued for an absent client
            self._enqueue(s, Publish(p.topic, p.payload, qos, False))

    def _retain(self, p: Publish) -> None:
        old = self.retained.pop(p.topic, None)
        if old is not None:
            self.retained_bytes -= len(old.payload)
        if not p.payload:
            return  # an empty retained message clears the topic (MQTT-3.3.1-10)
        lim = self.limits
        if len(self.retained) >= lim.max_retained or \
                self.retained_bytes + len(p.payload) > lim.max_retained_bytes:  # fmt: skip
            if not self._retained_full:
                self._retained_full = True
                self.log("retained_full", topic=p.topic, retained=len(self.retained),
                         bytes=self.retained_bytes, error="retained message not kept "
                         f"(limits: {lim.max_retained} messages, {lim.max_retained_bytes} B)")
            return
        self._retained_full = False
        self.retained[p.topic] = Publish(p.topic, p.payload, p.qos, True)
        self.retained_bytes += len(p.payload)

    def _enqueue(self, s: _Session, m: Publish) -> None:
        lim = self.limits
        if s.queued >= lim.max_queued or s.queued_bytes + len(m.payload) > lim.max_queued_bytes:
            self.stats["dropped"] += 1
            if not s.dropping:
                self.log("queue_full", client=s.client_id, online=s.conn is not None,
                         queued=s.queued, bytes=s.queued_bytes,
                         error=f"dropping messages for this session until it drains (limits: "
                         f"{lim.max_queued} messages, {lim.max_queued_bytes} B)")  # fmt: skip
            s.dropping += 1
            return
        if s.dropping:
            self.log("queue_drained", client=s.client_id, dropped=s.dropping)
            s.dropping = 0
        s.pending.append(m)
        s.queued_bytes += len(m.payload)
        if s.conn is not None:
            s.conn.wake.set()

    async def _send(self, conn: _Conn, s: _Session) -> None:
        """The connection's PUBLISH packets: first the unacknowledged ones again (DUP),
        then the queue, at most ``max_inflight`` QoS 1 messages unacknowledged."""
        writer = conn.writer
        try:
            for m in s.inflight.values():
                writer.write(w.publish(Publish(m.topic, m.payload, 1, m.retain, True,
                                               m.packet_id)))  # fmt: skip
                self.stats["sent"] += 1
            while True:
                conn.wake.clear()
                while s.pending and len(s.inflight) < self.limits.max_inflight:
                    m = s.pending.popleft()
                    if m.qos:
                        m = Publish(m.topic, m.payload, 1, m.retain, False, s.new_pid())
                        s.inflight[m.packet_id] = m
                    else:
                        s.queued_bytes -= len(m.payload)
                    writer.write(w.publish(m))
                    self.stats["sent"] += 1
                await writer.drain()
                if not (s.pending and len(s.inflight) < self.limits.max_inflight):
                    await conn.wake.wait()
        except (ConnectionError, OSError):
            self._kick(conn, "connection lost while sending")
