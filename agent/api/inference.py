"""The two hot paths: v2 tensor infer and the image endpoint.

Both take the raw request, read the body under the size limit, parse it without pydantic, run the model
through the served version's batcher (off the event loop), and build the response bytes with orjson.
Every outcome, success or error, is counted once here with its model, version and status code.
"""

from __future__ import annotations

import asyncio
import functools
import time
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import numpy.typing as npt
import orjson
from PIL import Image
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.api.budget import HOLD, BodyBudget, BodyHold
from agent.api.errors import BadRequest, BodyTimeout, TooLarge, to_http
from agent.api.metrics import UNKNOWN, ApiMetrics
from agent.api.settings import ApiSettings
from agent.api.tensors import HEADER, datatype_of, encode_infer, parse_infer
from agent.serving import ModelRepository, ModelSlot, Served
from agent.serving.shadow import ImageRequest
from agent.serving.stats import RequestTimes
from models.descriptor import ClassificationOutput, InputSpec, ModelDescriptor, TensorsOutput
from models.postprocess import decode_detections, top_k
from models.preprocess import Transform, decode_image, draft_side, prepare

JSON = "application/json"
_OCTETS = "application/octet-stream"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


Body = bytes | bytearray | memoryview
"""A request body as the transport holds it (uvicorn's ASGI bytes, or the direct protocol's buffer)."""
Reader = Callable[[], Awaitable[Body]]
"""Reads the request body when the handler is ready for it (after the request holds its model)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A hot path's answer, before any transport writes it (`response()` for ASGI, `agent.api.protocol` directly)."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # close the connection after the answer (the request's body is not known to have ended)

    def response(self) -> Response:
        """The same answer as a starlette response (uvicorn closes the connection on `Connection: close`)."""
        headers = dict(self.headers)
        if self.close:
            headers["Connection"] = "close"
        return Response(self.body, self.status, headers or None, self.content_type)


def error_reply(exc: BaseException, retry_after_s: int) -> Reply:
    """The JSON error answer for any exception (status from `errors.to_http`; 503 with Retry-After; a body that
    did not arrive in time closes the connection)."""
    status, reason = to_http(exc)
    headers = (("Retry-After", str(retry_after_s)),) if status == 503 else ()
    return Reply(status, orjson.dumps({"error": reason}), JSON, headers, close=isinstance(exc, BodyTimeout))


def error_response(exc: BaseException, retry_after_s: int) -> Response:
    """The JSON error response for any exception (status from `errors.to_http`)."""
    return error_reply(exc, retry_after_s).response()


PARSE_INLINE_BYTES = 256 * 1024  # smaller bodies parse on the event loop: a thread hand-off costs more


def body_timeout_reason(timeout_s: float) -> str:
    """The 408 of a body that did not arrive in time (`BodyTimeout`)."""
    return f"the request body did not arrive within {timeout_s:g} s of its headers; the connection is closed"


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refusing more than `limit` bytes (413) before or while reading it, and a body that does
    not fit the device's budget of bodies in flight (its `BodyHold`, taken by `agent.api.protocol`).

    Raises:
        TooLarge: more than `limit` bytes, or more than the whole budget. Overloaded: other requests hold the
            budget (503). BodyTimeout: the body has not arrived within `timeout_s`.
    """
    hold: BodyHold | None = request.scope.get(HOLD)
    if hold is not None and hold.refusal is not None:
        raise hold.refusal
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not an integer") from None
        if size > limit:
            raise TooLarge(f"body of {size} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise TooLarge(f"body exceeds the limit of {limit} bytes")
                if hold is not None and hold.refusal is not None:  # a chunked body grew past the budget
                    raise hold.refusal
                if chunk:  # the stream ends with an empty chunk; skipping it spares a copy of one-piece bodies
                    chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(body_timeout_reason(timeout_s)) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


INFLATE_PIECE_BYTES = 1024 * 1024
"""A compressed body is inflated this much at a time: each piece is held in the budget before it is kept, and the
event loop serves others between pieces (a 64 MiB inflate held it for ~100 ms at once)."""


async def decompress(body: Body, encoding: str | None, limit: int, hold: BodyHold | None = None) -> Body:
    """The body after its Content-Encoding (gzip, deflate or none), refusing more than `limit` bytes; the inflated
    bytes are held in the device's budget of bodies in flight too (`hold`, the request's), as they are inflated.

    Raises:
        BadRequest: an unknown encoding or data that does not decompress. TooLarge: it inflates past `limit`, or
            past the whole budget. Overloaded: the inflated bytes do not fit beside other requests' (503).
    """
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        d = zlib.decompressobj()
    else:
        raise BadRequest(f"Content-Encoding {encoding[:20]!r} is not supported: send gzip, deflate or none")
    out = bytearray()
    data: Body = body
    while True:
        try:
            piece = d.decompress(data, INFLATE_PIECE_BYTES)
        except zlib.error as e:
            raise BadRequest(f"the body does not decompress as {encoding}: {e}") from None
        if len(out) + len(piece) > limit:
            raise TooLarge(f"the body inflates past the limit of {limit} bytes")
        if hold is not None and not hold.grow(len(piece)):
            assert hold.refusal is not None  # grow set it
            raise hold.refusal
        out += piece
        data = d.unconsumed_tail
        if d.eof or (not data and len(piece) < INFLATE_PIECE_BYTES):  # a full piece may leave output in zlib
            break
        await asyncio.sleep(0)
    if not d.eof:
        raise BadRequest(f"the {encoding} body is truncated")
    return out


class Inference:
    """Request handlers bound to the device's model repository, the API settings and metrics.

    A request names its model; the repository gives that model's slot, and everything after (batching,
    swap, shadow, counters) happens in the slot. A request for a model not served here is answered (404, or
    503 while nothing serves yet) and counted in /metrics under `unknown`, not in any model's telemetry.
    """

    def __init__(
        self,
        settings: ApiSettings,
        repo: ModelRepository,
        metrics: ApiMetrics,
        pool: ThreadPoolExecutor,
        budget: BodyBudget | None = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.metrics = metrics
        self.pool = pool
        self.budget = budget or BodyBudget(settings.max_body_bytes_in_flight, settings.retry_after_s)

    def _done(
        self,
        slot: ModelSlot | None,
        served: Served | None,
        endpoint: str,
        reply: Reply,
        t0: float,
        *,
        submitted: bool,
        times: RequestTimes,
    ) -> Reply:
        seconds = time.perf_counter() - t0
        code = reply.status
        if slot is not None and served is not None:
            slot.release(served, submitted)
            self.metrics.observe(served.model.name, served.model.version, endpoint, code, seconds)
        elif slot is not None and (active := slot.active_model) is not None:
            # a served model's request that reached no version of it (another version, overloaded): counted in
            # the model's telemetry window (`slot.record`), so in its /metrics too, which cluster mode scrapes
            self.metrics.observe(active.name, UNKNOWN, endpoint, code, seconds)
        else:
            self.metrics.observe(UNKNOWN, UNKNOWN, endpoint, code, seconds)
        if slot is not None:
            slot.record(code, seconds * 1e3, served, times if code == 200 else None)
        return reply

    async def infer(self, request: Request, name: str, version: str | None) -> Response:
        """POST /v2/models/{name}[/versions/{version}]/infer (JSON or binary tensor data) through ASGI."""
        limit = self.settings.max_body_bytes
        read = functools.partial(read_body, request, limit, self.settings.read_timeout_s)
        reply = await self.infer_reply(name, version, read, request.headers, request.scope.get(HOLD))
        return reply.response()

    async def infer_reply(
        self, name: str, version: str | None, read: Reader, headers: Mapping[str, str], hold: BodyHold | None = None
    ) -> Reply:
        """The infer answer; `read` gives the body (within the body limit), `headers` the request's (lowercase),
        `hold` its bytes in the device's budget of bodies in flight (what a compressed body inflates to joins)."""
        t0 = time.perf_counter()
        slot = served = None
        submitted = False
        times = RequestTimes()
        try:
            slot = self.repo.get(name)
            served = slot.acquire(name, version)
            body = await read()
            t1 = time.perf_counter_ns()
            body = await decompress(body, headers.get("content-encoding"), self.settings.max_body_bytes, hold)
            json_head = headers.get(HEADER)
            parse = functools.partial(parse_infer, body, json_head, max_json_bytes=self.settings.max_json_body_bytes)
            # a large JSON part parses in a worker thread: the event loop (health checks, other requests) goes
            # on; binary tensor data is not parsed, only viewed, so it does not count
            json_part = len(body)
            if json_head is not None and json_head.isascii() and json_head.isdigit() and len(json_head) < 20:
                json_part = min(int(json_head), json_part)
            big = json_part > PARSE_INLINE_BYTES
            req = await asyncio.get_running_loop().run_in_executor(self.pool, parse) if big else parse()
            times.input_ns = time.perf_counter_ns() - t1
            submitted = True
            outputs = await slot.infer_tensors(served, req.inputs, times)
            t2 = time.perf_counter_ns()
            content, head = encode_infer(served.model.name, served.model.version, req, outputs, served.output_names)
            times.output_ns = time.perf_counter_ns() - t2
            if head is None:
                reply = Reply(200, content)
            else:
                reply = Reply(200, content, _OCTETS, (("Inference-Header-Content-Length", str(head)),))
        except Exception as e:
            reply = error_reply(e, self.settings.retry_after_s)
        except BaseException:  # cancelled (server stopping): still give the slot back
            if slot is not None and served is not None:
                slot.release(served, submitted)
            raise
        return self._done(slot, served, "infer", reply, t0, submitted=submitted, times=times)

    async def predict(
        self, request: Request, name: str, k: int | None, threshold: float | None, query: bytes | None = None
    ) -> Response:
        """POST /v1/models/{name}:predict with an image (multipart or raw body) through ASGI."""
        limit = self.settings.max_body_bytes
        read = functools.partial(read_body, request, limit, self.settings.read_timeout_s)
        reply = await self.predict_reply(name, k, threshold, query, read, request.headers, request.scope.get(HOLD))
        return reply.response()

    async def predict_reply(  # noqa: PLR0917 (the route's parameters, then the transport's)
        self,
        name: str,
        k: int | None,
        threshold: float | None,
        query: bytes | None,
        read: Reader,
        headers: Mapping[str, str],
        hold: BodyHold | None = None,
    ) -> Reply:
        """The image endpoint's answer.

        `k` and `threshold` come validated (FastAPI route), or unparsed in `query` (the fast paths); `hold` as for
        `infer_reply`.
        """
        t0 = time.perf_counter()
        slot = served = None
        submitted = False
        times = RequestTimes()
        try:
            slot = self.repo.get(name)
            served = slot.acquire(name)
            if query:
                k, threshold = query_parameters(query)
            body = bytes(await read())
            body = bytes(await decompress(body, headers.get("content-encoding"), self.settings.max_body_bytes, hold))
            ctype = headers.get("content-type", "")
            data = await _multipart_image(headers, body) if ctype.startswith("multipart/") else body
            if not data:
                raise BadRequest("no image: send JPEG or PNG bytes as the body or as a multipart file")
            d = served.descriptor
            t1 = time.perf_counter_ns()
            image = DecodedImage(data, self.settings.max_image_pixels)
            job = functools.partial(image.prepare, d.input)
            if slot.alone(served):  # the only request: decode here, a thread hand-off costs more than it saves
                tensor, transform = job()
            else:  # others are being served: keep the event loop free for them
                tensor, transform = await asyncio.get_running_loop().run_in_executor(self.pool, job)
            times.input_ns = time.perf_counter_ns() - t1
            submitted = True
            slot.submitted(served)
            outputs, ms = await slot.run(served, {d.input.name: tensor}, times)
            slot.shadow_image(served, outputs, transform, image=ImageRequest(image.prepare, self.pool), ms=ms)
            t2 = time.perf_counter_ns()
            answer = _answer(d, outputs, transform, k, threshold)
            answer["model_name"], answer["model_version"] = served.model.name, served.model.version
            reply = Reply(200, orjson.dumps(answer, option=_NUMPY))
            times.output_ns = time.perf_counter_ns() - t2
        except Exception as e:
            reply = error_reply(e, self.settings.retry_after_s)
        except BaseException:  # cancelled (server stopping): still give the slot back
            if slot is not None and served is not None:
                slot.release(served, submitted)
            raise
        return self._done(slot, served, "predict", reply, t0, submitted=submitted, times=times)


class DecodedImage:
    """An image request's image, decoded once and preprocessed for any version's input description.

    A JPEG may decode at a reduced DCT scale chosen from the description (`models.preprocess.draft_side`), so
    a version that asks for another scale gets its own decode: every version sees exactly the pixels it
    would see if it were the only one served.
    """

    def __init__(self, data: bytes, max_pixels: int) -> None:
        self.data = data
        self.max_pixels = max_pixels
        self._decoded: tuple[Image.Image, tuple[int, int]] | None = None
        self._side: int | None = None

    def prepare(self, spec: InputSpec) -> tuple[npt.NDArray[Any], Transform]:
        """The [1, ...] input tensor for `spec` and the transform back to the image's pixels.

        Raises:
            InvalidImage: the bytes do not decode. ImageTooLarge: more pixels than allowed.
        """
        side = draft_side(spec)
        decoded = self._decoded
        if decoded is None or (side != self._side and self.data.startswith(b"\xff\xd8")):  # JPEG: scale differs
            target = None if side is None else (side, side)
            decoded = decode_image(self.data, max_pixels=self.max_pixels, target=target)
            if self._decoded is None:
                self._decoded, self._side = decoded, side
        img, original = decoded
        return prepare(img, spec, original)


async def _multipart_image(headers: Mapping[str, str], body: bytes) -> bytes:
    """The first file part of a multipart body (any field name)."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(Headers(headers=headers), stream(), max_files=4, max_fields=16, max_part_size=1024 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise BadRequest(f"multipart body does not parse: {e.message}") from None
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                return await value.read()
    finally:
        await form.close()
    raise BadRequest("the multipart body has no file part; send the image as a file field (e.g. 'image')")


def _answer(
    d: ModelDescriptor, outputs: dict[str, Any], transform: Transform, k: int | None, threshold: float | None
) -> dict[str, Any]:
    spec = d.output
    if isinstance(spec, ClassificationOutput):
        if spec.output not in outputs:
            raise BadRequest(f"model output {spec.output!r} is missing")
        rows = top_k(outputs[spec.output], k or spec.top_k, logits=spec.scores == "logits", labels=d.labels)
        classes = [
            {"class_id": c.class_id, "label": c.label, "score": c.score}
            for c in rows[0]
            if threshold is None or c.score >= threshold
        ]
        return {"task": "classification", "classes": classes}
    if isinstance(spec, TensorsOutput):
        return _raw(spec, outputs, transform, k, threshold)
    if threshold is not None:
        spec = spec.model_copy(update={"score_threshold": threshold})
    dets = decode_detections(outputs, spec, d.input)[0]
    n = len(dets.scores) if k is None else min(k, len(dets.scores))
    boxes = transform.to_original(dets.boxes[:n])
    labels = d.labels
    return {
        "task": "detection",
        "image": {"width": transform.original_width, "height": transform.original_height},
        "detections": [
            {
                "box": [round(v, 2) for v in box],
                "class_id": c,
                "label": labels[c] if 0 <= c < len(labels) else None,
                "score": s,
            }
            for box, c, s in zip(
                np.asarray(boxes).tolist(), dets.classes[:n].tolist(), dets.scores[:n].tolist(), strict=True
            )
        ],
    }


def _raw(
    spec: TensorsOutput, outputs: dict[str, Any], transform: Transform, k: int | None, threshold: float | None
) -> dict[str, Any]:
    """The undecoded outputs of kind: tensors, each as the v2 JSON output tensor (name, datatype, shape, data)."""
    if k is not None or threshold is not None:
        raise BadRequest(
            "top_k and threshold apply to classification and detection; this model's outputs are raw tensors"
        )
    items = []
    for t in spec.outputs:
        if t.name not in outputs:
            raise BadRequest(f"model output {t.name!r} is missing")
        a = np.ascontiguousarray(outputs[t.name])
        items.append({"name": t.name, "datatype": datatype_of(a.dtype), "shape": list(a.shape), "data": a.reshape(-1)})
    return {
        "task": "tensors",
        "image": {"width": transform.original_width, "height": transform.original_height},
        "outputs": items,
    }


def query_parameters(query_string: bytes) -> tuple[int | None, float | None]:
    """`top_k` (1..1000) and `threshold` (0..1) of the image endpoint; other parameters are ignored.

    Raises:
        BadRequest: a value that is not a number or is out of range (the message names it).
    """
    k: int | None = None
    threshold: float | None = None
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == "top_k":
            try:
                k = int(value)
            except ValueError:
                raise BadRequest(f"query.top_k: {value[:20]!r} is not an integer") from None
            if not 1 <= k <= 1000:
                raise BadRequest(f"query.top_k: {k} is outside 1..1000")
        elif key == "threshold":
            try:
                threshold = float(value)
            except ValueError:
                raise BadRequest(f"query.threshold: {value[:20]!r} is not a number") from None
            if not 0.0 <= threshold <= 1.0:  # also refuses nan
                raise BadRequest(f"query.threshold: {value[:20]} is outside 0..1")
    return k, threshold


Route = tuple[str, str, str | None]
"""An inference route: ("infer", model, version or None) or ("predict", model, None)."""


def route(path: str) -> Route | None:
    """The inference route a POST to `path` is for, or None (another route: FastAPI's)."""
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        name, sep, version = path[11:-6].partition("/versions/")
        if "/" not in name and "/" not in version and (version or not sep):
            return "infer", name, version if sep else None
    elif path.startswith("/v1/models/") and path.endswith(":predict") and "/" not in path[11:-8]:
        return "predict", path[11:-8], None
    return None


class FastPath:
    """ASGI wrapper: POSTs to the two inference routes go straight to `Inference`, the rest to FastAPI.

    It saves FastAPI's routing and dependency solving (tens of microseconds of event-loop time per
    request); FastAPI still declares the same routes, so they are documented in the OpenAPI schema. Under
    uvicorn most inference requests do not even get here: `agent.api.protocol` serves them from the parser.
    """

    def __init__(self, app: ASGIApp, handlers: Inference) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":  # as GET without the body (health probes)
            await self.app({**scope, "method": "GET"}, receive, _without_body(send))
            return
        if scope["type"] == "http" and scope["method"] == "POST":
            found = route(scope["path"])
            if found is not None:
                kind, name, version = found
                request = Request(scope, receive)
                if kind == "infer":
                    response = await self.handlers.infer(request, name, version)
                else:
                    response = await self.handlers.predict(request, name, None, None, scope["query_string"])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _without_body(send: Send) -> Send:
    """`send` for a HEAD request: the GET answer's status and headers (Content-Length included), no body."""

    async def head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return head
