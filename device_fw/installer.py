"""Installing an update into the passive slot: the device's side of the contract.

The same object serves an offline install from a file and, later, a link
session: ``begin`` takes the signed manifest, ``segment`` one checked
payload segment at a time, ``finish`` verifies the whole image and arms boot.

Order of effects for segment i (power may fail at any write):

1. check the segment's hash against the signed manifest (nothing written yet);
2. erase the passive slot's erase units it covers;
3. decode it (a full-image codec of ``codecs``, or a delta against the active
   slot, read-only), programming the bytes as they come;
4. persist progress ``next = i + 1`` in the store.

A cut before 4 redoes segment i on the next run (its sectors are erased again
first); a cut after 4 never decodes it again. Whether this port decodes the
codec at all is settled in ``check``, before anything is erased.

Flash is reached only through the platform's slots (``platform.Slot``):
slot-relative offsets, the slot's own erase unit, the running slot locked.

``finish`` reads the passive
slot back and compares the SHA-256 with the manifest before otadata is touched,
so an image that does not match is never selected for boot.
"""

from . import bootrec, port
from . import codecs as C
from . import manifest as M
from . import reasons as R
from .reasons import DeviceError

WRITE_CHUNK = 4096
DEFAULT_MAX_WINDOW_LOG = 13
DEFAULT_MAX_SEGMENT_PAYLOAD = 8192 + 64
DEFAULT_RAM_BUDGET = 65536
# The largest manifest a device holds (link offers are bounded by max_offer
# anyway): a 4 MiB image of 8 KiB segments takes ~12 KB of manifest.
DEFAULT_MAX_MANIFEST = 16384


def max_manifest(device):
    return device.limits().get("max_manifest", DEFAULT_MAX_MANIFEST)


