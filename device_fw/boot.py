"""The bootloader and the running app's otadata calls, modelled on ESP-IDF
with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE, with or without a factory app.

Apps are numbered as ``app_partitions`` lists them: the OTA slots 0..n-1, then
the factory app (index n; ESP-IDF's FACTORY_INDEX is -1). The factory app has
no otadata entry, is never an update target and is never written.

``boot`` follows bootloader_utility_get_selected_boot_partition():

1. every PENDING_VERIFY entry is marked ABORTED: the image was booted before
   and never confirmed, whatever the reason for this reset;
2. the active entry (valid, highest seq) selects slot ``(seq - 1) % n``;
   with none, the factory app is tried if the table has one ("Defaulting to
   factory image"), else ota_0, and if both entries were blank (or failed
   their CRC) the OTA slot that boots is written back as seq = slot + 1,
   VALID, in sector 0 (ESP-IDF's set_actual_ota_seq; nothing is written for
   the factory app);
3. a NEW entry becomes PENDING_VERIFY before its image starts.

One deliberate difference: ``verify(slot)`` (e.g. the image's SHA-256 against
what the installer recorded) is consulted before a slot boots. When the
selected image fails it, its entry is marked ABORTED at once and the previous
valid slot boots (ESP-IDF leaves the entry and aborts it one boot later,
which lets an app running the fallback image "confirm" an image that never
ran). Fallback order: the other otadata entry's slot, then ESP-IDF's order
(bootloader_utility_load_boot_image: lower slots downwards, the factory app,
then higher ones; from the factory app: ota_0 upwards).
The device's ``verify`` (Device.slot_image_ok) fails an image that cannot be
read whole (a read error falls back, it does not stop the boot) and one whose
security counter is below the device's, so lost otadata never boots an image
the counter has moved past. ``next_boot`` is ``boot`` without its writes.

Every write here goes through OtaData, whose power-cut argument is in
otadata.py: after a cut at any op, the next ``boot`` picks an image that
was booted successfully before or the new one.
"""

from . import otadata as od
from .partitions import factory_of, ota_layout
from .reasons import BAD_STATE, DeviceError


class BootResult:
    def __init__(self, slot, partition, entry, log, fallback):
        self.slot = slot  # app index that boots: an OTA slot, or factory_index(parts)
        self.partition = partition
        self.label = partition.label
        self.state = None if entry is None else entry.state  # its otadata state, if any
        self.seq = None if entry is None else entry.seq
        self.log = log  # lines describing what the bootloader did
        self.fallback = fallback  # True when this is not the slot otadata selected

    @property
    def pending(self):
        return self.state == od.PENDING_VERIFY

    def __repr__(self):
        state = "-" if self.state is None else od.state_name(self.state)
        return "BootResult(%s, state=%s, seq=%r, fallback=%r)" % (
            self.label, state, self.seq, self.fallback)


def open_otadata(flash, parts):
    """(OtaData, [ota slot partitions]) for a table; NO_OTA_SLOT if it has none."""
    otadata, slots = ota_layout(parts)
    return od.OtaData(flash, otadata, len(slots)), slots


def app_partitions(parts):
    """[ota_0, .., ota_{n-1}] and the factory app after them if the table has
    one: index n is the factory (ESP-IDF's FACTORY_INDEX, -1 there; n here so
    that a list of apps indexes it)."""
    apps = list(ota_layout(parts)[1])
    factory = factory_of(parts)
    if factory is not None:
        apps.append(factory)
    return apps


def factory_index(parts):
    """The factory app's index (the number of OTA slots), or None without one."""
    return len(ota_layout(parts)[1]) if factory_of(parts) is not None else None


def _candidates(chosen, other, n, factory):
    """The order images are tried (bootloader_utility_load_boot_image): the
    chosen one, then (ours) the other otadata entry's slot, then the lower
    OTA slots downwards and the factory app, then the higher OTA slots. With
    the factory chosen (nothing valid in otadata): factory, then ota_0 up."""
    order = [chosen]
    if other is not None:
        order.append(other)
    if factory and chosen == n:
        order += list(range(n))
    else:
        order += list(range(chosen - 1, -1, -1))
        if factory:
            order.append(n)
        order += list(range(chosen + 1, n))
    out = []
    for s in order:
        if s not in out:
            out.append(s)
    return out


def _choice(entries, n, factory):
    """(active entry or None, chosen app index, the other valid entry's slot or None)."""
    act = None
    for e in entries:
        if e.valid and (act is None or e.seq > act.seq):
            act = e
    if act is None:
        return None, n if factory else 0, None
    prev = entries[1 - act.index]
    return act, act.slot(n), prev.slot(n) if prev.valid else None


