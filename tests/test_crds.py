"""The generated CustomResourceDefinitions: current, structural, and strict where it counts.

What is checked, and against what:

- the copies committed in the chart equal what ``triggerfish crds`` generates now (a
  model change without regenerating fails here, with the command to run);
- every schema is *structural* (a checker below for the rules the API server enforces
  and that this generator could get wrong), with free-form leaves only where the models
  pass data through;
- the real ``kubectl`` against the fake API server: the CRDs apply, the seed manifests
  apply and list as ``es,sn,eb``, nothing the models accept is pruned, and a Sensor with
  ``dependecies:`` is rejected by strict field validation;
- independently of the fake, the committed schemas (made strict again:
  ``additionalProperties: false`` wherever Kubernetes would prune) are run through the
  ``jsonschema`` validator: seed, examples and Argo's own corpus pass, typos fail.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, Field

from app.compose.cli import main
from app.compose.crds import (
    CRD_DIR_IN_CHART,
    INT_OR_STRING,
    KINDS,
    PRESERVE,
    SchemaConversionError,
    build_crds,
    rendered_files,
    structural_schema,
)
from app.kernel.spec import SpecModel
from tests.fakekube.harness import KubeApi

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / CRD_DIR_IN_CHART
EXAMPLES = REPO / "examples"
SHARED = REPO.parent / "shared"
SEED_DIR = SHARED / "seed-manifests"
CORPUS = SHARED / "argo-examples"
NAMESPACE = "argo-events"
CUSTOM_KINDS = {k.kind for k in KINDS}
LOADER = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader

# The Argo corpus examples the models reject as unknown fields (tests/test_argo_corpus.py
# says why): the CRD schema must reject the same field.
CORPUS_TYPOS = {
    "sensors/trigger-with-atleast-once-semantics.yaml": "atLeastOnce",
    "sensors/trigger-with-policy.yaml": "policy",
    "sensors/trigger-openwhisk.yaml": "openwhisk",
    "sensors/url-sensor.yaml": "verifycert",
}


def seed_dir() -> Path:
    """The seed walkthrough when present, else the example it was turned into."""
    return SEED_DIR if SEED_DIR.is_dir() else EXAMPLES / "ml-pipeline"


def load_docs(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict)]


@functools.cache
def committed_crds() -> dict[str, dict[str, Any]]:
    """``{kind: CRD}`` as committed in the chart."""
    out = {}
    for f in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.load(f.read_text(), Loader=LOADER)
        out[crd["spec"]["names"]["kind"]] = crd
    return out


def committed_schema(kind: str) -> dict[str, Any]:
    """A copy of the committed ``openAPIV3Schema`` of ``kind``."""
    schema: dict[str, Any] = committed_crds()[kind]["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]
    return copy.deepcopy(schema)


# ---------------------------------------------------------------------------------------
# Generation and the committed copies.


def test_committed_crds_are_current() -> None:
    want = rendered_files()
    have = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml")}
    stale = sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))
    assert not stale, (
        f"CRDs in {CRD_DIR_IN_CHART} are stale ({', '.join(stale)}): the models changed. "
        f"Regenerate with: triggerfish crds --output-dir {CRD_DIR_IN_CHART}"
    )


def test_cli_prints_the_three_crds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs == build_crds()
    names = {d["metadata"]["name"]: d["spec"]["names"] for d in docs}
    assert names["eventbus.argoproj.io"]["shortNames"] == ["eb"]
    assert names["eventbus.argoproj.io"]["plural"] == "eventbus"
    assert names["eventsources.argoproj.io"]["shortNames"] == ["es"]
    assert names["sensors.argoproj.io"]["shortNames"] == ["sn"]
    for d in docs:
        assert d["spec"]["group"] == "argoproj.io"
        assert d["spec"]["scope"] == "Namespaced"
        (version,) = d["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}
        columns = [c["name"] for c in version["additionalPrinterColumns"]]
        assert columns == ["Ready", "Message", "Age"]


def test_cli_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--output-dir", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(rendered_files())
    assert len(capsys.readouterr().out.splitlines()) == 3


# ---------------------------------------------------------------------------------------
# Structural schemas.

_ALLOWED = {
    "type", "description", "properties", "required", "items", "additionalProperties",
    "enum", "nullable", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minItems", "maxItems", "minLength", "maxLength", "multipleOf", "minProperties",
    "maxProperties", "format", "pattern", "default", PRESERVE, INT_OR_STRING,
    "x-kubernetes-embedded-resource", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-validations",
}  # fmt: skip
_TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """What makes ``schema`` non-structural (or not what this project allows), by path.

    The API server's rules that matter here: every node has a ``type`` unless it is
    int-or-string or preserves unknown fields; no ``$ref`` and no JSON-Schema-only
    keywords; ``anyOf``/``oneOf``/``allOf``/``not`` are not used at all (the structural
    form puts types outside them, and the generator never needs them); ``properties``
    and ``additionalProperties`` are exclusive, ``additionalProperties: false`` is not
    allowed; an object says what it holds (properties, a value schema, or preserve);
    arrays have one ``items`` schema; ``metadata`` at the root says nothing but its type.
    """
    where = path or "<root>"
    out: list[str] = []
    for key in sorted(set(schema) - _ALLOWED):
        out.append(f"{where}: keyword {key!r} not allowed")
    kind = schema.get("type")
    preserve = schema.get(PRESERVE) is True
    int_or_string = schema.get(INT_OR_STRING) is True
    if kind is None and not (preserve or int_or_string):
        out.append(f"{where}: no type")
    if kind is not None and kind not in _TYPES:
        out.append(f"{where}: bad type {kind!r}")
    if int_or_string and kind is not None:
        out.append(f"{where}: int-or-string with a type")
    if "nullable" in schema and not isinstance(schema["nullable"], bool):
        out.append(f"{where}: nullable is not a boolean")
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    if props is not None and extra is not None:
        out.append(f"{where}: both properties and additionalProperties")
    if extra is False:
        out.append(f"{where}: additionalProperties: false")
    bare = props is None and not isinstance(extra, dict) and not preserve
    if kind == "object" and bare and path != "metadata":  # the server owns root metadata
        out.append(f"{where}: object with no properties, value schema or preserve")
    if kind != "object" and (props is not None or extra is not None):
        out.append(f"{where}: properties on a non-object")
    if kind == "array" and not isinstance(schema.get("items"), dict):
        out.append(f"{where}: array without one items schema")
    if "enum" in schema and not isinstance(schema["enum"], list):
        out.append(f"{where}: enum is not a list")
    for name in schema.get("required", []):
        if props is None or name not in props:
            out.append(f"{where}: required {name!r} is not a property")
    if path == "" and props is not None and props.get("metadata") not in (None, {"type": "object"}):
        out.append("metadata: the root metadata may only say type: object")
    for name, sub in (props or {}).items():
        out.extend(structural_problems(sub, f"{path}.{name}" if path else name))
    if isinstance(extra, dict):
        out.extend(structural_problems(extra, f"{path}[*]"))
    if isinstance(schema.get("items"), dict):
        out.extend(structural_problems(schema["items"], f"{path}[]"))
    return out


def preserved_paths(schema: dict[str, Any], path: str = "") -> Iterator[str]:
    if schema.get(PRESERVE):
        yield path
    for name, sub in (schema.get("properties") or {}).items():
        yield from preserved_paths(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from preserved_paths(schema["additionalProperties"], f"{path}[*]")
    if isinstance(schema.get("items"), dict):
        yield from preserved_paths(schema["items"], f"{path}[]")


@pytest.mark.parametrize("kind", sorted(CUSTOM_KINDS))
def test_committed_schemas_are_structural(kind: str) -> None:
    schema = committed_schema(kind)
    assert structural_problems(schema) == []
    text = json.dumps(schema)
    for leftover in ('"$ref"', '"$defs"', '"anyOf"', '"oneOf"', '"allOf"', '"title"', '"const"'):
        assert leftover not in text, leftover
    assert schema["required"] == ["metadata", "spec"]
    assert schema["properties"]["status"] == {
        "type": "object",
        PRESERVE: True,
        "description": "Observed state, written by the controller.",
    }


@pytest.mark.parametrize("kind", sorted(CUSTOM_KINDS))
def test_spec_is_typed_and_free_form_only_at_leaves(kind: str) -> None:
    spec = committed_schema(kind)["properties"]["spec"]
    assert PRESERVE not in spec
    assert spec["properties"]
    for path in preserved_paths(spec):
        node = spec
        # A preserved node with typed properties is a known shape that allows extra
        # keys; a bare one is a pass-through leaf. Neither may sit above typed fields
        # that its preserve flag would make pointless.
        for part in path.replace("[*]", ".[*]").replace("[]", ".[]").split("."):
            if part == "[*]":
                node = node["additionalProperties"]
            elif part == "[]":
                node = node["items"]
            elif part:
                node = node["properties"][part]
        assert node.get("type") in (None, "object"), path


@pytest.mark.parametrize("kube_version", ["1.25.0", "1.37.0"])
def test_committed_crds_pass_the_kubernetes_crd_schema(kube_version: str) -> None:
    """The CRD objects themselves, against Kubernetes' published OpenAPI for
    CustomResourceDefinition (strict: an unknown keyword anywhere in a schema fails)."""
    kv = pytest.importorskip("kubernetes_validate")
    for crd in committed_crds().values():
        kv.validate(crd, kube_version, strict=True)


def test_structural_checker_finds_problems() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/A"},
            "b": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "c": {"type": "object"},
            "d": {"type": "object", "properties": {}, "additionalProperties": False},
            "e": {"type": "array"},
            "f": {"type": "integer", INT_OR_STRING: True},
        },
        "required": ["z"],
    }
    problems = "\n".join(structural_problems(bad))
    for expected in (
        "a: keyword '$ref' not allowed",
        "a: no type",
        "b: keyword 'anyOf' not allowed",
        "c: object with no properties",
        "d: both properties and additionalProperties",
        "d: additionalProperties: false",
        "e: array without one items schema",
        "f: int-or-string with a type",
        "<root>: required 'z' is not a property",
    ):
        assert expected in problems


def test_sensor_recursion_is_cut_below_the_first_dlq_trigger() -> None:
    trigger = committed_schema("Sensor")["properties"]["spec"]["properties"]["triggers"]["items"]
    dlq = trigger["properties"]["dlqTrigger"]
    assert dlq["nullable"] is True
    assert "template" in dlq["properties"]  # the first dead-letter trigger is checked
    cut = dlq["properties"]["dlqTrigger"]
    assert cut[PRESERVE] is True and "properties" not in cut
    assert "nested too deep" in cut["description"]


def test_conversion_rules_on_a_small_model() -> None:
    class Leaf(SpecModel):
        """A leaf.

        A second paragraph that ``kubectl explain`` does not need."""

        name: str
        kind: str = Field("x", json_schema_extra={"const": "x"})

    class Node(SpecModel):
        """A node that may contain itself."""

        leaf: Leaf | None = None
        child: Node | None = None
        port: int | str | None = None
        free: dict[str, Any] = Field(default_factory=dict)
        labels: dict[str, str] = Field(default_factory=dict)
        anything: Any = None
        count: int = Field(0, gt=0)

    schema = structural_schema(Node)
    assert structural_problems(schema) == []
    props = schema["properties"]
    leaf = props["leaf"]
    assert leaf["nullable"] is True and leaf["required"] == ["name"]
    assert leaf["description"] == "A leaf."
    assert leaf["properties"]["kind"]["enum"] == ["x"]
    assert props["port"] == {INT_OR_STRING: True, "nullable": True}
    assert props["free"] == {"type": "object", PRESERVE: True}
    assert props["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert props["anything"] == {PRESERVE: True}
    assert props["count"] == {"type": "integer", "minimum": 0, "exclusiveMinimum": True}
    child = props["child"]
    assert child["properties"]["child"][PRESERVE] is True  # Node, Node, then cut


def test_a_shape_with_no_structural_form_fails_loudly() -> None:
    class Either(BaseModel):
        value: int | list[str]

    with pytest.raises(SchemaConversionError, match=r"\.value: anyOf"):
        structural_schema(Either)


# ---------------------------------------------------------------------------------------
# The same schemas through a JSON-schema validator (no fake involved).


def strict_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A committed structural schema as plain JSON Schema, strict where Kubernetes prunes.

    Pruning plus kubectl's strict field validation reject unknown fields on a cluster;
    here that is ``additionalProperties: false`` on every object that does not preserve
    unknown fields. ``nullable`` and int-or-string become JSON-Schema type lists.
    """
    out = copy.deepcopy(node)
    types: list[str] = []
    if out.pop(INT_OR_STRING, False):
        types = ["integer", "string"]
    elif "type" in out:
        types = [out["type"]]
    if out.pop("nullable", False) and types:
        types.append("null")
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if types:
        out["type"] = types if len(types) > 1 else types[0]
    if out.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if out.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    preserve = out.pop(PRESERVE, False)
    if "properties" in out:
        out["properties"] = {k: strict_json_schema(v) for k, v in out["properties"].items()}
        if not preserve:
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict_json_schema(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = strict_json_schema(out["items"])
    return out


@functools.cache
def strict_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = strict_json_schema(committed_schema(kind))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """``path: message`` for each way ``doc`` breaks its kind's committed CRD schema."""
    validator = strict_validator(doc["kind"])
    return [
        ".".join(str(p) for p in e.absolute_path) + ": " + e.message
        for e in validator.iter_errors(doc)
    ]


def custom_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in load_docs(path) if d.get("kind") in CUSTOM_KINDS]


