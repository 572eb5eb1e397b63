"""The simulated device: one flash file holding partition table, otadata, the
device's state store and the OTA app slots.

Everything the device knows lives in flash (nothing in side files), so a
process killed at any moment restarts from exactly what a powered-off chip
would hold. The active slot is write-protected on the Flash object for the
whole life of a Device: any attempt to program or erase it raises FlashError.

State kept in the store (one msgpack map, rewritten whole on each change)::

    device_id  bytes(8)       hw, chip   str
    trusted    [raw Ed25519 public keys]   revoked  [key ids]
    counter    security counter (advances only when a new image confirms)
    slots      {label: {sha256, size, version, security_counter}} for slots
               holding a verified image
    running    index of the slot that booted last
    progress   {uid, slot, next, done} of the install in progress, or None
    limits     {max_window_log, max_segment_payload, ram_budget}
    link_key   the device's static X25519 private key (raw 32 bytes)
    gateways   raw X25519 public keys of the gateways it accepts
    require_secure  refuse plaintext link frames (default True)

Each app also keeps its image record and the counter floor in its own last
sector (bootrec.py): with no store record readable the device rebuilds what
its boot check needs from those (``recovered``), boots, and takes no update.
A table with a factory app (app, factory) gets it at index len(slots) of
``apps``: flashed there by ``create`` with otadata blank, as ESP-IDF does,
booted by the boot model's rules, never written.
"""

from . import bootrec, port
from . import otadata as OD
from . import partitions as P
from . import reasons as R
from .flash import SECTOR_SIZE, Flash
from .platform import SCRATCH, Slot
from .reasons import DeviceError, FlashError
from .store import Store

STATE_VERSION = 1
MAX_FAILURES = 4  # failed updates remembered (PREVIOUSLY_FAILED, and the next HELLO says why)
DEFAULT_LIMITS = {"max_window_log": 13, "max_segment_payload": 8192 + 64, "ram_budget": 65536}
HASH_CHUNK = 4096


def _hex(b):
    return "".join("%02x" % x for x in bytes(b))


U32 = 0xFFFFFFFF


def _bin(v, n):
    return isinstance(v, bytes) and len(v) == n


def _int(v, lo=0, hi=U32):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _str(v):
    return isinstance(v, str) and 0 < len(v) <= 64


def _check_state(s, labels):
    if not isinstance(s, dict) or s.get("v") != STATE_VERSION:
        return False
    if not (_bin(s["device_id"], 8) and _str(s["hw"]) and _str(s["chip"])):
        return False
    if not _int(s["counter"]) or not _int(s["running"], 0, len(labels) - 1):
        return False
    for key, size in (("trusted", 32), ("revoked", 8), ("gateways", 32)):
        items = s.get(key, [])
        if not isinstance(items, list) or not all(_bin(k, size) for k in items):
            return False
    slots = s["slots"]
    if not isinstance(slots, dict):
        return False
    for label, rec in slots.items():
        if label not in labels or not isinstance(rec, dict):
            return False
        if not (_bin(rec["sha256"], 32) and _int(rec["size"]) and _int(rec["security_counter"])
                and isinstance(rec["version"], str)):
            return False
    p = s.get("progress")
    if p is not None and not (
        isinstance(p, dict) and _bin(p["uid"], 16) and p["slot"] in labels
        and _int(p["next"], 0, 0x10000) and isinstance(p.get("done", False), bool)
    ):
        return False
    limits = s["limits"]
    if not isinstance(limits, dict) or not all(
        isinstance(k, str) and _int(v) for k, v in limits.items()
    ):
        return False
    for key in ("max_window_log", "max_segment_payload"):
        if not _int(limits[key]):
            return False
    key = s.get("link_key")
    if key is not None and not _bin(key, 32):
        return False
    r = s.get("resume")
    if r is not None and not (
        isinstance(r, dict) and _bin(r["uid"], 16) and _bin(r["secret"], 32)
        and _bin(r["gateway"], 32)
    ):
        return False
    failures = s.get("failures", [])
    if not isinstance(failures, list) or not all(
        isinstance(f, dict) and _bin(f["uid"], 16) and _int(f["reason"], 0, 255) for f in failures
    ):
        return False
    for rec in slots.values():
        if rec.get("uid") is not None and not _bin(rec["uid"], 16):
            return False
    return isinstance(s.get("require_secure", True), bool)


