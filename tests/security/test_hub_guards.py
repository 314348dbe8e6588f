"""Guards around the hub itself (issue 18 item 7), against `hub serve` as a process: one hub per data dir,
an admin always left, private files."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.support.hubproc import HubProcess
from tests.support.outcomes import record


def test_a_second_hub_on_the_same_data_dir_refuses_and_the_first_keeps_its_session(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    first = HubProcess(tmp_path / "hub", None, mosquitto_binary=mosquitto_binary)
    first.init()
    first.start()
    try:
        second = subprocess.run(HubProcess(tmp_path / "hub", None, mosquitto_binary=mosquitto_binary).command(),
                                env=first.env, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert first.proc is not None
        assert "data_dir_locked" in second.stderr and f"pid {first.proc.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        health = first.get("/healthz")
        assert health["status"] == "ok" and health["mqtt_connected"]
        assert "connect #2" not in first.output()  # its MQTT session was never taken over
    finally:
        assert first.stop() == 0
    again = HubProcess(tmp_path / "hub", None, mosquitto_binary=mosquitto_binary)  # the lock went with it
    again.start()
    assert again.stop() == 0
    record("attack", "second hub serve on a running hub's data dir", "refused", 1, 0)


def test_the_last_admin_token_cannot_be_revoked_and_secrets_are_private(tmp_path: Path, mosquitto_binary: str) -> None:
    hub = HubProcess(tmp_path / "hub", None, mosquitto_binary=mosquitto_binary)
    hub.init()
    hub.start()
    try:
        with hub.client() as c:
            tokens = c.get("/api/v1/tokens").json()
            (admin,) = [t for t in tokens if t["role"] == "admin" and not t["revoked"]]
            r = c.delete(f"/api/v1/tokens/{admin['id']}")
            assert r.status_code == 409 and "last active admin token" in r.json()["error"]["message"], r.text
            other = c.post("/api/v1/tokens", json={"name": "second-admin", "role": "admin"}).json()["token"]
        with hub.client(other) as c:  # with a second admin, the first can go
            assert c.delete(f"/api/v1/tokens/{admin['id']}").status_code == 204
            second = next(t for t in c.get("/api/v1/tokens").json() if t["name"] == "second-admin")
            assert c.delete(f"/api/v1/tokens/{second['id']}").status_code == 409
        d = tmp_path / "hub"
        private = [d / "hub.db", d / "hub-signing.pem", d / "broker-hub-account.json",
                   *(d / "mosquitto").glob("*passwords"), d / "mosquitto" / "acl"]  # fmt: skip
        private += list(d.glob("hub.db-*"))  # SQLite's WAL and shared memory
        modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in private if p.exists()}
        assert len(modes) >= 6 and set(modes.values()) == {0o600}, {k: oct(v) for k, v in modes.items()}
    finally:
        assert hub.stop() == 0
    record("attack", "revoking the last admin token", "refused", 2, 0)
