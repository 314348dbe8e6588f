"""`edgefleet hub token|device|deploy` and the registry half of `edgefleet model` (push, list, show).

The commands talk to a running hub over its REST API (`--url`, `--token`, or `EDGEFLEET_URL` /
`EDGEFLEET_TOKEN`) through `hubclient.http.HubClient`; they never import the hub, so the agent image ships
them without the hub's server code (`hub init` and `hub serve` live in `hub.cli_server`).
Human tables by default; `--json` prints the API's JSON for scripts.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from fleet.bundle import DeviceBundle
from fleet.errors import FleetError
from fleet.labels import parse_labels
from hubclient.enrolment import MAX_BATCH, CsvDevices, InvalidInput, from_pattern, read_csv
from hubclient.errors import ClientError, HubApiError
from hubclient.http import HubClient
from hubclient.tables import Col, fit, plural
from infra.timefmt import ago

T = TypeVar("T")
out = Console(soft_wrap=True, highlight=False)  # no guessed colours inside refs and versions
err = Console(stderr=True, soft_wrap=True, highlight=False)

UrlOpt = Annotated[str, typer.Option("--url", envvar="EDGEFLEET_URL", help="Hub API URL.")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="EDGEFLEET_TOKEN", help="API bearer token.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
DEFAULT_URL = "http://127.0.0.1:8080"

hub_app = typer.Typer(help="Initialise and run the hub.", no_args_is_help=True)
device_app = typer.Typer(help="Enrol devices, list them, show and label them.", no_args_is_help=True)


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ClientError as e:
        err.print(f"[red]error[/red] ({e.code}): {escape(e.message)}")
        raise typer.Exit(1) from None
    except FleetError as e:  # a bad label or id, refused before anything is sent
        err.print(f"[red]error[/red]: {escape(str(e))}")
        raise typer.Exit(1) from None


class _CliClient(HubClient):
    """The API client of the commands: its errors say which setting to change, in the CLI's words."""

    def __init__(self, url: str, token: str | None) -> None:
        super().__init__(url, token)
        self.url, self.token = url, token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return super().request(method, path, **kwargs)
        except HubApiError as e:
            raise _hinted(e, self.url, self.token) from None


def _hinted(e: HubApiError, url: str, token: str | None) -> HubApiError:
    if e.status == 401 and not token:
        return HubApiError(
            401, "no_token", "this needs an API token: set EDGEFLEET_TOKEN or pass --token "
            "(an admin creates one with `edgefleet hub token NAME --role operator`)",
        )  # fmt: skip
    if e.code == "unreachable" and url == DEFAULT_URL and not os.environ.get("EDGEFLEET_URL"):
        return HubApiError(
            0, e.code, f"{e.message} (the default URL: set EDGEFLEET_URL or pass --url to reach your hub)"
        )
    if e.status == 401:
        return HubApiError(401, e.code, f"{e.message} (the token from --token or EDGEFLEET_TOKEN)")
    if e.status == 404 and e.message == "Not Found" and urlsplit(url).path.strip("/"):  # no route: a path in --url
        return HubApiError(
            404, e.code, f"the hub has no such path under {url}: --url or EDGEFLEET_URL takes the hub's address "
            "alone, e.g. http://hub:8080 (no /api/v1)",
        )  # fmt: skip
    return e


def _client(url: str, token: str | None) -> HubClient:
    return _CliClient(url, token)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# -- hub (client half: `hub init` and `hub serve` live in hub.cli_server) ----------------------------
