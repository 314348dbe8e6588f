"""The inference engine over onnxruntime: the only module of the project that imports onnxruntime.

`Engine.load` creates a session with the requested execution providers (intersected with what this
onnxruntime build offers, falling back in order), warms it up, runs the golden check and only then
returns a ready engine. `Engine.infer` checks every input (name, dtype, rank, fixed dims) and raises
`InvalidInput` instead of letting onnxruntime fail. When onnxruntime still refuses inputs of shapes the
engine has never run (a symbolic size the network cannot take, e.g. 31x33 into a stride-32 detector), that
is the input's fault too: `InvalidInput` with onnxruntime's reason in one line. A failure on shapes that ran
before (the golden input's, or any that succeeded) is the engine's: `InferenceFailed`. Both are safe to call
from several threads at once.

onnxruntime's native logger is set to fatal only (it would print one ANSI-coloured line to stderr per failed
run); its errors come back as exceptions, which this module logs through `logging` (`models.engine`): the
input's faults at DEBUG (they are answered to the caller), the engine's at WARNING.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.descriptor import ModelDescriptor
from models.errors import (
    DescriptorError,
    EngineNotReady,
    InferenceFailed,
    InvalidInput,
    InvalidModelFile,
    ProviderUnavailable,
)
from models.golden import GoldenResult, compare, golden_input

Array = npt.NDArray[np.generic]
Shapes = tuple[tuple[int, ...], ...]

_log = logging.getLogger(__name__)
NATIVE_LOG_SEVERITY = 4
"""onnxruntime's own logger: 4 = fatal only. Errors reach us as exceptions and are logged through `logging`."""
ort.set_default_logger_severity(NATIVE_LOG_SEVERITY)  # before any session creates onnxruntime's environment
KNOWN_SHAPES = 256
"""Input shapes remembered as run successfully per engine (beyond it, new shapes are not remembered)."""
_CODE = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE = re.compile(r"\S+\.(?:cc|h|cpp|hpp|cu):\d+ (?:[\w:~<>,&* ]+\([^()]*\)(?: const)? )?")

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_ORT_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(bool)": np.dtype(np.bool_),
}
_NP_OF_ORT = {k: v.type for k, v in _ORT_DTYPES.items()}
_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def onnxruntime_version() -> str:
    """The installed onnxruntime version."""
    return str(ort.__version__)


def available_providers() -> tuple[str, ...]:
    """Execution providers this onnxruntime build offers, in its preference order."""
    return tuple(ort.get_available_providers())


def provider_name(name: str) -> str:
    """Canonical provider name: 'cuda' -> 'CUDAExecutionProvider'; full names pass through."""
    return PROVIDER_ALIASES.get(name.lower(), name)


