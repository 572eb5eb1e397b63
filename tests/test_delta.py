"""Delta codec: host encoder (protocol/delta.py) against device applier
(device_fw/delta_apply.py), on the shared firmware pairs and synthetic edges."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from otaferry.device_fw import reasons
from otaferry.device_fw.delta_apply import apply_segment
from otaferry.device_fw.delta_apply import ram_budget as device_ram_budget
from otaferry.protocol.delta import (
    DELTA_CODEC,
    DELTA_CODEC2,
    MODEL_BYTES,
    MODEL_BYTES2,
    DeltaResult,
    encode_delta,
    ram_budget,
)
from otaferry.protocol.delta3 import DELTA_CODEC3
from paths import FIRMWARE

FW = FIRMWARE
PAIRS = [
    (
        "micropython-esp8266/esp8266-20180511-v1.9.4.bin",
        "micropython-esp8266/esp8266-20190125-v1.10.bin",
    ),
    ("micropython-pybv11/v1.10/firmware1.bin", "micropython-pybv11/1f5d945af-dirty/firmware1.bin"),
    (
        "micropython-pybv11/1f5d945af/firmware1.bin",
        "micropython-pybv11/1f5d945af-dirty/firmware1.bin",
    ),
    ("micropython-pybv11/v1.10/firmware0.bin", "micropython-pybv11/1f5d945af/firmware0.bin"),
    ("simba-shell-cortex-m4/old.bin", "simba-shell-cortex-m4/new.bin"),
    ("simba-synthesizer-cortex-m4/1.bin", "simba-synthesizer-cortex-m4/2.bin"),
    ("simba-synthesizer-cortex-m4/2.bin", "simba-synthesizer-cortex-m4/3.bin"),
    ("programmer-cortex-m4/0.8.0.bin", "programmer-cortex-m4/0.9.0.bin"),
    ("baremetal-rpi3-aarch64/1.bin", "baremetal-rpi3-aarch64/2.bin"),
]


class Sink:
    """Sequential writer that records chunk sizes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.chunks: list[int] = []

    def __call__(self, b: bytes) -> None:
        self.chunks.append(len(b))
        self.data += b


def seg_len(res: DeltaResult, total: int, i: int) -> int:
    return min(res.segment_size, total - i * res.segment_size)


def apply_all(old: bytes, new_size: int, res: DeltaResult, order: list[int] | None = None) -> bytes:
    n = len(res.segments)
    parts: dict[int, bytes] = {}
    for i in order if order is not None else range(n):
        sink = Sink()

        def read_old(off: int, ln: int) -> bytes:
            assert off >= 0 and off + ln <= len(old)
            return old[off : off + ln]

        apply_segment(res.segments[i], read_old, len(old), seg_len(res, new_size, i), sink)
        assert all(0 < c <= 4096 for c in sink.chunks)
        assert len(sink.data) == seg_len(res, new_size, i)
        parts[i] = bytes(sink.data)
    return b"".join(parts[i] for i in range(n))


def roundtrip(old: bytes, new: bytes, seg: int = 8192) -> DeltaResult:
    res = encode_delta(old, new, seg)
    assert res.codec == DELTA_CODEC
    assert len(res.segments) == -(-len(new) // seg)
    assert apply_all(old, len(new), res) == new
    return res


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[1].split("/")[0])
def test_shared_pairs_round_trip(pair: tuple[str, str]) -> None:
    old, new = (FW / pair[0]).read_bytes(), (FW / pair[1]).read_bytes()
    res = roundtrip(old, new, 65536)
    assert res.payload_size < len(new) // 4
    assert ram_budget(res.max_segment_payload) <= 64 * 1024


def test_segments_independent_any_order() -> None:
    old = (FW / PAIRS[4][0]).read_bytes()
    new = (FW / PAIRS[4][1]).read_bytes()
    res = encode_delta(old, new, 16384)
    order = list(range(len(res.segments)))
    random.Random(7).shuffle(order)
    assert apply_all(old, len(new), res, order) == new
    # the same segment decoded twice gives the same bytes (no state kept between calls)
    assert apply_all(old, len(new), res, [3, 3, *range(len(res.segments))]) == new


