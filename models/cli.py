"""`edgefleet model ...` commands: plain functions plus a typer sub-app (`models.cli.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import onnx
import typer

from models.descriptor import ModelDescriptor, sidecar_for
from models.errors import ModelError
from models.samples import build_classifier, build_detector, classifier_descriptor, detector_descriptor
from models.validate import ValidationReport, validate


def write_model(model: onnx.ModelProto, descriptor: ModelDescriptor, out_dir: Path, stem: str) -> list[Path]:
    """Write `stem.onnx`, validate it (recording golden, sha256, size) and write `stem.yaml` beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{stem}.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    report = validate(onnx_path, descriptor)
    yaml_path = report.descriptor.save(out_dir / f"{stem}.yaml")
    return [onnx_path, yaml_path]


def build_samples(out_dir: str | Path) -> list[Path]:
    """Build the sample classifier and detector into `out_dir`; returns the files written.

    Writes `mobilenet-like.onnx`/`.yaml` and `tiny-detector.onnx`/`.yaml` (YOLOv8 layout). Deterministic:
    the same bytes on every run.
    """
    out = Path(out_dir)
    paths = write_model(build_classifier(), classifier_descriptor(), out, "mobilenet-like")
    paths += write_model(build_detector("yolov8"), detector_descriptor("yolov8"), out, "tiny-detector")
    return paths


def validate_file(onnx_path: str | Path, descriptor_path: str | Path | None = None) -> ValidationReport:
    """Validate an .onnx against its sidecar (default: the .yaml/.yml/.json next to it)."""
    sidecar = Path(descriptor_path) if descriptor_path else sidecar_for(onnx_path)
    return validate(onnx_path, ModelDescriptor.load(sidecar))


app = typer.Typer(help="Build, inspect and validate ONNX vision models.", no_args_is_help=True)


@app.command("build-samples")
def build_samples_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the sample .onnx and .yaml files into.")],
) -> None:
    """Build the deterministic sample classifier and detector with their descriptions."""
    for p in build_samples(out_dir):
        typer.echo(str(p))


@app.command("validate")
def validate_cmd(
    onnx_file: Annotated[Path, typer.Argument(help="The .onnx file to check.")],
    descriptor: Annotated[
        Path | None,
        typer.Option("--descriptor", "-d", help="Description YAML/JSON (default: sidecar next to it)."),
    ] = None,
    write: Annotated[
        Path | None, typer.Option("--write", help="Write the completed description (sha256, golden) here.")
    ] = None,
) -> None:
    """Check an .onnx file against its description and record its golden output."""
    try:
        report = validate_file(onnx_file, descriptor)
    except ModelError as e:
        typer.echo(f"invalid: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(code=1) from e
    typer.echo(f"ok: {report.descriptor.name} {report.descriptor.version} sha256={report.sha256} size={report.size}")
    typer.echo(f"opset {report.opset}, inputs {report.inputs}, outputs {report.outputs}")
    if write is not None:
        report.descriptor.save(write)
        typer.echo(f"wrote {write}")