@functools.cache
def max_supported_opset() -> int:
    """Highest default-domain opset the installed onnxruntime loads (probed once with tiny models)."""
    import onnx  # noqa: PLC0415  (kept local: only the probe needs it)
    from onnx import TensorProto, helper  # noqa: PLC0415

    def loads(opset: int) -> bool:
        vi = helper.make_tensor_value_info
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "probe",
            [vi("x", TensorProto.FLOAT, [1])],
            [vi("y", TensorProto.FLOAT, [1])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = min(model.ir_version, onnx.IR_VERSION)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=[CPU])
        except Exception:  # any refusal means "not supported"
            return False
        return True

    lo, hi = 7, 64
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if loads(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


class EngineOptions(BaseModel):
    """How to run a model: providers, threads, optimisation, warm-up, golden check, CUDA extras."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    providers: tuple[str, ...] = Field(
        default=(CPU,),
        min_length=1,
        description="Execution providers in order of preference ('tensorrt', 'cuda', 'cpu' or full names); "
        "intersected with what this build offers, first that creates a session wins.",
    )
    intra_op_threads: int = Field(default=0, ge=0, description="Threads inside one op; 0 = one per core.")
    inter_op_threads: int = Field(default=0, ge=0, description="Threads across ops; 0 = onnxruntime default.")
    allow_spinning: bool = Field(
        default=False,
        description="Let idle intra-op threads spin. Off by default: spinning burnt CPU on 2-core hosts "
        "under concurrent load (see docs/benchmarks.md for both settings measured).",
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="onnxruntime graph optimisation level."
    )
    warmup_runs: int = Field(default=2, ge=0, le=100, description="Runs on the golden input before ready.")
    golden: Literal["require", "if_recorded", "skip"] = Field(
        default="require",
        description="require: fail load unless a recorded golden check passes; if_recorded: check when "
        "recorded; skip: no check (validation uses this to record it).",
    )
    device_id: int = Field(default=0, ge=0, description="GPU ordinal for CUDA/TensorRT providers.")
    io_binding: bool = Field(default=False, description="On CUDA, run through IOBinding (GPU buffers).")
    cuda_graphs: bool = Field(
        default=False, description="On CUDA, capture a CUDA graph per input shape (implies io_binding)."
    )

    @field_validator("providers")
    @classmethod
    def _canonical(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(provider_name(p) for p in v))


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A graph input or output: name, dims (int, or str/None when symbolic) and numpy dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype[Any]

    def describe(self) -> str:
        """Shape as text, symbolic dims as '?'."""
        return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in self.shape) + "]"


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What `Engine.load` did: active provider, providers skipped and why, warm-up and golden check."""

    active_provider: str
    session_providers: tuple[str, ...]
    fallbacks: tuple[tuple[str, str], ...]
    load_ms: float
    warmup_ms: float
    golden: GoldenResult | None


@dataclass
class _Bound:
    binding: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    graph_id: int
    lock: threading.Lock = field(default_factory=threading.Lock)


class Engine:
    """A ready onnxruntime session for one model version. Build with `Engine.load`."""

    def __init__(self, session: Any, descriptor: ModelDescriptor, options: EngineOptions, path: Path) -> None:
        self._session = session
        self.descriptor = descriptor
        self.options = options
        self.path = path
        self.inputs = tuple(_spec(x) for x in session.get_inputs())
        # outputs that are not numeric tensors (ZipMap's `seq(map(...))`, sequences, strings) have no decoder and
        # no v2 datatype: they are never requested from onnxruntime, so a model carrying them still serves
        outputs = session.get_outputs()
        self.outputs = tuple(_spec(x) for x in outputs if x.type in _ORT_DTYPES)
        self.ignored_outputs: tuple[tuple[str, str], ...] = tuple(
            (x.name, str(x.type)) for x in outputs if x.type not in _ORT_DTYPES
        )
        if not self.outputs:
            kinds = ", ".join(f"{n!r} ({t})" for n, t in self.ignored_outputs)
            raise InvalidModelFile(f"graph has no numeric tensor output to serve; its outputs are {kinds}")
        self._output_names = [o.name for o in self.outputs]
        self.active_provider: str = session.get_providers()[0]
        self._closed = False
        self._ran: set[Shapes] = set()  # input shapes that ran successfully: a failure on them is ours
        self._bound: dict[tuple[tuple[int, ...], ...], _Bound] = {}
        self._bound_lock = threading.Lock()
        self._use_binding = self.active_provider == CUDA and (options.io_binding or options.cuda_graphs)
        self.report: LoadReport | None = None

    @classmethod
    def load(cls, path: str | Path, descriptor: ModelDescriptor, options: EngineOptions | None = None) -> Engine:
        """Create the session, warm it up, run the golden check; return a ready engine.

        Raises:
            InvalidModelFile: onnxruntime cannot load the file.
            ProviderUnavailable: no requested provider is offered or works here.
            DescriptorError: golden check required but not recorded.
            GoldenMismatch: the golden check failed.
        """
        opts = options or EngineOptions()
        if opts.golden == "require" and not descriptor.golden.recorded:
            raise DescriptorError(
                f"{descriptor.name} {descriptor.version} has no recorded golden check: run `edgefleet model "
                "validate` (models.validate) to record it, or load with golden='if_recorded'"
            )
        p = Path(path)
        t0 = time.perf_counter()
        session, fallbacks = _create_session(p, opts)
        engine = cls(session, descriptor, opts, p)
        load_ms = (time.perf_counter() - t0) * 1e3
        t1 = time.perf_counter()
        feed = engine.golden_feed()
        engine._ran.add(_shapes(feed))  # the golden input is what the model must take
        outputs: dict[str, Array] = {}
        for _ in range(max(opts.warmup_runs, 1 if descriptor.golden.recorded else 0)):
            outputs = engine.infer(feed)
        warmup_ms = (time.perf_counter() - t1) * 1e3
        golden = None
        if opts.golden != "skip" and descriptor.golden.recorded:
            golden = compare(outputs, descriptor.golden)
        engine.report = LoadReport(
            engine.active_provider, tuple(session.get_providers()), fallbacks, load_ms, warmup_ms, golden
        )
        return engine

    # --- running -------------------------------------------------------------------------------------

    def golden_feed(self) -> dict[str, Array]:
        """The golden input at the graph's fixed batch size (1 when the batch axis is dynamic)."""
        d = self.descriptor
        return {d.input.name: golden_input(d.input, d.golden.seed, self.max_batch or 1)}

    @property
    def session(self) -> Any:
        """The underlying onnxruntime.InferenceSession (for benchmarks and diagnostics, unchecked)."""
        return self._session

    @property
    def max_batch(self) -> int | None:
        """The batch size the graph is fixed to, or None when the batch axis is dynamic."""
        dims = [s.shape[0] for s in self.inputs if s.shape and isinstance(s.shape[0], int)]
        return min(dims) if dims else None

    def check_inputs(self, inputs: Mapping[str, Any], *, partial_batch: bool = False) -> dict[str, Array]:
        """Validate names, types, dtypes, ranks and fixed dims; return contiguous arrays.

        `partial_batch`: a fixed batch axis of N may hold 1 to N rows (the batcher fills the run up to N with
        other requests' rows and padding); without it, exactly N.

        Raises:
            InvalidInput: naming the tensor, what was expected and what was given.
        """
        if not isinstance(inputs, Mapping):
            raise InvalidInput(f"inputs must be a mapping of name to array, not {type(inputs).__name__}")
        expected = {s.name for s in self.inputs}
        unknown = sorted(set(inputs) - expected)
        if unknown:
            raise InvalidInput(f"unknown input(s) {unknown}; the model takes {sorted(expected)}")
        out: dict[str, Array] = {}
        batch: int | None = None
        for spec in self.inputs:
            if spec.name not in inputs:
                raise InvalidInput(f"input {spec.name!r} is missing; the model takes {sorted(expected)}")
            a = inputs[spec.name]
            if not isinstance(a, np.ndarray):
                raise InvalidInput(f"input {spec.name!r} must be a numpy array, not {type(a).__name__}")
            if a.dtype != spec.dtype:
                raise InvalidInput(f"input {spec.name!r} has dtype {a.dtype}; the model expects {spec.dtype}")
            if a.ndim != len(spec.shape):
                raise InvalidInput(
                    f"input {spec.name!r} has shape {list(a.shape)} ({a.ndim} dims); "
                    f"the model expects {spec.describe()} ({len(spec.shape)} dims)"
                )
            for i, (want, got) in enumerate(zip(spec.shape, a.shape, strict=True)):
                short = partial_batch and i == 0 and isinstance(want, int) and got < want  # filled by the batcher
                if (isinstance(want, int) and want != got and not short) or got == 0:
                    raise InvalidInput(
                        f"input {spec.name!r} has shape {list(a.shape)}; the model expects {spec.describe()} "
                        f"(axis {i} is {got})"
                    )
            if a.ndim and batch is not None and a.shape[0] != batch:
                raise InvalidInput(f"input {spec.name!r} has batch {a.shape[0]}, other inputs have {batch}")
            batch = a.shape[0] if a.ndim else batch
            out[spec.name] = np.ascontiguousarray(a)
        return out

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Array]:
        """Run the model; returns outputs by name.

        Raises:
            InvalidInput: a tensor is missing, unknown, or has the wrong dtype or shape.
            InferenceFailed: onnxruntime failed on the inputs.
            EngineNotReady: the engine was closed.
        """
        if self._closed:
            raise EngineNotReady("engine is closed; send the request to the current engine")
        feed = self.check_inputs(inputs)
        return self.run_checked(feed)

    def run_checked(self, feed: dict[str, Array]) -> dict[str, Array]:
        """Run inputs already passed through `check_inputs` (the batcher's hot path)."""
        try:
            if self._use_binding:
                out = self._run_bound(feed)
            else:
                out = dict(zip(self._output_names, self._session.run(self._output_names, feed), strict=True))
        except (InvalidInput, EngineNotReady):
            raise
        except Exception as e:
            raise self._failure(feed, e) from e
        if len(self._ran) < KNOWN_SHAPES:
            self._ran.add(_shapes(feed))
        return out

    def _failure(self, feed: dict[str, Array], e: Exception) -> InvalidInput | InferenceFailed:
        """onnxruntime's error as the input's fault (shapes never run, or an invalid argument) or ours."""
        shapes = {k: list(v.shape) for k, v in feed.items()}
        reason = one_line(str(e))
        if type(e).__name__ == "InvalidArgument" or _shapes(feed) not in self._ran:
            _log.debug("%s %s: inputs %s refused by onnxruntime: %s", self.descriptor.name, self.descriptor.version,
                       shapes, reason)  # fmt: skip
            return InvalidInput(f"the model cannot take inputs of shapes {shapes}: {reason}")
        _log.warning("%s %s: onnxruntime failed on inputs %s it ran before: %s", self.descriptor.name,
                     self.descriptor.version, shapes, reason)  # fmt: skip
        return InferenceFailed(f"onnxruntime failed on inputs {shapes}: {reason}")

    def close(self) -> None:
        """Release the session; later calls raise EngineNotReady."""
        self._closed = True
        self._bound.clear()

    # --- CUDA IOBinding / CUDA graphs ------------------------------------------------------------------

    def _run_bound(self, feed: dict[str, Array]) -> dict[str, Array]:
        key = tuple(tuple(feed[s.name].shape) for s in self.inputs)
        with self._bound_lock:
            bound = self._bound.get(key)
            if bound is None:
                bound = self._bind(feed, len(self._bound))
                self._bound[key] = bound
        run_options = ort.RunOptions()
        if self.options.cuda_graphs:
            run_options.add_run_config_entry("gpu_graph_id", str(bound.graph_id))
        with bound.lock:
            for name, value in bound.inputs.items():
                value.update_inplace(feed[name])
            self._session.run_with_iobinding(bound.binding, run_options)
            return {name: bound.outputs[name].numpy() for name in self._output_names}

    def _bind(self, feed: dict[str, Array], index: int) -> _Bound:
        """Fixed device buffers for one input shape; graph ids start at 1 (0 is reserved by onnxruntime)."""
        dev = self.options.device_id
        ins = {n: ort.OrtValue.ortvalue_from_numpy(a, "cuda", dev) for n, a in feed.items()}
        probe = self._session.io_binding()
        for n, v in ins.items():
            probe.bind_ortvalue_input(n, v)
        for n in self._output_names:
            probe.bind_output(n, "cuda", dev)
        skip = ort.RunOptions()
        skip.add_run_config_entry("gpu_graph_id", "-1")  # learn output shapes without capturing a graph
        self._session.run_with_iobinding(probe, skip)
        binding = self._session.io_binding()
        outs = {
            n: ort.OrtValue.ortvalue_from_shape_and_type(v.shape(), _NP_OF_ORT[v.data_type()], "cuda", dev)
            for n, v in zip(self._output_names, probe.get_outputs(), strict=True)
        }
        for n, v in ins.items():
            binding.bind_ortvalue_input(n, v)
        for n, v in outs.items():
            binding.bind_ortvalue_output(n, v)
        return _Bound(binding, ins, outs, index + 1)


