"""The engine: providers, input checking, never dying on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from models.engine import Engine, EngineOptions, available_providers, max_supported_opset, provider_name
from models.errors import DescriptorError, EngineNotReady, InferenceFailed, InvalidInput, ProviderUnavailable
from models.golden import golden_input
from models.samples import classifier_descriptor
from tests.models.conftest import Sample
from tests.support.fuzz import examples


def test_loaded_engine_reports(classifier_engine: Engine) -> None:
    assert classifier_engine.active_provider == "CPUExecutionProvider"
    assert classifier_engine.report is not None
    assert classifier_engine.report.golden is not None
    assert classifier_engine.max_batch is None
    assert [s.name for s in classifier_engine.inputs] == ["image"]


def test_provider_fallback_in_order(classifier: Sample) -> None:
    engine = Engine.load(classifier.path, classifier.descriptor, EngineOptions(providers=("tensorrt", "cuda", "cpu")))
    assert engine.active_provider == "CPUExecutionProvider"
    assert engine.report is not None
    skipped = [p for p, _ in engine.report.fallbacks]
    if "CUDAExecutionProvider" not in available_providers():
        assert skipped[:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]


def test_no_usable_provider(classifier: Sample) -> None:
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("CUDA is present here")
    with pytest.raises(ProviderUnavailable, match="add 'cpu'"):
        Engine.load(classifier.path, classifier.descriptor, EngineOptions(providers=("cuda",)))


def test_provider_aliases() -> None:
    assert provider_name("CUDA") == "CUDAExecutionProvider"
    assert EngineOptions(providers=("cpu", "CPUExecutionProvider")).providers == ("CPUExecutionProvider",)


def test_opset_probe() -> None:
    assert 17 <= max_supported_opset() < 64


def test_golden_required(classifier: Sample) -> None:
    d = classifier.descriptor.model_copy(
        update={"golden": classifier.descriptor.golden.model_copy(update={"digest": ""})}
    )
    with pytest.raises(DescriptorError, match="no recorded golden check"):
        Engine.load(classifier.path, d)
    assert Engine.load(classifier.path, d, EngineOptions(golden="if_recorded", warmup_runs=0)).report is not None


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (
            {"image": np.zeros((1, 3, 224), np.float32)},
            r"input 'image' has shape \[1, 3, 224\] \(3 dims\); the model expects \[\?, 3, \?, \?\]",
        ),
        ({"image": np.zeros((1, 4, 32, 32), np.float32)}, r"axis 1 is 4"),
        ({"image": np.zeros((1, 3, 32, 32), np.float64)}, "dtype float64; the model expects float32"),
        ({"image": np.zeros((0, 3, 32, 32), np.float32)}, "axis 0 is 0"),
        ({"image": [[1.0]]}, "numpy array"),
        ({}, "missing"),
        ({"image": np.zeros((1, 3, 8, 8), np.float32), "extra": np.zeros(1)}, "unknown input"),
    ],
)
def test_bad_inputs_are_typed(classifier_engine: Engine, inputs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        classifier_engine.infer(inputs)
    out = classifier_engine.infer({"image": np.zeros((2, 3, 64, 96), np.float32)})  # still alive
    assert out["logits"].shape == (2, 100)


def test_not_a_mapping(classifier_engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="mapping"):
        classifier_engine.infer(np.zeros((1, 3, 8, 8), np.float32))  # type: ignore[arg-type]


def test_non_contiguous_input(classifier_engine: Engine, classifier: Sample) -> None:
    x = golden_input(classifier.descriptor.input, 3)
    fortran = np.asfortranarray(x)
    assert np.allclose(
        classifier_engine.infer({"image": fortran})["logits"], classifier_engine.infer({"image": x})["logits"]
    )


def test_closed_engine(classifier: Sample) -> None:
    engine = Engine.load(classifier.path, classifier.descriptor, EngineOptions(warmup_runs=0))
    engine.close()
    with pytest.raises(EngineNotReady):
        engine.infer({"image": golden_input(classifier.descriptor.input, 0)})


def test_spinning_and_threads_options(classifier: Sample) -> None:
    for spin in (True, False):
        e = Engine.load(
            classifier.path,
            classifier.descriptor,
            EngineOptions(allow_spinning=spin, intra_op_threads=1, graph_optimization="basic"),
        )
        assert e.report is not None
        assert e.report.golden is not None


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.integers(0, 5), min_size=0, max_size=5),
    st.sampled_from([np.float32, np.float64, np.float16, np.uint8, np.int64]),
)
def test_random_tensors_never_crash(classifier_engine: Engine, shape: list[int], dtype: type[np.generic]) -> None:
    x = np.zeros(shape, dtype=dtype)
    try:
        out = classifier_engine.infer({"image": x})
    except InvalidInput:
        return
    except InferenceFailed:
        return
    assert out["logits"].shape == (shape[0], 100)


def test_onnxruntime_failures_are_the_inputs_fault_on_new_shapes_and_the_engines_on_shapes_that_ran(
    tmp_path: Path,
) -> None:
    """A Reshape whose target comes from the input's values: it fails (onnxruntime FAIL, not an invalid
    argument) on a shape the engine never ran (400: the input's fault) and on one it ran before (500)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Slice", ["x", "zero", "two", "one"], ["head"]),
        helper.make_node("Cast", ["head"], ["dims"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "dims_flat"], ["y"]),
        helper.make_node("Reshape", ["dims", "minus_one"], ["dims_flat"]),
    ]
    inits = [
        numpy_helper.from_array(np.asarray([0, 0], np.int64), "zero"),
        numpy_helper.from_array(np.asarray([1, 2], np.int64), "two"),
        numpy_helper.from_array(np.asarray([0, 1], np.int64), "one"),
        numpy_helper.from_array(np.asarray([-1], np.int64), "minus_one"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "r", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    path = tmp_path / "reshape.onnx"
    onnx.save(model, path)
    engine = Engine.load(path, classifier_descriptor(), EngineOptions(golden="skip", warmup_runs=0))
    with pytest.raises(InvalidInput, match=r"cannot take inputs of shapes \{'x': \[1, 4\]\}"):
        engine.infer({"x": np.asarray([[3, 3, 0, 0]], np.float32)})  # 3x3 from 4 values: never ran [1, 4]
    assert engine.infer({"x": np.asarray([[2, 2, 0, 0]], np.float32)})["y"].shape == (2, 2)
    with pytest.raises(InferenceFailed, match="failed on inputs") as e:
        engine.infer({"x": np.asarray([[3, 3, 0, 0]], np.float32)})  # the same shape ran: the engine's fault
    assert "\n" not in str(e.value) and "onnxruntime_src" not in str(e.value)
