"""The bootstrap bundle: what `edgefleet device add` hands to a device and `edgefleet agent run --bundle` reads.

It lives in `fleet` because the hub writes it and the agent reads it, and the two never import each other.
It holds a secret (the device's MQTT password): write it with mode 0600 and ship it like an SSH key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.files import atomic_write
from fleet.ids import DeviceId, Prefix

MAX_BUNDLE_BYTES = 256 * 1024
MAX_ENROL_BATCH = 10_000  # devices (and bundles) in one enrolment request: POST /api/v1/devices/batch


class DeviceBundle(BaseModel):
    """Everything a device needs to join the fleet, and nothing it does not."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(default=1, description="bundle schema version")
    kind: Literal["bundle"] = "bundle"
    device_id: DeviceId
    broker_url: str = Field(max_length=512, description="mqtt://host:port or mqtts://host:port")
    mqtt_username: str = Field(min_length=1, max_length=256, description="the device's own broker account")
    mqtt_password: str = Field(min_length=1, max_length=256, description="secret; never logged")
    topic_prefix: Prefix = Field(default="fleet/v1", description="MQTT topic prefix the hub uses")
    hub_public_key: str = Field(max_length=512, description="the pinned hub signing key (fleet.signing text form)")
    api_url: str | None = Field(default=None, max_length=512, description="the hub's REST API, for enrolment info")
    ca_cert_pem: str | None = Field(default=None, max_length=16384, description="CA to trust for mqtts (None: system)")
    labels: dict[str, str] = Field(default_factory=dict, description="labels the device was enrolled with")

    def save(self, path: Path) -> None:
        """Write the bundle with owner-only permissions (it contains the MQTT password)."""
        atomic_write(path, self.model_dump_json(indent=2).encode(), mode=0o600)

    @classmethod
    def load(cls, path: Path) -> DeviceBundle:
        """Read and validate a bundle file; raises ValueError with the reason when it is not one."""
        if path.stat().st_size > MAX_BUNDLE_BYTES:
            raise ValueError(f"{path}: larger than {MAX_BUNDLE_BYTES} bytes; not a device bundle")
        return cls.model_validate_json(path.read_bytes())
