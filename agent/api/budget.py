"""The device-wide budget of request-body bytes held in flight (`ApiSettings.max_body_bytes_in_flight`).

Each request's body is bounded (`max_body_bytes`) and each model's requests are (`max_concurrency`), but not
their product: 256 concurrent 64 MiB uploads would grow a small device by 16 GiB. Every request that carries a
body takes a `BodyHold` from the one `BodyBudget` when its headers end (`agent.api.protocol`, the only place
holds are taken): a declared Content-Length is held at once, a chunked body as it arrives. A hold that does
not fit is refused, and the request's body reader (`agent.api.inference.read_body`) raises its refusal before
reading, or at the next chunk:

- 503 with Retry-After (`Overloaded`) when the bytes would fit were other requests not holding theirs: the
  condition is temporary, as RFC 9110 defines 503, and it is the answer the API gives for every other overload
  (a model's `max_concurrency`, its queue), which clients such as tritonclient already retry;
- 413 (`TooLarge`) when this one request's body alone is larger than the whole budget: no retry can succeed.

A hold is released, once, when its request ends on any path (answered, failed, timed out, client gone).
"""

from __future__ import annotations

from agent.api.errors import Overloaded, TooLarge
from agent.serving.errors import ServingError

HOLD = "edgefleet.body_hold"
"""The ASGI scope key under which a request's `BodyHold` travels to the handler that reads its body."""


class BodyBudget:
    """Bytes of request bodies held by requests in progress, device-wide (one per server; event loop only)."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_use = 0
        self.refused = {503: 0, 413: 0}  # requests refused, by status (a /metrics counter)

    def hold(self, size: int = 0) -> BodyHold:
        """A hold for one request's body, growing by `size` bytes at once (its declared Content-Length)."""
        hold = BodyHold(self)
        if size:
            hold.grow(size)
        return hold


class BodyHold:
    """One request's share of the budget: grows with its body, refused once it would not fit, released once."""

    __slots__ = ("budget", "held", "refusal", "released")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0
        self.refusal: ServingError | None = None  # set when the body would pass the budget: the reader raises it
        self.released = False

    def grow(self, n: int) -> bool:
        """Hold `n` more bytes; False (and `refusal` set) if they do not fit. A refused or released hold no
        longer grows: the body it would count is dropped or answered already."""
        if self.refusal is not None or self.released:
            return self.refusal is None
        b = self.budget
        if self.held + n > b.limit:
            self.refusal = TooLarge(
                f"the request body ({self.held + n} bytes or more) exceeds the device's budget of "
                f"{b.limit} bytes of bodies in flight"
            )
            b.refused[413] += 1
            return False
        if b.in_use + n > b.limit:
            self.refusal = Overloaded(
                f"too many request bodies in flight on this device ({b.in_use} of {b.limit} bytes held, "
                f"this one needs {self.held + n}); retry in {b.retry_after_s} s"
            )
            b.refused[503] += 1
            return False
        self.held += n
        b.in_use += n
        return True

    def release(self) -> None:
        """Give the bytes back (the request has ended); again: nothing."""
        if not self.released:
            self.released = True
            self.budget.in_use -= self.held
