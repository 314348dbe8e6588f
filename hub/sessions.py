"""Broker sessions of hub replicas that stopped: the leader takes each over, drains it and ends it.

Replicas share telemetry through a shared subscription, each through a persistent broker session (a replica
that restarts finds the windows sent meanwhile). A broker may go on handing a share of the group's messages to
a member whose session is offline: Mosquitto 2.0 does (measured: with one of two members disconnected, 50 of
100 messages waited in its session). So a replica that stops for good (its host lost, a scale-down) held its
share of the fleet's telemetry until its session expired (an hour) and then lost it, and meanwhile a rollout's
gates and the dashboard saw only the other shares.

Every replica therefore renews a presence lease in the store (`replica:<client id>`, as long as the leader
lease, on its cadence), and the leader looks for presence leases that expired: their replica stopped renewing
(stopped, killed, cut off from the database). For each it connects with that replica's client id, which resumes
the replica's session (the broker drops the replica's own connection if one is left), unsubscribes from
everything the session held, so the group hands it nothing more, ingests what the session had queued or in
flight (acknowledged once stored, as every message), and once the session has been quiet for `QUIET_S` with
nothing unacknowledged, ends it (MQTT 5: session expiry 0 at the DISCONNECT; over 3.1.1 the session stays,
holding no subscription) and deletes the presence lease.

A replica that comes back during a drain takes its session back (the broker drops the drain's connection); the
leader gives up and leaves it alone for `RETRY_S`; what the drain had not acknowledged the broker sends to the
replica again (the store keeps one copy of a window). One that comes back after the drain starts a fresh
session and subscribes again. A replica alive on the broker but cut off from the database is taken over too
(it could not store what it receives); it takes its session back at its next reconnect, hence `RETRY_S`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from hub.errors import BrokerError
from hub.mqtt import HubLink
from hub.store import Store
from infra.periodic import Periodic

log = logging.getLogger(__name__)
PRESENCE = "replica:"
QUIET_S = 1.0
"""A drained session is ended once no message came for this long and every message is acknowledged."""
DRAIN_MAX_S = 120.0
"""A drain that has not gone quiet by then is left (its session kept) and tried again after `RETRY_S`."""
RETRY_S = 30.0


@dataclass
class AdoptionStats:
    adopted: int = 0  # sessions drained and ended
    messages: int = 0  # messages those sessions held
    interrupted: int = 0  # drains left: the replica came back, or the session did not go quiet


class SessionAdoption:
    """Renews this replica's presence; while leading, adopts the sessions of replicas whose presence expired.

    Args:
        store: the store the replicas share.
        client_id: this replica's broker client id (its presence lease is named after it).
        leading: whether this replica leads now (only the leader adopts: two adopters would take a session
            from each other).
        connect: a link that resumes the session of the client id given and holds no subscription (not started).
        lease_s: how long a presence lasts without renewal.
        renew_s: how often it is renewed, and how often the leader looks for expired ones.
    """

    def __init__(
        self,
        store: Store,
        *,
        client_id: str,
        leading: Callable[[], bool],
        connect: Callable[[str], HubLink],
        lease_s: float,
        renew_s: float,
    ) -> None:
        self.store = store
        self.client_id = client_id
        self.leading = leading
        self.connect = connect
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.stats = AdoptionStats()
        self._draining: HubLink | None = None
        self._renewed = 0.0
        self._not_before: dict[str, float] = {}  # client id -> monotonic time of the next try
        self._loop = Periodic("hub-sessions", self.step, lambda: self.renew_s, log=log)

    def start(self) -> None:
        self._renew()
        self._loop.start()

    def stop(self) -> None:
        """Stop. The presence lease is left to expire: a replica stopped for longer is adopted."""
        self._loop.stop()

    def release(self, ticket: int) -> None:
        """Acknowledge what a drain took in, up to `ticket`, once stored (the store's commit callback)."""
        link = self._draining
        if link is not None:
            link.release(ticket)

    def step(self) -> int:
        """Renew this replica's presence and, while leading, adopt every session whose presence expired;
        returns how many were adopted."""
        self._renew()
        if not self.leading():
            return 0
        try:
            expired = self.store.expired_leases(PRESENCE)
        except Exception as e:
            log.warning("sessions: cannot read the replicas' presence: %s", e)
            return 0
        n = 0
        for name, holder in expired:
            if holder == self.client_id or time.monotonic() < self._not_before.get(holder, 0.0):
                continue
            if self.adopt(holder):
                n += 1
                try:
                    self.store.forget_lease(name, holder)
                except Exception as e:  # adopted again later: an empty session drains at once
                    log.warning("sessions: cannot delete the presence of %s: %s", holder, e)
            else:
                self._not_before[holder] = time.monotonic() + RETRY_S
            if self._loop.stopping.is_set():
                break
        return n

    def adopt(self, client_id: str) -> bool:
        """Resume `client_id`'s session, unsubscribe, ingest what it held, and end it; False if left."""
        link = self.connect(client_id)
        self._draining = link  # before the connect: what the session held arrives right after it
        try:
            link.start(timeout=self.lease_s)
        except BrokerError as e:
            self._draining = None
            log.warning("sessions: cannot resume the session of stopped replica %s: %s", client_id, e)
            return False
        started = quiet_since = time.monotonic()
        seen = -1
        done = False
        try:
            while not self._loop.stopping.wait(0.1):
                now = time.monotonic()
                if now - self._renewed >= self.renew_s:
                    self._renew()  # a long drain must not let this replica's own presence expire
                if not link.connected or link.connects > 1:
                    log.info("sessions: replica %s took its session back during the drain", client_id)
                    break
                if link.received != seen:
                    seen, quiet_since = link.received, now
                elif now - quiet_since >= QUIET_S and link.unacknowledged == 0:
                    done = True
                    break
                if now - started > DRAIN_MAX_S:
                    log.warning("sessions: the session of %s did not go quiet in %.0f s", client_id, DRAIN_MAX_S)
                    break
        finally:
            link.stop(end_session=done)
            self._draining = None
        if not done:
            self.stats.interrupted += 1
            return False
        self.stats.adopted += 1
        self.stats.messages += link.received
        log.warning(
            "sessions: replica %s stopped renewing its presence: took over its broker session, stored the %d "
            "messages it held, ended it", client_id, link.received,
        )  # fmt: skip
        try:
            self.store.add_event(
                time.time(), self.client_id, "hub.session.adopted", client_id, {"messages": link.received}
            )
        except Exception as e:
            log.warning("sessions: cannot record the adoption of %s: %s", client_id, e)
        return True

    def _renew(self) -> None:
        self._renewed = time.monotonic()
        try:
            self.store.acquire_lease(PRESENCE + self.client_id, self.client_id, self.lease_s)
        except Exception as e:  # the database is unreachable: Leadership says so too
            log.debug("sessions: renewing this replica's presence failed: %s", e)
