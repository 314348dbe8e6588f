"""Agent settings, grouped by concern. Every field documents its unit and why its default is what it is.

Settings come from code (tests), from the environment (`EDGEFLEET_AGENT_<GROUP>_<FIELD>`, e.g.
`EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S=10`; `EDGEFLEET_AGENT_DATA_DIR` for the top-level data directory)
and from CLI options, in that order of increasing precedence (`AgentSettings.from_env()`, the one policy of
`infra.settings`: an unknown `EDGEFLEET_AGENT_*` variable is refused naming the nearest valid one).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from infra.settings import EnvSettings, SettingsGroup, env_config

ENV_PREFIX = "EDGEFLEET_AGENT_"


class LinkSettings(SettingsGroup):
    """The MQTT link to the broker."""

    keepalive_s: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="MQTT keepalive, seconds; the broker publishes the last will after 1.5x this without traffic",
    )
    backoff_initial_s: float = Field(
        default=0.5, gt=0, le=60, description="first reconnect delay, seconds (a broker restart is back in about this)"
    )
    backoff_max_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="longest reconnect delay, seconds (exponential growth stops here; every delay gets +-50 % jitter)",
    )
    connect_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="MQTT connect timeout, seconds; also how long a restarted agent waits for the broker "
        "before it resumes its work offline",
    )
    publish_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="wait for a QoS 1 PUBACK, seconds (then the window stays spooled)"
    )
    tcp_user_timeout_s: float = Field(
        default=15.0,
        ge=0,
        le=3600,
        description="a connection whose sent bytes stay unacknowledged this long is closed and the link "
        "reconnects (TCP_USER_TIMEOUT, seconds; 0: the kernel's default, some 15 minutes of retransmissions). "
        "Without it a link cut by a silent partition waited for TCP's backed-off retransmissions after it healed",
    )


class StoreSettings(SettingsGroup):
    """The content-addressed model store."""

    gc_keep_bytes: int = Field(
        default=2 << 30,
        ge=0,
        description="unreferenced blobs are deleted, least recently used "
        "first, while they take more than this many bytes (2 GiB: a few spare models, whose chunks later versions "
        "reuse); a new version that does not fit deletes as many more as it needs",
    )
    min_free_bytes: int = Field(
        default=64 << 20,
        ge=0,
        description="free disk space to leave after a blob is stored, bytes (64 MiB keeps the spool and logs writable)",
    )


class DownloadSettings(SettingsGroup):
    """The want/chunk transfer."""

    rewant_after_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="send the want again after this many seconds without a new chunk (chunks lost with a broker "
        "restart); at 2000 devices sharing one fan-out, 5 s re-want storms kept the hub republishing (docs/scale.md)",
    )
    sync_every: int = Field(
        default=1024,
        ge=1,
        description="persist data and resume bitmap after this many new chunks at the latest (fsync per chunk "
        "dominated the cost when many receivers share a disk)",
    )
    sync_interval_s: float = Field(
        default=1.0, gt=0, description="... or after this many seconds (a crash loses at most this much download)"
    )
    max_want_ranges: int = Field(
        default=4096, ge=1, le=4096, description="ranges in one want message (4096: the wire contract's bound)"
    )


class TelemetrySettings(SettingsGroup):
    """Telemetry windows and their on-disk spool."""

    interval_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="length of one telemetry window, seconds (10 s: rollout gates see a wave within a bake)",
    )
    spool_max_windows: int = Field(
        default=8640,
        ge=1,
        le=10_000_000,
        description="bound of the on-disk spool (8640 = one day of 10 s windows); the oldest are dropped beyond it",
    )
    send_batch: int = Field(
        default=64, ge=1, le=10_000, description="windows sent per drain step (a day's spool drains in ~135 steps)"
    )


class ActivationSettings(SettingsGroup):
    """Loading a model into a new engine."""

    warmup_runs: int = Field(
        default=2, ge=0, le=100, description="golden-input runs before the swap (the first request is not the slow one)"
    )
    update_lock_file: Path | None = Field(
        default=None,
        description="an update lock: while this file exists, new models are downloaded and verified but not "
        "activated (the application holds it through work that must not see a model swap); activation follows "
        "within a second of its removal. Unset: no lock",
    )
    report_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="shortest gap between progress reports while downloading, seconds"
    )
    report_chunks: int = Field(
        default=4,
        ge=1,
        le=1 << 20,
        description="a progress report also waits until this many more chunks arrived, or 10 x report_interval_s "
        "passed (4: the hub paces chunks on these reports with a window of 16; thousands of devices downloading "
        "slowly would otherwise each report every second)",
    )
    cluster_retry_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="cluster mode: a model's workload the cluster refused (API unreachable, namespace missing, "
        "RBAC denies a verb) is applied again after this many seconds, until it goes in: fixing the cluster is "
        "enough, no new desired state is needed; at this interval too, each applied Deployment is read back (one "
        "deleted by someone is applied again) and a refused removal is tried again",
    )
    memory_budget_bytes: int | None = Field(
        default=None,
        ge=0,
        description="memory the device's models may take together, bytes: an activation (or shadow) whose "
        "estimated peak exceeds it is refused with the numbers instead of risking an OOM. Unset: 75 % of the "
        "device's RAM (the rest for the OS, the agent itself and request buffers)",
    )
    memory_per_model_byte: float = Field(
        default=2.5,
        gt=0,
        le=100,
        description="estimated RSS of a loaded, warmed-up model per byte of its ONNX file (onnxruntime CPU "
        "sessions measured 2.3-2.6x their file once past the first session; docs/agent.md)",
    )
    memory_per_model_bytes: int = Field(
        default=8 << 20,
        ge=0,
        description="estimated RSS of a loaded model beyond its weights, bytes: session state and the "
        "activation arena of batch-1 runs (1-3 MiB measured for 224-320 px inputs; 8 MiB leaves room for batches)",
    )


class AgentSettings(EnvSettings):
    """Every agent setting. Build with `AgentSettings.from_env()` or directly in tests."""

    model_config = env_config(ENV_PREFIX)

    data_dir: Path = Field(
        default=Path("/var/lib/edgefleet-agent"),
        description="model store, spool and state live here (one filesystem, so renames are atomic)",
    )
    link: LinkSettings = Field(default_factory=LinkSettings, description="MQTT link")
    store: StoreSettings = Field(default_factory=StoreSettings, description="model store")
    download: DownloadSettings = Field(default_factory=DownloadSettings, description="blob download")
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings, description="telemetry")
    activation: ActivationSettings = Field(default_factory=ActivationSettings, description="activation")
