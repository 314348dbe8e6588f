"""The JSON part of an infer request has its own, lower limit, and a large one parses off the event loop.

Issue 18 item 6: a 60 MB JSON body (under the 64 MiB body limit) blocked the agent's event loop for 1.85 s
and took 0.9 GB. JSON is now limited separately (`max_json_body_bytes`, binary tensor data not counted),
and bodies above `PARSE_INLINE_BYTES` are parsed in a worker thread.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from agent.api.inference import PARSE_INLINE_BYTES
from models.engine import Engine
from tests.agent.api.conftest import Sample
from tests.support.inference import binary_body, json_body
from tests.support.outcomes import record

NAME = "mobilenet-like"
LIMIT = 4 * 1024 * 1024


def test_json_beyond_its_limit_is_413_and_the_same_tensor_as_binary_data_is_served(
    samples: dict[str, Sample], clf_engine: Engine, make_server: Any
) -> None:
    server, slot = make_server(max_json_body_bytes=LIMIT)
    slot.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    rng = np.random.default_rng(0)
    big = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)  # ~12 MB as JSON, 2.4 MB binary
    small = rng.standard_normal((1, 3, 160, 160)).astype(np.float32)  # ~1.5 MB as JSON: parsed in a thread
    assert len(json_body({"image": small})) > PARSE_INLINE_BYTES
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post(f"/v2/models/{NAME}/infer", content=json_body({"image": big}))
        assert r.status_code == 413 and "JSON limit" in r.json()["error"] and "binary" in r.json()["error"]
        body, headers = binary_body({"image": big})
        r = c.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
        r = c.post(f"/v2/models/{NAME}/infer", content=json_body({"image": small}))
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 100)
        np.testing.assert_allclose(
            got, clf_engine.infer({"image": small})["logits"].astype(np.float64), rtol=1e-4, atol=1e-5
        )
        assert c.get("/v2/health/live").status_code == 200
    record("attack", "infer JSON body above the JSON limit (under the body limit)", "refused", 1, 0)
