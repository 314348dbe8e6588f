"""Cluster mode's serving pods: follow the shared model store and hot-swap what it names as active.

In cluster mode the agent (one pod) downloads and verifies models and moves the store's `active.json`
pointer; the serving pods (`edgefleet agent serve --store /models`) only read the store. A `StoreFollower`
polls the pointer, and when it names another blob or runtime it loads the model (warm-up and golden check,
exactly as the agent does), then hands it to the serving slot, which swaps without failing requests in
flight. The pod template does not change for a model change, so no pod restarts (see docs/k3s.md).

A pointer that cannot be read, or a model that fails to load, leaves the current model serving and is
logged with its reason; the follower retries when the pointer changes again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from agent.activation import load
from agent.errors import ActivationError, StoreError
from agent.ports import ServingPort
from agent.store import ModelStore, StoredModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FollowState:
    """What the follower serves now and the last problem it met (for logs and the status command)."""

    serving: StoredModel | None
    error: str | None


class StoreFollower:
    """Polls `store.active()` every `poll_s` seconds and activates what it names on `serving`.

    Args:
        store: the shared model store (read only).
        serving: the serving side (in practice `agent.api.ModelSlot`).
        poll_s: seconds between pointer checks; a model change reaches the pods within about this delay.
        warmup_runs: engine warm-up runs before a model is made active.
    """

    def __init__(self, store: ModelStore, serving: ServingPort, *, poll_s: float = 1.0, warmup_runs: int = 2) -> None:
        self.store = store
        self.serving = serving
        self.poll_s = poll_s
        self.warmup_runs = warmup_runs
        self._current: StoredModel | None = None
        self._failed: StoredModel | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> FollowState:
        return FollowState(self._current, self._error)

    def check(self) -> bool:
        """Look at the pointer once; activate or deactivate if it changed. Returns True when it swapped."""
        try:
            record = self.store.active()
        except StoreError as e:
            self._error = f"cannot read the active pointer: {e}"
            log.warning("%s; keeping the current model", self._error)
            return False
        if record is None:
            if self._current is None:
                return False
            self.serving.deactivate()
            log.info("the store names no active model: serving nothing")
            self._current, self._error = None, None
            return True
        if record in (self._current, self._failed):
            return False
        try:
            loaded = load(
                self.store.blob_path(record.sha256),
                record.sha256,
                name=record.model.name,
                version=record.model.version,
                descriptor=record.descriptor,
                runtime=record.runtime,
                warmup_runs=self.warmup_runs,
            )
        except ActivationError as e:
            self._failed, self._error = record, f"{e.code}: {e}"
            log.error("cannot serve %s %s: %s; keeping the current model", record.model.name, record.model.version, e)
            return False
        model = record.model.model_copy(update={"provider": loaded.provider})
        self.serving.activate(loaded.engine, model, loaded.descriptor, record.runtime)
        self._current, self._failed, self._error = record, None, None
        log.info("serving %s %s on %s", model.name, model.version, loaded.provider)
        return True

    def start(self) -> None:
        """Check once now (so the pod is ready as soon as it can be), then poll on a background thread."""
        self.check()
        self._thread = threading.Thread(target=self._loop, name="edgefleet-follower", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # a bug in one check must not stop the pod from following later changes
                log.exception("store check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.poll_s + 5)
