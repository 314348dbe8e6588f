"""The fleet simulator: many protocol-faithful agents in one process, for scale tests and benchmarks.

`SimAgent` runs the agent's own reconciler and downloads (`agent.reconcile`, `agent.download`) behind the
simulator's ports, transport-free (decoded messages in, messages to publish out): only activation and
inference are simulated;
`sim.transport` runs each on the agent's own MQTT link (`agent.mqtt`), thousands of them served by a
few selector loops (`agent.netloop`); `Simulator` joins them;
`sim.cli.app` is `edgefleet sim`. Each agent verifies every signature and every chunk it receives,
while the bytes of a blob are written once to a shared blob directory (`sim.store`).
"""

from sim.actions import Action, AgentStats, GoOffline, PauseReading, Publish, Subscribe, Unsubscribe
from sim.agent import SimActivation, SimAgent
from sim.config import AgentIdentity, Faults, SimConfig
from sim.profile import VersionProfile, parse_profile
from sim.store import SharedBlobs, SharedReceiver, SimStore

__all__ = [
    "Action", "AgentIdentity", "AgentStats", "Faults", "GoOffline", "PauseReading", "Publish", "SharedBlobs",
    "SharedReceiver", "SimActivation", "SimAgent", "SimConfig", "SimStore", "Subscribe", "Unsubscribe",
    "VersionProfile", "parse_profile",
]  # fmt: skip
