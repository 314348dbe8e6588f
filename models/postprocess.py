"""Model outputs -> top-k classes or boxes in original image pixels. numpy only, vectorised.

Detection layouts (see descriptor): YOLOv5 [B, N, 5+C] with objectness, YOLOv8/YOLO11 [B, 4+C, N],
SSD separate boxes [B, N, 4] and scores [B, N, C], and graphs with NMS inside (boxes, labels, scores).
Decoding yields boxes as x1,y1,x2,y2 in model-input pixels; `Transform.to_original` maps them back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.descriptor import (
    BoxFormat,
    ClassificationOutput,
    DetectionOutput,
    InputSpec,
    ModelDescriptor,
    NmsOutput,
    SsdOutput,
    TensorsOutput,
    YoloV5Output,
    YoloV8Output,
)
from models.errors import InvalidInput
from models.preprocess import Transform

Array = npt.NDArray[np.generic]
FloatArray = npt.NDArray[np.float32]

MAX_NMS_CANDIDATES = 30_000
"""Boxes above the score threshold beyond this many (best first) are dropped before NMS (as YOLOv5)."""


@dataclass(frozen=True, slots=True)
class Classification:
    """One class of a top-k answer."""

    class_id: int
    label: str | None
    score: float


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object; box is x1, y1, x2, y2 in original image pixels."""

    box: tuple[float, float, float, float]
    class_id: int
    label: str | None
    score: float


@dataclass(frozen=True, slots=True)
class Detections:
    """Detections of one image as arrays: boxes [K, 4] xyxy, scores [K], class ids [K]."""

    boxes: FloatArray
    scores: FloatArray
    classes: npt.NDArray[np.int64]

    def to_list(self, labels: Sequence[str] = ()) -> list[Detection]:
        """As Detection objects, best score first."""
        out = []
        for box, score, cls in zip(self.boxes.tolist(), self.scores.tolist(), self.classes.tolist(), strict=True):
            label = labels[cls] if 0 <= cls < len(labels) else None
            out.append(Detection((box[0], box[1], box[2], box[3]), int(cls), label, float(score)))
        return out


# --- classification ----------------------------------------------------------------------------------


def softmax(x: Array, axis: int = -1) -> FloatArray:
    """Numerically stable softmax in float32."""
    z = np.asarray(x, dtype=np.float32)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=axis, keepdims=True), dtype=np.float32)


