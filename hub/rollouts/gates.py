"""Gates: activation failures, availability, error rate, p95 latency against the control cohort, shadow agreement.

Each gate is a pure function from telemetry totals (`Totals`) and thresholds to a `GateResult` that
carries the numbers it judged. A gate with too little data records `no_data`, which does not fail the wave
(the record shows it; `min_requests` sets how much is enough).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from fleet.histogram import Histogram, merge_all
from hub.rollouts.model import GateResult, GateSpec, WavePhase

Phase = Literal["shadow", "activation"]

# The wave phase each gate is evaluated in, by gate name and the part of the wave it judged (`GateResult.phase`):
# activation and availability when the phase's devices have updated, the others once its bake is over.
JUDGED_IN: dict[tuple[str, Phase], WavePhase] = {
    ("activation", "shadow"): WavePhase.SHADOW_LOADING,
    ("availability", "shadow"): WavePhase.SHADOW_LOADING,
    ("shadow_agreement", "shadow"): WavePhase.SHADOW_BAKING,
    ("activation", "activation"): WavePhase.ACTIVATING,
    ("availability", "activation"): WavePhase.ACTIVATING,
    ("error_rate", "activation"): WavePhase.BAKING,
    ("p95_latency", "activation"): WavePhase.BAKING,
}


@dataclass(frozen=True)
class Totals:
    """Telemetry of some devices over a time range, summed per model version and shadow candidate."""

    model_version: str | None
    requests: int
    errors: int
    latency: Histogram
    devices: int = 1
    shadow_version: str | None = None
    shadow_samples: int = 0
    shadow_agreements: int = 0
    shadow_delta_ms_sum: float = 0.0
    shadow_incomparable: int = 0
    shadow_timed_samples: int = 0  # samples of windows that carry a latency difference (cluster-mode pods do not)


class TelemetryView(Protocol):
    """Read access to telemetry (the engine implements it over the hub store)."""

    def totals(self, device_ids: Sequence[str], since: float, until: float) -> list[Totals]:
        """Windows of these devices that start in [since, until), summed per (model version, shadow candidate)."""


def _p95(groups: Iterable[Totals]) -> tuple[float | None, int]:
    h = merge_all(g.latency for g in groups)
    return h.quantile(0.95), h.count


def activation_gate(
    phase: Phase,
    failed: Sequence[str],
    *,
    ready: int,
    total: int,
    spec: GateSpec,
    now: float,
    errors: Mapping[str, str] | None = None,
) -> GateResult:
    """Fail when more devices failed to activate (or load the shadow) than allowed.

    Args:
        errors: device -> the error it reports (`code: message`, `cohort.device_error`), named in the detail.
    """
    ok = len(failed) <= spec.max_activation_failures
    why = {d: errors[d] for d in failed if errors and d in errors}
    detail = f"{len(failed)} of {total} device(s) failed to {'load the shadow' if phase == 'shadow' else 'activate'}"
    if why:
        named = [f"{d}: {e}" for d, e in list(why.items())[:3]]
        detail += " (" + "; ".join(named) + (f"; {len(why) - 3} more" if len(why) > 3 else "") + ")"
    measured: dict[str, object] = {"failed": len(failed), "ready": ready, "devices": total,
                                   "failed_devices": list(failed)[:20]}  # fmt: skip
    if why:
        measured["errors"] = dict(list(why.items())[:20])
    return GateResult(
        name="activation", phase=phase, status="pass" if ok else "fail", value=float(len(failed)),
        threshold=float(spec.max_activation_failures), measured=measured, detail=detail, at=now,
    )  # fmt: skip


def availability_gate(
    phase: Phase, *, ready: int, offline: Sequence[str], total: int, now: float, proven: bool = False
) -> GateResult:
    """Fail when no device of the wave got ready before the offline timeout (nothing to judge), unless an earlier
    wave of the rollout was judged on ready devices (`proven`) and every device of this one is offline: waves are
    formed online devices first, so the last ones may hold only devices that were offline at the start; they
    take the candidate when they come back, and there is nothing left to judge that earlier waves did not."""
    ok = ready > 0 or (proven and len(offline) == total > 0)
    detail = f"{ready} of {total} device(s) ready; {len(offline)} offline set aside"
    if ready == 0 and ok:
        detail += " (the candidate passed earlier waves)"
    return GateResult(
        name="availability", phase=phase, status="pass" if ok else "fail", value=float(ready), threshold=1.0,
        measured={"ready": ready, "offline": len(offline), "devices": total, "offline_devices": list(offline)[:20]},
        detail=detail, at=now,
    )  # fmt: skip


def error_rate_gate(
    wave: Sequence[Totals], candidate: str, spec: GateSpec, *, since: float, until: float, now: float
) -> GateResult | None:
    """Errors / requests of the wave's devices while they ran the candidate."""
    if spec.max_error_rate is None:
        return None
    mine = [w for w in wave if w.model_version == candidate]
    requests = sum(w.requests for w in mine)
    errors = sum(w.errors for w in mine)
    base = {"requests": requests, "errors": errors, "devices": sum(w.devices for w in mine)}
    if requests < spec.min_requests:
        return GateResult(
            name="error_rate", phase="activation", status="no_data", threshold=spec.max_error_rate, measured=base,
            detail=f"only {requests} request(s) on the candidate (need {spec.min_requests})",
            since=since, until=until, at=now,
        )  # fmt: skip
    rate = errors / requests
    ok = rate <= spec.max_error_rate
    return GateResult(
        name="error_rate", phase="activation", status="pass" if ok else "fail", value=rate,
        threshold=spec.max_error_rate, measured=base,
        detail=f"error rate {rate:.4f} {'<=' if ok else '>'} {spec.max_error_rate}", since=since, until=until, at=now,
    )  # fmt: skip


