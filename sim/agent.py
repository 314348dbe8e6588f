"""One simulated agent: the agent's own reconciler and downloads, with a simulated activation, no transport.

`SimAgent` is a thin adapter around `agent.reconcile.Reconciler`, the state machine the product agent runs:
signed desired states checked with `fleet.signing.Verifier` (pinned key, expiry, no downgrade), wants and
chunk downloads (`agent.download`) verified chunk by chunk, re-wants after the agent's `rewant_after_s`,
reported states with progress and errors, signed commands acknowledged. Its ports are the simulator's:
`sim.store.SimStore` (a per-device view of one shared blob directory), `SimActivation` (loads
nothing; fails with the configured probability, leaving the previous model serving) and an outbox that
turns what the reconciler sends into transport actions (decoded messages in, actions out). The adapter
adds what the simulator needs and the reconciler does not do: the birth and last will, telemetry windows
drawn from the per-version profiles of every model it serves, and injected faults. A desired state names
several models: each has its own phase, versions and error (the reconciler's `agent.modelstate.ModelState`).
"""

from __future__ import annotations

import platform
import random
import uuid
from collections.abc import Callable
from pathlib import Path

from agent.errors import ActivationError
from agent.modelstate import ModelState
from agent.ports import Restart
from agent.reconcile import Reconciler
from agent.settings import AgentSettings
from fleet.codec import encode
from fleet.errors import FleetError
from fleet.messages import (
    TASKS,
    AppliedModel,
    Capabilities,
    CommandAck,
    DeviceStatus,
    ErrorInfo,
    ModelRef,
    ModelWindow,
    Phase,
    ReportedState,
    RuntimeOptions,
    TelemetryWindow,
    Want,
    Wire,
    device_phase,
)
from fleet.signing import HubPublicKey, Verifier
from fleet.topics import TopicKind, Topics, spec
from sim.actions import Action, AgentStats, GoOffline, PauseReading, Publish, Subscribe, Unsubscribe
from sim.config import AgentIdentity, Faults, SimConfig
from sim.profile import Profiles, WindowSample, sample_window
from sim.store import SharedBlobs, SimStore

PROVIDER = "CPUExecutionProvider"


class SimActivation:
    """The simulator's `agent.ports.ActivationPort`: nothing is loaded or served (inference is simulated by
    the telemetry profiles); an activation fails with probability `faults.activation_fail_p`.

    Args:
        faults: the fault settings (read on every activation).
        rng: the agent's random source.
        stats: the agent's counters.
        clock: the agent's clock (activation times).
    """

    def __init__(self, faults: Faults, rng: random.Random, stats: AgentStats, clock: Callable[[], float]) -> None:
        self.faults = faults
        self.rng = rng
        self.stats = stats
        self.clock = clock

    def _applied(self, ref: ModelRef) -> AppliedModel:
        return AppliedModel(name=ref.name, version=ref.version, sha256=ref.blob.sha256, provider=PROVIDER,
                            activated_at=self.clock())  # fmt: skip

    def restore(self, name: str) -> Restart:
        return Restart()  # a simulated device starts with an empty store

    def activate(self, path: Path, ref: ModelRef, runtime: RuntimeOptions) -> AppliedModel:
        if self.rng.random() < self.faults.activation_fail_p:
            self.stats.activation_failures += 1
            raise ActivationError(f"simulated activation failure of {ref.name} {ref.version}")
        self.stats.activations += 1
        return self._applied(ref)

    def set_shadow(self, path: Path, ref: ModelRef, runtime: RuntimeOptions, sample_rate: float) -> AppliedModel:
        return self._applied(ref)

    def clear_shadow(self, name: str) -> None:
        """Nothing runs beside the model."""

    def deactivate(self, name: str) -> None:
        """Nothing serves it."""


