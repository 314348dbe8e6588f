"""schemathesis over the running agent's OpenAPI: no generated request may produce a 5xx."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from agent.api import ApiServer, ApiSettings, ModelRepository
from models.engine import Engine
from tests.agent.api.conftest import Sample
from tests.support.fuzz import examples

EXAMPLES = examples(10)  # per operation, generation mode and path choice; 12 operations
NAME = "mobilenet-like"


@pytest.fixture(scope="module")
def api_schema(samples: dict[str, Sample], clf_engine: Engine) -> Iterator[Any]:
    slot = ModelRepository()
    server = ApiServer(ApiSettings(port=0, max_body_bytes=1024 * 1024, request_timeout_s=5), slot)
    server.start()
    slot.activate(clf_engine, samples["clf"].applied(), samples["clf"].descriptor)
    yield schemathesis.openapi.from_url(server.url + "/openapi.json"), server.url
    server.stop()


@pytest.mark.fuzz
def test_no_generated_request_gets_a_5xx(api_schema: Any) -> None:
    # Driven by hand: schemathesis' pytest `from_fixture` loader does not run under pytest 9.
    schema, url = api_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        params = {p.name for p in operation.path_parameters}
        served = {k: v for k, v in (("name", NAME), ("version", "1.0.0")) if k in params}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # random names (mostly 404), then the served model so bodies reach the parsers
            for fixed in ({}, served) if served else ({},):
                strategy = operation.as_strategy(mode, path_parameters=fixed or None)

                @given(case=strategy)
                @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
                def run(case: Any) -> None:
                    case.call_and_validate(checks=[not_a_server_error])

                try:
                    run()
                except Unsatisfiable:  # nothing to make invalid (e.g. GET /v2/health/live in negative mode)
                    assert mode is GenerationMode.NEGATIVE
    metrics = httpx.get(url + "/metrics").text
    codes = re.findall(r'edgefleet_api_requests_total\{code="(\d+)",endpoint="(\w+)"[^}]*\} (\d+)', metrics)
    seen = {(code, endpoint) for code, endpoint, _ in codes}
    assert ("400", "infer") in seen and ("200", "predict") in seen, seen  # the fuzzer reached both hot paths
    assert not [c for c in codes if c[0].startswith("5")], codes


def test_docs_list_every_route_served() -> None:
    from agent.api.app import create_app  # noqa: PLC0415

    doc = (Path(__file__).parents[3] / "docs" / "api.md").read_text(encoding="utf-8")
    table = doc.split("## Endpoints", 1)[1].split("###", 1)[0]
    documented = set()
    for path in re.findall(r"`(?:GET|POST) (/[^`?\[]*(?:\[/versions/\{version\}\])?[^`?\[]*)", table):
        documented |= {
            path.replace("[/versions/{version}]", ""),
            path.replace("[/versions/{version}]", "/versions/{version}"),
        }
    served = {getattr(r, "path", "") for r in create_app(ApiSettings(), ModelRepository()).routes}
    assert {p for p in served if p.startswith(("/v1", "/v2"))} <= documented
