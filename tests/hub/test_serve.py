"""`edgefleet hub init` + `edgefleet hub serve` as real processes: local Mosquitto, API, clean SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from fleet.codec import encode
from fleet.topics import Topics
from tests.support.broker import Broker, free_port
from tests.support.hubproc import CLI, ROOT, HubProcess
from tests.support.metrics import scrape
from tests.support.mqtt import TestClient, wait_for
from tests.support.postgres import PostgresServer
from tests.support.wire import one_model_window


def _mosquitto_children(hub: HubProcess) -> list[psutil.Process]:
    assert hub.proc is not None
    return [c for c in psutil.Process(hub.proc.pid).children() if "mosquitto" in c.name()]


def _gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_serve_runs_a_local_broker_and_stops_it_on_sigterm(tmp_path: Path, mosquitto_binary: str) -> None:
    hub = HubProcess(tmp_path / "hub", None, mosquitto_binary=mosquitto_binary)
    hub.init()
    try:
        hub.start()
        health = hub.get("/healthz")
        assert health["status"] == "ok" and health["broker_url"].startswith("mqtt://127.0.0.1:")
        assert hub.enrol("cam-1").broker_url == health["broker_url"]
        children = _mosquitto_children(hub)
        assert len(children) == 1
        assert hub.stop() == 0, hub.output()
        assert _gone(children[0])
    finally:
        hub.kill()


def test_a_taken_api_or_broker_port_is_one_line_naming_the_option(tmp_path: Path, mosquitto_binary: str) -> None:
    """Following the README on a machine where 8080 or 1883 is in use (Debian's mosquitto package starts a
    broker on 1883): a taken API port ended in a traceback, a taken broker port in Mosquitto's log."""
    hub = HubProcess(tmp_path / "hub", None, mosquitto_binary=mosquitto_binary)
    hub.init()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        for ports, option in ((["--port", str(taken), "--broker-port", "0"], "--port"),
                              (["--port", "0", "--broker-port", str(taken)], "--broker-port")):  # fmt: skip
            cmd = [*CLI, "hub", "serve", "--data-dir", str(hub.data_dir), *ports]
            done = subprocess.run(cmd, cwd=ROOT, env=hub.env, capture_output=True, text=True, timeout=60, check=False)
            errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            assert errors == [errors[0]] and f"port {taken} on 127.0.0.1 is taken" in errors[0], done.stderr
            assert f"pass {option} (0 picks a free one)" in errors[0]
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(hub.data_dir) in " ".join(p.info["cmdline"] or [])]


def test_a_killed_hub_takes_its_broker_with_it(tmp_path: Path, mosquitto_binary: str) -> None:
    hub = HubProcess(tmp_path / "hub", None, mosquitto_binary=mosquitto_binary)
    hub.init()
    try:
        hub.start()
        children = _mosquitto_children(hub)
        assert children, hub.output()
        hub.kill()  # SIGKILL: no clean shutdown runs
        gone, _alive = psutil.wait_procs(children, timeout=10)
        assert gone == children, "the hub's Mosquitto outlived it"
    finally:
        hub.kill()


def test_serve_on_postgresql_keeps_its_store_in_the_database(
    tmp_path: Path, postgres: PostgresServer, broker: Broker, topic_prefix: str
) -> None:
    """`hub init/serve` with a `postgresql://` database URL: every write, telemetry included, lands in PostgreSQL."""
    url = postgres.create_database()
    hub = HubProcess(tmp_path / "hub", broker.url, topic_prefix, env={"EDGEFLEET_HUB_DATABASE_URL": url})
    hub.init()
    dev = TestClient(broker.host, broker.port)
    try:
        hub.start()
        hub.enrol("cam-1")
        start = time.time() - 60
        for seq in range(3):
            w = one_model_window(device_id="cam-1", seq=seq, start=start + seq, end=start + seq + 1, requests=5)
            dev.publish(Topics(topic_prefix).telemetry("cam-1"), encode(w))

        def stored() -> Any:
            body = hub.get("/api/v1/telemetry/devices/cam-1")
            return body["seq"]["count"] == 3 and body

        body = wait_for(stored, timeout=30)
        assert body["summary"]["windows"] == 3  # read in the same snapshot as `seq`
        assert body["summary"]["requests"] == 15
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM telemetry WHERE device_id = 'cam-1'").fetchone() == (3,)
            assert conn.execute("SELECT count(*) FROM devices").fetchone() == (1,)
        assert not (tmp_path / "hub" / "hub.db").exists()
        assert hub.stop() == 0, hub.output()
    finally:
        dev.close()
        hub.kill()


