"""Hostile artifacts: each class refused with its reason, offline and over the link,
and replays of a complete earlier session."""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ....device_fw import frames as DF
from ....device_fw import receiver as RX
from ....device_fw.device import Device
from ....device_fw.flash import SECTOR_SIZE
from ....device_fw.installer import install_stream
from ....device_fw.reasons import DeviceError
from ....protocol.errors import OtaferryError, Reason
from ....protocol.frames import Query, Reject, decode_frame
from ....protocol.session import Completed, Rejected, Sender, split_artifact
from ....protocol.shared_artifact import Artifact
from .audit import FlashAudit
from .common import (
    RELEASES,
    SMALL_CSV,
    SMALL_FLASH,
    build,
    device_endpoint,
    firmware,
    gateway_initiator,
    make_device,
    make_small_device,
    read_firmware,
    reason_name,
    sha,
)
from .hostile_cases import Hostile, hostile_cases, raw_split
from .link import Link, make_sender, outcome
from .mutations import split


@dataclass(frozen=True)
class Recorded:
    """Session A of :meth:`HostileCampaign.replayed_session`, as a gateway recorded it."""

    art: bytes
    frames: list[bytes]  # host -> device bodies, plaintext
    records: list[bytes]  # the same session over the secure link: MSG1, then sealed
    device: Path  # flash after session B (counter 2)
    same_counter: Path  # flash right after session A, confirmed (counter 1)


def install_verdict(dev: Device, art: bytes) -> str:
    """``INSTALLED``, or the name of the reason the offline install was refused for."""
    try:
        install_stream(dev, io.BytesIO(art))
        return "INSTALLED"
    except DeviceError as exc:
        return reason_name(exc.reason)


def replay_frames(dev: Device, bodies: list[bytes]) -> tuple[list[Any], Counter[str]]:
    """``bodies`` to a fresh Receiver: its replies decoded, and how many of each kind."""
    rx = RX.Receiver(dev, mtu=256)
    frames = [decode_frame(r) for body in bodies for r in rx.receive_frame(body, 0.0)]
    return frames, Counter(type(f).__name__ for f in frames)


def first_reject(frames: list[Any]) -> str:
    rejects = [f for f in frames if isinstance(f, Reject)]
    return reason_name(rejects[0].reason) if rejects else "no REJECT"