def _rnd(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _code_like(n: int, seed: int) -> bytes:
    """Bytes with the structure of firmware: words with few distinct high bytes."""
    r = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += (r.randrange(1 << 20) | r.choice((0x08000000, 0x20000000, 0))).to_bytes(4, "little")
        out += bytes(r.choice((b"\x00\x00", b"\x70\x47", b"\xbf\x00", b"\x10\xb5")))
    return bytes(out[:n])


def test_identical_images() -> None:
    img = _code_like(50_000, 1)
    res = roundtrip(img, img)
    assert res.payload_size < 100


def test_empty_old() -> None:
    new = _code_like(20_000, 2)
    roundtrip(b"", new)


def test_one_byte_images() -> None:
    roundtrip(b"\x01", b"\x02")
    roundtrip(b"", b"\x00")


def test_new_larger_and_smaller() -> None:
    old = _code_like(30_000, 3)
    new = old[:10_000] + _code_like(25_000, 4) + old[10_000:]
    roundtrip(old, new)
    roundtrip(new, old)
    roundtrip(old, old[:4095])
    roundtrip(old[:5000], old)


def test_random_data() -> None:
    roundtrip(_rnd(20_000, 5), _rnd(24_000, 6), 4096)


def test_inserted_and_deleted_blocks() -> None:
    old = _code_like(40_000, 7)
    ins = old[:12_345] + _rnd(3000, 8) + old[12_345:]
    dele = old[:20_000] + old[26_000:]
    res = roundtrip(old, ins)
    assert res.payload_size < 3600
    res = roundtrip(old, dele)
    assert res.payload_size < 200


def test_differs_in_last_byte_only() -> None:
    old = _code_like(16_384, 9)
    new = old[:-1] + bytes([old[-1] ^ 0x5A])
    res = roundtrip(old, new)
    assert res.payload_size < 40


def test_shifted_pointers() -> None:
    old = _code_like(40_000, 10)
    # every word "relocated" by +0x40 where its high byte says pointer
    new = bytearray(old)
    for i in range(0, len(old) - 3, 6):
        w = int.from_bytes(old[i : i + 4], "little")
        if w >> 24 == 0x08:
            new[i : i + 4] = (w + 0x40).to_bytes(4, "little")
    roundtrip(old, bytes(new))


def _expect_decode_error(payload: bytes, old: bytes, out_size: int) -> None:
    with pytest.raises(reasons.DeviceError) as ei:
        apply_segment(payload, lambda o, n: old[o : o + n], len(old), out_size, lambda b: None)
    assert ei.value.reason == reasons.DECODE_ERROR


def test_corrupt_payload_is_decode_error() -> None:
    old = (FW / PAIRS[7][0]).read_bytes()
    new = (FW / PAIRS[7][1]).read_bytes()
    res = encode_delta(old, new, 8192)
    seg = res.segments[0]
    n = seg_len(res, len(new), 0)
    rng = random.Random(11)
    errors = 0
    for trial in range(60):
        bad = bytearray(seg)
        if trial % 3 == 0:
            bad = bad[: rng.randrange(1, len(bad))]
        else:
            for _ in range(1 + trial % 4):
                bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        out = Sink()
        try:
            apply_segment(bytes(bad), lambda o, ln: old[o : o + ln], len(old), n, out)
        except reasons.DeviceError as e:  # anything else fails the test
            assert e.reason == reasons.DECODE_ERROR
            errors += 1
            assert len(out.data) <= n
        else:
            # garbage that happens to decode still yields exactly out_size bytes;
            # the segment/image hash is what rejects it
            assert len(out.data) == n
    assert errors > 0


def test_garbage_and_bad_arguments() -> None:
    old = _code_like(10_000, 12)
    _expect_decode_error(b"", old, 100)
    _expect_decode_error(_rnd(64, 13), old, 4096)
    _expect_decode_error(b"\xff" * 64, old, 4096)
    _expect_decode_error(b"\x00" * 64, b"", 4096)
    res = encode_delta(old, old, 8192)
    _expect_decode_error(res.segments[0], old, 0)
    _expect_decode_error(res.segments[0], old[:5000], 8192)  # reads past a short old image
    _expect_decode_error(res.segments[0], old, 8191)  # size mismatch


def test_read_old_failure_is_decode_error() -> None:
    old = _code_like(10_000, 14)
    res = encode_delta(old, old, 8192)

    def broken(off: int, n: int) -> bytes:
        raise OSError("flash read failed")

    with pytest.raises(reasons.DeviceError) as ei:
        apply_segment(res.segments[0], broken, len(old), 8192, lambda b: None)
    assert ei.value.reason == reasons.DECODE_ERROR


def test_bad_segment_size() -> None:
    with pytest.raises(ValueError):
        encode_delta(b"a", b"b", 1000)
    with pytest.raises(ValueError):
        encode_delta(b"a", b"", 4096)


def test_ram_budget_formula() -> None:
    want = 10_000 + MODEL_BYTES + 4096 + 512 + 6656
    assert ram_budget(10_000) == device_ram_budget(10_000) == want
    assert MODEL_BYTES < 32 * 1024
    want2 = 10_000 + MODEL_BYTES2 + 4096 + 512 + 7168
    assert ram_budget(10_000, DELTA_CODEC2) == device_ram_budget(10_000, codec=DELTA_CODEC2)
    assert ram_budget(10_000, DELTA_CODEC2) == want2 == 10_000 + 48_243  # SPEC 7.7


# ---- fdelta2: the branch predictor (SPEC 7.7) ----

ARCH_SLICES = [
    # (arch, old image, new image, slice): code of each instruction set the predictor knows
    (1, "esp8266-at-nonos/at-v3.0.1.bin", "esp8266-at-nonos/at-v3.0.2.bin", (0x20000, 0x26000)),
    (
        2,
        "micropython-pybv11/v1.10/firmware1.bin",
        "micropython-pybv11/1f5d945af-dirty/firmware1.bin",
        (0x8000, 0xB000),
    ),
    (3, "baremetal-rpi3-aarch64/1.bin", "baremetal-rpi3-aarch64/2.bin", (0, 0x8000)),
]


def apply_all_v2(old: bytes, new_size: int, res: DeltaResult, order: list[int]) -> bytes:
    parts: dict[int, bytes] = {}
    for i in order:
        sink = Sink()
        apply_segment(
            res.segments[i], lambda o, n: old[o : o + n], len(old), seg_len(res, new_size, i),
            sink, codec=res.codec,
        )  # fmt: skip
        assert all(0 < c <= 4096 for c in sink.chunks)
        parts[i] = bytes(sink.data)
    return b"".join(parts[i] for i in range(len(res.segments)))


@pytest.mark.parametrize(("arch", "a", "b", "rng"), ARCH_SLICES)
def test_fdelta2_round_trip_each_arch_any_order(
    arch: int, a: str, b: str, rng: tuple[int, int]
) -> None:
    old = (FW / a).read_bytes()[rng[0] : rng[1] + 0x2000]
    new = (FW / b).read_bytes()[rng[0] : rng[1]]
    v1 = encode_delta(old, new, 8192)
    v2 = encode_delta(old, new, 8192, (arch,))
    assert v2.codec == DELTA_CODEC2 and v2.payload_size < v1.payload_size
    order = list(range(len(v2.segments)))[::-1]
    assert apply_all_v2(old, len(new), v2, order) == new


def test_fdelta2_never_chosen_when_not_smaller() -> None:
    old = _code_like(20_000, 21)
    new = bytearray(old)
    new[100:110] = b"0123456789"
    res = encode_delta(old, bytes(new), 8192, (1, 2, 3))
    assert res.codec == DELTA_CODEC  # nothing to predict: fdelta1, which every device takes


def test_fdelta2_segment_decoded_as_fdelta1_does_not_rebuild() -> None:
    arch, a, b, rng = ARCH_SLICES[0]
    old = (FW / a).read_bytes()[rng[0] : rng[1]]
    new = (FW / b).read_bytes()[rng[0] : rng[1]]
    res = encode_delta(old, new, 8192, (arch,))

    def wrong(i: int, **kw: object) -> bool:
        n = seg_len(res, len(new), i)
        out = Sink()
        try:
            apply_segment(res.segments[i], lambda o, k: old[o : o + k], len(old), n, out, **kw)
        except reasons.DeviceError as e:
            assert e.reason == reasons.DECODE_ERROR
            return True
        return bytes(out.data) != new[i * 8192 : i * 8192 + n]

    segs = range(1, len(res.segments))
    assert all(wrong(i, codec=DELTA_CODEC) for i in segs)
    assert not any(wrong(i, codec=DELTA_CODEC2) for i in segs)
    with pytest.raises(reasons.DeviceError):
        apply_segment(res.segments[1], lambda o, k: old[o : o + k], len(old), 8192, Sink(),
                      codec="fdelta9")  # fmt: skip


def test_branch_fields_round_trip() -> None:
    from otaferry.protocol.delta import br_insert, br_kind, br_target

    rnd = random.Random(5)
    for arch, k in ((1, 3), (2, 4), (3, 4)):
        seen = 0
        for _ in range(20000):
            ins = rnd.getrandbits(8 * k)
            pc = rnd.randrange(0, 1 << 20) & ~3
            kind = br_kind(arch, ins, pc)
            if kind < 0:
                continue
            seen += 1
            t = br_target(arch, kind, ins, pc)
            assert br_insert(arch, kind, ins, t, pc) == ins
            moved = br_insert(arch, kind, ins, t + 64, pc + 8)
            assert moved < 0 or br_target(arch, kind, moved, pc + 8) == t + 64
        assert seen > 100


# ---- fdelta3: matches inside the literal runs (SPEC 7.8) ----


def apply_all_v3(old: bytes, new_size: int, res: DeltaResult, order: list[int]) -> bytes:
    """Apply each segment on its own; read_new may only see what this segment wrote."""
    parts: dict[int, bytes] = {}
    for i in order:
        sink = Sink()

        def read_new(o: int, k: int, sink: Sink = sink) -> bytes:
            assert o >= 0 and o + k <= len(sink.data), (o, k, len(sink.data))
            return bytes(sink.data[o : o + k])

        apply_segment(
            res.segments[i], lambda o, n: old[o : o + n], len(old), seg_len(res, new_size, i),
            sink, codec=res.codec, read_new=read_new,
        )  # fmt: skip
        assert all(0 < c <= 4096 for c in sink.chunks)
        parts[i] = bytes(sink.data)
    return b"".join(parts[i] for i in range(len(res.segments)))


AT_NEW_CODE = (
    # AT v2.1.0 -> v2.2.0: a region of new code, mostly literals for bsdiff
    "esp8266-at-nonos/at-v2.1.0.bin",
    "esp8266-at-nonos/at-v2.2.0.bin",
    (0x40000, 0x60000),
    (0x4C000, 0x52000),
)


def test_fdelta3_round_trip_any_order_and_smaller() -> None:
    a, b, orng, nrng = AT_NEW_CODE
    old = (FW / a).read_bytes()[orng[0] : orng[1]]
    new = (FW / b).read_bytes()[nrng[0] : nrng[1]]
    v2 = encode_delta(old, new, 8192, (1,))
    v3 = encode_delta(old, new, 8192, (1,), lz=True)
    assert v3.codec == DELTA_CODEC3
    assert v3.payload_size < 0.95 * v2.payload_size
    order = list(range(len(v3.segments)))[::-1]
    assert apply_all_v3(old, len(new), v3, order) == new


def test_fdelta3_without_read_new_or_as_fdelta2_fails_cleanly() -> None:
    a, b, orng, nrng = AT_NEW_CODE
    old = (FW / a).read_bytes()[orng[0] : orng[1]]
    new = (FW / b).read_bytes()[nrng[0] : nrng[0] + 8192]
    res = encode_delta(old, new, 8192, (1,), lz=True)
    assert res.codec == DELTA_CODEC3
    with pytest.raises(reasons.DeviceError) as exc:
        apply_segment(res.segments[0], lambda o, k: old[o : o + k], len(old), 8192, Sink(),
                      codec=DELTA_CODEC3)  # fmt: skip
    assert exc.value.reason == reasons.DECODE_ERROR
    out = Sink()
    try:
        apply_segment(res.segments[0], lambda o, k: old[o : o + k], len(old), 8192, out,
                      codec=DELTA_CODEC2)  # fmt: skip
    except reasons.DeviceError as e:
        assert e.reason == reasons.DECODE_ERROR
    else:
        assert bytes(out.data) != new


def _crafted(tokens: list[tuple[str, int]], old: bytes = b"\0" * 64) -> bytes:
    """One fdelta3 segment (arch none, matches on) from raw tokens: start 0,
    an empty add, then a literal run of ``run`` bytes holding ``tokens``."""
    from otaferry.protocol import delta as D
    from otaferry.protocol import delta3 as D3

    sc = D3._Coder3(0, 1, old, b"", 0, 0, None)
    sc.number(D.SLOT_START, 0)
    sc.number(D.SLOT_ADD, 0)
    for kind, v in tokens:
        if kind == "run":
            sc.number(D.SLOT_EXTRA, v)
        elif kind == "lit":
            sc.bit(D3.O_MFLAG + sc.last, 0)
            sc.tree8(D.O_LIT, v)
            sc.last = 0
        elif kind == "seg":  # a match in this segment at distance v
            sc.bit(D3.O_MFLAG + sc.last, 1)
            sc.bit(D3.O_MSRC + sc.last, 0)
            sc.bit(D3.O_REP + sc.last, 1 if v else 0)
            if v:
                sc.number_at(D3.O_NUM3, v - 1)
            sc.last = 1
        elif kind == "old":  # a match in the old image at old delta v
            sc.bit(D3.O_MFLAG + sc.last, 1)
            sc.bit(D3.O_MSRC + sc.last, 1)
            sc.bit(D3.O_REP + 4 + sc.last, 1)
            sc.bit(D3.O_OSIGN, 1 if v < 0 else 0)
            sc.number_at(D3.O_NUM3 + 2 * D.N_NUM, abs(v))
            sc.last = 2
        elif kind == "len":
            sc.number_at(D3.O_NUM3 + D.N_NUM, v - 1)
    return sc.rc.finish()


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([("run", 8), ("lit", 1), ("seg", 2), ("len", 7)], "match before the segment start"),
        ([("run", 8), ("lit", 1), ("seg", 1), ("len", 8)], "match past the literal run"),
        ([("run", 8), ("seg", 0), ("len", 4)], "last distance before any match"),
        ([("run", 8), ("old", 60), ("len", 8)], "outside old image"),
        ([("run", 8), ("old", -1), ("len", 2)], "outside old image"),
    ],
)
def test_fdelta3_bad_matches_are_decode_errors(tokens: list[tuple[str, int]], message: str) -> None:
    old = bytes(range(64))
    payload = _crafted(tokens, old)
    out = Sink()
    with pytest.raises(reasons.DeviceError) as exc:
        apply_segment(payload, lambda o, k: old[o : o + k], len(old), 8, out, codec=DELTA_CODEC3,
                      read_new=lambda o, k: bytes(out.data[o : o + k]))  # fmt: skip
    assert exc.value.reason == reasons.DECODE_ERROR and message in exc.value.message
    assert len(out.data) <= 8


