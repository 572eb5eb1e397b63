"""The device's byte-stream framing: ``00 | COBS(body || CRC-32 LE) | 00``.

Byte-compatible with ``otaferry.protocol.framing`` (the reference, SPEC.md
section 6); ``tests/test_device_framing.py`` runs both against each other and
the golden vector. binascii.crc32 is CRC-32/ISO-HDLC, as on MicroPython.
"""

import binascii

CRC_SIZE = 4


def crc32(data):
    return binascii.crc32(data) & 0xFFFFFFFF


def cobs_encode(data):
    out = bytearray(b"\x00")
    code_at = 0
    code = 1
    for b in data:
        if code == 0xFF:  # a full group closes only when more data follows
            out[code_at] = code
            code_at = len(out)
            out.append(0)
            code = 1
        if b == 0:
            out[code_at] = code
            code_at = len(out)
            out.append(0)
            code = 1
        else:
            out.append(b)
            code += 1
    out[code_at] = code
    return bytes(out)


def cobs_decode(data):
    """Decode one stuffed frame (no delimiters); None if it is not valid COBS."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            return None
        out += data[i + 1 : end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def max_wire_size(body_size):
    """Upper bound of the bytes encode_frame puts on the wire (= protocol/framing.py)."""
    raw = body_size + CRC_SIZE
    return raw + 1 + raw // 254 + 2


def encode_frame(body):
    body = bytes(body)
    return b"\x00" + cobs_encode(body + crc32(body).to_bytes(CRC_SIZE, "little")) + b"\x00"


class FrameDecoder:
    """Feed bytes, get CRC-checked bodies. Never buffers more than one frame."""

    def __init__(self, max_frame=1024):
        self.max_stuffed = max_frame + CRC_SIZE + 2 + (max_frame + CRC_SIZE) // 254
        self.buf = bytearray()
        self.discarding = False
        self.bad_frames = 0

    def reset(self):
        """Drop the frame being read (bytes up to the next delimiter are discarded)."""
        self.buf = bytearray()
        self.discarding = True

    def feed(self, data):
        bodies = []
        for b in bytes(data):
            if b == 0:
                if self.buf and not self.discarding:
                    body = self._finish(bytes(self.buf))
                    if body is not None:
                        bodies.append(body)
                self.buf = bytearray()
                self.discarding = False
            elif not self.discarding:
                if len(self.buf) >= self.max_stuffed:
                    self.discarding = True
                    self.bad_frames += 1
                    self.buf = bytearray()
                else:
                    self.buf.append(b)
        return bodies

    def _finish(self, stuffed):
        raw = cobs_decode(stuffed)
        if raw is None or len(raw) <= CRC_SIZE:
            self.bad_frames += 1
            return None
        body = raw[:-CRC_SIZE]
        if crc32(body) != int.from_bytes(raw[-CRC_SIZE:], "little"):
            self.bad_frames += 1
            return None
        return body
