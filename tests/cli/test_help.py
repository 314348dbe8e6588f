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
