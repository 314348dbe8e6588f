"""The one telemetry path: from an undecoded MQTT payload to stored, rolled-up rows, in a thread or a process.

Telemetry is the bulk of what a fleet sends (one window per device every few seconds). The hub's MQTT thread
only checks topic, size, enrolment and the per-device rate limit and hands the payload to `submit()`; the
writer decodes and validates each window (`decode_window`), refuses windows that name another device than
their topic, and writes the rest with group commit (`hub.store.telemetry.write_windows`). The writer runs in
a process of its own by default (`hub serve`: ingestion is not bound to the hub process's one GIL; on two
cores one process capped the hub at ~0.3x of a bare paho receiver, docs/bench/ingest.md) or in a thread of
the hub process (`ingest.telemetry_process` off: one process less). Both run the same code over the same pipe:

    hub process                                         telemetry writer (process or thread)
    MQTT thread -> submit() -> buffer --forwarder--> pipe --> decode, check -> rows -> SQL (group commit)
                                                    pipe <-- flush acks
    counters: shared memory, written by the writer only, read by the hub's /metrics and API

Failure handling:
- The buffer is bounded (`max_queue`); beyond it windows are refused and counted (`dropped`). A slow disk
  therefore back-pressures into counted drops, never into memory.
- The writer is supervised: if it dies it is started again and the windows it had not committed are written
  again from the journal (below), or without one counted as `lost` (at most one group-commit interval plus
  what was in the pipe).
- When the hub process dies, the pipe closes and a writer process commits what it has and exits. On Linux the
  kernel also tells it at once (`PR_SET_PDEATHSIG`), so a writer waiting for an absent database leaves too
  instead of outliving its hub: what it held stays in the journal (or at the broker) for the next hub.
- While the database is away (no connection can be opened, or the one in use broke) the writer holds its batch
  and tries again (at most every `away_retry_s`) until the database is back, counting the tries
  (`DATABASE_WAITS`); the batch's windows stay unacknowledged meanwhile (over MQTT 5 the broker keeps what
  follows), the buffer fills up to `max_queue`. A stop during the outage leaves the batch unwritten and
  unacknowledged, for the broker to send again to the hub's next session.
- With a journal (`hub.store.journal`, what `hub serve` gives it over MQTT 3.1.1, where windows are acknowledged
  on receipt) `submit` appends each window to disk first; segments go once their batches are accounted for, and
  what a dead or stopped hub process left is written first by the next one (the store drops duplicates).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from fleet.codec import decode
from fleet.errors import MessageError, refusal_reason
from fleet.limits import too_far_ahead
from fleet.messages import TelemetryWindow
from hub.errors import RefusedWindow, WriterUnavailable
from hub.store import telemetry as tsql
from hub.store.connection import Conn, Database, away_wait_s, write_in_parts
from hub.store.journal import TelemetryJournal
from infra.logthrottle import log_sampled

log = logging.getLogger(__name__)

# Counters in shared memory (signed 64-bit). The writer is their only writer.
(ACCEPTED, PERSISTED, DUPLICATES, MALFORMED, FOREIGN, WRITE_ERRORS, COMMITTED_UPTO, CLOCK_AHEAD, REFUSED,
 DATABASE_WAITS, UNKNOWN_CONTENT, UNSUPPORTED_SCHEMA) = range(12)  # fmt: skip
_N_COUNTERS = 12
_REFUSAL_COUNTER = {
    "malformed": MALFORMED, "unknown_content": UNKNOWN_CONTENT, "unsupported_schema": UNSUPPORTED_SCHEMA,
    "foreign": FOREIGN, "clock_ahead": CLOCK_AHEAD,
}  # fmt: skip
_FORWARD_INTERVAL_S = 0.005
_ATTEMPTS = 8  # a batch failing for another reason than an absent database (a deadlock) is tried this often


def decode_window(device_id: str, payload: bytes, received_at: float) -> list[tuple[Any, ...]]:
    """The rows of one telemetry payload received on `device_id`'s topic (one per model of the window; the
    writer counts accepted and refused windows, and persisted and duplicate rows). Raises RefusedWindow.

    The only place telemetry is decoded: malformed payloads (not JSON, invalid fields; `unknown_content` and
    `unsupported_schema` when the fields, values or schema version are a newer agent's),
    windows that name another device than their topic and windows that end further ahead of the hub's clock
    than `fleet.limits.CLOCK_SKEW_S` are refused with the reason.
    """
    try:
        w = decode(payload, TelemetryWindow)
        rows = tsql.window_rows(w, received_at)
    except MessageError as e:
        raise RefusedWindow(refusal_reason(e), str(e)) from e
    except (ValueError, TypeError, OverflowError) as e:
        raise RefusedWindow("malformed", str(e)) from e
    if w.device_id != device_id:
        raise RefusedWindow("foreign", f"payload names device {w.device_id!r}")
    if too_far_ahead(w.end, received_at):
        raise RefusedWindow("clock_ahead", f"the window ends {w.end - received_at:.0f}s ahead of the hub's clock")
    return rows


class _Stop:
    """The hub's "stop waiting for the database" to its writers (an Event's `set`, `is_set`, `wait`): a pipe that
    turns readable once set. Not a multiprocessing Event: a writer process killed while waiting on one leaves
    its condition counting a sleeper that never wakes, and `set()` then waits for it forever (the hub's stop
    hung after a writer crashed during a database outage)."""

    def __init__(self, ctx: Any) -> None:
        self._r, self._w = ctx.Pipe(duplex=False)

    def set(self) -> None:
        with contextlib.suppress(OSError):
            self._w.send_bytes(b"stop")  # never read: the pipe stays readable

    def is_set(self) -> bool:
        return bool(self._r.poll(0))

    def wait(self, timeout: float) -> bool:
        return bool(self._r.poll(timeout))


@dataclass(frozen=True)
class _Config:
    database: Database
    max_batch: int
    max_delay_s: float
    away_retry_s: float
    stopping: Any  # a _Stop (or Event), set when the hub stops: the writer stops waiting for an absent database
    hub_pid: int  # the hub process: a writer process leaves when it dies (`_leave_with_the_hub`)


class _Writer:
    """Decoding and SQL of the writer; counts everything in the shared counters."""

    def __init__(self, database: Database, counters: Any, *, away_retry_s: float = 5.0, stopping: Any = None) -> None:
        self.database = database
        self.away_retry_s = away_retry_s
        self.stopping = threading.Event() if stopping is None else stopping  # set: stop waiting for the database
        self.conn: Conn | None = None
        self.c = counters
        self.gave_up = False  # a batch was left unwritten as the hub stopped (`write`)

    def decode(self, batch: list[tuple[str, float, bytes]]) -> list[tuple[Any, ...]]:
        rows = []
        c = self.c
        accepted = 0  # windows (messages), not rows: a window of several models is several rows
        for device_id, received_at, payload in batch:
            try:
                rows.extend(decode_window(device_id, payload, received_at))
                accepted += 1
            except RefusedWindow as e:
                i = _REFUSAL_COUNTER[e.reason]
                c[i] += 1
                if log_sampled(c[i]):
                    log.warning("ingest: refused telemetry of %s (%s, #%d): %s", device_id, e.reason, c[i],
                                e.message[:300])  # fmt: skip
        c[ACCEPTED] += accepted
        return rows

    def _connection(self) -> Conn:
        """The writer's connection, opened (again) when there is none or the server dropped it."""
        if self.conn is not None and self.conn.broken:
            log.warning("store: the telemetry writer lost its database connection; reconnecting")
            self.conn.close()
            self.conn = None
        if self.conn is None:
            self.conn = self.database.connect()
        return self.conn

    def write(self, rows: list[tuple[Any, ...]], upto: int, *, wait: bool = True) -> None:
        """Write `rows` in one transaction; if a row fails it, write them in halves down to that row and refuse it.

        A row the database cannot take is its window's fault: refused and counted (`REFUSED`), every other
        window is written. While the database is away (also when the server ends the connection during the
        pass in halves) the batch waits for it (module doc); any other failure of
        the database itself (locked, full) fails the batch (`WRITE_ERRORS`). `upto` (the last batch whose
        windows are in `rows`) is then accounted for, unless the hub stopped while the database was away (or
        `wait` is False: the hub is gone).
        """
        attempt = waits = 0
        while rows:
            conn = self.conn
            try:
                conn = self._connection()
                self._write(conn, rows, per_row=False)
                break
            except Exception as e:
                if conn is not None:
                    conn.rollback()
                if conn is not None and not conn.broken:
                    attempt += 1
                    if attempt < _ATTEMPTS and isinstance(e, conn.errors) and conn.retryable(e):
                        continue  # a deadlock with another replica's writer: the whole batch again
                    if not conn.database_failed(e):
                        try:
                            self._write(conn, rows, per_row=True)
                            break
                        except Exception as again:
                            conn.rollback()
                            e = again
                    if not conn.broken:
                        log.error("store: writing a batch of %d telemetry windows failed", len(rows), exc_info=e)
                        self.c[WRITE_ERRORS] += 1
                        break
                # the database is away: no connection opened, or the server ended it (on either pass)
                if not wait or self.stopping.is_set():
                    log.error("store: the database is away and the hub stops: %d telemetry rows are not written "
                              "(not acknowledged: the broker (MQTT 5) or the journal (3.1.1) gives them to the "
                              "next hub process)", len(rows))  # fmt: skip
                    self.c[WRITE_ERRORS] += 1
                    self.gave_up = True
                    return
                self.c[DATABASE_WAITS] += 1
                if log_sampled(self.c[DATABASE_WAITS]):
                    log.warning("store: the database is away (%s); %d telemetry rows wait for it (try #%d)",
                                str(e)[:400], len(rows), self.c[DATABASE_WAITS])  # fmt: skip
                waits += 1
                self.stopping.wait(away_wait_s(waits, self.away_retry_s))
        if not self.gave_up:  # after a batch given up nothing is accounted for: acknowledgements go in order
            self.c[COMMITTED_UPTO] = upto

    def _write(self, conn: Conn, rows: list[tuple[Any, ...]], *, per_row: bool) -> None:
        """One transaction over `rows`: as one batch, or with `per_row` in parts that refuse the rows that fail
        (`write_in_parts`)."""
        refused: list[tuple[tuple[Any, ...], Exception]] = []
        conn.begin()
        if not per_row:
            inserted = tsql.write_windows(conn, rows)
        else:
            parts, refused = write_in_parts(conn, rows, lambda part: tsql.write_windows(conn, part, more_follow=True))
            inserted = sum(parts)
        conn.commit()
        for n, (row, e) in enumerate(refused, self.c[REFUSED] + 1):
            if log_sampled(n):
                log.warning("store: refused a telemetry window of %s that cannot be written (#%d): %s: %s",
                            row[0], n, type(e).__name__, str(e)[:200])  # fmt: skip
        self.c[PERSISTED] += inserted
        self.c[DUPLICATES] += len(rows) - inserted - len(refused)
        self.c[REFUSED] += len(refused)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def run_writer(cfg: _Config, inbox: Connection, acks: Connection, counters: Any) -> None:
    """The writer loop (a thread's or a process's): decode, check and write windows until told to stop or the
    hub side goes away. Windows wait up to `max_delay_s` for more (group commit), at most `max_batch`."""
    writer = _Writer(cfg.database, counters, away_retry_s=cfg.away_retry_s, stopping=cfg.stopping)
    rows: list[tuple[Any, ...]] = []
    upto = int(counters[COMMITTED_UPTO])  # the last batch whose windows are in `rows` or written
    deadline: float | None = None
    try:
        while True:
            timeout = cfg.max_delay_s if deadline is None else max(0.0, deadline - time.monotonic())
            msg: tuple[Any, ...] | None = None
            try:
                if inbox.poll(timeout):
                    msg = pickle.loads(inbox.recv_bytes())  # noqa: S301 - our own process, over a private pipe
            except (EOFError, OSError):  # the hub side is gone: keep what we have and leave
                writer.write(rows, upto, wait=False)
                return
            if msg is not None and msg[0] == "batch":
                upto = msg[1]
                rows.extend(writer.decode(msg[2]))
                if deadline is None:
                    deadline = time.monotonic() + cfg.max_delay_s
                if len(rows) < cfg.max_batch and time.monotonic() < deadline:
                    continue
            writer.write(rows, upto)
            rows = []
            deadline = None
            if msg is not None and msg[0] in ("flush", "stop"):
                acks.send(msg[1])
                if msg[0] == "stop":
                    return
    finally:
        writer.close()
        for end in (inbox, acks):
            with contextlib.suppress(OSError):
                end.close()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _leave_with_the_hub(hub_pid: int) -> None:
    """Make this writer process end as soon as the hub process `hub_pid` dies (SIGKILL, OOM killer, a crash).

    The pipe closing tells a writer reading it, not one waiting for an absent database: that one would outlive
    its hub and run beside the next. On Linux the kernel sends the writer SIGTERM (default action: the process
    ends wherever it is, in a sleep or a connect) when its parent goes (PR_SET_PDEATHSIG). What it held is not
    lost: the hub had it in its journal (MQTT 3.1.1) or never acknowledged it (5). The kernel sends it when the
    *thread* that started the writer ends: `hub serve` starts it from its main thread and restarts it from the
    forwarder thread, both as long-lived as the writer (a writer ended early would be restarted, its windows
    written again from the journal).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("store: the telemetry writer cannot ask to end with its hub: %s",
                        os.strerror(ctypes.get_errno()))  # fmt: skip
    if os.getppid() != hub_pid:  # the hub died before the kernel was asked
        log.error("store: the hub process %d is gone; the telemetry writer ends", hub_pid)
        sys.exit(1)


def _process_main(cfg: _Config, log_level: int, inbox: Connection, acks: Connection, counters: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the hub's terminal: the hub stops us in order
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[telemetry-writer] %(message)s")
    _leave_with_the_hub(cfg.hub_pid)
    run_writer(cfg, inbox, acks, counters)


def _start_ignoring_sigint(worker: BaseProcess) -> None:
    """Start the child with SIGINT ignored from its first instruction (an ignored signal stays ignored across
    exec, and Python keeps it so): a Ctrl-C on the hub's terminal during the child's start-up (its imports take
    about a second) would otherwise kill it before `_process_main` ignores SIGINT itself. Only the main thread
    may change a signal's disposition; restarts come from the supervisor thread and take that small chance."""
    if threading.current_thread() is not threading.main_thread():
        worker.start()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker.start()
    finally:
        signal.signal(signal.SIGINT, previous)


