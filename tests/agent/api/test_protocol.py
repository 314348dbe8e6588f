"""Open Inference Protocol v2 against a running server: unmodified tritonclient, then hostile input."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import orjson
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from agent.api import ApiServer, ApiSettings, ModelRepository, ModelSlot
from agent.api.budget import BodyBudget
from agent.api.errors import TooLarge
from agent.api.inference import INFLATE_PIECE_BYTES, decompress
from fleet.messages import AppliedModel, RuntimeOptions
from models.cli import write_model
from models.descriptor import GoldenCheck, ModelDescriptor
from models.engine import Engine
from tests.agent.api.conftest import OPTIONS, Sample
from tests.support.inference import binary_body
from tests.support.mqtt import wait_for

NAME = "mobilenet-like"


@pytest.fixture(scope="module")
def served(samples: dict[str, Sample], clf_engine: Engine) -> Iterator[tuple[ApiServer, ModelSlot]]:
    repo = ModelRepository()
    server = ApiServer(ApiSettings(port=0, max_body_bytes=4 * 1024 * 1024), repo)
    server.start()
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    yield server, repo.only()
    server.stop()


@pytest.fixture(scope="module")
def triton(served: tuple[ApiServer, ModelSlot]) -> Iterator[th.InferenceServerClient]:
    client = th.InferenceServerClient(served[0].url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture
def http(served: tuple[ApiServer, ModelSlot]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0].url, timeout=30) as c:
        yield c


def _x(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 64, 96)).astype(np.float32)


def test_health_and_metadata_through_tritonclient(triton: th.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready(NAME)
    assert triton.is_model_ready(NAME, "1.0.0")
    assert not triton.is_model_ready(NAME, "9.9.9")
    assert not triton.is_model_ready("other")
    meta = triton.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    model = triton.get_model_metadata(NAME)
    assert model["versions"] == ["1.0.0"]
    assert model["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 100]}]
    assert triton.get_model_metadata(NAME, "1.0.0") == model
    with pytest.raises(InferenceServerException, match=r"\[404\] model 'other' is unknown here") as e:
        triton.get_model_metadata("other")
    assert "None" not in str(e.value)
    with pytest.raises(InferenceServerException, match=r"\[404\] model 'mobilenet-like' has no version '9.9.9'"):
        triton.get_model_metadata(NAME, "9.9.9")


@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)])
def test_infer_matches_the_engine(
    triton: th.InferenceServerClient, clf_engine: Engine, binary_in: bool, binary_out: bool
) -> None:
    x = _x()
    inp = th.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = th.InferRequestedOutput("logits", binary_data=binary_out)
    result = triton.infer(NAME, [inp], outputs=[out], request_id="req-1", model_version="1.0.0")
    np.testing.assert_allclose(
        result.as_numpy("logits"), clf_engine.infer({"image": x})["logits"].astype(np.float64), rtol=1e-5
    )
    response = result.get_response()
    assert response["model_version"] == "1.0.0"
    assert response["id"] == "req-1"


def test_infer_without_requested_outputs_returns_all_binary(triton: th.InferenceServerClient) -> None:
    inp = th.InferInput("image", [1, 3, 32, 32], "FP32")
    inp.set_data_from_numpy(_x(1)[:, :, :32, :32].copy())
    result = triton.infer(NAME, [inp])
    assert result.as_numpy("logits").shape == (1, 100)
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 400


def test_json_infer_without_content_type_and_nested_data(http: httpx.Client, clf_engine: Engine) -> None:
    x = _x(1)
    body = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    r = http.post(f"/v2/models/{NAME}/infer", content=orjson.dumps(body))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [1, 100]
    np.testing.assert_allclose(
        np.asarray(out["data"]).reshape(1, 100), clf_engine.infer({"image": x})["logits"].astype(np.float64), rtol=1e-5
    )


def _post(http: httpx.Client, body: bytes, headers: dict[str, str] | None = None, path: str = "") -> httpx.Response:
    return http.post(path or f"/v2/models/{NAME}/infer", content=body, headers=headers or {})


def _tensor(**over: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"name": "image", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}
    t.update(over)
    return {k: v for k, v in t.items() if v is not None}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"inputs": []}', "non-empty list"),
        (b'{"inputs": [1]}', "must be an object"),
        (orjson.dumps({"inputs": [_tensor(name=None)]}), "string 'name' of 1 to"),
        (orjson.dumps({"inputs": [_tensor(datatype="BYTES")]}), "not supported"),
        (orjson.dumps({"inputs": [_tensor(shape=[1, -3, 8, 8])]}), "non-negative"),
        (orjson.dumps({"inputs": [_tensor(shape="1x3")]}), "list of at most"),
        (orjson.dumps({"inputs": [_tensor(data=None)]}), "neither 'data'"),
        (orjson.dumps({"inputs": [_tensor(data=[1.0] * 10)]}), "has 10 values"),
        (orjson.dumps({"inputs": [_tensor(data=["a"] * 192)]}), "only numbers"),
        (orjson.dumps({"inputs": [_tensor(data=[None] * 192)]}), "not null or strings: None"),
        (orjson.dumps({"inputs": [_tensor(data="abc")]}), "must be a (flat or nested) list"),
        (orjson.dumps({"inputs": [_tensor(), _tensor()]}), "given twice"),
        (orjson.dumps({"inputs": [_tensor(name="other")]}), "unknown input"),
        (orjson.dumps({"inputs": [_tensor(datatype="FP64")]}), "dtype float64"),
        (orjson.dumps({"inputs": [_tensor(shape=[1, 4, 6, 8])]}), "axis 1"),
        (orjson.dumps({"inputs": [_tensor(shape=[1, 192])]}), "dims"),
        (orjson.dumps({"inputs": [_tensor(shape=[0, 3, 8, 8], data=[])]}), "axis 0"),
        (orjson.dumps({"inputs": [_tensor(shape=[99, 3, 8, 8], data=[0.0] * 99 * 192)]}), "at most 8"),
        (orjson.dumps({"inputs": [_tensor()], "outputs": [{"name": "nope"}]}), "not an output"),
        (
            orjson.dumps({"inputs": [_tensor()], "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}),
            "classification",
        ),
        (orjson.dumps({"inputs": [_tensor()], "id": 5}), "'id' must be a string"),
        (orjson.dumps({"inputs": [_tensor(parameters={"binary_data_size": 768})]}), "no Inference-Header"),
    ],
)
def test_malformed_json_requests_get_400_with_a_reason(http: httpx.Client, body: bytes, reason: str) -> None:
    r = _post(http, body)
    assert r.status_code == 400, r.text
    assert reason in r.json()["error"]


def test_binary_request_errors(http: httpx.Client) -> None:
    x = _x(1)[:, :, :8, :8].copy()
    body, headers = binary_body({"image": x}, declared=x.nbytes - 4)
    assert "does not match shape" in _post(http, body, headers).json()["error"]
    body, headers = binary_body({"image": x}, extra=b"\0" * 8)
    assert "not claimed" in _post(http, body, headers).json()["error"]
    body, headers = binary_body({"image": x})
    assert _post(http, body[:-4], headers).status_code == 400  # truncated: ends past the body
    for bad in ("abc", "0", "-5", str(len(body) + 1)):
        r = _post(http, body, {"Inference-Header-Content-Length": bad})
        assert r.status_code == 400, bad
        assert "Inference-Header-Content-Length" in r.json()["error"]
    assert _post(http, body, headers).status_code == 200


def test_unknown_model_version_and_route_are_404_json(http: httpx.Client) -> None:
    body = orjson.dumps({"inputs": [_tensor()]})
    unknown, other = f"model 'other' is unknown here; serving '{NAME}'", f"model '{NAME}' has no version '0.0.1' here"
    for path, reason in [
        ("/v2/models/other/infer", unknown),  # the infer routes say what docs/api.md and the metadata routes say
        ("/v2/models/other", unknown),
        (f"/v2/models/{NAME}/versions/0.0.1/infer", other),
        (f"/v2/models/{NAME}/versions/0.0.1/ready", other),
        ("/v2/models/x/versions/1/ready", "model 'x' is unknown here"),
    ]:
        r = http.post(path, content=body) if path.endswith("infer") else http.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"].startswith(reason), (path, r.text)
    r = http.get("/v3/nothing")
    assert r.status_code == 404
    assert r.json() == {"error": "Not Found"}
    assert http.get(f"/v2/models/{NAME}/infer").status_code == 405
    assert _post(http, body, path=f"/v2/models/{NAME}/versions/1.0.0/infer").status_code == 200


@pytest.mark.parametrize(
    "path", ["/v2/health/live", "/v2/health/ready", "/v2", f"/v2/models/{NAME}", f"/v2/models/{NAME}/ready",
             f"/v2/models/{NAME}/config", "/v2/models/stats", "/v2/models/other", "/metrics"],
)  # fmt: skip
def test_head_answers_as_get_without_a_body(http: httpx.Client, path: str) -> None:
    """Load balancers and Kubernetes-style probes check health with HEAD: it was 405 on every route."""
    get, head = http.get(path), http.head(path)
    assert head.status_code == get.status_code, head.text
    assert head.content == b""
    for key in ("content-type", "retry-after"):
        assert head.headers.get(key) == get.headers.get(key)
    if path != "/metrics":  # a scrape counts the requests answered before it: its length changes
        assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))


def test_head_of_readiness_is_503_before_a_model_serves(samples: dict[str, Sample], make_server: Any) -> None:
    server, _ = make_server()
    r = httpx.head(server.url + "/v2/health/ready")
    assert (r.status_code, r.headers["retry-after"], r.content) == (503, "1", b"")
    assert httpx.head(server.url + "/v2/models/x/infer").status_code == 405  # HEAD works where GET does, only


def test_an_output_requested_twice_is_returned_once(http: httpx.Client) -> None:
    """It came back twice. Triton keeps requested outputs in a set: each is returned once, as first asked."""
    asked = [{"name": "logits"}, {"name": "logits", "parameters": {"binary_data": True}}]
    r = _post(http, orjson.dumps({"inputs": [_tensor()], "outputs": asked}))
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    assert [o["name"] for o in outputs] == ["logits"]
    assert "data" in outputs[0]  # as the first entry asked: JSON, not binary


def test_body_limit_413_declared_and_streamed(http: httpx.Client) -> None:
    big = b"{" + b" " * (4 * 1024 * 1024 + 10) + b"}"
    r = _post(http, big)
    assert r.status_code == 413
    assert "limit" in r.json()["error"]

    def chunks() -> Iterator[bytes]:
        for _ in range(80):
            yield b" " * 65536

    r = http.post(f"/v2/models/{NAME}/infer", content=chunks())
    assert r.status_code == 413
    assert http.get("/v2/health/ready").status_code == 200


def test_overload_is_503_with_retry_after(samples: dict[str, Sample], clf_engine: Engine, make_server: Any) -> None:
    server, repo = make_server(max_concurrency=1)
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    repo.only()
    host, port = server.url.removeprefix("http://").split(":")
    body = orjson.dumps({"inputs": [_tensor()]})
    with socket.create_connection((host, int(port))) as held:
        held.sendall(
            f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        with httpx.Client(base_url=server.url) as c:
            for _ in range(100):  # until the held request has been accepted (it holds the only slot)
                r = c.post(f"/v2/models/{NAME}/infer", content=body)
                if r.status_code == 503:
                    break
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert "in progress" in r.json()["error"]
            held.sendall(body[10:])
            assert held.recv(65536).startswith(b"HTTP/1.1 200")
            assert c.post(f"/v2/models/{NAME}/infer", content=body).status_code == 200


def test_not_ready_before_activation_and_after_deactivate(samples: dict[str, Sample], make_server: Any) -> None:
    server, repo = make_server()
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/v2/health/live").status_code == 200
        r = c.get("/v2/health/ready")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        r = c.post(f"/v2/models/{NAME}/infer", content=orjson.dumps({"inputs": [_tensor()]}))
        assert r.status_code == 503
        engine = samples["clf"].engine()  # deactivate() closes it: not the shared one
        repo.activate(engine, samples["clf"].applied(), samples["clf"].descriptor)
        repo.only()
        assert c.get("/v2/health/ready").status_code == 200
        assert c.post(f"/v2/models/{NAME}/infer", content=orjson.dumps({"inputs": [_tensor()]})).status_code == 200
        repo.deactivate(NAME)
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get(f"/v2/models/{NAME}/ready").status_code == 404


def test_hostile_bytes_never_kill_the_server(http: httpx.Client) -> None:
    rng = np.random.default_rng(1)
    for i in range(30):
        junk = rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8).tobytes()
        headers = {"Inference-Header-Content-Length": str(int(rng.integers(1, 50)))} if i % 2 else {}
        r = _post(http, junk, headers)
        assert r.status_code in (400, 413), r.text
    assert http.get("/v2/health/ready").status_code == 200


def test_client_gone_mid_body_frees_its_slot(served: tuple[ApiServer, ModelSlot], http: httpx.Client) -> None:
    server, slot = served
    host, port = server.url.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port))) as s:
            s.sendall(f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode())
    for _ in range(200):
        if 'code="499"' in http.get("/metrics").text and slot.current is not None and slot.current.inflight == 0:
            break
        time.sleep(0.01)
    assert 'edgefleet_api_requests_total{code="499",endpoint="infer"' in http.get("/metrics").text
    assert slot.current is not None and slot.current.inflight == 0
    assert http.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_through_tritonclient(
    triton: th.InferenceServerClient, clf_engine: Engine, algorithm: str
) -> None:
    x = _x(1)
    inp = th.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = triton.infer(
        NAME, [inp], request_compression_algorithm=algorithm, response_compression_algorithm=algorithm
    )
    np.testing.assert_allclose(
        result.as_numpy("logits"), clf_engine.infer({"image": x})["logits"].astype(np.float64), rtol=1e-5
    )


def test_bad_and_oversized_compressed_bodies(http: httpx.Client) -> None:
    body = orjson.dumps({"inputs": [_tensor()]})
    r = _post(http, gzip.compress(body)[:-10], {"Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert "truncated" in r.json()["error"] or "decompress" in r.json()["error"]
    r = _post(http, b"not gzip at all", {"Content-Encoding": "gzip"})
    assert r.status_code == 400
    r = _post(http, body, {"Content-Encoding": "br"})
    assert r.status_code == 400
    assert "not supported" in r.json()["error"]
    bomb = gzip.compress(b" " * (5 * 1024 * 1024))  # 5 KiB that inflate past the 4 MiB limit
    r = _post(http, bomb, {"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert _post(http, zlib.compress(body), {"Content-Encoding": "deflate"}).status_code == 200


@pytest.mark.parametrize("size", [0, 1, INFLATE_PIECE_BYTES, 2 * INFLATE_PIECE_BYTES, 2 * INFLATE_PIECE_BYTES + 7])
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_bodies_inflate_whole_across_pieces(size: int, algorithm: str) -> None:
    """Inflating in pieces (each held in the budget) gives back every byte, at and across the pieces' edges."""
    data = np.random.default_rng(size).integers(0, 4, size, dtype=np.uint8).tobytes()  # compresses, not to nothing
    packed = gzip.compress(data) if algorithm == "gzip" else zlib.compress(data)
    budget = BodyBudget(4 * INFLATE_PIECE_BYTES, 1)
    hold = budget.hold(len(packed))
    assert bytes(asyncio.run(decompress(packed, algorithm, 3 * INFLATE_PIECE_BYTES, hold))) == data
    assert hold.held == len(packed) + size
    with pytest.raises(TooLarge, match="inflates past"):
        asyncio.run(decompress(packed, algorithm, size - 1, None))


