"""Small, fast versions of the campaigns of ``otaferry.tools.bench.campaign``.

The script (``python -m otaferry.tools.bench.campaign``) runs them at full size
(500 power cuts on the esp8266 pair, 100,000 fuzzed frames, ...); here each runs
for a few seconds on small real images, and asserts the same invariants. Two
tests check that the campaigns have teeth (they catch a planted fault), and the
last three pin down bugs the campaigns found, each reproduced without fuzzing.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from otaferry.device_fw import bootrec
from otaferry.device_fw import installer as I
from otaferry.device_fw import receiver as RX
from otaferry.device_fw import secure as DS
from otaferry.device_fw.device import Device
from otaferry.device_fw.flash import PowerCut
from otaferry.device_fw.installer import install_stream
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.errors import Reason
from otaferry.protocol.frames import (
    Abort,
    Accept,
    Commit,
    Data,
    Done,
    Offer,
    Query,
    Status,
    decode_frame,
)
from otaferry.protocol.session import Accepted, Completed, Failed, Progress
from otaferry.tools.bench import campaign as C
from test_frames import frames as any_frame

# ------------------------------------------------------------------ power cuts


def test_power_cut_campaign(tmp_path: Path) -> None:
    """Cuts across all eight legs: the device always boots a valid image, the
    right one, never writes its active slot, and a rerun finishes the update."""
    s = C.PowerCutCampaign(C.firmware("simba"), tmp_path, seed=2).run(48)
    t = s["total"]
    assert t["cuts"] >= 48
    assert all(leg["cuts"] >= 3 for leg in s["legs"].values()), s["legs"]
    assert all(s["phases"][p]["cuts"] > 0 for p in C.PHASES), s["phases"]
    assert t["unbootable"] == t["wrong_image"] == 0, s["problems"]
    assert t["active_slot_writes"] == t["protect_errors"] == t["active_slot_changed"] == 0
    assert t["stray_writes"] == 0, s["problems"]
    assert t["reruns_completed"] == t["final_identical"] == t["cuts"], s["problems"]
    # a cut during an install always leaves the old image; boot legs may end on either
    for name in ("offline full", "offline delta", "link full", "link delta"):
        assert s["legs"][name]["booted_new"] == 0
    # (the security counter is checked by test_security_counter_survives_a_cut_after_confirm)


def test_power_cut_campaign_catches_progress_saved_before_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted fault: progress persisted before a segment is written. A cut in
    between leaves a hole the rerun skips; the campaign must see it."""
    segment = I.Installer.segment

    def progress_first(self: Any, index: int, payload: Any) -> None:
        self.device.save_progress({"uid": self.uid, "slot": self.slot.label, "next": index + 1})
        segment(self, index, payload)

    monkeypatch.setattr(I.Installer, "segment", progress_first)
    s = C.PowerCutCampaign(C.firmware("simba"), tmp_path, seed=2).run(24, only=["offline full"])
    assert s["total"]["cuts"] >= 20
    assert s["total"]["reruns_completed"] < s["total"]["cuts"]
    assert not C.powercut_ok(s, 20)


def test_power_cuts_in_the_check_in_window(tmp_path: Path) -> None:
    """Issue [F] 6: cuts at every flash op of a boot that checks in (and is
    confirmed), of one that never hears back, and of one whose self-test fails:
    0 bricks, every rollback reported, and no device left VALID on an image that
    never checked in; both outcomes of the confirm leg occur."""
    s = C.CheckinCutCampaign(C.firmware("simba"), tmp_path).run()
    assert s["cuts"] >= 12 and all(n > 0 for n in s["legs"].values()), s["legs"]
    assert s["bricks"] == 0 and s["confirmed_without_checkin"] == 0, s["problems"]
    assert s["failed"] == 0, s["problems"]
    assert s["confirm_outcomes"]["confirmed"] > 0 and s["confirm_outcomes"]["rolled back"] > 0
    assert C.checkin_ok(s)


