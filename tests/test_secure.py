"""The secure link (protocol/SPEC.md section 9): handshake, sealed frames, replay window, policy.

Host (otaferry.protocol.secure) and device (otaferry.device_fw.secure) run
against each other in both roles and both against the golden vectors in
tests/vectors/secure/; one test recomputes MSG1, MSG2 and the first record
from the SPEC.md section 9 text alone, so the document and the code cannot drift.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import given, settings
from hypothesis import strategies as st
from otaferry.device_fw import port
from otaferry.device_fw import reasons as R
from otaferry.device_fw import secure as D
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol import secure as H
from otaferry.protocol.errors import (
    KeyFileError,
    ProtocolError,
    Reason,
    RemoteError,
)
from otaferry.protocol.keys import SigningKey
from otaferry.protocol.x25519keys import (
    LinkPrivateKey,
    LinkPublicKey,
    load_link_private_key,
    load_link_public_key,
    write_link_keypair,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parent / "vectors" / "secure" / "handshake_kk.json").read_text()
)["cases"]
CASE_IDS = [c["name"] for c in VECTORS]

# RFC 7748 section 6.1
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
RFC7748_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

LORA_FRAME = 51


def key(label: str) -> LinkPrivateKey:
    """A deterministic test key."""
    return LinkPrivateKey.from_raw(hashlib.sha256(label.encode()).digest())


GATEWAY = key("gateway")
DEVICE = key("device")


def hex_(value: str) -> bytes:
    return bytes.fromhex(value)


# --- handshake drivers over both implementations ------------------------------------------


def make_initiator(side: str, static: LinkPrivateKey, peer: LinkPublicKey, eph: bytes) -> Any:
    if side == "host":
        return H.Initiator(static, peer, LinkPrivateKey.from_raw(eph))
    return D.Initiator(static.raw(), peer.raw, eph)


def make_responder(
    side: str, static: LinkPrivateKey, accepted: list[LinkPublicKey], eph: bytes
) -> Any:
    if side == "host":
        return H.Responder(static, accepted, LinkPrivateKey.from_raw(eph))
    return D.Responder(static.raw(), [k.raw for k in accepted], eph)


def handshake(i_side: str, r_side: str, tag: str = "") -> tuple[Any, Any]:
    """(initiator channel, responder channel) between GATEWAY and DEVICE."""
    ini = make_initiator(i_side, GATEWAY, DEVICE.public, key("ei" + tag).raw())
    res = make_responder(r_side, DEVICE, [GATEWAY.public], key("er" + tag).raw())
    msg2 = res.receive(ini.start())
    return ini.receive(msg2), res.channel


def stats(channel: Any) -> dict[str, int]:
    if isinstance(channel, H.SecureChannel):
        s = channel.stats
        return {name: getattr(s, name) for name in D.STAT_NAMES}
    return dict(channel.stats)


def reason_of(exc: BaseException) -> int:
    return int(exc.reason)  # type: ignore[attr-defined]


SIDES = [("host", "host"), ("host", "device"), ("device", "host"), ("device", "device")]
ERRORS = (ProtocolError, DeviceError)


# --- primitives and keys -------------------------------------------------------------------


def test_x25519_rfc7748_both_sides() -> None:
    alice, bob = LinkPrivateKey.from_raw(ALICE), LinkPrivateKey.from_raw(BOB)
    assert alice.public.raw == ALICE_PUB and bob.public.raw == BOB_PUB
    assert alice.exchange(bob.public) == RFC7748_SHARED
    assert port.x25519_public(ALICE) == ALICE_PUB
    assert port.x25519(BOB, ALICE_PUB) == RFC7748_SHARED
    with pytest.raises(ValueError):
        port.x25519(ALICE, bytes(32))  # low-order point: all-zero secret refused
    assert alice.exchange(LinkPublicKey.from_raw(bytes(32))) is None


@pytest.mark.parametrize(
    ("key_", "data", "mac"),
    [  # RFC 4231 test cases 1 and 6
        (
            b"\x0b" * 20,
            b"Hi There",
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            b"\xaa" * 131,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
    ],
)
def test_hmac_sha256_port_and_generic(key_: bytes, data: bytes, mac: str) -> None:
    assert port.hmac_sha256(key_, data).hex() == mac
    assert port.hmac_sha256_generic(key_, data).hex() == mac


def test_aes_ccm8_port_matches_cryptography_and_rejects_tampering() -> None:
    k, nonce = bytes(range(16)), bytes(range(13))
    sealed = port.aes_ccm8_encrypt(k, nonce, b"hello", b"ad")
    assert sealed == AESCCM(k, tag_length=8).encrypt(nonce, b"hello", b"ad")
    assert len(sealed) == 5 + 8
    assert port.aes_ccm8_decrypt(k, nonce, sealed, b"ad") == b"hello"
    assert port.aes_ccm8_decrypt(k, nonce, sealed, b"aD") is None
    assert port.aes_ccm8_decrypt(k, nonce, sealed[:-1] + b"\x00", b"ad") is None


def test_link_key_files(tmp_path: Path) -> None:
    path = tmp_path / "gw.x25519"
    written = write_link_keypair(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert load_link_private_key(path).raw() == written.raw()
    assert load_link_public_key(Path(str(path) + ".pub")) == written.public
    assert load_link_public_key(path) == written.public  # derived from the private PEM
    assert b"BEGIN PRIVATE KEY" in written.to_pem()
    assert LinkPublicKey.from_pem(written.public.to_pem()) == written.public
    assert hash(LinkPublicKey.from_raw(written.public.raw)) == hash(written.public)
    assert written.public.hint == hashlib.sha256(written.public.raw).digest()[0]
    assert written.public.hint == D.key_hint(written.public.raw)
    assert "key_id" in repr(written) and written.raw().hex() not in repr(written)
    with pytest.raises(KeyFileError) as exc:
        write_link_keypair(path)
    assert exc.value.reason is Reason.BAD_KEY


def test_bad_link_key_material_is_bad_key(tmp_path: Path) -> None:
    ed = SigningKey.from_seed(bytes(32))
    for bad in (b"", b"not a pem", ed.to_pem()):
        with pytest.raises(KeyFileError) as exc:
            LinkPrivateKey.from_pem(bad)
        assert exc.value.reason is Reason.BAD_KEY
    for bad in (b"junk", ed.public.to_pem()):
        with pytest.raises(KeyFileError):
            LinkPublicKey.from_pem(bad)
    for raw in (b"", bytes(31), bytes(33)):
        with pytest.raises(KeyFileError):
            LinkPublicKey.from_raw(raw)
        with pytest.raises(KeyFileError):
            LinkPrivateKey.from_raw(raw)
    with pytest.raises(KeyFileError):
        load_link_private_key(tmp_path / "missing")
    (tmp_path / "ed.pem").write_bytes(ed.to_pem())
    with pytest.raises(KeyFileError) as exc:
        load_link_private_key(tmp_path / "ed.pem")
    assert "ed.pem" in str(exc.value)


# --- golden vectors ------------------------------------------------------------------------


def _sent(channel: Any) -> int:
    if isinstance(channel, D.SecureChannel):
        return int(channel.send_next)
    return H.COUNTER_LIMIT - int(channel.remaining)


def _parties(case: dict[str, Any], i_side: str, r_side: str) -> tuple[Any, Any]:
    """The vector's initiator and responder, each on the given side."""
    si = LinkPrivateKey.from_raw(hex_(case["initiator_static"]))
    sr = LinkPrivateKey.from_raw(hex_(case["responder_static"]))
    assert si.public.raw.hex() == case["initiator_static_public"]
    assert sr.public.raw.hex() == case["responder_static_public"]
    ei, er = hex_(case["initiator_ephemeral"]), hex_(case["responder_ephemeral"])
    prologue = hex_(case["prologue"])
    if i_side == "host":
        ini: Any = H.Initiator(si, sr.public, LinkPrivateKey.from_raw(ei), prologue)
    else:
        ini = D.Initiator(si.raw(), sr.public.raw, ei, prologue)
    if r_side == "host":
        res: Any = H.Responder(sr, [si.public], LinkPrivateKey.from_raw(er), prologue)
    else:
        res = D.Responder(sr.raw(), [si.public.raw], er, prologue)
    return ini, res


