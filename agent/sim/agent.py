"""One simulated agent as a transport-free state machine: decoded messages in, messages to publish out.

It speaks the protocol like the real agent: a retained birth and an `offline` last will, signed desired
states checked with `fleet.signing.Verifier` (pinned key, expiry, no downgrade), wants and chunk downloads
verified chunk by chunk, reported states with progress and errors, signed commands acknowledged, and
telemetry windows drawn from the per-version profiles. Only activation is simulated: it takes
`activation_s` and fails with the configured probability, leaving the previous model serving.
"""

from __future__ import annotations

import platform
import random
import uuid

from agent.sim.actions import Action, AgentStats, GoOffline, PauseReading, Publish, Subscribe, Unsubscribe
from agent.sim.cache import BlobCache, Download
from agent.sim.config import AgentIdentity, SimConfig
from agent.sim.profile import Profiles, WindowSample, sample_window
from fleet.chunks import Accepted
from fleet.codec import decode, encode
from fleet.errors import ChunkError, FleetError, SignatureError, StaleVersion, error_code
from fleet.histogram import Histogram
from fleet.messages import (
    AppliedModel,
    Capabilities,
    Command,
    CommandAck,
    CommandName,
    DesiredState,
    DeviceStatus,
    DownloadProgress,
    ErrorInfo,
    Phase,
    Range,
    ReportedState,
    SignedEnvelope,
    TelemetryWindow,
    Want,
    Wire,
)
from fleet.signing import HubPublicKey, Verifier
from fleet.topics import TopicKind, Topics, spec

PROVIDER = "CPUExecutionProvider"


