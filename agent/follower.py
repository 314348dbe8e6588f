"""Cluster mode's serving pods: follow the shared model store and hot-swap what it names as active.

In cluster mode the agent (one pod) downloads and verifies models and moves each model's `active.json`
pointer in the store; the serving pods (`edgefleet agent serve --store /models --model NAME`, one
Deployment per model) only read the store. A `StoreFollower` polls the pointers of the models it follows,
and when one names another blob or runtime it loads that version (warm-up and golden check, exactly as the
agent does), then hands it to the serving repository, which swaps it without failing requests in flight.
The pod template does not change for a model change, so no pod restarts (see docs/k3s.md). A model's
`shadow.json` is followed the same way: its candidate is loaded and run beside the active version on the
pointer's sample rate (the pod's `/metrics` counts the comparisons, which the control agent scrapes).

A pointer that cannot be read, or a version that fails to load, leaves that model's current version (or
shadow) as it is and is logged with its reason; the follower retries when the pointer changes again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.activation import Loaded, load
from agent.errors import ActivationError, StoreError
from agent.ports import ServingPort
from agent.store import ModelStore, ShadowPointer, StoredModel
from infra.periodic import Periodic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FollowState:
    """What the follower serves now for one model and the last problem it met (for logs and status)."""

    serving: StoredModel | None
    error: str | None


@dataclass
class _Followed:
    current: StoredModel | None = None
    failed: StoredModel | None = None
    error: str | None = None
    shadow: ShadowPointer | None = None  # the shadow running now
    shadow_failed: ShadowPointer | None = None


class StoreFollower:
    """Polls the store's active pointers every `poll_s` seconds and activates what they name on `serving`.

    Args:
        store: the shared model store (read only).
        serving: the serving side (in practice `agent.serving.ModelRepository`).
        models: the model names to follow (None: every model the store has pointers for).
        poll_s: seconds between pointer checks; a model change reaches the pods within about this delay.
        warmup_runs: engine warm-up runs before a model is made active.
    """

    def __init__(
        self,
        store: ModelStore,
        serving: ServingPort,
        *,
        models: list[str] | None = None,
        poll_s: float = 1.0,
        warmup_runs: int = 2,
    ) -> None:
        self.store = store
        self.serving = serving
        self.models = models
        self.poll_s = poll_s
        self.warmup_runs = warmup_runs
        self._followed: dict[str, _Followed] = {}
        self._loop = Periodic("edgefleet-follower", self.check, lambda: self.poll_s, log=log, join_s=self.poll_s + 5)

    def state(self, name: str) -> FollowState:
        """What the follower serves for model `name` and its last problem."""
        f = self._followed.get(name, _Followed())
        return FollowState(f.current, f.error)

    def check(self) -> bool:
        """Look at every followed pointer once; activate or deactivate what changed. True when any swapped."""
        names = set(self.models) if self.models is not None else set(self.store.names())
        swapped = False
        for name in sorted(names | set(self._followed)):
            swapped = self._check(name) or swapped
            swapped = self._check_shadow(name) or swapped
        return swapped

    def _check(self, name: str) -> bool:
        f = self._followed.setdefault(name, _Followed())
        try:
            record = self.store.active(name)
        except StoreError as e:
            f.error = f"cannot read the active pointer of {name}: {e}"
            log.warning("%s; keeping the current version", f.error)
            return False
        if record is None:
            if f.current is None:
                return False
            self.serving.deactivate(name)
            log.info("the store names no active version of %s: not serving it", name)
            f.current, f.error = None, None
            return True
        if record in (f.current, f.failed):
            return False
        try:
            loaded = self._load(record)
        except ActivationError as e:
            f.failed, f.error = record, f"{e.code}: {e}"
            log.error("cannot serve %s %s: %s; keeping the current version", record.model.name,
                      record.model.version, e)  # fmt: skip
            return False
        model = record.model.model_copy(update={"provider": loaded.provider})
        self.serving.activate(loaded.engine, model, loaded.descriptor, record.runtime)
        f.current, f.failed, f.error = record, None, None
        log.info("serving %s %s on %s", model.name, model.version, loaded.provider)
        return True

    def _check_shadow(self, name: str) -> bool:
        """Start, replace or stop model `name`'s shadow candidate as its `shadow.json` says. True when changed."""
        f = self._followed[name]
        if f.current is None:  # nothing serves: nothing to shadow (deactivate stopped any shadow with the model)
            f.shadow = f.shadow_failed = None
            return False
        try:
            pointer = self.store.shadow(name)
        except StoreError as e:
            log.warning("cannot read the shadow pointer of %s: %s; keeping the current shadow", name, e)
            return False
        if pointer is None:
            if f.shadow is None:
                return False
            self.serving.set_shadow(name, None, None, 0.0)
            log.info("%s: shadow %s stopped", name, f.shadow.candidate.model.version)
            f.shadow = f.shadow_failed = None
            return True
        if pointer in (f.shadow, f.shadow_failed):
            return False
        record = pointer.candidate
        try:
            loaded = self._load(record)
        except ActivationError as e:
            f.shadow_failed = pointer
            log.error("cannot run %s %s as a shadow: %s; keeping the current shadow", name, record.model.version, e)
            return False
        model = record.model.model_copy(update={"provider": loaded.provider})
        self.serving.set_shadow(name, loaded.engine, model, pointer.sample_rate)
        f.shadow, f.shadow_failed = pointer, None
        log.info("shadowing %s with %s on %.0f%% of its requests", name, model.version, pointer.sample_rate * 100)
        return True

    def _load(self, record: StoredModel) -> Loaded:
        """Load, warm up and golden-check the version `record` names, as the agent does (ActivationError if not)."""
        return load(
            self.store.blob_path(record.sha256),
            record.sha256,
            name=record.model.name,
            version=record.model.version,
            descriptor=record.descriptor,
            runtime=record.runtime,
            warmup_runs=self.warmup_runs,
        )

    def start(self) -> None:
        """Check once now (so the pod is ready as soon as it can be), then poll on a background thread."""
        self.check()
        self._loop.start()  # a check that fails (a bug) is logged: the pod goes on following later changes

    def stop(self) -> None:
        self._loop.stop()
