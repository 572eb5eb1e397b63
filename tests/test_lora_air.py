"""Frames sized to the air (SPEC 8.8): compact DATA in the short sealed record and
batched acknowledgements, over a lossy sealed link (sans-IO, fake clock); and the
planner against the emulator (``otaferry bench lora``'s in-process run on a
virtual clock) on a small update."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path
from typing import Any

import pytest
from link_harness import full, image, make_flash
from otaferry.device_fw import secure as dsec
from otaferry.device_fw.device import Device
from otaferry.device_fw.receiver import Receiver
from otaferry.protocol.artifact import build_full
from otaferry.protocol.frames import Checkin, Status, decode_frame
from otaferry.protocol.secure import SecureChannel
from otaferry.protocol.session import Completed, Sender
from otaferry.protocol.shared_artifact import Artifact
from otaferry.tools.bench import lora as bench
from otaferry.transport.secure_link import SecureLink
from otaferry.transport.vclock import run_virtual

K1, K2 = hashlib.sha256(b"k1").digest()[:16], hashlib.sha256(b"k2").digest()[:16]
MTU = 51  # the link's frames; 41 for session frames inside the seal


def _run(
    flash: str, ota: bytes, *, loss: int, compact: bool
) -> tuple[Sender, list[bytes], int]:
    """Push over a sealed in-memory link that drops every ``loss``-th host record;
    returns the sender, the host's records and the device's STATUS count."""
    host = SecureChannel(K1, K2, initiator=True)
    dev_ch = dsec.SecureChannel(K2, K1, False)
    sender = Sender(
        Artifact.parse(ota), mtu=MTU - 10, window=24, rto=2.0,
        compact_mtu=MTU - 9 if compact else None, batch=compact,
    )  # fmt: skip
    records: list[bytes] = []
    statuses = 0
    now = 0.0
    with Device(flash) as device:
        receiver = Receiver(device, mtu=MTU - 10)
        for _ in range(20_000):
            out = sender.datagrams_to_send(now)
            replies: list[bytes] = []
            for body in out:
                record = host.seal(body)
                assert len(record) <= MTU
                records.append(record)
                if len(records) % loss == 0:
                    continue
                opened = dev_ch.open(record)
                assert opened == body  # the short record gives the compact byte back
                for reply in receiver.receive_frame(opened, now):
                    replies.append(dev_ch.seal(reply))
            now += 0.05
            for reply in replies:
                body = host.open(reply)
                assert body is not None
                statuses += isinstance(decode_frame(body), Status)
                sender.receive_frame(body, now)
            if sender.done:
                break
            if not out and not replies:
                timer = sender.get_timer()
                assert timer is not None
                now = max(now, timer)
                sender.handle_timer(now)
    return sender, records, statuses


def test_compact_batched_session_fills_frames_and_acks_per_window(tmp_path: Path) -> None:
    img = image(24)
    ota = full(image(24, b"new"))
    plain = _run(make_flash(str(tmp_path / "a.bin"), img), ota, loss=9, compact=False)
    small = _run(make_flash(str(tmp_path / "b.bin"), img), ota, loss=9, compact=True)
    for sender, _, _ in (plain, small):
        events = []
        while (e := sender.next_event()) is not None:
            events.append(e)
        assert isinstance(events[-1], Completed)
    sender, records, statuses = small
    assert sender.compact and sender.batch and sender.chunk_size == MTU - 10
    assert plain[0].chunk_size < MTU - 10 - 5  # version-1 DATA: its 7-byte header
    short = [r for r in records if 0xA0 <= r[0] <= 0xBF]
    assert len(short) == sender.stats.data_frames  # every DATA frame in the short record
    assert max(map(len, short)) == MTU  # ... filling the frame: chunk + counter/tag
    assert sender.stats.data_frames < plain[0].stats.data_frames * 0.87
    # one STATUS per window or segment, not one per gap as version 1 sends
    assert statuses * 3 < plain[2]
    assert sender.stats.retransmits >= sender.stats.data_frames // 12  # the losses were real


def test_without_compact_every_record_is_version_1(tmp_path: Path) -> None:
    flash = make_flash(str(tmp_path / "c.bin"), image(8))
    sender, records, _ = _run(flash, full(image(8, b"n")), loss=10_000, compact=False)
    assert not sender.compact and all(r[0] < 0x80 for r in records)


@pytest.mark.parametrize(("sf", "mtu"), [(7, 51), (7, 222)])
def test_planner_agrees_with_the_emulator(tmp_path: Path, sf: int, mtu: int) -> None:
    rng = random.Random(3)
    old = rng.randbytes(6000)
    new = rng.randbytes(6000)  # ~6 KB of artifact: 120 frames at 51 bytes
    ota = build_full(new, bench.KEY, hw=[bench.HW], chip=bench.CHIP, version="2",
                     security_counter=1)  # fmt: skip
    out = run_virtual(bench.emulate(ota, old, tmp_path, sf=sf, mtu=mtu, loss=0.0))
    assert out["outcome"] == "Confirmed" and out["violations"] == 0 and out["compact"]
    planned = bench.planned(ota, modem="rak3172", sf=sf, bw=125, cr=5, mtu=mtu, loss=0.0)
    assert abs(planned["air_time_s"] / out["air_time_s"] - 1) <= 0.05, (planned, out)
    # 1 % duty cycle: the wall time is the gateway's air time a hundredfold
    assert out["wall_s"] >= 0.95 * 100 * out["gateway_air_s"]
    assert out["device_air_s"] < 0.25 * out["gateway_air_s"]  # answers batched


def test_short_sealed_record_follows_the_spec_and_reads_forward() -> None:
    host = SecureChannel(K1, K2, initiator=True)
    dev_ch = dsec.SecureChannel(K2, K1, False)
    for _ in range(70):
        assert dev_ch.open(host.seal(b"\x91\x08")) == b"\x91\x08"
    body = bytes([0x40 | 6]) + bytes(range(8))  # compact DATA, poll, chunk = 6 mod 64
    record = host.seal(body)
    v = (70 % 64) << 7 | body[0]  # SPEC 9.5: counter 70 and the compact byte, 13 bits
    assert record[:2] == bytes([0xA0 | v >> 8, v & 0xFF]) and len(record) == 2 + 8 + 8
    assert dev_ch.open(record) == body
    assert dev_ch.open(record) is None  # a replay reads as a later counter: its tag fails
    assert host.seal(b"\x91\x08")[0] < 0x80  # other frames keep the 15-bit header
    # 64 or more frames lost in a row: a short record cannot be placed (tag fails) ...
    for _ in range(64):
        host.seal(b"\x91\x08")
    late = host.seal(bytes([5]) + b"x")
    failed = dev_ch.stats["auth_failed"]
    assert dev_ch.open(late) is None and dev_ch.stats["auth_failed"] == failed + 1
    # ... until a full record puts the reader back in step
    assert dev_ch.open(host.seal(b"\x91\x09")) == b"\x91\x09"
    assert dev_ch.open(host.seal(bytes([7]) + b"y")) == bytes([7]) + b"y"


def test_emulated_rak3172_takes_no_send_in_rx_only_mode_and_reyax_says_13() -> None:
    """RUI3 >= 3.4.0: AT+PRECV=65534 listens until AT+PRECV=0 and refuses TX; 65533
    listens and still sends. REYAX: more than 240 characters is +ERR=13."""
    from otaferry.protocol.lora import EU868, LoRaParams
    from otaferry.transport.lorasim import LoRaSim

    async def main() -> list[bytes]:
        said: list[bytes] = []
        rak = LoRaSim("rak3172", ["a", "b"], params=LoRaParams(), plan=EU868, seed=1)
        reyax = LoRaSim("rylr998", ["a", "b"], params=LoRaParams(), plan=EU868, seed=1)
        loop = asyncio.get_running_loop()
        for sim in (rak, reyax):
            sim.start_in_process(loop)
            sim.modems[0].sink = said.append
        for line in (b"AT+NWM=0", b"AT+PRECV=65534", b"AT+PSEND=0001AA", b"AT+PRECV=65533",
                     b"AT+PSEND=0001AA"):  # fmt: skip
            rak.modems[0].feed(line + b"\r\n")
        reyax.modems[0].feed(b"AT+SEND=1,241," + b"A" * 241 + b"\r\n")
        await asyncio.sleep(1.0)
        return said

    said = b"".join(asyncio.run(main())).split(b"\r\n")
    assert said[:5] == [b"OK", b"OK", b"AT_BUSY_ERROR", b"OK", b"OK"]
    assert b"+ERR=13" in said and b"+EVT:TXP2P DONE" in said


@pytest.mark.parametrize(
    ("modem", "sf", "mtu", "freq", "at_least_s"),
    [("rak3172", 9, 51, 868_100_000, 900.0), ("rylr998", 7, 150, 869_525_000, 130.0)],
)
def test_the_checkin_deadline_is_sized_to_the_air_alike_on_both_sides(
    modem: str, sf: int, mtu: int, freq: int, at_least_s: float
) -> None:
    """A fixed 120 s check-in deadline rolled back every update at SF9 and 1 %: the
    HELLO's parts alone wait minutes of off time. The device (device_fw/lora.py)
    and the host (RegionPacing) derive it by one rule, and the host waits longer."""
    from otaferry.device_fw import lora as dlora
    from otaferry.protocol.lora import LoRaParams, RegionPacing, region
    from otaferry.protocol.modems import codec_for

    plan = region("EU868")
    pacing = RegionPacing(LoRaParams(sf, 125_000, 5, 8), plan, freq,
                          wire_size=codec_for(modem).wire_size, mtu=mtu)  # fmt: skip
    host = pacing.checkin_timeout(mtu)
    device_modem = dlora.modem_for(modem)
    device = dlora.checkin_timeout_for(
        (sf, 125_000, 5, 8), mtu, device_modem.air_size(mtu), plan.duty_cycle(freq)
    )
    assert host == pytest.approx(device, rel=1e-9)
    assert device > at_least_s
    # the emulator's time scale shrinks both alike
    scaled = RegionPacing(LoRaParams(sf, 125_000, 5, 8), plan, freq, mtu=mtu,
                          wire_size=codec_for(modem).wire_size, time_scale=0.01)  # fmt: skip
    assert scaled.checkin_timeout(mtu, floor=0) == pytest.approx((host - 120) * 0.01)


def _small_update() -> tuple[bytes, bytes]:
    rng = random.Random(5)
    old, new = rng.randbytes(3000), rng.randbytes(3000)
    ota = build_full(new, bench.KEY, hw=[bench.HW], chip=bench.CHIP, version="2",
                     security_counter=1)  # fmt: skip
    return old, ota


def test_the_check_in_resumes_the_channel_in_one_record(tmp_path: Path) -> None:
    """SPEC 8.9 / 9.11 in the emulator: after DONE (the last segment's answer, no
    COMMIT) the new image checks in with one RESUME record; no second handshake,
    QUERY or HELLO goes on the air, and the secret is gone from the device's store."""
    old, ota = _small_update()
    out = run_virtual(bench.emulate(ota, old, tmp_path, sf=7, mtu=222, loss=0.0))
    assert out["outcome"] == "Confirmed" and out["violations"] == 0
    after = out["breakdown"]["check-in"]
    assert set(after) == {"done", "resume+checkin", "confirm", "confirmed"}, after
    assert "commit" not in out["breakdown"]["data"]
    flash = next(tmp_path.glob("flash-*.bin"))
    with Device(str(flash)) as dev:
        assert dev.state.get("resume") is None and not dev.running_pending()


