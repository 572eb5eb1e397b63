"""The gateway end to end with real brokers: jobs over MQTT (the Mosquitto on
127.0.0.1:1883, a prefix of each test's own; a Mosquitto of the test's own for TLS and
restarts), the gateway as its own process, devices as ``otaferry device run`` behind
``otaferry linesim``; the submitter is the ``otaferry job`` CLI.

What reached the broker is what counts: a :class:`Watcher` records every message under
the site's prefix, and the device's flash is read at the end."""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import MOSQUITTO, Broker, Site, Watcher, make_pki, port_open, site, wait_for

pytestmark = pytest.mark.timeout(180)
LOCAL = "mqtt://127.0.0.1:1883"
PHASE_ORDER = ["queued", "transferring", "rebooting", "checking_in",
               "done", "failed", "rolled_back", "cancelled"]  # fmt: skip


@pytest.fixture(scope="module")
def local_broker() -> str:
    if not port_open(1883):
        pytest.skip("no Mosquitto on 127.0.0.1:1883 (CI and this machine have one)")
    return LOCAL


def _watch(s: Site) -> Watcher:
    return Watcher(s.broker_url, f"{s.prefix}/#", s.tls)


def _device_states(w: Watcher, device: str) -> list[dict[str, Any]]:
    return w.states(f"/device/{device}/state")


def _assert_never_backwards(states: list[dict[str, Any]]) -> None:
    """Sequence numbers never go back (a subscriber that reconnects is sent the retained
    state again: the same message); within a job the phase and the bytes never go back."""
    dedup: list[dict[str, Any]] = []
    for st in states:
        if dedup and st == dedup[-1]:
            continue
        dedup.append(st)
    states = dedup
    seqs = [st["seq"] for st in states]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for st in states:
        by_job[st["job_id"]].append(st)
    for job_states in by_job.values():
        phases = [PHASE_ORDER.index(st["phase"]) for st in job_states]
        assert phases == sorted(phases), [st["phase"] for st in job_states]
        done = [st.get("confirmed_bytes") or 0 for st in job_states]
        assert done == sorted(done)


