"""docs/configuration.md is generated from the settings classes: fail when it is stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from agent.api.settings import ApiSettings
from agent.settings import AgentSettings
from hub.settings import HubSettings

ROOT = Path(__file__).resolve().parents[2]


def _render() -> str:
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts" / "gen_config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.render())


def test_configuration_reference_is_current() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == _render(), "run `make docs`"


def test_documented_names_are_the_ones_the_code_reads() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert "`EDGEFLEET_HUB_API_PORT`" in doc and "`EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S`" in doc
    assert HubSettings.from_env({"EDGEFLEET_HUB_API_PORT": "9191"}).api.port == 9191
    assert AgentSettings.from_env({"EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "7"}).telemetry.interval_s == 7
    assert ApiSettings.from_env({"EDGEFLEET_API_PORT": "9192"}).port == 9192