class TelemetryWriter:
    """The hub side: a bounded buffer, a forwarder thread and a supervised writer (a process or a thread).

    Args:
        database: the database the writer writes to (it opens a connection of its own).
        process: run the writer in a process of its own (True) or in a thread of this process.
        max_batch: most windows written in one transaction.
        max_queue: most windows buffered; beyond it `submit` refuses (counted in `dropped`).
        max_delay_s: how long the writer waits for more windows before committing (group commit).
        away_retry_s: longest wait between tries of a batch while the database is away.
        journal: where windows wait on disk until committed (`hub.store.journal`; None: in memory only). What an
            earlier process left there is written first.
    """

    def __init__(
        self,
        database: Database,
        *,
        process: bool = True,
        max_batch: int = 5000,
        max_queue: int = 200_000,
        max_delay_s: float = 0.05,
        away_retry_s: float = 5.0,
        journal: TelemetryJournal | None = None,
    ) -> None:
        self._ctx = mp.get_context("spawn")  # never fork a process that runs threads
        self._stopping = _Stop(self._ctx)  # set by close(): a writer stops waiting for an absent database
        self.cfg = _Config(database, max_batch, max_delay_s, away_retry_s, self._stopping, os.getpid())
        self.process = process
        self.max_queue = max_queue
        self.counters: Any = self._ctx.Array("q", _N_COUNTERS, lock=False)
        self._buf: list[tuple[str, float, bytes]] = []
        self._buf_lock = threading.Lock()
        self._send_lock = threading.Lock()  # one sender on the pipe at a time (forwarder, flush, stop)
        self._wake = threading.Event()
        self._seq = 0  # batches sent
        self._sizes: dict[int, int] = {}  # windows per sent batch, until the writer commits it
        self._token = 0
        self.on_committed: Callable[[int], None] | None = None
        """Called on the forwarder thread with the last batch accounted for (committed, refused or counted lost)
        whenever that advances: windows whose ticket is at most that number may be acknowledged to the broker."""
        self.dropped = 0
        self.lost = 0
        self.restarts = 0
        self._closed = False
        self.journal = journal
        if journal is not None:
            self._buf.extend(journal.recover(self._seq + 1))  # the first batch carries them
        self._worker: BaseProcess | threading.Thread | None = None
        self._inbox: Connection | None = None
        self._acks: Connection | None = None
        self._start_writer()
        self._thread = threading.Thread(target=self._forward, name="hub-telemetry-forwarder", daemon=True)
        self._thread.start()

    # -- the writer ---------------------------------------------------------------------------------
    def _start_writer(self) -> None:
        inbox_r, inbox_w = self._ctx.Pipe(duplex=False)
        acks_r, acks_w = self._ctx.Pipe(duplex=False)
        self.counters[COMMITTED_UPTO] = self._seq  # everything sent to an earlier writer is accounted for
        worker: BaseProcess | threading.Thread
        if self.process:
            level = logging.getLogger().getEffectiveLevel()
            worker = self._ctx.Process(
                target=_process_main, args=(self.cfg, level, inbox_r, acks_w, self.counters),
                name="edgefleet-telemetry-writer", daemon=True,
            )  # fmt: skip
            _start_ignoring_sigint(worker)
            inbox_r.close()  # our copies of the child's ends: the child sees EOF when we go away
            acks_w.close()
        else:
            worker = threading.Thread(
                target=run_writer, args=(self.cfg, inbox_r, acks_w, self.counters), name="hub-telemetry-writer",
                daemon=True,
            )  # fmt: skip
            worker.start()
        self._worker, self._inbox, self._acks = worker, inbox_w, acks_r

    @property
    def pid(self) -> int | None:
        """The writer process's id (None for a writer thread)."""
        return self._worker.pid if isinstance(self._worker, BaseProcess) else None

    def _alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _restart(self, why: str) -> None:
        """Start a new writer; windows sent but not committed by the old one go to it again from the journal
        (before the buffer: the next batch), or without one are counted as lost."""
        old = self._worker
        if isinstance(old, BaseProcess):
            with contextlib.suppress(Exception):
                old.kill()
            old.join(5)
        for c in (self._inbox, self._acks):  # a writer thread sees EOF, commits what it has and leaves
            if c is not None:
                with contextlib.suppress(OSError):
                    c.close()
        if isinstance(old, threading.Thread):
            old.join(5)
        unsent = self._unsent_estimate
        if self.journal is not None:
            with self._buf_lock:  # appends and seals wait: the open segment is closed and read with the rest
                journaled = self.journal.recover(self._seq + 1)
                n = len(self._buf)
                # the buffer's windows were the last appended: unless one could not be, they are the tail
                self._buf = journaled if journaled[len(journaled) - n :] == self._buf else journaled + self._buf
            if self.journal.enabled:
                unsent = 0  # written again (a window the journal failed to take is counted in its errors)
        self.lost += unsent
        self._sizes.clear()
        code = old.exitcode if isinstance(old, BaseProcess) else None
        log.error("store: telemetry writer %s (%s); starting a new one (restart #%d)", why, code, self.restarts + 1)
        self._start_writer()
        self.restarts += 1  # after the new writer is in place: a reader that sees the count sees the new writer

    @property
    def _unsent_estimate(self) -> int:
        # windows in batches the writer had not committed; each batch records its size
        upto = int(self.counters[COMMITTED_UPTO])
        return sum(n for seq, n in self._sizes.items() if seq > upto)

    # -- submitting ---------------------------------------------------------------------------------
    def submit(self, device_id: str, payload: bytes, received_at: float) -> int | None:
        """Queue one undecoded window (MQTT thread). Returns its ticket, the batch that will carry it (the window
        is committed, refused or counted lost once `on_committed` reports that batch or a later one), or None
        when the buffer is full: the window is dropped and counted."""
        with self._buf_lock:
            if self._closed or len(self._buf) >= self.max_queue:
                self.dropped += 1
                return None
            if self.journal is not None:
                self.journal.append(device_id, received_at, payload)  # before paho acknowledges it (3.1.1)
            self._buf.append((device_id, received_at, payload))
            return self._seq + 1

    @property
    def queue_depth(self) -> int:
        return len(self._buf)

    def _send_pending(self) -> None:
        """Send the buffer as one batch (caller holds `_send_lock`). Restarts a dead writer first."""
        if self._worker is not None and not self._alive():
            self._restart("exited")
        with self._buf_lock:  # the batch number changes with the buffer: `submit`'s ticket names this batch
            buf, self._buf = self._buf, []
            if buf:
                self._seq += 1
            if self.journal is not None:
                self.journal.seal(self._seq)  # every window journaled so far rides in a batch up to this one
            if not buf:
                return
        self._sizes[self._seq] = len(buf)
        done = int(self.counters[COMMITTED_UPTO])
        for seq in [s for s in self._sizes if s <= done]:
            del self._sizes[seq]
        data = pickle.dumps(("batch", self._seq, buf), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            assert self._inbox is not None
            self._inbox.send_bytes(data)  # blocks while the writer is behind: back-pressure into the buffer
        except (OSError, ValueError):
            self._restart("stopped reading")

    def _forward(self) -> None:
        reported = int(self.counters[COMMITTED_UPTO])
        while not self._closed:
            self._wake.wait(_FORWARD_INTERVAL_S)
            self._wake.clear()
            with self._send_lock:
                if self._closed:
                    return
                try:
                    self._send_pending()
                    upto = int(self.counters[COMMITTED_UPTO])
                    if upto != reported and self.on_committed is not None:
                        self.on_committed(upto)
                    if self.journal is not None:  # also a segment sealed after its batch was stored
                        self.journal.release(upto)
                    reported = upto
                except Exception:  # never let the forwarder die: telemetry would pile up unseen
                    log.exception("store: forwarding telemetry to the writer failed")
                    time.sleep(0.5)

    def _round_trip(self, kind: str, timeout: float) -> None:
        """Send what is buffered, then `kind` with a token; wait until the writer answers with that token.

        A writer that turns out dead on the way (killed between its last check and our send) is restarted
        and asked again; the windows it had not committed are counted as lost, so the caller's "everything
        before is committed or accounted for" still holds.
        """
        deadline = time.monotonic() + timeout
        with self._send_lock:
            for attempt in range(2):
                self._send_pending()
                self._token += 1
                token = self._token
                assert self._inbox is not None
                assert self._acks is not None
                try:
                    self._inbox.send_bytes(pickle.dumps((kind, token)))
                    while True:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or not self._acks.poll(remaining):
                            raise WriterUnavailable(f"the telemetry writer did not answer within {timeout:.0f}s")
                        if self._acks.recv() == token:
                            return
                except (EOFError, OSError, ValueError) as e:
                    if attempt:
                        raise WriterUnavailable(f"the telemetry writer is gone ({e!r})") from e
                    self._restart("exited")

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every window submitted before this call is committed (or refused)."""
        self._round_trip("flush", timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything submitted, stop the writer and the forwarder."""
        if self._closed:
            return
        self._stopping.set()  # a writer waiting for an absent database gives its batch up (unacknowledged)
        try:
            self._round_trip("stop", timeout)
        except WriterUnavailable as e:
            log.warning("store: stopping the telemetry writer: %s", e)
        with self._buf_lock:
            self._closed = True
        self._wake.set()
        self._thread.join(5)
        if self.journal is not None:  # what the writer did not store stays journaled for the next hub process
            with self._send_lock:
                self.journal.close(self._seq + (1 if self._buf else 0), int(self.counters[COMMITTED_UPTO]))
        worker = self._worker
        if worker is not None:
            worker.join(5)
            if isinstance(worker, BaseProcess) and worker.is_alive():
                worker.kill()
                worker.join(5)
        for c in (self._inbox, self._acks):
            if c is not None:
                with contextlib.suppress(OSError):
                    c.close()
