"""The submitter's side of the topic scheme: upload artifacts, submit, cancel, follow.

    async with JobClient(MqttSettings("broker", 8883, tls=True, ca=...), "otaferry", "site-7") as c:
        shas = [await c.upload(ota) for ota in artifacts]
        await c.submit("job-42", ["0011223344556677"], shas)
        result = await c.follow("job-42", on_state=print)     # the job's final result

Retained states are read deterministically: after subscribing, the client publishes
to a topic of its own and waits for that message to come back; the broker has sent
every retained message of the earlier subscriptions by then (one connection's
messages are delivered in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from ...protocol.errors import OtaferryError, Reason, TimeoutError_
from .artifacts import encode_chunks
from .mqtt import Message, MqttSession, MqttSettings
from .topics import Topics

__all__ = ["JobClient"]

FINAL = ("done", "failed", "cancelled")


def _json(payload: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


class JobClient:
    """See the module docstring. Errors: otaferry's (TransportError for the broker)."""

    def __init__(self, settings: MqttSettings, prefix: str, gateway_id: str) -> None:
        self.settings = settings
        self.topics = Topics(prefix, gateway_id)
        self._session = MqttSession(settings)
        self._inbox: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._marker = f"{self.topics.root}/client/{secrets.token_hex(6)}"
        self.published = 0

    async def __aenter__(self) -> Self:
        await self._session.__aenter__()
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        await self._session.__aexit__(exc_type, exc, tb)

    async def _read(self) -> None:
        try:
            async for m in self._session.messages():
                self._inbox.put_nowait(m)
        except OtaferryError as exc:
            self._inbox.put_nowait(exc)

    async def _next(self, timeout: float | None) -> Message:
        async with asyncio.timeout(timeout):
            item = await self._inbox.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self._session.publish(topic, payload, retain=retain)
        self.published += 1

    async def retained(self, *filters: str, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
        """The retained JSON states under ``filters`` now (topic -> object)."""
        await self._session.subscribe(*filters, self._marker)
        token = secrets.token_hex(8).encode()
        await self._publish(self._marker, token)
        out: dict[str, dict[str, Any]] = {}
        try:
            while True:
                m = await self._next(timeout)
                if m.topic == self._marker and m.payload == token:
                    break
                obj = _json(m.payload) if m.payload else None
                if obj is not None:
                    out[m.topic] = obj
        except TimeoutError:
            raise TimeoutError_(f"the broker {self.settings.where} did not answer") from None
        finally:
            await self._session.unsubscribe(*filters, self._marker)
        return out

    async def clear_retained(self, *filters: str) -> int:
        """Clear every retained JSON message under ``filters`` (an empty retained
        message each); how many. For a site that is gone, or a demo's leftovers."""
        topics = await self.retained(*filters)
        for topic in topics:
            await self._publish(topic, b"", retain=True)
        return len(topics)

    async def upload(self, ota: bytes, *, force: bool = False) -> str:
        """Send an artifact in chunks unless the gateway has it already; its SHA-256."""
        sha, chunks = encode_chunks(ota)
        if not force:
            known = await self.retained(self.topics.artifact_state(sha))
            state = known.get(self.topics.artifact_state(sha), {})
            if state.get("state") == "accepted":
                return sha
        for i, payload in enumerate(chunks):
            await self._publish(self.topics.chunk(sha, i), payload, retain=True)
        return sha

    async def submit(self, job_id: str, devices: list[str], artifacts: list[str]) -> None:
        request = {"op": "update", "job_id": job_id, "devices": devices, "artifacts": artifacts}
        await self._publish(self.topics.job(job_id), json.dumps(request).encode(), retain=True)

    async def cancel(self, job_id: str) -> None:
        await self._publish(self.topics.job(job_id),
                            json.dumps({"op": "cancel", "job_id": job_id}).encode(),
                            retain=True)  # fmt: skip

    async def status(self, job_id: str) -> dict[str, Any] | None:
        """The job's result and its devices' states (None: the gateway has not seen it)."""
        got = await self.retained(self.topics.result(job_id), self.topics.device_states_filter)
        result = got.get(self.topics.result(job_id))
        if result is None:
            return None
        states = {}
        for device in result.get("devices", {}):
            st = got.get(self.topics.device_state(device))
            if st is not None and st.get("job_id") == job_id:
                states[device] = st
        return {"result": result, "states": states}

    async def list_jobs(self) -> list[dict[str, Any]]:
        got = await self.retained(self.topics.results_filter, self.topics.jobs_filter)
        results = {t.rsplit("/", 2)[-2]: r for t, r in got.items() if t.endswith("/result")}
        for topic in got:
            job_id = topic.rsplit("/", 1)[-1]
            if "/jobs/" in topic and job_id not in results:
                results[job_id] = {"job_id": job_id, "state": "submitted",
                                   "aws": "QUEUED", "devices": {}}  # fmt: skip
        return sorted(results.values(), key=lambda r: (r.get("t", 0), r.get("job_id", "")))

    async def health(self) -> dict[str, Any] | None:
        return (await self.retained(self.topics.health)).get(self.topics.health)

    async def follow(
        self,
        job_id: str,
        *,
        on_state: Callable[[str, dict[str, Any]], None] | None = None,
        artifacts: dict[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Follow the job's device states until its result is final; that result.

        ``on_state(device, state)`` sees each device state of this job once, in
        sequence order (an older or repeated one, as after a reconnect, is skipped).
        ``artifacts`` (sha -> .ota): sent again if the gateway says it still wants one
        (chunks lost with a gateway that had no session yet), at most twice each.
        """
        filters = [self.topics.result(job_id), self.topics.device_states_filter]
        if artifacts:
            filters += [self.topics.artifact_state(sha) for sha in artifacts]
        await self._session.subscribe(*filters)
        seqs: dict[str, int] = {}
        resent: dict[str, int] = {}
        try:
            async with asyncio.timeout(timeout):
                while True:
                    m = await self._next(None)
                    obj = _json(m.payload) if m.payload else None
                    if obj is None:
                        continue
                    if m.topic == self.topics.result(job_id):
                        if obj.get("state") in FINAL:
                            return obj
                    elif m.topic.endswith("/state") and "/device/" in m.topic:
                        device = m.topic.rsplit("/", 2)[-2]
                        seq = int(obj.get("seq", 0))
                        if obj.get("job_id") != job_id or seq <= seqs.get(device, 0):
                            continue
                        seqs[device] = seq
                        if on_state is not None:
                            on_state(device, obj)
                    elif artifacts and "/artifact/" in m.topic:
                        sha = m.topic.rsplit("/", 2)[-2]
                        if obj.get("state") == "wanted" and not m.retain \
                                and resent.get(sha, 0) < 2 and sha in artifacts:  # fmt: skip
                            resent[sha] = resent.get(sha, 0) + 1
                            await self.upload(artifacts[sha], force=True)
                        elif obj.get("state") == "rejected":
                            raise OtaferryError(
                                f"the gateway refused artifact {sha[:16]}: {obj.get('message')}",
                                Reason[obj["reason"]]
                                if obj.get("reason") in Reason.__members__
                                else Reason.MALFORMED,
                            )
        except TimeoutError:
            raise TimeoutError_(f"job {job_id}: no final result within {timeout:g} s") from None
        finally:
            with contextlib.suppress(OtaferryError):
                await self._session.unsubscribe(*filters)
