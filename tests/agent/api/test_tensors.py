"""The v2 tensor codec without HTTP: round trips for every datatype; hostile bodies raise only BadRequest."""

from __future__ import annotations

import tracemalloc

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.api import tensors
from agent.api.errors import BadRequest
from agent.api.jsontensors import FAST_JSON_BYTES
from agent.api.tensors import DATATYPES, InferRequest, datatype_of, encode_infer, parse_infer
from tests.support.fuzz import examples
from tests.support.inference import HEADER_LENGTH, binary_body

DTYPES = sorted(DATATYPES)


@settings(max_examples=examples(60), deadline=None)
@given(
    st.sampled_from(DTYPES).flatmap(
        lambda t: hnp.arrays(
            DATATYPES[t],
            hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
            elements={"allow_nan": False, "allow_infinity": False} if t.startswith("FP") else None,
        )
    ),
    st.booleans(),
)
def test_round_trip_binary_and_json(a: np.ndarray, binary: bool) -> None:
    arrays = {"x": a, "y": a[..., :1].copy()}
    if binary:
        body, headers = binary_body(arrays)
        req = parse_infer(body, headers[HEADER_LENGTH])
    else:
        doc = {
            "inputs": [
                {"name": k, "shape": list(v.shape), "datatype": datatype_of(v.dtype), "data": v.tolist()}
                for k, v in arrays.items()
            ]
        }
        req = parse_infer(orjson.dumps(doc), None)
    for k, v in arrays.items():
        assert req.inputs[k].dtype == v.dtype
        np.testing.assert_array_equal(req.inputs[k], v)
    out_req = InferRequest(req.inputs, (("x", binary), ("y", not binary)), False, "r")
    content, n = encode_infer("m", "1.0.0", out_req, arrays, ["x", "y"])
    head = orjson.loads(content[:n] if n is not None else content)
    assert head["id"] == "r"
    outs = {o["name"]: o for o in head["outputs"]}
    assert outs["x"]["shape"] == list(a.shape)
    if binary:
        assert n is not None  # binary outputs: the JSON header's length is in the HTTP header
        got = np.frombuffer(content[n : n + a.nbytes], dtype=a.dtype).reshape(a.shape)
        np.testing.assert_array_equal(got, a)
    else:
        np.testing.assert_array_equal(np.asarray(outs["x"]["data"], dtype=a.dtype).reshape(a.shape), a)


@settings(max_examples=examples(200), deadline=None)
@given(st.binary(max_size=300), st.one_of(st.none(), st.integers(-5, 400).map(str), st.text(max_size=5)))
def test_hostile_bodies_raise_only_bad_request(body: bytes, header: str | None) -> None:
    try:
        parse_infer(body, header)
    except BadRequest:
        pass


@settings(max_examples=examples(200), deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    ["inputs", "name", "shape", "datatype", "data", "parameters", "binary_data_size", "outputs", "id"]
                ),
                c,
                max_size=5,
            )
        ),
        max_leaves=30,
    )
)
def test_hostile_json_documents_raise_only_bad_request(doc: object) -> None:
    try:
        parse_infer(orjson.dumps(doc), None)
    except (BadRequest, orjson.JSONEncodeError):
        pass


def test_binary_data_without_its_header_says_what_is_missing() -> None:
    head = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    )
    with pytest.raises(BadRequest, match="not valid JSON: .*needs an Inference-Header-Content-Length header"):
        parse_infer(head + np.array([1.5, -2.0], dtype=np.float32).tobytes(), None)
    assert parse_infer(head + np.array([1.5, -2.0], dtype=np.float32).tobytes(), str(len(head))).inputs["x"][0] == 1.5


def test_unaligned_binary_tensors_are_copied_aligned() -> None:
    x = np.arange(6, dtype=np.float64)
    head = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [6], "datatype": "FP64", "parameters": {"binary_data_size": 48}}]}
    )
    head = head + b" " * ((-len(head) + 3) % 8)  # header length not a multiple of 8
    req = parse_infer(head + x.tobytes(), str(len(head)))
    assert req.inputs["x"].flags.aligned
    np.testing.assert_array_equal(req.inputs["x"], x)


