"""The dynamic batcher: own results for every caller, no mixing, isolation of bad input, back-pressure."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.batcher import Array, Batcher, BatcherOptions, BatcherStats
from models.cli import write_model
from models.descriptor import ModelDescriptor
from models.engine import Engine, EngineOptions
from models.errors import EngineNotReady, InvalidInput, QueueFull
from models.golden import golden_input
from models.samples import classifier_descriptor
from models.validate import validate
from tests.models.conftest import Sample
from tests.support.models import colour_classifier


def _inputs(sample: Sample, n: int, h: int = 64, w: int = 64) -> list[np.ndarray]:
    spec = sample.descriptor.input.model_copy(update={"height": h, "width": w})
    return [golden_input(spec, 1000 + i) for i in range(n)]


def test_sixteen_concurrent_callers_get_their_own_results(classifier: Sample, classifier_engine: Engine) -> None:
    xs = _inputs(classifier, 16)
    expected = [classifier_engine.infer({"image": x})["logits"] for x in xs]

    async def main() -> tuple[list[dict[str, Array]], BatcherStats]:
        async with Batcher(classifier_engine, BatcherOptions(max_batch=8, max_delay_ms=5)) as b:
            results = await asyncio.gather(*(b.infer({"image": x}) for x in xs))
            return results, b.stats()

    results, stats = asyncio.run(main())
    for got, want in zip(results, expected, strict=True):
        assert got["logits"].shape == (1, 100)
        assert np.allclose(got["logits"], want, atol=1e-4)
    # distinct inputs give distinct answers, so a mix-up could not pass the check above
    assert len({r["logits"].tobytes() for r in results}) == 16
    assert sum(size * count for size, count in stats.batch_sizes.items()) == 16
    assert stats.requests == 16
    assert stats.queue_depth == 0


def test_incompatible_shapes_are_never_mixed(classifier: Sample, classifier_engine: Engine) -> None:
    small, wide = _inputs(classifier, 6, 64, 64), _inputs(classifier, 6, 48, 96)
    xs = [x for pair in zip(small, wide, strict=True) for x in pair]
    multi = np.concatenate(_inputs(classifier, 3, 64, 64))  # one request with 3 rows

    async def main() -> list[dict[str, np.ndarray]]:
        async with Batcher(classifier_engine, BatcherOptions(max_batch=4, max_delay_ms=5)) as b:
            return await asyncio.gather(*(b.infer({"image": x}) for x in [*xs, multi]))

    results = asyncio.run(main())
    for x, got in zip([*xs, multi], results, strict=True):
        assert np.allclose(got["logits"], classifier_engine.infer({"image": x})["logits"], atol=1e-4)
    assert results[-1]["logits"].shape == (3, 100)


def test_bad_input_fails_only_its_caller(classifier: Sample, classifier_engine: Engine) -> None:
    xs: list[object] = [*_inputs(classifier, 7)]
    xs.insert(3, np.zeros((1, 3, 64), np.float32))
    xs.insert(5, np.zeros((1, 3, 64, 64), np.float64))

    async def main() -> list[object]:
        async with Batcher(classifier_engine) as b:
            return await asyncio.gather(*(b.infer({"image": x}) for x in xs), return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[3], InvalidInput)
    assert "3 dims" in str(results[3])
    assert isinstance(results[5], InvalidInput)
    assert "float64" in str(results[5])
    ok = [r for i, r in enumerate(results) if i not in (3, 5)]
    assert all(isinstance(r, dict) and r["logits"].shape == (1, 100) for r in ok)


def test_queue_full_is_typed(classifier: Sample, classifier_engine: Engine) -> None:
    xs = _inputs(classifier, 5)

    async def main() -> tuple[list[dict[str, Array] | BaseException], int]:
        async with Batcher(classifier_engine, BatcherOptions(max_queue=1)) as b:
            res = await asyncio.gather(*(b.infer({"image": x}) for x in xs), return_exceptions=True)
            return res, b.stats().rejected

    results, rejected = asyncio.run(main())
    full = [r for r in results if isinstance(r, QueueFull)]
    assert full
    assert rejected == len(full)
    assert not full[0].permanent
    assert any(isinstance(r, dict) for r in results)


def test_too_many_rows_and_closed_batcher(classifier: Sample, classifier_engine: Engine) -> None:
    async def main() -> None:
        b = Batcher(classifier_engine, BatcherOptions(max_batch=2))
        with pytest.raises(EngineNotReady):
            await b.infer({"image": _inputs(classifier, 1)[0]})
        await b.start()
        with pytest.raises(InvalidInput, match="at most 2"):
            await b.infer({"image": np.concatenate(_inputs(classifier, 3))})
        await b.close()
        with pytest.raises(EngineNotReady):
            await b.infer({"image": _inputs(classifier, 1)[0]})

    asyncio.run(main())


def test_cancelled_caller_does_not_disturb_others(classifier: Sample, classifier_engine: Engine) -> None:
    xs = _inputs(classifier, 6)

    async def main() -> list[dict[str, Array] | BaseException]:
        async with Batcher(classifier_engine, BatcherOptions(max_batch=2, max_delay_ms=20)) as b:
            tasks = [asyncio.create_task(b.infer({"image": x})) for x in xs]
            await asyncio.sleep(0)
            tasks[1].cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[1], asyncio.CancelledError)
    for i in (0, 2, 3, 4, 5):
        got = results[i]
        assert isinstance(got, dict), got
        assert np.allclose(got["logits"], classifier_engine.infer({"image": xs[i]})["logits"], atol=1e-4)


def test_fixed_batch_model_limits_batches(layout_models: dict[str, Sample]) -> None:
    sample = layout_models["nms"]
    engine = Engine.load(sample.path, sample.descriptor)
    assert engine.max_batch == 1
    xs = [golden_input(sample.descriptor.input, s) for s in range(4)]

    async def main() -> tuple[list[dict[str, np.ndarray]], dict[int, int]]:
        async with Batcher(engine, BatcherOptions(max_batch=8)) as b:
            res = await asyncio.gather(*(b.infer({"images": x}) for x in xs))
            return res, b.stats().batch_sizes

    results, sizes = asyncio.run(main())
    assert set(sizes) == {1}
    for x, r in zip(xs, results, strict=True):
        assert np.array_equal(r["det_scores"], engine.infer({"images": x})["det_scores"])


def test_a_fixed_batch_model_runs_whatever_max_batch_says(tmp_path: Path) -> None:
    """A graph fixed to 4 rows runs 4 rows or nothing: `max_batch: 2` (a latency setting) capped the batcher at 2,
    and every request, one row or four, was refused ("the batcher takes at most 2 per request")."""
    model, desc = colour_classifier("1.0.0", 8)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    onnx_path, yaml_path = write_model(model, desc, tmp_path, "fixed4")
    engine = Engine.load(onnx_path, validate(onnx_path, ModelDescriptor.load(yaml_path)).descriptor)
    xs = [np.random.default_rng(rows).random((rows, 3, 8, 8)).astype(np.float32) for rows in (1, 4)]

    async def main() -> list[dict[str, Array]]:
        async with Batcher(engine, BatcherOptions(max_batch=2)) as b:
            assert b.max_batch == 4
            return [await b.infer({"image": x}) for x in xs]

    for x, out in zip(xs, asyncio.run(main()), strict=True):
        assert np.allclose(out["logits"], x.mean(axis=(2, 3)), atol=1e-6)


def _fixed(model: onnx.ModelProto, rows: int) -> onnx.ModelProto:
    """The same graph exported with a fixed batch of `rows` (Ultralytics `export(batch=4)`)."""
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = rows
    return model


def test_a_fixed_batch_run_holds_the_rows_of_several_requests(tmp_path: Path) -> None:
    """Four one-image requests to a model fixed to 4 rows: each was filled to 4 rows with copies of itself and
    ran alone (4 runs, 3 rows of 4 wasted in each); now one run holds the four images. Each answer is its own
    row of what plain onnxruntime answers for the four images stacked."""
    model, desc = colour_classifier("1.0.0", 8)
    onnx_path, yaml_path = write_model(_fixed(model, 4), desc, tmp_path, "fixed4")
    engine = Engine.load(onnx_path, validate(onnx_path, ModelDescriptor.load(yaml_path)).descriptor)
    xs = [np.random.default_rng(i).random((1, 3, 8, 8)).astype(np.float32) for i in range(4)]

    async def main() -> tuple[list[dict[str, Array]], BatcherStats]:
        async with Batcher(engine, BatcherOptions(max_delay_ms=1000)) as b:  # waits for the run to fill
            results = await asyncio.gather(*(b.infer({"image": x}) for x in xs))
            return results, b.stats()

    results, stats = asyncio.run(main())
    assert (stats.batches, stats.batch_sizes) == (1, {4: 1})
    want = ort.InferenceSession(str(onnx_path)).run(["logits"], {"image": np.concatenate(xs)})[0]
    for i, got in enumerate(results):
        assert got["logits"].shape == (1, 3)
        assert np.allclose(got["logits"], want[i : i + 1], atol=1e-6)


def test_requests_of_several_rows_share_a_fixed_batch_and_only_the_rest_is_padded(tmp_path: Path) -> None:
    """Requests of 1, 2, 1, 3 and 1 rows to a graph fixed to 4 (Identity: each row answers itself, so a row given to
    the wrong caller, or padding answered, shows): two full runs, [1, 2, 1] and [3, 1]; five runs before."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.save(model, tmp_path / "identity4.onnx")
    engine = Engine.load(
        tmp_path / "identity4.onnx", classifier_descriptor(), EngineOptions(golden="skip", warmup_runs=0)
    )
    starts = np.cumsum((0, 1, 2, 1, 3, 1))  # the requests' rows
    xs = [np.arange(2 * a, 2 * b, dtype=np.float32).reshape(b - a, 2) for a, b in zip(starts, starts[1:])]

    async def main() -> tuple[dict[str, Array], list[dict[str, Array]], dict[int, int]]:
        async with Batcher(engine, BatcherOptions(max_delay_ms=1000)) as b:
            alone = await b.infer({"x": xs[3]})  # 3 rows padded with a copy of the last; 3 answered
            results = await asyncio.gather(*(b.infer({"x": given}) for given in xs))
            return alone, results, b.stats().batch_sizes

    alone, results, sizes = asyncio.run(main())
    assert alone["y"].tolist() == xs[3].tolist()
    for given, got in zip(xs, results, strict=True):
        assert got["y"].tolist() == given.tolist()
    assert sizes == {3: 1, 4: 2}  # rows of requests per run (padding not counted)


