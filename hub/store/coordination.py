"""What hub replicas coordinate through (a mixin of SqlStore): the leader lease, fenced writes, and documents
with revisions.

- **Lease** (`acquire_lease`): one row per lease naming its holder, a fencing token and an expiry on the
  database server's clock, written on a connection of its own (a busy writer queue never delays a renewal).
  A holder renews before expiry and keeps its token; anyone may take an expired lease, and taking it
  increments the token. Clocks of the replicas never matter; only the database's does. Every replica also
  holds a presence lease of its own (`hub.sessions`); one left expired names a replica that stopped.
- **Fence** (`check_fence`): a write that must come from the leader checks, in its own transaction, that its
  token is still the lease's and the lease has not expired. PostgreSQL takes the lease row `FOR SHARE`, so a
  takeover waits for that transaction, and the transaction that checked the token commits before the new
  leader's token exists; SQLite has one writer at a time, which gives the same order. A paused old leader that
  wakes up therefore cannot record a transition: its write is refused (`LeaseLost`) and nothing is published.
- **Revisions**: every document write increments the document's `rev`; `put_docs(..., expect=...)` refuses
  (`StaleDocument`) when a document changed since it was read, so two replicas never overwrite each other's
  rollout step blindly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hub.errors import LeaseLost, StaleDocument
from hub.store.base import Fence
from hub.store.connection import Conn, to_json

T = TypeVar("T")
DocKey = tuple[str, str]  # (collection, key)
EventRow = tuple[float, str, str, str, dict[str, Any]]  # (ts, actor, action, subject, details)


def check_fence(conn: Conn, fence: Fence) -> None:
    """Raise LeaseLost unless `fence` is the current, unexpired holding of its lease (inside a transaction)."""
    lock = " FOR SHARE" if conn.dialect.postgres else ""
    row = conn.execute(
        f"SELECT token, expires_at > {conn.dialect.now} FROM leases WHERE name = ?{lock}",  # noqa: S608
        (fence.lease,),
    ).fetchone()
    if row is None or int(row[0]) != fence.token or not row[1]:
        raise LeaseLost(f"lease {fence.lease!r} is no longer held with token {fence.token}")


class Coordination:
    """Leases, fenced writes and revised documents."""

    def _write(self, fn: Callable[[Conn], T], timeout: float = 60.0) -> T:
        raise NotImplementedError

    def _read(self) -> Conn:
        raise NotImplementedError

    def _lease_write(self, fn: Callable[[Conn], T]) -> T:
        raise NotImplementedError

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> int | None:
        """Take or renew the lease `name` for `ttl_s` seconds; its fencing token, or None while another holds it.

        Renewing an unexpired lease keeps the token; taking a lease (new, expired, or expired and taken back by
        the same holder) increments it, so anything fenced by an earlier holding is refused from then on.
        """

        def job(c: Conn) -> int | None:
            now = c.dialect.now
            row = c.execute(
                f"INSERT INTO leases (name, holder, token, expires_at) VALUES (?, ?, 1, {now} + ?) "  # noqa: S608
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, "
                f"token = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > {now} "
                "THEN leases.token ELSE leases.token + 1 END "
                f"WHERE leases.holder = excluded.holder OR leases.expires_at <= {now} RETURNING token",
                (name, holder, ttl_s),
            ).fetchone()
            return None if row is None else int(row[0])

        return self._lease_write(job)

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up now (a clean shutdown): another replica takes it at its next attempt."""
        sql = "UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ?"
        return self._lease_write(lambda c: c.execute(sql, (name, holder)).rowcount > 0)

    def lease_holder(self, name: str) -> tuple[str, int, bool] | None:
        """(holder, token, unexpired) of a lease, or None if it was never taken."""
        sql = f"SELECT holder, token, expires_at > {self._read().dialect.now} FROM leases WHERE name = ?"  # noqa: S608
        row = self._read().execute(sql, (name,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), bool(row[2]))

    def expired_leases(self, prefix: str) -> list[tuple[str, str]]:
        """(name, holder) of every lease whose name starts with `prefix` and whose holder stopped renewing it."""
        now = self._read().dialect.now
        sql = f"SELECT name, holder FROM leases WHERE substr(name, 1, ?) = ? AND expires_at <= {now} ORDER BY name"  # noqa: S608
        return [(str(r[0]), str(r[1])) for r in self._read().execute(sql, (len(prefix), prefix)).fetchall()]

    def forget_lease(self, name: str, holder: str) -> bool:
        """Delete the lease `name` if `holder` still holds it expired (a holder that renewed it meanwhile keeps it)."""

        def job(c: Conn) -> bool:
            sql = f"DELETE FROM leases WHERE name = ? AND holder = ? AND expires_at <= {c.dialect.now}"  # noqa: S608
            return c.execute(sql, (name, holder)).rowcount > 0

        return self._lease_write(job)

    def get_doc_rev(self, collection: str, key: str) -> tuple[dict[str, Any], int] | None:
        """A document and its revision."""
        sql = "SELECT doc, rev FROM documents WHERE collection = ? AND key = ?"
        row = self._read().execute(sql, (collection, key)).fetchone()
        return None if row is None else (dict(json.loads(row[0])), int(row[1]))

    def doc_revs(self, collection: str) -> dict[str, int]:
        """The revision of every document of a collection (cheap: tells what changed without loading it)."""
        rows = self._read().execute("SELECT key, rev FROM documents WHERE collection = ?", (collection,))
        return {str(r[0]): int(r[1]) for r in rows}

    def put_docs(
        self,
        docs: Sequence[tuple[str, str, dict[str, Any]]],
        *,
        events: Sequence[EventRow] = (),
        expect: dict[DocKey, int | None] | None = None,
        fence: Fence | None = None,
    ) -> dict[DocKey, int]:
        """Write documents and audit events in one transaction; the documents' new revisions.

        Args:
            docs: (collection, key, document) to insert or replace.
            events: audit events recorded with them.
            expect: for some documents, the revision they must still have (None: must not exist yet);
                otherwise StaleDocument and nothing is written.
            fence: the leader lease this write needs (LeaseLost and nothing written when it is not held).
        """

        def job(c: Conn) -> dict[DocKey, int]:
            if fence is not None:
                check_fence(c, fence)
            for (collection, key), rev in (expect or {}).items():
                row = c.execute("SELECT rev FROM documents WHERE collection = ? AND key = ?", (collection, key))
                found = row.fetchone()
                if (None if found is None else int(found[0])) != rev:
                    raise StaleDocument(f"{collection}/{key} changed since it was read (revision {rev})")
            out = {}
            for collection, key, doc in docs:
                row = c.execute(
                    "INSERT INTO documents (collection, key, doc, updated_at, rev) VALUES (?, ?, ?, ?, 1) "
                    "ON CONFLICT (collection, key) DO UPDATE SET doc = excluded.doc, "
                    "updated_at = excluded.updated_at, rev = documents.rev + 1 RETURNING rev",
                    (collection, key, to_json(doc), time.time()),
                ).fetchone()
                out[(collection, key)] = int(row[0])
            for ts, actor, action, subject, details in events:
                c.execute(
                    "INSERT INTO events (ts, actor, action, subject, details) VALUES (?, ?, ?, ?, ?)",
                    (ts, actor, action, subject, to_json(details)),
                )
            return out

        return self._write(job)