class Installer:
    """One update in progress on one device.

    ``device`` is a :class:`device_fw.device.Device`; the installer uses its
    flash, slots, identity and store, and calls ``device.select_new(slot)`` at the
    end. ``decode_hook(index)`` is called whenever a segment is decoded (tests
    count decodes to prove resume never repeats finished work).
    """

    def __init__(self, device, decode_hook=None):
        self.device = device
        self.decode_hook = decode_hook
        self.manifest = None
        self.manifest_bytes = None
        self.uid = None
        self.slot = None
        self.next_segment = 0

    # ------------------------------------------------------------ begin

    def begin(self, manifest_bytes, signature):
        """Check everything that can be checked before any data; return next segment."""
        self.check(manifest_bytes, signature)
        return self.start()

    def check(self, manifest_bytes, signature):
        """Every check of ``begin`` with no effect on flash: authenticity first.

        The signature covers the raw bytes, so it is verified before anything
        of the manifest is decoded: unsigned input costs the bytes it came in
        and one step over them to find the key id, nothing proportional to what
        it claims. Only then is the manifest parsed and judged.
        """
        dev = self.device
        if dev.recovered:
            raise DeviceError(
                R.BAD_STATE,
                "device state lost (no store record readable; booted from boot records): "
                "provision it again (flash init; on a board, the port's setup) to update it",
            )
        limit = max_manifest(dev)
        if len(manifest_bytes) > limit:
            raise DeviceError(
                R.RESOURCE_LIMIT,
                "manifest of %d bytes exceeds this device's %d" % (len(manifest_bytes), limit),
            )
        key_id = M.key_id_of(manifest_bytes)
        key = dev.trusted_key(key_id)
        if key is None:
            if dev.is_revoked(key_id):
                raise DeviceError(R.REVOKED_KEY, "signing key %s is revoked" % _hex(key_id))
            raise DeviceError(
                R.UNKNOWN_KEY, "signing key %s is not trusted by this device" % _hex(key_id)
            )
        if not port.HAVE_ED25519:
            raise DeviceError(R.BAD_SIGNATURE, "this port has no Ed25519 verifier")
        if not port.ed25519_verify(key, signature, M.signing_message(manifest_bytes)):
            raise DeviceError(R.BAD_SIGNATURE, "manifest signature does not verify")
        m = M.parse_manifest(manifest_bytes)
        ident = dev.identity()
        if ident["hw"] not in m["hw"]:
            raise DeviceError(
                R.WRONG_HW,
                "update is for %s, this device is %s" % (", ".join(m["hw"]), ident["hw"]),
            )
        if m["chip"] != ident["chip"]:
            raise DeviceError(
                R.WRONG_CHIP,
                "update is for chip %s, this device is %s" % (m["chip"], ident["chip"]),
            )
        if m["security_counter"] < ident["security_counter"]:
            raise DeviceError(
                R.DOWNGRADE,
                "security counter %d is below the device's %d"
                % (m["security_counter"], ident["security_counter"]),
            )
        uid = M.update_id(manifest_bytes)
        running = dev.running_image()
        if running is not None and bytes(running["sha256"]) == bytes(m["target_sha256"]):
            raise DeviceError(
                R.ALREADY_INSTALLED, "the device already runs this image (%s)" % m["version"]
            )
        for failed in dev.failures():
            # A self-test or check-in failure is the image's own: never re-arm it.
            # A reset while pending (ROLLED_BACK: a power cut, say) may be retried.
            if bytes(failed["uid"]) == uid and failed["reason"] in BLOCKING_FAILURES:
                raise DeviceError(
                    R.PREVIOUSLY_FAILED,
                    "this update failed on this device before (%s): build a new artifact"
                    % R.name(failed["reason"]),
                )
        if dev.running_pending():
            # The other slot holds the last image that confirmed itself: the
            # only way back. ESP-IDF's esp_ota_begin refuses here too.
            raise DeviceError(
                R.BAD_STATE,
                "the running image has not confirmed itself yet (pending verify): "
                "confirm it or roll back before installing another update",
            )
        slot = dev.passive_slot()
        if m["target_size"] > bootrec.capacity(slot):
            raise DeviceError(
                R.TOO_LARGE,
                "image of %d bytes does not fit slot %s (%d bytes for an image)"
                % (m["target_size"], slot.label, bootrec.capacity(slot)),
            )
        self._check_codec(m)
        if m["payload_kind"] == M.PAYLOAD_DELTA:
            running = dev.running_image()
            if running is None or running["sha256"] != bytes(m["base_sha256"]):
                raise DeviceError(R.WRONG_BASE, "delta base is not the running image")
            if m["base_size"] != running["size"]:
                raise DeviceError(
                    R.WRONG_BASE,
                    "delta base of %d bytes, the running image has %d"
                    % (m["base_size"], running["size"]),
                )

        self.manifest = m
        self.manifest_bytes = bytes(manifest_bytes)
        self.uid = M.update_id(manifest_bytes)
        self.slot = slot

    def start(self):
        """After ``check``: resume or start the update (persists progress)."""
        dev = self.device
        slot = self.slot
        progress = dev.progress()
        if progress and progress.get("uid") == self.uid and progress.get("slot") == slot.label:
            self.next_segment = progress["next"]
        else:
            self.next_segment = 0
            dev.save_progress({"uid": self.uid, "slot": slot.label, "next": 0})
        return self.next_segment

    def _check_codec(self, m):
        limits = self.device.limits()
        if m["payload_kind"] == M.PAYLOAD_FULL and C.full_decoder(m["codec"]) is None:
            raise DeviceError(
                R.UNSUPPORTED_CODEC,
                "codec %s not supported (this port decodes %s)"
                % (m["codec"], ", ".join(C.names())),
            )
        if m["payload_kind"] == M.PAYLOAD_DELTA and m["codec"] not in C.delta_codecs():
            raise DeviceError(R.UNSUPPORTED_CODEC, "delta codec %s not supported" % m["codec"])
        if m["window_log"] > limits["max_window_log"]:
            raise DeviceError(
                R.RESOURCE_LIMIT,
                "window 2**%d exceeds this device's 2**%d"
                % (m["window_log"], limits["max_window_log"]),
            )
        biggest = m["segments"].largest()
        if m["payload_kind"] == M.PAYLOAD_DELTA:
            from .delta_apply import ram_budget

            need = ram_budget(biggest, codec=m["codec"])
            if need > limits.get("ram_budget", DEFAULT_RAM_BUDGET):
                raise DeviceError(
                    R.RESOURCE_LIMIT,
                    "delta needs %d bytes of RAM, this device allows %d"
                    % (need, limits.get("ram_budget", DEFAULT_RAM_BUDGET)),
                )
            held = reserved_payload()
            if held is not None and biggest > len(held) and not (GROW and GROW[0](biggest)):
                # the budget is stated for fdelta3 (the reserved tables'); a codec
                # with a smaller fixed share fits it with larger segments than the
                # buffer this heap can hold
                raise DeviceError(
                    R.RESOURCE_LIMIT,
                    "delta segments of up to %d bytes, this device buffers %d"
                    % (biggest, len(held)),
                )
            from .delta_apply import ensure

            ensure(m["codec"])  # its tables held before anything is erased
            return
        if (
            biggest > limits["max_segment_payload"]
            or m["segment_size"] > limits["max_segment_payload"]
        ):
            raise DeviceError(
                R.RESOURCE_LIMIT,
                "segments of %d / %d bytes exceed this device's buffer of %d"
                % (m["segment_size"], biggest, limits["max_segment_payload"]),
            )

    # ------------------------------------------------------------ segments

    @property
    def segment_count(self):
        return len(self.manifest["segments"])

    def segment(self, index, payload):
        """Check, decode and write segment ``index``; persist progress."""
        m = self.manifest
        if m is None:
            raise DeviceError(R.BAD_STATE, "no update begun")
        if index != self.next_segment:
            raise DeviceError(
                R.BAD_STATE, "segment %d offered, device expects %d" % (index, self.next_segment)
            )
        length, check = m["segments"][index]
        if len(payload) != length or port.sha256(payload).digest()[: M.CHECK_SIZE] != bytes(check):
            raise DeviceError(
                R.SEGMENT_CORRUPT, "segment %d does not match its signed check" % index
            )
        seg = m["segment_size"]
        offset = index * seg
        out_size = min(seg, m["target_size"] - offset)
        if self.decode_hook is not None:
            self.decode_hook(index)
        self.slot.erase_for(offset, out_size)
        if m["payload_kind"] == M.PAYLOAD_FULL:
            self._decode_full(index, payload, offset, out_size)
        else:
            self._apply_delta(index, payload, offset, out_size)
        self.next_segment = index + 1
        self.device.save_progress({"uid": self.uid, "slot": self.slot.label, "next": index + 1})

    def _decode_full(self, index, payload, base, out_size):
        slot = self.slot
        pos = [base]

        def write(data):
            if pos[0] + len(data) > base + out_size:
                raise DeviceError(R.DECODE_ERROR, "segment %d decodes past its end" % index)
            slot.write(pos[0], data)
            pos[0] += len(data)

        try:
            C.full_decoder(self.manifest["codec"])(
                payload, out_size, self.manifest["window_log"], write, _chunk()
            )
        except ValueError as exc:
            raise DeviceError(R.DECODE_ERROR, "segment %d: %s" % (index, exc))
        if pos[0] != base + out_size:
            raise DeviceError(R.DECODE_ERROR, "segment %d produced too few bytes" % index)

    def _apply_delta(self, index, payload, base, out_size):
        from .delta_apply import apply_segment

        running = self.device.active_slot()
        slot = self.slot
        # Reads of the old image are confined to the running image's own extent
        # (its recorded size, within its slot), whatever the manifest claims:
        # past it lie the passive slot and other partitions (nvs: link keys).
        image = self.device.running_image()
        old_size = min(image["size"] if image else 0, running.size)
        pos = [base]

        def read_old(offset, length):
            if offset < 0 or length < 0 or offset + length > old_size:
                raise DeviceError(R.DECODE_ERROR, "delta reads outside the running image")
            return running.read(offset, length)

        def write(data):
            if pos[0] + len(data) > base + out_size:
                raise DeviceError(R.DECODE_ERROR, "delta writes past its segment")
            slot.write(pos[0], data)
            pos[0] += len(data)

        def read_new(offset, length):
            # fdelta3 (SPEC 7.8): bytes this segment has already written, read
            # back from the passive slot; never past what it wrote
            if offset < 0 or length < 0 or base + offset + length > pos[0]:
                raise DeviceError(R.DECODE_ERROR, "delta reads back past what it wrote")
            return slot.read(base + offset, length)

        apply_segment(
            payload,
            read_old,
            old_size,
            out_size,
            write,
            codec=self.manifest["codec"],
            read_new=read_new,
        )
        if pos[0] != base + out_size:
            raise DeviceError(R.DECODE_ERROR, "segment %d produced too few bytes" % index)

    # ------------------------------------------------------------ finish

    def finish(self):
        """Verify the whole passive image and select it for the next boot (NEW)."""
        m = self.manifest
        if m is None or self.next_segment != self.segment_count:
            raise DeviceError(R.BAD_STATE, "not all segments are written")
        h = port.sha256()
        size = m["target_size"]
        view = memoryview(_chunk())  # the full decoder's buffer: idle now
        for pos in range(0, size, WRITE_CHUNK):
            k = min(WRITE_CHUNK, size - pos)
            self.slot.readinto(pos, view[:k])
            h.update(view[:k])
        digest = h.digest()
        if digest != bytes(m["target_sha256"]):
            # Start over next time: the bytes in the slot are not the signed image.
            self.device.save_progress(None)
            raise DeviceError(
                R.IMAGE_HASH_MISMATCH,
                "rebuilt image SHA-256 %s differs from the manifest" % _hex(digest),
            )
        self.device.commit_update(
            self.slot,
            {
                "sha256": digest,
                "size": size,
                "version": m["version"],
                "security_counter": m["security_counter"],
                "uid": self.uid,
            },
        )


