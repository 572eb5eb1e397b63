"""Chip, version and security counter come from the image, the same way for
``flash init`` and ``build``; ``inspect`` reads raw ESP images, checks
signatures with ``--pubkey`` and shows the RAM the device will reckon."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from otaferry.device_fw.delta_apply import ram_budget
from otaferry.device_fw.device import Device
from otaferry.device_fw.installer import install_stream
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.artifact import open_artifact
from otaferry.tools.cli import main
from otaferry.tools.sample_fw import make_image
from paths import ESP32_BLINK, ESP32_HELLO, ESP8266_V194


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    k = tmp_path / "vendor.key"
    assert run(capsys, "keygen", k)[0] == 0
    return k


def info(capsys: pytest.CaptureFixture[str], flash: Path) -> dict:  # type: ignore[type-arg]
    code, out, _ = run(capsys, "device", "info", "--json", "--flash", flash)
    assert code == 0
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.mark.parametrize("chip", ["esp32s3", "esp32c3"])
def test_flash_init_takes_chip_version_counter_from_the_image(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str], chip: str
) -> None:
    """Before: an ESP32-S3 image made an 'esp32' device and the first update
    failed WRONG_CHIP. Now the device is what its image says, and the update
    built from the next image by the same rules installs."""
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(make_image("3.0.0", chip=chip, secure_version=2))
    new.write_bytes(make_image("3.1.0", chip=chip, secure_version=2, revision=1))
    flash, art = tmp_path / "flash.bin", tmp_path / "u.ota"
    code, out, _ = run(capsys, "flash", "init", "--hw", "b", "--pubkey", f"{key}.pub",
                       "--image", old, flash)  # fmt: skip
    assert code == 0 and f"chip {chip}" in out
    dev = info(capsys, flash)
    assert (dev["chip"], dev["security_counter"]) == (chip, 2)
    assert dev["slots"][0]["version"] == "3.0.0"
    assert run(capsys, "build", "--key", key, "--hw", "b", new, "-o", art)[0] == 0
    code, _, err = run(capsys, "device", "install", "--flash", flash, art)
    assert code == 0, err


def test_real_esp32_images_through_init_build_install(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flash, art = tmp_path / "flash.bin", tmp_path / "u.ota"
    assert run(capsys, "flash", "init", "--hw", "b", "--pubkey", f"{key}.pub",
               "--image", ESP32_BLINK, flash)[0] == 0  # fmt: skip
    dev = info(capsys, flash)
    assert (dev["chip"], dev["slots"][0]["version"]) == ("esp32", "1")
    code, out, err = run(capsys, "build", "--key", key, "--hw", "b", ESP32_HELLO, "-o", art)
    assert code == 0 and err == "" and "version 6970792-dirty, chip esp32" in out
    code, out, _ = run(capsys, "inspect", "--json", art)
    m = json.loads(out)
    assert (m["project"], m["version"], m["security_counter"]) == (
        "hello_world",
        "6970792-dirty",
        0,
    )
    assert run(capsys, "device", "install", "--flash", flash, art)[0] == 0

    # an ESP8266 image: chip from the image, version 'factory' (its format has none)
    flash2 = tmp_path / "f2.bin"
    assert run(capsys, "flash", "init", "--hw", "b", "--pubkey", f"{key}.pub",
               "--image", ESP8266_V194, flash2)[0] == 0  # fmt: skip
    dev = info(capsys, flash2)
    assert (dev["chip"], dev["slots"][0]["version"]) == ("esp8266", "factory")


def test_flags_that_contradict_the_image(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    art = tmp_path / "u.ota"
    build = ["build", "--key", key, "--hw", "b", ESP32_BLINK, "-o", art]
    code, _, err = run(capsys, *build, "--chip", "esp32s3")
    assert code == 1 and err.startswith("otaferry: error[WRONG_CHIP]: ") and "--force" in err
    assert not art.exists()
    code, _, err = run(capsys, *build, "--chip", "esp32s3", "--force")
    assert code == 0 and err.startswith("otaferry: warning: --chip esp32s3 contradicts")
    code, _, err = run(capsys, *build, "--version", "2.0", "--security-counter", "4")
    assert code == 0
    assert "--version 2.0 differs from" in err and "secure_version (0)" in err
    code, _, err = run(capsys, *build, "--chip", "esp32")  # agreeing flags: silent
    assert code == 0 and err == ""
    # flash init applies the same rule
    code, _, err = run(capsys, "flash", "init", "--hw", "b", "--pubkey", f"{key}.pub", "--chip",
                       "esp32c3", "--image", ESP32_BLINK, tmp_path / "f.bin")  # fmt: skip
    assert code == 1 and "error[WRONG_CHIP]" in err and not (tmp_path / "f.bin").exists()


def test_missing_flags_say_the_true_reason(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    art = tmp_path / "u.ota"
    # A real ESP32 app image *has* an app description: only --hw is missing.
    code, _, err = run(capsys, "build", "--key", key, ESP32_BLINK, "-o", art)
    assert code == 1 and "--hw required" in err
    assert "app description" not in err and "--version" not in err
    # An ESP32 image whose app description is gone: now that is the reason.
    no_desc = bytearray(ESP32_BLINK.read_bytes())
    assert struct.unpack_from("<I", no_desc, 32)[0] == 0xABCD5432
    no_desc[32:36] = bytes(4)
    (tmp_path / "nodesc.bin").write_bytes(bytes(no_desc))
    code, _, err = run(capsys, "build", "--key", key, "--hw", "b", tmp_path / "nodesc.bin",
                       "-o", art)  # fmt: skip
    assert code == 1 and "--version required" in err and "no ESP-IDF app description" in err
    # Not an ESP image at all: chip and version are both unknown, and it says so.
    (tmp_path / "raw.bin").write_bytes(b"\x00" * 4096)
    code, _, err = run(capsys, "build", "--key", key, "--hw", "b", tmp_path / "raw.bin", "-o", art)
    assert code == 1 and "--chip and --version required" in err and "not an ESP app image" in err


def test_inspect_a_raw_esp_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "--json", ESP32_BLINK)
    d = json.loads(out)
    assert code == 0 and d["kind"] == "esp-app-image"
    assert (d["chip"], d["project"], d["version"], d["segment_count"]) == ("esp32", "blink", "1", 5)
    assert d["checksum_ok"] and d["sha256_ok"] and d["entry_addr"] == 0x40081150
    code, out, _ = run(capsys, "inspect", ESP32_BLINK)
    assert code == 0 and "0x3f400020 40060 B at 0x20" in out and "0x40081150" in out

    cut = tmp_path / "cut.bin"
    cut.write_bytes(ESP32_BLINK.read_bytes()[:50_000])
    code, _, err = run(capsys, "inspect", cut)
    assert code == 1 and err.startswith("otaferry: error[TRUNCATED]: ") and err.count("\n") == 1
    flipped = bytearray(ESP32_BLINK.read_bytes())
    flipped[5000] ^= 0x40
    (tmp_path / "flip.bin").write_bytes(bytes(flipped))
    code, _, err = run(capsys, "inspect", tmp_path / "flip.bin")
    assert code == 1 and "error[SEGMENT_CORRUPT]" in err and "checksum" in err


def test_inspect_checks_the_signature_with_pubkey(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    art = tmp_path / "u.ota"
    assert run(capsys, "build", "--key", key, "--hw", "b", ESP32_BLINK, "-o", art)[0] == 0
    code, out, _ = run(capsys, "inspect", "--json", "--pubkey", f"{key}.pub", art)
    assert code == 0 and json.loads(out)["signature_ok"] is True
    other = tmp_path / "other.key"
    run(capsys, "keygen", other)
    code, out, err = run(capsys, "inspect", "--json", "--pubkey", f"{other}.pub", art)
    assert code == 1 and json.loads(out)["signature_error"] == "UNKNOWN_KEY"
    assert err.startswith("otaferry: error[UNKNOWN_KEY]: ") and err.count("\n") == 1
    # the artifact without --pubkey: not checked, and it says so (null)
    code, out, _ = run(capsys, "inspect", "--json", art)
    assert code == 0 and json.loads(out)["signature_ok"] is None


def test_inspect_shows_the_ram_the_device_reckons_for_a_delta(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """For a delta the zstd formula is the wrong number: the device budgets the
    applier's RAM for the biggest segment, and refuses above its ram_budget."""
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(make_image("1.0.0"))
    new.write_bytes(make_image("1.1.0", revision=1))
    art = tmp_path / "d.ota"
    assert run(capsys, "build", "--key", key, "--hw", "b", "--base", old, new, "-o", art)[0] == 0
    shown = json.loads(run(capsys, "inspect", "--json", art)[1])["decoder_ram_bytes"]
    with open_artifact(art) as reader:
        biggest = max(s.length for s in reader.manifest.segments)
        codec = reader.manifest.codec
    assert shown == ram_budget(biggest, codec=codec)  # the formula of its codec (fdelta1/2/3)

    def device(budget: int) -> Device:
        path = tmp_path / f"f{budget}.bin"
        return Device.create(
            str(path), hw="b", chip="esp32", trusted_keys=[_pub(key)], image=old.read_bytes(),
            version="1.0.0",
            limits={"max_window_log": 13, "max_segment_payload": 8256, "ram_budget": budget},
        )  # fmt: skip

    with device(shown - 1) as dev, pytest.raises(DeviceError) as exc, open(art, "rb") as f:
        install_stream(dev, f)
    assert str(shown) in exc.value.message
    with device(shown) as dev, open(art, "rb") as f:
        install_stream(dev, f)


def _pub(key: Path) -> bytes:
    from otaferry.protocol.keys import load_verify_key

    return load_verify_key(f"{key}.pub").raw
