"""Telemetry decoding and writing in a separate process, so ingestion is not bound to the hub's one GIL.

Telemetry is the bulk of what a fleet sends (one window per device every few seconds). In one process the
MQTT thread's receive path, pydantic decoding and the writer's SQLite work all take turns on one GIL; on
two cores that capped the hub at ~0.3x of a bare paho receiver (docs/bench/ingest.md). With this module the
hub process only receives, checks topic, size, enrolment and the per-device rate limit, and appends the
undecoded payload to a buffer; a writer process decodes and validates each window (`fleet.codec`), refuses
windows that name another device than their topic, and writes them with the same SQL and group commit as
the in-process writer (`hub.store.telemetry.write_windows`), while the hub process goes on receiving.

    hub process                                         telemetry writer process (spawned)
    MQTT thread -> submit() -> buffer --forwarder--> pipe --> decode, check -> rows -> SQLite (WAL)
                                                    pipe <-- flush acks
    counters: shared memory, written by the writer only, read by the hub's /metrics and API

Failure handling:
- The buffer is bounded (`max_queue`); beyond it windows are refused and counted (`dropped_queue_full`),
  as with the in-process writer. A slow disk therefore back-pressures into counted drops, never into memory.
- The writer process is supervised: if it dies it is started again and the windows it had not committed
  are counted as `telemetry_lost` (at most one group-commit interval plus what was in the pipe).
- When the hub process dies, the pipe closes and the writer commits what it has and exits.
- Status and reported state stay on the in-process writer: they are few and their order matters.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import pickle
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from fleet.codec import decode
from fleet.errors import MessageError
from fleet.limits import too_far_ahead
from fleet.messages import TelemetryWindow
from hub.errors import HubError
from hub.store import telemetry as tsql

log = logging.getLogger(__name__)

# Counters in shared memory (signed 64-bit). The writer process is their only writer.
ACCEPTED, PERSISTED, DUPLICATES, MALFORMED, FOREIGN, WRITE_ERRORS, COMMITTED_UPTO, CLOCK_AHEAD, REFUSED = range(9)
_N_COUNTERS = 9
_FORWARD_INTERVAL_S = 0.005


class WriterUnavailable(HubError):
    """The telemetry writer process did not answer in time."""


@dataclass(frozen=True)
class _Config:
    db_path: str
    max_batch: int
    max_delay_s: float
    log_level: int


def _child_main(cfg: _Config, inbox: Connection, acks: Connection, counters: Any) -> None:
    """The writer process: decode, check and write windows until told to stop or the hub goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the hub's terminal: the hub stops us in order
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s[telemetry-writer] %(message)s")
    max_batch, max_delay_s = cfg.max_batch, cfg.max_delay_s
    from hub.store.sqlite import _connect  # noqa: PLC0415 - sqlite.py imports this module

    conn = _connect(Path(cfg.db_path), readonly=False)  # the same connection settings as the hub's writer
    writer = _Writer(conn, counters)
    rows: list[tuple[Any, ...]] = []
    upto = int(counters[COMMITTED_UPTO])  # the last batch whose windows are in `rows` or written
    deadline: float | None = None
    try:
        while True:
            timeout = max_delay_s if deadline is None else max(0.0, deadline - time.monotonic())
            msg: tuple[Any, ...] | None = None
            try:
                if inbox.poll(timeout):
                    msg = pickle.loads(inbox.recv_bytes())  # noqa: S301 - our own process, over a private pipe
            except EOFError:  # the hub process is gone: keep what we have and leave
                writer.write(rows, upto)
                return
            if msg is not None and msg[0] == "batch":
                upto = msg[1]
                rows.extend(writer.decode(msg[2]))
                if deadline is None:
                    deadline = time.monotonic() + max_delay_s
                if len(rows) < max_batch and time.monotonic() < deadline:
                    continue
            writer.write(rows, upto)
            rows = []
            deadline = None
            if msg is not None and msg[0] == "flush":
                acks.send(msg[1])
            elif msg is not None and msg[0] == "stop":
                acks.send(msg[1])
                return
    finally:
        conn.close()


