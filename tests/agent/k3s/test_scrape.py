"""Cluster-mode telemetry: the control agent scrapes the serving pods' /metrics.

The test API server's Deployment controller gives the pods loopback IPs (127.0.0.2, ...); each "pod" is the real
inference API (`tests.support.pods.ServingPod`: what `edgefleet agent serve` runs) bound to its IP on the serving
port, serving a real sample model over real HTTP. Each pod's own repository counts its requests as single-device mode
does (`take_windows`): the scraped window must equal their sum.
"""

from __future__ import annotations

import logging
import socketserver
import threading
from collections.abc import Callable, Iterator

import pytest

from agent.control import CheckOnlyServing
from agent.k3s import ClusterBridge, ClusterSettings
from agent.ports import ServingWindow
from fleet.histogram import merge_all
from fleet.messages import AppliedModel
from models.engine import Engine, EngineOptions
from tests.agent.conftest import Sample
from tests.agent.k3s.conftest import MODEL, NAMESPACE, desired, fast_settings
from tests.k8s.server import ApiServer as KubeApi
from tests.support.broker import free_port
from tests.support.pods import ServingPod

V1 = {MODEL: "1.0.0"}  # the model's active version, as the control agent names it (samples["v1"])


@pytest.fixture
def start_pod(samples: dict[str, Sample]) -> Iterator[Callable[..., ServingPod]]:
    pods: list[ServingPod] = []

    def start(ip: str, port: int, **settings: int) -> ServingPod:
        v1 = samples["v1"]
        pod = ServingPod(ip, port, v1.path, v1.descriptor, MODEL, **settings)
        pods.append(pod)
        return pod

    yield start
    for pod in pods:
        pod.stop()


def pod_ips(api: KubeApi) -> list[str]:
    return sorted(p["status"]["podIP"] for p in api.pods(NAMESPACE))


def summed(windows: list[ServingWindow]) -> tuple[int, int, tuple[int, ...]]:
    latency = merge_all(w.latency for w in windows)
    return sum(w.requests for w in windows), sum(w.errors for w in windows), latency.counts


def test_the_window_counts_every_pods_requests_exactly_across_a_restart(
    api: KubeApi, start_pod: Callable[..., ServingPod], samples: dict[str, Sample]
) -> None:
    port = free_port()
    settings = fast_settings(api.kubeconfig, port=port)
    with ClusterBridge(settings) as bridge:
        assert bridge.apply(desired(1, replicas=3), MODEL).state == "ready"
        ips = pod_ips(api)
        assert ips == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        a, b = start_pod(ips[0], port), start_pod(ips[1], port)
        c = start_pod(ips[2], port, max_concurrency=1)  # concurrent requests beyond 1 are refused: 503
        codes = a.send(5) + a.send(2, data=5) + a.send(1, version="9.9.9") + b.send(3)
        for _ in range(50):  # until c has refused some (concurrent requests race: how many is not fixed)
            codes += c.send(24, parallel=8)
            if 503 in codes:
                break
        assert codes.count(400) == 2 and codes.count(404) == 1 and set(codes) == {200, 400, 404, 503}
        errors = codes.count(503)
        window = bridge.serving_windows(V1)[MODEL]
        pods = [a.window(), b.window(), c.window()]
        assert (window.requests, window.errors) == (len(codes), errors)
        assert (window.requests, window.errors, window.latency.counts) == summed(pods)  # as single-device mode
        assert window.latency.sum_ms == pytest.approx(sum(p.latency.sum_ms for p in pods), rel=1e-6, abs=1.0)
        assert window.queue_depth == 0
        assert bridge.serving_windows(V1)[MODEL].requests == 0  # nothing new: nothing counted twice

        # the telemetry thread's path: the control agent's ServingPort asks the bridge
        control = CheckOnlyServing(bridge)
        v1 = samples["v1"]
        d = v1.descriptor
        assert d.sha256 is not None
        engine = Engine.load(v1.path, d, EngineOptions(intra_op_threads=1))
        control.activate(engine, AppliedModel(name=MODEL, version=d.version, sha256=d.sha256), d)

        # b's container restarts: a new process, counters from zero, more requests than the old one had
        assert b.send(2) == [200, 200]  # answered after the last scrape, then lost with the old process
        b.stop()
        b = start_pod(ips[1], port)
        assert b.send(4) == [200] * 4
        assert a.send(1) == [200]
        assert control.take_windows()[MODEL].requests == 5  # 4 from the new process, 1 from a; not 4 - 3
        b.send(1)
        assert control.take_windows()[MODEL].requests == 1


