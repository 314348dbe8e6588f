"""Which hub replica leads: the one holding the leader lease in the shared store.

Exactly one replica runs the rollout controller, the chunk server and maintenance (retention, re-signing) at a
time; every replica serves the API, the dashboard and ingestion (MQTT 5 shared subscriptions). The lease lives
in the database (`Store.acquire_lease`), not in a protocol of our own:

- Every `renew_s` each replica tries to take or renew the lease for `lease_s`. The holder keeps its fencing
  token; when the holder stops renewing (killed, cut off, paused) the lease expires on the database's clock and
  the next replica to try takes it with the next token. Handover after a crash therefore takes at most
  `lease_s + renew_s`; after a clean stop (the lease is released) at most `renew_s`.
- A replica acts as leader only while its last successful renewal is younger than `lease_s - renew_s` by its own
  monotonic clock, so one that cannot reach the database stops acting before its lease can pass to another.
- Whatever it records as leader (rollout transitions, desired states) carries its `Fence` and is checked in the
  same transaction (`hub.store.coordination`), which covers what the clocks cannot: a leader paused past its
  lease (SIGSTOP, a long GC, a VM migration) wakes up to refused writes and publishes nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from hub.store import Fence, Store
from infra.periodic import Periodic

log = logging.getLogger(__name__)
LEADER_LEASE = "leader"


class Leadership:
    """Takes and renews the leader lease on a thread; `fence` is this replica's holding while it leads.

    Args:
        store: the store the replicas share.
        holder: this replica's name (unique among replicas; hostname and pid by default).
        lease_s: how long a lease lasts without renewal (the bound on handover after a crash).
        renew_s: how often the lease is renewed (and how often a follower tries to take it).
        on_change: called with True when this replica becomes leader, False when it stops leading.
    """

    def __init__(
        self,
        store: Store,
        *,
        holder: str | None = None,
        lease_s: float = 10.0,
        renew_s: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if renew_s * 2 >= lease_s:
            raise ValueError(f"renew_s ({renew_s}) must be under half of lease_s ({lease_s})")
        self.store = store
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}"
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.on_change = on_change
        self.changes = 0  # times leadership was gained or lost (metrics)
        self._token: int | None = None
        self._valid_until = 0.0  # monotonic: act as leader until then unless renewed
        self._leading: int | None = None  # the token announced through on_change
        self._loop = Periodic("hub-leadership", self.attempt, lambda: self.renew_s, log=log)
        self._lock = threading.Lock()

    @property
    def fence(self) -> Fence | None:
        """This replica's holding of the lease while it may act as leader, else None."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._valid_until:
                return None
            return Fence(LEADER_LEASE, self._token)

    @property
    def is_leader(self) -> bool:
        return self.fence is not None

    def start(self) -> None:
        """Try once now (a lone hub leads from its first second), then keep trying on a thread."""
        self.attempt()
        self._loop.start()

    def stop(self) -> None:
        """Stop acting as leader and release the lease, so another replica takes over at once."""
        self._loop.stop()
        held = self._token is not None
        with self._lock:
            self._token, self._valid_until = None, 0.0
        self._check()
        if held:
            try:
                self.store.release_lease(LEADER_LEASE, self.holder)
            except Exception:
                log.warning("leadership: could not release the lease; it expires in %.0f s", self.lease_s)

    def attempt(self) -> bool:
        """Take or renew the lease once; True while this replica leads."""
        started = time.monotonic()
        try:
            token = self.store.acquire_lease(LEADER_LEASE, self.holder, self.lease_s)
        except Exception as e:  # the database is unreachable: keep leading only until the margin runs out
            log.warning("leadership: renewing the lease failed: %s", e)
        else:
            with self._lock:  # measured from before the request: the database's expiry is at least this late
                self._token = token
                self._valid_until = started + self.lease_s - self.renew_s if token is not None else 0.0
        return self._check()

    def _check(self) -> bool:
        """Notice a change of leadership (gained, renewed under a new token, lost or run out) and announce it."""
        fence = self.fence
        token = None if fence is None else fence.token
        if token == self._leading:
            return token is not None
        previous, self._leading = self._leading, token
        self.changes += 1
        if previous is not None:
            level = logging.INFO if self._loop.stopping.is_set() else logging.WARNING  # a stop is no news
            log.log(level, "leadership: %s stopped leading (token %d)", self.holder, previous)
            self._notify(False)
        if token is not None:
            log.info("leadership: %s leads (token %d)", self.holder, token)
            self._notify(True)
        return token is not None

    def _notify(self, leading: bool) -> None:
        if self.on_change is not None:
            try:
                self.on_change(leading)
            except Exception:
                log.exception("leadership: a leadership change callback failed")
