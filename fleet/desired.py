"""Reading a verified desired state slot by slot, so that one model a newer hub describes in a way this build
does not know stops that model only, not the device's other models.

Hubs and agents are upgraded at different times. A desired state is one signed document naming every model
of a device; read strictly as one, a slot with a field or a value this agent does not know (a new runtime
option, a new task, a new kind of shadow) made the agent refuse the whole document, so none of the device's
models updated any more. The signature, the schema version, the subject, the expiry and the version
counter are still checked over the whole document first (`fleet.signing.Verifier.verify_desired`); then
the device-level fields are read strictly, and each slot on its own:

- a slot this agent reads is applied as usual;
- a slot it cannot read is refused for its model alone (`UnsupportedModel`, reported on that model as
  `unsupported_model` with the field and the reason): the version of it that serves keeps serving, nothing of
  it is stopped or deleted, and it is applied once a state the agent reads names it (an upgraded agent, or
  the hub sending the model without the new feature);
- a slot without a readable model name, the same name twice, more than the maximum of slots, or a device-level
  field this agent does not know refuses the whole document, as before (`malformed_envelope`): there is no
  smaller part to refuse it for, and every model keeps serving.

Unknown fields and unknown values are treated alike: both refuse the slot, never ignored. A field the hub
adds to a slot says how that model must be served (a pre-processing step, a resource bound, a security
setting); an agent that skipped it would serve something other than what was signed and report it as applied,
and the hub could not tell. A refused slot is visible (the model's error names the field) and bounded (one
model). A hub that adds such a field announces it in the agent's capabilities first, as `task: tensors` did
(`Capabilities.tasks`), and avoids sending it to agents that do not list it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fleet.codec import summarise
from fleet.errors import UnsupportedModel
from fleet.messages import MAX_MODELS, DesiredModel, DesiredState, ModelName

_NAME: TypeAdapter[str] = TypeAdapter(ModelName)


def _slot_name(item: object) -> str | None:
    """The model name of a raw slot, when it has a valid one."""
    model = item.get("model") if isinstance(item, dict) else None
    name = model.get("name") if isinstance(model, dict) else None
    try:
        return _NAME.validate_python(name)
    except ValidationError:
        return None


def read_desired(body: Mapping[str, Any]) -> tuple[DesiredState, tuple[UnsupportedModel, ...]]:
    """The desired state of a verified body, with the slots this build reads, and one `UnsupportedModel` per
    slot it does not (in the document's order).

    Raises:
        ValueError: (a pydantic ValidationError, but for names repeated across slots) the document as a whole
            is not readable: a device-level field, a slot without a model name, too many slots.
    """
    raw = body.get("models")
    if not isinstance(raw, list) or len(raw) > MAX_MODELS:
        return DesiredState.model_validate(body), ()  # absent: no models; anything else: the strict reason
    slots: list[DesiredModel] = []
    unread: list[UnsupportedModel] = []
    for i, item in enumerate(raw):
        try:
            slots.append(DesiredModel.model_validate(item))
        except ValidationError as e:
            name = _slot_name(item)
            if name is None:  # no model to refuse it for: the document is refused, with the strict reasons
                return DesiredState.model_validate(body), ()
            reason = f"this agent cannot read its slot (models.{i}) of the desired state: {summarise(e)}"
            unread.append(UnsupportedModel(name, (
                f"model {name!r} not applied: {reason} (a hub newer than this agent? upgrade the agent; the version "
                "serving stays)"
            ), reason=reason))  # fmt: skip
    names = [s.name for s in slots] + [u.model for u in unread]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"model names must be unique in a desired state; repeated: {', '.join(twice)}")
    return DesiredState.model_validate({**body, "models": slots}), tuple(unread)
