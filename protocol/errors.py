"""otaferry's one exception tree and its reason codes.

Every error a user can see carries a :class:`Reason`. The numbers travel on
the wire (reject / abort frames, MQTT status) and are mirrored in
``device_fw/reasons.py``; ``tests/test_reasons.py`` keeps the two equal.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Reason(IntEnum):
    OK = 0
    BAD_MAGIC = 1
    UNSUPPORTED_FORMAT = 2
    TRUNCATED = 3
    MALFORMED = 4
    BAD_SIGNATURE = 5
    UNKNOWN_KEY = 6
    SEGMENT_CORRUPT = 7
    IMAGE_HASH_MISMATCH = 8
    WRONG_HW = 9
    WRONG_CHIP = 10
    DOWNGRADE = 11
    TOO_LARGE = 12
    WRONG_BASE = 13
    UNSUPPORTED_CODEC = 14
    RESOURCE_LIMIT = 15
    NO_OTA_SLOT = 16
    FLASH_ERROR = 17
    BAD_STATE = 18
    REVOKED_KEY = 19
    EXPIRED = 20
    REPLAY = 21
    DECODE_ERROR = 22
    PARTITION_TABLE = 23
    BAD_KEY = 24
    TIMEOUT = 25
    CLOSED = 26
    ABORTED = 27
    BAD_FRAME = 28
    IO_ERROR = 29
    SELF_TEST_FAILED = 30
    CHECKIN_TIMEOUT = 31
    ROLLED_BACK = 32
    PREVIOUSLY_FAILED = 33
    ALREADY_INSTALLED = 34


class OtaferryError(Exception):
    """Base of every error otaferry raises through its public API."""

    reason: Reason = Reason.MALFORMED

    def __init__(self, message: str, reason: Reason | None = None, **fields: Any) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.message = message
        self.fields = fields

    def __str__(self) -> str:
        return f"{self.reason.name}: {self.message}"


class ProtocolError(OtaferryError):
    """Something about bytes, manifests, artifacts or sessions is wrong."""


class DecodeError(ProtocolError):
    """Input could not be parsed (truncated, malformed, bad magic, bad frame)."""

    reason = Reason.MALFORMED


class SignatureError(ProtocolError):
    reason = Reason.BAD_SIGNATURE


class IntegrityError(ProtocolError):
    """A hash over signed content does not match (segment or whole image)."""

    reason = Reason.SEGMENT_CORRUPT


class IncompatibleError(ProtocolError):
    """The update does not fit this device (hw, chip, size, base, codec, RAM)."""

    reason = Reason.WRONG_HW


class DowngradeError(ProtocolError):
    reason = Reason.DOWNGRADE


class RemoteError(ProtocolError):
    """The peer rejected or aborted with a reason code."""


class KeyFileError(OtaferryError):
    reason = Reason.BAD_KEY


class TransportError(OtaferryError):
    reason = Reason.IO_ERROR


class ClosedError(TransportError):
    reason = Reason.CLOSED


class TimeoutError_(TransportError):
    """The peer stayed silent past the give-up limit (not the builtin TimeoutError)."""

    reason = Reason.TIMEOUT


class FlashError(OtaferryError):
    reason = Reason.FLASH_ERROR
