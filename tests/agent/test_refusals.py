"""Refused desired states and models: each is reported with its reason and the old model keeps serving."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest

from agent.headless import HeadlessServing
from fleet.chunks import encode_frame
from fleet.codec import encode
from fleet.messages import ReportedState, SignedEnvelope
from fleet.signing import HubSigningKey, canonical_json
from tests.agent.conftest import AgentFactory, Sample
from tests.support.broker import Broker
from tests.support.hubside import HubSide, one

IMAGE = {"image": np.zeros((1, 3, 64, 64), dtype=np.float32)}


@pytest.fixture
def serving_v1(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample]
) -> Iterator[HeadlessServing]:
    _agent, serving = make_agent(hub, device_id, broker.url)
    hub.publish_desired(
        device_id, hub.desired(device_id, 5, hub.model_ref(samples["v1"].path, samples["v1"].descriptor))
    )
    hub.wait_active("1.0.0")
    yield serving


def _refused(hub: HubSide, code: str) -> ReportedState:
    r = hub.wait_reported(lambda r: r.error is not None and r.error.code == code, what=code)
    assert r.desired_version == 5 and r.phase == "active"
    assert (active := one(r).active) is not None and active.version == "1.0.0"
    return r


def _still_serving_v1(serving: HeadlessServing) -> None:
    assert serving.active_model is not None and serving.active_model.version == "1.0.0"
    assert serving.infer(IMAGE)["logits"].shape == (1, 10)


def test_altered_body_is_a_bad_signature(
    hub: HubSide, device_id: str, serving_v1: HeadlessServing, samples: dict[str, Sample]
) -> None:
    env = hub.sign(hub.desired(device_id, 6, hub.model_ref(samples["v2"].path, samples["v2"].descriptor)))
    forged = env.model_copy(update={"body": {**env.body, "version": 7}})
    hub.publish_desired(device_id, forged)
    r = _refused(hub, "bad_signature")
    assert r.error is not None and "signature" in r.error.message
    _still_serving_v1(serving_v1)


def test_another_key_is_refused(
    hub: HubSide, device_id: str, serving_v1: HeadlessServing, samples: dict[str, Sample]
) -> None:
    state = hub.desired(device_id, 6, hub.model_ref(samples["v2"].path, samples["v2"].descriptor))
    hub.publish_desired(device_id, HubSigningKey.generate().sign(state))
    _refused(hub, "unknown_signing_key")
    _still_serving_v1(serving_v1)


def test_expired_desired_state_is_refused(
    hub: HubSide, device_id: str, serving_v1: HeadlessServing, samples: dict[str, Sample]
) -> None:
    ref = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 6, ref, expires_in=-3600))
    _refused(hub, "expired")
    _still_serving_v1(serving_v1)


def test_downgrading_version_counter_is_refused(
    hub: HubSide, device_id: str, serving_v1: HeadlessServing, samples: dict[str, Sample]
) -> None:
    ref = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 4, ref))
    _refused(hub, "stale_version")
    hub.publish_desired(device_id, hub.desired(device_id, 5, ref))  # a replay of the counter, other content
    hub.wait(lambda: sum(1 for r in hub.reported if r.error and r.error.code == "stale_version") >= 2)
    _still_serving_v1(serving_v1)


def test_another_devices_state_is_refused(
    hub: HubSide, device_id: str, serving_v1: HeadlessServing, samples: dict[str, Sample]
) -> None:
    ref = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    env = hub.sign(hub.desired("someone-else", 6, ref))
    hub.publish_desired(device_id, env)
    _refused(hub, "wrong_subject")
    _still_serving_v1(serving_v1)


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"{}", b"[1,2]", b"{" * 100_000, b"x" * 300_000],
    ids=["text", "empty-object", "array", "deep", "oversized"],
)
def test_malformed_desired_payload_is_refused(
    hub: HubSide, device_id: str, serving_v1: HeadlessServing, payload: bytes
) -> None:
    hub.publish_desired(device_id, payload)
    _refused(hub, "malformed_envelope")
    _still_serving_v1(serving_v1)


def test_a_state_of_a_newer_schema_is_refused_saying_to_upgrade(
    hub: HubSide, device_id: str, serving_v1: HeadlessServing, samples: dict[str, Sample]
) -> None:
    hub.publish_desired(device_id, b'{"schema_version": 99, "kind": "signed"}')  # a newer hub's envelope
    r = _refused(hub, "unsupported_schema")
    assert r.error is not None and "newer than this build speaks" in r.error.message
    body = hub.desired(device_id, 6, hub.model_ref(samples["v2"].path, samples["v2"].descriptor)).model_dump(
        mode="json"
    )
    body["schema_version"] = 3  # a newer hub's body, signed by the pinned key: the signature holds, the schema not
    sig = base64.urlsafe_b64encode(hub.key._key.sign(canonical_json(body))).rstrip(b"=").decode()
    start = len(hub.reported)
    hub.publish_desired(device_id, SignedEnvelope(key_id=hub.key.public.key_id, body=body, sig=sig))
    r = hub.wait_reported(lambda r: r.error is not None and "schema_version 3" in r.error.message, since=start)
    assert r.error is not None and r.error.code == "unsupported_schema" and "upgrade this side" in r.error.message
    _still_serving_v1(serving_v1)


def test_model_failing_its_golden_check_is_refused(
    hub: HubSide, device_id: str, serving_v1: HeadlessServing, samples: dict[str, Sample]
) -> None:
    bad = hub.model_ref(samples["bad"].path, samples["bad"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 6, bad))
    r = hub.wait_reported(lambda r: r.desired_version == 6 and r.phase == "failed", what="failed")
    assert (error := one(r).error) is not None and error.code == "golden_mismatch" and error.permanent
    assert (active := one(r).active) is not None and active.version == "1.0.0"
    _still_serving_v1(serving_v1)
    # the next good state still goes through
    hub.publish_desired(
        device_id, hub.desired(device_id, 7, hub.model_ref(samples["v2"].path, samples["v2"].descriptor))
    )
    r = hub.wait_active("2.0.0")
    assert one(r).error is None and (previous := one(r).previous) is not None and previous.version == "1.0.0"


def test_description_for_another_blob_is_refused(
    hub: HubSide, device_id: str, serving_v1: HeadlessServing, samples: dict[str, Sample]
) -> None:
    ref = hub.model_ref(samples["v2"].path, samples["v1"].descriptor.model_copy(update={"version": "2.0.0"}))
    hub.publish_desired(device_id, hub.desired(device_id, 6, ref))
    r = hub.wait_reported(lambda r: r.desired_version == 6 and r.phase == "failed", what="failed")
    assert (error := one(r).error) is not None and error.code == "descriptor_mismatch"
    _still_serving_v1(serving_v1)


def test_hostile_messages_never_stop_the_agent(
    broker: Broker,
    hub: HubSide,
    device_id: str,
    make_agent: AgentFactory,
    samples: dict[str, Sample],
) -> None:
    agent, serving = make_agent(hub, device_id, broker.url)
    t = hub.topics
    ref = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    sha, count = ref.blob.sha256, ref.blob.count
    hub.withhold = set(range(count))
    hub.publish_desired(device_id, hub.desired(device_id, 1, ref))
    hub.wait_reported(lambda r: r.phase == "downloading")
    good = samples["v2"].path.read_bytes()[: ref.blob.chunk_size]
    hostile = [
        b"",
        b"\x00" * 10,
        b"EFC1" + b"\xff" * 100,
        encode_frame(sha, 0, count, good)[:-1],  # truncated
        encode_frame("ab" * 32, 0, count, good),  # another blob's header
        encode_frame(sha, count + 5, count, good),  # index out of range
        encode_frame(sha, 0, count + 1, good),  # wrong chunk count
        encode_frame(sha, 1, count, good),  # right size, wrong digest for index 1
        encode_frame(sha, 0, count, good + b"x" * 1000),  # longer than a chunk
    ]
    for payload in hostile:
        hub.publish_raw(t.chunk(sha), payload)
        hub.publish_raw(t.cmd(device_id), payload)
    hub.publish_raw(t.cmd(device_id), encode(hub.desired(device_id, 9, None)))  # unsigned, wrong kind
    hub.wait(lambda: agent.reconciler.download is not None and agent.reconciler.download.refused >= len(hostile))
    hub.withhold = set()
    hub.wait_active("2.0.0")
    assert serving.active_model is not None and serving.active_model.version == "2.0.0"
