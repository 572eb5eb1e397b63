"""The gateway's MQTT topic scheme (README "Gateway: topics"), in one place.

Everything lives under ``<prefix>/<gateway>/`` (``prefix`` from the config,
default ``otaferry``). Payloads are JSON objects (UTF-8), so a person can follow
a site with ``mosquitto_sub -v -t 'otaferry/site-7/#'``.

in (the cloud publishes, the gateway subscribes):
  jobs/<job_id>              retained; {"op": "update", "devices": [...], "artifacts": [sha256...]}
                             or {"op": "cancel"} (replaces the request); QoS 1
  artifact/<sha256>/chunk/<i>  {"index", "count", "size", "data": base64}; retained, QoS 1
                             (so an upload made while the gateway is away reaches it; the
                             gateway clears them once it accepted the artifact)

out (the gateway publishes, all retained, QoS 1):
  health                     {"state": "online"|"offline", "links", "active_sessions",
                              "queue_depth"} (the last will sets "offline")
  device/<device_id>/state   {"seq", "job_id", "attempt", "phase", "aws", "confirmed_bytes",
                              "total_bytes", "rate_bps", "eta_s", "reason", "message",
                              "running_version", "running_sha256", ...}
  job/<job_id>/result        {"job_id", "state", "aws", "devices": {<device_id>: {...}}}
  artifact/<sha256>/state    {"state": "receiving"|"accepted"|"rejected"|"wanted", "reason", ...}
"""

from __future__ import annotations

import re

__all__ = ["Topics", "valid_job_id"]

_JOB_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def valid_job_id(job_id: str) -> bool:
    """A submitter's job id: 1..64 of ``A-Z a-z 0-9 _ . : -`` (the AWS IoT Jobs alphabet)."""
    return bool(_JOB_ID.match(job_id))


def valid_sha256(text: str) -> bool:
    return bool(_SHA.match(text))


class Topics:
    """The topics of one gateway."""

    def __init__(self, prefix: str, gateway_id: str) -> None:
        self.root = f"{prefix}/{gateway_id}"

    # in
    def job(self, job_id: str) -> str:
        return f"{self.root}/jobs/{job_id}"

    @property
    def jobs_filter(self) -> str:
        return f"{self.root}/jobs/+"

    def chunk(self, sha256: str, index: int) -> str:
        return f"{self.root}/artifact/{sha256}/chunk/{index}"

    @property
    def chunks_filter(self) -> str:
        return f"{self.root}/artifact/+/chunk/+"

    # out
    @property
    def health(self) -> str:
        return f"{self.root}/health"

    def device_state(self, device_id: str) -> str:
        return f"{self.root}/device/{device_id}/state"

    @property
    def device_states_filter(self) -> str:
        return f"{self.root}/device/+/state"

    def result(self, job_id: str) -> str:
        return f"{self.root}/job/{job_id}/result"

    @property
    def results_filter(self) -> str:
        return f"{self.root}/job/+/result"

    def artifact_state(self, sha256: str) -> str:
        return f"{self.root}/artifact/{sha256}/state"

    def parse(self, topic: str) -> tuple[str, str] | None:
        """(kind, key) of an incoming topic: ("job", job_id) or ("chunk", sha256)."""
        if not topic.startswith(self.root + "/"):
            return None
        parts = topic[len(self.root) + 1 :].split("/")
        if len(parts) == 2 and parts[0] == "jobs":
            return "job", parts[1]
        if len(parts) == 4 and parts[0] == "artifact" and parts[2] == "chunk":
            return "chunk", parts[1]
        return None