def boot(flash, parts, verify=None):
    o, slots = open_otadata(flash, parts)
    apps = app_partitions(parts)
    n = len(slots)
    factory = len(apps) > n
    log = []
    entries = o.read()
    initial = not (entries[0].crc_ok or entries[1].crc_ok)
    for e in entries:
        if e.crc_ok and e.state == od.PENDING_VERIFY:
            log.append("otadata[%d] seq %d (ota_%d) was booted and never confirmed: ABORTED"
                       % (e.index, e.seq, e.slot(n)))
            o.set_state(od.ABORTED, e)
            e.state = od.ABORTED
    act, chosen, other = _choice(entries, n, factory)
    if act is None:
        log.append("no valid otadata entry: trying %s" % apps[chosen].label)
    else:
        log.append("otadata[%d] seq %d selects ota_%d (%s)"
                   % (act.index, act.seq, chosen, od.state_name(act.state)))
        if act.state == od.NEW:
            o.set_state(od.PENDING_VERIFY, act)
            act.state = od.PENDING_VERIFY
            log.append("first boot of ota_%d: PENDING_VERIFY" % chosen)
    for slot in _candidates(chosen, other, n, factory):
        if verify is not None and not verify(slot):
            log.append("%s: image check failed, not booting it" % apps[slot].label)
            if act is not None and slot == chosen:
                o.set_state(od.ABORTED, act)
                act.state = od.ABORTED
                log.append("otadata[%d] seq %d marked ABORTED" % (act.index, act.seq))
            continue
        entry = None
        if act is not None and act.state != od.ABORTED and slot == chosen:
            entry = act
        elif other is not None and slot == other:
            entry = entries[1 - act.index]
        elif act is None and initial and slot < n:
            # set_actual_ota_seq: only an OTA slot gets an entry; the factory app has none
            entry = o.write_entry(0, od.Entry(slot + 1, od.VALID))
            log.append("blank otadata: wrote seq %d (VALID) for ota_%d" % (slot + 1, slot))
        log.append("booting %s" % apps[slot].label)
        return BootResult(slot, apps[slot], entry, log, slot != chosen)
    raise DeviceError(BAD_STATE, "no bootable app partition: every app failed its image check",
                      log=log)


def _next(entries, n, factory, verify):
    _act, chosen, other = _choice(entries, n, factory)
    for slot in _candidates(chosen, other, n, factory):
        if verify is None or verify(slot):
            return slot
    return None


def next_boot(flash, parts, verify=None):
    """The app index the next reset boots, or None: ``boot`` without its writes.

    A PENDING_VERIFY entry counts as ABORTED (the next boot marks it so), so
    after an unconfirmed boot this is the slot the device returns to, not the
    pending one otadata still names.
    """
    o, slots = open_otadata(flash, parts)
    entries = o.read()
    for e in entries:
        if e.crc_ok and e.state == od.PENDING_VERIFY:
            e.state = od.ABORTED
    return _next(entries, len(slots), factory_of(parts) is not None, verify)


def _running_entry(o, running):
    act = o.active()
    if act is None:
        raise DeviceError(BAD_STATE, "no valid otadata entry: the running app cannot change it")
    if act.slot(o.num_slots) != running:
        raise DeviceError(
            BAD_STATE,
            "running ota_%d but otadata selects ota_%d (an update is armed, or the app "
            "booted as a fallback)" % (running, act.slot(o.num_slots)),
            running=running,
        )
    return act


def confirm(flash, parts, running):
    """The running app (slot ``running``) works: mark its entry VALID
    (esp_ota_mark_app_valid_cancel_rollback). No write if already VALID, nor
    for the factory app, which has no otadata entry to confirm."""
    o, _ = open_otadata(flash, parts)
    if running == factory_index(parts):
        return None
    act = _running_entry(o, running)
    if act.state == od.VALID:
        return act
    return o.set_state(od.VALID, act)


def mark_invalid(flash, parts, running, verify=None):
    """The running app gives up (esp_ota_mark_app_invalid_rollback): its
    entry becomes INVALID and the next boot takes the previous slot (or, with
    no other valid entry, the factory app, as esp_ota_check_rollback_is_possible
    counts a factory image that validates), which must pass ``verify``.
    Returns that app index. The factory app itself has nothing to return to."""
    o, _ = open_otadata(flash, parts)
    if running == factory_index(parts):
        raise DeviceError(BAD_STATE, "rollback not possible: the factory app is the last resort")
    act = _running_entry(o, running)
    entries = o.read()
    entries[act.index].state = od.INVALID
    target = _next(entries, o.num_slots, factory_of(parts) is not None, verify)
    if target is None or target == running:
        raise DeviceError(BAD_STATE, "rollback not possible: no other valid slot to return to")
    o.set_state(od.INVALID, act)
    return target


def set_boot(flash, parts, slot):
    """Select OTA slot ``slot`` for the next boot as NEW (esp_ota_set_boot_partition);
    the caller has already checked the image in it. The factory app is never
    a target (BAD_STATE: no such OTA slot)."""
    o, _ = open_otadata(flash, parts)
    return o.select(slot, od.NEW)


def state_of(flash, parts, slot):
    """otadata state recorded for OTA ``slot`` (esp_ota_get_state_partition) or None."""
    o, _ = open_otadata(flash, parts)
    return o.state_of(slot)


def next_update_slot(parts, running):
    """The slot an update should go to (esp_ota_get_next_update_partition):
    the OTA slot after the running one, ota_0 when the factory app runs."""
    _, slots = ota_layout(parts)
    if running == factory_index(parts):
        return 0
    return (running + 1) % len(slots)