def top_k(scores: Array, k: int, *, logits: bool = True, labels: Sequence[str] = ()) -> list[list[Classification]]:
    """Top-k classes per row of a [batch, classes] tensor, best first (ties: lower class id first)."""
    s = np.asarray(scores)
    if s.ndim != 2:
        raise InvalidInput(f"classification output must be [batch, classes], got shape {s.shape}")
    p = softmax(s) if logits else s.astype(np.float32, copy=False)
    k = min(k, p.shape[1])
    part = np.argpartition(-p, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(p, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    top = np.take_along_axis(p, idx, axis=1)
    return [
        [
            Classification(int(c), labels[c] if c < len(labels) else None, float(v))
            for c, v in zip(row_i.tolist(), row_v.tolist(), strict=True)
        ]
        for row_i, row_v in zip(idx, top, strict=True)
    ]


# --- boxes and NMS -----------------------------------------------------------------------------------


def to_xyxy(boxes: Array, fmt: BoxFormat) -> FloatArray:
    """Convert [..., 4] boxes of `fmt` to x1, y1, x2, y2 (float32)."""
    b = np.asarray(boxes, dtype=np.float32)
    if fmt == BoxFormat.XYXY:
        return b
    if fmt == BoxFormat.YXYX:
        return np.ascontiguousarray(b[..., [1, 0, 3, 2]])
    half = b[..., 2:4] * 0.5
    return np.concatenate([b[..., 0:2] - half, b[..., 0:2] + half], axis=-1)


def iou(box: FloatArray, boxes: FloatArray) -> FloatArray:
    """IoU of one xyxy box against [N, 4] xyxy boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float, max_out: int) -> npt.NDArray[np.int64]:
    """Greedy NMS over xyxy boxes; indices kept, best score first (stable for equal scores)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_out:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: FloatArray, scores: FloatArray, classes: npt.NDArray[np.int64], iou_threshold: float, max_out: int
) -> npt.NDArray[np.int64]:
    """Per-class NMS in one pass: boxes of different classes are shifted apart so they never overlap."""
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    span = float(np.abs(boxes).max()) * 2.0 + 1.0
    shifted = boxes + (classes.astype(np.float32) * span)[:, None]
    return nms(shifted, scores, iou_threshold, max_out)


# --- detection decoding ------------------------------------------------------------------------------


def _candidates(spec: DetectionOutput, batch: int, outputs: Mapping[str, Array]) -> list[tuple[Array, ...]]:
    """Per image: (boxes [N, 4] raw format, scores [N], classes [N]) before threshold and NMS."""

    def get(name: str, ndim: int) -> Array:
        if name not in outputs:
            raise InvalidInput(f"model output {name!r} is missing; outputs are {sorted(outputs)}")
        a = np.asarray(outputs[name])
        if a.ndim != ndim:
            raise InvalidInput(f"output {name!r} has {a.ndim} dims; layout {spec.kind} needs {ndim}")
        return a

    res: list[tuple[Array, ...]] = []
    if isinstance(spec, YoloV5Output):
        t = get(spec.output, 3).astype(np.float32, copy=False)
        cls = t[..., 5:]
        classes = cls.argmax(-1)
        scores = t[..., 4] * np.take_along_axis(cls, classes[..., None], -1)[..., 0]
        res = [(t[i, :, :4], scores[i], classes[i]) for i in range(t.shape[0])]
    elif isinstance(spec, YoloV8Output):
        t = get(spec.output, 3).astype(np.float32, copy=False)
        cls = t[:, 4:, :]
        classes = cls.argmax(1)
        scores = np.take_along_axis(cls, classes[:, None, :], 1)[:, 0, :]
        res = [(t[i, :4, :].T, scores[i], classes[i]) for i in range(t.shape[0])]
    elif isinstance(spec, SsdOutput):
        b = get(spec.boxes, 3)
        s = get(spec.scores, 3).astype(np.float32)
        if spec.activation == "sigmoid":
            s = np.asarray(1.0 / (1.0 + np.exp(-s)), dtype=np.float32)
        elif spec.activation == "softmax":
            s = softmax(s)
        if spec.background_class is not None:
            s = s.copy()
            s[..., spec.background_class] = -np.inf
        classes = s.argmax(-1)
        scores = np.take_along_axis(s, classes[..., None], -1)[..., 0]
        res = [(b[i], scores[i], classes[i]) for i in range(b.shape[0])]
    else:
        b = get(spec.boxes, 3)
        lab = get(spec.labels, 2)
        sc = get(spec.scores, 2)
        res = [(b[i], sc[i], lab[i]) for i in range(b.shape[0])]
    if len(res) != batch:
        raise InvalidInput(f"detection output has batch {len(res)}, expected {batch}")
    return res


def decode_detections(outputs: Mapping[str, Array], spec: DetectionOutput, input_spec: InputSpec) -> list[Detections]:
    """Decode raw detector outputs into per-image detections in model-input pixels (xyxy).

    Threshold on score, then (unless the graph already ran NMS) per-class or class-agnostic NMS,
    keeping at most `max_detections` per image.
    """
    if not outputs:
        raise InvalidInput("no model outputs to decode")
    first = np.asarray(next(iter(outputs.values())))
    if first.ndim == 0:
        raise InvalidInput("model outputs have no batch axis")
    batch = int(first.shape[0])
    wh = np.array([input_spec.width, input_spec.height] * 2, dtype=np.float32)
    result = []
    for raw_boxes, raw_scores, raw_classes in _candidates(spec, batch, outputs):
        scores = np.asarray(raw_scores, dtype=np.float32)
        mask = scores >= spec.score_threshold
        idx = np.flatnonzero(mask)
        if idx.size > MAX_NMS_CANDIDATES:
            idx = idx[np.argsort(-scores[idx], kind="stable")[:MAX_NMS_CANDIDATES]]
        boxes = to_xyxy(np.asarray(raw_boxes)[idx], spec.box_format)
        if spec.normalized:
            boxes = np.asarray(boxes * wh, dtype=np.float32)
        sc = scores[idx]
        cl = np.asarray(raw_classes)[idx].astype(np.int64)
        if isinstance(spec, NmsOutput):
            keep = np.argsort(-sc, kind="stable")[: spec.max_detections]
        elif spec.class_agnostic:
            keep = nms(boxes, sc, spec.iou_threshold, spec.max_detections)
        else:
            keep = batched_nms(boxes, sc, cl, spec.iou_threshold, spec.max_detections)
        result.append(Detections(np.ascontiguousarray(boxes[keep], dtype=np.float32), sc[keep], cl[keep]))
    return result


def postprocess(
    outputs: Mapping[str, Array], descriptor: ModelDescriptor, transforms: Sequence[Transform]
) -> list[list[Classification]] | list[list[Detection]]:
    """Outputs of a batch -> per image top-k classes, or detections in original image pixels."""
    spec = descriptor.output
    if isinstance(spec, ClassificationOutput):
        if spec.output not in outputs:
            raise InvalidInput(f"model output {spec.output!r} is missing; outputs are {sorted(outputs)}")
        return top_k(outputs[spec.output], spec.top_k, logits=spec.scores == "logits", labels=descriptor.labels)
    if isinstance(spec, TensorsOutput):
        raise InvalidInput("output kind 'tensors' is not decoded: read the raw outputs (v2 tensor API)")
    decoded = decode_detections(outputs, spec, descriptor.input)
    if len(transforms) != len(decoded):
        raise InvalidInput(f"{len(transforms)} transforms for a batch of {len(decoded)} images")
    return [
        Detections(t.to_original(d.boxes), d.scores, d.classes).to_list(descriptor.labels)
        for d, t in zip(decoded, transforms, strict=True)
    ]
