"""The hub's CLI commands against a real hub over HTTP."""

from __future__ import annotations

import json
import stat
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet_cli import app
from fleet.bundle import DeviceBundle
from tests.support.hub import RunningHub

runner = CliRunner()


def _run(h: RunningHub, *args: str) -> str:
    result = runner.invoke(app, [*args, "--url", h.url, "--token", h.admin_token])
    assert result.exit_code == 0, result.output
    return result.output


def test_hub_init_prints_the_admin_token_once(tmp_path: Path) -> None:
    result = runner.invoke(app, ["hub", "init", "--data-dir", str(tmp_path / "d"), "--json"])
    assert result.exit_code == 0, result.output
    token = json.loads(result.output)["admin_token"]
    assert token.startswith("eft_")
    again = runner.invoke(app, ["hub", "init", "--data-dir", str(tmp_path / "d")])
    assert again.exit_code == 1 and "already holds a hub" in again.output


def test_model_device_deploy_commands(running_hub: RunningHub, samples: Path, tmp_path: Path) -> None:
    h = running_hub
    out = _run(h, "model", "push", str(samples / "mobilenet-like.onnx"))
    assert "mobilenet-like:1.0.0 stored" in out
    assert "1.0.0 already stored (" in _run(h, "model", "push", str(samples / "mobilenet-like.onnx"))
    h.hub.registry.set_aside(json.loads(_run(h, "model", "show", "mobilenet-like:1.0.0", "--json"))["sha256"], "test")
    out = _run(h, "model", "push", str(samples / "mobilenet-like.onnx"))  # the hub's copy was set aside: put back
    assert "already stored; the hub's copy of its bytes was missing and is put back" in out
    pushed = json.loads(_run(h, "model", "push", str(samples / "tiny-detector.onnx"), "--version", "2.0.0", "--json"))
    assert pushed["version"] == "2.0.0" and pushed["created"] is True
    listed = json.loads(_run(h, "model", "list", "--json"))
    assert {(m["name"], m["version"]) for m in listed} == {("mobilenet-like", "1.0.0"), ("tiny-detector", "2.0.0")}
    assert "mobilenet-like" in _run(h, "model", "list")
    assert "wanted by: -" in _run(h, "model", "show", "mobilenet-like:1.0.0")

    bundle_path = tmp_path / "cam-1.json"
    _run(h, "device", "add", "cam-1", "--label", "site=berlin", "--label", "tier=canary", "--out", str(bundle_path))
    assert stat.S_IMODE(bundle_path.stat().st_mode) == 0o600
    bundle = DeviceBundle.load(bundle_path)
    assert bundle.device_id == "cam-1" and bundle.labels == {"site": "berlin", "tier": "canary"}
    assert bundle.hub_public_key == h.hub.key.public.to_text()
    _run(h, "device", "add", "cam-2", "-l", "site=paris", "--out", str(tmp_path / "cam-2.json"))
    rows = json.loads(_run(h, "device", "list", "--selector", "site in (berlin)", "--json"))
    assert [r["id"] for r in rows] == ["cam-1"]
    _run(h, "device", "label", "cam-2", "tier=prod", "--remove", "site")
    assert json.loads(_run(h, "device", "show", "cam-2", "--json"))["labels"] == {"tier": "prod"}
    assert "cam-2" in _run(h, "device", "list")

    res = json.loads(_run(h, "deploy", "mobilenet-like:1.0.0", "--selector", "tier=canary", "--json"))
    assert res["devices"] == {"cam-1": 1}
    assert "cam-2" in _run(h, "deploy", "mobilenet-like:1.0.0", "-s", "tier", "--provider", "CPUExecutionProvider")
    assert "cam-1" in _run(h, "model", "show", "mobilenet-like:1.0.0")

    # a second model on the same devices: the first stays; `device list` has a line per model of a device
    res = json.loads(_run(h, "deploy", "tiny-detector:2.0.0", "-s", "tier=canary", "--json"))
    assert res["devices"] == {"cam-1": 3}  # its third signed desired state
    (cam1,) = json.loads(_run(h, "device", "list", "-s", "site=berlin", "--json"))
    assert cam1["desired_models"] == ["mobilenet-like:1.0.0", "tiny-detector:2.0.0"]
    table = CliRunner().invoke(app, ["device", "list", "-s", "site=berlin", "--url", h.url, "--token", h.admin_token],
                               terminal_width=200)  # fmt: skip
    lines = [line for line in table.output.splitlines() if "mobilenet-like" in line or "tiny-detector" in line]
    assert len(lines) == 2 and not any("mobilenet-like" in line and "tiny-detector" in line for line in lines)
    assert sum("cam-1" in line for line in table.output.splitlines()) == 1  # one row, a line per model
    removed = _run(h, "undeploy", "tiny-detector", "-s", "site=berlin")
    assert "tiny-detector removed from the desired state of 1 device" in removed
    (cam1,) = json.loads(_run(h, "device", "list", "-s", "site=berlin", "--json"))
    assert cam1["desired_models"] == ["mobilenet-like:1.0.0"]
    again = runner.invoke(app, ["undeploy", "tiny-detector", "-s", "site=berlin", "--url", h.url, "--token",
                                h.admin_token])  # fmt: skip
    assert again.exit_code == 1 and "has model 'tiny-detector'" in again.output

    viewer = json.loads(_run(h, "hub", "token", "ci", "--role", "viewer", "--json"))["token"]
    denied = runner.invoke(app, ["device", "add", "x", "--url", h.url, "--token", viewer])
    assert denied.exit_code == 1 and "forbidden" in denied.output