def initial_state(hw, chip, trusted_keys, label, sha256, size, version, security_counter=0,
                  running=0, device_id=None, limits=None, gateways=None):
    """The store's first record: the factory image ``label`` (``sha256``, ``size``)
    runs in slot ``running``; a fresh device id and link key unless given."""
    for key in trusted_keys:
        if len(key) != 32:
            raise DeviceError(R.BAD_KEY, "trusted keys must be raw 32-byte Ed25519 keys")
    return {
        "v": STATE_VERSION,
        "device_id": device_id or port.random_bytes(8),
        "hw": hw,
        "chip": chip,
        "trusted": [bytes(k) for k in trusted_keys],
        "revoked": [],
        "counter": security_counter,
        "slots": {
            label: {
                "sha256": bytes(sha256),
                "size": size,
                "version": version,
                "security_counter": security_counter,
            }
        },
        "running": running,
        "progress": None,
        "limits": dict(limits or DEFAULT_LIMITS),
        "link_key": port.random_bytes(32),
        "gateways": [bytes(k) for k in gateways or ()],
        "require_secure": True,
    }


class Device:
    def __init__(self, path=None, cut_at=None, read_only=False, flash=None, platform=None):
        """Open the device in flash file ``path``; it holds the file's lock until
        closed (``flash.FlashBusy`` if another process holds it). ``read_only``:
        look without the lock (``info``); nothing may be written. ``flash``: an
        open Flash to take over (``create`` passes its own, never unlocked).
        ``platform``: another platform than the simulator's (``ports/esp32``);
        ``path`` is then unused."""
        if platform is None:
            from .ports.sim import SimPlatform

            platform = SimPlatform(path, cut_at, read_only, flash)
        self.platform = platform
        # The simulator's own parts, for its tools and tests (None elsewhere).
        self.flash = getattr(platform, "flash", None)
        self.parts = getattr(platform, "parts", None)
        self.otadata = getattr(platform, "otadata", None)
        self.slots = platform.slots  # the OTA slots: updates go there, nowhere else
        self.factory = getattr(platform, "factory", None)
        # Every app that can boot, as indexed by state["running"] and the boot
        # model: the OTA slots, then the factory app (index len(slots)) if any.
        self.apps = self.slots + ([self.factory] if self.factory is not None else [])
        self.store = platform.store
        self.store.valid = self._valid_state
        self.checkin_nonce = None  # this boot's, while the running image awaits its check-in
        # True when no store record was readable and the state was rebuilt from
        # the apps' boot records (bootrec.py): it boots, it takes no update.
        self.recovered = False
        try:
            self.state = self.store.load()
            if self.state is None:
                self.state = self._recover()
            if self.state is None or self.state.get("v") != STATE_VERSION:
                raise DeviceError(R.BAD_STATE, "flash holds no device state (run 'flash init')")
        except BaseException:
            platform.close()
            raise
        booted = getattr(platform, "running", None)
        if booted is not None and booted != self.state["running"]:
            # A real bootloader has chosen already (ports/esp32): that slot is
            # the active one from the first instant (power_on records it).
            self.state = dict(self.state, running=booted)
        self._protect_active()

    def _recover(self):
        """A state rebuilt from the apps' boot records when no store record is
        readable, or None if no app has one (a blank device). It holds what
        the boot check needs (each slot's image record, the security counter
        bootrec.recovered_counter gives) and no identity: no trusted key, no
        link key. Nothing of it is saved (``_save`` keeps it in RAM): the
        store stays as it is until the device is provisioned again."""
        records, images, valid = [], {}, []
        for i, app in enumerate(self.apps):
            got = bootrec.read(app)
            if got is None:
                continue
            records.append(got)
            if got[1] is not None:
                images[app.label] = got[1]
                if i < len(self.slots) and self.platform.state_of(i) == OD.VALID:
                    valid.append(got[1])
        if not records:
            return None
        self.recovered = True
        state = initial_state("unknown", "unknown", [], self.apps[0].label, bytes(32), 0, "",
                              device_id=bytes(8))  # fmt: skip
        state.update(counter=bootrec.recovered_counter(records, valid), slots=images,
                     link_key=None)  # fmt: skip
        nxt = self.platform.next_boot(lambda i: self._image_ok(state, i))
        state["running"] = 0 if nxt is None else nxt
        return state

    def _valid_state(self, s):
        """Is a decoded state record one this device can run on? A record with a
        good CRC can still be crafted (or written by a buggy build): one that
        fails here is treated as absent and the store falls back to the record
        before it, so no field read later can crash boot or info."""
        try:
            return _check_state(s, [p.label for p in self.apps])
        except (KeyError, TypeError, AttributeError, ValueError, IndexError):
            return False

    # ------------------------------------------------------------ creation

    @classmethod
    def create(
        cls,
        path,
        hw,
        chip,
        trusted_keys,
        image,
        version,
        security_counter=0,
        partitions_csv=None,
        size=P.DEFAULT_FLASH_SIZE,
        device_id=None,
        limits=None,
        gateways=None,
    ):
        """Factory-flash a device: table, state and ``image``, as ESP-IDF's flashing
        does: into the factory app with otadata left blank if the table has one
        (the bootloader boots it), else into ota_0, selected VALID."""
        from . import partition_csv as PC  # factory flashing only: a device never reads a CSV

        parts = PC.parse_csv(partitions_csv or PC.DEFAULT_CSV, flash_size=size)
        _otadata, slots = P.ota_layout(parts)
        factory = P.factory_of(parts)
        first = factory if factory is not None else slots[0]
        app = Slot(None, first.offset, first.size, first.label, 0, SECTOR_SIZE)
        if len(image) > bootrec.capacity(app):
            raise DeviceError(
                R.TOO_LARGE, "image of %d bytes does not fit %s (%d bytes for an image)"
                % (len(image), first.label, bootrec.capacity(app))
            )
        for key in trusted_keys:
            if len(key) != 32:
                raise DeviceError(R.BAD_KEY, "trusted keys must be raw 32-byte Ed25519 keys")
        flash = Flash.create(path, size)  # locked before it clears the file
        try:
            PC.write_table(flash, parts)
            flash.erase_range(first.offset, (len(image) + 4095) // 4096 * 4096)
            for pos in range(0, len(image), HASH_CHUNK):
                flash.write(first.offset + pos, image[pos : pos + HASH_CHUNK])
            running = len(slots)  # the factory app's index
            if factory is None:
                running = 0
                OD.OtaData(flash, _otadata, len(slots)).select(0, OD.VALID)
            digest = port.sha256(image).digest()
            state = initial_state(hw, chip, trusted_keys, first.label, digest, len(image),
                                  version, security_counter, running, device_id, limits,
                                  gateways)  # fmt: skip
            nvs = [p for p in parts if p.type == P.TYPE_DATA and p.subtype == P.DATA_NVS]
            if not nvs:
                raise DeviceError(R.PARTITION_TABLE, "no nvs partition for the device state")
            app.region = flash
            bootrec.write(app, security_counter, state["slots"][first.label])
            if security_counter:  # the other slots carry the floor from the start
                for p in slots:
                    if p is not first:
                        bootrec.write(Slot(flash, p.offset, p.size, p.label, 0, SECTOR_SIZE),
                                      security_counter)
            Store.on_partition(flash, nvs[0]).save(state)
        except BaseException:
            flash.close()
            raise
        # The device starts counting flash ops at power-on, as if opened afresh.
        flash.ops = flash.programs = flash.erases = flash.bytes_programmed = 0
        return cls(path, flash=flash)

    def close(self):
        self.platform.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ state

    def _save(self, **changes):
        state = dict(self.state)
        state.update(changes)
        if not self.recovered:
            self.store.save(state)
        self.state = state

    def _keep_floor(self, counter, running):
        """The passive slot's boot record (``running`` being the app that runs)
        carries the security counter (bootrec.py): rewritten when the counter has
        moved past it, checked at every boot. A slot that cannot be written (a
        flash error: a truncated file) keeps its old record: the store and the
        confirmed image's VALID entry still hold the counter."""
        slot = self.passive_slot(running)
        if slot.index == running:  # never: an OTA table has two slots or more
            raise DeviceError(R.BAD_STATE, "no passive slot to hold the counter floor")
        try:
            bootrec.raise_floor(slot, counter)
        except FlashError as exc:
            if "region" in exc.fields:  # a protected region: a bug, never swallowed
                raise

    def _raise_counter(self, counter, **changes):
        """Save the security counter ``counter`` (and ``changes``) once the image
        that carries it is VALID in otadata: the passive slot's floor first, then
        the store, so a cut between the two leaves the floor, never the store
        alone, ahead (the next boot's catch-up raises the store from the VALID
        entry), and no cut leaves only the store knowing the new counter. The
        slot that now runs is locked first: its record is never the one written."""
        running = changes.get("running", self.state["running"])
        self.platform.lock_active(running)
        self._keep_floor(counter, running)
        self._save(counter=counter, **changes)

    def _protect_active(self):
        self.platform.lock_active(self.state["running"])

    def identity(self):
        s = self.state
        return {
            "hw": s["hw"],
            "chip": s["chip"],
            "security_counter": s["counter"],
            "device_id": s["device_id"],
        }

    def limits(self):
        return self.state["limits"]

    # ------------------------------------------------------------ link identity

    def link_key(self):
        """The device's static X25519 private key, or None if never provisioned."""
        return self.state.get("link_key")

    def link_public(self):
        key = self.link_key()
        return None if key is None else port.x25519_public(key)

    def gateways(self):
        return [bytes(k) for k in self.state.get("gateways", [])]

    def require_secure(self):
        return self.state.get("require_secure", True)

    def provision(self, gateways=None, new_key=False, require_secure=None, revoke=None):
        """Set the link identity: a new static key if asked (or none yet), the
        accepted gateway keys (replacing the list) and the plaintext policy;
        ``revoke``: signing key ids (8 bytes) whose artifacts are refused from
        now on (REVOKED_KEY), even if the key is still in the trusted list."""
        changes = {}
        if revoke:
            revoked = [bytes(k) for k in self.state.get("revoked", [])]
            for key_id in revoke:
                if len(key_id) != 8:
                    raise DeviceError(R.BAD_KEY, "a key id is 8 bytes (16 hex digits)")
                if bytes(key_id) not in revoked:
                    revoked.append(bytes(key_id))
            changes["revoked"] = revoked
        if new_key or self.link_key() is None:
            changes["link_key"] = port.random_bytes(32)
        if gateways is not None:
            for key in gateways:
                if len(key) != 32:
                    raise DeviceError(R.BAD_KEY, "gateway keys must be raw 32-byte X25519 keys")
            changes["gateways"] = [bytes(k) for k in gateways]
        if require_secure is not None:
            changes["require_secure"] = bool(require_secure)
        if changes:
            self._save(**changes)
        return self.link_public()

    def trusted_key(self, key_id):
        for raw in self.state["trusted"]:
            if port.sha256(raw).digest()[:8] == bytes(key_id) and not self.is_revoked(key_id):
                return raw
        return None

    def is_revoked(self, key_id):
        return bytes(key_id) in [bytes(k) for k in self.state.get("revoked", [])]

    def active_slot(self):
        return self.apps[self.state["running"]]

    def passive_slot(self, running=None):
        """The slot an update goes to: the OTA slot after the running one, ota_0
        when the factory app runs (esp_ota_get_next_update_partition)."""
        if running is None:
            running = self.state["running"]
        if running == len(self.slots):
            return self.slots[0]
        return self.slots[(running + 1) % len(self.slots)]

    def running_pending(self):
        """True while the running image is PENDING_VERIFY (booted, not confirmed)."""
        return self.platform.state_of(self.state["running"]) == OD.PENDING_VERIFY

    def running_image(self):
        return self.state["slots"].get(self.active_slot().label)

    def progress(self):
        return self.state.get("progress")

    def save_progress(self, progress):
        """Persist install progress. Starting a new update (next == 0) also
        forgets what the passive slot held, in the same atomic record, so the
        bootloader never trusts a slot that is being rewritten."""
        slots = self.state["slots"]
        if progress is not None and progress["next"] == 0 and progress["slot"] in slots:
            slots = dict(slots)
            del slots[progress["slot"]]
        self._save(progress=progress, slots=slots)

    def commit_update(self, slot, record):
        """The passive slot holds a verified image: record it, then select it (NEW)."""
        slots = dict(self.state["slots"])
        slots[slot.label] = record
        progress = self.state.get("progress")
        if progress is not None:
            progress = dict(progress, done=True)
        uid = record.get("uid")
        failures = [f for f in self.failures() if uid is None or bytes(f["uid"]) != bytes(uid)]
        # The boot record first: until the store records the slot it is not
        # booted, and without the store the record alone lets it boot.
        bootrec.write(slot, self.state["counter"], record)
        self._save(slots=slots, progress=progress, failures=failures)
        self.platform.set_boot(slot.index)

    # ------------------------------------------------------------ boot

    def slot_image_ok(self, index):
        """The bootloader's image check: the slot matches its recorded SHA-256,
        can be read whole, and its security counter is not below the device's
        (an image that lost its otadata entry must not boot below it). A read
        error is a failed check, not a stop: the next candidate is tried, as
        ESP-IDF's bootloader falls back when an image does not load."""
        return self._image_ok(self.state, index)

    def _image_ok(self, state, index):
        slot = self.apps[index]
        rec = state["slots"].get(slot.label)
        if rec is None or rec["security_counter"] < state["counter"]:
            return False
        h = port.sha256()
        size = rec["size"]
        if size > slot.size:
            return False
        # one buffer read into (a lent one on a small heap: 4 KB blocks are what
        # a split MicroPython heap lacks first, at the boot after an install)
        buf = SCRATCH[0] if SCRATCH and len(SCRATCH[0]) >= HASH_CHUNK else bytearray(HASH_CHUNK)
        view = memoryview(buf)
        try:
            for pos in range(0, size, HASH_CHUNK):
                n = min(HASH_CHUNK, size - pos)
                slot.readinto(pos, view[:n])
                h.update(view[:n])
        except DeviceError:
            return False
        return h.digest() == bytes(rec["sha256"])

    # ------------------------------------------------------------ check-in

    def failures(self):
        """Updates that rolled back on this device, oldest first: [{uid, reason}]."""
        return list(self.state.get("failures", []))

    def record_failure(self, uid, reason):
        """Remember that update ``uid`` failed (kept: the last MAX_FAILURES)."""
        if uid is None:
            return
        kept = [f for f in self.failures() if bytes(f["uid"]) != bytes(uid)]
        kept.append({"uid": bytes(uid), "reason": reason})
        self._save(failures=kept[-MAX_FAILURES:])

    def pending_checkin(self):
        """While the running image awaits its check-in: {uid, sha256, nonce}, else None."""
        if self.checkin_nonce is None or not self.running_pending():
            return None
        rec = self.running_image() or {}
        if rec.get("uid") is None:
            return None
        return {"uid": bytes(rec["uid"]), "sha256": bytes(rec["sha256"]),
                "nonce": self.checkin_nonce}  # fmt: skip

    def save_resume(self, uid, secret, gateway):
        """Keep the secure channel's resumption secret for the reboot into update
        ``uid`` (SPEC 9.11): one record, overwritten by the next, erased when used."""
        self._save(resume={"uid": bytes(uid), "secret": bytes(secret),
                           "gateway": bytes(gateway)})  # fmt: skip

    def take_resume(self):
        """The resumption record for the running pending image, erased from the store
        first (single use: a reset after this falls back to a full handshake); None
        when there is none or it belongs to another update."""
        r = self.state.get("resume")
        if r is None:
            return None
        self._save(resume=None)
        pending = self.pending_checkin()
        if pending is None or bytes(r["uid"]) != pending["uid"]:
            return None
        return r

    def confirm_running(self):
        """The check-in succeeded: mark the running image VALID and raise the
        security counter to its own (esp_ota_mark_app_valid_cancel_rollback)."""
        running = self.state["running"]
        rec = self.running_image() or {}
        self.platform.mark_valid(running)
        counter = max(self.state["counter"], rec.get("security_counter", 0))
        self._raise_counter(counter, progress=None)
        self.checkin_nonce = None
        return rec.get("uid")

    def abandon_running(self, reason):
        """The running (pending) image gives up (self-test failed, no check-in in
        time): record why, mark it INVALID; the caller resets next."""
        rec = self.running_image() or {}
        self.record_failure(rec.get("uid"), reason)
        self.platform.mark_invalid(self.state["running"], self.slot_image_ok)
        self.checkin_nonce = None

    # ------------------------------------------------------------ boot

    def power_on(self, self_test=True, checkin=False):
        """Reset: the bootloader picks a slot; the app self-tests and confirms.

        ``self_test``: True passes and confirms, False fails (the app marks
        itself invalid and resets, so the bootloader returns to the previous
        slot), None means the app dies before reaching a verdict (the image
        stays PENDING_VERIFY; the next power_on rolls back). With ``checkin``
        a passed self-test does not confirm: the image stays PENDING_VERIFY
        with a fresh check-in nonce until its update server answers
        (:meth:`confirm_running`) or it gives up (:meth:`abandon_running`).
        A boot that returns from an unconfirmed image records that update as
        failed (ROLLED_BACK, unless the image said why before it reset).
        """
        log = []
        self.checkin_nonce = None
        result = self.platform.boot(self.slot_image_ok)
        log.extend(result.log)
        rolled_back = result.fallback or any("ABORTED" in line for line in result.log)
        self._note_rollback(result.slot)
        if result.pending:
            rec = self.state["slots"].get(result.label) or {}
            version = rec.get("version")
            if self_test is True and checkin:
                self.checkin_nonce = port.random_bytes(8)
                self._save(running=result.slot)
                log.append(
                    "app %s: self-test passed; awaiting check-in with the update server "
                    "(PENDING_VERIFY)" % version
                )
            elif self_test is True:
                self.platform.mark_valid(result.slot)
                counter = max(self.state["counter"], rec.get("security_counter", 0))
                self._raise_counter(counter, running=result.slot, progress=None)
                log.append(
                    "app %s: self-test passed, image confirmed (VALID), security counter %d"
                    % (version, counter)
                )
            elif self_test is False:
                self.record_failure(rec.get("uid"), R.SELF_TEST_FAILED)
                self.platform.mark_invalid(result.slot, self.slot_image_ok)
                log.append("app %s: self-test FAILED, marked INVALID, resetting" % version)
                result = self.platform.boot(self.slot_image_ok)
                log.extend(result.log)
                rolled_back = True
                self._save(running=result.slot)
            else:
                log.append("app %s: stopped before confirming (still PENDING_VERIFY)" % version)
                self._save(running=result.slot)
        else:
            # A VALID image whose counter the store does not have yet: power
            # failed between confirming and saving the counter. Catch up now,
            # as ESP-IDF's bootloader does for secure_version, or a downgrade
            # to the old counter would pass.
            rec = self.state["slots"].get(result.label) or {}
            counter = max(self.state["counter"], rec.get("security_counter", 0))
            if result.state == OD.VALID and counter != self.state["counter"]:
                self._raise_counter(counter, running=result.slot)
                log.append("security counter raised to %d (confirmed image)" % counter)
            elif result.slot != self.state["running"]:
                self._save(running=result.slot)
        self._protect_active()
        self._keep_floor(self.state["counter"], self.state["running"])
        slot = self.apps[result.slot]
        rec = self.state["slots"].get(slot.label) or {}
        return {
            "slot": result.slot,
            "label": slot.label,
            "state": self._state_text(result.slot),
            "version": rec.get("version"),
            "rolled_back": rolled_back,
            "log": log,
        }

    def _note_rollback(self, booted):
        """An installed update (progress done) whose slot this boot did not take has
        not run to its check-in: its entry was ABORTED, its image check failed, or
        a power cut tore the otadata write that selected it. Record it
        (ROLLED_BACK, unless the image said why before it reset), so its sender
        hears why. The progress stays: a rerun of the same update re-verifies the
        slot and re-arms it (ROLLED_BACK never blocks, and re-arming clears it)."""
        prog = self.state.get("progress") or {}
        uid = prog.get("uid")
        labels = [slot.label for slot in self.slots]
        if uid is None or not prog.get("done") or prog.get("slot") not in labels:
            return
        if labels.index(prog["slot"]) == booted:
            return
        if not any(bytes(f["uid"]) == bytes(uid) for f in self.failures()):
            self.record_failure(uid, R.ROLLED_BACK)

    # ------------------------------------------------------------ info

    def _state_text(self, index):
        """The app's otadata state by name; FACTORY for the factory app (it has no
        entry), EMPTY for an OTA slot no entry names."""
        if index == len(self.slots):
            return "FACTORY"
        state = self.platform.state_of(index)
        return "EMPTY" if state is None else OD.state_name(state)

    def info(self):
        """What ``device info --json`` prints. ``slots`` lists every app as
        ``apps`` does (a factory app last, state FACTORY), so ``running_slot``
        and ``next_boot_slot`` index it; ``*_label`` name the app;
        ``state_lost``: booted from boot records, no store record readable."""
        s = self.state
        slots = []
        for i, p in enumerate(self.apps):
            rec = s["slots"].get(p.label)
            slots.append(
                {
                    "label": p.label,
                    "offset": p.offset,
                    "size": p.size,
                    "state": self._state_text(i),
                    "sha256": _hex(rec["sha256"]) if rec else None,
                    "version": rec["version"] if rec else None,
                    "image_size": rec["size"] if rec else None,
                    "security_counter": rec["security_counter"] if rec else None,
                }
            )
        nxt = self.platform.next_boot(self.slot_image_ok)
        progress = s.get("progress")
        install = None
        if progress and not progress.get("done"):
            install = {"slot": progress["slot"], "next": progress["next"]}
        return {
            "device_id": _hex(s["device_id"]),
            "hw": s["hw"],
            "chip": s["chip"],
            "flash_size": self.platform.flash_size,
            "running_slot": s["running"],
            "running_label": self.active_slot().label,
            "next_boot_slot": nxt,
            "next_boot_label": None if nxt is None else self.apps[nxt].label,
            "security_counter": s["counter"],
            "trusted_key_ids": [_hex(port.sha256(k).digest()[:8]) for k in s["trusted"]],
            "revoked_key_ids": [_hex(k) for k in s.get("revoked", [])],
            "link_public_key": _hex(self.link_public()) if self.link_key() else None,
            "state_lost": self.recovered,
            "gateways": [_hex(k) for k in self.gateways()],
            "require_secure": self.require_secure(),
            "slots": slots,
            "install": install,
        }