def test_a_binary_header_seen_before_gives_the_same_request_and_the_same_errors() -> None:
    """Binary requests' headers are remembered with the body length: later bodies get their own tensors, and a
    body of another length is checked afresh; the memory stays bounded whatever headers arrive."""
    head = orjson.dumps(
        {
            "id": "r1",
            "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    head += b" " * (-len(head) % 4)
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((2, 3)).astype(np.float32)
        req = parse_infer(head + x.tobytes(), str(len(head)))
        assert (req.id, req.outputs, req.binary_default) == ("r1", (("y", True),), False)
        np.testing.assert_array_equal(req.inputs["x"], x)
    with pytest.raises(BadRequest, match="ends past the body"):
        parse_infer(head + bytes(20), str(len(head)))
    with pytest.raises(BadRequest, match="not claimed"):
        parse_infer(head + bytes(28), str(len(head)))
    for n in range(tensors.PLANS_KEPT + 5):
        one = orjson.dumps({"inputs": [{"name": f"x{n}", "shape": [1], "datatype": "INT8",
                                        "parameters": {"binary_data_size": 1}}]})  # fmt: skip
        parse_infer(one + b"\x07", str(len(one)))
        assert len(tensors._plans) <= tensors.PLANS_KEPT


def test_huge_declared_shapes_are_refused_before_allocating() -> None:
    doc: dict[str, list[dict[str, object]]] = {
        "inputs": [{"name": "x", "shape": [10**9, 10**9], "datatype": "FP32", "data": [1.0]}]
    }
    with pytest.raises(BadRequest, match="elements"):
        parse_infer(orjson.dumps(doc), None)
    doc = {
        "inputs": [
            {"name": "x", "shape": [10**9, 10**9], "datatype": "FP32", "parameters": {"binary_data_size": 4 * 10**18}}
        ]
    }
    head = orjson.dumps(doc)
    with pytest.raises(BadRequest, match="elements"):
        parse_infer(head + b"\0" * 16, str(len(head)))


# Found by schemathesis and fuzzing (issue 18): each answered 500 before, now a 400 with the reason.
@pytest.mark.parametrize(
    ("tensor", "reason"),
    [
        ({"shape": [0, 2305843009213693952], "datatype": "FP32", "data": []}, "up to"),  # product 0, ValueError
        ({"shape": [0, 2**30, 2**30], "datatype": "FP32", "data": []}, "more than"),
        ({"shape": [1], "datatype": "FP32", "data": [1e39]}, "not a list of float32"),  # was a RuntimeWarning
        ({"shape": [1], "datatype": "FP16", "data": [1e5]}, "not a list of float16"),
        ({"shape": [1], "datatype": "INT32", "data": [1e20]}, "not a list of int32"),
        ({"shape": [1], "datatype": "UINT8", "data": [300]}, "not a list of uint8"),
    ],
)
def test_values_and_shapes_a_tensor_cannot_hold_are_bad_requests(tensor: dict[str, object], reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        parse_infer(orjson.dumps({"inputs": [{"name": "x", **tensor}]}), None)


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize(
    ("datatype", "value", "reason"),
    [
        ("FP32", None, "only numbers .* not null or strings: None"),  # was NaN: a 200 with null outputs
        ("FP64", "1.5", "only numbers .* not null or strings: '1.5'"),  # was parsed as a number
        ("FP16", {}, "only numbers"),
        ("INT32", 1.5, "fraction .*: 1.5"),  # was cut to 1
        ("UINT8", 2.25, "fraction"),
        ("BOOL", "true", "only numbers"),
        ("FP32", True, "FP32 holds true/false: booleans are values of BOOL inputs only"),  # was taken as 1.0
        ("INT8", False, "INT8 holds true/false"),  # was taken as 0
        ("UINT8", True, "true/false"),
        ("BOOL", 2, r"BOOL takes true/false \(or 1/0\), not 2"),  # was taken as true
        ("BOOL", 0.5, r"not 0.5"),
        ("INT64", 2**53 + 1, "beyond 2\\*\\*53"),  # beside the 1.0 below it became 2**53
    ],
)
def test_json_data_that_is_not_a_number_of_its_datatype_is_a_bad_request(
    datatype: str, value: object, reason: str, large: bool
) -> None:
    """Triton refuses these; numpy's conversion took them silently, so a client's bug became a wrong answer."""
    n = FAST_JSON_BYTES // 2 if large else 3  # past FAST_JSON_BYTES: simdjson first, then orjson
    data = [1.0 if datatype == "INT64" else 1] * (n - 1) + [value]
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [n], "datatype": datatype, "data": data}]})
    assert (len(body) > FAST_JSON_BYTES) == large
    with pytest.raises(BadRequest, match=reason):
        parse_infer(body, None)


