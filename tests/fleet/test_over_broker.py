"""Every message type and a chunk frame survive a trip through a real Mosquitto unchanged."""

from __future__ import annotations

from pathlib import Path

from fleet.chunks import ChunkReceiver, iter_frames
from fleet.codec import decode, decode_any, encode
from fleet.messages import SignedEnvelope, Wire
from fleet.plan import plan_file
from fleet.topics import Topics
from tests.fleet.samples import BLOB, all_messages
from tests.support.broker import Broker
from tests.support.mqtt import TestClient


def test_every_message_type_round_trips_through_mosquitto(broker: Broker, topic_prefix: str) -> None:
    topics = Topics(topic_prefix)
    rx = TestClient(broker.host, broker.port)
    tx = TestClient(broker.host, broker.port)
    rx.subscribe(f"{topic_prefix}/#")
    sent: list[Wire] = all_messages()
    for message in sent:
        tx.publish(topics.reported("cam-001"), encode(message))
    received = [decode_any(bytes(rx.get().payload)) for _ in sent]
    assert received == sent
    for message in sent:
        assert decode(encode(message), type(message)) == message
    rx.close()
    tx.close()


def test_retained_desired_state_reaches_a_late_subscriber(broker: Broker, topic_prefix: str) -> None:
    topics = Topics(topic_prefix)
    desired = next(m for m in all_messages() if isinstance(m, SignedEnvelope))
    tx = TestClient(broker.host, broker.port)
    tx.publish(topics.desired("cam-001"), encode(desired), retain=True)
    late = TestClient(broker.host, broker.port)
    late.subscribe(topics.desired("cam-001"))
    msg = late.get()
    assert msg.retain and decode_any(bytes(msg.payload)) == desired
    tx.publish(topics.desired("cam-001"), b"", retain=True)  # clear
    tx.close()
    late.close()


def test_chunk_frames_reassemble_through_mosquitto(broker: Broker, topic_prefix: str, tmp_path: Path) -> None:
    topics = Topics(topic_prefix)
    path = tmp_path / "blob"
    path.write_bytes(BLOB)
    manifest = plan_file(path, 64 * 1024)
    rx = TestClient(broker.host, broker.port)
    rx.subscribe(topics.chunk(manifest.sha256))
    tx = TestClient(broker.host, broker.port)
    for frame in iter_frames(path, manifest):
        tx.publish(topics.chunk(manifest.sha256), frame)
    receiver = ChunkReceiver(manifest, tmp_path / "rx")
    while not receiver.complete:
        receiver.accept(bytes(rx.get().payload))
    assert receiver.finish(tmp_path / "out").read_bytes() == BLOB
    rx.close()
    tx.close()