class _Writer:
    """The writer process's decoding and SQL; counts everything in the shared counters."""

    def __init__(self, conn: sqlite3.Connection, counters: Any) -> None:
        self.conn = conn
        self.c = counters
        self._logged = 0

    def decode(self, batch: list[tuple[str, float, bytes]]) -> list[tuple[Any, ...]]:
        rows = []
        c = self.c
        for device_id, received_at, payload in batch:
            try:
                w = decode(payload, TelemetryWindow)
                row = tsql.window_row(w, received_at)
            except (MessageError, ValueError, TypeError, OverflowError) as e:
                c[MALFORMED] += 1
                self._refused("malformed", device_id, str(e), c[MALFORMED])
                continue
            if w.device_id != device_id:
                c[FOREIGN] += 1
                self._refused("foreign", device_id, f"payload names device {w.device_id!r}", c[FOREIGN])
                continue
            if too_far_ahead(w.end, received_at):
                c[CLOCK_AHEAD] += 1
                self._refused("clock_ahead", device_id, f"window ends {w.end - received_at:.0f}s ahead", c[CLOCK_AHEAD])
                continue
            rows.append(row)
        c[ACCEPTED] += len(rows)
        return rows

    @staticmethod
    def _refused(reason: str, device_id: str, detail: str, n: int) -> None:
        if n <= 10 or n & (n - 1) == 0:  # the first ten, then at powers of two (as hub.ingest logs)
            log.warning("ingest: refused telemetry of %s (%s, #%d): %s", device_id, reason, n, detail[:300])

    def write(self, rows: list[tuple[Any, ...]], upto: int) -> None:
        """Write `rows` in one transaction; if the database refuses one, write them one by one.

        A row the database cannot take is its window's fault: refused and counted (`REFUSED`), and every
        other window is written. A failure of the database itself (locked, disk full) fails the batch.
        """
        if rows:
            try:
                self._write(rows, per_row=False)
            except sqlite3.OperationalError:
                self._failed(len(rows))
            except Exception:
                self._rollback()
                try:
                    self._write(rows, per_row=True)
                except Exception:
                    self._failed(len(rows))
        self.c[COMMITTED_UPTO] = upto

    def _write(self, rows: list[tuple[Any, ...]], *, per_row: bool) -> None:
        conn, inserted, refused = self.conn, 0, 0
        conn.execute("BEGIN IMMEDIATE")
        if not per_row:
            inserted = tsql.write_windows(conn, rows)
        else:
            for row in rows:
                conn.execute("SAVEPOINT row")
                try:
                    inserted += tsql.write_windows(conn, [row])
                except sqlite3.OperationalError:
                    raise
                except Exception as e:
                    conn.execute("ROLLBACK TO row")
                    refused += 1
                    self._refused("unwritable", str(row[0]), f"{type(e).__name__}: {e}", self.c[REFUSED] + refused)
                conn.execute("RELEASE row")
        conn.execute("COMMIT")
        self.c[PERSISTED] += inserted
        self.c[DUPLICATES] += len(rows) - inserted - refused
        self.c[REFUSED] += refused

    def _failed(self, n: int) -> None:
        log.exception("store: writing a batch of %d telemetry windows failed", n)
        self._rollback()
        self.c[WRITE_ERRORS] += 1

    def _rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("store: rollback failed")


