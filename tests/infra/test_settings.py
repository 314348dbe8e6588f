"""The one settings policy (infra.settings), checked on every area's root: names, unknowns, values, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.api.settings import ApiSettings
from agent.k3s.settings import ClusterSettings
from agent.settings import AgentSettings
from hub.settings import HubSettings
from infra.errors import SettingsError
from infra.settings import AREA_PREFIXES, EnvSettings, env_config

ROOTS: list[type[EnvSettings]] = [HubSettings, AgentSettings, ApiSettings, ClusterSettings]


def test_every_area_has_one_root_and_every_setting_a_description() -> None:
    assert sorted(r.env_prefix() for r in ROOTS) == sorted(AREA_PREFIXES)
    for root in ROOTS:
        for name, (_path, field) in root.variables().items():
            assert name.startswith(root.env_prefix())
            assert field.description, f"{name} has no description"
            unit = {"_S": "second", "_MS": "ms", "_BYTES": "byte"}.get("_" + name.rsplit("_", 1)[-1], "")
            assert unit.lower() in field.description.lower(), f"{name}: say the unit ({unit}) in the description"


@pytest.mark.parametrize(
    ("root", "typo", "meant"),
    [
        (HubSettings, "EDGEFLEET_HUB_API_POTR", "EDGEFLEET_HUB_API_PORT"),
        (HubSettings, "EDGEFLEET_HUB_BROKER_UR", "EDGEFLEET_HUB_BROKER_URL"),
        (AgentSettings, "EDGEFLEET_AGENT_TELEMETRY_INTERVALL_S", "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S"),
        (AgentSettings, "EDGEFLEET_AGENT_DATADIR", "EDGEFLEET_AGENT_DATA_DIR"),
        (ApiSettings, "EDGEFLEET_API_PROT", "EDGEFLEET_API_PORT"),
        (ClusterSettings, "EDGEFLEET_K3S_NAMESPCE", "EDGEFLEET_K3S_NAMESPACE"),
    ],
)
def test_an_unknown_variable_is_refused_with_the_nearest_name(root: type[EnvSettings], typo: str, meant: str) -> None:
    with pytest.raises(SettingsError, match=f"^{typo} is not a setting; did you mean {meant}\\?$"):
        root.from_env({typo: "1"})


def test_other_areas_and_unrelated_variables_are_left_to_their_owners() -> None:
    env = {"EDGEFLEET_AGENT_DATA_DIR": "/a", "EDGEFLEET_URL": "http://h", "EDGEFLEET_API_PORT": "1", "PATH": "/bin"}
    assert HubSettings.from_env(env).api.port == 8080
    assert AgentSettings.from_env(env).data_dir == Path("/a")


def test_values_are_parsed_and_bad_ones_named() -> None:
    env = {
        "EDGEFLEET_HUB_TRANSFER_RATE_LIMIT_BYTES_PER_S": "1000",  # only the first `_` after the group splits
        "EDGEFLEET_HUB_SECURITY_CORS_ORIGINS": '["https://a.example"]',  # structured values are JSON
        "EDGEFLEET_HUB_DASHBOARD_ENABLED": "false",
    }
    s = HubSettings.from_env(env)
    assert s.transfer.rate_limit_bytes_per_s == 1000
    assert s.security.cors_origins == ("https://a.example",)
    assert s.dashboard.enabled is False
    with pytest.raises(SettingsError, match="^EDGEFLEET_HUB_SECURITY_CORS_ORIGINS: not JSON"):
        HubSettings.from_env({"EDGEFLEET_HUB_SECURITY_CORS_ORIGINS": "https://a.example"})
    with pytest.raises(SettingsError, match="^EDGEFLEET_AGENT_LINK_KEEPALIVE_S: Input should be greater"):
        AgentSettings.from_env({"EDGEFLEET_AGENT_LINK_KEEPALIVE_S": "1"})
    with pytest.raises(SettingsError, match="^EDGEFLEET_HUB_BROKER_URL: .*must look like mqtt://host:port"):
        HubSettings.from_env({"EDGEFLEET_HUB_BROKER_URL": "http://broker:1883"})  # fleet.address parses it
    with pytest.raises(SettingsError, match="EDGEFLEET_API_PORT: Input should be a valid integer"):
        ApiSettings.from_env({"EDGEFLEET_API_PORT": "eighty"})


def test_an_empty_value_unsets_only_what_may_be_unset() -> None:
    s = ClusterSettings.from_env({"EDGEFLEET_K3S_GPU_RUNTIME_CLASS": "", "EDGEFLEET_K3S_MODELS_SUB_PATH": ""})
    assert s.gpu_runtime_class is None  # default "nvidia": empty means "the node's default runtime"
    assert s.models_sub_path == ""  # not nullable: the empty string is the value (the volume's root)
    assert HubSettings.from_env({"EDGEFLEET_HUB_BROKER_URL": ""}).broker.url is None


def test_overrides_win_none_means_not_given_and_groups_merge() -> None:
    env = {"EDGEFLEET_HUB_API_PORT": "9000", "EDGEFLEET_HUB_API_HOST": "10.0.0.1"}
    s = HubSettings.from_env(env, api={"host": "0.0.0.0", "public_url": None}, data_dir=None)
    assert (s.api.host, s.api.port, s.api.public_url, s.data_dir) == ("0.0.0.0", 9000, None, Path("hub-data"))
    with pytest.raises(SettingsError, match="EDGEFLEET_API_MAX_BODY_BYTES"):
        ApiSettings.from_env({}, max_body_bytes=1)


def test_constructing_directly_never_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_HUB_API_PORT", "9999")
    monkeypatch.setenv("EDGEFLEET_HUB_API_POTR", "1")
    assert HubSettings().api.port == 8080
    with pytest.raises(SettingsError, match="did you mean EDGEFLEET_HUB_API_PORT"):
        HubSettings.from_env()


def test_a_new_area_must_be_declared() -> None:
    with pytest.raises(ValueError, match="not a settings area"):
        env_config("EDGEFLEET_NEW_")
