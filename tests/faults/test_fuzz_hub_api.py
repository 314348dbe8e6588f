"""schemathesis over the hub's OpenAPI, as an admin, over real HTTP: no generated request gets a 5xx,
every status it gets is one the schema documents for that operation, every body conforms to the typed schema
of its status (hub.views: no free-form success schema that anything would conform to), and every error is
the JSON error shape.

(The agent's inference API gets the same treatment in tests/agent/api/test_schema.py.)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance
from schemathesis.core.result import Err

from tests.support.fuzz import examples
from tests.support.hub import RunningHub
from tests.support.outcomes import record

EXAMPLES = examples(12)  # per operation


@pytest.mark.fuzz
def test_no_generated_request_to_the_hub_api_gets_a_5xx(running_hub: RunningHub) -> None:
    h = running_hub
    schema = schemathesis.openapi.from_url(h.url + "/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operations.append(result.ok())
    assert len(operations) >= 15
    statuses: Counter[int] = Counter()
    headers = {"Authorization": f"Bearer {h.admin_token}"}
    with h.client() as c:  # one known device and model name, so generated ids sometimes hit real records
        c.post("/api/v1/devices", json={"id": "cam-1"})
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            if "device_id" in (case.path_parameters or {}) and statuses.total() % 3 == 0:
                case.path_parameters["device_id"] = "cam-1"
            response = case.call(headers=headers)
            statuses[response.status_code] += 1
            # every status is one the schema documents for the operation (400 not 422, 401/403/404/409/413/429),
            # and every body, success or error, conforms to the typed schema documented for that status
            checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
            case.validate_response(response, checks=checks)
            if response.status_code >= 400:
                body = response.json()
                assert set(body["error"]) == {"code", "message"}, body

        run()
    assert not [s for s in statuses if s >= 500], statuses
    assert any(200 <= s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses), statuses
    assert h.hub.started and h.hub.mqtt_connected  # the hub still runs
    with h.client() as c:
        assert c.get("/healthz").json()["status"] == "ok"
        assert c.get("/docs").status_code == 200
    paths = schema.raw_schema["paths"]
    assert not [(p, m) for p, ops in paths.items() for m, op in ops.items() if "422" in op.get("responses", {})]
    refused = sum(n for s, n in statuses.items() if s >= 400)
    record("fuzz", "hub OpenAPI requests (schemathesis): 4xx", "refused", refused)
    record("fuzz", "hub OpenAPI requests (schemathesis): 2xx", "answered", statuses.total() - refused)
