"""`edgefleet agent ...` commands (typer sub-app `agent.cli.app`; also `python -m agent`)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from agent.errors import AgentError, BundleError
from fleet.bundle import DeviceBundle
from infra.errors import SettingsError

if TYPE_CHECKING:
    from agent.api import ApiServer
    from agent.health import HealthServer
    from agent.ports import ClusterPort, ServingPort
    from agent.runtime import Agent

STALL_MARGIN_S = 300.0  # a model check and a report beyond the rollout deadline before kubelet restarts us

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
def run_cmd(  # noqa: PLR0917  (typer options)
    bundle: Annotated[Path, typer.Option("--bundle", help="Bootstrap bundle file from `edgefleet device add`.")],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Where the model store, spool and state live (env EDGEFLEET_AGENT_DATA_DIR)."),
    ] = None,
    api_host: Annotated[
        str | None, typer.Option("--api-host", help="Inference API interface (env EDGEFLEET_API_HOST).")
    ] = None,
    api_port: Annotated[
        int | None, typer.Option("--api-port", help="Inference API port, 0 for a free one (env EDGEFLEET_API_PORT).")
    ] = None,
    headless: Annotated[
        bool, typer.Option("--headless", help="No HTTP inference API: fetch, verify and activate models only.")
    ] = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="Cluster mode: check each model, then server-side apply the serving workload on K3s; serve "
            "nothing in this process (settings from EDGEFLEET_K3S_*).",
        ),
    ] = False,
    health_port: Annotated[
        int | None,
        typer.Option("--health-port", min=0, max=65535, help="Serve /livez and /readyz on this port (kubelet probes)."),
    ] = None,
    health_host: Annotated[
        str, typer.Option("--health-host", help="Interface of the health port (0.0.0.0 in a pod).")
    ] = "127.0.0.1",
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level: debug, info, warning, error.")] = "info",
    json_logs: Annotated[bool, typer.Option("--json", help="Log one JSON object per line (for log shippers).")] = False,
) -> None:
    """Run the agent until SIGINT/SIGTERM: models over MQTT, the inference API in the same process.

    With --cluster the process is the control agent of cluster mode: it downloads, verifies and checks
    models and applies the serving Deployment, whose pods serve them (`edgefleet agent serve`).
    """
    from agent.control import CheckOnlyServing  # noqa: PLC0415  (keeps `--help` fast)
    from agent.runtime import Agent  # noqa: PLC0415
    from agent.settings import AgentSettings  # noqa: PLC0415

    level = _log_level(log_level)
    try:
        device = load_bundle(bundle)
        settings = AgentSettings.from_env(data_dir=data_dir)
    except (AgentError, SettingsError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    if cluster and (api_host is not None or api_port is not None):
        typer.echo("error: --cluster serves no inference API here (the serving pods do): drop --api-*", err=True)
        raise typer.Exit(2)
    _setup_logging(level, json_logs)
    server = None
    health = None
    try:
        port = _cluster_port() if cluster else None
        serving, server = (CheckOnlyServing(port), None) if cluster else _serving(headless, api_host, api_port)
        agent = Agent(device, settings, serving, port)
        if health_port is not None:
            health = _health(agent, health_host, health_port, port)
    except (AgentError, OSError, RuntimeError, ValueError) as e:
        if server is not None:
            server.stop()
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    if server is not None:
        logging.getLogger(__name__).info("inference API on %s", server.url)
    try:
        agent.run_forever()
    finally:
        if health is not None:
            health.stop()
        if server is not None:
            server.stop()


def _health(agent: Agent, host: str, port: int, cluster: ClusterPort | None) -> HealthServer:
    """Liveness: the control loop turns (a rollout wait may hold it for the rollout deadline, so the limit
    leaves room for that). Readiness: connected to the broker."""
    from agent.health import HealthServer, stalled  # noqa: PLC0415

    deadline = float(getattr(getattr(cluster, "settings", None), "rollout_deadline_s", 0.0))
    live = stalled(lambda: agent.heartbeat, deadline + STALL_MARGIN_S)

    def ready() -> str | None:
        return None if agent.link.connected else f"not connected to the broker ({agent.bundle.broker_url})"

    server = HealthServer(host, port, live=live, ready=ready)
    server.start()
    return server


def _serving(headless: bool, host: str | None, port: int | None) -> tuple[ServingPort, ApiServer | None]:
    """The serving half: the HTTP inference API (default) or headless (activation only)."""
    if headless:
        from agent.headless import HeadlessServing  # noqa: PLC0415

        return HeadlessServing(), None
    from agent.api import ApiServer, ApiSettings, ModelRepository  # noqa: PLC0415

    overrides: dict[str, Any] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    repo = ModelRepository()
    settings = ApiSettings.from_env(**overrides)
    server = ApiServer(settings, repo)
    try:
        server.start()
    except OSError as e:
        raise RuntimeError(_bind_error(e, settings.host, settings.port, "--api-port")) from e
    return repo, server


def _bind_error(e: OSError, host: str, port: int, flag: str) -> str:
    """Why the inference API cannot listen, and which option or variable changes its port."""
    from infra.server import bind_error  # noqa: PLC0415  (keep --help fast: uvicorn)

    return bind_error(e, host, port, flag=flag, env="EDGEFLEET_API_PORT")


def _cluster_port() -> ClusterPort:
    from agent.k3s import ClusterBridge, ClusterSettings  # noqa: PLC0415

    return ClusterBridge(ClusterSettings.from_env())  # its errors are AgentErrors naming the problem


@app.command("serve")
def serve_cmd(  # noqa: PLR0917  (typer options)
    store: Annotated[Path, typer.Option("--store", help="The model store shared with the agent (read only).")],
    host: Annotated[str | None, typer.Option("--host", help="Interface to listen on (env EDGEFLEET_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (env EDGEFLEET_API_PORT).")] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="Serve this model (repeatable; cluster mode runs one Deployment per model). "
            "Default: every model the store has.",
        ),
    ] = None,
    poll_s: Annotated[
        float, typer.Option("--poll-s", min=0.05, help="Seconds between checks of the store's active models.")
    ] = 1.0,
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level: debug, info, warning, error.")] = "info",
    json_logs: Annotated[bool, typer.Option("--json", help="Log one JSON object per line (for log shippers).")] = False,
) -> None:
    """Serve the inference API only, following the store's active models (cluster mode's serving pods)."""
    _setup_logging(_log_level(log_level), json_logs)
    from agent.api import ApiServer, ApiSettings, ModelRepository  # noqa: PLC0415
    from agent.follower import StoreFollower  # noqa: PLC0415
    from agent.store import ModelStore  # noqa: PLC0415

    if not store.is_dir():
        typer.echo(f"error: model store {store} does not exist (the agent creates it)", err=True)
        raise typer.Exit(2)
    overrides: dict[str, Any] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:
        settings = ApiSettings.from_env(**overrides)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    repo = ModelRepository()
    try:
        server = ApiServer(settings, repo)
        server.start()
    except OSError as e:
        typer.echo(f"error: {_bind_error(e, settings.host, settings.port, '--port')}", err=True)
        raise typer.Exit(2) from e
    except RuntimeError as e:
        typer.echo(f"error: cannot serve on {settings.host}:{settings.port}: {e}", err=True)
        raise typer.Exit(2) from e
    follower = StoreFollower(ModelStore(store), repo, models=model or None, poll_s=poll_s)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        follower.start()
        logging.getLogger(__name__).info("inference API on %s, following %s", server.url, store)
        stop.wait()
    finally:
        follower.stop()
        server.stop()


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
    # the HTTP clients log every request at INFO: in cluster mode that is each API call and, every telemetry
    # window, each serving pod's /metrics scrape; shown with --log-level debug
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
