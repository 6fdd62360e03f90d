"""CustomResourceDefinitions for EventBus, EventSource and Sensor, generated from the models.

Argo ships these CRDs schemaless (``spec`` is ``x-kubernetes-preserve-unknown-fields``,
argo-events#281), so ``kubectl apply`` takes a Sensor with ``dependecies:`` and the
mistake only shows when nothing fires. Here the ``openAPIV3Schema`` of each CRD is the
JSON schema of the pydantic model that loads the manifest (DESIGN §4, "CRDs carry real
OpenAPI schemas generated from the models"), converted to a Kubernetes *structural*
schema, so the API server prunes and kubectl's strict field validation rejects every
field the models would reject as unknown.

The conversion (:func:`structural_schema`):

* every ``$ref`` is inlined; a model that contains itself (``Trigger.dlqTrigger``) is
  expanded :data:`MAX_NESTING` times along one path and then cut with
  ``x-kubernetes-preserve-unknown-fields`` (structural schemas cannot recurse);
* ``anyOf [X, null]`` becomes ``X`` with ``nullable: true``; ``anyOf [integer, string]``
  (Argo's ``Int64OrString``, ports) becomes ``x-kubernetes-int-or-string``;
* ``const`` becomes a one-value ``enum``; JSON-Schema-2020 numeric
  ``exclusiveMinimum``/``exclusiveMaximum`` become their OpenAPI 3.0 boolean form;
* ``additionalProperties: false`` is dropped (pruning plus strict field validation do
  that job in Kubernetes); ``additionalProperties: true`` and objects without
  properties (Kubernetes core types the models pass through: ``resource``, tolerations,
  affinity, source and trigger types Argo has and Triggerfish does not model) become
  ``x-kubernetes-preserve-unknown-fields`` at that leaf only, never for a whole spec;
* ``title``, ``default``, ``format``, ``pattern`` and the like are dropped: defaults
  belong to the models (server-side defaulting would write them into every stored
  object), and Python regexes and formats are checked when the manifest is loaded;
* a keyword the converter does not know fails the generation, so a new model shape
  is a deliberate decision here rather than a silently wrong schema.

Callers: ``triggerfish crds`` (:mod:`app.compose.cli`) prints them; the Helm chart carries the
same files under ``helm/triggerfish/files/crds/`` and ``tests/test_crds.py`` fails when
those copies are stale.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel

from app.kernel.eventbus import EventBus
from eventsources.spec import EventSource
from sensors.spec import Sensor

GROUP: Final = "argoproj.io"
VERSION: Final = "v1alpha1"

MAX_NESTING: Final = 2
"""How often one model may appear along a single path before the schema is cut there:
``triggers[].dlqTrigger`` is checked field by field, ``...dlqTrigger.dlqTrigger`` is not."""

CRD_DIR_IN_CHART: Final = "helm/triggerfish/files/crds"
"""Where the committed copies live, relative to the repository root."""

HEADER: Final = (
    "# Generated from the Triggerfish models by `triggerfish crds`; do not edit.\n"
    f"# Regenerate with: triggerfish crds --output-dir {CRD_DIR_IN_CHART}\n"
)

PRESERVE: Final = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING: Final = "x-kubernetes-int-or-string"

JSON = dict[str, Any]


class SchemaConversionError(ValueError):
    """A model's JSON schema has a shape with no structural equivalent (names the path)."""


@dataclass(frozen=True)
class CustomKind:
    """One custom resource kind: its model and its names in the API."""

    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]

    @property
    def crd_name(self) -> str:
        """``<plural>.<group>``, the name Kubernetes requires for the CRD object."""
        return f"{self.plural}.{GROUP}"

    @property
    def file_name(self) -> str:
        """File name of the committed copy (Argo's ``<group>_<plural>.yaml``)."""
        return f"{GROUP}_{self.plural}.yaml"


KINDS: Final[tuple[CustomKind, ...]] = (
    CustomKind(EventBus, "EventBus", "eventbus", "eventbus", ("eb",)),
    CustomKind(EventSource, "EventSource", "eventsources", "eventsource", ("es",)),
    CustomKind(Sensor, "Sensor", "sensors", "sensor", ("sn",)),
)

