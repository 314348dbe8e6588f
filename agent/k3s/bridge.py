"""`ClusterBridge`: the blocking `agent.ports.ClusterPort` over an asyncio loop of its own, in a thread.

The agent's control side calls `inventory()`, `apply()` and `remove()` from its own thread; each call runs as a
coroutine on the bridge's loop, where the one lightkube client lives, and blocks until it returns or raises our
errors. The periodic `check()` runs there too, in the background: it returns a future at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from agent.k3s.cluster import Cluster
from agent.k3s.connection import make_client
from agent.k3s.errors import ClusterError
from agent.k3s.scrape import Scraper
from agent.k3s.settings import ClusterSettings
from agent.ports import ClusterCheck, ClusterPort, ServedVersions, ServingWindow
from fleet.messages import ClusterWorkload, DesiredState, NodeInfo

log = logging.getLogger(__name__)
T = TypeVar("T")
SCRAPE_MARGIN_S = 5.0  # beyond the scrape's own timeouts, before the telemetry thread stops waiting for it


class ClusterBridge:
    """Cluster mode for the agent: implements `agent.ports.ClusterPort`.

    Args:
        settings: where the workload goes and how long to wait for it; `ClusterSettings.from_env()` by default.

    Raises:
        ClusterConfigError: no usable Kubernetes configuration (raised by the constructor, before any thread
            is left running).
    """

    def __init__(self, settings: ClusterSettings | None = None) -> None:
        self.settings = settings or ClusterSettings.from_env()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgefleet-k3s", daemon=True)
        self._thread.start()
        self._closed = False
        self._lock = threading.Lock()
        self._watch: Future[None] | None = None
        self._round: Future[ClusterCheck] | None = None  # the periodic round in progress (see `check`)
        self._changing = asyncio.Lock()  # held by every workload change: apply, remove, a periodic round
        try:
            self._cluster, self._scraper = self._run(self._connect())
        except BaseException:
            self._stop_loop()
            raise

    async def _connect(self) -> tuple[Cluster, Scraper]:
        client = make_client(self.settings)
        return Cluster(client, self.settings), Scraper(client, self.settings)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ClusterError("the cluster bridge is closed", code="closed", permanent=True)
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        except ClusterError:
            raise
        except Exception as e:  # a bug or a response we did not foresee: still an error with a reason
            log.exception("unexpected error in cluster mode")
            raise ClusterError(f"unexpected {type(e).__name__} in cluster mode: {e}"[:1500], code="internal") from e

    def inventory(self) -> list[NodeInfo]:
        """The cluster's nodes with allocatable GPU and MIG resources and readiness (for the birth message).

        Raises:
            ApiCallError: the nodes could not be listed (after retries for temporary failures).
        """
        return self._run(self._cluster.inventory())

    def apply(self, desired: DesiredState, name: str) -> ClusterWorkload:
        """Server-side apply model `name`'s serving workload of `desired`; wait until ready or our own deadline.
        A periodic round still in progress is cancelled first.

        Returns the rollout as far as it got: `ready`, or `failed` with the reason (our deadline passed, the
        Deployment's progress deadline passed, the watch was refused).

        Raises:
            WorkloadError: the desired state cannot be served as asked (nothing was applied).
            ApiCallError: an apply call was refused or the API stayed unreachable.
        """
        self._cancel_round()
        return self._run(self._alone(lambda: self._cluster.apply(desired, name)))

    def remove(self, name: str) -> None:
        """Delete model `name`'s serving workload (it is no longer desired); absent objects are fine. A periodic
        round still in progress is cancelled first.

        Raises:
            ApiCallError: a delete call was refused or the API stayed unreachable.
        """
        self._cancel_round()
        self._run(self._alone(lambda: self._cluster.remove(name)))

    def check(
        self, desired: DesiredState, *, read: Sequence[str], apply: Sequence[str], remove: Sequence[str]
    ) -> Future[ClusterCheck]:
        """Start the periodic round on the bridge's loop and return at once (see `agent.ports.ClusterPort.check`):
        the control thread does not wait for a slow or hanging API server, and the round's calls are bounded by
        the same timeouts and retries as every other."""
        self._cancel_round()
        coro = self._alone(lambda: self._cluster.check(desired, list(read), list(apply), list(remove)))
        if self._closed:
            coro.close()
            closed: Future[ClusterCheck] = Future()
            closed.set_exception(ClusterError("the cluster bridge is closed", code="closed", permanent=True))
            return closed
        self._round = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return self._round

    def _cancel_round(self) -> None:
        """Cancel the periodic round in progress, if any: a new apply or removal supersedes what it would do."""
        if self._round is not None:
            self._round.cancel()
            self._round = None

    async def _alone(self, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `call()` once no other workload change runs (a cancelled round first unwinds), so two applies of one
        model never interleave."""
        async with self._changing:
            return await call()

    def serving_windows(self, models: Mapping[str, ServedVersions]) -> dict[str, ServingWindow]:
        """Each model's window (of its active version, with its shadow's comparisons) from its serving pods'
        /metrics since the previous call (see `agent.k3s.scrape`).

        Blocks at most about `request_timeout_s + scrape_timeout_s`; never raises (failures are logged, and a
        model whose pods could not be listed is left out).
        """
        if not models or self._closed:
            return {}
        limit = self.settings.request_timeout_s + self.settings.scrape_timeout_s + SCRAPE_MARGIN_S
        try:
            future = asyncio.run_coroutine_threadsafe(self._scraper.windows(dict(models)), self._loop)
        except RuntimeError:  # the loop is closed (close() raced this call)
            return {}
        try:
            return future.result(timeout=limit)
        except TimeoutError:
            future.cancel()
            log.warning("scraping the serving pods took over %.1fs: no cluster-mode serving counts this window", limit)
        except Exception:  # never take the telemetry thread down
            log.exception("scraping the serving pods failed")
        return {}

    def watch_inventory(self, on_change: Callable[[list[NodeInfo]], None]) -> None:
        """Call `on_change(nodes)` from the bridge's thread whenever the node inventory changes (first call at once).

        Runs until `close()`; failures are logged and retried, never raised. A second call replaces the first.
        """
        with self._lock:
            if self._closed:
                raise ClusterError("the cluster bridge is closed", code="closed", permanent=True)
            if self._watch is not None:
                self._watch.cancel()
            self._watch = asyncio.run_coroutine_threadsafe(self._cluster.watch_inventory(on_change), self._loop)

    def close(self) -> None:
        """Stop the inventory watch, close the client and stop the loop. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            if self._watch is not None:
                self._watch.cancel()
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
            except Exception:
                log.exception("closing the Kubernetes client failed")
            self._closed = True
        self._stop_loop()

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._scraper.close()
        await self._cluster.client.close()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ClusterBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _implements_cluster_port(bridge: ClusterBridge) -> ClusterPort:
    """Never called: mypy checks here that `ClusterBridge` satisfies `agent.ports.ClusterPort`."""
    return bridge
