"""`edgefleet rollout start|list|status|pause|resume|abort|rollback`: rollouts over the hub's REST API.

Human tables by default; `--json` prints the API's JSON for scripts.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

import typer
from rich.table import Table

from hubclient.cli import (
    DEFAULT_URL,
    GpusOpt,
    JsonOpt,
    MaxReplicasOpt,
    MigOpt,
    MinReplicasOpt,
    ProviderOpt,
    ReplicasOpt,
    TargetCpuOpt,
    TokenOpt,
    UrlOpt,
    _client,
    _print_json,
    _run,
    _split_ref,
    err,
    out,
    runtime_body,
)

rollout_app = typer.Typer(
    help="Roll a model version out through waves gated on how it behaves on the devices.", no_args_is_help=True
)
IdArg = Annotated[str, typer.Argument(help="Rollout id (r-...), as `rollout list` shows it.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (recorded in the status and the audit log).")]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """`90`, `30s`, `5m`, `1.5h`, `2d`, `500ms` -> seconds. Raises typer.BadParameter naming the text."""
    m = _DURATION.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 30s, 5m, 1h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _ts(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%H:%M:%S")


def _num(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@rollout_app.command("start")
def start(
    ref: Annotated[str, typer.Argument(help="MODEL:VERSION to roll out.")],
    *,
    selector: Annotated[str, typer.Option("--selector", "-s", help="Target devices, e.g. site=berlin.")],
    waves: Annotated[str, typer.Option("--waves", help="Cumulative wave sizes; the last must be 100%.")] = (
        "1,10%,50%,100%"
    ),
    bake: Annotated[str, typer.Option("--bake", help="Bake time of each wave, e.g. 5m.")] = "5m",
    max_error_rate: Annotated[float, typer.Option("--max-error-rate", help="Error-rate gate (0..1).")] = 0.01,
    max_p95_regression: Annotated[
        float, typer.Option("--max-p95-regression", help="p95 gate: allowed slowdown vs control (0.2 = 20 %).")
    ] = 0.2,
    max_activation_failures: Annotated[
        int, typer.Option("--max-activation-failures", help="Devices per wave allowed to fail activation.")
    ] = 0,
    shadow: Annotated[
        float | None, typer.Option("--shadow", help="Shadow the candidate on this fraction of requests first.")
    ] = None,
    min_agreement: Annotated[float, typer.Option("--min-agreement", help="Shadow gate: minimum agreement.")] = 0.98,
    min_requests: Annotated[
        int, typer.Option("--min-requests", help="Requests (or shadow samples) a gate needs to judge.")
    ] = 20,
    on_failure: Annotated[str, typer.Option("--on-failure", help="pause or rollback when a gate fails.")] = "pause",
    offline_timeout: Annotated[
        str,
        typer.Option("--offline-timeout", help="Longest wait for a wave's devices; then offline ones are set aside."),
    ] = "10m",
    provider: ProviderOpt = None,
    gpus: GpusOpt = None,
    mig_profile: MigOpt = None,
    replicas: ReplicasOpt = None,
    min_replicas: MinReplicasOpt = None,
    max_replicas: MaxReplicasOpt = None,
    target_cpu: TargetCpuOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a rollout: canary wave first, each wave baked and gated before the next starts.

    Runtime options (--provider, --gpus, --mig-profile, --replicas, --min/--max-replicas, --target-cpu), when
    given, are what the candidate runs with; without them each device keeps its own. A rollback restores
    each device's previous options. The hub refuses options a target device's nodes cannot run.
    """
    name, version = _split_ref(ref)
    if on_failure not in ("pause", "rollback"):
        raise typer.BadParameter("--on-failure must be pause or rollback")
    body = {
        "model": name, "version": version, "selector": selector, "waves": [w for w in waves.split(",") if w.strip()],
        "bake_s": parse_duration(bake), "shadow_rate": shadow, "on_failure": on_failure,
        "offline_timeout_s": parse_duration(offline_timeout),
        "runtime": runtime_body(provider, gpus, mig_profile, replicas, min_replicas, max_replicas, target_cpu),
        "gates": {"max_error_rate": max_error_rate, "max_p95_regression": max_p95_regression,
                  "max_activation_failures": max_activation_failures, "min_agreement": min_agreement,
                  "min_requests": min_requests},
    }  # fmt: skip
    with _client(url, token) as c:
        res = _run(lambda: c.request("POST", "/api/v1/rollouts", json=body))
    if as_json:
        _print_json(res)
        return
    out.print(f"rollout [bold]{res['id']}[/bold] started: {name}:{version} to {res['devices']} device(s)")
    _print_status(res)


