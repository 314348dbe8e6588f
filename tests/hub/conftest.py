"""Hub test fixtures: a running hub and the sample models (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.cli import build_samples
from tests.support.hub import running_hub  # noqa: F401


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with mobilenet-like.onnx/.yaml and tiny-detector.onnx/.yaml."""
    out = tmp_path_factory.mktemp("samples")
    build_samples(out)
    return out
