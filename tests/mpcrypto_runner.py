"""Runs device_fw.mpcrypto cases under either interpreter (not a test module itself).

tests/test_mpcrypto.py imports :func:`run_case` under CPython and runs this
file under the real ``micropython`` command:

    micropython tests/mpcrypto_runner.py REPO_ROOT CASES.json

CASES.json is a list of ``[case_id, op, args]`` (byte strings in hex); the
runner prints one JSON object ``{case_id: result}``. A result is hex, a bool,
or ``"ValueError"`` when the operation raised it (anything else escapes and
fails the run). Written in the subset both interpreters share.
"""

import binascii
import json
import sys


def _b(text):
    return binascii.unhexlify(text)


def _h(data):
    return binascii.hexlify(data).decode()


class _Mods:
    """The modules under test, imported by whoever runs the cases."""

    def __init__(self, package, aes, ccm, sha512, port, secure):
        self.m = package
        self.aes = aes
        self.ccm = ccm
        self.sha512 = sha512
        self.port = port
        self.secure = secure


def _plug(mods):
    """device_fw.port's crypto replaced by mpcrypto (port.py's contract: decrypt gives None)."""
    m = mods.m

    def decrypt(key, nonce, data, ad):
        try:
            return m.aes_ccm8_decrypt(key, nonce, data, ad)
        except ValueError:
            return None

    port = mods.port
    saved = (port.x25519, port.x25519_public, port.aes_ccm8_encrypt, port.aes_ccm8_decrypt)
    port.x25519 = m.x25519
    port.x25519_public = m.x25519_public
    port.aes_ccm8_encrypt = m.aes_ccm8_encrypt
    port.aes_ccm8_decrypt = decrypt
    return saved


def _unplug(mods, saved):
    port = mods.port
    port.x25519, port.x25519_public, port.aes_ccm8_encrypt, port.aes_ccm8_decrypt = saved


def _handshake(mods, case):
    """The project's KK handshake vector run through device_fw.secure on mpcrypto."""
    s = mods.secure
    prologue = _b(case["prologue"])
    ini = s.Initiator(
        _b(case["initiator_static"]),
        _b(case["responder_static_public"]),
        _b(case["initiator_ephemeral"]),
        prologue,
    )
    res = s.Responder(
        _b(case["responder_static"]),
        [_b(case["initiator_static_public"])],
        _b(case["responder_ephemeral"]),
        prologue,
    )
    msg1 = ini.start(_b(case["msg1_payload"]))
    msg2 = res.receive(msg1, _b(case["msg2_payload"]))
    channels = {"i2r": ini.receive(msg2), "r2i": res.channel}
    records = []
    for frame in case["frames"]:
        sender = channels[frame["dir"]]
        sender.send_next = frame["counter"]  # seal() ratchets once per epoch it enters
        records.append(_h(sender.seal(_b(frame["body"]))))
    # fresh channels open the vector's records (below the first ratchet, in order)
    ini2 = s.Initiator(
        _b(case["initiator_static"]),
        _b(case["responder_static_public"]),
        _b(case["initiator_ephemeral"]),
        prologue,
    )
    res2 = s.Responder(
        _b(case["responder_static"]),
        [_b(case["initiator_static_public"])],
        _b(case["responder_ephemeral"]),
        prologue,
    )
    ci = ini2.receive(res2.receive(ini2.start(_b(case["msg1_payload"])), _b(case["msg2_payload"])))
    receivers = {"i2r": res2.channel, "r2i": ci}
    opened = []
    for frame in case["frames"]:
        if frame["counter"] < s.MAX_GAP:
            body = receivers[frame["dir"]].open(_b(frame["record"]))
            opened.append(None if body is None else _h(body))
    return {
        "msg1": _h(msg1),
        "msg2": _h(msg2),
        "initiator_static_public": _h(ini.static_public),
        "responder_static_public": _h(res.static_public),
        "handshake_hash": _h(channels["i2r"].handshake_hash),
        "records": records,
        "opened": opened,
        "msg1_payload": _h(res.remote_payload),
        "msg2_payload": _h(ini.remote_payload),
    }


def _op(mods, op, args):
    m = mods.m
    if op == "ed25519_verify":
        return m.ed25519_verify(_b(args[0]), _b(args[1]), _b(args[2]))
    if op == "x25519":
        return _h(m.x25519(_b(args[0]), _b(args[1])))
    if op == "x25519_public":
        return _h(m.x25519_public(_b(args[0])))
    if op == "x25519_iterate":  # RFC 7748 section 5.2: k, u <- X25519(k, u), k
        k = u = _b(args[0])
        for _ in range(args[1]):
            k, u = m.x25519(k, u), k
        return _h(k)
    if op == "ccm_encrypt":
        return _h(m.aes_ccm8_encrypt(_b(args[0]), _b(args[1]), _b(args[2]), _b(args[3])))
    if op == "ccm_decrypt":
        return _h(m.aes_ccm8_decrypt(_b(args[0]), _b(args[1]), _b(args[2]), _b(args[3])))
    if op == "ccm_encrypt_pure" or op == "ccm_decrypt_pure":  # cryptolib set aside
        saved = mods.ccm._cryptolib
        mods.ccm._cryptolib = None
        try:
            return _op(mods, op[:-5], args)
        finally:
            mods.ccm._cryptolib = saved
    if op == "sha512":  # the plain-Python SHA-512, fed in two parts
        data = _b(args[0])
        cut = args[1]
        h = mods.sha512.SHA512(data[:cut])
        h.update(data[cut:])
        return _h(h.digest())
    if op == "aes_pure":
        return _h(mods.aes.AES128(_b(args[0])).encrypt(_b(args[1])))
    if op == "handshake":
        saved = _plug(mods)
        try:
            return _handshake(mods, args[0])
        finally:
            _unplug(mods, saved)
    raise KeyError(op)


def run_case(mods, op, args):
    try:
        return _op(mods, op, args)
    except ValueError:
        return "ValueError"


def main(argv):
    sys.path.insert(0, argv[1])
    from device_fw import mpcrypto, port, secure
    from device_fw.mpcrypto import aes, ccm, sha512

    mods = _Mods(mpcrypto, aes, ccm, sha512, port, secure)
    with open(argv[2]) as f:
        cases = json.load(f)
    out = {}
    for case_id, op, args in cases:
        out[case_id] = run_case(mods, op, args)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