def test_full_queue_is_503_with_retry_after_and_the_rest_succeed(
    samples: dict[str, Sample], clf_engine: Engine, make_server: Any
) -> None:
    server, repo = make_server()
    repo.activate(
        clf_engine, samples["clf"].applied(), samples["clf"].descriptor, RuntimeOptions(max_batch=1, max_queue=2)
    )
    slot = repo.only()
    body = orjson.dumps({"inputs": [_tensor()]})
    batcher = slot.current.batcher if slot.current else None
    assert batcher is not None

    with httpx.Client(base_url=server.url, timeout=30) as c, ThreadPoolExecutor(6) as pool:

        def post() -> Future[httpx.Response]:
            return pool.submit(c.post, f"/v2/models/{NAME}/infer", content=body)

        with slot._run_lock:  # the engine is busy: one request runs (blocked), two may wait
            futures = [post()]
            # the worker has taken the first off the queue (it now waits for the engine), so the burst
            # below meets an empty queue whatever the thread timing
            wait_for(lambda: ((s := batcher.stats()).requests, s.queue_depth) == (1, 0), interval=0.01)
            futures += [post() for _ in range(5)]
            # the three beyond running + queue are refused at once
            wait_for(lambda: sum(f.done() for f in futures) >= 3, interval=0.01)
        codes = sorted(f.result().status_code for f in futures)
    assert codes == [200, 200, 200, 503, 503, 503]
    refused = [f.result() for f in futures if f.result().status_code == 503]
    assert all(r.headers["retry-after"] == "1" and "overloaded" in r.json()["error"] for r in refused)


