"""Fixtures for the inference API: sample models, engines, and a real uvicorn server around a ModelRepository."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.api import ApiServer, ApiSettings, ModelRepository
from fleet.messages import AppliedModel
from models.cli import build_samples, write_model
from models.descriptor import ModelDescriptor
from models.engine import Engine, EngineOptions
from models.samples import build_classifier, build_detector, classifier_descriptor, detector_descriptor
from tests.support.models import permute_output

OPTIONS = EngineOptions(intra_op_threads=1)


@dataclass(frozen=True)
class Sample:
    path: Path
    descriptor: ModelDescriptor

    def engine(self) -> Engine:
        return Engine.load(self.path, self.descriptor, OPTIONS)

    def applied(self) -> AppliedModel:
        d = self.descriptor
        assert d.sha256 is not None
        return AppliedModel(name=d.name, version=d.version, sha256=d.sha256)


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sample]:
    """mobilenet-like 1.0.0 and 2.0.0 (other weights), label-permuted 1.1.0, tiny-detector and a permuted one."""
    out = tmp_path_factory.mktemp("api-samples")
    build_samples(out)
    result = {
        "clf": Sample(out / "mobilenet-like.onnx", ModelDescriptor.load(out / "mobilenet-like.yaml")),
        "det": Sample(out / "tiny-detector.onnx", ModelDescriptor.load(out / "tiny-detector.yaml")),
    }
    small = classifier_descriptor(height=64, width=64)
    variants = {
        "clf2": (build_classifier(seed=1), small.model_copy(update={"version": "2.0.0"})),
        "clf-perm": (
            permute_output(build_classifier(), "logits", [(i + 1) % 100 for i in range(100)]),
            small.model_copy(update={"version": "1.1.0"}),
        ),
        "det-perm": (
            permute_output(build_detector("yolov8"), "output0", [0, 1, 2, 3] + [4 + (c + 1) % 8 for c in range(8)]),
            detector_descriptor("yolov8").model_copy(update={"version": "1.1.0"}),
        ),
    }
    for stem, (model, desc) in variants.items():
        onnx_path, yaml_path = write_model(model, desc, out, stem)
        result[stem] = Sample(onnx_path, ModelDescriptor.load(yaml_path))
    return result


@pytest.fixture(scope="module")
def clf_engine(samples: dict[str, Sample]) -> Engine:
    return samples["clf"].engine()


@pytest.fixture
def make_server() -> Iterator[object]:
    """Factory: start an ApiServer on an ephemeral port around a fresh repository; stopped after the test."""
    servers: list[ApiServer] = []

    def make(**settings: object) -> tuple[ApiServer, ModelRepository]:
        repo = ModelRepository()
        server = ApiServer(ApiSettings(port=0, **settings), repo)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server, repo

    yield make
    for s in servers:
        s.stop()


def jpeg(width: int, height: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A smooth synthetic photo with a few rectangles, encoded."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1).astype(
        np.uint8
    )
    for _ in range(4):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        img[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()
