"""A hub store whose database host drops its packets (a network partition, not a refusing server).

The store runs on a network host of its own (tests/support/netns.py), PostgreSQL on this one; the test cuts the
link between them. A read on a connection opened before the cut used to wait for TCP to give up, 930 s here (an
API call or dashboard page hanging, its thread held); libpq's `tcp_user_timeout` now ends it within
`NETWORK_TIMEOUT_S`. After a call waited out that timeout, the calls behind it (writes queued on the writer,
reads on new connections) fail at once, "not tried", with a Retry-After, instead of each waiting as long
(`hub.store.connection.Outage`). Once the link is back, and the Retry-After has passed, writes go through.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hub.errors import DatabaseUnavailable
from hub.store import Database, Device, open_store
from tests.support.netns import NetLab
from tests.support.postgres import PostgresServer, find_postgres_bin

ROOT = Path(__file__).resolve().parents[2]


def _dev(device_id: str) -> Device:
    return Device(id=device_id, labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t")


def _outcome(call: Callable[[], object]) -> dict[str, Any]:
    try:
        call()
    except DatabaseUnavailable as e:
        return {"code": e.code, "retry_after_s": e.retry_after_s, "message": e.message}
    return {"code": "answered"}


def child(url: str) -> None:
    """The store's side, on the cut-off host: one line of JSON per step, each after a line on stdin."""
    store = open_store(Database.from_url(url), telemetry_process=False, away_retry_s=60)
    try:
        store.add_device(_dev("d1"))
        assert store.get_device("d1") is not None  # this thread's read connection is open
        print(json.dumps("ready"), flush=True)
        sys.stdin.readline()  # the link is cut
        calls: dict[str, Callable[[], object]] = {"read": lambda: store.get_device("d1")}
        for i in range(3):
            calls[f"write {i}"] = lambda i=i: store.add_device(_dev(f"w{i}"))  # type: ignore[misc]
        got: dict[str, Any] = {}
        threads = [threading.Thread(target=lambda k=k, f=f: got.update({k: _outcome(f)})) for k, f in calls.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got["read again"] = _outcome(lambda: store.get_device("d1"))
        print(json.dumps(got), flush=True)
        sys.stdin.readline()  # the link is back
        for _ in range(30):  # as a client would: again after the Retry-After
            try:
                store.add_device(_dev("d2"))
                break
            except DatabaseUnavailable as e:
                time.sleep(e.retry_after_s or 1)
        print(json.dumps(sorted(d.id for d in store.list_devices())), flush=True)
    finally:
        store.close()


def _line(proc: subprocess.Popen[str], timeout: float) -> Any:
    """The child's next line as JSON; fails (not hangs) when none comes within `timeout`."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"the store's host said nothing within {timeout:g} s")
    return json.loads(proc.stdout.readline())


def test_a_database_whose_network_drops_packets_fails_calls_in_seconds_and_writes_resume(netlab: NetLab) -> None:
    host = netlab.host("store")
    bindir = find_postgres_bin()
    assert bindir is not None, "PostgreSQL is part of the test environment (make venv installs it)"
    pg = PostgresServer(bindir, listen=("127.0.0.1", host.host_ip))
    pg.start()
    try:
        url = pg.url(pg.create_database().rsplit("/", 1)[1], host=host.host_ip)
        proc = host.popen(
            [sys.executable, "-c", f"from tests.hub.test_store_cut_off import child; child({url!r})"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        with proc.stdin, proc.stdout:
            try:
                assert _line(proc, 60) == "ready"
                host.cut()
                proc.stdin.write("cut\n")
                proc.stdin.flush()
                got = _line(proc, 120)  # without tcp_user_timeout the read alone took 930 s
                host.heal()
                proc.stdin.write("healed\n")
                proc.stdin.flush()
                devices = _line(proc, 60)
                assert proc.wait(30) == 0
            finally:
                proc.kill()  # (no-op once it exited)
                proc.wait(30)
    finally:
        pg.stop()
    assert {got[k]["code"] for k in got} == {"database_unavailable"}, got
    # the first write waited out the timeout on its connection (and its new connection may have been refused);
    # the two queued behind it were refused at once, not tried, and so was a read after it all
    refused = [k for k, v in got.items() if "not tried" in v["message"] and v["retry_after_s"] >= 1]
    assert "read again" in refused and sum(k.startswith("write") for k in refused) >= 2, got
    assert devices == ["d1", "d2"]  # nothing written during the cut, the write after it went through
