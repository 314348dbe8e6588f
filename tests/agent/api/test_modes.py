"""One serving core: headless serving swaps, retires, counts and shadows exactly as the HTTP API does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from agent.headless import HeadlessServing
from agent.serving import ModelSlot, NotReady
from fleet.messages import ShadowStats
from models.descriptor import ModelDescriptor
from models.engine import Engine
from models.errors import InvalidInput
from models.preprocess import preprocess
from tests.agent.api.conftest import OPTIONS, Sample, jpeg

IMAGES = 6


@pytest.fixture
def headless() -> Iterator[HeadlessServing]:
    serving = HeadlessServing(seed=0)
    yield serving
    serving.close()


def _low_threshold(sample: Sample) -> ModelDescriptor:
    d = sample.descriptor
    return d.model_copy(update={"output": d.output.model_copy(update={"score_threshold": 0.05})})


def _shadowing(slot: ModelSlot, samples: dict[str, Sample], candidate: str) -> ModelDescriptor:
    """The sample detector active, `candidate` as a shadow on every request (both at a 0.05 threshold)."""
    active = samples["det"]
    low = _low_threshold(active)
    slot.activate(Engine.load(active.path, low, OPTIONS), active.applied(), low)
    cand = _low_threshold(samples[candidate])
    assert cand.sha256 is not None
    slot.set_shadow(Engine.load(samples[candidate].path, cand, OPTIONS), samples[candidate].applied(), 1.0)
    return low


def _collect(slot: ModelSlot, want: int) -> ShadowStats:
    """Sum shadow windows until `want` rows were compared or found incomparable (comparisons run later)."""
    samples = agreements = incomparable = 0
    deadline = time.monotonic() + 30
    while samples + incomparable < want and time.monotonic() < deadline:
        w = slot.take_window().shadow
        assert w is not None
        samples, agreements, incomparable = (
            samples + w.samples,
            agreements + w.agreements,
            incomparable + w.incomparable,
        )
        time.sleep(0.01)
    return ShadowStats(candidate_version="1.1.0", samples=samples, agreements=agreements, incomparable=incomparable)


@pytest.mark.parametrize(("candidate", "agree"), [("det", True), ("det-perm", False)])
def test_both_modes_count_detection_agreement_by_boxes(
    samples: dict[str, Sample], make_server: Any, headless: HeadlessServing, candidate: str, agree: bool
) -> None:
    """The same photos through the API's image endpoint and headless tensors give the same agreement."""
    server, slot = make_server()
    for s in (slot, headless):
        low = _shadowing(s, samples, candidate)
    photos = [jpeg(320, 240, seed=i) for i in range(IMAGES)]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for photo in photos:
            assert c.post("/v1/models/tiny-detector:predict", content=photo).status_code == 200
    for photo in photos:
        tensor, _ = preprocess(photo, low.input)
        headless.infer({"images": tensor})
    over_http, in_process = _collect(slot, IMAGES), _collect(headless, IMAGES)
    assert over_http == in_process
    assert over_http.samples == IMAGES and over_http.agreements == (IMAGES if agree else 0)


def test_headless_swap_finishes_requests_on_the_old_engine_then_closes_it(
    samples: dict[str, Sample], headless: HeadlessServing
) -> None:
    v1, v2 = samples["clf"], samples["clf2"]
    e1, e2 = v1.engine(), v2.engine()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = {"1.0.0": e1.infer({"image": x})["logits"], "2.0.0": e2.infer({"image": x})["logits"]}
    headless.activate(e1, v1.applied(), v1.descriptor)
    stop = threading.Event()
    seen: list[list[str]] = [[] for _ in range(4)]

    def client(mine: list[str]) -> None:
        while not stop.is_set():
            out = headless.infer({"image": x})["logits"]
            mine.append(next(v for v, y in want.items() if np.allclose(out, y, atol=1e-5)))

    pool = ThreadPoolExecutor(4)
    with headless._run_lock:  # the engine is busy: four requests are in flight on 1.0.0
        futures = [pool.submit(client, mine) for mine in seen]
        deadline = time.monotonic() + 10
        while headless.current is None or headless.current.inflight < 4:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        headless.activate(e2, v2.applied(), v2.descriptor)
        assert headless.active_model == v2.applied() and not e1._closed  # swapped; the old one still busy
    deadline = time.monotonic() + 10
    while not all(mine and mine[-1] == "2.0.0" for mine in seen):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    stop.set()
    for f in futures:
        f.result(timeout=30)  # nobody failed
    pool.shutdown()
    assert all(mine[0] == "1.0.0" and set(mine) == {"1.0.0", "2.0.0"} for mine in seen)
    assert all(mine.index("2.0.0") == 1 and "1.0.0" not in mine[1:] for mine in seen)
    while not e1._closed:  # the old engine closes once its last request has finished
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert not e2._closed
    window = headless.take_window()
    assert window.requests == sum(map(len, seen)) and window.errors == 0


def test_headless_counts_client_mistakes_as_requests_not_server_errors(
    samples: dict[str, Sample], headless: HeadlessServing
) -> None:
    with pytest.raises(NotReady):
        headless.infer({"image": np.zeros((1, 3, 8, 8), np.float32)})
    headless.activate(samples["clf"].engine(), samples["clf"].applied(), samples["clf"].descriptor)
    with pytest.raises(InvalidInput):
        headless.infer({"image": np.zeros((1, 3), np.float32)})
    assert headless.infer({"image": np.zeros((1, 3, 8, 8), np.float32)})["logits"].shape == (1, 100)
    window = headless.take_window()
    assert (window.requests, window.errors) == (3, 1)  # not ready is a 503, a bad shape a 400
