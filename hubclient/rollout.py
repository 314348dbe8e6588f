"""`edgefleet rollout start|list|status|pause|resume|abort|rollback`: rollouts over the hub's REST API.

Human tables by default (waves counted from 1); `--json` prints the API's JSON for scripts. `status --watch`
and `start --wait` follow a rollout until it needs nobody and exit with its outcome (hubclient.follow):
0 completed, 1 failed (rolled back or aborted), 2 paused, 3 the hub stopped answering. Abort and rollback
say what they would do to how many devices and ask first (`--yes` for scripts).
"""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any, Literal

import typer

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
from hubclient.errors import HubApiError
from hubclient.follow import _ts, confirmation, follow, status_view, wave_label
from hubclient.http import HubClient
from hubclient.tables import Col, fit

rollout_app = typer.Typer(
    help="Roll a model version out through waves gated on how it behaves on the devices.", no_args_is_help=True
)
IdArg = Annotated[str, typer.Argument(help="Rollout id (r-...), as `rollout list` shows it.", metavar="ROLLOUT_ID")]
ReasonOpt = Annotated[
    str | None,
    typer.Option("--note", "--reason", help="A note for the status and the audit log (kept beside its reason)."),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first (scripts): it acts at once.")]
IntervalOpt = Annotated[float, typer.Option("--interval", help="Seconds between looks at the rollout.", min=0.1)]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """`90`, `30s`, `5m`, `1.5h`, `2d`, `500ms` -> seconds. Raises typer.BadParameter naming the text."""
    m = _DURATION.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 30s, 5m, 1h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _follow(c: HubClient, rollout_id: str, interval: float) -> None:
    """Follow a rollout to its outcome and exit with it (see the module)."""
    code, res = follow(lambda: c.request("GET", f"/api/v1/rollouts/{rollout_id}"), out, interval)
    if res:
        if not out.is_terminal:  # a terminal shows the live table's last state already
            out.print(status_view(res), soft_wrap=False)
        words = {0: "completed", 1: "did not complete", 2: "is paused: it waits for a person",
                 3: "is unknown: the hub stopped answering"}  # fmt: skip
        err.print(f"{rollout_id} {words[code]}" + (f": {res['reason']}" if res.get("reason") and code else ""))
    raise typer.Exit(code)


@rollout_app.command("start")
def start(
    ref: Annotated[str, typer.Argument(help="MODEL:VERSION to roll out.", metavar="MODEL:VERSION")],
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
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow it to its outcome; exit 0 completed, 1 failed, 2 paused, 3 hub lost."),
    ] = False,
    interval: IntervalOpt = 2.0,
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
        res = _run(lambda: _post_start(c, body))
        if as_json:
            _print_json(res)
        else:
            out.print(f"rollout [bold]{res['id']}[/bold] started: {name}:{version} to {res['devices']} device(s)")
            if not wait:
                out.print(status_view(res), soft_wrap=False)
        if wait:
            _follow(c, res["id"], interval)


# the request fields `rollout start` fills from its options: a refused value is named by its option
_OPTIONS = {
    "body.gates.max_error_rate": "--max-error-rate", "body.gates.max_p95_regression": "--max-p95-regression",
    "body.gates.max_activation_failures": "--max-activation-failures", "body.gates.min_agreement": "--min-agreement",
    "body.gates.min_requests": "--min-requests", "body.shadow_rate": "--shadow", "body.waves": "--waves",
    "body.bake_s": "--bake", "body.offline_timeout_s": "--offline-timeout", "body.selector": "--selector",
    "body.model": "MODEL", "body.version": "VERSION",
}  # fmt: skip


def _post_start(c: HubClient, body: dict[str, Any]) -> dict[str, Any]:
    """POST the rollout; a value the hub refuses is named by its option (`--max-error-rate: ...`), not by
    its place in the request body (`body.gates.max_error_rate: ...`)."""
    try:
        return dict(c.request("POST", "/api/v1/rollouts", json=body))
    except HubApiError as e:
        if e.code != "invalid_request":
            raise
        message = e.message
        for field, option in _OPTIONS.items():
            message = re.sub(rf"{re.escape(field)}(?![\w.])", option, message)
        raise HubApiError(e.status, e.code, message) from None


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
    cols = [Col("id", 9, whole=True), Col("model", 9, whole=True), Col("state", 8, whole=True), Col("wave", 6),
            Col("devices", 5, justify="right"), Col("selector", 3), Col("created", 2), Col("reason", 1)]  # fmt: skip
    cells = [
        [r["id"], f"{r['model']}:{r['version']}", r["state"], wave_label(r).removeprefix("wave "), str(r["devices"]),
         r["selector"], _ts(r["created_at"]), r["reason"] or ""]
        for r in rows
    ]  # fmt: skip
    out.print(fit(cols, cells))


@rollout_app.command("status")
def status(
    rollout_id: IdArg,
    *,
    devices: Annotated[bool, typer.Option("--devices", help="Also list each device's state.")] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", "-w", help="Follow it live to its outcome; exit 0 completed, 1 failed, 2 paused, 3 hub lost."
        ),
    ] = False,
    interval: IntervalOpt = 2.0,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a rollout: each wave with device counts per state, and every gate result with its numbers."""
    with _client(url, token) as c:
        if watch and not as_json:
            _follow(c, rollout_id, interval)
        res = _run(lambda: c.request("GET", f"/api/v1/rollouts/{rollout_id}", params={"devices": devices}))
    if as_json:
        _print_json(res)
        return
    out.print(status_view(res), soft_wrap=False)
    if devices:
        rows = [
            [str(w["index"] + 1), d, s, (w.get("device_errors") or {}).get(d, "")]
            for w in res["waves"]
            for d, s in sorted((w.get("device_states") or {}).items())
        ]
        cols = [Col("wave", 9, justify="right"), Col("device", 9, whole=True), Col("state", 9), Col("error", 8)]
        out.print(fit(cols, rows))
        out.print("Waves formed at the start, online devices first; a device keeps its wave.", style="dim")


Action = Literal["pause", "resume", "abort", "rollback"]
# the states in which abort and rollback act (in others the hub refuses them: nothing to ask)
_ASKS: dict[str, tuple[str, ...]] = {
    "abort": ("running", "paused", "rolling_back"), "rollback": ("running", "paused", "completed"),
    "pause": (), "resume": (),
}  # fmt: skip


def _command(
    action: Action, rollout_id: str, note: str | None, *, url: str, token: str | None, as_json: bool, yes: bool = True
) -> None:
    with _client(url, token) as c:
        current = None if yes else _run(lambda: c.request("GET", f"/api/v1/rollouts/{rollout_id}"))
        if current is not None and current["state"] in _ASKS[action]:  # say what it would do, to how many, ask
            question = confirmation(action, current)
            if not sys.stdin.isatty():
                err.print(f"[red]error[/red] (not_confirmed): {question.split('?')[0]} needs a yes: pass --yes "
                          f"({question.split('? ', 1)[1]})")  # fmt: skip
                raise typer.Exit(2)
            if not typer.confirm(question, default=False, err=True):
                err.print("nothing sent")
                raise typer.Exit(1)
        res = _run(lambda: c.request("POST", f"/api/v1/rollouts/{rollout_id}/{action}", json={"reason": note}))
    if as_json:
        _print_json(res)
    else:
        err.print(f"{rollout_id}: {action} accepted")
        out.print(status_view(res), soft_wrap=False)


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
    rollout_id: IdArg, *, reason: ReasonOpt = None, yes: YesOpt = False, url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Abort a rollout: stop where it stands and leave every device as it is (asks first, saying how many)."""
    _command("abort", rollout_id, reason, url=url, token=token, as_json=as_json, yes=yes)


@rollout_app.command("rollback")
def rollback(
    rollout_id: IdArg, *, reason: ReasonOpt = None, yes: YesOpt = False, url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Roll back: sign the previous version anew for every device the rollout changed (asks first)."""
    _command("rollback", rollout_id, reason, url=url, token=token, as_json=as_json, yes=yes)