class SimAgent:
    """The protocol state machine of one simulated device.

    Args:
        identity: who the device is (id, pinned hub key, topic prefix, labels).
        config: shared behaviour and faults.
        cache: the process-wide content-addressed blob cache.
        profiles: latency/error distributions per model version.
        rng: this agent's random source (seed it for reproducible runs).
    """

    def __init__(
        self,
        identity: AgentIdentity,
        config: SimConfig,
        cache: BlobCache,
        profiles: Profiles,
        rng: random.Random,
        *,
        now: float,
    ) -> None:
        self.identity = identity
        self.device_id = identity.device_id
        self.config = config
        self.cache = cache
        self.profiles = profiles
        self.rng = rng
        self.topics = Topics(identity.topic_prefix)
        self.verifier = Verifier(HubPublicKey.from_text(identity.hub_public_key), identity.device_id)
        self.session = uuid.UUID(int=rng.getrandbits(128)).hex[:16]
        self.stats = AgentStats()
        self.slow = rng.random() < config.faults.slow_fraction
        self.connected = False
        self.phase = Phase.IDLE
        self.desired_version: int | None = None
        self.command_version: int | None = None
        self.desired: DesiredState | None = None
        self.active: AppliedModel | None = None
        self.previous: AppliedModel | None = None
        self.error: ErrorInfo | None = None
        self.download: Download | None = None
        self.held: set[str] = set()
        self._seq = 0
        self._telemetry_seq = 0
        self._window_start = now
        # spread the fleet's windows evenly instead of every agent reporting in the same instant
        self._next_window = now + rng.uniform(0, config.telemetry_s)
        self._activate_at: float | None = None
        self._last_progress = now
        self._last_report = now
        self._progress_due = False

    # -- connection ---------------------------------------------------------------------------
    def will(self, now: float) -> Publish:
        """The last will the transport registers before connecting: retained `offline`."""
        status = DeviceStatus(device_id=self.device_id, state="offline", ts=now, session=self.session)
        return self._publish(TopicKind.STATUS, status)

    def on_connect(self, now: float) -> list[Action]:
        """Connected: subscribe, publish the birth and the current reported state, resume any download."""
        self.connected = True
        birth = DeviceStatus(
            device_id=self.device_id,
            state="online",
            ts=now,
            session=self.session,
            labels=self.identity.labels,
            capabilities=Capabilities(
                agent_version=self.config.agent_version,
                onnxruntime_version="sim",
                providers=[PROVIDER],
                cpu_count=4,
                memory_bytes=8 << 30,
                platform=f"sim-{platform.machine()}",
            ),
        )
        actions: list[Action] = [
            Subscribe(self.topics.desired(self.device_id)),
            Subscribe(self.topics.cmd(self.device_id)),
            self._publish(TopicKind.STATUS, birth),
            self._report(now),
        ]
        if self.download is not None:
            actions += [Subscribe(self.topics.chunk(self.download.sha256)), self._want(self.download)]
            self._last_progress = now
        return actions

    def on_disconnect(self) -> None:
        """The connection is gone (the transport reconnects)."""
        self.connected = False

    # -- messages -----------------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, now: float) -> list[Action]:
        """Handle one received message; never raises on bad input (it is counted and reported)."""
        try:
            parsed = self.topics.parse(topic)
        except FleetError:
            self.stats.malformed += 1
            return []
        if parsed.kind is TopicKind.CHUNK:
            return self._on_chunk(parsed.sha256 or "", payload, now)
        if parsed.device_id != self.device_id:
            self.stats.malformed += 1
            return []
        if parsed.kind is TopicKind.DESIRED:
            return self._on_desired(payload, now) if payload else []
        if parsed.kind is TopicKind.CMD:
            return self._on_command(payload, now)
        self.stats.malformed += 1
        return []

    def _on_desired(self, payload: bytes, now: float) -> list[Action]:
        try:
            envelope = decode(payload, SignedEnvelope)
            desired = self.verifier.verify(envelope, DesiredState, now=now, last_version=self.desired_version)
        except SignatureError as e:
            if isinstance(e, StaleVersion) and envelope.body.get("version") == self.desired_version:
                return []  # the retained state we already applied, redelivered on reconnect
            self.stats.refused_desired += 1
            return [self._fail(error_code(e), str(e), now, phase=None)]
        except FleetError as e:
            self.stats.refused_desired += 1
            return [self._fail("malformed_envelope", str(e), now, phase=None)]
        return self._apply(desired, now)

    def _apply(self, desired: DesiredState, now: float) -> list[Action]:
        actions: list[Action] = []
        self.desired_version = desired.version
        self.desired = desired
        self.error = None
        self._activate_at = None
        model = desired.model
        if self.download is not None and (model is None or model.blob.sha256 != self.download.sha256):
            actions.append(Unsubscribe(self.topics.chunk(self.download.sha256)))
            self.download = None
        if model is None:
            if self.active is not None:
                self.previous = self.active
            self.active = None
            self.phase = Phase.IDLE
        elif self.active is not None and (self.active.sha256, self.active.name, self.active.version) == (
            model.blob.sha256,
            model.name,
            model.version,
        ):
            self.phase = Phase.ACTIVE
        elif model.blob.sha256 in self.held:
            self._start_activation(now)
        elif self.download is None:
            self.download = self.cache.download(model.blob)
            self.phase = Phase.DOWNLOADING
            self._last_progress = now
            actions += [Subscribe(self.topics.chunk(model.blob.sha256)), self._want(self.download)]
        actions.append(self._report(now))
        return actions

    def _on_chunk(self, sha256: str, payload: bytes, now: float) -> list[Action]:
        download = self.download
        if download is None or download.sha256 != sha256:
            self.stats.ignored_chunks += 1  # a blob we no longer want (other agents still fetch it)
            return []
        actions: list[Action] = []
        try:
            result = download.accept(payload)
        except ChunkError:
            self.stats.refused_chunks += 1
            index = download.last_index
            if index >= 0 and not download.has(index):  # like the agent: want a refused chunk again at once
                self._last_progress = now
                actions.append(self._want(download, [(index, index + 1)]))
            return actions
        self._last_progress = now
        if self.slow:
            actions.append(PauseReading(self.config.faults.slow_chunk_s))
        end_of_pass = download.last_index == download.manifest.count - 1 and not download.complete
        if end_of_pass and self.config.want_at_pass_end:
            # the hub's pass over the blob ended and we still miss chunks (we joined late): ask at once
            self._last_progress = now
            actions.append(self._want(download))
        if result is Accepted.DUPLICATE:
            self.stats.duplicate_chunks += 1
            return actions
        self.stats.chunks += 1
        if download.complete:
            try:
                download.finish()
            except ChunkError:
                return [*actions, self._want(download)]
            self.stats.downloads_done += 1
            self.held.add(download.sha256)
            self.download = None
            actions.append(Unsubscribe(self.topics.chunk(download.sha256)))
            self._start_activation(now)
            actions.append(self._report(now))
        elif now - self._last_report >= self.config.report_interval_s:
            actions.append(self._report(now))
        else:
            self._progress_due = True
        return actions

    def _on_command(self, payload: bytes, now: float) -> list[Action]:
        try:
            envelope = decode(payload, SignedEnvelope)
        except FleetError:
            self.stats.malformed += 1
            return []
        try:
            command = self.verifier.verify(envelope, Command, now=now, last_version=self.command_version)
        except SignatureError as e:
            self.stats.malformed += 1
            correlation = envelope.body.get("correlation_id")
            if not isinstance(correlation, str) or not 0 < len(correlation) <= 64:
                return []
            error = ErrorInfo(code=error_code(e), message=str(e)[:2000], at=now)
            ack = CommandAck(device_id=self.device_id, correlation_id=correlation, ok=False, error=error)
            return [self._publish(TopicKind.CMD_ACK, ack)]
        self.command_version = command.version
        actions: list[Action] = []
        result: dict[str, object] = {}
        if command.name is CommandName.PING:
            result = {"pong": True, "session": self.session}
        elif command.name is CommandName.REPORT_NOW:
            actions.append(self._report(now))
        ack = CommandAck(device_id=self.device_id, correlation_id=command.correlation_id, ok=True, result=result)
        return [*actions, self._publish(TopicKind.CMD_ACK, ack)]

    # -- time ---------------------------------------------------------------------------------
    def tick(self, now: float) -> list[Action]:
        """Advance timers: finish activations, re-send stalled wants, emit telemetry, inject faults."""
        actions: list[Action] = []
        if self._activate_at is not None and now >= self._activate_at:
            actions.append(self._finish_activation(now))
        if (
            self.download is not None
            and self.connected
            and now - self._last_progress >= self.config.want_retry_s
            and not self.slow
        ):
            self._last_progress = now
            actions.append(self._want(self.download))
        if (
            self.download is not None
            and self.connected
            and self._progress_due
            and now - self._last_report >= self.config.report_interval_s
        ):  # like the agent: progress not yet reported goes out on the next tick once the interval passed
            actions.append(self._report(now))
        if now >= self._next_window:
            if self.connected:
                actions.append(self._telemetry(now))
            self._window_start = now
            self._next_window = now + self.config.telemetry_s
            if self.connected and self.rng.random() < self.config.faults.offline_p:
                self.stats.went_offline += 1
                actions.append(GoOffline(self.config.faults.offline_s))
        return actions

    def _start_activation(self, now: float) -> None:
        self.phase = Phase.ACTIVATING
        self._activate_at = now + self.config.activation_s

    def _finish_activation(self, now: float) -> Action:
        self._activate_at = None
        desired = self.desired
        if desired is None or desired.model is None:
            self.phase = Phase.IDLE
            return self._report(now)
        model = desired.model
        if self.rng.random() < self.config.faults.activation_fail_p:
            self.stats.activation_failures += 1
            message = f"simulated activation failure of {model.name} {model.version}; previous model still serving"
            return self._fail("activation_failed", message, now, phase=Phase.FAILED)
        if self.active is not None and self.active.sha256 != model.blob.sha256:
            self.previous = self.active
        self.active = AppliedModel(
            name=model.name, version=model.version, sha256=model.blob.sha256, provider=PROVIDER, activated_at=now
        )
        self.stats.activations += 1
        self.phase = Phase.ACTIVE
        self.error = None
        return self._report(now)

    # -- outgoing -----------------------------------------------------------------------------
    def _publish(self, kind: TopicKind, message: Wire) -> Publish:
        row = spec(kind)
        device = None if kind in (TopicKind.WANT, TopicKind.CHUNK) else self.device_id
        sha = getattr(message, "sha256", None) if device is None else None
        topic = self.topics.build(kind, device_id=device, sha256=sha)
        return Publish(topic, encode(message), qos=row.qos, retain=row.retained)

    def _want(self, download: Download, ranges: list[Range] | None = None) -> Publish:
        missing = download.missing_ranges() if ranges is None else ranges
        want = Want(device_id=self.device_id, sha256=download.sha256, missing=missing[:4096])
        return self._publish(TopicKind.WANT, want)

    def _fail(self, code: str, message: str, now: float, *, phase: Phase | None) -> Publish:
        self.error = ErrorInfo(code=code, message=message[:2000], permanent=True, at=now)
        if phase is not None:
            self.phase = phase
        return self._report(now)

    def _report(self, now: float) -> Publish:
        self._seq += 1
        self._last_report = now
        self._progress_due = False
        progress = None
        if self.download is not None:
            d = self.download
            progress = DownloadProgress(
                sha256=d.sha256,
                have_chunks=d.have_count,
                total_chunks=d.manifest.count,
                bytes_done=d.bytes_done,
                bytes_total=d.manifest.size,
            )
        reported = ReportedState(
            device_id=self.device_id,
            seq=self._seq,
            ts=now,
            desired_version=self.desired_version,
            phase=self.phase,
            active=self.active,
            previous=self.previous,
            download=progress,
            error=self.error,
        )
        return self._publish(TopicKind.REPORTED, reported)

    def _telemetry(self, now: float) -> Publish:
        active = self.active
        if active is None:
            window = WindowSample(0, 0, Histogram())
        else:
            window = sample_window(self.profiles.for_version(active.version), self.rng, now - self._window_start)
        telemetry = TelemetryWindow(
            device_id=self.device_id,
            seq=self._telemetry_seq,
            start=self._window_start,
            end=now,
            model=active.name if active else None,
            model_version=active.version if active else None,
            provider=PROVIDER if active else None,
            requests=window.requests,
            errors=window.errors,
            latency=window.latency,
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
            "active": self.active.version if self.active else None,
            "error": self.error.code if self.error else None,
        }
