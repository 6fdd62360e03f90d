"""API discovery documents built from the resource registry.

Both forms clients use are served: the legacy per-group-version documents (``/api``,
``/apis``, ``/api/v1``, ``/apis/<g>/<v>``; the Python client's ``DynamicClient`` reads
these) and aggregated discovery (``apidiscovery.k8s.io/v2`` and ``v2beta1``
``APIGroupDiscoveryList``, which kubectl asks for on ``/api`` and ``/apis`` and takes
when the response's Content-Type says so; without it kubectl falls back to legacy).
"""

from __future__ import annotations

from typing import Any

from tests.fakekube.resources import STATUS_VERBS, ResourceRegistry, ResourceType

JSON = dict[str, Any]

SERVER_VERSION: JSON = {
    "major": "1",
    "minor": "37",
    "emulationMajor": "1",
    "emulationMinor": "37",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "36",
    "gitVersion": "v1.37.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.26.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

AGGREGATED_GROUP = "apidiscovery.k8s.io"
AGGREGATED_VERSIONS = ("v2", "v2beta1")


def aggregated_version(accept: str) -> str | None:
    """The aggregated discovery version the ``Accept`` header prefers, if any."""
    for media_range in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in media_range.split(";")[1:] if "=" in p)
        if (
            params.get("g") == AGGREGATED_GROUP
            and params.get("as") == "APIGroupDiscoveryList"
            and params.get("v") in AGGREGATED_VERSIONS
        ):
            return params["v"]
    return None


def aggregated_content_type(version: str) -> str:
    return f"application/json;g={AGGREGATED_GROUP};v={version};as=APIGroupDiscoveryList"


def api_versions(server_address: str) -> JSON:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _gv(group: str, version: str) -> JSON:
    return {"groupVersion": f"{group}/{version}", "version": version}


def api_group(registry: ResourceRegistry, group: str) -> JSON | None:
    versions = registry.group_versions().get(group)
    if not group or not versions:
        return None
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [_gv(group, v) for v in versions],
        "preferredVersion": _gv(group, versions[0]),
    }


def api_group_list(registry: ResourceRegistry) -> JSON:
    groups = [api_group(registry, g) for g in registry.group_versions() if g]
    for g in groups:
        if g:
            del g["kind"], g["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _resource_entry(rt: ResourceType) -> JSON:
    entry: JSON = {
        "name": rt.plural,
        "singularName": rt.singular_name,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    return entry


def resource_list(registry: ResourceRegistry, group: str, version: str) -> JSON | None:
    resources = registry.in_group_version(group, version)
    if not resources:
        return None
    entries: list[JSON] = []
    for rt in resources:
        entries.append(_resource_entry(rt))
        if rt.status:
            entries.append(
                {
                    "name": f"{rt.plural}/status",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": list(STATUS_VERBS),
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": entries,
    }


def _aggregated_resource(rt: ResourceType) -> JSON:
    kind = {"group": rt.group, "version": rt.version, "kind": rt.kind}
    entry: JSON = {
        "resource": rt.plural,
        "responseKind": kind,
        "scope": "Namespaced" if rt.namespaced else "Cluster",
        "singularResource": rt.singular_name,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    if rt.status:
        entry["subresources"] = [
            {"subresource": "status", "responseKind": kind, "verbs": list(STATUS_VERBS)}
        ]
    return entry


def aggregated(registry: ResourceRegistry, *, core: bool, version: str) -> JSON:
    """``/api`` (``core=True``) or ``/apis`` as an ``APIGroupDiscoveryList``."""
    items: list[JSON] = []
    for group, versions in registry.group_versions().items():
        if bool(group) == core:
            continue
        items.append(
            {
                "metadata": {"name": group} if group else {},
                "versions": [
                    {
                        "version": v,
                        "resources": [
                            _aggregated_resource(rt) for rt in registry.in_group_version(group, v)
                        ],
                        "freshness": "Current",
                    }
                    for v in versions
                ],
            }
        )
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": f"{AGGREGATED_GROUP}/{version}",
        "metadata": {},
        "items": items,
    }
