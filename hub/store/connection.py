"""Connections to the hub's database, SQLite or PostgreSQL: the one place that opens them.

`Database` names where the store lives (a URL: `sqlite:///path/hub.db` or `postgresql://user@host/db`) and is
small and picklable, so the telemetry writer process opens its own connection with the same settings as the
store's writer. `Conn` is the thin common surface the store's SQL runs on: `?` placeholders (rewritten for
psycopg), explicit transactions (`begin` takes SQLite's write lock at once, as `BEGIN IMMEDIATE`; `snapshot` is a
consistent read), the backend's error types, and a few SQL fragments that differ between the two (`Dialect`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from hub.errors import DatabaseUnavailable, InvalidInput

R = TypeVar("R")
T = TypeVar("T")
BUSY_TIMEOUT_S = 30  # how long a writer waits for another writer's transaction (the other writer, a replica)
# PostgreSQL: a session that leaves a transaction open this long is ended by the server, and its locks go with
# it. Our transactions last milliseconds; a replica cut off mid-transaction would otherwise hold its row locks
# until TCP gives up (hours), stalling every other replica's writes to those rows.
IDLE_IN_TRANSACTION_S = 5
NETWORK_TIMEOUT_S = 10
"""PostgreSQL: how long a connect may take, and how long a statement's bytes may go unacknowledged by the
server's host (libpq `tcp_user_timeout`) before the connection is declared broken. Without the second, a
statement sent while the network dropped packets waited for TCP to give up: over 15 minutes here (an API read
or dashboard page hanging, its thread held). Keep-alives find an idle connection's silent server in about
5 + 2 * 3 s."""
_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}


class Cursor(Protocol):
    """What the store reads from a cursor of either driver."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


@dataclass(frozen=True)
class Dialect:
    """SQL that differs between SQLite and PostgreSQL; everything else is written once, portably."""

    name: str

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    def json_text(self, column: str, *path: str) -> str:
        """The text (or, for SQLite, the value) at `path` inside a JSON text column; NULL when absent."""
        if self.postgres:
            return f"({column}::jsonb #>> '{{{','.join(path)}}}')"
        return f"json_extract({column}, '$.{'.'.join(path)}')"

    def json_number(self, column: str, *path: str) -> str:
        """The number at `path` inside a JSON text column, as a double; NULL when absent."""
        if self.postgres:
            return f"{self.json_text(column, *path)}::double precision"
        return self.json_text(column, *path)

    @property
    def now(self) -> str:
        """The database server's clock in Unix seconds (leases expire on one clock, whatever the replicas' say)."""
        if self.postgres:
            return "extract(epoch from clock_timestamp())::double precision"
        return "((julianday('now') - 2440587.5) * 86400.0)"

    def greatest(self, a: str, b: str) -> str:
        return f"greatest({a}, {b})" if self.postgres else f"max({a}, {b})"

    def in_list(self, column: str) -> str:
        """`column` is one of the values of the parameter (pass it through `list_param`)."""
        return f"{column} = ANY(?)" if self.postgres else f"{column} IN (SELECT value FROM json_each(?))"  # noqa: S608

    def list_param(self, values: Sequence[str]) -> Any:
        return list(values) if self.postgres else json.dumps(list(values))


def away_wait_s(tries: int, cap_s: float) -> float:
    """How long a writer's batch waits before its next try while the database is away, after `tries` failed
    ones (from 1): half a second, doubling, at most `cap_s`."""
    return float(min(0.5 * 2 ** (tries - 1), cap_s))


