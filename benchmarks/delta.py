"""Model deltas: the bytes a device fetches for a new version when it holds the previous one.

For each version pair (held -> new) of real re-exports, the hub plans the new blob (content-defined chunks by
default, fixed-size for comparison) and the agent's own download code (`agent.download.Download` over an
`agent.store.ModelStore` that holds the previous blob and its manifest) takes every chunk it already holds
from disk; what it still wants is what crosses the network. Printed against the full size, and for the
head-only retrain against the minimum any scheme must send: the initializers whose bytes changed, plus the
graph (every byte that is not an initializer's data).

Versions come from the project's own ONNX builders (`models.samples`): a ResNet-18-like classifier (44 MiB,
head 4.4 % of the weights) with its head fine-tuned, re-exported at another opset, re-exported with a fixed
input size, and the small MobileNet-like classifier trained from another seed (nothing in common).

    .venv/bin/python benchmarks/delta.py [--chunk-kib 256]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from agent.download import Download  # noqa: E402
from agent.settings import DownloadSettings  # noqa: E402
from agent.store import ModelStore  # noqa: E402
from fleet.chunks import HEADER_SIZE  # noqa: E402
from fleet.messages import BlobManifest, Want  # noqa: E402
from fleet.plan import Chunking, plan_file  # noqa: E402
from models.samples import build_classifier, build_resnet, retrain_head  # noqa: E402


def fetched(held: Path, new: Path, chunk_size: int, chunking: Chunking, work: Path) -> tuple[int, int, int]:
    """(bytes on the wire, chunks wanted, chunks in the new blob) for `new` on a device holding `held`."""
    store = ModelStore(work / f"store-{chunking}-{os.urandom(4).hex()}", create=True)
    old = plan_file(held, chunk_size, chunking=chunking)
    store.blob_path(old.sha256).write_bytes(held.read_bytes())
    store.record_manifest(old)
    manifest = plan_file(new, chunk_size, chunking=chunking)
    wants: list[Want] = []

    def send(want: Want) -> bool:
        wants.append(want)
        return True

    download = Download(store, manifest, "bench-device", DownloadSettings(), send)
    download.want()
    wanted = {i for w in wants for i in w.indexes(manifest.count)}
    download.cancel()
    return sum(manifest.chunk_length(i) + HEADER_SIZE for i in wanted), len(wanted), manifest.count


def minimum_for(held: onnx.ModelProto, new: onnx.ModelProto, size: int) -> int:
    """Bytes of the initializers whose data is not in the held model, plus the graph (all non-initializer bytes).

    Compared by content, not name: a re-export that renames a tensor but keeps its values changes nothing.
    """
    before = {hashlib.sha256(numpy_helper.to_array(t).tobytes()).digest() for t in held.graph.initializer}
    changed = init_bytes = 0
    for t in new.graph.initializer:
        data = numpy_helper.to_array(t).tobytes()
        init_bytes += len(data)
        if hashlib.sha256(data).digest() not in before:
            changed += len(data)
    return changed + (size - init_bytes)


def speed(path: Path, chunk_size: int) -> list[str]:
    data = path.read_bytes()
    mib = len(data) / 2**20
    out = []
    t = time.perf_counter()
    hashlib.sha256(data).digest()
    out.append(f"sha256 {mib / (time.perf_counter() - t):.0f} MiB/s")
    for chunking in ("fixed", "content"):
        t = time.perf_counter()
        plan_file(path, chunk_size, chunking=chunking)
        out.append(f"plan {chunking} {mib / (time.perf_counter() - t):.0f} MiB/s (chunking + both hashes)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk-kib", type=int, default=256, help="target chunk size, KiB")
    args = parser.parse_args()
    chunk = args.chunk_kib << 10
    with tempfile.TemporaryDirectory(prefix="edgefleet-delta-") as tmp:
        work = Path(tmp)
        base = build_resnet(seed=0)
        models = {
            "resnet": base,
            "resnet, head fine-tuned": retrain_head(base, seed=7),
            "resnet, re-exported at opset 18": build_resnet(seed=0, opset=18),
            "resnet, re-exported for 224x224 input": build_resnet(seed=0, input_size=224),
            "mobilenet": build_classifier(num_classes=1000, seed=0),
            "mobilenet, retrained from scratch": build_classifier(num_classes=1000, seed=1),
        }
        paths = {}
        for i, (name, model) in enumerate(models.items()):
            paths[name] = work / f"m{i}.onnx"
            paths[name].write_bytes(model.SerializeToString())
        pairs = [
            ("resnet", "resnet, head fine-tuned"),
            ("resnet", "resnet, re-exported at opset 18"),
            ("resnet", "resnet, re-exported for 224x224 input"),
            ("mobilenet", "mobilenet, retrained from scratch"),
        ]
        print(f"# delta: {args.chunk_kib} KiB target chunks; bytes on the wire include the 52-byte frame headers")
        print("| held -> new | new size MiB | content-defined: fetched MiB (chunks) | of full | fixed-size: fetched "
              "MiB (chunks) | of full | changed initializers + graph MiB | content-defined / that |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for held, new in pairs:
            size = paths[new].stat().st_size
            cdc, cdc_n, cdc_total = fetched(paths[held], paths[new], chunk, "content", work)
            fix, fix_n, fix_total = fetched(paths[held], paths[new], chunk, "fixed", work)
            least = minimum_for(models[held], models[new], size)
            print(
                f"| {held} -> {new} | {size / 2**20:.1f} | {cdc / 2**20:.2f} ({cdc_n}/{cdc_total}) | "
                f"{cdc / size:.1%} | {fix / 2**20:.2f} ({fix_n}/{fix_total}) | {fix / size:.1%} | "
                f"{least / 2**20:.3f} | {cdc / least:.2f}x |"
            )
        print("# " + "; ".join(speed(paths["resnet"], chunk)))
        ref = BlobManifest.model_validate(plan_file(paths["resnet"], chunk).model_dump())
        print(f"# resnet: {ref.count} content-defined chunks, mean {ref.size / ref.count / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
