"""One valid instance of every wire message, shared by the fleet tests."""

from __future__ import annotations

from fleet.histogram import LatencyRecorder
from fleet.messages import (
    AppliedModel,
    Capabilities,
    Command,
    CommandAck,
    CommandName,
    DesiredModel,
    DesiredState,
    DeviceStatus,
    DownloadProgress,
    ErrorInfo,
    GpuInfo,
    GpuSample,
    MigInstance,
    ModelRef,
    ModelStatus,
    ModelWindow,
    NodeInfo,
    Phase,
    ReportedState,
    RuntimeOptions,
    ShadowSpec,
    ShadowStats,
    TelemetryWindow,
    Want,
    Wire,
)
from fleet.plan import plan_bytes
from fleet.signing import HubSigningKey

T0 = 1_780_000_000.0
BLOB = bytes(range(256)) * 5000  # 1.28 MB
MANIFEST = plan_bytes(BLOB, chunk_size=64 * 1024)


def model_ref(version: str = "1.0.0", name: str = "resnet-lite") -> ModelRef:
    return ModelRef(
        name=name,
        version=version,
        task="classification",
        blob=MANIFEST,
        descriptor={"input": {"name": "x", "shape": [1, 3, 224, 224]}, "labels": ["cat", "dog"]},
    )


def desired(device_id: str = "cam-001", version: int = 7, expires_at: float = T0 + 3600) -> DesiredState:
    return DesiredState(
        device_id=device_id,
        version=version,
        issued_at=T0,
        expires_at=expires_at,
        models=[
            DesiredModel(
                model=model_ref(),
                runtime=RuntimeOptions(providers=["CUDAExecutionProvider", "CPUExecutionProvider"], max_batch=16),
                shadow=ShadowSpec(model=model_ref("1.1.0"), sample_rate=0.1),
                rollout_id="r-42",
            ),
            DesiredModel(model=model_ref("2.3.0", name="plate-ocr")),
        ],
    )


def all_messages() -> list[Wire]:
    rec = LatencyRecorder()
    for ms in (0.3, 1.2, 4.0, 4.5, 9.0, 120.0, 9000.0):
        rec.observe(ms)
    applied = AppliedModel(name="resnet-lite", version="1.0.0", sha256=MANIFEST.sha256, provider="CPU", activated_at=T0)
    key = HubSigningKey.generate()
    command = Command(
        device_id="cam-001",
        version=3,
        issued_at=T0,
        expires_at=T0 + 60,
        correlation_id="c-1",
        name=CommandName.REPORT_NOW,
        args={"verbose": True, "n": 3},
    )
    return [
        DeviceStatus(
            device_id="cam-001",
            state="online",
            ts=T0,
            session="a1b2",
            labels={"site": "berlin"},
            capabilities=Capabilities(
                agent_version="0.1.0",
                onnxruntime_version="1.32.0",
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                cpu_count=8,
                memory_bytes=16 << 30,
                disk_free_bytes=10 << 30,
                platform="Linux-x86_64",
                gpus=[
                    GpuInfo(
                        index=0,
                        name="NVIDIA A100",
                        memory_bytes=40 << 30,
                        mig_mode=True,
                        mig_instances=[MigInstance(profile="1g.5gb", memory_bytes=5 << 30)],
                    )
                ],
                mode="k3s",
                nodes=[NodeInfo(name="n1", ready=True, gpu_product="A100", allocatable={"nvidia.com/gpu": "1"})],
            ),
        ),
        DeviceStatus(device_id="cam-001", state="offline", ts=T0),
        desired(),
        command,
        ReportedState(
            device_id="cam-001",
            seq=12,
            ts=T0,
            desired_version=7,
            models=[
                ModelStatus(
                    name="resnet-lite",
                    phase=Phase.DOWNLOADING,
                    active=applied,
                    download=DownloadProgress(
                        sha256=MANIFEST.sha256,
                        have_chunks=3,
                        total_chunks=20,
                        bytes_done=3 << 16,
                        bytes_total=MANIFEST.size,
                    ),
                    error=ErrorInfo(code="golden_mismatch", message="output differs by 0.3 > 0.001", at=T0),
                ),
                ModelStatus(
                    name="plate-ocr", phase=Phase.IDLE, previous=applied.model_copy(update={"name": "plate-ocr"})
                ),
            ],
            error=ErrorInfo(code="bad_signature", message="signature does not match the body", at=T0),
        ),
        TelemetryWindow(
            device_id="cam-001",
            seq=99,
            start=T0,
            end=T0 + 10,
            models=[
                ModelWindow(
                    name="resnet-lite",
                    version="1.0.0",
                    provider="CPUExecutionProvider",
                    requests=7,
                    errors=1,
                    latency=rec.snapshot(),
                    queue_depth=2,
                    shadow=ShadowStats(candidate_version="1.1.0", samples=10, agreements=9, latency_delta_ms=0.4),
                ),
                ModelWindow(name="plate-ocr", version="2.3.0", requests=3, latency=rec.snapshot()),
            ],
            cpu_percent=37.5,
            memory_bytes=120 << 20,
            gpus=[GpuSample(index=0, util_percent=55.0, memory_used_bytes=1 << 30)],
        ),
        Want(device_id="cam-001", sha256=MANIFEST.sha256, missing=[(0, 3), (7, 8)]),
        CommandAck(device_id="cam-001", correlation_id="c-1", ok=True, result={"seq": 12}),
        key.sign(command),
    ]
