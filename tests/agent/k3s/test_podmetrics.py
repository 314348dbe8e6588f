"""A serving pod's /metrics into a model's window: real expositions of the API's own metrics, and hostile ones."""

from __future__ import annotations

import math
import time

import pytest

from agent.api.metrics import UNKNOWN, ApiMetrics
from agent.k3s.podmetrics import (
    MAX_VERSIONS,
    UNKNOWN_VERSION,
    BadMetrics,
    Pod,
    PodCounters,
    PodScrape,
    ShadowCounts,
    WindowBook,
    read_counters,
    serving_window,
)
from agent.serving import ModelRepository
from fleet.histogram import LATENCY_BOUNDS_MS, N_BUCKETS, LatencyRecorder
from fleet.limits import MAX_COUNT

M = "resnet"


def exposition(requests: list[tuple[str, str, int, float]]) -> tuple[ApiMetrics, str]:
    """The API's own metrics after `requests` (model, version, code, seconds), and their text."""
    metrics = ApiMetrics(ModelRepository())
    for model, version, code, seconds in requests:
        metrics.observe(model, version, "infer", code, seconds)
    return metrics, metrics.render().decode()


def test_counts_requests_server_errors_and_latency_of_one_model_per_version_as_the_slot_does() -> None:
    seen = [(M, "1.0.0", 200, 0.0031), (M, "1.0.0", 400, 0.0002), (M, "2.0.0", 503, 0.2), (M, "1.0.0", 500, 6.0)]
    seen += [(M, UNKNOWN, 503, 0.0001), ("other", "1", 500, 0.001), (UNKNOWN, UNKNOWN, 404, 0.001)]
    _, text = exposition(seen)
    scrape = read_counters(text, M)
    assert set(scrape.versions) == {"1.0.0", "2.0.0", UNKNOWN}
    v1 = scrape.versions["1.0.0"]
    assert (v1.requests, v1.errors) == (3, 1)  # every code; errors: >= 500, like ModelSlot.record
    # the window of 1.0.0: its requests and those of the model that reached no version (as the slot counts them)
    tally = WindowBook().window(M, "1.0.0", {Pod("p", "uid", "127.0.0.2", created=time.time()): scrape})
    recorder = LatencyRecorder()
    for model, version, _c, seconds in seen:
        if model == M and version in ("1.0.0", UNKNOWN):
            recorder.observe(seconds * 1e3)
    assert (tally.total.requests, tally.total.errors, tally.other_versions) == (4, 2, 1)
    window = serving_window(tally.total)
    assert window.latency == recorder.snapshot()
    assert math.isclose(window.latency.sum_ms, 6003.4)  # 2.0.0's 200 ms left out
    assert read_counters(text, "nothing-served") == PodScrape()
    assert UNKNOWN_VERSION == UNKNOWN  # the serving side's label, not imported (the control side has no API)


def test_gauges_of_loaded_versions_open_no_version_of_their_own() -> None:
    """In-progress, provider and batch-size series carry `version` too (a loaded version that served nothing
    yet has them): they are not counters, so they neither show as a version nor count towards MAX_VERSIONS."""
    _, text = exposition([(M, "1.0.0", 200, 0.001)])
    for v in range(MAX_VERSIONS + 1):
        text += f'edgefleet_api_in_progress{{model="{M}",version="{v}.0.0",role="active"}} 0\n'
        text += f'edgefleet_api_active_provider{{model="{M}",version="{v}.0.0",role="active",provider="CPU"}} 1\n'
    scrape = read_counters(text, M)
    assert set(scrape.versions) == {"1.0.0"} and scrape.versions["1.0.0"].requests == 1