BLOCKING_FAILURES = (R.SELF_TEST_FAILED, R.CHECKIN_TIMEOUT)


_CHUNK = []
_PAYLOAD = []
# [grow(n) -> bool]: a port that reserved the payload buffer makes it n bytes
# if its heap allows, before anything is erased (device_fw/mp_run.py)
GROW = []


def payload_buffer(n, prefer=0):
    """A segment-payload buffer of at least ``n`` bytes: the one reserved by
    reserve_payload if it is large enough, else a new one of ``prefer`` bytes
    if that is more (one buffer for every later segment)."""
    if _PAYLOAD and len(_PAYLOAD[0]) >= n:
        return _PAYLOAD[0]
    return bytearray(n if n > prefer else prefer)


def reserved_payload():
    """The buffer reserve_payload holds, or None."""
    return _PAYLOAD[0] if _PAYLOAD else None


def reserve_payload(n, buf=None, chunk=None):
    """Reserve the payload buffer now, shared by every later install: for a
    port with a small heap and one device per interpreter (device_fw/mp_run.py),
    where a large block asked for later may not exist any more (by then the
    free heap is in pieces). A process serving several simulated devices must
    not call it: they would share the buffer. ``buf``: a buffer of ``n`` bytes
    reserved earlier; ``chunk``: a WRITE_CHUNK buffer to use as the output /
    hash-check chunk (the delta applier's, idle whenever this one is used)."""
    _PAYLOAD[:] = []  # the old one goes first
    _PAYLOAD.append(bytearray(n) if buf is None else buf)
    if chunk is not None and not _CHUNK and len(chunk) >= WRITE_CHUNK:
        _CHUNK.append(chunk)
    _chunk()  # and the output / hash-check chunk