def _check_case(case: dict[str, Any], i_side: str, r_side: str) -> None:
    ini, res = _parties(case, i_side, r_side)
    msg1 = ini.start(hex_(case["msg1_payload"]))
    assert msg1.hex() == case["msg1"]
    msg2 = res.receive(msg1, hex_(case["msg2_payload"]))
    assert msg2.hex() == case["msg2"]
    assert res.remote_payload.hex() == case["msg1_payload"]
    channels = {"i2r": ini.receive(msg2), "r2i": res.channel}
    assert ini.remote_payload.hex() == case["msg2_payload"]
    assert channels["i2r"].handshake_hash.hex() == case["handshake_hash"]
    assert channels["r2i"].handshake_hash.hex() == case["handshake_hash"]
    for frame in case["frames"]:
        sender = channels[frame["dir"]]
        while _sent(sender) < frame["counter"]:
            sender.seal(b"\x90")
        assert sender.seal(hex_(frame["body"])).hex() == frame["record"]


@pytest.mark.parametrize("case", VECTORS, ids=CASE_IDS)
@pytest.mark.parametrize(("i_side", "r_side"), SIDES)
def test_golden_vectors(case: dict[str, Any], i_side: str, r_side: str) -> None:
    _check_case(case, i_side, r_side)


@pytest.mark.parametrize("case", VECTORS, ids=CASE_IDS)
@pytest.mark.parametrize("side", ["host", "device"])
def test_golden_records_open(case: dict[str, Any], side: str) -> None:
    """Fresh receivers open the vector's records below the first ratchet."""
    first = case["frames"][0]
    assert first["counter"] == 0
    ci, cr = _channels_from_case(case, side)
    for frame in case["frames"]:
        if frame["counter"] >= H.MAX_GAP:
            continue
        receiver = cr if frame["dir"] == "i2r" else ci
        assert receiver.open(hex_(frame["record"])) == hex_(frame["body"])


def _channels_from_case(case: dict[str, Any], side: str) -> tuple[Any, Any]:
    ini, res = _parties(case, side, side)
    msg2 = res.receive(ini.start(hex_(case["msg1_payload"])), hex_(case["msg2_payload"]))
    return ini.receive(msg2), res.channel