def test_seed_and_examples_pass_the_committed_schemas() -> None:
    docs = custom_docs(seed_dir()) + custom_docs(EXAMPLES)
    assert {d["kind"] for d in docs} == CUSTOM_KINDS
    for doc in docs:
        assert schema_errors(doc) == [], doc["metadata"]["name"]


def misspelled_sensor() -> dict[str, Any]:
    (sensor,) = [d for d in custom_docs(seed_dir()) if d["kind"] == "Sensor"]
    sensor = copy.deepcopy(sensor)
    sensor["spec"]["dependecies"] = sensor["spec"].pop("dependencies")
    return sensor


def test_misspelled_field_fails_the_committed_schema() -> None:
    errors = schema_errors(misspelled_sensor())
    assert any("'dependecies' was unexpected" in e for e in errors), errors
    assert any("'dependencies' is a required property" in e for e in errors), errors


def test_nested_typos_and_wrong_types_fail_the_committed_schema() -> None:
    sensor = misspelled_sensor()
    sensor["spec"]["dependencies"] = sensor["spec"].pop("dependecies")
    trigger = sensor["spec"]["triggers"][0]
    trigger["template"]["k8s"]["operation"] = "craete"
    trigger["retryStrategy"] = {"steps": "three"}
    trigger["atLeastOnce"] = True
    trigger["dlqTrigger"] = {"template": {"name": "dlq", "log": {"intervl": 1}}}
    errors = "\n".join(schema_errors(sensor))
    assert "spec.triggers.0.template.k8s.operation: 'craete' is not one of" in errors
    assert "spec.triggers.0.retryStrategy.steps: 'three' is not of type 'integer'" in errors
    assert "spec.triggers.0.dlqTrigger.template.log: Additional properties" in errors