@hub_app.command("token")
def hub_token(
    name: Annotated[str, typer.Argument(help="Who or what will use the token.")],
    role: Annotated[str, typer.Option("--role", help="viewer, operator or admin.")] = "viewer",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token (needs an admin token); it is printed once."""
    with _client(url, token) as c:
        res = _run(lambda: c.request("POST", "/api/v1/tokens", json={"name": name, "role": role}))
    if as_json:
        _print_json(res)
    else:
        out.print(f"{role} token for {name} (shown once): [bold]{res['token']}[/bold]")


@hub_app.command("tokens")
def hub_tokens(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List API tokens: id, name, role, created, revoked (never the secrets; needs an admin token)."""
    with _client(url, token) as c:
        rows = _run(lambda: c.request("GET", "/api/v1/tokens"))
    if as_json:
        _print_json(rows)
        return
    cols = [Col("id", 4, whole=True, justify="right"), Col("name", 9, whole=True), Col("role", 8, whole=True),
            Col("created", 4), Col("state", 4, whole=True)]  # fmt: skip
    cells = [[str(r["id"]), r["name"], r["role"], ago(r["created_at"]), "revoked" if r["revoked"] else "active"]
             for r in rows]  # fmt: skip
    out.print(fit(cols, cells))


@hub_app.command("revoke-token")
def hub_revoke_token(
    token_id: Annotated[int, typer.Argument(help="The token's id, as `edgefleet hub tokens` lists it.", min=1)],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an API token at once (its dashboard sessions end too); the last active admin token stays."""
    with _client(url, token) as c:
        _run(lambda: c.request("DELETE", f"/api/v1/tokens/{token_id}"))
    _print_json({"id": token_id, "revoked": True}) if as_json else out.print(f"token {token_id} revoked")


# -- model (registry half) ---------------------------------------------------------------------------
def model_push(
    onnx_file: Annotated[Path, typer.Argument(help="The .onnx file to upload.", exists=True, dir_okay=False)],
    *,
    descriptor: Annotated[
        Path | None, typer.Option("--descriptor", help="Description file (default: the sidecar .yaml next to it).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name (overrides the description).")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Semantic version (overrides it too).")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a model version to the hub, which validates it and stores it content-addressed."""
    from models.descriptor import ModelDescriptor, sidecar_for  # noqa: PLC0415
    from models.errors import ModelError  # noqa: PLC0415

    try:
        desc = ModelDescriptor.load(descriptor or sidecar_for(onnx_file)).to_json()
    except ModelError as e:
        err.print(f"[red]error[/red]: {escape(str(e))}")
        raise typer.Exit(1) from None
    size = onnx_file.stat().st_size
    with _client(url, token) as c:
        if as_json:
            res = _run(lambda: c.push_model(onnx_file, desc, name=name, version=version))
            _print_json(res)
            return
        cols = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*cols, console=err, transient=True) as progress:
            task = progress.add_task("upload", total=size)
            res = _run(
                lambda: c.push_model(
                    onnx_file, desc, name=name, version=version, on_progress=lambda n: progress.advance(task, n)
                )
            )
    verb = "stored" if res.get("created") else "already stored"
    if res.get("restored"):
        verb = "already stored; the hub's copy of its bytes was missing and is put back"
    out.print(f"{res['name']}:{res['version']} {verb} (sha256 {res['sha256'][:12]}, {res['size']} bytes)")


def model_list(
    name: Annotated[str | None, typer.Argument(help="Only versions of this model.")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List model versions in the registry."""
    with _client(url, token) as c:
        rows = _run(lambda: c.request("GET", f"/api/v1/models/{name}" if name else "/api/v1/models"))
    if as_json:
        _print_json(rows)
        return
    cols = [Col("name", 9, whole=True), Col("version", 9, whole=True), Col("task", 5), Col("sha256", 3),
            Col("size", 4, justify="right"), Col("chunks", 2, justify="right")]  # fmt: skip
    cells = [[r["name"], r["version"], r["task"], r["sha256"][:12], str(r["size"]), str(r["chunks"])] for r in rows]
    out.print(fit(cols, cells))


def model_show(
    ref: Annotated[str, typer.Argument(help="MODEL:VERSION")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one model version: blob, description and the devices that want it."""
    name, version = _split_ref(ref)
    with _client(url, token) as c:
        res = _run(lambda: c.request("GET", f"/api/v1/models/{name}/{version}"))
    if as_json:
        _print_json(res)
        return
    for key in ("name", "version", "task", "sha256", "size", "chunk_size", "chunks", "created_by"):
        out.print(f"{key:>11}: {res[key]}")
    out.print(f"  wanted by: {', '.join(res['wanted_by']) or '-'}")


def _split_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.partition(":")
    if not sep or not name or not version:
        err.print(f"[red]error[/red]: {ref!r} must look like MODEL:VERSION")
        raise typer.Exit(2)
    return name, version


MODEL_COMMANDS: list[tuple[str, Callable[..., None]]] = [
    ("push", model_push), ("list", model_list), ("show", model_show),
]  # fmt: skip


# -- device ------------------------------------------------------------------------------------------
def _model_cell(active: str | None, desired: str | None) -> str:
    """What runs, and on a line of its own what is wanted when that differs: each ref whole on its line."""
    if desired is None or desired == active:
        return active or "-"
    return f"{active or '-'}\nwants {desired}"


def _device_table(rows: list[dict[str, Any]]) -> Table:
    """One row per device, a line per model it is asked to run or runs (a device serves several); model refs
    whole at any width: the labels wrap, then go (then last seen) when the terminal is narrow."""
    cols = [Col("id", 9, whole=True), Col("state", 8), Col("models (running, wanted)", 7, whole=True),
            Col("last seen", 4), Col("labels", 2)]  # fmt: skip
    cells = [
        [r["id"], r["state"], _models_cell(r.get("active_models") or [], r.get("desired_models") or []),
         ago(r["last_seen"]) if r.get("last_seen") else "-",
         ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))]
        for r in rows
    ]  # fmt: skip
    return fit(cols, cells)


def _models_cell(active: list[str], desired: list[str]) -> str:
    """Each model on lines of its own: what runs, and what is wanted when that differs."""
    names = list(dict.fromkeys(m.split(":")[0] for m in [*desired, *active]))
    if not names:
        return "-"
    lines = []
    for name in names:
        run = next((m for m in active if m.split(":")[0] == name), None)
        want = next((m for m in desired if m.split(":")[0] == name), None)
        lines.append(_model_cell(run, want) if want is not None else f"{run}\nwants none (undeployed)")
    return "\n".join(lines)


@device_app.command("add")
def device_add(
    device_id: Annotated[str | None, typer.Argument(help="Device id (a-z 0-9 . _ -); or use --csv / --count.")] = None,
    *,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="A label key=value for every device; repeatable.")
    ] = None,
    csv_file: Annotated[
        Path | None,
        typer.Option("--csv", help="Enrol every row of a CSV file: an `id` column, every other column a label."),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", min=1, max=MAX_BATCH, help="Enrol this many devices named by --pattern.")
    ] = None,
    pattern: Annotated[
        str, typer.Option("--pattern", help="Ids for --count: {n} is the number, e.g. cam-{n:04d}.")
    ] = "device-{n:04d}",
    start: Annotated[int, typer.Option("--start", min=0, help="First number for --pattern.")] = 1,
    bundle_out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where bundles go: a file for one device (default ./ID.bundle.json), a folder "
            "for --csv/--count (default ./bundles), one ID.bundle.json each.",
        ),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Enrol devices and write their bootstrap bundles (MQTT credentials, hub key, broker and API URLs).

    One device by id, or many in one request (one transaction: all of them or none) from a CSV file or a
    count and a name pattern.
    """
    labels = _run(lambda: parse_labels(label or []))
    if sum(x is not None for x in (device_id, csv_file, count)) != 1:
        err.print("[red]error[/red]: give one device id, or --csv FILE, or --count N")
        raise typer.Exit(2)
    if device_id is not None:
        path = bundle_out or Path(f"{device_id}.bundle.json")
        _run(lambda: _bundle_destination(path, folder=False))
        with _client(url, token) as c:
            res = _run(lambda: c.request("POST", "/api/v1/devices", json={"id": device_id, "labels": labels}))
        _run(lambda: _save_bundles([(DeviceBundle.model_validate(res["bundle"]), path)]))
        if as_json:
            _print_json({"device": res["device"], "bundle_path": str(path)})
            return
        out.print(f"device {device_id} enrolled; bootstrap bundle written to {path} (mode 0600, holds its password)")
        return
    listed = _run(lambda: read_csv(csv_file, labels)) if csv_file is not None else None
    entries = listed.entries if listed is not None else _run(lambda: from_pattern(pattern, start, count or 0, labels))
    folder = bundle_out or Path("bundles")
    _run(lambda: _bundle_destination(folder, folder=True))
    body = {"devices": [{"id": i, "labels": lb} for i, lb in entries]}
    with _client(url, token) as c:
        res = _run(lambda: _enrol_batch(c, body, listed))
    bundles = [DeviceBundle.model_validate(raw) for raw in res["bundles"]]
    _run(lambda: _save_bundles([(b, folder / f"{b.device_id}.bundle.json") for b in bundles]))
    if as_json:
        _print_json({"devices": res["devices"], "bundle_dir": str(folder)})
        return
    enrolled = plural(len(res["devices"]), "device")
    out.print(f"{enrolled} enrolled; bootstrap bundles written to {folder}/ (mode 0600 each)")


def _enrol_batch(c: HubClient, body: dict[str, Any], listed: CsvDevices | None) -> Any:
    """POST the batch; a refusal that names devices of a CSV file (the error's `devices`, every one) names each
    with its line in the file."""
    try:
        return c.request("POST", "/api/v1/devices/batch", json=body)
    except HubApiError as e:
        if listed is None or not e.devices:
            raise
        if e.status == 409:
            message = f"{plural(len(e.devices), 'device')} already enrolled: {listed.locate(e.devices)}"
        else:
            message = f"{e.message} ({listed.locate(e.devices)})"
        message += f"; nothing of {listed.path} was enrolled"
        raise HubApiError(e.status, e.code, message, devices=e.devices) from None


def _bundle_destination(path: Path, *, folder: bool) -> None:
    """Refuse a place bundles cannot be written to before anything is enrolled or rekeyed: a bundle holds the
    device's password, which the hub gives out once (a rekey also makes the old one stop working)."""
    if folder and path.exists() and not path.is_dir():
        raise InvalidInput(f"{path} is a file: --out names the folder the bundles go to with --csv/--count")
    if folder:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidInput(f"cannot create the bundle folder {path}: {e.strerror or e} (pass another --out)") from e
    elif path.is_dir():
        raise InvalidInput(f"{path} is a folder: --out names the bundle file of one device, e.g. {path}/ID.bundle.json")
    where = path if folder else path.parent
    if not where.is_dir():
        raise InvalidInput(f"cannot write {path}: there is no folder {where} (create it, or pass another --out)")
    if not os.access(where, os.W_OK | os.X_OK):
        raise InvalidInput(f"cannot write bundles into {where}: no permission (pass another --out)")


def _save_bundles(pairs: list[tuple[DeviceBundle, Path]], done: str = "enrolled") -> None:
    """Write each enrolled device's bundle; any the destination refuses go to a private temporary folder, named
    in the error, so no device's password is lost."""
    for i, (bundle, path) in enumerate(pairs):
        try:
            bundle.save(path)
        except OSError as e:
            rescue = Path(tempfile.mkdtemp(prefix="edgefleet-bundles-"))  # mode 0700
            for b, _ in pairs[i:]:
                b.save(rescue / f"{b.device_id}.bundle.json")
            left = plural(len(pairs) - i, "bundle")
            raise ClientError(
                f"{done}, but {path} could not be written ({e.strerror or e}): the {left} not written "
                f"are in {rescue}/ (mode 0600): move them to their devices",
                code="bundle_not_written",
            ) from e


@device_app.command("list")
def device_list(
    selector: Annotated[str | None, typer.Option("--selector", "-s", help="e.g. site=berlin,tier!=canary")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List devices and their derived state."""
    params = {"selector": selector} if selector else {}
    with _client(url, token) as c:
        rows = _run(lambda: c.request("GET", "/api/v1/devices", params=params))
    _print_json(rows) if as_json else out.print(_device_table(rows))


@device_app.command("show")
def device_show(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one device: labels, state, desired and reported state, capabilities."""
    with _client(url, token) as c:
        res = _run(lambda: c.request("GET", f"/api/v1/devices/{device_id}"))
    if as_json:
        _print_json(res)
        return
    out.print(_device_table([res]))
    if res.get("reported"):
        out.print_json(data=res["reported"])


@device_app.command("label")
def device_label(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    labels: Annotated[list[str] | None, typer.Argument(help="Labels to set, key=value.")] = None,
    *,
    remove: Annotated[list[str] | None, typer.Option("--remove", "-r", help="A label key to remove.")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set or remove labels of a device."""
    to_set = _run(lambda: parse_labels(labels or []))
    with _client(url, token) as c:
        body = {"set": to_set, "remove": remove or []}
        res = _run(lambda: c.request("PATCH", f"/api/v1/devices/{device_id}/labels", json=body))
    _print_json(res) if as_json else out.print(_device_table([res]))


@device_app.command("revoke")
def device_revoke(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a device's broker account at once (the broker reloads; its session is closed)."""
    with _client(url, token) as c:
        res = _run(lambda: c.request("POST", f"/api/v1/devices/{device_id}/revoke"))
    _print_json(res) if as_json else out.print(f"device {device_id} revoked")


@device_app.command("rekey")
def device_rekey(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    bundle_out: Annotated[
        Path | None, typer.Option("--out", help="Where the new bundle goes (default ./ID.bundle.json).")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give an enrolled device new broker credentials and write its new bootstrap bundle.

    For a device whose bundle was lost or whose hardware was replaced: it keeps its id, labels, desired
    state, history and rollouts. The old password stops working at once (a session made with it is
    closed); a revoked device is admitted again. Needs an admin token.
    """
    path = bundle_out or Path(f"{device_id}.bundle.json")
    _run(lambda: _bundle_destination(path, folder=False))  # before the hub changes anything
    with _client(url, token) as c:
        res = _run(lambda: c.request("POST", f"/api/v1/devices/{device_id}/rekey"))
    _run(lambda: _save_bundles([(DeviceBundle.model_validate(res["bundle"]), path)], done="rekeyed"))
    if as_json:
        _print_json({"device": res["device"], "bundle_path": str(path)})
        return
    out.print(f"device {device_id} rekeyed; new bootstrap bundle written to {path} (mode 0600, holds its password); "
              "the old password no longer works")  # fmt: skip


# -- deploy ------------------------------------------------------------------------------------------
ProviderOpt = Annotated[
    list[str] | None, typer.Option("--provider", help="Execution provider in order of preference; repeatable.")
]
GpusOpt = Annotated[
    int | None,
    typer.Option("--gpus", min=0, max=16, help="Cluster mode: GPUs per serving pod (with --mig-profile: slices)."),
]
MigOpt = Annotated[
    str | None, typer.Option("--mig-profile", help="Cluster mode: one MIG slice of this profile per pod, e.g. 1g.10gb.")
]
ReplicasOpt = Annotated[int | None, typer.Option("--replicas", min=0, max=64, help="Cluster mode: serving pods.")]
MinReplicasOpt = Annotated[
    int | None, typer.Option("--min-replicas", min=1, max=64, help="Cluster mode, autoscaling: fewest pods (1).")
]
MaxReplicasOpt = Annotated[
    int | None,
    typer.Option("--max-replicas", min=1, max=64, help="Cluster mode: autoscale on CPU up to this many pods."),
]
TargetCpuOpt = Annotated[
    int | None,
    typer.Option("--target-cpu", min=1, max=100, help="Cluster mode, autoscaling: target CPU use, % of request (80)."),
]


GPU_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def runtime_body(  # noqa: PLR0917  (one argument per CLI option)
    provider: list[str] | None,
    gpus: int | None,
    mig_profile: str | None,
    replicas: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
    target_cpu: int | None,
) -> dict[str, Any] | None:
    """The `runtime` of a deployment or rollout request from the CLI options (None: none given).

    The hub checks the result against each device's advertised GPUs, MIG slices and nodes, and refuses
    what a device cannot run with the reason. GPUs or a MIG slice without --provider run CUDA first.
    """
    if (min_replicas is not None or target_cpu is not None) and max_replicas is None:
        raise typer.BadParameter("--min-replicas and --target-cpu need --max-replicas (autoscaling)")
    if replicas is not None and max_replicas is not None:
        raise typer.BadParameter("--replicas fixes the pod count; with autoscaling use --min-replicas/--max-replicas")
    runtime: dict[str, Any] = {}
    if provider:
        runtime["providers"] = provider
    elif gpus or mig_profile is not None:  # a GPU pod should run on it: CUDA first, CPU if it is missing
        runtime["providers"] = list(GPU_PROVIDERS)
    if gpus is not None:
        runtime["gpus"] = gpus
    if mig_profile is not None:
        runtime["mig_profile"] = mig_profile
    if replicas is not None:
        runtime["replicas"] = replicas
    if max_replicas is not None:
        scaling: dict[str, Any] = {"max_replicas": max_replicas}
        if min_replicas is not None:
            scaling["min_replicas"] = min_replicas
        if target_cpu is not None:
            scaling["cpu_percent"] = target_cpu
        runtime["autoscaling"] = scaling
    return runtime or None


def deploy(
    ref: Annotated[str, typer.Argument(help="MODEL:VERSION to deploy.", metavar="MODEL:VERSION")],
    *,
    selector: Annotated[str, typer.Option("--selector", "-s", help="Devices to target, e.g. site=berlin.")],
    provider: ProviderOpt = None,
    gpus: GpusOpt = None,
    mig_profile: MigOpt = None,
    replicas: ReplicasOpt = None,
    min_replicas: MinReplicasOpt = None,
    max_replicas: MaxReplicasOpt = None,
    target_cpu: TargetCpuOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Deploy to devices inside an active rollout too (refused otherwise: the rollout would "
            "sign its own target for them again unless it is aborted).",
        ),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sign and publish MODEL:VERSION in the desired state of every matching device.

    A device serves several models: this sets model MODEL's version and leaves the device's other models as
    they are (`edgefleet undeploy MODEL` removes one). Runtime options, when given, replace that model's
    runtime options as a whole (the defaults for the rest). GPUs, MIG slices, replicas and autoscaling apply
    in cluster mode (K3s); the hub refuses them for a device whose advertised nodes cannot run them.
    """
    name, version = _split_ref(ref)
    body: dict[str, Any] = {"model": name, "version": version, "selector": selector, "force": force}
    runtime = runtime_body(provider, gpus, mig_profile, replicas, min_replicas, max_replicas, target_cpu)
    if runtime is not None:
        body["runtime"] = runtime
    with _client(url, token) as c:
        res = _run(lambda: c.request("POST", "/api/v1/deployments", json=body))
    if as_json:
        _print_json(res)
        return
    ids = sorted(res["devices"])
    out.print(f"{res['model']}:{res['version']} is now the desired model of {plural(len(ids), 'device')}; "
              "each updates when it next hears from the hub")  # fmt: skip
    shown = ", ".join(ids if len(ids) <= _LISTED else ids[: _LISTED - 1])
    more = "" if len(ids) <= _LISTED else f", ... ({len(ids) - _LISTED + 1} more: --json lists them all)"
    out.print(f"devices: {shown}{more}")
    out.print(f"follow them with: edgefleet device list --selector '{selector}'")
    for rid, n in sorted(res.get("in_rollouts", {}).items()):
        err.print(
            f"[yellow]warning[/yellow]: {plural(n, 'device')} of them in active rollout {rid}: it signs its own "
            f"target for them again at its next step unless you abort it (edgefleet rollout abort {rid})"
        )


_LISTED = 8


def undeploy(
    model: Annotated[str, typer.Argument(help="MODEL to remove from the devices.")],
    *,
    selector: Annotated[str, typer.Option("--selector", "-s", help="Devices to target, e.g. site=berlin.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove MODEL from the desired state of every matching device that has it; its other models stay.

    The device stops serving MODEL and keeps its last version as previous, so a later deploy of that version
    activates without a download.
    """
    with _client(url, token) as c:
        res = _run(lambda: c.request("DELETE", f"/api/v1/deployments/{model}", params={"selector": selector}))
    if as_json:
        _print_json(res)
        return
    ids = sorted(res["devices"])
    out.print(f"{model} removed from the desired state of {plural(len(ids), 'device')}")
    shown = ", ".join(ids if len(ids) <= _LISTED else ids[: _LISTED - 1])
    more = "" if len(ids) <= _LISTED else f", ... ({len(ids) - _LISTED + 1} more: --json lists them all)"
    out.print(f"devices: {shown}{more}")