def _hkdf2(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    prk = hmac.digest(ck, ikm, "sha256")
    t1 = hmac.digest(prk, b"\x01", "sha256")
    return t1, hmac.digest(prk, t1 + b"\x02", "sha256")


def test_handshake_follows_the_spec_text() -> None:
    """MSG1, MSG2 and the first record rebuilt step by step from SPEC.md 9.3 "Handshake"."""
    case = VECTORS[1]  # with a prologue and payloads
    si, sr = hex_(case["initiator_static"]), hex_(case["responder_static"])
    ei, er = hex_(case["initiator_ephemeral"]), hex_(case["responder_ephemeral"])

    def pub(priv: bytes) -> bytes:
        return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()

    def dh(priv: bytes, public: bytes) -> bytes:
        return X25519PrivateKey.from_private_bytes(priv).exchange(
            X25519PublicKey.from_public_bytes(public)
        )

    def sha(data: bytes) -> bytes:
        return hashlib.sha256(data).digest()

    h = sha(b"otaferry-link-v1_KK_25519_AESCCM8_SHA256")
    ck = h
    h = sha(h + hex_(case["prologue"]))
    h = sha(h + pub(si))
    h = sha(h + pub(sr))
    header1 = bytes([0xE1, sha(pub(si))[0]])
    h = sha(h + header1)
    h = sha(h + pub(ei))
    ck, k = _hkdf2(ck, dh(ei, pub(sr)))  # es
    ck, k = _hkdf2(ck, dh(si, pub(sr)))  # ss
    c1 = AESCCM(k[:16], tag_length=8).encrypt(bytes(13), hex_(case["msg1_payload"]), h)
    h = sha(h + c1)
    assert (header1 + pub(ei) + c1).hex() == case["msg1"]
    h = sha(h + b"\xe2")
    h = sha(h + pub(er))
    ck, k = _hkdf2(ck, dh(er, pub(ei)))  # ee
    ck, k = _hkdf2(ck, dh(er, pub(si)))  # se
    c2 = AESCCM(k[:16], tag_length=8).encrypt(bytes(13), hex_(case["msg2_payload"]), h)
    h = sha(h + c2)
    assert (b"\xe2" + pub(er) + c2).hex() == case["msg2"]
    assert h.hex() == case["handshake_hash"]
    k_i2r, k_r2i = (t[:16] for t in _hkdf2(ck, b""))
    frame = case["frames"][0]
    nonce = b"\x01" + (0).to_bytes(12, "little")
    record = b"\x00\x00" + AESCCM(k_i2r, tag_length=8).encrypt(
        nonce, hex_(frame["body"]), b"\x00\x00"
    )
    assert record.hex() == frame["record"]
    back = case["frames"][1]
    nonce = b"\x02" + (0).to_bytes(12, "little")
    record = b"\x00\x00" + AESCCM(k_r2i, tag_length=8).encrypt(
        nonce, hex_(back["body"]), b"\x00\x00"
    )
    assert record.hex() == back["record"]
    # the ratchet: next epoch key = HMAC-SHA256(key, label)[:16]
    assert H.ratchet(k_i2r) == hmac.digest(k_i2r, b"otaferry-link-v1 ratchet", "sha256")[:16]
    assert D.ratchet(k_i2r) == H.ratchet(k_i2r)


def test_message_sizes_fit_a_lora_frame() -> None:
    case = VECTORS[0]
    assert len(hex_(case["msg1"])) == H.MSG1_SIZE == D.MSG1_SIZE == 42
    assert len(hex_(case["msg2"])) == H.MSG2_SIZE == D.MSG2_SIZE == 41
    full = VECTORS[1]
    assert len(hex_(full["msg1"])) == LORA_FRAME  # 9 payload bytes ride along
    assert len(hex_(full["msg2"])) == LORA_FRAME  # 10 payload bytes ride along


# --- handshake outcomes ------------------------------------------------------------------


@pytest.mark.parametrize(("i_side", "r_side"), SIDES)
def test_handshake_and_frames_both_ways(i_side: str, r_side: str) -> None:
    ci, cr = handshake(i_side, r_side)
    assert ci.handshake_hash == cr.handshake_hash and len(ci.handshake_hash) == 32
    assert not cr.confirmed
    for n in range(5):
        body = b"\x93\x06" + bytes([n]) * (n + 1)
        assert cr.open(ci.seal(body)) == body
        assert ci.open(cr.seal(body)) == body
    assert cr.confirmed and ci.confirmed
    assert stats(cr)["opened"] == 5 and stats(cr)["sealed"] == 5
    assert sum(stats(cr).values()) == 10  # nothing dropped


@pytest.mark.parametrize("r_side", ["host", "device"])
def test_device_does_not_know_the_gateway_key(r_side: str) -> None:
    stranger = key("another gateway")
    assert stranger.public.hint != GATEWAY.public.hint
    ini = H.Initiator(stranger, DEVICE.public, key("e1"))
    res = make_responder(r_side, DEVICE, [GATEWAY.public], key("e2").raw())
    with pytest.raises(ERRORS) as exc:
        res.receive(ini.start())
    assert reason_of(exc.value) == Reason.BAD_KEY == R.BAD_KEY
    with pytest.raises(ERRORS) as exc:  # a failed responder stays failed
        res.receive(H.Initiator(GATEWAY, DEVICE.public, key("e3")).start())
    assert reason_of(exc.value) == Reason.BAD_STATE


def _colliding_key(target: LinkPublicKey) -> LinkPrivateKey:
    for n in range(10_000):
        candidate = key(f"collide {n}")
        if candidate.public.hint == target.hint and candidate.public != target:
            return candidate
    raise AssertionError("no hint collision found")


@pytest.mark.parametrize("r_side", ["host", "device"])
def test_unknown_key_sharing_a_hint_fails_authentication(r_side: str) -> None:
    impostor = _colliding_key(GATEWAY.public)
    ini = H.Initiator(impostor, DEVICE.public, key("e1"))
    res = make_responder(r_side, DEVICE, [GATEWAY.public], key("e2").raw())
    with pytest.raises(ERRORS) as exc:
        res.receive(ini.start())
    assert reason_of(exc.value) == Reason.BAD_SIGNATURE


@pytest.mark.parametrize("r_side", ["host", "device"])
def test_responder_tries_every_key_sharing_the_hint(r_side: str) -> None:
    other = _colliding_key(GATEWAY.public)
    ini = H.Initiator(GATEWAY, DEVICE.public, key("e1"))
    res = make_responder(r_side, DEVICE, [other.public, GATEWAY.public], key("e2").raw())
    msg2 = res.receive(ini.start())
    channel = ini.receive(msg2)
    got = res.initiator if r_side == "device" else res.initiator.raw
    assert got == GATEWAY.public.raw
    assert res.channel.open(channel.seal(b"\x90")) == b"\x90"


@pytest.mark.parametrize("i_side", ["host", "device"])
def test_gateway_talking_to_an_impostor_device(i_side: str) -> None:
    """The impostor lacks DEVICE's private key: whatever it answers fails authentication."""
    impostor = key("impostor")
    ini = make_initiator(i_side, GATEWAY, DEVICE.public, key("e1").raw())
    msg1 = ini.start()
    # the impostor cannot read MSG1 with its own key ...
    with pytest.raises(ProtocolError) as exc:
        H.Responder(impostor, [GATEWAY.public], key("e2")).receive(msg1)
    assert exc.value.reason is Reason.BAD_SIGNATURE
    # ... so it answers with a MSG2 from a handshake that *was* meant for it
    decoy = H.Initiator(GATEWAY, impostor.public, key("e3"))
    fake = H.Responder(impostor, [GATEWAY.public], key("e4")).receive(decoy.start())
    with pytest.raises(ERRORS) as exc2:
        ini.receive(fake)
    assert reason_of(exc2.value) == Reason.BAD_SIGNATURE


@pytest.mark.parametrize(("i_side", "r_side"), SIDES)
def test_tampered_handshake_messages_fail(i_side: str, r_side: str) -> None:
    msg1 = make_initiator(i_side, GATEWAY, DEVICE.public, key("e1").raw()).start()
    for pos in range(len(msg1)):
        bad = bytearray(msg1)
        bad[pos] ^= 0x01 if pos else 0x02
        res = make_responder(r_side, DEVICE, [GATEWAY.public], key("e2").raw())
        with pytest.raises(ERRORS) as exc:
            res.receive(bytes(bad))
        expected = {0: Reason.BAD_FRAME, 1: Reason.BAD_KEY}.get(pos, Reason.BAD_SIGNATURE)
        assert reason_of(exc.value) == expected, pos
    for cut in (0, 1, 41):
        res = make_responder(r_side, DEVICE, [GATEWAY.public], key("e2").raw())
        with pytest.raises(ERRORS) as exc:
            res.receive(msg1[:cut])
        assert reason_of(exc.value) == Reason.BAD_FRAME
    res = make_responder(r_side, DEVICE, [GATEWAY.public], key("e2").raw())
    msg2 = res.receive(msg1)
    for pos in range(len(msg2)):
        bad = bytearray(msg2)
        bad[pos] ^= 0x80
        ini = make_initiator(i_side, GATEWAY, DEVICE.public, key("e1").raw())
        ini.start()
        with pytest.raises(ERRORS) as exc:
            ini.receive(bytes(bad))
        assert reason_of(exc.value) == (Reason.BAD_FRAME if pos == 0 else Reason.BAD_SIGNATURE)
        with pytest.raises(ERRORS) as exc:  # failure is final: even the good MSG2 is refused
            ini.receive(msg2)
        assert reason_of(exc.value) == Reason.BAD_STATE


@pytest.mark.parametrize("side", ["host", "device"])
def test_low_order_ephemeral_is_a_bad_frame(side: str) -> None:
    res = make_responder(side, DEVICE, [GATEWAY.public], key("e2").raw())
    with pytest.raises(ERRORS) as exc:
        res.receive(bytes([0xE1, GATEWAY.public.hint]) + bytes(32 + 8))
    assert reason_of(exc.value) == Reason.BAD_FRAME
    ini = make_initiator(side, GATEWAY, DEVICE.public, key("e1").raw())
    ini.start()
    with pytest.raises(ERRORS) as exc:
        ini.receive(b"\xe2" + bytes(32 + 8))
    assert reason_of(exc.value) == Reason.BAD_FRAME


@pytest.mark.parametrize("side", ["host", "device"])
def test_handshake_calls_out_of_order_are_bad_state(side: str) -> None:
    ini = make_initiator(side, GATEWAY, DEVICE.public, key("e1").raw())
    with pytest.raises(ERRORS) as exc:
        ini.receive(b"\xe2" + bytes(40))
    assert reason_of(exc.value) == Reason.BAD_STATE
    ini = make_initiator(side, GATEWAY, DEVICE.public, key("e1").raw())
    msg1 = ini.start()
    with pytest.raises(ERRORS) as exc:
        ini.start()
    res = make_responder(side, DEVICE, [GATEWAY.public], key("e2").raw())
    res.receive(msg1)
    with pytest.raises(ERRORS) as exc:
        res.receive(msg1)
    assert reason_of(exc.value) == Reason.BAD_STATE
    if side == "host":
        with pytest.raises(ProtocolError) as exc:
            _ = H.Responder(DEVICE, [], key("e2")).channel
        assert exc.value.reason is Reason.BAD_STATE


@pytest.mark.parametrize("side", ["host", "device"])
def test_reject_record_reaches_the_initiator_as_a_reason(side: str) -> None:
    ini = make_initiator(side, GATEWAY, DEVICE.public, key("e1").raw())
    ini.start()
    reject = H.encode_reject(Reason.BAD_KEY)
    assert reject == D.encode_reject(R.BAD_KEY) == b"\xe3\x18"
    with pytest.raises(ERRORS) as exc:
        ini.receive(reject)
    assert reason_of(exc.value) == Reason.BAD_KEY
    if side == "host":
        assert isinstance(exc.value, RemoteError)


def test_payloads_larger_than_ccm_allows_are_refused() -> None:
    with pytest.raises(ProtocolError) as exc:
        H.Initiator(GATEWAY, DEVICE.public, key("e")).start(bytes(0x10000))
    assert exc.value.reason is Reason.TOO_LARGE
    ci, _ = handshake("host", "host")
    with pytest.raises(ProtocolError):
        ci.seal(bytes(0x10000))
    dci, _ = handshake("device", "device")
    with pytest.raises(DeviceError):
        dci.seal(bytes(0x10000))


# --- sealed frames: replay window, tampering, sessions -------------------------------------


@pytest.mark.parametrize(("i_side", "r_side"), SIDES)
def test_replay_reorder_and_stale_frames(i_side: str, r_side: str) -> None:
    ci, cr = handshake(i_side, r_side)
    records = [ci.seal(b"\x91" + bytes([n % 100])) for n in range(200)]
    assert cr.open(records[0]) == b"\x91\x00"
    assert cr.open(records[0]) is None  # replay
    assert cr.open(records[10]) is not None  # frames 1..9 lost or late
    for n in (9, 3, 1, 5):  # late but inside the window: accepted once
        assert cr.open(records[n]) == b"\x91" + bytes([n])
    assert cr.open(records[3]) is None
    assert cr.open(records[100]) is not None
    assert cr.open(records[37]) == b"\x91\x25"  # 100 - 37 = 63: the oldest in the window
    assert cr.open(records[36]) is None  # 64 behind: too old
    assert cr.open(records[2]) is None  # never seen, but far too old
    got = stats(cr)
    assert got["replayed"] == 2 and got["too_old"] == 2 and got["opened"] == 8
    assert sum(v for k, v in got.items() if k != "opened") == 4  # nothing else dropped


@pytest.mark.parametrize(("i_side", "r_side"), SIDES)
def test_every_bit_flip_is_dropped(i_side: str, r_side: str) -> None:
    ci, cr = handshake(i_side, r_side)
    good = ci.seal(b"\x94\x06\x01\x02\xc4\x03abc")
    for bit in range(len(good) * 8):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert cr.open(bytes(bad)) is None
    got = stats(cr)
    assert got["malformed"] == 1  # bit 7 of byte 0: not a sealed record any more
    assert got["opened"] == 0
    assert got["auth_failed"] + got["too_old"] == len(good) * 8 - 1
    assert cr.open(good) is not None  # the failures left the window untouched


@pytest.mark.parametrize(("i_side", "r_side"), SIDES)
def test_old_session_frames_are_dropped_in_a_new_session(i_side: str, r_side: str) -> None:
    old_i, old_r = handshake(i_side, r_side, "old")
    old = [old_i.seal(b"\x91" + bytes([n])) for n in range(5)]
    old_back = [old_r.seal(b"\x92" + bytes([n])) for n in range(5)]
    new_i, new_r = handshake(i_side, r_side, "new")
    for rec in old:
        assert new_r.open(rec) is None
    for rec in old_back:
        assert new_i.open(rec) is None
    assert stats(new_r)["auth_failed"] == 5 and stats(new_i)["auth_failed"] == 5
    assert new_r.open(new_i.seal(b"\x90")) == b"\x90"


@pytest.mark.parametrize("side", ["host", "device"])
def test_reflected_frames_are_dropped(side: str) -> None:
    """A record sent back to its sender fails: each direction has its own key and nonces."""
    ci, cr = handshake(side, side)
    rec = ci.seal(b"\x90")
    assert ci.open(rec) is None
    assert stats(ci)["auth_failed"] == 1
    assert cr.open(rec) == b"\x90"


@pytest.mark.parametrize(("i_side", "r_side"), [("host", "device"), ("device", "host")])
def test_long_loss_is_tolerated_up_to_the_gap(i_side: str, r_side: str) -> None:
    ci, cr = handshake(i_side, r_side)
    assert cr.open(ci.seal(b"\x90")) is not None
    for _ in range(H.MAX_GAP - 1):
        ci.seal(b"\x90")  # lost
    assert cr.open(ci.seal(b"\x91")) == b"\x91"  # counter top + 16384: still read right


@pytest.mark.parametrize(("i_side", "r_side"), [("host", "device"), ("device", "host")])
def test_ratchet_across_an_epoch_with_reordering(i_side: str, r_side: str) -> None:
    ci, cr = handshake(i_side, r_side)
    first_recv_key = _recv_key(cr)
    for n in range(H.EPOCH_FRAMES - 3):
        rec = ci.seal(b"\x90")
        if n % 4096 == 0:
            assert cr.open(rec) == b"\x90"
    held = [ci.seal(b"\x91" + bytes([n])) for n in range(3)]  # 32765 .. 32767, epoch 0
    after = [ci.seal(b"\x92" + bytes([n])) for n in range(3)]  # 32768 .. 32770, epoch 1
    assert after[0][:2] == b"\x00\x00"  # the wire counter wrapped
    for n, rec in enumerate(after):
        assert cr.open(rec) == b"\x92" + bytes([n])
    assert _recv_key(cr) == H.ratchet(first_recv_key)  # ratcheted
    for n, rec in enumerate(held):  # late frames of the old epoch, inside the window
        assert cr.open(rec) == b"\x91" + bytes([n])
    assert cr.open(held[0]) is None
    # once the window has left epoch 0 its key is forgotten
    for _ in range(H.WINDOW):
        assert cr.open(ci.seal(b"\x90")) is not None
    assert _prev_key(cr) is None
    assert ci.open(cr.seal(b"\x93")) == b"\x93"  # the other direction is still in epoch 0


def _recv_key(channel: Any) -> bytes:
    return bytes(channel.recv_key if isinstance(channel, D.SecureChannel) else channel._recv_key)


def _prev_key(channel: Any) -> bytes | None:
    return channel.prev_key if isinstance(channel, D.SecureChannel) else channel._prev_key


@pytest.mark.parametrize("side", ["host", "device"])
def test_counter_limit_forces_a_new_handshake(side: str) -> None:
    ks, kr = bytes(range(16)), bytes(range(16, 32))
    mod: Any = H if side == "host" else D
    if side == "host":
        sender = H.SecureChannel(ks, kr, initiator=True, limit=8)
        big = H.SecureChannel(ks, kr, initiator=True)
        receiver = H.SecureChannel(kr, ks, initiator=False, limit=8)
    else:
        sender = D.SecureChannel(ks, kr, True, b"", 8)
        big = D.SecureChannel(ks, kr, True)
        receiver = D.SecureChannel(kr, ks, False, b"", 8)
    for n in range(8):
        assert receiver.open(sender.seal(bytes([0x90 + n % 8]))) is not None
        big.seal(b"\x90")
    with pytest.raises(ERRORS) as exc:
        sender.seal(b"\x90")
    assert reason_of(exc.value) == Reason.BAD_STATE
    assert receiver.open(big.seal(b"\x90")) is None  # counter 8 from a sender without limit
    assert stats(receiver)["exhausted"] == 1
    assert mod.COUNTER_LIMIT == 1 << 32
    ci, cr = handshake(side, side, "fresh")  # the remedy: a new handshake
    assert cr.open(ci.seal(b"\x90")) == b"\x90"


def test_channel_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        H.SecureChannel(bytes(15), bytes(16), initiator=True)
    with pytest.raises(ValueError):
        H.SecureChannel(bytes(16), bytes(16), initiator=True, limit=0)
    with pytest.raises(ValueError):
        D.SecureChannel(bytes(16), bytes(17), True)
    with pytest.raises(ValueError):
        D.SecureChannel(bytes(16), bytes(16), True, b"", (1 << 32) + 1)


@pytest.mark.parametrize("side", ["host", "device"])
def test_overhead_is_ten_bytes(side: str) -> None:
    ci, cr = handshake(side, side)
    assert H.OVERHEAD == D.OVERHEAD == 10 == H.TAG_SIZE + 2
    for size in (0, 1, 41, 200, 1000):
        assert len(ci.seal(bytes([0x90]) * size)) == size + 10
    body = b"\x94\x06\x01\x02" + bytes(37)
    assert len(body) == LORA_FRAME - 8 - 2
    record = ci.seal(body)
    assert len(record) == LORA_FRAME
    assert cr.open(record) == body


# --- fuzzing ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_open_of_random_bytes_never_raises_never_returns(data: bytes) -> None:
    for side in ("host", "device"):
        _, cr = handshake(side, side)
        assert cr.open(data) is None
        s = stats(cr)
        assert s["opened"] == 0 and sum(s.values()) == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.binary(min_size=1, max_size=4), st.integers(0, 40))