class HostileCampaign:
    def __init__(self, work: Path, pair: str) -> None:
        self.work = work
        self.fw = firmware(pair)
        self.other = read_firmware(RELEASES[0])  # a running image no delta here was built for
        self.rows: list[dict[str, Any]] = []

    def _device(self, case: Hostile, name: str) -> Path:
        opts = dict(case.device)
        image = opts.pop("image", self.fw.old)
        if "csv" in opts:
            image = image[:0x8000]  # the tiny slots hold a 32 KiB stand-in image
        size = None if len(image) > 0x30000 or len(self.fw.new) > 0x30000 else SMALL_FLASH
        csv = opts.pop("csv", None) or (SMALL_CSV if size else None)
        return make_device(self.work / name, image, csv=csv, size=size, **opts)

    def check_device(self, path: Path, before: bytes, case: Hostile, row: dict[str, Any]) -> None:
        """After a refusal: the old image boots, the active slot is untouched, and a
        refusal before data changed nothing outside the state store."""
        problems: list[str] = row["problems"]
        after = path.read_bytes()
        with Device(str(path)) as dev:
            store = (dev.store.offset, dev.store.offset + dev.store.sectors * SECTOR_SIZE)
            active = dev.slots[0]
            if dev.otadata.boot_slot() != 0:
                problems.append("otadata no longer selects the running slot")
            a, b = active.offset, active.offset + active.size
            if after[a:b] != before[a:b]:
                problems.append("active slot bytes changed")
            if case.before_data and (
                after[: store[0]] != before[: store[0]] or after[store[1] :] != before[store[1] :]
            ):
                problems.append("flash changed outside the state store")
            boot = dev.power_on(self_test=True)
            if boot["label"] != "ota_0" or boot["version"] != "old":
                problems.append(f"booted {boot['label']} {boot['version']}")

    @contextmanager
    def _judged(self, case: Hostile, name: str, row: dict[str, Any]) -> Iterator[Device]:
        """A fresh device for ``case``, audited; afterwards its stray writes are
        counted into ``row`` and the device is checked (:meth:`check_device`)."""
        path = self._device(case, name)
        before = path.read_bytes()
        with Device(str(path)) as dev:
            audit = FlashAudit(dev)
            yield dev
            row["stray"] += len(audit.stray)
        self.check_device(path, before, case, row)

    def offline(self, case: Hostile, row: dict[str, Any]) -> None:
        with self._judged(case, "offline.bin", row) as dev:
            row["offline"] = install_verdict(dev, case.art)

    def over_link(self, case: Hostile, row: dict[str, Any], precheck: bool) -> None:
        """``precheck``: an honest gateway (reads the file with its checks, judges the
        HELLO); without: a gateway that passes everything on and the device judges."""
        col = "link precheck" if precheck else "link device"
        if precheck or not case.link:
            try:
                split_artifact(case.art)
            except OtaferryError as exc:  # the gateway refuses to send it at all
                row[col] = f"{reason_name(exc.reason)} (gateway)"
                return
        if not case.link:
            row[col] = "SENT"
            return
        with self._judged(case, "link.bin", row) as dev:
            manifest, signature, segments = raw_split(case.art)
            unchecked = Artifact.from_parts(manifest, signature, segments, check_segments=False)
            sender = Sender(unchecked, mtu=256, window=8, rto=0.5, precheck=precheck)
            link = Link(sender, RX.Receiver(dev, mtu=256)).run()
            rejected = link.of(Rejected)
            if rejected:
                r = rejected[0]
                row[col] = reason_name(r.reason) + (" (local)" if r.local else "")
                if not r.message:
                    row["problems"].append(f"{col}: Rejected without a message")
                if r.local != (precheck and case.visible):
                    row["problems"].append(f"{col}: local={r.local}")
            else:
                row[col] = outcome(link.events)
            if case.before_data and link.data_segments():
                row["problems"].append(f"{col}: DATA crossed before the refusal")

    def truncated_offer(self) -> dict[str, Any]:
        """Device side of 'truncated' over the link: an OFFER whose manifest is cut short."""
        row = self._row("truncated offer (device)", Reason.TRUNCATED)
        manifest, signature, _ = split_artifact(self.fw.full)
        blob = DF.encode_offer_blob(200, manifest[: len(manifest) // 2], signature)
        with self._judged(Hostile("", b"", Reason.OK), "offer.bin", row) as dev:
            rx = RX.Receiver(dev, mtu=256)
            replies = rx.receive_frame(Query(5).encode(), 0.0)
            parts = split(blob, 200)
            for i, part in enumerate(parts):
                replies += rx.receive_frame(DF.offer(i, len(parts), part, poll=True), 0.0)
            row["link device"] = first_reject([decode_frame(r) for r in replies])
        row["offline"] = "-"
        return self._finish(row, row["link device"] in ("TRUNCATED", "MALFORMED"))

    def replayed_session(self) -> list[dict[str, Any]]:
        """Record what a gateway sent in complete sessions; replay it later.

        The device runs release 1 (counter 0); session A installs release 2
        (counter 1), session B release 3 (counter 2); each is confirmed. Then
        the host->device frames of session A are replayed, in order, to a fresh
        Receiver (plaintext bench link), and the sealed records of A to a fresh
        SecureEndpoint (secure link).
        """
        session_a = self._record_sessions()
        return [
            self._replay_plaintext(session_a),
            self._replay_secure(session_a),
            self._replay_residual(session_a),
        ]

    def _record_sessions(self) -> Recorded:
        r1, r2, r3 = (read_firmware(p) for p in RELEASES)
        art_a = build(r2, counter=1, version="r2")
        art_b = build(r3, counter=2, version="r3")
        path = make_small_device(self.work / "replay.bin", r1, version="r1")
        with Device(str(path)) as dev:
            ep = device_endpoint()
            ini = gateway_initiator(sha(b"eA"))
            msg1 = ini.start()
            host = ini.receive(ep.receive(msg1)[0])
            link = Link(make_sender(art_a, mtu=256, window=8, session_id=0xA), None)
            rx = RX.Receiver(dev, mtu=256)
            records = [msg1]

            def secure_to_device(body: bytes) -> None:  # the same session, sealed
                record = host.seal(body)
                records.append(record)
                link.up.append(body)
                opened = ep.receive(record)[1]
                for reply in rx.receive_frame(opened, link.now):
                    link.to_sender(host.open(ep.seal(reply)) or b"")

            link.to_device = secure_to_device  # type: ignore[method-assign]
            link.run()
            recorded = list(link.up)
            ok_a = bool(link.of(Completed))
        with Device(str(path)) as dev:
            dev.power_on(self_test=True)
        same_counter = self.work / "replay-same.bin"
        shutil.copy(path, same_counter)
        with Device(str(path)) as dev:
            ok_b = bool(Link(make_sender(art_b, mtu=256, session_id=0xB),
                             RX.Receiver(dev, mtu=256)).run().of(Completed))  # fmt: skip
        with Device(str(path)) as dev:
            boot = dev.power_on(self_test=True)
            assert ok_a and ok_b and boot["version"] == "r3", (ok_a, ok_b, boot)
        return Recorded(art_a, recorded, records, path, same_counter)

    def _replay_plaintext(self, a: Recorded) -> dict[str, Any]:
        """The frames of session A to a device that moved on to counter 2."""
        row = self._row("replayed old session (plaintext link)", Reason.DOWNGRADE)
        before = a.device.read_bytes()
        with Device(str(a.device)) as dev:
            audit = FlashAudit(dev)
            frames, kinds = replay_frames(dev, a.frames)
            row["link device"] = first_reject(frames)
            row["replies"] = dict(kinds)
            if kinds.get("Done") or kinds.get("Accept"):
                row["problems"].append(f"replay was accepted: {dict(kinds)}")
            row["stray"] += len(audit.stray)
        if a.device.read_bytes() != before:
            row["problems"].append("flash changed")
        with Device(str(a.device)) as dev:
            if dev.power_on(self_test=True)["version"] != "r3":
                row["problems"].append("no longer runs release 3")
        work = self.work / "replay-offline.bin"
        shutil.copy(a.device, work)
        with Device(str(work)) as dev:
            row["offline"] = install_verdict(dev, a.art)
        row["stopped by"] = "Installer.begin: security counter 1 < device's 2"
        return self._finish(row, row["link device"] == "DOWNGRADE")

    def _replay_secure(self, a: Recorded) -> dict[str, Any]:
        """The sealed records of session A to a fresh endpoint."""
        row = self._row("replayed old session (secure link)", "dropped (AEAD)")
        ep = device_endpoint()
        bodies = sum(ep.receive(r)[1] is not None for r in a.records)
        row["link device"] = f"{bodies} bodies reached the receiver"
        row["device stats"] = {k: v for k, v in ep.stats.items() if v}
        row["stopped by"] = "AEAD: new keys each handshake (auth_failed / no channel)"
        return self._finish(row, bodies == 0)

    def _replay_residual(self, a: Recorded) -> dict[str, Any]:
        """The residual: the frames of session A while the device still runs what A
        installed (same counter)."""
        row = self._row("replayed session, same counter (residual)", "-")
        with Device(str(a.same_counter)) as dev:
            _frames, kinds = replay_frames(dev, a.frames)
            row["link device"] = "re-installed" if kinds.get("Done") else f"{dict(kinds)}"
            row["replies"] = dict(kinds)
            boot = dev.power_on(self_test=True)
            row["offline"] = f"then boots {boot['label']} {boot['version']}"
        row["stopped by"] = "nothing: same security counter (SPEC 9.8, vendor must raise it)"
        return self._finish(row, True)

    def _row(self, name: str, expected: Reason | str) -> dict[str, Any]:
        want = expected.name if isinstance(expected, Reason) else expected
        return {"case": name, "expected": want, "offline": "", "link device": "",
                "link precheck": "", "stray": 0, "problems": []}  # fmt: skip

    def _finish(self, row: dict[str, Any], ok: bool) -> dict[str, Any]:
        row["ok"] = ok and not row["problems"] and row["stray"] == 0
        self.rows.append(row)
        return row

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        for case in hostile_cases(self.fw, self.other):
            row = self._row(case.name, case.reason)
            self.offline(case, row)
            self.over_link(case, row, precheck=False)
            self.over_link(case, row, precheck=True)
            want = case.reason.name
            ok = row["offline"] == want and all(
                row[c].split(" ")[0] == want for c in ("link device", "link precheck")
            )
            self._finish(row, ok)
        self.truncated_offer()
        self.replayed_session()
        return {
            "cases": len(self.rows),
            "failed": sum(not r["ok"] for r in self.rows),
            "rows": self.rows,
            "seconds": round(time.monotonic() - t0, 1),
        }


def hostile_campaign(pair: str = "simba") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="otaferry-hostile-") as tmp:
        return HostileCampaign(Path(tmp), pair).run()
