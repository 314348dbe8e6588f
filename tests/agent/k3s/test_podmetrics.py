"""A serving pod's /metrics into a model's window: real expositions of the API's own metrics, and hostile ones."""

from __future__ import annotations

import math
import time

import pytest

from agent.api.metrics import ApiMetrics
from agent.k3s.podmetrics import BadMetrics, Pod, PodCounters, WindowBook, read_counters, serving_window
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


def test_counts_requests_server_errors_and_latency_of_one_model_as_the_slot_does() -> None:
    seen = [(M, "1.0.0", 200, 0.0031), (M, "1.0.0", 400, 0.0002), (M, "2.0.0", 503, 0.2), (M, "1.0.0", 500, 6.0)]
    seen += [("other", "1", 500, 0.001), ("unknown", "unknown", 404, 0.001)]
    _, text = exposition(seen)
    c = read_counters(text, M)
    recorder = LatencyRecorder()
    for model, _v, _c, seconds in seen:
        if model == M:
            recorder.observe(seconds * 1e3)
    assert (c.requests, c.errors) == (4, 2)  # every code and version; errors: >= 500, like ModelSlot.record
    window = serving_window(c.increase_since(None))
    assert window.latency == recorder.snapshot()
    assert math.isclose(window.latency.sum_ms, 6203.3)
    assert read_counters(text, "nothing-served") == PodCounters()


def test_a_new_process_is_counted_from_zero_and_nothing_twice() -> None:
    book = WindowBook()
    pod = Pod("p-1", "uid-1", "127.0.0.2", created=time.time())
    metrics, text = exposition([(M, "1", 200, 0.001)] * 3)
    total, answered = book.window(M, {pod: read_counters(text, M)})
    assert (total.requests, answered) == (3, 1)  # a pod created after the agent started: from zero
    for _ in range(2):
        metrics.observe(M, "1", "infer", 200, 0.001)
    total, _ = book.window(M, {pod: read_counters(metrics.render().decode(), M)})
    assert total.requests == 2
    # the container restarts: a new process with more requests than the old one had (not lower, but newer)
    time.sleep(0.01)  # the new series' creation times differ from the old ones'
    _, text = exposition([(M, "1", 200, 0.001)] * 7)
    total, _ = book.window(M, {pod: read_counters(text, M)})
    assert total.requests == 7
    # a restart without creation times (PROMETHEUS_DISABLE_CREATED_SERIES): a lower counter tells it
    lines = "\n".join(x for x in text.splitlines() if "_created" not in x)
    book.window(M, {pod: read_counters(lines, M)})
    _, fewer = exposition([(M, "1", 200, 0.001)] * 2)
    fewer = "\n".join(x for x in fewer.splitlines() if "_created" not in x)
    assert book.window(M, {pod: read_counters(fewer, M)})[0].requests == 2


def test_pods_older_than_the_agent_are_a_baseline_gone_pods_are_forgotten_silent_pods_catch_up() -> None:
    book = WindowBook()
    old = Pod("p-old", "uid-old", "127.0.0.2", created=book.started - 3600)
    undated = Pod("p-undated", "uid-u", "127.0.0.3", created=None)
    metrics, text = exposition([(M, "1", 200, 0.001)] * 5)
    total, _ = book.window(M, {old: read_counters(text, M), undated: read_counters(text, M)})
    assert total.requests == 0  # counted by the agent process before this one
    metrics.observe(M, "1", "infer", 200, 0.001)
    total, answered = book.window(M, {old: None, undated: read_counters(metrics.render().decode(), M)})
    assert (total.requests, answered) == (1, 1)
    for _ in range(4):
        metrics.observe(M, "1", "infer", 500, 0.001)
    total, _ = book.window(M, {old: read_counters(metrics.render().decode(), M)})  # `undated` is gone
    assert (total.requests, total.errors) == (5, 4)  # old's answer covers the window it missed
    assert set(book.last) == {(M, "uid-old")}
    book.forget_models_but(["another-model"])  # M is no longer active here
    assert book.last == {}


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
