"""Cluster mode: follow the model store the agent writes and serve whatever its `active` pointer names.

`edgefleet agent serve` runs in pods beside (not inside) the agent. It never writes the store; it polls
`active.json`, and when the pointer names another blob or version it loads, warms up and golden-checks the
engine exactly as the agent does (`agent.activation.load`), then activates it in the slot. A model that
fails to load is logged and skipped: the one serving keeps serving.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from agent.activation import load
from agent.api.slot import ModelSlot
from agent.errors import AgentError
from agent.store import ModelStore, StoredModel

log = logging.getLogger(__name__)


class StoreFollower:
    """A thread that keeps `slot` serving the store's active model (poll every `interval_s` seconds)."""

    def __init__(self, root: str | Path, slot: ModelSlot, *, interval_s: float = 2.0, warmup_runs: int = 2) -> None:
        self.store = ModelStore(root)
        self.slot = slot
        self.interval_s = interval_s
        self.warmup_runs = warmup_runs
        self.serving: tuple[str, str] | None = None  # (sha256, version) activated last
        self.failed: tuple[str, str] | None = None  # the pointer that last failed to load (not retried)
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> bool:
        """Check the pointer once; activate or deactivate on change. True when the slot changed."""
        try:
            record = self.store.active()
        except AgentError as e:
            self.last_error = f"store unreadable: {e}"
            log.warning("model store unreadable: %s", e)
            return False
        if record is None:
            if self.serving is None:
                return False
            self.slot.deactivate()
            self.serving = None
            return True
        key = (record.sha256, record.model.version)
        if key in (self.serving, self.failed):
            return False
        return self._activate(record, key)

    def _activate(self, record: StoredModel, key: tuple[str, str]) -> bool:
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
        except AgentError as e:
            self.failed, self.last_error = key, str(e)
            log.error("cannot serve %s %s: %s", record.model.name, record.model.version, e)
            return False
        model = record.model.model_copy(update={"provider": loaded.provider})
        self.slot.activate(loaded.engine, model, loaded.descriptor, record.runtime)
        self.serving, self.failed, self.last_error = key, None, None
        return True

    def start(self) -> None:
        """Poll once now, then on a daemon thread until `stop()`."""
        self.poll()
        self._thread = threading.Thread(target=self._loop, name="store-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (the slot keeps its model)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval_s + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # never let the follower die; the next poll retries
                log.exception("store follower poll failed")
