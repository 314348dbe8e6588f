"""Small validated classifier versions for end-to-end tests (each version new weights, same graph)."""

from __future__ import annotations

from pathlib import Path

from models.descriptor import ModelDescriptor
from models.samples import build_classifier, classifier_descriptor
from models.validate import validate


def classifier_versions(
    out: Path, versions: tuple[str, ...] = ("1.0.0", "2.0.0"), name: str = "cls"
) -> dict[str, tuple[Path, ModelDescriptor]]:
    """Write `name-<version>.onnx` for each version (seed = its index) and return (path, validated descriptor)."""
    made = {}
    for seed, version in enumerate(versions):
        path = out / f"{name}-{version}.onnx"
        path.write_bytes(build_classifier(num_classes=10, seed=seed).SerializeToString())
        desc = classifier_descriptor(num_classes=10, height=64, width=64, name=name).model_copy(
            update={"version": version}
        )
        made[version] = (path, validate(path, desc).descriptor)
    return made