def test_the_window_counts_the_active_version_only_while_pods_swap(
    api: KubeApi, start_pod: Callable[..., ServingPod], samples: dict[str, Sample], caplog: pytest.LogCaptureFixture
) -> None:
    """The control agent names 2.0.0 active before the pods' followers load it; a pod that cannot load it goes
    on serving 1.0.0. Neither may pass 1.0.0's requests off as 2.0.0's (a rollout gate would judge them)."""
    assert samples["v1"].descriptor.version == V1[MODEL]
    v2 = samples["v2"]
    V2 = {MODEL: v2.descriptor.version}
    port = free_port()
    with ClusterBridge(fast_settings(api.kubeconfig, port=port)) as bridge:
        assert bridge.apply(desired(1, replicas=2), MODEL).state == "ready"
        ips = pod_ips(api)
        a, b = start_pod(ips[0], port), start_pod(ips[1], port)
        assert a.send(2) == [200, 200]
        assert bridge.serving_windows(V1)[MODEL].requests == 2
        b.swap(v2.path, v2.descriptor)
        assert a.send(3) == [200] * 3  # a has not swapped (yet, or ever)
        assert b.send(4, data=5) == [400] * 4  # 2.0.0's own requests, client errors included
        with caplog.at_level(logging.INFO, logger="agent.k3s.scrape"):
            window = bridge.serving_windows(V2)[MODEL]
        assert (window.requests, window.errors) == (4, 0)
        assert "3 requests served by versions other than 2.0.0" in caplog.text
        a.swap(v2.path, v2.descriptor)
        assert a.send(1) == [200]
        assert bridge.serving_windows(V2)[MODEL].requests == 1  # a's first 2.0.0 request: its series start
        # rolled back: 1.0.0's counters go on from the last scrape, nothing counted twice
        a.swap(samples["v1"].path, samples["v1"].descriptor)
        assert a.send(2) == [200, 200]
        assert bridge.serving_windows(V1)[MODEL].requests == 2


class _Misbehaving(socketserver.BaseRequestHandler):
    """A "pod" whose /metrics answer is garbage, oversized, absurd, or never comes."""

    modes: dict[str, str] = {}
    release = threading.Event()

    def handle(self) -> None:
        self.request.recv(65536)
        mode = self.modes[self.server.server_address[0]]  # type: ignore[index]
        if mode == "hang":
            self.release.wait(30)
            return
        body = {
            "garbage": b"\x00\x01 this { is not } prometheus",
            "oversized": b"# HELP padding\n" * 5000,
            "absurd": f'edgefleet_api_requests_total{{model="{MODEL}",code="200"}} NaN\n'.encode(),
            "error": b"",
        }[mode]
        status = b"500 Internal Server Error" if mode == "error" else b"200 OK"
        head = b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
        self.request.sendall(head + body)


def test_pods_that_misbehave_are_skipped_with_a_reason_and_the_others_still_count(
    api: KubeApi, start_pod: Callable[..., ServingPod], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = fast_settings(api.kubeconfig, port=port, scrape_timeout_s=0.5, scrape_max_bytes=65536)
    bad = ["hang", "garbage", "oversized", "absurd", "error"]
    _Misbehaving.release = threading.Event()
    servers = []
    with ClusterBridge(settings) as bridge:
        assert bridge.apply(desired(1, replicas=1 + len(bad)), MODEL).state == "ready"
        ips = pod_ips(api)
        good = start_pod(ips[0], port)
        for ip, mode in zip(ips[1:], bad, strict=True):
            _Misbehaving.modes[ip] = mode
            server = socketserver.ThreadingTCPServer((ip, port), _Misbehaving)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
        try:
            assert good.send(3) == [200] * 3
            with caplog.at_level(logging.INFO, logger="agent.k3s.scrape"):
                window = bridge.serving_windows(V1)[MODEL]
            assert window.requests == 3
            log = caplog.text
            for reason in (
                "no complete answer within 0.5s",
                "not the Prometheus text format",
                "is over 65536 bytes",
                "is nan: not a count",
                "HTTP 500",
                "1 of 6 serving pods answered",
            ):
                assert reason in log, (reason, log)

            # the pods' list fails once: no window this time, and nothing lost the next time
            assert good.send(2) == [200, 200]
            api.fail(500, verb="list", resource="pods", times=1)
            with caplog.at_level(logging.WARNING, logger="agent.k3s.scrape"):
                assert bridge.serving_windows(V1) == {}
            assert "cannot list its serving pods" in caplog.text
            assert bridge.serving_windows(V1)[MODEL].requests == 2
        finally:
            _Misbehaving.release.set()
            for server in servers:
                server.shutdown()
                server.server_close()


def test_no_pods_give_an_empty_window_and_a_closed_bridge_none(api: KubeApi, caplog: pytest.LogCaptureFixture) -> None:
    bridge = ClusterBridge(fast_settings(api.kubeconfig))
    window = bridge.serving_windows({"not-deployed": "1.0.0"})["not-deployed"]
    assert (window.requests, window.errors, window.latency.count) == (0, 0, 0)
    # a pod whose IP is not an address (a hostile or broken API answer) is not scraped
    labels = {
        "app.kubernetes.io/name": "edgefleet-inference",
        "app.kubernetes.io/instance": f"edgefleet-inference-{MODEL}",
    }
    weird = {"phase": "Running", "podIP": "127.0.0.9:1/x#", "conditions": [{"type": "Ready", "status": "True"}]}
    api.store.put(
        api.store_kind("pods"),
        {"metadata": {"name": "weird", "namespace": NAMESPACE, "labels": labels}, "status": weird},
    )
    with caplog.at_level(logging.WARNING, logger="agent.k3s.scrape"):
        assert bridge.serving_windows(V1)[MODEL].requests == 0
    assert "not an address: not scraped" in caplog.text
    assert bridge.serving_windows({}) == {}
    bridge.close()
    assert bridge.serving_windows(V1) == {}
    assert CheckOnlyServing(bridge).take_windows() == {}


def test_scrape_settings_are_bounded() -> None:
    with pytest.raises(ValueError, match="scrape_max_bytes"):
        ClusterSettings(scrape_max_bytes=10)
    with pytest.raises(ValueError, match="scrape_timeout_s"):
        ClusterSettings(scrape_timeout_s=0)
