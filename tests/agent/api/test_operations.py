"""Settings, metrics, timeouts, and the FastAPI routes behind the fast path."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from agent.api import ApiServer, ApiSettings, ModelRepository
from agent.api.app import create_app
from agent.api.metrics import FOLD_EVERY, ApiMetrics
from fleet.messages import RuntimeOptions
from infra.errors import SettingsError
from models.engine import Engine
from tests.agent.api.conftest import Sample, jpeg

NAME = "mobilenet-like"


def _infer_body(x: np.ndarray) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    )


def test_settings_from_env() -> None:
    s = ApiSettings.from_env(
        {"EDGEFLEET_API_PORT": "0", "EDGEFLEET_API_MAX_BODY_BYTES": "2048", "OTHER": "x"}, host="::1"
    )
    assert (s.port, s.max_body_bytes, s.host) == (0, 2048, "::1")
    with pytest.raises(SettingsError, match="EDGEFLEET_API_PROT is not a setting; did you mean EDGEFLEET_API_PORT"):
        ApiSettings.from_env({"EDGEFLEET_API_PROT": "1"})
    with pytest.raises(SettingsError, match="EDGEFLEET_API_PORT"):
        ApiSettings.from_env({"EDGEFLEET_API_PORT": "eighty"})
    with pytest.raises(SettingsError, match="MAX_BODY_BYTES"):
        ApiSettings.from_env({}, max_body_bytes=1)


def test_metrics_count_every_request_answered_before_a_scrape() -> None:
    """Requests are counted in batches; a scrape counts all of them, whether a batch was full or not."""
    metrics = ApiMetrics(ModelRepository())
    n = FOLD_EVERY + 3
    for i in range(n):
        metrics.observe("m", "1", "infer", 200 if i % 2 else 400, 0.002)
    text = metrics.render().decode()
    assert f'edgefleet_api_requests_total{{code="200",endpoint="infer",model="m",version="1"}} {n // 2}.0' in text
    assert f'edgefleet_api_requests_total{{code="400",endpoint="infer",model="m",version="1"}} {n - n // 2}.0' in text
    assert f'edgefleet_api_request_duration_seconds_count{{endpoint="infer",model="m",version="1"}} {n}.0' in text
    metrics.observe("m", "1", "predict", 200, 0.5)
    assert 'endpoint="predict",model="m",version="1"} 1.0' in metrics.render().decode()


def test_metrics_expose_requests_latency_batches_queue_and_provider(
    samples: dict[str, Sample], clf_engine: Engine, make_server: Any
) -> None:
    server, repo = make_server()
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor, RuntimeOptions(max_batch=4))
    slot = repo.only()
    x = np.zeros((1, 3, 16, 16), np.float32)
    with httpx.Client(base_url=server.url) as c:
        for _ in range(3):
            assert c.post(f"/v2/models/{NAME}/infer", content=_infer_body(x)).status_code == 200
        assert c.post(f"/v2/models/{NAME}/infer", content=b"{}").status_code == 400
        assert c.post("/v2/models/nope/infer", content=b"{}").status_code == 404
        text = c.get("/metrics").text
    assert (
        'edgefleet_api_requests_total{code="200",endpoint="infer",model="mobilenet-like",version="1.0.0"} 3.0' in text
    )
    assert (
        'edgefleet_api_requests_total{code="400",endpoint="infer",model="mobilenet-like",version="1.0.0"} 1.0' in text
    )
    assert 'edgefleet_api_requests_total{code="404",endpoint="infer",model="unknown",version="unknown"} 1.0' in text
    assert (
        'edgefleet_api_request_duration_seconds_count{endpoint="infer",model="mobilenet-like",version="1.0.0"} 4.0'
        in text
    )
    assert 'edgefleet_api_batch_size_bucket{le="1",model="mobilenet-like",version="1.0.0"} 3.0' in text
    assert 'edgefleet_api_queue_depth{model="mobilenet-like",role="active",version="1.0.0"} 0.0' in text
    assert (
        'edgefleet_api_active_provider{model="mobilenet-like",provider="CPUExecutionProvider",'
        'role="active",version="1.0.0"} 1.0' in text
    )
    window = slot.take_window()  # the model's window: the request for an unknown model is in /metrics only
    assert (window.requests, window.errors, window.latency.count) == (4, 0, 4)
    assert slot.take_window().requests == 0


def test_request_timeout_is_503_and_counted_as_error(
    samples: dict[str, Sample], clf_engine: Engine, make_server: Any
) -> None:
    server, repo = make_server(request_timeout_s=1e-6)
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    slot = repo.only()
    with httpx.Client(base_url=server.url) as c, slot._run_lock:  # engine busy: the request must wait in the queue
        r = c.post(f"/v2/models/{NAME}/infer", content=_infer_body(np.zeros((1, 3, 16, 16), np.float32)))
    assert r.status_code == 503
    assert "timed out" in r.json()["error"]
    assert r.headers["retry-after"] == "1"
    assert slot.take_window().errors == 1


def test_fastapi_routes_answer_like_the_fast_path(samples: dict[str, Sample], clf_engine: Engine) -> None:
    """The documented FastAPI routes (what OpenAPI describes) behave as the fast path that serves them."""
    repo = ModelRepository()
    app = create_app(ApiSettings(), repo)
    x = np.zeros((1, 3, 16, 16), np.float32)

    async def main() -> list[httpx.Response]:
        await repo.attach()
        repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
        await asyncio.sleep(0)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                return [
                    await c.post(f"/v2/models/{NAME}/infer", content=_infer_body(x)),
                    await c.post(f"/v2/models/{NAME}/versions/1.0.0/infer", content=_infer_body(x)),
                    await c.post(f"/v1/models/{NAME}:predict?top_k=2", content=jpeg(40, 30)),
                    await c.post(f"/v1/models/{NAME}:predict?top_k=0", content=jpeg(40, 30)),
                    await c.post("/v2/models/other/infer", content=b"{}"),
                ]
        finally:
            await repo.detach()

    ok, versioned, image, bad, missing = asyncio.run(main())
    assert ok.status_code == versioned.status_code == image.status_code == 200
    assert ok.json()["outputs"][0]["shape"] == [1, 100]
    assert len(image.json()["classes"]) == 2
    assert bad.status_code == 400
    assert "top_k" in bad.json()["error"]
    assert missing.status_code == 404


def test_a_taken_port_is_an_oserror_and_start_stop_are_idempotent(make_server: Any) -> None:
    server, _ = make_server()
    port = int(server.url.rsplit(":", 1)[1])
    server.start()  # already started: nothing happens
    other = ApiServer(ApiSettings(port=port), ModelRepository())
    with pytest.raises(OSError):
        other.start()
    other.stop()  # never started: nothing to stop
    server.stop()
    server.stop()
