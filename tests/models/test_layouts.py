"""A description whose decoder does not fit the model's concrete outputs is refused, naming the likely kind.

Unit cases per decoder kind on plain arrays, then the case from issue 17 end to end with a real model:
NudeNet's YOLOv8 (symbolic anchor axis, so the graph signature cannot tell) described as `kind: yolov5` is
refused by `edgefleet model validate` and by a push to a running hub, and nothing is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet_cli import app as edgefleet
from models.descriptor import ModelDescriptor
from models.errors import OutputMismatch, SignatureMismatch
from models.layouts import check_outputs, guess_kind
from models.samples import classifier_descriptor, detector_descriptor
from models.validate import validate
from tests.models.wheels import pinned, wheel
from tests.support.hub import RunningHub, running_hub  # noqa: F401

RNG = np.random.default_rng(0)
NUDENET_YAML = Path(__file__).parent / "parity" / "nudenet-320n.yaml"


def _probs(*shape: int) -> np.ndarray:
    return RNG.random(shape).astype(np.float32)


def _with(d: ModelDescriptor, labels: int | None = None, **output: Any) -> ModelDescriptor:
    update: dict[str, Any] = {"output": d.output.model_copy(update=output)}
    if labels is not None:
        update["labels"] = tuple(f"c{i}" for i in range(labels))
    return d.model_copy(update=update)


def _refused(d: ModelDescriptor, outputs: dict[str, np.ndarray]) -> str:
    with pytest.raises(OutputMismatch) as e:
        check_outputs(d, outputs)
    assert isinstance(e.value, SignatureMismatch)  # callers that catch signature errors catch this too
    return str(e.value)


def test_yolov8_described_as_yolov5_names_yolov8() -> None:
    v5 = _with(detector_descriptor("yolov5"), labels=18, kind="yolov5")
    msg = _refused(v5, {"output0": _probs(1, 22, 2100)})
    assert "kind: yolov5 reads it as 22 boxes of 5 + 2095 classes, but there are 18 labels" in msg
    assert "looks like kind: yolov8 ([batch, 4 + 18 classes, 2100 boxes])" in msg
    no_labels = v5.model_copy(update={"labels": ()})
    assert "looks like kind: yolov8" in _refused(no_labels, {"output0": _probs(1, 84, 8400)})


def test_yolov5_described_as_yolov8_names_yolov5() -> None:
    v8 = _with(detector_descriptor("yolov8"), labels=80)
    d = v8.model_copy(update={"output": v8.output.model_copy(update={"output": "output"})})
    msg = _refused(d, {"output": _probs(1, 25200, 85)})
    assert "looks like kind: yolov5 ([batch, 25200 boxes, 5 + 80 classes])" in msg


def test_transposed_yolov8_is_named_as_such() -> None:
    v5 = _with(detector_descriptor("yolov5"), labels=80)
    msg = _refused(v5, {"output0": _probs(1, 8400, 84)})
    assert "YOLOv8 transposed" in msg


def test_yolo_scores_must_be_probabilities() -> None:
    v8 = _with(detector_descriptor("yolov8"), labels=8)
    ok = _probs(1, 12, 500)
    check_outputs(v8, {"output0": ok})
    logits = ok.copy()
    logits[0, 6, 7] = 19508.17  # the answer issue 17 saw from a misdescribed model
    assert "not probabilities" in _refused(v8, {"output0": logits})


def test_classification_checks() -> None:
    d = classifier_descriptor()  # 100 labels, logits
    check_outputs(d, {"logits": RNG.normal(size=(1, 100)).astype(np.float32)})
    assert "100 labels" in _refused(d, {"logits": _probs(1, 10)})
    softmaxed = np.full((1, 100), 0.01, dtype=np.float32)
    assert "set scores: probabilities" in _refused(d, {"logits": softmaxed})
    probs = _with(d, scores="probabilities")
    assert "set scores: logits" in _refused(probs, {"logits": RNG.normal(size=(1, 100)) * 5})
    assert "looks like kind: yolov8" in _refused(_with(d, labels=80), {"logits": _probs(1, 84, 8400)})


def test_ssd_and_nms_checks() -> None:
    ssd = detector_descriptor("ssd")
    n = len(ssd.labels)
    ok = {"boxes": _probs(1, 500, 4), "scores": RNG.normal(size=(1, 500, n)).astype(np.float32)}
    check_outputs(ssd, ok)
    assert "labels" in _refused(ssd, {**ok, "scores": _probs(1, 500, n + 3)})
    raw = _with(ssd, activation="none")
    assert "set sigmoid or softmax" in _refused(raw, ok)
    assert guess_kind(ok, n) == "kind: ssd (boxes: boxes, scores: scores)"

    nms = detector_descriptor("nms")
    n = len(nms.labels)
    good = {"det_boxes": _probs(1, 10, 4), "det_labels": RNG.integers(0, n, (1, 10)), "det_scores": _probs(1, 10)}
    check_outputs(nms, good)
    assert "outside the" in _refused(nms, {**good, "det_labels": np.full((1, 10), n + 5)})
    assert (kind := guess_kind(good, n)) is not None and kind.startswith("kind: nms")


def test_the_sample_models_of_every_kind_still_validate(layout_models: dict[str, Any]) -> None:
    for sample in layout_models.values():
        assert validate(sample.path, sample.descriptor).golden_matched


# --- the real case, at `edgefleet model validate` and at push ----------------------------------------


@pytest.fixture(scope="module")
def nudenet_onnx() -> Path:
    root = wheel("nudenet", "3.4.2")
    return pinned(root / "nudenet" / "320n.onnx", "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f")


def _as_yolov5(tmp_path: Path) -> Path:
    wrong = tmp_path / "nudenet-as-yolov5.yaml"
    wrong.write_text(NUDENET_YAML.read_text().replace("kind: yolov8", "kind: yolov5"))
    return wrong


def test_edgefleet_model_validate_refuses_the_wrong_kind(nudenet_onnx: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(edgefleet, ["model", "validate", str(nudenet_onnx), "--descriptor", str(_as_yolov5(tmp_path))])
    assert res.exit_code == 1, res.output
    assert "OutputMismatch" in res.output and "looks like kind: yolov8" in res.output
    res = runner.invoke(edgefleet, ["model", "validate", str(nudenet_onnx), "--descriptor", str(NUDENET_YAML)])
    assert res.exit_code == 0, res.output


def test_push_refuses_the_wrong_kind_and_stores_nothing(
    running_hub: RunningHub,  # noqa: F811
    nudenet_onnx: Path,
    tmp_path: Path,
) -> None:
    r = running_hub.push_model(nudenet_onnx, _as_yolov5(tmp_path))
    assert r.status_code == 400, r.text
    assert "looks like kind: yolov8" in r.json()["error"]["message"]
    assert running_hub.hub.store.list_model_versions() == []
    r = running_hub.push_model(nudenet_onnx, NUDENET_YAML)
    assert r.status_code in (200, 201), r.text
