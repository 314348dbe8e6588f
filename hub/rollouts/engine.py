"""The rollout engine: persists rollouts in the hub store, ticks the controller, publishes desired states.

Order of every tick, per active rollout: build the fleet view, run `controller.step`, store the new record
(before anything else), log its events, then sign and publish the targets the store does not already hold
for that device from this rollout. Publishing is therefore idempotent: after a crash at any point, the next
tick (of this hub or a restarted one) publishes exactly what is missing, never a second desired state for
a step a device already has. Operator commands and the tick take the same lock.

With hub replicas, only the leader ticks (`leader` returns its `Fence`; hub.leadership): each record and each
desired state it writes is fenced by the lease, and each record carries a revision, so a command taken by another
replica and the leader's next step never overwrite each other (the loser reads again). Every replica reads
rollouts from the store when their revisions changed, so any replica can start, command and show them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from fleet.histogram import Histogram
from fleet.messages import AppliedModel, DesiredModel, ModelRef, RuntimeOptions, ShadowSpec
from hub.capacity import check_runtime, check_task
from hub.deploy import Deployer
from hub.errors import HubError, LeaseLost, NotFound, StaleDocument
from hub.registry import Registry
from hub.rollouts.cohort import DeviceView, Ref, Target, targets
from hub.rollouts.controller import Command, Event, command, new_rollout, step
from hub.rollouts.errors import RolloutConflict
from hub.rollouts.gates import Totals
from hub.rollouts.model import Rollout, RolloutSpec
from hub.rollouts.views import RolloutSummary, summary_view
from hub.settings import DeviceSettings, RolloutSettings
from hub.store import Fence, Store
from infra.periodic import Periodic

log = logging.getLogger(__name__)
COLLECTION = "rollouts"
INDEX = "rollout_index"  # one small summary per rollout, so that listing never loads whole records


def _ref(model: AppliedModel | None) -> Ref | None:
    return None if model is None else (model.name, model.version)


def fleet_view(store: Store, settings: DeviceSettings, now: float, model: str) -> dict[str, DeviceView]:
    """Every enrolled device as the controller of a rollout of `model` sees it: labels, reachability, and the
    desired and reported state of that one model (the device's other models are not the rollout's business)."""
    desired = {s.device_id: s for s in store.list_desired_summaries()}
    out: dict[str, DeviceView] = {}
    for d in store.list_devices():
        s = desired.get(d.id)
        slot = s.slot(model) if s else None
        rep = d.reported
        ms = rep.model(model) if rep else None
        online = d.status == "online" and d.last_seen is not None and now - d.last_seen <= settings.stale_after_s
        out[d.id] = DeviceView(
            id=d.id, labels=d.labels, online=online, desired_version=s.version if s else None,
            desired_rollout=slot.rollout_id if slot else None,
            desired_model=(slot.model_name, slot.model_version) if slot else None,
            desired_shadow=(slot.shadow_name, slot.shadow_version) if slot and slot.shadow_name and slot.shadow_version
            else None,
            desired_runtime=slot.runtime if slot else {}, accepted=rep.desired_version if rep else None,
            phase=ms.phase.value if ms else None, active=_ref(ms.active) if ms else None,
            shadow=_ref(ms.shadow) if ms else None, error_code=ms.error.code if ms and ms.error else None,
            error_message=ms.error.message if ms and ms.error else None,
        )  # fmt: skip
    return out


class StoreTelemetry:
    """`TelemetryView` over the hub store's raw telemetry windows of one model (one query per call)."""

    def __init__(self, store: Store, model: str) -> None:
        self.store = store
        self.model = model

    def totals(self, device_ids: Sequence[str], since: float, until: float) -> list[Totals]:
        return [
            Totals(
                model_version=t.model_version,
                requests=t.requests,
                errors=t.errors,
                latency=Histogram.of_sums(t.latency_counts, t.latency_sum_ms),
                devices=t.devices,
                shadow_version=t.shadow_version,
                shadow_samples=t.shadow_samples,
                shadow_agreements=t.shadow_agreements,
                shadow_delta_ms_sum=t.shadow_delta_ms_sum,
                shadow_incomparable=t.shadow_incomparable,
                shadow_timed_samples=t.shadow_timed_samples,
            )
            for t in self.store.telemetry_totals(device_ids, since=since, until=until, model=self.model)
        ]


