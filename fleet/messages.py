"""Message schemas of the protocol (pydantic v2, frozen, extra=forbid, a schema version on every one).

Timestamps are Unix seconds (float). Sizes are bytes. Every JSON message carries `schema_version` and
`kind`; `fleet.codec` refuses unknown versions and kinds with a typed error instead of guessing.

Schema 2 (several models per device): a desired state holds up to `MAX_MODELS` model slots, unique by model
name, each with its own blob, runtime options, shadow candidate and the rollout that set it; the reported
state says per model what the agent runs (phase, active, previous, shadow, download, error, cluster
workload) beside device-level fields; a telemetry window carries one entry per served model (counts,
latency histogram, queue depth, shadow stats, labelled by model and version) beside host metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.histogram import Histogram
from fleet.ids import DeviceId, Sha256
from fleet.limits import (
    MAX_COUNT,
    MAX_JSON_INT,
    Bytes,
    Count,
    JsonObject,
    Percent,
    Seq,
    SignedMillis,
    Timestamp,
    Version,
)  # fmt: skip

SCHEMA_VERSION = 2
MAX_MODELS = 16  # model slots per desired state (Triton-sized edge boxes serve a handful; 16 bounds the documents)

ModelName = Annotated[
    str,
    Field(pattern=r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$", description="model name: like a device id"),
]
SemVer = Annotated[
    str,
    Field(
        pattern=r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$",
        max_length=64,
        description="semantic version, e.g. 1.4.0 or 2.0.0-rc.1",
    ),
]
Task = Literal["classification", "detection", "tensors"]
TASKS: tuple[Task, ...] = ("classification", "detection", "tensors")
"""Every task this version's agent serves (its birth's `Capabilities.tasks`)."""
LEGACY_TASKS: tuple[Task, ...] = ("classification", "detection")
"""The tasks of an agent whose birth has no `tasks` (one from before `tensors`)."""
ShortText = Annotated[str, Field(max_length=2048)]
CommandArg = ShortText | Annotated[int, Field(ge=-MAX_JSON_INT, le=MAX_JSON_INT)] | float | bool


class Wire(BaseModel):
    """Base of every JSON wire message: frozen, unknown fields refused, finite numbers, a schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: Literal[2] = Field(default=2, description="protocol schema version")


