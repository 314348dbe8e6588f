"""`agent run` and settings: help, bad bundles, bad settings, and a real run stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app, load_bundle
from agent.errors import BundleError
from agent.settings import AgentSettings
from infra.errors import SettingsError
from tests.agent.conftest import REPO
from tests.support.broker import Broker
from tests.support.hubside import HubSide

runner = CliRunner()


def test_run_has_help_for_every_option() -> None:
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--bundle", "--data-dir", "--log-level", "--json"):
        assert option in result.output


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a device bundle"),
        (b"{}", "not a device bundle"),
        (b"[1]", "not a device bundle"),
        (b'{"kind": "bundle", "device_id": "BAD ID"}', "device_id"),
        (b"\xff" * 10, "not a device bundle"),
        (b" " * (300 * 1024), "larger than"),
    ],
)
def test_bad_bundles_are_refused_with_the_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bundle.json"
    path.write_bytes(content)
    with pytest.raises(BundleError, match=reason):
        load_bundle(path)
    result = runner.invoke(app, ["run", "--bundle", str(path), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2


def test_missing_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope.json")


def test_settings_from_env_and_overrides(tmp_path: Path) -> None:
    env = {
        "EDGEFLEET_AGENT_DATA_DIR": "/var/x",
        "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "2.5",
        "EDGEFLEET_AGENT_STORE_GC_KEEP_BYTES": "1000",
        "EDGEFLEET_AGENT_LINK_BACKOFF_MAX_S": "4",
    }
    s = AgentSettings.from_env(env, data_dir=tmp_path)
    assert s.data_dir == tmp_path and s.telemetry.interval_s == 2.5
    assert s.store.gc_keep_bytes == 1000 and s.link.backoff_max_s == 4.0
    assert AgentSettings.from_env({}).telemetry.interval_s == 10.0


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "soon"}, "TELEMETRY_INTERVAL_S"),
        ({"EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "-1"}, "TELEMETRY_INTERVAL_S"),
        ({"EDGEFLEET_AGENT_TELEMETRY_SPOOL_MAX_WINDOWS": "0"}, "SPOOL_MAX_WINDOWS"),
        (
            {"EDGEFLEET_AGENT_TELEMETRY_INTERVALL_S": "1"},
            "is not a setting; did you mean EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(env: dict[str, str], reason: str) -> None:
    with pytest.raises(SettingsError, match=reason):
        AgentSettings.from_env(env)


def test_agent_run_serves_and_stops_on_sigterm(broker: Broker, hub: HubSide, device_id: str, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.json"
    hub.bundle(device_id, broker.url).save(bundle)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--headless", "--bundle", str(bundle), "--data-dir", str(tmp_path / "d"),
         "--json"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        hub.wait(lambda: any(s.state == "online" for s in hub.statuses), what="birth")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    hub.wait(lambda: hub.statuses[-1].state == "offline", what="offline")
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert (tmp_path / "d" / "telemetry.sqlite").exists() and (tmp_path / "d" / "store" / "blobs").is_dir()


def test_unknown_log_level_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--bundle", str(tmp_path / "b.json"), "--log-level", "chatty"])
    assert result.exit_code == 2
