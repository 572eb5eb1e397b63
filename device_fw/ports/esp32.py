"""MicroPython on an ESP32: the platform over ``esp32.Partition``.

The board's own ESP-IDF bootloader (built with rollback enabled, as
MicroPython's OTA builds are) chooses the slot; this port reads what it chose
(``Partition.RUNNING``) and the otadata entries (read-only, the format
``otadata.py`` shares with ESP-IDF), and changes boot only through the API:

- ``set_boot(i)``: ``Partition.set_boot()`` on slot i (esp_ota_set_boot_partition);
- ``mark_valid``: ``Partition.mark_app_valid_cancel_rollback()``;
- ``mark_invalid``: nothing to write. The running image is PENDING_VERIFY until
  it confirms; the reset that follows makes the bootloader mark it ABORTED and
  return to the previous slot (MicroPython has no call for
  esp_ota_mark_app_invalid_rollback_and_reboot, and needs none).

Slots are read with ``readblocks(block, buf, offset)``, programmed with
``writeblocks(block, buf, offset)`` — always with an offset: without one
MicroPython erases the block first — and erased with ``ioctl(6, block)``, in
the partition's own block size (``ioctl(5)``). The device state lives in its own
data partition (label ``otaferry``, any data subtype; two blocks or more), not
in ESP-IDF's nvs, which MicroPython's own ``esp32.NVS`` uses.

Partition table for a 4 MB board (MicroPython's OTA layout plus the store)::

    nvs,      data, nvs,  0x9000,  0x4000,
    otadata,  data, ota,  0xd000,  0x2000,
    phy_init, data, phy,  0xf000,  0x1000,
    ota_0,    app,  ota_0, 0x10000, 0x180000,
    ota_1,    app,  ota_1, 0x190000, 0x180000,
    otaferry, data, 0x40, 0x310000, 0x4000,
"""

from .. import boot as B
from .. import otadata as OD
from .. import reasons as R
from ..platform import Slot
from ..reasons import DeviceError
from ..store import Store

STORE_LABEL = "otaferry"
SUBTYPE_OTA_0 = 0x10
DATA_OTA = 0x00
PIECE = 256


