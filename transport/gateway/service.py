"""The gateway service: jobs from the cloud over MQTT, update sessions to local devices.

    gateway = Gateway(load_config("gateway.toml"))
    await gateway.run(stop_event)        # until stop_event is set (SIGTERM in the CLI)

What it does (README "The gateway"):

- takes jobs (``jobs/<job_id>``, retained, QoS 1) and artifacts (chunks) from the
  broker (:mod:`.mqtt`, :mod:`.artifacts`); a job id is accepted once, whatever the
  number of deliveries (the job store says whether it is known);
- runs one update session per device (device-driven resume, secure link, check-in:
  :class:`~otaferry.transport.updater.Updater`), a device's jobs one after another in
  order of arrival, at most ``concurrency`` sessions per link at once;
- reports, retained: per device its state (phase, progress, rate, ETA, reason, running
  version and image hash from its hello) at most once per ``progress_interval`` while
  bytes move and at once on every phase change; per job its result; its own health;
- survives a kill at any moment: every change is in the job store before it is
  published, an unfinished execution is simply pushed again at the next start and the
  device says where it stands (a device already pending for that update goes straight
  to its check-in; one that already runs the image answers ALREADY_INSTALLED), and the
  status numbers continue above every one published before.

Phases of an execution only move forward (queued, transferring, rebooting,
checking_in, then done / failed / rolled_back / cancelled): a resumed session
that starts with a hello does not report "transferring" after "rebooting".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ...protocol.errors import OtaferryError, Reason, RemoteError, TimeoutError_, TransportError
from ...protocol.keys import load_verify_key
from ...protocol.lora import LoRaParams, RegionPacing, region
from ...protocol.session import (
    Accepted,
    CheckedIn,
    Completed,
    Confirmed,
    DeviceInfo,
    Event,
    Progress,
    Rebooting,
)
from ...protocol.shared_artifact import Artifact
from ...protocol.x25519keys import (
    LinkPrivateKey,
    LinkPublicKey,
    load_link_private_key,
    load_link_public_key,
)
from ..hub import Hub, LinkHub
from ..secure_link import SecureLink
from ..updater import PushOptions, Updater, over_the_air
from .artifacts import ArtifactCache
from .config import DeviceConfig, GatewayConfig, LinkConfig
from .mqtt import Message, MqttSettings, Northbound
from .store import TERMINAL, Execution, JobStore
from .topics import Topics, valid_job_id, valid_sha256

__all__ = ["PHASES", "Gateway", "Log", "aws_state"]

PHASES = ("queued", "transferring", "rebooting", "checking_in",
          "done", "failed", "rolled_back", "cancelled")  # fmt: skip
_ORDER = {p: i for i, p in enumerate(PHASES)}
ROLLBACK = {Reason.SELF_TEST_FAILED, Reason.CHECKIN_TIMEOUT, Reason.ROLLED_BACK}
# Refusals (by the device, or by the sender's check of its hello) before any data moved.
REFUSALS = {"WRONG_HW", "WRONG_CHIP", "DOWNGRADE", "TOO_LARGE", "WRONG_BASE",
            "UNSUPPORTED_CODEC", "RESOURCE_LIMIT", "NO_OTA_SLOT", "BAD_SIGNATURE",
            "UNKNOWN_KEY", "REVOKED_KEY", "EXPIRED", "REPLAY", "PREVIOUSLY_FAILED",
            "UNKNOWN_DEVICE"}  # fmt: skip


def aws_state(phase: str, reason: str | None) -> str:
    """The AWS IoT Jobs execution status of a phase (README "AWS IoT Jobs")."""
    if phase == "queued":
        return "QUEUED"
    if phase in ("transferring", "rebooting", "checking_in"):
        return "IN_PROGRESS"
    if phase == "done":
        return "SUCCEEDED"
    if phase == "cancelled":
        return "CANCELED"
    if phase == "failed" and reason == "TIMEOUT":
        return "TIMED_OUT"
    if phase == "failed" and reason in REFUSALS:
        return "REJECTED"
    return "FAILED"


class Log:
    """Structured log lines on stderr: ``text`` (``gateway: event k=v ...``) or ``json``."""

    def __init__(self, style: str = "text", stream: TextIO | None = None) -> None:
        self.style = style
        self.stream = stream

    def __call__(self, event: str, **fields: Any) -> None:
        out = self.stream or sys.stderr
        if self.style == "json":
            line = json.dumps({"t": round(time.time(), 3), "event": event, **fields},
                              default=str)  # fmt: skip
        else:
            line = "gateway: " + event + "".join(f" {k}={v}" for k, v in fields.items())
        print(line, file=out, flush=True)


@dataclass
class _Live:
    """What the service knows of one device beyond the store (for its state messages)."""

    state: dict[str, Any] = field(default_factory=dict)
    last_publish: float = float("-inf")
    timer: asyncio.TimerHandle | None = None
    rate_origin: tuple[float, int] | None = None


class Gateway:
    """See the module docstring. ``hubs``: media made by the caller (an integrator's, or a
    benchmark's in-memory hub), by link name; the others are opened from the config."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        log: Callable[..., None] | None = None,
        hubs: dict[str, Hub] | None = None,
        options: dict[str, PushOptions] | None = None,
        device_keys: dict[str, LinkPublicKey] | None = None,
    ) -> None:
        self.config = config
        self.log = log or Log(config.log)
        self.topics = Topics(config.broker.prefix, config.gateway_id)
        self._hubs: dict[str, Hub] = dict(hubs or {})
        self._own_hubs: set[str] = set()
        self._hub_locks: dict[str, asyncio.Lock] = {}
        self._devices: dict[str, tuple[LinkConfig, DeviceConfig]] = {
            d.id: (link, d) for link in config.links for d in link.devices
        }
        self._device_keys = dict(device_keys or {})
        self._options = dict(options or {})
        self._link_key: LinkPrivateKey | None = None
        self.store: JobStore | None = None
        self.cache: ArtifactCache | None = None
        self.north: Northbound | None = None
        self._sem: dict[str, asyncio.Semaphore] = {}
        self._device_locks: dict[str, asyncio.Lock] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._cancel_requested: set[tuple[str, str]] = set()
        self._live: dict[str, _Live] = {}
        self._artifact_ready: dict[str, asyncio.Event] = {}
        self._artifact_refused: dict[str, tuple[str, str]] = {}
        self.active = 0
        self.started_at = time.time()
        self.finished: asyncio.Queue[Execution] = asyncio.Queue()
        self._health_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._result_timers: dict[str, asyncio.TimerHandle] = {}

    # ------------------------------------------------------------ lifecycle

    def _settings(self) -> MqttSettings:
        b = self.config.broker
        offline = json.dumps({"state": "offline", "gateway": self.config.gateway_id}).encode()
        return MqttSettings(
            host=b.host, port=b.port, tls=b.tls, ca=b.ca, cert=b.cert, key=b.key,
            username=b.username, password=b.password,
            client_id=f"otaferry-gw-{self.config.gateway_id}", persistent=True,
            keepalive=b.keepalive, will=(self.topics.health, offline),
        )  # fmt: skip

    def open(self) -> None:
        """Keys, store and cache (synchronous: errors before any connection is made)."""
        cfg = self.config
        self._link_key = load_link_private_key(cfg.link_key)
        for dev_id, (_, dev) in self._devices.items():
            if dev_id not in self._device_keys:
                self._device_keys[dev_id] = load_link_public_key(dev.public_key)
        trusted = [load_verify_key(p) for p in cfg.trusted_keys]
        self.cache = ArtifactCache(cfg.cache_dir, trusted)
        self.store = JobStore(cfg.job_store)
        for link in cfg.links:
            self._sem[link.name] = asyncio.Semaphore(link.concurrency)
            self._hub_locks[link.name] = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; then stop cleanly (every job stays resumable)."""
        if self.store is None:
            self.open()
        assert self.store is not None
        self.north = Northbound(
            self._settings(),
            [self.topics.jobs_filter, self.topics.chunks_filter],
            self._on_message,
            on_connect=self._on_connect,
            log=self.log,
        )
        resumed = 0
        for ex in self.store.open_executions():  # unfinished work from before: resume it
            self._live_for(ex.device).state.update(self._state_of(ex))
            self._start(ex)
            resumed += 1
        self.log("gateway_start", gateway=self.config.gateway_id, links=len(self.config.links),
                 devices=len(self._devices), resumed=resumed)  # fmt: skip
        self._publish_health()
        north = asyncio.ensure_future(self.north.run())
        try:
            await stop.wait()
        finally:
            await self._shutdown(north)

    async def _shutdown(self, north: asyncio.Future[None]) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        assert self.north is not None
        for device, live in self._live.items():  # the last progress held back by the throttle
            if live.timer is not None:
                self._publish_device(device, force=True)
        if self._health_timer is not None:
            self._health_timer.cancel()
        for job_id in list(self._result_timers):
            self._result_now(job_id)
        self._closed = True
        self.north.set_state(self.topics.health, self._health("offline"))
        if self.north.connected.is_set():
            await self.north.flush(3.0)
        north.cancel()
        with contextlib.suppress(BaseException):
            await north
        for name in list(self._own_hubs):
            with contextlib.suppress(Exception):
                await self._hubs[name].aclose()
        if self.store is not None:
            self.store.close()
        self.log("gateway_stop", open_jobs_left_resumable=len(tasks))

    # ------------------------------------------------------------ MQTT in

    def _on_connect(self) -> None:
        assert self.north is not None
        self.north.set_state(self.topics.health, self._health("online"))
        for device, live in self._live.items():  # a broker that lost its retained states
            if live.state:
                self.north.set_state(self.topics.device_state(device), self._encode(live.state))

    async def _on_message(self, message: Message) -> None:
        parsed = self.topics.parse(message.topic)
        if parsed is None or not message.payload:
            return  # an empty payload is a cleared retained message
        kind, key = parsed
        try:
            if kind == "job":
                self._on_job(key, message.payload)
            elif kind == "chunk":
                self._on_chunk(key, message.payload, message.topic)
        except OtaferryError as exc:
            self.log("bad_message", topic=message.topic, reason=exc.reason.name, error=exc.message)

    def _on_job(self, job_id: str, payload: bytes) -> None:
        assert self.store is not None and self.north is not None
        if not valid_job_id(job_id):
            raise OtaferryError(f"job id {job_id!r}: 1..64 of A-Z a-z 0-9 _ . : -",
                                Reason.MALFORMED)  # fmt: skip
        try:
            request = json.loads(payload)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise OtaferryError(f"job {job_id}: not a JSON object ({exc})", Reason.MALFORMED) \
                from None  # fmt: skip
        op = request.get("op", "update")
        if op == "cancel":
            self._cancel(job_id)
            return
        if op != "update":
            raise OtaferryError(f"job {job_id}: op {op!r} is not update or cancel",
                                Reason.MALFORMED)  # fmt: skip
        if self.store.has_job(job_id):  # redelivered (retained, or QoS 1 again): once only
            if all(e.terminal for e in self.store.executions(job_id)):
                self._clear_request(job_id)
            return
        devices = request.get("devices")
        artifacts = request.get("artifacts")
        if (not isinstance(devices, list) or not devices
                or not all(isinstance(d, str) for d in devices)
                or not isinstance(artifacts, list) or not artifacts
                or not all(isinstance(a, str) and valid_sha256(a) for a in artifacts)):  # fmt: skip
            raise OtaferryError(f"job {job_id}: needs devices (ids) and artifacts (sha256 hex)",
                                Reason.MALFORMED)  # fmt: skip
        devices = list(dict.fromkeys(d.lower() for d in devices))
        clean = {"op": "update", "devices": devices, "artifacts": artifacts}
        self.store.add_job(job_id, clean, devices)
        self.log("job_accepted", job_id=job_id, devices=",".join(devices),
                 artifacts=",".join(a[:12] for a in artifacts))  # fmt: skip
        for ex in self.store.executions(job_id):
            if ex.device not in self._devices:
                self._finish(
                    ex,
                    "failed",
                    "UNKNOWN_DEVICE",
                    f"device {ex.device} is not behind gateway {self.config.gateway_id}",
                )
            else:
                self._set_device(ex, "queued", force=True)
                self._start(ex)
        self._publish_result(job_id)
        self._publish_health()

    def _cancel(self, job_id: str) -> None:
        assert self.store is not None
        if not self.store.has_job(job_id):
            self.store.add_job(job_id, {"op": "cancel"}, [])
            self.log("job_cancelled", job_id=job_id, before="it was seen")
        for ex in self.store.executions(job_id):
            if ex.terminal:
                continue
            task = self._tasks.get((job_id, ex.device))
            if task is not None and ex.phase != "queued":
                self._cancel_requested.add((job_id, ex.device))
                task.cancel()
            else:
                if task is not None:
                    task.cancel()
                self._finish(ex, "cancelled", None, "cancelled before it started")
        self._publish_result(job_id)

    def _on_chunk(self, sha: str, payload: bytes, topic_in: str) -> None:
        assert self.cache is not None and self.north is not None
        if not valid_sha256(sha):
            raise OtaferryError(f"artifact {sha!r}: not a SHA-256 in hex", Reason.MALFORMED)
        known = self.cache.has(sha) or sha in self.cache.refused
        result = self.cache.chunk(sha, payload)
        topic = self.topics.artifact_state(sha)
        if result.state != "receiving":  # the retained chunks have done their work: clear them
            if known:
                self.north.set_state(topic_in, b"")
                return
            for i in range(min(result.count, 4096)):
                self.north.set_state(self.topics.chunk(sha, i), b"")
        if result.state == "receiving":
            if result.have == 1:
                self.north.set_state(topic, self._encode({"state": "receiving",
                                                          "count": result.count}))  # fmt: skip
            return
        if result.state == "accepted":
            if sha in self._artifact_ready and self._artifact_ready[sha].is_set():
                return
            self.log("artifact_accepted", sha256=sha)
            self.north.set_state(topic, self._encode({"state": "accepted"}))
            self._artifact_ready.setdefault(sha, asyncio.Event()).set()
        else:
            reason = result.reason.name if result.reason else "MALFORMED"
            self.log("artifact_rejected", sha256=sha, reason=reason, error=result.message)
            self.north.set_state(topic, self._encode({"state": "rejected", "reason": reason,
                                                      "message": result.message}))  # fmt: skip
            self._artifact_refused[sha] = (reason, result.message)
            self._artifact_ready.setdefault(sha, asyncio.Event()).set()

    # ------------------------------------------------------------ executions

    def _start(self, ex: Execution) -> None:
        key = (ex.job_id, ex.device)
        if key not in self._tasks:
            self._tasks[key] = asyncio.ensure_future(self._execute(ex))

    async def _artifacts(self, ex: Execution) -> list[Artifact]:
        """The job's artifacts, waiting for any still being uploaded."""
        assert self.store is not None and self.cache is not None and self.north is not None
        request = self.store.request(ex.job_id) or {}
        out = []
        for sha in request.get("artifacts", []):
            if not self.cache.has(sha):
                self.north.set_state(self.topics.artifact_state(sha),
                                     self._encode({"state": "wanted"}))  # fmt: skip
                await self._artifact_ready.setdefault(sha, asyncio.Event()).wait()
            if sha in self._artifact_refused:
                reason, message = self._artifact_refused[sha]
                code = Reason[reason] if reason in Reason.__members__ else Reason.MALFORMED
                raise OtaferryError(f"artifact {sha[:16]}: {message}", code)
            out.append(self.cache.get(sha))
        return out

    async def _execute(self, ex: Execution) -> None:
        key = (ex.job_id, ex.device)
        link_cfg, dev = self._devices[ex.device]
        lock = self._device_locks.setdefault(ex.device, asyncio.Lock())
        try:
            async with lock:
                assert self.store is not None
                while True:  # one pass per attempt (the retry policy queues new ones)
                    current = self.store.get(ex.job_id, ex.device)
                    if current is None or current.terminal:
                        return
                    wait = (current.retry_at or 0.0) - time.time()
                    if wait > 0:  # a new attempt's backoff: the link is free meanwhile
                        await asyncio.sleep(wait)
                    if current.attempt and current.reason is not None:
                        # the new attempt starts: the last one's reason is history now
                        self.store.clear_reason(ex.job_id, ex.device)
                        self._live_for(ex.device).state.update(reason=None, message=None)
                        current = self.store.get(ex.job_id, ex.device) or current
                    try:
                        artifacts = await self._artifacts(current)
                    except OtaferryError as exc:
                        self._finish(current, "failed", exc.reason.name, exc.message)
                        return
                    async with self._sem[link_cfg.name]:
                        self.active += 1
                        self._publish_health()
                        try:
                            await self._session(current, link_cfg, dev, artifacts)
                        finally:
                            self.active -= 1
                            self._publish_health()
                    after = self.store.get(ex.job_id, ex.device)
                    if after is None or after.attempt <= current.attempt:
                        return  # finished (or left unfinished by a stop): no new attempt
        except asyncio.CancelledError:
            if key in self._cancel_requested:
                self._cancel_requested.discard(key)
                now = self.store.get(ex.job_id, ex.device) if self.store else None
                if now is not None and not now.terminal:
                    self._finish(now, "cancelled", None, "cancelled while running")
            raise
        finally:
            self._tasks.pop(key, None)

    def _push_options(self, link: LinkConfig, hub: Hub) -> PushOptions:
        if link.name in self._options:
            return self._options[link.name]
        options = PushOptions(
            line_rate=link.baud / 10 if link.kind == "serial" else None,
            rto=self.config.rto,
            max_retries=self.config.retries,
            max_restarts=20,
            checkin_timeout=self.config.checkin_timeout or 180.0,
        )
        pacing = hub.pacing
        if isinstance(pacing, RegionPacing):
            # a LoRa round trip is air time both ways plus the duty-cycle wait: the
            # configured rto (sized for a UART) would retransmit every frame; and the
            # frames, acknowledgements and check-in wait are those of push --lora-modem
            options = over_the_air(options, pacing, hub.broadcast_mtu,
                                   checkin_timeout=self.config.checkin_timeout)  # fmt: skip
        return options

    async def _session(
        self, ex: Execution, link_cfg: LinkConfig, dev: DeviceConfig, artifacts: list[Artifact]
    ) -> None:
        attempts = 0
        while True:
            self._set_device(ex, "transferring", force=True)
            self._publish_result(ex.job_id)
            try:
                hub = await self._hub(link_cfg)
                assert self._link_key is not None
                secure = await SecureLink.connect(
                    hub.link(dev.address), self._link_key, self._device_keys[dev.id],
                    rto=self.config.rto if link_cfg.kind == "serial" else None,
                    retries=self.config.retries,
                )  # fmt: skip
                up = Updater(secure, self._push_options(link_cfg, hub))
                on_event = self._on_event_for(ex)
                if len(artifacts) == 1:
                    await up.push(artifacts[0], on_event, job_id=ex.job_id)
                else:
                    await up.push_best(artifacts, on_event=on_event, job_id=ex.job_id)
            except RemoteError as exc:
                if exc.reason == Reason.ALREADY_INSTALLED:
                    # the device runs this image: done (a resumed job whose Confirmed was
                    # not recorded before a restart ends here too, and runs only once)
                    self._finish(ex, "done", exc.reason.name, exc.message)
                elif exc.reason in ROLLBACK:
                    self._finish(ex, "rolled_back", exc.reason.name, exc.message)
                else:
                    self._finish(ex, "failed", exc.reason.name, exc.message)
                return
            except TimeoutError_ as exc:
                if not self._retry_later(ex, exc.message):
                    self._finish(ex, "failed", Reason.TIMEOUT.name, exc.message)
                return
            except TransportError as exc:
                attempts += 1
                await self._drop_hub(link_cfg)
                if attempts > 3:
                    self._finish(ex, "failed", exc.reason.name, exc.message)
                    return
                self.log("session_retry", job_id=ex.job_id, device=ex.device,
                         error=exc.message, attempt=attempts)  # fmt: skip
                await asyncio.sleep(0.5 * 2**attempts)
                continue
            except OtaferryError as exc:
                self._finish(ex, "failed", exc.reason.name, exc.message)
                return
            self._finish(ex, "done", None, None)
            return

    def _retry_later(self, ex: Execution, message: str) -> bool:
        """The retry policy after a TIMEOUT: queue attempt n+1 after its backoff
        (recorded, so a restart keeps both the count and the time); False when the
        policy has no attempt left."""
        assert self.store is not None
        policy = self.config.retry
        attempt = ex.attempt + 1
        if attempt > policy.timed_out:
            return False
        delay = policy.delay(attempt)
        note = (f"attempt {ex.attempt + 1} timed out ({message}); attempt {attempt + 1} "
                f"of {policy.timed_out + 1} in {delay:g} s")  # fmt: skip
        if not self.store.retry(ex.job_id, ex.device, attempt, time.time() + delay,
                                Reason.TIMEOUT.name, note):  # fmt: skip
            return False
        self.log("job_retry", job_id=ex.job_id, device=ex.device, attempt=attempt,
                 delay_s=delay, error=message)  # fmt: skip
        again = self.store.get(ex.job_id, ex.device)
        assert again is not None
        # a new attempt starts its own phases at queued; the reason says why
        self._set_device(again, "queued", force=True, reason=Reason.TIMEOUT.name, message=note,
                         retry_in_s=delay)  # fmt: skip
        self._publish_result(ex.job_id)
        return True

    async def _hub(self, link: LinkConfig) -> Hub:
        async with self._hub_locks[link.name]:
            hub = self._hubs.get(link.name)
            if hub is None:
                hub = await self._open_hub(link)
                self._hubs[link.name] = hub
                self._own_hubs.add(link.name)
            return hub

    async def _drop_hub(self, link: LinkConfig) -> None:
        if link.name in self._own_hubs:
            hub = self._hubs.pop(link.name, None)
            self._own_hubs.discard(link.name)
            if hub is not None:
                with contextlib.suppress(Exception):
                    await hub.aclose()

    async def _open_hub(self, link: LinkConfig) -> Hub:
        if link.kind == "lora":
            from ..lora_hub import ModemHub

            plan = region(link.region)
            assert link.modem is not None
            return await ModemHub.open(
                link.port, link.modem, LoRaParams(link.sf, link.bw * 1000, link.cr, 8), region=plan,
                address=0, peers=tuple(d.address for d in link.devices),
                mtu=link.mtu or None, baudrate=link.baud,
            )  # fmt: skip
        from ..serial_link import SerialLink

        return LinkHub(await SerialLink.open(link.port, link.baud, mtu=link.mtu))

    # ------------------------------------------------------------ status out

    def _live_for(self, device: str) -> _Live:
        live = self._live.get(device)
        if live is None:
            live = self._live[device] = _Live()
        return live

    def _on_event_for(self, ex: Execution) -> Callable[[Event], None]:
        live = self._live_for(ex.device)
        live.rate_origin = None

        def on_event(event: Event) -> None:
            if isinstance(event, DeviceInfo):
                got = event.info.device_id.hex()
                if got != ex.device:
                    raise RemoteError(f"the device on this link says it is {got}, "
                                      f"not {ex.device}", Reason.BAD_KEY)  # fmt: skip
                live.state.update(running_version=event.info.running_version,
                                  running_sha256=(event.info.running_sha256 or b"").hex() or None,
                                  update_id=event.update_id.hex())  # fmt: skip
                self._set_device(ex, "transferring", force=True)
            elif isinstance(event, Accepted):
                self._set_device(ex, "transferring", force=True, next_segment=event.next_segment)
            elif isinstance(event, Progress):
                now = time.monotonic()
                if live.rate_origin is None:
                    live.rate_origin = (now, event.confirmed_bytes)
                t0, b0 = live.rate_origin
                rate = (event.confirmed_bytes - b0) / (now - t0) if now > t0 else 0.0
                left = event.total_bytes - event.confirmed_bytes
                self._set_device(
                    ex, "transferring", confirmed_bytes=event.confirmed_bytes,
                    total_bytes=event.total_bytes, rate_bps=round(rate),
                    eta_s=round(left / rate, 1) if rate > 0 else None,
                )  # fmt: skip
            elif isinstance(event, Completed | Rebooting):
                self._set_device(ex, "rebooting", force=True, confirmed_bytes=event.total_bytes
                                 if isinstance(event, Completed) else None,
                                 total_bytes=event.total_bytes
                                 if isinstance(event, Completed) else None,
                                 eta_s=None)  # fmt: skip
            elif isinstance(event, CheckedIn):
                self._set_device(ex, "checking_in", force=True, running_version=event.version)
            elif isinstance(event, Confirmed):
                live.state.update(running_version=event.version)

        return on_event

    def _state_of(self, ex: Execution) -> dict[str, Any]:
        return {"job_id": ex.job_id, "attempt": ex.attempt, "phase": ex.phase,
                "aws": aws_state(ex.phase, ex.reason), "confirmed_bytes": ex.confirmed,
                "total_bytes": ex.total, "reason": ex.reason, "message": ex.message,
                "running_version": ex.running_version}  # fmt: skip

    def _set_device(self, ex: Execution, phase: str, *, force: bool = False, **fields: Any) -> None:
        """Merge into the device's state; publish now (phase change, ``force``) or at most
        once per ``progress_interval``. Phases and confirmed bytes never go back within an
        execution (see the module docstring)."""
        live = self._live_for(ex.device)
        st = live.state
        if st.get("job_id") != ex.job_id or st.get("attempt", 0) != ex.attempt:
            st.clear()  # a new execution, or a new attempt of one: its phases start again
            st.update(self._state_of(ex))
        old_phase = st.get("phase", "queued")
        if _ORDER[phase] < _ORDER.get(old_phase, 0):
            phase = old_phase
        changed = phase != old_phase
        if fields.get("confirmed_bytes") is not None and st.get("confirmed_bytes") \
                and fields.get("total_bytes") == st.get("total_bytes"):  # fmt: skip
            fields["confirmed_bytes"] = max(fields["confirmed_bytes"], st["confirmed_bytes"])
        st.update({k: v for k, v in fields.items() if v is not None or k == "eta_s"})
        st["phase"] = phase
        st["job_id"] = ex.job_id
        st["aws"] = aws_state(phase, st.get("reason"))
        if phase not in TERMINAL and not (phase == "queued" and ex.attempt):
            st["reason"] = None  # (a new attempt, queued, keeps the reason of the last)
        if phase != "queued":
            st.pop("retry_in_s", None)
        self._publish_device(ex.device, force=force or changed)

    def _publish_device(self, device: str, *, force: bool) -> None:
        live = self._live_for(device)
        now = time.monotonic()
        wait = live.last_publish + self.config.progress_interval - now
        if self._closed:
            return
        if not force and wait > 0:
            if live.timer is None:
                live.timer = asyncio.get_running_loop().call_later(
                    wait, lambda: self._publish_device(device, force=True)
                )
            return
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None
        live.last_publish = now
        st = live.state
        assert self.store is not None and self.north is not None
        # the store first, then the broker: a status published is a status recorded
        self.store.update(st["job_id"], device, st["phase"], reason=st.get("reason"),
                          message=st.get("message"), confirmed=st.get("confirmed_bytes"),
                          total=st.get("total_bytes"),
                          running_version=st.get("running_version"))  # fmt: skip
        st["seq"] = self.store.next_seq(device)
        st["device_id"] = device
        st["gateway"] = self.config.gateway_id
        st["t"] = round(time.time(), 3)
        self.north.set_state(self.topics.device_state(device), self._encode(st))

    def _finish(self, ex: Execution, phase: str, reason: str | None, message: str | None) -> None:
        assert self.store is not None
        live = self._live_for(ex.device)
        if live.state.get("job_id") != ex.job_id or live.state.get("attempt", 0) != ex.attempt:
            live.state.clear()
            live.state.update(self._state_of(ex))
        live.state.update(phase=phase, reason=reason, message=message, eta_s=None,
                          aws=aws_state(phase, reason))  # fmt: skip
        if phase != "done":
            live.state["rate_bps"] = None
        self._publish_device(ex.device, force=True)  # records the terminal phase first
        self.log("job_device_end", job_id=ex.job_id, device=ex.device, phase=phase,
                 reason=reason, message=message)  # fmt: skip
        final = self.store.get(ex.job_id, ex.device)
        if final is not None:
            self.finished.put_nowait(final)
        self._publish_result(ex.job_id)
        self._publish_health()

    def _publish_result(self, job_id: str) -> None:
        """The job's result: at once when it is final, else at most once per
        ``progress_interval`` (a job for a thousand devices changes a thousand times)."""
        if job_id in self._result_timers or self._closed:
            return
        assert self.store is not None
        if all(e.terminal for e in self.store.executions(job_id)):
            self._result_now(job_id)
            return

        def go() -> None:
            self._result_timers.pop(job_id, None)
            if not self._closed:
                self._result_now(job_id)

        loop = asyncio.get_running_loop()
        self._result_timers[job_id] = loop.call_later(self.config.progress_interval, go)

    def _result_now(self, job_id: str) -> None:
        assert self.store is not None and self.north is not None
        timer = self._result_timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()
        execs = self.store.executions(job_id)
        devices = {e.device: {"phase": e.phase, "aws": aws_state(e.phase, e.reason),
                              "reason": e.reason, "message": e.message,
                              "attempt": e.attempt} for e in execs}  # fmt: skip
        phases = {e.phase for e in execs}
        if not execs:
            state = "cancelled"
        elif phases <= {"queued"}:
            state = "queued"
        elif not phases <= TERMINAL:
            state = "in_progress"
        elif phases == {"done"}:
            state = "done"
        elif phases == {"cancelled"}:
            state = "cancelled"
        else:
            state = "failed"
        aws = {"queued": "QUEUED", "in_progress": "IN_PROGRESS", "done": "SUCCEEDED",
               "cancelled": "CANCELED", "failed": "FAILED"}[state]  # fmt: skip
        result = {"job_id": job_id, "gateway": self.config.gateway_id, "state": state,
                  "aws": aws, "devices": devices, "t": round(time.time(), 3)}  # fmt: skip
        self.north.set_state(self.topics.result(job_id), self._encode(result))
        if state in ("done", "failed", "cancelled"):
            self._clear_request(job_id)

    def _clear_request(self, job_id: str) -> None:
        """The request's retained message is cleared once the job is finished (the
        result stays): the broker does not collect every request ever made."""
        assert self.north is not None
        self.north.set_state(self.topics.job(job_id), b"")

    def _health(self, state: str) -> bytes:
        assert self.store is not None
        return self._encode({
            "state": state, "gateway": self.config.gateway_id,
            "links": [{"name": link.name, "kind": link.kind, "port": link.port,
                       "devices": len(link.devices),
                       "open": link.name in self._hubs} for link in self.config.links],
            "active_sessions": self.active, "queue_depth": self.store.queue_depth(),
            "since": round(self.started_at, 3), "t": round(time.time(), 3),
        })  # fmt: skip

    def _publish_health(self) -> None:
        if self.north is None or self._health_timer is not None or self._closed:
            return

        def go() -> None:
            self._health_timer = None
            if self.north is not None and self.store is not None:
                self.north.set_state(self.topics.health, self._health("online"))

        # at most a few a second however many sessions start and end
        self._health_timer = asyncio.get_running_loop().call_later(0.25, go)

    @staticmethod
    def _encode(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
