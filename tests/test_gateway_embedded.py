"""The gateway scenarios on otaferry's embedded broker (``otaferry broker``, its own
process) instead of Mosquitto: a job end to end through the ``otaferry job`` CLI, the
same job delivered again (accepted once, run once), the gateway SIGKILLed (its will
marks it offline) and started again mid-job (it finishes once); and ``otaferry demo
--gateway --broker embedded``, the quick start's broker on a machine with no Mosquitto."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import EmbeddedBroker, Site, Watcher, site, wait_for

pytestmark = pytest.mark.timeout(180)
OTAFERRY = str(Path(sys.executable).with_name("otaferry"))


@pytest.fixture
def embedded(tmp_path: Path) -> Any:
    b = EmbeddedBroker(tmp_path)
    try:
        yield b
    finally:
        b.stop()


def _watch(s: Site) -> Watcher:
    return Watcher(s.broker_url, f"{s.prefix}/#")


def test_gateway_on_the_embedded_broker(tmp_path: Path, embedded: EmbeddedBroker) -> None:
    with site(tmp_path / "site", embedded.url) as s:
        dev = s.devices[0]
        s.new = s.new + bytes(range(256)) * 200  # time to kill the gateway in the middle
        ota = s.artifact()
        w = _watch(s)
        s.start_gateway()
        first = s.submit("--device", dev.device_id, "--job-id", "e-1", str(ota))
        states = lambda: w.states(f"/device/{dev.device_id}/state")  # noqa: E731
        wait_for(lambda: any(st["phase"] == "transferring" and st.get("confirmed_bytes")
                             for st in states()), 60, "bytes moving")  # fmt: skip
        s.kill_gateway(signal.SIGKILL)
        # the broker saw the socket go without a DISCONNECT: the gateway's will
        health = wait_for(lambda: [h for h in w.states("/health") if h["state"] == "offline"],
                          10, "the will")  # fmt: skip
        assert health[-1]["gateway"] == s.gateway_id
        time.sleep(0.3)
        s.start_gateway()  # its persistent session on the broker, its store: it resumes
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        assert "job e-1: done (SUCCEEDED)" in out
        assert dev.running()["version"] == "1.1.0" and dev.running()["state"] == "VALID"
        # the same job again (a submitter that retries): accepted once, run once
        again = s.submit("--device", dev.device_id, "--job-id", "e-1", str(ota))
        out, err = again.communicate(timeout=60)
        assert again.returncode == 0 and "job e-1: done (SUCCEEDED)" in out, err
        status = s.job("status", *s.broker_args(), "e-1")
        assert "e-1: done (SUCCEEDED)" in status.stdout, status.stdout + status.stderr
        events = s.log_events()
        assert sum(e["event"] == "job_accepted" for e in events) == 1
        ends = [e for e in events if e["event"] == "job_device_end"]
        assert len(ends) == 1 and ends[0]["phase"] == "done"
        assert [e["resumed"] for e in events if e["event"] == "gateway_start"] == [0, 1]
        seqs = [st["seq"] for st in states()]
        assert [st["phase"] for st in states()].count("done") == 1
        assert max(seqs) == seqs[-1]  # the last state published is the newest
        s.kill_gateway(signal.SIGTERM)
        w.stop()
    assert embedded.alive()
    log = embedded.log.read_text()
    assert "malformed" not in log and "queue_full" not in log


def test_demo_gateway_on_the_embedded_broker(tmp_path: Path) -> None:
    proc = subprocess.run([OTAFERRY, "demo", "--gateway", "--broker", "embedded",
                           "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[ broker] embedded (otaferry's own MQTT 3.1.1 broker" in proc.stdout
    assert "job demo-job-1         : done (SUCCEEDED)" in proc.stdout
    assert proc.stdout.count("runs 1.1.0 in ota_1 (VALID)") == 2
    assert "checking_in" in proc.stdout  # the states were followed to the check-in
    assert "Traceback" not in proc.stderr
    bad = subprocess.run([OTAFERRY, "demo", "--broker", "embedded"], capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 2 and "--broker goes with --gateway" in bad.stderr


def test_retry_policy_gives_a_timed_out_device_new_attempts(
    tmp_path: Path, embedded: EmbeddedBroker
) -> None:
    """``[retry] timed_out = 1``: an execution whose device does not answer gets one new
    attempt after its backoff; a device that is back by then is updated (done, attempt
    1), one that is not ends TIMED_OUT after the last attempt."""
    with site(tmp_path / "site", embedded.url) as s:
        s.settings["retries"] = 2  # the handshake gives up after 0.3 + 0.6 + 1.2 s
        s.tables = "[retry]\ntimed_out = 1\nbackoff = 1.0\n"
        dev = s.devices[0]
        assert dev.proc is not None
        dev.proc.kill()  # the line is there, the device is not
        dev.proc.wait()
        ota = s.artifact()
        w = _watch(s)
        s.start_gateway()

        def states(job: str) -> list[dict[str, Any]]:
            return [st for st in w.states(f"/device/{dev.device_id}/state")
                    if st["job_id"] == job]  # fmt: skip

        assert s.submit("--device", dev.device_id, "--job-id", "gone-1", str(ota),
                        wait=False).wait(timeout=30) == 0  # fmt: skip
        result = wait_for(lambda: [r for r in w.states("/job/gone-1/result")
                                   if r["state"] == "failed"], 30, "gone-1 to fail")  # fmt: skip
        final = result[-1]["devices"][dev.device_id]
        assert (final["phase"], final["reason"], final["aws"], final["attempt"]) == (
            "failed", "TIMEOUT", "TIMED_OUT", 1)  # fmt: skip
        retried = [st for st in states("gone-1") if st["phase"] == "queued" and st["attempt"]]
        assert retried and retried[0]["reason"] == "TIMEOUT" and retried[0]["aws"] == "QUEUED"
        assert "attempt 2 of 2 in 1 s" in retried[0]["message"]

        back = s.submit("--device", dev.device_id, "--job-id", "back-1", str(ota))
        wait_for(lambda: any(st["attempt"] == 1 for st in states("back-1")), 30,
                 "the first attempt to time out")  # fmt: skip
        dev.start()  # the device is back before the new attempt's handshake ends
        out, err = back.communicate(timeout=60)
        assert back.returncode == 0, err
        assert "job back-1: done (SUCCEEDED)" in out
        assert dev.running()["version"] == "1.1.0"
        result = wait_for(lambda: [r for r in w.states("/job/back-1/result")
                                   if r["state"] == "done"], 10, "back-1's result")  # fmt: skip
        final = result[-1]["devices"][dev.device_id]
        assert (final["phase"], final["attempt"], final["reason"]) == ("done", 1, None)
        phases = [(st["attempt"], st["phase"]) for st in states("back-1")]
        assert phases[-1] == (1, "done") and (1, "queued") in phases
        attempts = [a for a, _ in phases]
        assert attempts == sorted(attempts)  # an attempt never comes back after a newer one
        events = s.log_events()
        assert [(e["job_id"], e["attempt"]) for e in events if e["event"] == "job_retry"] == [
            ("gone-1", 1), ("back-1", 1)]  # fmt: skip
        s.kill_gateway(signal.SIGTERM)
        w.stop()