def write_in_parts(
    conn: Conn, items: list[R], write: Callable[[list[R]], T]
) -> tuple[list[T], list[tuple[R, Exception]]]:
    """Write `items`, a batch one of them failed, in the open transaction without that one: each half in a
    savepoint, and a half that fails again in halves, down to the items that fail alone. One bad item in n costs
    about 2 log2(n) writes, not n (5000 telemetry windows with one bad: 0.5 s on PostgreSQL here, 11.8 s one by
    one). Returns the results of the parts written, in order, and the items refused with what each raised. A
    failure of the database itself (`Conn.database_failed`: locked, full, the connection ended) is raised.
    """
    done: list[T] = []
    refused: list[tuple[R, Exception]] = []
    parts = [items[len(items) // 2 :], items[: len(items) // 2]] if len(items) > 1 else [items]
    while parts:  # a stack: the first half first, so the items are written in their order
        part = parts.pop()
        conn.execute("SAVEPOINT ef_part")
        try:
            result = write(part)
        except Exception as e:
            if conn.database_failed(e):
                raise
            conn.execute("ROLLBACK TO SAVEPOINT ef_part")
            conn.execute("RELEASE SAVEPOINT ef_part")
            conn.state.clear()  # what the part's statements set up (a temporary table) went with it
            if len(part) == 1:
                refused.append((part[0], e))
            else:
                parts += [part[len(part) // 2 :], part[: len(part) // 2]]
            continue
        conn.execute("RELEASE SAVEPOINT ef_part")
        done.append(result)
    return done, refused


def to_json(value: Any) -> str:
    """A document as the store keeps it: compact JSON."""
    return json.dumps(value, separators=(",", ":"))


def lock_devices(conn: Conn, ids: Sequence[str]) -> None:
    """Lock the rows of devices `ids` (sorted) in id order before a statement over many of them: an UPDATE over
    a list or a join locks rows in no set order, and writers on several replicas that lock the same rows in
    different orders deadlock. PostgreSQL only: SQLite has one writer, which holds the whole database."""
    if conn.dialect.postgres:
        conn.execute("SELECT 1 FROM devices WHERE id = ANY(?) ORDER BY id FOR UPDATE", (list(ids),), binary=True)


def columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows as columns: the arrays a PostgreSQL statement over `unnest(?::type[], ...)` takes, one round trip
    for a whole batch where a statement per row costs one each (pass them with `Conn.execute(binary=True)`)."""
    return [list(c) for c in zip(*rows, strict=True)]


@dataclass(frozen=True)
class Database:
    """Where the hub's store lives. Build it with `from_url` or `sqlite`."""

    url: str

    @classmethod
    def from_url(cls, url: str) -> Database:
        """Parse a database URL; InvalidInput names what is wrong."""
        parts = urlsplit(url)
        scheme = _SCHEMES.get(parts.scheme)
        if scheme is None:
            raise InvalidInput(f"database URL {redact(url)!r}: the scheme must be sqlite:// or postgresql://")
        if scheme == "sqlite" and not parts.path:
            raise InvalidInput(f"database URL {url!r}: an SQLite URL names a file (sqlite:///path/to/hub.db)")
        if scheme == "postgresql" and not parts.path.strip("/"):
            raise InvalidInput(f"database URL {redact(url)!r}: name the database (postgresql://user@host/NAME)")
        return cls(urlunsplit((scheme, *parts[1:])))

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        return cls(f"sqlite://{path.resolve()}")

    @property
    def dialect(self) -> Dialect:
        return Dialect(urlsplit(self.url).scheme)

    @property
    def path(self) -> Path:
        """The SQLite file (SQLite only)."""
        return Path(urlsplit(self.url).path)

    def __str__(self) -> str:
        return redact(self.url)

    def connect(self, *, readonly: bool = False) -> Conn:
        """A new connection in autocommit mode (transactions are explicit, through `Conn.begin`)."""
        if self.dialect.postgres:
            return _connect_postgres(self, readonly=readonly)
        return _connect_sqlite(self.path, readonly=readonly)


class Outage:
    """What this process knows of a database behind a network that drops packets (a partition, a dead host).

    A server that refuses (restarting, failing over, blocked) fails a connect at once, so every caller may as
    well try. One the network drops packets to costs each try a timeout (`NETWORK_TIMEOUT_S`), and every API
    thread, dashboard page, scrape and writer job would wait one in turn; so after a try that failed slowly,
    connects are not tried for as long as it took: they fail at once (DatabaseUnavailable, "not tried", with a
    Retry-After). A statement on an open connection that waited out `tcp_user_timeout` counts the same way.
    One per database URL in a process (`outage`); any connect that succeeds ends it.

    Per process, not per hub: the telemetry writer's process (`ingest.telemetry_process`, the default) keeps
    its own, learning of a slow failure and of the database's return by its own tries. So the two may disagree
    for a while, each way: after the database came back, the hub may answer and scrape it
    (`edgefleet_hub_database_up` 1) while the writer still does not try (for up to `NETWORK_TIMEOUT_S`) and
    then waits out its backoff (`away_wait_s`, at most the store's `away_retry_s`, 5 s), its batch unwritten and
    `edgefleet_hub_store_database_waits` still rising; or the writer, having tried, writes while the hub's API
    still answers 503 "not tried". Either lasts at most `NETWORK_TIMEOUT_S` plus one backoff, and loses nothing
    (the batch waits; the API's caller is told to retry). Sharing it would take shared memory across the
    processes for a window this short; a writer thread (`ingest.telemetry_process` off) shares the hub's.
    """

    SLOW_S = 1.0  # a failure that took this long waited out a timeout

    def __init__(self) -> None:
        self.until = 0.0  # time.monotonic() before which connects are not tried
        self.failed_at = self.took = 0.0
        self.reason = ""

    def check(self, db: Database) -> None:
        """Raise DatabaseUnavailable, without trying, while a slow failure says the database is away."""
        now = time.monotonic()
        if now < self.until:
            wait = max(1, round(self.until - now))
            raise DatabaseUnavailable(
                f"cannot reach the database {db}: not tried, a try {now - self.failed_at:.0f} s ago failed after "
                f"{self.took:.0f} s ({self.reason}); try again in {wait} s", retry_after_s=wait,
            )  # fmt: skip

    def record(self, started: float, error: BaseException | None) -> None:
        """A connect or statement that began at `started` succeeded (`error` None) or failed. A failure the
        server said (an SQLSTATE: shut down, too many connections) is not the network's, however long it took
        (a long query ended by a restart)."""
        now = time.monotonic()
        if error is None:
            self.until = 0.0
        elif now - started >= self.SLOW_S and getattr(error, "sqlstate", None) is None:
            self.failed_at, self.took, self.reason = now, now - started, str(error).strip()[:300]
            self.until = now + min(self.took, NETWORK_TIMEOUT_S)


_OUTAGES: dict[str, Outage] = {}


def outage(db: Database) -> Outage:
    """This process's `Outage` of `db`."""
    return _OUTAGES.setdefault(db.url, Outage())


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, *parts[2:]))


class Conn:
    """One connection of either backend, with `?` placeholders and explicit transactions."""

    def __init__(
        self,
        raw: Any,
        dialect: Dialect,
        errors: tuple[type[BaseException], ...],
        reopen: Callable[[], Any] | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.raw = raw
        self.dialect = dialect
        self.errors = errors  # what a failed statement raises (sqlite3.Error or psycopg.Error)
        self.state: dict[str, Any] = {}  # what callers set up once per connection (temporary tables)
        self._sql: dict[str, str] = {}
        self._reopen = reopen  # a reader's: a new raw connection, to read again when the server ended this one
        self._in_begin = False  # between begin() and commit()/rollback()
        self._outage = outage  # PostgreSQL's: a statement that waited out the network timeout marks it

    def _q(self, sql: str, placeholder: str = "%s") -> str:
        if not self.dialect.postgres:
            return sql
        key = sql if placeholder == "%s" else f"{placeholder}:{sql}"
        out = self._sql.get(key)
        if out is None:
            out = self._sql[key] = sql.replace("%", "%%").replace("?", placeholder)
        return out

    def execute(self, sql: str, args: Sequence[Any] = (), *, binary: bool = False) -> Cursor:
        """Run `sql`. `binary`: PostgreSQL takes the parameters in binary form, for statements over arrays
        (`unnest(?::text[])`): psycopg escapes each element of a text-form array in Python (~50 us for a
        250-byte JSON document, 0.3 us in binary form)."""
        q = self._q(sql, "%b" if binary else "%s")
        started = time.monotonic()
        try:
            cur: Cursor = self.raw.execute(q, args)
        except self.errors as e:
            if self._outage is not None and self.broken:
                self._outage.record(started, e)
            if self._reopen is None or self._in_begin or not self.broken:
                raise
            # The server ended this reader's connection (restarted, failed over) since its last statement: a
            # read outside a transaction changes nothing, so it runs once more on a new connection.
            with contextlib.suppress(*self.errors):
                self.raw.close()
            self.raw = self._reopen()
            self.state.clear()
            cur = self.raw.execute(q, args)
        return cur

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run `sql` once per row; the number of rows changed."""
        if self.dialect.postgres:
            with self.raw.cursor() as cur:
                cur.executemany(self._q(sql), rows)
                return max(int(cur.rowcount), 0)
        return max(int(self.raw.executemany(sql, rows).rowcount), 0)

    def begin(self) -> None:
        """Start a write transaction (SQLite: take the write lock now, so it never fails half-way)."""
        self._in_begin = True
        self.raw.execute("BEGIN" if self.dialect.postgres else "BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._in_begin = False
        self.raw.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Conn]:
        """A read transaction: every statement inside sees the database as of the first one, so reads that
        belong together (a series and the counts beside it) never straddle another writer's commit.

        SQLite: a deferred `BEGIN` (in WAL mode the snapshot is taken at the first read and takes no lock that
        holds up the writer); PostgreSQL: `REPEATABLE READ READ ONLY`. A reader whose server connection had
        ended reconnects at the `BEGIN`, as any read does.
        """
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if self.dialect.postgres else "BEGIN")
        self._in_begin = True
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def rollback(self) -> None:
        """Roll back the open transaction, if any; a broken connection is left for `broken` to report."""
        self._in_begin = False
        self.state.clear()  # what was set up in the transaction is gone
        if self.in_transaction:
            with contextlib.suppress(*self.errors):
                self.raw.execute("ROLLBACK")

    def retryable(self, error: BaseException) -> bool:
        """The statement lost a deadlock or a serialisation conflict with another writer: run it again."""
        return getattr(error, "sqlstate", None) in ("40P01", "40001")

    def database_failed(self, error: BaseException) -> bool:
        """The database itself failed (locked, full, I/O, connection lost), not the row being written: both
        drivers raise an OperationalError for those; a value out of range or unbindable is the row's fault."""
        return self.broken or (
            isinstance(error, self.errors) and any(c.__name__ == "OperationalError" for c in type(error).__mro__)
        )

    @property
    def in_transaction(self) -> bool:
        if self.dialect.postgres:
            from psycopg.pq import TransactionStatus  # noqa: PLC0415

            return bool(self.raw.info.transaction_status != TransactionStatus.IDLE)
        return bool(self.raw.in_transaction)

    @property
    def broken(self) -> bool:
        """The server connection is gone (PostgreSQL): open a new one."""
        return bool(self.dialect.postgres and (self.raw.closed or self.raw.broken))

    def close(self) -> None:
        self.raw.close()


def _connect_sqlite(path: Path, *, readonly: bool) -> Conn:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        conn.execute("PRAGMA synchronous = NORMAL")
    return Conn(conn, Dialect("sqlite"), (sqlite3.Error,))


def _connect_postgres(db: Database, *, readonly: bool) -> Conn:
    try:
        import psycopg  # noqa: PLC0415 - optional: only a PostgreSQL store needs it
    except ImportError as e:
        raise InvalidInput("a postgresql:// database needs psycopg: pip install 'edgefleet[postgres]'") from e
    options = (
        f"-c lock_timeout={BUSY_TIMEOUT_S * 1000} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_S * 1000}"
    )
    if readonly:
        options += " -c default_transaction_read_only=on"
    away = outage(db)
    away.check(db)
    started = time.monotonic()
    try:
        conn = psycopg.connect(
            db.url, autocommit=True, options=options, connect_timeout=NETWORK_TIMEOUT_S,
            tcp_user_timeout=NETWORK_TIMEOUT_S * 1000, keepalives=1, keepalives_idle=5, keepalives_interval=2,
            keepalives_count=3,
        )  # fmt: skip
    except psycopg.OperationalError as e:
        away.record(started, e)
        raise DatabaseUnavailable(f"cannot reach the database {db}: {str(e).strip()[:300]}") from e
    away.record(started, None)
    reopen = (lambda: _connect_postgres(db, readonly=True).raw) if readonly else None
    return Conn(conn, Dialect("postgresql"), (psycopg.Error,), reopen, away)