CORPUS_FILES = sorted(p for p in CORPUS.rglob("*.y*ml")) if CORPUS.is_dir() else []


@pytest.mark.skipif(not CORPUS_FILES, reason="argo examples not present")
def test_argo_corpus_passes_the_schemas_except_its_known_typos() -> None:
    """Argo users' manifests apply unchanged (types Triggerfish lacks are free-form
    leaves), and the corpus' own typos are rejected by the schema as by the models."""
    checked = 0
    for f in CORPUS_FILES:
        rel = f.relative_to(CORPUS).as_posix()
        for doc in custom_docs(f):
            checked += 1
            errors = schema_errors(doc)
            if rel in CORPUS_TYPOS:
                typo = CORPUS_TYPOS[rel]
                assert any(f"'{typo}' was unexpected" in e for e in errors), (rel, errors)
            else:
                assert errors == [], rel
    assert checked > 50


# ---------------------------------------------------------------------------------------
# kubectl against the fake API server (which applies a CRD's schema once it exists).


def apply_crds(kube_api: KubeApi) -> None:
    kube_api.kubectl("apply", "-f", str(CRD_DIR))
    kube_api.create_namespace(NAMESPACE)


def test_kubectl_applies_crds_then_seed_and_lists_them(kube_api: KubeApi) -> None:
    apply_crds(kube_api)
    crds = kube_api.kubectl_json("get", "crd")
    names = {c["metadata"]["name"] for c in crds["items"]}
    assert {k.crd_name for k in KINDS} <= names

    kube_api.kubectl("apply", "-n", NAMESPACE, "-f", str(seed_dir()))
    listed = kube_api.kubectl("get", "es,sn,eb", "-n", NAMESPACE, "-o", "name").stdout.split()
    expected = {
        f"{d['kind'].lower()}.argoproj.io/{d['metadata']['name']}" for d in custom_docs(seed_dir())
    }
    assert set(listed) == expected
    table = kube_api.kubectl("get", "sn", "-n", NAMESPACE).stdout
    assert table.split("\n")[0].split() == ["NAME", "READY", "AGE"]