def test_json_data_of_whole_numbers_converts_and_booleans_only_as_bool() -> None:
    doc = {
        "inputs": [
            {"name": "i", "shape": [3], "datatype": "INT64", "data": [1.0, -2, 3]},
            {"name": "f", "shape": [3], "datatype": "FP32", "data": [1, 2, 0.5]},
            {"name": "b", "shape": [2, 1], "datatype": "BOOL", "data": [[0], [1]]},
            {"name": "t", "shape": [2], "datatype": "BOOL", "data": [True, False]},
        ]
    }
    req = parse_infer(orjson.dumps(doc), None)
    np.testing.assert_array_equal(req.inputs["i"], np.array([1, -2, 3], dtype=np.int64))
    np.testing.assert_array_equal(req.inputs["f"], np.array([1, 2, 0.5], dtype=np.float32))
    np.testing.assert_array_equal(req.inputs["b"], np.array([[False], [True]]))
    np.testing.assert_array_equal(req.inputs["t"], np.array([True, False]))


@pytest.mark.parametrize(
    ("shape", "data", "reason"),
    [
        ([2, 3], [[1, 2], [3, 4], [5, 6]], r"nested as \[3, 2\]: at depth 0 it has a list of 3 .* needs a list of 2"),
        ([2, 2], [[1, 2], [3]], "at depth 1 it has a list of 1"),  # ragged
        ([2], [[1, 2]], "nested as \\[1, 2\\]"),  # was flattened and taken
        ([1], [[[[1.0]]]], "nested deeper than its shape"),  # was flattened and taken
        ([2], [1, [2]], "nested deeper than its shape: \\[2\\]"),
        ([], [[1]], "nested deeper than its shape"),
        ([2, 2], [[1, 2], 3], "at depth 1 it has 3 where"),
    ],
)
def test_nested_data_of_another_shape_is_a_bad_request(shape: list[int], data: object, reason: str) -> None:
    """Nested data was flattened and only its count checked: a transposed [3, 2] list was read as [2, 3]."""
    body = orjson.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]})
    with pytest.raises(BadRequest, match=reason):
        parse_infer(body, None)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)  # nested exactly as the shape, or flat: the same tensor
    for data in (x.tolist(), x.ravel().tolist()):
        body = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 3, 4], "datatype": "FP32", "data": data}]})
        np.testing.assert_array_equal(parse_infer(body, None).inputs["x"], x)


