"""A stand-in for MicroPython's ``esp32`` module, with exactly the API of
``esp32.Partition`` that ``device_fw/ports/esp32.py`` uses, over a bytearray
with NOR rules (program clears bits only, erase sets a 4 KiB block to 0xFF).
No ESP32 runs here, so this is the one fake in the device tests: the bootloader
behind it is ``device_fw.boot``'s model of ESP-IDF's (``reboot()``), and
``set_boot`` / ``mark_app_valid_cancel_rollback`` write otadata as ESP-IDF does.

API (MicroPython docs, esp32 module): Partition(id) with id RUNNING / BOOT or a
label; Partition.find(type=TYPE_APP, subtype=0xff, label=None); info() ->
(type, subtype, addr, size, label, encrypted); readblocks(block, buf, offset=0);
writeblocks(block, buf, offset=None) (no offset: erase the block first);
ioctl(cmd, arg) with 4 block count, 5 block size, 6 erase block;
set_boot(); get_next_update(); Partition.mark_app_valid_cancel_rollback().
"""

from otaferry.device_fw import boot as B
from otaferry.device_fw import otadata as OD
from otaferry.device_fw import partitions as P

BLOCK = 4096


class Board:
    """The chip: flash bytes, its partition table, the slot that runs."""

    def __init__(self, flash: bytes) -> None:
        self.flash = bytearray(flash)
        self.parts = P.from_binary(self.flash[P.TABLE_OFFSET : P.TABLE_OFFSET + P.TABLE_MAX_LEN])
        self.erases = 0
        self.programs = 0
        self.running = None
        self.reboot()

    # a Flash-like view for device_fw.boot / otadata (absolute addresses)
    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.flash[addr : addr + n])

    def write(self, addr: int, data: bytes) -> None:
        for i, b in enumerate(bytes(data)):
            if b & ~self.flash[addr + i] & 0xFF:
                raise OSError(5, "program needs 0->1 at 0x%x" % (addr + i))
        self.flash[addr : addr + len(data)] = bytes(data)
        self.programs += 1

    def erase_sector(self, addr: int) -> None:
        assert addr % BLOCK == 0
        self.flash[addr : addr + BLOCK] = b"\xff" * BLOCK
        self.erases += 1

    def reboot(self) -> None:
        """ESP-IDF's bootloader: PENDING_VERIFY -> ABORTED, NEW -> PENDING_VERIFY."""
        result = B.boot(self, self.parts)
        self.running = result.partition


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1
    board: Board  # set by module()

    def __init__(self, id_or_part):
        board = self.board
        if isinstance(id_or_part, P.Partition):
            self.p = id_or_part
        elif id_or_part == Partition.RUNNING:
            self.p = board.running
        elif id_or_part == Partition.BOOT:
            _, slots = P.ota_layout(board.parts)
            self.p = slots[B.next_boot(board, board.parts)]
        else:
            self.p = P.find(board.parts, id_or_part)
            if self.p is None:
                raise ValueError(f"no partition {id_or_part!r}")

    @classmethod
    def find(cls, type=TYPE_APP, subtype=0xFF, label=None):
        return [cls(p) for p in cls.board.parts
                if p.type == type and subtype in (0xFF, p.subtype)
                and (label is None or p.label == label)]  # fmt: skip

    def info(self):
        p = self.p
        return (p.type, p.subtype, p.offset, p.size, p.label, False)

    def _span(self, block: int, n: int, offset: int) -> int:
        addr = block * BLOCK + offset
        if addr < 0 or addr + n > self.p.size:
            raise OSError(22, f"outside partition {self.p.label}")
        return self.p.offset + addr

    def readblocks(self, block: int, buf: bytearray, offset: int = 0) -> None:
        addr = self._span(block, len(buf), offset)
        buf[:] = self.board.read(addr, len(buf))

    def writeblocks(self, block: int, buf: bytes, offset: int | None = None) -> None:
        if offset is None:  # MicroPython erases first when no offset is given
            for b in range(block, block + (len(buf) + BLOCK - 1) // BLOCK):
                self.ioctl(6, b)
            offset = 0
        self.board.write(self._span(block, len(buf), offset), buf)

    def ioctl(self, cmd: int, arg: int) -> int | None:
        if cmd == 4:
            return self.p.size // BLOCK
        if cmd == 5:
            return BLOCK
        if cmd == 6:
            self.board.erase_sector(self._span(arg, BLOCK, 0))
            return 0
        return None

    def set_boot(self) -> None:
        otadata, slots = P.ota_layout(self.board.parts)
        OD.OtaData(self.board, otadata, len(slots)).select(slots.index(self.p), OD.NEW)

    def get_next_update(self) -> "Partition":
        _, slots = P.ota_layout(self.board.parts)
        return type(self)(slots[(slots.index(self.p) + 1) % len(slots)])

    @classmethod
    def mark_app_valid_cancel_rollback(cls) -> None:
        board = cls.board
        _, slots = P.ota_layout(board.parts)
        B.confirm(board, board.parts, slots.index(board.running))


class Module:
    """``import esp32`` as the port sees it."""

    def __init__(self, board: Board) -> None:
        self.Partition = type("Partition", (Partition,), {"board": board})
