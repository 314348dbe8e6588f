"""The golden check: stable across runs and processes, tolerance-aware, catches changed weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models.descriptor import GoldenCheck, ModelDescriptor
from models.engine import Engine, EngineOptions
from models.errors import GoldenMismatch
from models.golden import compare, digest, golden_input, golden_pixels, record
from models.validate import validate
from tests.models.conftest import Sample

REPO = Path(__file__).resolve().parents[2]


def test_golden_input_is_deterministic(classifier: Sample) -> None:
    spec = classifier.descriptor.input
    a, b = golden_input(spec, 5), golden_input(spec, 5)
    assert a.dtype == np.float32
    assert a.shape == (1, 3, 224, 224)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, golden_input(spec, 6))
    assert golden_pixels(5, 2, 2).tolist() == golden_pixels(5, 2, 2).tolist()


def test_same_digest_across_runs(classifier: Sample) -> None:
    for _ in range(2):
        engine = Engine.load(classifier.path, classifier.descriptor, EngineOptions(warmup_runs=1))
        assert engine.report is not None
        assert engine.report.golden is not None
        assert engine.report.golden.exact


def test_same_digest_in_another_process(classifier: Sample) -> None:
    code = (
        "import sys; from models.descriptor import ModelDescriptor;"
        "from models.engine import Engine, EngineOptions;"
        "from models.golden import digest, golden_input;"
        "d = ModelDescriptor.load(sys.argv[1]);"
        "e = Engine.load(sys.argv[2], d, EngineOptions(golden='skip', intra_op_threads=1));"
        "print(digest(e.infer({'image': golden_input(d.input, d.golden.seed)}), d.golden.atol))"
    )
    sidecar = classifier.path.with_suffix(".yaml")
    out = subprocess.run(
        [sys.executable, "-c", code, str(sidecar), str(classifier.path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert out.stdout.strip() == classifier.descriptor.golden.digest


def _perturbed(src: Path, dst: Path, scale: float) -> None:
    model = onnx.load(src)
    init = model.graph.initializer[0]
    w = numpy_helper.to_array(init)
    rng = np.random.default_rng(0)
    init.CopyFrom(
        numpy_helper.from_array((w + rng.standard_normal(w.shape) * scale * w.std()).astype(w.dtype), init.name)
    )
    onnx.save(model, dst)


def test_perturbed_weights_fail_golden(classifier: Sample, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    _perturbed(classifier.path, bad, 0.2)
    with pytest.raises(GoldenMismatch, match="output 'logits'"):
        Engine.load(bad, classifier.descriptor)
    # validate also refuses it (sha256 differs first; without a recorded sha256 the golden check fails)
    d = classifier.descriptor.model_copy(update={"sha256": None, "size": None})
    with pytest.raises(GoldenMismatch):
        validate(bad, d)


def test_within_tolerance_passes_without_exact_digest() -> None:
    rng = np.random.default_rng(1)
    y, n = rng.standard_normal((2, 50)).astype(np.float32), np.arange(3)
    g = record({"y": y, "n": n}, seed=0, atol=1e-3, rtol=1e-3)
    result = compare({"y": y + np.float32(4e-4), "n": n}, g)
    assert not result.exact
    assert result.max_abs_error < 1e-3
    with pytest.raises(GoldenMismatch, match="'y'"):
        compare({"y": y + np.float32(5e-3), "n": n}, g)
    with pytest.raises(GoldenMismatch, match="shape"):
        compare({"y": y[:1], "n": n}, g)
    with pytest.raises(GoldenMismatch, match="outputs"):
        compare({"y": y}, g)


def test_digest_is_quantised() -> None:
    a = np.array([0.10001, 2.0], dtype=np.float32)
    assert digest({"a": a}, 1e-3) == digest({"a": a + np.float32(1e-6)}, 1e-3)
    assert digest({"a": a}, 1e-3) != digest({"a": a + np.float32(1e-2)}, 1e-3)


def test_unrecorded_check_cannot_compare() -> None:
    with pytest.raises(ValueError, match="no recorded digest"):
        compare({}, GoldenCheck(seed=0))


def test_descriptor_round_trip_keeps_check(classifier: Sample) -> None:
    d = ModelDescriptor.from_json(classifier.descriptor.to_json())
    assert d.golden == classifier.descriptor.golden