class Part(BaseModel):
    """Base of nested parts of messages (no own schema version: the enclosing message has it)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# --- status / birth ---------------------------------------------------------------------------------


class MigInstance(Part):
    profile: str = Field(max_length=64, description="MIG profile, e.g. 1g.10gb")
    uuid: str | None = Field(default=None, max_length=128, description="MIG device UUID")
    memory_bytes: Bytes = Field(description="memory of the instance")


class GpuInfo(Part):
    index: Count = Field(description="NVML index")
    name: str = Field(max_length=128, description="product name, e.g. NVIDIA H100 80GB HBM3")
    uuid: str | None = Field(default=None, max_length=128, description="GPU UUID")
    memory_bytes: Bytes = Field(description="total memory")
    mig_mode: bool = Field(default=False, description="MIG mode enabled")
    mig_instances: list[MigInstance] = Field(default_factory=list, max_length=64, description="MIG slices")


class NodeInfo(Part):
    name: str = Field(max_length=253, description="Kubernetes node name")
    ready: bool = Field(description="node Ready condition")
    gpu_product: str | None = Field(default=None, max_length=128, description="nvidia.com/gpu.product label")
    allocatable: dict[str, str] = Field(default_factory=dict, description="allocatable resources (quantities)")
    labels: dict[str, str] = Field(default_factory=dict, description="node labels")


class Capabilities(Part):
    agent_version: str = Field(max_length=64, description="edgefleet agent version")
    onnxruntime_version: str = Field(max_length=64, description="onnxruntime version")
    providers: list[str] = Field(max_length=16, description="execution providers available on this device")
    cpu_count: int = Field(ge=1, le=MAX_COUNT, description="logical CPUs")
    memory_bytes: Bytes = Field(description="total RAM")
    disk_free_bytes: Bytes | None = Field(default=None, description="free bytes where models are stored")
    platform: str = Field(default="", max_length=128, description="OS and machine, e.g. Linux-x86_64")
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64, description="GPUs seen through NVML")
    mode: Literal["single", "k3s"] = Field(default="single", description="single-device or cluster mode")
    nodes: list[NodeInfo] = Field(default_factory=list, max_length=1024, description="K3s node inventory")
    tasks: list[Task] | None = Field(
        default=None,
        max_length=16,
        description="model tasks this agent serves; absent: an older agent, classification and detection only",
    )

    def served_tasks(self) -> tuple[Task, ...]:
        """The tasks this agent serves (`LEGACY_TASKS` when its birth does not say)."""
        return LEGACY_TASKS if self.tasks is None else tuple(self.tasks)


class DeviceStatus(Wire):
    """Retained on the status topic: a birth when the agent connects, `offline` as its last will.

    A connection's birth and will carry the same `ts`, the time of that connect; an `offline` published at a
    clean stop carries the stop time. The hub keeps a device's newest status: later `ts`, then `offline` after
    `online` at the same `ts`.
    """

    kind: Literal["status"] = "status"
    device_id: DeviceId
    state: Literal["online", "offline"]
    ts: Timestamp
    session: str = Field(default="", max_length=64, description="random id of this agent run")
    labels: dict[str, str] = Field(default_factory=dict, description="labels the agent was enrolled with")
    capabilities: Capabilities | None = Field(default=None, description="present in a birth")


# --- desired state (signed by the hub) ---------------------------------------------------------------


MAX_CHUNK = 64 << 20
MAX_CHUNKS = 1 << 20
ChunkLength = Annotated[int, Field(ge=1, le=MAX_CHUNK)]


class BlobManifest(Part):
    """What an agent needs to fetch and verify a blob chunk by chunk.

    Chunks are either fixed-size (`sizes` absent: every chunk is `chunk_size` bytes but the last) or cut by
    content (`sizes` lists each chunk's length, none above `chunk_size`), so that a new version of a model
    shares the chunks its unchanged bytes fall in and a device fetches only the others. The chunk list is
    signed together with the blob's sha256: a blob whose every chunk matches is the signed blob.
    """

    sha256: Sha256
    size: int = Field(ge=0, le=1 << 40, description="blob size")
    chunk_size: int = Field(
        ge=1024, le=MAX_CHUNK, description="the largest chunk (fixed-size chunking: every chunk but the last)"
    )
    chunks: list[Sha256] = Field(max_length=MAX_CHUNKS, description="sha256 of every chunk, in order")
    sizes: list[ChunkLength] | None = Field(
        default=None,
        max_length=MAX_CHUNKS,
        description="length of every chunk, in order, for content-defined chunks (absent: fixed-size chunks)",
    )

    @model_validator(mode="after")
    def _check_count(self) -> BlobManifest:
        if self.sizes is None:
            expected = -(-self.size // self.chunk_size)
            if len(self.chunks) != expected:
                raise ValueError(
                    f"{self.size} bytes in chunks of {self.chunk_size} need {expected} chunk digests, "
                    f"got {len(self.chunks)}"
                )
            return self
        if len(self.sizes) != len(self.chunks):
            raise ValueError(f"{len(self.chunks)} chunk digests but {len(self.sizes)} chunk sizes")
        if any(n > self.chunk_size for n in self.sizes):
            raise ValueError(f"a chunk is larger than chunk_size ({self.chunk_size} bytes)")
        if sum(self.sizes) != self.size:
            raise ValueError(f"chunk sizes add up to {sum(self.sizes)} bytes, not the blob's {self.size}")
        return self

    @property
    def count(self) -> int:
        return len(self.chunks)

    @property
    def content_defined(self) -> bool:
        """Whether chunk boundaries were chosen by content (`sizes` present)."""
        return self.sizes is not None

    @cached_property
    def _starts(self) -> tuple[list[int] | None, list[int]]:
        """(the sizes list they were computed from, each chunk's offset); not part of equality."""
        starts, at = [], 0
        for n in self.sizes or []:
            starts.append(at)
            at += n
        return self.sizes, starts

    def chunk_length(self, index: int) -> int:
        """Length of chunk `index`."""
        if self.sizes is not None:
            return self.sizes[index]
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def offset(self, index: int) -> int:
        """Where chunk `index` starts in the blob."""
        if self.sizes is not None:
            sizes, starts = self._starts
            if sizes is not self.sizes:  # model_copy(update=...) copied the cache of other sizes
                return sum(self.sizes[:index])
            return starts[index]
        return index * self.chunk_size

    def chunk_digest(self, index: int) -> bytes:
        """The signed sha256 of chunk `index`, raw."""
        return bytes.fromhex(self.chunks[index])


class ModelRef(Part):
    """A model version as an agent must fetch, check and run it."""

    name: ModelName
    version: SemVer
    task: Task
    blob: BlobManifest
    descriptor: JsonObject = Field(
        default_factory=dict, description="the models package description (pre/post-processing, golden check)"
    )


class Autoscaling(Part):
    """Cluster mode: a HorizontalPodAutoscaler scales the serving pods between two bounds on their CPU use."""

    min_replicas: int = Field(default=1, ge=1, le=64, description="fewest serving pods")
    max_replicas: int = Field(ge=1, le=64, description="most serving pods")
    cpu_percent: int = Field(
        default=80, ge=1, le=100, description="target average CPU utilisation of the serving pods, % of their request"
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self


class RuntimeOptions(Part):
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        max_length=8,
        description="execution providers in order of preference; unavailable ones are skipped",
    )
    max_batch: int = Field(default=8, ge=1, le=1024, description="dynamic batching: largest batch")
    max_queue_delay_ms: float = Field(default=2.0, ge=0, le=1000, description="batching: longest wait")
    max_queue: int = Field(default=64, ge=1, le=100_000, description="requests queued before 503")
    replicas: int = Field(default=1, ge=0, le=64, description="cluster mode: serving pods (without autoscaling)")
    gpus: int = Field(
        default=0, ge=0, le=16, description="cluster mode: nvidia.com/gpu per pod (with mig_profile: slices per pod)"
    )
    mig_profile: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[1-9][0-9]?g\.[1-9][0-9]{0,3}gb(\+me)?$",
        description="cluster mode: MIG profile of the slice per pod (nvidia.com/mig-<profile>), e.g. 1g.10gb",
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="cluster mode: scale the serving pods on CPU between these bounds; None: `replicas` fixed pods",
    )
    intra_op_threads: int | None = Field(default=None, ge=1, le=256, description="onnxruntime threads")


class ShadowSpec(Part):
    model: ModelRef
    sample_rate: float = Field(gt=0, le=1, description="fraction of live requests also run on the candidate")


class DesiredModel(Part):
    """One model slot of a desired state: a model version with its own blob, runtime options and shadow."""

    model: ModelRef = Field(description="the model version to serve (its name names the slot)")
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions, description="how to run it")
    shadow: ShadowSpec | None = Field(
        default=None, description="a candidate version of the same model to run beside it on sampled requests"
    )
    rollout_id: str | None = Field(default=None, max_length=64, description="the rollout that set this slot")

    @model_validator(mode="after")
    def _check_shadow(self) -> DesiredModel:
        if self.shadow is not None and self.shadow.model.name != self.model.name:
            raise ValueError(
                f"the shadow of model {self.model.name!r} must be a version of it, not {self.shadow.model.name!r}"
            )
        return self

    @property
    def name(self) -> str:
        """The slot's model name."""
        return self.model.name

    def refs(self) -> list[ModelRef]:
        """The model versions the slot names: its model, then its shadow candidate."""
        return [self.model] + ([self.shadow.model] if self.shadow is not None else [])


