"""The test API server's object validation: the OpenAPI schemas of a real Kubernetes (kubernetes-validate, strict),
answered the way a real kube-apiserver answers a server-side apply.

Which Kubernetes: K3s follows upstream's support of the three newest minor releases. NEWEST is the newest schema
set the installed kubernetes-validate ships; OLDEST is two minors below it. With kubernetes-validate 1.37.0
that is 1.35 and 1.37.

How a real apiserver (1.35-1.37) answers a server-side apply (PATCH application/apply-patch+yaml), looked up in
its source (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go and
apimachinery/pkg/util/managedfields/internal/structuredmerge.go) and its issue tracker:

- a body that is not YAML, or not an object: 400 BadRequest, "error decoding YAML: ...";
- a field the schema does not declare, or a value of the wrong type: the patch cannot be converted to a typed
  object, and the apiserver answers **500** with a Status that has no reason, "failed to create typed patch object
  (ns/name; apps/v1, Kind=Deployment): .spec.replicas: expected numeric (int or float), got string"
  (kubernetes/kubernetes#122480 and #139253; the fix to answer 400, #139255, is not merged);
- a merged object that misses a required field or breaks a rule of the schema: 422 Invalid, with one cause per
  field (`FieldValueRequired`, `FieldValueInvalid`) and the message `Deployment.apps "x" is invalid: ...`;
- a name its kind does not allow (the OpenAPI schemas do not say this; apimachinery's ValidateObjectMeta does): a
  Service's must be a DNS-1035 label, a ConfigMap's or Deployment's a DNS-1123 subdomain: 422 Invalid on
  `metadata.name`, with the message apimachinery/pkg/util/validation writes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource


def _supported() -> tuple[str, str]:
    newest = kubernetes_validate.latest_version()
    major, minor = (int(x) for x in newest.split(".")[:2])
    return f"{major}.{minor - 2}.0", f"{major}.{minor}.0"


OLDEST, NEWEST = _supported()
DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = rf"{DNS1123_LABEL}(\.{DNS1123_LABEL})*"
DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
NAME_RULES = {  # kind: (regex, most characters, apimachinery's message)
    "Service": (DNS1035_LABEL, 63, "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
                f"'abc-123', regex used for validation is '{DNS1035_LABEL}')"),
    "ConfigMap": (DNS1123_SUBDOMAIN, 253, "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                  "characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
                  f"'example.com', regex used for validation is '{DNS1123_SUBDOMAIN}')"),
}  # fmt: skip
NAME_RULES["Deployment"] = NAME_RULES["ConfigMap"]
TYPING = frozenset({"type", "additionalProperties", "oneOf", "anyOf"})  # the typed conversion fails: 500


@dataclass
class Refusal:
    """Why the apiserver refuses an object: `code` 500 (typing) or 422 (validation), message and causes."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@functools.cache
def _validator(kind: str, api_version: str, version: str) -> jsonschema.protocols.Validator:
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    directory = f"kubernetes-json-schema/v{version}-local-strict"
    schema = schema_contents(f"{directory}/{kind.lower()}-{group_version}.json", version)
    definitions = schema_contents(f"{directory}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


_NAMES = {"integer": "numeric (int or float)", "number": "numeric (int or float)", "string": "string",
          "boolean": "bool", "object": "map", "array": "list"}  # fmt: skip


def _got(value: Any) -> str:
    return {str: "string", bool: "bool", int: "numeric", float: "numeric", list: "list", dict: "map"}.get(
        type(value), "null"
    )


def _expected(schema_type: Any) -> str:
    names = [schema_type] if isinstance(schema_type, str) else list(schema_type)
    return " or ".join(_NAMES.get(n, n) for n in names if n != "null") or "null"


def typing_problems(body: dict[str, Any], version: str = NEWEST) -> list[str]:
    """What stops the apply body from being converted to the kind's typed object (wrong types, unknown fields)."""
    problems = []
    for error in _validator(body["kind"], body["apiVersion"], version).iter_errors(body):
        if error.validator == "additionalProperties":
            schema, instance = error.schema, error.instance
            assert isinstance(schema, Mapping) and isinstance(instance, Mapping)  # the error is about an object
            extra = set(instance) - set(schema.get("properties", {}))
            problems += [f"{_path(error)}.{name}: field not declared in schema" for name in sorted(extra)]
        elif error.validator in TYPING:
            expected = _expected(error.validator_value) if error.validator == "type" else "one of the declared types"
            problems.append(f"{_path(error)}: expected {expected}, got {_got(error.instance)}")
    return problems


def name_problems(kind: str, name: str) -> list[dict[str, str]]:
    """The `metadata.name` cause a real apiserver gives an object of `kind` named `name` (none: allowed)."""
    rule = NAME_RULES.get(kind)
    if rule is None:
        return []
    pattern, most, explanation = rule
    found = []
    if len(name) > most:
        found.append(f"must be no more than {most} characters")
    if not re.fullmatch(pattern, name):
        found.append(explanation)
    return [
        {"reason": "FieldValueInvalid", "message": f"Invalid value: {name!r}: {text}", "field": "metadata.name"}
        for text in found
    ]


def check_apply(
    body: dict[str, Any], merged: dict[str, Any], group: str, name: str, namespace: str, version: str = NEWEST
) -> Refusal | None:
    """The refusal a real apiserver gives a server-side apply of `body` that yields `merged` (None: accepted)."""
    kind, api_version = body["kind"], body["apiVersion"]
    typing = typing_problems(body, version)
    if typing:
        where = f"{namespace}/{name}; {api_version}, Kind={kind}"
        text = typing[0] if len(typing) == 1 else "errors:\n  " + "\n  ".join(typing)
        return Refusal(500, "", f"failed to create typed patch object ({where}): {text}")
    causes = name_problems(kind, name)
    for error in _validator(kind, api_version, version).iter_errors(merged):
        path = _path(error).lstrip(".")
        if error.validator == "required":
            missing = re.match(r"'([^']+)' is a required property", error.message)
            fieldname = f"{path}.{missing.group(1)}" if missing and path else (missing.group(1) if missing else path)
            causes.append({"reason": "FieldValueRequired", "message": "Required value", "field": fieldname})
        else:
            causes.append(
                {
                    "reason": "FieldValueInvalid",
                    "message": f"Invalid value: {error.instance!r}: {error.message}",
                    "field": path,
                }  # fmt: skip
            )
    if not causes:
        return None
    qualified = f"{kind}.{group}" if group else kind
    summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    message = f'{qualified} "{name}" is invalid: ' + (f"[{summary}]" if len(causes) > 1 else summary)
    return Refusal(422, "Invalid", message, {"name": name, "group": group, "kind": kind, "causes": causes})
