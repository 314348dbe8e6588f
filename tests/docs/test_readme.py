"""Every command the README shows is exercised here (as sqlite-utils tests its docs).

- each `edgefleet ...` line is parsed by the real CLI (command names, options, option values), in a folder
  where the files it names exist; the demo test runs the same journey for real;
- each `curl` path exists in the on-device API's OpenAPI;
- the tritonclient snippet runs unchanged (but for the port) against a running inference API;
- the kustomize overlays the README applies exist and name their resources.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from PIL import Image

from agent.api import ApiServer, ApiSettings, ModelRepository
from edgefleet_cli import app
from fleet.messages import AppliedModel
from models.cli import build_samples
from models.descriptor import ModelDescriptor
from models.engine import Engine, EngineOptions

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _lines(prefix: str) -> list[list[str]]:
    out = []
    for block in _blocks("sh"):
        for line in block.splitlines():
            code = line.split(" #", 1)[0].strip()
            if code.startswith(prefix + " "):
                out.append(shlex.split(code)[1:])
    return out


def _resolve(args: list[str]) -> tuple[Any, list[str], str]:
    command: Any = typer.main.get_command(app)
    path = ["edgefleet"]
    while hasattr(command, "list_commands") and args and args[0] in command.list_commands(None):
        path.append(args[0])
        command = command.get_command(None, args[0])  # the root group imports a sub-command when asked
        args = args[1:]
    return command, args, " ".join(path)


@pytest.fixture(scope="module")
def journey_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("readme")
    build_samples(d)
    Image.new("RGB", (64, 48)).save(d / "cat.jpg")
    old = Path.cwd()
    os.chdir(d)
    yield d
    os.chdir(old)


def test_the_readme_shows_the_journeys() -> None:
    commands = {" ".join(_resolve(a)[2].split()[1:]) for a in _lines("edgefleet")}
    for expected in ("hub init", "hub serve", "device add", "agent run", "model push", "deploy", "rollout start"):
        assert expected in commands


@pytest.mark.parametrize("args", _lines("edgefleet"), ids=lambda a: " ".join(a)[:60])
def test_every_edgefleet_command_parses(args: list[str], journey_dir: Path) -> None:
    command, rest, name = _resolve(args)
    assert not getattr(command, "commands", None), f"`{name}` needs a sub-command"
    ctx = command.make_context(name, list(rest))  # raises a usage error on an unknown option or a bad value
    ctx.close()


def test_curl_paths_exist_in_the_api() -> None:
    from agent.api.app import create_app  # noqa: PLC0415

    routes = {getattr(r, "path", "") for r in create_app(ApiSettings(), ModelRepository()).routes}
    lines = _lines("curl")
    assert lines
    for args in lines:
        url = next(a for a in args if a.startswith(("localhost", '"localhost', "http")))
        path = "/" + url.split("/", 1)[1].split("?")[0]
        pattern = path.replace("mobilenet-like", "{name}")
        assert pattern in routes, f"{path} is not an API route"


def test_the_tritonclient_snippet_runs(journey_dir: Path) -> None:
    desc = ModelDescriptor.load(journey_dir / "mobilenet-like.yaml")
    engine = Engine.load(journey_dir / "mobilenet-like.onnx", desc, EngineOptions(warmup_runs=1))
    slot = ModelRepository()
    slot.activate(engine, AppliedModel(name=desc.name, version=desc.version, sha256=desc.sha256 or "0" * 64), desc)
    with ApiServer(ApiSettings(port=0), slot) as server:
        port = server.url.rsplit(":", 1)[1]
        (snippet,) = _blocks("python")
        code = snippet.replace("localhost:8000", f"127.0.0.1:{port}")
        scope: dict[str, Any] = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102  (our own README)
        assert 0 <= int(scope["result"].as_numpy("logits").argmax()) < 100


def test_kubectl_overlays_exist() -> None:
    for args in (a for a in _lines("kubectl") if "-k" in a):
        overlay = ROOT / args[args.index("-k") + 1]
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        assert kustomization.get("resources") or kustomization.get("bases")
