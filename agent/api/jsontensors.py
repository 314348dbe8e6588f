"""Large JSON infer bodies parsed straight into typed buffers (simdjson), never into Python float lists.

orjson turns a 1x3x320x320 FP32 tensor sent as JSON (6 MB of text) into 307,200 Python floats, and numpy
then copies them into an array: ~40 ms on this 2-core host, ten times the model run. simdjson parses the
same text with SIMD and exports each numeric `data` array as one contiguous buffer of doubles (or int64 /
uint64) that numpy views and casts once (docs/bench/serve.md has the figures).

`parse_json` is only a fast path: it returns the document as `parse_infer` expects it, with each flat
numeric `data` array already a 1-D numpy array, or None whenever anything is unusual (not an object,
nested or non-numeric data, a parser error), and the caller then parses with orjson, whose errors name
the problem. So every request gets the same answer as before; only the common large case gets faster.
Two errors it answers itself (`BadRequest`), from counts on simdjson's tape, where orjson would first build
the whole list as Python objects: a flat `data` array whose length is not its shape's, and more `inputs` or
`outputs` than a request may have.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import simdjson

from agent.api.errors import BadRequest

FAST_JSON_BYTES = 64 * 1024
"""Smaller JSON bodies go straight to orjson: there a float list is cheap and a second parser is not."""

_BUFFER: dict[str, tuple[Literal["d", "i", "u"], type[np.generic]]] = {
    "f": ("d", np.float64),
    "i": ("i", np.int64),
    "u": ("u", np.uint64),
}
_PARSE_ERRORS = (ValueError, TypeError, RuntimeError, KeyError, IndexError)
REUSE_BYTES = 8 * 1024 * 1024
"""Documents up to this size are parsed by one kept parser (when no other thread is using it): a fresh
parser's buffers are new memory, and faulting them in took about a fifth of a 6 MB parse here. The kept
parser holds about 2.5x the largest document it parsed (~20 MiB at most)."""
_kept = simdjson.Parser()
_kept_lock = threading.Lock()


def parse_json(
    body: bytes | memoryview, datatypes: dict[str, np.dtype[Any]], max_tensors: int
) -> dict[str, Any] | None:
    """The request document with flat numeric `data` arrays as 1-D numpy arrays (int64, uint64 or float64:
    the caller casts to the declared datatype), or None: parse with orjson instead.

    Raises:
        BadRequest: more than `max_tensors` inputs or outputs, or a flat `data` of another length than its shape's.
    """
    if len(body) <= REUSE_BYTES and _kept_lock.acquire(blocking=False):
        try:  # no proxy of the document outlives this call (numbers are copied out), so the parser is reusable
            return _parse(_kept, body, datatypes, max_tensors)
        finally:
            _kept_lock.release()
    return _parse(simdjson.Parser(), body, datatypes, max_tensors)


def _parse(
    parser: simdjson.Parser, body: bytes | memoryview, datatypes: dict[str, np.dtype[Any]], max_tensors: int
) -> dict[str, Any] | None:
    try:
        doc = parser.parse(body)
        if not isinstance(doc, simdjson.Object):
            return None
        for key in ("inputs", "outputs"):  # counted on the tape: millions of `{}` would each become a dict
            listed = doc.get(key)
            if isinstance(listed, simdjson.Array) and len(listed) > max_tensors:
                raise BadRequest(f"'{key}' must be a list of at most {max_tensors} tensors, not {len(listed)}")
        out: dict[str, Any] = {k: _plain(doc[k]) for k in doc.keys() if k != "inputs"}  # noqa: SIM118 (lazy)
        inputs = doc.get("inputs")
        if not isinstance(inputs, simdjson.Array):
            return None
        out["inputs"] = [_input(raw, datatypes) for raw in inputs]
    except _PARSE_ERRORS:
        return None
    if any(i is None for i in out["inputs"]):
        return None
    return out


def _input(raw: Any, datatypes: dict[str, np.dtype[Any]]) -> dict[str, Any] | None:
    if not isinstance(raw, simdjson.Object):
        return None
    item: dict[str, Any] = {k: _plain(raw[k]) for k in raw.keys() if k != "data"}  # noqa: SIM118 (items() would build the data)
    data = raw.get("data")
    if data is None:
        return item
    dtype = datatypes.get(item.get("datatype"))  # type: ignore[arg-type]
    shape = item.get("shape")
    if dtype is None or dtype.kind not in _BUFFER or not isinstance(data, simdjson.Array):
        return None
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) or len(shape) > 16:
        return None
    count, n = math.prod(shape), len(data)  # len: counted on simdjson's tape, no value is built
    if n != count:
        if n and isinstance(data[0], simdjson.Array):  # nested: orjson's path checks it against the shape
            return None
        # flat and of the wrong length: refused here, before orjson builds a list of its values (a list of 8
        # million numbers for a shape of 1 built 64 MB of Python list to be refused)
        raise BadRequest(f"input {str(item.get('name'))[:256]!r}: 'data' has {n} values, shape {shape} needs {count}")
    kind, np_type = _BUFFER[dtype.kind]
    item["data"] = np.frombuffer(data.as_buffer(of_type=kind), dtype=np_type)
    return item


def _plain(value: Any) -> Any:
    """A simdjson proxy as plain Python (small parts of the document only: names, shapes, parameters)."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def cast(data: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """A parsed buffer as `dtype`.

    Raises:
        OverflowError: a value the datatype cannot hold (1e39 as FP32, 300 as INT8).
    """
    if dtype.kind in "iu" and data.size:
        info = np.iinfo(dtype)
        lo, hi = data.min(), data.max()
        if lo < info.min or hi > info.max:
            raise OverflowError(f"values from {lo} to {hi} do not fit {dtype.name}")
    if dtype.kind == "b":
        raise TypeError("booleans are parsed by orjson")
    with np.errstate(over="raise", invalid="raise"):
        try:
            return data.astype(dtype)
        except FloatingPointError as e:
            raise OverflowError(f"a value does not fit {dtype.name}: {e}") from None
