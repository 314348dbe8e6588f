"""The reconciler: turns verified desired states into downloaded, checked, active models, and reports.

It is free of transport: MQTT reaches it through `Outbox` (what it sends) and its `on_*` methods (what it
receives), all called from one control thread. A desired state names several models (slots); each goes
through the steps below on its own, in the order of the slots, with its own phase, error, active and
previous versions (`agent.modelstate.ModelState`):

1. verify the envelope (pinned key, schema, expiry, version counter); refuse and report anything else; read
   it slot by slot (`fleet.desired`): a slot this agent cannot read (a newer hub's field or value) is
   reported on its model (`unsupported_model`), whose version serving keeps serving, untouched;
2. stop serving the models the state no longer names (they stay as previous, for an instant re-deploy);
3. for each slot: fetch the blobs it lacks (its model, then its shadow candidate; one transfer at a time,
   a slot whose blobs are present does not wait for another's download); check the memory budget across
   models; load the new version into a new engine, warm it up and golden-check it, then swap it in and
   switch that model's store pointers (`previous` keeps the old version for an instant rollback); load
   its shadow candidate. Loading and serving sit behind `agent.ports.ActivationPort` (the fleet simulator
   runs this reconciler with a port that loads nothing);
4. apply the cluster workloads (cluster mode); report. Spare blobs are collected after every pass of these steps
   (`_collect`), and a blob that does not fit first deletes as many of them as it needs.

A failure at any step of one model keeps that model's running version serving, is reported on that model
with its reason, and leaves the other models alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

from agent.download import Download, Fetcher
from agent.errors import (
    ActivationError,
    AgentError,
    DiskError,
    DiskReadOnly,
    InsufficientDisk,
    MemoryBudgetExceeded,
    StoreError,
)
from agent.memory import MemoryBudget
from agent.modelstate import ModelState
from agent.ports import ActivationPort, ClusterCheck, ClusterPort
from agent.settings import AgentSettings
from agent.state import AcceptedState, Stamps
from agent.store import ShadowPointer, StoredModel, StorePort
from fleet.codec import decode
from fleet.desired import read_desired
from fleet.errors import (
    MessageError,
    SignatureError,
    UnsupportedBodySchema,
    UnsupportedModel,
    UnsupportedSchema,
    error_code,
)
from fleet.messages import (
    MAX_MODELS,
    AppliedModel,
    BlobManifest,
    Command,
    CommandAck,
    CommandName,
    DesiredModel,
    DesiredState,
    ErrorInfo,
    ModelRef,
    Phase,
    ReportedState,
    SignedEnvelope,
    Want,
)
from fleet.signing import Verifier

log = logging.getLogger(__name__)
_LOCK_POLL_S = 1.0
_DISK_CODES = frozenset({DiskError.code, InsufficientDisk.code, DiskReadOnly.code})  # a download stalled on the disk


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
    """Drives the device towards its desired state. Not thread-safe: call from the control thread only.

    Args:
        memory: the memory budget across models checked before every load (None: no check, e.g. when the
            models are served by pods of their own in cluster mode).
        stamps: numbers the reports, never going back across runs (the agent's `status.json`); None: numbered
            in memory, from the clock (the fleet simulator's agents, which live for one run).
    """

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
        memory: MemoryBudget | None = None,
        clock: Callable[[], float] = time.time,
        stamps: Stamps | None = None,
    ) -> None:
        self.device_id = device_id
        self.store = store
        self.activation = activation
        self.verifier = verifier
        self.settings = settings
        self.outbox = outbox
        self.state_path = state_path
        self.cluster = cluster
        self.memory = memory
        self.clock = clock
        self.state = AcceptedState()
        self.desired: DesiredState | None = None
        self.unread: tuple[UnsupportedModel, ...] = ()  # the slots of `desired`'s document this agent cannot read
        self.error: ErrorInfo | None = None  # device-level: a refused desired state
        self.models: dict[str, ModelState] = {}
        self.fetcher = Fetcher(
            store, device_id, settings.download, min_free_bytes=settings.store.min_free_bytes,
            send_want=outbox.want, watch=outbox.watch_blob, unwatch=outbox.unwatch_blob,
        )  # fmt: skip
        self.refused = 0
        self._settled: int | None = None
        self._retry_at: float | None = None
        self._cluster_retry_at: float | None = None  # when the next periodic cluster round starts
        self._round: Future[ClusterCheck] | None = None  # the periodic cluster round in progress (see tick)
        self._locked = False
        self.stamps = stamps or Stamps(None, clock)
        self._last_progress = 0.0
        self._progress_due = False
        self._reported_have = 0  # chunks of the transfer in progress when progress was last reported
        self._fetching: tuple[Download, DesiredState | None, str | None] | None = None  # see _downloading

    @property
    def download(self) -> Download | None:
        """The transfer in progress (None: none)."""
        return self.fetcher.current

    @property
    def stray_chunks(self) -> int:
        """Chunks received for blobs not being fetched."""
        return self.fetcher.stray_chunks

    def active_models(self) -> dict[str, AppliedModel]:
        """The active version of every model serving, by name."""
        return {n: m.active for n, m in self.models.items() if m.active is not None}

    def _model(self, name: str) -> ModelState:
        st = self.models.get(name)
        if st is None:
            st = self.models[name] = ModelState(name)
        return st

    # -- start-up -------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Serve every model's stored active version (or, if it fails to load, its previous one); `resume`
        continues the accepted desired state's work."""
        self.state = AcceptedState.load(self.state_path)
        for name in self.store.names():
            st = self._model(name)
            restored = self.activation.restore(name)
            for e in restored.errors:
                self._fail(st, e)
            if restored.active is not None:
                st.active, st.runtime, st.size = restored.active, restored.runtime, restored.size
                st.phase = Phase.ACTIVE
            st.previous = restored.previous
        if self.state.envelope is not None:
            try:
                self.desired, self.unread = read_desired(self.state.envelope.body)
            except ValueError:
                self.desired = None  # accepted by an agent of an older schema: the retained state comes again
        if self.desired is not None:  # models no longer desired and not serving are idle (kept as previous)
            for name in set(self.models) - self._named(self.desired):
                if self.models[name].active is None:
                    self.models[name].removed_at = self.clock()
            self._refuse_unread()
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
        except UnsupportedSchema as e:
            self._refuse("unsupported_schema", f"desired state refused: {e}")
            return
        except MessageError as e:
            self._refuse("malformed_envelope", f"desired state refused: {e}")
            return
        if envelope == self.state.envelope:
            self.report()  # the state already accepted (redelivered after a reconnect or restart)
            return
        try:
            body, unread = self.verifier.verify_desired(
                envelope, now=self.clock(), last_version=self.state.desired_version
            )
        except UnsupportedBodySchema as e:
            self._refuse("unsupported_schema", f"desired state refused: {e}")
            return
        except SignatureError as e:
            self._refuse(error_code(e), f"desired state refused: {e}")
            return
        self.state = self.state.model_copy(update={"desired_version": body.version, "envelope": envelope})
        self.state.save(self.state_path)
        log.info("accepted desired state %s (%d model(s))", body.version, len(body.models) + len(unread))
        self.desired, self.unread = body, unread
        self.error = None
        self._settled = None
        self._retry_at = None
        for slot in body.models:
            st = self._model(slot.name)
            st.removed_at, st.cluster_error = None, None  # this state's apply supersedes a pending one or removal
            if not st.failed_before(slot):
                st.error = None
        self._refuse_unread()
        self.fetcher.keep_only(self.needed_blobs())
        self._advance()

    def on_chunk(self, sha256: str, payload: bytes) -> None:
        """A chunk frame arrived on a blob topic."""
        st = self._downloading()
        try:
            result = self.fetcher.on_chunk(sha256, payload)
        except DiskError as e:  # the chunk could not be stored (disk full, read-only): say so once, keep what's durable
            if st is not None and (st.error is None or st.error.code != e.code):
                dl = self.fetcher.current
                if isinstance(e, InsufficientDisk) and dl is not None and self._make_room(dl.manifest, e):
                    dl.want()  # the disk filled after the free-space check: spare blobs went, the rest comes now
                    return
                log.warning("download of %s stalled: %s", sha256[:12], e)
                self._fail(st, e)
                self.report()
            return
        except AgentError as e:
            if st is not None:
                self._download_failed(st, e)
            return
        stalled = st is not None and st.error is not None and st.error.code in _DISK_CODES
        if st is not None and stalled and result in ("new", "complete"):
            st.error = None  # space again: the stall is over
        if result == "complete":
            self._advance()
        elif result == "new":
            self._progress_due = True
            self._report_progress()

    def on_command(self, payload: bytes) -> None:
        """A signed command arrived: verify, run, acknowledge."""
        try:
            body = self.verifier.verify(payload, Command, now=self.clock(), last_version=self.state.command_version)
        except (SignatureError, MessageError) as e:
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
        self._cluster_round()

    def close(self) -> None:
        """Persist download progress (it resumes on the next start)."""
        self.fetcher.close()

    # -- the work -------------------------------------------------------------------------------------
    def needed_blobs(self) -> set[str]:
        """Digests of the blobs the accepted desired state names (every model and shadow candidate)."""
        return {r.blob.sha256 for slot in self._slots() for r in slot.refs()}

    def _slots(self) -> list[DesiredModel]:
        return list(self.desired.models) if self.desired is not None else []

    def _named(self, d: DesiredState) -> set[str]:
        """The models `d`'s document names: its slots and the slots this agent could not read."""
        return {m.name for m in d.models} | {u.model for u in self.unread}

    def _refuse_unread(self) -> None:
        """Report each slot of the desired state this agent cannot read on its model: what serves of it stays."""
        for e in self.unread:
            log.warning("%s", e)
            st = self._model(e.model)
            st.removed_at = None
            st.phase = Phase.FAILED
            st.error = ErrorInfo(code=error_code(e), message=str(e)[:2048], permanent=True, at=self.clock())

    def _downloading(self) -> ModelState | None:
        """The model whose blob is being fetched (None: no transfer, or a blob no slot names).

        Asked on every chunk: the slot's name is kept for the (transfer, desired state) it was found for.
        """
        dl = self.fetcher.current
        if dl is None:
            return None
        cached = self._fetching
        if cached is None or cached[0] is not dl or cached[1] is not self.desired:
            name = next((s.name for s in self._slots() if any(r.blob.sha256 == dl.sha256 for r in s.refs())), None)
            cached = self._fetching = (dl, self.desired, name)
        return None if cached[2] is None else self.models.get(cached[2])

    def _advance(self) -> None:
        d = self.desired
        if d is None or self._settled == d.version:
            return
        self._remove_unwanted(d)
        waiting = locked = False
        for slot in d.models:
            st = self._model(slot.name)
            if st.settled == d.version:
                continue
            if not self._blobs_ready(slot, st):
                waiting = waiting or st.settled != d.version
                continue
            if self._update_locked(st):  # this model waits; the others' blobs are still fetched
                locked = True
                continue
            self._apply_slot(slot, st, d.version)
        # what the removals, activations and rollbacks above left spare, also while a transfer or the lock waits
        self._collect()
        if waiting or locked:
            if not locked:  # a locked pass runs every second: _update_locked reports when a model starts waiting
                self.report()
            return
        self._apply_cluster(d)
        self._settled = d.version
        self.report()

    def _blobs_ready(self, slot: DesiredModel, st: ModelState) -> bool:
        """Start or continue the transfers `slot` needs; True once every blob of it is in the store."""
        for ref in slot.refs():
            if self.store.has_blob(ref.blob.sha256, ref.blob.size):
                continue
            busy = self.fetcher.current
            if busy is not None and busy.sha256 != ref.blob.sha256 and busy.sha256 in self.needed_blobs():
                st.phase = Phase.DOWNLOADING  # queued behind another model's transfer (one at a time)
                return False
            return self._fetch(ref, st)
        return True

    def _fetch(self, ref: ModelRef, st: ModelState) -> bool:
        """Start or continue the download of `ref`; True when the blob is now in the store."""
        try:
            if self.fetcher.ensure(ref.blob):
                return True
        except InsufficientDisk as e:
            if self._make_room(ref.blob, e) or (e.needed is not None and self.store.free_bytes() >= e.needed):
                return self._fetch(ref, st)  # once more: each try deletes something (or stale partials went) or fails
            self._download_failed(st, e)
            return False
        except AgentError as e:
            self._download_failed(st, e)
            return False
        st.phase = Phase.DOWNLOADING
        self.report()
        return False

    def _make_room(self, blob: BlobManifest, e: InsufficientDisk) -> bool:
        """`blob` does not fit (refused by the free-space check, or a chunk write failed for space: the disk filled
        during the transfer): delete as many spare blobs as it needs. Spare blobs are kept for their chunks (up to
        STORE_GC_KEEP_BYTES), not at the price of a version. True when one or more were deleted."""
        room = e.needed if e.needed is not None else blob.size + self.settings.store.min_free_bytes
        removed = self._collect(room_for=blob, room=room)
        if removed:
            log.warning("blob %s did not fit: deleted %d spare blob(s) to make room", blob.sha256[:12], len(removed))
        return bool(removed)

    def _download_failed(self, st: ModelState, e: AgentError) -> None:
        """Temporary: report and retry after `rewant_after_s`. Permanent: give up on this model's slot."""
        self._fail(st, e)
        if e.permanent:
            self.fetcher.cancel()
            if self.desired is not None:
                st.settled = self.desired.version
            st.phase = Phase.FAILED
        else:
            st.phase = Phase.DOWNLOADING
            self._retry_at = time.monotonic() + self.settings.download.rewant_after_s
        self.report()

    def _apply_slot(self, slot: DesiredModel, st: ModelState, version: int) -> None:
        """Activate the slot's model (unless it serves already), then its shadow; settle the slot."""
        st.settled = version
        if not st.serves(slot):
            if st.failed_before(slot):
                st.phase = Phase.FAILED  # the same version with the same options failed: not retried
                return
            error = self._activate(slot, st, version)
            if error is not None:
                # a refusal that depends on the other models (memory) is tried again with the next desired
                # state; one that depends on the version alone (golden check, file, description) is not
                st.failed = None if isinstance(error, MemoryBudgetExceeded) else (slot.model.blob.sha256, slot.runtime)
                st.phase = Phase.FAILED
                self.report()
                return
        st.failed = None
        self._apply_shadow(slot, st)
        st.phase = Phase.ACTIVE

    def _update_locked(self, st: ModelState) -> bool:
        """True while the update lock file exists: verified models wait (checked again every second)."""
        lock = self.settings.activation.update_lock_file
        if lock is None or not lock.exists():
            self._locked = False
            return False
        if not self._locked:
            log.info("models downloaded and verified; activation waits for the update lock %s to go", lock)
            self._locked = True
        if st.phase is not Phase.ACTIVATING:
            st.phase = Phase.ACTIVATING
            self.report()
        self._retry_at = time.monotonic() + _LOCK_POLL_S
        return True

    def _budget(self, st: ModelState, what: str, size: int, *, replacing: bool) -> None:
        """Raise MemoryBudgetExceeded when loading `size` bytes of model beside what is loaded would not fit.

        `replacing`: the active version of `st` is in memory until its requests finish (a swap), else the
        shadow candidate being replaced is unloaded first.
        """
        if self.memory is None:
            return
        loaded: dict[str, int] = {}
        for m in self.models.values():
            if m.active is not None and (m is not st or replacing):
                label = "until the swap" if m is st else "active"
                loaded[f"{m.name} {m.active.version} ({label})"] = m.size
            if m.shadow is not None and (m is not st or replacing):
                loaded[f"{m.name} {m.shadow.version} (shadow)"] = m.shadow_size
        self.memory.check(what, size, loaded)

    def _activate(self, slot: DesiredModel, st: ModelState, version: int) -> ActivationError | None:
        """Load, check and swap in the slot's version; the refusal, or None when it serves."""
        ref, runtime = slot.model, slot.runtime
        st.phase = Phase.ACTIVATING
        self.report()
        sha = ref.blob.sha256
        try:
            self._budget(st, f"{ref.name} {ref.version}", ref.blob.size, replacing=True)
            applied = self.activation.activate(self.store.blob_path(sha), ref, runtime)
        except ActivationError as e:
            log.warning("activation of %s %s refused: %s", ref.name, ref.version, e)
            self._fail(st, e)
            return e
        st.active, st.runtime, st.size, st.error = applied, runtime, ref.blob.size, None
        record = StoredModel(sha256=sha, model=applied, task=ref.task, descriptor=ref.descriptor,
                             runtime=runtime, desired_version=version)  # fmt: skip
        try:
            prev = self.store.promote(record)
            st.previous = prev.model if prev is not None else None
        except (StoreError, OSError) as e:
            self._fail(st, StoreError(f"{ref.name} {ref.version} serves, but its pointer was not written: {e}"))
        return None

    def _apply_shadow(self, slot: DesiredModel, st: ModelState) -> None:
        spec = slot.shadow
        if spec is None:
            if st.shadow is not None:
                self.activation.clear_shadow(slot.name)
                st.shadow, st.shadow_size = None, 0
            try:  # also a pointer an earlier run left (it wrote it, then stopped before clearing it)
                self.store.clear_shadow(slot.name)
            except (StoreError, OSError) as e:
                self._fail(st, StoreError(f"{slot.name}'s shadow stopped, but its pointer was not removed: {e}"))
            return
        ref = spec.model
        if st.shadow is not None and st.shadow.sha256 == ref.blob.sha256 and st.shadow_rate == spec.sample_rate:
            return
        try:
            self._budget(st, f"{ref.name} {ref.version} (shadow)", ref.blob.size, replacing=False)
            applied = self.activation.set_shadow(
                self.store.blob_path(ref.blob.sha256), ref, slot.runtime, spec.sample_rate
            )
        except ActivationError as e:
            self._fail(st, AgentError(f"shadow candidate refused: {e}", code=f"shadow_{e.code}"[:64]))
            return
        st.shadow, st.shadow_size, st.shadow_rate = applied, ref.blob.size, spec.sample_rate
        # the pointer is what cluster mode's serving pods follow (single-device mode serves it already)
        record = StoredModel(sha256=ref.blob.sha256, model=applied, task=ref.task, descriptor=ref.descriptor,
                             runtime=slot.runtime)  # fmt: skip
        try:
            self.store.set_shadow(ShadowPointer(candidate=record, sample_rate=spec.sample_rate))
        except (StoreError, OSError) as e:
            self._fail(st, StoreError(f"{ref.name} {ref.version} shadows, but its pointer was not written: {e}"))

    def _remove_unwanted(self, d: DesiredState) -> None:
        """Stop serving the models `d` does not name; each stays as previous (idle), within MAX_MODELS."""
        wanted = self._named(d)
        for name, st in sorted(self.models.items()):
            if name in wanted or st.removed_at is not None:
                continue
            log.info("model %s is no longer desired: it stops serving", name)
            self.activation.deactivate(name)
            try:
                self.store.clear_shadow(name)
                if st.active is not None:
                    self.store.clear_active(name)
            except (StoreError, OSError) as e:
                self._fail(st, StoreError(f"{name} stopped serving, but its pointers were not cleared: {e}"))
            if self.cluster is not None:
                self._remove_cluster(st)
            if st.active is None and st.previous is None and st.cluster_error is None:  # nothing to keep
                self.store.forget(name)
                del self.models[name]
                continue
            st.previous = st.active or st.previous
            st.active = st.shadow = st.runtime = st.cluster = st.failed = None
            st.size = st.shadow_size = 0
            st.phase, st.settled, st.removed_at = Phase.IDLE, None, self.clock()
        idle = sorted((st.removed_at, n) for n, st in self.models.items() if st.removed_at is not None)
        for _at, name in idle[: max(0, len(idle) - MAX_MODELS)]:
            self.store.forget(name)  # beyond the bound: the oldest removed model is forgotten (blobs collectable)
            del self.models[name]

    def _apply_cluster(self, d: DesiredState) -> None:
        """Apply the workloads of `d`'s active models. One the cluster refused (API unreachable, namespace missing,
        RBAC) keeps its error in `cluster_error` and is applied again by the periodic round every `cluster_retry_s`
        until it goes in (its error is then cleared) or another desired state comes: the operator fixes the
        cluster, the agent needs no new state.
        """
        if self.cluster is None:
            return
        self._round = None  # the port cancels a round in progress: this apply supersedes it
        for slot in d.models:
            st = self.models[slot.name]
            if st.active is None:
                continue
            try:
                st.cluster, st.cluster_error = self.cluster.apply(d, slot.name), None
            except Exception as e:  # ClusterPort promises typed errors; anything else must not stop the agent either
                self._cluster_failed(st, "cluster workload not applied", e)
        refused = sorted(slot.name for slot in d.models if self.models[slot.name].cluster_error is not None)
        if refused:
            log.info("cluster workloads of %s not applied: tried again in %gs", ", ".join(refused),
                     self.settings.activation.cluster_retry_s)  # fmt: skip
        self._cluster_retry_at = time.monotonic() + self.settings.activation.cluster_retry_s  # see _cluster_round

    def _cluster_round(self) -> None:
        """Every `cluster_retry_s` (from `tick`), once the desired state is settled: start the periodic round in
        the port's own thread, and take in its findings on a later tick. The control thread never waits for it,
        so a new desired state or a rollback is not held up by a slow or hanging API server."""
        if self._round is not None:
            if not self._round.done():
                return
            finished, self._round = self._round, None
            again = False
            if not finished.cancelled():
                try:
                    again = self._checked(finished.result())
                except Exception as e:  # the port's future never raises; a bug must not stop the agent either
                    log.warning("the periodic cluster check failed: %s", e)
            self._cluster_retry_at = time.monotonic() + (0.0 if again else self.settings.activation.cluster_retry_s)
            return
        if self._cluster_retry_at is None or time.monotonic() < self._cluster_retry_at:
            return
        self._cluster_retry_at = None
        d = self.desired
        if self.cluster is None or d is None or self._settled != d.version:
            return  # not settled: _advance applies every model anyway, and schedules the next round
        wanted = [self.models[slot.name] for slot in d.models]
        read = [st.name for st in wanted if st.active is not None and st.cluster is not None and not st.cluster_error]
        apply = [st.name for st in wanted if st.active is not None and st.cluster_error is not None]
        remove = sorted(n for n, st in self.models.items() if st.removed_at is not None and st.cluster_error)
        if read or apply or remove:
            self._round = self.cluster.check(d, read=read, apply=apply, remove=remove)
        else:
            self._cluster_retry_at = time.monotonic() + self.settings.activation.cluster_retry_s

    def _checked(self, found: ClusterCheck) -> bool:
        """Take in a finished round: a workload with an object gone (someone deleted its ConfigMap, Service,
        Deployment or HPA) is reported missing, naming the object (and applied again by the next round, started
        at once: True); one whose rollout changed since (failed, then healthy later) is reported as it is now; the
        outcomes of applying again and removing again are reported."""
        d = self.desired
        if d is None or found.desired_version != d.version:
            return False  # a round for an older desired state: what it found is out of date
        changed = missing = False
        for name, now in found.workloads.items():
            st = self.models.get(name)
            if st is None or st.active is None or st.cluster is None or st.cluster_error is not None:
                continue
            if isinstance(now, AgentError):
                log.info("cannot check the cluster workload of %s: %s", name, now)  # checked again next time
                continue
            if now.missing or now.rollout is None:
                gone = ", ".join(now.missing) or f"Deployment {st.cluster.namespace}/{st.cluster.deployment}"
                log.warning("%s of model %s gone: applying its workload again", gone, name)
                message = f"cluster workload missing: {gone} deleted outside the agent"
                st.cluster_error = self._error(
                    AgentError(f"{message}; applying it again", code="workload_missing", permanent=False)
                )
                ready = 0 if now.rollout is None else now.rollout.ready_replicas
                st.cluster = st.cluster.model_copy(update={"state": "failed", "ready_replicas": ready,
                                                           "message": message})  # fmt: skip
                missing = True
            elif (now.rollout.state, now.rollout.ready_replicas, now.rollout.replicas) != (
                st.cluster.state, st.cluster.ready_replicas, st.cluster.replicas
            ):  # fmt: skip
                st.cluster = now.rollout  # its message says why its pods are not ready, as the apply's did
            else:
                continue
            changed = True
        for name, applied in found.applied.items():
            st = self.models.get(name)
            if st is None or st.active is None:
                continue
            if isinstance(applied, AgentError):
                self._cluster_failed(st, "cluster workload not applied", applied)
            else:
                st.cluster, st.cluster_error = applied, None
            changed = True
        for name, error in found.removed.items():
            st = self.models.get(name)
            if st is None or st.removed_at is None:
                continue
            if error is not None:
                self._cluster_failed(st, "cluster workload not removed", error)
            else:
                st.cluster_error = None
                self._forget_if_unused(st)
            changed = True
        if changed:
            self.report()
        return missing

    def _remove_cluster(self, st: ModelState) -> None:
        """Delete the workload of model `st`, no longer desired. One the cluster refused (RBAC, API unreachable)
        keeps its pods running: its removal is tried again by the periodic round every `cluster_retry_s`, and the
        model (idle) reports the error until it goes through or the model is desired again.
        """
        assert self.cluster is not None
        self._round = None  # the port cancels a round in progress: this removal supersedes it
        try:
            self.cluster.remove(st.name)
        except Exception as e:  # as in _apply_cluster
            self._cluster_failed(st, "cluster workload not removed", e)
            return
        st.cluster_error = None

    def _cluster_failed(self, st: ModelState, what: str, e: Exception) -> None:
        code = getattr(e, "code", "cluster_error")
        st.cluster_error = self._error(AgentError(f"{what}: {e}", code=str(code)[:64], permanent=False))

    def _forget_if_unused(self, st: ModelState) -> None:
        """Forget a model no longer desired that has nothing to keep (no version, no pending cluster removal)."""
        if st.active is None and st.previous is None and st.cluster_error is None and st.removed_at is not None:
            self.store.forget(st.name)
            del self.models[st.name]

    def _kept_blobs(self) -> set[str]:
        """Blobs never collected besides those the pointers name: the desired state's, and every model's active,
        previous (its rollback) and running shadow as the reconciler knows them."""
        loaded = {v.sha256 for m in self.models.values() for v in (m.active, m.previous, m.shadow) if v is not None}
        return self.needed_blobs() | loaded  # also what serves and its rollback when a pointer could not be read

    def _collect(self, *, room_for: BlobManifest | None = None, room: int = 0) -> list[str]:
        """The garbage collection: delete download files of blobs no longer wanted, then spare blobs (named by no
        pointer, not wanted by the desired state, no running shadow) beyond `STORE_GC_KEEP_BYTES`, and while the
        disk has less than `room` bytes free for `room_for`'s download (those sharing fewest chunks with it, then
        the least recently used, first). Returns the deleted blobs."""
        partials = self.needed_blobs() | ({self.download.sha256} if self.download else set())
        self.store.discard_partials(keep=partials)
        return self.store.collect(self.settings.store.gc_keep_bytes, keep=self._kept_blobs(), room=room,
                                  reuse=room_for)  # fmt: skip

    # -- reporting ------------------------------------------------------------------------------------
    def _fail(self, st: ModelState, e: AgentError, *, permanent: bool | None = None) -> None:
        st.error = self._error(e, permanent=permanent)

    def _error(self, e: AgentError, *, permanent: bool | None = None) -> ErrorInfo:
        perm = e.permanent if permanent is None else permanent
        return ErrorInfo(code=e.code[:64], message=str(e)[:2048], permanent=perm, at=self.clock())

    def _refuse(self, code: str, message: str) -> None:
        self.refused += 1
        log.warning("%s", message)
        self.error = ErrorInfo(code=code[:64], message=message[:2048], permanent=True, at=self.clock())
        self.report()

    def snapshot(self) -> ReportedState:
        """The reported state as of now, with a fresh sequence number: greater than any earlier report's of this
        device, of this run or an earlier one (the hub keeps the one with the greatest; `Stamps`)."""
        seq = self.stamps.report_seq()
        progress = self.fetcher.progress()
        fetching = self._downloading()
        order = [s.name for s in self._slots()] + [u.model for u in self.unread]
        order += sorted(n for n in self.models if n not in order)
        models = [
            self.models[n].status(progress if self.models[n] is fetching else None) for n in order if n in self.models
        ]
        return ReportedState(
            device_id=self.device_id,
            seq=seq,
            ts=self.clock(),
            desired_version=self.state.desired_version,
            models=models,
            error=self.error,
        )

    def _report_progress(self) -> None:
        """Report download progress at most every `report_interval_s`, once `report_chunks` more chunks arrived
        or 10 intervals passed (the last step is never lost)."""
        if not self._progress_due:
            return
        a = self.settings.activation
        since = time.monotonic() - self._last_progress
        if since < a.report_interval_s:
            return
        gained = self._have() - self._reported_have  # negative: another transfer than the one last reported
        if not 0 <= gained < a.report_chunks or since >= 10 * a.report_interval_s:
            self.report()

    def _have(self) -> int:
        dl = self.fetcher.current
        return dl.receiver.have_count if dl is not None else 0

    def report(self) -> None:
        """Publish the reported state."""
        self._progress_due = False
        self._last_progress = time.monotonic()
        self._reported_have = self._have()
        self.outbox.report(self.snapshot())
