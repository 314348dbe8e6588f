"""Cutting a blob into chunks and signing-ready manifests: content-defined (FastCDC) or fixed-size.

Content-defined chunking puts a boundary where a rolling hash of the last bytes matches a pattern, so an
edit moves only the boundaries next to it: a model re-exported with a retrained head, another opset or
another input size keeps most of its chunks even when every byte after the change shifted. Boundaries come
from FastCDC 2020 (`pyfastcdc`, a Cython port of fastcdc-rs's v2020 module, so they are the same in any
implementation of that algorithm): for a target of T bytes, chunks are at least T/4 and at most 2T bytes,
about T on average. Fixed-size chunking (every chunk T bytes but the last) stays for brokers or tools that
want it and for manifests recorded before.

Only the hub plans (at push); agents follow the sizes in the signed manifest and never need this module.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pyfastcdc import FastCDC

from fleet.messages import BlobManifest

Chunking = Literal["content", "fixed"]
DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_CONTENT_TARGET = 4 << 20  # FastCDC's own bound on the average


def content_bounds(target: int) -> tuple[int, int, int]:
    """FastCDC's (min, avg, max) parameters for chunks of about `target` bytes.

    FastCDC skips `min` bytes before it looks for a boundary, so its mean chunk is about `min + avg`: avg is
    set to target - min to land near the target (measured on random bytes: 273 KiB for a 256 KiB target).

    Raises:
        ValueError: a target outside 1 KiB..4 MiB.
    """
    if not 1024 <= target <= MAX_CONTENT_TARGET:
        raise ValueError(f"content-defined chunks target 1 KiB..4 MiB, not {target} bytes")
    low = target // 4
    return low, target - low, 2 * target


def _cuts(data: bytes | memoryview, target: int) -> Iterator[memoryview]:
    low, avg, high = content_bounds(target)
    view = memoryview(data)
    for c in FastCDC(avg, min_size=low, max_size=high).cut_buf(view):
        yield view[c.offset : c.offset + c.length]


def plan_bytes(
    data: bytes | memoryview, chunk_size: int = DEFAULT_CHUNK_SIZE, *, chunking: Chunking = "content"
) -> BlobManifest:
    """The manifest of an in-memory blob: whole sha256, size, and every chunk's sha256 (and size)."""
    view = memoryview(data)
    whole = hashlib.sha256(view).hexdigest()
    if chunking == "fixed":
        chunks = [hashlib.sha256(view[i : i + chunk_size]).hexdigest() for i in range(0, len(view), chunk_size)]
        return BlobManifest(sha256=whole, size=len(view), chunk_size=chunk_size, chunks=chunks)
    pieces = list(_cuts(view, chunk_size))
    return BlobManifest(
        sha256=whole,
        size=len(view),
        chunk_size=content_bounds(chunk_size)[2],
        chunks=[hashlib.sha256(p).hexdigest() for p in pieces],
        sizes=[len(p) for p in pieces],
    )


def plan_file(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE, *, chunking: Chunking = "content") -> BlobManifest:
    """The manifest of a file (read once; content-defined chunking maps the file instead of copying it)."""
    if chunking == "fixed":
        whole = hashlib.sha256()
        chunks: list[str] = []
        size = 0
        with path.open("rb") as f:
            while block := f.read(chunk_size):
                whole.update(block)
                chunks.append(hashlib.sha256(block).hexdigest())
                size += len(block)
        return BlobManifest(sha256=whole.hexdigest(), size=size, chunk_size=chunk_size, chunks=chunks)
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return plan_bytes(b"", chunk_size)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return plan_bytes(view, chunk_size)
            finally:
                view.release()
