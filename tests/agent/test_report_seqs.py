"""Report seqs never go back, across agent runs too, even when the device's clock does (`agent.state.Stamps`).

The hub keeps a device's reported state with the greatest `seq` (or a later `ts`; docs/hub.md "Ordering"). A
device that boots with its clock behind its previous run's (no real-time clock before NTP) must still have
its new reports replace the previous run's: else the operator sees what the previous run served.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from agent.state import SEQ_RESERVE, StampFile, Stamps
from fleet.limits import MAX_JSON_INT
from fleet.messages import ReportedState
from hub.store import Database, Device, open_store
from tests.agent.conftest import AgentFactory
from tests.support.broker import Broker
from tests.support.hubside import HubSide

HOUR = 3600.0


def test_a_new_run_whose_clock_went_back_has_its_report_replace_the_last_runs_on_the_hub(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, tmp_path: Path
) -> None:
    data = tmp_path / "device"
    first, _ = make_agent(hub, device_id, broker.url, data_dir=data)
    assert first.wait_ready(10)
    hub.wait(lambda: next((r for r in hub.reported if r.device_id == device_id), None), what="first run's report")
    first.stop()
    # it boots again with its clock an hour behind (its reports carry that clock's ts: that is how they are told
    # apart from the first run's, whichever of those were still on their way)
    cut = time.time() - HOUR / 2
    second, _ = make_agent(hub, device_id, broker.url, data_dir=data, clock=lambda: time.time() - HOUR)
    assert second.wait_ready(10)
    hub.wait(lambda: next((r for r in hub.reported if r.ts < cut), None), what="second run's report")
    reported = list(hub.reported)
    old = [r for r in reported if r.ts >= cut]
    new = [r for r in reported if r.ts < cut]
    # the hub's store, given every report the broker delivered, in that order: the new run's is kept
    store = open_store(Database.sqlite(tmp_path / "hub.db"), telemetry_process=False)
    try:
        store.add_device(Device(id=device_id, labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        for report in reported:
            assert store.enqueue_reported(report, time.time())
        store.flush()
        stored = store.get_device(device_id)
        assert stored is not None and stored.reported == max(new, key=lambda r: r.seq)
    finally:
        store.close()
    assert old and max(r.seq for r in old) < min(r.seq for r in new)


def test_an_unreadable_stamp_file_is_logged_and_the_agent_numbers_its_reports_by_its_clock(
    broker: Broker,
    hub: HubSide,
    device_id: str,
    make_agent: AgentFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "device"
    data.mkdir()
    (data / "status.json").write_bytes(b'{"schema_version": 1, "last_ts": 17.0, "report_seq": 99999999')  # torn
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        agent, _ = make_agent(hub, device_id, broker.url, data_dir=data, clock=lambda: 1000.0)
        assert agent.wait_ready(10)
        first = hub.wait(lambda: next((r for r in hub.reported if r.device_id == device_id), None), what="report")
    assert caplog.text.count(f"stamp file {data / 'status.json'} unreadable") == 1
    assert 1_000_000 <= first.seq < 1_000_100  # from the clock's ms (the report at start may not have gone out)
    assert StampFile.model_validate_json((data / "status.json").read_bytes()).report_seq >= first.seq


def test_seqs_never_go_back_across_runs_even_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    now = [1000.0]
    run1 = Stamps(path, lambda: now[0])
    seqs = [run1.report_seq(), run1.report_seq()]  # the clock stands still: the second is greater all the same
    now[0] = 500.0  # the clock goes back within the run
    seqs.append(run1.report_seq())
    now[0] = 1000.0 + 2 * SEQ_RESERVE / 1000  # the clock moves on past the reservation
    seqs.append(run1.report_seq())
    # the device dies (nothing saved at a stop), and boots with its clock behind the previous run's
    run2 = Stamps(path, lambda: 900.0)
    seqs += [run2.report_seq(), run2.report_seq()]
    assert seqs[0] == 1_000_000 and seqs == sorted(set(seqs)), seqs
    run3 = Stamps(path, lambda: 1e9)  # the clock is right again: its own ms
    assert run3.report_seq() == 10**12


def test_the_file_is_written_once_per_reservation_not_once_per_report(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    now = [1000.0]
    stamps = Stamps(path, lambda: now[0])
    first = stamps.report_seq()
    saved = path.stat().st_ino  # atomic_write replaces the file: a new inode each time
    assert StampFile.model_validate_json(path.read_bytes()).report_seq == first + SEQ_RESERVE
    for _ in range(100):  # reports within the reservation, the clock moving on or not
        now[0] += 1.0
        stamps.report_seq()
    assert path.stat().st_ino == saved
    now[0] = 1000.0 + SEQ_RESERVE / 1000 + 1  # past it: one more reservation
    seq = stamps.report_seq()
    assert path.stat().st_ino != saved
    assert StampFile.model_validate_json(path.read_bytes()).report_seq == seq + SEQ_RESERVE
    stamps.status_ts()  # a status stamp keeps the reservation
    assert StampFile.model_validate_json(path.read_bytes()).report_seq == seq + SEQ_RESERVE


@pytest.mark.parametrize(
    "content",
    [
        b'{"schema_version": 1, "last_ts": 5, "report_seq": -1}',
        b'{"schema_version": 1, "last_ts": 5, "report_seq": 9007199254740993}',
        b'{"schema_version": 1, "last_ts": 5, "report_seq": "many"}',
        b'{"schema_version": 1, "last_ts": 5, "report_seq": 1.5}',
        b'{"schema_version": 1, "last_ts": 5, "report_seq": 1, "seq": 2}',
        b'{"schema_version": 1, "report_seq": 1',
    ],
)
def test_a_bad_stamp_file_is_logged_and_seqs_start_from_the_clock(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        stamps = Stamps(path, lambda: 1000.0)
    assert caplog.text.count(f"stamp file {path} unreadable") == 1
    assert stamps.report_seq() == 1_000_000
    assert StampFile.model_validate_json(path.read_bytes()).report_seq == 1_000_000 + SEQ_RESERVE


def test_a_reservation_that_cannot_be_saved_is_logged_once_and_its_seqs_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "status.json"
    path.mkdir()  # neither readable nor replaceable as a file
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        stamps = Stamps(path, lambda: 1000.0)
        seqs = [stamps.report_seq() for _ in range(5)]
    assert seqs == list(range(1_000_000, 1_000_005))
    assert caplog.text.count("not saved") == 1


def test_seqs_stop_at_the_largest_a_report_can_carry(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(StampFile(last_ts=0.0, report_seq=MAX_JSON_INT - 1).model_dump_json().encode())
    stamps = Stamps(path, lambda: 1000.0)
    assert [stamps.report_seq(), stamps.report_seq()] == [MAX_JSON_INT, MAX_JSON_INT]
    ReportedState(device_id="d1", seq=MAX_JSON_INT, ts=1000.0)  # still a valid report


def test_a_status_stamp_file_of_the_previous_release_is_read(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(b'{"schema_version": 1, "last_ts": 2000.0}')  # written before reports had seqs in it
    stamps = Stamps(path, lambda: 1000.0)
    assert stamps.status_ts() > 2000.0 and stamps.report_seq() == 1_000_000
