"""The cluster-mode control agent's serving side (checks, never serves) and its health server."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest

from agent.activation import Loaded, load
from agent.control import CheckOnlyServing
from agent.errors import AgentError
from agent.health import HealthServer, stalled
from fleet.messages import RuntimeOptions
from models.errors import EngineNotReady
from tests.agent.conftest import Sample


def _loaded(sample: Sample) -> Loaded:
    desc = sample.descriptor
    return load(
        sample.path, desc.sha256 or "0" * 64, name=desc.name, version=desc.version,
        descriptor=desc.to_json(), runtime=RuntimeOptions(), warmup_runs=1,
    )  # fmt: skip


def test_a_checked_engine_is_recorded_and_released(samples: dict[str, Sample]) -> None:
    serving = CheckOnlyServing()
    loaded = _loaded(samples["v1"])
    image = np.zeros((1, 3, 64, 64), np.float32)
    assert loaded.engine.infer({"image": image})  # it ran: the check passed and the engine worked
    name = loaded.applied.name
    serving.activate(loaded.engine, loaded.applied, loaded.descriptor, RuntimeOptions(replicas=2))
    assert serving.active_models() == {name: loaded.applied} and serving.runtime[name] == RuntimeOptions(replicas=2)
    with pytest.raises(EngineNotReady):
        loaded.engine.infer({"image": image})  # released at once: this process serves nothing
    shadow = _loaded(samples["v2"])
    serving.set_shadow(name, shadow.engine, shadow.applied, 0.5)
    assert serving.shadow_models() == {name: shadow.applied}
    with pytest.raises(EngineNotReady):
        shadow.engine.infer({"image": image})
    window = serving.take_windows()[name]  # no cluster port: nothing to scrape (tests/agent/k3s/test_scrape.py)
    assert (window.requests, window.errors, window.queue_depth, window.shadow) == (0, 0, 0, None)
    serving.set_shadow(name, None, None, 0.0)
    serving.deactivate(name)
    assert serving.active_models() == {} and serving.shadow_models() == {}


def test_health_answers_and_reasons() -> None:
    beat = [time.monotonic()]
    server = HealthServer("127.0.0.1", 0, live=stalled(lambda: beat[0], 30.0), ready=lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert httpx.get(base + "/livez", timeout=5).text == "ok\n"
        beat[0] = time.monotonic() - 120  # the control loop has not turned for two minutes
        r = httpx.get(base + "/livez?verbose", timeout=5)
        # (the seconds since then, rounded: 121 on a loaded machine)
        assert r.status_code == 503 and re.search(r"has not turned for 1[2-9]\ds \(limit 30s\)", r.text), r.text
        r = httpx.get(base + "/readyz", timeout=5)  # a check that fails is unhealthy, the server lives on
        assert r.status_code == 503 and "ZeroDivisionError" in r.text
        assert httpx.get(base + "/metrics", timeout=5).status_code == 404
        with pytest.raises(AgentError, match="cannot serve health"):
            HealthServer("127.0.0.1", server.port, live=lambda: None, ready=lambda: None).start()
    finally:
        server.stop()
        server.stop()
