"""Agent settings, grouped by concern. Every field documents its unit and why its default is what it is.

Settings come from code (tests), from the environment (`EDGEFLEET_AGENT_<GROUP>_<FIELD>`, e.g.
`EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S=10`; `EDGEFLEET_AGENT_DATA_DIR` for the top-level data directory)
and from CLI options, in that order of increasing precedence.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import SettingsError

ENV_PREFIX = "EDGEFLEET_AGENT_"


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LinkSettings(_Group):
    """The MQTT link to the broker."""

    keepalive_s: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="MQTT keepalive, seconds; the broker publishes the last will after 1.5x this without traffic",
    )
    backoff_initial_s: float = Field(default=0.5, gt=0, le=60, description="first reconnect delay, seconds")
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
    publish_timeout_s: float = Field(default=5.0, gt=0, le=300, description="wait for a QoS 1 PUBACK, seconds")


class StoreSettings(_Group):
    """The content-addressed model store."""

    gc_keep_bytes: int = Field(
        default=2 << 30,
        ge=0,
        description="unreferenced blobs are deleted, oldest "
        "first, while they take more than this many bytes (2 GiB: a few spare models)",
    )
    min_free_bytes: int = Field(
        default=64 << 20,
        ge=0,
        description="free disk space to leave after a blob is stored, bytes (64 MiB keeps the spool and logs writable)",
    )


class DownloadSettings(_Group):
    """The want/chunk transfer."""

    rewant_after_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="send the want again after this many seconds without a new chunk (chunks lost with a broker "
        "restart); at 2000 devices sharing one fan-out, 5 s re-want storms kept the hub republishing (docs/scale.md)",
    )
    sync_every: int = Field(
        default=1024, ge=1, description="persist data and resume bitmap after this many new chunks at the latest"
    )
    sync_interval_s: float = Field(default=1.0, gt=0, description="... or after this many seconds")
    max_want_ranges: int = Field(default=4096, ge=1, le=4096, description="ranges in one want message")


class TelemetrySettings(_Group):
    """Telemetry windows and their on-disk spool."""

    interval_s: float = Field(default=10.0, gt=0, le=3600, description="length of one telemetry window, seconds")
    spool_max_windows: int = Field(
        default=8640,
        ge=1,
        le=10_000_000,
        description="bound of the on-disk spool (8640 = one day of 10 s windows); the oldest are dropped beyond it",
    )
    send_batch: int = Field(default=64, ge=1, le=10_000, description="windows sent per drain step")


class ActivationSettings(_Group):
    """Loading a model into a new engine."""

    warmup_runs: int = Field(default=2, ge=0, le=100, description="golden-input runs before the swap")
    report_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="shortest gap between progress reports while downloading, seconds"
    )


class AgentSettings(_Group):
    """Every agent setting. Build with `AgentSettings.from_env()` or directly in tests."""

    data_dir: Path = Field(
        default=Path("/var/lib/edgefleet-agent"),
        description="model store, spool and state live here (one filesystem, so renames are atomic)",
    )
    link: LinkSettings = Field(default_factory=LinkSettings, description="MQTT link")
    store: StoreSettings = Field(default_factory=StoreSettings, description="model store")
    download: DownloadSettings = Field(default_factory=DownloadSettings, description="blob download")
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings, description="telemetry")
    activation: ActivationSettings = Field(default_factory=ActivationSettings, description="activation")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AgentSettings:
        """Read `EDGEFLEET_AGENT_*` variables; `overrides` (e.g. data_dir from a CLI option) win.

        Raises:
            SettingsError: naming the variable and why its value is refused.
        """
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        groups: dict[str, type[_Group]] = {
            "link": LinkSettings,
            "store": StoreSettings,
            "download": DownloadSettings,
            "telemetry": TelemetrySettings,
            "activation": ActivationSettings,
        }
        known = {f"{ENV_PREFIX}DATA_DIR"}
        if f"{ENV_PREFIX}DATA_DIR" in env:
            data["data_dir"] = env[f"{ENV_PREFIX}DATA_DIR"]
        for group, model in groups.items():
            values = {}
            for field in model.model_fields:
                key = f"{ENV_PREFIX}{group}_{field}".upper()
                known.add(key)
                if key in env:
                    values[field] = env[key]
            if values:
                data[group] = values
        unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known and k not in _TEST_VARS)
        if unknown:
            raise SettingsError(f"unknown setting(s) {unknown}; see docs/agent.md for the variables")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = "; ".join(
                f"{ENV_PREFIX}{'_'.join(str(p) for p in err['loc'])}".upper() + f": {err['msg']}" for err in e.errors()
            )
            raise SettingsError(f"bad agent settings: {problems}") from e


# Variables read by agent.hooks (test-only pause points), not settings.
_TEST_VARS = {f"{ENV_PREFIX}PAUSE_AT", f"{ENV_PREFIX}PAUSE_FILE"}
