"""Model descriptions: parsing, strictness, round trips, sidecar files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from models.descriptor import ModelDescriptor, sidecar_for
from models.errors import DescriptorError
from models.samples import DetectorLayout, classifier_descriptor, detector_descriptor

LAYOUTS: tuple[DetectorLayout, ...] = ("yolov8", "yolov5", "ssd", "nms")

BASE = {
    "name": "resnet",
    "version": "1.2.3",
    "task": "classification",
    "input": {"name": "x", "height": 160, "width": 256},
    "output": {"kind": "classification", "output": "y"},
}


def test_minimal_description_gets_defaults() -> None:
    d = ModelDescriptor.from_json(BASE)
    assert d.schema_version == 1
    assert d.input.layout.value == "NCHW"
    assert (d.input.height, d.input.width) == (160, 256)
    assert not d.complete


@pytest.mark.parametrize("d", [classifier_descriptor(), *(detector_descriptor(k) for k in LAYOUTS)])
def test_json_round_trip(d: ModelDescriptor) -> None:
    assert ModelDescriptor.from_json(d.to_json()) == d
    assert ModelDescriptor.from_json(json.dumps(d.to_json())) == d


def test_unknown_field_is_named() -> None:
    with pytest.raises(DescriptorError, match=r"input\.mean_values: unknown field"):
        ModelDescriptor.from_json({**BASE, "input": {**BASE["input"], "mean_values": [1, 2, 3]}})  # type: ignore[dict-item]


def test_unknown_schema_version_rejected() -> None:
    with pytest.raises(DescriptorError, match="schema_version"):
        ModelDescriptor.from_json({**BASE, "schema_version": 2})


@pytest.mark.parametrize("version", ["1", "1.2", "01.2.3", "v1.2.3", "1.2.3.4", ""])
def test_bad_semver_rejected(version: str) -> None:
    with pytest.raises(DescriptorError, match="version"):
        ModelDescriptor.from_json({**BASE, "version": version})


@given(
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.sampled_from(["", "-rc.1", "-alpha+b.7"]),
)
def test_valid_semver_accepted(major: int, minor: int, patch: int, suffix: str) -> None:
    v = f"{major}.{minor}.{patch}{suffix}"
    assert ModelDescriptor.from_json({**BASE, "version": v}).version == v


def test_output_kind_must_fit_task() -> None:
    with pytest.raises(DescriptorError, match="does not fit task"):
        ModelDescriptor.from_json({**BASE, "task": "detection"})


def test_uint8_input_takes_raw_pixels() -> None:
    with pytest.raises(DescriptorError, match="uint8"):
        ModelDescriptor.from_json({**BASE, "input": {**BASE["input"], "dtype": "uint8"}})  # type: ignore[dict-item]


def test_frozen() -> None:
    d = ModelDescriptor.from_json(BASE)
    with pytest.raises(ValueError, match="frozen"):
        d.name = "other"  # type: ignore[misc]


def test_sidecar_yaml_with_labels_file(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog\n\n")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({**BASE, "labels_file": "labels.txt"}))
    (tmp_path / "m.onnx").write_bytes(b"")
    d = ModelDescriptor.load(sidecar_for(tmp_path / "m.onnx"))
    assert d.labels == ("cat", "dog")


def test_sidecar_json_and_save(tmp_path: Path) -> None:
    d = detector_descriptor("ssd")
    assert ModelDescriptor.load(d.save(tmp_path / "d.json")) == d
    assert ModelDescriptor.load(d.save(tmp_path / "d.yaml")) == d


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name: [unclosed", r"not valid YAML: line 1, column 16: expected ',' or ']', but got '<stream end>'$"),
        ("a: 1\n  b: 2\n", "not valid YAML: line 2, column 4: mapping values are not allowed here$"),
        ("- a\n- b\n", "mapping"),
        ("name: x\n", "version: Field required"),
    ],
)
def test_bad_sidecar_files(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "m.yaml"
    p.write_text(text)
    with pytest.raises(DescriptorError, match=match) as caught:
        ModelDescriptor.load(p)
    assert "\n" not in str(caught.value)  # one line


def test_missing_sidecar(tmp_path: Path) -> None:
    with pytest.raises(DescriptorError, match="no description next to"):
        sidecar_for(tmp_path / "m.onnx")


RAW = {"kind": "tensors", "outputs": [{"name": "softmax", "rank": 3, "dtype": "float32"}, {"name": "aux"}]}


def test_tensors_kind_names_outputs_only() -> None:
    d = ModelDescriptor.from_json({**BASE, "task": "tensors", "output": RAW, "labels": []})
    assert d.task == "tensors" and [t.name for t in d.output.outputs] == ["softmax", "aux"]  # type: ignore[union-attr]
    assert ModelDescriptor.from_json(d.to_json()) == d


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"task": "classification"}, "does not fit task"),
        ({"labels": ["a"]}, "labels apply to classification and detection"),
        ({"output": {"kind": "tensors", "outputs": []}}, "output.tensors.outputs"),
        ({"output": {"kind": "tensors", "outputs": [{"name": "a"}, {"name": "a"}]}}, "unique"),
        ({"output": {"kind": "tensors", "outputs": [{"name": "a", "dtype": "string"}]}}, "dtype"),
    ],
)
def test_tensors_kind_refusals(change: dict[str, object], match: str) -> None:
    with pytest.raises(DescriptorError, match=match):
        ModelDescriptor.from_json({**BASE, "task": "tensors", "output": RAW, "labels": [], **change})
