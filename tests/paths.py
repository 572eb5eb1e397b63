"""Where the tests find the real firmware images.

The images of ``../shared/firmware`` are copied into ``tests/firmware`` (with
their SOURCES.md and checksums) so a clean clone on a fresh CI machine has
them; ``OTAFERRY_FIRMWARE`` points elsewhere if wanted.
"""

import os
from pathlib import Path

FIRMWARE = Path(os.environ.get("OTAFERRY_FIRMWARE", Path(__file__).resolve().parent / "firmware"))
ESP8266_V194 = FIRMWARE / "micropython-esp8266" / "esp8266-20180511-v1.9.4.bin"
ESP8266_V110 = FIRMWARE / "micropython-esp8266" / "esp8266-20190125-v1.10.bin"
SIMBA_SHELL_OLD = FIRMWARE / "simba-shell-cortex-m4" / "old.bin"
SIMBA_SHELL_NEW = FIRMWARE / "simba-shell-cortex-m4" / "new.bin"
PROGRAMMER_080 = FIRMWARE / "programmer-cortex-m4" / "0.8.0.bin"
PROGRAMMER_090 = FIRMWARE / "programmer-cortex-m4" / "0.9.0.bin"
ESP32_BLINK = FIRMWARE / "esp32-idf-examples" / "blink-idf5.3.bin"
ESP32_HELLO = FIRMWARE / "esp32-idf-examples" / "hello_world-idf5.1.2.bin"
