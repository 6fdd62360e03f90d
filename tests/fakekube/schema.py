"""Structural-schema handling for custom resources whose CRD declares ``openAPIV3Schema``.

What the real server does with such a schema, and this module reproduces:

- unknown fields are *pruned* (silently dropped) unless a schema node says
  ``x-kubernetes-preserve-unknown-fields: true``; with ``?fieldValidation=Strict``
  (kubectl's default) they are a 400 ``strict decoding error: unknown field "spec.x"``,
  with ``Warn`` (the default for other clients) a ``Warning`` response header;
- ``default`` values are filled in for missing properties;
- ``type`` (including ``x-kubernetes-int-or-string``), ``enum`` and ``required`` are
  checked, failures being a 422 Invalid with field paths.

Not modelled: ``anyOf``/``oneOf``/``allOf``/``not``, formats, numeric and length
bounds, CEL rules. The built-in Argo kinds are served schemaless until a CRD for them is
created (then its schema applies, as on a cluster with the real CRDs installed).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

ROOT_FIELDS = frozenset({"apiVersion", "kind", "metadata"})

_JSON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}


@dataclass
class SchemaResult:
    """The pruned object plus what the schema found wrong with the original."""

    obj: dict[str, Any]
    unknown: list[str] = field(default_factory=list)
    causes: list[tuple[str, str]] = field(default_factory=list)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _type_ok(expected: str, value: Any) -> bool:
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    py = _JSON_TYPES.get(expected)
    return py is None or isinstance(value, py)


def apply_schema(schema: dict[str, Any], obj: dict[str, Any]) -> SchemaResult:
    """Prune, default and check ``obj`` against a CRD version's ``openAPIV3Schema``."""
    result = SchemaResult(obj={})
    root = copy.deepcopy(obj)
    pruned = _walk(schema, {k: v for k, v in root.items() if k not in ROOT_FIELDS}, "", result)
    result.obj = {**{k: root[k] for k in ROOT_FIELDS if k in root}, **(pruned or {})}
    return result


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(schema: dict[str, Any], value: Any, path: str, result: SchemaResult) -> Any:
    if not schema:
        return value
    expected = schema.get("type")
    where = path or "<root>"
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok("integer", value)):
            result.causes.append(
                (where, f'Invalid value: "{_type_name(value)}": {where} in body must be of '
                 "type integer or string")
            )  # fmt: skip
        return value
    if expected and not _type_ok(expected, value):
        got = _type_name(value)
        result.causes.append(
            (where, f'Invalid value: "{got}": {where} in body must be of type {expected}: "{got}"')
        )
        return value
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        result.causes.append(
            (where, f"Unsupported value: {json.dumps(value)}: supported values: {supported}")
        )
    if isinstance(value, dict):
        return _walk_object(schema, value, path, result)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_walk(schema["items"], v, f"{path}[{i}]", result) for i, v in enumerate(value)]
    return value


def _walk_object(
    schema: dict[str, Any], value: dict[str, Any], path: str, result: SchemaResult
) -> dict[str, Any]:
    props: dict[str, Any] = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    embedded = bool(schema.get("x-kubernetes-embedded-resource"))
    out: dict[str, Any] = {}
    for k, v in value.items():
        child = _join(path, k)
        if v is None and not (props.get(k) or {}).get("nullable"):
            continue  # nulls in non-nullable fields are dropped, as by the real server
        if k in props:
            out[k] = _walk(props[k], v, child, result)
        elif isinstance(extra, dict):
            out[k] = _walk(extra, v, child, result)
        elif extra is True or preserve or (embedded and k in ROOT_FIELDS):
            out[k] = v
        else:
            result.unknown.append(child)
    for k, sub in props.items():
        if k not in out and isinstance(sub, dict) and "default" in sub:
            out[k] = copy.deepcopy(sub["default"])
    for k in schema.get("required") or ():
        if k not in out and not (path == "" and k in ("metadata", "status")):
            result.causes.append((_join(path, k), "Required value"))
    return out
