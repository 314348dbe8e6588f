"""The `edgefleet` command: one console script joining the hub, agent and model sub-commands.

It lives outside the packages because it is the one place allowed to know both the hub and the agent
(which never import each other). The hub's server commands (`hub init`, `hub serve`) join only where the hub
is installed: the agent image ships the client commands (`hubclient`) without the hub's server code.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import typer

from agent.cli import app as agent_app
from agent.k3s.cli import app as k3s_app
from hubclient.cli import MODEL_COMMANDS, deploy, device_app, hub_app
from hubclient.rollout import rollout_app
from models.cli import app as models_app
from sim.cli import app as sim_app

try:
    from hub.cli_server import SERVER_COMMANDS
except ImportError:  # the agent image: no hub server code
    SERVER_COMMANDS = []


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


_plain_help()
app = typer.Typer(
    name="edgefleet",
    help="Edge fleet manager for vision models: signed ONNX rollouts over MQTT to edge devices.",
    no_args_is_help=True,
    add_completion=False,
)
for _name, _fn in MODEL_COMMANDS:  # the registry half of `edgefleet model`: push, list, show
    models_app.command(_name)(_fn)
for _name, _fn in SERVER_COMMANDS:  # `edgefleet hub init|serve`, where the hub is installed
    hub_app.command(_name)(_fn)
app.add_typer(models_app, name="model", help="Build, validate and publish ONNX vision models.")
app.add_typer(hub_app, name="hub", help="Initialise and run the hub.")
app.add_typer(device_app, name="device", help="Enrol, list, show and label devices.")
app.command("deploy")(deploy)
app.add_typer(agent_app, name="agent", help="Run the edge agent and its inference API.")
app.add_typer(k3s_app, name="k3s", help="Cluster mode: K3s inventory and the serving workload.")
app.add_typer(sim_app, name="sim", help="Simulate many protocol-faithful agents against a hub.")
app.add_typer(rollout_app, name="rollout", help="Roll out model versions through gated waves.")


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
