"""Settings of the simulator: who each agent is, how it behaves, which faults it suffers."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.settings import ActivationSettings, AgentSettings, DownloadSettings
from fleet.address import BrokerAddress
from fleet.bundle import DeviceBundle
from fleet.ids import DeviceId, Prefix


class AgentIdentity(BaseModel):
    """One simulated device: its id, broker account, topic prefix, pinned hub key and labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: DeviceId
    broker: BrokerAddress
    username: str | None = Field(default=None, max_length=256, description="MQTT user (None: anonymous)")
    password: str | None = Field(default=None, max_length=256, description="MQTT password; never logged")
    topic_prefix: Prefix = Field(default="fleet/v1", description="topic prefix the hub uses")
    hub_public_key: str = Field(max_length=512, description="pinned hub signing key (fleet.signing text form)")
    ca_cert_pem: str | None = Field(default=None, max_length=16384, description="CA for mqtts (None: system)")
    labels: dict[str, str] = Field(default_factory=dict, description="device labels")

    @classmethod
    def from_bundle(cls, bundle: DeviceBundle, extra_labels: dict[str, str] | None = None) -> AgentIdentity:
        """The identity a hub-issued bootstrap bundle describes."""
        return cls(
            device_id=bundle.device_id,
            broker=BrokerAddress.parse(bundle.broker_url),
            username=bundle.mqtt_username,
            password=bundle.mqtt_password,
            topic_prefix=bundle.topic_prefix,
            hub_public_key=bundle.hub_public_key,
            ca_cert_pem=bundle.ca_cert_pem,
            labels={**bundle.labels, **(extra_labels or {})},
        )


class Faults(BaseModel):
    """Faults the simulated agents suffer, so the hub's handling of them can be measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    offline_p: float = Field(
        default=0.0, ge=0, le=1, description="chance per telemetry window that an agent drops its connection abruptly"
    )
    offline_s: float = Field(default=30.0, ge=0, le=86_400, description="how long a dropped agent stays away, s")
    activation_fail_p: float = Field(
        default=0.0, ge=0, le=1, description="chance that an activation fails (the previous model keeps serving)"
    )
    slow_fraction: float = Field(default=0.0, ge=0, le=1, description="fraction of agents on a slow link")
    slow_chunk_s: float = Field(
        default=0.5, ge=0, le=600, description="slow agents stop reading for this long after each chunk, s"
    )


class SimConfig(BaseModel):
    """Behaviour shared by every simulated agent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    telemetry_s: float = Field(default=10.0, gt=0, le=3600, description="telemetry window length, s")
    want_retry_s: float = Field(
        default=DownloadSettings.model_fields["rewant_after_s"].default,
        gt=0,
        le=3600,
        description="re-send a want after this long without a new chunk, s (default: the agent's rewant_after_s)",
    )
    report_interval_s: float = Field(
        default=ActivationSettings.model_fields["report_interval_s"].default,
        gt=0,
        le=60,
        description="shortest gap between progress reports while downloading, s (default: the agent's)",
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, s")
    agent_version: str = Field(default="0.1.0-sim", max_length=64, description="agent version in the birth")
    faults: Faults = Field(default_factory=Faults, description="fault injection")
    seed: int | None = Field(default=None, description="random seed for reproducible runs (None: random)")

    def agent_settings(self, data_dir: Path) -> AgentSettings:
        """The settings every simulated agent's reconciler and downloads run with (the agent's defaults but
        for the re-want delay and the progress report interval)."""
        return AgentSettings.model_validate({
            "data_dir": data_dir,
            "download": {"rewant_after_s": self.want_retry_s},
            "activation": {"report_interval_s": self.report_interval_s},
        })  # fmt: skip
