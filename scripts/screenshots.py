"""Save a screenshot of every dashboard page to docs/img/, seeded with a simulated fleet.

    .venv/bin/python scripts/screenshots.py [--devices 300] [--out docs/img] [--phone 390]

Starts a Mosquitto and a hub in a temporary directory, seeds the fleet (tests/hub/dashboard/fleet.py),
logs in with headless Debian chromium and saves one PNG per page at desktop width (NAME.png), and the main
pages again at phone width (NAME-phone.png).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from models.cli import build_samples  # noqa: E402
from tests.hub.dashboard.browser import find_chromium, launch  # noqa: E402
from tests.hub.dashboard.fleet import seed_fleet, seed_rollouts  # noqa: E402
from tests.support.broker import Broker, find_mosquitto, free_port  # noqa: E402
from tests.support.hub import start_hub  # noqa: E402


def _settle(page: Page) -> None:
    page.wait_for_load_state("networkidle")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.chart-group')].every(g => g.dataset.loaded)", timeout=15000
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=300, help="devices in the simulated fleet")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="where the PNGs go")
    ap.add_argument("--width", type=int, default=1440, help="desktop viewport width in pixels")
    ap.add_argument("--phone", type=int, default=390, help="phone viewport width in pixels (0: none)")
    args = ap.parse_args()
    chromium, mosquitto = find_chromium(), find_mosquitto()
    if not chromium or not mosquitto:
        sys.exit("needs Debian's chromium and mosquitto (scripts/ensure-chromium.sh, scripts/ensure-mosquitto.sh)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "mq").mkdir()
        broker = Broker(mosquitto, tmp / "mq", free_port())
        broker.start()
        hub = start_hub(tmp / "hub", broker.url, "screenshots/fleet/v1")
        try:
            build_samples(tmp / "samples")
            fleet = seed_fleet(hub.hub, tmp / "samples", devices=args.devices)
            rollout_ids = seed_rollouts(hub.hub, fleet)
            with sync_playwright() as pw:
                browser = launch(pw, chromium)
                online_gpu = next(d for d in fleet.gpu_devices if d in fleet.by_state["online"])
                shots = [
                    ("overview.png", "/"),
                    ("devices.png", "/devices"),
                    ("devices-filtered.png", "/devices?selector=site%3Dberlin%2Chw%3Dgpu&sort=last_seen&desc=1"),
                    ("device.png", f"/devices/{online_gpu}"),
                    ("device-failed.png", f"/devices/{fleet.by_state['failed'][0]}"),
                    ("models.png", "/models"),
                    ("rollouts.png", "/rollouts"),
                ]
                shots += [
                    (f"rollout{'-' + str(i) if i else ''}.png", f"/rollouts/{r}") for i, r in enumerate(rollout_ids)
                ]
                phone = [("overview", "/"), ("devices", "/devices"), ("device", f"/devices/{online_gpu}"),
                         ("rollout", f"/rollouts/{rollout_ids[0]}"), ("models", "/models")]  # fmt: skip
                sets = [(args.width, "", shots)]
                if args.phone:
                    sets.append((args.phone, "-phone", [(f"{n}.png", path) for n, path in phone]))
                for width, suffix, pages in sets:
                    page = browser.new_page(viewport={"width": width, "height": 900}, device_scale_factor=1)
                    page.goto(hub.url + "/login")
                    page.screenshot(path=str(args.out / f"login{suffix}.png"))
                    page.fill("#token", hub.admin_token)
                    page.click("button[type=submit]")
                    for name, path in pages:
                        page.goto(hub.url + path)
                        _settle(page)
                        out = args.out / name.replace(".png", f"{suffix}.png")
                        page.screenshot(path=str(out), full_page=True)
                        print(out)
                    page.close()
                browser.close()
        finally:
            hub.stop()
            broker.stop()


if __name__ == "__main__":
    main()