def test_input_the_network_cannot_take_is_a_400_with_onnxruntimes_reason_in_one_line(
    samples: dict[str, Sample], make_server: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """1x3x31x33 into a detector whose spatial axes are symbolic but whose head needs 320x320: the client's
    mistake (400, not counted as a server error), one line of reason, nothing printed by onnxruntime itself."""
    model = onnx.load(samples["det"].path)
    for axis, name in ((2, "height"), (3, "width")):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    desc = samples["det"].descriptor
    dynamic = desc.input.model_copy(update={"dynamic_size": True})
    desc = desc.model_copy(update={"input": dynamic, "version": "1.2.0", "sha256": None, "size": None})
    desc = desc.model_copy(update={"golden": GoldenCheck(seed=0)})
    onnx_path, yaml_path = write_model(model, desc, tmp_path, "det-any-size")
    desc = ModelDescriptor.load(yaml_path)
    assert desc.sha256 is not None
    server, repo = make_server()
    repo.activate(
        Engine.load(onnx_path, desc, OPTIONS), AppliedModel(name=desc.name, version="1.2.0", sha256=desc.sha256), desc
    )
    capfd.readouterr()
    with httpx.Client(base_url=server.url, timeout=30) as c, caplog.at_level(logging.DEBUG, logger="models.engine"):
        for shape in ([1, 3, 31, 33], [2, 3, 64, 96], [1, 3, 320, 320]):
            x = np.zeros(shape, np.float32)
            body, headers = binary_body({"images": x})
            r = c.post(f"/v2/models/{desc.name}/infer", content=body, headers=headers)
            if shape[-1] == 320:
                assert r.status_code == 200
                continue
            assert r.status_code == 400, r.text
            reason = r.json()["error"]
            assert reason.startswith(f"the model cannot take inputs of shapes {{'images': {shape}}}: ")
            assert "\n" not in reason and "onnxruntime_src" not in reason and "Reshape" in reason
    window = repo.take_windows()[desc.name]
    assert (window.requests, window.errors) == (3, 0)  # the rollout error-rate gate sees no server error
    assert not capfd.readouterr().err  # onnxruntime printed nothing (no ANSI line per failed run)
    refused = [rec for rec in caplog.records if rec.name == "models.engine" and "refused by onnxruntime" in rec.message]
    assert len(refused) == 2 and all(rec.levelno == logging.DEBUG for rec in refused)


def test_model_config_statistics_and_repository_index_through_tritonclient(
    samples: dict[str, Sample], make_server: Any
) -> None:
    server, repo = make_server(max_batch=4, max_queue_delay_ms=3, max_queue=32)
    v1, v2 = samples["clf"], samples["clf2"]
    repo.activate(v1.engine(), v1.applied(), v1.descriptor)
    client = th.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        config = client.get_model_config(NAME)
        assert config == client.get_model_config(NAME, "1.0.0")
        assert (config["name"], config["platform"], config["backend"]) == (NAME, "onnxruntime_onnx", "onnxruntime")
        assert config["max_batch_size"] == 4  # the batch axis is symbolic: dims leave it out
        assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}]
        assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [100]}]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 3000
        assert config["instance_group"][0]["kind"] == "KIND_CPU"
        with pytest.raises(InferenceServerException, match=r"\[404\] model 'nope' is unknown here"):
            client.get_model_config("nope")

        (fresh,) = client.get_inference_statistics()["model_stats"]
        assert (fresh["inference_count"], fresh["execution_count"], fresh["batch_stats"]) == (0, 0, [])
        for seed in range(3):
            inp = th.InferInput("image", [2, 3, 32, 32], "FP32")
            inp.set_data_from_numpy(_x(2, seed)[:, :, :32, :32].copy())
            client.infer(NAME, [inp])
        bad = th.InferInput("image", [2, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((2, 3), np.float32))
        with pytest.raises(InferenceServerException, match=r"\[400\]"):
            client.infer(NAME, [bad])

        everything = client.get_inference_statistics()["model_stats"]
        assert everything == client.get_inference_statistics(NAME)["model_stats"]
        assert everything == client.get_inference_statistics(NAME, "1.0.0")["model_stats"]
        (st,) = everything
        s = st["inference_stats"]
        assert (st["name"], st["version"], st["inference_count"]) == (NAME, "1.0.0", 6)
        counts = (s["success"]["count"], s["fail"]["count"], s["queue"]["count"], s["compute_infer"]["count"])
        assert counts == (3, 1, 3, 3)
        assert s["success"]["ns"] >= s["compute_infer"]["ns"] + s["compute_input"]["ns"] + s["compute_output"]["ns"]
        assert s["compute_infer"]["ns"] > 0 and s["compute_input"]["ns"] > 0 and s["compute_output"]["ns"] > 0
        assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in st["batch_stats"]) == 6
        assert st["execution_count"] == sum(b["compute_infer"]["count"] for b in st["batch_stats"])
        assert st["last_inference"] > 1_700_000_000_000
        with pytest.raises(InferenceServerException, match=r"\[404\]"):
            client.get_inference_statistics("nope")

        assert client.get_model_repository_index() == [
            {"name": NAME, "version": "1.0.0", "state": "READY", "reason": ""}
        ]
        repo.activate(v2.engine(), v2.applied(), v2.descriptor)
        index = client.get_model_repository_index()
        assert index == [
            {"name": NAME, "version": "2.0.0", "state": "READY", "reason": ""},
            {"name": NAME, "version": "1.0.0", "state": "UNAVAILABLE", "reason": "unloaded"},
        ]
        # the first version's statistics stay after the swap
        assert [m["version"] for m in client.get_inference_statistics(NAME)["model_stats"]] == ["1.0.0", "2.0.0"]
    finally:
        client.close()
    with httpx.Client(base_url=server.url) as c:
        assert c.post("/v2/repository/index", json={"ready": True}).json() == index[:1]
        for body in (b"[]", b"{", b'{"ready": 1}'):
            r = c.post("/v2/repository/index", content=body)
            assert r.status_code == 400 and r.json()["error"]
