"""Several models on one device over a real Mosquitto, real files and real onnxruntime: each model is
downloaded, activated, kept as last-known-good, failed and removed on its own; the others keep serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.headless import HeadlessServing
from agent.serving import ModelNotFound
from agent.serving.served import Served
from fleet.messages import DesiredModel, Phase
from tests.agent.conftest import AgentFactory, Sample
from tests.support.broker import Broker
from tests.support.hubside import HubSide

IMAGE = {"image": np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)}
FRAME = {"images": np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)}


def _served(serving: HeadlessServing, name: str) -> Served:
    """What model `name`'s slot serves now (the test expects it to serve)."""
    current = serving.get(name).current
    assert current is not None, f"{name} serves nothing"
    return current


def _slot(hub: HubSide, sample: Sample) -> DesiredModel:
    return DesiredModel(model=hub.model_ref(sample.path, sample.descriptor))


def test_two_models_serve_side_by_side_and_each_swaps_on_its_own(
    broker: Broker,
    hub: HubSide,
    device_id: str,
    make_agent: AgentFactory,
    samples: dict[str, Sample],
    detector: Sample,
) -> None:
    agent, serving = make_agent(hub, device_id, broker.url, store={"gc_keep_bytes": 0})
    det, v1, v2 = _slot(hub, detector), _slot(hub, samples["v1"]), _slot(hub, samples["v2"])
    hub.publish_desired(device_id, hub.desired(device_id, 1, None, others=[det, v1]))
    r = hub.wait_reported(lambda r: r.desired_version == 1 and r.phase == "active" and len(r.models) == 2)
    assert [(m.name, m.phase, m.active.version if m.active else None) for m in r.models] == [
        ("det", "active", "1.0.0"), ("cls", "active", "1.0.0"),
    ]  # fmt: skip
    assert serving.names() == ["cls", "det"]
    assert serving.infer(IMAGE, "cls")["logits"].shape == (1, 10)
    boxes = serving.infer(FRAME, "det")
    with pytest.raises(ModelNotFound, match="name one"):
        serving.infer(IMAGE)  # two models served: a caller must say which

    # a new classifier version: the detector is not touched (same engine, nothing reloaded)
    det_engine = _served(serving, "det").engine
    wants = len(hub.wants)
    hub.publish_desired(device_id, hub.desired(device_id, 2, None, others=[det, v2]))
    r = hub.wait_active("2.0.0", model="cls")
    assert (det_status := r.model("det")) is not None and (active := det_status.active) is not None
    assert active.version == "1.0.0"
    assert (cls_status := r.model("cls")) is not None and (previous := cls_status.previous) is not None
    assert previous.version == "1.0.0"
    assert _served(serving, "det").engine is det_engine
    assert all(w.sha256 == v2.model.blob.sha256 for w in hub.wants[wants:]), "only the new blob is fetched"
    for name, want in boxes.items():
        np.testing.assert_allclose(serving.infer(FRAME, "det")[name], want)
    store = agent.store
    det_pointer, cls_pointer = store.active("det"), store.active("cls")
    assert det_pointer is not None and det_pointer.model.version == "1.0.0"
    assert cls_pointer is not None and cls_pointer.model.version == "2.0.0"

    # the detector is removed: it stops serving, stays as previous (idle); the classifier keeps serving
    hub.publish_desired(device_id, hub.desired(device_id, 3, None, others=[v2]))
    r = hub.wait_reported(lambda r: r.desired_version == 3 and (m := r.model("det")) is not None and m.phase == "idle")
    removed = r.model("det")
    assert removed is not None and removed.active is None
    assert removed.previous is not None and removed.previous.version == "1.0.0"
    assert serving.names() == ["cls"] and serving.infer(IMAGE)["logits"].shape == (1, 10)
    with pytest.raises(ModelNotFound):
        serving.infer(FRAME, "det")
    assert store.active("det") is None and store.has_blob(det.model.blob.sha256), "kept as previous despite GC"
    # deployed again: activated from the store, nothing downloaded
    wants = len(hub.wants)
    hub.publish_desired(device_id, hub.desired(device_id, 4, None, others=[v2, det]))
    hub.wait_active("1.0.0", model="det")
    assert len(hub.wants) == wants