def _finish(proc: Any, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_a_job_over_mqtt_updates_a_device_and_the_broker_shows_it(
    tmp_path: Path, local_broker: str
) -> None:
    with site(tmp_path, local_broker) as s:
        dev = s.devices[0]
        ota = s.artifact()
        w = _watch(s)
        s.start_gateway()
        rc, out, err = _finish(s.submit("--device", dev.device_id, "--job-id", "job-1", str(ota)))
        assert rc == 0, err
        assert "job job-1: done (SUCCEEDED)" in out
        assert dev.running()["version"] == "1.1.0" and dev.running()["state"] == "VALID"
        states = wait_for(lambda: [st for st in _device_states(w, dev.device_id)
                                   if st["phase"] == "done"] and _device_states(w, dev.device_id),
                          10, "the final state on the broker")  # fmt: skip
        _assert_never_backwards(states)
        phases = [st["phase"] for st in states]
        # (a "queued" replaced before it left, by the session starting, is never sent;
        # so may a "rebooting" be, as the new image checks in on a resumed channel at
        # once, SPEC 8.9)
        for phase in ("transferring", "checking_in", "done"):
            assert phase in phases
        moving = [st for st in states if st["phase"] == "transferring" and st["total_bytes"]]
        assert moving and all(0 < st["confirmed_bytes"] <= st["total_bytes"] for st in moving)
        final = states[-1]
        assert final["aws"] == "SUCCEEDED" and final["running_version"] == "1.1.0"
        assert final["running_sha256"] and len(final["running_sha256"]) == 64
        # bounded status traffic: far fewer state messages than frames (40+ DATA frames)
        assert len(states) < 20

        # the same job delivered again (a submitter that retries): accepted once, run once
        rc, out, err = _finish(s.submit("--device", dev.device_id, "--job-id", "job-1", str(ota)))
        assert rc == 0, err
        status = s.job("status", *s.broker_args(), "--json", "job-1")
        assert status.returncode == 0, status.stderr
        got = json.loads(status.stdout)
        assert got["result"]["state"] == "done" and got["result"]["aws"] == "SUCCEEDED"
        listing = s.job("list", *s.broker_args())
        assert "job-1" in listing.stdout and "online" in listing.stdout
        s.kill_gateway(signal.SIGTERM)
        events = s.log_events()
        assert sum(e["event"] == "job_accepted" for e in events) == 1
        assert sum(e["event"] == "job_device_end" for e in events) == 1
        health = wait_for(lambda: w.states("/health") and w.states("/health")[-1], 5, "health")
        assert health["state"] == "offline"  # a clean stop says so itself
        w.stop()


def test_gateway_killed_mid_job_resumes_and_finishes_once(
    tmp_path: Path, local_broker: str
) -> None:
    with site(tmp_path, local_broker) as s:
        dev = s.devices[0]
        s.new = s.new + bytes(range(256)) * 200  # a bigger image: time to kill in the middle
        ota = s.artifact()
        w = _watch(s)
        s.start_gateway()
        submit = s.submit("--device", dev.device_id, "--job-id", "kill-1", str(ota))
        wait_for(lambda: any(st["phase"] == "transferring" and st.get("confirmed_bytes")
                             for st in _device_states(w, dev.device_id)), 60,
                 "bytes moving")  # fmt: skip
        s.kill_gateway(signal.SIGKILL)
        before = _device_states(w, dev.device_id)[-1]
        assert before["phase"] == "transferring"
        time.sleep(0.3)
        s.start_gateway()  # same store, same cache: it resumes where the device stands
        rc, _, err = _finish(submit)
        assert rc == 0, err
        assert dev.running()["version"] == "1.1.0" and dev.running()["state"] == "VALID"
        states = _device_states(w, dev.device_id)
        _assert_never_backwards(states)
        assert [st["phase"] for st in states].count("done") == 1
        events = s.log_events()
        starts = [e for e in events if e["event"] == "gateway_start"]
        assert [e["resumed"] for e in starts] == [0, 1]
        ends = [e for e in events if e["event"] == "job_device_end"]
        assert len(ends) == 1 and ends[0]["phase"] == "done"
        # the device resumed: the second session did not start the payload again
        resumed = [st for st in states if st["seq"] > before["seq"] and st.get("next_segment")]
        assert resumed and resumed[0]["next_segment"] > 0
        w.stop()


def test_three_links_at_once_one_rollback_reported(tmp_path: Path, local_broker: str) -> None:
    with site(tmp_path, local_broker, n=3, flags={1: ("--fail-self-test",)}) as s:
        ota = s.artifact()
        w = _watch(s)
        s.start_gateway()
        args = [a for d in s.devices for a in ("--device", d.device_id)]
        rc, _, err = _finish(s.submit(*args, "--job-id", "fleet-1", str(ota)))
        assert rc == 1
        assert "error[SELF_TEST_FAILED]" in err and s.devices[1].device_id in err
        result = w.states("/job/fleet-1/result")[-1]
        assert result["state"] == "failed"
        by_dev = result["devices"]
        assert by_dev[s.devices[0].device_id]["phase"] == "done"
        assert by_dev[s.devices[2].device_id]["phase"] == "done"
        bad = by_dev[s.devices[1].device_id]
        assert (bad["phase"], bad["reason"], bad["aws"]) == ("rolled_back", "SELF_TEST_FAILED",
                                                             "FAILED")  # fmt: skip
        assert s.devices[1].running()["version"] == "1.0.0"
        assert s.devices[0].running()["version"] == s.devices[2].running()["version"] == "1.1.0"
        # the sessions overlapped: each link ran its own at the same time
        active = [h.get("active_sessions", 0) for h in w.states("/health")]
        assert max(active) >= 2
        w.stop()


def test_cancel_before_and_during(tmp_path: Path, local_broker: str) -> None:
    with site(tmp_path, local_broker) as s:
        dev = s.devices[0]
        dev.stop()  # no device on the line: a started session cannot finish by itself
        dev.linesim = None
        dev.start()
        assert dev.proc is not None
        dev.proc.kill()
        dev.proc.wait()
        ota = s.artifact()
        w = _watch(s)
        # submitted while the gateway is down (the requests are retained), one cancelled
        for job in ("c-run", "c-early"):
            p = s.submit("--device", dev.device_id, "--job-id", job, str(ota), wait=False)
            assert _finish(p)[0] == 0
        assert s.job("cancel", *s.broker_args(), "c-early").returncode == 0
        s.start_gateway()
        wait_for(lambda: any(st["job_id"] == "c-run" and st["phase"] == "transferring"
                             for st in _device_states(w, dev.device_id)), 30,
                 "the session to start")  # fmt: skip
        assert s.job("cancel", *s.broker_args(), "c-run").returncode == 0
        for job in ("c-run", "c-early"):
            res = wait_for(lambda j=job: [r for r in w.states(f"/job/{j}/result")
                                          if r["state"] == "cancelled"],
                           30, f"{job} cancelled")  # fmt: skip
            assert res[-1]["aws"] == "CANCELED"
        status = s.job("status", *s.broker_args(), "c-run")
        assert "cancelled (CANCELED)" in status.stdout
        w.stop()


@pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="no mosquitto binary")
def test_broker_restarted_mid_job(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    try:
        with site(tmp_path / "site", broker.url) as s:
            dev = s.devices[0]
            s.new = s.new + bytes(range(256)) * 200
            ota = s.artifact()
            w = _watch(s)
            s.start_gateway()
            p = s.submit("--device", dev.device_id, "--job-id", "b-1", str(ota), wait=False)
            assert _finish(p)[0] == 0
            wait_for(lambda: any(st["phase"] == "transferring"
                                 for st in _device_states(w, dev.device_id)),
                     30, "transfer")  # fmt: skip
            broker.stop()
            time.sleep(1.0)  # the session goes on meanwhile; its states wait in the outbox
            broker.start()
            wait_for(lambda: [st for st in _device_states(w, dev.device_id)
                              if st["phase"] == "done"], 60, "done after the restart")  # fmt: skip
            assert dev.running()["version"] == "1.1.0"
            status = s.job("status", *s.broker_args(), "b-1")
            assert "b-1: done" in status.stdout, status.stdout + status.stderr
            events = s.log_events()
            assert sum(e["event"] == "mqtt_connected" for e in events) >= 2
            assert any(e["event"] == "mqtt_down" for e in events)
            _assert_never_backwards(_device_states(w, dev.device_id))
            w.stop()
    finally:
        broker.stop()


@pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="no mosquitto binary")
def test_mutual_tls_end_to_end(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", ["site-1", "operator"])
    broker = Broker(tmp_path / "broker", tls=pki)
    try:
        gw_tls = {"ca": str(pki["ca"]), "cert": str(pki["site-1_cert"]),
                  "key": str(pki["site-1_key"])}  # fmt: skip
        with site(tmp_path / "site", broker.url, tls=gw_tls) as s:
            dev = s.devices[0]
            ota = s.artifact()
            s.start_gateway()
            s.tls = {"ca": str(pki["ca"]), "cert": str(pki["operator_cert"]),
                     "key": str(pki["operator_key"])}  # fmt: skip
            rc, _, err = _finish(s.submit("--device", dev.device_id, "--job-id", "tls-1",
                                            str(ota)))  # fmt: skip
            assert rc == 0, err
            assert dev.running()["version"] == "1.1.0"
            # without a client certificate the broker lets no one in
            no_cert = s.job("list", "--broker", broker.url, "--ca", str(pki["ca"]),
                            "--gateway", s.gateway_id, "--prefix", s.prefix,
                            timeout=60)  # fmt: skip
            assert no_cert.returncode == 1
            assert no_cert.stderr.startswith("otaferry: error[IO_ERROR]: cannot connect")
            assert len(no_cert.stderr.strip().splitlines()) == 1
    finally:
        broker.stop()


def test_demo_gateway(tmp_path: Path, local_broker: str) -> None:
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("otaferry"))
    proc = subprocess.run([exe, "demo", "--gateway", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=150)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "job demo-job-1         : done (SUCCEEDED)" in proc.stdout
    assert proc.stdout.count("runs 1.1.0 in ota_1 (VALID)") == 2
    assert "[ broker] the one answering on 127.0.0.1:1883" in proc.stdout
    # the shared broker keeps none of the demo's retained states (2 devices, job, health,
    # artifact)
    assert "[ broker] 5 retained demo messages cleared" in proc.stdout
    assert "Traceback" not in proc.stderr
