"""uvicorn's httptools protocol with the inference routes served straight from the HTTP parser.

Every connection of the inference API runs this protocol. Most requests take uvicorn's usual way (an ASGI
task, FastAPI); a POST to an inference route (`agent.api.inference.route`) with a Content-Length within the
body limit is served directly, without ASGI: a request's time there is mostly per-request Python, and on
this path it pays only for what it needs (docs/bench/serve.md has the figures):

- its handler (`Inference.infer_reply` / `predict_reply`, the same code the ASGI routes run) starts as a
  task when the headers arrive, as uvicorn starts its ASGI tasks: the request holds its model, counts as
  in progress and is counted by graceful shutdown while its body arrives;
- the body goes into one buffer sized from Content-Length, without uvicorn's 64 KiB read pauses and the
  copies of ASGI body messages; binary tensor data (`Inference-Header-Content-Length`) is placed so that
  the first tensor starts 16-byte aligned, so numpy views it instead of copying it;
- the part of the body that came in the same read as the headers is copied from that read into the buffer
  once (the parser is fed only up to the headers' end, so it never hands the body to `on_body` as another
  bytes copy); at 1 client a whole 196 KB request usually comes in one read;
- what the headers' read did not bring of the body is received straight into that buffer (`_BodyReader`, a
  buffered protocol the transport reads into while the body arrives): no bytes object per read, no copy
  by the HTTP parser, no copy into the buffer. A 196 KB tensor is three copies (~45 us each here) fewer;
  a 6 MB JSON body, about 4 ms fewer;
- the response (uvicorn's default headers, the answer's headers and body) goes out in one write; its head up
  to the length is made once per status and content type while uvicorn's date header stays the same.

Every connection's request heads are bounded, which uvicorn's httptools protocol leaves open: a head (request
line and headers) over `MAX_HEAD_BYTES` is answered 431, and one that has not ended `read_timeout_s` after the
connection started or the previous answer is answered 408 (a connection that sent nothing is closed); both
close the connection. Without them one client's endless header grew the process by the bytes it sent, and
connections that never finished a request were held forever.

Everything else stays uvicorn's: keep-alive and its timeout, pipelined requests (a request that arrives
while a direct one is answered waits in uvicorn's queue), graceful shutdown, malformed HTTP (400, answered as
JSON here like every other error). Requests
it does not take (chunked bodies, `Expect: 100-continue`, a declared body over the limit, escaped paths)
go through ASGI, so every answer is the same either way; only the cost differs. One thing differs from uvicorn
there: a request with `Expect: 100-continue` answered before it asked for its body closes its connection
(`_uncontinued_closes`), where uvicorn read the client's next request as that body.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httptools
import numpy as np
import orjson
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from agent.api.budget import HOLD, BodyHold
from agent.api.errors import BodyTimeout
from agent.api.inference import JSON, Body, Inference, Reply, Route, body_timeout_reason, route
from infra.logthrottle import LogGate

MAX_HEAD_BYTES = 64 * 1024
"""Longest request head (request line and headers) in bytes; longer: 431 and the connection closes."""
_LINGER_S = 2.0  # how long a refused connection drops what the client still sends before it closes
_ALIGN = 16  # bytes: binary tensor data starts at a multiple of this (numpy views it; SIMD loads are aligned)
_WANTED = frozenset({b"content-length", b"transfer-encoding", b"content-encoding", b"content-type",
                     b"inference-header-content-length"})  # fmt: skip


MALFORMED_LOG = LogGate(60.0)
"""Malformed HTTP requests (answered 400 and closed): at most one warning a minute for the process."""


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


class _Ignored:
    """Stands in for the asyncio.Event uvicorn sets on a request's cycle when the connection is lost."""

    @staticmethod
    def set() -> None:
        """Nothing waits on a direct request's event: its body future is failed instead."""