def _chunk():
    """The one output buffer of full-image decoding, allocated at first use
    and kept: a per-segment buffer fragments a small heap."""
    if not _CHUNK:
        _CHUNK.append(bytearray(WRITE_CHUNK))
    return _CHUNK[0]


def _hex(b):
    return "".join("%02x" % x for x in bytes(b))


def _read_into(stream, view, what):
    got = 0
    n = len(view)
    while got < n:
        if hasattr(stream, "readinto"):
            k = stream.readinto(view[got:])
        else:  # a stream with read() only
            data = stream.read(n - got)
            k = len(data) if data else 0
            view[got : got + k] = data or b""
        if not k:
            raise DeviceError(R.TRUNCATED, "artifact ends inside the %s" % what)
        got += k


def _check_length(stream, segments):
    """A file shorter than its signed segment table is refused before anything
    is written (TRUNCATED): it used to be found short only at the segment it
    ends in, the ones before already written. A stream that cannot seek is
    read as it comes."""
    try:
        here = stream.tell()
        end = stream.seek(0, 2)
        stream.seek(here)
    except (AttributeError, OSError, ValueError):
        return
    if end is None:  # pragma: no cover - a seek that returns nothing
        return
    need = 0
    for length, _check in segments:
        need += length
    if end - here < need:
        raise DeviceError(R.TRUNCATED, "artifact ends %d bytes short of its %d segments"
                          % (need - (end - here), len(segments)))  # fmt: skip


def install_stream(device, stream, decode_hook=None):
    """Install an .ota artifact read sequentially from ``stream`` (offline install).

    Returns a dict: segments decoded now, segments skipped (already done before
    a power cut), the manifest. Segments already done are read past, not decoded.
    """
    manifest_bytes, signature = M.read_header(stream, max_manifest(device))
    inst = Installer(device, decode_hook)
    inst.check(manifest_bytes, signature)
    _check_length(stream, inst.manifest["segments"])
    start = inst.start()
    decoded = 0
    # One payload buffer for the whole install, filled with readinto: a fresh
    # bytes object per segment fragments a small heap (MicroPython).
    view = memoryview(payload_buffer(inst.manifest["segments"].largest()))
    for index, (length, _check) in enumerate(inst.manifest["segments"]):
        _read_into(stream, view[:length], "payload (segment %d)" % index)
        if index < start:
            continue
        inst.segment(index, view[:length])
        decoded += 1
    if stream.read(1):
        raise DeviceError(R.MALFORMED, "artifact has bytes after its last segment")
    inst.finish()
    return {
        "decoded": decoded,
        "skipped": start,
        "manifest": inst.manifest,
        "slot": inst.slot.label,
    }
