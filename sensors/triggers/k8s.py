"""The ``k8s`` trigger: create, update, patch or delete any Kubernetes object.

Fields (Argo's ``StandardK8STrigger``): ``source`` (``resource`` inline object,
``inline`` YAML text, ``file``, ``url`` or ``configmap``: see
:mod:`sensors.triggers.sources`), ``operation`` (create | update | patch | delete, default
create), ``parameters`` (applied to the object after the template-level ones),
``patchStrategy`` (merge | json | strategic | apply media types), ``liveObject``.

Semantics:
* The namespace defaults to the Sensor's unless the object names one.
* ``liveObject: true`` (``update`` only, as in Argo; refused at load with any other
  operation): the source only identifies the object (``apiVersion``, ``kind``,
  ``metadata.name`` and, unless the kind is cluster-scoped, ``metadata.namespace``);
  each firing reads the live object from the API and applies the parameters to it, so
  the update changes only what the parameters set. The update carries the live
  object's ``resourceVersion``: a concurrent change makes it a 409 Conflict, retried
  with a fresh read. A missing name or namespace, or no such object, is a
  PermanentError.
* Created objects carry the labels ``events.argoproj.io/sensor``, ``/trigger`` and
  ``/action-timestamp``.
* Idempotent creates (a deliberate fix over Argo): with ``generateName`` the name is the
  prefix plus a short hash of (sensor, trigger, event ids); the full key is stored in an
  annotation of every created object. A redelivered event therefore hits 409
  AlreadyExists; when the existing object carries the same key that counts as success,
  otherwise (another firing's key or none: a real name clash) it is a PermanentError.
* Failure: API 409 Conflict / 429 / 5xx / network → TransientError (retried); other 4xx
  → PermanentError (dead-lettered); a missing parameter key → ParameterError.
"""

from __future__ import annotations

import copy
import time
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from app.adapters.kube import AlreadyExists
from app.kernel.errors import PermanentError
from app.kernel.spec import SpecModel
from sensors.parameters import apply_parameters, compile_parameters
from sensors.spec import TriggerParameter
from sensors.triggers.base import Invocation, Trigger, TriggerContext, TriggerResult
from sensors.triggers.policy import wait_for_labels
from sensors.triggers.sources import ArtifactLocation, ResourceSource

K8sOperation = Literal["create", "update", "patch", "delete"]

PATCH_STRATEGIES: frozenset[str] = frozenset(
    {
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    }
)


class K8sTriggerConfig(SpecModel):
    """``template.k8s``: create, update, patch or delete one Kubernetes object.

    ``operation`` defaults to ``create`` (an empty string means the same, as in Argo);
    ``parameters`` are applied to the object after the template-level ones;
    ``patchStrategy`` is one of the four Kubernetes patch media types (default merge);
    ``liveObject`` (update only) fetches the live object instead of the template.
    """

    source: ArtifactLocation
    operation: K8sOperation = "create"
    parameters: list[TriggerParameter] = Field(default_factory=list)
    patch_strategy: str = ""
    live_object: bool = False

    @field_validator("operation", mode="before")
    @classmethod
    def _empty_means_create(cls, v: object) -> object:
        return "create" if v == "" else v

    @model_validator(mode="after")
    def _live_object_updates(self) -> K8sTriggerConfig:
        if self.live_object and self.operation != "update":
            raise ValueError(
                f"liveObject is only valid for operation update, not {self.operation!r}"
            )
        return self

    @field_validator("patch_strategy")
    @classmethod
    def _known_patch_strategy(cls, v: str) -> str:
        if v and v not in PATCH_STRATEGIES:
            raise ValueError(
                f"unknown patch strategy {v!r} (one of {', '.join(sorted(PATCH_STRATEGIES))})"
            )
        return v


LABEL_SENSOR = "events.argoproj.io/sensor"
LABEL_TRIGGER = "events.argoproj.io/trigger"
LABEL_ACTION_TS = "events.argoproj.io/action-timestamp"
ANNOTATION_KEY = "events.triggerfish.io/trigger-key"
ANNOTATION_TRACE_ID = "events.triggerfish.io/trace-id"
"""The W3C trace id of the firing that created the object (OpenTelemetry)."""
NAME_HASH_CHARS = 10
CLUSTER_SCOPED_KINDS: frozenset[str] = frozenset(
    {"Namespace", "Node", "PersistentVolume", "ClusterRole", "ClusterRoleBinding"}
)
"""The kinds Argo's liveObject lookup reads without a namespace (its ``clusterResources``)."""


def load_resource(config: K8sTriggerConfig, read_files: bool) -> ResourceSource:
    """The object template's source: ``resource``, ``inline``, ``file``, ``url`` or
    ``configmap`` (see :mod:`sensors.triggers.sources`)."""
    return ResourceSource(config.source, where="k8s.source", read_files=read_files)


