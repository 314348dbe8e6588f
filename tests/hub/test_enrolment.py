"""Batch enrolment: `edgefleet device add --csv/--count`, one request, all or none, accounts the broker knows."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from edgefleet_cli import app
from fleet.bundle import DeviceBundle
from hubclient.enrolment import MAX_BATCH, InvalidInput, from_pattern, read_csv
from tests.support.hub import RunningHub, start_hub
from tests.support.mqtt import TestClient

runner = CliRunner()


@pytest.fixture
def local_hub(tmp_path: Path, topic_prefix: str) -> Iterator[RunningHub]:
    """A hub with its own Mosquitto, whose password file it writes from the registry."""
    h = start_hub(tmp_path / "hub", None, topic_prefix)
    yield h
    h.stop()


def _add(h: RunningHub, *args: str) -> str:
    result = runner.invoke(app, ["device", "add", *args, "--url", h.url, "--token", h.admin_token])
    assert result.exit_code == 0, result.output
    return result.output


def test_count_and_pattern_enrol_in_one_request_and_the_broker_knows_them(
    local_hub: RunningHub, tmp_path: Path
) -> None:
    h = local_hub
    auth = h.hub.security.broker_auth
    assert auth is not None
    writes = auth.writes
    out = tmp_path / "bundles"
    assert "40 devices enrolled" in _add(
        h, "--count", "40", "--pattern", "cam-{n:03d}", "-l", "site=lab", "--out", str(out)
    )
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"cam-{n:03d}.bundle.json" for n in range(1, 41)]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    with h.client() as c:
        listed = {d["id"]: d["labels"] for d in c.get("/api/v1/devices").json()}
        events = c.get("/api/v1/events", params={"action": "device.add"}).json()
    assert listed == {f"cam-{n:03d}": {"site": "lab"} for n in range(1, 41)}
    assert len(events) == 1 and events[0]["details"]["count"] == 40, "one audit event for the request"
    assert auth.writes == writes + 1, "the broker's accounts are rewritten once, not once per device"
    bundle = DeviceBundle.load(files[-1])
    broker = urlsplit(bundle.broker_url)
    client = TestClient(broker.hostname or "", broker.port or 1883, client_id=bundle.device_id,
                        username=bundle.mqtt_username, password=bundle.mqtt_password)  # fmt: skip
    client.close()  # connected: the local broker accepted the new account


def test_csv_rows_become_devices_with_their_labels(local_hub: RunningHub, tmp_path: Path) -> None:
    csv_file = tmp_path / "fleet.csv"
    csv_file.write_text("id,site,ring\ncam-a,berlin,canary\ncam-b,paris,\n", encoding="utf-8")
    _add(local_hub, "--csv", str(csv_file), "-l", "owner=ops", "--out", str(tmp_path / "b"))
    with local_hub.client() as c:
        listed = {d["id"]: d["labels"] for d in c.get("/api/v1/devices").json()}
    assert listed == {
        "cam-a": {"owner": "ops", "site": "berlin", "ring": "canary"},
        "cam-b": {"owner": "ops", "site": "paris"},
    }


def test_a_batch_is_all_or_nothing(local_hub: RunningHub) -> None:
    with local_hub.client() as c:
        assert c.post("/api/v1/devices", json={"id": "cam-2"}).status_code == 201
        taken = c.post("/api/v1/devices/batch", json={"devices": [{"id": "cam-1"}, {"id": "cam-2"}]})
        assert taken.status_code == 409 and "cam-2" in taken.json()["error"]["message"]
        bad = c.post("/api/v1/devices/batch", json={"devices": [{"id": "cam-3"}, {"id": "Not An Id"}]})
        assert bad.status_code == 400
        twice = c.post("/api/v1/devices/batch", json={"devices": [{"id": "cam-4"}, {"id": "cam-4"}]})
        assert twice.status_code == 400 and "twice" in twice.json()["error"]["message"]
        bad_label = c.post("/api/v1/devices/batch", json={"devices": [{"id": "cam-5", "labels": {"": "x"}}]})
        assert bad_label.status_code == 400
        empty = c.post("/api/v1/devices/batch", json={"devices": []})
        too_many = c.post("/api/v1/devices/batch", json={"devices": [{"id": f"d-{i}"} for i in range(MAX_BATCH + 1)]})
        assert empty.status_code == 400 and too_many.status_code == 400
        assert [d["id"] for d in c.get("/api/v1/devices").json()] == ["cam-2"], "nothing of a refused batch stays"


def test_a_csv_the_hub_refuses_names_the_lines_of_the_devices_it_refused(local_hub: RunningHub, tmp_path: Path) -> None:
    with local_hub.client() as c:
        for device_id in ("cam-2", "cam-4"):
            assert c.post("/api/v1/devices", json={"id": device_id}).status_code == 201
    csv_file = tmp_path / "fleet.csv"
    csv_file.write_text("id,site\ncam-1,berlin\ncam-2,berlin\n\ncam-3,paris\ncam-4,paris\n", encoding="utf-8")
    args = ["device", "add", "--csv", str(csv_file), "--out", str(tmp_path / "b")]
    args += ["--url", local_hub.url, "--token", local_hub.admin_token]
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert f"already enrolled: cam-2 ({csv_file}:3), cam-4 ({csv_file}:6)" in said, said
    assert "cam-1 (" not in said and "cam-3 (" not in said
    with local_hub.client() as c:
        assert [d["id"] for d in c.get("/api/v1/devices").json()] == ["cam-2", "cam-4"], "nothing of it enrolled"


def test_every_conflict_is_named_by_its_line_whatever_its_id(local_hub: RunningHub, tmp_path: Path) -> None:
    """The hub's 409 lists every id already enrolled as data (`devices`), not only the first 10 in its message;
    the CLI names each with its line, also a device whose id is a word of the message ("device", "more")."""
    words = ["device", "already", "enrolled", "more"]
    taken = words + [f"cam-{n}" for n in range(10, 22)]  # 16 conflicts: the message shows 10 "and 6 more"
    with local_hub.client() as c:
        for device_id in taken:
            assert c.post("/api/v1/devices", json={"id": device_id}).status_code == 201
        batch = c.post("/api/v1/devices/batch", json={"devices": [{"id": "and"}, *({"id": d} for d in taken)]})
    assert batch.status_code == 409, batch.text
    assert batch.json()["error"]["devices"] == sorted(taken)
    assert "and 6 more" in batch.json()["error"]["message"], "the message stays short"
    rows = ["and", "device", "cam-new", "already", "enrolled", "more", *(f"cam-{n}" for n in range(10, 22))]
    csv_file = tmp_path / "fleet.csv"
    csv_file.write_text("id,site\n" + "".join(f"{d},berlin\n" for d in rows), encoding="utf-8")
    args = ["device", "add", "--csv", str(csv_file), "--out", str(tmp_path / "b")]
    args += ["--url", local_hub.url, "--token", local_hub.admin_token]
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    located = ", ".join(f"{d} ({csv_file}:{rows.index(d) + 2})" for d in rows if d in taken)
    assert f"16 devices already enrolled: {located}; nothing of {csv_file} was enrolled" in said, said
    assert "and (" not in said and "cam-new (" not in said and "more (" in said
    with local_hub.client() as c:
        assert sorted(d["id"] for d in c.get("/api/v1/devices").json()) == sorted(taken), "nothing of it enrolled"


def test_the_command_needs_exactly_one_source(local_hub: RunningHub, tmp_path: Path) -> None:
    for args in ([], ["cam-1", "--count", "2"], ["--count", "2", "--csv", str(tmp_path / "x.csv")]):
        result = runner.invoke(app, ["device", "add", *args, "--url", local_hub.url, "--token", local_hub.admin_token])
        assert result.exit_code == 2, result.output
    missing = runner.invoke(app, ["device", "add", "--csv", str(tmp_path / "nope.csv"), "--url", local_hub.url,
                                  "--token", local_hub.admin_token])  # fmt: skip
    assert missing.exit_code == 1 and "cannot read" in missing.output


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("site,ring\nberlin,canary\n", "needs an `id` column"),
        ("id,site\n,berlin\n", "empty id"),
        ("id,site\ncam-1,berlin,extra\n", "more cells than header columns"),
        ("id,site\n", "no devices"),
        ("id,site,site\ncam-1,berlin,paris\n", "f.csv:1: the header row names column 'site' twice"),
        ("id, id\ncam-1,cam-2\n", "names column 'id' twice"),
        ("id\ncam-1\nNot An Id\n", "f.csv:3: invalid device id 'Not An Id'"),
        ("id\ncam-1\n\ncam-2\ncam-1\n", r"f.csv:5: device cam-1 is listed twice \(first on line 2\)"),
        ("id,bad key\ncam-1,x\n", "f.csv:2: invalid label key 'bad key'"),
    ],
)
def test_malformed_csv_files_are_refused_with_the_line(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "f.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInput, match=reason):
        read_csv(path)


def test_a_csv_larger_than_a_batch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("id\n" + "".join(f"d-{i}\n" for i in range(MAX_BATCH + 1)), encoding="utf-8")
    with pytest.raises(InvalidInput, match="split the file"):
        read_csv(path)


@pytest.mark.parametrize(
    ("pattern", "count", "reason"),
    [
        ("cam", 2, "must contain"),
        ("cam-{x}", 2, "must contain"),
        ("cam-{n}-{m}", 2, "must contain"),
        ("cam-{n:q}", 2, "Unknown format code"),
        ("cam-{n:.0}", 2, "Precision not allowed|same id twice"),
        ("cam-{n}", 0, "1 to"),
        ("cam-{", 2, "pattern"),
    ],
)
def test_bad_patterns_are_refused(pattern: str, count: int, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        from_pattern(pattern, 1, count)


def test_pattern_numbers_from_start() -> None:
    assert [i for i, _ in from_pattern("cam-{n:02d}", 9, 3, {"a": "b"})] == ["cam-09", "cam-10", "cam-11"]
