"""Settings of the on-device inference API, grouped by concern; every field states its unit.

Read from the environment with `ApiSettings.from_env()` (the one policy of `infra.settings`): each field `x`
is `EDGEFLEET_API_X` (for example `EDGEFLEET_API_PORT=8000`, `EDGEFLEET_API_MAX_BODY_BYTES=16777216`).
Unknown `EDGEFLEET_API_*` variables are refused naming the nearest valid one, so a typo never silently keeps
a default.
"""

from __future__ import annotations

from pydantic import Field

from infra.settings import EnvSettings, env_config

ENV_PREFIX = "EDGEFLEET_API_"


class ApiSettings(EnvSettings):
    """Where the API listens, what it accepts, and how long it waits."""

    model_config = env_config(ENV_PREFIX)

    # --- listening ----------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Interface to listen on (0.0.0.0 for every interface).")
    port: int = Field(
        default=8000,
        ge=0,
        le=65535,
        description="TCP port (8000: Triton's HTTP port, where tritonclient users look); 0 picks a free one.",
    )

    # --- limits -------------------------------------------------------------------------------------
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes; larger ones get 413 before they are read. 64 MiB fits a "
        "batch of 8 float32 3x640x640 tensors as binary data.",
    )
    max_body_bytes_in_flight: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Request-body bytes all requests together may hold at once, device-wide (a declared "
        "Content-Length counts when its headers arrive, a chunked body as it arrives); a body that does not fit: "
        "503 with Retry-After before it is read, or 413 if it alone exceeds this. 256 MiB: four bodies of the "
        "largest size, so concurrent uploads cannot grow a small device past it.",
    )
    max_json_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest JSON part of an infer request in bytes (the whole body without binary tensors); "
        "larger: 413. JSON tensors take about 15x their text in memory while parsed (a 60 MB body took 0.9 GB): "
        "16 MiB fits one float32 3x640x640 tensor as JSON; send larger ones as binary data.",
    )
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description="Largest image (width x height, from its header) the image endpoint decodes; larger: 413.",
    )
    max_concurrency: int = Field(
        default=256,
        ge=1,
        description="Requests in progress per model (reading, queued, running); beyond it: 503 with Retry-After.",
    )
    request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a request may wait for its inference (queue + run); then 503 with Retry-After.",
    )
    read_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a request may take to arrive: its headers from the connection's start or the previous "
        "answer, an inference request's body from its headers; then 408 and the connection closes (a connection "
        "that never sent a byte just closes), so a stalled or vanished client holds neither a connection nor one "
        "of its model's max_concurrency places. 60 s moves a 64 MiB body at about 1.1 MB/s.",
    )
    retry_after_s: int = Field(default=1, ge=0, le=3600, description="Retry-After (seconds) sent with every 503.")

    # --- serving defaults (the desired state's runtime options override them) ------------------------
    max_batch: int = Field(default=8, ge=1, le=1024, description="Dynamic batching: most rows per engine run.")
    max_queue_delay_ms: float = Field(
        default=2.0, ge=0, le=1000, description="Dynamic batching: longest wait (ms) for a batch to fill."
    )
    max_queue: int = Field(default=64, ge=1, description="Requests waiting for the engine before 503.")
    preprocess_threads: int = Field(
        default=2, ge=1, le=64, description="Threads decoding and resizing images off the event loop."
    )

    # --- lifecycle ----------------------------------------------------------------------------------
    activate_timeout_s: float = Field(
        default=30.0, gt=0, description="Seconds activate()/set_shadow() wait for the server loop to install."
    )
    drain_timeout_s: float = Field(
        default=10.0, ge=0, description="Seconds stop() lets in-flight requests finish before closing."
    )
