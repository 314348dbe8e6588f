"""The reconciler: turns verified desired states into a downloaded, checked, active model, and reports.

It is free of transport: MQTT reaches it through `Outbox` (what it sends) and its `on_*` methods (what it
receives), all called from one control thread. The order of work for a desired state:

1. verify the envelope (pinned key, expiry, version counter); refuse and report anything else;
2. fetch every blob it names that the store lacks (model first, then the shadow candidate);
3. load the model into a new engine, warm it up and golden-check it, then swap it in and switch the
   store's pointers (`previous` keeps the old model for an instant rollback); loading and serving sit
   behind `agent.ports.ActivationPort` (the fleet simulator runs this reconciler with a port that loads
   nothing);
4. load the shadow candidate, apply the cluster workload (cluster mode), collect spare blobs; report.

A failure at any step keeps the running model serving and is reported with its reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from agent.download import Download, Fetcher
from agent.errors import ActivationError, AgentError, InsufficientDisk, StoreError
from agent.ports import ActivationPort, ClusterPort
from agent.settings import AgentSettings
from agent.state import AcceptedState
from agent.store import StoredModel, StorePort
from fleet.codec import decode
from fleet.errors import MessageError, SignatureError, error_code
from fleet.messages import (
    AppliedModel,
    ClusterWorkload,
    Command,
    CommandAck,
    CommandName,
    DesiredState,
    ErrorInfo,
    ModelRef,
    Phase,
    ReportedState,
    RuntimeOptions,
    SignedEnvelope,
    Want,
)
from fleet.signing import Verifier

log = logging.getLogger(__name__)
_LOCK_POLL_S = 1.0


class Outbox(Protocol):
    """What the reconciler sends; the runtime implements it over the MQTT link."""

    def report(self, state: ReportedState) -> None:
        """Publish the reported state (retained)."""

    def want(self, want: Want) -> bool:
        """Publish a want; False when the link is down."""

    def watch_blob(self, sha256: str) -> None:
        """Receive the chunks of blob `sha256`."""

    def unwatch_blob(self, sha256: str) -> None:
        """Stop receiving the chunks of blob `sha256`."""

    def ack(self, ack: CommandAck) -> None:
        """Publish a command acknowledgement."""


class Reconciler:
    """Drives the device towards its desired state. Not thread-safe: call from the control thread only."""

    def __init__(
        self,
        *,
        device_id: str,
        store: StorePort,
        activation: ActivationPort,
        verifier: Verifier,
        settings: AgentSettings,
        outbox: Outbox,
        state_path: Path,
        cluster: ClusterPort | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self.store = store
        self.activation = activation
        self.verifier = verifier
        self.settings = settings
        self.outbox = outbox
        self.state_path = state_path
        self.cluster = cluster
        self.clock = clock
        self.state = AcceptedState()
        self.desired: DesiredState | None = None
        self.phase = Phase.IDLE
        self.error: ErrorInfo | None = None
        self.active: AppliedModel | None = None
        self.active_runtime: RuntimeOptions | None = None
        self.previous: AppliedModel | None = None
        self.shadow: AppliedModel | None = None
        self.cluster_state: ClusterWorkload | None = None
        self.fetcher = Fetcher(
            store, device_id, settings.download, min_free_bytes=settings.store.min_free_bytes,
            send_want=outbox.want, watch=outbox.watch_blob, unwatch=outbox.unwatch_blob,
        )  # fmt: skip
        self.refused = 0
        self._settled: int | None = None
        self._retry_at: float | None = None
        self._seq = 0
        self._last_progress = 0.0
        self._progress_due = False

    @property
    def download(self) -> Download | None:
        """The transfer in progress (None: none)."""
        return self.fetcher.current

    @property
    def stray_chunks(self) -> int:
        """Chunks received for blobs not being fetched."""
        return self.fetcher.stray_chunks

    # -- start-up -------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Serve the stored active model (or, if it fails to load, the previous one); `resume` continues."""
        self.state = AcceptedState.load(self.state_path)
        restored = self.activation.restore()
        for e in restored.errors:
            self._fail(e)
        if restored.active is not None:
            self.active, self.active_runtime = restored.active, restored.runtime
        self.previous = restored.previous
        if self.state.envelope is not None:
            try:
                self.desired = DesiredState.model_validate(self.state.envelope.body)
            except ValidationError:
                self.desired = None
        self.report()

    def resume(self) -> None:
        """Continue the work of the accepted desired state (after `restore`, once the link is up)."""
        self._advance()

    # -- events ---------------------------------------------------------------------------------------
    def on_connected(self) -> None:
        """The link is (back) up: want what is still missing and report."""
        self.fetcher.want_missing()
        self.report()

    def on_desired(self, payload: bytes) -> None:
        """A desired-state envelope arrived (retained or new)."""
        if not payload:
            return  # the retained message was cleared
        try:
            envelope = decode(payload, SignedEnvelope)
        except MessageError as e:
            self._refuse("malformed_envelope", f"desired state refused: {e}")
            return
        if envelope == self.state.envelope:
            self.report()  # the state already accepted (redelivered after a reconnect or restart)
            return
        try:
            body = self.verifier.verify(
                envelope, DesiredState, now=self.clock(), last_version=self.state.desired_version
            )
        except SignatureError as e:
            self._refuse(error_code(e), f"desired state refused: {e}")
            return
        self.state = self.state.model_copy(update={"desired_version": body.version, "envelope": envelope})
        self.state.save(self.state_path)
        log.info("accepted desired state %s", body.version)
        self.desired = body
        self.error = None
        self._settled = None
        self._retry_at = None
        self.fetcher.keep_only(self.needed_blobs())
        self._advance()

    def on_chunk(self, sha256: str, payload: bytes) -> None:
        """A chunk frame arrived on a blob topic."""
        try:
            result = self.fetcher.on_chunk(sha256, payload)
        except InsufficientDisk as e:  # the chunk could not be stored (disk full): say so once, keep what is durable
            if self.error is None or self.error.code != e.code:
                log.warning("download of %s stalled: %s", sha256[:12], e)
                self._fail(e)
                self.report()
            return
        except AgentError as e:
            self._download_failed(e)
            return
        if result in ("new", "complete") and self.error is not None and self.error.code == InsufficientDisk.code:
            self.error = None  # space again: the stall is over
        if result == "complete":
            self._advance()
        elif result == "new":
            self._progress_due = True
            self._report_progress()

    def on_command(self, payload: bytes) -> None:
        """A signed command arrived: verify, run, acknowledge."""
        try:
            body = self.verifier.verify(payload, Command, now=self.clock(), last_version=self.state.command_version)
        except SignatureError as e:
            self.refused += 1
            log.warning("command refused: %s", e)
            return
        self.state = self.state.model_copy(update={"command_version": body.version})
        self.state.save(self.state_path)
        result: dict[str, object] = {}
        if body.name is CommandName.COLLECT_GARBAGE:
            result["removed"] = len(self._collect())
        elif body.name is CommandName.PING:
            result["pong"] = True
        self.outbox.ack(CommandAck(device_id=self.device_id, correlation_id=body.correlation_id, ok=True,
                                   result=result))  # fmt: skip
        self.report()

    def tick(self) -> None:
        """Periodic work: re-want stalled chunks, retry temporary failures."""
        if self.fetcher.current is not None:
            self.fetcher.tick()
            self._report_progress()
        if self._retry_at is not None and time.monotonic() >= self._retry_at:
            self._retry_at = None
            self._advance()

    def close(self) -> None:
        """Persist download progress (it resumes on the next start)."""
        self.fetcher.close()

    # -- the work -------------------------------------------------------------------------------------
    def needed_blobs(self) -> set[str]:
        """Digests of the blobs the accepted desired state names (model and shadow candidate)."""
        return {r.blob.sha256 for r in self._refs()}

    def _refs(self) -> list[ModelRef]:
        d = self.desired
        if d is None:
            return []
        refs = [d.model] if d.model is not None else []
        if d.shadow is not None:
            refs.append(d.shadow.model)
        return refs

    def _advance(self) -> None:
        d = self.desired
        if d is None or self._settled == d.version:
            return
        for ref in self._refs():
            if self.store.has_blob(ref.blob.sha256, ref.blob.size):
                continue
            if not self._fetch(ref):
                return
        if d.model is None:
            self.activation.deactivate()
            self.store.clear_active()
            self.previous, self.active, self.active_runtime = self.active or self.previous, None, None
        elif not self._is_active(d.model, d.runtime):
            if self._update_locked():
                return
            if not self._activate(d.model, d.runtime, d.version):
                self._settled = d.version
                self.phase = Phase.FAILED
                self.report()
                return
        self._apply_shadow(d)
        self._apply_cluster(d)
        self._collect()
        self._settled = d.version
        self.phase = Phase.ACTIVE if d.model is not None else Phase.IDLE
        self.report()

    def _fetch(self, ref: ModelRef) -> bool:
        """Start or continue the download of `ref`; True when the blob is now in the store."""
        try:
            if self.fetcher.ensure(ref.blob):
                return True
        except AgentError as e:
            self._download_failed(e)
            return False
        self.phase = Phase.DOWNLOADING
        self.report()
        return False

    def _download_failed(self, e: AgentError) -> None:
        """Temporary: report and retry after `rewant_after_s`. Permanent: give up on this desired state."""
        self._fail(e)
        if e.permanent:
            self.fetcher.cancel()
            if self.desired is not None:
                self._settled = self.desired.version
            self.phase = Phase.FAILED
        else:
            self.phase = Phase.DOWNLOADING
            self._retry_at = time.monotonic() + self.settings.download.rewant_after_s
        self.report()

    def _is_active(self, ref: ModelRef, runtime: RuntimeOptions) -> bool:
        a = self.active
        return (
            a is not None
            and a.sha256 == ref.blob.sha256
            and (a.name, a.version) == (ref.name, ref.version)
            and self.active_runtime == runtime
        )

    def _update_locked(self) -> bool:
        """True while the update lock file exists: the verified model waits (checked again every second)."""
        lock = self.settings.activation.update_lock_file
        if lock is None or not lock.exists():
            return False
        if self.phase is not Phase.ACTIVATING:
            log.info("model downloaded and verified; activation waits for the update lock %s to go", lock)
            self.phase = Phase.ACTIVATING
            self.report()
        self._retry_at = time.monotonic() + _LOCK_POLL_S
        return True

    def _activate(self, ref: ModelRef, runtime: RuntimeOptions, version: int) -> bool:
        self.phase = Phase.ACTIVATING
        self.report()
        sha = ref.blob.sha256
        try:
            applied = self.activation.activate(self.store.blob_path(sha), ref, runtime)
        except ActivationError as e:
            log.warning("activation of %s %s refused: %s", ref.name, ref.version, e)
            self._fail(e)
            return False
        self.active, self.active_runtime = applied, runtime
        record = StoredModel(sha256=sha, model=applied, task=ref.task, descriptor=ref.descriptor,
                             runtime=runtime, desired_version=version)  # fmt: skip
        try:
            prev = self.store.promote(record)
            self.previous = prev.model if prev is not None else None
        except (StoreError, OSError) as e:
            self._fail(StoreError(f"{ref.name} {ref.version} serves, but its pointer was not written: {e}"))
        return True

    def _apply_shadow(self, d: DesiredState) -> None:
        spec = d.shadow
        if spec is None:
            if self.shadow is not None:
                self.activation.clear_shadow()
                self.shadow = None
            return
        ref = spec.model
        if self.shadow is not None and self.shadow.sha256 == ref.blob.sha256:
            return
        try:
            applied = self.activation.set_shadow(self.store.blob_path(ref.blob.sha256), ref, d.runtime,
                                                 spec.sample_rate)  # fmt: skip
        except ActivationError as e:
            self._fail(AgentError(f"shadow candidate refused: {e}", code=f"shadow_{e.code}"[:64]))
            return
        self.shadow = applied

    def _apply_cluster(self, d: DesiredState) -> None:
        if self.cluster is None:
            return
        try:
            self.cluster_state = self.cluster.apply(d)
        except Exception as e:  # ClusterPort promises typed errors; anything else must not stop the agent either
            code = getattr(e, "code", "cluster_error")
            self._fail(AgentError(f"cluster workload not applied: {e}", code=str(code)[:64], permanent=False))

    def _collect(self) -> list[str]:
        keep = {r.blob.sha256 for r in self._refs()}
        if self.shadow is not None:
            keep.add(self.shadow.sha256)
        removed = self.store.collect(self.settings.store.gc_keep_bytes, keep=keep)
        self.store.discard_partials(keep={self.download.sha256} if self.download else set())
        return removed

    # -- reporting ------------------------------------------------------------------------------------
    def _fail(self, e: AgentError, *, permanent: bool | None = None) -> None:
        perm = e.permanent if permanent is None else permanent
        self.error = ErrorInfo(code=e.code[:64], message=str(e)[:2048], permanent=perm, at=self.clock())

    def _refuse(self, code: str, message: str) -> None:
        self.refused += 1
        log.warning("%s", message)
        self.error = ErrorInfo(code=code[:64], message=message[:2048], permanent=True, at=self.clock())
        self.report()

    def snapshot(self) -> ReportedState:
        """The reported state as of now (with a fresh sequence number)."""
        self._seq = max(self._seq + 1, int(self.clock() * 1000))
        return ReportedState(
            device_id=self.device_id,
            seq=self._seq,
            ts=self.clock(),
            desired_version=self.state.desired_version,
            phase=self.phase,
            active=self.active,
            previous=self.previous,
            shadow=self.shadow,
            download=self.fetcher.progress(),
            error=self.error,
            cluster=self.cluster_state,
        )

    def _report_progress(self) -> None:
        """Report download progress at most every `report_interval_s` (the last step is never lost)."""
        if self._progress_due and time.monotonic() - self._last_progress >= self.settings.activation.report_interval_s:
            self.report()

    def report(self) -> None:
        """Publish the reported state."""
        self._progress_due = False
        self._last_progress = time.monotonic()
        self.outbox.report(self.snapshot())
