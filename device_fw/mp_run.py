"""device_fw's entry points under the MicroPython unix port (and CPython):

    micropython -m device_fw.mp_run serve FLASH PORT [MTU] [--no-reboot] [--fail-self-test]
                [--no-checkin] [--checkin-timeout=S]           the device main loop on a tty
    micropython -m device_fw.mp_run serve-lora FLASH PORT MODEM ADDRESS SF BW CR PREAMBLE FREQ
                REGION [--mtu=N] [--time-scale=X] [--duty-cycle=X] [--checkin-timeout=S]
                [--no-reboot]                                    behind a LoRa modem on a tty
    micropython -m device_fw.mp_run replay FLASH IN OUT [SEED]  a recorded session fed in
    micropython -m device_fw.mp_run install FLASH OTA [--hwm]   an offline install
    micropython -m device_fw.mp_run deflate VECTORS.json        the deflate golden vectors

(started through tools/mp_boot.py, which sets the one import path or mounts
a ROMFS image: ``otaferry device run --runtime micropython --code ...`` and the
tests do). Every command ends
with one line of JSON on stdout: what happened, the device's own reason code
on an error, and the heap figures: ``gc.mem_alloc()`` sampled at every flash
operation (``heap_peak``; the high-water mark a device sees when it writes,
which is when the applier's state is live; with ``--hwm`` after a collection at
every write and erase, so it counts live bytes only), ``heap_code`` (the heap
the imported modules take before the device opens: bytecode compiled from
source, which a board keeps in flash when device_fw is frozen) and the heap size.

``serve`` speaks over a tty (a pty on the bench, a USB-serial adapter) opened
with ``termios`` raw, VMIN = VTIME = 0 and ``select.poll`` for the 50 ms read
timeout ``serve.serve`` expects of a port.

``SEED`` makes the device's randomness (``port.random_bytes``: ephemeral link
keys, check-in nonces) a deterministic stream, so that a session recorded
against the CPython device replays byte for byte into this one.
"""

import gc
import sys

from . import port
from .reasons import RESOURCE_LIMIT, DeviceError, name

try:
    import json
except ImportError:  # pragma: no cover
    json = None

_PEAK = [0]
_COLLECT = [False]  # --hwm: collect before each sample (live bytes, not garbage)
_BASE = [0]  # live heap once the modules are imported, before the device opens
_FREE = [0, 0]  # free heap once the device is open (its tables reserved), and its budget


def _sample(write=True):
    if not hasattr(gc, "mem_alloc"):
        return
    if _COLLECT[0]:
        if not write:
            return
        gc.collect()
    used = gc.mem_alloc()
    if used > _PEAK[0]:
        _PEAK[0] = used


class Sampled:
    """A flash region (read / write / erase_sector / is_erased) that samples
    the heap at every operation."""

    def __init__(self, region):
        self.region = region

    def read(self, addr, n):
        _sample(False)
        return self.region.read(addr, n)

    def readinto(self, addr, buf):
        _sample(False)
        return self.region.readinto(addr, buf)

    def write(self, addr, data):
        _sample()
        return self.region.write(addr, data)

    def erase_sector(self, addr):
        _sample()
        return self.region.erase_sector(addr)

    def is_erased(self, addr, n):
        _sample(False)
        return self.region.is_erased(addr, n)

    def __getattr__(self, attr):
        return getattr(self.region, attr)


def drbg(seed):
    """``random_bytes(n)`` from SHA-256(seed || counter): a test's randomness."""
    state = [0, b""]

    def random_bytes(n):
        while len(state[1]) < n:
            block = port.sha256(bytes(seed) + state[0].to_bytes(4, "little")).digest()
            state[0] += 1
            state[1] += block
        out, state[1] = state[1][:n], state[1][n:]
        return out

    return random_bytes


def seed_random(seed_hex):
    port.random_bytes = drbg(bytes.fromhex(seed_hex))