class DesiredState(Wire):
    """What one device should run: its model slots. Published only inside a SignedEnvelope.

    A model absent from `models` is not served (an empty list: serve nothing). The hub re-signs the whole
    document, as a new version, whenever any slot changes.
    """

    kind: Literal["desired"] = "desired"
    device_id: DeviceId
    version: Version = Field(description="monotonic per device: an agent refuses anything not newer")
    issued_at: Timestamp
    expires_at: Timestamp
    models: list[DesiredModel] = Field(
        default_factory=list, max_length=MAX_MODELS, description="the models to serve, unique by name"
    )

    @model_validator(mode="after")
    def _check_unique(self) -> DesiredState:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"model names must be unique in a desired state; repeated: {', '.join(twice)}")
        return self

    def slot(self, name: str) -> DesiredModel | None:
        """The slot of model `name` (None: the device should not serve it)."""
        return next((m for m in self.models if m.name == name), None)


class CommandName(StrEnum):
    PING = "ping"
    REPORT_NOW = "report_now"
    COLLECT_GARBAGE = "collect_garbage"


class Command(Wire):
    """A one-off instruction to a device. Published only inside a SignedEnvelope."""

    kind: Literal["command"] = "command"
    device_id: DeviceId
    version: Version = Field(description="monotonic per device for commands")
    issued_at: Timestamp
    expires_at: Timestamp
    correlation_id: str = Field(min_length=1, max_length=64)
    name: CommandName
    args: dict[str, CommandArg] = Field(default_factory=dict, max_length=64, description="named arguments")


# --- agent -> hub --------------------------------------------------------------------------------


