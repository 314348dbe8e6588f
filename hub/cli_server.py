"""`edgefleet hub init`, `hub serve`, `hub backup` and `hub check-backup`: the commands that run the hub itself on
its data directory (a backup is a copy of a running hub's data directory that `hub serve` can start from).

The operator's commands on a running hub (`hub token`, `device`, `model push`, `deploy`, `rollout`) live in
`hubclient.cli`, which never imports the hub; `edgefleet_cli` adds these to `edgefleet hub` where the hub is
installed (not in the agent image).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape

from hub.errors import HubError
from hubclient.cli import JsonOpt, _print_json, err, out
from infra.errors import SettingsError
from infra.sizes import mib

if TYPE_CHECKING:
    from hub.settings import HubSettings

T = TypeVar("T")
DatabaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Keep the store in this database: postgresql://user:password@host/db (shared by hub replicas). "
        "Default: EDGEFLEET_HUB_DATABASE_URL, else the SQLite file hub.db in the data directory.",
    ),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Hub data directory (default: EDGEFLEET_HUB_DATA_DIR or ./hub-data).")
]


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (HubError, SettingsError) as e:
        err.print(f"[red]error[/red] ({e.code}): {escape(e.message)}")
        raise typer.Exit(1) from None


def _settings(data_dir: Path | None, **overrides: Any) -> HubSettings:
    from hub.settings import HubSettings  # noqa: PLC0415  (the store's modules load only for a command that runs)

    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return _run(lambda: HubSettings.from_env(**overrides))


def hub_init(
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
    tls: Annotated[
        bool, typer.Option("--tls", help="Also create a development CA and broker and API certificates (data_dir/tls).")
    ] = False,
    tls_host: Annotated[
        list[str] | None, typer.Option("--tls-host", help="Extra host name or IP for the certificates; repeatable.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the data directory, database, signing key and broker account; print the first admin token (once)."""
    from hub.runtime import init_hub  # noqa: PLC0415  (keep --help fast)
    from hub.tls import create_dev_pki  # noqa: PLC0415

    settings = _settings(data_dir, **({"database_url": database_url} if database_url else {}))
    token = _run(lambda: init_hub(settings))
    tls_dir = _run(lambda: create_dev_pki(settings.tls_dir, tls_host or []).ca_cert.parent) if tls else None
    if as_json:
        _print_json({"data_dir": str(settings.data_dir), "admin_token": token, "tls_dir": tls_dir and str(tls_dir)})
        return
    out.print(f"hub initialised in {settings.data_dir}")
    if tls_dir is not None:
        out.print(f"development CA and certificates in {tls_dir}: the broker serves mqtts, the API https")
    out.print(f"admin token (shown once; store it safely): [bold]{token}[/bold]")


