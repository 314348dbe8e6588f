"""Dashboard: time to first render of the overview with a fleet of N devices (goal: under 1 s with 2000).

    .venv/bin/python benchmarks/dashboard.py [--devices 2000] [--loads 7] [--day]

Starts Mosquitto and a hub, seeds N devices with an hour of per-minute telemetry (and a day of 5-minute
windows with --day) through the store's ingestion path, then measures in the same run:

- raw baseline: `GET /api/v1/devices` (the JSON list of the same devices, no state derivation, no HTML);
- the server: `GET /` (overview HTML), `GET /devices`, a device page and the overview's chart data;
- headless chromium: navigation to `/` until first contentful paint, DOMContentLoaded, and until every
  chart has its data drawn (median of --loads fresh page loads, logged in, warm hub).

Prints a markdown table (ratios against the raw baseline) for docs/bench/dashboard.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from benchmarks.common import machine  # noqa: E402
from fleet.messages import DeviceStatus  # noqa: E402
from hub.dashboard.charts import fleet_charts  # noqa: E402
from hub.dashboard.views import traffic  # noqa: E402
from models.cli import build_samples  # noqa: E402
from tests.hub.dashboard.browser import find_chromium, launch  # noqa: E402
from tests.hub.dashboard.fleet import seed_fleet, seed_rollouts  # noqa: E402
from tests.support.broker import Broker, find_mosquitto, free_port  # noqa: E402
from tests.support.hub import start_hub  # noqa: E402

_FIRST_PAINT = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  return {ttfb: nav.responseStart, dcl: nav.domContentLoadedEventEnd, fcp: fcp ? fcp.startTime : null};
}"""
_CHARTS_DONE = "() => [...document.querySelectorAll('.chart-group')].every(g => g.dataset.loaded)"


