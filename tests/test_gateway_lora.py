"""The gateway with a LoRa modem link: one ``otaferry lora-sim`` (real ptys, each
speaking the RAK3172's AT protocol), the gateway's modem at address 0 named in its
``gateway.toml`` (``kind = "lora"``), two devices (``device run --lora-modem``) at
addresses 1 and 2 behind it, a job for both over MQTT (the embedded broker, its own
process) that ends done only after each device checked in over the air.

US915 at SF7 / 500 kHz keeps it short (no duty cycle to wait out, the 400 ms dwell
enforced); the emulator's stats must show no dwell or duty-cycle violation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gateway_harness import EmbeddedBroker, Site, Watcher, wait_for
from otaferry.tools.sample_fw import make_image

pytestmark = pytest.mark.timeout(180)


def test_a_job_over_mqtt_to_two_devices_behind_a_lora_modem(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path)
    s = Site(tmp_path / "site", broker.url, lora_modem="rak3172")
    try:
        s.old = make_image("1.0.0", revision=0, code_size=3_000)
        s.new = make_image("1.1.0", revision=1, secure_version=1, code_size=3_000)
        devices = [s.add_device(f"dev{i}") for i in range(2)]
        s.start_lora()
        ota = s.artifact()
        w = Watcher(s.broker_url, f"{s.prefix}/#")
        s.start_gateway()
        args = [a for d in devices for a in ("--device", d.device_id)]
        job = s.submit(*args, "--job-id", "lora-1", str(ota))
        out, err = job.communicate(timeout=150)
        assert job.returncode == 0, err + s.log_path.read_text()  # type: ignore[union-attr]
        assert "job lora-1: done (SUCCEEDED)" in out
        for d in devices:
            assert d.running()["version"] == "1.1.0" and d.running()["state"] == "VALID"
            states = wait_for(lambda d=d: [st for st in w.states(f"/device/{d.device_id}/state")
                                           if st["phase"] == "done"], 10, "done")  # fmt: skip
            phases = [st["phase"] for st in w.states(f"/device/{d.device_id}/state")]
            assert "checking_in" in phases and phases[-1] == "done"
            assert states[-1]["running_version"] == "1.1.0"
        health = w.states("/health")
        assert health[-1]["links"][0]["kind"] == "lora"
        assert max(h.get("active_sessions", 0) for h in health) == 2  # both at once on one modem
        events = s.log_events()
        assert [e["phase"] for e in events if e["event"] == "job_device_end"] == ["done", "done"]
        s.kill_gateway()
        w.stop()
    finally:
        s.close()
        broker.stop()
    report = json.loads(s.stats.read_text())
    assert set(report["modems"]) == {"0", "1", "2"}
    for one in report["modems"].values():
        assert one["tx_packets"] > 0
        assert one["duty_cycle_violations"] == 0 and one["dwell_violations"] == 0
