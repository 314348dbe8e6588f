"""Open Inference Protocol (KServe v2 / Triton) request bodies, as tritonclient builds them, for tests and
benchmarks of the agent's inference API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from agent.api.tensors import datatype_of

HEADER_LENGTH = "Inference-Header-Content-Length"


def binary_body(
    inputs: Mapping[str, np.ndarray[Any, Any]],
    *,
    binary_outputs: Sequence[str] = (),
    declared: int | None = None,
    pad: int = 0,
    extra: bytes = b"",
) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor infer body (the JSON header, then each input's bytes in order) and its HTTP header.

    binary_outputs: outputs asked for as binary data. declared: the `binary_data_size` every input claims
    (default: its true size). pad: spaces after the JSON header (moves the tensors' offset in the body).
    extra: bytes after the tensors.
    """
    doc: dict[str, Any] = {
        "inputs": [
            {
                "name": name,
                "shape": list(a.shape),
                "datatype": datatype_of(a.dtype),
                "parameters": {"binary_data_size": a.nbytes if declared is None else declared},
            }
            for name, a in inputs.items()
        ]
    }
    if binary_outputs:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in binary_outputs]
    head = orjson.dumps(doc) + b" " * pad
    body = head + b"".join(a.tobytes() for a in inputs.values()) + extra
    return body, {HEADER_LENGTH: str(len(head))}


def json_body(inputs: Mapping[str, np.ndarray[Any, Any]]) -> bytes:
    """A JSON-tensor infer body: each input's elements as a flat `data` list."""
    return orjson.dumps(
        {
            "inputs": [
                {"name": name, "shape": list(a.shape), "datatype": datatype_of(a.dtype), "data": a.ravel().tolist()}
                for name, a in inputs.items()
            ]
        }
    )


def raw_post(path: str, body: bytes, headers: Mapping[str, str] | None = None, *, version: str = "1.1") -> bytes:
    """The bytes of one HTTP POST with a Content-Length, for clients that write to a socket themselves."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return f"POST {path} HTTP/{version}\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body