@rollout_app.command("list")
def list_rollouts(
    active: Annotated[bool, typer.Option("--active", help="Only running, paused or rolling-back rollouts.")] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List rollouts, newest first."""
    with _client(url, token) as c:
        rows = _run(lambda: c.request("GET", "/api/v1/rollouts", params={"active": active}))
    if as_json:
        _print_json(rows)
        return
    table = Table()
    for name in ("id", "model", "state"):
        table.add_column(name, no_wrap=True)
    for name in ("wave", "devices", "selector", "created", "reason"):
        table.add_column(name)
    for r in rows:
        wave = f"{min(r['wave'] + 1, r['wave_count'])}/{r['wave_count']} {r['wave_phase'] or ''}"
        table.add_row(
            r["id"], f"{r['model']}:{r['version']}", r["state"], wave, str(r["devices"]), r["selector"],
            _ts(r["created_at"]), (r["reason"] or "")[:60],
        )  # fmt: skip
    out.print(table)


def _print_status(res: dict[str, Any]) -> None:
    out.print(f"{res['id']}  {res['model']}:{res['version']}  selector {res['selector']}  [bold]{res['state']}[/bold]")
    if res.get("reason"):
        out.print(f"reason: {res['reason']}")
    waves = Table("wave", "size", "phase", "devices", "states", "started", "bake until", "finished")
    for w in res["waves"]:
        counts = ", ".join(f"{k} {v}" for k, v in w["counts"].items() if v)
        waves.add_row(
            str(w["index"]), w["size"], w["phase"], str(w["devices"]), counts or "-", _ts(w["started_at"]),
            _ts(w["bake_until"]), _ts(w["finished_at"]),
        )  # fmt: skip
    out.print(waves)
    gates = Table("wave", "phase", "gate", "result", "value", "threshold", "detail")
    for w in res["waves"]:
        for g in w["gates"]:
            style = {"fail": "red", "pass": "green"}.get(g["status"], "yellow")
            gates.add_row(
                str(w["index"]), g["phase"], g["name"], f"[{style}]{g['status']}[/{style}]", _num(g["value"]),
                _num(g["threshold"]), g["detail"],
            )  # fmt: skip
    if gates.row_count:
        out.print(gates)


@rollout_app.command("status")
def status(
    rollout_id: IdArg,
    devices: Annotated[bool, typer.Option("--devices", help="Also list each device's state.")] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a rollout: each wave with device counts per state, and every gate result with its numbers."""
    with _client(url, token) as c:
        res = _run(lambda: c.request("GET", f"/api/v1/rollouts/{rollout_id}", params={"devices": devices}))
    if as_json:
        _print_json(res)
        return
    _print_status(res)
    if devices:
        table = Table("wave", "device", "state")
        for w in res["waves"]:
            for d, s in sorted(w.get("device_states", {}).items()):
                table.add_row(str(w["index"]), d, s)
        out.print(table)


def _command(action: str, rollout_id: str, reason: str | None, *, url: str, token: str | None, as_json: bool) -> None:
    with _client(url, token) as c:
        res = _run(lambda: c.request("POST", f"/api/v1/rollouts/{rollout_id}/{action}", json={"reason": reason}))
    if as_json:
        _print_json(res)
    else:
        err.print(f"{rollout_id}: {action} accepted")
        _print_status(res)


@rollout_app.command("pause")
def pause(
    rollout_id: IdArg, reason: ReasonOpt = None, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Pause a running rollout: no further wave starts; devices keep what they have."""
    _command("pause", rollout_id, reason, url=url, token=token, as_json=as_json)


@rollout_app.command("resume")
def resume(
    rollout_id: IdArg, reason: ReasonOpt = None, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Resume a paused rollout; a wave that failed a gate (or was baking) bakes again from now."""
    _command("resume", rollout_id, reason, url=url, token=token, as_json=as_json)


@rollout_app.command("abort")
def abort(
    rollout_id: IdArg, reason: ReasonOpt = None, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Abort a rollout: stop where it stands and leave every device as it is."""
    _command("abort", rollout_id, reason, url=url, token=token, as_json=as_json)


@rollout_app.command("rollback")
def rollback(
    rollout_id: IdArg, reason: ReasonOpt = None, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Roll back: sign the previous version anew for every device the rollout changed."""
    _command("rollback", rollout_id, reason, url=url, token=token, as_json=as_json)
