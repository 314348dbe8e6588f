"""What the agent persists besides the model store: the accepted desired state, the watched blob topics and
the last status stamp.

All live in the data directory and are replaced atomically (`fleet.files.atomic_write`). An unreadable
file is logged and treated as empty: the agent then accepts the next desired state that verifies, which is
the retained one (the broker keeps only the newest), so nothing older can slip in; and stamps its statuses by
its clock alone, as it did before the stamp file existed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.errors import InvalidId
from fleet.files import atomic_write
from fleet.ids import check_sha256
from fleet.limits import MAX_TIMESTAMP, Timestamp
from fleet.messages import SignedEnvelope

log = logging.getLogger(__name__)


class AcceptedState(BaseModel):
    """Persisted in `state.json`: the last accepted desired state and command counters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(default=1, description="state file schema version")
    desired_version: int | None = Field(default=None, description="version of the last accepted desired state")
    envelope: SignedEnvelope | None = Field(default=None, description="that desired state, as signed")
    command_version: int | None = Field(default=None, description="version of the last accepted command")

    @classmethod
    def load(cls, path: Path) -> AcceptedState:
        """Read `path`; a missing or unreadable file gives the empty state (logged)."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return cls()
        except (OSError, ValidationError, ValueError) as e:
            log.error("state file %s unreadable (%s); starting without an accepted desired state", path, e)
            return cls()

    def save(self, path: Path) -> None:
        """Replace `path` atomically."""
        atomic_write(path, self.model_dump_json().encode(), mode=0o600)


class WatchedBlobs:
    """The blob chunk topics this agent subscribed, remembered because the broker session outlives a run.

    `stale` holds what an earlier run left subscribed; the runtime unsubscribes those no longer needed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: set[str] = set()
        self.stale: set[str] = self._load()

    def _load(self) -> set[str]:
        try:
            data = json.loads(self.path.read_text())
            return {check_sha256(s) for s in data} if isinstance(data, list) else set()
        except (OSError, ValueError, InvalidId, TypeError):
            return set()

    def add(self, sha256: str) -> None:
        self.current.add(sha256)
        self._save()

    def discard(self, sha256: str) -> None:
        self.current.discard(sha256)
        self._save()

    def take_stale(self, needed: set[str]) -> set[str]:
        """Stale digests neither watched now nor in `needed`; forgotten once returned."""
        stale, self.stale = self.stale - self.current - needed, set()
        return stale

    def _save(self) -> None:
        atomic_write(self.path, json.dumps(sorted(self.current | self.stale)).encode(), mode=0o600)


STAMP_STEP_S = 0.001
"""How much later than the previous one a status stamp is when the clock stands still or went back."""


class StampFile(BaseModel):
    """Persisted in `status.json`: the last `ts` a status of this device carried (or was about to)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(default=1, description="stamp file schema version")
    last_ts: Timestamp = Field(description="the last `ts` given to a birth, a last will or a clean stop's offline")


class StatusStamps:
    """The `ts` of this device's statuses (birth, last will, a clean stop's offline): never going back, across
    agent runs too.

    The hub keeps a device's newest status by `ts` (docs/hub.md "Ordering"). A device that boots with its clock
    behind its previous run's (no real-time clock before NTP) would stamp its new birth before the previous
    run's last will, and the hub would go on showing that will. Each stamp is therefore
    max(clock, previous stamp + `STAMP_STEP_S`), and it is saved before it is returned, so before any status
    carrying it can go out: the next run starts after it. A missing file starts from the clock; an unreadable
    one too (logged). A stamp that cannot be saved is still used (logged): this run's stamps keep their order.

    Args:
        path: the stamp file (`status.json` in the data directory).
        clock: the device's wall clock.
    """

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()  # the link's thread stamps wills, the stopping thread the clean offline
        self.last = self._load()

    def _load(self) -> float:
        try:
            return StampFile.model_validate_json(self.path.read_bytes()).last_ts
        except FileNotFoundError:
            return 0.0
        except (OSError, ValidationError, ValueError) as e:
            log.error("status stamp file %s unreadable (%s); stamping statuses by the clock alone", self.path, e)
            return 0.0

    def next(self) -> float:
        """A stamp later than every earlier one of this device, saved before it is returned."""
        with self._lock:
            now = self.clock()
            ts = min(max(now, self.last + STAMP_STEP_S), MAX_TIMESTAMP)
            if now + 1.0 < self.last:
                log.warning(
                    "the clock (%.3f) is %.0fs behind this device's last status stamp: stamping %.3f so the hub "
                    "orders this status after the earlier ones",
                    now,
                    self.last - now,
                    ts,
                )
            try:
                atomic_write(self.path, StampFile(last_ts=ts).model_dump_json().encode(), mode=0o600)
            except OSError as e:
                log.error("status stamp %.3f not saved to %s (%s): a next run may stamp earlier", ts, self.path, e)
            self.last = ts
            return ts