def test_a_model_failing_to_activate_leaves_the_others_serving(
    broker: Broker,
    hub: HubSide,
    device_id: str,
    make_agent: AgentFactory,
    samples: dict[str, Sample],
    detector: Sample,
) -> None:
    _agent, serving = make_agent(hub, device_id, broker.url)
    det, v1, bad = _slot(hub, detector), _slot(hub, samples["v1"]), _slot(hub, samples["bad"])
    hub.publish_desired(device_id, hub.desired(device_id, 1, None, others=[det, v1]))
    hub.wait_reported(lambda r: r.phase == "active" and len(r.models) == 2)
    # the bad classifier is listed first: its failure must not stop the detector's update behind it
    det2 = DesiredModel(model=det.model, runtime=det.runtime.model_copy(update={"max_batch": 4}))
    hub.publish_desired(device_id, hub.desired(device_id, 2, None, others=[bad, det2]))
    r = hub.wait_reported(
        lambda r: r.desired_version == 2 and r.phase == "failed" and (m := r.model("det")) is not None
        and m.phase == "active"
    )  # fmt: skip
    cls, d = r.model("cls"), r.model("det")
    assert cls is not None and cls.phase is Phase.FAILED and cls.error is not None
    assert cls.error.code == "golden_mismatch" and cls.active is not None and cls.active.version == "1.0.0"
    assert d is not None and d.error is None and r.error is None, "the failure is the classifier's alone"
    assert serving.infer(IMAGE, "cls")["logits"].shape == (1, 10)  # the last good classifier serves
    assert _served(serving, "det").options.max_batch == 4
    # the same failing version again (another model changes): not loaded again, still reported
    hub.publish_desired(device_id, hub.desired(device_id, 3, None, others=[bad, det]))
    r = hub.wait_reported(
        lambda r: r.desired_version == 3 and (m := r.model("det")) is not None and m.phase == "active"
    )
    cls = r.model("cls")
    assert cls is not None and cls.phase is Phase.FAILED and cls.error is not None
    assert cls.error.code == "golden_mismatch"


