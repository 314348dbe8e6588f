"""Every MQTT topic of the protocol: one table, a builder and a parser. Build topics only through here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fleet.errors import InvalidId, InvalidTopic
from fleet.ids import DEFAULT_PREFIX, check_device_id, check_prefix, check_sha256


class TopicKind(StrEnum):
    """The kinds of topic in the protocol."""

    STATUS = "status"
    DESIRED = "desired"
    REPORTED = "reported"
    TELEMETRY = "telemetry"
    CMD = "cmd"
    CMD_ACK = "cmd_ack"
    WANT = "want"
    CHUNK = "chunk"


@dataclass(frozen=True)
class TopicSpec:
    """One row of the topic table (design.md): who sends it, how it is published, what it carries."""

    kind: TopicKind
    pattern: str
    sender: str
    receiver: str
    retained: bool
    qos: int
    payload: str


TOPIC_TABLE: tuple[TopicSpec, ...] = (
    TopicSpec(TopicKind.STATUS, "dev/{id}/status", "agent", "hub", True, 1, "DeviceStatus: birth or offline (will)"),
    TopicSpec(TopicKind.DESIRED, "dev/{id}/desired", "hub", "agent", True, 1, "SignedEnvelope over DesiredState"),
    TopicSpec(TopicKind.REPORTED, "dev/{id}/reported", "agent", "hub", True, 1, "ReportedState: applied, progress"),
    TopicSpec(TopicKind.TELEMETRY, "dev/{id}/telemetry", "agent", "hub", False, 1, "TelemetryWindow (QoS 0 allowed)"),
    TopicSpec(TopicKind.CMD, "dev/{id}/cmd", "hub", "agent", False, 1, "SignedEnvelope over Command"),
    TopicSpec(TopicKind.CMD_ACK, "dev/{id}/cmd/ack", "agent", "hub", False, 1, "CommandAck by correlation id"),
    TopicSpec(TopicKind.WANT, "blob/{sha256}/want", "agent", "hub", False, 1, "Want: chunk indexes still missing"),
    TopicSpec(TopicKind.CHUNK, "blob/{sha256}/chunk", "hub", "agents", False, 1, "binary chunk frame: header + bytes"),
)  # fmt: skip

_SPECS = {spec.kind: spec for spec in TOPIC_TABLE}
_DEVICE_SUFFIX = {"status": TopicKind.STATUS, "desired": TopicKind.DESIRED, "reported": TopicKind.REPORTED,
                  "telemetry": TopicKind.TELEMETRY, "cmd": TopicKind.CMD}  # fmt: skip
_BLOB_SUFFIX = {"want": TopicKind.WANT, "chunk": TopicKind.CHUNK}


def spec(kind: TopicKind) -> TopicSpec:
    """The table row of `kind` (its QoS and retain flag are the ones to publish with)."""
    return _SPECS[kind]


@dataclass(frozen=True)
class ParsedTopic:
    """A topic taken apart: its kind and the device id or blob digest it names."""

    kind: TopicKind
    device_id: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Topics:
    """Topic builder and parser for one prefix (default `fleet/v1`)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    def _dev(self, device_id: str, suffix: str) -> str:
        return f"{self.prefix}/dev/{check_device_id(device_id)}/{suffix}"

    def _blob(self, sha256: str, suffix: str) -> str:
        return f"{self.prefix}/blob/{check_sha256(sha256)}/{suffix}"

    def status(self, device_id: str) -> str:
        return self._dev(device_id, "status")

    def desired(self, device_id: str) -> str:
        return self._dev(device_id, "desired")

    def reported(self, device_id: str) -> str:
        return self._dev(device_id, "reported")

    def telemetry(self, device_id: str) -> str:
        return self._dev(device_id, "telemetry")

    def cmd(self, device_id: str) -> str:
        return self._dev(device_id, "cmd")

    def cmd_ack(self, device_id: str) -> str:
        return self._dev(device_id, "cmd/ack")

    def want(self, sha256: str) -> str:
        return self._blob(sha256, "want")

    def chunk(self, sha256: str) -> str:
        return self._blob(sha256, "chunk")

    def build(self, kind: TopicKind, *, device_id: str | None = None, sha256: str | None = None) -> str:
        """Build the topic of `kind` for a device or a blob."""
        if kind in (TopicKind.WANT, TopicKind.CHUNK):
            if sha256 is None:
                raise InvalidTopic(f"a {kind} topic needs a blob sha256")
            return self._blob(sha256, kind.value)
        if device_id is None:
            raise InvalidTopic(f"a {kind} topic needs a device id")
        return self._dev(device_id, "cmd/ack" if kind is TopicKind.CMD_ACK else kind.value)

    def subscription(self, kind: TopicKind, *, shared_group: str | None = None) -> str:
        """The wildcard filter for every topic of `kind`; `shared_group` makes an MQTT 5 `$share` filter."""
        rel = spec(kind).pattern.replace("{id}", "+").replace("{sha256}", "+")
        topic = f"{self.prefix}/{rel}"
        if shared_group is not None:
            check_prefix(shared_group)
            if "/" in shared_group:
                raise InvalidId(f"shared subscription group {shared_group!r} must be one segment")
            topic = f"$share/{shared_group}/{topic}"
        return topic

    def parse(self, topic: str) -> ParsedTopic:
        """Take a concrete topic apart. Raises InvalidTopic for anything that is not one of ours."""
        if not isinstance(topic, str):
            raise InvalidTopic(f"topic must be a string, got {type(topic).__name__}")
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise InvalidTopic(f"topic {topic[:200]!r} is outside prefix {self.prefix!r}")
        parts = topic[len(head) :].split("/")
        try:
            if len(parts) == 3 and parts[0] == "dev" and parts[2] in _DEVICE_SUFFIX:
                return ParsedTopic(_DEVICE_SUFFIX[parts[2]], device_id=check_device_id(parts[1]))
            if len(parts) == 4 and parts[0] == "dev" and parts[2:] == ["cmd", "ack"]:
                return ParsedTopic(TopicKind.CMD_ACK, device_id=check_device_id(parts[1]))
            if len(parts) == 3 and parts[0] == "blob" and parts[2] in _BLOB_SUFFIX:
                return ParsedTopic(_BLOB_SUFFIX[parts[2]], sha256=check_sha256(parts[1]))
        except InvalidId as e:
            raise InvalidTopic(f"topic {topic[:200]!r}: {e}") from e
        raise InvalidTopic(f"topic {topic[:200]!r} is not a protocol topic")