def p95_gate(
    wave: Sequence[Totals],
    control: Sequence[Totals],
    baseline: Sequence[Totals],
    candidate: str,
    spec: GateSpec,
    *,
    since: float,
    until: float,
    now: float,
) -> GateResult | None:
    """p95 of the wave on the candidate against the control cohort (devices still on the old version).

    The control is measured over the same window. When it has too little data (the last wave leaves no
    device on the old version), the baseline is the wave's own devices on the old version over an equally
    long window just before the wave started.
    """
    limit = spec.max_p95_regression
    if limit is None:
        return None
    wave_p95, wave_n = _p95(w for w in wave if w.model_version == candidate)
    ctl = [w for w in control if w.model_version is not None and w.model_version != candidate]
    ref_p95, ref_n = _p95(ctl)
    source = "control"
    if ref_n < spec.min_requests:
        ref_p95, ref_n = _p95(w for w in baseline if w.model_version is not None and w.model_version != candidate)
        source = "baseline"
    measured = {
        "wave_p95_ms": wave_p95, "wave_requests": wave_n, "control_p95_ms": ref_p95, "control_requests": ref_n,
        "control_source": source, "control_devices": sum(w.devices for w in ctl),
    }  # fmt: skip
    if wave_n < spec.min_requests or ref_n < spec.min_requests or not wave_p95 or not ref_p95:
        return GateResult(
            name="p95_latency", phase="activation", status="no_data", threshold=limit, measured=measured,
            detail=f"not enough requests to compare (wave {wave_n}, {source} {ref_n}; need {spec.min_requests})",
            since=since, until=until, at=now,
        )  # fmt: skip
    regression = (wave_p95 - ref_p95) / ref_p95
    ok = regression <= limit
    return GateResult(
        name="p95_latency", phase="activation", status="pass" if ok else "fail", value=regression, threshold=limit,
        measured=measured,
        detail=f"p95 {wave_p95:.2f} ms vs {source} {ref_p95:.2f} ms: {regression:+.1%} "
        f"({'within' if ok else 'over'} {limit:.0%})",
        since=since, until=until, at=now,
    )  # fmt: skip


def shadow_gate(
    wave: Sequence[Totals], candidate: str, spec: GateSpec, *, since: float, until: float, now: float
) -> GateResult:
    """Agreements / comparable samples of the candidate running as a shadow beside the current model.

    Samples the candidate could not take (incomparable: tensor shapes it does not accept) are reported
    apart and never count; the gate judges only with at least `min_requests` comparable samples.
    """
    mine = [w for w in wave if w.shadow_version == candidate]
    samples = sum(w.shadow_samples for w in mine)
    agreements = sum(w.shadow_agreements for w in mine)
    incomparable = sum(w.shadow_incomparable for w in mine)
    timed = sum(w.shadow_timed_samples for w in mine)  # windows without a latency difference do not dilute it
    delta = sum(w.shadow_delta_ms_sum for w in mine) / timed if timed else None
    measured = {"samples": samples, "agreements": agreements, "incomparable": incomparable,
                "devices": sum(w.devices for w in mine), "mean_latency_delta_ms": delta}  # fmt: skip
    if samples < spec.min_requests:
        apart = f"; {incomparable} more the candidate could not take (incomparable)" if incomparable else ""
        return GateResult(
            name="shadow_agreement", phase="shadow", status="no_data", threshold=spec.min_agreement,
            measured=measured, detail=f"only {samples} comparable shadow sample(s) (need {spec.min_requests}){apart}",
            since=since, until=until, at=now,
        )  # fmt: skip
    rate = agreements / samples
    ok = rate >= spec.min_agreement
    return GateResult(
        name="shadow_agreement", phase="shadow", status="pass" if ok else "fail", value=rate,
        threshold=spec.min_agreement, measured=measured,
        detail=f"agreement {rate:.4f} {'>=' if ok else '<'} {spec.min_agreement} over {samples} sample(s)"
        + (f" ({incomparable} incomparable, not counted)" if incomparable else ""),
        since=since, until=until, at=now,
    )  # fmt: skip