def test_a_window_counts_the_active_version_only_across_a_swap_and_a_rollback() -> None:
    """The control agent moves the pointer first; a pod swaps later (or never, if it cannot load the version)."""
    book = WindowBook()
    pod = Pod("p-1", "uid-1", "127.0.0.2", created=time.time())
    metrics, text = exposition([(M, "1.0.0", 200, 0.001)] * 5 + [(M, UNKNOWN, 503, 0.001)])
    tally = book.window(M, "1.0.0", {pod: read_counters(text, M)})
    assert (tally.total.requests, tally.total.errors, tally.other_versions) == (6, 1, 0)
    # 2.0.0 is active, the pod still serves 1.0.0: none of it is 2.0.0's
    for _ in range(3):
        metrics.observe(M, "1.0.0", "infer", 200, 0.001)
    metrics.observe(M, UNKNOWN, "infer", 503, 0.001)
    tally = book.window(M, "2.0.0", {pod: read_counters(metrics.render().decode(), M)})
    assert (tally.total.requests, tally.total.errors, tally.other_versions) == (1, 1, 3)
    # the pod swapped: 2.0.0's first series count whole, `unknown` only its increase
    for _ in range(4):
        metrics.observe(M, "2.0.0", "infer", 500, 0.001)
    metrics.observe(M, "1.0.0", "infer", 200, 0.001)  # one in flight on the old engine
    tally = book.window(M, "2.0.0", {pod: read_counters(metrics.render().decode(), M)})
    assert (tally.total.requests, tally.total.errors, tally.other_versions) == (4, 4, 1)
    # rolled back to 1.0.0: its counters go on from where they were, not from zero
    for _ in range(2):
        metrics.observe(M, "1.0.0", "infer", 200, 0.001)
    tally = book.window(M, "1.0.0", {pod: read_counters(metrics.render().decode(), M)})
    assert (tally.total.requests, tally.total.errors, tally.other_versions) == (2, 0, 0)


def test_a_new_process_is_counted_from_zero_and_nothing_twice() -> None:
    book = WindowBook()
    pod = Pod("p-1", "uid-1", "127.0.0.2", created=time.time())
    metrics, text = exposition([(M, "1", 200, 0.001)] * 3)
    tally = book.window(M, "1", {pod: read_counters(text, M)})
    assert (tally.total.requests, tally.answered) == (3, 1)  # a pod created after the agent started: from zero
    for _ in range(2):
        metrics.observe(M, "1", "infer", 200, 0.001)
    assert book.window(M, "1", {pod: read_counters(metrics.render().decode(), M)}).total.requests == 2
    # the container restarts: a new process with more requests than the old one had (not lower, but newer)
    time.sleep(0.01)  # the new series' creation times differ from the old ones'
    _, text = exposition([(M, "1", 200, 0.001)] * 7)
    assert book.window(M, "1", {pod: read_counters(text, M)}).total.requests == 7
    # a restart without creation times (PROMETHEUS_DISABLE_CREATED_SERIES): a lower counter tells it
    lines = "\n".join(x for x in text.splitlines() if "_created" not in x)
    book.window(M, "1", {pod: read_counters(lines, M)})
    _, fewer = exposition([(M, "1", 200, 0.001)] * 2)
    fewer = "\n".join(x for x in fewer.splitlines() if "_created" not in x)
    assert book.window(M, "1", {pod: read_counters(fewer, M)}).total.requests == 2


_BEFORE = PodCounters(requests=10, errors=2, buckets=(4, 8, *(10,) * (N_BUCKETS - 2)), sum_ms=50.0)


@pytest.mark.parametrize(
    "lower",
    [
        {"requests": 9},
        {"errors": 1},
        {"sum_ms": 49.0},
        {"buckets": (3, 8, *(10,) * (N_BUCKETS - 2))},
        {"buckets": (4, 8, *(10,) * (N_BUCKETS - 3), 9)},
    ],
)
def test_any_one_total_lower_counts_the_pod_from_zero_as_for_the_shadow_counts(lower: dict[str, object]) -> None:
    """One rule for both: a single total lower than before (no creation times to tell) is a new process."""
    higher = PodCounters(requests=11, errors=3, buckets=(5, 9, *(11,) * (N_BUCKETS - 2)), sum_ms=51.0)
    restarted = PodCounters(**{**higher.__dict__, **lower})
    assert restarted.increase_since(_BEFORE) == restarted
    assert higher.increase_since(_BEFORE) == PodCounters(1, 1, (1,) * N_BUCKETS, 1.0)
    assert ShadowCounts(5, 4, 0).increase_since(ShadowCounts(5, 5, 0)) == ShadowCounts(5, 4, 0)
    assert ShadowCounts(6, 5, 1).increase_since(ShadowCounts(5, 5, 0)) == ShadowCounts(1, 0, 1)


