"""The fleet simulator: many protocol-faithful agents in one process, for scale tests and benchmarks.

`SimAgent` is the transport-free state machine of one agent (decoded messages in, messages to publish out);
`agent.sim.transport` runs each on the agent's own MQTT link (`agent.mqtt`), thousands of them served by a
few selector loops (`agent.netloop`); `Simulator` joins them;
`agent.sim.cli.app` is `edgefleet sim`. Each agent verifies every signature and every chunk it receives,
while the bytes of a blob are written once to a shared content-addressed cache.
"""

from agent.sim.actions import Action, AgentStats, GoOffline, PauseReading, Publish, Subscribe, Unsubscribe
from agent.sim.agent import SimAgent
from agent.sim.cache import BlobCache, Download
from agent.sim.config import AgentIdentity, Faults, SimConfig
from agent.sim.profile import VersionProfile, parse_profile

__all__ = [
    "Action", "AgentIdentity", "AgentStats", "BlobCache", "Download", "Faults", "GoOffline", "PauseReading",
    "Publish", "SimAgent", "SimConfig", "Subscribe", "Unsubscribe", "VersionProfile", "parse_profile",
]  # fmt: skip
