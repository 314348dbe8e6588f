"""The wire contract hub and agent both speak: ids, topics, messages, signed envelopes, chunked blobs.

No network I/O lives here (the chunk receiver's files are its only I/O), so both sides and the tests
share one definition of every byte on the wire. Chunk planning (`fleet.plan`, FastCDC) is imported on its
own: only the hub cuts blobs, agents follow the signed manifest.
"""

from fleet.bitmap import ChunkBitmap
from fleet.chunks import (
    Accepted,
    ChunkFrame,
    ChunkReceiver,
    decode_frame,
    encode_frame,
    iter_frames,
    read_chunk,
)
from fleet.codec import MAX_MESSAGE_BYTES, decode, decode_any, encode
from fleet.histogram import LATENCY_BOUNDS_MS, Histogram, LatencyRecorder, merge_all
from fleet.ids import DEFAULT_PREFIX, check_device_id, check_sha256
from fleet.messages import (
    SCHEMA_VERSION,
    AppliedModel,
    BlobManifest,
    Capabilities,
    Command,
    CommandAck,
    CommandName,
    DesiredState,
    DeviceStatus,
    DownloadProgress,
    ErrorInfo,
    GpuInfo,
    GpuSample,
    MigInstance,
    ModelRef,
    NodeInfo,
    Phase,
    ReportedState,
    RuntimeOptions,
    ShadowSpec,
    ShadowStats,
    SignedEnvelope,
    TelemetryWindow,
    Want,
    Wire,
    to_ranges,
)
from fleet.signing import HubPublicKey, HubSigningKey, Verifier, canonical_json
from fleet.topics import TOPIC_TABLE, ParsedTopic, TopicKind, Topics, TopicSpec, spec

__all__ = [
    "DEFAULT_PREFIX", "LATENCY_BOUNDS_MS", "MAX_MESSAGE_BYTES", "SCHEMA_VERSION",
    "TOPIC_TABLE", "Accepted", "AppliedModel", "BlobManifest", "Capabilities", "ChunkBitmap", "ChunkFrame",
    "ChunkReceiver",
    "Command", "CommandAck", "CommandName", "DesiredState", "DeviceStatus", "DownloadProgress", "ErrorInfo",
    "GpuInfo", "GpuSample", "Histogram", "HubPublicKey", "HubSigningKey", "LatencyRecorder", "MigInstance",
    "ModelRef", "NodeInfo", "ParsedTopic", "Phase", "ReportedState", "RuntimeOptions", "ShadowSpec",
    "ShadowStats", "SignedEnvelope", "TelemetryWindow", "TopicKind", "TopicSpec", "Topics", "Verifier",
    "Want", "Wire", "canonical_json", "check_device_id", "check_sha256", "decode", "decode_any",
    "decode_frame", "encode", "encode_frame", "iter_frames", "merge_all",
    "read_chunk", "spec", "to_ranges",
]  # fmt: skip
