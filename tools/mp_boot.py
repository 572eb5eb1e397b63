# mypy: ignore-errors
"""Run under ``micropython``: device_fw.mp_run with device_fw's code from one place.

    micropython mp_boot.py source|mpy FOLDER MP_RUN-ARGS...
    OTAFERRY_ROMFS=<placeholder> micropython mp_boot.py romfs IMAGE.romfs MP_RUN-ARGS...

``source`` and ``mpy``: FOLDER (holding device_fw as .py or as .mpy files) is
the only import path, so nothing else (the current directory) is picked up.

``romfs``: the unix port as a board with a ROMFS partition.
A board maps its ROMFS partition into the address space, outside the Python
heap, and imports .mpy from it in place. The unix port has neither a partition
nor (in this build) ``ffi`` to map a file, so the image goes into memory that
is outside the heap already: the value of the environment variable
``OTAFERRY_ROMFS``, the first in the environment, whose placeholder bytes the
parent made exactly as long as the image. Its address is the environment's
start (``/proc/self/stat``, field 50); the image is read into it once, then
mounted at /rom as the only import path, and ``device_fw.mp_run`` runs from
there. (Nothing reads that variable afterwards.)
"""

import sys

import uctypes
import vfs

NAME = b"OTAFERRY_ROMFS="


def env_start():
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[47])  # field 50; fields[0] is field 3 (state)


def mount(path):
    import os

    size = os.stat(path)[6]
    at = env_start()
    if uctypes.bytes_at(at, len(NAME)) != NAME:
        raise OSError("OTAFERRY_ROMFS is not the first environment variable")
    at += len(NAME)
    if uctypes.bytes_at(at + size, 1) != b"\0" or uctypes.bytes_at(at + size - 1, 1) == b"\0":
        raise OSError("OTAFERRY_ROMFS is not as long as the image")
    mem = uctypes.bytearray_at(at, size)
    with open(path, "rb") as f:
        if f.readinto(mem) != size:
            raise OSError("short read of the ROMFS image")
    vfs.mount(vfs.VfsRom(mem), "/rom")
    sys.path[:] = ["/rom"]


if sys.argv[1] == "romfs":
    mount(sys.argv[2])
else:
    sys.path[:] = [sys.argv[2]]
# imported by name: from the path just set (and not followed by mypy: it is
# the device's top-level package here, not otaferry.device_fw)
mp_run = __import__("device_fw.mp_run", None, None, ["main"])
sys.exit(mp_run.main(sys.argv[3:]))
