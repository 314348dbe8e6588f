"""A synthetic fleet for the dashboard's tests, screenshots and benchmark.

`seed_fleet(hub, samples_dir, devices=300)` enrols devices through the hub's services, pushes real sample
models, deploys them (signed desired states), and feeds births, reported states (with download and
activation history) and per-minute telemetry windows through the store's ingestion path, as the MQTT
ingestor would. The mix of states is deterministic for a given seed.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.codec import encode
from fleet.histogram import LATENCY_BOUNDS_MS, N_BUCKETS, Histogram
from fleet.messages import (
    AppliedModel,
    Capabilities,
    DesiredModel,
    DeviceStatus,
    DownloadProgress,
    ErrorInfo,
    GpuInfo,
    GpuSample,
    Phase,
    RuntimeOptions,
)
from hub.runtime import Hub
from models.cli import build_samples
from models.descriptor import ModelDescriptor
from tests.support.wire import one_model_report, one_model_window

SITES = ("berlin", "munich", "hamburg", "lyon", "turin", "porto")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass
class SeededFleet:
    """What was seeded: device ids by intended state, models and the time it was seeded at."""

    now: float
    devices: list[str] = field(default_factory=list)
    by_state: dict[str, list[str]] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    gpu_devices: list[str] = field(default_factory=list)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)


def _push(hub: Hub, onnx: Path, yaml: Path, version: str) -> str:
    desc = ModelDescriptor.load(yaml).to_json() | {"version": version}
    data = onnx.read_bytes()
    path = hub.registry.receive(iter([data]), max_bytes=len(data) + 1)
    res = hub.registry.push(path, desc, actor="seed", filename=onnx.name)
    return f"{res.version.name}:{res.version.version}"


def _template(rng: random.Random, median_ms: float) -> list[float]:
    """Bucket fractions of a log-normal latency around `median_ms`."""
    counts = [0] * N_BUCKETS
    for _ in range(400):
        ms = median_ms * math.exp(rng.gauss(0, 0.35))
        i = next((k for k, b in enumerate(LATENCY_BOUNDS_MS) if ms <= b), N_BUCKETS - 1)
        counts[i] += 1
    return [c / 400 for c in counts]


def _hist(template: list[float], requests: int, slow: float = 1.0) -> Histogram:
    counts = [round(f * requests) for f in template]
    if slow > 1:  # shift mass to slower buckets
        shift = min(3, int(slow))
        counts = [0] * shift + counts[: N_BUCKETS - shift]
        counts[-1] += 0
    total = sum(counts)
    mids = [LATENCY_BOUNDS_MS[min(i, len(LATENCY_BOUNDS_MS) - 1)] * 0.8 for i in range(N_BUCKETS)]
    return Histogram.model_construct(
        counts=tuple(counts), sum_ms=float(sum(c * m for c, m in zip(counts, mids, strict=True))) if total else 0.0
    )


def _planned_state(i: int) -> str:
    roll = (i * 7) % 50  # a permutation of 0..49: every 50 devices hold each state
    if roll < 3:
        return "offline"
    if roll < 5:
        return "updating"
    if roll < 6:
        return "failed"
    return "degraded" if roll < 9 else "online"


def _caps(gpu: bool, k3s: bool) -> Capabilities:
    gpus = [GpuInfo(index=0, name="NVIDIA L4", memory_bytes=24 << 30)] if gpu else []
    return Capabilities(
        agent_version="0.1.0", onnxruntime_version="1.32.0", providers=[CUDA, CPU] if gpu else [CPU],
        cpu_count=8 if gpu else 4, memory_bytes=(32 if gpu else 8) << 30, disk_free_bytes=(120 if gpu else 40) << 30,
        platform="Linux-x86_64" if gpu else "Linux-aarch64", gpus=gpus, mode="k3s" if k3s else "single",
    )  # fmt: skip


def _applied(ref: str, sha: str, provider: str, at: float) -> AppliedModel:
    name, _, version = ref.partition(":")
    return AppliedModel(name=name, version=version, sha256=sha, provider=provider, activated_at=at)


def seed_fleet(
    hub: Hub, samples: Path, *, devices: int = 300, hours: float = 1.0, day: bool = True, seed: int = 7,
    now: float | None = None,
) -> SeededFleet:  # fmt: skip
    """Seed `devices` devices with an hour (`hours`) of per-minute telemetry and, with `day`, 5-minute
    windows back to a day ago. Returns what was seeded (ids by intended state)."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    out = SeededFleet(now=now)
    retrained = samples / "retrained"  # another training run: the newer versions have their own bytes
    if not (retrained / "tiny-detector.onnx").exists():
        build_samples(retrained, seed=3)
    mob, det = samples / "mobilenet-like", samples / "tiny-detector"
    mob2, det2 = retrained / "mobilenet-like", retrained / "tiny-detector"
    cls_old = _push(hub, mob.with_suffix(".onnx"), mob.with_suffix(".yaml"), "1.1.0")
    cls_new = _push(hub, mob2.with_suffix(".onnx"), mob2.with_suffix(".yaml"), "1.2.0")
    det_v = _push(hub, det.with_suffix(".onnx"), det.with_suffix(".yaml"), "0.4.0")
    det_rc = _push(hub, det2.with_suffix(".onnx"), det2.with_suffix(".yaml"), "0.5.0-rc.1")
    out.models = [cls_old, cls_new, det_v]
    sha = {ref: hub.registry.get(*ref.split(":")).sha256 for ref in (*out.models, det_rc)}

    meta: dict[str, dict[str, Any]] = {}
    for i in range(devices):
        app = "detect" if i % 4 == 3 else "classify"
        gpu = i % 5 == 0
        dev_id = f"{SITES[i % len(SITES)][:3]}-{app[:3]}-{i:04d}"
        labels = {"site": SITES[i % len(SITES)], "app": app, "tier": "canary" if i % 20 == 1 else "prod",
                  "hw": "gpu" if gpu else "cpu"}  # fmt: skip
        hub.devices.add(dev_id, labels, actor="seed")
        out.labels[dev_id] = labels
        meta[dev_id] = {"i": i, "app": app, "gpu": gpu, "labels": labels}
        out.devices.append(dev_id)
        if gpu:
            out.gpu_devices.append(dev_id)

    gpu_rt = RuntimeOptions(providers=[CUDA, CPU])
    desired: dict[str, tuple[int, str]] = {}
    for ref, selector, runtime in (
        (cls_old, "app=classify,hw=cpu", None), (cls_old, "app=classify,hw=gpu", gpu_rt),
        (det_v, "app=detect,hw=cpu", None), (det_v, "app=detect,hw=gpu", gpu_rt),
        (cls_new, "app=classify,tier=canary", None),
    ):  # fmt: skip
        name, _, version = ref.partition(":")
        try:
            res = hub.deployer.deploy(name, version, selector, actor="seed", runtime=runtime)
        except Exception:  # a small fleet may have no device for a selector
            continue
        for dev_id, v in res.devices.items():
            desired[dev_id] = (v, ref)

    # devices that will be updating or failed were asked for the newer classifier or the detector's candidate
    for gpu in (False, True):
        moving = [
            d for d in out.devices if meta[d]["gpu"] == gpu and _planned_state(meta[d]["i"]) in ("updating", "failed")
        ]
        for target in (cls_new, det_rc):
            ids = [d for d in moving if (meta[d]["app"] == "classify") == (target == cls_new)]
            if ids:
                ref_ = hub.registry.model_ref(*target.split(":"))
                slot = DesiredModel(model=ref_, runtime=gpu_rt or RuntimeOptions() if gpu else RuntimeOptions())
                for st in hub.deployer.set_slot(ids, ref_.name, slot):
                    desired[st.device_id] = (st.version, target)

    store = hub.store
    for dev_id in out.devices:
        m = meta[dev_id]
        i = m["i"]
        state = _planned_state(i)
        out.by_state.setdefault(state, []).append(dev_id)
        m["state"] = state
        accepted_version, ref = desired.get(dev_id, (0, cls_old))
        old_ref = cls_old if m["app"] == "classify" else det_v
        provider = CUDA if m["gpu"] else CPU
        t0 = now - 3 * 3600 - rng.uniform(0, 3600)
        birth = DeviceStatus(device_id=dev_id, state="online", ts=t0, session=f"s{i:05d}", labels=m["labels"],
                             capabilities=_caps(m["gpu"], i % 9 == 0))  # fmt: skip
        store.enqueue_status(birth, t0)
        seq = 0

        def report(
            phase: Phase, at: float, *, active: str | None, accepted: int | None, dl: int | None = None,
            err: ErrorInfo | None = None, target: str = ref,
        ) -> None:  # fmt: skip
            nonlocal seq
            seq += 1
            act = _applied(active, sha[active], provider, at) if active else None
            download = None
            if dl is not None:
                download = DownloadProgress(sha256=sha[target], have_chunks=dl, total_chunks=40,
                                            bytes_done=dl * 262144, bytes_total=40 * 262144)  # fmt: skip
            msg = one_model_report(dev_id, seq=seq, ts=at, desired_version=accepted, phase=phase, active=act,
                                   download=download, error=err, model=target.split(":", maxsplit=1)[0])  # fmt: skip
            store.enqueue_reported(msg, at)

        report(Phase.IDLE, t0 + 1, active=None, accepted=None)
        report(Phase.DOWNLOADING, t0 + 2, active=None, accepted=accepted_version, dl=0, target=old_ref)
        report(Phase.ACTIVATING, t0 + 40, active=None, accepted=accepted_version, target=old_ref)
        if state == "updating":
            report(Phase.ACTIVE, t0 + 45, active=old_ref, accepted=max(0, accepted_version - 1))
            report(Phase.DOWNLOADING, now - 20, active=old_ref, accepted=accepted_version, dl=rng.randint(5, 35))
        elif state == "failed":
            report(Phase.ACTIVE, t0 + 45, active=old_ref, accepted=accepted_version)
            err = ErrorInfo(code="golden_mismatch", message="golden check failed: output differs beyond atol 0.001",
                            permanent=True, at=now - 600)  # fmt: skip
            report(Phase.FAILED, now - 600, active=old_ref, accepted=accepted_version, err=err)
        else:
            report(Phase.ACTIVE, t0 + 45, active=ref, accepted=accepted_version)
        if state == "offline":
            store.enqueue_status(DeviceStatus(device_id=dev_id, state="offline", ts=now - 1800), now - 1800)
        m["ref"] = ref if state not in ("updating", "failed") else old_ref
    store.flush(timeout=120)

    # telemetry: per-minute windows over `hours`, and 5-minute windows back to a day ago
    for dev_id in out.devices:
        m = meta[dev_id]
        base = rng.uniform(300, 1500) * (2.5 if m["gpu"] else 1.0)
        median = rng.uniform(2.0, 4.0) if m["gpu"] else rng.uniform(8.0, 18.0)
        template = _template(rng, median)
        name, _, version = m["ref"].partition(":")
        end_at = now - 1800 if m["state"] == "offline" else now
        spans: list[tuple[float, float]] = []
        if day:
            t = now - 86400
            while t < now - hours * 3600:
                spans.append((t, 300.0))
                t += 300
        t = now - hours * 3600
        while t < end_at - 60:
            spans.append((t, 60.0))
            t += 60
        for seq, (start, length) in enumerate(spans, 1):
            phase = 2 * math.pi * (start % 86400) / 86400
            load = 0.65 + 0.35 * math.sin(phase) + rng.uniform(-0.08, 0.08)
            requests = max(0, int(base * load * length / 60))
            incident = now - 2400 < start < now - 2000
            err_rate = 0.002 + (0.03 if incident else 0.0)
            if m["state"] == "degraded" and start > now - 900:
                err_rate = 0.12
            errors = int(requests * err_rate + rng.random())
            gpus = [GpuSample(index=0, util_percent=min(100.0, 25 + 55 * load + rng.uniform(-5, 5)),
                              memory_used_bytes=6 << 30)] if m["gpu"] else []  # fmt: skip
            w = one_model_window(
                dev_id, seq=seq, start=start, end=start + length, model=name, model_version=version,
                provider=CUDA if m["gpu"] else CPU, requests=requests, errors=errors,
                latency=_hist(template, requests, 2.5 if incident else 1.0), queue_depth=rng.randint(0, 4),
                cpu_percent=min(100.0, 15 + 45 * load + rng.uniform(-4, 4)),
                memory_bytes=(900 + rng.randint(0, 200)) << 20, gpus=gpus, construct=True,
            )  # fmt: skip
            store.submit_telemetry(w.device_id, encode(w), start + length)
    store.flush(timeout=300)
    return out