def test_check_in_campaign_catches_a_device_that_confirms_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted fault: the old behaviour, a passed self-test confirms at once."""
    power_on = Device.power_on

    def eager(self: Any, self_test: Any = True, checkin: bool = False) -> Any:
        return power_on(self, self_test=self_test, checkin=False)

    monkeypatch.setattr(Device, "power_on", eager)
    s = C.CheckinCutCampaign(C.firmware("simba"), tmp_path).run()
    assert s["confirmed_without_checkin"] > 0 and not C.checkin_ok(s)


# ------------------------------------------------------------------ frame fuzzing


def test_frame_fuzz_campaign() -> None:
    s = C.fuzz_campaign(3000, seed=3)
    assert s["frames"] >= 3000 and s["to_receiver"] > 1000 and s["to_sender"] > 800
    assert set(s["mutations"]) == set(C.MUTATIONS)
    assert s["flash_writes_checked"] > 100
    problems = {k: s[k] for k in C.FUZZ_ZERO if s[k]}
    assert not problems, (problems, s["problems"])
    assert s["outcomes"].get("completed", 0) > 0


@pytest.fixture(scope="module")
def fuzz_device(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prog = C.firmware("programmer")
    path = tmp_path_factory.mktemp("fuzz") / "pristine.bin"
    return C.make_device(path, prog.old, csv=C.SMALL_CSV, size=C.SMALL_FLASH)


small = st.integers(-1, 4) | st.sampled_from([8, 56, 57, 255, 0xFFFF, 0x10000])


@st.composite
def near_frames(draw: st.DrawFn) -> bytes:
    """Frames with values near those of the running session (mtu 64, 3 segments)."""
    kind = draw(st.integers(0, 6))
    seg, chunk = draw(st.integers(0, 3)), draw(st.integers(0, 300))
    if kind == 0:
        payload = draw(st.binary(min_size=1, max_size=57))
        return Data(seg, chunk, payload, draw(st.booleans())).encode()
    if kind == 1:
        echo = draw(st.none() | st.tuples(st.integers(-1, 3), st.integers(0, 300)))
        bitmap = draw(st.binary(max_size=12))
        return Status(draw(st.integers(-1, 4)), draw(small.filter(lambda v: v >= 0)), bitmap,
                      echo).encode()  # fmt: skip
    if kind == 2:
        return Accept(draw(st.integers(0, 4)), 0, draw(st.binary(max_size=4))).encode()
    if kind == 3:
        return Query(draw(st.sampled_from([77, 78, 0, 1]))).encode()
    if kind == 4:
        count = draw(st.integers(1, 60))
        part = draw(st.integers(0, count - 1))
        return Offer(part, count, draw(st.binary(min_size=1, max_size=50)), True).encode()
    if kind == 5:
        return draw(st.sampled_from([Commit(), Done()])).encode()
    return Abort(draw(st.sampled_from(list(Reason))), "x").encode()


bodies = st.binary(max_size=70) | any_frame().map(lambda f: f.encode()) | near_frames()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(stop=st.integers(0, 80), inject=st.lists(st.tuples(st.booleans(), bodies), max_size=30))
def test_frames_at_any_point_of_a_session(
    tmp_path: Path, fuzz_device: Path, stop: int, inject: list[tuple[bool, bytes]]
) -> None:
    """Hypothesis: random bodies and frames, to either side, at any point of a real
    session; nothing escapes, nothing is written outside the passive slot, the
    store and otadata, the session ends, and a fresh one completes the update."""
    prog = C.firmware("programmer")
    work = tmp_path / "f.bin"
    shutil.copy(fuzz_device, work)
    guard = C.Guard()
    with Device(str(work)) as dev:
        audit = C.FlashAudit(dev, extent=0x10000)
        rx = RX.Receiver(dev, mtu=64)
        link = C.Link(C.make_sender(prog.full, mtu=64, window=8, session_id=77), rx, guard=guard)
        for _ in range(stop):
            if not link.step():
                break
        for to_device, body in inject:
            (link.to_device if to_device else link.to_sender)(body)
        link.run(5000)
        assert guard.uncaught == 0 and guard.bad_outputs == 0, guard.messages
        assert not link.stalled and C.outcome(link.events) != "open"
        assert audit.stray == [] and audit.protect_errors == 0
        again = C.Link(C.make_sender(prog.full, mtu=64, window=8, session_id=99),
                       RX.Receiver(dev, mtu=64), now=link.now + 100).run(5000)  # fmt: skip
        assert again.of(Completed), C.outcome(again.events)
        assert C.slot_bytes(dev, 1, len(prog.new)) == prog.new
        assert audit.stray == []


FORGED_STATUS = bytes.fromhex("940700ccffc400")  # STATUS segment 0, "chunks 0..254 held"


def test_a_forged_claim_is_reconciled_and_the_session_completes(
    tmp_path: Path, fuzz_device: Path
) -> None:
    """Issue [E] 1: this one plaintext frame, six steps into a session, once made the
    Sender believe segment 0 held and loop for ever (220,038 frames, 0 timeouts).
    A later status made after the claim contradicts it; the chunks go again."""
    assert decode_frame(FORGED_STATUS) == Status(0, 255, b"")
    prog = C.firmware("programmer")
    work = tmp_path / "f.bin"
    shutil.copy(fuzz_device, work)
    with Device(str(work)) as dev:
        link = C.Link(C.make_sender(prog.full, mtu=64, window=8, session_id=77),
                      RX.Receiver(dev, mtu=64))  # fmt: skip
        for _ in range(6):
            link.step()
        link.to_sender(FORGED_STATUS)
        link.run(5000)
        assert not link.stalled and link.of(Completed), C.outcome(link.events)
        assert link.sender.stats.false_claims > 0
        assert link.sender.stats.frames_sent < 2 * len(prog.full) // 40
        assert C.slot_bytes(dev, 1, len(prog.new)) == prog.new


def test_a_device_that_answers_but_never_stores_ends_the_session_in_bounded_rounds(
    tmp_path: Path, fuzz_device: Path
) -> None:
    """The progress watchdog: a device that answers every poll (so the link looks
    alive and the give-up count keeps restarting) but never stores a chunk. The
    session must fail with TIMEOUT after a bounded number of rounds."""
    prog = C.firmware("programmer")
    work = tmp_path / "f.bin"
    shutil.copy(fuzz_device, work)
    with Device(str(work)) as dev:
        rx = RX.Receiver(dev, mtu=64)
        sender = C.make_sender(prog.full, mtu=64, window=8, session_id=77)
        link = C.Link(sender, rx)
        while not link.of(Accepted):
            assert link.step()
        link.rx = None  # from now on the "device" below answers

        def answer_without_storing(body: bytes) -> None:
            frame = decode_frame(body)
            if isinstance(frame, Data) and frame.poll:
                link.to_sender(Status(frame.segment, 0, b"", (frame.segment, frame.chunk)).encode())

        link.to_device = answer_without_storing  # type: ignore[method-assign]
        link.run(50_000)
        assert not link.stalled
        failed = link.of(Failed)
        assert failed and failed[0].reason == Reason.TIMEOUT, C.outcome(link.events)
        assert "no progress" in failed[0].message
        assert sender.stats.timeouts == 0  # the link never went silent: the watchdog ended it
        assert sender.stats.stalls > 0 and sender.stats.frames_sent < 2000


# ------------------------------------------------------------------ secure layer


def test_secure_fuzz_campaign() -> None:
    s = C.secure_campaign(3000, seed=5)
    assert s["records"] >= 3000 and s["to_host_channel"] > 500 and s["to_device_endpoint"] > 1000
    assert set(s["mutations"]) == set(C.SecureFuzzCampaign.KINDS)
    assert s["exceptions"] == 0 and s["tampered_bodies_returned"] == 0, s["problems"]
    assert s["genuine_opened"] == s["genuine_sent"] > 0
    assert s["device_stats"]["auth_failed"] > 0 and s["device_stats"]["replayed"] > 0


def test_secure_campaign_catches_a_broken_replay_window(monkeypatch: pytest.MonkeyPatch) -> None:
    try_open = DS.SecureChannel.try_open

    def forgetful(self: Any, data: bytes) -> tuple[str, bytes | None]:
        self.seen = 0  # the replay bitmap is lost before every frame
        return try_open(self, data)  # type: ignore[no-any-return]

    monkeypatch.setattr(DS.SecureChannel, "try_open", forgetful)
    s = C.secure_campaign(1500, seed=5)
    assert s["tampered_bodies_returned"] > 0
    assert not C.secure_ok(s, 1500)


# ------------------------------------------------------------------ hostile artifacts


def test_hostile_artifacts_each_refused_with_its_reason(tmp_path: Path) -> None:
    s = C.HostileCampaign(tmp_path, "simba").run()
    rows = {r["case"]: r for r in s["rows"]}
    failed = {name: (r["offline"], r["link device"], r["problems"]) for name, r in rows.items()
              if not r["ok"]}  # fmt: skip
    assert not failed
    for case in C.hostile_cases(C.firmware("simba"), C.read_firmware(C.RELEASES[0])):
        row = rows[case.name]
        assert row["offline"] == case.reason.name, case.name
        want = case.reason.name
        if case.link:  # the device's own verdict, carried by the Sender's Rejected event
            assert row["link device"] == want, case.name
        else:  # a file the gateway cannot read is never sent
            assert row["link device"] == f"{want} (gateway)", case.name
        if case.visible:  # the gateway already sees it in the HELLO, same reason code
            assert row["link precheck"] == f"{want} (local)", case.name
    seen = {rows[c.name]["offline"] for c in C.hostile_cases(C.firmware("simba"), b"")}
    assert len(seen) == 11  # eleven distinct reason codes across the classes
    assert rows["replayed old session (plaintext link)"]["link device"] == "DOWNGRADE"
    assert rows["replayed old session (plaintext link)"]["offline"] == "DOWNGRADE"
    assert rows["replayed old session (secure link)"]["link device"].startswith("0 bodies")


# ------------------------------------------------------------------ bugs found


def test_security_counter_survives_a_cut_after_confirm(tmp_path: Path) -> None:
    """BUG (device_fw/device.py, Device.power_on): the counter advances only in the
    pending branch, in the store write that follows B.confirm. Power lost between
    the two leaves otadata VALID for the new image and the counter at the old
    value; later boots of the VALID image never advance it, so an artifact with
    the old counter (a downgrade) is accepted."""
    fw = C.firmware("simba")
    flash = C.make_device(tmp_path / "f.bin", fw.old)
    with Device(str(flash)) as dev:
        install_stream(dev, io.BytesIO(fw.full))  # security counter 1
    probe = tmp_path / "probe.bin"
    shutil.copy(flash, probe)
    with Device(str(probe)) as dev:
        audit = C.FlashAudit(dev)
        regions: list[str] = []
        dev.flash.on_op = lambda kind, addr, n: regions.append(audit.region(addr, n))
        dev.power_on(self_test=True)
    last_otadata = max(i for i, r in enumerate(regions) if r == "otadata")
    cut = regions.index("nvs", last_otadata)  # the store write after the confirm
    with Device(str(flash), cut_at=cut) as dev, pytest.raises(PowerCut):
        dev.power_on(self_test=True)
    with Device(str(flash)) as dev:
        boot = dev.power_on(self_test=True)
        assert (boot["label"], boot["version"], boot["state"]) == ("ota_1", "new", "VALID")
        assert dev.info()["security_counter"] == C.NEW_COUNTER
    with Device(str(flash)) as dev, pytest.raises(DeviceError) as exc:
        install_stream(dev, io.BytesIO(C.build(fw.old, counter=0, version="older")))
    assert exc.value.reason == Reason.DOWNGRADE


def test_receiver_survives_data_for_the_segment_count_before_commit(tmp_path: Path) -> None:
    """BUG (device_fw/receiver.py, Receiver._on_data): once the last segment is
    written and before COMMIT, ``_bits`` is None; a DATA frame whose segment
    equals the segment count passes ``segment != nxt`` and reaches
    ``bits.n``: AttributeError out of receive_frame."""
    prog = C.firmware("programmer")
    flash = C.make_device(tmp_path / "f.bin", prog.old, csv=C.SMALL_CSV, size=C.SMALL_FLASH)
    with Device(str(flash)) as dev:
        rx = RX.Receiver(dev, mtu=1024)
        link = C.Link(C.make_sender(prog.full, mtu=1024, window=4), rx)
        total = len(C.split_artifact(prog.full)[2])
        while not any(isinstance(e, Progress) and e.segments_done == total for e in link.events):
            assert link.step()
        replies = rx.receive_frame(Data(total, 0, b"\x00", poll=True).encode(), link.now)
        assert [type(decode_frame(r)) for r in replies] == [Status]
        link.run()
        assert link.of(Completed)


def test_sender_ends_when_the_device_runs_another_chunking(tmp_path: Path) -> None:
    """BUG (protocol/session.py, Sender._on_status): a device that switched to
    another session of the same update with another chunk size (a second
    gateway, a restarted one, or replayed QUERY + OFFER frames) drops every
    DATA frame of the first sender as the wrong length, but answers its polls
    with STATUS frames for the right segment. Each such STATUS resets the
    give-up count (``_alive``) and, through its echo, pushes the deadline out:
    the first sender retransmits forever, never Completed, never Failed."""
    fw = C.firmware("synth")
    flash = C.make_device(tmp_path / "f.bin", fw.old, csv=C.SMALL_CSV, size=C.SMALL_FLASH)
    with Device(str(flash)) as dev:
        rx = RX.Receiver(dev, mtu=256)
        first = C.Link(C.make_sender(fw.full, mtu=256, window=4, session_id=1, max_retries=3), rx)
        while not any(isinstance(e, Progress) and e.segments_done >= 2 for e in first.events):
            assert first.step()
        second = C.Link(C.make_sender(fw.full, mtu=128, window=4, session_id=2), rx)
        while not second.of(C.Accepted):
            assert second.step()
        assert first.sender.chunk_size != second.sender.chunk_size
        first.run(max_steps=3000)  # the second gateway has gone quiet
        assert first.sender.done, (first.sender.phase, first.sender.stats)
        assert not first.stalled


def test_handshake_dos_campaign() -> None:
    """``bench campaign --only dos`` (issue [M] 6): its own verdict, and the figures it
    reports for the closing note stay within the device's handshake budget."""
    from otaferry.tools.bench.campaign.dos import dos_campaign, dos_ok

    s = dos_campaign()
    assert dos_ok(s), s
    assert s["flood"]["handshakes_tried"] < s["flood"]["msg1s"] // 10
    assert s["replay"]["genuine_opened"] and s["loop"]["out_per_in"] <= 1.0


# ------------------------------------------------------------------ damaged flash at boot


def test_boot_campaign_every_class_boots_what_it_must() -> None:
    s = C.boot_campaign("simba")
    assert s["cases"] == len(C.boot_cases()) >= 10
    assert s["failed"] == 0, [r for r in s["rows"] if not r["ok"]]


def test_boot_campaign_catches_a_counter_lost_with_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A planted fault: the counter rebuilt without the store comes out as 0. The
    old image then boots once store and otadata are gone; the campaign must see it."""
    monkeypatch.setattr(bootrec, "recovered_counter", lambda records, valid: 0)
    rows = {r["case"]: r for r in C.boot_campaign("simba")["rows"]}
    assert not rows["store corrupt, otadata erased"]["ok"]
    assert rows["store corrupt, otadata erased"]["booted"] == "ota_0 old"