# Keywords copied unchanged: each means the same in OpenAPI 3.0 as in JSON Schema.
_KEPT: Final = frozenset(
    {
        "type",
        "enum",
        "required",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "multipleOf",
        "minProperties",
        "maxProperties",
    }
)
# Keywords dropped on purpose (see the module docstring for why).
_DROPPED: Final = frozenset(
    {
        "title",
        "default",
        "examples",
        "format",
        "pattern",
        "discriminator",
        "deprecated",
        "readOnly",
        "writeOnly",
        "uniqueItems",
        "$schema",
        "$id",
        "$comment",
    }
)
# Handled one by one in _convert_plain.
_SPECIAL: Final = frozenset(
    {
        "description",
        "properties",
        "additionalProperties",
        "items",
        "const",
        "exclusiveMinimum",
        "exclusiveMaximum",
    }
)

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def _describe(text: str) -> str:
    """The first paragraph of a docstring, as ``kubectl explain`` shows it.

    Later paragraphs of the model docstrings talk to developers (which method to call),
    and reStructuredText roles and literals read badly in a terminal.
    """
    first = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    first = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], first)
    first = _LITERAL.sub(r"\1", first)
    return " ".join(first.split())


def _preserve(description: str | None = None) -> JSON:
    out: JSON = {"type": "object", PRESERVE: True}
    if description:
        out["description"] = description
    return out


class _Converter:
    """Walks one model's JSON schema, inlining ``$defs`` as it goes."""

    def __init__(self, defs: Mapping[str, Any]) -> None:
        self._defs = defs

    def convert(self, node: Mapping[str, Any], path: str, stack: tuple[str, ...]) -> JSON:
        """The structural form of ``node`` (found at ``path``, inside the refs on ``stack``)."""
        if "$ref" in node:
            return self._convert_ref(node, path, stack)
        if "allOf" in node:
            parts = node["allOf"]
            if len(parts) != 1:
                raise SchemaConversionError(f"{path}: allOf with {len(parts)} parts")
            rest = {k: v for k, v in node.items() if k != "allOf"}
            return self.convert({**parts[0], **rest}, path, stack)
        if "anyOf" in node or "oneOf" in node:
            return self._convert_union(node, path, stack)
        for key in ("not", "if", "then", "else", "patternProperties", "prefixItems"):
            if key in node:
                raise SchemaConversionError(f"{path}: '{key}' has no structural equivalent")
        return self._convert_plain(node, path, stack)

    def _convert_ref(self, node: Mapping[str, Any], path: str, stack: tuple[str, ...]) -> JSON:
        ref = str(node["$ref"])
        if not ref.startswith("#/$defs/"):
            raise SchemaConversionError(f"{path}: unsupported reference {ref!r}")
        name = ref.removeprefix("#/$defs/")
        target = self._defs.get(name)
        if target is None:
            raise SchemaConversionError(f"{path}: reference to a missing definition {name!r}")
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        if stack.count(name) >= MAX_NESTING:
            description = _describe(str(target.get("description", name)))
            return _preserve(f"{description} (nested too deep to be checked by the schema)")
        # Keywords next to the $ref (a field's own description) win over the model's.
        return self.convert({**target, **siblings}, path, (*stack, name))

    def _convert_union(self, node: Mapping[str, Any], path: str, stack: tuple[str, ...]) -> JSON:
        key = "anyOf" if "anyOf" in node else "oneOf"
        branches = _flatten_union(node[key])
        nullable = any(b.get("type") == "null" for b in branches)
        rest = [b for b in branches if b.get("type") != "null"]
        siblings = {k: v for k, v in node.items() if k != key}
        out: JSON
        if sorted(_bare_type(b) or "" for b in rest) == ["integer", "string"]:
            out = {INT_OR_STRING: True}
            if "description" in siblings:
                out["description"] = _describe(str(siblings["description"]))
        elif len(rest) == 1:
            out = self.convert({**rest[0], **siblings}, path, stack)
        else:
            shapes = [b.get("type", b.get("$ref", "?")) for b in rest]
            raise SchemaConversionError(f"{path}: {key} of {shapes} has no structural equivalent")
        if nullable:
            out["nullable"] = True
        return out

    def _convert_plain(self, node: Mapping[str, Any], path: str, stack: tuple[str, ...]) -> JSON:
        unknown = set(node) - _KEPT - _DROPPED - _SPECIAL
        if unknown:
            raise SchemaConversionError(f"{path}: unsupported keyword(s) {sorted(unknown)}")
        out: JSON = {k: node[k] for k in node if k in _KEPT}
        if "description" in node:
            out["description"] = _describe(str(node["description"]))
        if "const" in node:
            out["enum"] = [node["const"]]
        for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if bound in node:
                out[plain] = node[bound]
                out[bound] = True
        if "items" in node:
            if not isinstance(node["items"], Mapping):
                raise SchemaConversionError(f"{path}: tuple-style items")
            out["items"] = self.convert(node["items"], f"{path}[]", stack)
        props = node.get("properties")
        if props is not None:
            out["properties"] = {
                name: self.convert(sub, f"{path}.{name}", stack) for name, sub in props.items()
            }
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            if props:
                raise SchemaConversionError(f"{path}: both properties and a map of values")
            out["additionalProperties"] = self.convert(extra, f"{path}[*]", stack)
        elif extra is True or (out.get("type") == "object" and props is None and extra is None):
            # Free-form at this leaf: a mapping the models pass through unchecked.
            out[PRESERVE] = True
        if "type" not in out and INT_OR_STRING not in out and PRESERVE not in out:
            # ``Any``: whatever value, kept as written.
            out[PRESERVE] = True
        if out.get("required") == []:
            del out["required"]
        return out


