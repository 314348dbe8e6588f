"""One wording for "how long ago", shared by the dashboard and the CLI (`infra.timefmt`)."""

from __future__ import annotations

import time

from rich.console import Console

from hub.dashboard.render import environment
from hubclient import cli
from infra.timefmt import ago, span, until

NOW = 1_800_000_000.0


def test_ages_read_in_the_largest_whole_unit() -> None:
    assert ago(NOW - 5, NOW) == "5 s ago"
    assert ago(NOW - 119, NOW) == "1 min ago"
    assert ago(NOW - 600, NOW) == "10 min ago"
    assert ago(NOW - 3 * 3600 - 59, NOW) == "3 h ago"
    assert ago(NOW - 10 * 86400, NOW) == "10 d ago"
    assert ago(NOW - 0.4, NOW) == "just now"
    assert ago(NOW + 30, NOW) == "just now"  # a clock ahead of ours
    assert ago(None, NOW) == "never"
    assert until(NOW + 90, NOW) == "in 1 min" and until(NOW - 5, NOW) == "now"
    assert span(59.9) == "59 s"


def test_the_dashboard_and_the_cli_say_the_same_words_for_the_same_time() -> None:
    """They had a function each: the CLI printed `72 h ago` and the date past two days, the dashboard `3 d ago`."""
    for age in (0.2, 5, 90, 150, 7000, 3 * 86400, 10 * 86400):
        page = environment().from_string("{{ ts|ago(now) }}").render(ts=NOW - age, now=NOW)
        assert page == ago(NOW - age, NOW)
    row = {"id": "cam-1", "state": "online", "labels": {}, "last_seen": time.time() - 3 * 86400 - 7200}
    console = Console(width=200, record=True)
    console.print(cli._device_table([row]))
    assert "3 d ago" in console.export_text()  # the table reads the clock: a few seconds later it still says 3 d
