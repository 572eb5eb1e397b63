"""Campaigns that prove the device side safe: power cuts, fuzzing, hostile artifacts.

    python -m otaferry.tools.bench.campaign [--cuts 500] [--frames 100000]
        [--records 100000] [--seed S] [--pair esp8266]
        [--only powercut,checkin,fuzz,secure,dos,hostile,boot]
        [--json]

Every campaign runs the real device code (device_fw: Device, Installer,
Receiver, SecureEndpoint) on a flash file, driven by the real host code
(protocol: artifacts, Sender, SecureChannel). Nothing is mocked; the only
instrumentation is :class:`FlashAudit`, which sees every program/erase the
device *attempts*.

**Power cuts.** ``Device(path, cut_at=N)`` raises ``PowerCut`` during its N-th
flash op and leaves the file as a killed process would. N is picked across
the whole op range of eight legs (every otadata op, then store and segment ops
evenly spread with seeded jitter; every op of the boot legs): an offline
install (``install_stream``) and a link install (Sender <-> Receiver in
memory) of the full and of the delta artifact of a real release pair, and
power_on when it confirms, rejects (failed self-test), aborts an unconfirmed
image, or finds the new image damaged. After each cut: the device reboots
(``power_on``) and must boot a slot whose bytes match its recorded SHA-256 and
are the expected image (a cut during an install: the old image, always, since
the otadata entry that selects the new one is the install's last write and
its CRC is written last; a cut during power_on: old or new, for confirm and
reject, old for abort and damaged image); then a rerun must finish the update
(offline: decoding only the segments not recorded as done; link: a fresh
Receiver on the reopened device and a fresh Sender, or the old Sender after
the device's unasked HELLO, resuming at the persisted segment and sending
nothing below it); the new image must then boot, confirm, be byte-identical
and have advanced the security counter.

**Check-in cuts** (``checkin.py``). An armed update, then power-on and the
check-in answer (or none: the deadline passes; or a failing self-test), cut at
every flash op; power returns and the same firmware behaves the same way again.
0 bricks, every rollback reported, and the image that never checked in is
never seen VALID.

**Legitimate flash writes** (checked by FlashAudit on every attempt, before
the flash model's own ``protect()`` guard): the passive slot, from its start
to the largest image any artifact signed by the trusted key asks for, rounded
up to a 4 KiB sector; the nvs partition (the device's state store); the
otadata partition (boot selection). Anything else is a stray write: the active
slot (also refused by ``Flash.protect()``, whose ``FlashError`` is counted
separately), the partition table, phy_init, the rest of the passive slot.
The active slot's bytes are also hashed before and after every run.

**Frame fuzzing.** Real sessions are recorded (several artifacts, mtus,
rejections). Each scenario starts a real session on a fresh device, stops it
at a random point, injects a batch of mutated frames to the Receiver (its
replies go to the real Sender) and to the Sender (bit flips, truncation,
extension, splicing, msgpack field swaps / replacements / type-code changes,
random msgpack arrays with valid type codes, replays of frames from other
sessions, reflections, random bytes, and whole re-split HELLO / OFFER blobs
with mutated fields), then lets the session run to its end on a fake clock and
checks: no exception escaped, every reply and every sender frame decodes on
the other side and fits the mtu, no stray flash write, the session ended with
Completed or a reason code (Rejected / Failed), otadata never selects an image
that is not a signed target, a Completed session really left the image armed,
and a fresh session afterwards completes the update.

**Secure fuzzing.** Handshake, then genuine sealed records both ways, with
mutated records interleaved (bit flips, truncation, counter rewrites,
splices, replays, reflections, records and MSG1s of other sessions, random
bytes, record-kind flips) fed to the device's ``SecureEndpoint.receive`` and
the host's ``SecureChannel.open``, and mutated MSG2s to the host's
``Initiator.receive``: no exception other than the project's, no body for any
input that is not a not-yet-delivered genuine record, and every genuine
record still opens (the channel is not knocked out of step).

**Hostile artifacts.** Each class over the offline path and over the link (the
device judging, and the Sender's precheck judging from the HELLO): the reason
code, the Sender's ``Rejected`` event carrying it, the device still booting its
image, the active slot untouched, no stray write, and for checks made before
any data not one flash byte changed outside the state store. Plus replays of
a complete earlier session, recorded from the gateway side.

**Damaged flash at boot** (``boot.py``). Each class leaves the flash as an
attack or a fault would (otadata with a sequence near 2^32, crafted state
records with good CRCs, a read error in the selected slot, otadata erased,
every store record corrupt, with or without otadata and a damaged image, a
factory app with otadata erased) and checks which image the next reset boots:
a verified one, the expected one, never one below the security counter.
"""

# (This docstring is also the --help text of ``otaferry bench campaign``.)
# Modules: common (release pairs, keys, device helpers), audit (FlashAudit, Guard),
# link (Sender and Receiver in memory), powercut + powercut_legs, fuzz +
# frame_mutator + mutations, secure, hostile + hostile_cases, report, cli.

from __future__ import annotations

# Protocol names the tests reach through this package, as they did through the module.
from ....protocol.session import Accepted, split_artifact
from .audit import FlashAudit, Guard
from .boot import BootCase, boot_campaign, boot_cases
from .checkin import CheckinCutCampaign, checkin_campaign, checkin_ok
from .cli import main
from .common import (
    NEW_COUNTER,
    PAIRS,
    RELEASES,
    SMALL_CSV,
    SMALL_FLASH,
    Firmware,
    build,
    firmware,
    make_device,
    read_firmware,
    slot_bytes,
)
from .frame_mutator import MUTATIONS
from .fuzz import FUZZ_ZERO, FrameFuzzCampaign, fuzz_campaign, fuzz_ok
from .hostile import HostileCampaign, hostile_campaign
from .hostile_cases import Hostile, hostile_cases
from .link import Link, make_sender, outcome
from .powercut import PowerCutCampaign, powercut_campaign, powercut_ok
from .powercut_legs import PHASES
from .report import print_report
from .secure import SecureFuzzCampaign, secure_campaign, secure_ok

__all__ = [
    "FUZZ_ZERO",
    "MUTATIONS",
    "NEW_COUNTER",
    "PAIRS",
    "PHASES",
    "RELEASES",
    "SMALL_CSV",
    "SMALL_FLASH",
    "Accepted",
    "BootCase",
    "CheckinCutCampaign",
    "Firmware",
    "FlashAudit",
    "FrameFuzzCampaign",
    "Guard",
    "Hostile",
    "HostileCampaign",
    "Link",
    "PowerCutCampaign",
    "SecureFuzzCampaign",
    "boot_campaign",
    "boot_cases",
    "build",
    "checkin_campaign",
    "checkin_ok",
    "firmware",
    "fuzz_campaign",
    "fuzz_ok",
    "hostile_campaign",
    "hostile_cases",
    "main",
    "make_device",
    "make_sender",
    "outcome",
    "powercut_campaign",
    "powercut_ok",
    "print_report",
    "read_firmware",
    "secure_campaign",
    "secure_ok",
    "slot_bytes",
    "split_artifact",
]