def _median_ms(fn: object, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=2000, help="devices in the seeded fleet")
    ap.add_argument("--loads", type=int, default=7, help="browser page loads (median)")
    ap.add_argument("--requests", type=int, default=15, help="HTTP requests per server measurement (median)")
    ap.add_argument("--day", action="store_true", help="also seed a day of 5-minute windows (slow to seed)")
    args = ap.parse_args()
    chromium, mosquitto = find_chromium(), find_mosquitto()
    if not chromium or not mosquitto:
        sys.exit("needs Debian's chromium and mosquitto (scripts/ensure-chromium.sh, scripts/ensure-mosquitto.sh)")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "mq").mkdir()
        broker = Broker(mosquitto, tmp / "mq", free_port())
        broker.start()
        hub = start_hub(tmp / "hub", broker.url, "bench/fleet/v1")
        try:
            build_samples(tmp / "samples")
            t0 = time.perf_counter()
            fleet = seed_fleet(hub.hub, tmp / "samples", devices=args.devices, day=args.day)
            seed_rollouts(hub.hub, fleet)
            seeded_s = time.perf_counter() - t0
            windows = hub.hub.store.ingest_stats().telemetry_persisted
            token = hub.admin_token
            with httpx.Client(base_url=hub.url, timeout=60) as api, httpx.Client(base_url=hub.url, timeout=60) as web:
                api.headers["Authorization"] = f"Bearer {token}"
                web.post("/login", data={"token": token, "next": "/"})
                dev = fleet.gpu_devices[0]

                def get(c: httpx.Client, path: str) -> None:
                    r = c.get(path)
                    r.raise_for_status()

                get(api, "/api/v1/devices")  # warm both
                get(web, "/")
                raw = _median_ms(lambda: get(api, "/api/v1/devices"), args.requests)
                store = hub.hub.store

                def changed_then_get() -> None:
                    # a device's status changes first: the fleet's fingerprint moves and nothing is served cached
                    now = time.time()
                    store.enqueue_status(DeviceStatus(device_id=dev, state="online", ts=now), now)
                    store.flush()
                    get(web, "/")

                server = {
                    "overview HTML `GET /` (warm: fleet unchanged)": _median_ms(lambda: get(web, "/"), args.requests),
                    "overview HTML `GET /` (cold: fleet changed before each)": _median_ms(
                        changed_then_get, args.requests
                    ),
                    "devices page (50 of N) `GET /devices`": _median_ms(lambda: get(web, "/devices"), args.requests),
                    "filtered, sorted `GET /devices?selector=...`": _median_ms(
                        lambda: get(web, "/devices?selector=site%3Dberlin%2Chw%3Dgpu&sort=last_seen&desc=1"),
                        args.requests,
                    ),
                    "device page `GET /devices/{id}`": _median_ms(lambda: get(web, f"/devices/{dev}"), args.requests),
                    "fleet chart data, last hour (HTTP, shared 5 s)": _median_ms(
                        lambda: get(web, "/ui/data/fleet?range=1h"), args.requests
                    ),
                    "fleet chart data, last hour (computed, uncached)": _median_ms(
                        lambda: fleet_charts(hub.hub, "1h"), 5
                    ),
                    "fleet chart data, last day (computed, uncached)": _median_ms(
                        lambda: fleet_charts(hub.hub, "24h"), 5
                    ),
                    "overview traffic sums, hour and day (computed, uncached)": _median_ms(lambda: traffic(hub.hub), 5),
                }
            fcp, dcl, charts, ttfb = [], [], [], []
            with sync_playwright() as pw:
                browser = launch(pw, chromium)
                ctx = browser.new_context(viewport={"width": 1440, "height": 900})
                page = ctx.new_page()
                page.goto(hub.url + "/login")
                page.fill("#token", token)
                page.click("button[type=submit]")
                page.wait_for_function(_CHARTS_DONE)
                for _ in range(args.loads):
                    t0 = time.perf_counter()
                    page.goto(hub.url + "/", wait_until="domcontentloaded")
                    page.wait_for_function(_CHARTS_DONE, timeout=30_000)
                    charts.append((time.perf_counter() - t0) * 1e3)
                    m = page.evaluate(_FIRST_PAINT)
                    ttfb.append(m["ttfb"])
                    dcl.append(m["dcl"])
                    if m["fcp"] is not None:
                        fcp.append(m["fcp"])
                browser.close()
        finally:
            hub.stop()
            broker.stop()

    med = statistics.median
    flags = f"--devices {args.devices}{' --day' if args.day else ''}"
    print(f"## Dashboard (issue 10)\n\n`benchmarks/dashboard.py {flags}` on {machine()}. Seeded {args.devices} devices")
    print(f"and {windows:,} telemetry windows in {seeded_s:.0f} s; medians of {args.requests} requests and")
    print(f"{args.loads} browser loads (headless Debian chromium).\n")
    print("| measurement | time | ratio vs raw | goal |\n| --- | ---: | ---: | --- |")
    print(f"| raw baseline: `GET /api/v1/devices` (JSON, {args.devices} devices) | {raw:.0f} ms | 1.00x | |")
    for name, ms in server.items():
        print(f"| server: {name} | {ms:.0f} ms | {ms / raw:.2f}x | |")
    print(f"| browser: overview, time to first byte | {med(ttfb):.0f} ms | {med(ttfb) / raw:.2f}x | |")
    if fcp:
        goal = "< 1 s: met" if med(fcp) < 1000 else "< 1 s: MISSED"
        print(f"| browser: overview, **first contentful paint** | {med(fcp):.0f} ms | {med(fcp) / raw:.2f}x | {goal} |")
    print(f"| browser: overview, DOMContentLoaded | {med(dcl):.0f} ms | {med(dcl) / raw:.2f}x | |")
    print(f"| browser: overview, every chart drawn | {med(charts):.0f} ms | {med(charts) / raw:.2f}x | |")


if __name__ == "__main__":
    main()
