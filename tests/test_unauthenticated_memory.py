"""What unauthenticated input may cost the device in RAM (tracemalloc peaks).

Verify first, then parse: an unsigned manifest costs its own bytes and a step
over them, never the structures it describes. Offer reassembly is bounded by
``max_offer`` bytes whatever the part count claims. Run as a script to print
the figures (``python tests/test_unauthenticated_memory.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgpack
from otaferry.device_fw import frames as DF
from otaferry.device_fw import receiver as RX
from otaferry.device_fw.device import Device
from otaferry.device_fw.installer import install_stream
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.artifact import encode_header
from otaferry.protocol.errors import Reason
from otaferry.protocol.frames import Query, Reject, decode_frame
from otaferry.protocol.keys import SigningKey

KEY = SigningKey.from_seed(hashlib.sha256(b"unauthenticated memory").digest())
MAX_OFFER = RX.DEFAULT_MAX_OFFER


def _device(tmp: Path) -> Device:
    path = tmp / "flash.bin"
    Device.create(str(path), hw="hw", chip="chip", trusted_keys=[KEY.public.raw],
                  image=b"\x5a" * 9000, version="old").close()  # fmt: skip
    return Device(str(path))


def unsigned_manifest(size: int) -> bytes:
    """A well-formed manifest of about ``size`` bytes, segments and all, carrying
    the device's trusted key id, but signed by nobody."""
    n = max(1, (size - 200) // 21)
    raw = {1: 1, 2: ["hw"], 3: "chip", 4: "1", 5: 1, 6: n * 4096, 7: b"\x01" * 32, 8: 0,
           11: "zstd", 12: 13, 13: 4096, 14: [[100, b"\x02" * 16]] * n, 15: KEY.public.key_id}
    return msgpack.packb(raw, use_bin_type=True)  # type: ignore[no-any-return]


def peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _offer(dev: Device, frames: list[bytes], measure: list[int] | None = None) -> list[object]:
    """The frames to a fresh Receiver in a session; ``measure`` gets the peak
    while the OFFER frames are taken (the session start, its HELLO and the
    first imports are not counted)."""
    rx = RX.Receiver(dev, mtu=1024)
    rx.receive_frame(Query(7).encode(), 0.0)
    rx.receive_frame(DF.offer(0, 2, b"warm-up"), 0.0)
    rx.receive_frame(Query(8).encode(), 0.0)
    replies: list[bytes] = []

    def feed() -> None:
        for body in frames:
            replies.extend(rx.receive_frame(body, 0.0))

    used = peak(feed)
    if measure is not None:
        measure.append(used)
    return [decode_frame(r) for r in replies]


def offer_peak(dev: Device, frames: list[bytes]) -> int:
    used: list[int] = []
    _offer(dev, frames, used)
    return used[0]


def offer_parts(blob: bytes, size: int) -> list[bytes]:
    parts = [blob[i : i + size] for i in range(0, len(blob), size)]
    return [DF.offer(i, len(parts), p, poll=i == len(parts) - 1) for i, p in enumerate(parts)]


def measure(tmp: Path) -> dict[str, int]:
    """Peak bytes for each attack (the device's frames prepared beforehand)."""
    out: dict[str, int] = {}
    with _device(tmp) as dev:
        manifest = unsigned_manifest(MAX_OFFER - 100)
        blob = DF.encode_offer_blob(1000, manifest, b"\x00" * 64)
        frames = offer_parts(blob, 1000)
        out["unsigned 16 KiB offer"] = offer_peak(dev, frames)
        huge = [DF.offer(0, MAX_OFFER, b"x", poll=True)]
        out["one OFFER claiming 16384 parts"] = offer_peak(dev, huge)
        tiny = offer_parts(b"\x00" * (2 * 8191), 2)
        out["8,191 two-byte parts"] = offer_peak(dev, tiny)
        small = offer_parts(b"\x00" * (6 * 2730), 6)
        out["2,730 six-byte parts"] = offer_peak(dev, small)
        big = unsigned_manifest(1 << 20)
        art = encode_header(len(big)) + big + b"\x00" * 64

        def install() -> None:
            with contextlib.suppress(DeviceError):
                install_stream(dev, io.BytesIO(art))

        out["unsigned 1 MiB manifest (install)"] = peak(install)
    return out


def test_unsigned_offer_costs_its_bytes_only(tmp_path: Path) -> None:
    with _device(tmp_path) as dev:
        manifest = unsigned_manifest(MAX_OFFER - 100)
        frames = offer_parts(DF.encode_offer_blob(1000, manifest, b"\x00" * 64), 1000)
        used: list[int] = []
        replies = _offer(dev, frames, used)
    rejects = [r for r in replies if isinstance(r, Reject)]
    assert rejects and rejects[0].reason == Reason.BAD_SIGNATURE
    # the reassembled offer (with its growth), the manifest copied out of it,
    # the signed message: a few times max_offer, nothing per segment (was 177 KB)
    assert used[0] < 3 * MAX_OFFER + 4096, used


def test_offer_part_counts_cost_no_memory_of_their_own(tmp_path: Path) -> None:
    with _device(tmp_path) as dev:
        huge = [DF.offer(0, MAX_OFFER, b"x", poll=True)]
        assert offer_peak(dev, huge) < 8192
        tiny = offer_parts(b"\x00" * (2 * 8191), 2)  # refused: more parts than can be
        assert offer_peak(dev, tiny) < 8192
        small = offer_parts(b"\x00" * (RX.MIN_OFFER_PART * 2730), RX.MIN_OFFER_PART)
        assert offer_peak(dev, small) < 2 * MAX_OFFER + 8192  # the bytes, not the parts
        # the same offer in 6-byte parts still arrives whole; 1-byte parts are refused
        count = -(-MAX_OFFER // RX.MIN_OFFER_PART) + 1
        replies = _offer(dev, [DF.offer(0, count, b"x", poll=True)])
        assert isinstance(replies[0], Reject) and replies[0].reason == Reason.RESOURCE_LIMIT


def test_unsigned_large_manifest_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = unsigned_manifest(1 << 20)
    art = encode_header(len(big)) + big + b"\x00" * 64
    with _device(tmp_path) as dev:
        errors: list[DeviceError] = []

        def install() -> None:
            try:
                install_stream(dev, io.BytesIO(art))
            except DeviceError as exc:
                errors.append(exc)

        assert peak(install) < 8192
    assert errors and errors[0].reason == Reason.RESOURCE_LIMIT


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for name, value in measure(Path(d)).items():
            print(f"{name:40s} {value:>12,} B", file=sys.stdout)
