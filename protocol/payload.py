"""Full-image payload codecs ``zstd`` (SPEC section 4) and ``deflate`` (4.1).

Each ``segment_size`` piece of the image becomes one self-contained zstd frame
with the content size in its header, no checksum (the signed segment check
covers it) and no dictionary id. The compressor's window is limited to
``2^window_log`` where ``window_log`` is the smallest power of two covering one
segment, so a device decoder never needs more than that window.
"""

from __future__ import annotations

import zlib

import zstandard

from .errors import DecodeError, Reason
from .manifest import MAX_WINDOW_LOG, MIN_WINDOW_LOG, SEGMENT_ALIGN

CODEC_ZSTD = "zstd"
CODEC_DEFLATE = "deflate"
FULL_CODECS = (CODEC_ZSTD, CODEC_DEFLATE)
DEFLATE_LEVEL = 9
DEFLATE_MAX_WINDOW_LOG = 15  # deflate's distances reach 32 KiB at most
# SPEC 4.1: what a raw-deflate decoder keeps besides its window: MicroPython's
# uzlib (DeflateIO) state with its Huffman trees (~1.3 KB), rounded up, and the
# device's one 4 KiB output piece.
DEFLATE_STATE_BYTES = 2048
OUTPUT_CHUNK = 4096
DEFAULT_SEGMENT_SIZE = 8192
DEFAULT_WINDOW_LOG = 13
DEFAULT_LEVEL = 19

# SPEC section 4: zstd entropy tables a decoder keeps (Huffman 4097*4 B,
# literal-length and match-length FSE 513*8 B each, offsets FSE 257*8 B).
ENTROPY_TABLE_BYTES = 4097 * 4 + 513 * 8 * 2 + 257 * 8  # 26,652
BLOCK_MAX = 128 * 1024
# A compressed segment may exceed its raw size slightly (frame header, raw
# blocks); the device buffers one compressed segment of at most this slack.
COMPRESSED_SLACK = 64

__all__ = [
    "CODEC_DEFLATE",
    "CODEC_ZSTD",
    "DEFAULT_LEVEL",
    "DEFAULT_SEGMENT_SIZE",
    "DEFAULT_WINDOW_LOG",
    "FULL_CODECS",
    "compress_segments",
    "compress_segments_deflate",
    "decoder_ram_bytes",
    "decompress_segment",
    "decompress_segment_deflate",
    "deflate_window_log_for",
    "window_log_for",
]


def window_log_for(segment_size: int) -> int:
    """Smallest window log (>= 10) whose window covers one segment."""
    if segment_size < 1:
        raise ValueError("segment_size must be positive")
    return max(MIN_WINDOW_LOG, (segment_size - 1).bit_length())


def deflate_window_log_for(segment_size: int) -> int:
    """Window log of a ``deflate`` segment: covers the segment, at most 2^15."""
    return min(window_log_for(segment_size), DEFLATE_MAX_WINDOW_LOG)


def decoder_ram_bytes(segment_size: int, window_log: int, codec: str = CODEC_ZSTD) -> int:
    """Device RAM to decode one segment.

    zstd: W + 2B + tables + one compressed segment, W = 2^window_log,
    B = min(W, 128 KiB) (SPEC section 4). deflate: W + the decoder's state +
    one output piece + one compressed segment (SPEC 4.1).
    """
    window = 1 << window_log
    if codec == CODEC_DEFLATE:
        return window + DEFLATE_STATE_BYTES + OUTPUT_CHUNK + segment_size + COMPRESSED_SLACK
    block = min(window, BLOCK_MAX)
    return window + 2 * block + ENTROPY_TABLE_BYTES + segment_size + COMPRESSED_SLACK


def _compressor(level: int, source_size: int, window_log: int) -> zstandard.ZstdCompressor:
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        source_size=source_size,
        window_log=window_log,
        write_content_size=1,
        write_checksum=0,
        write_dict_id=0,
    )
    return zstandard.ZstdCompressor(compression_params=params)


def compress_segments(
    image: bytes, segment_size: int = DEFAULT_SEGMENT_SIZE, level: int = DEFAULT_LEVEL
) -> list[bytes]:
    """Cut *image* into ``segment_size`` pieces and compress each as one zstd frame."""
    if segment_size < SEGMENT_ALIGN or segment_size % SEGMENT_ALIGN:
        raise ValueError(f"segment_size must be a positive multiple of {SEGMENT_ALIGN}")
    window_log = window_log_for(segment_size)
    if window_log > MAX_WINDOW_LOG:
        raise ValueError(f"segment_size {segment_size} needs a window above 2^{MAX_WINDOW_LOG}")
    if not image:
        raise ValueError("cannot build a payload for an empty image")
    image = bytes(image)
    out = []
    for offset in range(0, len(image), segment_size):
        piece = image[offset : offset + segment_size]
        frame = _compressor(level, len(piece), window_log).compress(piece)
        out.append(frame)
    return out


