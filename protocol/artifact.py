"""The ``.ota`` file (SPEC section 3): header, manifest, signature, segments.

Building is pure (bytes in, bytes out). Reading is streaming: an
:class:`ArtifactReader` reads the header, manifest and signature when it is
built, then hands out one checked segment at a time from any object with a
``read(n)`` method, so it works on pipes and sockets and never holds more than
one segment. ``open_artifact`` and ``inspect_artifact`` are the only helpers
here that open files (they exist for the CLI and the gateway).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from .errors import DecodeError, IntegrityError, OtaferryError, ProtocolError, Reason
from .keys import SigningKey, VerifyKey
from .manifest import (
    MAX_MANIFEST_SIZE,
    PAYLOAD_DELTA,
    PAYLOAD_FULL,
    Manifest,
    build_segment_table,
    manifest_key_id,
    segment_check,
    signing_message,
)
from .payload import (
    CODEC_DEFLATE,
    CODEC_ZSTD,
    DEFAULT_LEVEL,
    DEFAULT_SEGMENT_SIZE,
    compress_segments,
    compress_segments_deflate,
    decoder_ram_bytes,
    deflate_window_log_for,
    window_log_for,
)

if TYPE_CHECKING:
    from .delta import DeltaResult

MAGIC = b"OTAF"
FILE_FORMAT = 1
HEADER_SIZE = 10
SIGNATURE_SIZE = 64
_HEADER = struct.Struct("<4sBBI")
READ_CHUNK = 1 << 16

__all__ = [
    "FILE_FORMAT",
    "HEADER_SIZE",
    "MAGIC",
    "SIGNATURE_SIZE",
    "ArtifactReader",
    "assemble",
    "build_full",
    "describe",
    "device_ram_bytes",
    "encode_header",
    "find_key",
    "inspect_artifact",
    "open_artifact",
]


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes | None: ...


def encode_header(manifest_size: int) -> bytes:
    if not 1 <= manifest_size <= MAX_MANIFEST_SIZE:
        raise DecodeError(f"manifest size {manifest_size} out of range 1..{MAX_MANIFEST_SIZE}")
    return _HEADER.pack(MAGIC, FILE_FORMAT, 0, manifest_size)


def assemble(manifest: Manifest, segments: Sequence[bytes], key: SigningKey) -> bytes:
    """Sign *manifest* with *key* and lay out the whole ``.ota`` file.

    Checks first that the manifest's key id is *key*'s and that its segment
    table describes exactly these *segments*, so a wrong table can never be
    signed.
    """
    if manifest.key_id != key.public.key_id:
        raise ProtocolError(
            f"manifest key_id {manifest.key_id.hex()} is not the signing key's "
            f"{key.public.key_id.hex()}",
            Reason.UNKNOWN_KEY,
        )
    if len(segments) != len(manifest.segments):
        raise ProtocolError(
            f"{len(segments)} segments given, manifest lists {len(manifest.segments)}",
            Reason.MALFORMED,
        )
    for i, (seg, entry) in enumerate(zip(segments, manifest.segments, strict=True)):
        if len(seg) != entry.length or segment_check(seg) != entry.check:
            raise IntegrityError(
                f"segment {i} does not match the manifest's segment table",
                Reason.SEGMENT_CORRUPT,
                index=i,
            )
    manifest_bytes = manifest.encode()
    header = encode_header(len(manifest_bytes))
    signature = key.sign(signing_message(manifest_bytes))
    return b"".join([header, manifest_bytes, signature, *map(bytes, segments)])


def _manifest(
    image: bytes,
    key: SigningKey,
    hw: Sequence[str],
    chip: str,
    version: str,
    security_counter: int,
    project: str | None,
    *,
    payload_kind: int,
    codec: str,
    window_log: int,
    segment_size: int,
    segments: Sequence[bytes],
    base_sha256: bytes | None = None,
    base_size: int | None = None,
) -> Manifest:
    return Manifest(
        hw=tuple(hw),
        chip=chip,
        version=version,
        security_counter=security_counter,
        target_size=len(image),
        target_sha256=hashlib.sha256(image).digest(),
        payload_kind=payload_kind,
        codec=codec,
        window_log=window_log,
        segment_size=segment_size,
        segments=build_segment_table(segments),
        key_id=key.public.key_id,
        base_sha256=base_sha256,
        base_size=base_size,
        project=project,
    )


def build_full(
    image: bytes,
    key: SigningKey,
    *,
    hw: Sequence[str],
    chip: str,
    version: str,
    security_counter: int = 0,
    project: str | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    level: int | None = None,
    codec: str = CODEC_ZSTD,
) -> bytes:
    """Build a full-image ``.ota`` file for *image*: ``codec`` ``zstd`` (SPEC 4,
    ``level`` 1..22, default 19) or ``deflate`` (SPEC 4.1, a device without zstd,
    such as MicroPython; ``level`` 1..9, default 9)."""
    image = bytes(image)
    if not image:
        raise DecodeError("cannot build an artifact for an empty image")
    if codec == CODEC_DEFLATE:
        segments = compress_segments_deflate(image, segment_size, 9 if level is None else level)
        window_log = deflate_window_log_for(segment_size)
    elif codec == CODEC_ZSTD:
        segments = compress_segments(image, segment_size, DEFAULT_LEVEL if level is None else level)
        window_log = window_log_for(segment_size)
    else:
        raise OtaferryError(
            f"no full-image codec {codec!r} (zstd, deflate)", Reason.UNSUPPORTED_CODEC
        )
    manifest = _manifest(
        image, key, hw, chip, version, security_counter, project,
        payload_kind=PAYLOAD_FULL, codec=codec, window_log=window_log,
        segment_size=segment_size, segments=segments,
    )  # fmt: skip
    return assemble(manifest, segments, key)


def delta_codecs(codecs: Sequence[str] | None) -> tuple[str, ...]:
    """The delta codecs a build may use: ``codecs`` checked (known names,
    fdelta1 among them), or all of them."""
    from .delta import DELTA_CODEC, DELTA_CODEC2
    from .delta3 import DELTA_CODEC3

    known = (DELTA_CODEC, DELTA_CODEC2, DELTA_CODEC3)
    if codecs is None:
        return known
    bad = [c for c in codecs if c not in known]
    if bad:
        raise OtaferryError(f"unknown delta codec {', '.join(bad)} (known: {', '.join(known)})",
                            Reason.UNSUPPORTED_CODEC)  # fmt: skip
    if DELTA_CODEC not in codecs:
        raise OtaferryError(f"delta codecs {', '.join(codecs)}: {DELTA_CODEC}, the fallback of "
                            "every delta build, must be among them",
                            Reason.UNSUPPORTED_CODEC)  # fmt: skip
    return tuple(codecs)


def build_delta(
    base: bytes,
    image: bytes,
    key: SigningKey,
    *,
    hw: Sequence[str],
    chip: str,
    version: str,
    security_counter: int = 0,
    project: str | None = None,
    segment_size: int | None = None,
    device_ram: int | None = None,
    encoded: DeltaResult | None = None,
    codecs: Sequence[str] | None = None,
) -> bytes:
    """Build a delta (``fdelta1``) ``.ota`` file that rebuilds *image* from *base*.

    The device applies it only if its running image is exactly *base*
    (``base_sha256`` is signed); see SPEC.md section 7. The segment size is
    chosen so that a device with ``device_ram`` bytes (default 65,536) passes
    its RAM check (SPEC 7.6); ``segment_size`` forces one size, and either way
    OtaferryError(RESOURCE_LIMIT) is raised rather than an artifact the
    device would refuse. ``encoded``: the result of encode_delta_for_device
    for these images, to sign without encoding again (the benchmark).
    ``codecs``: the delta codecs the device decodes (default all); the builder
    weighs only those (fdelta1, which every delta device decodes, always).
    """
    from .delta import DEFAULT_DEVICE_RAM, DELTA_CODEC2, encode_delta_for_device
    from .delta3 import DELTA_CODEC3

    image = bytes(image)
    base = bytes(base)
    if not image:
        raise DecodeError("cannot build an artifact for an empty image")
    allowed = delta_codecs(codecs)
    result = encoded or encode_delta_for_device(
        base, image, device_ram or DEFAULT_DEVICE_RAM, segment_size=segment_size,
        archs=None if DELTA_CODEC2 in allowed else (), lz=DELTA_CODEC3 in allowed,
    )  # fmt: skip
    manifest = _manifest(
        image, key, hw, chip, version, security_counter, project,
        payload_kind=PAYLOAD_DELTA, codec=result.codec, window_log=result.window_log,
        segment_size=result.segment_size, segments=result.segments,
        base_sha256=hashlib.sha256(base).digest(), base_size=len(base),
    )  # fmt: skip
    return assemble(manifest, result.segments, key)


class ArtifactReader:
    """Streaming reader over a binary stream positioned at the start of a ``.ota``.

    Construction reads and checks header, manifest and signature (``BAD_MAGIC``,
    ``UNSUPPORTED_FORMAT``, ``MALFORMED``, ``TRUNCATED``). :meth:`verify` checks
    the signature against trusted keys; :meth:`iter_segments` then yields each
    segment after checking it against the signed table. Reading segments does
    not require :meth:`verify` (a relaying gateway may hold no trusted keys);
    the device verifies end to end.
    """

    def __init__(self, stream: Readable, trusted: Iterable[VerifyKey] | None = None) -> None:
        """``trusted``: verify the signature over the raw manifest bytes before
        they are parsed (``UNKNOWN_KEY`` / ``BAD_SIGNATURE``), so unsigned input
        costs nothing beyond its own bytes; without keys (a relaying gateway)
        the manifest is parsed unverified, within its 1 MiB bound."""
        self._stream = stream
        self._consumed = False
        self.verified_key: VerifyKey | None = None
        head = self._read_upto(HEADER_SIZE)
        if head[:4] != MAGIC[: len(head)]:
            raise DecodeError(f"not an .ota file (magic {head[:4].hex()})", Reason.BAD_MAGIC)
        if len(head) < HEADER_SIZE:
            raise DecodeError(
                f"file ends inside the {HEADER_SIZE}-byte header ({len(head)} bytes)",
                Reason.TRUNCATED,
                offset=len(head),
            )
        _, file_format, flags, manifest_size = _HEADER.unpack(head)
        if file_format != FILE_FORMAT:
            raise DecodeError(
                f"file format {file_format} is not supported (this reader knows {FILE_FORMAT})",
                Reason.UNSUPPORTED_FORMAT,
            )
        if flags != 0:
            raise DecodeError(f"reserved flags byte is 0x{flags:02x}, must be 0", Reason.MALFORMED)
        if not 1 <= manifest_size <= MAX_MANIFEST_SIZE:
            raise DecodeError(
                f"manifest length {manifest_size} out of range 1..{MAX_MANIFEST_SIZE}",
                Reason.MALFORMED,
            )
        self._manifest_bytes = self._read_exact(manifest_size, "the manifest", HEADER_SIZE)
        self._signature = self._read_exact(
            SIGNATURE_SIZE, "the signature", HEADER_SIZE + manifest_size
        )
        if trusted is not None:
            key = find_key(manifest_key_id(self._manifest_bytes), trusted)
            key.verify(self._signature, signing_message(self._manifest_bytes))
            self.verified_key = key
        self._manifest = Manifest.decode(self._manifest_bytes)
        self._header_size: int = HEADER_SIZE + manifest_size + SIGNATURE_SIZE

    # --- stream helpers ---

    def _read_upto(self, n: int) -> bytes:
        # In bounded reads: n comes from the file (a segment length up to
        # 2^32 - 1), and a read(n) would allocate n bytes before it knows how
        # many there are. So RAM follows the bytes the stream really has.
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = self._stream.read(min(n - got, READ_CHUNK))
            if not chunk:
                break
            if len(chunk) > n - got:  # a misbehaving stream; never trust it
                raise DecodeError("stream returned more bytes than asked", Reason.MALFORMED)
            parts.append(bytes(chunk))
            got += len(chunk)
        return b"".join(parts)

    def _read_exact(self, n: int, what: str, offset: int) -> bytes:
        data = self._read_upto(n)
        if len(data) != n:
            raise DecodeError(
                f"file ends inside {what} at offset {offset + len(data)} "
                f"({len(data)} of {n} bytes)",
                Reason.TRUNCATED,
                offset=offset + len(data),
            )
        return data

    # --- public API ---

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def manifest_bytes(self) -> bytes:
        return self._manifest_bytes

    @property
    def signature(self) -> bytes:
        return self._signature

    @property
    def header_size(self) -> int:
        """Bytes before the payload: 10-byte header + manifest + signature."""
        return self._header_size

    def verify(self, trusted: Iterable[VerifyKey]) -> VerifyKey:
        """Return the trusted key that signed this manifest.

        ``UNKNOWN_KEY`` if no trusted key has the manifest's key id,
        ``BAD_SIGNATURE`` if the key with that id does not verify it.
        """
        key = find_key(self._manifest.key_id, trusted)
        key.verify(self._signature, signing_message(self._manifest_bytes))
        self.verified_key = key
        return key

    def iter_segments(self) -> Iterator[bytes]:
        """Yield each segment's payload bytes, each checked before it is yielded."""
        for index, data, ok in self._iter_raw():
            if not ok:
                raise IntegrityError(
                    f"segment {index} does not match its signed check",
                    Reason.SEGMENT_CORRUPT,
                    index=index,
                )
            yield data

    def _iter_raw(self) -> Iterator[tuple[int, bytes, bool]]:
        if self._consumed:
            raise ProtocolError("segments were already read from this stream", Reason.BAD_STATE)
        self._consumed = True
        offset = self._header_size
        for index, entry in enumerate(self._manifest.segments):
            data = self._read_exact(entry.length, f"segment {index}", offset)
            offset += entry.length
            yield index, data, segment_check(data) == entry.check
        if self._read_upto(1):
            raise DecodeError(
                f"trailing bytes after the last segment at offset {offset}",
                Reason.MALFORMED,
                offset=offset,
            )


