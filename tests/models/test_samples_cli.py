"""Sample builders and the `model` commands."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.cli import app, build_samples, validate_file
from models.descriptor import ModelDescriptor
from models.errors import DescriptorError
from models.samples import build_classifier, build_detector
from tests.models.conftest import Sample


def test_build_samples_is_deterministic(samples_dir: Path, tmp_path: Path) -> None:
    paths = build_samples(tmp_path)
    assert [p.name for p in paths] == [
        "mobilenet-like.onnx",
        "mobilenet-like.yaml",
        "tiny-detector.onnx",
        "tiny-detector.yaml",
    ]
    for p in paths:
        assert p.read_bytes() == (samples_dir / p.name).read_bytes(), p.name
    assert build_classifier().SerializeToString() == build_classifier().SerializeToString()


def test_sample_sizes_and_descriptions(classifier: Sample, detector: Sample) -> None:
    assert 1_000_000 <= classifier.path.stat().st_size <= 5_000_000
    assert 1_000_000 <= detector.path.stat().st_size <= 10_000_000
    for s in (classifier, detector):
        assert s.descriptor.complete
        assert s.descriptor.sha256 == hashlib.sha256(s.path.read_bytes()).hexdigest()
        assert s.descriptor.labels
    assert detector.descriptor.output.kind == "yolov8"


def test_detector_needs_stride_multiple() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        build_detector(size=(100, 100))


def test_validate_file_finds_sidecar(classifier: Sample, tmp_path: Path) -> None:
    assert validate_file(classifier.path).sha256 == classifier.descriptor.sha256
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(classifier.path.read_bytes())
    with pytest.raises(DescriptorError, match="no description"):
        validate_file(lonely)


def test_cli_commands(classifier: Sample, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["build-samples", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "tiny-detector.onnx" in res.output
    out = tmp_path / "done.json"
    res = runner.invoke(app, ["validate", str(classifier.path), "--write", str(out)])
    assert res.exit_code == 0, res.output
    assert ModelDescriptor.load(out) == classifier.descriptor
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    res = runner.invoke(app, ["validate", str(bad), "--descriptor", str(classifier.path.with_suffix(".yaml"))])
    assert res.exit_code == 1
    assert "DigestMismatch" in res.output or "InvalidModelFile" in res.output
    # a file that is not there is named as such, not as a missing description; --write somewhere impossible
    res = runner.invoke(app, ["validate", str(tmp_path / "nope.onnx")])
    said = " ".join(w for w in res.output.split() if w != "│")  # the error box of a narrow terminal
    assert res.exit_code == 2 and "does not exist" in said and "description" not in said, res.output
    res = runner.invoke(app, ["validate", str(classifier.path), "--write", str(tmp_path / "no" / "d.yaml")])
    assert res.exit_code == 1 and "cannot write" in res.output and "No such file or directory" in res.output, res.output


@pytest.mark.parametrize("command", [[], ["build-samples"], ["validate"]])
def test_every_command_has_help(command: list[str]) -> None:
    res = CliRunner().invoke(app, [*command, "--help"])
    assert res.exit_code == 0
    text = res.output
    assert len(text.strip()) > 40
    if command:
        info = next(c for c in app.registered_commands if c.name == command[0])
        assert info.callback is not None
        assert info.callback.__doc__


def test_build_samples_as_another_version(samples_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["build-samples", str(tmp_path / "v2"), "--version", "2.0.0", "--seed", "1"])
    assert res.exit_code == 0, res.output
    v2 = ModelDescriptor.load(tmp_path / "v2" / "mobilenet-like.yaml")
    v1 = ModelDescriptor.load(samples_dir / "mobilenet-like.yaml")
    assert v2.version == "2.0.0" and v1.version != "2.0.0"
    assert v2.sha256 != v1.sha256  # new weights, new bytes
    bad = runner.invoke(app, ["build-samples", str(tmp_path / "bad"), "--version", "not-semver"])
    assert bad.exit_code == 2 and "not-semver" in bad.output
