"""Property-based requests against every API operation (schemathesis over the live OpenAPI schema).

Whatever the generated path, query or body: never a 5xx, and every error is the JSON error shape.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.support.fuzz import examples
from tests.support.hub import RunningHub


@pytest.mark.fuzz
def test_no_operation_answers_5xx_to_generated_input(running_hub: RunningHub) -> None:
    h = running_hub
    schema = schemathesis.openapi.from_url(f"{h.url}/openapi.json")
    auth = {"Authorization": f"Bearer {h.admin_token}"}
    seen = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.method.upper() == "DELETE" and op.path.startswith("/api/v1/tokens"):
            continue  # revoking the fuzzer's own token would turn every later case into a 401

        @settings(
            max_examples=examples(15), deadline=None, phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=op.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=h.url, headers=auth)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
            if response.status_code >= 400:
                body = response.json()
                assert set(body["error"]) == {"code", "message"}, body

        check()
        seen += 1
    assert seen >= 15
    with h.client() as c:
        assert c.get("/healthz").json()["status"] == "ok"
        assert c.get("/docs").status_code == 200
