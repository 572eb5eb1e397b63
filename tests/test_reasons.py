"""Reason codes are wire format: the device's copy must equal the host's."""

from otaferry.device_fw import reasons as device_reasons
from otaferry.protocol.errors import Reason


def test_device_and_host_reason_codes_agree() -> None:
    host = {r.name: int(r) for r in Reason}
    device = {name: code for code, name in device_reasons.NAMES.items()}
    assert host == device


def test_reason_codes_are_unique() -> None:
    assert len({int(r) for r in Reason}) == len(list(Reason))
    assert len(device_reasons.NAMES) == len(list(Reason))


def test_device_error_names_its_reason() -> None:
    err = device_reasons.DeviceError(device_reasons.DOWNGRADE, "counter 3 < 5")
    assert str(err) == "DOWNGRADE: counter 3 < 5"
    assert err.reason == Reason.DOWNGRADE
