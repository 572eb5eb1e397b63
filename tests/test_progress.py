"""What ``otaferry push`` shows (tools/progress.py), fed real session events."""

from __future__ import annotations

import io
import json

import pytest
from otaferry.protocol.frames import HelloInfo
from otaferry.protocol.session import (
    Accepted,
    CheckedIn,
    Completed,
    Confirmed,
    DeviceInfo,
    Progress,
    Rebooting,
)
from otaferry.tools.progress import ProgressView

INFO = HelloInfo(
    device_id=bytes(8), hw="hw", chip="esp32", running_version="1.0", running_sha256=None,
    security_counter=0, slot_size=1 << 20, max_frame=1024, codecs=("zstd",), max_window_log=13,
    max_segment_payload=8256, max_offer=4096,
)  # fmt: skip
TOTAL = 100_000


def _session(view: ProgressView, monkeypatch: pytest.MonkeyPatch, resumed: int = 0) -> None:
    clock = [0.0]
    monkeypatch.setattr("otaferry.tools.progress.time.monotonic", lambda: clock[0])
    view.t0 = 0.0
    view(DeviceInfo(INFO, resumed or None))
    view(Accepted(resumed))
    for k in range(resumed, 11):
        clock[0] += 1.0
        view(Progress(min(TOTAL, k * 10_000), TOTAL, k, 10))
    view(Completed(TOTAL, 10, resumed))
    view(Rebooting(180.0))
    clock[0] += 5
    view(CheckedIn("1.1"))
    view(Confirmed("1.1"))


def test_plain_lines_have_phase_rate_and_eta_and_no_inf_after_a_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    view = ProgressView(False, out, tty=False)
    _session(view, monkeypatch, resumed=6)
    text = out.getvalue()
    assert "inf" not in text and "ETA --" in text  # no rate yet at the first report
    assert "data" in text and "ETA 0 s" in text and "9.8 KiB/s" in text
    assert "rebooting" in text and "checked in" in text and "confirmed in" in text


def test_the_bar_fits_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv("COLUMNS", "60")
    view = ProgressView(False, out, tty=True)
    _session(view, monkeypatch)
    lines = [ln for ln in out.getvalue().splitlines() if "B" in ln]
    assert lines, out.getvalue()
    plain = [ln.split("\r")[-1] for ln in lines]
    assert all(len(ln) <= 60 for ln in plain if "\x1b" not in ln)
    assert "100.0/100.0 kB" in out.getvalue() or "100.0 kB" in out.getvalue()


def test_json_progress_carries_phase_rate_eta_and_failures(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    view = ProgressView(True)
    _session(view, monkeypatch)
    view.failed("CHECKIN_TIMEOUT", "no check-in")
    events = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "Error" and events[-1]["reason"] == "CHECKIN_TIMEOUT"
    progress = [e for e in events if e["event"] == "Progress"]
    assert progress[0]["eta_s"] is None and progress[-1]["rate_bytes_per_s"] == 10_000
    assert {e["phase"] for e in events} >= {"offer", "data", "reboot", "check-in", "confirmed"}
    assert "Confirmed" in kinds and "CheckedIn" in kinds and "Rebooting" in kinds


def test_push_to_a_port_with_no_device_says_so_and_gives_up_soon(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue [N] 2: with no device, push printed nothing for minutes. Now each retry
    is shown, --retries bounds the handshake, and the error names the likely cause."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("otaferry"))
    for args in (["keygen", "--link", str(tmp_path / "gw.key")],
                 ["keygen", "--link", str(tmp_path / "dev.key")]):  # fmt: skip
        subprocess.run([exe, *args], check=True, capture_output=True)
    (tmp_path / "x.ota").write_bytes(b"OTAF")  # never read: no device answers first
    sim = subprocess.Popen([exe, "linesim", "--baud", "921600", str(tmp_path / "a"),
                            str(tmp_path / "b")], stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(100):
            if (tmp_path / "a").exists():
                break
            time.sleep(0.05)
        t0 = time.monotonic()
        run = subprocess.run(
            [exe, "push", "--port", str(tmp_path / "a"), "--baud", "921600", "--retries", "2",
             "--link-key", str(tmp_path / "gw.key"), "--device-pub", str(tmp_path / "dev.key.pub"),
             str(tmp_path / "x.ota")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - t0
    finally:
        sim.terminate()
        sim.wait(10)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1
    assert sum("waiting for the device" in ln for ln in lines) == 2, run.stderr
    assert lines[-1].startswith("otaferry: error[TIMEOUT]: ") and "no device answered" in lines[-1]
    assert elapsed < 30  # 0.5 + 1 + 2 s of handshake timeouts, not minutes


def test_a_line_that_vanishes_mid_push_is_one_error_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue [N] 1: a link vanishing mid-push printed ~18 lines of asyncio's "Fatal write
    error on serial transport" before the error. Now: the progress so far, one line."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from otaferry.device_fw.device import Device
    from otaferry.protocol.artifact import build_full
    from otaferry.protocol.keys import SigningKey
    from otaferry.protocol.x25519keys import LinkPrivateKey, LinkPublicKey
    from paths import ESP8266_V110, SIMBA_SHELL_OLD

    exe = str(Path(sys.executable).with_name("otaferry"))
    vendor, gw = SigningKey.from_seed(bytes(32)), LinkPrivateKey.from_raw(bytes(range(1, 33)))
    (tmp_path / "gw.key").write_bytes(gw.to_pem())
    flash = tmp_path / "flash.bin"
    Device.create(str(flash), hw="b", chip="esp8266", trusted_keys=[vendor.public.raw],
                  image=SIMBA_SHELL_OLD.read_bytes(), version="1", gateways=[gw.public.raw],
                  ).close()  # fmt: skip
    with Device(str(flash)) as dev:
        (tmp_path / "dev.pub").write_bytes(LinkPublicKey.from_raw(dev.link_public()).to_pem())
    (tmp_path / "new.ota").write_bytes(build_full(ESP8266_V110.read_bytes(), vendor, hw=["b"],
                                                  chip="esp8266", version="2"))  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    sim = subprocess.Popen([exe, "linesim", "--baud", "115200", str(a), str(b)],
                           stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(100):
        if a.exists() and b.exists():
            break
        time.sleep(0.05)
    device = subprocess.Popen([exe, "device", "run", "--quiet", "--port", str(b), "--flash",
                               str(flash)])  # fmt: skip
    try:
        push = subprocess.Popen(
            [exe, "push", "--port", str(a), "--link-key", str(tmp_path / "gw.key"),
             "--device-pub", str(tmp_path / "dev.pub"), str(tmp_path / "new.ota")],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(4.0)  # into the data phase
        sim.kill()  # the line (the USB adapter) is gone
        _, err = push.communicate(timeout=120)
    finally:
        device.terminate()
        device.wait(10)
        if sim.poll() is None:
            sim.kill()
    lines = err.strip().splitlines()
    assert push.returncode == 1, err
    assert "Traceback" not in err and "Fatal write error" not in err, err
    assert lines[-1].startswith("otaferry: error["), err
    assert sum(ln.startswith("otaferry: error[") for ln in lines) == 1
