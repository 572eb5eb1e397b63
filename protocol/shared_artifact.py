"""A parsed, immutable artifact that any number of sessions send at once.

Parsing an ``.ota`` file (header, canonical manifest, every segment hashed
against the signed table) costs time and memory in proportion to the image; a
gateway that sends one update to a thousand devices does it once, here, and
every :class:`~otaferry.protocol.session.Sender` holds a reference. What a
session needs of its own (which chunks are in flight, what the device holds) is
small and lives in the Sender.

The OFFER blob (chunk size, manifest, signature) depends on the chunk size a
session picks from its device's frame size, so it is built on first use for
each chunk size and kept (a fleet on one medium has one or two sizes).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .artifact import ArtifactReader
from .errors import DecodeError, IntegrityError, ProtocolError, Reason
from .frames import SIGNATURE_SIZE, OfferBlob
from .manifest import PAYLOAD_DELTA, Manifest, segment_check

__all__ = ["UPDATE_ID_SIZE", "Artifact", "update_id"]

UPDATE_ID_SIZE = 16


def update_id(manifest_bytes: bytes) -> bytes:
    """The update id (SPEC 8): the first 16 bytes of SHA-256 over the signed manifest."""
    return hashlib.sha256(manifest_bytes).digest()[:UPDATE_ID_SIZE]


@dataclass(frozen=True, slots=True, eq=False)
class Artifact:
    """One signed update, parsed and checked once. Build with :meth:`parse`,
    :meth:`load` or :meth:`from_parts`; never mutated afterwards."""

    manifest_bytes: bytes
    signature: bytes
    manifest: Manifest
    segments: tuple[bytes, ...]
    update_id: bytes
    prefix: tuple[int, ...]  # prefix[i]: payload bytes before segment i
    size: int  # bytes of the .ota file (0 when built from parts)
    _offers: dict[tuple[int, int], bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def from_parts(
        cls,
        manifest_bytes: bytes,
        signature: bytes,
        segments: Sequence[bytes],
        *,
        check_segments: bool = True,
        size: int = 0,
    ) -> Artifact:
        """From a manifest, its signature and the payload segments. Each segment is
        checked against the signed table (``check_segments=False`` only to test
        the device's own check); the signature is the device's to verify."""
        manifest_bytes = bytes(manifest_bytes)
        manifest = Manifest.decode(manifest_bytes)
        signature = bytes(signature)
        if len(signature) != SIGNATURE_SIZE:
            raise DecodeError(f"signature has {len(signature)} bytes, expected {SIGNATURE_SIZE}")
        segs = tuple(bytes(s) for s in segments)
        if len(segs) != manifest.segment_count:
            raise ProtocolError(
                f"{len(segs)} segments given, manifest lists {manifest.segment_count}",
                Reason.MALFORMED,
            )
        for i, (seg, entry) in enumerate(zip(segs, manifest.segments, strict=True)):
            if len(seg) != entry.length or (check_segments and segment_check(seg) != entry.check):
                raise IntegrityError(f"segment {i} does not match the manifest", index=i)
        prefix = [0]
        for seg in segs:
            prefix.append(prefix[-1] + len(seg))
        return cls(
            manifest_bytes,
            signature,
            manifest,
            segs,
            update_id(manifest_bytes),
            tuple(prefix),
            size,
        )

    @classmethod
    def parse(cls, ota: bytes) -> Artifact:
        """From the bytes of an ``.ota`` file (every segment checked on the way)."""
        reader = ArtifactReader(io.BytesIO(ota))
        segments = list(reader.iter_segments())
        return cls.from_parts(
            reader.manifest_bytes, reader.signature, segments, check_segments=False, size=len(ota)
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Artifact:
        return cls.parse(Path(path).read_bytes())

    @classmethod
    def of(cls, artifact: Artifact | bytes) -> Artifact:
        """``artifact`` itself, or the parse of an ``.ota`` file's bytes."""
        return artifact if isinstance(artifact, Artifact) else cls.parse(bytes(artifact))

    @property
    def payload_size(self) -> int:
        return self.prefix[-1]

    @property
    def is_delta(self) -> bool:
        return self.manifest.payload_kind == PAYLOAD_DELTA

    def offer_blob(self, chunk_size: int, flags: int = 0) -> bytes:
        """The OFFER blob for sessions with this chunk size and flags (built once each)."""
        blob = self._offers.get((chunk_size, flags))
        if blob is None:
            blob = OfferBlob(chunk_size, self.manifest_bytes, self.signature, flags).encode()
            if len(self._offers) < 16:  # a handful of sizes per medium; never unbounded
                self._offers[(chunk_size, flags)] = blob
        return blob

    def __repr__(self) -> str:
        kind = "delta" if self.is_delta else "full"
        return (
            f"Artifact({kind} {self.manifest.version!r}, {self.manifest.segment_count} segments, "
            f"{self.payload_size} payload bytes, update {self.update_id.hex()})"
        )