# What a session holds beyond the reserved buffers at its peak, with room for
# the garbage and the holes of a non-moving collector, on the 64-bit unix
# port: an offline install (the parsed manifest, flash reads: ~15 KB live),
# and the main loop on a UART (frames, the offer, the receiver's state).
WORK = 24 * 1024
SERVE_WORK = 40 * 1024
_WORK = [WORK]
_EARLY = []  # [payload buffer, bytes the early reservation took]


def early_payload():
    """The payload buffer reserved before the rest of device_fw is imported:
    what the default budget leaves fdelta3's payload (SPEC 7.6)."""
    from . import delta_apply
    from .frames import DEFAULT_RAM_BUDGET

    return DEFAULT_RAM_BUDGET - delta_apply.ram_budget(0, codec=delta_apply.CODEC3)


def reserve_early():
    """The applier's tables (43 KB for fdelta3, the largest codec) and a
    payload buffer, first: after the imports the free heap is in pieces (at
    200 KiB, 45 KB free held no 13.5 KB block). MemoryError: the heap cannot
    hold an install at all (RESOURCE_LIMIT)."""
    if _EARLY or not hasattr(gc, "mem_alloc"):
        return
    from . import codecs, delta_apply, platform
    from .frames import DEFAULT_RAM_BUDGET

    gc.collect()
    before = gc.mem_alloc()
    try:
        delta_apply.reserve()
        buf = bytearray(early_payload())
        platform.SCRATCH.append(bytearray(4096))  # the power-on reads: store, partition table
    except MemoryError:
        platform.SCRATCH[:] = []
        delta_apply.release()
        gc.collect()
        raise DeviceError(RESOURCE_LIMIT, "heap too small for an install: %d B free, the "
                          "applier's tables and a payload take %d B" % (
                              gc.mem_free(), DEFAULT_RAM_BUDGET))
    _EARLY[:] = [buf, gc.mem_alloc() - before]
    codecs.LEND.append(delta_apply.release)  # idle while a full image is decoded
    from . import installer

    installer.GROW.append(grow_payload)


def grow_payload(n):
    """The reserved payload buffer made ``n`` bytes, if the heap still leaves
    the session its working memory then (installer.GROW: a delta in a codec
    whose segments are larger than fdelta3's for the same budget)."""
    from . import installer

    gc.collect()
    if gc.mem_free() - n < _WORK[0]:
        return False
    try:
        buf = bytearray(n)
    except MemoryError:
        return False
    installer.reserve_payload(n, buf)
    return True


def open_device(flash_path, sampled=True):
    reserve_early()
    from . import delta_apply

    if not delta_apply.reserved():  # lent to a full install before this reset
        from . import codecs

        codecs.SPARE[:] = []
        gc.collect()
        try:
            delta_apply.reserve()
        except MemoryError:  # a delta's accept tries again, and refuses if it must
            delta_apply.release()
    from .device import Device
    from .ports.sim import SimPlatform

    # opened before the session's code is imported: its 3-4 KB reads of the
    # partition table and the store find a block more easily
    platform = SimPlatform(flash_path)
    if sampled:
        region = Sampled(platform.flash)
        for slot in platform.slots:
            slot.region = region
        platform.store.flash = region
    dev = Device(platform=platform)
    from . import installer, loop  # noqa: F401 - imported before the baseline

    if dev.link_key() is not None:
        # a device with a link key: the channel's code now, not at the first
        # handshake, so that it counts in the baseline and its objects are not
        # made mid-session (on a port without native crypto: the curve, AES, CCM)
        from . import secure  # noqa: F401
        from .mpcrypto import ccm, curve25519  # noqa: F401

    gc.collect()
    if hasattr(gc, "mem_alloc"):
        _BASE[0] = gc.mem_alloc() - (_EARLY[1] if _EARLY else 0)  # with the open device's
    if hasattr(gc, "mem_free"):
        limits = dict(dev.limits())
        payload = heap_payload(limits)
        limits["ram_budget"] = _FREE[1] = delta_apply.ram_budget(payload, codec=delta_apply.CODEC3)
        if payload < limits["max_segment_payload"]:  # full-image segments use that buffer too
            limits["max_segment_payload"] = payload
        dev.limits = lambda: limits  # what this heap allows, never above what was provisioned
    return dev


