"""Shadow agreement by task: top-1 for classification, boxes matched by class and IoU for detection, every
element within tolerance for raw tensors."""

from __future__ import annotations

import numpy as np
import pytest

from models.agreement import Answer, agreement, detections_match
from models.descriptor import ModelDescriptor, NmsOutput, Task, TensorsOutput, TensorSpec
from models.errors import Incomparable
from models.postprocess import Detections
from models.preprocess import Transform
from models.samples import classifier_descriptor, detector_descriptor

CLF = classifier_descriptor(num_classes=4, height=32, width=32)


def _logits(*top: int, classes: int = 4) -> np.ndarray:
    x = np.zeros((len(top), classes), np.float32)
    x[np.arange(len(top)), list(top)] = 5.0
    return x


def test_classification_compares_top1_per_row() -> None:
    a = Answer({"logits": _logits(0, 1, 2)}, CLF)
    assert agreement(a, Answer({"logits": _logits(0, 3, 2)}, CLF)) == [True, False, True]


def test_classification_compares_labels_when_the_candidate_reorders_its_classes() -> None:
    reordered = CLF.model_copy(update={"labels": tuple(reversed(CLF.labels))})
    a = Answer({"logits": _logits(0, 1)}, CLF)
    # the candidate's class 3 is called what the active's class 0 is called: the same answer
    assert agreement(a, Answer({"logits": _logits(3, 1)}, reordered)) == [True, False]
    unlabelled = CLF.model_copy(update={"labels": ()})
    assert agreement(a, Answer({"logits": _logits(3, 1)}, unlabelled)) == [False, True]  # ids, then


def test_a_malformed_candidate_answer_disagrees_and_another_task_is_incomparable() -> None:
    a = Answer({"logits": _logits(0, 1)}, CLF)
    assert agreement(a, Answer({"other": _logits(0, 1)}, CLF)) == [False, False]
    assert agreement(a, Answer({"logits": _logits(0)}, CLF)) == [False, False]
    with pytest.raises(Incomparable, match="classification"):
        agreement(a, Answer({}, detector_descriptor("nms")))
    with pytest.raises(Incomparable):
        agreement(Answer({"other": _logits(0)}, CLF), a)


def _nms_answer(
    boxes: list[list[float]], classes: list[int], size: int = 320, transforms: list[Transform] | None = None
) -> Answer:
    d = detector_descriptor("nms", size=(size, size))
    spec = d.output
    assert isinstance(spec, NmsOutput)
    n = len(boxes)
    outputs: dict[str, np.ndarray] = {
        spec.boxes: np.asarray(boxes, np.float32).reshape(1, n, 4),
        spec.labels: np.asarray(classes, np.int64).reshape(1, n),
        spec.scores: np.linspace(0.9, 0.6, n, dtype=np.float32).reshape(1, n),
    }
    return Answer(outputs, d, transforms)


def test_detection_compares_boxes_in_image_pixels_when_each_version_resized_its_own_way() -> None:
    # a 640x640 image: the active model saw it at 320 (scale 0.5), the candidate at 416 (scale 0.65)
    t320 = Transform(640, 640, 0.5, 0.5, 0.0, 0.0)
    t416 = Transform(640, 640, 0.65, 0.65, 0.0, 0.0)
    a = _nms_answer([[50, 50, 100, 100]], [2], 320, [t320])
    same_object = _nms_answer([[65, 65, 130, 130]], [2], 416, [t416])
    assert agreement(a, same_object) == [True]
    # in model-input pixels those boxes are far apart: without transforms they would not match
    assert agreement(_nms_answer([[50, 50, 100, 100]], [2]), _nms_answer([[65, 65, 130, 130]], [2])) == [False]
    with pytest.raises(Incomparable, match="pixels"):
        agreement(a, _nms_answer([[65, 65, 130, 130]], [2], 416))


def test_detections_match_rules() -> None:
    def d(boxes: list[list[float]], classes: list[int]) -> Detections:
        return Detections(
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.linspace(0.9, 0.5, len(boxes)).astype(np.float32),
            np.asarray(classes, np.int64),
        )

    a = d([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2])
    assert detections_match(a, d([[21, 21, 41, 41], [1, 1, 10, 10]], [2, 1]))
    assert not detections_match(a, d([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 3]))  # class differs
    assert not detections_match(a, d([[0, 0, 10, 10], [30, 30, 50, 50]], [1, 2]))  # IoU < 0.5
    assert not detections_match(a, d([[0, 0, 10, 10]], [1]))  # a box missing
    assert not detections_match(d([[0, 0, 10, 10]] * 2, [1, 1]), d([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1]))
    assert detections_match(d([], []), d([], []))
    # by label: the candidate calls class 5 what the active calls class 1
    assert detections_match(
        a, d([[0, 0, 10, 10], [20, 20, 40, 40]], [5, 2]), a_keys=["car", "dog"], b_keys=["car", "dog"]
    )


def _raw(atol: float = 1e-3, rtol: float = 0.0) -> ModelDescriptor:
    return CLF.model_copy(
        update={
            "task": Task.TENSORS,
            "labels": (),
            "output": TensorsOutput(kind="tensors", outputs=(TensorSpec(name="logits"),), atol=atol, rtol=rtol),
        }
    )


def test_tensors_compare_every_element_within_the_candidates_tolerance() -> None:
    x = np.arange(24, dtype=np.float32).reshape(3, 8)
    a = Answer({"logits": x}, _raw())
    moved = x.copy()
    moved[1, 5] += 0.01
    assert agreement(a, Answer({"logits": x + 5e-4}, _raw())) == [True, True, True]
    assert agreement(a, Answer({"logits": moved}, _raw())) == [True, False, True]
    assert agreement(a, Answer({"logits": moved}, _raw(atol=0.02))) == [True, True, True]
    assert agreement(a, Answer({"logits": x[:, :4]}, _raw())) == [False, False, False]  # another shape
    assert agreement(a, Answer({"other": x}, _raw())) == [False, False, False]
    with pytest.raises(Incomparable, match="tensors"):
        agreement(a, Answer({"logits": x}, CLF))
    with pytest.raises(Incomparable, match="no output 'logits'"):
        agreement(Answer({}, _raw()), a)