def test_nothing_the_models_accept_is_pruned(kube_api: KubeApi) -> None:
    """What is stored equals what was applied: the schema knows every field in use."""
    apply_crds(kube_api)
    docs = custom_docs(seed_dir()) + custom_docs(EXAMPLES)
    for i, doc in enumerate(docs):
        doc = copy.deepcopy(doc)
        doc["metadata"] = {"name": f"{doc['metadata']['name']}-{i}", "namespace": NAMESPACE}
        kube_api.kubectl("apply", "-f", "-", input=json.dumps(doc))
        plural = {k.kind: k.plural for k in KINDS}[doc["kind"]]
        stored = kube_api.kubectl_json("get", plural, doc["metadata"]["name"], "-n", NAMESPACE)
        assert stored["spec"] == doc["spec"], doc["metadata"]["name"]


def test_kubectl_rejects_a_misspelled_sensor_field(kube_api: KubeApi) -> None:
    apply_crds(kube_api)
    sensor = misspelled_sensor()
    proc = kube_api.kubectl(
        "apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(sensor), check=False
    )
    assert proc.returncode != 0
    assert 'unknown field "spec.dependecies"' in proc.stderr
    listed = kube_api.kubectl("get", "sn", "-n", NAMESPACE, "-o", "name").stdout
    assert listed.strip() == ""


def test_kubectl_rejects_a_wrong_type(kube_api: KubeApi) -> None:
    apply_crds(kube_api)
    sensor = misspelled_sensor()
    sensor["spec"]["dependencies"] = sensor["spec"].pop("dependecies")
    sensor["spec"]["replicas"] = "two"
    proc = kube_api.kubectl(
        "apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(sensor), check=False
    )
    assert proc.returncode != 0
    assert "spec.replicas" in proc.stderr and "integer" in proc.stderr
