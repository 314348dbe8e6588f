"""Every CLI command has help text (a command without it fails here, as in sqlite-utils)."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from edgefleet_cli import app


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    # typer vendors its own click: walk the command tree by duck typing, not isinstance
    found = [(path, command)]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        found += _commands(sub, (*path, name))
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
