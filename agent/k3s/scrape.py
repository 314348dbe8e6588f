"""Telemetry of cluster mode: the control agent scrapes its serving pods' `/metrics` once per window.

Requests reach the serving pods, not the control agent, so once per telemetry window `Scraper.windows` lists
each active model's pods (the Deployment's label selector; pods with an IP in phase Running), reads every pod's
`/metrics` at `http://<pod IP>:<port>/metrics` concurrently, and turns the counters of the model's active
version into its `agent.ports.ServingWindow` (`agent.k3s.podmetrics`: what other versions served, in pods that
have not swapped yet or could not load the new one, is left out and logged). Every read is bounded:
`scrape_timeout_s` for the whole answer, `scrape_max_bytes` for its body, identity encoding only (no
decompression bombs). A pod that does not answer, answers an error, or sends something that is not believable
counts as unavailable this window (logged with the reason, once per pod and reason); the others still count.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Pod as PodResource

from agent.k3s.connection import translate
from agent.k3s.podmetrics import BadMetrics, Pod, PodScrape, WindowBook, read_counters, serving_window
from agent.k3s.render import pod_selector, workload_name
from agent.k3s.settings import ClusterSettings
from agent.ports import ServingWindow

log = logging.getLogger(__name__)
MAX_PODS = 256  # serving pods scraped per model per window (an HPA's max replicas is far below)


class ScrapeFailed(Exception):
    """One pod's /metrics could not be read or believed (the reason is the message)."""


class Scraper:
    """Scrapes the serving pods of cluster mode on the bridge's event loop (one `httpx.AsyncClient`)."""

    def __init__(self, client: AsyncClient, settings: ClusterSettings) -> None:
        self.client = client
        self.settings = settings
        self.book = WindowBook()
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.scrape_timeout_s),
            trust_env=False,  # pod IPs are never reached through a proxy
            follow_redirects=False,
            headers={"Accept": "text/plain", "Accept-Encoding": "identity"},
        )
        self._failing: dict[str, str] = {}  # pod uid -> the reason logged last (log a reason once, not per window)

    async def close(self) -> None:
        await self.http.aclose()

    async def windows(self, active: Mapping[str, str]) -> dict[str, ServingWindow]:
        """Each active model's window since the previous call, of the version `active` names for it (model ->
        version); a model whose pods cannot be listed is left out."""
        models = list(active)
        listed = await asyncio.gather(*(self._pods(m) for m in models))
        jobs = {(m, pod): self._scrape(m, pod) for m, pods in zip(models, listed, strict=True) if pods for pod in pods}
        results = await asyncio.gather(*jobs.values())
        scraped: dict[str, dict[Pod, PodScrape | None]] = {
            m: {} for m, pods in zip(models, listed, strict=True) if pods is not None
        }
        for (model, pod), counters in zip(jobs, results, strict=True):
            scraped[model][pod] = counters
        seen = {pod.uid for _, pod in jobs}
        self._failing = {uid: why for uid, why in self._failing.items() if uid in seen}
        # no await from here on: the book changes all at once, or (cancelled before) not at all
        self.book.forget_models_but(models)
        out: dict[str, ServingWindow] = {}
        for model, pods in scraped.items():
            version = active[model]
            tally = self.book.window(model, version, pods)
            out[model] = serving_window(tally.total)
            if tally.answered < len(pods):
                log.info("model %s: %d of %d serving pods answered /metrics", model, tally.answered, len(pods))
            if tally.other_versions:
                log.info(
                    "model %s: %d requests served by versions other than %s (pods not yet swapped, or that could "
                    "not load it): not counted in its window",
                    model,
                    tally.other_versions,
                    version,
                )
        return out

    async def _pods(self, model: str) -> list[Pod] | None:
        """The model's pods that may serve (an IP, phase Running); None when they cannot be listed."""
        labels: dict[str, Any] = dict(pod_selector(workload_name(self.settings.workload_name, model)))
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                listing = self.client.list(PodResource, namespace=self.settings.namespace, labels=labels)
                found = [p async for p in listing]
        except asyncio.CancelledError:
            raise
        except Exception as e:
            error = translate(e, "list pods")
            log.warning("model %s: cannot list its serving pods, no window this time: %s", model, error)
            return None
        pods = [p for p in (_pod(obj) for obj in found) if p is not None]
        if len(pods) > MAX_PODS:
            log.warning("model %s: %d serving pods, scraping the first %d by name", model, len(pods), MAX_PODS)
        return sorted(pods, key=lambda p: p.name)[:MAX_PODS]

    async def _scrape(self, model: str, pod: Pod) -> PodScrape | None:
        url = f"http://{_host(pod.ip)}:{self.settings.port}/metrics"
        try:
            async with asyncio.timeout(self.settings.scrape_timeout_s):
                text = await self._read(url)
            counters = await asyncio.to_thread(read_counters, text, model)
        except asyncio.CancelledError:
            raise
        except (ScrapeFailed, BadMetrics) as e:
            self._note(pod, str(e))
            return None
        except TimeoutError:
            self._note(pod, f"no complete answer within {self.settings.scrape_timeout_s:g}s")
            return None
        except httpx.HTTPError as e:
            self._note(pod, f"{type(e).__name__}: {e}"[:300])
            return None
        except Exception as e:  # never take the telemetry thread down
            log.exception("scraping pod %s failed", pod.name)
            self._note(pod, f"{type(e).__name__}: {e}"[:300])
            return None
        self._failing.pop(pod.uid, None)
        return counters

    async def _read(self, url: str) -> str:
        limit = self.settings.scrape_max_bytes
        async with self.http.stream("GET", url) as r:
            if r.status_code != 200:
                raise ScrapeFailed(f"HTTP {r.status_code} from {url}")
            encoding = r.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ScrapeFailed(f"content-encoding {encoding[:40]!r} from {url} (asked for identity)")
            body = bytearray()
            async for chunk in r.aiter_raw():
                body += chunk
                if len(body) > limit:
                    raise ScrapeFailed(f"/metrics of {url} is over {limit} bytes (EDGEFLEET_K3S_SCRAPE_MAX_BYTES)")
        try:
            return body.decode()
        except UnicodeDecodeError as e:
            raise ScrapeFailed(f"/metrics of {url} is not UTF-8 text") from e

    def _note(self, pod: Pod, reason: str) -> None:
        level = logging.WARNING if pod.ready else logging.DEBUG
        if self._failing.get(pod.uid) != reason:
            log.log(level, "serving pod %s (%s): %s; not counted this window", pod.name, pod.ip, reason)
        self._failing[pod.uid] = reason


def _pod(obj: Any) -> Pod | None:
    """The pod if it may serve: it has an IP and runs (a pending or finished pod answers nothing)."""
    meta, status = obj.metadata, obj.status
    if meta is None or status is None or not status.podIP or status.phase != "Running" or not meta.uid:
        return None
    try:
        ipaddress.ip_address(status.podIP)
    except ValueError:
        log.warning("serving pod %s has pod IP %r, not an address: not scraped", meta.name, str(status.podIP)[:60])
        return None
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    created = meta.creationTimestamp
    return Pod(
        name=str(meta.name),
        uid=str(meta.uid),
        ip=str(status.podIP),
        created=created.timestamp() if isinstance(created, datetime) else None,
        ready=ready,
    )


def _host(ip: str) -> str:
    """A pod IP as the host of a URL (IPv6 in brackets)."""
    return f"[{ip}]" if ":" in ip else ip
