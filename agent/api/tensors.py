"""Open Inference Protocol v2 tensors: JSON and binary-extension request parsing, response encoding.

The hot path never goes through pydantic or the standard `json` module: the body is read as bytes,
parsed with orjson, binary tensors are `np.frombuffer` views of the body, and JSON outputs are written by
orjson straight from numpy arrays. The binary tensor data extension: when the request carries an
`Inference-Header-Content-Length` header, the first that many bytes are the JSON header and the rest are
the tensors named with a `binary_data_size` parameter, in input order (little-endian, row-major).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from agent.api.errors import BadRequest, TooLarge
from agent.api.jsontensors import FAST_JSON_BYTES, cast, parse_json

Array = npt.NDArray[Any]

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NAMES: dict[np.dtype[Any], str] = {v: k for k, v in DATATYPES.items()}
MAX_TENSORS = 64
MAX_NAME = 256
MAX_ELEMENTS = 2**31 - 1  # per tensor: onnxruntime and numpy index with it; far beyond any body we accept
HEADER = "inference-header-content-length"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The protocol's datatype name for a numpy dtype ('FP32' for float32)."""
    name = _NAMES.get(np.dtype(dtype))
    if name is None:
        raise BadRequest(f"dtype {dtype} has no Open Inference Protocol datatype")
    return name


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A parsed v2 infer request: input arrays, which outputs to return and how, and the request id."""

    inputs: dict[str, Array]
    outputs: tuple[tuple[str, bool], ...] | None  # (name, binary); None: every output
    binary_default: bool
    id: str | None


def _header_length(value: str | None, size: int) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {value[:32]!r} is not an integer") from None
    if not 0 < n <= size:
        raise BadRequest(f"Inference-Header-Content-Length {n} is outside the body (1..{size} bytes)")
    return n


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    """Checked dims: each below 2**31, and the element count of the non-zero dims below 2**31 too.

    The product alone is not enough: `[0, 2**61]` has 0 elements, and numpy still refuses the shape.
    """
    if not isinstance(raw, list) or len(raw) > 16:
        raise BadRequest(f"input {name!r}: 'shape' must be a list of at most 16 non-negative integers")
    for d in raw:
        if type(d) is not int or not 0 <= d <= MAX_ELEMENTS:
            raise BadRequest(
                f"input {name!r}: 'shape' must be a list of non-negative integers up to {MAX_ELEMENTS}, got {raw!r:.80}"
            )
    if math.prod(d for d in raw if d) > MAX_ELEMENTS:
        raise BadRequest(f"input {name!r}: shape {raw!r:.80} has more than {MAX_ELEMENTS} elements")
    return tuple(raw)


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"{where}: 'parameters' must be an object")
    return raw


def parse_infer(
    body: bytes | bytearray | memoryview, header_length: str | None, *, max_json_bytes: int | None = None
) -> InferRequest:
    """Parse an infer request body (JSON, or JSON header + binary tensors).

    Raises:
        BadRequest: naming what is wrong (bad JSON, missing field, size mismatch, unknown datatype).
        TooLarge: the JSON part is longer than `max_json_bytes` (binary tensor data is not counted).
    """
    n = _header_length(header_length, len(body))
    json_bytes = n if n is not None else len(body)
    if max_json_bytes is not None and json_bytes > max_json_bytes:
        raise TooLarge(
            f"the JSON part of the request is {json_bytes} bytes, above the {max_json_bytes}-byte JSON limit: "
            "send large tensors as binary data (Inference-Header-Content-Length)"
        )
    view = memoryview(body)
    head = view[:n] if n is not None else view
    key = None
    if n is not None and n <= PLAN_HEAD_BYTES:  # a binary request: its JSON header was likely seen before
        key = (bytes(head), len(body))
        plan = _plans.get(key)
        if plan is not None:
            return plan.request(view)
    doc = parse_json(head, DATATYPES, MAX_TENSORS) if n is None and len(head) >= FAST_JSON_BYTES else None
    if doc is None:
        try:
            doc = orjson.loads(head)
        except orjson.JSONDecodeError as e:
            hint = ""
            near = bytes(head[max(e.pos - 1, 0) : e.pos + 8])
            if b"NaN" in near or b"Infinity" in near:
                hint = " (NaN and Infinity are not JSON numbers, and no input takes them: Triton refuses them too)"
            elif n is None and b'"binary_data_size"' in bytes(head[:PLAN_HEAD_BYTES]):
                hint = " (binary tensor data needs an Inference-Header-Content-Length header: the JSON part's length)"
            raise BadRequest(f"request body is not valid JSON: {e}{hint}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object with 'inputs'")
    rid = doc.get("id")
    if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_NAME):
        raise BadRequest(f"'id' must be a string of at most {MAX_NAME} characters")
    params = _parameters(doc.get("parameters"), "request")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs or len(raw_inputs) > MAX_TENSORS:
        raise BadRequest(f"'inputs' must be a non-empty list of at most {MAX_TENSORS} tensors")
    offset = n or 0
    literals: bool | None = None
    inputs: dict[str, Array] = {}
    binary: list[tuple[str, np.dtype[Any], tuple[int, ...], int]] = []
    for raw in raw_inputs:
        if not isinstance(raw, dict):
            raise BadRequest("every entry of 'inputs' must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise BadRequest(f"every input needs a string 'name' of 1 to {MAX_NAME} characters")
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        dtype = DATATYPES.get(raw.get("datatype"))  # type: ignore[arg-type]
        if dtype is None:
            raise BadRequest(
                f"input {name!r}: 'datatype' {raw.get('datatype')!r:.40} is not supported; "
                f"use one of {sorted(DATATYPES)}"
            )
        shape = _shape(raw.get("shape"), name)
        count = math.prod(shape)
        size = _parameters(raw.get("parameters"), f"input {name!r}").get("binary_data_size")
        if size is not None:
            if n is None:
                raise BadRequest(f"input {name!r} has binary_data_size but no Inference-Header-Content-Length header")
            if type(size) is not int or size != count * dtype.itemsize:
                raise BadRequest(
                    f"input {name!r}: binary_data_size {size!r:.20} does not match shape {list(shape)} of "
                    f"{raw['datatype']} ({count * dtype.itemsize} bytes)"
                )
            if offset + size > len(body):
                raise BadRequest(f"input {name!r}: binary data ends past the body ({offset + size} > {len(body)})")
            arr = _tensor(view, dtype, shape, offset)
            binary.append((name, dtype, shape, offset))
            offset += size
        else:
            if "data" not in raw:
                raise BadRequest(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
            if literals is None and isinstance(raw["data"], list):  # once per document: a value may be a boolean
                text = bytes(head)  # a copy (the direct path's buffer), but `in` searches bytes at memory speed
                literals = b"true" in text or b"false" in text
            arr = _from_json(raw["data"], dtype, shape, name, bool(literals))
        inputs[name] = arr
    if offset != len(body) and n is not None:
        raise BadRequest(f"{len(body) - offset} bytes of binary data are not claimed by any input")
    request = InferRequest(inputs, _requested(doc.get("outputs")), bool(params.get("binary_data_output", False)), rid)
    if key is not None and len(binary) == len(inputs):
        if len(_plans) >= PLANS_KEPT:
            _plans.clear()
        _plans[key] = _Plan(tuple(binary), request.outputs, request.binary_default, rid)
    return request


@dataclass(frozen=True, slots=True)
class _Plan:
    """A binary request's JSON header, parsed and checked once: where each tensor lies in a body of that length."""

    inputs: tuple[tuple[str, np.dtype[Any], tuple[int, ...], int], ...]  # name, dtype, shape, offset in the body
    outputs: tuple[tuple[str, bool], ...] | None
    binary_default: bool
    id: str | None

    def request(self, view: memoryview) -> InferRequest:
        """The request for a body with this header (and length): its tensors as views of `view`."""
        inputs = {name: _tensor(view, dtype, shape, offset) for name, dtype, shape, offset in self.inputs}
        return InferRequest(inputs, self.outputs, self.binary_default, self.id)