def _gather_model(tmp_path: Path, batch: int | str = "batch") -> Engine:
    """A real model that fails inside onnxruntime for some values (Gather with indices from the input)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1])
    table = numpy_helper.from_array(np.arange(10, dtype=np.float32), "table")
    nodes = [
        helper.make_node("Cast", ["x"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "idx"], ["y"], axis=0),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], initializer=[table]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    path = tmp_path / "gather.onnx"
    onnx.save(model, path)
    return Engine.load(path, classifier_descriptor(), EngineOptions(golden="skip", warmup_runs=0))


@pytest.mark.parametrize("batch", ["batch", 4])
def test_runtime_failure_in_a_batch_fails_only_the_culprit(tmp_path: Path, batch: int | str) -> None:
    """A symbolic batch, and a graph fixed to 4 rows (each run padded, a request rerun alone padded too)."""
    engine = _gather_model(tmp_path, batch)
    values = [1.0, 2.0, 42.0, 3.0, 4.0, 5.0]

    async def main() -> tuple[list[dict[str, Array] | BaseException], int]:
        async with Batcher(engine, BatcherOptions(max_batch=8, max_delay_ms=20)) as b:
            res = await asyncio.gather(
                *(b.infer({"x": np.array([[v]], np.float32)}) for v in values), return_exceptions=True
            )
            return res, b.stats().failed

    results, failed = asyncio.run(main())
    # onnxruntime calls an index out of range an invalid argument: the input's fault (HTTP 400), in one line
    assert isinstance(results[2], InvalidInput) and "idx=42" in str(results[2]) and "\n" not in str(results[2])
    assert failed == 1
    for i, v in enumerate(values):
        if i != 2:
            got = results[i]
            assert isinstance(got, dict), got
            assert got["y"].tolist() == [[v]]


@pytest.mark.parametrize(("more", "sizes"), [(False, {1: 2}), (True, {2: 1})])
def test_more_coming_cuts_the_wait_when_nothing_else_is_on_its_way(
    classifier: Sample, classifier_engine: Engine, more: bool, sizes: dict[int, int]
) -> None:
    a, b = _inputs(classifier, 2)

    async def main() -> dict[int, int]:
        options = BatcherOptions(max_batch=8, max_delay_ms=500)
        async with Batcher(classifier_engine, options, more_coming=lambda: more) as batcher:
            first = asyncio.ensure_future(batcher.infer({"image": a}))
            await asyncio.sleep(0.05)  # the collector has taken `a` by now
            await asyncio.gather(first, batcher.infer({"image": b}))
            return batcher.stats().batch_sizes

    assert asyncio.run(main()) == sizes


def test_results_survive_the_next_batch_in_the_reused_buffer(tmp_path: Path) -> None:
    """The worker stacks each batch into a buffer it reuses; an Identity model (output = its input) shows
    whether a result could share that buffer: the first batch's results must not change with the second."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.save(model, tmp_path / "identity.onnx")
    engine = Engine.load(
        tmp_path / "identity.onnx", classifier_descriptor(), EngineOptions(golden="skip", warmup_runs=0)
    )

    def rows(base: float) -> list[np.ndarray]:
        return [np.full((1, 4), base + i, np.float32) for i in range(6)]

    async def main() -> tuple[list[dict[str, np.ndarray]], dict[int, int]]:
        async with Batcher(engine, BatcherOptions(max_batch=8, max_delay_ms=50)) as b:
            first = await asyncio.gather(*(b.infer({"x": r}) for r in rows(0.0)))
            await asyncio.gather(*(b.infer({"x": r}) for r in rows(100.0)))  # same shape: the same buffer
            return first, b.stats().batch_sizes

    first, sizes = asyncio.run(main())
    assert max(sizes) > 1  # the rows were batched, so they went through the reused buffer
    assert [r["y"].tolist() for r in first] == [[[float(i)] * 4] for i in range(6)]