def test_cli_errors_are_one_line_and_exit_1(running_hub: RunningHub, tmp_path: Path) -> None:
    h = running_hub
    for args in (["device", "show", "nope"], ["deploy", "m:1.0.0", "-s", "site="], ["device", "list", "-s", "a in"]):
        result = runner.invoke(app, [*args, "--url", h.url, "--token", h.admin_token])
        assert result.exit_code == 1, result.output
        assert "error" in result.output
    bad_ref = runner.invoke(app, ["model", "show", "no-version", "--url", h.url])
    assert bad_ref.exit_code == 2
    unreachable = runner.invoke(app, ["device", "list", "--url", "http://127.0.0.1:9", "--token", "x"])
    assert unreachable.exit_code == 1 and "cannot reach" in unreachable.output
    bad_label = runner.invoke(
        app, ["device", "add", "d", "-l", "novalue", "--url", h.url, "--out", str(tmp_path / "b")]
    )
    assert bad_label.exit_code == 1 and "key=value" in bad_label.output


def test_a_bundle_destination_that_cannot_be_written_is_refused_before_enrolling(
    running_hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle holds a password the hub gives out once, and an enrolled id cannot be enrolled again: a bad
    --out used to enrol the device and then end in a traceback, the bundle lost and the id spent."""
    h = running_hub
    (tmp_path / "a-file").write_text("x")
    for out, reason in ((tmp_path / "nowhere" / "cam-1.json", "there is no folder"), (tmp_path, "is a folder")):
        result = runner.invoke(app, ["device", "add", "cam-1", "--out", str(out), "--url", h.url, "--token",
                                     h.admin_token])  # fmt: skip
        assert result.exit_code == 1 and reason in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    batch = runner.invoke(app, ["device", "add", "--count", "2", "--pattern", "cam-{n}", "--out",
                                str(tmp_path / "a-file"), "--url", h.url, "--token", h.admin_token])  # fmt: skip
    assert batch.exit_code == 1 and "is a file" in batch.output, batch.output
    assert json.loads(_run(h, "device", "list", "--json")) == []  # nothing was enrolled
    assert "cam-1 enrolled" in _run(h, "device", "add", "cam-1", "--out", str(tmp_path / "cam-1.json"))

    # the destination fails only once the hub has enrolled: the bundles go to a private folder, named
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = tmp_path / "bundles"
    (folder / "cam-2.bundle.json").mkdir(parents=True)  # in the way of the first bundle
    late = runner.invoke(app, ["device", "add", "--count", "2", "--pattern", "cam-{n}", "--start", "2", "--out",
                               str(folder), "--url", h.url, "--token", h.admin_token])  # fmt: skip
    assert late.exit_code == 1 and "the 2 bundles not written are in" in late.output, late.output
    (rescue,) = tmp_path.glob("edgefleet-bundles-*")
    assert stat.S_IMODE(rescue.stat().st_mode) == 0o700
    saved = sorted(DeviceBundle.load(p).device_id for p in rescue.iterdir())
    assert saved == ["cam-2", "cam-3"]


def test_tokens_are_listed_and_revoked_from_the_cli(running_hub: RunningHub) -> None:
    """A leaked token is revoked with the CLI, not with curl against the API (there was no command)."""
    h = running_hub
    _run(h, "hub", "token", "ci", "--role", "operator")
    rows = json.loads(_run(h, "hub", "tokens", "--json"))
    ci = next(r for r in rows if r["name"] == "ci")
    assert ci["role"] == "operator" and ci["revoked"] is False and "token" not in ci
    table = _run(h, "hub", "tokens")
    assert "ci" in table and "operator" in table and "active" in table and "eft_" not in table
    assert f"token {ci['id']} revoked" in _run(h, "hub", "revoke-token", str(ci["id"]))
    assert next(r for r in json.loads(_run(h, "hub", "tokens", "--json")) if r["id"] == ci["id"])["revoked"]
    admin = next(r for r in rows if r["role"] == "admin")
    last = runner.invoke(app, ["hub", "revoke-token", str(admin["id"]), "--url", h.url, "--token", h.admin_token])
    assert last.exit_code == 1 and "create another admin token first" in last.output, last.output
    unknown = runner.invoke(app, ["hub", "revoke-token", "999999", "--url", h.url, "--token", h.admin_token])
    assert unknown.exit_code == 1 and "error (not_found)" in unknown.output, unknown.output
