"""What a simulated agent asks its transport to do, and the counters it keeps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Publish:
    """Publish `payload` on `topic`."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Subscribe:
    """Subscribe to `topic` at QoS 1."""

    topic: str


@dataclass(frozen=True)
class Unsubscribe:
    """Drop the subscription to `topic`."""

    topic: str


@dataclass(frozen=True)
class GoOffline:
    """Drop the connection abruptly (the broker publishes the last will) and stay away `seconds`."""

    seconds: float


@dataclass(frozen=True)
class PauseReading:
    """Stop reading from the network for `seconds` (a slow link: the broker's queue backs up)."""

    seconds: float


Action = Publish | Subscribe | Unsubscribe | GoOffline | PauseReading


@dataclass
class AgentStats:
    """Counters of one agent (summed by the simulator)."""

    malformed: int = 0
    refused_desired: int = 0
    refused_chunks: int = 0
    chunks: int = 0
    duplicate_chunks: int = 0
    ignored_chunks: int = 0  # chunks of a blob the agent is not (or no longer) fetching
    downloads_done: int = 0
    activations: int = 0
    activation_failures: int = 0
    telemetry: int = 0
    went_offline: int = 0
