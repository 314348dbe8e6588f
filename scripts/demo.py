"""Interim demo (until the demo issue lands): the wire contract end to end over a real Mosquitto.

A hub-side signer publishes a signed desired state (retained) and a blob's chunks; three device-side
receivers verify the signature, fetch every chunk through fleet's verifying receiver and reassemble the
exact blob. It prints what happens at each step and exits 0 when every device holds the verified blob.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet import (
    ChunkReceiver,
    DesiredState,
    HubSigningKey,
    ModelRef,
    Topics,
    Verifier,
    decode,
    encode,
    iter_frames,
    plan_file,
)
from fleet.messages import SignedEnvelope
from tests.support.broker import Broker, find_mosquitto, free_port
from tests.support.mqtt import TestClient

DEVICES = ("cam-berlin-1", "cam-berlin-2", "cam-paris-1")


def main() -> int:
    binary = find_mosquitto()
    if binary is None:
        print("error: mosquitto is not installed; run `sudo apt-get install mosquitto`", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="edgefleet-demo-") as tmp:
        root = Path(tmp)
        broker = Broker(binary, root / "mosquitto", free_port())
        broker.start()
        print(f"broker   mosquitto on {broker.url}")
        try:
            return run(root, broker)
        finally:
            broker.stop()


def run(root: Path, broker: Broker) -> int:
    topics = Topics()
    key = HubSigningKey.generate()
    blob = root / "model.onnx"
    blob.write_bytes(os.urandom(4 << 20))
    manifest = plan_file(blob)
    print(f"hub      blob {manifest.sha256[:12]}: {manifest.size} bytes in {manifest.count} chunks")
    hub = TestClient(broker.host, broker.port)
    now = time.time()
    for version, device in enumerate(DEVICES, start=1):
        state = DesiredState(
            device_id=device,
            version=version,
            issued_at=now,
            expires_at=now + 3600,
            model=ModelRef(name="demo", version="1.0.0", task="classification", blob=manifest),
        )
        hub.publish(topics.desired(device), encode(key.sign(state)), retain=True)
        print(f"hub      signed desired state v{version} -> {topics.desired(device)}")
    agents = {}
    for device in DEVICES:
        client = TestClient(broker.host, broker.port)
        client.subscribe(topics.desired(device))
        envelope = decode(client.get().payload, SignedEnvelope)
        state = Verifier(key.public, device).verify(envelope, DesiredState, now=time.time(), last_version=None)
        assert state.model is not None
        client.subscribe(topics.chunk(state.model.blob.sha256))
        agents[device] = (client, ChunkReceiver(state.model.blob, root / device))
        print(f"agent    {device}: signature ok, wants {state.model.blob.count} chunks")
    for frame in iter_frames(blob, manifest):
        hub.publish(topics.chunk(manifest.sha256), frame)
    for device, (client, receiver) in agents.items():
        while not receiver.complete:
            receiver.accept(client.get().payload)
        out = receiver.finish(root / device / "model.onnx")
        ok = out.read_bytes() == blob.read_bytes()
        print(f"agent    {device}: blob verified by sha256 -> {'OK' if ok else 'MISMATCH'}")
        client.close()
        if not ok:
            return 1
    hub.close()
    print("demo     every device holds the verified blob (full demo: hub, agents and rollouts land later)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
