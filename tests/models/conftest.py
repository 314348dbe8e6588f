"""Fixtures for models tests: sample models built once per session into a temporary folder."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.cli import build_samples, write_model
from models.descriptor import ModelDescriptor
from models.engine import Engine, EngineOptions
from models.samples import build_detector, detector_descriptor


@dataclass(frozen=True)
class Sample:
    path: Path
    descriptor: ModelDescriptor


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    build_samples(out)
    return out


@pytest.fixture(scope="session")
def classifier(samples_dir: Path) -> Sample:
    return Sample(samples_dir / "mobilenet-like.onnx", ModelDescriptor.load(samples_dir / "mobilenet-like.yaml"))


@pytest.fixture(scope="session")
def detector(samples_dir: Path) -> Sample:
    return Sample(samples_dir / "tiny-detector.onnx", ModelDescriptor.load(samples_dir / "tiny-detector.yaml"))


@pytest.fixture(scope="session")
def classifier_engine(classifier: Sample) -> Engine:
    return Engine.load(classifier.path, classifier.descriptor, EngineOptions(intra_op_threads=2))


@pytest.fixture(scope="session")
def layout_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sample]:
    out = tmp_path_factory.mktemp("layouts")
    models = {}
    for layout in ("yolov8", "yolov5", "ssd", "nms"):
        onnx_path, yaml_path = write_model(build_detector(layout), detector_descriptor(layout), out, layout)
        models[layout] = Sample(onnx_path, ModelDescriptor.load(yaml_path))
    return models


def encode(pixels: np.ndarray, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **params)
    return buf.getvalue()


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A synthetic photo-like RGB image: smooth gradient plus a few solid rectangles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    img = img.astype(np.uint8)
    for _ in range(4):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        img[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.integers(0, 256, 3)
    return img
