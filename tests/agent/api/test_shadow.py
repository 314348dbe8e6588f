"""Shadow mode: a candidate runs beside the active model on sampled requests; answers come from the active one."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from agent.serving import ModelSlot, Served
from agent.serving.served import OneRunAtATime
from agent.serving.shadow import Shadow
from fleet.messages import AppliedModel, ShadowStats
from models.batcher import Batcher, BatcherOptions
from models.cli import write_model
from models.descriptor import ModelDescriptor
from models.engine import Engine
from tests.agent.api.conftest import OPTIONS, Sample, jpeg
from tests.support.models import colour_classifier, colour_photos

REQUESTS = 12


def _collect(slot: ModelSlot, want: int) -> ShadowStats:
    """Sum shadow windows until `want` samples were compared (comparisons finish off the response path)."""
    samples = agreements = incomparable = 0
    deltas: list[float] = []
    version = ""
    deadline = time.monotonic() + 30
    while samples + incomparable < want and time.monotonic() < deadline:
        window = slot.take_window()
        assert window.shadow is not None
        samples += window.shadow.samples
        agreements += window.shadow.agreements
        incomparable += window.shadow.incomparable
        version = window.shadow.candidate_version
        if window.shadow.latency_delta_ms is not None:
            deltas.append(window.shadow.latency_delta_ms)
        time.sleep(0.01)
    return ShadowStats(
        candidate_version=version,
        samples=samples,
        agreements=agreements,
        incomparable=incomparable,
        latency_delta_ms=float(np.mean(deltas)) if deltas else None,
    )


def _candidate(sample: Sample, version: str, **output: Any) -> tuple[Engine, AppliedModel]:
    d = sample.descriptor
    if output:
        d = d.model_copy(update={"output": d.output.model_copy(update=output)})
    engine = Engine.load(sample.path, d, OPTIONS)
    assert d.sha256 is not None
    return engine, AppliedModel(name=d.name, version=version, sha256=d.sha256)


@pytest.mark.parametrize(("candidate", "agree"), [("clf", True), ("clf-perm", False)])
def test_classification_shadow_reports_agreement(
    samples: dict[str, Sample], clf_engine: Engine, make_server: Any, candidate: str, agree: bool
) -> None:
    server, repo = make_server()
    active = samples["clf"]
    repo.activate(clf_engine, active.applied(), active.descriptor)
    slot = repo.only()
    engine, model = _candidate(samples[candidate], "1.1.0")
    slot.set_shadow(engine, model, 1.0)
    rng = np.random.default_rng(7)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for i in range(REQUESTS // 2):
            x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
            body = {
                "inputs": [{"name": "image", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]
            }
            r = c.post("/v2/models/mobilenet-like/infer", content=orjson.dumps(body))
            assert r.status_code == 200
            out = r.json()
            assert out["model_version"] == "1.0.0"
            got = np.asarray(out["outputs"][0]["data"], dtype=np.float32).reshape(2, 100)
            np.testing.assert_allclose(got, clf_engine.infer({"image": x})["logits"].astype(np.float64), rtol=1e-5)
            r = c.post("/v1/models/mobilenet-like:predict", content=jpeg(96, 64, seed=i))
            assert r.status_code == 200
            assert r.json()["model_version"] == "1.0.0"
    stats = _collect(slot, REQUESTS // 2 * 3)
    assert stats.candidate_version == "1.1.0"
    assert stats.samples == REQUESTS // 2 * 3  # two rows per tensor request, one per image
    assert stats.agreements == (stats.samples if agree else 0)
    assert stats.latency_delta_ms is not None
    metrics = httpx.get(server.url + "/metrics").text
    assert 'edgefleet_api_shadow_samples{model="mobilenet-like",version="1.1.0"}' in metrics
    for reason in ("queue_full", "timeout", "swapped"):  # every reason has a series, 0 until a drop
        assert f'edgefleet_api_shadow_dropped{{model="mobilenet-like",reason="{reason}",version="1.1.0"}}' in metrics
    assert 'role="shadow"' in metrics
    slot.set_shadow(None, None, 0)
    assert slot.take_window().shadow is None
    assert 'role="shadow"' not in httpx.get(server.url + "/metrics").text


@pytest.mark.parametrize(("candidate", "agree"), [("det", True), ("det-perm", False)])
def test_detection_shadow_matches_boxes_by_class_and_iou(
    samples: dict[str, Sample], make_server: Any, candidate: str, agree: bool
) -> None:
    server, repo = make_server()
    active = samples["det"]
    low = active.descriptor.model_copy(
        update={"output": active.descriptor.output.model_copy(update={"score_threshold": 0.05})}
    )
    det_engine = Engine.load(active.path, low, OPTIONS)
    repo.activate(det_engine, active.applied(), low)
    slot = repo.only()
    engine, model = _candidate(samples[candidate], "1.1.0", score_threshold=0.05)
    slot.set_shadow(engine, model, 1.0)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for i in range(REQUESTS):
            r = c.post("/v1/models/tiny-detector:predict", content=jpeg(320, 240, seed=i))
            assert r.status_code == 200
            body = r.json()
            assert body["model_version"] == "1.0.0"
            assert body["detections"], "the sample detector finds boxes at 0.05"
    stats = _collect(slot, REQUESTS)
    assert stats.samples == REQUESTS
    assert stats.agreements == (REQUESTS if agree else 0)


def test_shadow_failures_never_reach_the_response(
    samples: dict[str, Sample], clf_engine: Engine, make_server: Any
) -> None:
    server, repo = make_server()
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    slot = repo.only()
    engine, model = _candidate(samples["det"], "1.1.0")  # takes another input: every shadow run fails
    slot.set_shadow(engine, model, 1.0)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for i in range(4):
            assert c.post("/v1/models/mobilenet-like:predict", content=jpeg(64, 64, seed=i)).status_code == 200
    window = slot.take_window()  # requests are counted before their response is sent
    assert window.requests == 4
    assert window.errors == 0
    assert window.shadow is not None
    rest = _collect(slot, 4 - window.shadow.incomparable)  # comparisons finish off the response path
    assert window.shadow.samples == rest.samples == 0
    assert window.shadow.incomparable + rest.incomparable == 4  # a detector cannot answer as a classifier


async def _until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, "the batcher never reached the state the test needs"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("reason", ["queue_full", "timeout", "swapped"])
def test_a_sample_the_candidate_never_answers_is_counted_as_dropped_by_reason(
    samples: dict[str, Sample], clf_engine: Engine, reason: str
) -> None:
    """The candidate's engine is held busy (its queue filled, or too slow for the timeout) or its batcher is
    closed as in a swap: the sampled rows are dropped, counted by reason, and never compared."""
    clf = samples["clf"]
    candidate = Served(clf_engine, clf.applied(), clf.descriptor, BatcherOptions(max_batch=2, max_queue=1))
    shadow = Shadow(candidate, 1.0)
    feed = {"image": np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    outputs = clf_engine.infer(feed)
    engine_busy = threading.Lock()  # held by the test: the candidate's engine run cannot start

    async def main() -> None:
        batcher = candidate.batcher = Batcher(OneRunAtATime(clf_engine, engine_busy), candidate.options)
        await batcher.start()
        held: list[asyncio.Task[object]] = []
        busy = reason != "swapped"
        if busy:
            engine_busy.acquire()
        try:
            if reason == "queue_full":  # one request in the engine, one waiting: the queue (of 1) is full
                # (each a full batch of max_batch rows, so the worker never gathers the second into the first)
                held.append(asyncio.create_task(batcher.infer(feed)))
                await _until(lambda: ((s := batcher.stats()).requests, s.queue_depth) == (1, 0))
                held.append(asyncio.create_task(batcher.infer(feed)))
                await _until(lambda: batcher.stats().queue_depth == 1)
            elif reason == "swapped":  # the candidate's batcher closed under it, as when it is replaced
                await batcher.close()
            await shadow.tensors(clf.descriptor, feed, outputs, 1.0, timeout_s=0.2)
        finally:
            if busy:
                engine_busy.release()
            await asyncio.gather(*held)
            await batcher.close()

    asyncio.run(main())
    assert shadow.tally.total_dropped == {r: 2 if r == reason else 0 for r in ("queue_full", "timeout", "swapped")}
    stats = shadow.tally.take()  # two rows, neither compared
    assert (stats.samples, stats.agreements, stats.incomparable) == (0, 0, 0)


def test_reapplying_the_same_state_keeps_batchers_and_counters(
    samples: dict[str, Sample], clf_engine: Engine, make_server: Any
) -> None:
    server, repo = make_server()
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    slot = repo.only()
    engine, model = _candidate(samples["clf"], "1.1.0")
    slot.set_shadow(engine, model, 1.0)
    active, shadow = slot.current, slot.shadow_tally()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.post("/v1/models/mobilenet-like:predict", content=jpeg(64, 64)).status_code == 200
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    slot = repo.only()
    slot.set_shadow(engine, model, 0.5)
    assert slot.current is active
    assert slot.shadow_tally() is shadow
    assert _collect(slot, 1).samples == 1


def test_the_candidate_is_judged_on_its_own_preprocessing(tmp_path: Path, make_server: Any) -> None:
    """Versions with other input size, dtype, layout, channel order and normalisation: the share is true."""
    server, repo = make_server()
    (p1, y1), (p2, y2) = (
        write_model(*colour_classifier(v, size, raw_bgr=raw, red_bias=bias), tmp_path, v)
        for v, size, raw, bias in (("1.0.0", 32, False, 0.0), ("1.1.0", 48, True, 0.1))
    )
    d1, d2 = ModelDescriptor.load(y1), ModelDescriptor.load(y2)
    assert d1.sha256 is not None and d2.sha256 is not None
    repo.activate(Engine.load(p1, d1, OPTIONS), AppliedModel(name="colour", version="1.0.0", sha256=d1.sha256), d1)
    slot = repo.only()
    candidate = Engine.load(p2, d2, OPTIONS)
    slot.set_shadow(candidate, AppliedModel(name="colour", version="1.1.0", sha256=d2.sha256), 1.0)
    photos, agrees = colour_photos()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for photo in photos:
            r = c.post("/v1/models/colour:predict", content=photo, headers={"Content-Type": "image/png"})
            assert r.status_code == 200 and r.json()["model_version"] == "1.0.0"
        stats = _collect(slot, len(photos))
        assert (stats.samples, stats.agreements, stats.incomparable) == (len(photos), sum(agrees), 0)
        assert sum(agrees) == 6
        # tensors shaped for the active version (float32 [1, 3, 32, 32]) are not the candidate's input
        x = np.full((1, 3, 32, 32), 0.5, np.float32)
        body = {"inputs": [{"name": "image", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
        for _ in range(3):
            assert c.post("/v2/models/colour/infer", content=orjson.dumps(body)).status_code == 200
    deadline = time.monotonic() + 30
    incomparable = 0
    while incomparable < 3 and time.monotonic() < deadline:
        window = slot.take_window().shadow
        assert window is not None and window.samples == 0  # never counted as agreement or disagreement
        incomparable += window.incomparable
        time.sleep(0.01)
    assert incomparable == 3
    metrics = httpx.get(server.url + "/metrics").text
    assert 'edgefleet_api_shadow_incomparable{model="colour",version="1.1.0"} 3.0' in metrics


def _raw(d: ModelDescriptor) -> ModelDescriptor:
    """The same model described as kind: tensors (served undecoded)."""
    output = {"kind": "tensors", "outputs": [{"name": "logits", "rank": 2}]}
    return ModelDescriptor.from_json({**d.to_json(), "task": "tensors", "labels": [], "output": output})


@pytest.mark.parametrize(("candidate", "agree"), [("clf", True), ("clf-perm", False)])
def test_tensors_shadow_compares_raw_outputs(
    samples: dict[str, Sample], make_server: Any, candidate: str, agree: bool
) -> None:
    server, repo = make_server()
    active = samples["clf"]
    d = _raw(active.descriptor)
    repo.activate(Engine.load(active.path, d, OPTIONS), active.applied(), d)
    slot = repo.only()
    cd = _raw(samples[candidate].descriptor)
    assert cd.sha256 is not None
    slot.set_shadow(
        Engine.load(samples[candidate].path, cd, OPTIONS),
        AppliedModel(name=cd.name, version="1.1.0", sha256=cd.sha256),
        1.0,
    )
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for i in range(REQUESTS):
            r = c.post("/v1/models/mobilenet-like:predict", content=jpeg(96, 64, seed=i))
            assert r.status_code == 200, r.text
            assert r.json()["task"] == "tensors" and r.json()["model_version"] == "1.0.0"
    stats = _collect(slot, REQUESTS)
    assert stats.samples == REQUESTS and stats.incomparable == 0
    assert stats.agreements == (REQUESTS if agree else 0)
