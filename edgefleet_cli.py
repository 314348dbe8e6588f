"""The `edgefleet` command: one console script joining the hub, agent and model sub-commands.

It lives outside the packages because it is the one place allowed to know both the hub and the agent
(which never import each other). The hub's server commands (`hub init`, `hub serve`, `hub backup`) join only where
the hub is installed: the agent image ships the client commands (`hubclient`) without the hub's server code.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import typer
from typer.core import TyperGroup


def _plain_help() -> None:
    """Help that reads as people expect at any width: plain text wrapped at the terminal's width like git's
    (typer's rich tables cut option names and long words with an ellipsis at 80 columns and give flags a
    `<bool>` type), and a required argument shown as `MODEL:VERSION`, not typer 0.29's `{ref}`."""
    from typer.core import TyperArgument, TyperCommand, TyperGroup  # noqa: PLC0415

    def usage_name(self: TyperArgument) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]
    typer.core.HAS_RICH = False

    def whole_sentence(self: TyperCommand | TyperGroup, limit: int = 45) -> str:
        # a command list wraps each command's first sentence under itself instead of cutting it with "..."
        return short_help(self, limit=1000)

    short_help = TyperCommand.get_short_help_str
    TyperCommand.get_short_help_str = whole_sentence  # type: ignore[method-assign,assignment]
    TyperGroup.get_short_help_str = whole_sentence  # type: ignore[method-assign,assignment]


def _hub_app() -> typer.Typer:
    """`edgefleet hub`: the client commands, and `init`, `serve` and `backup` where the hub is installed."""
    from hubclient.cli import hub_app  # noqa: PLC0415

    try:
        from hub.cli_server import SERVER_COMMANDS  # noqa: PLC0415
    except ImportError:  # the agent image: no hub server code
        SERVER_COMMANDS = []
    for name, fn in SERVER_COMMANDS:
        hub_app.command(name)(fn)
    return hub_app


def _model_app() -> typer.Typer:
    """`edgefleet model`: build and validate (models.cli), and the registry half: push, list, show."""
    from hubclient.cli import MODEL_COMMANDS  # noqa: PLC0415
    from models.cli import app  # noqa: PLC0415

    for name, fn in MODEL_COMMANDS:
        app.command(name)(fn)
    return app


def _attr(module: str, name: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module(module), name)


# Every sub-command: (name, help of a group or None for a command, loader). A loader imports its command's
# code when that command runs (or help lists it): `edgefleet hub serve`, and the hub's telemetry writer process
# (which imports this script again), load neither the agent, the simulator nor the cluster code, about a second
# of imports less. Help lists commands before groups, as typer does.
_SUBCOMMANDS: list[tuple[str, str | None, Callable[[], Any]]] = [
    ("deploy", None, _attr("hubclient.cli", "deploy")),
    ("undeploy", None, _attr("hubclient.cli", "undeploy")),
    ("model", "Build, validate and publish ONNX vision models.", _model_app),
    ("hub", "Initialise and run the hub.", _hub_app),
    ("device", "Enrol, list, show and label devices.", _attr("hubclient.cli", "device_app")),
    ("agent", "Run the edge agent and its inference API.", _attr("agent.cli", "app")),
    ("k3s", "Cluster mode: K3s inventory and the serving workload.", _attr("agent.k3s.cli", "app")),
    ("sim", "Simulate many protocol-faithful agents against a hub.", _attr("sim.cli", "app")),
    ("rollout", "Roll out model versions through gated waves.", _attr("hubclient.rollout", "rollout_app")),
]
_LOADERS = {name: (help_, load) for name, help_, load in _SUBCOMMANDS}


@functools.cache
def _subcommand(name: str) -> Any:
    """The click command of one sub-command, built once per process as `add_typer`/`command` would build it."""
    help_, load = _LOADERS[name]
    holder = typer.Typer()
    if help_ is None:
        holder.command(name)(load())
    else:
        holder.add_typer(load(), name=name, help=help_)
    return typer.main.get_group(holder).commands[name]


class _LazyGroup(TyperGroup):
    """The root group: it knows its sub-commands by name and imports one when it is asked for."""

    def list_commands(self, ctx: Any) -> list[str]:
        commands = [name for name, help_, _ in _SUBCOMMANDS if help_ is None]
        groups = [name for name, help_, _ in _SUBCOMMANDS if help_ is not None]
        return [*commands, *super().list_commands(ctx), *groups]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in _LOADERS:
            return _subcommand(cmd_name)
        return super().get_command(ctx, cmd_name)


_plain_help()
app = typer.Typer(
    name="edgefleet",
    help="Edge fleet manager for vision models: signed ONNX rollouts over MQTT to edge devices.",
    no_args_is_help=True,
    add_completion=False,
    cls=_LazyGroup,
)


@app.command("version")
def show_version() -> None:
    """Print the edgefleet version."""
    try:
        typer.echo(version("edgefleet"))
    except PackageNotFoundError:
        typer.echo("unknown (not installed)")


@app.command("protocol")
def show_protocol() -> None:
    """Print the wire protocol reference (topics, messages, frames) as Markdown."""
    from fleet.docs import protocol_markdown  # noqa: PLC0415  (keep `edgefleet --help` fast)

    typer.echo(protocol_markdown(), nl=False)


def main() -> None:
    """Entry point of the `edgefleet` console script."""
    app()


if __name__ == "__main__":
    main()