def test_open_of_mutated_records_never_returns(cut: int, junk: bytes, pos: int) -> None:
    for side in ("host", "device"):
        ci, cr = handshake(side, side)
        good = ci.seal(b"\x93\x01\x02\x03" + bytes(20))
        for bad in (good[:cut] if cut < len(good) else good + junk, _splice(good, pos, junk)):
            if bad != good:
                assert cr.open(bad) is None
        assert cr.open(good) is not None


def _splice(data: bytes, pos: int, junk: bytes) -> bytes:
    pos = min(pos, len(data))
    return (
        data[:pos]
        + bytes(a ^ b for a, b in zip(data[pos:], junk, strict=False))
        + data[pos + len(junk) :]
    )


@given(st.binary(max_size=64))
def test_handshake_fuzz_raises_only_project_errors(data: bytes) -> None:
    for res in (
        H.Responder(DEVICE, [GATEWAY.public], key("e")),
        D.Responder(DEVICE.raw(), [GATEWAY.public.raw], key("e").raw()),
    ):
        with pytest.raises(ERRORS):
            res.receive(data)
    ini = H.Initiator(GATEWAY, DEVICE.public, key("e"))
    ini.start()
    with pytest.raises(ProtocolError):
        ini.receive(data)


# --- record kinds and the plaintext policy ---------------------------------------------------


