"""`edgefleet k3s`: look at the cluster the way the agent does, render and apply the serving workload by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.k3s.errors import ClusterError
from infra.errors import SettingsError

if TYPE_CHECKING:  # the settings, renderer and wire models load only for a command that runs: --help stays fast
    from agent.k3s.settings import ClusterSettings
    from fleet.messages import DesiredState


class PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases (`&id001`/`*id001`): a shared dict is written out in full each time."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


app = typer.Typer(
    name="k3s", help="Cluster mode on K3s: node inventory and the serving workload.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)

KubeconfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--kubeconfig",
        help="kubeconfig file (K3s: /etc/rancher/k3s/k3s.yaml, root only); default: in-cluster, $KUBECONFIG",
    ),
]
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="namespace of the serving workload")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
DesiredOpt = Annotated[
    Path, typer.Option("--desired", help="a desired state as JSON (the body of a signed envelope)", exists=False)
]
ImageOpt = Annotated[str | None, typer.Option("--image", help="serving image (CPU variant)")]


def _settings(**overrides: Any) -> ClusterSettings:
    from agent.k3s.settings import ClusterSettings  # noqa: PLC0415

    try:
        return ClusterSettings.from_env(**overrides)
    except (ClusterError, SettingsError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e


def _desired(path: Path, done: str) -> tuple[DesiredState, int]:
    """The desired state in file `path`, read slot by slot as the agent reads it (`fleet.desired.read_desired`):
    the slots this build reads, and how many it does not, each named on stderr ("model 'x' not `done`: why")."""
    from fleet.desired import read_desired  # noqa: PLC0415

    try:
        raw = path.read_bytes()
    except OSError as e:
        err.print(f"[red]error:[/red] cannot read {path}: {e.strerror or e}")
        raise typer.Exit(2) from e
    if len(raw) > 4 << 20:
        err.print(f"[red]error:[/red] {path} is larger than 4 MiB; not a desired state")
        raise typer.Exit(2)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        err.print(f"[red]error:[/red] {path} is not a valid desired state: not JSON: {escape(str(e)[:300])}")
        raise typer.Exit(2) from e
    if not isinstance(body, dict):
        err.print(f"[red]error:[/red] {path} is not a valid desired state: a JSON {type(body).__name__}, not an object")
        raise typer.Exit(2)
    try:
        state, unread = read_desired(body)
    except ValidationError as e:
        err.print(f"[red]error:[/red] {path} is not a valid desired state: {e.error_count()} problems")
        for problem in e.errors()[:10]:
            loc = ".".join(str(p) for p in problem["loc"])
            err.print(f"  {loc}: {problem['msg']}")
        raise typer.Exit(2) from e
    except ValueError as e:  # model names repeated across slots
        err.print(f"[red]error:[/red] {path} is not a valid desired state: {escape(str(e)[:300])}")
        raise typer.Exit(2) from e
    for slot in unread:  # as the agent refuses such a slot: that model only (reported unsupported_model)
        err.print(f"[yellow]warning:[/yellow] model {slot.model!r} not {done}: {escape(slot.reason)}",
                  soft_wrap=True)  # fmt: skip
    return state, len(unread)


@app.command("inventory")
def inventory(kubeconfig: KubeconfigOpt = None, as_json: JsonOpt = False) -> None:
    """List the cluster's nodes with readiness, GPU product and allocatable GPU and MIG resources."""
    from agent.k3s.bridge import ClusterBridge  # noqa: PLC0415  (lightkube only when talking to a cluster)
    from agent.k3s.inventory import gpu_totals  # noqa: PLC0415

    settings = _settings(kubeconfig=kubeconfig)
    try:
        with ClusterBridge(settings) as bridge:
            nodes = bridge.inventory()
    except ClusterError as e:
        err.print(f"[red]error ({e.code}):[/red] {e}")
        raise typer.Exit(1) from e
    if as_json:
        typer.echo(json.dumps([n.model_dump() for n in nodes], indent=2))
        return
    table = Table("node", "ready", "GPU product", "cpu", "memory", "GPU / MIG")
    for node in nodes:
        accel = ", ".join(f"{k.removeprefix('nvidia.com/')}={v}" for k, v in node.allocatable.items() if "nvidia" in k)
        table.add_row(
            node.name,
            "yes" if node.ready else "[red]no[/red]",
            node.gpu_product or "-",
            node.allocatable.get("cpu", "-"),
            node.allocatable.get("memory", "-"),
            accel or "-",
        )
    console.print(table)
    totals = gpu_totals(nodes)
    if totals:
        console.print("ready nodes offer: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())))


@app.command("render")
def render(
    desired: DesiredOpt, *, namespace: NamespaceOpt = None, image: ImageOpt = None, as_json: JsonOpt = False
) -> None:
    """Print the ConfigMap, Deployment, Service (and HPA) the agent would apply for each model of a desired state."""
    from agent.k3s.render import render_workload  # noqa: PLC0415

    settings = _settings(namespace=namespace, image=image)
    state, _unread = _desired(desired, "rendered")  # named on stderr: the output is what the agent would apply
    try:
        workloads = {slot.name: render_workload(state, slot.name, settings) for slot in state.models}
    except ClusterError as e:
        err.print(f"[red]error ({e.code}):[/red] {e}")
        raise typer.Exit(1) from e
    if as_json:
        doc = {n: {"template_hash": w.template_hash, "objects": w.objects()} for n, w in workloads.items()}
        typer.echo(json.dumps(doc, indent=2))
    else:
        objects = [obj for w in workloads.values() for obj in w.objects()]
        typer.echo(yaml.dump_all(objects, Dumper=PlainDumper, sort_keys=False), nl=False)


@app.command("apply")
def apply(
    desired: DesiredOpt,
    *,
    kubeconfig: KubeconfigOpt = None,
    namespace: NamespaceOpt = None,
    image: ImageOpt = None,
    deadline: Annotated[
        float | None, typer.Option("--deadline", help="seconds to wait for the rollout (default: settings)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Server-side apply the serving workload of each model of a desired state and wait for their rollouts, as
    the agent does."""
    settings = _settings(kubeconfig=kubeconfig, namespace=namespace, image=image, rollout_deadline_s=deadline)
    from agent.k3s.bridge import ClusterBridge  # noqa: PLC0415  (lightkube only when talking to a cluster)

    state, unread = _desired(desired, "applied")
    try:
        with ClusterBridge(settings) as bridge:
            results = {slot.name: bridge.apply(state, slot.name) for slot in state.models}
    except ClusterError as e:
        err.print(f"[red]error ({e.code}):[/red] {e}")
        raise typer.Exit(1) from e
    if as_json:
        typer.echo(json.dumps({n: r.model_dump(mode="json") for n, r in results.items()}, indent=2))
    else:
        for name, result in results.items():
            colour = "green" if result.state == "ready" else "red"
            console.print(
                f"{name}: {result.namespace}/{result.deployment}: [{colour}]{result.state}[/{colour}] "
                f"{result.ready_replicas}/{result.replicas} ready, generation {result.generation}"
                + (f" — {result.message}" if result.message else "")
            )
    if unread or any(r.state != "ready" for r in results.values()):
        raise typer.Exit(1)