PLAN_HEAD_BYTES = 4096
"""Binary requests' JSON headers up to this size are remembered (with the body length) once they parsed and
checked: clients send the same header with every request, so the next ones skip the JSON and its checks."""
PLANS_KEPT = 64
"""Headers remembered at most; a client that sends ever new ones only empties the memory more often."""
_plans: dict[tuple[bytes, int], _Plan] = {}


def _tensor(view: memoryview, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int) -> Array:
    """A binary tensor as a view of the body (a copy when its place in the body is not aligned for `dtype`)."""
    arr = np.frombuffer(view, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
    return arr if arr.flags.aligned else arr.copy()


def _from_json(data: Any, dtype: np.dtype[Any], shape: tuple[int, ...], name: str, literals: bool) -> Array:
    """A JSON `data` list (flat, or nested exactly as `shape`) as an array of `dtype`, refusing what Triton refuses;
    `literals`: the document has `true` or `false` somewhere (else no value can be a boolean).

    Its structure is checked against the declared shape before any array is built (a list of 8 million values
    for a shape of 1 built 100 MB of arrays to be refused), and its values' own types before they are converted:
    numpy took null for NaN, parsed "1.5", cut 1.5 to 1, wrapped 300 into an INT8, and took true as 1.
    """
    if not isinstance(data, list | np.ndarray):  # an ndarray: parsed by `jsontensors` straight into a buffer
        raise BadRequest(f"input {name!r}: 'data' must be a (flat or nested) list")
    count = math.prod(shape)
    kind = _NAMES[dtype]
    if isinstance(data, np.ndarray):
        found = data
    else:
        values = _values(data, shape, name)
        if len(values) != count:  # before numpy builds anything
            raise BadRequest(f"input {name!r}: 'data' has {len(values)} values, shape {list(shape)} needs {count}")
        found = _numbers(values, dtype, name, literals)
    if found.size != count:
        raise BadRequest(f"input {name!r}: 'data' has {found.size} values, shape {list(shape)} needs {count}")
    if dtype.kind == "b":
        if found.dtype.kind != "b" and not np.isin(found, (0, 1)).all():
            raise BadRequest(f"input {name!r}: 'data' of BOOL takes true/false (or 1/0), not {_not_01(found)!r}")
        return found.astype(dtype).reshape(shape)
    if dtype.kind in "iu" and found.dtype.kind == "f":
        # numpy reads integers beside a number written with a point as floats: exact only up to 2**53
        mixed = not isinstance(data, np.ndarray) and int in set(map(type, values))
        if not np.array_equal(found, np.trunc(found)):
            raise BadRequest(
                f"input {name!r}: 'data' of {kind} holds a number with a fraction (it would be "
                f"cut to an integer): {found[found != np.trunc(found)].flat[0].item()!r}"
            )
        if mixed and np.abs(found).max() >= _EXACT_IN_FLOAT:  # 2**53 + 1 beside a 1.0 became 2**53
            raise BadRequest(
                f"input {name!r}: 'data' of {kind} mixes numbers written with a point or exponent and integers "
                f"beyond 2**53, which cannot all be read exactly: write every value as an integer"
            )
    try:  # a value the datatype cannot hold (1e39 as FP32, 300 as INT8) is an error, never a warning or a wrap
        arr = cast(found, dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadRequest(f"input {name!r}: 'data' is not a list of {dtype.name} values: {e}") from None
    return arr.reshape(shape)


def _numbers(values: list[Any], dtype: np.dtype[Any], name: str, literals: bool) -> Array:
    """`values` (flat) as a 1-D array of numbers or booleans, refused when one is neither, or is a boolean for a
    numeric datatype. The values' types are looked at only when numpy's array says something is odd, or when the
    document has a `true`/`false` (numpy reads a boolean among numbers as 1 or 0 and says nothing)."""
    try:
        found: Array | None = np.asarray(values)
    except (ValueError, TypeError, OverflowError):  # lists of several lengths among the values
        found = None
    if found is not None and found.ndim == 1 and found.dtype.kind in "iuf" and not literals:
        return found
    kind = _NAMES[dtype]
    types = set(map(type, values))
    if not types <= _NUMBER_TYPES:
        odd = next(v for v in values if type(v) not in _NUMBER_TYPES)
        what = "not lists nested deeper than its shape" if isinstance(odd, list) else "not null or strings"
        raise BadRequest(
            f"input {name!r}: 'data' of {kind} must hold only numbers (true/false for BOOL), {what}: {odd!r:.40}"
        )
    if bool in types and dtype.kind != "b":
        raise BadRequest(
            f"input {name!r}: 'data' of {kind} holds true/false: booleans are values of BOOL inputs only "
            "(send 1 and 0 for numbers)"
        )
    if found is None or found.ndim != 1 or found.dtype.kind not in "biuf":  # numbers only: not expected
        raise BadRequest(f"input {name!r}: 'data' is not a list of {dtype.name} values")
    return found


_NUMBER_TYPES = frozenset({int, float, bool})
_EXACT_IN_FLOAT = 2**53


def _values(data: list[Any], shape: tuple[int, ...], name: str) -> list[Any]:
    """The values of `data` in row-major order: `data` itself when flat, else its lists taken apart level by
    level, each level checked against `shape` first (a list of the wrong length, or nested less deep than the
    shape, is refused before the next level is looked at; deeper nesting shows as a list among the values)."""
    if not data or type(data[0]) is not list:  # flat (or empty): the count is checked by the caller
        return data
    rows: list[Any] = [data]
    for depth, dim in enumerate(shape):
        bad = next((r for r in rows if type(r) is not list or len(r) != dim), _FITS)
        if bad is not _FITS:
            found = f"a list of {len(bad)}" if type(bad) is list else f"{bad!r:.20}"
            raise BadRequest(
                f"input {name!r}: 'data' is nested as {_nesting(data)}: at depth {depth} it has {found} where shape "
                f"{list(shape)} needs a list of {dim}; send {math.prod(shape)} values flat or nested as the shape"
            )
        rows = list(chain.from_iterable(rows))
    return rows


_FITS = object()


def _nesting(data: Any) -> list[int]:
    """The dims a nested list shows along its first elements ([[1, 2], [3, 4], [5, 6]]: [3, 2])."""
    dims: list[int] = []
    while isinstance(data, list) and len(dims) < 20:
        dims.append(len(data))
        data = data[0] if data else None
    return dims


def _not_01(found: Array) -> Any:
    """The first value of a BOOL input's data that is neither 0 nor 1 (for the error message)."""
    return found.reshape(-1)[~np.isin(found.reshape(-1), (0, 1))][0].item()


def _requested(raw: Any) -> tuple[tuple[str, bool], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_TENSORS:
        raise BadRequest(f"'outputs' must be a list of at most {MAX_TENSORS} objects")
    out: dict[str, bool] = {}  # an output named twice is returned once, as its first entry asks (as Triton does)
    for o in raw:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str) or len(o["name"]) > MAX_NAME:
            raise BadRequest(f"every entry of 'outputs' must be an object with a string 'name' (<= {MAX_NAME} chars)")
        p = _parameters(o.get("parameters"), f"output {o['name']!r}")
        if "classification" in p:
            raise BadRequest("the classification extension is not supported; use the image endpoint for top-k")
        out.setdefault(o["name"], bool(p.get("binary_data", False)))
    return tuple(out.items())


def encode_infer(
    model: str, version: str, request: InferRequest, outputs: dict[str, Array], order: Sequence[str]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header length.

    Raises:
        BadRequest: an output was requested that the model does not have.
    """
    wanted = request.outputs if request.outputs is not None else [(o, request.binary_default) for o in order]
    head: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id is not None:
        head["id"] = request.id
    items: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in wanted:
        arr = outputs.get(name)
        if arr is None:
            raise BadRequest(f"output {name!r} is not an output of {model}; it has {list(order)}")
        a = np.ascontiguousarray(arr)
        item: dict[str, Any] = {"name": name, "datatype": datatype_of(a.dtype), "shape": list(a.shape)}
        if binary:
            item["parameters"] = {"binary_data_size": a.nbytes}
            blobs.append(a.tobytes())
        else:
            item["data"] = a.reshape(-1)
        items.append(item)
    head["outputs"] = items
    js = orjson.dumps(head, option=_NUMPY)
    if not blobs:
        return js, None
    return b"".join([js, *blobs]), len(js)
