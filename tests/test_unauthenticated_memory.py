"""What unauthenticated input may cost the device in RAM (tracemalloc peaks).

Verify first, then parse: an unsigned manifest costs its own bytes and a step
over them, never the structures it describes. Offer reassembly is bounded by
``max_offer`` bytes whatever the part count claims. The figures themselves come
from ``otaferry bench memory`` (tools/bench/memory.py), whose inputs these tests
reuse.
"""

from __future__ import annotations

import io
from pathlib import Path

from otaferry.device_fw import frames as DF
from otaferry.device_fw import receiver as RX
from otaferry.device_fw.installer import install_stream
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.errors import Reason
from otaferry.protocol.frames import Reject, decode_frame
from otaferry.tools.bench import memory as M

MAX_OFFER = M.MAX_OFFER


def test_unsigned_offer_costs_its_bytes_only(tmp_path: Path) -> None:
    with M.make_device(tmp_path / "flash.bin") as dev:
        manifest = M.unsigned_manifest(MAX_OFFER - 100)
        frames = M.offer_parts(DF.encode_offer_blob(1000, manifest, b"\x00" * 64), 1000)
        used, replies = M.offer(dev, frames)
    rejects = [r for r in map(decode_frame, replies) if isinstance(r, Reject)]
    assert rejects and rejects[0].reason == Reason.BAD_SIGNATURE
    # the reassembled offer (with its growth), the manifest copied out of it,
    # the signed message: a few times max_offer, nothing per segment (was 177 KB)
    assert used < 3 * MAX_OFFER + 4096, used


def test_offer_part_counts_cost_no_memory_of_their_own(tmp_path: Path) -> None:
    with M.make_device(tmp_path / "flash.bin") as dev:
        assert M.offer(dev, [DF.offer(0, MAX_OFFER, b"x", poll=True)])[0] < 8192
        tiny = M.offer_parts(b"\x00" * (2 * 8191), 2)  # refused: more parts than can be
        assert M.offer(dev, tiny)[0] < 8192
        six = RX.MIN_OFFER_PART
        small = M.offer_parts(b"\x00" * (six * 2730), six)
        assert M.offer(dev, small)[0] < 2 * MAX_OFFER + 8192  # the bytes, not the parts
        # the same offer in 6-byte parts still arrives whole; 1-byte parts are refused
        count = -(-MAX_OFFER // six) + 1
        replies = M.offer(dev, [DF.offer(0, count, b"x", poll=True)])[1]
        first = decode_frame(replies[0])
        assert isinstance(first, Reject) and first.reason == Reason.RESOURCE_LIMIT


def test_unsigned_large_manifest_is_refused_before_it_is_read(tmp_path: Path) -> None:
    art = M.unsigned_manifest_artifact(1 << 20)
    with M.make_device(tmp_path / "flash.bin") as dev:
        errors: list[DeviceError] = []

        def install() -> None:
            try:
                install_stream(dev, io.BytesIO(art))
            except DeviceError as exc:
                errors.append(exc)

        assert M.peak(install) < 8192
    assert errors and errors[0].reason == Reason.RESOURCE_LIMIT


def test_bench_memory_reports_every_figure_within_its_bound(tmp_path: Path) -> None:
    """The bench's unauthenticated rows (device and host side) stay within the
    bounds it prints; a regression would show as 'over' there."""
    rows = M.device_figures(tmp_path) + M.host_figures()
    assert len(rows) == 7
    for row in rows:
        assert 0 < row["peak_bytes"] <= row["bound_bytes"], row
