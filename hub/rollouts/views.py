"""Rollouts as JSON for the API and the CLI: a summary per rollout, and a status with each wave's device counts
per state and its gate results."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from hub.rollouts.cohort import DeviceView, classify
from hub.rollouts.model import Rollout

DEVICE_STATES = (
    "pending", "updating", "shadowing", "active", "failed", "offline", "no_baseline", "rolled_back", "left",
)  # fmt: skip


def summary_view(r: Rollout) -> dict[str, Any]:
    """One line's worth: id, model, state, progress."""
    current = r.waves[r.current] if r.current < len(r.waves) else None
    return {
        "id": r.id, "model": r.spec.model, "version": r.spec.version, "selector": r.spec.selector,
        "state": r.state.value, "reason": r.reason, "wave": r.current, "wave_count": len(r.waves),
        "wave_phase": current.phase.value if current else None,
        "devices": sum(1 for e in r.devices.values() if e.left_at is None),
        "created_at": r.created_at, "created_by": r.created_by, "updated_at": r.updated_at,
    }  # fmt: skip


def status_view(r: Rollout, fleet: Mapping[str, DeviceView], *, devices: bool = False) -> dict[str, Any]:
    """The full status: spec, each wave with its phase, timestamps, device counts per state and gate results."""
    states = {d: classify(r, d, fleet.get(d)) for d in r.devices}
    waves = []
    for w in r.waves:
        members = r.members(w.index, include_left=True)
        counts = Counter(states[d] for d in members)
        wave: dict[str, Any] = {
            "index": w.index, "size": w.size, "phase": w.phase.value, "devices": len(members),
            "counts": {s: counts.get(s, 0) for s in DEVICE_STATES},
            "started_at": w.started_at, "shadow_started_at": w.shadow_started_at, "settled_at": w.settled_at,
            "bake_until": w.bake_until, "finished_at": w.finished_at,
            "failed_in": w.failed_in.value if w.failed_in else None, "set_aside": w.set_aside,
            "gates": [g.model_dump(mode="json") for g in w.gates],
        }  # fmt: skip
        if devices:
            wave["device_states"] = {d: states[d] for d in members}
        waves.append(wave)
    totals = Counter(states.values())
    return summary_view(r) | {
        "spec": r.spec.model_dump(mode="json"),
        "seq": r.seq,
        "totals": {s: totals.get(s, 0) for s in DEVICE_STATES},
        "waves": waves,
    }
