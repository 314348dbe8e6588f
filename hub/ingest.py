"""Ingestion of status/birth, reported state, telemetry, wants and command acks from the MQTT link.

`Ingestor.handle(topic, payload)` runs on the MQTT thread: it parses the topic, refuses oversized,
malformed or foreign messages (counted by kind and reason, logged with a rate limit, never raised), and
queues good ones for the store's writer, which writes them in batches.

A message of a newer agent, with a field or a value this hub does not know (a birth whose capabilities gained
a field, a reported state with a new phase) or another schema version, is refused whole, counted under its
own reason (`unknown_content`, `unsupported_schema`; `fleet.errors.refusal_reason`) and logged with the field:
the hub keeps the device's last good status and report rather than guess at half of one. Hubs are upgraded
before their agents (README); the counter shows at once an agent that came first.

A status or report whose device timestamps lie more than `CLOCK_SKEW_S` ahead of the hub's clock is taken
with those timestamps set back to that bound (`clamped`; counted by kind in `snapshot().clamped`), not refused: they
order a device's messages, and a stamp from a clock that was once far ahead stays in the agent's stamp file
and its activation times, so refusing it hid a device (offline, old models) long after its clock was put
right. Set back, a stamp from the future wins over genuine ones for at most `CLOCK_SKEW_S`, as before.

Telemetry, the bulk of the traffic, goes undecoded to the store's telemetry writer (`Store.submit_telemetry`,
a process or a thread: `hub.store.telemetry_writer`): this thread checks topic, size, enrolment and the
per-device rate limit; the writer decodes, refuses malformed and foreign windows and writes the rest. Its
counts are merged into `accepted` and `rejected`, so every refusal is reported the same way.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple, overload

from fleet.codec import decode
from fleet.errors import InvalidTopic, MessageError, refusal_reason
from fleet.limits import CLOCK_SKEW_S, too_far_ahead
from fleet.messages import AppliedModel, CommandAck, DeviceStatus, ErrorInfo, ReportedState, Want
from fleet.topics import ParsedTopic, TopicKind, Topics
from hub.store import Store
from hub.transfer import ChunkServer
from infra.logthrottle import log_sampled

log = logging.getLogger(__name__)
_PARSE_CACHE = 100_000


def timestamps(msg: DeviceStatus | ReportedState) -> tuple[float | None, ...]:
    """Every device clock reading in a message (the ones `clamped` sets back; telemetry windows are checked by
    the telemetry writer, which decodes them, and refused when ahead: their times are the data)."""
    if isinstance(msg, DeviceStatus):
        return (msg.ts,)
    applied = [a for m in msg.models for a in (m.active, m.previous, m.shadow) if a is not None]
    errors = [e.at for e in (msg.error, *(m.error for m in msg.models)) if e is not None]
    return (msg.ts, *errors, *(a.activated_at for a in applied))


@overload
def clamped(msg: DeviceStatus, latest: float) -> DeviceStatus: ...
@overload
def clamped(msg: ReportedState, latest: float) -> ReportedState: ...
def clamped(msg: DeviceStatus | ReportedState, latest: float) -> DeviceStatus | ReportedState:
    """`msg` with every timestamp `timestamps` reads that lies after `latest` set to `latest`."""

    def at(ts: float) -> float:
        return min(ts, latest)

    def error(e: ErrorInfo | None) -> ErrorInfo | None:
        return None if e is None else e.model_copy(update={"at": at(e.at)})

    def applied(a: AppliedModel | None) -> AppliedModel | None:
        if a is None or a.activated_at is None:
            return a
        return a.model_copy(update={"activated_at": at(a.activated_at)})

    if isinstance(msg, DeviceStatus):
        return msg.model_copy(update={"ts": at(msg.ts)})
    models = [
        m.model_copy(
            update={
                "error": error(m.error),
                "active": applied(m.active),
                "previous": applied(m.previous),
                "shadow": applied(m.shadow),
            }
        )
        for m in msg.models
    ]
    return msg.model_copy(update={"ts": at(msg.ts), "error": error(msg.error), "models": models})


class IngestCounts(NamedTuple):
    """What the ingestor did since the hub started (`Ingestor.snapshot`)."""

    accepted: dict[str, int]  # kind -> messages taken (telemetry: written or queued by the telemetry writer)
    rejected: dict[tuple[str, str], int]  # (kind, reason) -> messages refused
    clamped: dict[str, int]  # kind -> messages taken with device timestamps set back to CLOCK_SKEW_S ahead


class Ingestor:
    """Turns MQTT messages into store writes and chunk wants; counts everything it accepts or refuses."""

    def __init__(
        self,
        store: Store,
        topics: Topics,
        *,
        is_enrolled: Callable[[str], bool],
        chunk_server: ChunkServer,
        max_message_bytes: int,
        on_ack: Callable[[CommandAck], None] | None = None,
        allow_telemetry: Callable[[str], bool] | None = None,
        leading: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.topics = topics
        self.is_enrolled = is_enrolled
        self.chunk_server = chunk_server
        self.max_message_bytes = max_message_bytes
        self.on_ack = on_ack
        self.allow_telemetry = allow_telemetry  # a per-device rate limit (hub.security)
        self.leading = leading  # whether this replica serves chunks (hub.leadership); None: always
        self.followed = 0  # wants and download-progress reports left to the leader (this replica follows)
        self._accepted: Counter[str] = Counter()
        self._rejected: Counter[tuple[str, str]] = Counter()
        self._clamped: Counter[str] = Counter()  # by kind: taken with timestamps set back (`clamped`)
        self._parsed: dict[str, ParsedTopic] = {}  # topic strings repeat: parse each once

    def _reject(self, kind: str, reason: str, topic: str, detail: str = "") -> None:
        key = (kind, reason)
        self._rejected[key] += 1
        n = self._rejected[key]
        if log_sampled(n):
            log.warning("ingest: refused %s message on %s (%s, #%d): %s", kind, topic[:200], reason, n, detail[:300])

    def handle(self, topic: str, payload: bytes) -> int | None:
        """Process one message. Never raises: whatever goes wrong is counted as that message's fault.

        Returns the telemetry writer's ticket for a window it took (`Store.on_telemetry_committed` says when it is
        written, and the link acknowledges it to the broker then), or None: done with the message now.
        """
        try:
            return self._handle(topic, payload)
        except Exception as e:  # a bug or a case nobody foresaw: refuse this message, keep the loop going
            self._reject("unknown", "internal_error", topic, f"{type(e).__name__}: {e}")
            return None

    def _handle(self, topic: str, payload: bytes) -> int | None:
        parsed = self._parsed.get(topic)
        if parsed is None:
            try:
                parsed = self.topics.parse(topic)
            except InvalidTopic as e:
                self._reject("unknown", "bad_topic", topic, str(e))
                return None
            if len(self._parsed) >= _PARSE_CACHE:
                self._parsed.clear()
            self._parsed[topic] = parsed
        kind = parsed.kind
        if len(payload) > self.max_message_bytes:
            self._reject(kind.value, "oversized", topic, f"{len(payload)} bytes")
            return None
        if not payload:
            return None  # a cleared retained message
        if kind is TopicKind.TELEMETRY and parsed.device_id is not None:
            return self._telemetry(topic, parsed.device_id, payload)
        now = time.time()
        try:
            if kind is TopicKind.STATUS:
                self._device_msg(kind, topic, parsed.device_id, decode(payload, DeviceStatus), now)
            elif kind is TopicKind.REPORTED:
                self._device_msg(kind, topic, parsed.device_id, decode(payload, ReportedState), now)
            elif kind is TopicKind.WANT:
                want = decode(payload, Want)
                if want.sha256 != parsed.sha256:
                    self._reject(kind.value, "foreign", topic, "want names another blob than its topic")
                elif not self.is_enrolled(want.device_id):
                    self._reject(kind.value, "unknown_device", topic, want.device_id)
                elif self.leading is not None and not self.leading():
                    self.followed += 1  # only the leader subscribes to wants; this one heard it while changing
                elif self.chunk_server.want(want):
                    self._accepted[kind.value] += 1
                else:
                    self._reject(kind.value, "unknown_blob", topic, want.sha256)
            elif kind is TopicKind.CMD_ACK:
                ack = decode(payload, CommandAck)
                if ack.device_id != parsed.device_id:
                    self._reject(kind.value, "foreign", topic, "device id differs from the topic")
                    return None
                self._accepted[kind.value] += 1
                if self.on_ack is not None:
                    self.on_ack(ack)
            else:
                self._reject(kind.value, "unexpected_topic", topic, "the hub does not consume this topic")
        except MessageError as e:  # `unknown_content`, `unsupported_schema`: a newer agent (upgrade the hub first)
            self._reject(kind.value, refusal_reason(e), topic, str(e))
        return None

    def _telemetry(self, topic: str, device_id: str, payload: bytes) -> int | None:
        """Checks that need the hub's state; decoding and the foreign check happen in the telemetry writer."""
        if not self.is_enrolled(device_id):
            self._reject("telemetry", "unknown_device", topic, device_id)
        elif self.allow_telemetry is not None and not self.allow_telemetry(device_id):
            self._reject("telemetry", "rate_limited", topic, "telemetry flood: the device's rate limit is spent")
        else:
            ticket = self.store.submit_telemetry(device_id, payload, time.time())
            if ticket is None:
                self._reject("telemetry", "queue_full", topic, "the telemetry writer is behind")
            return ticket
        return None

    def _device_msg(
        self, kind: TopicKind, topic: str, device_id: str | None, msg: DeviceStatus | ReportedState, now: float
    ) -> None:
        if msg.device_id != device_id:
            self._reject(kind.value, "foreign", topic, f"payload names device {msg.device_id!r}")
            return
        if not self.is_enrolled(msg.device_id):
            self._reject(kind.value, "unknown_device", topic, msg.device_id)
            return
        ahead = max((t for t in timestamps(msg) if t is not None), default=0.0)
        if too_far_ahead(ahead, now):
            msg = clamped(msg, now + CLOCK_SKEW_S)
            self._clamped[kind.value] += 1
            n = self._clamped[kind.value]
            if log_sampled(n):
                log.warning("ingest: %s from %s stamped %.0fs ahead of the hub's clock, taken with its timestamps set "
                            "back to %.0fs ahead (#%d): check the device's clock", kind.value, msg.device_id,
                            ahead - now, CLOCK_SKEW_S, n)  # fmt: skip
        if isinstance(msg, DeviceStatus):
            ok = self.store.enqueue_status(msg, now)
        elif msg.download is not None and self.leading is not None and not self.leading():
            # Download progress, most of a rollout's reports (~65 per device for a 16 MiB model): the leader
            # stores it and paces its chunk server with it; every replica writing every one of them doubled the
            # report work of a rollout with two replicas. Reports that carry no transfer (phase changes,
            # activations, errors) are still written by every replica, so a cut-off leader delays none of them.
            self.followed += 1
            return
        else:
            ok = self.store.enqueue_reported(msg, now)
            self.chunk_server.progress(msg.device_id, msg.download)  # paces the chunk server
        if ok:
            self._accepted[kind.value] += 1
        else:
            self._reject(kind.value, "queue_full", topic, "the store's writer is behind")

    @property
    def accepted(self) -> Counter[str]:
        """Accepted messages by kind (a copy)."""
        return Counter(self.snapshot().accepted)

    @property
    def rejected(self) -> Counter[tuple[str, str]]:
        """Refused messages by (kind, reason) (a copy)."""
        return Counter(self.snapshot().rejected)

    @property
    def rejected_total(self) -> int:
        return sum(self.snapshot().rejected.values())

    def snapshot(self) -> IngestCounts:
        """Copies of the accepted, rejected and clamped counters, safe to take from any thread."""
        accepted: dict[str, int] = {}
        rejected: dict[tuple[str, str], int] = {}
        clamped_by_kind: dict[str, int] = {}
        for _ in range(10):
            try:  # the MQTT thread may add a key while we copy
                accepted, rejected, clamped_by_kind = dict(self._accepted), dict(self._rejected), dict(self._clamped)
                break
            except RuntimeError:
                continue
        st = self.store.ingest_stats()  # what the telemetry writer decided, and rows a writer could not write
        if st.rows_refused:
            rejected[("message", "unwritable")] = st.rows_refused
        for key, n in (
            ("malformed", st.telemetry_malformed), ("unknown_content", st.telemetry_unknown_content),
            ("unsupported_schema", st.telemetry_unsupported_schema), ("foreign", st.telemetry_foreign),
            ("clock_ahead", st.telemetry_clock_ahead),
        ):  # fmt: skip
            if n:
                rejected[("telemetry", key)] = rejected.get(("telemetry", key), 0) + n
        if st.telemetry_accepted:
            accepted["telemetry"] = accepted.get("telemetry", 0) + st.telemetry_accepted
        return IngestCounts(accepted, rejected, clamped_by_kind)
