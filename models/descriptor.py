"""The model package description: what an .onnx file is and how to feed it and read its outputs.

A description travels in three forms: a sidecar YAML/JSON file next to the .onnx (written by a user who
imports a model they did not build with us), a JSON object inside the hub's signed desired state
(`to_json()`/`from_json()`), and this frozen pydantic object in memory.
"""

from __future__ import annotations

import json
import math
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.errors import DescriptorError

SCHEMA_VERSION = 1
"""The only description schema version this code reads and writes."""

SIDECAR_SUFFIXES = (".yaml", ".yml", ".json")

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Task(StrEnum):
    """What the model does."""

    CLASSIFICATION = "classification"
    DETECTION = "detection"
    TENSORS = "tensors"
    """Neither: the outputs are served as raw tensors and the caller decodes them (OCR, segmentation, embeddings)."""


class Layout(StrEnum):
    """Order of the image tensor's axes."""

    NCHW = "NCHW"
    NHWC = "NHWC"


class ChannelOrder(StrEnum):
    """Colour order the model was trained on."""

    RGB = "RGB"
    BGR = "BGR"


class ResizeMode(StrEnum):
    """How an image of any size becomes the model's height x width (docs/models.md shows each)."""

    STRETCH = "stretch"
    LETTERBOX = "letterbox"
    CENTER_CROP = "center_crop"
    PAD_RIGHT = "pad_right"


class Anchor(StrEnum):
    """Where a letterboxed image sits on its padded canvas."""

    CENTER = "center"
    TOP_LEFT = "top_left"


class Interpolation(StrEnum):
    """Resampling filter of the resize."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    AREA = "area"
    LANCZOS = "lanczos"


class PadSpace(StrEnum):
    """Whether `pad_value` is a pixel grey level or a value of the normalised tensor."""

    PIXEL = "pixel"
    NORMALIZED = "normalized"


class BoxFormat(StrEnum):
    """Coordinate convention of a box tensor's last axis."""

    XYXY = "xyxy"
    CXCYWH = "cxcywh"
    YXYX = "yxyx"


