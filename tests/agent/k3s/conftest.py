"""Fixtures: a fresh Kubernetes API test server per test (TLS, K3s-style kubeconfig) and fast settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.k3s import ClusterBridge, ClusterSettings
from agent.k3s.calls import API_CALLS
from fleet.messages import BlobManifest, DesiredModel, DesiredState, ModelRef, RuntimeOptions
from tests.k8s.server import ApiServer, Rule

NAMESPACE = "edgefleet"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path / "k8s").start()
    server.add_namespace(NAMESPACE)
    yield server
    server.stop()


def fast_settings(kubeconfig: Path | None = None, **overrides: Any) -> ClusterSettings:
    values: dict[str, Any] = {
        "kubeconfig": kubeconfig,
        "namespace": NAMESPACE,
        "rollout_deadline_s": 5.0,
        "request_timeout_s": 5.0,
        "retry_attempts": 3,
        "retry_backoff_s": 0.01,
        "retry_backoff_max_s": 0.05,
        "watch_timeout_s": 5,
    }
    values.update(overrides)
    return ClusterSettings(**values)


@pytest.fixture
def settings(api: ApiServer) -> ClusterSettings:
    return fast_settings(api.kubeconfig)


@pytest.fixture
def bridge(settings: ClusterSettings) -> Iterator[ClusterBridge]:
    b = ClusterBridge(settings)
    yield b
    b.close()


MODEL = "resnet"


def desired(version: int = 1, model_version: str = "1.0.0", **runtime: Any) -> DesiredState:
    sha = f"{version:064x}"
    blob = BlobManifest(sha256=sha, size=2048, chunk_size=1024, chunks=[sha, sha])
    model = ModelRef(
        name=MODEL, version=model_version, task="classification", blob=blob, descriptor={"labels": ["cat", "dog"]}
    )
    return DesiredState(
        device_id="edge-01",
        version=version,
        issued_at=1.0,
        expires_at=4e9,
        models=[DesiredModel(model=model, runtime=RuntimeOptions(**runtime))],
    )


def with_slot(state: DesiredState, **update: Any) -> DesiredState:
    """`state` with its one slot's fields replaced, unchecked (`runtime`, `model`: a forged state)."""
    slot = state.models[0].model_copy(update=update)
    return state.model_copy(update={"models": [slot]})


def all_rules_but(*missing: tuple[str, str]) -> set[Rule]:
    """The agent's RBAC grants (deploy/) without the (verb, resource) pairs `missing`."""
    return {
        Rule(c.verb, c.resource, c.group, None if c.cluster_scoped else NAMESPACE)
        for c in API_CALLS
        if (c.verb, c.resource) not in missing
    }
