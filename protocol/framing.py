"""Byte-stream framing for UART-like links: COBS, a CRC-32, and 0x00 delimiters.

On the wire one frame is::

    00 | COBS(body || CRC-32(body) as 4 bytes little-endian) | 00

COBS (Cheshire & Baker, "Consistent Overhead Byte Stuffing", 1999) removes every
0x00 from the stuffed bytes, so 0x00 only ever appears as a delimiter and a
receiver that starts mid-stream, or loses bytes to line noise, resynchronises at
the next 0x00. The *leading* delimiter costs one byte per frame and means a frame
is never glued to whatever garbage came before it (a lost trailing delimiter,
noise on an idle line, a device booting and printing): without it such garbage
would merge with the next frame and cost that frame too. Two delimiters in a row
(the trailing one of a frame and the leading one of the next) delimit an empty
stretch, which a receiver skips silently.

The CRC is CRC-32/ISO-HDLC (the zlib / Ethernet CRC: reflected polynomial
0xEDB88320, init and xorout 0xFFFFFFFF, check value 0xCBF43926 for "123456789").
Why 4 bytes and not CRC-16 is argued in SPEC.md section 6.

Pure and synchronous: no I/O here. :class:`FrameDecoder` takes bytes as they
arrive and returns the complete, checked bodies; it never buffers more than one
maximum-size frame, whatever it is fed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DecodeError, Reason

DELIMITER = 0x00
CRC_SIZE = 4
DEFAULT_MAX_FRAME = 1024
"""Default largest body a :class:`FrameDecoder` accepts (links pass their MTU)."""

_COBS_BLOCK = 254  # most data bytes one COBS code byte can cover


def _make_crc32_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32_TABLE = _make_crc32_table()


def crc32(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32/ISO-HDLC of ``data``; pass a previous result as ``crc`` to continue it."""
    table = _CRC32_TABLE
    value = crc ^ 0xFFFFFFFF
    for byte in bytes(data):
        value = table[(value ^ byte) & 0xFF] ^ (value >> 8)
    return value ^ 0xFFFFFFFF


def cobs_encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode ``data``; the result contains no 0x00 byte.

    A run of 254 non-zero bytes is a full block (code 0xFF, no implied zero);
    when such a block ends the input, no empty group follows it (the form of
    the Wikipedia examples; :func:`cobs_decode` also accepts the other form).
    """
    out = bytearray()
    runs = bytes(data).split(b"\x00")
    last = len(runs) - 1
    for index, run in enumerate(runs):
        pos = 0
        while len(run) - pos >= _COBS_BLOCK:
            out.append(0xFF)
            out += run[pos : pos + _COBS_BLOCK]
            pos += _COBS_BLOCK
        if index == last and pos and pos == len(run):
            break  # input ended on a full block: nothing (no zero) follows
        out.append(len(run) - pos + 1)
        out += run[pos:]
    return bytes(out)


def cobs_decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode one COBS-stuffed frame (without delimiters).

    Raises :class:`DecodeError` (``BAD_FRAME``) if a code byte is 0x00 or points
    past the end of the data.
    """
    raw = bytes(data)
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        code = raw[i]
        if code == 0:
            raise DecodeError("COBS: zero byte inside a frame", Reason.BAD_FRAME, offset=i)
        end = i + code
        if end > n:
            raise DecodeError(
                "COBS: code byte points past the end of the frame",
                Reason.BAD_FRAME,
                offset=i,
                expected=end,
                actual=n,
            )
        block = raw[i + 1 : end]
        if DELIMITER in block:
            raise DecodeError("COBS: zero byte inside a frame", Reason.BAD_FRAME, offset=i)
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def max_stuffed_size(body_size: int) -> int:
    """Upper bound of the COBS-stuffed size of a body (CRC included, delimiters not)."""
    raw = body_size + CRC_SIZE
    return raw + 1 + raw // _COBS_BLOCK


def max_wire_size(body_size: int) -> int:
    """Upper bound of the bytes :func:`encode_frame` puts on the wire for a body."""
    return max_stuffed_size(body_size) + 2


