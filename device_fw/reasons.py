"""Reason codes shared by the device and the host.

This module is the device's copy; ``otaferry.protocol.errors.Reason`` is the
host's. device_fw may not import otaferry.protocol (it must be copyable onto a
device), so the numbers live in both places and ``tests/test_reasons.py``
checks that they agree. Numbers are part of the wire format: never renumber,
only append.
"""

OK = 0
BAD_MAGIC = 1  # not an .ota file / not a frame
UNSUPPORTED_FORMAT = 2  # format version this reader does not know
TRUNCATED = 3  # input ended before the structure did
MALFORMED = 4  # structure present but invalid (types, ranges, non-canonical)
BAD_SIGNATURE = 5  # Ed25519 signature does not verify
UNKNOWN_KEY = 6  # signed by a key id the device does not trust
SEGMENT_CORRUPT = 7  # a payload segment does not match its signed check
IMAGE_HASH_MISMATCH = 8  # the rebuilt image's SHA-256 differs from the manifest
WRONG_HW = 9  # device hardware id not in the manifest's list
WRONG_CHIP = 10  # chip/architecture differs
DOWNGRADE = 11  # security counter lower than the device's
TOO_LARGE = 12  # target image larger than the passive slot
WRONG_BASE = 13  # delta base is not the running image
UNSUPPORTED_CODEC = 14  # codec or payload kind the device cannot decode
RESOURCE_LIMIT = 15  # window / segment needs more RAM than the device allows
NO_OTA_SLOT = 16  # partition table has no pair of OTA app slots
FLASH_ERROR = 17  # program over non-erased bytes, out of range, misaligned erase
BAD_STATE = 18  # operation not valid now (nothing to confirm, update in progress, ...)
REVOKED_KEY = 19  # signing key id is on the device's revocation list
EXPIRED = 20  # artifact past its signed expiry
REPLAY = 21  # replayed or stale session / frame
DECODE_ERROR = 22  # a checked segment failed to decompress / apply
PARTITION_TABLE = 23  # partition table invalid (CSV or binary)
BAD_KEY = 24  # key file unreadable / wrong type
TIMEOUT = 25  # peer silent past the give-up limit
CLOSED = 26  # link closed
ABORTED = 27  # peer aborted the session
BAD_FRAME = 28  # frame failed its CRC / decode
IO_ERROR = 29  # local file or port error
SELF_TEST_FAILED = 30  # the new image failed its self-test and rolled back
CHECKIN_TIMEOUT = 31  # the new image did not reach its update server in time: rolled back
ROLLED_BACK = 32  # the new image was reset while pending verify: rolled back
PREVIOUSLY_FAILED = 33  # this very update failed on this device before
ALREADY_INSTALLED = 34  # the device already runs this image

NAMES = {}
for _k, _v in list(globals().items()):
    if _k.isupper() and isinstance(_v, int):
        NAMES[_v] = _k


def name(code):
    return NAMES.get(code, "REASON_%d" % code)


class DeviceError(Exception):
    """An error on the device side; always carries a reason code."""

    def __init__(self, reason, message, **fields):
        # super().__init__, not Exception.__init__(self, ...): MicroPython has
        # no unbound Exception.__init__, and every error path went through it.
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.fields = fields

    def __str__(self):
        return "%s: %s" % (name(self.reason), self.message)


class FlashError(DeviceError):
    def __init__(self, message, **fields):
        super().__init__(FLASH_ERROR, message, **fields)
