"""`edgefleet agent ...` commands (typer sub-app `agent.cli.app`; also `python -m agent`)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from agent.errors import AgentError, BundleError
from fleet.bundle import DeviceBundle

app = typer.Typer(help="Run the edge agent: fetch signed models over MQTT, serve them, report.", no_args_is_help=True)


def load_bundle(path: Path) -> DeviceBundle:
    """Read the bootstrap bundle written by `edgefleet device add`.

    Raises:
        BundleError: the file is missing, too large or not a valid device bundle (the reason is named).
    """
    try:
        return DeviceBundle.load(path)
    except FileNotFoundError as e:
        raise BundleError(f"bundle {path} does not exist") from e
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise BundleError(f"{path} is not a device bundle: {where}: {first['msg']}") from e
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read bundle {path}: {e}") from e


@app.callback()
def _root() -> None:
    """Run the edge agent."""


@app.command("run")
def run_cmd(
    bundle: Annotated[Path, typer.Option("--bundle", help="Bootstrap bundle file from `edgefleet device add`.")],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Where the model store, spool and state live (env EDGEFLEET_AGENT_DATA_DIR)."),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level: debug, info, warning, error.")] = "info",
    json_logs: Annotated[bool, typer.Option("--json", help="Log one JSON object per line (for log shippers).")] = False,
) -> None:
    """Run the agent in single-device mode without the HTTP API (headless serving) until SIGINT/SIGTERM."""
    from agent.headless import HeadlessServing  # noqa: PLC0415  (keeps `--help` fast)
    from agent.runtime import Agent  # noqa: PLC0415
    from agent.settings import AgentSettings  # noqa: PLC0415

    level = _log_level(log_level)
    try:
        device = load_bundle(bundle)
        settings = AgentSettings.from_env(data_dir=data_dir)
    except AgentError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    _setup_logging(level, json_logs)
    try:
        agent = Agent(device, settings, HeadlessServing())
    except AgentError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    agent.run_forever()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {"ts": record.created, "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        )


def _log_level(name: str) -> int:
    numeric = logging.getLevelName(name.upper())
    if not isinstance(numeric, int):
        typer.echo(f"error: unknown log level {name!r}; use debug, info, warning or error", err=True)
        raise typer.Exit(2)
    return numeric


def _setup_logging(level: int, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