class _Direct:
    """A request served without ASGI; it stands in uvicorn's `cycle` slot while it is answered, so that uvicorn
    queues pipelined requests behind it and graceful shutdown closes its connection after the answer."""

    message_event = _Ignored()

    def __init__(
        self, size: int, aligned_at: int, keep_alive: bool, body: asyncio.Future[Body], hold: BodyHold
    ) -> None:
        """`aligned_at`: the body offset that should land on an aligned address (0: none in particular); `hold`:
        the buffer's bytes in the budget, released once both the answer and the body (or the connection) end."""
        if size:  # numpy's allocations are 16-byte aligned (malloc's); were one not, numpy would copy the tensor
            start = -aligned_at % _ALIGN
            self.view = np.empty(size + start, dtype=np.uint8).data[start:]
        else:
            self.view = memoryview(b"")
        self.filled = 0
        self.keep_alive = keep_alive
        self.body = body
        self.hold = hold
        self.response_complete = False
        self.disconnected = False

    def add(self, chunk: bytes) -> None:
        """Copy the next part of the body in (httptools never passes more than Content-Length)."""
        end = self.filled + len(chunk)
        self.view[self.filled : end] = chunk
        self.filled = end

    async def read(self) -> Body:
        """The whole body, once it has arrived (ClientDisconnect if the client went away first)."""
        return await self.body