def test_restart_serves_every_model_from_the_store(
    broker: Broker,
    hub: HubSide,
    device_id: str,
    make_agent: AgentFactory,
    samples: dict[str, Sample],
    detector: Sample,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    agent, _ = make_agent(hub, device_id, broker.url, data_dir=data)
    hub.publish_desired(
        device_id, hub.desired(device_id, 1, None, others=[_slot(hub, detector), _slot(hub, samples["v1"])])
    )
    hub.wait_reported(lambda r: r.phase == "active" and len(r.models) == 2)
    agent.stop()
    start, wants = len(hub.reported), len(hub.wants)
    _again, serving = make_agent(hub, device_id, broker.url, data_dir=data)
    first = hub.wait_reported(lambda r: True, since=start)
    assert {m.name: m.active.version for m in first.models if m.active} == {"det": "1.0.0", "cls": "1.0.0"}
    assert serving.names() == ["cls", "det"] and len(hub.wants) == wants


def test_blobs_a_removed_model_leaves_spare_are_collected_while_another_model_downloads(
    broker: Broker,
    hub: HubSide,
    device_id: str,
    make_agent: AgentFactory,
    samples: dict[str, Sample],
    detector: Sample,
) -> None:
    """A removed model's active version becomes its last-known-good and stays; the older version this leaves
    spare is collected at once, not once another model's transfer ends (it was collected only when a desired
    state settled)."""
    agent, _ = make_agent(hub, device_id, broker.url, store={"gc_keep_bytes": 0})
    det, v1, v2 = _slot(hub, detector), _slot(hub, samples["v1"]), _slot(hub, samples["v2"])
    hub.publish_desired(device_id, hub.desired(device_id, 1, None, others=[v1]))
    hub.wait_active("1.0.0")
    hub.publish_desired(device_id, hub.desired(device_id, 2, None, others=[v2]))
    hub.wait_active("2.0.0")
    store = agent.store
    assert store.has_blob(v1.model.blob.sha256), "1.0.0 is the classifier's last-known-good"
    hub.serving = False  # the detector's transfer does not end while the classifier is removed
    hub.publish_desired(device_id, hub.desired(device_id, 3, None, others=[det]))
    hub.wait_reported(lambda r: r.desired_version == 3 and (m := r.model("cls")) is not None and m.phase == "idle")
    hub.wait(lambda: not store.has_blob(v1.model.blob.sha256) or None, what="1.0.0's blob collected")
    assert store.has_blob(v2.model.blob.sha256), "2.0.0 stays: the idle classifier's last-known-good"
    assert agent.reconciler.download is not None and agent.reconciler.download.sha256 == det.model.blob.sha256
    hub.serving = True
    hub.wait_active("1.0.0", model="det")
    assert store.has_blob(v2.model.blob.sha256) and store.has_blob(det.model.blob.sha256)


def test_spare_blobs_are_collected_while_activation_waits_for_the_update_lock(
    broker: Broker,
    hub: HubSide,
    device_id: str,
    make_agent: AgentFactory,
    samples: dict[str, Sample],
    detector: Sample,
    tmp_path: Path,
) -> None:
    """A maintenance window (the update lock) holds activation, perhaps for hours: what the desired state's
    removals left spare is collected at once, not once the lock goes (that pass returned before collecting), and
    the other models' blobs are still fetched (that pass stopped at the first model waiting for the lock)."""
    lock = tmp_path / "update.lock"
    agent, _ = make_agent(hub, device_id, broker.url, store={"gc_keep_bytes": 0},
                          activation={"update_lock_file": str(lock)})  # fmt: skip
    det, v1, v2 = _slot(hub, detector), _slot(hub, samples["v1"]), _slot(hub, samples["v2"])
    hub.publish_desired(device_id, hub.desired(device_id, 1, None, others=[det, v1]))
    hub.wait_reported(lambda r: r.desired_version == 1 and r.phase == "active" and len(r.models) == 2)
    hub.publish_desired(device_id, hub.desired(device_id, 2, None, others=[det, v2]))
    hub.wait_active("2.0.0", model="cls")
    store = agent.store
    assert store.has_blob(v1.model.blob.sha256), "1.0.0 is the classifier's last-known-good"
    lock.touch()
    # the classifier is removed (2.0.0 becomes its last-known-good, 1.0.0 spare); the detector, unchanged, waits for
    # the lock with the new desired state; a model named after it is fetched meanwhile
    other = samples["bad"].descriptor.model_copy(update={"name": "other"})
    third = DesiredModel(model=hub.model_ref(samples["bad"].path, other))
    hub.publish_desired(device_id, hub.desired(device_id, 3, None, others=[det, third]))
    waits = "activating"  # the detector waits for the lock
    hub.wait_reported(lambda r: r.desired_version == 3 and (m := r.model("det")) is not None and m.phase == waits)
    hub.wait(lambda: not store.has_blob(v1.model.blob.sha256) or None, what="1.0.0's blob collected")
    assert store.has_blob(v2.model.blob.sha256), "2.0.0 stays: the idle classifier's last-known-good"
    hub.wait(lambda: store.has_blob(third.model.blob.sha256) or None, what="the other model's blob fetched")
    lock.unlink()
    hub.wait_reported(lambda r: r.desired_version == 3 and (m := r.model("det")) is not None and m.phase == "active")
