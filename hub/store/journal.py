"""The telemetry writer's journal: windows the hub has acknowledged to the broker, on disk until they are stored.

Over MQTT 3.1.1 the hub acknowledges a QoS 1 window on receipt (`hub.mqtt`: the broker holds a 3.1.1 client to
its `max_inflight_messages`, 1 on the hub's own broker, so waiting for the commit before each acknowledgement
would cap ingestion near one window per group commit). The broker then forgets the window and the agent deletes
it from its spool, so until the writer has committed it the hub is its only holder. The journal makes that hold
survive the hub process: `append` writes each window with one `os.write` to an append-only segment file before
paho sends the PUBACK, a killed process's bytes stay in the kernel, and the next hub on the same data directory
reads them back (`recover`) and writes them again (the store drops the copies it had committed); so does the
hub when its writer process dies and is restarted.

Segments are sealed with the last writer batch (ticket) that can carry their windows, and deleted once the
writer has accounted for that batch (`release`). Nothing is fsynced: the journal survives the death of the hub
process (SIGKILL, OOM kill, a crash), not the loss of the host's power within the kernel's write-back delay,
which is what the hub's own Mosquitto guarantees for the messages it holds (`autosave_interval`). Over MQTT 5
the hub acknowledges a window only once stored and the journal only replays what an earlier process left.

Records: `<u32 length><u32 crc32>` then `<f64 received_at><u16 id length>`, the device id and the payload. A
record cut short by a crash mid-write, or one that fails its checksum, ends that segment's replay.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from pathlib import Path

log = logging.getLogger(__name__)
_HEAD = struct.Struct("<II")
_BODY = struct.Struct("<dH")
_SUFFIX = ".journal"
Window = tuple[str, float, bytes]  # device id, received at, undecoded payload: what the writer's buffer holds


class TelemetryJournal:
    """Append-only segment files in `directory`; one writer (the hub process holding the data dir's lock).

    Args:
        directory: where the segments live (created; a hub replica needs its own).
        enabled: append windows (the link acknowledges on receipt); False only recovers what is there.
        segment_bytes: a segment this large is sealed at the next batch.
        segment_s: a segment this old is sealed at the next batch (so an idle hub deletes it soon).
    """

    def __init__(
        self, directory: Path, *, enabled: bool = True, segment_bytes: int = 8 << 20, segment_s: float = 1.0
    ) -> None:
        self.directory = directory
        self.enabled = enabled
        self.segment_bytes = segment_bytes
        self.segment_s = segment_s
        directory.mkdir(parents=True, exist_ok=True)
        self._sealed: list[tuple[Path, int]] = []  # (segment, last ticket its windows can have), oldest first
        self._next = 1 + max((int(p.stem) for p in self._segments()), default=0)
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened = 0.0
        self.errors = 0  # windows that could not be written (disk full): held in memory only

    def _segments(self) -> list[Path]:
        return sorted((p for p in self.directory.glob(f"*{_SUFFIX}") if p.stem.isdigit()), key=lambda p: int(p.stem))

    def recover(self, ticket: int) -> list[Window]:
        """Every window still journaled, oldest first: what an earlier process left (at start), or what a writer
        that died had not stored (at its restart, with the windows stored since the segments were sealed: the
        store drops those copies). The open segment is closed; the segments go once `release` reaches `ticket`
        (the batch the caller will send the windows in)."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._path = None
        windows: list[Window] = []
        self._sealed = []
        for path in self._segments():
            windows.extend(_read(path))
            self._sealed.append((path, ticket))
        if windows:
            log.warning("store: %d telemetry windows journaled and not yet stored are written again from the "
                        "journal (%s)", len(windows), self.directory)  # fmt: skip
        return windows

    def append(self, device_id: str, received_at: float, payload: bytes) -> None:
        """Journal one window (one write; the caller holds the lock that orders appends and seals)."""
        if not self.enabled:
            return
        dev = device_id.encode()
        body = _BODY.pack(received_at, len(dev)) + dev + payload
        record = _HEAD.pack(len(body), zlib.crc32(body)) + body
        try:
            if self._fd is None:
                self._path = self.directory / f"{self._next:012d}{_SUFFIX}"
                self._next += 1
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._size, self._opened = 0, time.monotonic()
            os.write(self._fd, record)
            self._size += len(record)
        except OSError as e:
            self.errors += 1
            if self.errors == 1 or self.errors % 10_000 == 0:
                log.error("store: cannot journal telemetry in %s (%s, #%d): windows received now are lost if the "
                          "hub process dies before they are stored", self.directory, e, self.errors)  # fmt: skip

    def seal(self, ticket: int) -> None:
        """Every window appended so far rides in a batch up to `ticket`: seal the open segment if it is big or old
        enough (the caller holds the lock `append` runs under)."""
        if self._fd is None or (self._size < self.segment_bytes and time.monotonic() - self._opened < self.segment_s):
            return
        self._close_segment(ticket)

    def _close_segment(self, ticket: int) -> None:
        if self._fd is not None and self._path is not None:
            os.close(self._fd)
            self._sealed.append((self._path, ticket))
        self._fd = self._path = None

    def release(self, upto: int) -> None:
        """Delete the sealed segments whose windows' batches are all accounted for (at most `upto`)."""
        while self._sealed and self._sealed[0][1] <= upto:
            path, _ = self._sealed.pop(0)
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("store: cannot delete the telemetry journal segment %s: %s", path, e)

    def close(self, ticket: int, upto: int) -> None:
        """Seal the open segment with `ticket` and delete what `upto` covers; the rest stays for the next process."""
        self._close_segment(ticket)
        self.release(upto)


def _read(path: Path) -> list[Window]:
    data = path.read_bytes()
    windows: list[Window] = []
    at = 0
    while at + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, at)
        body = data[at + _HEAD.size : at + _HEAD.size + length]
        if len(body) < length or length < _BODY.size or zlib.crc32(body) != crc:
            log.warning("store: telemetry journal %s ends in a damaged record at byte %d (a crash mid-write): "
                        "replayed the %d windows before it", path, at, len(windows))  # fmt: skip
            break
        received_at, n = _BODY.unpack_from(body)
        windows.append(
            (body[_BODY.size : _BODY.size + n].decode(errors="replace"), received_at, body[_BODY.size + n :])
        )
        at += _HEAD.size + length
    return windows