class _BodyReader(asyncio.BufferedProtocol):
    """Stands in for the HTTP protocol on the transport while the rest of a direct request's body arrives: the
    transport receives straight into the request's buffer (asyncio and uvloop read into `get_buffer`'s view)."""

    def __init__(self, http: InferenceProtocol, d: _Direct) -> None:
        self.http = http
        self.d = d

    def get_buffer(self, sizehint: int) -> memoryview:
        """The part of the body still to come: the transport never reads past the body's end."""
        return self.d.view[self.d.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` more of the body arrived; once it is whole, the HTTP protocol takes the transport back."""
        self.http._unset_keepalive_if_required()  # as data_received: an early answer armed it, the body goes on
        d = self.d
        d.filled += nbytes
        if d.filled == len(d.view):
            self.http.body_received()

    def eof_received(self) -> bool | None:
        """The client closed its side mid-body: as the HTTP protocol would."""
        return self.http.eof_received()  # type: ignore[func-returns-value]

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection went away mid-body: the request sees a disconnect."""
        self.http.connection_lost(exc)

    def pause_writing(self) -> None:
        """As the HTTP protocol (an early answer may fill the send buffer while the body still arrives)."""
        self.http.pause_writing()

    def resume_writing(self) -> None:
        """As the HTTP protocol."""
        self.http.resume_writing()


class _Lingering:
    """The transport as uvicorn's cycle of one answer sees it when the client may still be sending after it (see
    `InferenceProtocol._uncontinued_closes`): its close() is the protocol's lingering close."""

    def __init__(self, http: InferenceProtocol) -> None:
        self.http = http

    def write(self, data: bytes) -> None:
        """As the transport."""
        self.http.transport.write(data)

    def is_closing(self) -> bool:
        """As the transport."""
        return self.http.transport.is_closing()

    def close(self) -> None:
        """Half-close now, drop what still comes, close soon after (`InferenceProtocol._linger`)."""
        self.http._linger()


class InferenceProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; inference POSTs are answered from the parser (see the module docstring).

    Use `protocol_for(handlers, max_body_bytes)`: uvicorn creates one instance per connection.
    """

    handlers: ClassVar[Inference]
    max_body_bytes: ClassVar[int]
    heads: ClassVar[dict[Any, Any]]  # (status, content type) -> the response's head up to its length; None -> the
    # default headers they were made from (one server's connections share them)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading: _Direct | None = None
        self._in_head = True  # the next bytes belong to a request head (none of its body has come yet)
        self._head_bytes = 0  # of the head being read
        self._head_since = 0.0  # loop time at which the connection began to wait for the head being read
        self._head_timer: asyncio.TimerHandle | None = None  # checks the head's deadline: one timer per
        # read_timeout_s of the connection, not one per request (a timer costs ~5 us; a request ~1 ms)
        self._body_timer: asyncio.TimerHandle | None = None  # a direct body that spans reads; a lingering close
        self._refused = False  # answered and half-closed: what the client still sends is dropped until it closes
        self._growing: BodyHold | None = None  # the hold of the chunked body the parser is reading (ASGI path)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.handlers.settings.read_timeout_s, self._check_head)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request's head, from now; after an early answer, the rest of the body from now (the next head's
        # clock starts again once that body has ended)
        self._head_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        view = memoryview(data)  # httptools reads any buffer: the parts below are fed without copies
        end = data.find(b"\r\n\r\n") + 4 if self._reading is None else 0
        if self._in_head:  # the bytes up to the head's end count (a head split at its blank line: all of them)
            self._head_bytes += end if end >= 4 else len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"the request head (request line and headers) exceeds {MAX_HEAD_BYTES} bytes")
                return
        if end >= 4:  # the bytes up to the first blank line first (the parser streams: the same result)
            self._feed(view[:end])
            if self.transport.is_closing() or self.parser.should_upgrade():
                return  # as uvicorn: an upgrade's bytes after its headers are not parsed as HTTP
            d = self._reading
            if d is not None and d.filled == 0 and not self.transport.is_closing():
                # a direct request's headers ended there (none of its body went through the parser): its body
                # is copied from `data` into its buffer once, never handed to `on_body` as a bytes copy first
                n = min(len(d.view), len(data) - end)
                d.view[:n] = view[end : end + n]
                d.filled = n
                end += n
                if n == len(d.view):
                    self._message_done()
            view = view[end:]
        if view and not self.transport.is_closing():
            self._feed(view)
        d = self._reading
        if d is not None and d.filled < len(d.view) and not self.transport.is_closing():
            # the parser has passed on all of `data`: the rest of this body comes in later reads, and no
            # byte of the next request can come before it ends; it has read_timeout_s to (from now: a body
            # that came with its headers costs no timer)
            self.transport.set_protocol(_BodyReader(self, d))
            self._body_timer = self.loop.call_later(self.handlers.settings.read_timeout_s, self._body_timeout, d)

    def _feed(self, data: memoryview) -> None:
        """uvicorn's `data_received` (httptools reads any buffer: no copy), but malformed HTTP is logged at most
        once a minute with a count (`MALFORMED_LOG`): uvicorn logged a line per request, so garbage traffic
        filled the log."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            MALFORMED_LOG.warning(self.logger, "malformed HTTP request from %s: %s", _peer(self.client), e)
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def body_received(self) -> None:
        """`_BodyReader` has received the last byte of the body: take the transport back."""
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self.transport.set_protocol(self)
        self._message_done()

    def _message_done(self) -> None:
        """The direct request's body is whole: a parser that starts at the next request (this one's parser
        still waits for the body it never saw), and the request gets its body."""
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn sets its own
        self.on_message_complete()

    # --- parser callbacks ----------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        headers: dict[str, str] = {}
        for name, value in self.headers:
            if name in _WANTED:
                headers[name.decode("latin-1")] = value.decode("latin-1")
        hold = self._hold(headers)
        if hold is None or not self._start_direct(headers, hold):
            if hold is not None:  # the handler's body reader raises its refusal; the task releases it
                self.scope[HOLD] = hold  # type: ignore[literal-required]
                self._growing = hold if "transfer-encoding" in headers else None
            super().on_headers_complete()

    def _hold(self, headers: dict[str, str]) -> BodyHold | None:
        """The request's share of the device's budget of bodies in flight (`agent.api.budget`): its declared
        Content-Length at once, a chunked body as it arrives; None for no body, or one over `max_body_bytes`
        (refused 413 before it is read; a route that does not read bodies keeps at most uvicorn's 64 KiB)."""
        declared = headers.get("content-length")
        if declared is None:
            return self.handlers.budget.hold() if "transfer-encoding" in headers else None
        if not (declared.isascii() and declared.isdigit()):
            return None
        size = int(declared)
        if size > self.max_body_bytes:
            return None
        return self.handlers.budget.hold(size)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """As uvicorn (now, or once the request it was pipelined behind is answered); a request that holds body
        bytes gives them back when its task ends, however it ends; one that waits for `100 Continue` closes its
        connection if it is answered before it was asked for its body (`_uncontinued_closes`)."""
        if cycle.waiting_for_100_continue:
            app = self._uncontinued_closes(cycle, app)
        hold: BodyHold | None = cycle.scope.get(HOLD)
        super()._start_asgi_task(cycle, app if hold is None else _releasing(app, hold))

    def _uncontinued_closes(self, cycle: Any, app: Any) -> Any:
        """`app` for a request sent with `Expect: 100-continue`: answered (404, 413, 503) before it asked for the
        body (uvicorn sends `100 Continue` then) and before the body has ended, its answer says `connection:
        close` and the connection closes, lingering. Its client may send the body after all or, as curl does,
        not (RFC 9110 allows either): kept open, the next request would be parsed as the announced body."""

        async def run(scope: Any, receive: Any, send: Any) -> None:
            async def guarded(message: Any) -> None:
                if message["type"] == "http.response.start" and cycle.waiting_for_100_continue and cycle.more_body:
                    cycle.transport = _Lingering(self)  # uvicorn closes after this answer: a lingering close
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
                await send(message)

            await app(scope, receive, guarded)

        return run

    def on_body(self, body: bytes) -> None:
        d = self._reading
        if d is None:
            hold = self._growing
            if hold is not None and not self.cycle.response_complete:
                hold.grow(len(body))  # refused: uvicorn wakes the reader below, which raises the refusal
            super().on_body(body)
        elif not d.body.done():  # once answered (an early error), the rest of the body is read and dropped
            d.add(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._growing = None
        cycle: Any = self.cycle
        if cycle is None or cycle.response_complete:  # answered before its body ended: the next head's clock
            self._head_since = self.loop.time()
        d = self._reading
        if d is None:
            super().on_message_complete()
            return
        self._reading = None
        if d.response_complete:  # answered before the body ended: its buffer is free now
            d.hold.release()
        if not d.body.done():
            d.body.set_result(d.view)

    def connection_lost(self, exc: Exception | None) -> None:
        d = self.cycle
        if isinstance(d, _Direct) and not d.response_complete:
            d.disconnected = True
            if not d.body.done():
                d.body.set_exception(ClientDisconnect())
        if self._reading is not None:  # a direct body still arriving: its buffer goes with the connection
            self._reading.hold.release()
        self._reading = self._growing = None
        for waiting, _ in self.pipeline:  # requests queued behind this connection's current one never start
            hold: BodyHold | None = waiting.scope.get(HOLD)  # type: ignore[assignment]
            if hold is not None:
                hold.release()
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        super().connection_lost(exc)

    # --- request heads: bounded in size and in time ---------------------------------------------------

    def _check_head(self) -> None:
        """Close a connection that has waited read_timeout_s for a head (408 if part of one came), or for the rest
        of a body answered before it ended (an early 404 or 413: the client stopped sending, or never sent it
        after `Expect: 100-continue`); else check again when that is due (or in read_timeout_s, while a request
        is being answered)."""
        self._head_timer = None
        if self.transport.is_closing() or self._refused:
            return
        limit = self.handlers.settings.read_timeout_s
        wait = limit
        cycle: Any = self.cycle
        if not self.pipeline and (cycle is None or cycle.response_complete):
            waited = self.loop.time() - self._head_since
            if waited >= limit:
                if not self._in_head or self._head_bytes == 0:
                    self.transport.close()  # answered already, or nothing of a request came (as uvicorn's keep-alive)
                else:
                    self._refuse(408, f"the request head did not arrive within {limit:g} s; the connection is closed")
                return
            wait = limit - waited
        self._head_timer = self.loop.call_later(wait, self._check_head)

    def send_400_response(self, msg: str) -> None:
        """Malformed HTTP (uvicorn's parser refused it): 400 as JSON like every other error, then close."""
        del msg  # "Invalid HTTP request received." (`_feed` has logged it, at most once a minute)
        self._refuse(400, "malformed HTTP/1.1 request: a bad request line, header, Content-Length or chunk")

    def _body_timeout(self, d: _Direct) -> None:
        """A direct request's body has not arrived within read_timeout_s: its handler answers 408 and closes."""
        self._body_timer = None
        if d.body.done():  # answered early (an error before the body): nothing waits for the rest; close
            self.transport.close()
        else:
            d.body.set_exception(BodyTimeout(body_timeout_reason(self.handlers.settings.read_timeout_s)))

    def _refuse(self, status: int, reason: str) -> None:
        """Answer a request that cannot be read (`status`, JSON `reason`) and close the connection. With another
        request's answer still pending (this one was pipelined behind it) there is no place for an answer: just
        close; a request whose body is malformed is answered unless its handler has begun to answer."""
        cycle: Any = self.cycle
        pending = cycle is not None and not cycle.response_complete
        answer = self._encode(Reply(status, orjson.dumps({"error": reason}), JSON), close=True)
        if pending or not self.transport.can_write_eof():  # a handler runs (it sees a disconnect), or TLS
            if not pending or not (self._in_head or getattr(cycle, "response_started", True)):
                self.transport.write(answer)
            self.transport.close()
            return
        self.transport.write(answer)
        self._linger()

    def _linger(self) -> None:
        """Close after the answer just written, while the client may still be sending (a lingering close): closed
        with the client's bytes unread, the socket would send a reset that can destroy the answer before the client
        reads it; so send FIN, drop what still comes, close soon after (at once under TLS, which has no FIN)."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._refused = True
        self.flow.resume_reading()
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self.loop.call_later(_LINGER_S, self.transport.close)

    # --- the direct path -----------------------------------------------------------------------------

    def _start_direct(self, headers: dict[str, str], hold: BodyHold) -> bool:
        """Take the request that has just sent its headers, if it is one this protocol serves (`headers`: those
        of `_WANTED`) and its body fits the budget (`hold`; else the ASGI path answers the refusal)."""
        parser = self.parser
        cycle: Any = self.cycle
        if parser.get_method() != b"POST" or (cycle is not None and not cycle.response_complete):
            return False  # not an inference request, or pipelined behind one still answered: uvicorn queues it
        if self.expect_100_continue or parser.should_upgrade() or self.root_path or self.limit_concurrency is not None:
            return False
        path, _, query = self.url.partition(b"?")
        if b"%" in path or b"#" in query:
            return False
        try:
            found = route(path.decode("ascii"))
        except UnicodeDecodeError:
            return False
        if found is None or hold.refusal is not None:
            return False
        declared = headers.get("content-length")
        if "transfer-encoding" in headers or declared is None or not (declared.isascii() and declared.isdigit()):
            return False
        size = int(declared)
        if size > self.max_body_bytes:
            return False  # the ASGI path answers 413 before reading
        head = headers.get("inference-header-content-length", "")
        aligned_at = int(head) if found[0] == "infer" and head.isascii() and head.isdigit() and int(head) < size else 0
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        d = _Direct(size, aligned_at, keep_alive, self.loop.create_future(), hold)
        self._reading = d
        self.cycle = d  # type: ignore[assignment]  # uvicorn reads response_complete / keep_alive / disconnected
        task = self.loop.create_task(self._serve(d, found, query, headers))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        return True

    async def _serve(self, d: _Direct, found: Route, query: bytes, headers: dict[str, str]) -> None:
        kind, name, version = found
        try:
            if kind == "infer":
                reply = await self.handlers.infer_reply(name, version, d.read, headers, d.hold)
            else:
                reply = await self.handlers.predict_reply(name, None, None, query, d.read, headers, d.hold)
        except BaseException:  # cancelled (graceful shutdown ran out of time): no answer, close
            d.response_complete = True
            _settle(d.body)
            self.transport.close()
            raise
        finally:
            if self._reading is not d:  # else the rest of the body still fills the buffer: released when it ends
                d.hold.release()
        _settle(d.body)  # answered before the body arrived (an early error): the rest is read and dropped
        self._respond(d, reply)

    def _respond(self, d: _Direct, reply: Reply) -> None:
        d.response_complete = True
        if d.disconnected or self.transport.is_closing():
            return
        close = reply.close or not d.keep_alive
        self.transport.write(self._encode(reply, close=close))
        if close:
            self.transport.close()
        self.on_response_complete()

    def _encode(self, reply: Reply, *, close: bool) -> bytes:
        """The whole response: head (with `connection: close` when `close`) and body."""
        lines = [self._head(reply.status, reply.content_type), b"content-length: %d\r\n" % len(reply.body)]
        for key, text in reply.headers:
            lines.append(f"{key.lower()}: {text}\r\n".encode("latin-1"))
        if close:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        lines.append(reply.body)
        return b"".join(lines)

    def _head(self, status: int, content_type: str) -> bytes:
        """The status line, uvicorn's default headers (their date changes each second) and the content type."""
        defaults = self.server_state.default_headers
        kept = self.heads
        if kept.get(None) is not defaults:  # uvicorn set new default headers: forget the heads made from the old
            kept.clear()
            kept[None] = defaults
        head = kept.get((status, content_type))
        if head is None:
            lines = [STATUS_LINE[status]]
            for name, value in defaults:
                lines += (name, b": ", value, b"\r\n")
            lines.append(b"content-type: %s\r\n" % content_type.encode("latin-1"))
            head = kept[status, content_type] = b"".join(lines)
        return head


def _releasing(app: Any, hold: BodyHold) -> Any:
    """`app` for one request, releasing its body's hold when it returns or fails."""

    async def run(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        finally:
            hold.release()

    return run


def _settle(body: asyncio.Future[Body]) -> None:
    """Leave no body future pending, and no failure in one unretrieved (asyncio would log it)."""
    if not body.done():
        body.cancel()
    elif not body.cancelled():
        body.exception()


def protocol_for(handlers: Inference, max_body_bytes: int) -> type[InferenceProtocol]:
    """The protocol class for uvicorn's `http` option, bound to the API's handlers and body limit."""
    bound = {"handlers": handlers, "max_body_bytes": max_body_bytes, "heads": {}}
    return type("InferenceProtocol", (InferenceProtocol,), bound)
