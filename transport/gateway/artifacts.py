"""The artifact cache: ``.ota`` files by SHA-256, taken in over MQTT in chunks.

An artifact arrives as ``count`` chunks on ``artifact/<sha256>/chunk/<i>`` (JSON:
``index``, ``count``, ``size``, ``data`` base64; :data:`CHUNK_SIZE` raw bytes
each, about 43 KB a message, well under any broker's limit: AWS IoT Core's is
128 KB). Chunks are written at their offset into ``<sha256>.part`` as they come,
in any order and any number of times; when every chunk is in, the file is
checked — the SHA-256 it is named by, the ``.ota`` structure and every segment,
and the signature against the vendor keys the config trusts — and only then
renamed to ``<sha256>.ota`` and accepted. A file that fails is deleted and the
reason published; nothing unverified is ever offered to a device.

A gateway restarted during an upload keeps the chunks already written (the
chunk bitmap is rebuilt from a sidecar ``.have`` file), so a submitter that
sends again only completes it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ...protocol.artifact import find_key
from ...protocol.errors import OtaferryError, Reason
from ...protocol.keys import VerifyKey
from ...protocol.manifest import signing_message
from ...protocol.shared_artifact import Artifact

__all__ = ["CHUNK_SIZE", "MAX_ARTIFACT", "ArtifactCache", "ChunkResult", "encode_chunks"]

CHUNK_SIZE = 32 * 1024
MAX_ARTIFACT = 64 * 1024 * 1024


def encode_chunks(ota: bytes, chunk_size: int = CHUNK_SIZE) -> tuple[str, list[bytes]]:
    """(sha256 hex, the JSON payloads) that deliver ``ota`` to a gateway."""
    sha = hashlib.sha256(ota).hexdigest()
    count = max(1, -(-len(ota) // chunk_size))
    out = []
    for i in range(count):
        part = ota[i * chunk_size : (i + 1) * chunk_size]
        out.append(json.dumps({"index": i, "count": count, "size": len(ota),
                               "chunk_size": chunk_size,
                               "data": base64.b64encode(part).decode()}).encode())  # fmt: skip
    return sha, out


@dataclass(frozen=True, slots=True)
class ChunkResult:
    state: str  # "receiving", "accepted", "rejected"
    have: int = 0
    count: int = 0
    reason: Reason | None = None
    message: str = ""


class ArtifactCache:
    """See the module docstring."""

    def __init__(self, folder: Path, trusted: Iterable[VerifyKey]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.trusted = list(trusted)
        self._parsed: dict[str, Artifact] = {}
        self.refused: dict[str, ChunkResult] = {}

    def path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.ota"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def get(self, sha256: str) -> Artifact:
        """The parsed artifact (parsed once, shared by every session)."""
        art = self._parsed.get(sha256)
        if art is None:
            art = self.verify(self.path(sha256).read_bytes(), sha256)
            self._parsed[sha256] = art
        return art

    def verify(self, ota: bytes, sha256: str) -> Artifact:
        """``ota`` checked whole: hash, structure, segments and the vendor signature."""
        actual = hashlib.sha256(ota).hexdigest()
        if actual != sha256:
            raise OtaferryError(
                f"artifact {sha256[:16]}: its bytes hash to {actual[:16]}",
                Reason.IMAGE_HASH_MISMATCH,
            )
        art = Artifact.parse(ota)
        key = find_key(art.manifest.key_id, self.trusted)
        key.verify(art.signature, signing_message(art.manifest_bytes))
        return art

    def add_file(self, ota: bytes) -> str:
        """Put a local ``.ota`` into the cache (verified first); its SHA-256."""
        sha = hashlib.sha256(ota).hexdigest()
        self.verify(ota, sha)
        tmp = self.folder / f"{sha}.tmp"
        tmp.write_bytes(ota)
        os.replace(tmp, self.path(sha))
        return sha

    def chunk(self, sha256: str, payload: bytes) -> ChunkResult:
        """Take one chunk message; raises OtaferryError(MALFORMED) for a bad message."""
        if self.has(sha256):
            return ChunkResult("accepted")
        if sha256 in self.refused:
            return self.refused[sha256]
        try:
            msg = json.loads(payload)
            index, count, size = int(msg["index"]), int(msg["count"]), int(msg["size"])
            chunk_size = int(msg.get("chunk_size", CHUNK_SIZE))
            data = base64.b64decode(msg["data"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise OtaferryError(f"artifact chunk: not a chunk message ({exc})",
                                Reason.MALFORMED) from None  # fmt: skip
        if not (0 < size <= MAX_ARTIFACT and 0 <= index < count and chunk_size >= 1024
                and count == max(1, -(-size // chunk_size))):  # fmt: skip
            raise OtaferryError("artifact chunk: index, count and size disagree", Reason.MALFORMED)
        expected = min(chunk_size, size - index * chunk_size)
        if len(data) != expected:
            raise OtaferryError(f"artifact chunk {index}: {len(data)} bytes, expected {expected}",
                                Reason.MALFORMED)  # fmt: skip
        part = self.folder / f"{sha256}.part"
        have_path = self.folder / f"{sha256}.have"
        have = set(json.loads(have_path.read_text())) if have_path.exists() and part.exists() \
            else set()  # fmt: skip
        mode = "r+b" if part.exists() else "w+b"
        with open(part, mode) as fh:
            if mode == "w+b":
                fh.truncate(size)
            fh.seek(index * chunk_size)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        have.add(index)
        have_path.write_text(json.dumps(sorted(have)))
        if len(have) < count:
            return ChunkResult("receiving", len(have), count)
        ota = part.read_bytes()
        have_path.unlink(missing_ok=True)
        try:
            self._parsed[sha256] = self.verify(ota, sha256)
        except OtaferryError as exc:
            part.unlink(missing_ok=True)
            self.refused[sha256] = ChunkResult("rejected", count, count, exc.reason, exc.message)
            return self.refused[sha256]
        os.replace(part, self.path(sha256))
        return ChunkResult("accepted", count, count)
