"""Typed errors of the agent. Each carries a stable `code` (reported to the hub) and whether a retry can help.

Permanent errors (a bad signature, a corrupt model) are reported and the agent waits for a new desired
state; temporary ones (no disk space yet, the broker gone) are retried by the agent itself.
"""

from __future__ import annotations

import errno


class AgentError(Exception):
    """Base of every error raised by the agent package."""

    code: str = "agent_error"
    permanent: bool = True

    def __init__(self, message: str, *, code: str | None = None, permanent: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if permanent is not None:
            self.permanent = permanent

    def __str__(self) -> str:
        return self.message


class BundleError(AgentError, ValueError):
    """The bootstrap bundle cannot be read or is not a valid device bundle."""

    code = "bad_bundle"


class DesiredRefused(AgentError):
    """A desired state was refused (signature, expiry, version, subject or schema); the old model keeps serving."""

    code = "desired_refused"


class DiskError(AgentError):
    """The data directory's disk refuses a write; retried (reported once per cause, not once per chunk)."""

    code = "disk_error"
    permanent = False


DISK_LOG_EVERY_S = 600.0
"""A disk error that recurs per telemetry window or per reconnect while the disk stays bad is logged at most once
per this many seconds (`infra.logthrottle.LogGate`), with how many were not: a device's small log stays usable."""


class InsufficientDisk(DiskError):
    """Not enough free disk space for a blob; retried when space may have been freed."""

    code = "insufficient_disk"

    def __init__(self, message: str, *, needed: int | None = None) -> None:
        super().__init__(message)
        self.needed = needed  # free bytes the refused blob (still) needs (None: unknown)


class DiskReadOnly(DiskError):
    """The data directory's filesystem is read-only (the kernel remounts a failing disk so); retried, but a
    person has to repair the disk (fsck, replace the card) and remount it writable."""

    code = "disk_read_only"


def disk_error(e: OSError, what: str, then: str = "", *, needed: int | None = None) -> DiskError | None:
    """The typed error for an OSError that is the disk refusing a write, saying `what: <reason><then>`; None
    for any other OSError. A file-size limit (EFBIG) counts as a full disk; `needed` is the free space the
    write's blob still needs (`InsufficientDisk.needed`)."""
    message = f"{what}: {e.strerror or e}{then}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InsufficientDisk(message, needed=needed)
    if e.errno == errno.EROFS:
        return DiskReadOnly(message)
    return None


class DownloadError(AgentError):
    """A blob could not be fetched or verified."""

    code = "download_failed"
    permanent = False


class StoreError(AgentError):
    """The model store on disk is unreadable or a pointer names a missing blob."""

    code = "store_error"


class ActivationError(AgentError):
    """A model could not be loaded, warmed up or golden-checked; the previous model keeps serving."""

    code = "activation_failed"


class MemoryBudgetExceeded(ActivationError):
    """Loading a model would take the device's models past the memory budget; nothing was loaded."""

    code = "memory_budget_exceeded"


class SpoolError(AgentError):
    """The telemetry spool database cannot be opened or written."""

    code = "spool_error"
    permanent = False


class ClusterError(AgentError):
    """Cluster mode (agent.k3s) failed to inventory or apply; `permanent` says whether a retry can help.

    Base of `agent.k3s`'s errors. Permanent unless the subclass or the raiser says otherwise (RBAC denials
    and refused objects need a person; unreachable API servers and 5xx are retried).
    """

    code = "cluster_error"
