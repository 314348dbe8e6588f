"""The image endpoint with httpx: classification and detection, raw and multipart bodies, limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from agent.api import ApiServer, ApiSettings, ModelRepository
from models.cli import write_model
from models.descriptor import ModelDescriptor
from models.engine import Engine
from models.postprocess import Detection, postprocess
from models.preprocess import preprocess
from models.samples import build_detector, detector_descriptor
from tests.agent.api.conftest import Sample, jpeg


@pytest.fixture(scope="module")
def servers(samples: dict[str, Sample], clf_engine: Engine) -> Iterator[dict[str, tuple[str, Engine]]]:
    """One server per task (a slot serves one model)."""
    det_engine = samples["det"].engine()
    started = []
    urls = {}
    for key, sample, engine in (("clf", samples["clf"], clf_engine), ("det", samples["det"], det_engine)):
        repo = ModelRepository()
        server = ApiServer(ApiSettings(port=0, max_image_pixels=2_000_000, max_body_bytes=2 * 1024 * 1024), repo)
        server.start()
        repo.activate(engine, sample.applied(), sample.descriptor)
        started.append(server)
        urls[key] = (server.url, engine)
    yield urls
    for s in started:
        s.stop()


def _client(servers: dict[str, tuple[str, Engine]], key: str) -> httpx.Client:
    return httpx.Client(base_url=servers[key][0], timeout=30)


def test_classification_top_k_matches_the_in_process_pipeline(servers: Any, samples: dict[str, Sample]) -> None:
    d = samples["clf"].descriptor
    image = jpeg(640, 480, seed=3)
    tensor, transform = preprocess(image, d.input)
    expected = postprocess(servers["clf"][1].infer({d.input.name: tensor}), d, [transform])[0]
    with _client(servers, "clf") as c:
        r = c.post(f"/v1/models/{d.name}:predict", content=image, headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["task"] == "classification"
        assert body["model_version"] == "1.0.0"
        assert [x["class_id"] for x in body["classes"]] == [x.class_id for x in expected]
        assert [x["label"] for x in body["classes"]] == [x.label for x in expected]
        np.testing.assert_allclose([x["score"] for x in body["classes"]], [x.score for x in expected], rtol=1e-5)
        top2 = c.post(f"/v1/models/{d.name}:predict?top_k=2", content=image).json()["classes"]
        assert top2 == body["classes"][:2]
        none = c.post(f"/v1/models/{d.name}:predict?top_k=3&threshold=0.99", content=image).json()["classes"]
        assert none == []


def test_detection_boxes_are_in_original_pixels(servers: Any, samples: dict[str, Sample]) -> None:
    d = samples["det"].descriptor
    image = jpeg(800, 450, seed=5, fmt="PNG")
    tensor, transform = preprocess(image, d.input)
    raw = servers["det"][1].infer({d.input.name: tensor})
    low = d.model_copy(update={"output": d.output.model_copy(update={"score_threshold": 0.05})})
    expected = postprocess(raw, low, [transform])[0]
    assert expected, "the sample detector should find boxes at threshold 0.05"
    with _client(servers, "det") as c:
        r = c.post(f"/v1/models/{d.name}:predict?threshold=0.05", files={"image": ("x.png", image, "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["task"] == "detection"
        assert body["image"] == {"width": 800, "height": 450}
        got = body["detections"]
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert isinstance(e, Detection)
            assert g["class_id"] == e.class_id
            assert g["label"] == e.label
            np.testing.assert_allclose(g["box"], e.box, atol=0.01)
            assert 0 <= g["box"][0] <= g["box"][2] <= 800
            assert 0 <= g["box"][1] <= g["box"][3] <= 450
        capped = c.post(f"/v1/models/{d.name}:predict?threshold=0.05&top_k=2", content=image).json()["detections"]
        assert capped == got[:2]
        strict = c.post(f"/v1/models/{d.name}:predict?threshold=1", content=image).json()["detections"]
        assert strict == []


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"content": b""}, 400, "no image"),
        ({"content": b"\x89PNG\r\n\x1a\n" + b"\0" * 100}, 400, "image"),
        ({"content": b"GIF89a" + b"\0" * 50}, 400, "not a JPEG or PNG"),
        ({"content": jpeg(64, 64)[:200]}, 400, "decode"),
        ({"content": jpeg(256, 256)[:1500]}, 400, "image"),
        ({"content": jpeg(2000, 1100)}, 413, "pixels"),
        ({"content": b"\0" * (2 * 1024 * 1024 + 1)}, 413, "limit"),
        ({"data": {"note": "no file"}}, 400, "not a JPEG or PNG"),
        (
            {
                "content": b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--x--\r\n',
                "headers": {"content-type": "multipart/form-data; boundary=x"},
            },
            400,
            "no file part",
        ),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, ""),
        ({"content": jpeg(32, 32), "params": {"top_k": 0}}, 400, "top_k"),
        ({"content": jpeg(32, 32), "params": {"threshold": "high"}}, 400, "threshold"),
        ({"content": jpeg(32, 32), "params": {"threshold": 1.5}}, 400, "threshold"),
    ],
)
def test_bad_images_and_parameters(servers: Any, kwargs: dict[str, Any], status: int, reason: str) -> None:
    with _client(servers, "clf") as c:
        r = c.post("/v1/models/mobilenet-like:predict", **kwargs)
        assert r.status_code == status, r.text
        assert reason in r.json()["error"]
        assert c.post("/v1/models/mobilenet-like:predict", content=jpeg(48, 48)).status_code == 200


def test_unknown_model_on_the_image_endpoint_is_404(servers: Any) -> None:
    with _client(servers, "clf") as c:
        r = c.post("/v1/models/tiny-detector:predict", content=jpeg(32, 32))
        assert r.status_code == 404
        assert "model 'tiny-detector' is unknown here; serving" in r.json()["error"]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sample]:
    out = tmp_path_factory.mktemp("layouts")
    result = {}
    for layout in ("yolov5", "ssd", "nms"):
        onnx_path, yaml_path = write_model(build_detector(layout), detector_descriptor(layout), out, layout)
        result[layout] = Sample(onnx_path, ModelDescriptor.load(yaml_path))
    return result


@pytest.mark.parametrize("layout", ["yolov5", "ssd", "nms"])
def test_every_detection_layout_answers_in_original_pixels(
    layouts: dict[str, Sample], make_server: Any, layout: str
) -> None:
    sample = layouts[layout]
    d = sample.descriptor
    engine = sample.engine()
    server, repo = make_server()
    repo.activate(engine, sample.applied(), d)
    repo.only()
    image = jpeg(500, 300, seed=2)
    tensor, transform = preprocess(image, d.input)
    expected = postprocess(engine.infer({d.input.name: tensor}), d, [transform])[0]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post(f"/v1/models/{d.name}:predict", content=image)
    assert r.status_code == 200, r.text
    got = r.json()["detections"]
    assert expected, f"the sample {layout} detector finds boxes in this image"
    assert [g["class_id"] for g in got] == [e.class_id for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert isinstance(e, Detection)
        np.testing.assert_allclose(g["box"], e.box, atol=0.01)