class RolloutEngine:
    """Owns the rollouts of one hub: start, commands, status, and the tick that drives them."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        deployer: Deployer,
        settings: RolloutSettings,
        device_settings: DeviceSettings,
        *,
        leader: Callable[[], Fence | None] | None = None,
    ) -> None:
        self.store = store
        self.leader = leader  # None: a hub without replicas, always acting, unfenced
        self.registry = registry
        self.deployer = deployer
        self.settings = settings
        self.device_settings = device_settings
        self._lock = threading.RLock()
        self._loop = Periodic("hub-rollouts", self._scheduled_tick, lambda: self.settings.tick_interval_s, log=log,
                              join_s=30)  # fmt: skip
        self.tick_errors = 0
        self.publish_errors = 0
        self._active: dict[str, Rollout] = {}
        self._revs: dict[str, int] = {}  # revision of each rollout record as last read or written here
        indexed = {key for key, _doc in store.list_docs(INDEX)}
        for key, doc in store.list_docs(COLLECTION):
            if key not in indexed and (r := self._load(key, doc)) is not None:  # stored before the index existed
                store.put_doc(INDEX, r.id, summary_view(r).model_dump(mode="json"))
        self._refresh()

    def _load(self, key: str, doc: dict[str, Any]) -> Rollout | None:
        try:
            return Rollout.model_validate(doc)
        except ValueError:
            log.exception("rollouts: stored rollout %s does not load; left as it is", key)
            return None

    def _refresh(self) -> None:
        """Read the rollout records another replica (or an earlier hub) changed since this one last saw them."""
        with self._lock:
            for key, rev in self.store.doc_revs(COLLECTION).items():
                if self._revs.get(key) == rev:
                    continue
                found = self.store.get_doc_rev(COLLECTION, key)
                r = None if found is None else self._load(key, found[0])
                if found is None or r is None:
                    continue
                self._revs[key] = found[1]
                if r.state.active:
                    self._active[r.id] = r
                else:
                    self._active.pop(r.id, None)

    def _fence(self) -> Fence | None:
        return None if self.leader is None else self.leader()

    @property
    def leading(self) -> bool:
        """Whether this engine drives rollouts now (always without replicas; the lease holder with them)."""
        return self.leader is None or self.leader() is not None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Tick every `tick_interval_s` on a background thread."""
        self._loop.start()

    def stop(self) -> None:
        """Stop ticking (what is stored stays; a new engine continues from it)."""
        self._loop.stop()

    def _scheduled_tick(self) -> None:
        if not self.leading:
            return
        try:
            self.tick()
        except Exception:  # the loop never dies: the next tick retries from the stored record
            self.tick_errors += 1
            log.exception("rollouts: tick failed; retrying at the next interval")

    # -- reads ----------------------------------------------------------------------------------------
    def get(self, rollout_id: str) -> Rollout:
        """A rollout by id, or NotFound."""
        self._refresh()
        with self._lock:
            if rollout_id in self._active:
                return self._active[rollout_id]
        doc = self.store.get_doc(COLLECTION, rollout_id)
        if doc is None:
            raise NotFound(f"rollout {rollout_id} does not exist")
        return Rollout.model_validate(doc)

    def active(self) -> list[Rollout]:
        """The rollouts that own their devices now (running, paused, rolling back)."""
        self._refresh()
        with self._lock:
            return list(self._active.values())

    def all(self) -> list[Rollout]:
        """Every rollout, whole, newest first (`summaries` is the cheap listing)."""
        found = [Rollout.model_validate(doc) for _k, doc in self.store.list_docs(COLLECTION)]
        return sorted(found, key=lambda r: r.created_at, reverse=True)

    def summaries(self) -> list[RolloutSummary]:
        """A summary of every rollout (`views.summary_view`), newest first, without loading whole records.

        An index entry that does not load (written by an incompatible build) is rebuilt from its record."""
        found = []
        for key, doc in self.store.list_docs(INDEX):
            try:
                found.append(RolloutSummary.model_validate(doc))
            except ValueError:
                try:
                    found.append(summary_view(self.get(key)))
                except (HubError, ValueError):
                    log.warning("rollouts: index entry %s does not load; left out of the listing", key)
        return sorted(found, key=lambda s: s.created_at, reverse=True)

    def fleet(self, model: str, now: float | None = None) -> dict[str, DeviceView]:
        """The fleet view the controller of a rollout of `model` sees now."""
        return fleet_view(self.store, self.device_settings, time.time() if now is None else now, model)

    # -- writes ---------------------------------------------------------------------------------------
    def claimed_by(self, device_ids: Sequence[str], model: str | None = None) -> dict[str, int]:
        """Of `device_ids`, how many each active rollout (of `model`; None: of any model) owns (rollout id ->
        devices); any replica's rollouts."""
        self._refresh()
        with self._lock:
            claimed: dict[str, list[str]] = {}
            for r in self._active.values():
                if model is None or r.spec.model == model:
                    for d, e in r.devices.items():
                        if e.left_at is None:
                            claimed.setdefault(d, []).append(r.id)
        counts: dict[str, int] = {}
        for d in device_ids:
            for rid in claimed.get(d, []):
                counts[rid] = counts.get(rid, 0) + 1
        return counts

    def _claimed(self, model: str, exclude: str | None = None) -> dict[str, str]:
        """Devices owned by active rollouts of `model` (a device takes part in one rollout per model at a time;
        rollouts of other models may run on it at once)."""
        return {
            d: r.id
            for r in self._active.values()
            if r.id != exclude and r.spec.model == model
            for d, e in r.devices.items()
            if e.left_at is None
        }

    def _save(self, r: Rollout, events: list[Event], actor: str, now: float, fence: Fence | None = None) -> None:
        """Record a rollout, its index entry and its events in one transaction; StaleDocument when another replica
        wrote it since this one read it, LeaseLost when `fence` no longer holds."""
        revs = self.store.put_docs(
            [(COLLECTION, r.id, r.model_dump(mode="json")), (INDEX, r.id, summary_view(r).model_dump(mode="json"))],
            events=[(now, actor, action, f"rollout/{r.id}", details) for action, details in events],
            expect={(COLLECTION, r.id): self._revs.get(r.id)}, fence=fence,
        )  # fmt: skip
        self._revs[r.id] = revs[(COLLECTION, r.id)]
        if r.state.active:
            self._active[r.id] = r
        else:
            self._active.pop(r.id, None)

    def start_rollout(self, spec: RolloutSpec, *, actor: str, now: float | None = None) -> Rollout:
        """Create a rollout (its first wave starts at the next tick).

        Raises:
            NotFound: the model version is not registered.
            Conflict: this hub has no copy of the version's bytes (`Registry.servable`).
            InvalidSelector, NoTargets, RolloutConflict: see `controller.new_rollout`.
            Unplaceable: `spec.runtime` asks for GPUs, MIG slices or pods a matching device does not advertise,
                or (code `unsupported_task`) a matching device's agent does not serve the model's task.
        """
        now = time.time() if now is None else now
        mv = self.registry.servable(spec.model, spec.version)
        found = self.deployer.devices.find(spec.selector)
        check_task(found, mv.task)  # an agent refuses a whole desired state with a task it does not know
        check_runtime(found, spec.runtime, self.deployer.other_runtimes(spec.model))
        with self._lock:
            rollout_id = f"r-{uuid.uuid4().hex[:12]}"
            r = new_rollout(
                rollout_id, spec, self.fleet(spec.model, now), claimed=self._claimed(spec.model), actor=actor, now=now
            )
            details = {"model": spec.model, "version": spec.version, "selector": spec.selector,
                       "devices": len(r.devices), "waves": spec.waves}  # fmt: skip
            self._save(r, [("rollout.start", details)], actor, now)
        return r

    def command(
        self, rollout_id: str, action: Command, *, actor: str, reason: str | None = None, now: float | None = None
    ) -> Rollout:
        """Pause, resume, abort or roll back a rollout (InvalidTransition when its state does not allow it)."""
        now = time.time() if now is None else now
        for attempt in range(3):
            with self._lock:
                r = self.get(rollout_id)
                if action == "rollback" and not r.state.active:
                    taken = sorted(d for d in self._claimed(r.spec.model, exclude=r.id) if d in r.devices)
                    if taken:
                        raise RolloutConflict(
                            f"cannot roll back {r.id}: {len(taken)} of its devices are now in another active rollout "
                            f"of {r.spec.model}"
                        )
                r, events = command(r, action, now=now, reason=reason)
                try:
                    self._save(r, events, actor, now)
                except StaleDocument:
                    if attempt == 2:
                        raise
                    continue  # the leader stepped it meanwhile: apply the command to what it wrote
                fence = self._fence()
                if r.state.active and (self.leader is None or fence is not None):
                    self._send(r, targets(r), self.fleet(r.spec.model, now), fence)  # else the leader sends later
            return r
        raise AssertionError("unreachable")

    def tick(self, now: float | None = None) -> None:
        """Advance every active rollout once (the background thread of the leader calls this)."""
        now = time.time() if now is None else now
        fence = self._fence()
        if self.leader is not None and fence is None:
            return  # not the leader (any more)
        self._refresh()
        with self._lock:
            if not self._active:
                return
            fleets: dict[str, dict[str, DeviceView]] = {}  # per model: rollouts of one model share a view
            for rollout_id in sorted(self._active):
                r = self._active[rollout_id]
                model = r.spec.model
                fleet = fleets.get(model)
                if fleet is None:
                    fleet = fleets[model] = self.fleet(model, now)
                s = step(
                    r, fleet, StoreTelemetry(self.store, model), now=now, grace_s=self.settings.telemetry_grace_s,
                    claimed=set(self._claimed(model, exclude=rollout_id)),
                )  # fmt: skip
                if s.rollout != r:
                    try:
                        self._save(s.rollout, s.events, "rollout-controller", now, fence)
                    except StaleDocument:  # a command from another replica: step from it at the next tick
                        log.info("rollouts: %s changed on another replica; stepping it again next tick", r.id)
                        continue
                    except LeaseLost:
                        log.warning("rollouts: the leader lease was lost; this replica stops driving rollouts")
                        return
                if self._send(s.rollout, s.targets, fleet, fence):
                    fleets.clear()  # desired states changed: views of every model are read again

    def _send(self, r: Rollout, wanted: list[Target], fleet: dict[str, DeviceView], fence: Fence | None = None) -> int:
        """Sign and publish the targets the store does not hold yet, grouped by content."""
        groups: dict[str, list[Target]] = {}
        for t in wanted:
            if not t.published(fleet.get(t.device_id), r.id):
                key = json.dumps([t.model, t.shadow, t.shadow_rate, t.runtime], sort_keys=True)
                groups.setdefault(key, []).append(t)
        sent = 0
        for group in groups.values():
            t = group[0]
            try:
                model = self._model_ref(t.model)
                shadow_ref = self._model_ref(t.shadow)
                shadow = ShadowSpec(model=shadow_ref, sample_rate=t.shadow_rate or 1.0) if shadow_ref else None
                runtime = RuntimeOptions.model_validate(t.runtime) if t.runtime else RuntimeOptions()
                slot = None
                if model is not None:  # None: the device had no version of the model before: the slot goes
                    slot = DesiredModel(model=model, runtime=runtime, shadow=shadow, rollout_id=r.id)
                ids = [x.device_id for x in group]
                self.deployer.set_slot(ids, r.spec.model, slot, fence=fence)
                sent += len(ids)
            except (HubError, ValueError) as e:  # retried at the next tick (e.g. a version deleted meanwhile)
                self.publish_errors += 1
                log.error("rollouts: %s cannot publish step %s to %d device(s): %s", r.id, t.step, len(group), e)
        if sent:
            log.info("rollouts: %s published %d desired state(s)", r.id, sent)
        return sent

    def _model_ref(self, ref: Ref | None) -> ModelRef | None:
        return None if ref is None else self.registry.model_ref(*ref)