def decompress_segment(data: bytes, expected_size: int, window_log: int) -> bytes:
    """Host reference decoder for one segment; enforces the window and the size.

    Raises ``DecodeError`` (``DECODE_ERROR``) when the frame is not one zstd
    frame with content size *expected_size*, asks for a window above
    ``2^window_log``, carries a dictionary id, or fails to decode.
    """
    data = bytes(data)
    max_window = 1 << window_log
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"not a zstd frame: {exc}", Reason.DECODE_ERROR) from exc
    if params.content_size != expected_size:
        # content_size is ZSTD_CONTENTSIZE_UNKNOWN (2^64-1) when it is missing.
        raise DecodeError(
            f"frame content size {params.content_size} != expected {expected_size}",
            Reason.DECODE_ERROR,
            expected=expected_size,
            actual=params.content_size,
        )
    if params.window_size > max_window:
        raise DecodeError(
            f"frame window {params.window_size} exceeds 2^{window_log}",
            Reason.DECODE_ERROR,
        )
    if params.dict_id:
        raise DecodeError("frame needs a dictionary", Reason.DECODE_ERROR)
    try:
        dctx = zstandard.ZstdDecompressor(max_window_size=max(max_window, 1 << MIN_WINDOW_LOG))
        out = dctx.decompress(data, max_output_size=expected_size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"zstd decode failed: {exc}", Reason.DECODE_ERROR) from exc
    if len(out) != expected_size:
        raise DecodeError(
            f"decoded {len(out)} bytes, expected {expected_size}",
            Reason.DECODE_ERROR,
            expected=expected_size,
            actual=len(out),
        )
    return out


def compress_segments_deflate(
    image: bytes, segment_size: int = DEFAULT_SEGMENT_SIZE, level: int = DEFLATE_LEVEL
) -> list[bytes]:
    """Cut *image* into ``segment_size`` pieces, each one raw deflate stream
    (RFC 1951, no zlib header or checksum) with a ``2^deflate_window_log_for``
    window, so that a decoder with that window (MicroPython's
    ``deflate.DeflateIO(s, RAW, wbits)``) decodes it."""
    if segment_size < SEGMENT_ALIGN or segment_size % SEGMENT_ALIGN:
        raise ValueError(f"segment_size must be a positive multiple of {SEGMENT_ALIGN}")
    if not image:
        raise ValueError("cannot build a payload for an empty image")
    if not 1 <= level <= 9:
        raise ValueError("deflate level must be 1..9")
    wbits = deflate_window_log_for(segment_size)
    image = bytes(image)
    out = []
    for offset in range(0, len(image), segment_size):
        c = zlib.compressobj(level, zlib.DEFLATED, -wbits, 9, zlib.Z_DEFAULT_STRATEGY)
        out.append(c.compress(image[offset : offset + segment_size]) + c.flush())
    return out


def decompress_segment_deflate(data: bytes, expected_size: int, window_log: int) -> bytes:
    """Host reference decoder for one ``deflate`` segment: exactly one raw
    deflate stream of *expected_size* bytes within a ``2^window_log`` window,
    nothing after its last block (``DecodeError``, ``DECODE_ERROR``)."""
    if not MIN_WINDOW_LOG <= window_log <= DEFLATE_MAX_WINDOW_LOG:
        raise DecodeError(
            f"deflate window 2^{window_log} outside 2^{MIN_WINDOW_LOG}..2^15", Reason.DECODE_ERROR
        )
    d = zlib.decompressobj(-window_log)
    try:
        out = d.decompress(bytes(data), expected_size + 1)
    except zlib.error as exc:
        raise DecodeError(f"deflate decode failed: {exc}", Reason.DECODE_ERROR) from exc
    if len(out) != expected_size or not d.eof:
        raise DecodeError(
            f"deflate stream of {len(out)}{'' if d.eof else '+'} bytes, expected {expected_size}",
            Reason.DECODE_ERROR,
            expected=expected_size,
            actual=len(out),
        )
    if d.unused_data:
        raise DecodeError("bytes after the deflate stream's last block", Reason.DECODE_ERROR)
    return out
