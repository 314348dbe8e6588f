"""`edgefleet model ...` commands: plain functions plus a typer sub-app (`models.cli.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from models.descriptor import ModelDescriptor, sidecar_for
from models.errors import ModelError

if TYPE_CHECKING:  # onnx and onnxruntime load only when a command needs them: `edgefleet --help` stays fast
    import onnx

    from models.validate import ValidationReport


def write_model(model: onnx.ModelProto, descriptor: ModelDescriptor, out_dir: Path, stem: str) -> list[Path]:
    """Write `stem.onnx`, validate it (recording golden, sha256, size) and write `stem.yaml` beside it."""
    from models.validate import validate  # noqa: PLC0415  (keeps `edgefleet --help` fast)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{stem}.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    report = validate(onnx_path, descriptor)
    yaml_path = report.descriptor.save(out_dir / f"{stem}.yaml")
    return [onnx_path, yaml_path]


def build_samples(out_dir: str | Path, *, version: str | None = None, seed: int = 0) -> list[Path]:
    """Build the sample classifier and detector into `out_dir`; returns the files written.

    Writes `mobilenet-like.onnx`/`.yaml` and `tiny-detector.onnx`/`.yaml` (YOLOv8 layout). Deterministic:
    the same bytes on every run for the same `seed`. `version` and `seed` make "another training run" of
    the same models (new weights, new version), which is what a rollout moves a fleet to.
    """
    from models.samples import build_classifier, build_detector, classifier_descriptor, detector_descriptor  # noqa: PLC0415

    out = Path(out_dir)
    cls_desc, det_desc = classifier_descriptor(), detector_descriptor("yolov8")
    if version is not None:
        cls_desc = ModelDescriptor.model_validate({**cls_desc.model_dump(), "version": version})  # validates it
        det_desc = ModelDescriptor.model_validate({**det_desc.model_dump(), "version": version})
    paths = write_model(build_classifier(seed=seed), cls_desc, out, "mobilenet-like")
    paths += write_model(build_detector("yolov8", seed=seed + 1), det_desc, out, "tiny-detector")
    return paths


def validate_file(onnx_path: str | Path, descriptor_path: str | Path | None = None) -> ValidationReport:
    """Validate an .onnx against its sidecar (default: the .yaml/.yml/.json next to it)."""
    from models.validate import validate  # noqa: PLC0415  (keeps `edgefleet --help` fast)

    sidecar = Path(descriptor_path) if descriptor_path else sidecar_for(onnx_path)
    return validate(onnx_path, ModelDescriptor.load(sidecar))


app = typer.Typer(help="Build, inspect and validate ONNX vision models.", no_args_is_help=True)


@app.command("build-samples")
def build_samples_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the sample .onnx and .yaml files into.")],
    version: Annotated[
        str | None, typer.Option("--version", help="Semantic version to give both models (default 1.0.0).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Weight seed: another seed is another 'training run'.")] = 0,
) -> None:
    """Build the deterministic sample classifier and detector with their descriptions."""
    try:
        paths = build_samples(out_dir, version=version, seed=seed)
    except (ModelError, ValueError) as e:
        typer.echo(f"error: {str(e).splitlines()[0]} ({version!r})", err=True)
        raise typer.Exit(2) from e
    for p in paths:
        typer.echo(str(p))


@app.command("validate")
def validate_cmd(
    onnx_file: Annotated[Path, typer.Argument(help="The .onnx file to check.", exists=True, dir_okay=False)],
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
    for name, kind in report.ignored_outputs.items():
        typer.echo(f"ignored output {name!r}: {kind} is not a numeric tensor (never run, never served)")
    if write is not None:
        try:
            report.descriptor.save(write)
        except OSError as e:
            typer.echo(f"error: cannot write {write}: {e.strerror or e}", err=True)
            raise typer.Exit(code=1) from e
        typer.echo(f"wrote {write}")