def test_fdelta3_crafted_matches_decode() -> None:
    old = bytes(range(64))
    # a literal, a match one back (a run of it), an old match at old pointer + 2 + 10
    payload = _crafted([("run", 16), ("lit", 7), ("seg", 1), ("len", 5), ("old", 4), ("len", 10)])
    out = Sink()
    apply_segment(payload, lambda o, k: old[o : o + k], len(old), 16, out, codec=DELTA_CODEC3,
                  read_new=lambda o, k: bytes(out.data[o : o + k]))  # fmt: skip
    assert bytes(out.data) == b"\x07" * 6 + old[10:20]


def test_fdelta3_ram_budget_formula() -> None:
    from otaferry.protocol.delta3 import MODEL_BYTES3, N_PROBS3

    want3 = 10_000 + MODEL_BYTES3 + 4096 + 512 + 256 + 7680
    assert MODEL_BYTES3 == MODEL_BYTES2 + 3 * (N_PROBS3 - 7505)
    assert ram_budget(10_000, DELTA_CODEC3) == device_ram_budget(10_000, codec=DELTA_CODEC3)
    assert ram_budget(10_000, DELTA_CODEC3) == want3


def test_build_limited_to_the_codecs_a_device_decodes(tmp_path: Path) -> None:
    """`build --delta-codecs`: a device without fdelta3 gets a delta it decodes,
    not one it must refuse with UNSUPPORTED_CODEC; fdelta1 must be allowed."""
    from otaferry.protocol.artifact import build_delta, delta_codecs, inspect_artifact
    from otaferry.protocol.errors import OtaferryError, Reason
    from otaferry.protocol.keys import SigningKey

    a, b, orng, nrng = AT_NEW_CODE
    old = (FW / a).read_bytes()[orng[0] : orng[1]]
    new = (FW / b).read_bytes()[nrng[0] : nrng[0] + 8192]
    key = SigningKey.from_seed(bytes(32))

    def codec_of(codecs: tuple[str, ...] | None) -> str:
        ota = tmp_path / "d.ota"
        ota.write_bytes(build_delta(old, new, key, hw=["hw"], chip="c", version="v",
                                    codecs=codecs))  # fmt: skip
        return str(inspect_artifact(ota)["codec"])

    assert codec_of(None) == DELTA_CODEC3
    assert codec_of((DELTA_CODEC, DELTA_CODEC2)) in (DELTA_CODEC, DELTA_CODEC2)
    assert codec_of((DELTA_CODEC,)) == DELTA_CODEC
    for bad in ((DELTA_CODEC2,), (DELTA_CODEC, "fdelta9")):
        with pytest.raises(OtaferryError) as exc:
            delta_codecs(bad)
        assert exc.value.reason == Reason.UNSUPPORTED_CODEC
