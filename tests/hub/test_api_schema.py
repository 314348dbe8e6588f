"""The hub's OpenAPI is true: every answer has a typed schema, real answers conform to it, and a wrong answer
does not (so the conformance check can fail). Over real HTTP, on a hub with a device that has reported."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.schemas import APIOperation

from fleet.messages import AppliedModel, Capabilities, DeviceStatus, GpuInfo
from fleet.messages import Phase as DevicePhase
from tests.support.broker import Broker
from tests.support.fuzz import examples
from tests.support.hub import RunningHub, start_hub
from tests.support.wire import one_model_report

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def seeded(broker: Broker, samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """A hub with a model, two devices (one with a birth and a report), a deployment and a rollout."""
    h = start_hub(tmp_path_factory.mktemp("schema"), broker.url, f"test/{uuid.uuid4().hex[:12]}/fleet/v1")
    try:
        assert h.push_model(samples / "mobilenet-like.onnx", samples / "mobilenet-like.yaml").status_code == 201
        with h.client() as c:
            for dev in ("cam-1", "cam-2"):
                assert c.post("/api/v1/devices", json={"id": dev, "labels": {"site": "a"}}).status_code == 201
            ref = {"model": "mobilenet-like", "version": "1.0.0", "selector": "site=a"}
            assert c.post("/api/v1/deployments", json=ref).status_code == 201
        sha = h.hub.registry.get("mobilenet-like", "1.0.0").sha256
        now = time.time()
        caps = Capabilities(
            agent_version="1", onnxruntime_version="1", providers=["CPUExecutionProvider"], cpu_count=2,
            memory_bytes=1 << 30, gpus=[GpuInfo(index=0, name="NVIDIA L4", memory_bytes=1 << 34)],
        )  # fmt: skip
        h.hub.store.enqueue_status(DeviceStatus(device_id="cam-1", state="online", ts=now, capabilities=caps), now)
        active = AppliedModel(name="mobilenet-like", version="1.0.0", sha256=sha, provider="CPUExecutionProvider")
        rep = one_model_report("cam-1", seq=1, ts=now, desired_version=1, phase=DevicePhase.ACTIVE, active=active)
        h.hub.store.enqueue_reported(rep, now)
        h.hub.store.flush()
        with h.client() as c:
            r = c.post("/api/v1/rollouts", json=ref)
            assert r.status_code == 201, r.text
        yield h
    finally:
        h.stop()


def _schema(h: RunningHub) -> dict[str, Any]:
    with h.client(None) as c:
        doc: dict[str, Any] = c.get("/openapi.json").json()
    return doc


def test_every_answer_of_every_operation_is_typed(seeded: RunningHub) -> None:
    doc = _schema(seeded)
    operations = [(p, m, op) for p, ops in doc["paths"].items() if p.startswith("/api/") for m, op in ops.items()]
    assert len(operations) >= 25
    for path, method, op in operations:
        responses = op["responses"]
        assert "422" not in responses, (method, path)  # validation failures answer 400 here
        assert "401" in responses and "429" in responses, (method, path)
        ok = [s for s in responses if s.startswith("2")]
        assert ok, (method, path)
        for status in ok:
            if status == "204":
                continue
            schema = responses[status]["content"]["application/json"]["schema"]
            typed = schema.get("$ref") or (schema.get("type") == "array" and "$ref" in schema.get("items", {}))
            assert typed, (method, path, status, schema)  # not `{}`: anything would conform to that
        for status, answer in responses.items():
            if status.startswith(("4", "5")):
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]


@pytest.mark.fuzz
def test_generated_requests_get_answers_that_conform(seeded: RunningHub) -> None:
    h = seeded
    schema = schemathesis.openapi.from_url(f"{h.url}/openapi.json")
    auth = {"Authorization": f"Bearer {h.admin_token}"}
    real = {"device_id": "cam-1", "name": "mobilenet-like", "version": "1.0.0"}
    checked = 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        op = result.ok()
        if op.method.upper() == "DELETE" or op.path.endswith(("/abort", "/rollback")):
            continue  # they would remove what the other operations are checked against

        @settings(
            max_examples=examples(6), deadline=None, phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=op.as_strategy())
        def check(case: schemathesis.Case[APIOperation[Any, Any, Any, Any]]) -> None:
            response = case.call(base_url=h.url, headers=auth)
            case.validate_response(response, checks=CHECKS, headers=auth)

        check()
        # and once on the real records, so the 2xx answers with content are checked too
        params = {k: v for k, v in real.items() if "{" + k + "}" in op.path}
        if "{rollout_id}" in op.path:
            params["rollout_id"] = h.hub.rollouts.summaries()[0].id
        if op.method.upper() == "GET":
            case = op.Case(path_parameters=params, query={})
            case.validate_response(case.call(base_url=h.url, headers=auth), checks=CHECKS, headers=auth)
        checked += 1
    assert checked >= 20


def test_the_check_fails_on_an_answer_that_does_not_match(seeded: RunningHub) -> None:
    h = seeded
    schema = schemathesis.openapi.from_url(f"{h.url}/openapi.json")
    auth = {"Authorization": f"Bearer {h.admin_token}"}
    op = schema["/api/v1/devices/{device_id}"]["GET"]
    case = op.Case(path_parameters={"device_id": "cam-1"})
    real = case.call(base_url=h.url, headers=auth)
    body = real.json()
    active = body["reported"]["models"][0]["active"]
    assert active["version"] == "1.0.0" and body["capabilities"]["gpus"][0]["name"] == "NVIDIA L4"
    case.validate_response(real, checks=[response_schema_conformance])
    wrong = [
        {k: v for k, v in body.items() if k != "state"},  # a field missing
        {**body, "state": "exploded"},  # a value outside its enum
        {**body, "reported": {**body["reported"], "seq": "three"}},  # a nested field of the wrong type
        {**body, "extra": 1},  # a field the view does not have
    ]
    for bad in wrong:
        fake = httpx.Response(200, json=bad, request=httpx.Request("GET", f"{h.url}/api/v1/devices/cam-1"))
        fake.elapsed = timedelta(0)  # what a client sets on a response it received
        with pytest.raises(FailureGroup, match="Response violates schema"):
            case.validate_response(fake, checks=[response_schema_conformance])