def heap_payload(limits):
    """The largest segment payload this heap allows, the buffer reserved for it
    (installer.reserve_payload). Of ``avail`` (the free heap once the device is
    open, counting the early payload buffer as free): a third in a large heap;
    in a small one what leaves the session its working memory (WORK, SERVE_WORK
    for the main loop), up to the early buffer.
    Never more than the provisioned budget allows fdelta3 (the codec with the
    largest fixed share, whose tables are reserved); under 4 KiB it refuses
    (RESOURCE_LIMIT). The device then checks deltas against that (SPEC 7.6)."""
    from . import delta_apply, installer
    from .frames import DEFAULT_RAM_BUDGET

    gc.collect()
    held = installer.reserved_payload()
    if _EARLY and _EARLY[0] is not None:
        held = _EARLY[0]
    avail = _FREE[0] = gc.mem_free() + (len(held) if held is not None else 0)
    most = (limits.get("ram_budget", DEFAULT_RAM_BUDGET)
            - delta_apply.ram_budget(0, codec=delta_apply.CODEC3))  # fmt: skip
    # min(max(a third, the early buffer), what leaves the session its memory, the budget's)
    p = avail // 3
    if held is not None and len(held) > p:
        p = len(held)
    if avail - _WORK[0] < p:
        p = avail - _WORK[0]
    p = p if p < most else most
    if p < 4096:
        raise DeviceError(RESOURCE_LIMIT, "heap too small for an install: %d B free once open, "
                          "a session needs %d B and a 4 KiB payload" % (avail, _WORK[0]))
    if _EARLY:
        _EARLY[0] = None  # from now on the installer holds it (or its replacement)
    chunk = delta_apply.reserved_chunk()
    if held is not None and len(held) < p:
        try:  # larger, while the early one is held: the free heap may be in pieces
            buf = bytearray(p)
        except MemoryError:
            p = len(held)
        else:
            held = buf
    if held is not None and len(held) == p:
        installer.reserve_payload(p, held, chunk)
    else:
        held = None  # a smaller one: the old buffer goes first, its hole takes the new one
        installer.reserve_payload(p, None, chunk)
    return p


def _report(result):
    gc.collect()
    _sample()
    result["heap_peak"] = _PEAK[0]
    result["heap_code"] = _BASE[0]  # imported modules (all of them, or what ROMFS leaves)
    result["heap_free_open"] = _FREE[0]
    result["ram_budget"] = _FREE[1]  # what the device checked deltas against
    if hasattr(gc, "mem_free"):
        result["heap_size"] = gc.mem_alloc() + gc.mem_free()
    result["runtime"] = sys.implementation.name
    print(json.dumps(result))


def _error(exc):
    return {"ok": False, "reason": exc.reason, "reason_name": name(exc.reason),
            "message": exc.message}  # fmt: skip


def cmd_install(flash_path, ota_path):
    import time

    from .installer import install_stream

    dev = open_device(flash_path)
    t0 = time.ticks_ms() if hasattr(time, "ticks_ms") else 0
    try:
        with open(ota_path, "rb") as f:
            r = install_stream(dev, f)
        ms = time.ticks_diff(time.ticks_ms(), t0) if hasattr(time, "ticks_ms") else 0
        return {"ok": True, "decoded": r["decoded"], "skipped": r["skipped"], "slot": r["slot"],
                "ms": ms}  # fmt: skip
    except DeviceError as exc:
        return _error(exc)
    finally:
        dev.close()


def _records(path):
    """Length-prefixed records (u32 LE length, bytes) of a file."""
    with open(path, "rb") as f:  # one record at a time: the heap is the device's
        while True:
            head = f.read(4)
            if len(head) < 4:
                return
            yield f.read(int.from_bytes(head, "little"))


