"""The hostile artifacts: each class of forged, damaged or unfit artifact, and the
reason code the device must refuse it with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ....protocol.artifact import HEADER_SIZE, assemble, encode_header
from ....protocol.errors import Reason
from ....protocol.keys import SigningKey
from ....protocol.manifest import Manifest, signing_message
from ....protocol.session import split_artifact
from .common import STRANGER, TINY_SLOTS_CSV, VENDOR, Firmware, build, sha


def raw_split(art: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """Manifest, signature and segments cut by the segment table, checking nothing:
    what a gateway that passes everything on would send."""
    m = int.from_bytes(art[6:10], "little")
    manifest = art[HEADER_SIZE : HEADER_SIZE + m]
    pos, segments = HEADER_SIZE + m + 64, []
    for length, _check in msgpack.unpackb(manifest, strict_map_key=False)[14]:
        segments.append(art[pos : pos + length])
        pos += length
    return manifest, art[HEADER_SIZE + m : HEADER_SIZE + m + 64], segments


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x01
    return bytes(b)


def _resign(art: bytes, key: SigningKey, *, own_key_id: bool) -> bytes:
    """The genuine manifest signed by ``key``: with its key id put in (UNKNOWN_KEY), or
    keeping the vendor's key id (the signature then fails: BAD_SIGNATURE)."""
    if own_key_id:
        return _with(art, key, key_id=key.public.key_id)
    manifest_bytes, _sig, segments = split_artifact(art)
    head = art[:HEADER_SIZE]
    return head + manifest_bytes + key.sign(signing_message(manifest_bytes)) + b"".join(segments)


def _with(art: bytes, key: SigningKey = VENDOR, **changes: Any) -> bytes:
    """The artifact with manifest fields changed, signed by ``key`` (by default the
    vendor: a 'lying' signed manifest)."""
    manifest_bytes, _sig, segments = split_artifact(art)
    manifest = dataclasses.replace(Manifest.decode(manifest_bytes), **changes)
    return assemble(manifest, segments, key)


def _raw_with(art: bytes, key: SigningKey = VENDOR, **fields: Any) -> bytes:
    """The artifact with raw manifest keys set (``k5=2**32``), bypassing the host's
    Manifest checks, and signed: what a careless or hostile signer can produce."""
    manifest_bytes, _sig, segments = raw_split(art)
    raw = msgpack.unpackb(manifest_bytes, strict_map_key=False)
    for name, value in fields.items():
        raw[int(name[1:])] = value
    data = msgpack.packb(raw, use_bin_type=True)
    return encode_header(len(data)) + data + key.sign(signing_message(data)) + b"".join(segments)


@dataclass
class Hostile:
    name: str
    art: bytes
    reason: Reason
    device: dict[str, Any] = field(default_factory=dict)  # make_device options
    visible: bool = False  # the sender's precheck sees it in the HELLO
    before_data: bool = True  # refused before any segment is written
    link: bool = True  # expressible as a Sender (a truncated file is not)


def hostile_cases(fw: Firmware, other: bytes) -> list[Hostile]:
    art = fw.full
    m = int.from_bytes(art[6:10], "little")
    sig_at = HEADER_SIZE + m
    payload_at = sig_at + 64
    sha_at = art.index(sha(fw.new))
    counter_tampered = bytearray(art)
    manifest_bytes = split_artifact(art)[0]
    # security_counter is key 5: "05 01" in the canonical map (fixint key, fixint value)
    at = manifest_bytes.index(b"\x05\x01")
    counter_tampered[HEADER_SIZE + at + 1] = 0x7F
    last_seg = len(art) - len(split_artifact(art)[2][-1])
    return [
        Hostile("bad signature", _flip(art, sig_at + 5), Reason.BAD_SIGNATURE),
        Hostile("unknown key", build(fw.new, key=STRANGER), Reason.UNKNOWN_KEY),
        Hostile("re-signed, unknown key id", _resign(art, STRANGER, own_key_id=True),
                Reason.UNKNOWN_KEY),
        Hostile("re-signed, vendor key id", _resign(art, STRANGER, own_key_id=False),
                Reason.BAD_SIGNATURE),
        Hostile("tampered manifest (sha)", _flip(art, sha_at + 3), Reason.BAD_SIGNATURE),
        Hostile("tampered manifest (counter)", bytes(counter_tampered), Reason.BAD_SIGNATURE),
        Hostile("truncated in header", art[:7], Reason.TRUNCATED, link=False),
        Hostile("truncated in manifest", art[: HEADER_SIZE + m // 2], Reason.TRUNCATED,
                link=False),
        Hostile("truncated in signature", art[: sig_at + 10], Reason.TRUNCATED, link=False),
        Hostile("truncated in payload", art[:-100], Reason.TRUNCATED, link=False,
                before_data=False),
        Hostile("corrupted first segment", _flip(art, payload_at + 40), Reason.SEGMENT_CORRUPT,
                before_data=False),
        Hostile("corrupted last segment", _flip(art, last_seg + 7), Reason.SEGMENT_CORRUPT,
                before_data=False),
        Hostile("image hash mismatch", _with(art, target_sha256=sha(b"another image")),
                Reason.IMAGE_HASH_MISMATCH, before_data=False),
        Hostile("downgrade", build(fw.new, counter=2), Reason.DOWNGRADE, {"counter": 3},
                visible=True),
        Hostile("wrong hw", build(fw.new, hw=["board-rev-a"]), Reason.WRONG_HW, visible=True),
        Hostile("wrong chip", build(fw.new, chip="esp32"), Reason.WRONG_CHIP, visible=True),
        Hostile("larger than slot", art, Reason.TOO_LARGE, {"csv": TINY_SLOTS_CSV},
                visible=True),
        Hostile("delta against wrong base", fw.delta, Reason.WRONG_BASE, {"image": other},
                visible=True),
        # Signed values outside the one table of ranges (SPEC 2): refused by the
        # gateway and by the device alike, never installed.
        Hostile("signed counter 2^32", _raw_with(art, k5=1 << 32), Reason.MALFORMED,
                link=False),
        Hostile("signed target_size 2^32", _raw_with(art, k6=1 << 32), Reason.MALFORMED,
                link=False),
        Hostile("signed chip of 17 bytes", _raw_with(art, k3="c" * 17), Reason.MALFORMED,
                link=False),
        # A delta for the running image claiming a larger base: reads past the
        # running image (the passive slot, nvs) are refused before any data.
        Hostile("delta base_size past the running image",
                _raw_with(fw.delta, k10=len(fw.old) + 4096), Reason.WRONG_BASE),
    ]  # fmt: skip
