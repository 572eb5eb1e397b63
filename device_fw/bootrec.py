"""Boot records: what the bootloader's image check needs, kept with each image
so that a device whose whole store is unreadable still boots an intact image,
and never one below its security counter.

Why here, and not elsewhere:

- The store (store.py) is one partition. Records made redundant *inside* it
  still die together when that partition is erased or corrupted, which is the
  case to survive.
- otadata's sectors have unused space, but every ESP-IDF write there (the
  bootloader marking an entry ABORTED, ``esp_ota_set_boot_partition`` on the
  esp32 port) erases the sector and programs only its 32-byte entry: a copy
  there is wiped by the very writes it would have to outlive, and it would
  make otadata differ from what ESP-IDF writes.
- Verifying the image against its signed manifest would need the vendor's
  public keys, which live in the store that is gone; copying them anywhere
  in flash trusts that copy exactly as much as the store.

So each app partition keeps, in its last erase unit (never part of an image:
``capacity`` is the slot less that unit), one record::

    magic "OB" | length u16 LE | body (msgpack) | crc32 u32 LE

    body: [floor, image]   image: [sha256, size, version, security_counter,
                                   uid or nil] or nil

(arrays, not maps: the bytes must not depend on an interpreter's dict order,
and CPython and MicroPython write the same record.)

``image`` is the same record the store keeps for the slot; ``floor`` is the
device's confirmed security counter when the record was written. The record
is written with the image it describes (after that image matched its signed
SHA-256, before the store records it: install's commit and factory flashing)
and rewritten, keeping ``image``, in the passive slot whenever the device's
counter has moved past its ``floor``. A record is a claim the boot checks:
the slot is hashed against ``image`` before it boots, so a stale record (a
slot rewritten since) fails the hash and never boots what it does not
describe, and a torn record fails its CRC and counts as absent.

The security counter without the store is the largest of every readable
record's ``floor`` and of the ``security_counter`` of each image otadata
shows VALID (it confirmed, so the counter reached it). Every value in that
maximum is a counter the device really reached, so it is never above the
true counter; and after each raise, the passive slot's ``floor`` (rewritten at
once, re-checked at every boot) and the confirmed image's VALID entry both
carry it, so corrupting the store alone cannot lower it. Only the loss of
both of those as well (store, the passive slot's record and otadata) can.

What cannot be recovered without the store is the identity: trusted and
revoked keys, the link key, the accepted gateways. A device that boots from
boot records therefore runs its image and takes no update (BAD_STATE) until it
is provisioned again: an attacker who destroys the store gains neither a
trusted key nor a forgotten revocation.
"""

import binascii
import struct

from . import mpack
from .reasons import DeviceError

MAGIC = b"OB"
HEAD = "<2sH"
HEAD_SIZE = 4


def capacity(slot):
    """Bytes of ``slot`` an image may use: all but the last erase unit."""
    return slot.size - slot.erase_size


def _crc(data):
    return binascii.crc32(data) & 0xFFFFFFFF


FIELDS = ("sha256", "size", "version", "security_counter", "uid")


def _u32(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFFFFFF


def _image(item):
    """The store's image record from a record's image array, or None if it is
    not one (a crafted record with a good CRC counts as absent)."""
    if not isinstance(item, list) or len(item) != len(FIELDS):
        return None
    sha, size, version, counter, uid = item
    if not (isinstance(sha, bytes) and len(sha) == 32 and _u32(size) and _u32(counter)
            and isinstance(version, str)
            and (uid is None or (isinstance(uid, bytes) and len(uid) == 16))):
        return None
    rec = {"sha256": sha, "size": size, "version": version, "security_counter": counter}
    if uid is not None:
        rec["uid"] = uid
    return rec


def read(slot):
    """(floor, image record or None) from ``slot``'s boot record, or None when it
    has none that checks (blank, torn, crafted out of range, unreadable)."""
    at = capacity(slot)
    try:
        head = slot.read(at, HEAD_SIZE)
        magic, length = struct.unpack(HEAD, head)
        if magic != MAGIC or HEAD_SIZE + length + 4 > slot.erase_size:
            return None
        data = slot.read(at, HEAD_SIZE + length + 4)
    except DeviceError:
        return None
    (crc,) = struct.unpack("<I", data[-4:])
    if crc != _crc(data[:-4]):
        return None
    try:
        body = mpack.decode_all(data[HEAD_SIZE:-4])
    except DeviceError:
        return None
    if not isinstance(body, list) or len(body) != 2 or not _u32(body[0]):
        return None
    image = None if body[1] is None else _image(body[1])
    if body[1] is not None and image is None:
        return None
    return body[0], image


def write(slot, floor, image=None):
    """Erase ``slot``'s last unit and program its boot record (the CRC is the
    last bytes programmed, so a cut leaves no record, never a wrong one)."""
    item = None if image is None else [image.get(k) for k in FIELDS]
    payload = mpack.encode([floor, item])
    data = struct.pack(HEAD, MAGIC, len(payload)) + payload
    data += struct.pack("<I", _crc(data))
    at = capacity(slot)
    slot.erase(at, slot.erase_size)
    slot.write(at, data)


def raise_floor(slot, counter):
    """Make ``slot``'s record carry ``counter`` as its floor, keeping its image
    record; no write when it already does. Returns True if it wrote."""
    got = read(slot)
    if (0 if got is None else got[0]) >= counter:
        return False  # no record is a floor of 0
    write(slot, counter, None if got is None else got[1])
    return True


def recovered_counter(records, valid_images):
    """The security counter without the store: see the module docstring.
    ``records``: [(floor, image)]; ``valid_images``: image records of the
    slots otadata shows VALID."""
    counter = 0
    for floor, _image in records:
        counter = max(counter, floor)
    for image in valid_images:
        counter = max(counter, image["security_counter"])
    return counter