class InputSpec(_Frozen):
    """The image input tensor and the preprocessing that produces it."""

    name: str = Field(min_length=1, description="Graph input name of the image tensor.")
    layout: Layout = Field(default=Layout.NCHW, description="Axis order of the 4-D image tensor.")
    height: int = Field(ge=1, le=8192, description="Height in pixels that preprocessing produces.")
    width: int = Field(ge=1, le=8192, description="Width in pixels that preprocessing produces.")
    dynamic_size: bool = Field(
        default=False,
        description="True when the graph's height/width axes are symbolic (any size runs); "
        "height/width are then the size used for preprocessing and the golden check.",
    )
    dtype: Literal["float32", "float16", "uint8"] = Field(
        default="float32", description="Element type of the input tensor."
    )
    channel_order: ChannelOrder = Field(default=ChannelOrder.RGB, description="Colour order of channels.")
    resize: ResizeMode = Field(
        default=ResizeMode.STRETCH,
        description="stretch: to height x width ignoring the aspect ratio; letterbox: fit inside, pad the rest; "
        "center_crop: shorter side to shorter_side, then the centre height x width; pad_right: to the input "
        "height keeping the ratio (width rounded up, at most the input width), pad on the right.",
    )
    anchor: Anchor = Field(
        default=Anchor.CENTER,
        description="letterbox only: center pads both sides equally; top_left pads only right and bottom.",
    )
    pad_first: bool = Field(
        default=False,
        description="letterbox only: pad the image to the input's aspect ratio first, then resize the padded "
        "image (the Ultralytics OpenCV example, NudeNet); false resizes, then pads (Ultralytics letterbox).",
    )
    shorter_side: int | None = Field(
        default=None,
        ge=1,
        le=16384,
        description="center_crop only: length the shorter image side is resized to before the crop (256 for "
        "a 224 crop in torchvision's recipe; timm: floor(size / crop_pct)). Default: max(height, width).",
    )
    interpolation: Interpolation = Field(
        default=Interpolation.BILINEAR, description="Resampling filter: nearest, bilinear, bicubic, area, lanczos."
    )
    antialias: bool = Field(
        default=True,
        description="true: Pillow's antialiased filters (the filter widens on a downscale); false: OpenCV's "
        "cv2.resize arithmetic (INTER_NEAREST/LINEAR/CUBIC/LANCZOS4), for models trained through OpenCV.",
    )
    pad_value: int | float = Field(
        default=114,
        description="Padding value: a grey level 0-255 (pad_space: pixel) or a value of the normalised tensor "
        "(pad_space: normalized; PaddleOCR pads 0 after normalising to [-1, 1]).",
    )
    pad_space: PadSpace = Field(default=PadSpace.PIXEL, description="Space in which pad_value is given.")
    scale: float = Field(
        default=1.0 / 255.0, gt=0, description="Pixels (0-255) are multiplied by this before mean/std."
    )
    mean: tuple[float, float, float] = Field(
        default=(0.0, 0.0, 0.0), description="Per-channel mean subtracted after scaling, in channel_order."
    )
    std: tuple[float, float, float] = Field(
        default=(1.0, 1.0, 1.0), description="Per-channel std dividing after the mean, in channel_order."
    )

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("every std value must be > 0")
        return v

    @model_validator(mode="after")
    def _resize_fits(self) -> Self:
        mode = self.resize
        if mode != ResizeMode.LETTERBOX and (self.anchor != Anchor.CENTER or self.pad_first):
            raise ValueError(f"anchor and pad_first apply to resize: letterbox, not {mode.value}")
        if mode != ResizeMode.CENTER_CROP and self.shorter_side is not None:
            raise ValueError(f"shorter_side applies to resize: center_crop, not {mode.value}")
        if self.interpolation == Interpolation.AREA and not self.antialias:
            raise ValueError("interpolation: area always averages; it has no antialias: false form")
        pad = self.pad_value
        if not math.isfinite(pad):
            raise ValueError("pad_value must be a finite number")
        if self.pad_space == PadSpace.PIXEL and (pad != int(pad) or not 0 <= pad <= 255):
            raise ValueError(f"pad_value {pad} is not a grey level 0-255; for the normalised space set pad_space")
        if self.pad_space == PadSpace.NORMALIZED and self.dtype == "uint8" and (pad != int(pad) or not 0 <= pad <= 255):
            raise ValueError(f"pad_value {pad} does not fit a uint8 tensor (0-255)")
        if self.pad_space == PadSpace.NORMALIZED and abs(pad) > 1e6:
            raise ValueError("pad_value in the normalised space must be within +-1e6")
        if self.pad_space == PadSpace.NORMALIZED and self.pad_first:
            raise ValueError("pad_first pads pixels before the resize: give pad_value in pad_space: pixel")
        return self

    @model_validator(mode="after")
    def _uint8_is_raw(self) -> Self:
        if self.dtype == "uint8" and (self.scale != 1.0 or any(self.mean) or self.std != (1.0, 1.0, 1.0)):
            raise ValueError("a uint8 input takes raw pixels: set scale 1, mean 0 and std 1")
        return self


class ClassificationOutput(_Frozen):
    """A [batch, classes] tensor of logits or probabilities."""

    kind: Literal["classification"] = Field(description="Decoder selector.")
    output: str = Field(min_length=1, description="Graph output name of the [batch, classes] tensor.")
    scores: Literal["logits", "probabilities"] = Field(
        default="logits", description="Whether the tensor needs a softmax to become probabilities."
    )
    top_k: int = Field(default=5, ge=1, le=1000, description="How many classes to report per image.")


class _DetectionCommon(_Frozen):
    score_threshold: float = Field(default=0.25, ge=0, le=1, description="Drop detections scoring below.")
    iou_threshold: float = Field(default=0.45, gt=0, le=1, description="NMS IoU above which boxes merge.")
    max_detections: int = Field(default=100, ge=1, le=10000, description="Keep at most this many per image.")
    class_agnostic: bool = Field(default=False, description="NMS across classes instead of per class.")
    box_format: BoxFormat = Field(default=BoxFormat.CXCYWH, description="Box coordinate convention.")
    normalized: bool = Field(
        default=False, description="True when boxes are in 0-1 of the input size, False for input pixels."
    )


class YoloV5Output(_DetectionCommon):
    """YOLOv5-style [batch, boxes, 5 + classes]: box, objectness, per-class scores."""

    kind: Literal["yolov5"] = Field(description="Decoder selector.")
    output: str = Field(min_length=1, description="Graph output name of the [batch, boxes, 5+C] tensor.")