def test_a_gateway_without_the_secret_falls_back_to_a_full_handshake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RESUME the gateway cannot open (lost, or a gateway that restarted) changes
    nothing but the cost: its QUERY draws REJECT(BAD_STATE), a new handshake, the
    pending HELLO, and the update is confirmed as before."""
    monkeypatch.setattr(SecureLink, "expect_resume", lambda self, update_id: None)
    old, ota = _small_update()
    out = run_virtual(bench.emulate(ota, old, tmp_path, sf=7, mtu=222, loss=0.0))
    assert out["outcome"] == "Confirmed" and out["violations"] == 0
    after = out["breakdown"]["check-in"]
    assert {"resume+checkin", "reject", "handshake", "hello", "confirmed"} <= set(after), after


def test_a_checkin_outside_the_reboot_or_for_another_update_is_ignored() -> None:
    """CHECKIN is only the answer to this session's own DONE (SPEC 8.9)."""
    sender = Sender(Artifact.parse(full(image(8, b"c"))), mtu=MTU - 10, window=4,
                    await_checkin=True, resume=True)  # fmt: skip
    sender.datagrams_to_send(0.0)
    phase = sender.phase
    sender.receive_frame(Checkin(sender.uid, bytes(8)).encode(), 0.1)
    sender.receive_frame(Checkin(bytes(16), bytes(8)).encode(), 0.2)
    assert sender.phase is phase and sender.stats.ignored_frames == 2
    assert sender.datagrams_to_send(0.3) == []  # no CONFIRM went out


def test_a_lost_resume_is_sent_again_for_the_gateways_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first RESUME is lost on the air: the gateway's QUERY on the old channel
    draws the same record again (SPEC 8.9), which opens; no handshake, no HELLO."""
    from otaferry.transport import lorasim

    deliver = lorasim._RAK.deliver
    lost: list[bytes] = []

    def lossy(self: Any, sender: Any, air: bytes, meta: dict[str, Any]) -> bool:
        if not lost and b"\xe6" in air[:3]:  # the record after the modem's address bytes
            lost.append(air)
            return True  # on the air, not heard
        return deliver(self, sender, air, meta)

    monkeypatch.setattr(lorasim._RAK, "deliver", lossy)
    old, ota = _small_update()
    out = run_virtual(bench.emulate(ota, old, tmp_path, sf=7, mtu=222, loss=0.0))
    assert out["outcome"] == "Confirmed" and out["violations"] == 0 and lost
    after = out["breakdown"]["check-in"]
    assert after["resume"][0] == 1 and "query" in after, after  # the record, once more
    assert not {"handshake", "hello", "reject"} & set(after), after
