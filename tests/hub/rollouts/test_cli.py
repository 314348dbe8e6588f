"""`edgefleet rollout ...` against a running hub: happy path, bad input, out-of-order commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edgefleet_cli import app
from hubclient.rollout import parse_duration
from tests.hub.rollouts.test_api import _hub
from tests.support.broker import Broker
from tests.support.hub import RunningHub


@pytest.fixture(scope="module")
def cli_hub(broker: Broker, tmp_path_factory: pytest.TempPathFactory, samples: Path) -> Iterator[RunningHub]:
    h = _hub(broker, tmp_path_factory.mktemp("hub"), samples)
    yield h
    h.stop()


def run(h: RunningHub, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["rollout", *args, "--url", h.url, "--token", h.admin_token])
    return res.exit_code, res.output


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("5m", 300), ("1.5h", 5400), ("2d", 172800), ("500ms", 0.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "-1m", "m", "1e3s", "1 2m", "5" * 400 + "q"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="not a duration"):
        parse_duration(text)


def test_start_list_status_and_commands(cli_hub: RunningHub) -> None:
    h = cli_hub
    code, out = run(h, "start", "mobilenet-like:1.0.0", "--selector", "site=b", "--waves", "1,100%", "--bake", "1s",
                    "--shadow", "0.5", "--on-failure", "rollback", "--json")  # fmt: skip
    assert code == 0, out
    started = json.loads(out)
    rid = started["id"]
    assert started["spec"]["shadow_rate"] == 0.5 and started["spec"]["on_failure"] == "rollback"
    assert started["spec"]["bake_s"] == 1 and [w["size"] for w in started["waves"]] == ["1", "100%"]
    code, out = run(h, "list")
    assert code == 0 and rid in out and "running" in out
    code, out = run(h, "status", rid, "--devices")
    assert code == 0 and "pending" in out and "cam-4" in out
    assert "Waves formed at the start, online devices first" in out  # how the waves were formed
    code, out = run(h, "pause", rid, "--reason", "lunch break")
    assert code == 0 and "paused" in out and "lunch break" in out
    code, out = run(h, "pause", rid)
    assert code == 1 and "invalid_transition" in out
    assert run(h, "resume", rid)[0] == 0
    code, out = run(h, "abort", rid, "--json", "--yes")
    assert code == 0 and json.loads(out)["state"] == "aborted"
    code, out = run(h, "rollback", rid)
    assert code == 1 and "cannot rollback" in out
    code, out = run(h, "list", "--active", "--json")
    assert code == 0 and rid not in {r["id"] for r in json.loads(out)}


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["start", "no-colon", "-s", "site=a"], 2, "MODEL:VERSION"),
        (["start", "m:1.0.0", "-s", "site=a", "--bake", "soon"], 2, "not a duration"),
        (["start", "m:1.0.0", "-s", "site=a", "--on-failure", "explode"], 2, "pause or rollback"),
        (["start", "mobilenet-like:1.0.0", "-s", "site=a", "--waves", "10%,5%,100%"], 1, "increase"),
        (["start", "mobilenet-like:1.0.0", "-s", "site=a", "--max-error-rate", "7"], 1, "--max-error-rate:"),
        (["start", "mobilenet-like:9.0.0", "-s", "site=a"], 1, "not_found"),
        (["start", "mobilenet-like:1.0.0", "-s", "site in (a"], 1, "invalid_selector"),
        (["status", "r-nothere"], 1, "not_found"),
        (["pause", "../../etc"], 1, "not_found"),
    ],
)
def test_bad_input_gets_a_clear_error(cli_hub: RunningHub, args: list[str], code: int, words: str) -> None:
    got, out = run(cli_hub, *args)
    assert got == code, out
    assert words in out.replace("\n", " ")


def test_an_unreachable_hub_is_a_clear_error() -> None:
    res = CliRunner().invoke(app, ["rollout", "list", "--url", "http://127.0.0.1:9", "--token", "x"])
    assert res.exit_code == 1 and "cannot reach" in res.output