def test_record_kind_host_and_device_agree() -> None:
    for first in range(256):
        packet = bytes([first, 0])
        assert H.record_kind(packet).value == D.record_kind(packet)
    assert H.record_kind(b"") is H.RecordKind.UNKNOWN and D.record_kind(b"") == "unknown"
    assert H.record_kind(b"\x93\x01\x01\x00") is H.RecordKind.PLAIN  # msgpack [1, 1, 0]
    assert H.record_kind(H.encode_reject(Reason.BAD_KEY)) is H.RecordKind.REJECT


def test_plaintext_channel_is_explicit_and_passes_only_plaintext() -> None:
    plain = H.PlaintextChannel()
    assert plain.overhead == 0
    assert plain.seal(b"\x91\x08") == b"\x91\x08"
    assert plain.open(b"\x91\x08") == b"\x91\x08"
    ci, _ = handshake("host", "host")
    assert plain.open(ci.seal(b"\x91\x08")) is None
    assert plain.open(b"\xe1" + bytes(41)) is None
    with pytest.raises(ProtocolError):
        plain.seal(b"\x00\x00sealed-looking")
    assert plain.stats.opened == 1 and plain.stats.malformed == 2 and plain.stats.sealed == 1


def _endpoint(require_secure: bool = True) -> D.SecureEndpoint:
    counter = iter(range(1000))
    return D.SecureEndpoint(
        DEVICE.raw(),
        [GATEWAY.public.raw],
        require_secure=require_secure,
        random_bytes=lambda n: hashlib.sha256(b"eph %d" % next(counter)).digest()[:n],
    )


