"""The golden check: a deterministic input, and a tolerance-aware record of the model's answer to it.

A plain sha256 of float outputs cannot carry a tolerance (one ulp changes it), so a record has two parts:

1. `digest`: sha256 over each output's name, shape, dtype and its values quantised to multiples of `atol`
   (`round(x / atol)` as int64). Identical builds on identical hardware match it exactly: the fast path.
2. `reference`: per output its exact shape and dtype, mean, RMS, min, max, and up to 64 values at evenly
   spaced flat indices. When the digest differs (a value near a quantisation boundary, another CPU's
   SIMD path), the check passes only if the shape matches, every sampled value is within
   `atol + rtol * |ref|`, and mean/RMS/min/max are each within `atol + rtol * |ref|`.

Perturbed weights move the summary statistics and the samples far beyond 1e-3, so they fail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.descriptor import GoldenCheck, InputSpec, OutputReference
from models.errors import GoldenMismatch, TooLargeToCheck
from models.preprocess import to_tensor

SAMPLE_SIZE = 64
MAX_GOLDEN_INPUT_BYTES = 64 << 20
"""Pixels plus tensor of the golden input. The graph's activations are typically ten times the input and
the hub and every device run the check: a graph fixed to batch 256 of 224x224 (192 MB here) took the hub
from 200 MB to 2 GB; a batch of 2**31 failed with MemoryError."""


def golden_pixels(seed: int, height: int, width: int, batch: int = 1) -> npt.NDArray[np.uint8]:
    """Deterministic RGB pixels [batch, height, width, 3] from numpy's PCG64 generator."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.integers(0, 256, size=(batch, height, width, 3), dtype=np.uint8)


def golden_input(spec: InputSpec, seed: int, batch: int = 1) -> npt.NDArray[np.generic]:
    """The golden input tensor: golden pixels through the model's own normalisation and layout.

    Raises:
        TooLargeToCheck: the bytes it takes, computed from the shape before anything is allocated, exceed
            `MAX_GOLDEN_INPUT_BYTES`.
    """
    need = batch * spec.height * spec.width * 3 * (1 + np.dtype(spec.dtype).itemsize)
    if need > MAX_GOLDEN_INPUT_BYTES:
        raise TooLargeToCheck(
            f"the golden check at the graph's fixed batch of {batch} needs {need / 2**20:.0f} MiB of input "
            f"({spec.height}x{spec.width}), above the {MAX_GOLDEN_INPUT_BYTES >> 20} MiB budget (serving needs "
            "at least as much per inference): give the graph a dynamic batch axis or a smaller fixed batch"
        )
    return to_tensor(golden_pixels(seed, spec.height, spec.width, batch), spec)


def digest(outputs: Mapping[str, npt.NDArray[np.generic]], atol: float) -> str:
    """sha256 over outputs quantised at `atol` (integers and booleans hashed exactly)."""
    h = hashlib.sha256()
    for name in sorted(outputs):
        a = np.asarray(outputs[name])
        h.update(f"{name}|{a.shape}|{a.dtype.str}|".encode())
        if np.issubdtype(a.dtype, np.floating):
            q = np.rint(a.astype(np.float64) / atol)
            q = np.nan_to_num(q, nan=0.0, posinf=2.0**62, neginf=-(2.0**62))
            h.update(np.ascontiguousarray(np.clip(q, -(2.0**62), 2.0**62).astype("<i8")).tobytes())
        else:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def summarise(a: npt.NDArray[np.generic]) -> OutputReference:
    """Shape, dtype, mean, RMS, min, max and a strided sample of one output."""
    flat = np.asarray(a).reshape(-1).astype(np.float64)
    if flat.size == 0:
        return OutputReference(shape=a.shape, dtype=a.dtype.name, mean=0, rms=0, min=0, max=0, sample=())
    idx = _sample_indices(flat.size)
    return OutputReference(
        shape=tuple(int(d) for d in a.shape),
        dtype=a.dtype.name,
        mean=float(flat.mean()),
        rms=float(np.sqrt(np.mean(flat * flat))),
        min=float(flat.min()),
        max=float(flat.max()),
        sample=tuple(float(v) for v in flat[idx]),
    )


def record(
    outputs: Mapping[str, npt.NDArray[np.generic]], seed: int, atol: float = 1e-3, rtol: float = 1e-3
) -> GoldenCheck:
    """The golden record of `outputs` (the model's answer to `golden_input(spec, seed)`)."""
    return GoldenCheck(
        seed=seed,
        atol=atol,
        rtol=rtol,
        digest=digest(outputs, atol),
        reference={name: summarise(a) for name, a in outputs.items()},
    )


@dataclass(frozen=True, slots=True)
class GoldenResult:
    """Outcome of a passed golden check: exact digest match or within-tolerance match."""

    exact: bool
    max_abs_error: float


def compare(outputs: Mapping[str, npt.NDArray[np.generic]], golden: GoldenCheck) -> GoldenResult:
    """Check `outputs` against a recorded golden check.

    Raises:
        GoldenMismatch: an output is missing, has another shape, or differs beyond tolerance.
        ValueError: `golden` has not been recorded.
    """
    if not golden.recorded:
        raise ValueError("golden check has no recorded digest; run models.validate first")
    if set(outputs) != set(golden.reference):
        raise GoldenMismatch(
            f"model outputs {sorted(outputs)} differ from the recorded outputs {sorted(golden.reference)}"
        )
    if digest(outputs, golden.atol) == golden.digest:
        return GoldenResult(exact=True, max_abs_error=0.0)
    worst = 0.0
    for name, ref in golden.reference.items():
        a = np.asarray(outputs[name])
        if tuple(a.shape) != ref.shape:
            raise GoldenMismatch(f"output {name!r} has shape {tuple(a.shape)}; the golden record has {ref.shape}")
        got = summarise(a)
        pairs = [("mean", got.mean, ref.mean), ("rms", got.rms, ref.rms)]
        pairs += [("min", got.min, ref.min), ("max", got.max, ref.max)]
        pairs += [(f"sample[{i}]", g, r) for i, (g, r) in enumerate(zip(got.sample, ref.sample, strict=True))]
        for what, g, r in pairs:
            err = abs(g - r)
            worst = max(worst, err)
            if not err <= golden.atol + golden.rtol * abs(r):
                raise GoldenMismatch(
                    f"output {name!r} {what} is {g:.6g}, recorded {r:.6g} (|diff| {err:.3g} > "
                    f"atol {golden.atol:g} + rtol {golden.rtol:g}): the weights or runtime changed the result"
                )
    return GoldenResult(exact=False, max_abs_error=worst)


def _sample_indices(n: int) -> npt.NDArray[np.int64]:
    if n <= SAMPLE_SIZE:
        return np.arange(n, dtype=np.int64)
    return np.linspace(0, n - 1, SAMPLE_SIZE).round().astype(np.int64)
