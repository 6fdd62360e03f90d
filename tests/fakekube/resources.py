"""The kinds the fake API server serves: one table line per kind, plus CRD-registered ones.

Everything else in the fake (discovery, OpenAPI stubs, URL routing, storage rules)
reads :class:`ResourceType`, so adding a kind is adding one line to ``BUILTIN``.
Custom resources also arrive at run time: creating a ``CustomResourceDefinition``
registers its served versions (see :meth:`ResourceRegistry.register_crd`). The built-in
Argo kinds behave like pre-installed schemaless CRDs: a CRD object for one of them
replaces its definition (schema, printer columns) until that CRD is deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

NameRule = Literal["subdomain", "label", "dns1035", "path"]

ALL_VERBS: tuple[str, ...] = (
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)
STATUS_VERBS: tuple[str, ...] = ("get", "patch", "update")
COMMON_FIELDS: tuple[str, ...] = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True)
class ResourceType:
    """One served resource: how it is addressed and which storage rules apply to it."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    status: bool = False
    """Has a ``/status`` subresource: main writes keep ``.status``, status writes keep the rest."""
    custom: bool = False
    """Served like a custom resource: strategic merge patch is refused (415), list items
    keep ``apiVersion``/``kind`` (built-in lists drop them, as the real server does)."""
    generation: bool = False
    """``metadata.generation`` starts at 1, bumped when anything but metadata/status changes."""
    returns_object: bool = False
    """DELETE answers with the object (pods, namespaces) instead of a ``Status``."""
    name_rule: NameRule = "subdomain"
    fields: tuple[str, ...] = ()
    """Field-selector paths accepted beyond ``metadata.name``/``metadata.namespace``."""
    categories: tuple[str, ...] = ()
    singular: str = ""
    builtin: bool = True
    """False for kinds registered by a CRD object (they go away with it, and on reset)."""
    verbs: tuple[str, ...] = ALL_VERBS
    printer_columns: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    schema: dict[str, Any] | None = field(default=None, compare=False)
    """A CRD version's ``openAPIV3Schema``: pruning, defaults and checks (``schema.py``)."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> tuple[str, str]:
        return (self.group, self.version)

    @property
    def key(self) -> tuple[str, str]:
        """Storage key: objects are shared by every served version of a resource."""
        return (self.group, self.plural)

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def field_selectors(self) -> tuple[str, ...]:
        return COMMON_FIELDS + self.fields

    @property
    def qualified(self) -> str:
        """``plural.group`` as in error messages (``deployments.apps``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _r(api_version: str, kind: str, plural: str, short: str = "", /, **kw: Any) -> ResourceType:
    group, _, version = api_version.rpartition("/")
    return ResourceType(group, version, kind, plural, short_names=tuple(short.split()), **kw)


C = {"namespaced": False}  # cluster-scoped
S = {"status": True}
CR = {"custom": True, "generation": True}
POD_FIELDS = (
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)
EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)
ALL = ("all",)

