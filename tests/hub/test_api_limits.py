"""Requests that answered 500 when the hub was probed from outside (issue 18) now get a 4xx with the reason.

Each is a fixed regression case of what schemathesis and hand probing found; the connection stays usable
after each (a 500 used to reset the keep-alive connection).
"""

from __future__ import annotations

import json
from pathlib import Path

from models.descriptor import ModelDescriptor
from tests.support.hub import RunningHub
from tests.support.outcomes import record


def _error(r) -> dict:  # type: ignore[no-untyped-def]
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


def test_out_of_range_ids_and_deep_or_non_finite_descriptions_are_400(running_hub: RunningHub, samples: Path) -> None:
    h = running_hub
    onnx = (samples / "mobilenet-like.onnx").read_bytes()
    desc = ModelDescriptor.load(samples / "mobilenet-like.yaml").to_json()
    deep = "[" * 1000 + "]" * 1000
    nested: object = 1
    for _ in range(40):
        nested = [nested]

    def push(descriptor: str):  # type: ignore[no-untyped-def]
        return lambda c: c.post("/api/v1/models", data={"descriptor": descriptor}, files={"file": ("m.onnx", onnx)})

    cases = {
        "token id 2^63": lambda c: c.delete("/api/v1/tokens/9223372036854775808"),
        "token id -1": lambda c: c.delete("/api/v1/tokens/-1"),
        "descriptor nested 1000 deep": push(json.dumps(desc)[:-1] + f', "deep": {deep}}}'),
        "descriptor nested 40 deep": push(json.dumps({**desc, "extra": nested})),
        "descriptor with NaN": push(json.dumps({**desc, "golden": {**desc["golden"], "atol": float("nan")}})),
        "descriptor with Infinity": push(json.dumps(desc).replace('"mean": [', '"mean": [Infinity, ', 1)),
        "descriptor with 1e999": push(json.dumps(desc).replace('"scale": ', '"scale": 1e999, "x": ', 1)),
    }
    with h.client() as c:
        for what, call in cases.items():
            r = call(c)
            assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
            assert _error(r)["message"], what
            assert c.get("/healthz").status_code == 200  # the same connection still works
    assert h.hub.store.list_model_versions() == []
    record("attack", "API ids beyond 64 bits, descriptions too deep or not finite", "refused", len(cases), 0)
