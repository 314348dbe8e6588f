"""Zero-downtime swap: 8 clients keep sending while the control side activates a new version."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from agent.api import ApiServer, ApiSettings, ModelRepository, ModelSlot
from models.errors import EngineNotReady
from tests.agent.api.conftest import Sample
from tests.support.inference import binary_body

CLIENTS = 8
AFTER_SWAP = 6  # responses each client must get after the swap before it stops


def _decode(r: httpx.Response) -> tuple[str, np.ndarray]:
    n = int(r.headers["inference-header-content-length"])
    head = orjson.loads(r.content[:n])
    return head["model_version"], np.frombuffer(r.content[n:], dtype=np.float32).reshape(head["outputs"][0]["shape"])


def test_swap_under_load_fails_nothing_and_switches_once(samples: dict[str, Sample], make_server: Any) -> None:
    v1, v2 = samples["clf"], samples["clf2"]
    e1, e2 = v1.engine(), v2.engine()
    server, repo = make_server(max_queue=256)
    repo.activate(e1, v1.applied(), v1.descriptor)
    slot = repo.only()
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(CLIENTS)]
    expected = {
        "1.0.0": [e1.infer({"image": x})["logits"].astype(np.float64) for x in inputs],
        "2.0.0": [e2.infer({"image": x})["logits"].astype(np.float64) for x in inputs],
    }
    swapped = threading.Event()
    swap_times: dict[str, float] = {}
    results: list[list[tuple[float, float, int, str, np.ndarray | None]]] = [[] for _ in range(CLIENTS)]

    def client(i: int) -> None:
        body, headers = binary_body({"image": inputs[i]}, binary_outputs=["logits"])
        after = 0
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while after < AFTER_SWAP and time.monotonic() < deadline:
                t0 = time.monotonic()
                r = c.post("/v2/models/mobilenet-like/infer", content=body, headers=headers)
                t1 = time.monotonic()
                version, out = _decode(r) if r.status_code == 200 else ("", None)
                results[i].append((t0, t1, r.status_code, version, out))
                after += swapped.is_set() and t0 > swap_times["returned"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    while min(len(r) for r in results) < 5:  # every client is running on v1
        time.sleep(0.005)
    swap_times["called"] = time.monotonic()
    repo.activate(e2, v2.applied(), v2.descriptor)
    swap_times["returned"] = time.monotonic()
    swapped.set()
    for t in threads:
        t.join()

    total = sum(len(r) for r in results)
    failed = [(s, v) for r in results for (_, _, s, v, _) in r if s != 200]
    assert failed == [], f"{len(failed)} of {total} requests failed: {failed[:5]}"
    for i, rows in enumerate(results):
        versions = [v for (_, _, _, v, _) in rows]
        switches = sum(a != b for a, b in zip(versions, versions[1:], strict=False))
        assert versions[0] == "1.0.0" and versions[-1] == "2.0.0" and switches == 1, versions
        for t0, t1, _, version, out in rows:
            assert out is not None  # every answer was a 200
            np.testing.assert_allclose(out, expected[version][i], rtol=1e-5)  # exactly that version's answer
            if t1 < swap_times["called"]:
                assert version == "1.0.0"
            if t0 > swap_times["returned"]:
                assert version == "2.0.0"
    deadline = time.monotonic() + 10
    while True:  # the old engine is closed once its last request finished
        try:
            e1.infer({"image": inputs[0]})
        except EngineNotReady:
            break
        assert time.monotonic() < deadline, "old engine never closed"
        time.sleep(0.01)
    window = slot.take_window()
    assert window.requests == total
    assert window.errors == 0


def test_swap_and_deactivate_without_a_running_server(samples: dict[str, Sample]) -> None:
    slot = ModelSlot()
    e1, e2 = samples["clf"].engine(), samples["clf2"].engine()
    slot.activate(e1, samples["clf"].applied(), samples["clf"].descriptor)
    slot.activate(e2, samples["clf2"].applied(), samples["clf2"].descriptor)
    with pytest.raises(EngineNotReady):
        e1.infer({"image": np.zeros((1, 3, 8, 8), np.float32)})
    assert not slot.is_ready()  # no loop attached: nothing serves yet
    slot.deactivate()
    assert slot.current is None
    assert slot.take_window().requests == 0


def test_a_window_taken_while_a_model_is_first_activated_keeps_its_slot(samples: dict[str, Sample]) -> None:
    """The telemetry thread takes a window while the control side activates the first version of a model: its
    slot exists and holds nothing yet (the swap waits for the busy loop). The slot must stay. Dropped, it went
    on serving out of reach: every request 503, and a shadow candidate set later went into a second, empty
    slot that no request reached (a rollout's shadow gate then waited for samples forever)."""
    v1, v2 = samples["clf"], samples["clf2"]
    name = v1.descriptor.name
    repo = ModelRepository()
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    busy = threading.Event()
    try:
        asyncio.run_coroutine_threadsafe(repo.attach(), loop).result(10)
        loop.call_soon_threadsafe(busy.wait)  # the loop is busy (a request running alone on it, say)
        activating = threading.Thread(target=repo.activate, args=(v1.engine(), v1.applied(), v1.descriptor))
        activating.start()
        deadline = time.monotonic() + 10
        while name not in repo.slots:  # the slot is there; the swap waits for the loop
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert repo.take_windows()[name].requests == 0  # the telemetry thread, meanwhile
        busy.set()
        activating.join(30)
        assert repo.names() == [name] and repo.only().active_model == v1.applied()
        repo.set_shadow(name, v2.engine(), v2.applied(), 1.0)
        assert repo.only().shadow_model == v2.applied()  # beside the active version, in the same slot
        repo.deactivate(name)  # a model removed on purpose: its slot goes with its last window
        assert name in repo.take_windows() and name not in repo.slots
    finally:
        busy.set()
        asyncio.run_coroutine_threadsafe(repo.detach(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()


def test_stop_drains_requests_in_flight(samples: dict[str, Sample]) -> None:
    repo = ModelRepository()
    server = ApiServer(ApiSettings(port=0, drain_timeout_s=5), repo)
    server.start()
    repo.activate(samples["clf"].engine(), samples["clf"].applied(), samples["clf"].descriptor)
    slot = repo.only()
    x = np.zeros((1, 3, 16, 16), np.float32)
    body, headers = binary_body({"image": x}, binary_outputs=["logits"])
    host, port = server.url.removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((host, int(port))) as held:
        held.sendall(
            f"POST /v2/models/mobilenet-like/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"{head}\r\n".encode()
            + body[:20]
        )
        deadline = time.monotonic() + 10
        while slot.current is None or slot.current.inflight == 0:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        time.sleep(0.1)  # the server is shutting down now, with our request in flight
        held.sendall(body[20:])
        reply = held.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        stopper.join(15)
        assert not stopper.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/v2/health/live")


def test_concurrent_clients_are_batched_not_run_one_by_one(samples: dict[str, Sample], make_server: Any) -> None:
    """Lone requests skip the batcher; under concurrency they must not (that would serialise everything)."""
    server, repo = make_server()
    repo.activate(samples["clf"].engine(), samples["clf"].applied(), samples["clf"].descriptor)
    slot = repo.only()
    body, headers = binary_body({"image": np.zeros((1, 3, 32, 32), np.float32)}, binary_outputs=["logits"])

    def client() -> list[int]:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return [
                c.post("/v2/models/mobilenet-like/infer", content=body, headers=headers).status_code for _ in range(10)
            ]

    with ThreadPoolExecutor(16) as pool:
        codes = [code for codes in pool.map(lambda _: client(), range(16)) for code in codes]
    assert codes == [200] * 160
    sizes = slot.batch_sizes()[("mobilenet-like", "1.0.0")]
    assert sum(sizes.values()) < 160, sizes  # some engine runs served several requests
    assert sum(k * n for k, n in sizes.items()) == 160