def cmd_replay(flash_path, in_path, out_path, mtu=1024):
    """Feed each recorded chunk to the device's StreamLoop (the time of the
    k-th feed is k, as the recording's clock); write every reply (one record
    per feed, the first for power-on) to ``out_path``."""
    from .loop import StreamLoop

    _WORK[0] = SERVE_WORK  # the main loop's session, as on a UART
    dev = open_device(flash_path)
    feeds = 0
    try:
        loop = StreamLoop(dev, mtu)
        with open(out_path, "wb") as out:
            hello = loop.start(0.0)
            out.write(len(hello).to_bytes(4, "little") + hello)
            for chunk in _records(in_path):
                feeds += 1
                reply = loop.feed(chunk, float(feeds))
                out.write(len(reply).to_bytes(4, "little") + reply)
        info = loop.receiver.stats
        return {"ok": True, "feeds": feeds, "phase": loop.receiver.phase,
                "segments": info["segments"], "bad_frames": info["bad_frames"]}  # fmt: skip
    except DeviceError as exc:
        return _error(exc)
    finally:
        dev.close()


def cmd_deflate(vectors_path):
    """Decode the deflate golden vectors with this port's decoder: for each,
    the SHA-256 of what it wrote, or the error."""
    from . import codecs

    with open(vectors_path) as f:
        v = json.load(f)
    dec = codecs.full_decoder(codecs.DEFLATE)
    buf = bytearray(4096)
    out = []

    def run(seg_hex, size, wlog):
        h = port.sha256()
        try:
            dec(bytes.fromhex(seg_hex), size, wlog, h.update, buf)
        except ValueError as exc:
            return "error: %s" % (exc,)
        return "".join("%02x" % b for b in h.digest())

    img = bytes.fromhex(v["image_hex"])
    seg, wlog = v["segment_size"], v["window_log"]
    for i, s in enumerate(v["good"]):
        out.append(run(s, min(seg, len(img) - i * seg), wlog))
    st = v["stored_block"]
    out.append(run(st["segment_hex"], len(st["out_hex"]) // 2, wlog))
    for b in v["bad"]:
        out.append(run(b["segment_hex"], b["out_size"], wlog))
    return {"ok": True, "codecs": codecs.names(), "results": out}


class TtyPort:
    """A tty as the device's UART: raw, non-blocking reads after a poll."""

    def __init__(self, path, timeout_ms=50):
        import select
        import termios

        self.f = open(path, "r+b")  # noqa: SIM115 - the port lives as long as serve
        fd = self.f.fileno()
        termios.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[6][5] = 0  # VTIME
        attrs[6][6] = 0  # VMIN: a read returns what is there
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self.poll = select.poll()
        self.poll.register(self.f, select.POLLIN)
        self.timeout_ms = timeout_ms

    def read(self, n):
        ready = self.poll.poll(self.timeout_ms)
        if not ready:
            return b""
        data = self.f.read(n)
        if not data:  # readable, yet nothing: the other end has hung up
            raise OSError("the tty hung up")
        return data

    def write(self, data):
        self.f.write(data)

    def close(self):
        try:
            self.f.close()
        except OSError:
            pass


def reopen_tty(path, say):
    """A new TtyPort on ``path`` once it can be opened again (a line simulator
    or a USB adapter back), as ``device run`` does on CPython."""
    import time

    while True:
        try:
            port = TtyPort(path)
        except OSError:
            time.sleep(0.5)
            continue
        say("port %s is back" % path)
        return port


def _device_lines(flash_path, where):
    """(say, on_event): the lines ``otaferry device run`` prints on CPython, on stderr."""
    said = []

    def say(line):
        sys.stderr.write("device: %s\n" % line)

    def on_event(kind, detail):
        if kind == "ready":
            if not said:
                said.append(True)
                say("serving %s on %s (micropython)" % (flash_path, where))
        elif kind == "boot":
            for line in detail["log"]:
                say("boot: %s" % line)
        elif kind == "reset":
            say("reset (%s)" % detail["why"])
        elif kind == "port":
            say("port %s failed (%s)" % (where, detail["error"]))
        else:
            gc.collect()
            say("%s (frames %d, bad %d, segments %d, heap %d)" % (
                kind, detail["frames"], detail["bad_frames"], detail["segments"],
                gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0))  # fmt: skip

    return say, on_event


def cmd_serve(flash_path, port_path, mtu=1024, lifecycle=True, checkin_timeout=120.0,
              self_test=True, checkin=True):  # fmt: skip
    from .serve import serve

    say, on_event = _device_lines(flash_path, port_path)
    ports = [TtyPort(port_path)]

    def reopen():
        ports[0].close()
        ports[0] = reopen_tty(port_path, say)
        return ports[0]

    _WORK[0] = SERVE_WORK
    serve(flash_path, ports[0], mtu=mtu, on_event=on_event, lifecycle=lifecycle,
          self_test=self_test, checkin=checkin, checkin_timeout=checkin_timeout, reopen=reopen,
          open_device=lambda: open_device(flash_path))  # fmt: skip
    return {"ok": True}


def _run(cmd, args, flags):
    if cmd == "install":
        return cmd_install(args[0], args[1])
    if cmd == "replay":
        if len(args) > 3:
            seed_random(args[3])
        return cmd_replay(args[0], args[1], args[2])
    if cmd == "deflate":
        return cmd_deflate(args[0])
    if cmd == "serve":
        mtu = int(args[2]) if len(args) > 2 else 1024
        lifecycle = "--no-reboot" not in flags
        timeout = float(_options(flags).get("checkin-timeout", "120"))
        return cmd_serve(args[0], args[1], mtu, lifecycle, timeout,
                         "--fail-self-test" not in flags, "--no-checkin" not in flags)
    if cmd == "serve-lora":
        return cmd_serve_lora(args[0], args[1], args[2], args[3], args[4:10], flags)
    return None


def _options(flags):
    """{name: value} of the ``--name=value`` flags."""
    opts = {}
    for a in flags:
        if "=" in a:
            k, v = a[2:].split("=", 1)
            opts[k] = v
    return opts


def cmd_serve_lora(flash_path, port_path, kind, address, radio, flags):
    """The device behind a LoRa modem on the tty ``port_path`` (``lora.serve_modem``):
    ``radio`` = sf, bw Hz, cr, preamble, freq Hz, region name."""
    from .lora import serve_modem

    opts = _options(flags)
    sf, bw, cr, preamble, freq, region = radio
    bw = float(bw)
    bw = int(bw) if bw == int(bw) else bw
    timeout = opts.get("checkin-timeout", "air")
    _say, on_event = _device_lines(flash_path, "%s via %s address %s" % (port_path, kind, address))
    _WORK[0] = SERVE_WORK
    serve_modem(flash_path, TtyPort(port_path), kind, int(address),
                (int(sf), bw, int(cr), int(preamble), int(freq), region),
                mtu=int(opts["mtu"]) if "mtu" in opts else None, on_event=on_event,
                time_scale=float(opts.get("time-scale", "1")),
                duty_cycle=float(opts["duty-cycle"]) if "duty-cycle" in opts else None,
                lifecycle="--no-reboot" not in flags, self_test="--fail-self-test" not in flags,
                checkin="--no-checkin" not in flags,
                checkin_timeout=timeout if timeout == "air" else float(timeout),
                open_device=lambda: open_device(flash_path))  # fmt: skip
    return {"ok": True}


def main(argv):
    if not argv:
        print(globals().get("__doc__") or "commands: serve replay install deflate")  # .mpy: no doc
        return 2
    cmd = argv[0]
    flags = [a for a in argv[1:] if a.startswith("--")]
    args = [a for a in argv[1:] if not a.startswith("--")]
    _COLLECT[0] = "--hwm" in flags
    try:
        if cmd in ("install", "replay", "serve", "serve-lora"):
            reserve_early()  # before the command's own imports
        result = _run(cmd, args, flags)
    except DeviceError as exc:  # the device could not open (a heap too small for it)
        result = _error(exc)
    except MemoryError as exc:  # one line with a reason; where, on stderr
        if hasattr(sys, "print_exception"):
            sys.print_exception(exc, sys.stderr)
        result = _error(DeviceError(RESOURCE_LIMIT, "out of memory: %s" % (exc,)))
    if result is None:
        print("unknown command %s" % cmd)
        return 2
    _report(result)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