class PartitionRegion:
    """read / write / erase_sector / is_erased at partition-relative addresses."""

    def __init__(self, part):
        self.part = part
        self.block = part.ioctl(5, 0)
        self.size = part.ioctl(4, 0) * self.block

    def read(self, addr, n):
        buf = bytearray(n)
        self.readinto(addr, buf)
        return buf

    def readinto(self, addr, buf):
        if len(buf):
            self.part.readblocks(addr // self.block, buf, addr % self.block)

    def write(self, addr, data):
        if len(data):
            self.part.writeblocks(addr // self.block, data, addr % self.block)

    def erase_sector(self, addr):
        if addr % self.block:
            raise DeviceError(R.FLASH_ERROR, "erase at +0x%x is not block-aligned" % addr)
        self.part.ioctl(6, addr // self.block)

    def is_erased(self, addr, n):
        for pos in range(addr, addr + n, PIECE):
            piece = self.read(pos, min(PIECE, addr + n - pos))
            for b in piece:
                if b != 0xFF:
                    return False
        return True


def _info(part):
    """(type, subtype, address, size, label, encrypted)."""
    return part.info()


class Esp32Platform:
    def __init__(self, esp32=None, store_label=STORE_LABEL):
        if esp32 is None:
            import esp32
        Partition = esp32.Partition
        self.Partition = Partition
        apps = []
        for part in Partition.find(Partition.TYPE_APP):
            sub = _info(part)[1]
            if SUBTYPE_OTA_0 <= sub < SUBTYPE_OTA_0 + 16:
                apps.append((sub, part))
        apps.sort(key=lambda t: t[0])
        if len(apps) < 2:
            raise DeviceError(R.NO_OTA_SLOT, "partition table has fewer than two OTA app slots")
        self.parts = [p for _, p in apps]
        self.slots = []
        for i, part in enumerate(self.parts):
            _t, _s, addr, size, label, _e = _info(part)
            region = PartitionRegion(part)
            self.slots.append(Slot(region, 0, size, label, i, region.block, offset=addr))
        running_addr = _info(Partition(Partition.RUNNING))[2]
        self.running = None
        for i, part in enumerate(self.parts):
            if _info(part)[2] == running_addr:
                self.running = i
        if self.running is None:
            raise DeviceError(R.NO_OTA_SLOT, "the running app is not in an OTA slot (factory?)")
        found = Partition.find(Partition.TYPE_DATA, label=store_label)
        if not found:
            raise DeviceError(
                R.PARTITION_TABLE, "no '%s' data partition for the device state" % store_label
            )
        region = PartitionRegion(found[0])
        self.store = Store(region, 0, region.size)
        otadata = Partition.find(Partition.TYPE_DATA, DATA_OTA)
        self.otadata = None
        if otadata:
            self.otadata = OD.OtaData(PartitionRegion(otadata[0]), 0, len(self.slots))
        self.flash_size = sum(s.size for s in self.slots)

    def close(self):
        pass

    def running_index(self):
        return self.running

    def lock_active(self, index):
        for slot in self.slots:
            slot.locked = slot.index == index

    def _entry_of(self, index):
        if self.otadata is None:
            return None
        best = None
        for e in self.otadata.read():
            if e.crc_ok and e.slot(len(self.slots)) == index and (best is None or e.seq > best.seq):
                best = e
        return best

    def state_of(self, index):
        e = self._entry_of(index)
        return None if e is None else e.state

    def boot(self, verify):
        """What the board's bootloader did: it booted RUNNING. ``fallback``
        when otadata's active entry names another slot (that image failed)."""
        i = self.running
        slot = self.slots[i]
        log = ["bootloader booted %s (%s)" % (slot.label, OD.state_name(self.state_of(i) or 0))]
        act = self.otadata.active() if self.otadata is not None else None
        fallback = act is not None and act.slot(len(self.slots)) != i
        return B.BootResult(i, slot, self._entry_of(i), log, fallback)

    def next_boot(self, verify):
        if self.otadata is None:
            return self.running
        entries = self.otadata.read()
        for e in entries:
            if e.crc_ok and e.state == OD.PENDING_VERIFY:
                e.state = OD.ABORTED  # the bootloader aborts an unconfirmed image
        act = self.otadata.active(entries)
        if act is None:
            return 0
        slot = act.slot(len(self.slots))
        return slot if verify is None or verify(slot) else self.running

    def set_boot(self, index):
        self.parts[index].set_boot()

    def mark_valid(self, index):
        if index != self.running:
            raise DeviceError(R.BAD_STATE, "only the running image can confirm itself")
        self.Partition.mark_app_valid_cancel_rollback()

    def mark_invalid(self, index, verify):
        """Nothing to write: see the module docstring (the reset rolls back)."""
        if index != self.running:
            raise DeviceError(R.BAD_STATE, "only the running image can give up")


def setup(hw, chip, trusted_keys, version, image_size, security_counter=0, limits=None,
          gateways=None, esp32=None, store_label=STORE_LABEL):  # fmt: skip
    """First start on a board: record the running image (its first
    ``image_size`` bytes: the .bin that was flashed) as the factory image, with
    a fresh device id and link key. Returns the Device."""
    from .. import port
    from ..device import Device, initial_state

    platform = Esp32Platform(esp32, store_label)
    slot = platform.slots[platform.running]
    h = port.sha256()
    for pos in range(0, image_size, 4096):
        h.update(slot.read(pos, min(4096, image_size - pos)))
    state = initial_state(hw, chip, trusted_keys, slot.label, h.digest(), image_size, version,
                          security_counter, platform.running, None, limits, gateways)  # fmt: skip
    platform.store.save(state)
    return Device(platform=platform)


def open_device(esp32=None, store_label=STORE_LABEL):
    from ..device import Device

    return Device(platform=Esp32Platform(esp32, store_label))
