"""A model no decoder reads, end to end: PaddleOCR's PP-OCRv4 recogniser (CTC `[batch, T, 6625]`, from the
`rapidocr-onnxruntime` wheel) described as kind: tensors is pushed to a real hub (which validates it),
deployed to an agent process, and answers v2 infer through real HTTP what plain onnxruntime answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from fleet.bundle import DeviceBundle
from models.descriptor import ModelDescriptor
from models.preprocess import preprocess
from tests.models.test_parity import HERE, REC_SHA, _text_lines, _v2_infer
from tests.models.wheels import pinned, wheel
from tests.support.agents import AgentProc
from tests.support.broker import free_port
from tests.support.hub import RunningHub
from tests.support.mqtt import wait_for


def _served(api: str) -> bool:
    try:
        return httpx.get(f"{api}/v2/models/ppocrv4-rec/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_push_deploy_and_infer_a_raw_tensors_model(
    running_hub: RunningHub, spawn_agent: Callable[..., AgentProc], tmp_path: Path
) -> None:
    onnx_path = pinned(
        wheel("rapidocr-onnxruntime", "1.4.4") / "rapidocr_onnxruntime" / "models" / "ch_PP-OCRv4_rec_infer.onnx",
        REC_SHA,
    )
    d = ModelDescriptor.load(HERE / "ppocrv4-rec.yaml")
    h = running_hub
    r = h.push_model(onnx_path, d.to_json())
    assert r.status_code == 201, r.text
    with h.client() as hub_api:
        r = hub_api.post("/api/v1/devices", json={"id": "cam-ocr", "labels": {"site": "lab"}})
        assert r.status_code == 201, r.text
        DeviceBundle.model_validate(r.json()["bundle"]).save(tmp_path / "bundle.json")
    agent = spawn_agent(tmp_path / "bundle.json", free_port())
    with h.client() as hub_api:
        r = hub_api.post("/api/v1/deployments", json={"model": d.name, "version": d.version, "selector": "site=lab"})
        assert r.status_code == 201, r.text
    wait_for(lambda: _served(agent.api), timeout=60)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x, _ = preprocess(_text_lines()["line1-0"], d.input)
    expected = session.run(None, {"x": x})[0]
    with httpx.Client(base_url=agent.api, timeout=30) as client:
        got = _v2_infer(client, d.name, x, "softmax_11.tmp_0")
        meta = client.get(f"/v2/models/{d.name}").json()
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-5
    assert meta["outputs"][0]["name"] == "softmax_11.tmp_0"
    assert agent.stop() == 0, agent.output()[-3000:]
