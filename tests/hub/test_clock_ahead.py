"""A device whose clock was once far ahead: the hub takes its statuses and reports with the stamps set back to
`CLOCK_SKEW_S` ahead instead of refusing them, so the device is not hidden once its clock is right again.

The agent never lets its status stamps go back (`agent.state.Stamps`, saved in `status.json`), and its reports
carry the activation times it recorded: a clock that was a year ahead for one run leaves stamps a year ahead
in every later run. When the hub refused those, the device showed offline (and its old models) until real
time passed the stamp. Both backends; the agent's own `Stamps` makes the stamps, the hub's `Ingestor` and
store take them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.state import Stamps
from fleet.codec import encode
from fleet.limits import CLOCK_SKEW_S
from fleet.messages import AppliedModel, DeviceStatus, ErrorInfo, Phase
from fleet.topics import Topics
from hub.ingest import Ingestor, clamped, timestamps
from hub.settings import TransferSettings
from hub.store import Database, Device, SqlStore, open_store
from hub.transfer import ChunkServer
from tests.support.wire import one_model_report

YEAR_S = 365 * 86400.0
SHA = "a" * 64


@pytest.fixture
def store(database: Database) -> Iterator[SqlStore]:
    s = open_store(database, telemetry_process=False)
    yield s
    s.close()


def test_a_device_whose_clock_was_a_year_ahead_is_seen_again_once_its_clock_is_right(
    store: SqlStore, tmp_path: Path
) -> None:
    store.add_device(Device(id="d1", labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
    topics = Topics("fleet/v1")
    chunks = ChunkServer(store, lambda sha: tmp_path / sha, topics, lambda _t, _f: None, TransferSettings())
    ing = Ingestor(store, topics, is_enrolled=lambda d: d == "d1", chunk_server=chunks, max_message_bytes=1 << 16)
    clock = [time.time() + YEAR_S]  # the device's clock: a year ahead in its first run
    stamps = Stamps(tmp_path / "status.json", lambda: clock[0])

    def status(state: str, ts: float) -> None:
        ing.handle(topics.status("d1"), encode(DeviceStatus(device_id="d1", state=state, ts=ts)))
        store.flush()

    def report(activated_at: float) -> None:
        active = AppliedModel(name="m", version="1.0.0", sha256=SHA, activated_at=activated_at)
        msg = one_model_report("d1", seq=stamps.report_seq(), ts=clock[0], phase=Phase.ACTIVE, active=active)
        ing.handle(topics.reported("d1"), encode(msg))
        store.flush()

    def shown() -> Device:
        d = store.get_device("d1")
        assert d is not None
        return d

    # first run, clock a year ahead: the connect's birth, a report of the model it activated, its last will
    first = stamps.status_ts()
    status("online", first)
    activated = clock[0]
    report(activated)
    d = shown()
    assert d.status == "online" and d.status_at is not None and d.status_at <= time.time() + CLOCK_SKEW_S
    assert d.reported is not None and d.reported.models[0].active is not None
    assert (d.reported.models[0].active.activated_at or 0) <= time.time() + CLOCK_SKEW_S  # set back, not a year on
    status("offline", first)  # the will carries its birth's stamp: it replaces the birth
    assert shown().status == "offline"

    # NTP puts the clock right; the next run still stamps after the saved year-ahead stamp, and still reports the
    # activation time it recorded then
    clock[0] = time.time()
    stamps = Stamps(tmp_path / "status.json", lambda: clock[0])
    second = stamps.status_ts()
    assert second > first > time.time() + YEAR_S / 2
    status("online", second)
    assert shown().status == "online"  # refused before: shown offline for a year
    report(activated)
    d = shown()
    assert d.reported is not None and d.reported.ts == pytest.approx(clock[0])
    counts = ing.snapshot()
    assert counts.clamped == {"status": 3, "reported": 2}, counts
    assert counts.rejected == {}, counts
    assert counts.accepted == {"status": 3, "reported": 2}, counts


def test_stamps_within_the_skew_are_kept_and_later_ones_set_back_to_its_bound() -> None:
    now = time.time()
    latest = now + CLOCK_SKEW_S
    within = one_model_report(
        "d1", seq=1, ts=now + 10, phase=Phase.FAILED,
        active=AppliedModel(name="m", version="1.0.0", sha256=SHA, activated_at=now - 5),
        error=ErrorInfo(code="x", message="y", at=now + 20),
    )  # fmt: skip
    assert clamped(within, latest) == within
    ahead = one_model_report(
        "d1",
        seq=2,
        ts=now + YEAR_S,
        phase=Phase.FAILED,
        active=AppliedModel(name="m", version="2.0.0", sha256=SHA, activated_at=now + YEAR_S),
        previous=AppliedModel(name="m", version="1.0.0", sha256=SHA, activated_at=now - 5),
        shadow=AppliedModel(name="m", version="3.0.0", sha256=SHA),
        error=ErrorInfo(code="x", message="y", at=now + 2 * YEAR_S),
    ).model_copy(update={"error": ErrorInfo(code="z", message="w", at=now + YEAR_S)})
    got = clamped(ahead, latest)
    assert timestamps(got) == (latest, latest, latest, latest, now - 5, None)  # ts, errors, activation times
    assert got.model_copy(update={"ts": ahead.ts}) != ahead  # nested parts were set back, not only `ts`
    m = got.models[0]
    assert (m.previous, m.shadow) == (ahead.models[0].previous, ahead.models[0].shadow)  # nothing else changed
    assert got.seq == 2 and m.active is not None and m.active.version == "2.0.0"