def _gates(now: float, wave_size: int, *, requests: int, errors: int, p95: float, control: float) -> list[Any]:
    from hub.rollouts.model import GateResult  # noqa: PLC0415

    since, until = now - 900, now - 600
    reg = (p95 - control) / control
    rate = errors / requests
    return [
        GateResult(name="activation", phase="activation", status="pass", value=0.0, threshold=0.0,
                   measured={"failed": 0, "ready": wave_size, "devices": wave_size, "failed_devices": []},
                   detail=f"0 of {wave_size} device(s) failed to activate", at=until),
        GateResult(name="availability", phase="activation", status="pass", value=float(wave_size), threshold=1.0,
                   measured={"ready": wave_size, "offline": 0, "devices": wave_size, "offline_devices": []},
                   detail=f"{wave_size} of {wave_size} device(s) ready; 0 offline set aside", at=until),
        GateResult(name="error_rate", phase="activation", status="pass" if rate <= 0.01 else "fail", value=rate,
                   threshold=0.01, measured={"requests": requests, "errors": errors, "windows": wave_size * 30},
                   detail=f"error rate {rate:.4f} {'<=' if rate <= 0.01 else '>'} 0.01", since=since, until=until,
                   at=until),
        GateResult(name="p95_latency", phase="activation", status="pass" if reg <= 0.2 else "fail", value=reg,
                   threshold=0.2, measured={"wave_p95_ms": p95, "wave_requests": requests, "control_p95_ms": control,
                                            "control_requests": requests * 6, "control_source": "control",
                                            "control_devices": 40},
                   detail=f"p95 {p95:.2f} ms vs control {control:.2f} ms: {reg:+.1%} "
                   f"({'within' if reg <= 0.2 else 'over'} 20%)", since=since, until=until, at=until),
    ]  # fmt: skip


