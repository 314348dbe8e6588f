from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.errors import InvalidId, InvalidTopic
from fleet.ids import check_device_id
from fleet.topics import TOPIC_TABLE, TopicKind, Topics, spec

SHA = "ab" * 32
device_ids = st.from_regex(r"\A[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?\Z")


@given(device_ids)
def test_every_device_topic_round_trips(device_id: str) -> None:
    topics = Topics("acme/fleet/v1")
    for kind in (TopicKind.STATUS, TopicKind.DESIRED, TopicKind.REPORTED, TopicKind.TELEMETRY, TopicKind.CMD):
        parsed = topics.parse(topics.build(kind, device_id=device_id))
        assert (parsed.kind, parsed.device_id, parsed.sha256) == (kind, device_id, None)
    parsed = topics.parse(topics.cmd_ack(device_id))
    assert (parsed.kind, parsed.device_id) == (TopicKind.CMD_ACK, device_id)


def test_blob_topics_round_trip() -> None:
    topics = Topics()
    assert topics.want(SHA) == f"fleet/v1/blob/{SHA}/want"
    assert topics.parse(topics.chunk(SHA)).sha256 == SHA
    assert topics.parse(topics.want(SHA)).kind is TopicKind.WANT


def test_builders_match_the_table() -> None:
    topics = Topics("p")
    for row in TOPIC_TABLE:
        built = topics.build(row.kind, device_id="d1", sha256=SHA)
        assert built == "p/" + row.pattern.replace("{id}", "d1").replace("{sha256}", SHA)
        assert topics.parse(built).kind is row.kind
    assert spec(TopicKind.DESIRED).retained and spec(TopicKind.DESIRED).qos == 1
    assert not spec(TopicKind.CHUNK).retained


def test_subscriptions() -> None:
    topics = Topics()
    assert topics.subscription(TopicKind.TELEMETRY) == "fleet/v1/dev/+/telemetry"
    assert topics.subscription(TopicKind.WANT) == "fleet/v1/blob/+/want"
    assert topics.subscription(TopicKind.STATUS, shared_group="hub") == "$share/hub/fleet/v1/dev/+/status"
    with pytest.raises(InvalidId):
        topics.subscription(TopicKind.STATUS, shared_group="a/b")


@pytest.mark.parametrize(
    "bad",
    ["", "A", "-x", "x-", "a/b", "a+b", "a#", "$sys", "a b", "é", "x" * 64, "dev\x00", "a..b/" * 2],
)
def test_bad_device_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidId):
        check_device_id(bad)
    with pytest.raises(InvalidId):
        Topics().status(bad)


@pytest.mark.parametrize("bad", ["", "a//b", "a/+/b", "#", "$SYS/x", "a/ b", "/lead"])
def test_bad_prefixes_are_refused(bad: str) -> None:
    with pytest.raises(InvalidId):
        Topics(bad)


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/dev/d1/status",
        "fleet/v1/dev/d1",
        "fleet/v1/dev/d1/status/extra",
        "fleet/v1/dev/+/status",
        "fleet/v1/dev/D1/status",
        "fleet/v1/dev/d1/unknown",
        "fleet/v1/blob/xyz/want",
        f"fleet/v1/blob/{SHA}/other",
        f"fleet/v1/blob/{SHA.upper()}/chunk",
        "fleet/v1/dev/d1/cmd/nack",
        "fleet/v1/" + "x/" * 1000,
    ],
)
def test_foreign_topics_are_refused(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        Topics().parse(topic)


def test_build_needs_its_subject() -> None:
    with pytest.raises(InvalidTopic):
        Topics().build(TopicKind.WANT, device_id="d1")
    with pytest.raises(InvalidTopic):
        Topics().build(TopicKind.STATUS, sha256=SHA)


def test_topics_are_frozen() -> None:
    topics = Topics()
    with pytest.raises(AttributeError):
        topics.prefix = "x"  # type: ignore[misc]
