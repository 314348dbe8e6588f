"""The inference routes served from uvicorn's parser (`agent.api.protocol`) against raw HTTP/1.1 on a socket.

The same request must get the same answer whichever way the server takes it: directly (Content-Length) or
through ASGI (chunked bodies, `Expect: 100-continue`); keep-alive, pipelining, HTTP/1.0, early errors and
clients that go away must behave as uvicorn's own handling does.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image

from agent.api import ApiServer, ApiSettings, ModelRepository
from agent.api.budget import BodyBudget
from agent.api.protocol import MALFORMED_LOG, MAX_HEAD_BYTES, _Direct
from models.engine import Engine
from tests.agent.api.conftest import Sample, jpeg
from tests.support.inference import binary_body, raw_post

NAME = "mobilenet-like"
INFER = f"/v2/models/{NAME}/infer"


@pytest.fixture(scope="module")
def server(samples: dict[str, Sample], clf_engine: Engine) -> Iterator[ApiServer]:
    repo = ModelRepository()
    api = ApiServer(ApiSettings(port=0, max_body_bytes=1024 * 1024), repo)
    api.start()
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    yield api
    api.stop()


class Conn:
    """One raw HTTP/1.1 connection that reads responses by Content-Length."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._more()
        body, self.buf = self.buf[:n], self.buf[n:]
        return int(lines[0].split()[1]), headers, body

    def closed(self) -> bool:
        """True once the server has closed the connection (EOF; or a reset, should the server's lingering close end
        while a loaded test is still to read the EOF)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def _chunked(body: bytes, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:1000], body[1000:]) if part)
    return (
        f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{extra}\r\n".encode()
        + chunks
        + b"0\r\n\r\n"
    )


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 64, 96)).astype(np.float32)


def test_direct_and_asgi_give_the_same_answer(server: ApiServer, clf_engine: Engine) -> None:
    x = _x()
    want = clf_engine.infer({"image": x})["logits"].astype(np.float64)
    c = Conn(server.url)
    answers = []
    for pad in range(4):  # the tensor at every offset modulo 4 in the body
        body, headers = binary_body({"image": x}, binary_outputs=["logits"], pad=pad)
        for raw in (raw_post(INFER, body, headers), _chunked(body, headers)):
            c.send(raw)
            status, h, content = c.response()
            assert status == 200, content
            n = int(h["inference-header-content-length"])
            got = np.frombuffer(content[n:], dtype=np.float32).reshape(want.shape)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            answers.append((h["content-type"], content))
    assert len(set(answers)) == 1  # identical bytes every time, whichever path served it
    c.close()


def test_responses_carry_uvicorns_default_headers(server: ApiServer) -> None:
    c = Conn(server.url)
    body, headers = binary_body({"image": _x()}, binary_outputs=["logits"])
    c.send(raw_post(INFER, body, headers))
    status, h, _ = c.response()
    assert status == 200
    assert "date" in h and "server" not in h  # the server header is off, as for every other route
    assert h["content-type"] == "application/octet-stream"
    c.close()


def test_pipelined_requests_are_answered_in_order(server: ApiServer) -> None:
    c = Conn(server.url)
    first, h1 = binary_body({"image": _x(1)}, binary_outputs=["logits"])
    second = orjson.dumps(
        {"inputs": [{"name": "image", "shape": [1, 3, 64, 96], "datatype": "FP32", "data": [0.5] * 18432}]}
    )
    c.send(
        raw_post(INFER, first, h1)
        + f"GET /v2/models/{NAME} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        + raw_post(INFER, second, {})
        + raw_post("/v2/models/nope/infer", b"{}", {})
    )
    status, h, _ = c.response()
    assert (status, h["content-type"]) == (200, "application/octet-stream")
    status, _, meta = c.response()
    assert status == 200 and orjson.loads(meta)["name"] == NAME
    status, _, js = c.response()
    assert status == 200 and orjson.loads(js)["outputs"][0]["shape"] == [1, 100]
    status, _, err = c.response()
    assert status == 404 and "nope" in orjson.loads(err)["error"]
    c.close()


def test_a_body_in_pieces_then_the_next_request_in_the_same_read(server: ApiServer, clf_engine: Engine) -> None:
    """The rest of a body is received straight into the request's buffer; the bytes after it are the next
    request's, parsed as usual (however the reads split them)."""
    x = _x(2)
    want = clf_engine.infer({"image": x})["logits"].astype(np.float64)
    body, headers = binary_body({"image": x}, binary_outputs=["logits"], pad=3)
    raw = raw_post(INFER, body, headers)
    start = raw.index(b"\r\n\r\n") + 4
    c = Conn(server.url)
    pieces = [raw[: start + 7]] + [raw[i : i + 9000] for i in range(start + 7, len(raw), 9000)]
    meta = f"GET /v2/models/{NAME} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    for _ in range(2):  # twice on one connection: the HTTP parser is back after the first body
        for piece in pieces[:-1]:
            c.send(piece)
            time.sleep(0.002)  # separate reads: most of the body arrives after the headers were parsed
        c.send(pieces[-1] + meta)
        status, h, content = c.response()
        assert status == 200, content
        n = int(h["inference-header-content-length"])
        got = np.frombuffer(content[n:], np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        status, _, doc = c.response()
        assert status == 200 and orjson.loads(doc)["name"] == NAME
    c.close()


def test_a_chunked_body_ending_in_the_read_that_brings_a_whole_request(server: ApiServer, clf_engine: Engine) -> None:
    """The first blank line of a read can lie inside another request's body (here the end of a chunked one):
    what follows it is still parsed as HTTP, and the whole request after it is served from the same read."""
    x = _x(3)
    want = clf_engine.infer({"image": x})["logits"].astype(np.float64)
    body, headers = binary_body({"image": x}, binary_outputs=["logits"], pad=1)
    chunked = _chunked(body, headers)
    c = Conn(server.url)
    c.send(chunked[:-20])
    time.sleep(0.002)
    c.send(chunked[-20:] + raw_post(INFER, body, headers) + raw_post(INFER, body, headers))
    for _ in range(3):
        status, h, content = c.response()
        assert status == 200, content
        got = np.frombuffer(content[int(h["inference-header-content-length"]) :], np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    c.close()


def test_http_10_gets_its_answer_then_the_connection_closes(server: ApiServer) -> None:
    c = Conn(server.url)
    body, headers = binary_body({"image": _x()}, binary_outputs=["logits"])
    c.send(raw_post(INFER, body, headers, version="1.0"))
    status, h, _ = c.response()
    assert status == 200
    assert h["connection"] == "close"
    assert c.closed()
    c.close()


def test_an_early_error_drops_the_rest_of_the_body_and_keeps_the_connection(server: ApiServer) -> None:
    c = Conn(server.url)
    body, headers = binary_body({"image": _x()}, binary_outputs=["logits"])
    raw = raw_post("/v2/models/other/infer", body, headers)
    cut = raw.index(b"\r\n\r\n") + 4 + 100
    c.send(raw[:cut])  # the model is unknown: answered before the body has arrived
    status, _, err = c.response()
    assert status == 404 and "other" in orjson.loads(err)["error"]
    c.send(raw[cut:])  # the rest of that body is read and dropped ...
    c.send(raw_post(INFER, body, headers))  # ... and the connection serves the next request
    assert c.response()[0] == 200
    c.close()


def test_expect_100_continue_and_bodies_over_the_limit_take_the_asgi_path(server: ApiServer) -> None:
    c = Conn(server.url)
    body, headers = binary_body({"image": _x()}, binary_outputs=["logits"])
    head = raw_post(INFER, body, {**headers, "Expect": "100-continue"})
    split = head.index(b"\r\n\r\n") + 4
    c.send(head[:split])
    assert c.sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
    c.send(head[split:])
    assert c.response()[0] == 200
    c.send(
        b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (NAME.encode(), 2 * 1024 * 1024)
    )
    status, _, err = c.response()
    assert status == 413 and "limit" in orjson.loads(err)["error"]
    c.close()


def test_the_image_endpoint_is_served_directly_too(server: ApiServer) -> None:
    c = Conn(server.url)
    c.send(raw_post(f"/v1/models/{NAME}:predict?top_k=3", jpeg(320, 240), {"Content-Type": "image/jpeg"}))
    status, _, body = c.response()
    assert status == 200
    assert len(orjson.loads(body)["classes"]) == 3
    c.send(raw_post(f"/v1/models/{NAME}:predict?top_k=0", jpeg(320, 240), {}))
    status, _, body = c.response()
    assert status == 400 and "top_k" in orjson.loads(body)["error"]
    c.close()


@pytest.mark.parametrize("aligned_at", [0, 1, 157, 1023])
def test_binary_tensor_data_lands_aligned(aligned_at: int) -> None:
    import asyncio  # noqa: PLC0415

    loop = asyncio.new_event_loop()
    try:
        d = _Direct(4096, aligned_at, True, loop.create_future(), BodyBudget(8192, 1).hold(4096))
        tensor = np.frombuffer(d.view, dtype=np.uint8)[aligned_at:]
        assert tensor.ctypes.data % 16 == 0
        assert len(d.view) == 4096
    finally:
        loop.close()


def test_a_body_that_stops_arriving_is_408_and_frees_its_place(
    make_server: object, samples: dict[str, Sample], clf_engine: Engine
) -> None:
    """A client that sends headers and part of a body, then stalls or vanishes without a FIN (a device that lost
    its network mid-upload), held one of the model's `max_concurrency` places forever: with enough of them the
    model answered 503 to everyone until restart."""
    server, repo = make_server(max_concurrency=2, read_timeout_s=0.5)  # type: ignore[operator]
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    body, headers = binary_body({"image": _x()}, binary_outputs=["logits"])
    stalled = [Conn(server.url), Conn(server.url)]
    stalled[0].send(raw_post(INFER, body, headers)[: -len(body) // 2])  # Content-Length: the direct path
    stalled[1].send(_chunked(body, headers)[:-200])  # chunked: the ASGI path
    for c in stalled:
        status, h, content = c.response()
        assert status == 408, content
        assert "did not arrive within 0.5 s" in orjson.loads(content)["error"]
        assert h["connection"] == "close" and h["content-type"] == "application/json"
        assert c.closed()
        c.close()
    early = Conn(server.url)  # answered before its body (an unknown model), then the body stalls
    early.send(raw_post("/v2/models/nope/infer", body, headers)[: -len(body) // 2])
    assert early.response()[0] == 404
    assert early.closed()
    early.close()
    fresh = Conn(server.url)
    for _ in range(3):  # both places are free again
        fresh.send(raw_post(INFER, body, headers))
        status, _, content = fresh.response()
        assert status == 200, content
    fresh.close()
    metrics = httpx.get(server.url + "/metrics").text
    assert 'edgefleet_api_requests_total{code="408",endpoint="infer",model="mobilenet-like",version="1.0.0"} 2.0' in (
        metrics
    )


def test_request_heads_are_bounded_in_size_and_time(
    make_server: object, samples: dict[str, Sample], clf_engine: Engine
) -> None:
    """uvicorn's httptools protocol read a head for as long and as far as the client sent it: one endless header
    grew the process by every byte (200 MB sent, +225 MB resident), and a connection that never finished a head,
    or never sent one, was held forever."""
    server, repo = make_server(read_timeout_s=0.5)  # type: ignore[operator]
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    endless = Conn(server.url)
    endless.send(f"POST {INFER} HTTP/1.1\r\nHost: t\r\n".encode())
    for _ in range(MAX_HEAD_BYTES // 1000 + 1):  # 66 KB
        endless.send(b"X-Pad: " + b"a" * 993 + b"\r\n")
    endless.send(b"X-Pad: the last straw")
    status, h, content = endless.response()
    assert (status, h["connection"]) == (431, "close")
    assert f"exceeds {MAX_HEAD_BYTES} bytes" in orjson.loads(content)["error"]
    assert endless.closed()

    stalled, silent, used = Conn(server.url), Conn(server.url), Conn(server.url)
    stalled.send(f"GET /v2/models/{NAME} HTTP/1.1\r\nHost: t\r\n".encode())
    body, headers = binary_body({"image": _x()}, binary_outputs=["logits"])
    used.send(raw_post(INFER, body, headers))
    assert used.response()[0] == 200
    used.send(b"GET /v2/health/live HTTP/1.1\r\n")  # the next request's head, never finished
    for c in (stalled, used):
        status, h, content = c.response()
        assert (status, h["connection"]) == (408, "close"), content
        assert "head did not arrive within 0.5 s" in orjson.loads(content)["error"]
        assert c.closed()
    assert silent.closed()  # no answer to a request never begun
    for c in (endless, stalled, silent, used):
        c.close()

    fine = Conn(server.url)
    fine.send(f"GET /v2/models/{NAME} HTTP/1.1\r\nHost: t\r\n".encode() + b"X-Pad: a\r\n" * 5000 + b"\r\n")
    assert fine.response()[0] == 200  # 55 KB of headers are still a request
    fine.close()

    slow, chunked = Conn(server.url), Conn(server.url)
    with repo.only()._run_lock:  # the engine is busy for 2 read timeouts: answers come late, and still come
        slow.send(raw_post(INFER, body, headers) + raw_post(INFER, body, headers))  # the second one pipelined
        chunked.send(_chunked(body, headers))
        time.sleep(1.0)
    for c, answers in ((slow, 2), (chunked, 1)):
        for _ in range(answers):
            status, _, content = c.response()
            assert status == 200, content
        c.close()


@pytest.mark.parametrize(
    "raw",
    [
        f"POST {INFER} HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n{{}}".encode(),
        f"POST {INFER} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{{}}".encode(),
        f"POST {INFER} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{{".encode(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100),  # a TLS hello on the plain port
    ],
)
def test_malformed_http_is_a_json_400_and_the_connection_closes(server: ApiServer, raw: bytes) -> None:
    c = Conn(server.url)
    c.send(raw)
    status, h, content = c.response()
    assert (status, h["content-type"], h["connection"]) == (400, "application/json", "close")
    assert "malformed HTTP/1.1 request" in orjson.loads(content)["error"]  # was text/plain, unlike every other error
    assert c.closed()
    c.close()


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


def _wait_released(url: str) -> None:
    """Until the server has seen every client of the test go (a disconnect is noticed on its loop, not ours)."""
    deadline = time.monotonic() + 20
    while _metric(url, "edgefleet_api_body_bytes_in_flight") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(url, "edgefleet_api_body_bytes_in_flight") == 0


def test_bodies_in_flight_share_one_device_wide_budget(
    make_server: object, samples: dict[str, Sample], clf_engine: Engine
) -> None:
    """Bodies were bounded per request and per model only: 256 concurrent 64 MiB uploads grew the device by
    16 GiB. Uploads that together pass the budget are refused (503, before their body is read; 413 for one larger
    than all of it); the budget is whole again once they end."""
    body, headers = binary_body({"image": _x()}, binary_outputs=["logits"])
    budget = 2 * len(body) + len(body) // 2  # two bodies fit, a third does not
    server, repo = make_server(max_body_bytes=1024 * 1024, max_body_bytes_in_flight=budget)  # type: ignore[operator]
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    raw = raw_post(INFER, body, headers)
    head = raw.index(b"\r\n\r\n") + 4
    held = [Conn(server.url), Conn(server.url)]
    for c in held:  # headers and part of the body: each holds its declared length while the rest is coming
        c.send(raw[: head + 100])
    refused = Conn(server.url)
    refused.send(raw[:head])  # a declared length that does not fit: refused at once, no body sent
    status, h, content = refused.response()
    assert status == 503, content
    assert h["retry-after"] == "1" and "bodies in flight" in orjson.loads(content)["error"]
    chunked = Conn(server.url)  # a chunked body is counted as it arrives: refused when it passes the budget
    chunked.send(_chunked(body, headers))
    status, h, content = chunked.response()
    assert (status, h["retry-after"]) == (503, "1"), content
    whole = Conn(server.url)  # larger than the whole budget: no retry can succeed
    whole.send(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (INFER.encode(), budget + 1))
    status, _, content = whole.response()
    assert status == 413 and f"budget of {budget} bytes" in orjson.loads(content)["error"], content
    assert _metric(server.url, "edgefleet_api_body_bytes_in_flight") == 2 * len(body)
    for c in held:
        c.send(raw[head + 100 :])
        status, _, content = c.response()
        assert status == 200, content
    assert _metric(server.url, "edgefleet_api_body_bytes_in_flight") == 0
    refused.send(raw[head:])  # the refused request's body is dropped; its connection serves the retry
    refused.send(raw)
    assert refused.response()[0] == 200
    chunked.send(_chunked(body, headers))
    assert chunked.response()[0] == 200
    for c in (*held, refused, chunked, whole):
        c.close()
    metrics = httpx.get(server.url + "/metrics").text
    assert 'edgefleet_api_body_budget_refusals_total{code="503"} 2.0' in metrics
    assert 'edgefleet_api_body_budget_refusals_total{code="413"} 1.0' in metrics


def test_the_budget_is_released_however_a_request_ends(
    make_server: object, samples: dict[str, Sample], clf_engine: Engine
) -> None:
    """Timed out, gone mid-body, answered early, pipelined behind a request when the client left: every hold
    is given back, so the budget never leaks away into 503s for everyone."""
    body, headers = binary_body({"image": _x()}, binary_outputs=["logits"])
    server, repo = make_server(  # type: ignore[operator]
        max_body_bytes=1024 * 1024, max_body_bytes_in_flight=2 * len(body), read_timeout_s=0.5
    )
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    raw = raw_post(INFER, body, headers)
    stalled = [Conn(server.url), Conn(server.url)]
    stalled[0].send(raw[: -len(body) // 2])  # direct path, times out
    stalled[1].send(_chunked(body, headers)[:-200])  # ASGI path, times out
    for c in stalled:
        assert c.response()[0] == 408
        c.close()
    gone = [Conn(server.url), Conn(server.url), Conn(server.url)]
    gone[0].send(raw[: -len(body) // 2])  # direct path, the client vanishes mid-body
    gone[1].send(_chunked(body, headers)[:-200])  # ASGI path, likewise
    gone[2].send(raw + raw[: -len(body) // 2])  # a whole request, then one queued behind it
    early = Conn(server.url)  # answered 404 before its body; the body never comes
    early.send(raw_post("/v2/models/nope/infer", body, headers)[: -len(body) // 2])
    assert early.response()[0] == 404
    for c in gone:
        c.close()
    _wait_released(server.url)
    early.close()
    fresh = [Conn(server.url), Conn(server.url)]  # the whole budget is free: two bodies at once fit again
    for c in fresh:
        c.send(raw[:-10])
    for c in fresh:
        c.send(raw[-10:])
        status, _, content = c.response()
        assert status == 200, content
        c.close()
    _wait_released(server.url)


def test_a_flood_of_malformed_requests_logs_a_bounded_number_of_lines(server: ApiServer) -> None:
    """uvicorn logged a warning per malformed request: garbage traffic filled the log. Now at most one line a
    minute, and the next line says how many were not logged."""
    lines: list[logging.LogRecord] = []

    class Catcher(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record)

    catcher = Catcher(logging.WARNING)
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's own logger does not reach caplog
    uvicorn_log.addHandler(catcher)
    MALFORMED_LOG.next_at, MALFORMED_LOG.suppressed = 0.0, 0  # other tests of this server sent some
    try:
        for _ in range(30):
            c = Conn(server.url)
            c.send(b"GARBAGE / HTTP/1.1\r\n\r\n")
            assert c.response()[0] == 400
            assert c.closed()
            c.close()
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert "malformed HTTP request from 127.0.0.1" in lines[0].getMessage()
        MALFORMED_LOG.next_at = 0.0  # a minute later
        c = Conn(server.url)
        c.send(b"GARBAGE / HTTP/1.1\r\n\r\n")
        assert c.response()[0] == 400
        c.close()
        assert len(lines) == 2
        assert "(29 more not logged in the 60 s before)" in lines[1].getMessage()
    finally:
        uvicorn_log.removeHandler(catcher)


def test_a_body_answered_early_that_stops_arriving_is_closed(
    make_server: object, samples: dict[str, Sample], clf_engine: Engine
) -> None:
    """A chunked or `Expect: 100-continue` request answered before its body ended (404, 413), whose client then
    sent a byte and stopped, kept its connection forever: the byte cancelled uvicorn's keep-alive timer and the
    head's clock waited for a head that never came. It is closed read_timeout_s after the answer."""
    server, repo = make_server(max_body_bytes=1024 * 1024, read_timeout_s=0.5)  # type: ignore[operator]
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    body, headers = binary_body({"image": _x()}, binary_outputs=["logits"])
    chunked = _chunked(body, headers).replace(INFER.encode(), b"/v2/models/nope/infer")
    expect = raw_post("/v2/models/nope/infer", body, {**headers, "Expect": "100-continue"})
    too_large = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (INFER.encode(), 2 * 1024 * 1024)
    for raw, status in ((chunked[:300], 404), (expect[: expect.index(b"\r\n\r\n") + 4], 404), (too_large, 413)):
        c = Conn(server.url)
        c.sock.settimeout(10)
        c.send(raw)
        assert c.response()[0] == status
        c.send(b"1")  # a byte more of the body, then nothing
        assert c.closed()  # old code: recv timed out, the server still held the connection
        c.close()


def test_a_request_refused_before_its_100_continue_closes_its_connection(
    make_server: object, samples: dict[str, Sample], clf_engine: Engine
) -> None:
    """A client that sends `Expect: 100-continue` holds its body back until the server asks for it; one refused
    first (404, 413, 503) may then send the body or, as curl does, not. The connection stayed open, its parser
    still waiting for the announced body, so the client's next request on it was read as that body and never
    answered. The refusal now says `connection: close` and closes; nothing sent after it is read as a request."""
    body, headers = binary_body({"image": _x()}, binary_outputs=["logits"])
    budget = len(body) + len(body) // 2  # one body fits, a second does not
    server, repo = make_server(max_body_bytes=2 * len(body), max_body_bytes_in_flight=budget)  # type: ignore[operator]
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    expect = {**headers, "Expect": "100-continue"}
    holder = Conn(server.url)  # holds one body's bytes of the budget while its body is coming
    holder.send(raw_post(INFER, body, headers)[:-100])
    cases = {
        404: raw_post("/v2/models/nope/infer", body, expect),
        413: raw_post(INFER, body + body + b" ", expect),
        503: raw_post(INFER, body, expect),
    }
    for status, raw in cases.items():
        for then_the_body in (False, True):
            c = Conn(server.url)
            c.send(raw[: raw.index(b"\r\n\r\n") + 4])
            got, h, content = c.response()
            assert got == status, content
            assert h.get("connection") == "close", (status, h)
            if then_the_body:  # the body after all (RFC 9110 allows either): dropped, never parsed as a request
                c.send(raw[raw.index(b"\r\n\r\n") + 4 :])
            c.send(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")  # old code: taken as the body, unanswered
            assert c.closed() and c.buf == b"", (status, c.buf)
            c.close()
    holder.send(raw_post(INFER, body, headers)[-100:])
    assert holder.response()[0] == 200
    c = Conn(server.url)  # accepted: 100 Continue, the body, the answer, and the connection goes on
    raw = raw_post(INFER, body, expect)
    c.send(raw[: raw.index(b"\r\n\r\n") + 4])
    assert c.sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(raw[raw.index(b"\r\n\r\n") + 4 :])
    status, h, content = c.response()
    assert status == 200 and "connection" not in h, content
    c.send(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
    assert c.response()[0] == 200
    c.close()
    holder.close()


def test_curl_with_a_large_body_gets_its_answer_and_a_refusal_closes(
    make_server: object, samples: dict[str, Sample], clf_engine: Engine, tmp_path: Path
) -> None:
    """curl sends `Expect: 100-continue` with every body over 1 KiB (1 MiB from curl 8.x) and waits for it."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    server, repo = make_server()  # type: ignore[operator]
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 128, 128)).astype(np.float32)  # 1.6 MB of tensor
    body, headers = binary_body({"image": x}, binary_outputs=["logits"])
    (tmp_path / "body").write_bytes(body)
    Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(tmp_path / "image.png")  # 1.4 MB
    assert len(body) > 1024 * 1024 and (tmp_path / "image.png").stat().st_size > 1024 * 1024
    header = [f"-H{k}: {v}" for k, v in headers.items()]
    out = subprocess.run(  # noqa: S603 (a test's own arguments)
        [curl, "-sS", "-v", "-o", str(tmp_path / "unknown"), "-w", "%{http_code} ", "--data-binary",
         f"@{tmp_path / 'body'}", *header, f"{server.url}/v2/models/nope/infer",
         "--next", "-sS", "-v", "-D", str(tmp_path / "head"), "-o", str(tmp_path / "answer"), "-w", "%{http_code} ",
         "--data-binary", f"@{tmp_path / 'body'}", *header, "-H", "Expect: 100-continue", f"{server.url}{INFER}",
         "--next", "-sS", "-o", str(tmp_path / "classes"), "-w", "%{http_code}", "--data-binary",
         f"@{tmp_path / 'image.png'}", "-H", "Content-Type: image/png", f"{server.url}/v1/models/{NAME}:predict"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.stdout.split() == ["404", "200", "200"], out.stderr
    assert "< connection: close" in out.stderr  # the 404, before curl sent the body
    assert "< HTTP/1.1 100 Continue" in out.stderr
    head = (tmp_path / "head").read_text().lower()
    n = int(head.partition("inference-header-content-length:")[2].split()[0])
    got = np.frombuffer((tmp_path / "answer").read_bytes()[n:], dtype=np.float32).reshape(8, 100)
    np.testing.assert_allclose(got, clf_engine.infer({"image": x})["logits"].astype(np.float32), rtol=1e-4, atol=1e-5)
    assert orjson.loads((tmp_path / "classes").read_bytes())["classes"]


def test_a_compressed_body_counts_what_it_inflates_to_in_the_budget(
    make_server: object, samples: dict[str, Sample], clf_engine: Engine
) -> None:
    """The budget counted a gzip body's bytes as sent: a few KiB each, so many concurrent requests inflating to
    `max_body_bytes` each grew the device far past `max_body_bytes_in_flight`. The inflated bytes are held too:
    one that does not fit beside the others is 503 (413 if larger than the whole budget), and fits once they end."""
    x = _x()
    doc = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    text = orjson.dumps(doc) + b" " * 400_000  # ~0.7 MB of valid JSON that gzip makes a few hundred KiB
    packed = gzip.compress(text)
    assert len(packed) < len(text) // 2
    budget = len(text) + len(text) // 2
    server, repo = make_server(max_body_bytes=len(text) + 1024, max_body_bytes_in_flight=budget)  # type: ignore[operator]
    repo.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    holder = Conn(server.url)  # holds len(text) bytes of the budget while its body is coming
    raw = raw_post(INFER, text, {})
    holder.send(raw[:-100])
    c = Conn(server.url)
    c.send(raw_post(INFER, packed, {"Content-Encoding": "gzip"}))  # its own bytes fit; inflated, they do not
    status, h, content = c.response()
    assert status == 503 and h["retry-after"] == "1", content  # old code: 200
    assert "bodies in flight" in orjson.loads(content)["error"]
    holder.send(raw[-100:])
    assert holder.response()[0] == 200
    c.send(raw_post(INFER, packed, {"Content-Encoding": "gzip"}))  # the budget is free again: served
    status, _, content = c.response()
    assert status == 200, content
    bomb = gzip.compress(b" " * (2 * budget))  # inflates past max_body_bytes: 413, as before
    c.send(raw_post(INFER, bomb, {"Content-Encoding": "gzip"}))
    status, _, content = c.response()
    assert status == 413 and "inflates past" in orjson.loads(content)["error"], content
    for conn in (c, holder):
        conn.close()
    _wait_released(server.url)
