"""Replica coordination through the store, on both backends: the leader lease, fenced writes, revised documents,
and `Leadership` handing over between two holders."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.codec import encode
from fleet.messages import AppliedModel, DownloadProgress, Phase
from fleet.topics import Topics
from hub.errors import LeaseLost, StaleDocument
from hub.ingest import Ingestor
from hub.leadership import LEADER_LEASE, Leadership
from hub.settings import TransferSettings
from hub.store import Database, Desired, Device, Fence, SqlStore, open_store
from hub.transfer import ChunkServer
from tests.support.mqtt import wait_for
from tests.support.wire import one_model_report


@pytest.fixture
def store(database: Database) -> Iterator[SqlStore]:
    s = open_store(database, telemetry_process=False)
    yield s
    s.close()


def test_one_holder_at_a_time_and_each_takeover_gets_a_new_token(store: SqlStore) -> None:
    assert store.acquire_lease("l", "a", 0.5) == 1
    assert store.acquire_lease("l", "b", 0.5) is None  # held by a
    assert store.acquire_lease("l", "a", 0.5) == 1  # renewed: the same token
    wait_for(lambda: store.acquire_lease("l", "b", 30) == 2, timeout=10)  # expired: b takes it, next token
    assert store.acquire_lease("l", "a", 30) is None
    assert store.lease_holder("l") == ("b", 2, True)
    assert store.release_lease("l", "b") and not store.release_lease("l", "a")
    assert store.acquire_lease("l", "a", 30) == 3  # released: taken at once


def test_expired_leases_by_prefix_and_forgetting_one_only_while_it_stays_expired(store: SqlStore) -> None:
    """How the leader finds replicas that stopped (hub.sessions): their presence leases, expired."""
    store.acquire_lease("replica:a", "a", 0.2)
    store.acquire_lease("replica:b", "b", 30)
    store.acquire_lease("replica:c", "c", 0.2)
    store.acquire_lease("leader", "b", 0.2)
    wait_for(lambda: store.expired_leases("replica:") == [("replica:a", "a"), ("replica:c", "c")], timeout=10)
    assert store.expired_leases("replica:a") == [("replica:a", "a")]
    assert store.acquire_lease("replica:c", "c", 30) is not None  # c came back before it was forgotten
    assert not store.forget_lease("replica:c", "c") and not store.forget_lease("replica:b", "b")
    assert not store.forget_lease("replica:a", "x")  # held by another name: kept
    assert store.forget_lease("replica:a", "a") and store.lease_holder("replica:a") is None
    assert store.expired_leases("replica:") == []
    assert store.expired_leases("%") == [] and store.expired_leases("") != []  # a prefix, not a pattern


def test_a_write_fenced_by_a_lost_lease_is_refused_and_writes_nothing(store: SqlStore) -> None:
    store.add_device(Device(id="d1", labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
    old = Fence("l", store.acquire_lease("l", "old", 0.3) or 0)
    store.put_docs([("c", "k", {"v": 1})], fence=old)  # held: written
    wait_for(lambda: store.acquire_lease("l", "new", 30) is not None, timeout=10)
    # the old holder wakes up (paused past its lease) and tries to record a transition and a desired state
    with pytest.raises(LeaseLost):
        store.put_docs([("c", "k", {"v": 2})], events=[(1.0, "old", "x", "y", {})], fence=old)
    with pytest.raises(LeaseLost):
        store.put_desired([Desired("d1", 5, (), "{}", 1.0, 2.0)], fence=old)
    assert store.get_doc("c", "k") == {"v": 1}
    assert store.get_desired("d1") is None
    assert store.list_events(since=None, until=None, subject="y", action=None, limit=10) == []
    new = Fence("l", 2)
    store.put_desired([Desired("d1", 5, (), "{}", 1.0, 2.0)], fence=new)
    assert store.get_desired("d1") is not None


def test_revisions_refuse_a_blind_overwrite(store: SqlStore) -> None:
    revs = store.put_docs([("c", "k", {"v": 1})], expect={("c", "k"): None})
    assert revs == {("c", "k"): 1}
    with pytest.raises(StaleDocument):
        store.put_docs([("c", "k", {"v": 9})], expect={("c", "k"): None})  # must not exist: it does
    store.put_doc("c", "k", {"v": 2})  # another writer
    assert store.get_doc_rev("c", "k") == ({"v": 2}, 2)
    with pytest.raises(StaleDocument):
        store.put_docs([("c", "k", {"v": 3})], expect={("c", "k"): 1})
    assert store.put_docs([("c", "k", {"v": 3})], expect={("c", "k"): 2}) == {("c", "k"): 3}
    assert store.doc_revs("c") == {"k": 3}


def test_leadership_hands_over_when_the_leader_stops_or_stops_renewing(store: SqlStore) -> None:
    changes: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def record(name: str) -> object:
        def on_change(leading: bool) -> None:
            with lock:
                changes.append((name, leading))

        return on_change

    a = Leadership(store, holder="a", lease_s=1.0, renew_s=0.2, on_change=record("a"))  # type: ignore[arg-type]
    b = Leadership(store, holder="b", lease_s=1.0, renew_s=0.2, on_change=record("b"))  # type: ignore[arg-type]
    a.start()
    b.start()
    try:
        assert a.is_leader and not b.is_leader
        a.stop()  # a clean stop releases the lease
        wait_for(lambda: b.is_leader, timeout=10)
        fence = b.fence
        assert fence is not None and fence.token == 2 and store.lease_holder(LEADER_LEASE) == ("b", 2, True)
        # b stops renewing without releasing (killed, cut off): a new holder takes over once the lease expires
        b._loop.stop()
        c = Leadership(store, holder="c", lease_s=1.0, renew_s=0.2)
        c.start()
        try:
            wait_for(lambda: c.is_leader, timeout=10)
            assert not b.is_leader  # b's own margin ran out before its lease could pass to c
            assert c.fence == Fence(LEADER_LEASE, 3)
        finally:
            c.stop()
    finally:
        a.stop()
        b.stop()
    assert changes[:3] == [("a", True), ("a", False), ("b", True)]


def test_a_follower_leaves_download_progress_to_the_leader_and_writes_every_other_report(
    store: SqlStore, tmp_path: Path
) -> None:
    """Every replica hears every report; during a rollout most are download progress, which only the leader
    stores (it paces its chunk server with them). Reports without a transfer are written by every replica."""
    store.add_device(Device(id="d1", labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
    topics = Topics("fleet/v1")
    leading = False
    chunks = ChunkServer(store, lambda sha: tmp_path / sha, topics, lambda _t, _f: None, TransferSettings())
    ing = Ingestor(store, topics, is_enrolled=lambda d: d == "d1", chunk_server=chunks, max_message_bytes=1 << 16,
                   leading=lambda: leading)  # fmt: skip
    sha = "a" * 64
    progress = DownloadProgress(sha256=sha, have_chunks=1, total_chunks=4, bytes_done=1, bytes_total=4)
    now = time.time()

    def report(seq: int, **kw: Any) -> None:
        ing.handle(topics.reported("d1"), encode(one_model_report("d1", seq=seq, ts=now + seq, **kw)))
        store.flush()

    def stored() -> int | None:
        d = store.get_device("d1")
        return d.reported.seq if d is not None and d.reported is not None else None

    report(1, phase=Phase.DOWNLOADING, download=progress)
    assert (stored(), ing.followed) == (None, 1)  # a follower: left to the leader
    active = AppliedModel(name="m", version="1.0.0", sha256=sha, activated_at=now)
    report(2, phase=Phase.ACTIVE, active=active)
    assert (stored(), ing.followed) == (2, 1)  # no transfer: every replica writes it
    leading = True
    report(3, phase=Phase.DOWNLOADING, download=progress)
    assert (stored(), ing.followed) == (3, 1)  # the leader writes progress
