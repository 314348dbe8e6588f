"""Transport-free parts: selectors, credentials, settings, device state, telemetry summaries."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from fleet.messages import ErrorInfo, ReportedState
from hub.credentials import Role, mosquitto_hash, mosquitto_verify, new_token, token_hash
from hub.devices import DeviceState, derive_state
from hub.errors import InvalidInput, InvalidSelector
from hub.selectors import check_labels, parse_label_args, parse_selector
from hub.settings import DeviceSettings, HubSettings
from hub.store import Desired, DesiredSlot, Device, TelemetryPoint
from hub.telemetry import summarise
from infra.errors import SettingsError
from tests.support.broker import Broker, free_port
from tests.support.wire import one_model_report


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("site=berlin", {"site": "berlin"}, True),
        ("site==berlin", {"site": "paris"}, False),
        ("site=berlin,tier!=canary", {"site": "berlin", "tier": "canary"}, False),
        ("site=berlin,tier!=canary", {"site": "berlin"}, True),
        ("site in (a, b)", {"site": "b"}, True),
        ("site in (a,b)", {"site": "c"}, False),
        ("site notin (a,b)", {"site": "c"}, True),
        ("site notin (a,b)", {}, True),
        ("gpu", {"gpu": "h100"}, True),
        ("gpu", {}, False),
        ("!canary", {}, True),
        ("!canary", {"canary": "yes"}, False),
        ("", {"any": "x"}, True),
        ("example.com/zone = eu-1 , tier in (prod)", {"example.com/zone": "eu-1", "tier": "prod"}, True),
    ],
)
def test_selectors_match_like_kubernetes(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(selector).matches(labels) is expected


@pytest.mark.parametrize("bad", ["site=", "a in", "a in (", "a in ()", "(a)", "a=b,", "a=b)", "!", "a b", "a=b=c"])
def test_bad_selectors_name_a_position(bad: str) -> None:
    with pytest.raises(InvalidSelector, match=r"position \d+"):
        parse_selector(bad)


def test_label_rules() -> None:
    assert parse_label_args(["site=berlin", "tier = canary"]) == {"site": "berlin", "tier": "canary"}
    for bad in (["nokey"], ["bad key=v"], ["k=bad value"], [f"k={'x' * 64}"]):
        with pytest.raises(InvalidInput):
            parse_label_args(bad)
    with pytest.raises(InvalidInput):
        check_labels({f"k{i}": "v" for i in range(65)})


def test_tokens_and_roles() -> None:
    t = new_token()
    assert t.startswith("eft_") and len(token_hash(t)) == 64 and t not in token_hash(t)
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR)


def test_mosquitto_hash_round_trip() -> None:
    h = mosquitto_hash("s3cret")
    assert h.startswith("$7$101$")
    assert mosquitto_verify("s3cret", h) and not mosquitto_verify("wrong", h)
    assert not mosquitto_verify("s3cret", "garbage")


def test_mosquitto_accepts_our_password_hashes(mosquitto_binary: str, tmp_path: Path) -> None:
    """The stored `$7$` hashes work as a Mosquitto password file (what the security issue will generate)."""
    pw_dir = Path(tempfile.mkdtemp(prefix="ef-pw-"))  # readable by the user mosquitto drops to
    pw_dir.chmod(0o755)
    pw_file = pw_dir / "passwd"
    pw_file.write_text(f"cam-1:{mosquitto_hash('right-password')}\n")
    pw_file.chmod(0o644)

    class PasswordBroker(Broker):
        def config(self) -> str:
            return super().config().replace("allow_anonymous true", f"allow_anonymous false\npassword_file {pw_file}")

    b = PasswordBroker(mosquitto_binary, tmp_path / "mq", free_port())
    b.start()
    try:
        import paho.mqtt.client as mqtt  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        def connect(password: str) -> bool:
            cl = mqtt.Client(CallbackAPIVersion.VERSION2)
            cl.username_pw_set("cam-1", password)
            cl.connect(b.host, b.port)
            result: list[bool] = []
            cl.on_connect = lambda _c, _u, _f, rc, _p: result.append(not rc.is_failure)
            deadline = time.monotonic() + 10
            while not result and time.monotonic() < deadline:
                cl.loop(0.05)
            cl.disconnect()
            return bool(result and result[0])

        assert connect("right-password")
        assert not connect("wrong-password")
    finally:
        b.stop()
        shutil.rmtree(pw_dir, ignore_errors=True)
    # and mosquitto_passwd's own hashes verify with ours
    if Path("/usr/bin/mosquitto_passwd").exists():
        pw = tmp_path / "pw2"
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "u", "pass-1"], check=True, capture_output=True)
        assert mosquitto_verify("pass-1", pw.read_text().strip().split(":", 1)[1])


def test_settings_from_env(tmp_path: Path) -> None:
    env = {
        "EDGEFLEET_HUB_DATA_DIR": str(tmp_path),
        "EDGEFLEET_HUB_BROKER_URL": "mqtt://10.0.0.1:1883",
        "EDGEFLEET_HUB_API_PORT": "9000",
        "EDGEFLEET_HUB_TRANSFER_RATE_LIMIT_BYTES_PER_S": "1000000",
        "EDGEFLEET_HUB_TOPIC_PREFIX": "acme/fleet",
    }
    s = HubSettings.from_env(env, api={"host": "0.0.0.0"})
    assert s.data_dir == tmp_path and s.broker.url == "mqtt://10.0.0.1:1883"
    assert s.api.port == 9000 and s.api.host == "0.0.0.0" and s.transfer.rate_limit_bytes_per_s == 1_000_000
    assert s.topic_prefix == "acme/fleet"
    with pytest.raises(SettingsError, match="EDGEFLEET_HUB_API_PORT"):
        HubSettings.from_env({"EDGEFLEET_HUB_API_PORT": "not-a-port"})
    with pytest.raises(SettingsError, match="EDGEFLEET_HUB_TOPIC_PREFIX"):
        HubSettings.from_env({"EDGEFLEET_HUB_TOPIC_PREFIX": "a/#"})


def _device(**kw: object) -> Device:
    base: dict[str, object] = {
        "id": "d", "labels": {}, "password_hash": "", "enrolled_at": 0.0, "enrolled_by": "t",
        "status": "online", "last_seen": 1000.0,
    }  # fmt: skip
    base.update(kw)
    return Device(**base)  # type: ignore[arg-type]


def _desired(version: int) -> Desired:
    return Desired("d", version, (DesiredSlot("m", "1.0.0", "a" * 64),), "", 0.0, 1.0)


def _rep(phase: str, desired_version: int | None = None, error: str | None = None) -> ReportedState:
    err = ErrorInfo(code=error, message="m", permanent=False, at=0.0) if error else None
    return one_model_report("d", seq=1, ts=0.0, phase=phase, desired_version=desired_version, error=err)


def test_derived_device_state() -> None:
    s = DeviceSettings(stale_after_s=60)

    def state(device: Device, desired: Desired | None = None) -> DeviceState:
        return derive_state(device, desired, now=1010.0, settings=s)

    assert state(_device(status=None, last_seen=None)) is DeviceState.OFFLINE
    assert state(_device(status="offline")) is DeviceState.OFFLINE
    assert state(_device(last_seen=900.0)) is DeviceState.OFFLINE  # silent too long
    assert state(_device(reported=_rep("failed", 1)), _desired(1)) is DeviceState.FAILED
    assert state(_device(reported=_rep("downloading"))) is DeviceState.UPDATING
    assert state(_device(reported=_rep("active", 1)), _desired(2)) is DeviceState.UPDATING
    assert state(_device(), _desired(1)) is DeviceState.UPDATING  # nothing reported yet
    assert state(_device(last_requests=100, last_errors=10)) is DeviceState.DEGRADED
    assert state(_device(reported=_rep("active", error="x"))) is DeviceState.DEGRADED
    assert state(_device(last_requests=100, last_errors=1)) is DeviceState.ONLINE
    assert state(_device(reported=_rep("active", 2)), _desired(2)) is DeviceState.ONLINE


def test_summaries_merge_histograms() -> None:
    counts = [0] * 24
    counts[5] = 100  # all in (1.5, 2] ms
    p = TelemetryPoint(0.0, 2, 100, 5, 180.0, tuple(counts), 3)
    s = summarise([p, p])
    assert s.requests == 200 and s.errors == 10 and s.error_rate == 0.05
    assert s.p50_ms is not None and 1.5 <= s.p50_ms <= 2.0
    empty = summarise([])
    assert empty.requests == 0 and empty.p95_ms is None and empty.error_rate is None
