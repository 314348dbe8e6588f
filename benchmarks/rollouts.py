"""Rollout controller cost on a real hub store (issue 8): one tick, and one gate evaluation, at N devices.

For each N, in one run and one SQLite file:
  raw   - the reads a tick cannot avoid: every device and every desired state's names (list_devices +
          list_desired_summaries), and for gates one SQL aggregate over the same telemetry rows;
  tick  - RolloutEngine.tick() with a rollout baking its 50 % wave (nothing to publish): fleet view,
          membership, settle check, idempotence check of every target; ratio to raw;
  gates - what the gates read (telemetry totals of the wave and of the control cohort over the bake window,
          WINDOWS raw windows per device) against one raw SQL aggregate over the same rows; and the whole
          tick that judges the bake, which also starts the next wave (signs N/2 desired states).

    .venv/bin/python benchmarks/rollouts.py [--devices 1000,5000] [--windows 12] [--md docs/bench/rollouts.md]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fleet.codec import encode  # noqa: E402
from fleet.histogram import LatencyRecorder  # noqa: E402
from fleet.messages import (  # noqa: E402
    AppliedModel,
    DesiredModel,
    DeviceStatus,
    ModelStatus,
    ModelWindow,
    Phase,
    ReportedState,
    TelemetryWindow,
)
from fleet.signing import HubSigningKey  # noqa: E402
from fleet.topics import Topics  # noqa: E402
from hub.deploy import Deployer  # noqa: E402
from hub.devices import Devices  # noqa: E402
from hub.registry import Registry  # noqa: E402
from hub.rollouts.engine import RolloutEngine, StoreTelemetry  # noqa: E402
from hub.rollouts.model import RolloutSpec, WavePhase  # noqa: E402
from hub.settings import DeviceSettings, RolloutSettings  # noqa: E402
from hub.store import Device, ModelVersion, open_store  # noqa: E402

SHA = "ab" * 32
MANIFEST = {"sha256": SHA, "size": 4 << 20, "chunk_size": 262144, "chunks": ["cd" * 32] * 16}


def _best(fn: object, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def run(n: int, windows: int, tmp: Path) -> dict[str, float]:
    db = tmp / f"hub-{n}.db"
    store = open_store(db)
    for v in ("1.0.0", "2.0.0"):
        store.add_model_version(
            ModelVersion("m", v, "classification", SHA, MANIFEST["size"], {}, MANIFEST, 0.0, "bench")  # type: ignore[arg-type]
        )
    ids = [f"cam-{i:05d}" for i in range(n)]
    for d in ids:
        store.add_device(Device(id=d, labels={"site": "a"}, password_hash="x", enrolled_at=0, enrolled_by="bench"))
    registry = Registry(store, tmp / "blobs", tmp / "tmp", chunk_size=262144)
    registry.blob_path(SHA).parent.mkdir(parents=True, exist_ok=True)
    registry.blob_path(SHA).touch()  # a file for the blob, so it counts as servable (no chunk is served here)
    devices = Devices(store, DeviceSettings(), bundle_fields=dict)
    deployer = Deployer(store, HubSigningKey.generate(), Topics("fleet/v1"), lambda *a: None, DeviceSettings(),
                        registry=registry, devices=devices)  # fmt: skip
    deployer.set_slot(ids, "m", DesiredModel(model=registry.model_ref("m", "1.0.0")))
    now = time.time()
    active = AppliedModel(name="m", version="1.0.0", sha256=SHA)
    for d in ids:
        store.enqueue_status(DeviceStatus(device_id=d, state="online", ts=now), now)
        status = ModelStatus(name="m", phase=Phase.ACTIVE, active=active)
        store.enqueue_reported(ReportedState(device_id=d, seq=1, ts=now, desired_version=1, models=[status]), now)
    store.flush()
    settings = RolloutSettings(tick_interval_s=600, telemetry_grace_s=0)
    engine = RolloutEngine(store, registry, deployer, settings, DeviceSettings(stale_after_s=1e9))
    spec = RolloutSpec(model="m", version="2.0.0", selector="site=a", waves=["50%", "100%"], bake_s=60)
    r = engine.start_rollout(spec, actor="bench", now=now)
    engine.tick(now)  # wave 0 starts: desired states for half the fleet
    wave = set(r.members(0))
    rec = LatencyRecorder()
    for i in range(50):
        rec.observe(2 + i % 7)
    for d in ids:
        on_new = d in wave
        applied = AppliedModel(name="m", version="2.0.0" if on_new else "1.0.0", sha256=SHA)
        desired = store.get_desired(d)
        status = ModelStatus(name="m", phase=Phase.ACTIVE, active=applied)
        store.enqueue_reported(ReportedState(device_id=d, seq=2, ts=now, models=[status],
                                             desired_version=desired.version if desired else 1), now)  # fmt: skip
        for k in range(windows):
            mw = ModelWindow(name="m", version=applied.version, requests=50, latency=rec.snapshot())
            w = TelemetryWindow(device_id=d, seq=k, start=now + 5 * k, end=now + 5 * k + 5, models=[mw])
            store.submit_telemetry(d, encode(w), now)
    store.flush()
    engine.tick(now + 1)  # settles: bake starts
    assert engine.get(r.id).waves[0].phase is WavePhase.BAKING, engine.get(r.id).waves[0]

    raw = _best(lambda: (store.list_devices(), store.list_desired_summaries()))
    tick = _best(lambda: engine.tick(now + 2))
    conn = sqlite3.connect(db)
    raw_gates = _best(
        lambda: conn.execute(
            "SELECT model_version, sum(requests), sum(errors), sum(b10) FROM telemetry WHERE \"end\" >= ? "
            "AND start < ? GROUP BY model_version", (now, now + 61),
        ).fetchall(),
        runs=3,
    )  # fmt: skip
    conn.close()
    rest = [d for d in ids if d not in wave]
    telemetry = StoreTelemetry(store, "m")  # what a tick builds for the rollout's model
    reads = _best(lambda: (telemetry.totals(sorted(wave), now, now + 61), telemetry.totals(rest, now, now + 61)))
    t0 = time.perf_counter()
    engine.tick(now + 62)  # judges the bake
    gates = time.perf_counter() - t0
    judged = engine.get(r.id).waves[0]
    assert judged.phase is WavePhase.PASSED, judged.gates
    store.close()
    return {"raw": raw, "tick": tick, "raw_gates": raw_gates, "reads": reads, "gates": gates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="1000,5000", help="comma-separated fleet sizes")
    ap.add_argument("--windows", type=int, default=12, help="telemetry windows per device in the bake")
    ap.add_argument("--md", type=Path, help="also write the table as Markdown here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.devices.split(",")):
            m = run(n, args.windows, Path(tmp))
            rows.append(
                f"| {n} | {m['raw'] * 1e3:.0f} | {m['tick'] * 1e3:.0f} | {m['tick'] / m['raw']:.1f}x "
                f"| {m['raw_gates'] * 1e3:.0f} | {m['reads'] * 1e3:.0f} | {m['reads'] / m['raw_gates']:.1f}x "
                f"| {m['gates'] * 1e3:.0f} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            "## Rollout controller (benchmarks/rollouts.py)",
            "",
            f"One tick of `RolloutEngine` on a real SQLite store, {args.windows} telemetry windows per device in the "
            "bake window, a rollout baking its 50 % wave. `raw` is the reads a tick cannot avoid (all devices and "
            "desired-state names); `raw gates` one SQL aggregate over the same telemetry rows; `judging tick` includes "
            "starting the next wave (signing and storing N/2 desired states). Milliseconds.",
            "",
            "| devices | raw | tick | tick / raw | raw gates | gate reads | reads / raw | judging tick |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(table)


if __name__ == "__main__":
    main()