def _gateway_handshake(ep: D.SecureEndpoint, tag: str) -> H.SecureChannel:
    ini = H.Initiator(GATEWAY, DEVICE.public, key("gw eph " + tag))
    reply, body = ep.receive(ini.start())
    assert body is None and reply is not None
    return ini.receive(reply)


def test_endpoint_requires_secure_by_default() -> None:
    ep = _endpoint()
    assert ep.require_secure
    assert ep.receive(b"\x93\x01\x01\x00") == (None, None)  # plain QUERY refused
    assert ep.stats["plain_refused"] == 1
    with pytest.raises(DeviceError) as exc:
        ep.seal(b"\x92\x02\x00")  # no plain HELLO either
    assert exc.value.reason == R.BAD_STATE
    gw = _gateway_handshake(ep, "a")
    assert not ep.secure  # pending until the gateway proves itself
    reply, body = ep.receive(gw.seal(b"\x93\x01\x01\x00"))
    assert reply is None and body == b"\x93\x01\x01\x00" and ep.secure
    assert gw.open(ep.seal(b"\x92\x02\x00")) == b"\x92\x02\x00"
    assert ep.gateway == GATEWAY.public.raw


def test_endpoint_bench_mode_passes_plaintext_until_a_secure_session() -> None:
    ep = _endpoint(require_secure=False)
    assert ep.receive(b"\x93\x01\x01\x00") == (None, b"\x93\x01\x01\x00")
    assert ep.seal(b"\x91\x09") == b"\x91\x09"
    gw = _gateway_handshake(ep, "a")
    assert ep.receive(gw.seal(b"\x91\x08")) == (None, b"\x91\x08")
    assert ep.receive(b"\x93\x01\x01\x00") == (None, None)  # no plaintext inside a secure session
    assert ep.stats["plain_passed"] == 1 and ep.stats["plain_refused"] == 1
    assert ep.seal(b"\x91\x09")[:2] == b"\x00\x00"  # sealed now


def test_endpoint_keeps_the_running_channel_across_a_replayed_msg1() -> None:
    ep = _endpoint()
    ini = H.Initiator(GATEWAY, DEVICE.public, key("gw eph a"))
    msg1 = ini.start()
    gw = ini.receive(ep.receive(msg1)[0])
    assert ep.receive(gw.seal(b"\x90"))[1] == b"\x90"
    running = ep.channel
    replayed, _ = ep.receive(msg1)  # an attacker replays the MSG1 of the running session ...
    assert replayed is None  # ... and gets nothing: no X25519 work, no bytes (issue [M] 6)
    assert ep.channel is running and ep.stats["replayed_msg1"] == 1
    assert ep.stats["responder_runs"] == 1
    other = H.Initiator(GATEWAY, DEVICE.public, key("gw eph b")).start()
    assert ep.receive(other[:10] + msg1[10:])[0] == b"\xe3\x05"  # spliced: BAD_SIGNATURE
    reply, _ = ep.receive(other)  # a genuine new MSG1 whose sender never goes on
    assert reply is not None and reply[0] == 0xE2
    assert ep.channel is running and ep.pending is not None  # nothing switched
    assert ep.receive(gw.seal(b"\x91"))[1] == b"\x91"  # the real session goes on
    forged = bytes([5, 0]) + bytes(18)  # counter 5: fresh, but no valid tag
    assert ep.receive(forged) == (None, None)  # counted, dropped
    assert ep.channel is running and ep.stats["auth_failed"] == 1


def test_endpoint_switches_to_a_new_session_once_confirmed() -> None:
    ep = _endpoint()
    gw_a = _gateway_handshake(ep, "a")
    assert ep.receive(gw_a.seal(b"\x90"))[1] == b"\x90"
    gw_b = _gateway_handshake(ep, "b")
    assert ep.receive(gw_a.seal(b"\x91"))[1] == b"\x91"  # old session still runs
    assert ep.receive(gw_b.seal(b"\x92"))[1] == b"\x92"  # new one confirmed: switch
    assert ep.receive(gw_a.seal(b"\x93")) == (None, None)  # old session's frames now dropped
    assert gw_b.open(ep.seal(b"\x94")) == b"\x94"
    assert ep.stats["handshakes"] == 2 and ep.stats["auth_failed"] == 1


def test_endpoint_rejects_bad_handshakes_with_a_reason() -> None:
    ep = _endpoint()
    stranger = H.Initiator(key("stranger"), DEVICE.public, key("e"))
    reply, body = ep.receive(stranger.start())
    assert body is None and reply == H.encode_reject(Reason.BAD_KEY)
    with pytest.raises(RemoteError) as exc:
        stranger.receive(reply)
    assert exc.value.reason is Reason.BAD_KEY
    assert ep.last_error == R.BAD_KEY and ep.stats["handshake_failed"] == 1
    assert ep.receive(b"\xe2" + bytes(40)) == (None, None)  # a MSG2 to a responder
    assert ep.receive(b"\xc0") == (None, None)
    # sealed-looking with no channel at all: the gateway is told to handshake again
    assert ep.receive(bytes(12)) == (H.encode_reject(Reason.BAD_STATE), None)
    assert ep.stats["unexpected"] == 2 and ep.stats["no_channel"] == 1


def test_reorder_shuffle_property() -> None:
    """Any delivery order inside the window: each frame accepted exactly once."""
    rng = random.Random(7)
    for side in ("host", "device"):
        ci, cr = handshake(side, side)
        records = [ci.seal(b"\x91" + bytes([n])) for n in range(48)]
        deliveries = records + rng.sample(records, 20)
        rng.shuffle(deliveries)
        got = [cr.open(r) for r in deliveries]
        assert sorted(b for b in got if b is not None) == sorted(
            b"\x91" + bytes([n]) for n in range(48)
        )
        assert stats(cr)["replayed"] == 20


