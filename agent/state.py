"""What the agent persists besides the model store: the accepted desired state and the watched blob topics.

Both live in the data directory and are replaced atomically (`fleet.files.atomic_write`). An unreadable
file is logged and treated as empty: the agent then accepts the next desired state that verifies, which is
the retained one (the broker keeps only the newest), so nothing older can slip in.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.errors import InvalidId
from fleet.files import atomic_write
from fleet.ids import check_sha256
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