class YoloV8Output(_DetectionCommon):
    """YOLOv8/YOLO11-style [batch, 4 + classes, boxes]: box and per-class scores, no objectness."""

    kind: Literal["yolov8"] = Field(description="Decoder selector.")
    output: str = Field(min_length=1, description="Graph output name of the [batch, 4+C, boxes] tensor.")


class SsdOutput(_DetectionCommon):
    """SSD-style separate [batch, boxes, 4] box and [batch, boxes, classes] score tensors."""

    kind: Literal["ssd"] = Field(description="Decoder selector.")
    boxes: str = Field(min_length=1, description="Graph output name of the [batch, boxes, 4] tensor.")
    scores: str = Field(min_length=1, description="Graph output name of the [batch, boxes, C] tensor.")
    activation: Literal["none", "sigmoid", "softmax"] = Field(
        default="none", description="Applied to the score tensor before thresholding."
    )
    background_class: int | None = Field(
        default=None, ge=0, description="Score column that means 'no object' and is never reported."
    )


class NmsOutput(_DetectionCommon):
    """A graph with NMS inside: [batch, N, 4] boxes, [batch, N] labels and [batch, N] scores."""

    kind: Literal["nms"] = Field(description="Decoder selector.")
    boxes: str = Field(min_length=1, description="Graph output name of the [batch, N, 4] boxes.")
    labels: str = Field(min_length=1, description="Graph output name of the [batch, N] class ids.")
    scores: str = Field(min_length=1, description="Graph output name of the [batch, N] scores.")


class TensorSpec(_Frozen):
    """One raw output tensor, by name; rank and dtype are checked when given."""

    name: str = Field(min_length=1, description="Graph output name.")
    rank: int | None = Field(default=None, ge=1, le=8, description="Expected number of dims, batch axis included.")
    dtype: Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"] | None = Field(
        default=None, description="Expected element type (numpy name)."
    )


