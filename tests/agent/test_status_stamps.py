"""Status stamps never go back, across agent runs too, even when the device's clock does (`agent.state`).

The hub keeps a device's newest status by `ts`, then `offline` after `online` (docs/hub.md "Ordering"). A
device that boots with its clock behind its previous run's (no real-time clock before NTP) must still have
its new birth replace the previous run's last will.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from agent.state import StampFile, Stamps
from fleet.limits import MAX_TIMESTAMP
from fleet.messages import DeviceStatus
from hub.store import Database, Device, open_store
from tests.agent.conftest import AgentFactory
from tests.support.broker import Broker
from tests.support.hubside import HubSide

HOUR = 3600.0


def test_a_new_run_whose_clock_went_back_replaces_the_last_runs_offline_on_the_hub(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, tmp_path: Path
) -> None:
    data = tmp_path / "device"
    first, _ = make_agent(hub, device_id, broker.url, data_dir=data)
    assert first.wait_ready(10)
    birth = hub.wait(lambda: next((s for s in hub.statuses if s.state == "online"), None), what="birth")
    first.link.drop(HOUR)  # the device dies: the broker publishes its last will
    will = hub.wait(lambda: next((s for s in hub.statuses if s.state == "offline"), None), what="last will")
    first.stop()
    # it boots again with its clock an hour behind
    second, _ = make_agent(hub, device_id, broker.url, data_dir=data, clock=lambda: time.time() - HOUR)
    assert second.wait_ready(10)
    reborn = hub.wait(lambda: next((s for s in hub.statuses if s.session == second.session), None), what="rebirth")
    assert reborn.state == "online" and birth.ts == will.ts < reborn.ts
    # the hub's store, given every status the broker delivered: the new run's birth is the newest
    store = open_store(Database.sqlite(tmp_path / "hub.db"), telemetry_process=False)
    try:
        store.add_device(Device(id=device_id, labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        for status in list(hub.statuses):
            assert store.enqueue_status(status, time.time())
        store.flush()
        stored = store.get_device(device_id)
        assert stored is not None and (stored.status, stored.session) == ("online", second.session)
    finally:
        store.close()


def test_an_unreadable_stamp_file_is_logged_and_the_agent_stamps_by_its_clock(
    broker: Broker,
    hub: HubSide,
    device_id: str,
    make_agent: AgentFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "device"
    data.mkdir()
    (data / "status.json").write_bytes(b'{"schema_version": 1, "last_ts": 17')  # torn
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        agent, _ = make_agent(hub, device_id, broker.url, data_dir=data, clock=lambda: 1000.0)
    assert "stamp file" in caplog.text and "unreadable" in caplog.text
    assert agent.wait_ready(10)
    birth = hub.wait(lambda: next((s for s in hub.statuses if s.session == agent.session), None), what="birth")
    assert (birth.state, birth.ts) == ("online", 1000.0)
    assert StampFile.model_validate_json((data / "status.json").read_bytes()).last_ts == 1000.0


def test_stamps_never_go_back_across_runs_and_each_is_saved_before_it_is_used(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    now = [1000.0]
    run1 = Stamps(path, lambda: now[0])
    stamps = [run1.status_ts(), run1.status_ts()]  # the clock stands still: the second is later all the same
    now[0] = 500.0  # the clock goes back within the run
    stamps.append(run1.status_ts())
    assert StampFile.model_validate_json(path.read_bytes()).last_ts == stamps[-1]
    run2 = Stamps(path, lambda: 900.0)  # the next run boots behind the previous one
    stamps += [run2.status_ts(), run2.status_ts()]
    assert stamps[0] == 1000.0 and stamps == sorted(set(stamps)), stamps
    assert StampFile.model_validate_json(path.read_bytes()).last_ts == stamps[-1]
    run3 = Stamps(path, lambda: 2000.0)  # the clock is right again: its own time
    assert run3.status_ts() == 2000.0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"schema_version": 1, "last_ts": 17',
        b"\x00\xff\xfe garbage",
        b"[1000.5]",
        b'{"schema_version": 1, "last_ts": -1}',
        b'{"schema_version": 1, "last_ts": 1e300}',
        b'{"schema_version": 1, "last_ts": "soon"}',
        b'{"schema_version": 2, "last_ts": 5}',
        b'{"schema_version": 1, "last_ts": 5, "extra": 1}',
    ],
)
def test_a_bad_stamp_file_is_logged_and_replaced_by_a_clock_stamp(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        stamps = Stamps(path, lambda: 1000.0)
    assert f"stamp file {path} unreadable" in caplog.text
    assert stamps.status_ts() == 1000.0
    assert StampFile.model_validate_json(path.read_bytes()).last_ts == 1000.0


def test_a_stamp_that_cannot_be_saved_is_logged_and_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "status.json"
    path.mkdir()  # neither readable nor replaceable as a file
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        stamps = Stamps(path, lambda: 1000.0)
        first, second = stamps.status_ts(), stamps.status_ts()
    assert first == 1000.0 < second
    assert caplog.text.count("not saved") == 2


def test_stamps_stop_at_the_last_timestamp_a_status_can_carry(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(StampFile(last_ts=MAX_TIMESTAMP).model_dump_json().encode())
    ts = Stamps(path, lambda: 1000.0).status_ts()
    assert ts == MAX_TIMESTAMP
    DeviceStatus(device_id="d1", state="offline", ts=ts)  # still a valid status
