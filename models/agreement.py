"""Shadow agreement: does a candidate version's answer agree with the active version's, one row at a time?

One function per task, the same in every serving mode (HTTP API, headless, cluster pods):

- **classification**: the top-1 class of each row is the same. Classes are compared by label when both
  descriptions name every class (a candidate may reorder its classes), otherwise by class id.
- **detection**: both answers have the same number of boxes and every box of the active answer is matched,
  one to one (greedy, best score first), by a candidate box of the same class with IoU >= 0.5. Two empty
  answers agree. Boxes are compared in the original image's pixels when each answer comes with the
  transforms of its own preprocessing (image requests: each version resized the image its own way), and
  in model-input pixels otherwise (tensor requests: both versions ran on the same tensor).
- **tensors** (undecoded outputs): every output the active version describes has the same shape in the
  candidate's answer, and each element of the row is within the candidate's `atol + rtol * |active|`
  (its description's tolerances). Image requests are compared as they come out of the models: versions
  that preprocess to other sizes answer other shapes and disagree.

Answers of different tasks cannot be compared: `agreement` raises `Incomparable`, which a caller reports
apart from agreement and disagreement. A candidate that answers with a malformed output disagrees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.descriptor import ClassificationOutput, ModelDescriptor, Task, TensorsOutput, task_of
from models.errors import Incomparable, ModelError
from models.postprocess import Detections, decode_detections, iou
from models.preprocess import Transform

Array = npt.NDArray[Any]
MATCH_IOU = 0.5
"""Least IoU for two boxes of the same class to be the same object."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One version's raw outputs for a request, with the description that decodes them.

    `transforms` (one per row) map model-input pixels back to the image the client sent; give them for
    image requests, where each version preprocessed the image itself, and leave them out for tensors.
    """

    outputs: Mapping[str, Array]
    descriptor: ModelDescriptor
    transforms: Sequence[Transform] | None = None


def agreement(active: Answer, candidate: Answer) -> list[bool]:
    """Per row of the request: whether the candidate agrees with the active version.

    Raises:
        Incomparable: the versions do different tasks, or the active answer itself cannot be read.
    """
    task = task_of(active.descriptor.output)
    if task != task_of(candidate.descriptor.output):
        raise Incomparable(
            f"the active version does {active.descriptor.task}, the candidate {candidate.descriptor.task}"
        )
    if task == Task.CLASSIFICATION:
        return classification_agreement(active, candidate)
    if task == Task.TENSORS:
        return tensors_agreement(active, candidate)
    return detection_agreement(active, candidate)


def tensors_agreement(active: Answer, candidate: Answer) -> list[bool]:
    """Per row: each output the active version describes has the same shape in the candidate's answer and
    every element within the candidate's `atol + rtol * |active|` (NaN agrees with NaN).

    Raises:
        Incomparable: an output the active version describes is missing from its answer, has no batch
            axis, or the outputs disagree on the batch size.
    """
    a_spec, c_spec = active.descriptor.output, candidate.descriptor.output
    assert isinstance(a_spec, TensorsOutput)
    assert isinstance(c_spec, TensorsOutput)
    rows: int | None = None
    for t in a_spec.outputs:
        a = active.outputs.get(t.name)
        if a is None or np.ndim(a) == 0:
            raise Incomparable(f"the active answer has no output {t.name!r} with a batch axis")
        if rows is None:
            rows = int(np.shape(a)[0])
        elif int(np.shape(a)[0]) != rows:
            raise Incomparable("the active answer's outputs have different batch sizes")
    n = rows or 0
    agree = np.ones(n, dtype=bool)
    for t in a_spec.outputs:
        a = np.asarray(active.outputs[t.name])
        c = candidate.outputs.get(t.name)
        if c is None or np.shape(c) != a.shape:
            return [False] * n
        close = np.isclose(
            np.asarray(c, dtype=np.float64), a.astype(np.float64), atol=c_spec.atol, rtol=c_spec.rtol, equal_nan=True
        )
        if n:
            agree &= close.reshape(n, -1).all(axis=1)
    return [bool(x) for x in agree]


def _classes(answer: Answer) -> tuple[Array, tuple[str, ...]] | None:
    """Top-1 class ids per row (None: the output is missing or not [batch, classes]) and the labels."""
    spec = answer.descriptor.output
    assert isinstance(spec, ClassificationOutput)
    scores = answer.outputs.get(spec.output)
    if scores is None or np.ndim(scores) != 2 or np.shape(scores)[1] == 0:
        return None
    return np.asarray(scores).argmax(axis=1), answer.descriptor.labels


def classification_agreement(active: Answer, candidate: Answer) -> list[bool]:
    """Per row: the top-1 class is the same (by label where both versions have labels).

    Raises:
        Incomparable: the active answer has no [batch, classes] output.
    """
    a = _classes(active)
    if a is None:
        raise Incomparable("the active version's classification output is missing or not [batch, classes]")
    c = _classes(candidate)
    if c is None or len(c[0]) != len(a[0]):
        return [False] * len(a[0])
    (a_ids, a_labels), (c_ids, c_labels) = a, c
    use_labels = bool(a_labels and c_labels) and int(a_ids.max(initial=0)) < len(a_labels)
    use_labels = use_labels and int(c_ids.max(initial=0)) < len(c_labels)
    if use_labels:
        return [a_labels[int(x)] == c_labels[int(y)] for x, y in zip(a_ids, c_ids, strict=True)]
    return [bool(x == y) for x, y in zip(a_ids, c_ids, strict=True)]


def _decoded(answer: Answer) -> list[Detections]:
    d = answer.descriptor
    spec = d.output
    assert not isinstance(spec, ClassificationOutput | TensorsOutput)
    rows = decode_detections(answer.outputs, spec, d.input)
    if answer.transforms is None:
        return rows
    if len(answer.transforms) != len(rows):
        raise Incomparable(f"{len(answer.transforms)} transforms for {len(rows)} rows")
    return [
        Detections(t.to_original(r.boxes), r.scores, r.classes) for r, t in zip(rows, answer.transforms, strict=True)
    ]


def _class_names(det: Detections, labels: tuple[str, ...]) -> list[object]:
    if labels and (det.classes.size == 0 or (int(det.classes.min()) >= 0 and int(det.classes.max()) < len(labels))):
        return [labels[int(c)] for c in det.classes]
    return [int(c) for c in det.classes]


def detection_agreement(active: Answer, candidate: Answer) -> list[bool]:
    """Per row: the same boxes, matched one to one by class and IoU >= `MATCH_IOU`.

    Raises:
        Incomparable: the active answer does not decode, or only one answer maps back to the image.
    """
    if (active.transforms is None) != (candidate.transforms is None):
        raise Incomparable("boxes of one answer are in image pixels, the other's in model-input pixels")
    try:
        da = _decoded(active)
    except ModelError as e:
        raise Incomparable(f"the active answer does not decode: {e}") from e
    try:
        dc = _decoded(candidate)
    except ModelError:
        return [False] * len(da)
    if len(dc) != len(da):
        return [False] * len(da)
    a_labels, c_labels = active.descriptor.labels, candidate.descriptor.labels
    by_label = bool(a_labels and c_labels)
    out = []
    for x, y in zip(da, dc, strict=True):
        if by_label:
            ax, cy = _class_names(x, a_labels), _class_names(y, c_labels)
            if all(isinstance(v, str) for v in ax + cy):
                out.append(detections_match(x, y, a_keys=ax, b_keys=cy))
                continue
        out.append(detections_match(x, y))
    return out


def detections_match(
    a: Detections,
    b: Detections,
    iou_threshold: float = MATCH_IOU,
    *,
    a_keys: Sequence[object] | None = None,
    b_keys: Sequence[object] | None = None,
) -> bool:
    """True when both have as many boxes and each box of `a` has its own same-class match in `b`.

    `a_keys`/`b_keys` (optional) name each box's class (labels); by default the class ids are compared.
    """
    if len(a.scores) != len(b.scores):
        return False
    ka = np.asarray(a.classes if a_keys is None else list(a_keys), dtype=object)
    kb = np.asarray(b.classes if b_keys is None else list(b_keys), dtype=object)
    free = np.ones(len(b.scores), dtype=bool)
    for i in np.argsort(-a.scores, kind="stable"):
        cand = np.flatnonzero(free & (kb == ka[i]))
        if cand.size == 0:
            return False
        overlaps = iou(a.boxes[i], b.boxes[cand])
        best = int(overlaps.argmax())
        if overlaps[best] < iou_threshold:
            return False
        free[cand[best]] = False
    return True