class TensorsOutput(_Frozen):
    """Outputs served undecoded, for models no decoder reads (OCR CTC [batch, T, C], probability maps
    [batch, 1, H, W], embeddings [batch, D]): the caller post-processes them, through the v2 tensor API."""

    kind: Literal["tensors"] = Field(description="Decoder selector.")
    outputs: tuple[TensorSpec, ...] = Field(
        min_length=1, description="The graph outputs served, each with a batch axis first; others are ignored."
    )
    atol: float = Field(default=1e-3, gt=0, description="Shadow agreement: absolute tolerance per element.")
    rtol: float = Field(default=1e-3, ge=0, description="Shadow agreement: relative tolerance per element.")

    @field_validator("outputs")
    @classmethod
    def _unique(cls, v: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError(f"output names must be unique, got {names}")
        return v


DetectionOutput = YoloV5Output | YoloV8Output | SsdOutput | NmsOutput
OutputSpec = Annotated[
    ClassificationOutput | YoloV5Output | YoloV8Output | SsdOutput | NmsOutput | TensorsOutput,
    Field(discriminator="kind"),
]


def task_of(output: ClassificationOutput | DetectionOutput | TensorsOutput) -> Task:
    """The task an output kind belongs to."""
    if isinstance(output, ClassificationOutput):
        return Task.CLASSIFICATION
    if isinstance(output, TensorsOutput):
        return Task.TENSORS
    return Task.DETECTION


class OutputReference(_Frozen):
    """What one output looked like on the golden input (see models.golden for the comparison)."""

    shape: tuple[int, ...] = Field(description="Exact output shape on the golden input.")
    dtype: str = Field(description="numpy dtype name of the output.")
    mean: float = Field(description="Mean of all elements (float64).")
    rms: float = Field(description="Root mean square of all elements (float64).")
    min: float = Field(description="Smallest element.")
    max: float = Field(description="Largest element.")
    sample: tuple[float, ...] = Field(description="Up to 64 elements at evenly spaced flat indices.")


class GoldenCheck(_Frozen):
    """A deterministic input and what the model must answer to it, within tolerance."""

    seed: int = Field(ge=0, lt=2**63, description="Seed of the numpy PCG64 generator of the input pixels.")
    atol: float = Field(default=1e-3, gt=0, description="Absolute tolerance per element.")
    rtol: float = Field(default=1e-3, ge=0, description="Relative tolerance per element.")
    digest: str = Field(default="", description="sha256 of the outputs quantised at atol; empty until recorded.")
    reference: dict[str, OutputReference] = Field(
        default_factory=dict, description="Per-output summary and sample; empty until recorded."
    )

    @property
    def recorded(self) -> bool:
        """True once validation has filled digest and reference."""
        return bool(self.digest) and bool(self.reference)


class ModelDescriptor(_Frozen):
    """Everything needed to validate, serve and decode one model version."""

    schema_version: Literal[1] = Field(default=1, description="Description schema version; only 1 exists.")
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="Model name: lowercase, digits, '.', '_', '-'."
    )
    version: str = Field(description="Semantic version of this model build (semver 2.0.0).")
    task: Task = Field(description="classification, detection or tensors (undecoded outputs).")
    input: InputSpec = Field(description="The image input tensor and its preprocessing.")
    output: OutputSpec = Field(description="How to decode the outputs; kind must fit the task.")
    labels: tuple[str, ...] = Field(default=(), description="Class names by class id; may be empty.")
    golden: GoldenCheck = Field(
        default_factory=lambda: GoldenCheck(seed=0), description="Golden check; recorded by validate()."
    )
    sha256: str | None = Field(default=None, description="sha256 hex of the .onnx bytes; set by validate().")
    size: int | None = Field(default=None, ge=1, description="Size of the .onnx bytes; set by validate().")

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not _SEMVER.match(v):
            raise ValueError(f"{v!r} is not a semantic version like 1.2.3 or 1.2.3-rc.1")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256.match(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v

    @model_validator(mode="after")
    def _task_fits_output(self) -> Self:
        if task_of(self.output) != self.task:
            raise ValueError(f"output kind {self.output.kind!r} does not fit task {self.task.value!r}")
        if self.task == Task.TENSORS and self.labels:
            raise ValueError("labels apply to classification and detection; output kind 'tensors' is not decoded")
        return self

    @property
    def complete(self) -> bool:
        """True when sha256, size and the golden reference are recorded (ready to ship)."""
        return self.sha256 is not None and self.size is not None and self.golden.recorded

    # --- serialisation -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The description as a JSON-compatible object (for the signed desired state)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict[str, Any] | str | bytes) -> ModelDescriptor:
        """Parse a JSON object (or its text); raises DescriptorError naming every bad field."""
        try:
            if isinstance(data, str | bytes):
                return cls.model_validate_json(data)
            return cls.model_validate(data)
        except ValidationError as e:
            raise DescriptorError(f"invalid model description: {_explain(e)}") from e

    @classmethod
    def load(cls, path: str | Path) -> ModelDescriptor:
        """Read a sidecar description (.yaml, .yml or .json).

        A sidecar may say `labels_file: NAME` (one label per line, relative to the sidecar) instead of
        listing `labels`.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DescriptorError(f"cannot read model description {p}: {e}") from e
        try:
            raw = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise DescriptorError(f"{p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {_where(e)}") from e
        if not isinstance(raw, dict):
            raise DescriptorError(f"{p} must hold a mapping of fields, not {type(raw).__name__}")
        labels_file = raw.pop("labels_file", None)
        if labels_file is not None:
            if "labels" in raw:
                raise DescriptorError(f"{p}: give either labels or labels_file, not both")
            try:
                lines = (p.parent / str(labels_file)).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise DescriptorError(f"{p}: cannot read labels_file {labels_file!r}: {e}") from e
            raw["labels"] = [ln.strip() for ln in lines if ln.strip()]
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise DescriptorError(f"invalid model description {p}: {_explain(e)}") from e

    def save(self, path: str | Path) -> Path:
        """Write the description as YAML (or JSON when the suffix is .json); returns the path."""
        p = Path(path)
        data = self.to_json()
        text = json.dumps(data, indent=2) + "\n" if p.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
        p.write_text(text, encoding="utf-8")
        return p


def _where(e: json.JSONDecodeError | yaml.YAMLError) -> str:
    """A parse error in one line: its line and column (from 1) and what was wrong (PyYAML's own text spans
    several lines and quotes the document)."""
    if isinstance(e, json.JSONDecodeError):
        return f"line {e.lineno}, column {e.colno}: {e.msg}"
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or " ".join(str(e).split())
    return problem if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def sidecar_for(onnx_path: str | Path) -> Path:
    """The sidecar description next to `onnx_path` (model.onnx -> model.yaml/.yml/.json)."""
    p = Path(onnx_path)
    for suffix in SIDECAR_SUFFIXES:
        candidate = p.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise DescriptorError(f"no description next to {p}: write {p.with_suffix('.yaml').name} (see docs/models.md)")


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see docs/models.md for the fields)"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
