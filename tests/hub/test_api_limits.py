"""Requests that answered 500 when the hub was probed from outside (issue 18) now get a 4xx with the reason.

Each is a fixed regression case of what schemathesis and hand probing found; the connection stays usable
after each (a 500 used to reset the keep-alive connection).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import onnx
import pytest
from fastapi import APIRouter

from fleet.messages import DesiredModel, ShadowSpec
from hub.api.app import create_app
from hub.api.server import api_server
from hub.errors import TooLarge
from models.descriptor import ModelDescriptor
from tests.support.hub import RunningHub
from tests.support.outcomes import record

Call = Callable[[httpx.Client], httpx.Response]


def _error(r: httpx.Response) -> dict[str, str]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    error: dict[str, str] = body["error"]
    return error


def test_out_of_range_ids_and_deep_or_non_finite_descriptions_are_400(running_hub: RunningHub, samples: Path) -> None:
    h = running_hub
    onnx = (samples / "mobilenet-like.onnx").read_bytes()
    desc = ModelDescriptor.load(samples / "mobilenet-like.yaml").to_json()
    deep = "[" * 1000 + "]" * 1000
    nested: object = 1
    for _ in range(40):
        nested = [nested]

    def push(descriptor: str) -> Call:
        return lambda c: c.post("/api/v1/models", data={"descriptor": descriptor}, files={"file": ("m.onnx", onnx)})

    cases: dict[str, Call] = {
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


def _fixed_batch(src: Path, dst: Path, batch: int) -> Path:
    model = onnx.load(src)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch  # the batch axis, fixed
    onnx.save(model, dst)
    return dst


def test_a_fixed_batch_too_large_for_the_golden_check_is_refused_before_allocating(
    running_hub: RunningHub, samples: Path, tmp_path: Path
) -> None:
    desc = ModelDescriptor.load(samples / "mobilenet-like.yaml").to_json()
    desc.update(sha256=None, size=None, golden={"seed": 0, "atol": 1e-3, "rtol": 1e-3})  # judge the new file
    for batch in (256, 2**31):
        onnx_file = _fixed_batch(samples / "mobilenet-like.onnx", tmp_path / f"b{batch}.onnx", batch)
        r = running_hub.push_model(onnx_file, desc)
        assert r.status_code == 400, r.text
        assert f"fixed batch of {batch}" in _error(r)["message"] and "MiB" in _error(r)["message"]
    ok = _fixed_batch(samples / "mobilenet-like.onnx", tmp_path / "b4.onnx", 4)
    assert running_hub.push_model(ok, desc).status_code == 201  # a modest fixed batch is fine
    record("attack", "model whose golden check would allocate without bound (fixed batch 256, 2^31)", "refused", 2, 0)


def test_a_desired_state_agents_would_refuse_is_refused_at_push_and_at_deploy(
    running_hub: RunningHub, samples: Path
) -> None:
    """Issue 18 item 6: a description whose signed state exceeded the agents' 256 KiB limit was accepted,
    and the device then sat in "updating" for ever."""
    h = running_hub
    desc = ModelDescriptor.load(samples / "mobilenet-like.yaml").to_json()
    onnx_file = samples / "mobilenet-like.onnx"
    huge = {**desc, "labels": [f"class {i} " + "x" * 3000 for i in range(100)]}  # about 300 KB of labels
    r = h.push_model(onnx_file, huge)
    assert r.status_code == 400 and "262144-byte message limit" in _error(r)["message"], r.text
    # each of these fits alone; as model and shadow of one desired state they do not
    big = {**desc, "labels": [f"class {i} " + "x" * 1400 for i in range(100)]}
    assert h.push_model(onnx_file, big, version="1.0.0").status_code == 201
    assert h.push_model(onnx_file, big, version="1.1.0").status_code == 201
    with h.client() as c:
        assert c.post("/api/v1/devices", json={"id": "cam-1", "labels": {"id": "cam-1"}}).status_code == 201
        assert c.post("/api/v1/deployments", json={"model": "mobilenet-like", "version": "1.0.0",
                                                   "selector": "id=cam-1"}).status_code in (200, 201)  # fmt: skip
    ref, candidate = (h.hub.registry.model_ref("mobilenet-like", v) for v in ("1.0.0", "1.1.0"))
    with pytest.raises(TooLarge, match="message limit"):
        slot = DesiredModel(model=ref, shadow=ShadowSpec(model=candidate, sample_rate=0.5))
        h.hub.deployer.set_slot(["cam-1"], "mobilenet-like", slot)
    desired = h.hub.store.get_desired("cam-1")
    assert desired is not None and desired.version == 1  # nothing allocated or sent
    record("attack", "model or shadow pair whose desired state exceeds the agents' message limit", "refused", 2, 0)


def test_an_unexpected_error_is_one_logged_500_and_the_connection_stays_open(
    running_hub: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 18: after each 500 the keep-alive connection was reset and the traceback logged twice."""
    h = running_hub
    boom = APIRouter()

    @boom.get("/boom")
    def explode() -> None:
        raise RuntimeError("a bug nobody foresaw")

    server = api_server(h.hub, port=0, app=create_app(h.hub, extra_routers=[boom]))
    server.start()
    server_log: list[logging.LogRecord] = []

    class Catcher(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            server_log.append(record)

    catcher = Catcher()
    logging.getLogger("uvicorn.error").addHandler(catcher)  # uvicorn's own logger does not reach caplog
    try:
        with caplog.at_level(logging.ERROR), httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.get("/boom")
            again = c.get("/healthz")  # on the same keep-alive connection, if the server kept it
        tracebacks = [rec for rec in [*caplog.records, *server_log] if rec.exc_info]
        assert (r.status_code, _error(r)["code"]) == (500, "internal")
        assert (r.headers.get("connection"), len(tracebacks)) == (None, 1), [x.getMessage() for x in tracebacks]
        assert r.headers["x-content-type-options"] == "nosniff"  # answered inside the security middleware
        assert again.status_code == 200
    finally:
        logging.getLogger("uvicorn.error").removeHandler(catcher)
        server.stop()
