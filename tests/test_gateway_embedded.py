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
