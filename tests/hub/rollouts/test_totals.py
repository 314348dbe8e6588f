"""`Store.telemetry_totals`: raw windows of a device set over a time range, summed in SQLite; the shadow gate."""

from __future__ import annotations

from fleet.codec import encode
from fleet.histogram import Histogram, LatencyRecorder
from fleet.messages import ShadowStats, TelemetryWindow
from hub.rollouts.gates import Totals, shadow_gate
from hub.rollouts.model import GateResult, GateSpec
from hub.store import Database, Device, open_store
from tests.support.wire import one_model_window

RECEIVED = 1000.0  # after every window ended (windows ahead of the hub's clock are refused)


def _window(device: str, seq: int, start: float, version: str, *, shadow: ShadowStats | None = None) -> TelemetryWindow:
    rec = LatencyRecorder()
    for ms in (1, 2, 3, 40):
        rec.observe(ms)
    return one_model_window(
        device_id=device, seq=seq, start=start, end=start + 10, model="m", model_version=version, requests=4,
        errors=1, latency=rec.snapshot(), shadow=shadow,
    )  # fmt: skip


def test_totals_sum_per_version_and_shadow_over_the_device_set_and_range(database: Database) -> None:
    store = open_store(database)
    try:
        for d in ("a", "b", "c"):
            store.add_device(Device(id=d, labels={}, password_hash="x", enrolled_at=0, enrolled_by="t"))
        sh = ShadowStats(candidate_version="2.0.0", samples=10, agreements=7, incomparable=3, latency_delta_ms=1.5)
        untimed = sh.model_copy(update={"latency_delta_ms": None})  # a cluster-mode device's pods do not time it
        for seq, start in enumerate((100.0, 110.0, 120.0, 500.0)):
            shadow = untimed if start == 120.0 else sh
            store.submit_telemetry("a", encode(_window("a", seq, start, "1.0.0", shadow=shadow)), RECEIVED)
            store.submit_telemetry("b", encode(_window("b", seq, start, "2.0.0")), RECEIVED)
            store.submit_telemetry("c", encode(_window("c", seq, start, "1.0.0")), RECEIVED)
        store.flush()
        got = store.telemetry_totals(["a", "b", "zzz"], since=105, until=125)
        by = {(t.model_version, t.shadow_version): t for t in got}
        assert set(by) == {("1.0.0", "2.0.0"), ("2.0.0", None)}
        a = by[("1.0.0", "2.0.0")]
        # windows starting at 110 and 120 start in [105, 125); the one at 100 started before, 500 after
        assert (a.devices, a.windows, a.requests, a.errors) == (1, 2, 8, 2)
        assert (a.shadow_samples, a.shadow_agreements, a.shadow_delta_ms_sum) == (20, 14, 15.0)
        assert (a.shadow_incomparable, a.shadow_timed_samples) == (6, 10)
        assert sum(a.latency_counts) == 8 and a.latency_sum_ms == 2 * 46
        b = by[("2.0.0", None)]
        assert (b.devices, b.windows, b.shadow_samples) == (1, 2, 0)
        both = store.telemetry_totals(["a", "c"], since=0, until=1000)
        assert [(t.model_version, t.shadow_version, t.devices) for t in both] == [
            ("1.0.0", None, 1), ("1.0.0", "2.0.0", 1)
        ]  # fmt: skip
        assert store.telemetry_totals([], since=0, until=1000) == []
        assert store.telemetry_totals(["a"], since=1000, until=2000) == []
        # hostile ids are data, not SQL
        assert store.telemetry_totals(["a') OR 1=1 --", '"]'], since=0, until=1000) == []
    finally:
        store.close()


def test_the_shadow_gate_judges_comparable_samples_only_and_says_when_it_has_too_few() -> None:
    spec = GateSpec(min_agreement=0.9, min_requests=20)

    def gate(samples: int, agreements: int, incomparable: int) -> GateResult:
        t = Totals("1.0.0", 100, 0, Histogram(), shadow_version="2.0.0", shadow_samples=samples,
                   shadow_agreements=agreements, shadow_incomparable=incomparable)  # fmt: skip
        return shadow_gate([t], "2.0.0", spec, since=0, until=1, now=1)

    few = gate(5, 5, 400)  # plenty sampled, but the candidate could take only 5 of them
    assert few.status == "no_data" and few.measured["incomparable"] == 400
    assert (
        few.detail
        == "only 5 comparable shadow sample(s) (need 20); 400 more the candidate could not take (incomparable)"
    )
    judged = gate(30, 27, 10)
    assert judged.status == "pass" and judged.value == 0.9 and "10 incomparable, not counted" in judged.detail
    assert gate(30, 26, 0).status == "fail"


def test_the_mean_latency_difference_is_over_the_samples_that_were_timed() -> None:
    spec = GateSpec(min_agreement=0.9, min_requests=20)
    timed = Totals("1.0.0", 100, 0, Histogram(), shadow_version="2.0.0", shadow_samples=30, shadow_agreements=30,
                   shadow_delta_ms_sum=60.0, shadow_timed_samples=30)  # fmt: skip
    untimed = Totals("1.0.0", 100, 0, Histogram(), shadow_version="2.0.0", shadow_samples=90, shadow_agreements=90)
    assert shadow_gate([timed, untimed], "2.0.0", spec, since=0, until=1, now=1).measured["mean_latency_delta_ms"] == 2
    assert shadow_gate([untimed], "2.0.0", spec, since=0, until=1, now=1).measured["mean_latency_delta_ms"] is None
