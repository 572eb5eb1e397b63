"""Platforms the device runs on (see ``device_fw/platform.py``): ``sim`` (the
file-backed flash simulator) and ``esp32`` (MicroPython's esp32.Partition)."""