def _shapes(feed: dict[str, Array]) -> Shapes:
    return tuple(v.shape for v in feed.values())


def one_line(message: str, limit: int = 400) -> str:
    """onnxruntime's error text as one line: its C++ source locations dropped, whitespace collapsed, bounded."""
    text = _SOURCE.sub("", _CODE.sub("", message.strip()))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _spec(arg: Any) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise InvalidModelFile(f"graph tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None) for d in arg.shape)
    return TensorSpec(arg.name, shape, dtype)


def _session_options(opts: EngineOptions) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.intra_op_threads
    so.inter_op_num_threads = opts.inter_op_threads
    so.graph_optimization_level = _OPT_LEVELS[opts.graph_optimization]
    so.log_severity_level = NATIVE_LOG_SEVERITY
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.allow_spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if opts.allow_spinning else "0")
    return so


def _provider_entry(name: str, opts: EngineOptions) -> tuple[str, dict[str, str]]:
    if name == CUDA:
        cfg = {"device_id": str(opts.device_id)}
        if opts.cuda_graphs:
            cfg["enable_cuda_graph"] = "1"
        return name, cfg
    if name == "TensorrtExecutionProvider":
        return name, {"device_id": str(opts.device_id)}
    return name, {}


def _create_session(path: Path, opts: EngineOptions) -> tuple[Any, tuple[tuple[str, str], ...]]:
    offered = set(available_providers())
    fallbacks: list[tuple[str, str]] = [
        (p, "not offered by this onnxruntime build") for p in opts.providers if p not in offered
    ]
    chain = [p for p in opts.providers if p in offered]
    if not chain:
        raise ProviderUnavailable(
            f"none of the requested providers {list(opts.providers)} is offered here; "
            f"available: {sorted(offered)}: add 'cpu' to the provider list"
        )
    if not path.is_file():
        raise InvalidModelFile(f"model file {path} does not exist")
    last: Exception | None = None
    for i, wanted in enumerate(chain):
        providers = [_provider_entry(p, opts) for p in chain[i:]]
        try:
            session = ort.InferenceSession(str(path), sess_options=_session_options(opts), providers=providers)
        except Exception as e:  # onnxruntime raises untyped errors
            text = str(e)
            if "Load model" in text or "INVALID_PROTOBUF" in text or "INVALID_GRAPH" in text:
                raise InvalidModelFile(f"onnxruntime cannot load {path.name}: {one_line(text, 800)}") from e
            fallbacks.append((wanted, f"session creation failed: {text[:300]}"))
            last = e
            continue
        active = session.get_providers()[0]
        if active != wanted:
            fallbacks.append((wanted, f"onnxruntime fell back to {active} (provider failed to initialise)"))
        return session, tuple(fallbacks)
    raise ProviderUnavailable(f"no requested provider could create a session for {path.name}: {fallbacks}") from last
