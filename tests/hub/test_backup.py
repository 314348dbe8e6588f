"""`edgefleet hub backup`: an online backup of a running hub that a second hub starts from.

Real hubs with their own Mosquitto, real SQLite, real HTTP; the devices are MQTT test clients with the
credentials of their bundles, sending telemetry while the backup runs.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from edgefleet_cli import app
from fleet.bundle import DeviceBundle
from fleet.codec import encode
from fleet.messages import DesiredState, DeviceStatus
from fleet.signing import HubPublicKey, Verifier
from hub.backup import MANIFEST_FILE, backup_hub, check_backup
from hub.errors import BackupFailed
from hub.runtime import init_hub
from hub.store.backup import backup_sqlite
from tests.support.broker import Broker
from tests.support.hub import RunningHub, hub_settings, start_hub
from tests.support.hubproc import HubProcess
from tests.support.mqtt import TestClient, wait_for
from tests.support.wire import one_model_window

runner = CliRunner()


@pytest.fixture
def local_hub(tmp_path: Path, topic_prefix: str) -> Iterator[RunningHub]:
    """A hub with its own Mosquitto (the broker a restored hub must rebuild from the registry)."""
    h = start_hub(tmp_path / "hub", None, topic_prefix, security={"telemetry_burst": 0})  # no window refused
    yield h
    h.stop()


def _device(bundle: DeviceBundle) -> TestClient:
    url = urlsplit(bundle.broker_url)
    return TestClient(url.hostname or "", url.port or 1883, client_id=bundle.device_id,
                      username=bundle.mqtt_username, password=bundle.mqtt_password)  # fmt: skip


def _rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608  (a test's own name)


def test_a_hub_started_from_a_backup_taken_under_load_has_every_device_token_model_and_the_key(
    local_hub: RunningHub, samples: Path, tmp_path: Path, topic_prefix: str
) -> None:
    h = local_hub
    topics = h.hub.topics
    pushed = h.push_model(samples / "mobilenet-like.onnx", samples / "mobilenet-like.yaml")
    assert pushed.status_code == 201, pushed.text
    sha256 = pushed.json()["sha256"]
    operator = h.token("operator")
    with h.client() as api:
        enrolled = [api.post("/api/v1/devices", json={"id": d, "labels": {"site": "lab"}}) for d in ("cam-1", "cam-2")]
        bundles = [DeviceBundle.model_validate(r.json()["bundle"]) for r in enrolled]
        deployed = api.post(
            "/api/v1/deployments", json={"model": "mobilenet-like", "version": "1.0.0", "selector": "site"}
        )
        assert deployed.status_code == 201, deployed.text
    cam = _device(bundles[0])
    online = DeviceStatus(device_id="cam-1", state="online", ts=time.time(), session="s")
    cam.publish(topics.status("cam-1"), encode(online), retain=True)

    # telemetry keeps arriving while the backup runs
    stop, sent = threading.Event(), [0]

    def send() -> None:
        while not stop.is_set():
            sent[0] += 1
            window = one_model_window("cam-1", seq=sent[0], start=time.time() - 10, end=time.time(), requests=5)
            cam.publish(topics.telemetry("cam-1"), encode(window))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(lambda: h.hub.store.telemetry_seq("cam-1", since=None, until=None).count >= 20, timeout=30)
        dest = tmp_path / "backup"
        result = runner.invoke(app, ["hub", "backup", "--data-dir", str(h.data_dir), "--out", str(dest)])
        assert result.exit_code == 0, result.output
        backed_up = _rows(dest / "hub.db", "telemetry")
        wait_for(lambda: h.hub.store.telemetry_seq("cam-1", since=None, until=None).count > backed_up, timeout=30)
    finally:
        stop.set()
        sender.join()
        cam.close()
    assert "1 model blob(s)" in result.output and "restore: edgefleet hub serve --data-dir" in result.output

    # consistent while windows kept being written (the hub went on storing them past the snapshot)
    with sqlite3.connect(dest / "hub.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert backed_up >= 20, "what was stored before the backup began is in it"
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    assert manifest["database"] == "sqlite" and list(manifest["blobs"]) == [sha256]
    assert {"hub.db", "hub-signing.pem", "broker-hub-account.json"} <= set(manifest["files"])
    assert manifest["missing_blobs"] == [] and manifest["corrupt_blobs"] == []
    for secret in ("hub.db", "hub-signing.pem", "broker-hub-account.json"):
        assert stat.S_IMODE((dest / secret).stat().st_mode) == 0o600, secret
    assert check_backup(dest) == []
    assert not (dest / "mosquitto").exists() and not list(dest.glob("*.lock"))

    # restore: a second hub, on other ports, starts on the backup folder itself
    restored = RunningHub(hub_settings(dest, None, topic_prefix), h.admin_token).start()
    try:
        assert restored.url != h.url and restored.hub.broker_url != h.hub.broker_url
        with restored.client() as api, restored.client(operator) as as_operator:
            assert {d["id"] for d in api.get("/api/v1/devices").json()} == {"cam-1", "cam-2"}
            models = api.get("/api/v1/models").json()
            assert [(m["name"], m["version"], m["sha256"]) for m in models] == [("mobilenet-like", "1.0.0", sha256)]
            assert as_operator.get("/api/v1/devices").status_code == 200, "tokens made before the backup still work"
        assert restored.hub.registry.missing_blobs() == {}
        assert restored.hub.registry.blob_path(sha256).read_bytes() == (samples / "mobilenet-like.onnx").read_bytes()
        # a device reaches the restored hub's broker with its old credentials and gets a desired state its pinned
        # key verifies: the same signing key
        moved = bundles[1].model_copy(update={"broker_url": restored.hub.broker_url})
        cam2 = _device(moved)
        try:
            cam2.subscribe(restored.hub.topics.desired("cam-2"))
            payload = bytes(cam2.get(timeout=30).payload)
        finally:
            cam2.close()
        verifier = Verifier(HubPublicKey.from_text(bundles[1].hub_public_key), "cam-2")
        desired = verifier.verify(payload, DesiredState, now=time.time(), last_version=None)
        assert [m.name for m in desired.models] == ["mobilenet-like"]
        assert manifest["signing_public_key"] == bundles[1].hub_public_key
    finally:
        restored.stop()


def test_a_writer_committing_between_every_step_does_not_restart_the_copy(tmp_path: Path, topic_prefix: str) -> None:
    """The copy reads one snapshot: without it SQLite restarts a stepped backup whenever another connection
    wrote, and a hub writing telemetry all the time would never finish its backup."""
    settings = hub_settings(tmp_path / "hub", None, topic_prefix)
    init_hub(settings)
    writer = sqlite3.connect(settings.db_path, isolation_level=None)
    writer.execute("CREATE TABLE filler (n INTEGER, pad BLOB)")
    with writer:
        writer.execute("BEGIN")
        writer.executemany("INSERT INTO filler VALUES (?, randomblob(2000))", [(n,) for n in range(2000)])
    steps = []

    def write_between_steps(done: int, total: int) -> None:
        steps.append(done)
        if len(steps) > total:  # each step copies 16 pages: more steps than pages is starting over
            raise AssertionError("the copy keeps starting over")
        writer.execute("INSERT INTO filler VALUES (-1, randomblob(2000))")  # commits at once (autocommit)

    backup_sqlite(settings.db_path, tmp_path / "copy.db", progress=write_between_steps, pages=16)
    writer.close()
    assert len(steps) > 10 and steps == sorted(steps), "many steps, each further on: it never started over"
    assert _rows(tmp_path / "copy.db", "filler") == 2000, "the copy is the database as it was when it began"
    assert _rows(settings.db_path, "filler") == 2000 + len(steps)


def test_refusals_say_why_and_copy_nothing(tmp_path: Path, topic_prefix: str) -> None:
    settings = hub_settings(tmp_path / "hub", None, topic_prefix)
    init_hub(settings)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cases = [
        (settings.data_dir, full, "is not empty"),
        (settings.data_dir, settings.data_dir / "inside", "overlaps the data directory"),
        (tmp_path / "nothing", tmp_path / "out", "is not a hub's data directory"),
        (settings.data_dir, full / "keep.txt", "exists and is not a folder"),
    ]
    for data_dir, dest, reason in cases:
        result = runner.invoke(app, ["hub", "backup", "--data-dir", str(data_dir), "--out", str(dest)])
        assert result.exit_code == 1 and reason in result.output, result.output
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and (full / "keep.txt").read_text() == "mine"
    assert not (settings.data_dir / "inside").exists() and not (tmp_path / "out").exists()


def test_a_blob_whose_bytes_do_not_match_its_name_is_left_out_and_named(tmp_path: Path, topic_prefix: str) -> None:
    settings = hub_settings(tmp_path / "hub", None, topic_prefix)
    init_hub(settings)
    bad = "ab" + "0" * 62
    (settings.blob_dir / "ab").mkdir(parents=True)
    (settings.blob_dir / "ab" / bad).write_bytes(b"not these bytes")
    report = backup_hub(settings, tmp_path / "backup")
    assert report.corrupt_blobs == [bad] and report.blobs == {}
    assert not (tmp_path / "backup" / "blobs" / "ab" / bad).exists()
    (tmp_path / "backup" / "hub-signing.pem").write_bytes(b"changed")
    assert check_backup(tmp_path / "backup") == ["hub-signing.pem: its bytes changed since the backup"]
    with pytest.raises(BackupFailed, match="does not load"):
        settings.key_path.write_bytes(b"not a key")
        backup_hub(settings, tmp_path / "again")


def test_on_postgresql_the_database_is_left_to_its_own_tools_and_the_rest_is_backed_up(
    tmp_path: Path, topic_prefix: str
) -> None:
    settings = hub_settings(tmp_path / "hub", None, topic_prefix)
    init_hub(settings)
    settings.db_path.unlink()  # a PostgreSQL hub has no hub.db; nothing connects to the database
    dest = tmp_path / "backup"
    result = runner.invoke(
        app, ["hub", "backup", "--data-dir", str(settings.data_dir), "--out", str(dest),
              "--database-url", "postgresql://hub@127.0.0.1:1/fleet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "PostgreSQL is not included: back it up with pg_dump" in result.output
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    assert manifest["database"] == "postgresql" and set(manifest["files"]) == {
        "hub-signing.pem", "broker-hub-account.json"
    }  # fmt: skip
    assert not (dest / "hub.db").exists() and check_backup(dest) == []
    assert manifest["instance_id"] is None  # read from the database when it answers; a backup never waits on it


def test_check_backup_names_each_problem_and_exits_1_and_says_when_the_backup_is_complete(
    tmp_path: Path, topic_prefix: str
) -> None:
    settings = hub_settings(tmp_path / "hub", None, topic_prefix)
    init_hub(settings)
    blob = "cd" + "0" * 62  # listed in the manifest below, absent from the folder
    dest = tmp_path / "backup"
    assert (
        runner.invoke(app, ["hub", "backup", "--data-dir", str(settings.data_dir), "--out", str(dest)]).exit_code == 0
    )
    manifest = json.loads((dest / MANIFEST_FILE).read_text())

    whole = runner.invoke(app, ["hub", "check-backup", str(dest)])
    assert whole.exit_code == 0, whole.output
    n = len(manifest["files"])
    assert f"backup {dest} is complete: {n} files, 0 blobs, taken {manifest['created_at']}" in whole.output

    (dest / "hub-signing.pem").write_bytes(b"changed")
    (dest / "broker-hub-account.json").unlink()
    manifest["blobs"][blob] = 3
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest))
    broken = runner.invoke(app, ["hub", "check-backup", str(dest)])
    assert broken.exit_code == 1, broken.output
    assert "broker-hub-account.json: missing" in broken.output
    assert "hub-signing.pem: its bytes changed since the backup" in broken.output
    assert f"blobs/cd/{blob}: missing" in broken.output and "3 problem(s)" in broken.output

    (dest / MANIFEST_FILE).unlink()
    unfinished = runner.invoke(app, ["hub", "check-backup", str(dest)])
    assert unfinished.exit_code == 1 and "the backup did not finish" in unfinished.output, unfinished.output


def test_a_backup_that_fails_partway_removes_the_folder_it_created_and_names_one_it_did_not(
    tmp_path: Path, topic_prefix: str
) -> None:
    """A file that cannot be read stops the backup after the database was copied: the error says so, a folder
    the command created goes, and an empty folder the operator gave keeps what was written and is named."""
    settings = hub_settings(tmp_path / "hub", None, topic_prefix)
    init_hub(settings)
    account = settings.data_dir / "broker-hub-account.json"
    account.unlink()
    account.mkdir()  # read after hub.db: copying it fails (is a directory)
    new = tmp_path / "new"
    result = runner.invoke(app, ["hub", "backup", "--data-dir", str(settings.data_dir), "--out", str(new)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert "the backup did not finish" in result.output and f"{new}, which it had created, was removed" in result.output
    assert not new.exists()

    given = tmp_path / "given"
    given.mkdir()
    result = runner.invoke(app, ["hub", "backup", "--data-dir", str(settings.data_dir), "--out", str(given)])
    assert result.exit_code == 1, result.output
    assert f"{given} holds an unfinished backup (no {MANIFEST_FILE})" in " ".join(result.output.split())
    assert given.is_dir() and (given / "hub.db").exists() and not (given / MANIFEST_FILE).exists()
    checked = runner.invoke(app, ["hub", "check-backup", str(given)])
    assert checked.exit_code == 1 and "the backup did not finish" in checked.output


def _instance_id(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()[0])


def test_a_copy_restored_beside_its_original_takes_a_new_instance_id_and_never_takes_over_its_broker_session(
    running_hub: RunningHub, broker: Broker, tmp_path: Path, topic_prefix: str
) -> None:
    """Both hubs on one broker (a restore test, a migration, a staging copy): the copy kept the original's instance
    id, so its client id `edgefleet-hub-<id>`, and each hub's connect closed the other's connection, again and
    again (the original connected twice, then more, where it should have connected once)."""
    a = running_hub
    assert a.hub.link is not None and a.hub.link.connects == 1
    original = a.hub.instance_id
    dest = tmp_path / "backup"
    result = runner.invoke(app, ["hub", "backup", "--data-dir", str(a.data_dir), "--out", str(dest)])
    assert result.exit_code == 0, result.output
    assert json.loads((dest / MANIFEST_FILE).read_text())["instance_id"] == original
    assert check_backup(dest) == []

    copy = HubProcess(dest, broker.url, topic_prefix)  # a second hub process, the backup folder its data dir
    copy.admin_token = a.admin_token
    copy.start()  # returns once it serves and is connected to the broker
    try:
        # a round trip through the original's connection after the copy connected: had the broker closed it for
        # the copy, the acknowledgement could only come on a new connection
        probe = a.hub.link.publish(f"{topic_prefix}/probe", b"after the copy connected", qos=1)
        try:
            wait_for(probe.is_published, timeout=30)
        except RuntimeError as e:  # paho: "not currently connected", the broker closed it for the copy
            pytest.fail(f"the copy took over the original's broker session: {e}")
        assert a.hub.link.connects == 1 and a.hub.mqtt_connected, "the copy took over the original's session"
        events = copy.get("/api/v1/events", action="hub.restored")
        assert [e["details"]["backup_of"] for e in events] == [original]
        renamed = events[0]["details"]["instance_id"]
        assert renamed != original
        assert copy.get("/healthz")["mqtt_connected"]
    finally:
        assert copy.stop() == 0
    assert _instance_id(dest / "hub.db") == renamed and _instance_id(a.data_dir / "hub.db") == original
    assert f"edgefleet-hub-{renamed}" in copy.output()
    # started again, the copy keeps the id it took (it is a hub of its own now), and says nothing more
    copy.start()
    try:
        assert len(copy.get("/api/v1/events", action="hub.restored")) == 1
    finally:
        assert copy.stop() == 0
    assert _instance_id(dest / "hub.db") == renamed