def hub_serve(
    data_dir: DataDirOpt = None,
    *,
    database_url: DatabaseUrlOpt = None,
    broker_url: Annotated[
        str | None, typer.Option("--broker-url", help="Use this MQTT broker instead of starting a local Mosquitto.")
    ] = None,
    broker_port: Annotated[
        int | None,
        typer.Option(
            "--broker-port", help="Port of the local Mosquitto (default 1883; 0 picks a free one).", min=0, max=65535
        ),
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="API listen address.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="API listen port.", min=0, max=65535)] = None,
) -> None:
    """Run the hub: broker link (or a supervised local Mosquitto), ingestion, chunk serving and the API."""
    from hub.api.server import api_server  # noqa: PLC0415
    from hub.runtime import Hub  # noqa: PLC0415
    from infra.server import bind_error  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {}
    broker = {k: v for k, v in (("url", broker_url), ("local_port", broker_port)) if v is not None}
    if broker:
        overrides["broker"] = broker
    if database_url:
        overrides["database_url"] = database_url
    api = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if api:
        overrides["api"] = api
    hub = Hub(_settings(data_dir, **overrides))
    _run(hub.start)
    # uvicorn hands SIGTERM back to the previous handler once it has stopped: make that a clean exit,
    # so the `finally` below stops the hub and its local broker
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        try:
            server = api_server(hub)
        except OSError as e:
            settings = hub.settings.api
            message = bind_error(e, settings.host, settings.port, flag="--port", env="EDGEFLEET_HUB_API_PORT")
            err.print(f"[red]error[/red] (api_unavailable): {escape(message)}")
            raise typer.Exit(1) from None
        err.print(f"hub serving: API {server.url} (docs at {server.url}/docs), broker {hub.broker_url}")
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


def hub_backup(
    out_dir: Annotated[
        Path, typer.Option("--out", help="New or empty folder to write the backup to (outside the data directory).")
    ],
    data_dir: DataDirOpt = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="The hub's PostgreSQL store (postgresql://...), if it has one: then the database is left to pg_dump "
            "and the rest is backed up. Default: EDGEFLEET_HUB_DATABASE_URL, else the SQLite file hub.db.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Back up the hub while it runs: database, signing key, broker account, TLS files and model blobs.

    The backup folder is itself a data directory: restore by starting `edgefleet hub serve --data-dir` on it (or
    copying it back). On PostgreSQL the database is left to pg_dump or your HA setup; the rest is backed up.
    """
    from hub.backup import MANIFEST_FILE, backup_hub  # noqa: PLC0415  (keep --help fast)

    settings = _settings(data_dir, **({"database_url": database_url} if database_url else {}))
    steps = (lambda text: err.print(f"backing up {text}")) if not as_json else None
    report = _run(lambda: backup_hub(settings, out_dir, on_step=steps))
    if as_json:
        _print_json(report.manifest() | {"directory": str(out_dir)})
        return
    size = sum(report.blobs.values())
    out.print(f"backup of {settings.data_dir} written to {escape(str(out_dir))} ({MANIFEST_FILE} lists every file)")
    out.print(f"  {len(report.blobs)} model blob(s), {mib(size)}, each checked against its sha256")
    if report.database == "postgresql":
        out.print("  database: PostgreSQL is not included: back it up with pg_dump or your database's HA tooling")
    for sha in report.missing_blobs:
        err.print(f"[yellow]warning[/yellow]: blob {sha} is named by the database but absent from the data directory")
    for sha in report.corrupt_blobs:
        err.print(f"[yellow]warning[/yellow]: blob {sha} does not match its sha256 and was left out (push it again)")
    out.print(f"  check: edgefleet hub check-backup {escape(str(out_dir))}")
    out.print(f"  restore: edgefleet hub serve --data-dir {escape(str(out_dir))} (or copy the folder back)")


def hub_check_backup(
    backup_dir: Annotated[Path, typer.Argument(metavar="DEST", help="The folder `edgefleet hub backup --out` wrote.")],
) -> None:
    """Check a backup: re-read every file and blob against its manifest (sha256 and size).

    Prints one line per problem and exits 1 when there is any (a folder without backup-manifest.json is an
    unfinished backup); otherwise says the backup is complete.
    """
    from hub.backup import check_backup, read_manifest  # noqa: PLC0415  (keep --help fast)

    problems = check_backup(backup_dir)
    for problem in problems:
        err.print(f"[red]problem[/red]: {escape(problem)}")
    if problems:
        err.print(f"backup {escape(str(backup_dir))} is not complete: {len(problems)} problem(s)")
        raise typer.Exit(1)
    manifest = read_manifest(backup_dir)
    out.print(
        f"backup {escape(str(backup_dir))} is complete: {len(manifest['files'])} files, "
        f"{len(manifest['blobs'])} blobs, taken {escape(str(manifest.get('created_at', 'at an unknown time')))}"
    )


SERVER_COMMANDS: list[tuple[str, Callable[..., None]]] = [
    ("init", hub_init),
    ("serve", hub_serve),
    ("backup", hub_backup),
    ("check-backup", hub_check_backup),
]