class SimAgent:
    """One simulated device: the agent's reconciler behind the simulator's ports.

    Args:
        identity: who the device is (id, pinned hub key, topic prefix, labels).
        config: shared behaviour and faults.
        blobs: the process-wide shared blob directory.
        profiles: latency/error distributions per model version.
        rng: this agent's random source (seed it for reproducible runs).
        settings: the agent settings its reconciler runs with (`SimConfig.agent_settings`; shared).
        now: the current time.
    """

    def __init__(
        self,
        identity: AgentIdentity,
        config: SimConfig,
        blobs: SharedBlobs,
        profiles: Profiles,
        rng: random.Random,
        *,
        settings: AgentSettings,
        now: float,
    ) -> None:
        self.identity = identity
        self.device_id = identity.device_id
        self.config = config
        self.blobs = blobs
        self.profiles = profiles
        self.rng = rng
        self.topics = Topics(identity.topic_prefix)
        self.session = uuid.UUID(int=rng.getrandbits(128)).hex[:16]
        self.stats = AgentStats()
        self.slow = rng.random() < config.faults.slow_fraction
        self.connected = False
        self._now = now
        self._connect_ts = now  # the time of the last connect (`will`)
        self._out: list[Action] = []
        self._watched: dict[str, str] = {}  # blob sha256 -> its chunk topic
        self._chunk_topics: dict[str, str] = {}  # ... and back: a chunk on a watched topic skips parsing
        self.store = SimStore(blobs, identity.device_id)
        self.activation = SimActivation(config.faults, rng, self.stats, self.clock)
        self.reconciler = Reconciler(
            device_id=identity.device_id,
            store=self.store,
            activation=self.activation,
            verifier=Verifier(HubPublicKey.from_text(identity.hub_public_key), identity.device_id),
            settings=settings,
            outbox=self,
            state_path=settings.data_dir / f"{identity.device_id}.state.json",
            clock=self.clock,
        )
        self._telemetry_seq = 0
        self._window_start = now
        # spread the fleet's windows evenly instead of every agent reporting in the same instant
        self._next_window = now + rng.uniform(0, config.telemetry_s)

    def clock(self) -> float:
        """The time of the event being handled (the transport's, or a test's)."""
        return self._now

    # -- what the reconciler reports --------------------------------------------------------------------
    @property
    def models(self) -> dict[str, ModelState]:
        """Every model the device serves or was asked to serve, by name (the reconciler's own state)."""
        return self.reconciler.models

    @property
    def phase(self) -> Phase:
        """The device as a whole (`fleet.messages.device_phase` of its models' phases)."""
        return device_phase(m.phase for m in self.reconciler.models.values())

    def active_models(self) -> dict[str, AppliedModel]:
        """The active version of every model serving, by name."""
        return self.reconciler.active_models()

    @property
    def error(self) -> ErrorInfo | None:
        return self.reconciler.error

    @property
    def desired_version(self) -> int | None:
        return self.reconciler.state.desired_version

    # -- agent.reconcile.Outbox: what the reconciler sends becomes transport actions --------------------
    def report(self, state: ReportedState) -> None:
        self._out.append(self._publish(TopicKind.REPORTED, state))

    def want(self, want: Want) -> bool:
        if not self.connected:
            return False  # wanted again when the link is back (Reconciler.on_connected)
        self._out.append(self._publish(TopicKind.WANT, want))
        return True

    def watch_blob(self, sha256: str) -> None:
        topic = self._watched[sha256] = self.topics.chunk(sha256)
        self._chunk_topics[topic] = sha256
        self._out.append(Subscribe(topic))

    def unwatch_blob(self, sha256: str) -> None:
        self._chunk_topics.pop(self._watched.pop(sha256, ""), None)
        self._out.append(Unsubscribe(self.topics.chunk(sha256)))

    def ack(self, ack: CommandAck) -> None:
        self._out.append(self._publish(TopicKind.CMD_ACK, ack))

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    # -- connection ---------------------------------------------------------------------------
    def will(self, now: float) -> Publish:
        """The last will the transport registers before connecting: retained `offline`."""
        self._connect_ts = now  # the birth carries it too: the hub orders a will after its birth (agent.runtime)
        status = DeviceStatus(device_id=self.device_id, state="offline", ts=now, session=self.session)
        return self._publish(TopicKind.STATUS, status)

    def on_connect(self, now: float) -> list[Action]:
        """Connected: subscribe, publish the birth, then the reconciler wants what is missing and reports."""
        self._now = now
        self.connected = True
        birth = DeviceStatus(
            device_id=self.device_id,
            state="online",
            ts=self._connect_ts,
            session=self.session,
            labels=self.identity.labels,
            capabilities=Capabilities(
                agent_version=self.config.agent_version,
                onnxruntime_version="sim",
                providers=[PROVIDER],
                cpu_count=4,
                memory_bytes=8 << 30,
                platform=f"sim-{platform.machine()}",
                tasks=list(TASKS),  # the agent's own reconciler: it takes every task this version knows
            ),
        )
        self._out += [
            Subscribe(self.topics.desired(self.device_id)),
            Subscribe(self.topics.cmd(self.device_id)),
            *(Subscribe(self._watched[sha]) for sha in sorted(self._watched)),
            self._publish(TopicKind.STATUS, birth),
        ]
        self.reconciler.on_connected()
        return self._take()

    def on_disconnect(self) -> None:
        """The connection is gone (the transport reconnects)."""
        self.connected = False

    # -- messages -----------------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, now: float) -> list[Action]:
        """Handle one received message; never raises on bad input (it is counted and reported)."""
        self._now = now
        sha = self._chunk_topics.get(topic)
        if sha is not None:  # the bulk of the traffic: a chunk of the blob being fetched
            self._on_chunk(sha, payload)
            return self._take()
        try:
            parsed = self.topics.parse(topic)
        except FleetError:
            self.stats.malformed += 1
            return []
        if parsed.kind is TopicKind.CHUNK:
            self._on_chunk(parsed.sha256 or "", payload)
        elif parsed.device_id != self.device_id:
            self.stats.malformed += 1
        elif parsed.kind is TopicKind.DESIRED:
            refused = self.reconciler.refused
            self.reconciler.on_desired(payload)
            self.stats.refused_desired += self.reconciler.refused - refused
        elif parsed.kind is TopicKind.CMD:
            refused = self.reconciler.refused
            self.reconciler.on_command(payload)
            self.stats.malformed += self.reconciler.refused - refused
        else:
            self.stats.malformed += 1
        return self._take()

    def _on_chunk(self, sha256: str, payload: bytes) -> None:
        rec = self.reconciler
        dl = rec.download
        if dl is None or dl.sha256 != sha256:
            stray = rec.stray_chunks
            rec.on_chunk(sha256, payload)
            self.stats.ignored_chunks += rec.stray_chunks - stray  # a blob we no longer fetch (others still do)
            return
        have, refused, duplicates = dl.receiver.have_count, dl.refused, dl.duplicates
        rec.on_chunk(sha256, payload)
        self.stats.chunks += dl.receiver.have_count - have
        self.stats.refused_chunks += dl.refused - refused
        self.stats.duplicate_chunks += dl.duplicates - duplicates
        if rec.download is not dl and self.store.has_blob(sha256):
            self.stats.downloads_done += 1
        if self.slow:
            self._out.append(PauseReading(self.config.faults.slow_chunk_s))

    # -- time ---------------------------------------------------------------------------------
    def tick(self, now: float) -> list[Action]:
        """Advance timers: the reconciler's re-wants, progress and retries; telemetry; injected faults."""
        self._now = now
        if self.connected:
            self.reconciler.tick()
        if now >= self._next_window:
            if self.connected:
                self._out.append(self._telemetry(now))
            self._window_start = now
            self._next_window = now + self.config.telemetry_s
            if self.connected and self.rng.random() < self.config.faults.offline_p:
                self.stats.went_offline += 1
                self._out.append(GoOffline(self.config.faults.offline_s))
        return self._take()

    # -- outgoing -----------------------------------------------------------------------------
    def _publish(self, kind: TopicKind, message: Wire) -> Publish:
        row = spec(kind)
        device = None if kind in (TopicKind.WANT, TopicKind.CHUNK) else self.device_id
        sha = getattr(message, "sha256", None) if device is None else None
        topic = self.topics.build(kind, device_id=device, sha256=sha)
        return Publish(topic, encode(message), qos=row.qos, retain=row.retained)

    def _telemetry(self, now: float) -> Publish:
        windows = []
        for name, active in sorted(self.reconciler.active_models().items()):
            w: WindowSample = sample_window(
                self.profiles.for_version(active.version), self.rng, now - self._window_start
            )
            windows.append(ModelWindow(name=name, version=active.version, provider=PROVIDER,
                                       requests=w.requests, errors=w.errors, latency=w.latency))  # fmt: skip
        telemetry = TelemetryWindow(
            device_id=self.device_id,
            seq=self._telemetry_seq,
            start=self._window_start,
            end=now,
            models=windows,
            cpu_percent=round(self.rng.uniform(5, 60), 1),
            memory_bytes=int(self.rng.uniform(200, 400)) << 20,
        )
        self._telemetry_seq += 1
        self.stats.telemetry += 1
        return self._publish(TopicKind.TELEMETRY, telemetry)

    def summary(self) -> dict[str, object]:
        """A plain dict of where this agent stands (for the CLI and tests)."""
        return {
            "device_id": self.device_id,
            "connected": self.connected,
            "phase": self.phase.value,
            "desired_version": self.desired_version,
            "models": {
                n: {
                    "phase": m.phase.value,
                    "active": m.active.version if m.active else None,
                    "error": m.error.code if m.error else None,
                }
                for n, m in sorted(self.models.items())
            },
            "error": self.error.code if self.error else None,
        }
