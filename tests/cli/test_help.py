"""Every CLI command has help text (a command without it fails here, as in sqlite-utils)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from edgefleet_cli import app

ROOT = Path(__file__).resolve().parents[2]


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    # typer vendors its own click: walk the command tree by duck typing, not isinstance
    # (and through list_commands/get_command: the root group imports its sub-commands only when asked)
    found = [(path, command)]
    if hasattr(command, "list_commands"):
        for name in command.list_commands(None):
            found += _commands(command.get_command(None, name), (*path, name))
    return found


def test_every_command_has_help() -> None:
    runner = CliRunner()
    commands = _commands(typer.main.get_command(app))
    assert len(commands) > 1
    for path, command in commands:
        assert (command.help or "").strip(), f"`edgefleet {' '.join(path)}` has no help text"
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden and param.name != "help":
                assert (param.help or "").strip(), f"`edgefleet {' '.join(path)} {param.opts[0]}` has no help"


def test_protocol_command_prints_the_reference() -> None:
    result = CliRunner().invoke(app, ["protocol"])
    assert result.exit_code == 0
    assert "## Topics" in result.output


def test_help_is_whole_at_80_columns_and_free_of_artefacts() -> None:
    runner = CliRunner()
    for path, _command in _commands(typer.main.get_command(app)):
        out = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}).output
        usage = next(line for line in out.splitlines() if line.startswith("Usage"))
        assert "{" not in usage, usage  # a required argument is NAME, not typer's {name}
        for line in out.splitlines():
            where = f"`edgefleet {' '.join(path)} --help`: {line!r}"
            assert len(line) <= 80, where
            assert "…" not in line and "<bool>" not in line, where
            assert line.startswith("Usage") or not line.rstrip().endswith("..."), where  # a sentence cut short
    deploy = runner.invoke(app, ["deploy", "--help"], env={"COLUMNS": "80"}).output
    assert "Usage: " in deploy and "deploy [OPTIONS] MODEL:VERSION" in deploy


def _python(code: str, *args: str) -> str:
    """What a fresh interpreter running `code` (with `args`) prints: what it imports is its own."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          check=True)  # fmt: skip
    return done.stdout


def test_a_command_imports_only_its_own_code() -> None:
    """The root group loads a sub-command when it runs: `hub serve` (and its telemetry writer process, which
    imports the script again) loads no agent, simulator or cluster code, and `version` loads no sub-command."""
    probe = (
        "import sys; sys.argv = ['edgefleet', *sys.argv[1:]]\n"
        "import edgefleet_cli\n"
        "try:\n    edgefleet_cli.main()\nexcept SystemExit:\n    pass\n"
        "ours = ('agent', 'sim', 'hub', 'hubclient')\n"
        "print('loaded:', *sorted(m for m in sys.modules if m.split('.')[0] in ours))"
    )

    def loaded(*args: str) -> set[str]:
        (line,) = [x for x in _python(probe, *args).splitlines() if x.startswith("loaded:")]
        return set(line.split()[1:])

    def roots(modules: set[str]) -> set[str]:
        return {m.split(".")[0] for m in modules}

    assert loaded("version") == set()
    serve = loaded("hub", "serve", "--help")
    assert "hub.cli_server" in serve and not {"agent.cli", "agent.k3s.cli", "sim.cli"} & serve, serve
    assert "sim" not in roots(serve)
    agent = loaded("agent", "run", "--help")
    assert "agent.cli" in agent and "hub" not in roots(agent) and "sim" not in roots(agent), agent


def test_the_hub_starts_without_loading_onnxruntime() -> None:
    """The hub validates a pushed model with onnxruntime; it loads it with the first push, not at start-up
    (a third of `hub serve`'s imports)."""
    out = _python("import sys, hub.runtime, hub.cli_server; print(sorted({'onnx', 'onnxruntime'} & set(sys.modules)))")
    assert out.strip() == "[]", out