def encode_frame(body: bytes | bytearray | memoryview) -> bytes:
    """Frame ``body`` for a byte stream: leading 0x00, COBS(body + CRC), trailing 0x00."""
    raw = bytes(body)
    stuffed = cobs_encode(raw + crc32(raw).to_bytes(CRC_SIZE, "little"))
    return b"\x00" + stuffed + b"\x00"


@dataclass(frozen=True, slots=True)
class DecoderStats:
    """What a :class:`FrameDecoder` has seen so far.

    ``garbage_bytes`` counts every non-delimiter byte that did not end up in a
    delivered frame: bytes of frames that failed a check, of oversize frames,
    and noise between frames.
    """

    frames: int = 0
    crc_errors: int = 0
    cobs_errors: int = 0
    """Invalid COBS, or a frame too short to hold its CRC."""
    oversize: int = 0
    garbage_bytes: int = 0

    @property
    def bad_frames(self) -> int:
        return self.crc_errors + self.cobs_errors + self.oversize


class FrameDecoder:
    """Incremental receiver for :func:`encode_frame` output.

    ``feed`` any slicing of the byte stream; it returns the bodies completed by
    that data, in order, each one COBS-valid and CRC-checked. Bad frames are
    counted and skipped, never raised: on a noisy line they are expected, and
    the next delimiter starts a fresh frame.

    A frame whose body would exceed ``max_frame`` bytes is dropped as soon as
    its stuffed bytes exceed the bound, and everything up to the next delimiter
    is discarded, so memory stays at one maximum-size frame.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 0:
            raise ValueError("max_frame must be >= 0")
        self._max_frame = max_frame
        self._limit = max_stuffed_size(max_frame)
        self._buf = bytearray()
        self._discarding = False
        self._frames = 0
        self._crc_errors = 0
        self._cobs_errors = 0
        self._oversize = 0
        self._garbage = 0

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @property
    def buffered(self) -> int:
        """Stuffed bytes of the unfinished frame currently held."""
        return len(self._buf)

    @property
    def stats(self) -> DecoderStats:
        return DecoderStats(
            frames=self._frames,
            crc_errors=self._crc_errors,
            cobs_errors=self._cobs_errors,
            oversize=self._oversize,
            garbage_bytes=self._garbage,
        )

    def reset(self) -> None:
        """Forget any partial frame (counted as garbage); counters are kept."""
        self._garbage += len(self._buf)
        self._buf.clear()
        self._discarding = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        chunk = bytes(data)
        frames: list[bytes] = []
        start = 0
        while True:
            end = chunk.find(DELIMITER, start)
            if end < 0:
                self._accumulate(chunk, start, len(chunk))
                return frames
            self._accumulate(chunk, start, end)
            body = self._finish()
            if body is not None:
                frames.append(body)
            start = end + 1

    def _accumulate(self, chunk: bytes, start: int, end: int) -> None:
        size = end - start
        if size <= 0:
            return
        if self._discarding:
            self._garbage += size
        elif len(self._buf) + size > self._limit:
            self._garbage += len(self._buf) + size
            self._buf.clear()
            self._discarding = True
        else:
            self._buf += chunk[start:end]

    def _finish(self) -> bytes | None:
        """A delimiter arrived: check and return the frame it ends, if any."""
        if self._discarding:
            self._discarding = False
            self._oversize += 1
            return None
        if not self._buf:
            return None  # back-to-back delimiters: idle line, not an error
        stuffed = bytes(self._buf)
        self._buf.clear()
        try:
            raw = cobs_decode(stuffed)
        except DecodeError:
            self._cobs_errors += 1
            self._garbage += len(stuffed)
            return None
        if len(raw) < CRC_SIZE:
            self._cobs_errors += 1
            self._garbage += len(stuffed)
            return None
        if len(raw) - CRC_SIZE > self._max_frame:
            self._oversize += 1
            self._garbage += len(stuffed)
            return None
        body = raw[:-CRC_SIZE]
        if crc32(body) != int.from_bytes(raw[-CRC_SIZE:], "little"):
            self._crc_errors += 1
            self._garbage += len(stuffed)
            return None
        self._frames += 1
        return body
