"""The one settings system: pydantic-settings over `EDGEFLEET_<AREA>_*` variables, one policy for unknown names.

Every settings root (the hub's, the agent's, its inference API's, cluster mode's) subclasses `EnvSettings`
and names its area's prefix; its groups subclass `SettingsGroup`. A field `f` of the root is the variable
`<PREFIX>F`; a field `f` of the group `g` is `<PREFIX>G_F` (only the first `_` after the group name splits,
so `EDGEFLEET_HUB_TRANSFER_RATE_LIMIT_BYTES_PER_S` is `transfer.rate_limit_bytes_per_s`).

The policy, the same for every area:
- `from_env()` reads the environment; constructing a root directly (tests, embedding) never does.
- A variable under an area's prefix that names no setting is refused with the nearest valid name
  ("EDGEFLEET_HUB_API_POTR is not a setting; did you mean EDGEFLEET_HUB_API_PORT?"), so a typo never
  silently keeps a default.
- A bad value is refused naming its variable. An empty value sets a field that may be unset to unset
  (None); for any other field it is the value itself.
- Structured values (lists, mappings) are JSON, as pydantic-settings reads them.
- Keyword overrides (CLI options) win over the environment; None means "not given", groups merge.
"""

from __future__ import annotations

import difflib
import json
import os
import types
from collections.abc import Iterator, Mapping
from typing import Any, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from infra.errors import SettingsError

AREA_PREFIXES = ("EDGEFLEET_HUB_", "EDGEFLEET_AGENT_", "EDGEFLEET_API_", "EDGEFLEET_K3S_")
"""The settings areas. Other `EDGEFLEET_*` variables (`EDGEFLEET_URL`, `EDGEFLEET_TOKEN`) are CLI options."""

_UNSET = "\x00unset"  # what an empty value of a field that may be unset becomes (no real value holds a NUL)


class SettingsGroup(BaseModel):
    """A group of related settings inside a root (`broker`, `api`, `download`, ...): frozen, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class EnvSettings(BaseSettings):
    """Base of every settings root. Subclasses set `model_config = env_config("EDGEFLEET_<AREA>_")`."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Direct construction takes only its arguments; `from_env` is the one way the environment comes in."""
        return (init_settings,)

    @classmethod
    def env_prefix(cls) -> str:
        """This area's variable prefix, e.g. `EDGEFLEET_HUB_`."""
        return str(cls.model_config.get("env_prefix", "")).upper()

    @classmethod
    def variables(cls) -> dict[str, tuple[tuple[str, ...], FieldInfo]]:
        """Every variable name of this area -> (field path, field), in declaration order."""
        return dict(_leaves(cls, cls.env_prefix(), ()))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> Self:
        """Settings from this area's variables in `environ` (default: the process environment), then `overrides`.

        Raises:
            SettingsError: an unknown variable of this area (naming the nearest valid one), or a value that does
                not validate (naming its variable).
        """
        env = os.environ if environ is None else environ
        known = cls.variables()
        prefix = cls.env_prefix()
        mine: dict[str, str] = {}
        for key, value in env.items():
            name = key.upper()
            if not name.startswith(prefix):
                continue
            if name not in known:
                raise SettingsError(f"{key} is not a setting; did you mean {nearest(name, known)}?")
            mine[name] = _UNSET if value == "" and _may_be_unset(known[name][1]) else value
        try:
            values = _MappingEnvSource(cls, mine)()
        except ValueError as e:  # a structured value (list, mapping) that is not JSON
            bad = next((n for n, v in mine.items() if _structured(known[n][1]) and not _is_json(v)), f"{prefix}*")
            raise SettingsError(f'{bad}: not JSON (a list is written ["a", "b"]): {e}') from e
        for key, value in overrides.items():
            if isinstance(value, Mapping):
                given = {k: v for k, v in value.items() if v is not None}
                values[key] = {**values.get(key, {}), **given}
            elif value is not None:
                values[key] = value
        try:
            return cls(**values)
        except ValidationError as e:
            raise SettingsError("; ".join(_describe(prefix, err) for err in e.errors())) from e


def env_config(prefix: str) -> SettingsConfigDict:
    """The `model_config` of a settings root whose variables start with `prefix` (one of `AREA_PREFIXES`)."""
    if prefix not in AREA_PREFIXES:
        raise ValueError(f"{prefix!r} is not a settings area; add it to infra.settings.AREA_PREFIXES")
    return SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=prefix,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_parse_none_str=_UNSET,
        case_sensitive=False,
    )


def nearest(name: str, known: Mapping[str, object] | list[str]) -> str:
    """The known variable name closest to `name` (there is always one)."""
    candidates = list(known)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.0)
    return close[0] if close else candidates[0]


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        from pydantic_settings.sources.utils import parse_env_vars  # noqa: PLC0415  (no public re-export)

        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _leaves(
    model: type[BaseModel], prefix: str, path: tuple[str, ...]
) -> Iterator[tuple[str, tuple[tuple[str, ...], FieldInfo]]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, SettingsGroup):
            yield from _leaves(annotation, f"{prefix}{name.upper()}_", (*path, name))
        else:
            yield f"{prefix}{name.upper()}", ((*path, name), field)


def _may_be_unset(field: FieldInfo) -> bool:
    annotation = field.annotation
    origin = get_origin(annotation)
    return (origin is Union or origin is types.UnionType) and type(None) in get_args(annotation)


def _structured(field: FieldInfo) -> bool:
    annotation = field.annotation
    return get_origin(annotation) in (list, tuple, dict, set, frozenset) or annotation in (list, tuple, dict, set)


def _is_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _describe(prefix: str, err: Any) -> str:
    loc = [str(part) for part in err["loc"] if not isinstance(part, int)]
    return f"{prefix}{'_'.join(loc).upper()}: {err['msg']}"


__all__ = [
    "AREA_PREFIXES",
    "EnvSettings",
    "SettingsError",
    "SettingsGroup",
    "env_config",
    "nearest",
]