def _adopt(hub: Hub, fleet: SeededFleet, ids: list[str], ref: str, rollout_id: str, at: float) -> None:
    """Sign `ref` for `ids` as rollout `rollout_id` and report it active on them (as after a good wave)."""
    name, _, version = ref.partition(":")
    model = hub.registry.model_ref(name, version)
    sha = hub.registry.get(name, version).sha256
    for gpu in (False, True):
        group = [d for d in ids if (d in fleet.gpu_devices) == gpu]
        if not group:
            continue
        runtime = RuntimeOptions(providers=[CUDA, CPU]) if gpu else RuntimeOptions()
        slot = DesiredModel(model=model, runtime=runtime, rollout_id=rollout_id)
        for st in hub.deployer.set_slot(group, name, slot):
            provider = CUDA if gpu else CPU
            download = DownloadProgress(sha256=sha, have_chunks=0, total_chunks=6, bytes_done=0, bytes_total=6 << 18)
            steps = ((Phase.DOWNLOADING, at - 40, download), (Phase.ACTIVATING, at - 5, None), (Phase.ACTIVE, at, None))
            for seq, (phase, ts, dl) in enumerate(steps, 1000):
                active = _applied(ref, sha, provider, at) if phase is Phase.ACTIVE else None
                msg = one_model_report(st.device_id, seq=seq, ts=ts, desired_version=st.version, phase=phase,
                                       active=active, download=dl, model=name)  # fmt: skip
                hub.store.enqueue_reported(msg, ts)
    hub.store.flush()