def find_key(key_id: bytes, trusted: Iterable[VerifyKey]) -> VerifyKey:
    """The trusted key with this key id, else ``UNKNOWN_KEY``."""
    for key in trusted:
        if key.key_id == key_id:
            return key
    raise ProtocolError(f"signed by untrusted key {key_id.hex()}", Reason.UNKNOWN_KEY)


@contextmanager
def open_artifact(
    path: str | os.PathLike[str], trusted: Iterable[VerifyKey] | None = None
) -> Iterator[ArtifactReader]:
    """``with open_artifact(path) as reader:`` — a reader over the opened file
    (``trusted``: verified before the manifest is parsed, see ArtifactReader)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise OtaferryError(f"{os.fspath(path)}: {exc.strerror}", Reason.IO_ERROR) from exc
    try:
        yield ArtifactReader(fh, trusted)
    finally:
        fh.close()


def _payload_kind_name(kind: int) -> str:
    return {PAYLOAD_FULL: "full", PAYLOAD_DELTA: "delta"}.get(kind, str(kind))


def describe(manifest: Manifest) -> dict[str, Any]:
    """The manifest as a JSON-ready dict (hex for bytes)."""
    return {
        "format": manifest.format,
        "payload_kind": _payload_kind_name(manifest.payload_kind),
        "payload_size": manifest.payload_size,
        "target_size": manifest.target_size,
        "target_sha256": manifest.target_sha256.hex(),
        "base_sha256": manifest.base_sha256.hex() if manifest.base_sha256 else None,
        "base_size": manifest.base_size,
        "version": manifest.version,
        "hw": list(manifest.hw),
        "chip": manifest.chip,
        "project": manifest.project,
        "security_counter": manifest.security_counter,
        "codec": manifest.codec,
        "window_log": manifest.window_log,
        "segment_size": manifest.segment_size,
        "segments": manifest.segment_count,
        "key_id": manifest.key_id.hex(),
        "decoder_ram_bytes": device_ram_bytes(manifest),
    }


def device_ram_bytes(manifest: Manifest) -> int:
    """The RAM the device reckons it needs for this artifact, by the formula of its kind.

    A full image: the zstd decoder's window, blocks and tables plus one segment
    (SPEC section 4). A delta: the applier's budget for its biggest segment
    payload (SPEC section 7), the number the device compares with its
    ``ram_budget`` before it accepts the update.
    """
    if manifest.payload_kind == PAYLOAD_DELTA:
        from .delta import ram_budget

        return ram_budget(max((s.length for s in manifest.segments), default=0), manifest.codec)
    return decoder_ram_bytes(manifest.segment_size, manifest.window_log, manifest.codec)


def inspect_artifact(
    path: str | os.PathLike[str], trusted: Iterable[VerifyKey] | None = None
) -> dict[str, Any]:
    """Describe an ``.ota`` file and check its segments (and, given keys, its signature).

    Raises for an unreadable header or manifest; a bad payload is reported,
    not raised: ``segments_ok`` is False, ``bad_segments`` lists corrupt
    indices and ``payload_error`` names the reason (``SEGMENT_CORRUPT``,
    ``TRUNCATED`` or ``MALFORMED`` for trailing bytes).
    """
    file_size = os.path.getsize(path)
    with open_artifact(path) as reader:
        info = describe(reader.manifest)
        info["file_size"] = file_size
        info["manifest_size"] = len(reader.manifest_bytes)
        info["signature_ok"] = None
        info["signature_error"] = None
        if trusted is not None:
            try:
                reader.verify(trusted)
                info["signature_ok"] = True
            except ProtocolError as exc:
                info["signature_ok"] = False
                info["signature_error"] = exc.reason.name
        bad: list[int] = []
        error: str | None = None
        try:
            for index, _data, ok in reader._iter_raw():
                if not ok:
                    bad.append(index)
        except DecodeError as exc:
            error = exc.reason.name
        if bad and error is None:
            error = Reason.SEGMENT_CORRUPT.name
        info["bad_segments"] = bad
        info["payload_error"] = error
        info["segments_ok"] = error is None
    return info
