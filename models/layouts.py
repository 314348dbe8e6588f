"""Does a model's concrete output fit the decoder its description names? And if not, which kind would?

The graph signature can leave axes symbolic (a YOLO export with a dynamic input size has a symbolic
anchor axis), so `validate` also checks the outputs of the golden run, whose shapes are concrete:
per decoder kind, the rank, the box/class axes against the label count, the anchor axis against the
channel axis, and values where the decoder reads probabilities. A refusal names the likely right kind
(`guess_kind`), so "a YOLOv8 [1, 84, 8400] described as yolov5" says "looks like kind: yolov8".
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from models.descriptor import (
    ClassificationOutput,
    ModelDescriptor,
    NmsOutput,
    SsdOutput,
    TensorsOutput,
    YoloV5Output,
    YoloV8Output,
)
from models.errors import OutputMismatch

Array = npt.NDArray[np.generic]
PROBABILITY_SLACK = 1e-3
"""How far outside [0, 1] a probability may stray (float rounding of a sigmoid or softmax)."""


def check_outputs(d: ModelDescriptor, outputs: Mapping[str, Array], batch: int = 1) -> None:
    """Raise OutputMismatch unless `outputs` (of a run on `batch` images) fit the description's decoder."""
    o = d.output
    n = len(d.labels)

    def get(name: str) -> npt.NDArray[np.float64]:
        if name not in outputs:
            raise OutputMismatch(f"the model has no output {name!r}; its outputs are {sorted(outputs)}")
        a = np.asarray(outputs[name], dtype=np.float64)
        if a.ndim == 0 or a.shape[0] != batch:
            raise OutputMismatch(f"output {name!r} is {list(a.shape)} for a batch of {batch}: no batch axis first")
        return a

    def refuse(name: str, problem: str) -> OutputMismatch:
        shape = list(np.asarray(outputs[name]).shape) if name in outputs else "missing"
        guess = None if isinstance(o, TensorsOutput) else guess_kind(outputs, n)
        hint = f"; it looks like {guess}" if guess and not guess.startswith(f"kind: {o.kind} ") else ""
        if guess is None and not isinstance(o, TensorsOutput):
            hint = "; if no decoder reads it, describe it as kind: tensors and decode it yourself (docs/models.md)"
        return OutputMismatch(f"output {name!r} is {shape} on the golden input; kind: {o.kind} {problem}{hint}")

    if isinstance(o, ClassificationOutput):
        a = get(o.output)
        if a.ndim != 2:
            raise refuse(o.output, "needs [batch, classes]")
        if n and a.shape[1] != n:
            raise refuse(o.output, f"reads {a.shape[1]} classes, but there are {n} labels")
        if o.scores == "probabilities" and not _probabilities(a):
            raise refuse(o.output, f"says probabilities, but values span {_span(a)}: set scores: logits")
        if o.scores == "logits" and a.shape[1] > 1 and _probabilities(a) and np.allclose(a.sum(axis=1), 1, atol=1e-3):
            raise refuse(o.output, "says logits, but every row is in [0, 1] and sums to 1: set scores: probabilities")
    elif isinstance(o, YoloV5Output | YoloV8Output):
        a = get(o.output)
        if a.ndim != 3:
            raise refuse(
                o.output,
                f"needs 3 dims, [batch, {'boxes, 5 + classes' if o.kind == 'yolov5' else '4 + classes, boxes'}]",
            )
        v5 = isinstance(o, YoloV5Output)
        boxes, channels = (a.shape[1], a.shape[2]) if v5 else (a.shape[2], a.shape[1])
        head = 5 if v5 else 4
        reading = f"reads it as {boxes} boxes of {head} + {channels - head} classes"
        if n and channels != head + n:
            raise refuse(o.output, f"{reading}, but there are {n} labels ({head + n} channels)")
        if channels <= head:
            raise refuse(o.output, f"{reading}: no class scores")
        if boxes < channels:
            raise refuse(o.output, f"{reading}: fewer boxes than channels, so the axes are the other way round")
        scores = a[:, :, 4:] if v5 else a[:, 4:, :]
        if not _probabilities(scores):
            raise refuse(o.output, f"{reading}, but its scores span {_span(scores)}, not probabilities in [0, 1]")
    elif isinstance(o, SsdOutput):
        b, s = get(o.boxes), get(o.scores)
        if b.ndim != 3 or b.shape[2] != 4:
            raise refuse(o.boxes, "needs boxes [batch, boxes, 4]")
        if s.ndim != 3 or s.shape[1] != b.shape[1]:
            raise refuse(o.scores, f"needs scores [batch, {b.shape[1]} boxes, classes] beside the boxes")
        if n and s.shape[2] != n:
            raise refuse(o.scores, f"reads {s.shape[2]} classes, but there are {n} labels")
        if o.activation == "none" and not _probabilities(s):
            raise refuse(o.scores, f"says activation: none, but scores span {_span(s)}: set sigmoid or softmax")
    elif isinstance(o, NmsOutput):
        b, lab, s = get(o.boxes), get(o.labels), get(o.scores)
        if b.ndim != 3 or b.shape[2] != 4:
            raise refuse(o.boxes, "needs boxes [batch, N, 4]")
        if lab.shape != b.shape[:2] or s.shape != b.shape[:2]:
            raise refuse(o.labels, f"needs labels and scores [batch, N] beside boxes {list(b.shape)}")
        kept = s >= o.score_threshold
        if not _probabilities(s[kept]):
            raise refuse(o.scores, f"scores span {_span(s[kept])}, not probabilities in [0, 1]")
        ids = lab[kept]
        if ids.size and (np.any(ids != np.round(ids)) or ids.min() < 0 or (n and ids.max() >= n)):
            raise refuse(o.labels, f"class ids span {_span(ids)}, outside the {n} labels")
    elif isinstance(o, TensorsOutput):
        for t in o.outputs:
            a = get(t.name)
            if t.rank is not None and a.ndim != t.rank:
                raise refuse(t.name, f"describes it with rank {t.rank}")
            got = np.asarray(outputs[t.name]).dtype.name
            if t.dtype is not None and got != t.dtype:
                raise refuse(t.name, f"describes it as {t.dtype}, but it is {got}")