def _flatten_union(branches: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for b in branches:
        nested = b.get("anyOf", b.get("oneOf"))
        if nested is not None and set(b) <= {"anyOf", "oneOf", "title", "description"}:
            out.extend(_flatten_union(nested))
        else:
            out.append(b)
    return out


def _bare_type(branch: Mapping[str, Any]) -> str | None:
    """The type of a branch that says nothing but its type (titles aside), else None."""
    if set(branch) - {"type", "title", "description"}:
        return None
    kind = branch.get("type")
    return kind if isinstance(kind, str) else None


def structural_schema(model: type[BaseModel]) -> JSON:
    """The ``openAPIV3Schema`` of a manifest model, as Kubernetes requires it.

    The root keeps Kubernetes' own rules: ``apiVersion``/``kind`` are plain strings (the
    API server sets them), ``metadata`` is a bare object (the server validates it, and a
    CRD may not say more), ``status`` is written by the controller and kept as-is.
    """
    source = model.model_json_schema(by_alias=True, mode="validation")
    defs: Mapping[str, Any] = source.get("$defs", {})
    root = {k: v for k, v in source.items() if k != "$defs"}
    converter = _Converter(defs)
    schema = converter.convert(root, "", ())
    props: JSON = schema.setdefault("properties", {})
    props["apiVersion"] = {
        "type": "string",
        "description": "The schema version of this object (argoproj.io/v1alpha1).",
    }
    props["kind"] = {"type": "string", "description": "The kind of this object."}
    props["metadata"] = {"type": "object"}
    props["status"] = _preserve("Observed state, written by the controller.")
    schema["required"] = [k for k in schema.get("required", []) if k in ("metadata", "spec")]
    schema.pop(PRESERVE, None)
    return schema


def _printer_columns() -> list[JSON]:
    """``kubectl get`` columns: the ``Ready`` condition the controller computes from the
    others (DESIGN §2), with ``-o wide`` the messages of the conditions that fail, and
    the age (which Kubernetes only adds by itself when a CRD declares no columns)."""
    return [
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            "description": "Whether every condition the controller reports holds",
        },
        {
            "name": "Message",
            "type": "string",
            "priority": 1,
            "jsonPath": '.status.conditions[?(@.status=="False")].message',
            "description": "Why the object is not ready: the failing conditions' messages",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def build_crd(kind: CustomKind) -> JSON:
    """The ``apiextensions.k8s.io/v1`` CustomResourceDefinition of one kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": structural_schema(kind.model)},
                }
            ],
        },
    }


def build_crds() -> list[JSON]:
    """The three CRDs, EventBus first (the order ``kubectl apply`` wants them in)."""
    return [build_crd(k) for k in KINDS]


def render_crd(crd: Mapping[str, Any]) -> str:
    """One CRD as a YAML document with the generated-file header (stable text, so the
    committed copies can be compared byte for byte)."""
    body = yaml.safe_dump(dict(crd), sort_keys=True, default_flow_style=False, width=100)
    return HEADER + body


def render_all() -> str:
    """All CRDs as one multi-document YAML stream (``triggerfish crds | kubectl apply -f -``)."""
    return "---\n".join(render_crd(c) for c in build_crds())


def rendered_files() -> dict[str, str]:
    """``{file name: text}`` of the committed copies, as they should be."""
    return {k.file_name: render_crd(build_crd(k)) for k in KINDS}


def write_crd_files(directory: Path) -> list[Path]:
    """Write one file per CRD into ``directory`` (created if missing); returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, text in rendered_files().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
