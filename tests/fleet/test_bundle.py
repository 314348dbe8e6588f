import stat
from pathlib import Path

import pytest

from fleet.bundle import DeviceBundle
from fleet.signing import HubSigningKey


def _bundle() -> DeviceBundle:
    return DeviceBundle(
        device_id="cam-01",
        broker_url="mqtt://127.0.0.1:1883",
        mqtt_username="cam-01",
        mqtt_password="s3cret",
        hub_public_key=HubSigningKey.generate().public.to_text(),
        labels={"site": "berlin"},
    )


def test_round_trip_with_owner_only_mode(tmp_path: Path) -> None:
    path = tmp_path / "cam-01.json"
    b = _bundle()
    b.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DeviceBundle.load(path) == b


@pytest.mark.parametrize(
    "text",
    ["", "[]", "{}", '{"kind": "bundle"}', "\x00" * 10],
)
def test_malformed_bundles_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "b.json"
    path.write_text(text)
    with pytest.raises(ValueError):
        DeviceBundle.load(path)


def test_hostile_values_are_refused(tmp_path: Path) -> None:
    good = _bundle().model_dump()
    for field, value in [("device_id", "../etc"), ("topic_prefix", "fleet/#"), ("mqtt_password", "")]:
        with pytest.raises(ValueError):
            DeviceBundle.model_validate({**good, field: value})


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (300 * 1024))
    with pytest.raises(ValueError, match="larger than"):
        DeviceBundle.load(path)
