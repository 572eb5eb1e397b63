"""device_fw under the real ``micropython`` command (the MicroPython unix port
from the dev extra): recorded sessions replayed into it (plaintext and secure,
full and delta) must get the very replies the CPython device gave and leave
the same flash, byte for byte; a refused update is refused with the device's
own reason; the deflate golden vectors decode alike; and a push from the
CPython host to ``otaferry device run --runtime micropython`` over a real pty
completes a full and then a delta update."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from link_harness import GATEWAY, KEY, image, make_flash
from mpy_harness import SEED, parse_records, record
from otaferry.device_fw.device import Device
from otaferry.protocol.artifact import build_delta, build_full
from otaferry.protocol.errors import OtaferryError, Reason
from otaferry.protocol.keys import SigningKey
from otaferry.tools.mpy import run_mp

VECTORS = Path(__file__).parent / "vectors" / "deflate" / "segments.json"
OLD = image(32)
NEW = image(32, b"new")[:12000] + OLD[12000:]
HEAP = 512 * 1024  # the modules compiled from source take ~165 KB of it (frozen on a board)


def mp(*args: str, heap: int = HEAP, code: str = "source") -> dict:
    done = run_mp(list(args), heap=heap, timeout=120, code=code)
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def artifact(kind: str, key: SigningKey = KEY) -> bytes:
    common = dict(hw=["hw"], chip="chip", version="new", security_counter=1)
    if kind == "delta":
        return build_delta(OLD, NEW, key, **common)
    return build_full(NEW, key, codec="deflate", **common)


def flash(tmp_path: Path, secure: bool) -> str:
    path = make_flash(str(tmp_path / "f.bin"), OLD)
    if not secure:
        with Device(path) as d:
            d.provision(require_secure=False)
    return path


@pytest.mark.parametrize(("kind", "secure", "code"),
                         [("deflate", False, "source"), ("delta", True, "romfs"),
                          ("delta", False, "mpy"), ("deflate", True, "romfs")])  # fmt: skip
def test_recorded_session_replays_byte_for_byte(tmp_path, kind, secure, code):
    path = flash(tmp_path, secure)
    rec = asyncio.run(record(path, artifact(kind), secure, tmp_path))
    out = tmp_path / "out.bin"
    result = mp("replay", rec["before"], rec["fed"], str(out), SEED, code=code)
    assert result["ok"] and result["phase"] == "done", result
    assert parse_records(out.read_bytes()) == rec["replies"]  # every reply, in order
    same_flash(rec["before"], path)
    with Device(rec["before"], read_only=True) as d:
        slot = d.passive_slot()
        assert bytes(d.flash.read(slot.offset, len(NEW))) == NEW


def same_flash(mpy: str, cpy: str) -> None:
    """Byte for byte outside the store; the same state in it (MicroPython's dicts
    iterate in another order, so the store's msgpack maps differ in key order)."""
    a, b = Path(mpy).read_bytes(), Path(cpy).read_bytes()
    with Device(mpy, read_only=True) as d, Device(cpy, read_only=True) as e:
        nvs = next(p for p in d.parts if p.label == "nvs")
        assert d.state == e.state
    assert a[: nvs.offset] == b[: nvs.offset] and a[nvs.end :] == b[nvs.end :]


def test_refusal_is_the_devices_own_reason(tmp_path):
    """Signed by a key the device does not trust: the host sends it (a gateway
    need not hold keys), the device refuses it with UNKNOWN_KEY — under
    MicroPython with the same REJECT bytes as on CPython."""
    path = flash(tmp_path, secure=True)
    stranger = SigningKey.from_seed(bytes(32))
    rec = asyncio.run(record(path, artifact("delta", stranger), True, tmp_path))
    assert isinstance(rec["error"], OtaferryError)
    assert rec["error"].reason == Reason.UNKNOWN_KEY
    out = tmp_path / "out.bin"
    result = mp("replay", rec["before"], rec["fed"], str(out), SEED)
    assert result["ok"] and result["phase"] == "rejected", result
    assert parse_records(out.read_bytes()) == rec["replies"]  # the same sealed REJECT


def test_deflate_vectors_decode_alike_under_both_interpreters():
    v = json.loads(VECTORS.read_text())
    under_mpy = mp("deflate", str(VECTORS))
    assert "zstd" not in under_mpy["codecs"] and "deflate" in under_mpy["codecs"]
    here = subprocess.run([sys.executable, "-m", "otaferry.device_fw.mp_run", "deflate",
                           str(VECTORS)], capture_output=True, text=True, check=True)  # fmt: skip
    under_cpy = json.loads(here.stdout.strip().splitlines()[-1])
    import hashlib

    img = bytes.fromhex(v["image_hex"])
    seg = v["segment_size"]
    want = [hashlib.sha256(img[i * seg : (i + 1) * seg]).hexdigest() for i in range(len(v["good"]))]
    want.append(hashlib.sha256(bytes.fromhex(v["stored_block"]["out_hex"])).hexdigest())
    for results in (under_mpy["results"], under_cpy["results"]):
        assert results[: len(want)] == want
        bad = results[len(want) :]
        assert len(bad) == len(v["bad"]) and all(r.startswith("error") for r in bad)


def test_romfs_code_runs_in_place_outside_the_heap(tmp_path):
    """The same install with device_fw from .mpy files (loaded into the heap)
    and from a ROMFS image (imported in place): the ROMFS leaves in the heap
    only what import creates (module dicts, functions, qstrs), not bytecode."""
    ota = tmp_path / "d.ota"
    ota.write_bytes(artifact("delta"))
    code = {}
    for mode in ("mpy", "romfs"):
        path = flash(tmp_path, secure=True)
        r = mp("install", path, str(ota), code=mode)
        assert r["ok"] and r["decoded"] > 0, r
        code[mode] = r["heap_code"]
    assert code["romfs"] < 0.7 * code["mpy"], code


def test_the_delta_budget_follows_the_heap(tmp_path):
    """The MicroPython device checks deltas against what its heap allows,
    never above what was provisioned (SPEC 7.6's terms for fdelta3): in a large
    heap a third of the free heap once open goes to the payload; in a small one
    what leaves the session its working memory, up to the buffer reserved before
    the imports; a heap that cannot hold an install refuses with the device's
    reason, one line, the flash untouched."""
    from otaferry.device_fw.delta_apply import CODEC3, ram_budget
    from otaferry.device_fw.device import DEFAULT_LIMITS
    from otaferry.device_fw.mp_run import early_payload

    ota = tmp_path / "d.ota"
    ota.write_bytes(artifact("delta"))
    seen, free = {}, {}
    for heap, provisioned in ((192, 65536), (256, 1 << 20), (512, 1 << 20), (512, 65536),
                              (128, 65536)):  # fmt: skip
        path = str(tmp_path / "f.bin")
        Device.create(path, hw="hw", chip="chip", trusted_keys=[KEY.public.raw], image=OLD,
                      version="old", gateways=[GATEWAY.public.raw],
                      limits=dict(DEFAULT_LIMITS, ram_budget=provisioned)).close()  # fmt: skip
        before = Path(path).read_bytes()
        r = mp("install", path, str(ota), heap=heap * 1024, code="romfs")
        seen[heap, provisioned] = r["ram_budget"]
        free[heap, provisioned] = r["heap_free_open"]
        if heap == 128:
            assert (r["ok"], r["reason_name"]) == (False, "RESOURCE_LIMIT"), r
            assert Path(path).read_bytes() == before
            continue
        assert r["ok"], r
        third = ram_budget(r["heap_free_open"] // 3, codec=CODEC3)
        assert r["ram_budget"] <= min(max(third, ram_budget(early_payload(), codec=CODEC3)),
                                      provisioned), r  # fmt: skip
    assert seen[512, 1 << 20] == ram_budget(free[512, 1 << 20] // 3, codec=CODEC3)  # it grew
    assert seen[192, 65536] <= 65536 <= seen[256, 1 << 20] < seen[512, 1 << 20] < 1 << 20
    assert seen[512, 65536] == 65536


def test_the_hello_announces_the_budget_the_device_checks(tmp_path):
    """HELLO field 18 (SPEC 8.3) from the real interpreter: a device provisioned
    with a 60,000-byte delta budget announces at power-on the budget it then checks
    deltas against; from that HELLO alone the host's precheck refuses a delta that
    the device, sent it anyway, refuses with the same reason, the flash untouched."""
    import random

    from otaferry.device_fw.device import DEFAULT_LIMITS
    from otaferry.protocol.artifact import device_ram_bytes
    from otaferry.protocol.frames import HelloInfo, decode_frame
    from otaferry.protocol.framing import FrameDecoder
    from otaferry.protocol.manifest import Manifest
    from otaferry.protocol.session import precheck, split_artifact

    rng = random.Random(7)  # a change that does not compress: segments needing > 60,000 B
    old = rng.randbytes(32 * 1024)
    new = rng.randbytes(20 * 1024) + old[20 * 1024 :]
    ota = build_delta(old, new, KEY, hw=["hw"], chip="chip", version="new", security_counter=1,
                      codecs=["fdelta1"])  # fmt: skip
    manifest = Manifest.decode(split_artifact(ota)[0])
    assert 60_000 < device_ram_bytes(manifest) <= 65_536
    (tmp_path / "d.ota").write_bytes(ota)
    path = str(tmp_path / "f.bin")
    Device.create(path, hw="hw", chip="chip", trusted_keys=[KEY.public.raw], image=old,
                  version="old", gateways=[GATEWAY.public.raw],
                  limits=dict(DEFAULT_LIMITS, ram_budget=60_000)).close()  # fmt: skip
    with Device(path) as d:
        d.provision(require_secure=False)  # plaintext: it says HELLO unasked at power-on
    (tmp_path / "none.bin").write_bytes(b"")
    out = tmp_path / "out.bin"
    r = mp("replay", path, str(tmp_path / "none.bin"), str(out), SEED, code="romfs")
    assert r["ok"] and r["ram_budget"] == 60_000, r
    power_on = parse_records(out.read_bytes())[0]
    parts = [decode_frame(body) for body in FrameDecoder().feed(power_on)]
    info = HelloInfo.decode(b"".join(p.chunk for p in parts))
    assert info.ram_budget == r["ram_budget"]
    assert precheck(manifest, info) == (
        Reason.RESOURCE_LIMIT,
        f"delta needs {device_ram_bytes(manifest)} bytes of RAM, the device allows 60000: "
        "rebuild it with otaferry build --base ... --device-ram 60000",
    )
    before = Path(path).read_bytes()
    r = mp("install", path, str(tmp_path / "d.ota"), code="romfs")
    assert (r["ok"], r["reason_name"], r["ram_budget"]) == (False, "RESOURCE_LIMIT", 60_000), r
    assert "this device allows 60000" in r["message"]
    assert Path(path).read_bytes() == before


def _otaferry(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "otaferry", *args], **kw)


def test_push_to_device_run_under_micropython_over_a_pty(tmp_path):
    """Full (deflate) then delta, each to check-in, over a real pty pair (the
    line simulator joins two ptys like a UART)."""
    from otaferry.protocol.x25519keys import LinkPublicKey

    path = flash(tmp_path, secure=True)
    (tmp_path / "gw.key").write_bytes(GATEWAY.to_pem())
    with Device(path, read_only=True) as d:
        (tmp_path / "dev.pub").write_bytes(LinkPublicKey.from_raw(d.link_public()).to_pem())
    newer = NEW[:20000] + image(32, b"newer")[20000:24000] + NEW[24000:]
    (tmp_path / "full.ota").write_bytes(artifact("deflate"))
    (tmp_path / "delta.ota").write_bytes(
        build_delta(NEW, newer, KEY, hw=["hw"], chip="chip", version="newer", security_counter=2)
    )
    host_name, dev_name = str(tmp_path / "gw"), str(tmp_path / "dev")
    line = _line(Path(host_name), Path(dev_name))  # both ends there before the push opens one
    device = _otaferry("device", "run", "--runtime", "micropython", "--port", dev_name,
                       "--flash", path, "--heap", str(HEAP), "--checkin-timeout", "60",
                       stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for ota in ("full.ota", "delta.ota"):
            push = subprocess.run(
                [sys.executable, "-m", "otaferry", "push", "--port", host_name, "--link-key",
                 str(tmp_path / "gw.key"), "--device-pub", str(tmp_path / "dev.pub"),
                 "--timeout", "120", str(tmp_path / ota)],
                capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            assert push.returncode == 0, push.stdout + push.stderr
            assert "is valid on the device" in push.stdout + push.stderr
    finally:
        device.terminate()
        log = device.communicate(timeout=20)[1]
        line.terminate()
        line.wait(10)
    assert "(micropython)" in log
    with Device(path, read_only=True) as d:
        info = d.info()
        running = info["slots"][info["running_slot"]]
        assert running["version"] == "newer" and running["state"] == "VALID"
        slot = d.active_slot()
        assert bytes(d.flash.read(slot.offset, len(newer))) == newer


def test_device_run_in_too_small_a_heap_says_why_in_one_line(tmp_path):
    """``device run --runtime micropython`` in a heap that cannot hold an
    install stops at power-on with the CLI's one error line and the device's
    reason, its flash untouched."""
    path = flash(tmp_path, secure=True)
    before = Path(path).read_bytes()
    host_name, dev_name = str(tmp_path / "gw"), str(tmp_path / "dev")
    line = _line(Path(host_name), Path(dev_name))
    try:
        run = subprocess.run(
            [sys.executable, "-m", "otaferry", "device", "run", "--runtime", "micropython",
             "--code", "romfs", "--heap", str(100 * 1024), "--port", dev_name, "--flash", path],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        line.terminate()
        line.wait(10)
    assert run.returncode == 1, run.stdout + run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("otaferry: error[RESOURCE_LIMIT]: "), run.stderr
    assert Path(path).read_bytes() == before


def _line(a: Path, b: Path) -> subprocess.Popen:
    proc = _otaferry("linesim", "--baud", "921600", str(a), str(b),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(600):  # a loaded machine: seconds
        if a.exists() and b.exists():
            break
        time.sleep(0.05)
    return proc


def _wait_log(log: Path, text: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def _serving(path: str, a: Path, b: Path, log: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    """A line simulator, and ``device run --runtime micropython`` on its end
    ``b`` once it says it serves."""
    line = _line(a, b)
    device = _otaferry("device", "run", "--runtime", "micropython", "--code", "romfs",
                       "--port", str(b), "--flash", path, stderr=log.open("wb"))  # fmt: skip
    _wait_log(log, "device: serving")
    return line, device


def test_device_run_under_micropython_holds_the_flash_and_dies_with_a_power_cut(tmp_path):
    """As on CPython: while ``device run --runtime micropython`` serves, the
    flash file is its own (another command is refused BAD_STATE), and SIGKILL
    of ``device run`` is a power cut: the interpreter under it stops too (it
    used to go on serving and writing, an orphan)."""
    path = flash(tmp_path, secure=True)
    a, b, log = tmp_path / "gw", tmp_path / "dev", tmp_path / "device.log"
    line, device = _serving(path, a, b, log)
    try:
        boot = subprocess.run([sys.executable, "-m", "otaferry", "device", "boot", "--flash",
                               path], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert boot.returncode == 1 and "error[BAD_STATE]" in boot.stderr, boot.stderr
        children = Path(f"/proc/{device.pid}/task/{device.pid}/children").read_text().split()
        assert len(children) == 1
        device.kill()
        device.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{children[0]}").exists():
            stat = Path(f"/proc/{children[0]}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie: dead
                break
            assert time.monotonic() < deadline, "the micropython child outlived device run"
            time.sleep(0.05)
        with Device(path) as d:  # the lock went with it
            assert d.info()["running_slot"] == 0
    finally:
        if device.poll() is None:
            device.kill()
        line.terminate()
        line.wait(10)


def test_device_under_micropython_serves_again_when_its_port_comes_back(tmp_path):
    """The line simulator stops and starts again (a USB adapter pulled and put
    back): the device says so, opens the path again and answers."""
    path = flash(tmp_path, secure=True)
    a, b, log = tmp_path / "gw", tmp_path / "dev", tmp_path / "device.log"
    line, device = _serving(path, a, b, log)
    try:
        line.terminate()
        line.wait(10)
        _wait_log(log, "failed")
        assert device.poll() is None, log.read_text()
        line = _line(a, b)
        _wait_log(log, "is back")
        query = subprocess.run([sys.executable, "-m", "otaferry", "device", "query", "--port",
                                str(a), "--baud", "921600", "--identify"],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert query.returncode == 0, query.stderr + log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        device.terminate()
        device.wait(20)
        line.terminate()
        line.wait(10)


def test_a_new_image_failing_its_self_test_under_micropython_rolls_back(tmp_path):
    """``device run --runtime micropython --fail-self-test``: the new image
    fails its self-test at the reset, the bootloader returns to the old one,
    and the push says so with the device's reason."""
    path = flash(tmp_path, secure=True)
    (tmp_path / "gw.key").write_bytes(GATEWAY.to_pem())
    from otaferry.protocol.x25519keys import LinkPublicKey

    with Device(path, read_only=True) as d:
        (tmp_path / "dev.pub").write_bytes(LinkPublicKey.from_raw(d.link_public()).to_pem())
    (tmp_path / "full.ota").write_bytes(artifact("deflate"))
    a, b = tmp_path / "gw", tmp_path / "dev"
    line = _line(a, b)
    device = _otaferry("device", "run", "--runtime", "micropython", "--code", "romfs",
                       "--fail-self-test", "--port", str(b), "--flash", path,
                       stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        push = subprocess.run(
            [sys.executable, "-m", "otaferry", "push", "--port", str(a), "--baud", "921600",
             "--link-key", str(tmp_path / "gw.key"), "--device-pub", str(tmp_path / "dev.pub"),
             "--timeout", "120", str(tmp_path / "full.ota")],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        device.terminate()
        device.wait(20)
        line.terminate()
        line.wait(10)
    assert push.returncode == 1, push.stdout + push.stderr
    assert "SELF_TEST_FAILED" in push.stderr, push.stderr
    with Device(path, read_only=True) as d:
        info = d.info()
        assert info["slots"][info["running_slot"]]["version"] == "old"
