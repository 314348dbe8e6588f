"""`edgefleet sim`: help on every option, clear errors for bad input, a short real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.core import TyperOption
from typer.testing import CliRunner

from fleet.bundle import DeviceBundle
from fleet.signing import HubSigningKey
from sim.cli import app
from sim.enrol import load_bundles
from sim.errors import EnrolmentError
from tests.support.broker import Broker

root = typer.Typer()
root.add_typer(app, name="sim")


def test_every_option_has_help() -> None:
    command = typer.main.get_command(app)
    assert (command.help or "").strip()
    for param in command.params:
        if param.param_type_name == "option" and param.name != "help":
            assert isinstance(param, TyperOption), f"{param.opts[0]} is not declared through typer"
            assert (param.help or "").strip(), f"{param.opts[0]} has no help"
    result = CliRunner().invoke(root, ["sim", "--help"])
    assert result.exit_code == 0 and "--agents" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--agents N"),
        (["--agents", "3"], "say where the agents come from"),
        (["--agents", "0", "--broker", "mqtt://127.0.0.1:1", "--hub-key", "x"], "--agents N"),
        (["--agents", "2", "--hub", "http://127.0.0.1:1"], "--token"),
        (["--agents", "2", "--broker", "http://x", "--hub-key", "K"], "public key"),
        (["--agents", "2", "--profile", "1.0.0:p50=fast", "--broker", "mqtt://h:1", "--hub-key", "K"], "p50"),
        (["--agents", "2", "--profile", "nope"], "VERSION:key=value"),
        (["--agents", "2", "--labels", "novalue"], "key=value"),
        (["--agents", "2", "--offline-p", "2"], "offline_p"),
        (["--agents", "2", "--hub", "http://127.0.0.1:9", "--token", "t"], "unreachable"),
    ],
)
def test_bad_options_get_a_clear_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(root, ["sim", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")


def test_the_token_comes_from_edgefleet_token_as_for_every_other_command() -> None:
    result = CliRunner().invoke(root, ["sim", "--agents", "2", "--hub", "http://127.0.0.1:9"],
                                env={"EDGEFLEET_TOKEN": "t"})  # fmt: skip
    assert result.exit_code == 2 and "unreachable" in result.output.replace("\n", " "), result.output


def test_bundle_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(EnrolmentError, match="no \\*.json"):
        load_bundles(tmp_path)
    (tmp_path / "a.json").write_text('{"kind": "bundle", "device_id": "BAD ID"}')
    with pytest.raises(EnrolmentError, match="a.json"):
        load_bundles(tmp_path)
    (tmp_path / "a.json").unlink()
    (tmp_path / "b.json").write_bytes(b"\x00" * 300_000)
    with pytest.raises(EnrolmentError, match="b.json"):
        load_bundles(tmp_path)


def test_short_run_from_bundles_prints_a_json_summary(broker: Broker, topic_prefix: str, tmp_path: Path) -> None:
    key = HubSigningKey.generate().public.to_text()
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    for i in range(3):
        DeviceBundle(device_id=f"cli-{i}", broker_url=broker.url, mqtt_username="u", mqtt_password="p",
                     topic_prefix=topic_prefix, hub_public_key=key).save(bundles / f"cli-{i}.json")  # fmt: skip
    args = ["sim", "--bundles", str(bundles), "--duration", "1", "--json", "--telemetry-s", "0.2", "--labels", "a=b"]
    result = CliRunner().invoke(root, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["agents"] == 3 and summary["transport"]["connects"] == 3
    assert summary["stats"]["telemetry"] >= 3 and summary["phases"] == {"idle": 3}
