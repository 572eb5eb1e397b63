"""Golden vectors of the delta codecs (tests/vectors/delta/CODEC.json).

Each case names two slices of images in tests/firmware and the segment payloads
the encoder produced for them when the codec was frozen. The device applier must
rebuild the new slice from those exact bytes: an artifact built by an older
otaferry stays decodable by every later device, whatever the encoder does now.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from otaferry.device_fw.delta_apply import CODECS, apply_segment
from paths import FIRMWARE

VECTORS = Path(__file__).resolve().parent / "vectors" / "delta"


def _cases() -> list[tuple[str, dict[str, object]]]:
    out = []
    for path in sorted(VECTORS.glob("*.json")):
        doc = json.loads(path.read_text())
        out += [(doc["codec"], case) for case in doc["cases"]]
    return out


@pytest.mark.parametrize(("codec", "case"), _cases())
def test_golden_segments_decode(codec: str, case: dict) -> None:  # type: ignore[type-arg]
    assert codec in CODECS
    lo, hi = case["old_range"]
    old = (FIRMWARE / case["old"]).read_bytes()[lo:hi]
    nlo, nhi = case["new_range"]
    size = nhi - nlo
    seg = case["segment_size"]
    out = bytearray()
    for i, hexed in enumerate(case["segments"]):
        n = min(seg, size - i * seg)
        before = len(out)
        apply_segment(
            bytes.fromhex(hexed), lambda o, k: old[o : o + k], len(old), n, out.extend,
            codec=codec, read_new=lambda o, k, b=before: bytes(out[b + o : b + o + k]),
        )  # fmt: skip
        assert len(out) - before == n
    assert hashlib.sha256(out).hexdigest() == case["new_sha256"]


def test_every_codec_has_vectors() -> None:
    assert {c for c, _ in _cases()} == set(CODECS)
