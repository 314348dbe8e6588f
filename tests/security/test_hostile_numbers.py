"""An enrolled device sends numbers the hub cannot store, on its own topics, against `hub serve` as a process.

Issue 18 items 1, 2 and 5: a reported state with `seq` 2**63 killed the store's writer holding its
transaction (every API write then hung, SIGTERM no longer stopped the hub, and the retained copy killed it
again at every restart); telemetry windows with 2**63 counts restarted the telemetry writer and the other
devices lost their windows; a report far ahead of the hub's clock won over every later genuine one. Now
each such message is refused at the schema or by the hub's clock and counted (a report or status stamped
far ahead is taken with its stamps set back to `CLOCK_SKEW_S` ahead: it wins for at most that long, and a
genuine report with a higher seq at once); nothing else is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.bundle import DeviceBundle
from fleet.histogram import N_BUCKETS
from fleet.limits import CLOCK_SKEW_S
from fleet.messages import ModelWindow, ReportedState, TelemetryWindow
from fleet.topics import Topics
from tests.support.hubproc import HubProcess
from tests.support.mqtt import TestClient, wait_for
from tests.support.outcomes import record

BIG = 2**63
GOOD_WINDOWS = 12


def _device(hub: HubProcess, bundle: DeviceBundle) -> TestClient:
    host, port = hub.broker
    return TestClient(host, port, username=bundle.mqtt_username, password=bundle.mqtt_password)


def _window(device: str, seq: int, **changes: Any) -> bytes:
    now = time.time()
    model = ModelWindow(name="m", version="1.0.0", requests=3)
    doc = TelemetryWindow(device_id=device, seq=0, start=now - 10, end=now, models=[model]).model_dump(mode="json")
    doc["seq"] = seq
    entry = doc["models"][0]  # the served model's counts and histogram
    for key, value in changes.items():
        if key == "bucket0":
            entry["latency"]["counts"] = [value] + [0] * (N_BUCKETS - 1)
        elif key == "sum_ms":
            entry["latency"]["sum_ms"] = value
        elif key in ("requests", "errors", "queue_depth"):
            entry[key] = value
        else:
            doc[key] = value
    return json.dumps(doc, separators=(",", ":")).encode()


def _reported(device: str, seq: int, **changes: Any) -> bytes:
    doc = ReportedState(device_id=device, seq=1, ts=time.time()).model_dump(mode="json")
    doc.update(seq=seq, **changes)
    return json.dumps(doc).encode()


# Windows no store can hold, or that claim to come from the future: (what, payload builder)
HOSTILE_WINDOWS: list[tuple[str, Callable[[str, int], bytes]]] = [
    ("seq 2^63", lambda d, i: _window(d, BIG + i)),
    ("requests 2^63", lambda d, i: _window(d, 1000 + i, requests=BIG)),
    ("histogram count 2^63", lambda d, i: _window(d, 2000 + i, bucket0=BIG)),
    ("memory 2^63", lambda d, i: _window(d, 3000 + i, memory_bytes=BIG)),
    ("errors -1", lambda d, i: _window(d, 4000 + i, errors=-1)),
    ("cpu 1e999 (infinity)", lambda d, i: _window(d, 5000 + i, cpu_percent=1e999)),
    ("latency sum NaN", lambda d, i: _window(d, 6000 + i).replace(b'"sum_ms":0.0', b'"sum_ms":NaN')),
    ("window an hour ahead", lambda d, i: _window(d, 7000 + i, start=time.time() + 3600, end=time.time() + 3660)),
    ("window ending before it starts", lambda d, i: _window(d, 8000 + i, start=time.time(), end=time.time() - 5)),
]


def test_out_of_range_numbers_from_a_device_are_refused_and_nothing_else_is_lost(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    hub = HubProcess(tmp_path / "hub", None, mosquitto_binary=mosquitto_binary)
    hub.init()
    hub.start()
    topics = Topics("fleet/v1")
    try:
        bundles = {d: hub.enrol(d) for d in ("evil", "good-1", "good-2")}
        evil = _device(hub, bundles["evil"])
        good = {d: _device(hub, bundles[d]) for d in ("good-1", "good-2")}
        # the report that killed the writer, retained so the broker hands it to the hub at every (re)start
        evil.publish(topics.reported("evil"), _reported("evil", BIG), retain=True)
        hostile_reports = [
            _reported("evil", 10, desired_version=2**64),
            _reported("evil", 11, ts=time.time() + 10 * CLOCK_SKEW_S),  # far ahead: taken, its stamp set back
            _reported("evil", 12, ts=1e999),
        ]
        for payload in hostile_reports:
            evil.publish(topics.reported("evil"), payload)
        # interleave: 4 rounds of every hostile window kind from one device, good windows from the others
        sent = 0
        for seq in range(GOOD_WINDOWS):
            for _what, make in HOSTILE_WINDOWS if seq < 4 else []:
                evil.publish(topics.telemetry("evil"), make("evil", seq))
                sent += 1
            for d, c in good.items():
                c.publish(topics.telemetry(d), _window(d, seq))
        genuine = ReportedState(device_id="evil", seq=20, ts=time.time())
        evil.publish(topics.reported("evil"), genuine.model_dump_json().encode(), retain=True)

        def settled() -> dict[str, Any] | None:  # every message sent has been written or refused
            stats = {d: hub.get(f"/api/v1/telemetry/devices/{d}")["seq"] for d in good}
            device = hub.get("/api/v1/devices/evil")
            refused = sum(n for k, n in hub.get("/api/v1/ingest")["rejected"].items() if k.startswith("telemetry/"))
            ok = all(s["count"] == GOOD_WINDOWS for s in stats.values()) and (device["reported"] or {}).get("seq") == 20
            return stats if ok and refused >= sent else None

        stats = wait_for(settled, timeout=60)
        assert all(s["missing"] == 0 for s in stats.values()), stats
        with hub.client() as api:  # API writes go through the same writer: it is alive and not stuck
            r = api.patch("/api/v1/devices/good-1/labels", json={"set": {"checked": "yes"}})
            assert r.status_code == 200, r.text
            assert 'edgefleet_hub_ingest_clock_clamped_total{kind="reported"} 1.0' in api.get("/metrics").text
        ingest = hub.get("/api/v1/ingest")
        rejected, store = ingest["rejected"], ingest["store"]
        assert rejected.get("reported/malformed", 0) == 3, rejected  # 2^63, 2^64, 1e999
        assert "reported/clock_ahead" not in rejected, rejected
        assert ingest["clamped"] == {"reported": 1}, ingest  # set back to CLOCK_SKEW_S ahead: seq 20 still wins
        assert rejected.get("telemetry/malformed", 0) == sent - 4, rejected
        assert rejected.get("telemetry/clock_ahead", 0) == 4, rejected
        assert store["write_errors"] == 0 and store["writer_restarts"] == 0 and store["telemetry_lost"] == 0, store
        evil_seq = hub.get("/api/v1/telemetry/devices/evil")["seq"]
        assert evil_seq["count"] == 0, evil_seq  # nothing of it was stored
        for c in (evil, *good.values()):
            c.close()
        assert hub.stop() == 0, hub.output()[-3000:]
        # the broker still holds the genuine retained report (the hostile one was replaced); republish the
        # hostile one retained and restart: it reaches the hub first thing, and is refused again
        hub.start()
        evil = _device(hub, bundles["evil"])
        evil.publish(topics.reported("evil"), _reported("evil", BIG), retain=True)
        evil.close()
        wait_for(lambda: hub.get("/api/v1/ingest")["rejected"].get("reported/malformed", 0) >= 1, timeout=30)
        with hub.client() as api:
            assert api.patch("/api/v1/devices/good-2/labels", json={"set": {"checked": "yes"}}).status_code == 200
        assert hub.get("/api/v1/devices/evil")["reported"]["seq"] == 20
        assert hub.stop() == 0, hub.output()[-3000:]
    finally:
        hub.stop()
    assert "Traceback" not in hub.output(), hub.output()[-3000:]
    lost = sum(GOOD_WINDOWS - s["count"] for s in stats.values())
    record("attack", "reported state with out-of-range numbers (seq 2^63, 2^64, inf)", "refused", 4, 0)
    record("attack", "reported state far ahead of the hub's clock (stamps set back to 300 s ahead)", "clamped", 1, 0)
    record(
        "attack",
        "telemetry windows with out-of-range numbers (2^63, -1, inf, NaN, end < start)",
        "refused",
        sent - 4,
        lost,
    )
    record("attack", "telemetry windows from the future (an hour ahead)", "refused", 4, 0)
