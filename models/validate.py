"""Validation of an .onnx file against its description, recording the golden check.

Order (cheapest and most actionable failure first): sha256/size streamed from disk, protobuf parse,
opset/IR support of the installed onnxruntime, `onnx.checker` full check, strict shape inference,
input/output signature against the task and description, one CPU run on the golden input whose concrete
outputs must fit the declared decoder (models.layouts).

Outputs that are not numeric tensors (skl2onnx's ZipMap `seq(map(...))`, sequences, string tensors) are
ignored: never run, never served, listed in the report. Only a decoder that names one refuses the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from fleet.files import file_digest
from models import golden as golden_mod
from models.descriptor import (
    ClassificationOutput,
    Layout,
    ModelDescriptor,
    NmsOutput,
    SsdOutput,
    TensorsOutput,
    YoloV5Output,
    YoloV8Output,
)
from models.engine import Engine, EngineOptions, max_supported_opset
from models.errors import (
    DigestMismatch,
    InvalidModelFile,
    ShapeInferenceFailed,
    SignatureMismatch,
    UnsupportedOpset,
)
from models.layouts import check_outputs

_ELEM = {
    "float32": onnx.TensorProto.FLOAT,
    "float16": onnx.TensorProto.FLOAT16,
    "uint8": onnx.TensorProto.UINT8,
}
_OUT_ELEM = {
    **_ELEM,
    "float64": onnx.TensorProto.DOUBLE,
    "int64": onnx.TensorProto.INT64,
    "int32": onnx.TensorProto.INT32,
    "int8": onnx.TensorProto.INT8,
    "bool": onnx.TensorProto.BOOL,
}
Dim = int | str | None


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """A validated model: its digest, opset, signature and the description with golden/sha256/size set."""

    descriptor: ModelDescriptor
    sha256: str
    size: int
    opset: int
    ir_version: int
    inputs: dict[str, tuple[Dim, ...]]
    outputs: dict[str, tuple[Dim, ...]]
    golden_matched: bool | None
    ignored_outputs: dict[str, str] = field(default_factory=dict)
    """Outputs that are not numeric tensors, by name, with their ONNX type: not run, not served."""


def validate(
    onnx_path: str | Path,
    descriptor: ModelDescriptor,
    *,
    atol: float | None = None,
    rtol: float | None = None,
) -> ValidationReport:
    """Check an .onnx file against its description and record the golden output.

    If the description already records sha256/size/golden, they must match (a mismatch raises); otherwise
    they are filled in. `atol`/`rtol` override the description's golden tolerances.

    Raises:
        InvalidModelFile: missing, truncated, not ONNX, or fails onnx.checker.
        ShapeInferenceFailed: strict shape inference fails.
        UnsupportedOpset: opset or IR version newer than the installed onnxruntime.
        SignatureMismatch: inputs/outputs do not fit the task and description.
        OutputMismatch: the golden run's outputs do not fit the declared decoder (names the likely kind).
        DigestMismatch: the bytes differ from a recorded sha256/size.
        GoldenMismatch: the output differs from a recorded golden check.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise InvalidModelFile(f"{path} does not exist or is not a file")
    sha, size = file_digest(path)
    if descriptor.sha256 is not None and descriptor.sha256 != sha:
        raise DigestMismatch(f"{path.name} has sha256 {sha}; the description records {descriptor.sha256}")
    if descriptor.size is not None and descriptor.size != size:
        raise DigestMismatch(f"{path.name} has {size} bytes; the description records {descriptor.size}")
    if size == 0:
        raise InvalidModelFile(f"{path.name} is empty (0 bytes)")

    model = _parse(path)
    opset, ir = _check_opset(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise InvalidModelFile(f"{path.name} fails onnx.checker: {_first_line(e)}") from e
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        raise ShapeInferenceFailed(f"{path.name} fails shape inference: {_first_line(e)}") from e

    inputs, outputs = _signature(inferred)
    ignored = _not_tensors(inferred)
    check_signature(descriptor, inputs, outputs, _elem_types(inferred), ignored)

    opts = EngineOptions(providers=("cpu",), warmup_runs=1, golden="skip")
    engine = Engine.load(path, descriptor, opts)
    try:
        feed = engine.golden_feed()
        result = engine.infer(feed)
    finally:
        engine.close()
    check_outputs(descriptor, result, batch=int(feed[descriptor.input.name].shape[0]))
    g = descriptor.golden
    matched: bool | None = None
    if g.recorded:  # a recorded check must still pass, whatever new tolerances are asked for
        golden_mod.compare(result, g)
        matched = True
    recorded = g
    if not g.recorded or atol is not None or rtol is not None:
        new_atol = atol if atol is not None else g.atol
        recorded = golden_mod.record(result, g.seed, new_atol, rtol if rtol is not None else g.rtol)
    described = descriptor.model_copy(update={"sha256": sha, "size": size, "golden": recorded})
    served = {k: v for k, v in outputs.items() if k not in ignored}
    return ValidationReport(described, sha, size, opset, ir, inputs, served, matched, ignored)


def _parse(path: Path) -> Any:
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends: untyped in onnx
        raise InvalidModelFile(
            f"{path.name} is not an ONNX model (protobuf does not parse: {_first_line(e)}); "
            "was it truncated in transfer or is it another format?"
        ) from e
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise InvalidModelFile(f"{path.name} is not an ONNX model (no IR version or empty graph)")
    external = [t for t in _tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        where = sorted({e.value for t in external for e in t.external_data if e.key == "location"})
        raise InvalidModelFile(
            f"{path.name} keeps the data of {len(external)} tensors in {', '.join(where) or 'another file'} "
            "(ONNX external data); a model version is one .onnx file, which is all the hub stores and agents "
            "receive: save it with the weights inside (onnx.save_model(onnx.load(path), out, "
            "save_as_external_data=False); possible below protobuf's 2 GiB limit)"
        )
    return model


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initialisers, sparse ones and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _check_opset(model: Any) -> tuple[int, int]:
    opsets = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
    opset = opsets.get("ai.onnx")
    if opset is None:
        raise InvalidModelFile("model imports no default-domain (ai.onnx) opset")
    supported = max_supported_opset()
    if opset > supported:
        raise UnsupportedOpset(
            f"model uses opset {opset}; the installed onnxruntime supports up to {supported}: "
            f"re-export with opset <= {supported} or upgrade onnxruntime"
        )
    if model.ir_version > onnx.IR_VERSION:
        raise UnsupportedOpset(f"model IR version {model.ir_version} is newer than supported ({onnx.IR_VERSION})")
    return opset, int(model.ir_version)


def _dims(vi: Any) -> tuple[Dim, ...]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return ()
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)


def _signature(model: Any) -> tuple[dict[str, tuple[Dim, ...]], dict[str, tuple[Dim, ...]]]:
    inits = {i.name for i in model.graph.initializer}
    ins = {vi.name: _dims(vi) for vi in model.graph.input if vi.name not in inits}
    outs = {vi.name: _dims(vi) for vi in model.graph.output}
    return ins, outs


def _not_tensors(model: Any) -> dict[str, str]:
    """Graph outputs that are not tensors of a served element type, with their type as ONNX prints it."""
    served = set(_OUT_ELEM.values())
    return {
        vi.name: _type_text(vi.type)
        for vi in model.graph.output
        if vi.type.WhichOneof("value") != "tensor_type" or vi.type.tensor_type.elem_type not in served
    }


def _type_text(t: Any) -> str:
    """An ONNX type as onnxruntime names it: `tensor(string)`, `seq(map(int64,tensor(float)))`."""

    def elem(e: int) -> str:
        return str(onnx.TensorProto.DataType.Name(e)).lower()

    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({elem(t.tensor_type.elem_type)})"
    if kind == "sparse_tensor_type":
        return f"sparse_tensor({elem(t.sparse_tensor_type.elem_type)})"
    if kind == "sequence_type":
        return f"seq({_type_text(t.sequence_type.elem_type)})"
    if kind == "map_type":
        return f"map({elem(t.map_type.key_type)},{_type_text(t.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({_type_text(t.optional_type.elem_type)})"
    return str(kind or "an undefined type")


def _elem_types(model: Any) -> dict[str, int]:
    return {vi.name: vi.type.tensor_type.elem_type for vi in [*model.graph.input, *model.graph.output]}


def check_signature(
    d: ModelDescriptor,
    inputs: dict[str, tuple[Dim, ...]],
    outputs: dict[str, tuple[Dim, ...]],
    elem_types: dict[str, int] | None = None,
    ignored: dict[str, str] | None = None,
) -> None:
    """Raise SignatureMismatch unless the graph's inputs/outputs fit the description and task.

    `ignored`: outputs that are not numeric tensors (name to type); refused only where a decoder names one.
    """
    not_tensors = ignored or {}

    def tensor_output(name: str, what: str) -> None:
        if name not in outputs:
            raise SignatureMismatch(f"graph has no output {name!r} ({what}); its outputs are {sorted(outputs)}")
        if name in not_tensors:
            raise SignatureMismatch(
                f"output {name!r} is {not_tensors[name]}, not a numeric tensor; {what} needs one "
                "(skl2onnx: convert with options={'zipmap': False})"
            )

    spec = d.input
    task = d.task.value
    if spec.name not in inputs:
        raise SignatureMismatch(f"graph has no input {spec.name!r}; its inputs are {sorted(inputs)}")
    extra = sorted(set(inputs) - {spec.name})
    if extra:
        raise SignatureMismatch(f"graph has inputs {extra} besides {spec.name!r}; a vision model takes one image")
    dims = inputs[spec.name]
    if len(dims) != 4:
        unbatched = (
            f": {_shape(dims)} looks like one image without a batch axis, which is not served (requests are "
            "batched on a first axis): re-export with one (torch.onnx.export: an example input of shape "
            f"[1, ...] and dynamic_axes={{{spec.name!r}: {{0: 'batch'}}}}), or feed the graph through a "
            "Squeeze(axes=[0]) from a new [1, ...] input and Unsqueeze(axes=[0]) its outputs"
            if len(dims) == 3
            else ""
        )
        raise SignatureMismatch(
            f"input {spec.name!r} has {len(dims)} dims; {task} needs 4 ({spec.layout.value}: batch, "
            f"{'channels, height, width' if spec.layout == Layout.NCHW else 'height, width, channels'}){unbatched}"
        )
    c, h, w = (dims[1], dims[2], dims[3]) if spec.layout == Layout.NCHW else (dims[3], dims[1], dims[2])
    if isinstance(c, int) and c != 3:
        raise SignatureMismatch(f"input {spec.name!r} has {c} channels at the {spec.layout.value} channel axis; need 3")
    for axis, got, want in (("height", h, spec.height), ("width", w, spec.width)):
        if isinstance(got, int) and got != want:
            raise SignatureMismatch(f"input {spec.name!r} has fixed {axis} {got}; the description says {want}")
        if not isinstance(got, int) and not spec.dynamic_size:
            raise SignatureMismatch(
                f"input {spec.name!r} has a dynamic {axis}; set input.dynamic_size: true in the description"
            )
    if elem_types is not None and elem_types.get(spec.name) != _ELEM[spec.dtype]:
        got_type = onnx.TensorProto.DataType.Name(elem_types.get(spec.name, 0))
        raise SignatureMismatch(
            f"input {spec.name!r} has ONNX element type {got_type}; the description says {spec.dtype}"
        )

    def need(name: str, rank: int, what: str) -> tuple[Dim, ...]:
        tensor_output(name, what)
        got = outputs[name]
        if len(got) != rank:
            hint = "" if isinstance(d.output, TensorsOutput) else " (if no output kind reads it: kind: tensors)"
            raise SignatureMismatch(f"output {name!r} has {len(got)} dims; {what} needs {rank}{hint}")
        return got

    n = len(d.labels)
    o = d.output
    if isinstance(o, ClassificationOutput):
        dims_o = need(o.output, 2, "classification [batch, classes]")
        _count(o.output, dims_o[1], n, 0, "classes")
    elif isinstance(o, YoloV5Output):
        dims_o = need(o.output, 3, "YOLOv5 [batch, boxes, 5+classes]")
        _count(o.output, dims_o[2], n, 5, "5 + classes at axis 2")
    elif isinstance(o, YoloV8Output):
        dims_o = need(o.output, 3, "YOLOv8 [batch, 4+classes, boxes]")
        _count(o.output, dims_o[1], n, 4, "4 + classes at axis 1")
    elif isinstance(o, SsdOutput):
        b = need(o.boxes, 3, "SSD boxes [batch, boxes, 4]")
        s = need(o.scores, 3, "SSD scores [batch, boxes, classes]")
        _count(o.boxes, b[2], 4, 0, "4 box coordinates at axis 2")
        if isinstance(b[1], int) and isinstance(s[1], int) and b[1] != s[1]:
            raise SignatureMismatch(f"SSD boxes have {b[1]} anchors but scores have {s[1]}")
    elif isinstance(o, NmsOutput):
        b = need(o.boxes, 3, "NMS boxes [batch, N, 4]")
        _count(o.boxes, b[2], 4, 0, "4 box coordinates at axis 2")
        need(o.labels, 2, "NMS labels [batch, N]")
        need(o.scores, 2, "NMS scores [batch, N]")
    elif isinstance(o, TensorsOutput):
        for t in o.outputs:
            tensor_output(t.name, "kind: tensors")
            if t.rank is not None and len(outputs[t.name]) != t.rank:
                got_rank = len(outputs[t.name])
                raise SignatureMismatch(f"output {t.name!r} has {got_rank} dims; the description says rank {t.rank}")
            elem = _OUT_ELEM.get(t.dtype) if t.dtype is not None else None
            if elem_types is not None and elem is not None and elem_types.get(t.name) != elem:
                got_type = onnx.TensorProto.DataType.Name(elem_types.get(t.name, 0))
                raise SignatureMismatch(
                    f"output {t.name!r} has ONNX element type {got_type}; the description says {t.dtype}"
                )


def _count(name: str, dim: Dim, n: int, offset: int, what: str) -> None:
    if isinstance(dim, int) and n and dim != n + offset:
        raise SignatureMismatch(f"output {name!r} has {dim} at the axis of {what}; the {n} labels imply {n + offset}")
    if isinstance(dim, int) and dim <= offset:
        raise SignatureMismatch(f"output {name!r} has {dim} at the axis of {what}; too few")


def _shape(dims: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in dims) + "]"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
