"""Regressions from a review of the update path: cancellation, the device-reset
path of the secure link, forged and replayed handshake records, resource leaks."""

import asyncio

import pytest
from link_harness import (
    GATEWAY,
    DevicePort,
    DeviceThread,
    ThreadLink,
    device_public,
    full,
    image,
    make_flash,
)
from otaferry.device_fw import serve as S
from otaferry.device_fw.device import Device
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.errors import OtaferryError, Reason
from otaferry.protocol.framing import encode_frame
from otaferry.protocol.secure import encode_reject
from otaferry.protocol.session import Accepted, Progress
from otaferry.transport.link import memory_pair
from otaferry.transport.secure_link import SecureLink
from otaferry.transport.updater import PushOptions, Updater

OPTS = PushOptions(rto=0.2, max_retries=10, await_checkin=False)


@pytest.mark.asyncio
async def test_reset_mid_push_completes(tmp_path):
    """Baseline: clean push and a device reset mid-push both complete (harness sanity)."""
    flash = make_flash(str(tmp_path / "f.bin"), image(64))
    port = DevicePort()
    dev = DeviceThread(flash, port)
    dev.start()
    raw = ThreadLink(port)
    link = await SecureLink.connect(raw, GATEWAY, device_public(flash), rto=0.2)
    up = Updater(link, OPTS)
    did = False
    async for ev in up.events(full(image(64, b"new"))):
        if isinstance(ev, Progress) and ev.segments_done == 3 and not did:
            did = True
            dev.reset()
    assert did
    assert up.last_sender.stats.restarts == 1
    assert link.handshakes == 2
    dev.halt()


@pytest.mark.asyncio
async def test_forged_rejects_do_not_cost_session_restarts(tmp_path):
    """SPEC 9.7: a forged REJECT(BAD_STATE) 'costs a handshake, nothing more'.
    Today each one also costs a Sender restart (the device announces HELLO(0) after
    every new handshake, even though its session is intact), so max_restarts+1 forged
    REJECTs kill a push to a device that was never reset."""
    flash = make_flash(str(tmp_path / "f.bin"), image(96))
    port = DevicePort()
    dev = DeviceThread(flash, port)
    dev.start()
    raw = ThreadLink(port)
    link = await SecureLink.connect(raw, GATEWAY, device_public(flash), rto=0.1)
    up = Updater(link, PushOptions(rto=0.2, max_retries=10, max_restarts=3, await_checkin=False))
    forged = set()
    try:
        async for ev in up.events(full(image(96, b"new"))):
            if isinstance(ev, Progress) and ev.segments_done >= 1 and len(forged) < 4:
                forged.add(ev.confirmed_bytes)
                await asyncio.sleep(0.3)  # > SecureLink.rto: not "stale"
                raw.inbox.put(encode_reject(Reason.BAD_STATE))  # attacker on the line
        assert link.handshakes >= 3  # forged REJECTs were acted on
        assert up.last_sender.stats.restarts == 0
    finally:
        dev.halt()


@pytest.mark.asyncio
async def test_cancel_racing_an_arriving_frame_is_not_lost():
    """Updater.events waits with asyncio.wait_for(link.receive(), t). On Python 3.11
    (the venv's), wait_for swallows an outer cancel that lands in the same loop
    iteration as the frame it was waiting for (CPython gh-86296): the cancelled push
    carries on instead of raising CancelledError (and sends no ABORT)."""
    host, dev = memory_pair(240)
    up = Updater(host, PushOptions(rto=0.05, max_retries=2, await_checkin=False))
    task = asyncio.ensure_future(up.push(full(image(8, b"x"))))
    await dev.receive()  # the QUERY: the updater now waits in receive()
    await asyncio.sleep(0.01)

    # One loop callback: a frame arrives and the push is cancelled.
    def both():
        dev._peer._inbox.put(b"\x91\x09")  # any frame (a stray DONE)
        task.cancel()

    asyncio.get_running_loop().call_soon(both)
    try:
        await asyncio.wait_for(task, 5)
    except asyncio.CancelledError:
        return  # expected: the push honoured the cancel
    except OtaferryError as exc:
        pytest.fail(f"cancel was swallowed; push went on and ended with {exc!r}")
    pytest.fail("cancel was swallowed; push returned")


def test_serve_closes_device_on_setup_error(tmp_path, monkeypatch):
    """serve() opens the Device before its try/finally: a Receiver/SecureEndpoint
    constructor error (e.g. mtu too small for the secure overhead) leaks the flash file."""
    path = make_flash(str(tmp_path / "f.bin"), image(8))
    opened = []

    class Tracked(Device):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            opened.append(self)

    monkeypatch.setattr(S, "Device", Tracked)
    with pytest.raises(DeviceError):
        S.serve(path, port=None, mtu=20)  # 20 - 10 (secure overhead) < MIN_MTU 16
    assert opened and opened[0].flash._f is None, "flash file left open"


