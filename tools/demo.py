"""``otaferry demo``: the main job on the embedded default, offline for now.

Keys, a simulated ESP32 flash running v1.0.0, a signed v1.1.0 build, an
install cut by a power failure and resumed, a reboot into the new image as
pending-verify, self-test and confirm; then a v1.2.0 that fails its self-test
and rolls back by itself. Everything happens in a work folder (temporary
unless ``--workdir``), through the same code the CLI commands use.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ..device_fw.device import Device
from ..device_fw.flash import PowerCut
from ..device_fw.installer import install_stream
from ..protocol.artifact import build_full, inspect_artifact, open_artifact
from ..protocol.keys import write_keypair
from .sample_fw import make_image

HW = "otaferry-devkit-v1"


def _say(step: str, text: str) -> None:
    print(f"[{step:>7}] {text}")


def run(args: argparse.Namespace) -> int:
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        return _run(work, args)
    with tempfile.TemporaryDirectory(prefix="otaferry-demo-") as tmp:
        return _run(Path(tmp), args)


def _install(flash: Path, artifact: Path, cut_at: int | None = None) -> dict[str, object] | None:
    dev = Device(str(flash), cut_at=cut_at)
    try:
        with open(artifact, "rb") as stream:
            return install_stream(dev, stream)
    except PowerCut:
        return None
    finally:
        dev.close()


def _run(work: Path, args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    key_path = work / "vendor.key"
    if key_path.exists():
        key_path.unlink()
        Path(str(key_path) + ".pub").unlink(missing_ok=True)
    key = write_keypair(key_path)
    _say(
        "keys",
        f"Ed25519 signing key {key.public.key_id.hex()} -> {key_path.name}, {key_path.name}.pub",
    )

    old = make_image("1.0.0", secure_version=0, revision=0)
    new = (
        Path(args.image).read_bytes()
        if args.image
        else make_image("1.1.0", secure_version=1, revision=1)
    )
    bad = make_image("1.2.0", secure_version=1, revision=2)
    flash = work / "flash.bin"
    dev = Device.create(
        str(flash), hw=HW, chip="esp32", trusted_keys=[key.public.raw], image=old, version="1.0.0"
    )
    dev.close()
    _say("flash", f"simulated ESP32 flash {flash.name}: 4 MiB, ota_0 runs v1.0.0 ({len(old)} B)")

    art = work / "update-1.1.0.ota"
    art.write_bytes(
        build_full(new, key, hw=[HW], chip="esp32", version="1.1.0", security_counter=1)
    )
    info = inspect_artifact(str(art))
    _say(
        "build",
        f"{art.name}: {info['file_size']} B for a {info['target_size']} B image "
        f"({100 * info['file_size'] / info['target_size']:.0f} %), {info['segments']} segments of "
        f"{info['segment_size'] // 1024} KiB, "
        f"device decode RAM {info['decoder_ram_bytes'] / 1024:.1f} KiB",
    )
    with open_artifact(str(art)) as reader:
        reader.verify([key.public])
        sum(1 for _ in reader.iter_segments())
    _say("verify", "signature and every segment check out")

    # An install cut by a power failure part-way, then resumed.
    cut_at = max(4, info["segments"])  # about half-way: each segment is a few flash ops
    assert _install(flash, art, cut_at=cut_at) is None
    mid = Device(str(flash))
    progress = mid.info().get("install") or {}
    mid.close()
    _say("install", f"power cut at flash op {cut_at}: {progress.get('next', 0)} segments were done")
    result = _install(flash, art)
    assert result is not None
    _say(
        "install",
        f"rerun resumed: {result['skipped']} skipped, {result['decoded']} decoded into "
        f"{result['slot']}; SHA-256 verified, set to boot once",
    )

    dev = Device(str(flash))
    boot = dev.power_on(self_test=True)
    for line in boot["log"]:
        _say("boot", line)
    info1 = dev.info()
    dev.close()

    art2 = work / "update-1.2.0.ota"
    art2.write_bytes(
        build_full(bad, key, hw=[HW], chip="esp32", version="1.2.0", security_counter=1)
    )
    result2 = _install(flash, art2)
    assert result2 is not None
    _say("install", f"v1.2.0 installed into {result2['slot']}")
    dev = Device(str(flash))
    boot2 = dev.power_on(self_test=False)
    for line in boot2["log"]:
        _say("boot", line)
    info2 = dev.info()
    dev.close()

    running = info2["slots"][info2["running_slot"]]
    confirmed = info1["slots"][info1["running_slot"]]["version"] == "1.1.0"
    ok = confirmed and running["version"] == "1.1.0"
    print()
    print("summary")
    print(
        f"  update 1.0.0 -> 1.1.0 : {'confirmed' if confirmed else 'FAILED'}"
        ", survived a power cut mid-install"
    )
    print(
        f"  update 1.1.0 -> 1.2.0 : self-test failed, rolled back to {running['version']} "
        f"in {running['label']} by itself"
    )
    print(f"  security counter      : {info2['security_counter']}")
    print(
        f"  artifact              : {info['file_size']} B for {info['target_size']} B "
        f"(zstd segments, Ed25519-signed)"
    )
    print(f"  time                  : {time.monotonic() - t0:.1f} s   files in {work}")
    return 0 if ok else 1