_ONE = b'{"name":"x","shape":[1],"datatype":"FP32","data":[0]}'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[' + b"0," * 2_000_000 + b"0]}]}",
         "'data' has 2000001 values, shape \\[1\\] needs 1"),
        (b'{"inputs":[' + b"{}," * 1_000_000 + b"{}]}", "'inputs' must be a list of at most 64 tensors, not 1000001"),
        (b'{"inputs":[' + _ONE + b'],"outputs":[' + b"{}," * 1_000_000 + b"{}]}", "'outputs' must be a list"),
    ],
)  # fmt: skip
def test_lists_longer_than_a_request_can_hold_are_refused_before_they_are_built(body: bytes, reason: str) -> None:
    """Bodies within the JSON limit whose lists no request can use: zeros declared as one value, a million
    inputs or outputs. orjson built each as Python objects (a list of 8-byte pointers, 4x the text; a dict per
    `{}`, ~20x), numpy an array of the zeros, only to refuse the count. simdjson's tape counts them; no Python
    value is made (tracemalloc sees Python's allocations, not simdjson's tape)."""
    tracemalloc.start()
    try:
        with pytest.raises(BadRequest, match=reason):
            parse_infer(body, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(body) // 4, peak  # old code: 4x the body (zeros) to 20x ({})


def _json_body(arrays: dict[str, np.ndarray], nested: bool = False, **extra: object) -> bytes:
    inputs = [
        {
            "name": k,
            "shape": list(a.shape),
            "datatype": datatype_of(a.dtype),
            "data": a.tolist() if nested else a.ravel().tolist(),
        }
        for k, a in arrays.items()
    ]
    return orjson.dumps({"inputs": inputs, **extra})


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BOOL"])
def test_large_json_tensors_parse_to_the_same_arrays_as_small_ones(datatype: str) -> None:
    """Bodies past FAST_JSON_BYTES go through simdjson's typed buffers (booleans and nested lists through orjson)."""
    dtype = DATATYPES[datatype]
    rng = np.random.default_rng(1)
    if dtype.kind == "f":
        x = rng.standard_normal((2, 3, 80, 80)).astype(dtype)
    elif dtype.kind == "b":
        x = rng.random((2, 3, 80, 80)) > 0.5
    else:
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -(2**62)), min(info.max, 2**62), size=(2, 3, 80, 80)).astype(dtype)
    for nested in (False, True):
        body = _json_body({"image": x, "other": x[:1, :1, :2, :2]}, nested=nested, id="big", parameters={"a": [1]})
        assert len(body) > FAST_JSON_BYTES
        req = parse_infer(body, None)
        assert req.id == "big" and list(req.inputs) == ["image", "other"]
        for got, want in ((req.inputs["image"], x), (req.inputs["other"], x[:1, :1, :2, :2])):
            assert got.dtype == dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("datatype", "value", "reason"),
    [("FP32", 1e39, "not a list of float32"), ("INT8", 300, "not a list of int8"), ("UINT8", -1, "not a list of uint8"),
     ("INT32", 1.5, "fraction")],
)  # fmt: skip
def test_large_json_values_the_datatype_cannot_hold_are_refused(datatype: str, value: float, reason: str) -> None:
    data: list[float] = [1] * 40_000
    data[12_345] = value
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [40_000], "datatype": datatype, "data": data}]})
    assert len(body) > FAST_JSON_BYTES
    with pytest.raises(BadRequest, match=reason):
        parse_infer(body, None)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [(lambda b: b[:-10], "not valid JSON"), (lambda b: b.replace(b'"shape":[30000]', b'"shape":[3,10000]', 1), ""),
     (lambda b: b.replace(b'"shape":[30000]', b'"shape":[29999]', 1), "has 30000 values"),
     (lambda b: b.replace(b"[0.0,0.0,0.0", b"[[0.0,0.0],0.0", 1), "nested as \\[29999, 2\\]"),
     (lambda b: b.replace(b"0.0,0.0,0.0,", b'0.0,"a",0.0,', 1), "only numbers .*: 'a'")],
)  # fmt: skip
def test_large_malformed_json_gets_orjsons_reason(mutate: object, reason: str) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [30_000], "datatype": "FP32", "data": [0.0] * 30_000}]})
    body = mutate(body)  # type: ignore[operator]
    assert len(body) > FAST_JSON_BYTES
    if not reason:
        assert parse_infer(body, None).inputs["x"].shape == (3, 10_000)
        return
    with pytest.raises(BadRequest, match=reason):
        parse_infer(body, None)