@pytest.mark.asyncio
async def test_cap_is_per_outage_not_per_lifetime(tmp_path):
    """SecureLink.max_rehandshakes caps re-handshakes over the link's whole life, not
    'in a row': a long-lived gateway link dies for good after N device reboots spread
    over many successful pushes."""
    flash = make_flash(str(tmp_path / "f.bin"), image(16))
    port = DevicePort()
    dev = DeviceThread(flash, port)
    dev.start()
    link = await SecureLink.connect(
        ThreadLink(port), GATEWAY, device_public(flash), rto=0.1, max_rehandshakes=2
    )
    ota = full(image(16, b"n"))
    try:
        for _i in range(4):  # 4 separate reboots, each push succeeds first
            dev.reset()
            await Updater(link, PushOptions(rto=0.1, max_retries=10, await_checkin=False)).push(ota)
    finally:
        dev.halt()


@pytest.mark.asyncio
async def test_abort_sent_before_push_raises(tmp_path):
    """push()/hello() iterate events() without closing it: if on_event raises, the
    session is not aborted when push() raises; the ABORT only goes out whenever the
    loop's asyncgen finalizer runs (later, possibly during the caller's next push on
    the same link, where the session-less ABORT then kills that new session)."""
    flash = make_flash(str(tmp_path / "f.bin"), image(32))
    port = DevicePort()
    dev = DeviceThread(flash, port)
    dev.start()
    link = await SecureLink.connect(ThreadLink(port), GATEWAY, device_public(flash), rto=0.1)
    up = Updater(link, PushOptions(rto=0.1, await_checkin=False))

    def on_event(ev):
        if isinstance(ev, Accepted):
            raise ValueError("user callback failed")

    try:
        with pytest.raises(ValueError):
            await up.push(full(image(32, b"n")), on_event)
        assert up.last_sender.done, "session still open: no ABORT was issued"
    finally:
        dev.halt()


class TapLink(ThreadLink):
    sent: list

    async def send(self, frame):
        self.sent.append(bytes(frame))
        await super().send(frame)


@pytest.mark.asyncio
async def test_reset_then_replayed_msg1_still_resumes(tmp_path):
    """After a device reset, ONE replayed old MSG1 leaves a pending channel nobody can
    open; SecureEndpoint.receive then answers sealed records with nothing (REJECT only
    when channel and pending are both None), so the gateway never re-handshakes and the
    push dies of TIMEOUT instead of resuming."""
    flash = make_flash(str(tmp_path / "f.bin"), image(64))
    port = DevicePort()
    dev = DeviceThread(flash, port)
    dev.start()
    raw = TapLink(port)
    raw.sent = []
    link = await SecureLink.connect(raw, GATEWAY, device_public(flash), rto=0.1)
    old_msg1 = raw.sent[0]
    up = Updater(link, PushOptions(rto=0.1, max_retries=6, await_checkin=False))
    did = False
    try:
        async for ev in up.events(full(image(64, b"n"))):
            if isinstance(ev, Progress) and ev.segments_done == 2 and not did:
                did = True
                dev.reset()
                port.inq.put(encode_frame(old_msg1))  # attacker replays a recorded MSG1
        assert did
    finally:
        dev.halt()


def test_forged_msg1s_get_no_hello_after_the_first_handshake_of_a_boot(tmp_path):
    """Issue [M] 6: each new handshake with no channel running made the device send
    its sealed HELLO too: 3.4 bytes out per byte of forged MSG1 in. The unasked
    HELLO now goes once per boot (the genuine gateway QUERYs anyway)."""
    from otaferry.device_fw.loop import LINK_PROLOGUE, DeviceLoop
    from otaferry.protocol.secure import Initiator
    from otaferry.protocol.x25519keys import LinkPrivateKey

    flash = make_flash(str(tmp_path / "f.bin"), image(16))
    with Device(flash) as dev:
        loop = DeviceLoop(dev, mtu=256)
        from otaferry.protocol.x25519keys import LinkPublicKey

        public = LinkPublicKey.from_raw(dev.link_public())
        first = loop.receive(Initiator(GATEWAY, public, LinkPrivateKey.generate(),
                                       LINK_PROLOGUE).start(), 0.0)  # fmt: skip
        assert len(first) >= 2  # MSG2 and the sealed HELLO
        bytes_in = bytes_out = 0
        for i in range(20):  # replays of fresh-looking MSG1s nobody completes
            msg1 = Initiator(GATEWAY, public, LinkPrivateKey.generate(), LINK_PROLOGUE).start()
            out = loop.receive(msg1, 1.0 + i)
            bytes_in += len(msg1)
            bytes_out += sum(map(len, out))
        assert bytes_out <= bytes_in  # at most a MSG2 (41 B) per MSG1 (42 B): no amplification