DIRTY = ("Traceback", "CancelledError", "timeout graceful shutdown exceeded", "restarting", "a new one")


def test_sigterm_with_a_dashboard_open_and_ctrl_c_to_the_group_stop_cleanly(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    broker_port = free_port()
    env = {"EDGEFLEET_HUB_BROKER_LOCAL_PORT": str(broker_port)}
    term = HubProcess(tmp_path / "hub", None, log=tmp_path / "term.log", env=env, mosquitto_binary=mosquitto_binary,
                      own_session=True)  # fmt: skip
    token = term.init()
    try:
        term.start()
        assert term.get("/healthz")["broker_url"] == f"mqtt://127.0.0.1:{broker_port}"
        with httpx.Client(base_url=term.url, timeout=30) as browser:
            assert browser.post("/login", data={"token": token, "next": "/"}).status_code == 303
            with browser.stream("GET", "/live", headers={"Accept": "text/event-stream"}) as live:
                lines = live.iter_lines()
                assert next(lines).startswith("retry: ")  # the stream is open, as in a browser tab
                assert term.stop() == 0, term.output()
                assert list(lines) is not None  # the server ended the stream; it did not hang on it
    finally:
        term.kill()
    # a stream that held the shutdown up would have run into uvicorn's drain timeout, which it logs
    assert not [d for d in DIRTY if d in term.output()], term.output()

    ctrl_c = HubProcess(tmp_path / "hub", None, log=tmp_path / "int.log", env=env, mosquitto_binary=mosquitto_binary,
                        own_session=True)  # fmt: skip
    try:
        ctrl_c.start()
        children = _mosquitto_children(ctrl_c)
        assert len(children) == 1
        assert ctrl_c.proc is not None
        os.killpg(ctrl_c.proc.pid, signal.SIGINT)  # Ctrl-C in the hub's terminal: the whole foreground group
        assert ctrl_c.proc.wait(30) == 0, ctrl_c.output()
        assert _gone(children[0])
    finally:
        ctrl_c.kill()
    assert not [d for d in DIRTY if d in ctrl_c.output()], ctrl_c.output()  # nothing restarted while stopping


def test_a_replica_killed_before_it_stored_telemetry_gets_it_again_from_the_broker(
    tmp_path: Path, broker: Broker, topic_prefix: str
) -> None:
    """MQTT 5: a window is acknowledged to the broker only once stored. The telemetry writer is stopped (SIGSTOP)
    so that windows wait uncommitted, then the hub process is SIGKILLed: restarted with the same session, it gets
    them again and stores each once; windows it had stored before are not counted twice."""
    env = {"EDGEFLEET_HUB_BROKER_MQTT_VERSION": "5", "EDGEFLEET_HUB_BROKER_SHARED_GROUP": "hubs",
           "EDGEFLEET_HUB_BROKER_REPLICA": "a"}  # fmt: skip
    hub = HubProcess(tmp_path / "hub", broker.url, topic_prefix, env=env)
    hub.init()
    dev = TestClient(broker.host, broker.port)
    topic = Topics(topic_prefix).telemetry("cam-1")
    start = time.time() - 60

    def send(seqs: range) -> None:
        for seq in seqs:
            w = one_model_window(device_id="cam-1", seq=seq, start=start + seq, end=start + seq + 1, requests=5)
            dev.publish(topic, encode(w))  # QoS 1

    def count() -> int:
        return int(hub.get("/api/v1/telemetry/devices/cam-1")["seq"]["count"])

    try:
        hub.start()
        hub.enrol("cam-1")
        send(range(5))
        wait_for(lambda: count() == 5 and scrape(hub.url, "edgefleet_hub_mqtt_unacknowledged") == 0, timeout=30)
        assert hub.proc is not None
        (writer,) = [c for c in psutil.Process(hub.proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        writer.suspend()  # SIGSTOP: what the hub receives from now on waits uncommitted
        send(range(5, 12))
        wait_for(lambda: scrape(hub.url, "edgefleet_hub_mqtt_unacknowledged") == 7, timeout=30)
        hub.kill()
        writer.kill()
        hub.start()
        wait_for(lambda: count() == 12, timeout=30)
        body = hub.get("/api/v1/telemetry/devices/cam-1")
        assert body["summary"]["requests"] == 12 * 5  # each window counted once in the rollups
        assert scrape(hub.url, "edgefleet_hub_mqtt_unacknowledged") == 0
        assert hub.stop() == 0, hub.output()
    finally:
        dev.close()
        hub.kill()


class _Outage:
    """A hub serving over PostgreSQL with device cam-1 enrolled: 5 windows stored, then the database refusing
    connections while 7 more arrive (the telemetry writer holds them)."""

    def __init__(self, tmp_path: Path, postgres: PostgresServer, broker: Broker, topic_prefix: str, mqtt_version: str):
        self.postgres = postgres
        self.url = postgres.create_database()
        env = {"EDGEFLEET_HUB_DATABASE_URL": self.url, "EDGEFLEET_HUB_BROKER_MQTT_VERSION": mqtt_version}
        self.hub = HubProcess(tmp_path / "hub", broker.url, topic_prefix, env=env)
        self.hub.init()
        self.dev = TestClient(broker.host, broker.port)
        self.topic = Topics(topic_prefix).telemetry("cam-1")
        self.start = time.time() - 60

    def send(self, seqs: range) -> None:
        for seq in seqs:
            w = one_model_window(device_id="cam-1", seq=seq, start=self.start + seq, end=self.start + seq + 1,
                                 requests=5)  # fmt: skip
            self.dev.publish(self.topic, encode(w))  # QoS 1: the broker has it when this returns

    def count(self) -> int:
        return int(self.hub.get("/api/v1/telemetry/devices/cam-1")["seq"]["count"])

    def held(self) -> psutil.Process:
        """Start the hub, store 5 windows, take the database away, send 7 more; the writer process (holding)."""
        self.hub.start()
        self.hub.enrol("cam-1")
        self.send(range(5))
        wait_for(lambda: self.count() == 5, timeout=30)
        self.postgres.block(self.url)
        self.send(range(5, 12))
        waits = "edgefleet_hub_store_database_waits_total"
        wait_for(lambda: scrape(self.hub.url, waits) >= 1, timeout=30)  # the writer holds a batch
        assert self.hub.proc is not None
        (writer,) = [c for c in psutil.Process(self.hub.proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        return writer

    def restarted_stores_all_once(self) -> None:
        """Bring the database back and start the hub again: every window is stored, each once."""
        self.postgres.block(self.url, blocked=False)
        self.hub.start()
        try:
            wait_for(lambda: self.count() == 12, timeout=30)
        except TimeoutError:
            pytest.fail(f"{self.count()} of 12 windows stored")
        body = self.hub.get("/api/v1/telemetry/devices/cam-1")
        assert body["summary"]["requests"] == 12 * 5  # each window counted once in the rollups

    def close(self) -> None:
        self.dev.close()
        self.hub.kill()
        self.postgres.block(self.url, blocked=False)


@pytest.mark.parametrize("mqtt_version", ["3.1.1", "5"])
def test_a_hub_killed_while_its_database_is_away_loses_no_telemetry_it_received(
    tmp_path: Path, postgres: PostgresServer, broker: Broker, topic_prefix: str, mqtt_version: str
) -> None:
    """PostgreSQL refuses connections, so the telemetry writer holds the windows that arrive; the hub and its
    writer process are SIGKILLed meanwhile (a container stopped, the host losing power: a writer that outlived
    its hub would write what it holds once the database is back). Restarted once the database is back, the hub
    stores every window the device sent, each once: none was acknowledged to the broker and then forgotten
    (over 3.1.1 the hub's journal holds them, over 5 the broker does)."""
    o = _Outage(tmp_path, postgres, broker, topic_prefix, mqtt_version)
    try:
        writer = o.held()
        o.hub.kill()
        writer.kill()
        writer.wait(10)
        o.restarted_stores_all_once()
    finally:
        o.close()


@pytest.mark.parametrize("mqtt_version", ["3.1.1", "5"])
def test_a_writer_waiting_for_the_database_does_not_outlive_its_killed_hub(
    tmp_path: Path, postgres: PostgresServer, broker: Broker, topic_prefix: str, mqtt_version: str
) -> None:
    """Only the hub's main process is SIGKILLed (the OOM killer, a crash) while its writer process waits for an
    absent database: the writer, which sees no closed pipe while it waits, used to go on waiting (an orphan that
    would write beside the next hub). It now leaves with its hub, and what it held reaches the restarted hub
    (journal on 3.1.1, broker on 5): every window stored once."""
    o = _Outage(tmp_path, postgres, broker, topic_prefix, mqtt_version)
    try:
        writer = o.held()
        o.hub.kill()
        try:
            wait_for(lambda: _gone(writer), timeout=30)
        except TimeoutError:
            writer.kill()
            pytest.fail("the telemetry writer outlived its hub process")
        o.restarted_stores_all_once()
    finally:
        o.close()


def test_a_journal_that_cannot_be_written_is_counted_in_the_metrics(
    tmp_path: Path, broker: Broker, topic_prefix: str
) -> None:
    """The journal's folder cannot take files (a full disk, here a file in its place): the hub goes on storing
    telemetry, and /metrics counts each window it could not journal (it used to be a log line only)."""
    hub = HubProcess(tmp_path / "hub", broker.url, topic_prefix)
    hub.init()
    dev = TestClient(broker.host, broker.port)
    topic = Topics(topic_prefix).telemetry("cam-1")
    start = time.time() - 60
    try:
        hub.start()
        hub.enrol("cam-1")
        journal = hub.data_dir / "telemetry-journal" / "hub"
        shutil.rmtree(journal)
        journal.write_bytes(b"")  # opening a segment in it now fails (ENOTDIR)
        for seq in range(3):
            w = one_model_window(device_id="cam-1", seq=seq, start=start + seq, end=start + seq + 1, requests=5)
            dev.publish(topic, encode(w))
        wait_for(lambda: hub.get("/api/v1/telemetry/devices/cam-1")["seq"]["count"] == 3, timeout=30)
        assert scrape(hub.url, "edgefleet_hub_telemetry_journal_errors_total") == 3
    finally:
        dev.close()
        hub.kill()


def test_a_telemetry_writer_killed_is_counted_in_the_metrics(tmp_path: Path, broker: Broker, topic_prefix: str) -> None:
    """The telemetry writer process is killed while it holds 3 windows it has not committed (MQTT 5: no journal
    to send them again): the hub starts a new one, and /metrics counts the restart and the 3 windows lost (both
    used to be in the store's counters only)."""
    hub = HubProcess(tmp_path / "hub", broker.url, topic_prefix, env={"EDGEFLEET_HUB_BROKER_MQTT_VERSION": "5"})
    hub.init()
    dev = TestClient(broker.host, broker.port)
    topic = Topics(topic_prefix).telemetry("cam-1")
    start = time.time() - 60
    try:
        hub.start()
        hub.enrol("cam-1")
        assert hub.proc is not None
        (writer,) = [c for c in psutil.Process(hub.proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        writer.suspend()  # SIGSTOP: what arrives now is sent to it and waits uncommitted
        for seq in range(3):
            w = one_model_window(device_id="cam-1", seq=seq, start=start + seq, end=start + seq + 1, requests=5)
            dev.publish(topic, encode(w))

        def handed_over() -> bool:  # all 3 received, none waiting in the hub: sent to the stopped writer
            unacked = scrape(hub.url, "edgefleet_hub_mqtt_unacknowledged")
            return unacked == 3 and scrape(hub.url, "edgefleet_hub_store_queue") == 0

        wait_for(handed_over, timeout=30)
        writer.kill()
        wait_for(lambda: scrape(hub.url, "edgefleet_hub_telemetry_writer_restarts_total") == 1, timeout=30)
        assert scrape(hub.url, "edgefleet_hub_telemetry_lost_total") == 3
    finally:
        dev.close()
        hub.kill()