def seed_rollouts(hub: Hub, fleet: SeededFleet) -> list[str]:
    """Two rollouts with gate evaluations, as the controller records them: a classifier rollout paused by its
    p95 gate in wave 3 (its first waves on the candidate, reporting and serving), and a finished one of the
    detector. Returns their ids (paused first)."""
    from hub.rollouts.controller import wave_name  # noqa: PLC0415
    from hub.rollouts.engine import COLLECTION  # noqa: PLC0415
    from hub.rollouts.model import DeviceEntry, Rollout, RolloutSpec, RolloutState, Wave, WavePhase  # noqa: PLC0415

    now = fleet.now
    ids: list[str] = []
    targets = [d for d in fleet.devices if fleet.labels[d]["app"] == "classify" and fleet.labels[d]["tier"] == "prod"]
    n = len(targets)
    cuts = [1, max(2, n // 10), max(3, n // 2), n]
    members = [targets[: cuts[0]], targets[cuts[0] : cuts[1]], targets[cuts[1] : cuts[2]], targets[cuts[2] :]]
    entries = {d: DeviceEntry(wave=k, prev_model="mobilenet-like", prev_version="1.1.0", joined_at=now - 5400)
               for k, group in enumerate(members) for d in group}  # fmt: skip
    rid = "r-5c1e2a7f9b04"
    waves = [
        Wave(index=0, size="1", phase=WavePhase.PASSED, started_at=now - 5300, settled_at=now - 5200,
             bake_until=now - 4900, finished_at=now - 4880,
             gates=_gates(now - 4000, 1, requests=5400, errors=9, p95=12.9, control=12.6)),
        Wave(index=1, size="10%", phase=WavePhase.PASSED, started_at=now - 4870, settled_at=now - 4700,
             bake_until=now - 4400, finished_at=now - 4380,
             gates=_gates(now - 3500, len(members[1]), requests=61200, errors=140, p95=13.4, control=12.7)),
        Wave(index=2, size="50%", phase=WavePhase.FAILED, started_at=now - 4370, settled_at=now - 4100,
             bake_until=now - 3800, finished_at=now - 3780, failed_in=WavePhase.ACTIVATING,
             gates=_gates(now - 2900, len(members[2]), requests=288000, errors=610, p95=17.1, control=12.8)),
        Wave(index=3, size="100%"),
    ]  # fmt: skip
    spec = RolloutSpec(model="mobilenet-like", version="1.2.0", selector="app=classify,tier=prod", bake_s=300)
    paused = Rollout(
        id=rid, spec=spec, state=RolloutState.PAUSED, created_at=now - 5400, created_by="ops-anna",
        updated_at=now - 3780, seq=14, current=2, waves=waves, devices=entries,
    )  # fmt: skip
    failed = [g for g in waves[2].gates if not g.passed]  # the controller's reason and events for that failure
    reason = f"{wave_name(paused, waves[2])} failed: " + "; ".join(f"{g.name}: {g.detail}" for g in failed)
    paused = paused.model_copy(update={"reason": reason})
    hub.store.put_doc(COLLECTION, rid, paused.model_dump(mode="json"))
    ids.append(rid)
    subject = f"rollout/{rid}"
    for ts, actor, action, details in (
        (now - 5400, "ops-anna", "rollout.start", {"model": "mobilenet-like", "version": "1.2.0", "devices": n}),
        (now - 4880, "rollout-controller", "rollout.wave_passed", {"wave": 1, "size": waves[0].size}),
        (now - 4380, "rollout-controller", "rollout.wave_passed", {"wave": 2, "size": waves[1].size}),
        (now - 3780, "rollout-controller", "rollout.gate_failed",
         {"wave": 3, "gates": [g.model_dump(mode="json") for g in failed]}),
        (now - 3780, "rollout-controller", "rollout.pause", {"state": "paused", "reason": reason}),
    ):  # fmt: skip
        hub.store.add_event(ts, actor, action, subject, details)
    moved = [d for group in members[:3] for d in group if d in fleet.by_state.get("online", [])]
    _adopt(hub, fleet, moved, "mobilenet-like:1.2.0", rid, now - 4000)

    det = [d for d in fleet.devices if fleet.labels[d]["app"] == "detect"]
    done_id = "r-0d3e1b66a2c8"
    # 5% of a small fleet rounds up to the canary's one device: that wave is empty, and passed at once
    spec2 = RolloutSpec(model="tiny-detector", version="0.4.0", selector="app=detect", waves=["1", "5%", "100%"],
                        bake_s=600)  # fmt: skip
    done = Rollout(
        id=done_id, spec=spec2, state=RolloutState.COMPLETED, created_at=now - 80000, created_by="ops-jonas",
        updated_at=now - 76000, seq=9, current=3,
        waves=[
            Wave(index=0, size="1", phase=WavePhase.PASSED, started_at=now - 79900, finished_at=now - 79000,
                 gates=_gates(now - 79000, 1, requests=4100, errors=3, p95=21.0, control=22.4)),
            Wave(index=1, size="5%", phase=WavePhase.PASSED, finished_at=now - 79000),
            Wave(index=2, size="100%", phase=WavePhase.PASSED, started_at=now - 78990, finished_at=now - 76000,
                 gates=_gates(now - 76000, max(1, len(det) - 1), requests=90000, errors=80, p95=21.4, control=22.1)),
        ],
        devices={d: DeviceEntry(wave=0 if i == 0 else 2, joined_at=now - 80000) for i, d in enumerate(det)},
    )  # fmt: skip
    hub.store.put_doc(COLLECTION, done_id, done.model_dump(mode="json"))
    healthy = set(fleet.by_state.get("online", [])) | set(fleet.by_state.get("degraded", []))
    _adopt(hub, fleet, [d for d in det if d in healthy], "tiny-detector:0.4.0", done_id, now - 76000)
    ids.append(done_id)
    return ids