def test_endpoint_answers_a_repeated_msg1_with_the_same_msg2() -> None:
    """A gateway that got the first MSG2 late must still share keys with the device."""
    ep = _endpoint()
    ini = H.Initiator(GATEWAY, DEVICE.public, key("gw eph a"))
    msg1 = ini.start()
    first, _ = ep.receive(msg1)
    again, _ = ep.receive(msg1)  # retransmitted MSG1
    assert first == again and ep.stats["handshakes"] == 1 and ep.stats["repeats"] == 1
    gw = ini.receive(first)  # the first MSG2 arrives after all
    assert ep.receive(gw.seal(b"\x90"))[1] == b"\x90"


# --- the handshake as a sans-IO machine ---------------------------------------------


def test_handshake_machine_retries_with_backoff_then_times_out() -> None:
    from otaferry.protocol.handshake import Handshake
    from otaferry.protocol.secure import Initiator

    gw, dev = LinkPrivateKey.from_raw(bytes(range(1, 33))), LinkPrivateKey.from_raw(bytes(32))
    hs = Handshake(Initiator(gw, dev.public, LinkPrivateKey.from_raw(bytes(range(3, 35))),
                             b"p"), rto=1.0, retries=2)  # fmt: skip
    sent = [(0.0, hs.datagrams_to_send(0.0))]
    assert hs.get_timer() is None or hs.get_timer() == 1.0
    hs.departed(5.0)  # MSG1 waited 5 s for the medium: the timeout counts from there
    assert hs.get_timer() == 6.0
    hs.handle_timer(6.0)
    sent.append((6.0, hs.datagrams_to_send(6.0)))
    assert hs.get_timer() == 8.0  # doubled
    hs.receive(b"\x00garbage", 7.0)
    assert hs.dropped == 1 and not hs.done
    hs.handle_timer(8.0)
    sent.append((8.0, hs.datagrams_to_send(8.0)))
    hs.handle_timer(12.0)
    assert hs.error is not None and hs.error.reason == Reason.TIMEOUT
    assert [len(s) for _, s in sent] == [1, 1, 1] and len({s[0] for _, s in sent}) == 1


def test_handshake_rto_follows_the_medium() -> None:
    from otaferry.protocol.handshake import MIN_RTO, handshake_rto
    from otaferry.protocol.pacing import AirTime, LineRate, Unlimited

    assert handshake_rto(Unlimited()) == MIN_RTO
    assert handshake_rto(LineRate(11_520, latency=0.02)) == MIN_RTO
    lora = AirTime(lambda n: 0.05 + n * 0.008, duty_cycle=0.01, turnaround=0.1)
    assert handshake_rto(lora) > 3 * (0.2 + 2 * 0.05 + 83 * 0.008) - 1e-9 > 1.0


def _pair_keys() -> tuple[LinkPrivateKey, LinkPrivateKey]:
    gw = LinkPrivateKey.from_raw(bytes(range(1, 33)))
    return gw, LinkPrivateKey.from_raw(bytes(range(9, 41)))


def test_a_stale_msg2_during_a_re_handshake_is_dropped_not_fatal() -> None:
    """Issue [F] 4: a duplicate MSG2 of an earlier handshake, arriving during the
    next one, used to end it; it is dropped and the right MSG2 completes."""
    from otaferry.protocol.handshake import Handshake

    gw, dev = _pair_keys()
    old = H.Initiator(gw, dev.public, LinkPrivateKey.from_raw(bytes(range(2, 34))), b"p")
    old_msg2 = H.Responder(dev, [gw.public], LinkPrivateKey.from_raw(bytes(range(5, 37))),
                           b"p").receive(old.start())  # fmt: skip
    new = H.Initiator(gw, dev.public, LinkPrivateKey.from_raw(bytes(range(3, 35))), b"p")
    hs = Handshake(new, rto=1.0, retries=3)
    (msg1,) = hs.datagrams_to_send(0.0)
    hs.receive(old_msg2, 0.1)  # the stale duplicate
    assert not hs.done and hs.auth_failures == 1
    responder = H.Responder(dev, [gw.public], LinkPrivateKey.from_raw(bytes(range(6, 38))), b"p")
    hs.receive(responder.receive(msg1), 0.2)
    assert hs.channel is not None and hs.error is None
    assert responder.channel is not None
    assert responder.channel.open(hs.channel.seal(b"hello")) == b"hello"


def test_a_wrong_device_key_is_named_in_the_error() -> None:
    """Issue [N] 3: with a wrong --device-pub the device cannot authenticate MSG1 and
    refuses it (BAD_SIGNATURE), which read like a firmware-signature failure. The
    error names both keys and how to fix them; a MSG2 that never authenticates
    (someone else answering) is named the same way when the handshake gives up."""
    from otaferry.protocol.handshake import Handshake
    from otaferry.protocol.secure import encode_reject

    gw, dev = _pair_keys()
    ids = (gw.public.key_id.hex(), dev.public.key_id.hex())

    def fresh(retries: int) -> Any:
        eph = LinkPrivateKey.from_raw(bytes(range(4, 36)))
        return Handshake(H.Initiator(gw, dev.public, eph, b"p"), rto=1.0, retries=retries,
                         keys=ids)  # fmt: skip

    hs = fresh(3)
    hs.datagrams_to_send(0.0)
    hs.receive(encode_reject(Reason.BAD_SIGNATURE), 0.1)
    assert hs.error is not None and hs.error.reason == Reason.BAD_KEY
    assert ids[0] in hs.error.message and ids[1] in hs.error.message
    assert "--device-pub" in hs.error.message and "\n" not in hs.error.message

    other = LinkPrivateKey.from_raw(bytes(range(20, 52)))  # answers as if it were the device
    hs = fresh(1)
    now = 0.0
    while not hs.done:
        for _msg1 in hs.datagrams_to_send(now):
            forged = H.Initiator(other, gw.public, LinkPrivateKey.generate(), b"p")
            hs.receive(b"\xe2" + forged.start()[2:35] + bytes(8), now)  # a MSG2 from nobody
        now = hs.get_timer() or now
        hs.handle_timer(now)
    assert hs.error is not None and hs.error.reason == Reason.BAD_KEY and hs.auth_failures == 2
    assert ids[1] in hs.error.message and "--device-pub" in hs.error.message


# --- issue [M] 6: the work an unauthenticated peer can cause -------------------------