def test_pods_older_than_the_agent_are_a_baseline_gone_pods_are_forgotten_silent_pods_catch_up() -> None:
    book = WindowBook()
    old = Pod("p-old", "uid-old", "127.0.0.2", created=book.started - 3600)
    undated = Pod("p-undated", "uid-u", "127.0.0.3", created=None)
    metrics, text = exposition([(M, "1", 200, 0.001)] * 5)
    tally = book.window(M, "1", {old: read_counters(text, M), undated: read_counters(text, M)})
    assert tally.total.requests == 0  # counted by the agent process before this one
    metrics.observe(M, "1", "infer", 200, 0.001)
    tally = book.window(M, "1", {old: None, undated: read_counters(metrics.render().decode(), M)})
    assert (tally.total.requests, tally.answered) == (1, 1)
    for _ in range(4):
        metrics.observe(M, "1", "infer", 500, 0.001)
    tally = book.window(M, "1", {old: read_counters(metrics.render().decode(), M)})  # `undated` is gone
    assert (tally.total.requests, tally.total.errors) == (5, 4)  # old's answer covers the window it missed
    assert set(book.last) == {(M, "uid-old")}
    book.forget_models_but(["another-model"])  # M is no longer active here
    assert book.last == {}


def shadow_lines(model: str, candidate: str, samples: float, agreements: float, incomparable: float = 0) -> str:
    """The shadow gauges a pod exports for its candidate (agent.api.metrics)."""
    labels = f'model="{model}",version="{candidate}"'
    return (
        f"edgefleet_api_shadow_samples{{{labels}}} {samples}\n"
        f"edgefleet_api_shadow_agreements{{{labels}}} {agreements}\n"
        f"edgefleet_api_shadow_incomparable{{{labels}}} {incomparable}\n"
    )


def test_the_shadow_candidates_comparisons_are_counted_as_increases_per_candidate() -> None:
    book = WindowBook()
    pod = Pod("p-1", "uid-1", "127.0.0.2", created=time.time())
    old = Pod("p-0", "uid-0", "127.0.0.3", created=book.started - 3600)
    _, served = exposition([(M, "1.0.0", 200, 0.001)] * 4)
    text = served + shadow_lines(M, "2.0.0", 4, 3) + shadow_lines("other", "2.0.0", 50, 50)
    scrape = read_counters(text, M)
    assert scrape.shadow == {"2.0.0": ShadowCounts(4, 3, 0)}
    tally = book.window(
        M, "1.0.0", {pod: scrape, old: read_counters(served + shadow_lines(M, "2.0.0", 9, 9), M)}, "2.0.0"
    )
    assert tally.shadow == ShadowCounts(4, 3, 0)  # the old pod's totals are a baseline
    later = {pod: read_counters(served + shadow_lines(M, "2.0.0", 10, 8, 1), M),
             old: read_counters(served + shadow_lines(M, "2.0.0", 11, 10), M)}  # fmt: skip
    assert book.window(M, "1.0.0", later, "2.0.0").shadow == ShadowCounts(6 + 2, 5 + 1, 1)
    # the candidate started again in a pod (lower totals): counted from zero
    again = {pod: read_counters(served + shadow_lines(M, "2.0.0", 2, 2), M), old: None}
    assert book.window(M, "1.0.0", again, "2.0.0").shadow == ShadowCounts(2, 2, 0)
    # another candidate's series are not this one's; without a shadow running nothing is reported
    assert (
        book.window(M, "1.0.0", {pod: read_counters(served + shadow_lines(M, "3.0.0", 7, 7), M)}, "2.0.0").shadow
        is None
    )
    assert book.window(M, "1.0.0", {pod: read_counters(served, M)}).shadow is None
    # a window says so with the candidate's name, agreements at most samples however hostile the pods
    window = serving_window(PodCounters(), ("2.0.0", ShadowCounts(MAX_COUNT * 2, MAX_COUNT * 3, 5)))
    assert window.shadow is not None and window.shadow.candidate_version == "2.0.0"
    assert (window.shadow.samples, window.shadow.agreements, window.shadow.incomparable) == (MAX_COUNT, MAX_COUNT, 5)
    assert window.shadow.latency_delta_ms is None  # pods do not export it
    assert serving_window(PodCounters()).shadow is None


