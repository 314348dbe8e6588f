"""Telemetry: a window every `interval_s`, sequence-numbered, written to the spool, sent in order.

A window carries one entry per model served (its requests, errors, latency histogram, queue depth and
shadow stats, labelled by model and version) beside the device's host metrics.

Every window goes to the on-disk spool first and leaves it only when the broker acknowledged it, so windows
made while the broker is unreachable (or before an agent restart) are sent later, oldest first. Sending
stops at the first unacknowledged window, which keeps the order; the hub deduplicates by `seq`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.errors import DISK_LOG_EVERY_S, SpoolError
from agent.hardware import HostSampler, gpu_samples
from agent.ports import ServingPort, ServingWindow
from agent.settings import TelemetrySettings
from agent.spool import Spool
from fleet.codec import encode
from fleet.histogram import Histogram
from fleet.messages import MAX_MODELS, AppliedModel, ModelWindow, TelemetryWindow
from infra.logthrottle import LogGate

log = logging.getLogger(__name__)

Publish = Callable[[bytes], bool]


class Telemetry:
    """Makes windows on a timer thread and drains the spool whenever the link is up.

    Args:
        device_id: this device.
        serving: where request counters come from (`take_window`).
        spool: the on-disk spool.
        settings: interval and batch size.
        publish: sends one encoded window and waits for the broker's acknowledgement.
        connected: whether the link is up now.
        active: the active version of every model now, by name.
    """

    def __init__(
        self,
        device_id: str,
        serving: ServingPort,
        spool: Spool,
        settings: TelemetrySettings,
        *,
        publish: Publish,
        connected: Callable[[], bool],
        active: Callable[[], dict[str, AppliedModel]],
    ) -> None:
        self.device_id = device_id
        self.serving = serving
        self.spool = spool
        self.settings = settings
        self._publish = publish
        self._connected = connected
        self._active = active
        self._host = HostSampler()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._window_start = time.time()
        self._versions: dict[str, str] = {}  # last version reported per model
        self.sent = 0
        self.unspooled = 0  # windows lost before the spool held them (disk full): reported as spool_dropped
        self.spool_log = LogGate(DISK_LOG_EVERY_S)  # a bad disk fails every window and every drain the same way

    def start(self) -> None:
        """Start the timer thread."""
        self._window_start = time.time()
        self._thread = threading.Thread(target=self._run, name="agent-telemetry", daemon=True)
        self._thread.start()

    def stop(self, drain_s: float = 2.0) -> None:
        """Stop the thread, then send what the spool still holds while the link is up, for at most `drain_s`
        (a window made as the stop came would otherwise wait for the next start; what is left then does)."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.drain(until=time.monotonic() + drain_s)
        except SpoolError as e:
            self.spool_log.error(log, "telemetry spool failed: %s", e)

    def kick(self) -> None:
        """Drain the spool now (the link came back)."""
        self._kick.set()

    def _run(self) -> None:
        due = time.monotonic() + self.settings.interval_s
        while not self._stop.is_set():
            self._kick.wait(max(0.0, due - time.monotonic()))
            self._kick.clear()
            if self._stop.is_set():
                break
            make = time.monotonic() >= due
            if make:
                due += self.settings.interval_s
                if due < time.monotonic():  # fell behind (suspended): skip, do not burst
                    due = time.monotonic() + self.settings.interval_s
            self.step(make)

    def step(self, make: bool) -> None:
        """Make a window (if `make`) and drain the spool; a failure is logged, never raised (the next window
        tries again). A spool the disk refuses fails every window and drain alike: logged at most once per
        `DISK_LOG_EVERY_S`, with how many were not."""
        try:
            if make:
                self.make_window()
            self.drain()
        except SpoolError as e:
            self.spool_log.error(log, "telemetry spool failed: %s", e)
        except Exception:  # one bad window must not stop telemetry
            log.exception("telemetry window failed")

    def make_window(self) -> TelemetryWindow:
        """Close the current window and put it in the spool."""
        end = time.time()
        windows = self.serving.take_windows()
        cpu, rss = self._host.sample()
        active = self._active()
        try:
            return self._spool_window(windows, cpu, rss, active, end)
        except Exception:
            # lost (a full disk, most likely): count it, so the next window that gets through says so in
            # spool_dropped; a window that already had its seq also leaves a gap the hub sees
            self.unspooled += 1
            raise

    def _spool_window(
        self,
        windows: dict[str, ServingWindow],
        cpu: float,
        rss: int,
        active: dict[str, AppliedModel],
        end: float,
    ) -> TelemetryWindow:
        seq = self.spool.allocate_seq()
        models = []
        for name in sorted(set(windows) | set(active))[:MAX_MODELS]:
            w, model = windows.get(name), active.get(name)
            if model is None and (w is None or not w.requests):
                continue  # stopped serving, nothing left to report
            version = model.version if model is not None else None
            if version is None:  # removed during the window: its last requests, under the version reported last
                version = self._versions.get(name)
            if version is None:
                continue
            self._versions[name] = version
            models.append(
                ModelWindow(
                    name=name,
                    version=version,
                    provider=model.provider if model else None,
                    requests=w.requests if w else 0,
                    errors=w.errors if w else 0,
                    latency=w.latency if w else Histogram(),
                    queue_depth=w.queue_depth if w else 0,
                    shadow=w.shadow if w else None,
                )
            )
        window = TelemetryWindow(
            device_id=self.device_id,
            seq=seq,
            start=self._window_start,
            end=max(end, self._window_start),
            models=models,
            cpu_percent=cpu,
            memory_bytes=rss,
            gpus=gpu_samples(),
            spool_dropped=self.spool.dropped + self.unspooled,
            spool_capacity=self.spool.capacity,
            spool_pending=self.spool.pending,
        )
        self._window_start = end
        dropped = self.spool.push(seq, encode(window))
        if dropped:
            log.warning("telemetry spool full (%s windows): dropped the %s oldest", self.spool.capacity, dropped)
        return window

    def drain(self, until: float | None = None) -> int:
        """Send spooled windows in order while the link is up (and, with `until`, a monotonic deadline, until then;
        without it until the stop); returns how many were acknowledged."""
        sent = 0

        def going() -> bool:
            return self._connected() and (not self._stop.is_set() if until is None else time.monotonic() < until)

        while going():
            batch = self.spool.peek(self.settings.send_batch)
            if not batch:
                break
            for seq, payload in batch:
                if not going() or not self._publish(payload):
                    self.sent += sent
                    return sent
                self.spool.ack(seq)
                sent += 1
        self.sent += sent
        return sent
