"""A desired state from a newer hub: read slot by slot once its signature and device-level fields hold, so a slot
this build cannot read refuses that model only (`fleet.desired`)."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.errors import BadSignature, Expired, MalformedEnvelope, StaleVersion, UnsupportedModel, error_code
from fleet.messages import DesiredState
from fleet.signing import HubSigningKey, Verifier
from tests.fleet.samples import T0, desired
from tests.support.wire import future_envelope

KEY = HubSigningKey.generate()
VERIFIER = Verifier(KEY.public, "cam-001")


def _body(**changes: Any) -> dict[str, Any]:
    """The sample state (slots resnet-lite and plate-ocr) as JSON, with `changes` applied to plate-ocr's slot."""
    body = desired().model_dump(mode="json")
    slot = body["models"][1]
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        at = slot
        for p in parents:
            at = at[p]
        at[leaf] = value
    return body


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"model__task": "segmentation"}, "model.task: Input should be 'classification', 'detection' or 'tensors'"),
        ({"runtime__pinned_cores": [0, 1]}, "runtime.pinned_cores: Extra inputs are not permitted"),
        ({"canary": {"share": 0.1}}, "canary: Extra inputs are not permitted"),
    ],
    ids=["unknown-task", "unknown-runtime-field", "unknown-slot-field"],
)
def test_a_slot_this_build_cannot_read_refuses_that_model_only(changes: dict[str, Any], reason: str) -> None:
    env = future_envelope(KEY, _body(**changes))
    state, unread = VERIFIER.verify_desired(env, now=T0, last_version=6)
    assert [m.name for m in state.models] == ["resnet-lite"]
    assert state.models[0] == desired().models[0] and state.version == 7
    assert [(u.model, error_code(u)) for u in unread] == [("plate-ocr", "unsupported_model")]
    assert reason in str(unread[0]) and "models.1" in str(unread[0]) and "upgrade the agent" in str(unread[0])
    with pytest.raises(MalformedEnvelope, match=r"models\.1\."):  # read as one document (the hub's strict read)
        VERIFIER.verify(env, DesiredState, now=T0, last_version=6)


def test_a_readable_state_has_no_unread_slots() -> None:
    state, unread = VERIFIER.verify_desired(KEY.sign(desired()), now=T0, last_version=None)
    assert state == desired() and unread == ()


def test_the_whole_document_is_still_signed_expiring_and_counted() -> None:
    env = future_envelope(KEY, _body(model__task="segmentation"))
    altered = env.model_copy(update={"body": _body(model__task="segmentation2")})  # only the unread slot changed
    with pytest.raises(BadSignature):
        VERIFIER.verify_desired(altered, now=T0, last_version=None)
    with pytest.raises(Expired):
        VERIFIER.verify_desired(env, now=T0 + 7200, last_version=None)
    with pytest.raises(StaleVersion):
        VERIFIER.verify_desired(env, now=T0, last_version=7)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b.update(priority="high"), "priority: Extra inputs are not permitted"),
        (lambda b: b.update(expires_at="soon"), "expires_at"),
        (lambda b: b["models"][1]["model"].update(name="Not A Name"), r"models\.1\.model\.name"),
        (lambda b: b["models"][1].pop("model"), r"models\.1\.model: Field required"),
        (lambda b: b["models"].append(7), r"models\.2"),
        (lambda b: b["models"].extend([b["models"][0]] * 15), "at most 16 items"),
        (lambda b: b["models"][0]["model"].update(name="plate-ocr"), "repeated: plate-ocr"),
    ],
    ids=["unknown-device-field", "bad-device-field", "slot-name", "slot-without-model", "not-a-slot", "too-many",
         "name-twice-with-unread"],
)  # fmt: skip
def test_a_document_whose_device_level_fields_or_slot_names_do_not_read_is_refused_whole(
    mutate: Any, reason: str
) -> None:
    body = _body(model__task="segmentation")  # an unread slot beside: it does not hide the document's fault
    mutate(body)
    with pytest.raises(MalformedEnvelope, match=reason):
        VERIFIER.verify_desired(future_envelope(KEY, body), now=T0, last_version=None)


def test_an_unsupported_model_is_a_message_error_naming_its_model() -> None:
    e = UnsupportedModel("plate-ocr", "why")
    assert e.model == "plate-ocr" and str(e) == "why" and error_code(e) == "unsupported_model"
