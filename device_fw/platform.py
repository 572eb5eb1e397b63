"""The platform seam: everything the Device, its Installer and its Receiver
reach of the hardware goes through one object with this shape.

A platform (``ports/sim.py``: the file-backed simulator; ``ports/esp32.py``:
MicroPython's ``esp32.Partition``) provides::

    slots                  [Slot]: the OTA app slots, slot.index == position
    running_index()        the slot that booted (the bootloader's choice)
    store                  the key-value store: load() -> dict | None, save(dict)
    flash_size             bytes of flash (info only)
    boot(verify)           power-on: a BootResult (slot, label, state, pending,
                           fallback, log); the simulator runs its bootloader model
                           here, a real board reports what its bootloader did
    next_boot(verify)      the slot the next reset boots, or None
    state_of(index)        the slot's otadata state (otadata.NEW ..) or None
    set_boot(index)        select the slot for the next boot (NEW)
    mark_valid(index)      the running image confirms itself
    mark_invalid(index, verify)  the running image gives up; the next reset
                           returns to the previous slot
    lock_active(index)     refuse every write to that slot from now on
    close()

Crypto (sha256, Ed25519, X25519, AES-CCM-8, randomness) comes from ``port``
and the codecs from ``codecs``: both pick what the interpreter has, so they are
the same module on every platform.

A :class:`Slot` is addressed from its own start; its owner maps that to flash.
Nothing above this seam knows a flash address or a sector size: erases go in
``slot.erase_size`` units, and a slot refuses any access outside itself and,
once locked (the running image), any write or erase at all.
"""

from .reasons import FlashError

# [a buffer of at least 4 KiB] that a port with one device per interpreter and a
# small heap lends for the sector-sized reads at power-on (the store's scan, the
# partition table), read into instead of allocated: device_fw/mp_run.py. Empty:
# each read allocates (several devices in one process must not share one).
SCRATCH = []


class Slot:
    """One OTA slot over a ``region`` (read / write / erase_sector by address).

    ``base``: the slot's first address in ``region``; ``offset``: its flash
    offset (what ``info`` reports; equal to ``base`` on the simulator).
    """

    def __init__(self, region, base, size, label, index, erase_size=4096, offset=None):
        self.region = region
        self.base = base
        self.size = size
        self.label = label
        self.index = index
        self.erase_size = erase_size
        self.offset = base if offset is None else offset
        self.locked = False

    def __repr__(self):
        return "Slot(%s, %d bytes)" % (self.label, self.size)

    def _range(self, what, offset, n):
        if offset < 0 or n < 0 or offset + n > self.size:
            raise FlashError(
                "%s of %s out of range: +0x%x+%d beyond 0x%x"
                % (what, self.label, offset, n, self.size),
                addr=offset, length=n,
            )  # fmt: skip

    def _writable(self, what, offset):
        if self.locked:
            raise FlashError(
                "%s at +0x%x: %s holds the running image" % (what, offset, self.label),
                addr=offset, region="active slot",
            )  # fmt: skip

    def read(self, offset, n):
        self._range("read", offset, n)
        return self.region.read(self.base + offset, n)

    def readinto(self, offset, buf):
        """Fill ``buf`` from ``offset``: no new object per read (a region
        without readinto is read and copied)."""
        n = len(buf)
        self._range("read", offset, n)
        if hasattr(self.region, "readinto"):
            self.region.readinto(self.base + offset, buf)
        else:
            buf[:] = self.region.read(self.base + offset, n)

    def write(self, offset, data):
        self._writable("program", offset)
        self._range("program", offset, len(data))
        self.region.write(self.base + offset, data)

    def erase(self, offset, length):
        """Erase ``length`` bytes from ``offset``, both in whole erase units."""
        self._writable("erase", offset)
        unit = self.erase_size
        if offset % unit or length % unit:
            raise FlashError(
                "erase +0x%x+0x%x of %s is not in %d-byte units"
                % (offset, length, self.label, unit),
                addr=offset, length=length,
            )  # fmt: skip
        self._range("erase", offset, length)
        for a in range(offset, offset + length, unit):
            self.region.erase_sector(self.base + a)

    def erase_for(self, offset, n):
        """Erase the units covering ``n`` bytes from ``offset`` (unit-aligned)."""
        unit = self.erase_size
        self.erase(offset, (n + unit - 1) // unit * unit)
