"""Tensors no model input can hold, sent to a running agent API over one keep-alive connection.

Issue 18 item 3: a zero dimension beside a huge one (`[0, 2**61]`: 0 elements, numpy still refuses the shape),
a float32 value beyond float32's range (a RuntimeWarning, an error under pytest) and others answered 500,
and after a 500 the connection was reset. Each is now a 400 that names the problem, the connection goes
on serving, and a genuine request on it gets its answer.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import orjson

from models.engine import Engine
from tests.agent.api.conftest import Sample
from tests.support.outcomes import record

NAME = "mobilenet-like"


def _nested(depth: int) -> Any:
    data: Any = [1.0]
    for _ in range(depth - 1):
        data = [data]
    return data


HOSTILE: list[tuple[dict[str, Any] | bytes, str]] = [  # (the input tensor or the whole body, what the 400 says)
    ({"shape": [0, 2**61], "datatype": "FP32", "data": []}, "up to"),
    ({"shape": [0, 2**30, 2**30], "datatype": "FP32", "data": []}, "more than"),
    ({"shape": [2**63], "datatype": "FP32", "data": [1.0]}, "up to"),
    ({"shape": [1], "datatype": "FP32", "data": [1e39]}, "float32"),
    ({"shape": [1], "datatype": "FP16", "data": [1e5]}, "float16"),
    ({"shape": [1], "datatype": "INT32", "data": [2**40]}, "int32"),
    ({"shape": [1], "datatype": "UINT8", "data": [-1]}, "uint8"),
    ({"shape": [1] * 100, "datatype": "FP32", "data": _nested(100)}, "shape"),
    # issue 19 item 2: each was answered 200 as if it were data
    ({"shape": [1, 3, 16, 16], "datatype": "FP32", "data": [True] * 768}, "booleans are values of BOOL inputs"),
    ({"shape": [1, 3, 16, 16], "datatype": "FP32", "data": np.zeros((1, 16, 16, 3)).tolist()}, "nested as [1, 16"),
    ({"shape": [1], "datatype": "INT8", "data": [300]}, "int8"),
    (b'{"inputs":[{"name":"image","shape":[1],"datatype":"FP32","data":[NaN]}]}', "NaN and Infinity are not"),
    (b'{"inputs":[{"name":"image","shape":[1],"datatype":"FP32","data":[-Infinity]}]}', "NaN and Infinity"),
    (b'{"inputs":[{"name":"image","shape":[1],"datatype":"FP32","data":[1e400]}]}', "infinity"),
]


def test_tensors_no_input_can_hold_are_400s_and_the_connection_goes_on(
    samples: dict[str, Sample], clf_engine: Engine, make_server: Any
) -> None:
    server, slot = make_server()
    slot.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    x = np.zeros((1, 3, 16, 16), np.float32)
    genuine = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    answered = []
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for tensor, reason in HOSTILE:
            body = tensor if isinstance(tensor, bytes) else orjson.dumps({"inputs": [{"name": "image", **tensor}]})
            r = c.post(f"/v2/models/{NAME}/infer", content=body)
            assert r.status_code == 400 and reason in r.json()["error"], (body[:80], r.status_code, r.text)
            assert r.headers.get("connection", "").lower() != "close", r.headers
            answered.append(r)
        r = c.post(f"/v2/models/{NAME}/infer", content=orjson.dumps(genuine))
        assert r.status_code == 200, r.text
        assert c.get("/v2/health/live").status_code == 200
    record("attack", "infer tensors no input can hold (shape [0, 2^61], FP32 1e39, ...)", "refused", len(answered), 0)