class TelemetryProcess:
    """The hub side: a bounded buffer, a forwarder thread and a supervised writer process."""

    def __init__(
        self,
        db_path: str,
        *,
        max_batch: int = 5000,
        max_queue: int = 200_000,
        max_delay_s: float = 0.05,
    ) -> None:
        self.db_path = db_path
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self._ctx = mp.get_context("spawn")  # never fork a process that runs threads
        self.counters: Any = self._ctx.Array("q", _N_COUNTERS, lock=False)
        self._buf: list[tuple[str, float, bytes]] = []
        self._buf_lock = threading.Lock()
        self._send_lock = threading.Lock()  # one sender on the pipe at a time (forwarder, flush, stop)
        self._wake = threading.Event()
        self._seq = 0  # batches sent
        self._sizes: dict[int, int] = {}  # windows per sent batch, until the writer commits it
        self._token = 0
        self.dropped = 0
        self.lost = 0
        self.restarts = 0
        self._closed = False
        self._proc: SpawnProcess | None = None
        self._inbox: Connection | None = None
        self._acks: Connection | None = None
        self._spawn()
        self._thread = threading.Thread(target=self._forward, name="hub-telemetry-forwarder", daemon=True)
        self._thread.start()

    # -- the process --------------------------------------------------------------------------------
    def _spawn(self) -> None:
        inbox_r, inbox_w = self._ctx.Pipe(duplex=False)
        acks_r, acks_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_child_main,
            args=(
                _Config(self.db_path, self.max_batch, self.max_delay_s, logging.getLogger().getEffectiveLevel()),
                inbox_r, acks_w, self.counters,
            ),
            name="edgefleet-telemetry-writer",
            daemon=True,
        )  # fmt: skip
        self.counters[COMMITTED_UPTO] = self._seq  # everything sent to an earlier writer is accounted for
        proc.start()
        inbox_r.close()  # our copies of the child's ends: the child sees EOF when we go away
        acks_w.close()
        self._proc, self._inbox, self._acks = proc, inbox_w, acks_r

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _restart(self, why: str) -> None:
        """Start a new writer; windows sent but not committed by the old one are counted as lost."""
        old = self._proc
        if old is not None:
            with contextlib.suppress(Exception):
                old.kill()
            old.join(5)
        for c in (self._inbox, self._acks):
            if c is not None:
                with contextlib.suppress(OSError):
                    c.close()
        self.lost += self._unsent_estimate
        self._sizes.clear()
        self.restarts += 1
        log.error("store: telemetry writer %s (%s); starting a new one (restart #%d)", why,
                  old.exitcode if old else None, self.restarts)  # fmt: skip
        self._spawn()

    @property
    def _unsent_estimate(self) -> int:
        # windows in batches the writer had not committed; each batch records its size
        upto = int(self.counters[COMMITTED_UPTO])
        return sum(n for seq, n in self._sizes.items() if seq > upto)

    # -- submitting ---------------------------------------------------------------------------------
    def submit(self, device_id: str, payload: bytes, received_at: float) -> bool:
        """Queue one undecoded window (MQTT thread). False when the buffer is full: the window is dropped."""
        with self._buf_lock:
            if self._closed or len(self._buf) >= self.max_queue:
                self.dropped += 1
                return False
            self._buf.append((device_id, received_at, payload))
        return True

    @property
    def queue_depth(self) -> int:
        return len(self._buf)

    def _send_pending(self) -> None:
        """Send the buffer as one batch (caller holds `_send_lock`). Restarts a dead writer first."""
        if self._proc is not None and not self._proc.is_alive():
            self._restart("exited")
        with self._buf_lock:
            buf, self._buf = self._buf, []
        if not buf:
            return
        self._seq += 1
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
        while not self._closed:
            self._wake.wait(_FORWARD_INTERVAL_S)
            self._wake.clear()
            with self._send_lock:
                if self._closed:
                    return
                try:
                    self._send_pending()
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
        """Write everything submitted, stop the writer process and the forwarder."""
        if self._closed:
            return
        try:
            self._round_trip("stop", timeout)
        except WriterUnavailable as e:
            log.warning("store: stopping the telemetry writer: %s", e)
        with self._buf_lock:
            self._closed = True
        self._wake.set()
        self._thread.join(5)
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        for c in (self._inbox, self._acks):
            if c is not None:
                with contextlib.suppress(OSError):
                    c.close()
