"""The otaferry command line, end to end through real files and the real device model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from otaferry.protocol.espimage import parse_esp_image
from otaferry.tools.cli import main
from otaferry.tools.sample_fw import make_image
from paths import ESP8266_V110, ESP8266_V194


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    key = tmp_path / "vendor.key"
    assert run(capsys, "keygen", str(key))[0] == 0
    return key


def test_full_flow_with_json_outputs(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flash, art = tmp_path / "flash.bin", tmp_path / "new.ota"
    pub = f"{keys}.pub"
    assert (
        run(
            capsys,
            "flash",
            "init",
            "--hw",
            "b1",
            "--chip",
            "esp8266",
            "--trust",
            pub,
            "--image",
            str(ESP8266_V194),
            "--version",
            "1.9.4",
            str(flash),
        )[0]
        == 0
    )
    assert (
        run(
            capsys,
            "build",
            "--key",
            str(keys),
            "--hw",
            "b1",
            "--chip",
            "esp8266",
            "--version",
            "1.10",
            "--security-counter",
            "3",
            str(ESP8266_V110),
            "-o",
            str(art),
        )[0]
        == 0
    )

    code, out, _ = run(capsys, "inspect", "--json", str(art))
    assert code == 0
    info = json.loads(out)
    for k in (
        "payload_kind",
        "payload_size",
        "target_size",
        "target_sha256",
        "version",
        "hw",
        "chip",
        "security_counter",
        "codec",
        "segment_size",
        "segments",
        "key_id",
    ):
        assert k in info, k
    assert info["payload_kind"] == "full" and info["version"] == "1.10"
    assert info["target_size"] == ESP8266_V110.stat().st_size
    assert info["security_counter"] == 3 and info["hw"] == ["b1"]

    assert run(capsys, "verify", "--pubkey", pub, str(art))[0] == 0
    assert run(capsys, "device", "install", "--flash", str(flash), str(art))[0] == 0
    code, out, _ = run(capsys, "device", "boot", "--flash", str(flash), "--json")
    boot = json.loads(out)
    assert code == 0 and boot["label"] == "ota_1" and boot["state"] == "VALID"

    code, out, _ = run(capsys, "device", "info", "--json", "--flash", str(flash))
    dev = json.loads(out)
    assert dev["running_slot"] == 1 and dev["security_counter"] == 3
    assert [s["label"] for s in dev["slots"]] == ["ota_0", "ota_1"]
    assert dev["slots"][1]["version"] == "1.10" and dev["slots"][1]["state"] == "VALID"
    assert dev["slots"][0]["version"] == "1.9.4"


def test_fail_self_test_rolls_back_on_the_cli(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flash, art = tmp_path / "flash.bin", tmp_path / "new.ota"
    old, new = (
        make_image("2.0.0", chip="esp32c3"),
        make_image("2.1.0", chip="esp32c3", secure_version=2, revision=1),
    )
    (tmp_path / "old.bin").write_bytes(old)
    (tmp_path / "new.bin").write_bytes(new)
    assert (
        run(
            capsys,
            "flash",
            "init",
            "--hw",
            "b1",
            "--chip",
            "esp32c3",
            "--trust",
            f"{keys}.pub",
            "--image",
            str(tmp_path / "old.bin"),
            str(flash),
        )[0]
        == 0
    )
    # chip, version and security counter come from the ESP image itself
    assert (
        run(
            capsys,
            "build",
            "--key",
            str(keys),
            "--hw",
            "b1",
            str(tmp_path / "new.bin"),
            "-o",
            str(art),
        )[0]
        == 0
    )
    code, out, _ = run(capsys, "inspect", "--json", str(art))
    info = json.loads(out)
    assert (info["chip"], info["version"], info["security_counter"]) == ("esp32c3", "2.1.0", 2)
    assert info["project"] == "otaferry-demo"
    assert run(capsys, "device", "install", "--flash", str(flash), str(art))[0] == 0
    code, out, _ = run(capsys, "device", "boot", "--flash", str(flash), "--fail-self-test")
    assert code == 0 and "FAILED" in out and "booting ota_0" in out
    code, out, _ = run(capsys, "device", "info", "--json", "--flash", str(flash))
    dev = json.loads(out)
    assert dev["running_slot"] == 0 and dev["slots"][0]["version"] == "2.0.0"
    assert dev["slots"][1]["state"] == "INVALID"


def test_errors_are_one_line_with_a_reason(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    art = tmp_path / "new.ota"
    assert (
        run(
            capsys,
            "build",
            "--key",
            str(keys),
            "--hw",
            "b1",
            "--chip",
            "esp8266",
            "--version",
            "1",
            str(ESP8266_V110),
            "-o",
            str(art),
        )[0]
        == 0
    )
    other = tmp_path / "other.key"
    run(capsys, "keygen", str(other))

    code, out, err = run(capsys, "verify", "--pubkey", f"{other}.pub", str(art))
    assert code == 1 and out == ""
    assert err.startswith("otaferry: error[UNKNOWN_KEY]: ") and err.count("\n") == 1

    data = bytearray(art.read_bytes())
    data[-5] ^= 0xFF
    bad = tmp_path / "bad.ota"
    bad.write_bytes(bytes(data))
    code, _, err = run(capsys, "verify", "--pubkey", f"{keys}.pub", str(bad))
    assert code == 1 and "error[SEGMENT_CORRUPT]" in err

    code, _, err = run(capsys, "verify", "--pubkey", f"{keys}.pub", str(tmp_path / "missing.ota"))
    assert code == 1 and "error[IO_ERROR]" in err

    code, _, err = run(
        capsys,
        "build",
        "--key",
        str(keys),
        "--hw",
        "b1",
        str(ESP8266_V110),
        "-o",
        str(tmp_path / "x.ota"),
    )
    # an ESP8266 image names its chip but carries no version: --version is needed
    assert code == 1 and "--version required" in err and "--chip" not in err
    assert parse_esp_image(ESP8266_V110.read_bytes()) is not None

    code, _, err = run(capsys, "keygen", str(keys))
    assert code == 1 and "error[BAD_KEY]" in err  # refuses to overwrite a key

    flash = tmp_path / "flash.bin"
    run(
        capsys,
        "flash",
        "init",
        "--hw",
        "b2",
        "--chip",
        "esp8266",
        "--trust",
        f"{keys}.pub",
        "--image",
        str(ESP8266_V194),
        str(flash),
    )
    code, _, err = run(capsys, "device", "install", "--flash", str(flash), str(art))
    assert code == 1 and err.startswith("otaferry: error[WRONG_HW]: ")


def test_seed_partition_table_is_refused_by_flash_init(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "seed.csv"
    csv.write_text(
        "nvs,      data, nvs,     0x9000,  0x6000,\n"
        "phy_init, data, phy,     0xf000,  0x1000,\n"
        "factory,  app,  factory, 0x10000, 1M,\n"
    )
    code, _, err = run(
        capsys,
        "flash",
        "init",
        "--hw",
        "b",
        "--trust",
        f"{keys}.pub",
        "--image",
        str(ESP8266_V194),
        "--partitions",
        str(csv),
        str(tmp_path / "f.bin"),
    )
    assert code == 1 and "error[NO_OTA_SLOT]" in err


def test_demo_runs_as_a_command(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("otaferry")
    proc = subprocess.run(
        [str(exe), "demo", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "1.0.0 -> 1.1.0 (full)  : confirmed after its check-in" in out
    assert "rolled back by itself (SELF_TEST_FAILED)" in out
    assert "rolled back by itself (CHECKIN_TIMEOUT)" in out
    assert "running now            : 1.1.0 in ota_1 (VALID)" in out
    assert (tmp_path / "flash.bin").is_file() and f"files kept in {tmp_path}" in out


def test_provision_and_revocation(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flash, art = tmp_path / "flash.bin", tmp_path / "new.ota"
    gw = tmp_path / "gw.key"
    assert run(capsys, "keygen", "--link", str(gw))[0] == 0
    assert (
        run(
            capsys,
            "flash",
            "init",
            "--hw",
            "b1",
            "--chip",
            "esp8266",
            "--trust",
            f"{keys}.pub",
            "--image",
            str(ESP8266_V194),
            "--version",
            "1",
            str(flash),
        )[0]
        == 0
    )
    code, out, _ = run(
        capsys,
        "device",
        "provision",
        "--flash",
        str(flash),
        "--gateway-pub",
        f"{gw}.pub",
        "--out",
        str(tmp_path / "dev.pub"),
    )
    assert code == 0 and "plaintext refused" in out and (tmp_path / "dev.pub").is_file()
    code, out, _ = run(capsys, "device", "info", "--json", "--flash", str(flash))
    info = json.loads(out)
    assert len(info["gateways"]) == 1 and info["require_secure"] is True
    assert out.count(info["link_public_key"]) == 1 and len(info["link_public_key"]) == 64

    assert (
        run(
            capsys,
            "build",
            "--key",
            str(keys),
            "--hw",
            "b1",
            "--chip",
            "esp8266",
            "--version",
            "2",
            str(ESP8266_V110),
            "-o",
            str(art),
        )[0]
        == 0
    )
    key_id = json.loads(run(capsys, "inspect", "--json", str(art))[1])["key_id"]
    assert run(capsys, "device", "provision", "--flash", str(flash), "--revoke", key_id)[0] == 0
    code, _, err = run(capsys, "device", "install", "--flash", str(flash), str(art))
    assert code == 1 and "error[REVOKED_KEY]" in err
