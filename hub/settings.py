"""Hub settings, grouped by concern, each field with its unit and why its default is what it is.

Every field can be set from the environment (`HubSettings.from_env()`, the one policy of `infra.settings`):
top-level fields as `EDGEFLEET_HUB_<FIELD>` (for example `EDGEFLEET_HUB_DATA_DIR`), grouped ones as
`EDGEFLEET_HUB_<GROUP>_<FIELD>` (for example `EDGEFLEET_HUB_BROKER_URL`, `EDGEFLEET_HUB_API_PORT`,
`EDGEFLEET_HUB_TRANSFER_RATE_LIMIT_BYTES_PER_S`). An unknown `EDGEFLEET_HUB_*` variable is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from fleet.address import check_broker_url
from fleet.codec import MAX_MESSAGE_BYTES
from fleet.ids import DEFAULT_PREFIX, Prefix
from fleet.plan import DEFAULT_CHUNK_SIZE, MAX_CONTENT_TARGET, Chunking
from hub.errors import InvalidInput
from hub.store.connection import Database
from infra.settings import EnvSettings, SettingsGroup, env_config

ENV_PREFIX = "EDGEFLEET_HUB_"
BLOB_DIR = "blobs"  # model blobs' folder in a data directory (and in a backup, which is one)
BrokerUrl = Annotated[str, AfterValidator(check_broker_url)]


class BrokerSettings(SettingsGroup):
    """Which MQTT broker the hub uses, or how it runs its own."""

    url: BrokerUrl | None = Field(
        default=None,
        description="mqtt://host:port or mqtts://host:port of an existing broker; None: start a local Mosquitto",
    )
    mqtt_version: Literal["3.1.1", "5"] = Field(
        default="3.1.1",
        description="protocol version to speak (3.1.1: every broker has it, fastest at QoS 0; QoS 1 telemetry is "
        "acknowledged on receipt and journaled in data_dir until stored; 5: acknowledged to the broker only once "
        "stored). Either way a killed hub loses no telemetry it acknowledged",
    )
    username: str | None = Field(default=None, description="the hub's broker account (None: anonymous)")
    password: str | None = Field(default=None, description="password of the hub's broker account")
    shared_group: str | None = Field(
        default=None, description="MQTT 5 shared-subscription group for several hub replicas (None: plain)"
    )
    replica: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="this replica's name, part of its MQTT client id (each replica needs its own broker session); "
        "None: the host name when shared_group is set",
    )
    keepalive_s: int = Field(
        default=30, ge=5, le=3600, description="MQTT keep-alive, seconds (a dead link is noticed within 1.5x this)"
    )
    connect_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="seconds the hub waits for its first MQTT connection at start before it stops with an error "
        "(later disconnects are retried for ever)",
    )
    mosquitto_binary: str | None = Field(
        default=None, description="local broker: mosquitto path (None: search PATH and /usr/sbin, where Debian puts it)"
    )
    local_host: str = Field(
        default="127.0.0.1",
        description="local broker: listener address (loopback: only this machine until ACL and TLS are set up)",
    )
    local_port: int = Field(
        default=1883,
        ge=0,
        le=65535,
        description="local broker: TCP port (1883: the MQTT port devices expect; 0: pick a free one)",
    )
    public_url: BrokerUrl | None = Field(
        default=None, description="broker URL put into device bundles when devices reach it by another name"
    )
    max_inflight_messages: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="local broker: QoS 1 messages in flight per client. The broker builds a packet per message in "
        "flight per subscriber, so memory is about clients x this x chunk size: 0 (unlimited) took 1.4 GB for one "
        "16 MiB model to 200 subscribers, 1 took 27 MB (docs/scale.md)",
    )
    max_message_bytes: int = Field(
        default=8 << 20,
        ge=64 << 10,
        description="local broker's message_size_limit, bytes; 8 MiB holds a 256 KiB chunk many times over",
    )
    restart_backoff_s: float = Field(
        default=1.0, gt=0, description="local broker: seconds to wait before restarting it (a crash loop stays slow)"
    )
    session_expiry_days: int | None = Field(
        default=7,
        ge=1,
        le=3650,
        description="local broker: a persistent session (a device's, over MQTT 3.1.1) whose client has not come back "
        "for this many days is removed with what it queued (Mosquitto's persistent_client_expiration); a device "
        "gone for good otherwise pins every chunk published to the blob it was downloading. The device subscribes "
        "again when it returns; desired states are retained. None: never",
    )


class RestApiSettings(SettingsGroup):
    """The REST API."""

    host: str = Field(default="127.0.0.1", description="listen address (loopback unless you front it with TLS)")
    port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="listen TCP port (8080; the agent's inference API takes 8000, so both run on one machine)",
    )
    public_url: str | None = Field(default=None, description="API URL put into device bundles (None: derived)")
    max_upload_bytes: int = Field(
        default=1 << 30,
        ge=1024,
        description="largest model upload, bytes (1 GiB: above any edge vision model); bigger ones get 413 before "
        "they are stored",
    )


class TransferSettings(SettingsGroup):
    """Chunk serving."""

    chunk_size: int = Field(
        default=DEFAULT_CHUNK_SIZE,
        ge=1024,
        le=64 << 20,
        description="target bytes per chunk of newly pushed blobs; content-defined chunks are 1/4x to 2x this, so "
        "the largest message is 2x + 52 bytes (AWS IoT caps messages at 128 KiB, EMQX at 1 MiB)",
    )
    chunking: Chunking = Field(
        default="content",
        description="content: boundaries by content (FastCDC), so a new version reuses the chunks devices hold; "
        "fixed: every chunk chunk_size bytes",
    )
    rate_limit_bytes_per_s: int = Field(
        default=0,
        ge=0,
        description="cap on chunk bytes published per second (0: unlimited; set it on a metered uplink)",
    )
    round_interval_s: float = Field(
        default=0.05,
        gt=0,
        le=10,
        description="seconds the first want of a blob waits for others before its first chunk (50 ms: a lone device "
        "waits unnoticeably)",
    )
    join_gap_s: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="once a second device wants a blob before its first chunk (or a deploy told devices that have "
        "not wanted it yet), its wants are gathered until none "
        "came from a new device for this many seconds (3 s: a rollout's wants arrive over seconds, in bursts; a chunk "
        "published before a device joined is published again for it, to every device still fetching)",
    )
    join_window_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="the gathering of a blob's first wants ends this many seconds after the first at the latest (30 s: "
        "2000 simulated agents on 2 cores wanted over 10 s)",
    )
    window_chunks: int = Field(
        default=16,
        ge=0,
        le=1 << 20,
        description="pacing: chunks published ahead of what the median downloader reported receiving (16: 4 MiB "
        "of 256 KiB chunks, many seconds of buffer at any fleet size); doubles while downloaders keep up (0: none)",
    )
    pace_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="pacing: seconds without progress after which the next chunk goes out anyway (5 s: several "
        "of the agents' 1 s progress reports)",
    )
    downloader_idle_s: float = Field(
        default=75.0,
        gt=0,
        le=86_400,
        description="seconds without a want or progress after which a downloader is forgotten (75 s: above the "
        "agents' 30 s re-want delay twice)",
    )
    max_inflight: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="chunks published but not yet acknowledged (bounds memory: 32 x 256 KiB = 8 MiB)",
    )
    chunk_expiry_s: int = Field(
        default=600,
        ge=1,
        le=86_400,
        description="over MQTT 5, a chunk the broker could not deliver within this many seconds is dropped (Message "
        "Expiry): a device offline for longer gets none of the passes made meanwhile when it returns (it wants "
        "what it lacks) rather than every one of them. Above the longest pass a slow device needs. Over 3.1.1 "
        "chunks do not expire",
    )

    @model_validator(mode="after")
    def _check_chunking(self) -> TransferSettings:
        if self.chunking == "content" and self.chunk_size > MAX_CONTENT_TARGET:
            raise ValueError(f"content-defined chunks target at most {MAX_CONTENT_TARGET} bytes; use chunking=fixed")
        return self


class IngestSettings(SettingsGroup):
    """Ingestion of status, reported and telemetry messages."""

    max_message_bytes: int = Field(
        default=MAX_MESSAGE_BYTES, ge=1024, description="bytes; larger messages are refused (fleet.codec's limit)"
    )
    max_batch: int = Field(
        default=5000, ge=1, description="most messages written in one transaction (one commit per batch bounds fsyncs)"
    )
    max_delay_s: float = Field(
        default=0.05,
        ge=0,
        le=5,
        description="seconds the writer waits for more messages before committing (group commit; bounds "
        "how stale API reads of fresh telemetry can be)",
    )
    max_queue: int = Field(
        default=200_000,
        ge=100,
        description="messages waiting for the writer; beyond it new ones are dropped (20 s of 10k windows/s)",
    )
    telemetry_process: bool = Field(
        default=True,
        description="decode and write telemetry in a writer process of its own, so ingestion is not bound to "
        "the hub process's one Python GIL (off: in a writer thread of the hub process, one process less)",
    )


class RetentionSettings(SettingsGroup):
    """How long telemetry is kept."""

    telemetry_raw_s: float = Field(
        default=7 * 86400, gt=0, description="seconds raw windows are kept (7 days: a week of incidents to look at)"
    )
    telemetry_raw_max_rows: int = Field(
        default=10_000_000,
        ge=1000,
        description="and beyond this many rows (bounds the database file whatever the fleet sends)",
    )
    rollup_s: float = Field(
        default=90 * 86400, gt=0, description="seconds per-minute rollups are kept (90 days: a quarter's trends)"
    )
    sweep_interval_s: float = Field(default=60.0, gt=0, description="seconds between retention and re-signing sweeps")


class DeviceSettings(SettingsGroup):
    """Device state derivation and signed desired states."""

    desired_ttl_s: float = Field(
        default=7 * 86400,
        ge=60,
        description="seconds a signed desired state is valid (7 days: a device offline that long still verifies "
        "it); re-signed at half of it",
    )
    degraded_error_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="a device whose last window has a larger error fraction than this (5 %) is degraded",
    )
    stale_after_s: float = Field(
        default=300.0,
        gt=0,
        description="seconds an online device may stay silent before it counts as offline (a lost will; 5 min is "
        "many telemetry windows)",
    )


class DashboardSettings(SettingsGroup):
    """The web dashboard served at `/`."""

    enabled: bool = Field(default=True, description="serve the dashboard at / (False: the REST API only)")
    live_interval_s: float = Field(
        default=2.0, gt=0, le=60, description="how often the live stream looks for changes (seconds)"
    )
    live_max_stream_s: float = Field(
        default=300.0,
        gt=0,
        description="seconds after which a live stream ends and the browser reconnects (frees workers)",
    )
    page_size: int = Field(
        default=50, ge=5, le=1000, description="devices per page of the device table (50 fit one screen)"
    )
    cookie_secure: bool = Field(
        default=False, description="mark the session cookie Secure (set it when the hub is served over HTTPS)"
    )
    session_max_age_s: int = Field(default=12 * 3600, ge=60, description="lifetime of a login cookie (seconds)")


class LeaderSettings(SettingsGroup):
    """Which replica leads (runs the rollout controller, the chunk server and maintenance): the holder of a lease
    in the store (hub.leadership). A lone hub simply holds it."""

    lease_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="a leader's lease lasts this long without renewal: the most a crashed or cut-off leader delays "
        "its successor, seconds",
    )  # fmt: skip
    renew_s: float = Field(
        default=2.0, gt=0, le=600,
        description="how often the leader renews its lease and followers try to take it, seconds (under half of "
        "lease_s)",
    )  # fmt: skip


class RolloutSettings(SettingsGroup):
    """The rollout controller (hub.rollouts)."""

    tick_interval_s: float = Field(
        default=2.0, gt=0, le=600, description="how often the controller advances rollouts, seconds"
    )
    telemetry_grace_s: float = Field(
        default=15.0,
        ge=0,
        le=3600,
        description="wait this long after a bake ends before judging it, seconds (windows still on their way; "
        "the agents' default window is 10 s)",
    )


class TlsSettings(SettingsGroup):
    """TLS for MQTT (mqtts) and HTTPS for the API. `edgefleet hub init --tls` creates a development CA."""

    enabled: bool | None = Field(
        default=None,
        description="serve the local broker over mqtts and the API over https (None: on when `hub init --tls` "
        "created data_dir/tls)",
    )
    ca_file: Path | None = Field(
        default=None, description="CA certificate that signed the broker's certificate; goes into device bundles"
    )
    broker_cert_file: Path | None = Field(default=None, description="local broker's certificate (None: dev one)")
    broker_key_file: Path | None = Field(default=None, description="local broker's private key (None: dev one)")
    api_cert_file: Path | None = Field(default=None, description="API server certificate (None: the dev one)")
    api_key_file: Path | None = Field(default=None, description="API server private key (None: the dev one)")


class SecuritySettings(SettingsGroup):
    """Broker accounts and ACL, API hardening, per-device ingestion limits."""

    broker_acl: bool = Field(
        default=True,
        description="generate the broker password and ACL files from the registry; the local broker enforces "
        "them (off: an anonymous local broker, for experiments only)",
    )
    cors_origins: tuple[str, ...] = Field(
        default=(), description="origins allowed to call the API from a browser (empty: CORS off)"
    )
    auth_failure_burst: int = Field(
        default=20, ge=0, description="failed authentications allowed per client address before 429 (0: no limit)"
    )
    auth_failure_per_minute: float = Field(
        default=10.0, gt=0, description="failed authentications regained per minute per client address"
    )
    telemetry_per_s: float = Field(
        default=5.0, gt=0, description="telemetry windows per second a device may send, sustained"
    )
    telemetry_burst: int = Field(
        default=10_000,
        ge=0,
        description="telemetry windows a device may send at once (above an agent's spool of 8640 windows, so a "
        "device draining a full day's spool is never cut; 0: no limit)",
    )


class HubSettings(EnvSettings):
    """Everything the hub can be told. Build it directly (tests), or with `from_env()` (the environment)."""

    model_config = env_config(ENV_PREFIX)

    data_dir: Path = Field(
        default=Path("./hub-data"),
        description="database, blobs, signing key, broker state (one directory: one thing to back up)",
    )
    database_url: str | None = Field(
        default=None,
        description="where the store lives: postgresql://user:password@host:5432/db for a PostgreSQL server shared "
        "by hub replicas (needs the `postgres` extra: psycopg); unset: the SQLite file hub.db in data_dir",
    )
    topic_prefix: Prefix = Field(
        default=DEFAULT_PREFIX,
        description="MQTT topic prefix of the fleet (versioned, so a new protocol can run beside the old one)",
    )
    broker: BrokerSettings = Field(default_factory=BrokerSettings, description="MQTT broker")
    api: RestApiSettings = Field(default_factory=RestApiSettings, description="REST API")
    transfer: TransferSettings = Field(default_factory=TransferSettings, description="chunk serving")
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="message ingestion")
    retention: RetentionSettings = Field(default_factory=RetentionSettings, description="telemetry retention")
    devices: DeviceSettings = Field(default_factory=DeviceSettings, description="device state and desired states")
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings, description="web dashboard")
    rollouts: RolloutSettings = Field(default_factory=RolloutSettings, description="rollout controller")
    leader: LeaderSettings = Field(default_factory=LeaderSettings, description="leader lease among hub replicas")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS for MQTT and HTTPS for the API")
    security: SecuritySettings = Field(default_factory=SecuritySettings, description="ACL, API and ingest limits")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            return Database.from_url(value).url
        except InvalidInput as e:
            raise ValueError(e.message) from e

    @property
    def db_path(self) -> Path:
        return self.data_dir / "hub.db"

    @property
    def database(self) -> Database:
        """The store's database: `database_url`, or the SQLite file in the data directory."""
        return Database.from_url(self.database_url) if self.database_url else Database.sqlite(self.db_path)

    @property
    def journal_dir(self) -> Path:
        """Telemetry acknowledged to the broker and not yet stored, one folder per hub replica (hub.store.journal)."""
        return self.data_dir / "telemetry-journal"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "hub-signing.pem"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / BLOB_DIR

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "mosquitto"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"
