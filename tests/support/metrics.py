"""One sample of a running process's Prometheus `/metrics`, read with prometheus_client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str, sample: str, **labels: str) -> float:
    """The value of the sample named `sample` (a counter's with its `_total`) whose labels include `labels`, from
    `url`/metrics; 0 when there is none (a counter nothing has counted yet)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and labels.items() <= s.labels.items():
                return float(s.value)
    return 0.0
