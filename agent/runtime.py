"""The agent process: MQTT link, reconciler, telemetry and serving wired together.

Threads: the MQTT network thread (paho; it only parses topics and queues work), one control thread (the
reconciler: verification, downloads, activation, reports) and one telemetry thread (windows and spool).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from agent.activation import EngineActivation
from agent.errors import AgentError, BundleError
from agent.hardware import capabilities
from agent.memory import MemoryBudget
from agent.mqtt import MqttLink
from agent.ports import ClusterPort, ServingPort
from agent.reconcile import Reconciler
from agent.settings import AgentSettings
from agent.spool import Spool
from agent.state import Stamps, WatchedBlobs
from agent.store import ModelStore
from agent.telemetry import Telemetry
from fleet.address import BrokerAddress
from fleet.bundle import DeviceBundle
from fleet.codec import encode
from fleet.errors import FleetError, InvalidTopic
from fleet.messages import AppliedModel, CommandAck, DeviceStatus, NodeInfo, ReportedState, Want
from fleet.signing import HubPublicKey, Verifier
from fleet.topics import TopicKind, Topics

log = logging.getLogger(__name__)

TICK_S = 0.1


class Agent:
    """One device's agent.

    Args:
        bundle: the bootstrap bundle (device id, broker account, pinned hub key, topic prefix).
        settings: agent settings (data directory, intervals, bounds).
        serving: the serving side (`agent.headless.HeadlessServing`, or the HTTP API's model slot).
        cluster: cluster mode's K3s adapter (None: single-device mode).
        clock: the device's wall clock (status stamps and the reconciler's times; tests turn it back).

    Raises:
        BundleError: the bundle's broker URL or hub key is unusable.
        SpoolError: the telemetry spool file is not a spool database (a full or read-only disk is retried).
    """

    def __init__(
        self,
        bundle: DeviceBundle,
        settings: AgentSettings,
        serving: ServingPort,
        cluster: ClusterPort | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bundle = bundle
        self.settings = settings
        self.serving = serving
        self.cluster = cluster
        self.clock = clock
        self.device_id = bundle.device_id
        self.topics = Topics(bundle.topic_prefix)
        self.session = uuid.uuid4().hex[:16]
        try:
            key = HubPublicKey.from_text(bundle.hub_public_key)
            address = BrokerAddress.parse(bundle.broker_url)
        except (FleetError, AgentError) as e:
            raise BundleError(f"bundle for {bundle.device_id}: {e}") from e
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(settings.data_dir / "store", create=True)
        self.spool = Spool(settings.data_dir / "telemetry.sqlite", settings.telemetry.spool_max_windows)
        self.ready = threading.Event()
        self.malformed = 0
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._stop = threading.Event()
        self._control: threading.Thread | None = None
        self._birth: DeviceStatus | None = None  # published on each connect, with that connect's time
        self._watched = WatchedBlobs(settings.data_dir / "watched.json")
        self._resumed = False
        self.heartbeat = time.monotonic()  # the control loop's last turn (the liveness probe reads it)
        # The birth and the last will of a connection carry the same time, that of its connect: the hub orders
        # a device's statuses by `ts`, then `offline` after `online` (`hub.store.reports`), so the will of a
        # connection replaces its birth, and the birth of the next connection (of this run or the next one)
        # replaces that will. The stamps never go back, even when the clock does (`Stamps`); nor do the seqs of
        # the reported states, which the hub orders by them.
        self._stamps = Stamps(settings.data_dir / "status.json", clock)
        self._connect_ts = clock()
        self.link = MqttLink(
            address,
            MqttLink.client_id_for(self.device_id, bundle.topic_prefix),
            username=bundle.mqtt_username,
            password=bundle.mqtt_password,
            will=self._will,
            settings=settings.link,
            on_message=self._on_message,
            on_connect=self._on_connect,
            ca_pem=bundle.ca_cert_pem,
        )
        self.reconciler = Reconciler(
            device_id=self.device_id,
            store=self.store,
            activation=EngineActivation(serving, self.store, warmup_runs=settings.activation.warmup_runs),
            verifier=Verifier(key, self.device_id),
            settings=settings,
            outbox=self,
            state_path=settings.data_dir / "state.json",
            cluster=cluster,
            # in cluster mode the models run in pods of their own: the control agent checks one at a time
            memory=None if cluster is not None else MemoryBudget.from_settings(settings.activation),
            clock=clock,
            stamps=self._stamps,
        )
        self.telemetry = Telemetry(
            self.device_id,
            serving,
            self.spool,
            settings.telemetry,
            publish=lambda payload: self.link.publish(self.topics.telemetry(self.device_id), payload, wait=True),
            connected=lambda: self.link.connected,
            active=self._active_models,
        )

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Serve the stored model, then connect, subscribe and start the control and telemetry threads."""
        self.reconciler.restore()
        self._birth = self._make_birth()
        if self.cluster is not None:  # the birth again whenever nodes, GPUs or MIG slices change
            self.cluster.watch_inventory(self._inventory_changed)
        self.link.subscribe(self.topics.desired(self.device_id), 1)
        self.link.subscribe(self.topics.cmd(self.device_id), 1)
        self._control = threading.Thread(target=self._run_control, name="agent-control", daemon=True)
        self._control.start()
        self.link.start()
        self.telemetry.start()

    def stop(self) -> None:
        """Stop threads, persist download progress, publish `offline` and disconnect."""
        self.telemetry.stop()
        self._stop.set()
        if self._control is not None:
            self._control.join(timeout=30)
        self.reconciler.close()
        stopped = self._stamps.status_ts()  # after this connection's birth, whatever the clock
        offline = DeviceStatus(device_id=self.device_id, state="offline", ts=stopped, session=self.session)
        self.link.stop(final=(self.topics.status(self.device_id), encode(offline)))
        self.spool.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()

    def run_forever(self) -> None:
        """Start, block until SIGINT or SIGTERM, then stop (the CLI's `agent run`)."""
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        try:
            while not done.wait(0.5):
                pass
        finally:
            self.stop()

    def wait_ready(self, timeout: float) -> bool:
        """Block until the stored model (if any) serves and the link is up."""
        return self.ready.wait(timeout)

    def _active_models(self) -> dict[str, AppliedModel]:
        return self.reconciler.active_models()

    def _inventory_changed(self, nodes: list[NodeInfo]) -> None:
        birth = self._make_birth(nodes)
        if self._birth is not None and birth.capabilities == self._birth.capabilities:
            return
        self._birth = birth
        log.info("cluster inventory changed (%d nodes): publishing the birth again", len(nodes))
        if self.link.connected:
            self._publish_birth()

    def _will(self) -> tuple[str, bytes]:
        """The last will registered before each connect: `offline`, stamped with this connect's time."""
        # later than the previous connect's (of this run or an earlier one), even if the clock stepped back:
        # this connect's birth must follow the previous connection's will, which carries the previous stamp
        self._connect_ts = self._stamps.status_ts()
        offline = DeviceStatus(device_id=self.device_id, state="offline", ts=self._connect_ts, session=self.session)
        return self.topics.status(self.device_id), encode(offline)

    def _make_birth(self, nodes: list[NodeInfo] | None = None) -> DeviceStatus:
        if nodes is None:
            nodes = []
            if self.cluster is not None:
                try:
                    nodes = self.cluster.inventory()
                except Exception as e:  # the birth goes out without nodes; the error is logged
                    log.warning("cluster inventory failed: %s", e)
        caps = capabilities(self.store.root, mode="k3s" if self.cluster else "single", nodes=nodes)
        return DeviceStatus(
            device_id=self.device_id, state="online", ts=self._connect_ts, session=self.session,
            labels=dict(self.bundle.labels), capabilities=caps,
        )  # fmt: skip

    # -- control thread ---------------------------------------------------------------------------------
    def _run_control(self) -> None:
        r = self.reconciler
        next_tick = time.monotonic() + TICK_S
        resume_by = time.monotonic() + self.settings.link.connect_timeout_s
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                event = self._events.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                event = None
            try:
                if event is not None:
                    self._dispatch(event)
                if not self._resumed and time.monotonic() >= resume_by:
                    self._resume()  # offline for long: carry on without the broker
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    r.tick()
            except Exception:  # the control loop never dies; the error is logged and the next event runs
                log.exception("control loop error on %s", event[0] if event else "tick")

    def _dispatch(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        r = self.reconciler
        if kind == "chunk":
            r.on_chunk(event[1], event[2])
        elif kind == "desired":
            r.on_desired(event[1])
        elif kind == "cmd":
            r.on_command(event[1])
        elif kind == "drop_stale":
            self._drop_stale_subscriptions()
        elif kind == "connected":
            r.on_connected()
            self.ready.set()
            if not self._resumed:
                self._resume()

    def _resume(self) -> None:
        """Resume the accepted desired state once: after the first connect reported the restored model."""
        self._resumed = True
        self.reconciler.resume()

    # -- network thread -----------------------------------------------------------------------------------
    def _on_connect(self) -> None:
        self._publish_birth()
        self._events.put(("drop_stale",))
        self._events.put(("connected",))
        self.telemetry.kick()

    def _publish_birth(self) -> None:
        if self._birth is not None:
            birth = self._birth.model_copy(update={"ts": self._connect_ts})
            self.link.publish(self.topics.status(self.device_id), encode(birth), retain=True)

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            parsed = self.topics.parse(topic)
        except InvalidTopic:
            self.malformed += 1
            return
        if parsed.kind is TopicKind.CHUNK:
            self._events.put(("chunk", parsed.sha256, payload))
        elif parsed.kind is TopicKind.DESIRED and parsed.device_id == self.device_id:
            self._events.put(("desired", payload))
        elif parsed.kind is TopicKind.CMD and parsed.device_id == self.device_id:
            self._events.put(("cmd", payload))
        else:
            self.malformed += 1

    # -- Outbox (called on the control thread) ------------------------------------------------------------
    def report(self, state: ReportedState) -> None:
        """Publish the reported state, retained (dropped while offline: the next connect reports again)."""
        self.link.publish(self.topics.reported(self.device_id), encode(state), retain=True)

    def want(self, want: Want) -> bool:
        """Publish a want for missing chunks."""
        return self.link.publish(self.topics.want(want.sha256), encode(want))

    def watch_blob(self, sha256: str) -> None:
        """Subscribe to the chunks of a blob (remembered on disk: the broker session outlives this run)."""
        self._watched.add(sha256)
        self.link.subscribe(self.topics.chunk(sha256), 1)

    def unwatch_blob(self, sha256: str) -> None:
        """Unsubscribe from the chunks of a blob."""
        self._watched.discard(sha256)
        self.link.unsubscribe(self.topics.chunk(sha256))

    def _drop_stale_subscriptions(self) -> None:
        """Unsubscribe chunk topics an earlier run left in the persistent session (its download ended)."""
        for sha in self._watched.take_stale(self.reconciler.needed_blobs()):
            self.link.unsubscribe(self.topics.chunk(sha), force=True)

    def ack(self, ack: CommandAck) -> None:
        """Publish a command acknowledgement."""
        self.link.publish(self.topics.cmd_ack(self.device_id), encode(ack))
