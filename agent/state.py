"""What the agent persists besides the model store: the accepted desired state, the watched blob topics and
the marks its statuses and reports never go back behind.

All live in the data directory and are replaced atomically (`fleet.files.atomic_write`): a write the disk
refuses (full, read-only) leaves the old file whole, and is logged; the agent goes on. An unreadable
file is logged and treated as empty: the agent then accepts the next desired state that verifies, which is
the retained one (the broker keeps only the newest), so nothing older can slip in; and stamps its statuses and
numbers its reports by its clock alone, as it did before the stamp file existed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import DISK_LOG_EVERY_S
from fleet.errors import InvalidId
from fleet.files import atomic_write
from fleet.ids import check_sha256
from fleet.limits import MAX_JSON_INT, MAX_TIMESTAMP, Seq, Timestamp
from fleet.messages import SignedEnvelope
from infra.logthrottle import LogGate

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
        """Replace `path` atomically; a disk that refuses the write (full, read-only) is logged, not raised.

        The state is still accepted for this run: a next run that finds the older file verifies the retained
        desired state (the newest) again, and takes it.
        """
        try:
            atomic_write(path, self.model_dump_json().encode(), mode=0o600)
        except OSError as e:
            log.error("accepted state (desired %s) not saved to %s (%s): a next run accepts it again",
                      self.desired_version, path, e)  # fmt: skip


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
        try:
            atomic_write(self.path, json.dumps(sorted(self.current | self.stale)).encode(), mode=0o600)
        except OSError as e:  # a next run may leave a finished blob's topic subscribed: extra chunks, ignored
            log.error("watched blob topics not saved to %s (%s)", self.path, e)


STAMP_STEP_S = 0.001
"""How much later than the previous one a status stamp is when the clock stands still or went back."""

SEQ_RESERVE = 600_000
"""How far ahead of the report seq in use the stamp file reserves seqs (10 minutes of the clock's ms): the
file is written once per run's first report and once every 10 minutes of reporting, not once per report."""


class StampFile(BaseModel):
    """Persisted in `status.json`: the marks this device's messages never go back behind, across runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(default=1, description="stamp file schema version")
    last_ts: Timestamp = Field(description="the last `ts` given to a birth, a last will or a clean stop's offline")
    report_seq: Seq = Field(
        default=0, description="reserved report seqs: every `seq` a reported state carried is at most this"
    )


class Stamps:
    """What orders this device's messages on the hub, never going back across agent runs either: the `ts` of
    its statuses (birth, last will, a clean stop's offline) and the `seq` of its reported states.

    The hub keeps a device's newest status by `ts` and its newest reported state by `seq` (or `ts`; docs/hub.md
    "Ordering"). A device that boots with its clock behind its previous run's (no real-time clock before NTP)
    would stamp its new birth before the previous run's last will, and number its reports below the previous
    run's, and the hub would go on showing what the previous run said. So:

    - each status stamp is max(clock, previous stamp + `STAMP_STEP_S`), saved before it is returned, so before
      any status carrying it can go out (statuses are few: one stamp per connect and per clean stop);
    - each report seq is max(clock in ms, previous seq + 1). Reports are many (download progress), so the
      file does not record each: it reserves the seqs up to `SEQ_RESERVE` past the one in use, saved before a
      seq beyond the previous reservation is returned. Every seq sent is at most the saved reservation, and
      the next run starts above it (up to `SEQ_RESERVE` ms ahead of its clock: a seq is only compared with
      other seqs of the device).

    Both live in one file. A missing file starts from the clock; an unreadable one too (logged). A mark that
    cannot be saved is still used (logged): this run's messages keep their order.

    Args:
        path: the stamp file (`status.json` in the data directory); None: kept in memory only (the fleet
            simulator's agents, which live for one run).
        clock: the device's wall clock.
    """

    def __init__(self, path: Path | None, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock
        # the link's thread stamps wills, the stopping thread the clean offline, the control thread reports
        self._lock = threading.Lock()
        self.save_log = LogGate(DISK_LOG_EVERY_S)  # a bad disk refuses the save on every reconnect
        saved = self._load()
        self.last = saved.last_ts
        self.seq = self._reserved = saved.report_seq

    def _load(self) -> StampFile:
        if self.path is None:
            return StampFile(last_ts=0.0)
        try:
            return StampFile.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return StampFile(last_ts=0.0)
        except (OSError, ValidationError, ValueError) as e:
            log.error("stamp file %s unreadable (%s); stamping statuses and reports by the clock alone", self.path, e)
            return StampFile(last_ts=0.0)

    def _save(self, last_ts: float, report_seq: int, what: str) -> None:
        if self.path is None:
            return
        try:
            data = StampFile(last_ts=last_ts, report_seq=report_seq).model_dump_json().encode()
            atomic_write(self.path, data, mode=0o600)
        except OSError as e:
            self.save_log.error(log, "%s not saved to %s (%s): a next run may stamp earlier", what, self.path, e)

    def status_ts(self) -> float:
        """A status stamp later than every earlier one of this device, saved before it is returned."""
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
            self._save(ts, self._reserved, f"status stamp {ts:.3f}")
            self.last = ts
            return ts

    def report_seq(self) -> int:
        """A report seq greater than every earlier one of this device; its reservation is saved before it is
        returned."""
        with self._lock:
            seq = min(max(self.seq + 1, int(self.clock() * 1000)), MAX_JSON_INT)
            if seq > self._reserved:
                reserved = min(seq + SEQ_RESERVE, MAX_JSON_INT)
                self._save(self.last, reserved, f"report seqs up to {reserved}")
                self._reserved = reserved  # even if not saved: one error per reservation, not one per report
            self.seq = seq
            return seq
