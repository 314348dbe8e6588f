"""`edgefleet sim`: run N simulated agents against a hub (mounted by edgefleet_cli as `sim`)."""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from agent.settings import DownloadSettings
from fleet.errors import FleetError
from fleet.ids import DEFAULT_PREFIX
from fleet.labels import parse_labels
from sim.config import AgentIdentity, Faults, SimConfig
from sim.enrol import direct_identities, enrol_via_hub, load_bundles
from sim.errors import SimError
from sim.profile import Profiles
from sim.swarm import Simulator, Snapshot

app = typer.Typer(
    help="Run many protocol-faithful simulated agents in one process (scale tests, rollout-gate drills).",
    add_completion=False,
)


def _key_text(value: str) -> str:
    if value.startswith("@"):
        return Path(value[1:]).read_text().strip()
    return value


def _identities(  # noqa: PLR0917  (a plain fan-in of CLI options)
    agents: int | None,
    hub: str | None,
    token: str | None,
    bundles: Path | None,
    broker: str | None,
    hub_key: str | None,
    topic_prefix: str,
    id_prefix: str,
    labels: dict[str, str],
    save_bundles: Path | None,
) -> list[AgentIdentity]:
    if bundles is not None:
        found = load_bundles(bundles, labels)
        return found[:agents] if agents else found
    if agents is None or agents < 1:
        raise SimError("--agents N (N >= 1) is needed unless --bundles DIR names the devices")
    if hub is not None:
        if not token:
            raise SimError("--hub needs --token: an admin token (enrolling devices needs the admin role)")
        return enrol_via_hub(hub, token, agents, id_prefix=id_prefix, labels=labels, bundle_dir=save_bundles)
    if broker is not None and hub_key is not None:
        return direct_identities(
            broker, _key_text(hub_key), agents, id_prefix=id_prefix, topic_prefix=topic_prefix, labels=labels
        )
    raise SimError("say where the agents come from: --hub URL --token T, --bundles DIR, or --broker URL --hub-key K")


def _table(snap: Snapshot, elapsed: float) -> Table:
    table = Table(title=f"edgefleet sim: {snap.agents} agents, {elapsed:.0f} s")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("connected", str(snap.connected))
    for phase, count in sorted(snap.phases.items()):
        table.add_row(f"phase {phase}", str(count))
    for version, count in sorted(snap.active_versions.items()):
        table.add_row(f"active {version}", str(count))
    for code, count in sorted(snap.errors.items()):
        table.add_row(f"error {code}", str(count))
    for key in ("chunks", "telemetry", "refused_desired", "activation_failures", "went_offline"):
        table.add_row(key.replace("_", " "), str(snap.stats.get(key, 0)))
    return table


@app.callback(invoke_without_command=True)
def sim(  # noqa: PLR0917  (typer: one parameter per option)
    agents: Annotated[int | None, typer.Option("--agents", "-n", help="How many agents to simulate.")] = None,
    hub: Annotated[str | None, typer.Option(help="Hub REST API URL: enrol the agents there.")] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="EDGEFLEET_TOKEN", help="Admin token for --hub: enrolling devices needs the admin role."),
    ] = None,
    bundles: Annotated[Path | None, typer.Option(help="Folder of device bundle *.json files to run as.")] = None,
    save_bundles: Annotated[Path | None, typer.Option(help="With --hub: also save the bundles here.")] = None,
    broker: Annotated[str | None, typer.Option(help="Broker URL for unenrolled agents (tests, open brokers).")] = None,
    hub_key: Annotated[
        str | None, typer.Option(help="With --broker: the hub's public signing key, or @FILE holding it.")
    ] = None,
    topic_prefix: Annotated[str, typer.Option(help="With --broker: MQTT topic prefix.")] = DEFAULT_PREFIX,
    id_prefix: Annotated[str, typer.Option(help="Device ids are ID_PREFIX-00000, ...")] = "sim",
    labels: Annotated[str, typer.Option(help="Labels for every agent: k=v,k2=v2.")] = "",
    profile: Annotated[
        list[str] | None,
        typer.Option(help="Per-version behaviour, repeatable: VERSION:p50=5ms,p95=12ms,err=0.001,rps=5 (* = default)."),
    ] = None,
    telemetry_s: Annotated[float, typer.Option(help="Telemetry window, seconds.")] = 10.0,
    want_retry_s: Annotated[
        float, typer.Option(help="Re-send a want after this long without progress, s (default: the agent's).")
    ] = DownloadSettings.model_fields["rewant_after_s"].default,
    offline_p: Annotated[float, typer.Option(help="Chance per telemetry window to drop offline abruptly.")] = 0.0,
    offline_s: Annotated[float, typer.Option(help="How long a dropped agent stays offline, seconds.")] = 30.0,
    fail_activation_p: Annotated[float, typer.Option(help="Chance that an activation fails.")] = 0.0,
    slow_fraction: Annotated[float, typer.Option(help="Fraction of agents on a slow link.")] = 0.0,
    slow_chunk_s: Annotated[float, typer.Option(help="Slow agents pause this long after each chunk, s.")] = 0.5,
    cache: Annotated[Path | None, typer.Option(help="Shared blob folder (default: a temporary one).")] = None,
    threads: Annotated[int, typer.Option(help="Transport threads.")] = 2,
    connect_rate: Annotated[float, typer.Option(help="New MQTT connections per second.")] = 500.0,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: run until Ctrl-C).")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Random seed for a reproducible run.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary at the end, no live table.")] = False,
) -> None:
    """Run N simulated agents: enrolment, birth and will, signed desired states, downloads, telemetry, faults."""
    err = Console(stderr=True)
    try:
        label_map = parse_labels([labels])
        config = SimConfig(
            telemetry_s=telemetry_s,
            want_retry_s=want_retry_s,
            seed=seed,
            faults=Faults(
                offline_p=offline_p,
                offline_s=offline_s,
                activation_fail_p=fail_activation_p,
                slow_fraction=slow_fraction,
                slow_chunk_s=slow_chunk_s,
            ),
        )
        profiles = Profiles.parse(profile or [])
        identities = _identities(
            agents, hub, token, bundles, broker, hub_key, topic_prefix, id_prefix, label_map, save_bundles
        )
    except (SimError, FleetError, ValueError, ValidationError, OSError) as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from e
    with tempfile.TemporaryDirectory(prefix="edgefleet-sim-") as tmp:
        simulator = Simulator(
            identities, config, profiles, cache or Path(tmp), threads=threads, connect_rate=connect_rate
        )
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_a: stop.set())
        started = time.monotonic()
        try:
            simulator.start()
            if as_json:
                stop.wait(duration if duration > 0 else None)
            else:
                with Live(_table(simulator.snapshot(), 0), console=Console(), refresh_per_second=2) as live:
                    while not stop.wait(1.0):
                        live.update(_table(simulator.snapshot(), time.monotonic() - started))
                        if duration > 0 and time.monotonic() - started >= duration:
                            break
        finally:
            signal.signal(signal.SIGINT, previous)
            simulator.stop()
        snap = simulator.snapshot()
    if as_json:
        typer.echo(json.dumps({**snap.as_dict(), "seconds": round(time.monotonic() - started, 3)}))