def guess_kind(outputs: Mapping[str, Array], n_labels: int = 0) -> str | None:
    """The decoder kind these outputs look like, with the reading (e.g. "kind: yolov8 ([batch, 4 + 80 ...])").

    None when nothing fits. Uses only shapes (and the label count when there are labels).
    """
    shapes = {k: tuple(np.asarray(v).shape) for k, v in outputs.items()}
    three = [k for k, s in shapes.items() if len(s) == 3]
    if len(shapes) == 1:
        s, n = next(iter(shapes.values())), n_labels
        if len(s) == 2:
            return f"kind: classification ([batch, {s[1]} classes])"
        if len(s) != 3:
            return None
        x, y = s[1], s[2]
        if (n and x == 4 + n and y > x) or (not n and 4 < x < y):
            return f"kind: yolov8 ([batch, 4 + {x - 4} classes, {y} boxes])"
        if (n and y == 5 + n and x > y) or (not n and 5 < y < x):
            return f"kind: yolov5 ([batch, {x} boxes, 5 + {y - 5} classes])"
        if n and y == 4 + n and x > y:
            return (
                f"YOLOv8 transposed to [batch, {x} boxes, 4 + {n} classes], which no decoder reads: export "
                "without the transpose (or add a Transpose to [batch, 4 + classes, boxes]) and use kind: yolov8"
            )
        return None
    boxes = [k for k in three if shapes[k][2] == 4]
    if len(shapes) == 2 and len(boxes) == 1 and len(three) == 2:
        other = next(k for k in three if k != boxes[0])
        if shapes[other][1] == shapes[boxes[0]][1]:
            return f"kind: ssd (boxes: {boxes[0]}, scores: {other})"
    if len(shapes) == 3 and len(boxes) == 1 and sum(len(s) == 2 for s in shapes.values()) == 2:
        return f"kind: nms (boxes: {boxes[0]}; labels and scores are the two [batch, N] outputs)"
    return None


def _probabilities(a: npt.NDArray[np.float64]) -> bool:
    return bool(
        a.size == 0 or (np.all(np.isfinite(a)) and a.min() >= -PROBABILITY_SLACK and a.max() <= 1 + PROBABILITY_SLACK)
    )


def _span(a: npt.NDArray[np.float64]) -> str:
    if a.size == 0:
        return "nothing"
    return f"[{float(np.nanmin(a)):.4g}, {float(np.nanmax(a)):.4g}]"
