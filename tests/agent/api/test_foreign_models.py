"""Models exported by other tools, served through the real HTTP API: signatures our samples do not have."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from agent.api import ApiServer, ApiSettings, ModelRepository
from fleet.messages import AppliedModel
from models.cli import write_model
from models.descriptor import ModelDescriptor
from models.engine import Engine
from models.validate import validate
from tests.agent.api.conftest import OPTIONS
from tests.support.inference import json_body
from tests.support.models import colour_classifier, with_outputs_that_are_not_tensors

FIXED = 4


def _png(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), rgb).save(buf, format="PNG")
    return buf.getvalue()


def _serve(model: onnx.ModelProto, desc: ModelDescriptor, where: Path) -> tuple[ApiServer, Engine]:
    """`model` validated as the hub does at push, loaded and served through the real HTTP API."""
    onnx_path, yaml_path = write_model(model, desc, where, desc.name)
    d = validate(onnx_path, ModelDescriptor.load(yaml_path)).descriptor
    engine = Engine.load(Path(onnx_path), d, OPTIONS)
    repo = ModelRepository()
    server = ApiServer(ApiSettings(port=0), repo)
    server.start()
    assert d.sha256 is not None
    repo.activate(engine, AppliedModel(name=d.name, version=d.version, sha256=d.sha256), d)
    return server, engine


@pytest.fixture(scope="module")
def fixed_batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A classifier exported with a fixed batch of 4 (Ultralytics `export(batch=4)`, TensorRT-minded exports)."""
    model, desc = colour_classifier("1.0.0", 32, name="fixed4")
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = FIXED
    server, engine = _serve(model, desc, tmp_path_factory.mktemp("fixed4"))
    assert engine.max_batch == FIXED
    yield server.url
    server.stop()


def test_a_fixed_batch_model_answers_one_image(fixed_batch: str) -> None:
    """validate accepts a fixed batch of 4 (and the hub with it); the image endpoint sends one image, and got a 400
    blaming the client ('the model expects [4, 3, 32, 32]') for every image."""
    with httpx.Client(base_url=fixed_batch, timeout=30) as c:
        for rgb, want in (((200, 30, 30), "red"), ((20, 190, 40), "green"), ((10, 20, 230), "blue")):
            r = c.post("/v1/models/fixed4:predict", content=_png(rgb), headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            assert r.json()["classes"][0]["label"] == want


@pytest.mark.parametrize("rows", [1, 3, FIXED])
def test_a_fixed_batch_model_takes_up_to_its_batch_of_tensor_rows(fixed_batch: str, rows: int) -> None:
    x = np.random.default_rng(rows).random((rows, 3, 32, 32)).astype(np.float32)
    with httpx.Client(base_url=fixed_batch, timeout=30) as c:
        r = c.post("/v2/models/fixed4/infer", content=json_body({"image": x}))
        assert r.status_code == 200, r.text
        [out] = r.json()["outputs"]
        assert out["shape"] == [rows, 3]  # the filled rows are not answered
        assert np.allclose(np.asarray(out["data"]).reshape(rows, 3), x.mean(axis=(2, 3)), atol=1e-5)
        too_many = np.zeros((FIXED + 1, 3, 32, 32), np.float32)
        r = c.post("/v2/models/fixed4/infer", content=json_body({"image": too_many}))
        assert r.status_code == 400 and "[4, 3, 32, 32]" in r.json()["error"], r.text


def test_concurrent_images_to_a_fixed_batch_model_each_get_their_own_answer(fixed_batch: str) -> None:
    """Twelve images at once: the batcher puts several requests' rows in one run of 4; each answer is its own."""
    colours = [((200 - 10 * i, 30, 30), "red") for i in range(4)]
    colours += [((20, 190 - 10 * i, 40), "green") for i in range(4)]
    colours += [((10, 20, 230 - 10 * i), "blue") for i in range(4)]

    def predict(rgb: tuple[int, int, int]) -> dict[str, object]:
        with httpx.Client(base_url=fixed_batch, timeout=30) as c:
            r = c.post("/v1/models/fixed4:predict", content=_png(rgb), headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            top: dict[str, object] = r.json()["classes"][0]
            return top

    with ThreadPoolExecutor(len(colours)) as pool:
        answers = list(pool.map(predict, [rgb for rgb, _ in colours]))
    for (rgb, want), got in zip(colours, answers, strict=True):
        assert got["label"] == want
        logits = np.asarray(rgb) / 255  # the model's logits are the mean channel values
        assert got["score"] == pytest.approx(np.exp(logits).max() / np.exp(logits).sum(), abs=1e-4)


@pytest.fixture(scope="module")
def not_tensors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A classifier with a ZipMap, a string label and a sequence output beside its logits (skl2onnx-style)."""
    model, desc = colour_classifier("1.0.0", 32, name="zipmap")
    server, engine = _serve(with_outputs_that_are_not_tensors(model), desc, tmp_path_factory.mktemp("zipmap"))
    yield server.url, engine.path
    server.stop()


def test_a_model_with_outputs_that_are_not_tensors_is_served(not_tensors: tuple[str, Path]) -> None:
    """Refused as a whole before (the engine could not describe a `seq(map(...))` output); now its tensor output is
    served on both endpoints, the others are not run and not listed."""
    url, path = not_tensors
    x = np.random.default_rng(5).random((2, 3, 32, 32)).astype(np.float32)
    [want] = ort.InferenceSession(str(path)).run(["logits"], {"image": x})
    with httpx.Client(base_url=url, timeout=30) as c:
        meta = c.get("/v2/models/zipmap").json()
        assert [o["name"] for o in meta["outputs"]] == ["logits"]
        r = c.post("/v2/models/zipmap/infer", content=json_body({"image": x}))
        assert r.status_code == 200, r.text
        [out] = r.json()["outputs"]
        assert out["name"] == "logits" and out["shape"] == [2, 3]
        assert np.allclose(np.asarray(out["data"], np.float32).reshape(2, 3), want, atol=1e-6)
        r = c.post("/v1/models/zipmap:predict", content=_png((20, 190, 40)), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json()["classes"][0]["label"] == "green"
