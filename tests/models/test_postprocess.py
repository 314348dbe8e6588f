"""Decoding: each detection layout against an independent reference decoding written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.descriptor import ClassificationOutput, ModelDescriptor, TensorsOutput
from models.engine import Engine, EngineOptions
from models.golden import golden_input
from models.postprocess import Detection, batched_nms, decode_detections, postprocess, top_k
from models.preprocess import preprocess
from tests.models.conftest import Sample, encode, scene
from tests.support.fuzz import examples

Ref = list[tuple[float, int, tuple[float, float, float, float]]]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _ref_nms(cands: Ref, iou_thr: float, max_det: int, per_class: bool = True) -> Ref:
    order = sorted(range(len(cands)), key=lambda i: (-cands[i][0], i))
    kept: Ref = []
    for i in order:
        s, c, box = cands[i]
        if all((per_class and k[1] != c) or _iou(box, k[2]) <= iou_thr for k in kept):
            kept.append((s, c, box))
        if len(kept) == max_det:
            break
    return kept


def _argmax(values: list[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def reference_decode(outputs: dict[str, np.ndarray], d: ModelDescriptor, item: int) -> Ref:
    """Plain-Python decoding of one image, written from the layout definitions, not from our code."""
    spec = d.output
    assert not isinstance(spec, ClassificationOutput | TensorsOutput), "a detector's description"
    thr, w_in, h_in = spec.score_threshold, d.input.width, d.input.height
    cands: Ref = []
    if spec.kind in ("yolov8", "yolov5"):
        t = outputs["output0"][item].tolist()
        rows = list(zip(*t, strict=True)) if spec.kind == "yolov8" else t
        for row in rows:
            cx, cy, w, h = row[:4]
            if spec.kind == "yolov8":
                c = _argmax(list(row[4:]))
                s = row[4 + c]
            else:
                c = _argmax(list(row[5:]))
                s = row[4] * row[5 + c]
            if s >= thr:
                cands.append((s, c, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)))
        return _ref_nms(cands, spec.iou_threshold, spec.max_detections)
    if spec.kind == "ssd":
        for box, logits in zip(outputs["boxes"][item].tolist(), outputs["scores"][item].tolist(), strict=True):
            m = max(logits)
            exps = [math.exp(v - m) for v in logits]
            probs = [e / sum(exps) for e in exps]
            c = 1 + _argmax(probs[1:])  # column 0 is background
            if probs[c] >= thr:
                x1, y1, x2, y2 = box
                cands.append((probs[c], c, (x1 * w_in, y1 * h_in, x2 * w_in, y2 * h_in)))
        return _ref_nms(cands, spec.iou_threshold, spec.max_detections)
    for box, label, score in zip(
        outputs["det_boxes"][item].tolist(),
        outputs["det_labels"][item].tolist(),
        outputs["det_scores"][item].tolist(),
        strict=True,
    ):
        if score >= thr:
            cands.append((score, label, tuple(box)))
    return sorted(cands, key=lambda x: -x[0])[: spec.max_detections]


@pytest.mark.parametrize("layout", ["yolov8", "yolov5", "ssd", "nms"])
def test_layout_matches_reference(layout_models: dict[str, Sample], layout: str) -> None:
    sample = layout_models[layout]
    d = sample.descriptor
    engine = Engine.load(sample.path, d, EngineOptions(warmup_runs=0))
    seeds = [7] if engine.max_batch == 1 else [7, 11]
    images = [golden_input(d.input, s) for s in seeds]
    images.append(preprocess(encode(scene(240, 400)), d.input)[0])
    found = 0
    for x in images:
        out = engine.infer({"images": x})
        ours = decode_detections(out, d.output, d.input)  # type: ignore[arg-type]
        ref = reference_decode(out, d, 0)
        assert len(ours[0].scores) == len(ref)
        found += len(ref)
        for i, (s, c, box) in enumerate(ref):
            assert ours[0].classes[i] == c
            assert ours[0].scores[i] == pytest.approx(s, rel=1e-5, abs=1e-6)
            assert np.allclose(ours[0].boxes[i], box, atol=1e-3)
    assert found > 0
    if engine.max_batch is None:  # a batch of 2 decodes each image like alone
        out = engine.infer({"images": np.concatenate(images[:2])})
        both = decode_detections(out, d.output, d.input)  # type: ignore[arg-type]
        assert len(both) == 2
        assert len(both[1].scores) == len(reference_decode(out, d, 1))


def test_postprocess_maps_boxes_to_original(layout_models: dict[str, Sample]) -> None:
    sample = layout_models["yolov8"]
    d = sample.descriptor
    engine = Engine.load(sample.path, d, EngineOptions(warmup_runs=0))
    x, t = preprocess(encode(scene(240, 400, seed=3)), d.input)
    out = engine.infer({"images": x})
    dets = postprocess(out, d, [t])[0]
    raw = decode_detections(out, d.output, d.input)[0]  # type: ignore[arg-type]
    assert len(dets) == len(raw.scores)
    for det, box in zip(dets, raw.boxes, strict=True):
        assert isinstance(det, Detection)
        assert det.label == d.labels[det.class_id]
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 <= x2 <= 400
        assert 0 <= y1 <= y2 <= 240
        exp = np.clip((box - [0, t.pad_y, 0, t.pad_y]) / t.scale_x, 0, [400, 240, 400, 240])
        assert np.allclose(det.box, exp, atol=1e-3)


def test_top_k_matches_sort() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 50)).astype(np.float32)
    res = top_k(logits, 5, labels=[f"l{i}" for i in range(50)])
    for row, classes in zip(logits, res, strict=True):
        assert [c.class_id for c in classes] == list(np.argsort(-row)[:5])
        assert classes[0].label == f"l{classes[0].class_id}"
        p = np.exp(row - row.max())
        assert classes[0].score == pytest.approx(float(p.max() / p.sum()), rel=1e-5)
    probs = top_k(np.array([[0.1, 0.7, 0.2]]), 10, logits=False)
    assert [(c.class_id, c.label) for c in probs[0]] == [(1, None), (2, None), (0, None)]


def test_classifier_postprocess(classifier: Sample, classifier_engine: Engine) -> None:
    d = classifier.descriptor
    x, t = preprocess(encode(scene(120, 90)), d.input)
    res = postprocess(classifier_engine.infer({"image": x}), d, [t])
    assert len(res[0]) == 5
    assert isinstance(d.output, ClassificationOutput)


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 40), st.floats(0.1, 0.9))
def test_batched_nms_matches_reference(seed: int, n: int, iou_thr: float) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(1, 40, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    classes = rng.integers(0, 3, n)
    keep = batched_nms(boxes, scores, classes, iou_thr, 100)
    cands = [(float(s), int(c), tuple(map(float, b))) for s, c, b in zip(scores, classes, boxes, strict=True)]
    ref = _ref_nms(cands, iou_thr, 100)  # type: ignore[arg-type]
    assert [(float(scores[i]), int(classes[i])) for i in keep] == [(s, c) for s, c, _ in ref]
