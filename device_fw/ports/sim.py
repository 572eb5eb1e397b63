"""The simulator's platform: one flash file (``flash.Flash``) holding an
ESP-IDF partition table, otadata, the device store in the nvs partition, the
OTA slots and, if the table has one, a factory app; the bootloader is
``boot.py``'s model of ESP-IDF's.

The active slot is write-protected twice: its Slot is locked, and the Flash
itself refuses any op touching it (``Flash.protect``), so a bug that went
round the Slot would still be caught.
"""

from .. import boot as B
from .. import otadata as OD
from .. import partitions as P
from .. import reasons as R
from ..flash import SECTOR_SIZE, Flash
from ..platform import Slot
from ..reasons import DeviceError
from ..store import Store


class SimPlatform:
    def __init__(self, path=None, cut_at=None, read_only=False, flash=None, valid=None):
        self.flash = flash if flash is not None else Flash(path, cut_at=cut_at, read_only=read_only)
        try:
            self.parts = P.read_table(self.flash)
            self.otadata_part, parts = P.ota_layout(self.parts)
            nvs = None
            for p in self.parts:
                if p.type == P.TYPE_DATA and p.subtype == P.DATA_NVS:
                    nvs = p
                    break
            if nvs is None:
                raise DeviceError(R.PARTITION_TABLE, "no nvs partition for the device state")
            self.slots = [
                Slot(self.flash, p.offset, p.size, p.label, i, SECTOR_SIZE)
                for i, p in enumerate(parts)
            ]
            # The factory app, if the table has one: index n, after the OTA
            # slots (boot.app_partitions). Never written, so locked for good.
            self.factory = None
            factory = P.factory_of(self.parts)
            if factory is not None:
                self.factory = Slot(self.flash, factory.offset, factory.size, factory.label,
                                    len(self.slots), SECTOR_SIZE)
                self.factory.locked = True
                self.flash.protect(factory.offset, factory.size, "factory app")
            self.store = Store.on_partition(self.flash, nvs, valid=valid)
            self.otadata = OD.OtaData(self.flash, self.otadata_part, len(self.slots))
        except BaseException:
            self.flash.close()
            raise

    @property
    def flash_size(self):
        return self.flash.size

    def close(self):
        self.flash.close()

    def lock_active(self, index):
        for slot in self.slots:
            slot.locked = slot.index == index
        self.flash.unprotect("active slot")
        active = self.factory if index == len(self.slots) else self.slots[index]
        self.flash.protect(active.base, active.size, "active slot")

    def boot(self, verify):
        return B.boot(self.flash, self.parts, verify=verify)

    def next_boot(self, verify):
        return B.next_boot(self.flash, self.parts, verify=verify)

    def state_of(self, index):
        return self.otadata.state_of(index)

    def set_boot(self, index):
        B.set_boot(self.flash, self.parts, index)

    def mark_valid(self, index):
        B.confirm(self.flash, self.parts, index)

    def mark_invalid(self, index, verify):
        B.mark_invalid(self.flash, self.parts, index, verify=verify)
