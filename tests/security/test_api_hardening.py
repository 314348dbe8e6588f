"""API hardening: failed-auth rate limit, hashed tokens, CORS off by default, security headers, audit log."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.broker import Broker
from tests.support.hub import RunningHub, start_hub
from tests.support.mqtt import wait_for
from tests.support.outcomes import record


@pytest.fixture
def strict_hub(broker: Broker, topic_prefix: str, tmp_path: Path) -> Iterator[RunningHub]:
    """A hub allowing 3 failed authentications per client, then 1 a minute."""
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, security={"auth_failure_burst": 3})
    yield h
    h.stop()


def test_failed_authentications_are_rate_limited_per_client(strict_hub: RunningHub) -> None:
    h = strict_hub
    with h.client(token="eft_guess") as bad, h.client() as good:
        assert [bad.get("/api/v1/devices").status_code for _ in range(3)] == [401, 401, 401]
        r = bad.get("/api/v1/devices")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert "too many failed authentications" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) > 0
        # while the budget is spent even a valid token from that address waits (no oracle for guesses)
        assert good.get("/api/v1/devices").status_code == 429
        assert good.get("/healthz").status_code == 200  # unauthenticated endpoints stay up
        assert all(bad.post("/api/v1/devices", json={"id": "x"}).status_code == 429 for _ in range(20))
    events = h.hub.store.list_events(since=None, until=None, subject=None, action="api.call", limit=1000)
    assert not [e for e in events if e.details.get("status") == 429]  # a refused flood does not flood the log
    record("attack", "token guessing (failed auth)", "refused", 24)


def test_successful_calls_do_not_spend_the_budget(strict_hub: RunningHub) -> None:
    with strict_hub.client() as c:
        assert all(c.get("/api/v1/devices").status_code == 200 for _ in range(10))


def test_tokens_are_stored_as_hashes_only(running_hub: RunningHub) -> None:
    h = running_hub
    token = h.token("viewer")
    with sqlite3.connect(h.data_dir / "hub.db") as db:
        rows = db.execute("SELECT hash FROM tokens").fetchall()
    assert hashlib.sha256(token.encode()).hexdigest() in {r[0] for r in rows}
    assert token.encode() not in (h.data_dir / "hub.db").read_bytes()


def test_cors_is_off_by_default(running_hub: RunningHub) -> None:
    with running_hub.client() as c:
        pre = c.options(
            "/api/v1/devices",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in pre.headers
        r = c.get("/api/v1/devices", headers={"Origin": "https://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    record("attack", "cross-origin browser call (CORS off)", "refused")


def test_cors_allows_only_configured_origins(broker: Broker, topic_prefix: str, tmp_path: Path) -> None:
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, security={"cors_origins": ["https://ops.example"]})
    try:
        with h.client() as c:
            ok = c.get("/api/v1/devices", headers={"Origin": "https://ops.example"})
            assert ok.headers["access-control-allow-origin"] == "https://ops.example"
            other = c.get("/api/v1/devices", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers
    finally:
        h.stop()


def test_security_headers_on_api_responses(running_hub: RunningHub) -> None:
    with running_hub.client() as c:
        for path in ("/api/v1/devices", "/healthz", "/api/v1/nothing-here"):
            r = c.get(path)
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert r.headers["x-frame-options"] == "DENY", path
            assert r.headers["referrer-policy"] == "no-referrer", path
        assert c.get("/api/v1/devices").headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in c.get("/healthz").headers  # only over https


def test_every_mutating_call_is_audited_refused_ones_too(running_hub: RunningHub) -> None:
    h = running_hub
    viewer = h.token("viewer")
    with h.client() as admin, h.client(token=viewer) as v, h.client(token=None) as anon:
        assert admin.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
        assert admin.patch("/api/v1/devices/cam-1/labels", json={"set": {"site": "b"}}).status_code == 200
        assert admin.post("/api/v1/devices", json={"id": "Bad ID"}).status_code == 400
        assert v.post("/api/v1/devices", json={"id": "cam-2"}).status_code == 403
        assert anon.delete("/api/v1/models/x/1.0.0").status_code in (401, 405)

        def all_audited() -> set[tuple[str, str, int, str]] | None:  # written after each response is sent
            events = admin.get("/api/v1/events", params={"action": "api.call", "limit": 100}).json()
            calls = {(e["details"]["method"], e["subject"], e["details"]["status"], e["actor"]) for e in events}
            return calls if len(calls) >= 6 else None  # the five calls above and h.token()

        seen = wait_for(all_audited)
    assert ("POST", "/api/v1/devices", 201, "admin") in seen
    assert ("PATCH", "/api/v1/devices/cam-1/labels", 200, "admin") in seen
    assert ("POST", "/api/v1/devices", 400, "admin") in seen
    assert ("POST", "/api/v1/devices", 403, "test-viewer") in seen
    assert any(m == "DELETE" and actor == "anonymous" for m, _s, _st, actor in seen)
    assert ("POST", "/api/v1/tokens", 201, "admin") in seen  # h.token() above
    assert not any(m == "GET" for m, *_r in seen)  # reads are not mutating calls


def test_dashboard_login_shares_the_failed_auth_limit(strict_hub: RunningHub) -> None:
    with httpx.Client(base_url=strict_hub.url, follow_redirects=False, timeout=30) as c:
        codes = [c.post("/login", data={"token": "eft_guess", "next": "/"}).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        r = c.post("/login", data={"token": strict_hub.admin_token, "next": "/"})
        assert r.status_code == 429 and "too many failed" in r.text
        page = c.get("/login")
        assert "content-security-policy" in page.headers and page.headers["x-frame-options"] == "DENY"
    record("attack", "token guessing (dashboard login form)", "refused", 2)
