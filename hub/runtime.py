"""The `Hub` runtime: store, signing key, broker, MQTT link, ingestion, chunk serving and services.

Used in-process by tests and by `edgefleet hub serve`. The REST API and the dashboard reach its services
through `hub.services.HubServices` (`views` is their read side); only the hub's own parts touch `store`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from fleet.bundle import DeviceBundle
from fleet.messages import CommandAck
from fleet.signing import HubSigningKey
from fleet.topics import TopicKind, Topics, spec
from hub.acl import hub_account
from hub.audit import AuditLog
from hub.auth import Auth
from hub.backup import restored_from
from hub.broker import LocalBroker
from hub.deploy import Deployer
from hub.devices import Devices
from hub.errors import Conflict, NotInitialised
from hub.ingest import Ingestor
from hub.leadership import Leadership
from hub.lock import DataDirLock
from hub.mqtt import BoundedPublisher, HubLink
from hub.registry import Registry
from hub.rollouts.engine import RolloutEngine
from hub.security import HubSecurity
from hub.sessions import AdoptionStats, SessionAdoption
from hub.settings import HubSettings
from hub.store import SqlStore, TelemetryJournal, open_store
from hub.telemetry import TelemetryQueries
from hub.transfer import ChunkServer
from hub.views import FleetViews

log = logging.getLogger(__name__)
_SUBSCRIBED = (TopicKind.STATUS, TopicKind.TELEMETRY, TopicKind.CMD_ACK)
# QoS by kind while following and while leading (None: not subscribed); see Hub._on_leadership
_BY_LEADERSHIP: dict[TopicKind, tuple[int | None, int]] = {TopicKind.REPORTED: (0, 1), TopicKind.WANT: (None, 1)}


def init_hub(settings: HubSettings, *, admin_name: str = "admin") -> str:
    """Create the data directory, database, signing key and the first admin token (returned, shown once).

    Raises Conflict when the directory already holds a hub.
    """
    if settings.key_path.exists():
        raise Conflict(f"{settings.data_dir} already holds a hub (its signing key exists)")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # init writes no telemetry: a writer thread, not a writer process (whose start-up imports took 1-2 s)
    store = open_store(settings.database, telemetry_process=False)
    try:
        HubSigningKey.generate().save(settings.key_path)
        store.set_meta("instance_id", uuid.uuid4().hex[:16])
        token = Auth(store).create_token(admin_name, "admin", actor="hub init")
        hub_account(settings.data_dir)  # the hub's own broker account (full rights under the prefix)
        store.add_event(time.time(), "hub init", "hub.init", "hub", {"data_dir": str(settings.data_dir)})
    finally:
        store.close()
    return token


class Hub:
    """One hub process. `start()` brings everything up; `stop()` takes it down in reverse order."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.api_url: str | None = settings.api.public_url
        self.local_broker: LocalBroker | None = None
        self.link: HubLink | None = None
        self.sessions: SessionAdoption | None = None  # replicas (a shared group) only
        self._enrolled: set[str] = set()
        self._stop = threading.Event()
        self._running = contextlib.ExitStack()  # what start() brought up, each stop registered as it started
        self.started = False
        self.acks: list[CommandAck] = []

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the store, start (or reach) the broker, connect and start serving. NotInitialised without init."""
        s = self.settings
        if not s.key_path.exists() or (s.database_url is None and not s.db_path.exists()):
            raise NotInitialised(f"{s.data_dir} holds no hub: run `edgefleet hub init` first")
        lock = DataDirLock(s.data_dir)  # one hub (per replica name) on a data dir: see hub.lock
        replica = s.broker.replica
        name = f"hub-{replica}" if replica else "hub"
        lock.acquire(name, f"as replica {replica}" if replica else "")
        self._running.callback(lock.release)  # released when everything else has stopped
        try:
            if s.broker.url is None:
                lock.acquire("broker", "with the local broker")
            self.key = HubSigningKey.load(s.key_path)
            self.store: SqlStore = open_store(
                s.database, max_batch=s.ingest.max_batch, max_queue=s.ingest.max_queue,
                max_delay_s=s.ingest.max_delay_s, telemetry_process=s.ingest.telemetry_process,
                # 3.1.1 acknowledges windows on receipt: they wait on disk (5 acknowledges once stored: the
                # journal only gives back what a 3.1.1 process left); the lock keeps it this process's own
                journal=TelemetryJournal(s.journal_dir / name, enabled=s.broker.mqtt_version == "3.1.1"),
            )  # fmt: skip
            self._running.callback(self.store.close)  # then the store: queued writes are flushed
            self._start_services()
        except BaseException:
            self.stop()
            raise
        self.started = True

    def _client_id(self) -> str:
        """One broker session per hub process: replicas sharing a store (and so an instance id) add their name."""
        b = self.settings.broker
        replica = b.replica or (socket.gethostname() if b.shared_group else None)
        return f"edgefleet-hub-{self.instance_id}" + (f"-{replica}" if replica else "")

    def _own_instance_id(self) -> str:
        """The instance id in the store; a new one (kept in the store) when there is none, or when this data
        directory is a restored backup whose database still holds the id of the hub it was copied from: started
        beside that hub on one broker, the copy would take over its sessions (same client ids) and each would
        kick the other off at every reconnect."""
        stored = self.store.get_meta("instance_id")
        source = restored_from(self.settings.data_dir)
        if stored is not None and (source is None or source[0] != stored):
            return stored
        new = uuid.uuid4().hex[:16]
        self.store.set_meta("instance_id", new)
        if stored is not None and source is not None:
            log.warning(
                "hub: %s is a restored backup (taken %s) of hub instance %s: this hub takes the new instance id %s "
                "(broker client id edgefleet-hub-%s), so it never takes over the sessions of the hub it was copied "
                "from", self.settings.data_dir, source[1], stored, new, new,
            )  # fmt: skip
            details = {"instance_id": new, "backup_of": stored, "backup_taken_at": source[1]}
            self.store.add_event(time.time(), "hub", "hub.restored", "hub", details)
        return new

    def _subscription(self, kind: TopicKind) -> str:
        """Telemetry, the bulk, is shared among replicas ($share: each window reaches one). Births, reports and
        acks reach every replica: they are few and every replica applies them idempotently (a report older than
        the stored one is ignored). A replica that a partition cut off from the broker holds only its share of
        telemetry, never a device's report, until the broker gives its session up. Wants reach the leader
        alone (only its chunk server answers them)."""
        group = self.settings.broker.shared_group if kind is TopicKind.TELEMETRY else None
        return self.topics.subscription(kind, shared_group=group)

    def _start_services(self) -> None:
        s = self.settings
        self.instance_id = self._own_instance_id()
        # the holder is the replica's broker identity: unique among live replicas (the broker allows one session
        # per client id), and the same after a restart, so a restarted lone hub takes its lease back at once
        self.leadership = Leadership(
            self.store, holder=self._client_id(), lease_s=s.leader.lease_s, renew_s=s.leader.renew_s,
            on_change=self._on_leadership,
        )  # fmt: skip
        self.security = HubSecurity(s, self.store)
        self._enrolled = {d.id for d in self.store.list_devices()} - self.security.revoked()
        self.auth = Auth(self.store)
        self.audit = AuditLog(self.store)
        self.views = FleetViews(self.store, s.devices)
        self.registry = Registry(
            self.store, s.blob_dir, s.tmp_dir, chunk_size=s.transfer.chunk_size, chunking=s.transfer.chunking
        )
        self.registry.cleanup_tmp()
        self.registry.share_local_blobs()  # replicas on other hosts serve blobs pushed before the store kept them
        self.registry.missing_blobs()  # said at start: a blob set aside as corrupt waits for a push of its file
        self.devices = Devices(self.store, s.devices, bundle_fields=self._bundle_fields, on_enrolled=self._on_enrolled)
        self.telemetry = TelemetryQueries(self.store)
        if s.broker.url is None:
            self.local_broker = LocalBroker(s.broker, s.broker_dir, **self.security.local_broker_options())
            self.security.set_reload(self.local_broker.reload)
            self.local_broker.start()
            self._running.callback(self.local_broker.stop)
            self.broker_url = self.local_broker.url
            link_url = self.local_broker.hub_url
        else:
            self.broker_url = link_url = s.broker.url
        subscriptions: list[tuple[str, int | None]] = [(self._subscription(k), 1) for k in _SUBSCRIBED]
        subscriptions += [(self._subscription(k), following) for k, (following, _) in _BY_LEADERSHIP.items()]
        user, password = self.security.link_credentials()

        def connect(client_id: str, on_connect: Callable[[], None] | None = None, hold: bool = True) -> HubLink:
            return HubLink(
                link_url, client_id=client_id, on_message=self._on_message, on_connect=on_connect,
                subscriptions=[(topic, qos if hold else None) for topic, qos in subscriptions],
                mqtt_version=s.broker.mqtt_version, username=user, password=password,
                keepalive_s=s.broker.keepalive_s, ca_pem=self.security.ca_pem,
            )  # fmt: skip

        self.link = link = connect(self._client_id(), self._on_connect)
        if s.broker.shared_group:  # a stopped replica's session would hold the group's share of telemetry
            self.sessions = SessionAdoption(
                self.store, client_id=self._client_id(), leading=lambda: self.leadership.is_leader,
                connect=lambda client_id: connect(client_id, hold=False),  # resumes it, holding no subscription
                lease_s=s.leader.lease_s, renew_s=s.leader.renew_s,
            )  # fmt: skip
        self.store.on_telemetry_committed(self._release)  # a window is acknowledged to the broker once stored
        # a chunk not delivered within chunk_expiry_s is dropped (MQTT 5): none waits for a device gone offline
        chunk_pub = BoundedPublisher(link, s.transfer.max_inflight, expiry_s=s.transfer.chunk_expiry_s)
        chunk_qos = spec(TopicKind.CHUNK).qos
        self.chunks = ChunkServer(
            self.store, self.registry.local_blob, self.topics,
            lambda topic, frame: chunk_pub.publish(topic, frame, qos=chunk_qos), s.transfer,
            set_aside=self.registry.set_aside,
        )  # fmt: skip
        self.deployer = Deployer(
            self.store, self.key, self.topics,
            lambda topic, payload, qos, retain: link.publish(topic, payload, qos=qos, retain=retain),
            s.devices, registry=self.registry, devices=self.devices,
        )  # fmt: skip
        self.ingest = Ingestor(
            self.store, self.topics, is_enrolled=self.is_enrolled, chunk_server=self.chunks,
            max_message_bytes=s.ingest.max_message_bytes, on_ack=self._on_ack,
            allow_telemetry=self.security.allow_telemetry, leading=lambda: self.leadership.is_leader,
        )  # fmt: skip
        self.rollouts = RolloutEngine(
            self.store, self.registry, self.deployer, s.rollouts, s.devices, leader=lambda: self.leadership.fence
        )
        self.leadership.start()
        self._running.callback(self.leadership.stop)  # after rollouts, MQTT and chunks: releases the lease
        self.chunks.start()
        self._running.callback(self.chunks.stop)
        link.start(timeout=s.broker.connect_timeout_s)
        self._running.callback(link.stop)
        if self.sessions is not None:
            self.sessions.start()
            self._running.callback(self.sessions.stop)
        self.rollouts.start()
        self._running.callback(self.rollouts.stop)
        maintenance = threading.Thread(target=self._maintain, name="hub-maintenance", daemon=True)
        maintenance.start()
        self._running.callback(maintenance.join, 10)

    def stop(self) -> None:
        """Stop what `start` brought up, in reverse order: maintenance, rollouts, MQTT, chunk server, local
        broker, store (queued writes are flushed). Safe after a failed or partial start, and twice."""
        self._stop.set()
        self._running.close()
        self.started = False

    def __enter__(self) -> Hub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- callbacks ----------------------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> int | None:
        return self.ingest.handle(topic, payload)

    def _release(self, ticket: int) -> None:
        if self.link is not None:
            self.link.release(ticket)
        if self.sessions is not None:
            self.sessions.release(ticket)

    def _on_connect(self) -> None:
        # off paho's thread: republishing takes the deployer's lock, which an API call may hold while it
        # publishes through paho
        threading.Thread(target=self._republish, name="hub-republish", daemon=True).start()

    def _on_leadership(self, leading: bool) -> None:
        # Wants go to the leader alone: a follower that heard them only counted and dropped them (a few per
        # device per blob, in bursts during a rollout, on cores the rollout itself needs). A new leader misses
        # the wants sent before its subscription: so did the old follower that dropped them; their agents want
        # again after `download.rewant_after_s` without a chunk. `Ingestor` still drops a want that reaches a
        # replica not leading (a subscription not yet taken back), so leading is decided in one place.
        # Reports reach a follower at QoS 0: it drops most of them (download progress is the leader's), and at
        # QoS 1 each cost it and the broker an acknowledgement, and the broker an in-flight slot. What a follower
        # misses at QoS 0 (a broker dropping QoS 0 under load; its own reconnect) the leader received at QoS 1
        # and writes; a follower taking the lease subscribes at QoS 1 again, which brings it every device's
        # retained report, so a leader cut off with reports in its queue holds none back past the handover.
        if self.link is not None:
            for kind, (following, as_leader) in _BY_LEADERSHIP.items():
                self.link.hold(self._subscription(kind), as_leader if leading else following)
        # A new leader publishes every stored desired state again: its predecessor may have recorded states it
        # never got to publish (cut off or killed between the commit and the publish). Same versions, same
        # bodies: agents that have them ignore them.
        if leading and self.link is not None and self.link.connected:
            threading.Thread(target=self._republish, name="hub-republish", daemon=True).start()

    def _republish(self) -> None:
        try:
            self.deployer.upgrade_stored()  # states a hub of schema 1 signed: re-signed once, published below
            n = self.deployer.republish_all()
        except Exception:
            log.exception("hub: republishing desired states failed")
            return
        if n:
            log.info("hub: republished %d desired states after connecting", n)

    def _on_enrolled(self, device_ids: list[str]) -> None:
        self._enrolled.update(device_ids)
        self.security.enrolled(device_ids)

    def revoke_device(self, device_id: str, *, actor: str) -> bool:
        """Revoke a device: its broker account goes (the broker reloads) and its messages are refused."""
        changed = self.security.revoke(device_id, actor=actor)
        self._enrolled.discard(device_id)
        return changed

    def rekey_device(self, device_id: str, *, actor: str) -> DeviceBundle:
        """New broker credentials for an enrolled device (its bundle was lost, or the hardware replaced).

        The new password hash is stored first, then the broker's accounts are rewritten and reloaded: the old
        password is refused from then on and a session made with it is closed. A revoked device is admitted
        again (a rekey is how an operator says the device is trusted again). Labels, desired state, telemetry
        and rollouts stay. NotFound for an unknown id.
        """
        readmitting = device_id in self.security.revoked()
        _device, bundle = self.devices.rekey(device_id, actor=actor, readmitted=readmitting)
        self.security.readmit(device_id)
        self._enrolled.add(device_id)
        return bundle

    def _on_ack(self, ack: CommandAck) -> None:
        self.acks = [*self.acks[-999:], ack]

    def _bundle_fields(self) -> dict[str, Any]:
        return {
            "broker_url": self.settings.broker.public_url or self.broker_url,
            "topic_prefix": self.settings.topic_prefix,
            "hub_public_key": self.key.public.to_text(),
            "api_url": self.api_url,
            "ca_cert_pem": self.security.ca_pem,
        }

    def _maintain(self) -> None:
        r = self.settings.retention
        while not self._stop.wait(r.sweep_interval_s):
            if not self.leadership.is_leader:
                continue  # retention and re-signing are the leader's
            try:
                now = time.time()
                self.store.sweep(
                    raw_before=now - r.telemetry_raw_s, rollup_before=now - r.rollup_s,
                    raw_max_rows=r.telemetry_raw_max_rows,
                )  # fmt: skip
                self.deployer.refresh_expiring(now=now)
            except Exception:
                log.exception("hub: maintenance failed; retrying at the next interval")

    # -- status -------------------------------------------------------------------------------------
    @property
    def mqtt_connected(self) -> bool:
        return self.link is not None and self.link.connected

    @property
    def mqtt_unacknowledged(self) -> int:
        """Messages received and not yet acknowledged to the broker (telemetry waits until it is stored)."""
        return 0 if self.link is None else self.link.unacknowledged

    @property
    def sessions_adopted(self) -> AdoptionStats:
        """Broker sessions of stopped replicas this replica took over (hub.sessions)."""
        return AdoptionStats() if self.sessions is None else self.sessions.stats

    def is_enrolled(self, device_id: str) -> bool:
        """Known and not revoked. A miss asks the store once more: another replica may have enrolled it."""
        if device_id in self._enrolled:
            return True
        if self.store.get_device(device_id) is None or device_id in self.security.revoked():
            return False
        self._enrolled.add(device_id)
        return True