def test_replayed_msg1s_right_after_msg2_do_not_displace_the_genuine_handshake() -> None:
    """One recorded MSG1 replayed right after the device's MSG2 used to replace the
    pending channel (7 such injections made a push time out). Answered handshakes
    now wait side by side, and the genuine gateway's first sealed frame opens."""
    ep = _endpoint()
    recorded = [H.Initiator(GATEWAY, DEVICE.public, key(f"old {i}")).start() for i in range(7)]
    ini = H.Initiator(GATEWAY, DEVICE.public, key("genuine"))
    msg2 = ep.receive(ini.start(), 10.0)[0]
    answered = 0
    for i, old in enumerate(recorded):  # the attacker injects them all, at once
        answered += ep.receive(old, 10.0 + i * 0.01)[0] is not None
    assert answered <= D.HANDSHAKE_BURST - 1  # the rest: rate limited, unanswered
    channel = ini.receive(msg2)
    assert ep.receive(channel.seal(b"\x91\x01"), 10.2)[1] == b"\x91\x01"
    assert ep.channel is not None and ep.stats["opened"] == 1
    assert ep.stats["rate_limited"] == len(recorded) - answered


def test_a_flood_of_forged_msg1s_costs_bounded_work_and_no_amplification() -> None:
    """1,000 forged MSG1s (the right key hint, garbage keys) over 10 s: before, each
    cost 2 X25519 operations and got an answer; now at most HANDSHAKE_BURST plus one
    per HANDSHAKE_INTERVAL are even tried, and the device sends far fewer bytes
    than it receives."""
    ep = _endpoint()
    rng = random.Random(6)
    hint = GATEWAY.public.hint
    bytes_in = bytes_out = 0
    for i in range(1000):
        msg1 = bytes([0xE1, hint]) + rng.randbytes(32 + 8)
        reply, body = ep.receive(msg1, i * 0.01)
        assert body is None
        bytes_in += len(msg1)
        bytes_out += len(reply) if reply else 0
    tried = ep.stats["responder_runs"]
    assert tried <= D.HANDSHAKE_BURST + 10.0 / D.HANDSHAKE_INTERVAL + 1
    assert ep.stats["rate_limited"] == 1000 - tried
    assert bytes_out <= 2 * tried and bytes_out / bytes_in < 0.01


# --- resumption (SPEC 9.11) ----------------------------------------------------------

RESUME_VECTOR = json.loads(
    (Path(__file__).resolve().parent / "vectors" / "secure" / "resume.json").read_text()
)


def _resumed(case: dict[str, Any], side: str) -> tuple[bytes, bytes]:
    """(initiator's resume key, responder's) from the vector's handshake on ``side``."""
    ci, cr = _channels_from_case(case, side)
    return ci.resume_key, cr.resume_key


@pytest.mark.parametrize("side", ["host", "device"])
def test_resumption_vector_both_ways(side: str) -> None:
    v = RESUME_VECTOR
    case = next(c for c in VECTORS if c["name"] == v["handshake"])
    ki, kr = _resumed(case, side)
    assert ki == kr == hex_(v["resume_key"])  # both ends of the handshake agree
    uid, nonce, body = hex_(v["update_id"]), hex_(v["nonce"]), hex_(v["body"])
    assert H.resumption_secret(ki, uid) == D.resumption_secret(kr, uid) == hex_(v["secret"])
    record = D.encode_resume(D.resumed_channel(hex_(v["secret"]), nonce, False), nonce, body)
    assert record.hex() == v["record"]  # the device writes the vector ...
    opened = H.open_resume(hex_(v["secret"]), record)  # ... the host reads it
    assert opened is not None and opened[1] == body
    # and the host's reply opens on the device's end of the resumed channel
    device_end = D.resumed_channel(hex_(v["secret"]), nonce, False)
    assert device_end.open(opened[0].seal(b"\x91\x08")) == b"\x91\x08"
    # another nonce (the next boot) makes other keys: the record does not open
    other = D.resumed_channel(hex_(v["secret"]), bytes(8), False)
    assert other.open(opened[0].seal(b"\x91\x08")) is None


def test_resumption_follows_the_spec_text() -> None:
    """SPEC 9.11 by hand: secret = HMAC(resume key, update id); k_i2r, k_r2i =
    HKDF2(secret, nonce); RESUME = E6 | nonce | the r2i record of counter 0."""
    v = RESUME_VECTOR
    secret = hmac.digest(hex_(v["resume_key"]), hex_(v["update_id"]), "sha256")
    assert secret.hex() == v["secret"]
    nonce = hex_(v["nonce"])
    _t1, t2 = _hkdf2(secret, nonce)
    header = bytes([0, 0])
    ccm_nonce = b"\x02" + bytes(12)
    sealed = AESCCM(t2[:16], tag_length=8).encrypt(ccm_nonce, hex_(v["body"]), header)
    assert (b"\xe6" + nonce + header + sealed).hex() == v["record"]


def test_a_resumed_channel_is_pending_and_a_stranger_record_still_draws_reject() -> None:
    """The device's resumed channel acts like a handshake's pending one: a record of
    the old channel (a gateway that missed the RESUME) is answered with the RESUME
    again, RESUME_REPEATS times, then REJECT(BAD_STATE), so the gateway falls back to
    a full handshake; the gateway's first frame on the resumed channel makes it the
    running one. A tampered nonce opens nothing."""
    v = RESUME_VECTOR
    secret, nonce = hex_(v["secret"]), hex_(v["nonce"])
    gateway = LinkPrivateKey.from_raw(bytes(range(32)))
    device = LinkPrivateKey.from_raw(bytes(range(1, 33)))
    ep = D.SecureEndpoint(device.raw(), [gateway.public.raw], prologue=b"")
    record = ep.resume(secret, nonce, gateway.public.raw, hex_(v["body"]))
    assert ep.channel is None and ep.pending is not None
    stale = H.SecureChannel(bytes(16), bytes(16), initiator=True).seal(b"\x91\x08")
    for _ in range(D.RESUME_REPEATS):  # it missed the RESUME: the same record again ...
        assert ep.receive(stale) == (record, None)
    assert ep.receive(stale) == (D.encode_reject(R.BAD_STATE), None)  # ... then fall back
    tampered = record[:1] + bytes([record[1] ^ 1]) + record[2:]
    assert H.open_resume(secret, tampered) is None
    assert H.open_resume(secret, record[:-1] + bytes([record[-1] ^ 1])) is None
    opened = H.open_resume(secret, record)
    assert opened is not None
    host_end, body = opened
    assert body == hex_(v["body"])
    reply, got = ep.receive(host_end.seal(b"\x91\x08"))
    assert reply is None and got == b"\x91\x08" and ep.channel is not None
    assert ep.gateway == gateway.public.raw
    assert host_end.open(ep.seal(b"\x91\x09")) == b"\x91\x09"
