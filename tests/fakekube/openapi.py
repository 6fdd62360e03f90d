"""OpenAPI stubs: just enough for ``kubectl apply`` with its default validation.

kubectl (1.27+) validates manifests by asking the server to: it reads the OpenAPI v3
document of the object's group-version and, when the PATCH operation for that kind
lists a ``fieldValidation`` query parameter, sends ``?fieldValidation=Strict`` instead of
validating client side (which would need the protobuf OpenAPI v2 document). So each
group-version document here declares, per kind, the item path with a PATCH operation
tagged ``x-kubernetes-group-version-kind`` and that parameter, plus a permissive schema.

The PATCH request bodies deliberately omit ``application/strategic-merge-patch+json``:
kubectl then computes strategic patches for built-in kinds from its compiled-in types
(exact, what a real cluster would receive) and JSON merge patches for custom resources,
instead of from these schemas, which carry no patch-merge-key metadata.

``/openapi/v2`` answers JSON to JSON clients and 406 to protobuf-only clients (kubectl),
which then falls back to the v3 path above. Kinds registered by a CRD with a schema
publish that schema (``kubectl explain``); only those are checked (``schema.py``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.fakekube.discovery import SERVER_VERSION
from tests.fakekube.resources import ResourceRegistry, ResourceType

JSON = dict[str, Any]

PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
)
QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def gv_path(group: str, version: str) -> str:
    """The OpenAPI v3 key of a group-version: ``api/v1`` or ``apis/<group>/<version>``."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def schema_name(rt: ResourceType) -> str:
    if not rt.custom:
        prefix = {
            "": "io.k8s.api.core",
            "apps": "io.k8s.api.apps",
            "rbac.authorization.k8s.io": "io.k8s.api.rbac",
            "coordination.k8s.io": "io.k8s.api.coordination",
            "apiextensions.k8s.io": "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions",
        }.get(rt.group, "io.k8s.api." + rt.group.split(".")[0])
        return f"{prefix}.{rt.version}.{rt.kind}"
    return ".".join([*reversed(rt.group.split(".")), rt.version, rt.kind])


def _gvk(rt: ResourceType) -> JSON:
    return {"group": rt.group, "version": rt.version, "kind": rt.kind}


def _item_path(rt: ResourceType) -> str:
    base = f"/{gv_path(rt.group, rt.version)}"
    if rt.namespaced:
        return f"{base}/namespaces/{{namespace}}/{rt.plural}/{{name}}"
    return f"{base}/{rt.plural}/{{name}}"


def _ref(rt: ResourceType) -> JSON:
    return {"$ref": f"#/components/schemas/{schema_name(rt)}"}


def _operation(rt: ResourceType, action: str, verb: str, body: bool) -> JSON:
    op: JSON = {
        "operationId": f"{verb}{rt.kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(rt),
        "parameters": [
            {"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for p in QUERY_PARAMS
        ],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": _ref(rt)}}}
        },
    }
    if body:
        types = PATCH_TYPES if action == "patch" else ("application/json",)
        op["requestBody"] = {
            "content": {t: {"schema": _ref(rt)} for t in types},
            "required": True,
        }
    return op


def _schema(rt: ResourceType) -> JSON:
    if rt.schema is not None:
        return {**rt.schema, "x-kubernetes-group-version-kind": [_gvk(rt)]}
    return {
        "type": "object",
        "description": f"{rt.kind} ({rt.api_version}); fake server schema, not enforced",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
        "x-kubernetes-preserve-unknown-fields": True,
        "x-kubernetes-group-version-kind": [_gvk(rt)],
    }


def v3_group_version(registry: ResourceRegistry, group: str, version: str) -> JSON | None:
    resources = registry.in_group_version(group, version)
    if not resources:
        return None
    paths: JSON = {}
    for rt in resources:
        paths[_item_path(rt)] = {
            "get": _operation(rt, "get", "read", body=False),
            "put": _operation(rt, "put", "replace", body=True),
            "patch": _operation(rt, "patch", "patch", body=True),
            "delete": _operation(rt, "delete", "delete", body=False),
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (fake)", "version": SERVER_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {schema_name(rt): _schema(rt) for rt in resources}},
    }


def _hash(doc: JSON) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64].upper()


def v3_root(registry: ResourceRegistry) -> JSON:
    paths: JSON = {}
    for group, versions in registry.group_versions().items():
        for v in versions:
            doc = v3_group_version(registry, group, v)
            if doc is not None:
                key = gv_path(group, v)
                paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={_hash(doc)}"}
    return {"paths": paths}


def v2(registry: ResourceRegistry) -> JSON:
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes (fake)", "version": SERVER_VERSION["gitVersion"]},
        "paths": {},
        "definitions": {schema_name(rt): _schema(rt) for rt in registry},
    }