class K8sTrigger(Trigger):
    """Applies one Kubernetes object per firing (see the module docstring)."""

    type_name: ClassVar[str] = "k8s"
    config_model: ClassVar[type[SpecModel]] = K8sTriggerConfig

    def __init__(self, config: K8sTriggerConfig, ctx: TriggerContext) -> None:
        super().__init__(config, ctx)
        self.source = load_resource(config, ctx.read_files)
        self.operation = (config.operation or "create").lower()
        self.params = compile_parameters(config.parameters, where="k8s.parameters")

    async def execute(self, inv: Invocation) -> TriggerResult:
        resource = await self.source.load(self.ctx, inv.namespace)
        if self.config.live_object and self.operation == "update":
            resource = await self._live(resource)
        obj, records = apply_parameters(resource, self.params, inv.events)
        obj = copy.deepcopy(obj) if obj is resource else obj
        meta = obj.setdefault("metadata", {})
        namespace = meta.get("namespace") or inv.namespace
        meta["namespace"] = namespace
        labels = meta.setdefault("labels", {}) or {}
        meta["labels"] = labels
        labels[LABEL_SENSOR] = inv.sensor_name
        labels[LABEL_TRIGGER] = inv.trigger_name
        labels[LABEL_ACTION_TS] = str(int(time.time() * 1000))
        api_version = str(obj.get("apiVersion", ""))
        kind = str(obj.get("kind", ""))
        kube = self.ctx.kube

        if self.operation == "create":
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta.pop("generateName") + inv.key[:NAME_HASH_CHARS]
            meta["annotations"] = meta.get("annotations") or {}
            meta["annotations"][ANNOTATION_KEY] = inv.key
            if inv.trace_id:
                meta["annotations"][ANNOTATION_TRACE_ID] = inv.trace_id
            try:
                created = await kube.create(obj, namespace)
            except AlreadyExists:
                live = await kube.get(api_version, kind, meta.get("name", ""), namespace)
                live_key = ((live or {}).get("metadata", {}).get("annotations") or {}).get(
                    ANNOTATION_KEY
                )
                if live is not None and live_key == inv.key:
                    return TriggerResult(
                        "already-exists",
                        _ref(live, kind, namespace),
                        records,
                    )
                raise PermanentError(
                    f"{kind} {namespace}/{meta.get('name')} exists but was not created "
                    "for these events (name clash)"
                ) from None
            return await self._with_policy(
                "created", created, kind, namespace, records, api_version
            )
        if self.operation == "update":
            updated = await kube.update(obj, namespace)
            return await self._with_policy(
                "updated", updated, kind, namespace, records, api_version
            )
        if self.operation == "patch":
            strategy = _patch_type(self.config.patch_strategy)
            patched = await kube.patch(obj, namespace, strategy)
            return await self._with_policy(
                "patched", patched, kind, namespace, records, api_version
            )
        if self.operation == "delete":
            name = str(meta.get("name") or "")
            if not name:
                # Without a name the API call would address the whole collection.
                raise PermanentError(f"k8s.source: delete needs metadata.name ({kind})")
            await kube.delete(api_version, kind, name, namespace)
            return TriggerResult("deleted", _ref(obj, kind, namespace), records)
        raise PermanentError(f"unknown k8s operation {self.operation!r}")

    async def _live(self, resource: dict[str, Any]) -> dict[str, Any]:
        """The live object the source identifies (``liveObject``), read from the API."""
        meta = resource.get("metadata") or {}
        api_version = str(resource.get("apiVersion", ""))
        kind = str(resource.get("kind", ""))
        name = str(meta.get("name") or "")
        namespace = str(meta.get("namespace") or "")
        if not name:
            raise PermanentError(
                f"k8s.source: liveObject needs metadata.name to fetch the live {kind}"
            )
        if not namespace and kind not in CLUSTER_SCOPED_KINDS:
            raise PermanentError(
                f"k8s.source: liveObject needs metadata.namespace to fetch the live {kind}"
            )
        live = await self.ctx.kube.get(api_version, kind, name, namespace)
        if live is None:
            where = f"{namespace}/{name}" if namespace else name
            raise PermanentError(f"k8s.liveObject: {kind} {where} not found")
        return live

    async def _with_policy(
        self,
        action: str,
        obj: dict[str, Any],
        kind: str,
        namespace: str,
        records: list[dict[str, Any]],
        fallback_api_version: str = "",
    ) -> TriggerResult:
        """The result, after ``policy.k8s`` (when set) saw the object's labels."""
        ref = _ref(obj, kind, namespace)
        policy = self.ctx.policy.k8s if self.ctx.policy is not None else None
        if policy is not None:
            api_version = str(obj.get("apiVersion", "")) or fallback_api_version
            ref.update(await wait_for_labels(self.ctx.kube, ref, api_version, policy))
        return TriggerResult(action, ref, records)


def _patch_type(strategy: str | None) -> str:
    s = (strategy or "").lower()
    if "json-patch" in s or s == "json":
        return "json"
    if "strategic" in s:
        return "strategic"
    if "apply" in s:
        return "apply"
    return "merge"


def _ref(obj: dict[str, Any], kind: str, namespace: str) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {
        "kind": kind,
        "namespace": meta.get("namespace", namespace),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
    }