class Phase(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    ACTIVATING = "activating"
    ACTIVE = "active"
    FAILED = "failed"


class AppliedModel(Part):
    name: ModelName
    version: SemVer
    sha256: Sha256
    provider: str | None = Field(default=None, max_length=64, description="active execution provider")
    activated_at: Timestamp | None = None


class DownloadProgress(Part):
    sha256: Sha256
    have_chunks: Count = Field(description="chunks verified and stored")
    total_chunks: Count = Field(description="chunks in the blob")
    bytes_done: Bytes = Field(description="bytes verified and stored")
    bytes_total: Bytes = Field(description="size of the blob")


class ErrorInfo(Part):
    code: str = Field(max_length=64, description="stable machine-readable code, e.g. bad_signature")
    message: ShortText
    permanent: bool = Field(default=True, description="False: the agent retries by itself")
    at: Timestamp


class ClusterWorkload(Part):
    """Cluster mode: the inference workload the agent applied on K3s and how far its rollout got."""

    namespace: str = Field(max_length=63, description="Kubernetes namespace of the workload")
    deployment: str = Field(max_length=253, description="name of the serving Deployment")
    generation: Seq = Field(default=0, description="metadata.generation of the applied Deployment")
    observed_generation: Seq = Field(default=0, description="status.observedGeneration")
    replicas: Count = Field(default=0, description="desired serving pods")
    ready_replicas: Count = Field(default=0, description="pods passing readiness")
    updated_replicas: Count = Field(default=0, description="pods on the current template")
    state: Literal["applying", "progressing", "ready", "failed"] = Field(description="rollout state")
    message: ShortText | None = Field(default=None, description="why the rollout is failed or still waiting")


class ModelStatus(Part):
    """What the agent does with one model: phase, the versions it holds, transfer, error, cluster workload."""

    name: ModelName
    phase: Phase
    active: AppliedModel | None = Field(default=None, description="the version serving now")
    previous: AppliedModel | None = Field(default=None, description="last-known-good, kept for an instant rollback")
    shadow: AppliedModel | None = Field(default=None, description="the shadow candidate running beside it")
    download: DownloadProgress | None = Field(default=None, description="its blob transfer in progress")
    error: ErrorInfo | None = Field(default=None, description="why its last step failed (it keeps serving active)")
    cluster: ClusterWorkload | None = Field(default=None, description="cluster mode: its serving workload")


def device_phase(phases: Iterable[Phase]) -> Phase:
    """The phase of a device from its models' phases: downloading or activating while any model is, else
    failed if any model failed, else active if any model serves, else idle."""
    found = set(phases)
    for p in (Phase.DOWNLOADING, Phase.ACTIVATING, Phase.FAILED, Phase.ACTIVE):
        if p in found:
            return p
    return Phase.IDLE


class ReportedState(Wire):
    """Retained on the reported topic: what the agent runs, model by model, and what it is doing."""

    kind: Literal["reported"] = "reported"
    device_id: DeviceId
    seq: Seq = Field(description="increases with every report of this agent")
    ts: Timestamp
    desired_version: Annotated[int, Field(ge=0, le=MAX_JSON_INT)] | None = Field(
        default=None, description="last desired version accepted"
    )
    models: list[ModelStatus] = Field(
        default_factory=list,
        max_length=2 * MAX_MODELS,
        description="every model it serves or was asked to serve, and models it stopped serving that it keeps "
        "as previous (idle)",
    )
    error: ErrorInfo | None = Field(
        default=None, description="device-level refusal: a desired state it did not accept (signature, schema)"
    )

    def model(self, name: str) -> ModelStatus | None:
        """The status of model `name` (None: the device does not know it)."""
        return next((m for m in self.models if m.name == name), None)

    @property
    def phase(self) -> Phase:
        """The device as a whole (`device_phase` of its models' phases)."""
        return device_phase(m.phase for m in self.models)

    @property
    def download(self) -> DownloadProgress | None:
        """The device's transfer in progress, whichever model it is for (an agent fetches one blob at a time)."""
        return next((m.download for m in self.models if m.download is not None), None)


class GpuSample(Part):
    index: Count = Field(description="NVML index")
    util_percent: Percent = Field(description="GPU utilisation over the window")
    memory_used_bytes: Bytes = Field(description="GPU memory in use")


class ShadowStats(Part):
    """What the shadow candidate did on the requests sampled in one window (one sample = one row/image)."""

    candidate_version: SemVer
    samples: Count = Field(description="rows both versions answered and that were compared")
    agreements: Count = Field(description="compared rows where the candidate agreed with the active version")
    incomparable: Count = Field(
        default=0,
        description="sampled rows the candidate could not take (tensor shapes or dtypes it does not accept), "
        "or whose answers cannot be compared: neither agreement nor disagreement",
    )
    latency_delta_ms: SignedMillis | None = Field(default=None, description="candidate minus active, mean ms")


class ModelWindow(Part):
    """One served model's share of a telemetry window."""

    name: ModelName
    version: SemVer = Field(description="the version that served (the active one when the window closed)")
    provider: str | None = Field(default=None, max_length=64, description="its execution provider")
    requests: Count = Field(default=0, description="inference requests in the window")
    errors: Count = Field(default=0, description="server errors (5xx) in the window; client errors are not")
    latency: Histogram = Field(default_factory=Histogram)
    queue_depth: Count = Field(default=0, description="requests waiting at the end of the window")
    shadow: ShadowStats | None = Field(default=None, description="its shadow candidate, if one ran")


class TelemetryWindow(Wire):
    """One metrics window. `seq` lets the hub drop duplicates and see gaps."""

    kind: Literal["telemetry"] = "telemetry"
    device_id: DeviceId
    seq: Seq = Field(description="the agent's window counter; gaps are lost windows")
    start: Timestamp
    end: Timestamp
    models: list[ModelWindow] = Field(
        default_factory=list, max_length=MAX_MODELS, description="per served model, unique by name"
    )
    cpu_percent: Percent | None = Field(default=None, description="host CPU utilisation")
    memory_bytes: Bytes | None = Field(default=None, description="the agent's resident memory")
    gpus: list[GpuSample] = Field(default_factory=list, max_length=64)
    spool_dropped: Count = Field(default=0, description="windows dropped because the spool was full")
    spool_capacity: Count | None = Field(default=None, description="bound of the agent's on-disk spool")
    spool_pending: Count = Field(default=0, description="windows waiting in the spool when this one was made")

    @model_validator(mode="after")
    def _check_window(self) -> TelemetryWindow:
        if self.end < self.start:
            raise ValueError(f"a window cannot end ({self.end}) before it starts ({self.start})")
        return self

    @model_validator(mode="after")
    def _check_unique(self) -> TelemetryWindow:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("a window has at most one entry per model")
        return self

    @property
    def requests(self) -> int:
        """Requests over every model."""
        return sum(m.requests for m in self.models)

    @property
    def errors(self) -> int:
        """Server errors over every model."""
        return sum(m.errors for m in self.models)


ChunkIndex = Annotated[int, Field(ge=0, le=MAX_JSON_INT)]
Range = tuple[ChunkIndex, ChunkIndex]


class Want(Wire):
    """The chunks an agent still misses, as sorted half-open ranges [start, end)."""

    kind: Literal["want"] = "want"
    device_id: DeviceId
    sha256: Sha256
    missing: list[Range] = Field(max_length=4096)

    @model_validator(mode="after")
    def _check_ranges(self) -> Want:
        last = -1
        for start, end in self.missing:
            if start < 0 or end <= start or start <= last:
                raise ValueError("missing must be sorted, disjoint, non-empty [start, end) ranges")
            last = end - 1
        return self

    def indexes(self, limit: int) -> list[int]:
        """The wanted indexes below `limit` (the blob's chunk count)."""
        return [i for start, end in self.missing for i in range(start, min(end, limit))]


class CommandAck(Wire):
    kind: Literal["command_ack"] = "command_ack"
    device_id: DeviceId
    correlation_id: str = Field(min_length=1, max_length=64)
    ok: bool
    error: ErrorInfo | None = None
    result: JsonObject = Field(default_factory=dict, description="what the command returned")


class SignedEnvelope(Wire):
    """An Ed25519 signature over the canonical JSON of `body` (see fleet.signing)."""

    kind: Literal["signed"] = "signed"
    alg: Literal["ed25519"] = "ed25519"
    key_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="first 16 bytes of sha256(raw public key), hex")
    body: JsonObject = Field(description="the signed desired state or command, as a JSON object")
    sig: str = Field(max_length=128, description="base64url signature, no padding")


MESSAGE_TYPES: tuple[type[Wire], ...] = (
    DeviceStatus, DesiredState, Command, ReportedState, TelemetryWindow, Want, CommandAck, SignedEnvelope,
)  # fmt: skip


def to_ranges(indexes: list[int] | set[int]) -> list[Range]:
    """Compress indexes into sorted half-open ranges: [0, 1, 2, 5] -> [(0, 3), (5, 6)]."""
    out: list[Range] = []
    for i in sorted(set(indexes)):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out
