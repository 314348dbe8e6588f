"""Validation of .onnx files: every failure is a typed error a user can act on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from fleet.files import file_digest
from models.cli import app, write_model
from models.descriptor import ModelDescriptor
from models.engine import Engine
from models.errors import (
    DigestMismatch,
    InvalidModelFile,
    ModelError,
    SignatureMismatch,
    UnsupportedOpset,
)
from models.preprocess import preprocess
from models.samples import build_classifier, classifier_descriptor
from models.validate import validate
from tests.models.conftest import Sample, encode, scene
from tests.support.models import colour_classifier, with_outputs_that_are_not_tensors, without_batch_axis


def test_sample_validates_and_records(classifier: Sample) -> None:
    report = validate(classifier.path, classifier.descriptor)
    data = classifier.path.read_bytes()
    assert report.sha256 == hashlib.sha256(data).hexdigest() == classifier.descriptor.sha256
    assert report.size == len(data)
    assert report.golden_matched is True
    assert report.opset == 17
    assert report.inputs == {"image": ("batch", 3, "height", "width")}
    assert report.descriptor.complete


def test_file_digest_streams(tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    data = bytes(range(256)) * 9000  # > 2 chunks
    p.write_bytes(data)
    assert file_digest(p) == (hashlib.sha256(data).hexdigest(), len(data))


def test_truncated_onnx(classifier: Sample, tmp_path: Path) -> None:
    p = tmp_path / "cut.onnx"
    p.write_bytes(classifier.path.read_bytes()[:100_000])
    with pytest.raises(InvalidModelFile, match="not an ONNX model|fails onnx.checker") as e:
        validate(p, classifier_descriptor())
    assert e.value.permanent


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"hello, I am a text file\n", b"\xff" * 10])
def test_non_onnx_file(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "x.onnx"
    p.write_bytes(content)
    with pytest.raises(InvalidModelFile):
        validate(p, classifier_descriptor())


def test_empty_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "e.onnx").write_bytes(b"")
    with pytest.raises(InvalidModelFile, match="empty"):
        validate(tmp_path / "e.onnx", classifier_descriptor())
    with pytest.raises(InvalidModelFile, match="does not exist"):
        validate(tmp_path / "nope.onnx", classifier_descriptor())


def _flat_model(rank: int, opset: int = 17) -> onnx.ModelProto:
    image_dims: list[str | int] = ["batch", 3, 224]
    dims = image_dims[:rank]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["logits"], axes=[2], keepdims=0)]
        if rank == 3
        else [helper.make_node("Identity", ["image"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def test_wrong_input_rank_for_task(tmp_path: Path) -> None:
    p = tmp_path / "rank3.onnx"
    onnx.save(_flat_model(3), p)
    d = classifier_descriptor(num_classes=3)
    with pytest.raises(SignatureMismatch, match="input 'image' has 3 dims; classification needs 4"):
        validate(p, d)


def test_opset_newer_than_onnxruntime(tmp_path: Path) -> None:
    p = tmp_path / "new.onnx"
    m = _flat_model(2, opset=40)
    onnx.save(m, p)
    with pytest.raises(UnsupportedOpset, match="opset 40"):
        validate(p, classifier_descriptor())


def test_label_count_must_match_classes(classifier: Sample) -> None:
    d = classifier.descriptor.model_copy(update={"labels": ("a", "b"), "sha256": None, "size": None})
    with pytest.raises(SignatureMismatch, match="2 labels imply 2"):
        validate(classifier.path, d)


def test_dynamic_size_must_be_declared(classifier: Sample) -> None:
    d = classifier.descriptor.model_copy(
        update={"input": classifier.descriptor.input.model_copy(update={"dynamic_size": False})}
    )
    with pytest.raises(SignatureMismatch, match="dynamic_size"):
        validate(classifier.path, d)


def test_wrong_input_name_and_output_name(classifier: Sample) -> None:
    d = classifier.descriptor
    with pytest.raises(SignatureMismatch, match="no input 'pixels'"):
        validate(classifier.path, d.model_copy(update={"input": d.input.model_copy(update={"name": "pixels"})}))
    with pytest.raises(SignatureMismatch, match="no output 'probs'"):
        validate(classifier.path, d.model_copy(update={"output": d.output.model_copy(update={"output": "probs"})}))


def test_dtype_must_match(classifier: Sample) -> None:
    d = classifier.descriptor
    spec = d.input.model_copy(update={"dtype": "float16"})
    with pytest.raises(SignatureMismatch, match="element type FLOAT; the description says float16"):
        validate(classifier.path, d.model_copy(update={"input": spec}))


def test_recorded_digest_must_match(classifier: Sample, tmp_path: Path) -> None:
    d = classifier.descriptor.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(DigestMismatch, match="sha256"):
        validate(classifier.path, d)


def test_non_square_sizes(tmp_path: Path) -> None:
    d = classifier_descriptor(num_classes=10, height=160, width=256)
    onnx_path, yaml_path = write_model(build_classifier(num_classes=10), d, tmp_path, "wide")
    loaded = ModelDescriptor.load(yaml_path)
    assert loaded.golden.reference["logits"].shape == (1, 10)
    assert validate(onnx_path, loaded).golden_matched


def test_errors_are_model_errors() -> None:
    assert issubclass(SignatureMismatch, ModelError)


def test_new_tolerances_rerecord_but_old_check_must_pass(classifier: Sample) -> None:
    report = validate(classifier.path, classifier.descriptor, atol=1e-2, rtol=0.0)
    g = report.descriptor.golden
    assert (g.atol, g.rtol) == (1e-2, 0.0)
    assert g.digest != classifier.descriptor.golden.digest
    assert report.golden_matched is True


def test_nhwc_uint8_model_matches_float_model(classifier: Sample, classifier_engine: Engine, tmp_path: Path) -> None:
    d = classifier_descriptor(raw_nhwc=True, name="raw-nhwc")
    onnx_path, yaml_path = write_model(build_classifier(raw_nhwc=True), d, tmp_path, "raw")
    loaded = ModelDescriptor.load(yaml_path)
    assert loaded.input.layout.value == "NHWC"
    engine = Engine.load(onnx_path, loaded)
    data = encode(scene(150, 200))
    x_raw, _ = preprocess(data, loaded.input)
    x_float, _ = preprocess(data, classifier.descriptor.input)
    assert x_raw.dtype == np.uint8
    assert x_raw.shape == (1, 224, 224, 3)
    got = engine.infer({"image": x_raw})["logits"]
    want = classifier_engine.infer({"image": x_float})["logits"]
    assert np.allclose(got, want, atol=1e-3)
    with pytest.raises(SignatureMismatch, match="fixed width 3"):
        validate(onnx_path, loaded.model_copy(update={"input": classifier.descriptor.input, "sha256": None}))


def test_weights_in_an_external_data_file_are_refused_with_the_reason(classifier: Sample, tmp_path: Path) -> None:
    """A model saved with `save_as_external_data` (every exporter does it past 2 GiB; some always) keeps its weights
    in a second file. The hub stores and ships one .onnx file, so the agent could never load it; validate said
    only "should be stored in weights.bin, but it is not regular file" with the file right beside it."""
    model = onnx.load(classifier.path)
    p = tmp_path / "ext.onnx"
    onnx.save_model(model, p, save_as_external_data=True, location="weights.bin", size_threshold=1024)
    assert (tmp_path / "weights.bin").is_file()
    with pytest.raises(InvalidModelFile, match=r"ext.onnx keeps the data of \d+ tensors in weights.bin") as e:
        validate(p, classifier.descriptor.model_copy(update={"sha256": None, "size": None}))
    assert "save_as_external_data=False" in str(e.value)
    assert e.value.permanent


def test_an_operator_onnxruntime_lacks_is_refused_in_one_readable_line(tmp_path: Path) -> None:
    """Exporters emit custom-domain operators and newer `ai.onnx.ml` opsets; onnxruntime's refusal came through with
    its C++ source location and function signature ("model_load_utils.h:46 void onnxruntime::...")."""
    model, desc = colour_classifier("1.0.0", 32)
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 9))
    p = tmp_path / "ml9.onnx"
    onnx.save(model, p)
    with pytest.raises(InvalidModelFile, match="onnxruntime cannot load ml9.onnx") as e:
        validate(p, desc)
    assert "ai.onnx.ml" in str(e.value)
    assert "onnxruntime_src" not in str(e.value) and "\n" not in str(e.value)


def _as_tensors(d: ModelDescriptor, *outputs: dict[str, object]) -> ModelDescriptor:
    data = {**d.to_json(), "task": "tensors", "labels": [], "output": {"kind": "tensors", "outputs": list(outputs)}}
    data.update(sha256=None, size=None, golden={"seed": 0})
    return ModelDescriptor.from_json(data)


def test_tensors_kind_validates_and_records_a_golden(classifier: Sample) -> None:
    d = _as_tensors(classifier.descriptor, {"name": "logits", "rank": 2, "dtype": "float32"})
    report = validate(classifier.path, d)
    assert report.descriptor.complete and set(report.descriptor.golden.reference) == {"logits"}
    assert validate(classifier.path, report.descriptor).golden_matched is True


@pytest.mark.parametrize(
    ("output", "match"),
    [
        ({"name": "nope"}, "graph has no output 'nope'"),
        ({"name": "logits", "rank": 3}, "has 2 dims; the description says rank 3"),
        ({"name": "logits", "dtype": "int64"}, "element type FLOAT; the description says int64"),
    ],
)
def test_tensors_kind_refuses_what_the_graph_lacks(classifier: Sample, output: dict[str, object], match: str) -> None:
    with pytest.raises(SignatureMismatch, match=match):
        validate(classifier.path, _as_tensors(classifier.descriptor, output))


NOT_TENSORS = {
    "probabilities": "seq(map(int64,tensor(float)))",
    "label": "tensor(string)",
    "logit_seq": "seq(tensor(float))",
}


def test_outputs_that_are_not_tensors_are_ignored_not_refused(tmp_path: Path) -> None:
    """A ZipMap (skl2onnx's default), a string label and a sequence beside the output the decoder reads: the engine
    refused the whole model ("graph tensor 'probabilities' has unsupported type seq(map(...))"). They are now
    ignored: never requested from onnxruntime, named in validate's report; the answer is plain onnxruntime's."""
    model, desc = colour_classifier("1.0.0", 32, name="zipmap")
    onnx_path, yaml_path = write_model(with_outputs_that_are_not_tensors(model), desc, tmp_path, "zipmap")
    report = validate(onnx_path, ModelDescriptor.load(yaml_path))
    assert report.ignored_outputs == NOT_TENSORS
    assert list(report.outputs) == ["logits"]
    res = CliRunner().invoke(app, ["validate", str(onnx_path)])
    assert res.exit_code == 0, res.output
    assert "ignored output 'probabilities': seq(map(int64,tensor(float))) is not a numeric tensor" in res.output
    engine = Engine.load(onnx_path, report.descriptor)
    assert [o.name for o in engine.outputs] == ["logits"]
    assert dict(engine.ignored_outputs) == NOT_TENSORS
    x = np.random.default_rng(3).random((2, 3, 32, 32)).astype(np.float32)
    got = engine.infer({"image": x})
    [want] = ort.InferenceSession(str(onnx_path)).run(["logits"], {"image": x})
    assert list(got) == ["logits"] and np.array_equal(got["logits"], want)


@pytest.mark.parametrize(
    ("output", "match"),
    [
        (
            {"kind": "classification", "output": "probabilities"},
            r"'probabilities' is seq\(map\(int64,tensor\(float\)\)\), not a numeric tensor",
        ),
        ({"kind": "tensors", "outputs": [{"name": "label"}]}, r"'label' is tensor\(string\), not a numeric tensor"),
    ],
)
def test_a_decoder_that_reads_an_output_that_is_not_a_tensor_is_refused(
    tmp_path: Path, output: dict[str, object], match: str
) -> None:
    model, desc = colour_classifier("1.0.0", 32, name="zipmap")
    onnx_path = tmp_path / "zipmap.onnx"
    onnx.save(with_outputs_that_are_not_tensors(model), onnx_path)
    data = {**desc.to_json(), "output": output}
    if output["kind"] == "tensors":
        data.update(task="tensors", labels=[])
    with pytest.raises(SignatureMismatch, match=match):
        validate(onnx_path, ModelDescriptor.from_json(data))


def test_an_input_without_a_batch_axis_is_refused_at_validate_with_the_reason(tmp_path: Path) -> None:
    """An image input of [3, 32, 32] (one image, no batch axis): refused before anything runs, saying what is missing
    and how to export it; before, the reason said only "has 3 dims; classification needs 4"."""
    model, desc = colour_classifier("1.0.0", 32)
    model = without_batch_axis(model, 32)
    onnx_path = tmp_path / "unbatched.onnx"
    onnx.save(model, onnx_path)
    onnx.checker.check_model(model, full_check=True)  # a sound model: only the missing batch axis is refused
    with pytest.raises(SignatureMismatch) as e:
        validate(onnx_path, desc)
    assert "input 'image' has 3 dims; classification needs 4" in str(e.value)
    assert "[3, 32, 32] looks like one image without a batch axis, which is not served" in str(e.value)
    assert "dynamic_axes={'image': {0: 'batch'}}" in str(e.value)