# fmt: off
BUILTIN: tuple[ResourceType, ...] = (
    _r("v1", "Namespace", "namespaces", "ns", **C, **S, returns_object=True, name_rule="label",
       fields=("status.phase",)),
    _r("v1", "ConfigMap", "configmaps", "cm"),
    _r("v1", "Secret", "secrets", fields=("type",)),
    _r("v1", "Service", "services", "svc", **S, name_rule="dns1035", categories=ALL),
    _r("v1", "ServiceAccount", "serviceaccounts", "sa"),
    _r("v1", "Pod", "pods", "po", **S, returns_object=True, fields=POD_FIELDS, categories=ALL),
    _r("v1", "Event", "events", "ev", fields=EVENT_FIELDS),
    _r("apps/v1", "Deployment", "deployments", "deploy", **S, generation=True, categories=ALL),
    _r("apps/v1", "StatefulSet", "statefulsets", "sts", **S, generation=True, categories=ALL),
    _r("rbac.authorization.k8s.io/v1", "Role", "roles", name_rule="path"),
    _r("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", name_rule="path"),
    _r("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", **C, name_rule="path"),
    _r("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", **C,
       name_rule="path"),
    _r("coordination.k8s.io/v1", "Lease", "leases"),
    _r("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions",
       "crd crds", **C, **S, generation=True),
    _r("argoproj.io/v1alpha1", "Workflow", "workflows", "wf", **CR),
    _r("argoproj.io/v1alpha1", "WorkflowTemplate", "workflowtemplates", "wftmpl", **CR),
    _r("argoproj.io/v1alpha1", "ClusterWorkflowTemplate", "clusterworkflowtemplates",
       "clusterwftmpl cwft", **C, **CR),
    _r("argoproj.io/v1alpha1", "CronWorkflow", "cronworkflows", "cwf cronwf", **CR),
    _r("argoproj.io/v1alpha1", "EventSource", "eventsources", "es", **S, **CR),
    _r("argoproj.io/v1alpha1", "Sensor", "sensors", "sn", **S, **CR),
    _r("argoproj.io/v1alpha1", "EventBus", "eventbus", "eb", **S, **CR, singular="eventbus"),
)
# fmt: on


class ResourceRegistry:
    """The served resources, by ``(group, version, plural)``; CRD objects add and remove some."""

    def __init__(self, builtin: Iterable[ResourceType] = BUILTIN) -> None:
        self._builtin = tuple(builtin)
        self._by_gvr: dict[tuple[str, str, str], ResourceType] = {}
        self.reset()

    def reset(self) -> None:
        """Forget CRD-registered kinds."""
        self._by_gvr = {(r.group, r.version, r.plural): r for r in self._builtin}

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._by_gvr.values()))

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_gvr.get((group, version, plural))

    def group_versions(self) -> dict[str, list[str]]:
        """``{group: [versions...]}`` in registration order; the first version is preferred."""
        out: dict[str, list[str]] = {}
        for r in self._by_gvr.values():
            versions = out.setdefault(r.group, [])
            if r.version not in versions:
                versions.append(r.version)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [r for r in self._by_gvr.values() if r.group_version == (group, version)]

    def by_key(self, key: tuple[str, str]) -> list[ResourceType]:
        return [r for r in self._by_gvr.values() if r.key == key]

    def register_crd(self, crd: dict[str, Any]) -> None:
        """Serve the versions a CRD object declares (never over a built-in core kind)."""
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group, plural = spec.get("group", ""), names.get("plural", "")
        if any(r.builtin and not r.custom for r in self.by_key((group, plural))):
            return
        for gvr in [gvr for gvr, r in self._by_gvr.items() if r.key == (group, plural)]:
            del self._by_gvr[gvr]
        for v in spec.get("versions") or []:
            if not v.get("served", True):
                continue
            columns = tuple(v.get("additionalPrinterColumns") or ())
            rt = ResourceType(
                group=group,
                version=v["name"],
                kind=names.get("kind", ""),
                plural=plural,
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                status="status" in (v.get("subresources") or {}),
                custom=True,
                generation=True,
                categories=tuple(names.get("categories") or ()),
                singular=names.get("singular", ""),
                builtin=False,
                printer_columns=columns,
                schema=(v.get("schema") or {}).get("openAPIV3Schema"),
            )
            self._by_gvr[(group, rt.version, plural)] = rt

    def unregister_crd(self, crd: dict[str, Any]) -> bool:
        """Stop serving a CRD's resource (restoring a built-in definition, if there was one).

        True when the CRD had registered it: its objects are then to be deleted.
        """
        spec = crd.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        gone = [gvr for gvr, r in self._by_gvr.items() if r.key == key and not r.builtin]
        for gvr in gone:
            del self._by_gvr[gvr]
        for r in self._builtin:
            if gone and r.key == key:
                self._by_gvr[(r.group, r.version, r.plural)] = r
        return bool(gone)
