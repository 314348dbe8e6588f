"""`edgefleet agent serve`: the inference API on its own (cluster mode), as a typer sub-app.

The lead mounts `app` under `edgefleet agent`. In single-device mode the agent runs the API in-process
(`ApiServer`) and this command is not needed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from agent.api.errors import SettingsError
from agent.api.follow import StoreFollower
from agent.api.server import serve
from agent.api.settings import ApiSettings
from agent.api.slot import ModelSlot

app = typer.Typer(
    help="The on-device inference API (Open Inference Protocol v2 + image endpoint).", no_args_is_help=True
)


@app.callback()
def main() -> None:
    """The on-device inference API (Open Inference Protocol v2 + image endpoint)."""


@app.command("serve")
def serve_cmd(
    store: Annotated[
        Path, typer.Option("--store", help="Model store the agent writes (its `active` pointer is served).")
    ],
    host: Annotated[
        str | None, typer.Option("--host", help="Interface to listen on (default EDGEFLEET_API_HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="TCP port (default EDGEFLEET_API_PORT or 8000; 0 picks one).")
    ] = None,
    poll_s: Annotated[float, typer.Option("--poll-s", help="Seconds between checks of the store's pointer.")] = 2.0,
) -> None:
    """Serve the store's active model over HTTP until interrupted; follow activations (cluster mode)."""
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:
        settings = ApiSettings.from_env(**overrides)
    except SettingsError as e:
        typer.echo(f"invalid settings: {e}", err=True)
        raise typer.Exit(code=2) from e
    if not store.is_dir():
        typer.echo(f"model store {store} does not exist", err=True)
        raise typer.Exit(code=2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    slot = ModelSlot()
    follower = StoreFollower(store, slot, interval_s=poll_s)
    follower.start()
    try:
        serve(settings, slot)
    finally:
        follower.stop()
