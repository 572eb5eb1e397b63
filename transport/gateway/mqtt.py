"""MQTT for the gateway and its submitters, on aiomqtt 2.x — the only module that imports it.

Two layers:

- :class:`MqttSession`: one connection (``async with``): ``publish`` (QoS 1:
  returns once the broker acknowledged it), ``subscribe``, ``messages()``.
  aiomqtt's exceptions never leave it: a refused or lost connection is a
  :class:`~otaferry.protocol.errors.TransportError` (``ClosedError`` once lost).
- :class:`Northbound`: the gateway's side, a connection that lives forever:
  a fixed client id with a persistent session (``clean_session`` false, so
  QoS 1 messages published while the gateway is away are kept for it), a
  retained last will, reconnection with exponential backoff and jitter
  (aiomqtt does not reconnect by itself), the subscriptions made again on
  every connect, and an outbox of *retained states* keyed by topic: a newer
  state replaces an unsent older one (status traffic stays bounded, however
  fast sessions change), and a state leaves the outbox only once the broker
  acknowledged it, so a state set while the broker is down goes out after
  the reconnect.

aiomqtt 3.x reads messages differently; this is the one place that would change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import aiomqtt

from ...protocol.errors import ClosedError, Reason, TransportError

__all__ = ["Message", "MqttSession", "MqttSettings", "Northbound", "tls_context"]

# paho logs socket errors itself; otaferry reports them as its own errors instead, so
# its logger is kept quiet unless an application configures it.
_LOG = logging.getLogger("otaferry.transport.mqtt")
_LOG.addHandler(logging.NullHandler())


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int = 1883
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    persistent: bool = False  # keep the session (and queued QoS 1 messages) across connects
    keepalive: int = 30
    will: tuple[str, bytes] | None = None  # retained, QoS 1
    timeout: float = 10.0

    @property
    def where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


def tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """Server authenticated against ``ca`` (else the system's roots); with ``cert``
    and ``key``, this client authenticates too (mutual TLS)."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"TLS files: {exc}", Reason.BAD_KEY) from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("[code:", "(code").replace("]", ")")


class MqttSession:
    """One MQTT connection; see the module docstring."""

    def __init__(self, settings: MqttSettings) -> None:
        s = settings
        self.settings = s
        will = None
        if s.will is not None:
            will = aiomqtt.Will(s.will[0], s.will[1], qos=1, retain=True)
        self._client = aiomqtt.Client(
            s.host,
            s.port,
            logger=_LOG,
            username=s.username,
            password=s.password,
            identifier=s.client_id,
            clean_session=not s.persistent,
            will=will,
            keepalive=s.keepalive,
            timeout=s.timeout,
            tls_context=tls_context(s.ca, s.cert, s.key) if s.tls else None,
        )
        self._open = False

    async def __aenter__(self) -> Self:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise TransportError(
                f"cannot connect to {self.settings.where}: {_describe(exc)}", Reason.IO_ERROR
            ) from None
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await self._client.__aexit__(None, None, None)

    def _lost(self, exc: BaseException) -> ClosedError:
        return ClosedError(f"MQTT connection to {self.settings.where} lost: {_describe(exc)}")

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1: returns once the broker acknowledged the message."""
        try:
            await self._client.publish(topic, payload, qos=1, retain=retain)
        except aiomqtt.MqttError as exc:
            raise self._lost(exc) from None

    async def subscribe(self, *filters: str) -> None:
        try:
            for f in filters:
                await self._client.subscribe(f, qos=1)
        except aiomqtt.MqttError as exc:
            raise self._lost(exc) from None

    async def unsubscribe(self, *filters: str) -> None:
        try:
            for f in filters:
                await self._client.unsubscribe(f)
        except aiomqtt.MqttError as exc:
            raise self._lost(exc) from None

    async def messages(self) -> AsyncIterator[Message]:
        """Every message of the subscriptions, until the connection is lost (ClosedError)."""
        try:
            async for m in self._client.messages:
                payload = m.payload
                if isinstance(payload, str):
                    data = payload.encode()
                elif isinstance(payload, bytes | bytearray):
                    data = bytes(payload)
                else:
                    data = b"" if payload is None else str(payload).encode()
                yield Message(str(m.topic), data, bool(m.retain))
        except aiomqtt.MqttError as exc:
            raise self._lost(exc) from None


Handler = Callable[[Message], Awaitable[None]]


class Northbound:
    """The gateway's connection to its broker; see the module docstring."""

    def __init__(
        self,
        settings: MqttSettings,
        subscriptions: list[str],
        on_message: Handler,
        *,
        on_connect: Callable[[], None] | None = None,
        log: Callable[..., None] | None = None,
        min_backoff: float = 0.25,
        max_backoff: float = 30.0,
    ) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_connect = on_connect
        self.log = log or (lambda *a, **k: None)
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.connected = asyncio.Event()
        self._outbox: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._session: MqttSession | None = None
        self.stats = {"connects": 0, "published": 0, "received": 0, "coalesced": 0}

    def set_state(self, topic: str, payload: bytes) -> None:
        """A retained state to publish (QoS 1); replaces an older one not yet sent."""
        if topic in self._outbox:
            self.stats["coalesced"] += 1
            del self._outbox[topic]  # to the end: states go out in the order they were set
        self._outbox[topic] = payload
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._outbox)

    async def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True) or ``timeout`` passes (False)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._outbox:
                    await asyncio.sleep(0.02)
        return not self._outbox

    async def publish_now(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Publish on the current connection (ClosedError if there is none)."""
        if self._session is None:
            raise ClosedError("not connected to the broker")
        await self._session.publish(topic, payload, retain=retain)
        self.stats["published"] += 1

    async def run(self) -> None:
        """Connect, serve, reconnect on loss with backoff; until cancelled."""
        backoff = self.min_backoff
        while True:
            try:
                async with MqttSession(self.settings) as session:
                    self._session = session
                    self.stats["connects"] += 1
                    await session.subscribe(*self.subscriptions)
                    self.connected.set()
                    backoff = self.min_backoff
                    self.log("mqtt_connected", broker=self.settings.where,
                             connects=self.stats["connects"])  # fmt: skip
                    if self.on_connect is not None:
                        self.on_connect()
                    self._wake.set()
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._receive(session))
                        tg.create_task(self._send(session))
            except* TransportError as group:
                exc = group.exceptions[0]
                error = getattr(exc, "message", str(exc))
                self.log("mqtt_down", broker=self.settings.where, error=error,
                         retry_s=round(backoff, 2))  # fmt: skip
            finally:
                self._session = None
                self.connected.clear()
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(self.max_backoff, backoff * 2)

    async def _receive(self, session: MqttSession) -> None:
        async for message in session.messages():
            self.stats["received"] += 1
            await self.on_message(message)
        raise ClosedError("the broker ended the message stream")

    async def _send(self, session: MqttSession) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                topic, payload = next(iter(self._outbox.items()))
                await session.publish(topic, payload, retain=True)
                self.stats["published"] += 1
                if self._outbox.get(topic) is payload:  # not replaced meanwhile
                    del self._outbox[topic]
