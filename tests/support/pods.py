"""A serving pod for the Kubernetes API test server's pods: the real inference API on the pod's loopback IP.

The test server's Deployment controller gives pods the IPs 127.0.0.2, 127.0.0.3, ... (tests/k8s/server.py); a
`ServingPod` is what `edgefleet agent serve` runs in such a pod (`agent.api.ApiServer` around a
`ModelRepository`), in this process, bound to that IP on the serving port. A new `ServingPod` on the same address
is a restarted container: a new process, counters from zero.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson

from agent.api import ApiServer, ApiSettings, ModelRepository
from agent.ports import ServingWindow
from fleet.messages import AppliedModel
from models.descriptor import ModelDescriptor
from models.engine import Engine, EngineOptions


class ServingPod:
    """The inference API on `ip`:`port`, serving the classifier at `path` as model `name` (its own version)."""

    def __init__(self, ip: str, port: int, path: Path, descriptor: ModelDescriptor, name: str, **settings: int) -> None:
        self.ip, self.port, self.name = ip, port, name
        self.repo = ModelRepository()
        self.server = ApiServer(ApiSettings(host=ip, port=port, **settings), self.repo)  # type: ignore[arg-type]
        self.server.start()
        self.swap(path, descriptor)

    def swap(self, path: Path, descriptor: ModelDescriptor) -> None:
        """Serve the classifier at `path` as the model's active version (what a pod's follower does)."""
        assert descriptor.sha256 is not None
        engine = Engine.load(path, descriptor, EngineOptions(intra_op_threads=1))
        applied = AppliedModel(name=self.name, version=descriptor.version, sha256=descriptor.sha256)
        self.repo.activate(engine, applied, descriptor)

    def window(self) -> ServingWindow:
        """What this pod counted since the last call, as single-device mode counts it (`take_windows`)."""
        return self.repo.take_windows()[self.name]

    def send(self, n: int, *, data: int = 3 * 64 * 64, version: str | None = None, parallel: int = 1) -> list[int]:
        """`n` infer requests for a 1x3x64x64 input with `data` values (fewer: a 400); their status codes."""
        body = orjson.dumps(
            {"inputs": [{"name": "image", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": [0.5] * data}]}
        )
        path = f"/v2/models/{self.name}" + (f"/versions/{version}" if version else "") + "/infer"
        with httpx.Client(base_url=f"http://{self.ip}:{self.port}", timeout=30) as c:
            if parallel == 1:
                return [c.post(path, content=body).status_code for _ in range(n)]
            with ThreadPoolExecutor(parallel) as pool:
                return list(pool.map(lambda _: c.post(path, content=body).status_code, range(n)))

    def stop(self) -> None:
        self.server.stop()