HOSTILE = {
    "not the format": "this is { not prometheus",
    "NaN counter": f'edgefleet_api_requests_total{{model="{M}",code="200"}} NaN',
    "negative counter": f'edgefleet_api_requests_total{{model="{M}",code="200"}} -5',
    "infinite counter": f'edgefleet_api_requests_total{{model="{M}",code="200"}} +Inf',
    "huge counter": f'edgefleet_api_requests_total{{model="{M}",code="200"}} 1e300',
    "huge sum": f'edgefleet_api_requests_total{{model="{M}",code="200"}} 9e15\n'
    f'edgefleet_api_requests_total{{model="{M}",code="201"}} 9e15',
    "code not a status": f'edgefleet_api_requests_total{{model="{M}",code="abc"}} 1',
    "code out of range": f'edgefleet_api_requests_total{{model="{M}",code="999"}} 1',
    "unknown bucket": f'edgefleet_api_request_duration_seconds_bucket{{model="{M}",le="0.123"}} 1',
    "bucket not a number": f'edgefleet_api_request_duration_seconds_bucket{{model="{M}",le="x"}} 1',
    "missing buckets": f'edgefleet_api_request_duration_seconds_bucket{{model="{M}",le="+Inf"}} 1',
    "NaN created": f'edgefleet_api_requests_created{{model="{M}",code="200"}} NaN',
    "NaN shadow samples": shadow_lines(M, "2.0.0", math.nan, 0),
    "negative shadow agreements": shadow_lines(M, "2.0.0", 5, -1),
    "too many shadow versions": "".join(shadow_lines(M, f"{v}.0.0", 1, 1) for v in range(MAX_VERSIONS + 1)),
    "too many versions": "\n".join(
        f'edgefleet_api_requests_total{{model="{M}",version="{v}",code="200"}} 1' for v in range(MAX_VERSIONS + 1)
    ),
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_expositions_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(BadMetrics):
        read_counters(text + "\n", M)


def test_buckets_that_are_not_cumulative_are_refused() -> None:
    bucket = "edgefleet_api_request_duration_seconds_bucket"
    rows = [f'{bucket}{{model="{M}",le="{b / 1e3!r}"}} 5' for b in LATENCY_BOUNDS_MS]
    rows[3] = rows[3].replace("} 5", "} 1")
    rows.append(f'edgefleet_api_request_duration_seconds_bucket{{model="{M}",le="+Inf"}} 5')
    with pytest.raises(BadMetrics, match="not cumulative"):
        read_counters("\n".join(rows) + "\n", M)


def test_a_window_stays_valid_whatever_the_pods_claim() -> None:
    """Sums over many pods may pass what a window carries; errors above requests (impossible from our API)."""
    total = PodCounters(
        requests=MAX_COUNT * 3, errors=MAX_COUNT * 4, buckets=(MAX_COUNT * 3,) * N_BUCKETS, sum_ms=1e18, queue_depth=-1
    )
    window = serving_window(total)
    assert (window.requests, window.errors) == (MAX_COUNT, MAX_COUNT)
    assert window.latency.counts[0] == MAX_COUNT and window.latency.sum_ms == 1e15 and window.queue_depth == 0
    shrinking = PodCounters(requests=3, errors=0, buckets=(3, 1, *(3,) * (N_BUCKETS - 2)), sum_ms=-4.0)
    window = serving_window(shrinking)
    assert window.latency.counts[:3] == (3, 0, 0) and window.latency.sum_ms == 0.0
