"""The ``argoWorkflow`` trigger: submit and control Argo Workflows through the
Kubernetes API (Argo ``ArgoWorkflowTrigger``; never the ``argo`` CLI).

Fields (:class:`~sensors.triggers.argo_workflow.ArgoWorkflowTriggerConfig`):
``source`` (resource | inline | file | url | configmap, see
:mod:`sensors.triggers.sources`), ``operation``, ``parameters`` (applied to the source
object), ``args`` (the ``argo submit`` flags that map to the Workflow object, read at
load; any other is refused then, see :func:`~sensors.triggers.argo_workflow.parse_args`).
The namespace is the source object's, else the Sensor's.

Operations, as Argo Workflows performs them:

* ``submit`` (default): create the source object, which must be an
  ``argoproj.io/v1alpha1`` ``Workflow``.
* ``submit-from``: the source names a ``WorkflowTemplate``, ``ClusterWorkflowTemplate``
  or ``CronWorkflow`` (``kind`` and ``metadata.name``). For a template, create a Workflow
  with ``generateName: <name>-``, ``spec.workflowTemplateRef: {name}`` (plus
  ``clusterScope: true`` for a cluster template) and the label
  ``workflows.argoproj.io/workflow-template`` (``/cluster-workflow-template``); the
  template must exist. For a CronWorkflow, read it and create a Workflow from its
  ``spec.workflowSpec`` with its ``workflowMetadata``, the label
  ``workflows.argoproj.io/cron-workflow``, the ``scheduled-time`` annotation and an
  owner reference to the CronWorkflow.
* ``resubmit``: create a new Workflow from an existing one's spec (not memoized:
  ``generateName`` kept or ``<name>-``, shutdown and a zero deadline cleared, user
  labels and annotations carried over, label
  ``workflows.argoproj.io/resubmitted-from-workflow``).
* ``suspend``: merge-patch ``spec.suspend: true`` (a completed Workflow is an error).
* ``resume``: merge-patch ``spec.suspend`` away and mark running ``Suspend`` nodes
  Succeeded (supplied output parameters take their defaults), guarded by the
  Workflow's ``resourceVersion``.
* ``terminate`` / ``stop``: merge-patch ``spec.shutdown: Terminate`` / ``Stop`` (a
  completed Workflow is an error).
* ``retry``: what ``argo retry`` has the Argo server do (see
  :mod:`sensors.triggers.argo_retry`): the failed part of a ``Failed``/``Error``
  Workflow is reset, its pods deleted, and the Workflow updated with its
  ``resourceVersion`` (a concurrent change: 409, retried). ``args``:
  ``--restart-successful``, ``--node-field-selector``, ``-p``. The firing key is
  stored in the ``events.triggerfish.io/retried-by`` annotation, so a redelivered
  firing that finds the Workflow retried by it is a success.

Created Workflows carry the labels ``events.argoproj.io/sensor``, ``/trigger`` and
``/action-timestamp``. Creates are idempotent: a ``generateName`` becomes the prefix
plus the first characters of the firing key, and the full key is stored in an
annotation; a redelivered firing hits 409 AlreadyExists and counts as success when the
existing Workflow carries the same key (another key: a name clash, PermanentError).
Control operations are idempotent too: a Workflow already suspended, not suspended, or
already shut down the same way is a success without a patch.

Failures: the source object has the wrong kind or no name, the Workflow or template
does not exist, the Workflow is completed, a node status offloaded to a database →
:class:`~app.kernel.errors.PermanentError` (dead-lettered). API 409 Conflict / 429 / 5xx /
network → :class:`~app.kernel.errors.TransientError` (retried); other 4xx → PermanentError.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from app.adapters.kube import AlreadyExists, NotFound
from app.kernel.errors import PermanentError
from app.kernel.spec import SpecModel
from sensors.parameters import apply_parameters, compile_parameters
from sensors.spec import TriggerParameter
from sensors.triggers.argo_retry import FieldSelector, formulate_retry
from sensors.triggers.base import Invocation, Trigger, TriggerContext, TriggerResult
from sensors.triggers.k8s import (
    ANNOTATION_KEY,
    ANNOTATION_TRACE_ID,
    LABEL_ACTION_TS,
    LABEL_SENSOR,
    LABEL_TRIGGER,
    NAME_HASH_CHARS,
)
from sensors.triggers.policy import wait_for_labels
from sensors.triggers.sources import ArtifactLocation, ResourceSource

ArgoWorkflowOperation = Literal[
    "submit", "submit-from", "suspend", "resubmit", "retry", "resume", "terminate", "stop"
]
"""Every operation Argo accepts (which ones run is declared in :mod:`app.compose.support`)."""


@dataclass(frozen=True)
class SubmitOptions:
    """What ``args`` map to, as the ``argo submit`` flags of the same names do.

    ``parameters`` (``-p``/``--parameter NAME=VALUE``, repeatable) replace the
    Workflow's ``spec.arguments.parameters`` of the same names and come first;
    ``entrypoint`` (``--entrypoint``), ``service_account`` (``--serviceaccount``) and
    ``priority`` (``--priority``) set those spec fields; ``labels`` (``-l``/``--labels
    k=v,k2=v2``) are added to the metadata; ``instance_id`` (``--instanceid``) sets the
    controller instance label; ``generate_name`` (``--generate-name``) and ``name``
    (``--name``) set the metadata names. For ``retry``: ``restart_successful``
    (``--restart-successful``, a switch) and ``node_field_selector``
    (``--node-field-selector``).
    """

    parameters: tuple[tuple[str, str], ...] = ()
    entrypoint: str = ""
    service_account: str = ""
    priority: int | None = None
    labels: tuple[tuple[str, str], ...] = ()
    instance_id: str = ""
    generate_name: str = ""
    name: str = ""
    restart_successful: bool = False
    node_field_selector: str = ""


_FLAGS: dict[str, str] = {
    "-p": "parameters",
    "--parameter": "parameters",
    "--entrypoint": "entrypoint",
    "--serviceaccount": "service_account",
    "--priority": "priority",
    "-l": "labels",
    "--labels": "labels",
    "--instanceid": "instance_id",
    "--generate-name": "generate_name",
    "--name": "name",
    "--restart-successful": "restart_successful",
    "--node-field-selector": "node_field_selector",
}
"""Flag → :class:`SubmitOptions` field."""

_RETRY_FLAGS = frozenset({"--restart-successful", "--node-field-selector"})
_SUBMIT_FLAGS = frozenset(_FLAGS) - _RETRY_FLAGS

_ALLOWED: dict[str, frozenset[str]] = {
    "submit": _SUBMIT_FLAGS,
    "submit-from": _SUBMIT_FLAGS,
    "resubmit": frozenset({"-p", "--parameter"}),
    "retry": frozenset({"-p", "--parameter"}) | _RETRY_FLAGS,
}
_SWITCHES = frozenset({"--restart-successful"})
"""Flags that take no value (``--flag`` or ``--flag=true|false``)."""


def _pair(flag: str, item: str) -> tuple[str, str]:
    name, sep, val = item.partition("=")
    if not sep or not name:
        raise ValueError(f"args: {flag} expects NAME=VALUE, got {item!r}")
    return name, val


def parse_args(args: list[str], operation: str) -> SubmitOptions:
    """Read ``args`` for ``operation``; ``ValueError`` naming the first argument that
    has no equivalent (``... is not supported``) or a malformed value.

    Accepted forms: ``--flag value``, ``--flag=value``, ``-p value``, ``-pvalue``.
    """
    allowed = _ALLOWED.get(operation, frozenset())
    strings: dict[str, str] = {}
    params: list[tuple[str, str]] = []
    labels: list[tuple[str, str]] = []
    priority: int | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg[:2] in ("-p", "-l") and len(arg) > 2:  # -pNAME=VALUE, -p=NAME=VALUE
            flag, eq, value = arg[:2], "=", arg[2:].removeprefix("=")
        else:
            flag, eq, value = arg.partition("=")
        if flag not in allowed:
            supported = ", ".join(sorted(allowed)) or "none"
            raise ValueError(
                f"args: {flag!r} is not supported for operation {operation} (Triggerfish "
                f"uses the Kubernetes API, not the argo CLI; args it maps: {supported})"
            )
        if flag in _SWITCHES:
            if eq and value.lower() not in ("true", "false"):
                raise ValueError(f"args: {flag} expects true or false, got {value!r}")
            strings[_FLAGS[flag]] = "true" if not eq or value.lower() == "true" else ""
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"args: {flag} needs a value")
            i += 1
            value = args[i]
        option = _FLAGS[flag]
        if option == "parameters":
            params.append(_pair(flag, value))
        elif option == "labels":
            labels.extend(_pair(flag, item) for item in value.split(","))
        elif option == "priority":
            try:
                priority = int(value)
            except ValueError:
                raise ValueError(f"args: {flag} expects an integer, got {value!r}") from None
        else:
            if option == "node_field_selector":
                try:
                    FieldSelector.parse(value)
                except ValueError as e:
                    raise ValueError(f"args: {flag}: {e}") from None
            strings[option] = value
        i += 1
    return SubmitOptions(
        parameters=tuple(params),
        entrypoint=strings.get("entrypoint", ""),
        service_account=strings.get("service_account", ""),
        priority=priority,
        labels=tuple(labels),
        instance_id=strings.get("instance_id", ""),
        generate_name=strings.get("generate_name", ""),
        name=strings.get("name", ""),
        restart_successful=bool(strings.get("restart_successful")),
        node_field_selector=strings.get("node_field_selector", ""),
    )


class ArgoWorkflowTriggerConfig(SpecModel):
    """``template.argoWorkflow``: act on an Argo Workflow through the Kubernetes API.

    ``source`` (as for ``k8s``: the Workflow to submit, or for the other operations an
    object whose ``metadata.name`` names the Workflow / WorkflowTemplate /
    ClusterWorkflowTemplate / CronWorkflow), ``operation`` (default ``submit``; an
    empty string means the same), ``parameters`` (applied to the source object),
    ``args`` (see :func:`parse_args`).
    """

    source: ArtifactLocation
    operation: ArgoWorkflowOperation = "submit"
    parameters: list[TriggerParameter] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)

    @field_validator("operation", mode="before")
    @classmethod
    def _empty_means_submit(cls, v: object) -> object:
        return "submit" if v in ("", None) else v

    @model_validator(mode="after")
    def _args_map(self) -> ArgoWorkflowTriggerConfig:
        parse_args(self.args, self.operation)
        return self

    @property
    def submit_options(self) -> SubmitOptions:
        """``args`` read for ``operation`` (validated at load)."""
        return parse_args(self.args, self.operation)


API_VERSION = "argoproj.io/v1alpha1"
WORKFLOW = "Workflow"
LABEL_WORKFLOW_TEMPLATE = "workflows.argoproj.io/workflow-template"
LABEL_CLUSTER_WORKFLOW_TEMPLATE = "workflows.argoproj.io/cluster-workflow-template"
LABEL_CRON_WORKFLOW = "workflows.argoproj.io/cron-workflow"
LABEL_CONTROLLER_INSTANCE = "workflows.argoproj.io/controller-instanceid"
LABEL_COMPLETED = "workflows.argoproj.io/completed"
LABEL_RESUBMITTED_FROM = "workflows.argoproj.io/resubmitted-from-workflow"
ANNOTATION_SCHEDULED_TIME = "workflows.argoproj.io/scheduled-time"
COMPLETED_PHASES = frozenset({"Succeeded", "Failed", "Error"})
ANNOTATION_RETRIED_BY = "events.triggerfish.io/retried-by"
"""The firing key of the ``retry`` that last reopened the Workflow (redelivery check)."""

_NOT_CARRIED_ON_RESUBMIT = frozenset(
    {
        "workflows.argoproj.io/creator",
        "workflows.argoproj.io/creator-email",
        "workflows.argoproj.io/creator-preferred-username",
        "workflows.argoproj.io/phase",
        LABEL_COMPLETED,
        "workflows.argoproj.io/workflow-archiving-status",
    }
)
_SUBMIT_FROM_KINDS = {
    "workflowtemplate": "WorkflowTemplate",
    "clusterworkflowtemplate": "ClusterWorkflowTemplate",
    "cronworkflow": "CronWorkflow",
}
_SHUTDOWN = {"terminate": "Terminate", "stop": "Stop"}


class ArgoWorkflowTrigger(Trigger):
    """Submits or controls one Argo Workflow per firing (see the module docstring)."""

    type_name: ClassVar[str] = "argoWorkflow"
    config_model: ClassVar[type[SpecModel]] = ArgoWorkflowTriggerConfig

    def __init__(self, config: ArgoWorkflowTriggerConfig, ctx: TriggerContext) -> None:
        super().__init__(config, ctx)
        self.operation: str = config.operation
        self.options: SubmitOptions = config.submit_options
        self.source = ResourceSource(
            config.source, where="argoWorkflow.source", read_files=ctx.read_files
        )
        self.params = compile_parameters(config.parameters, where="argoWorkflow.parameters")
        if self.source.static is not None and not self.params:
            self._check(self.source.static)  # a wrong kind fails when the trigger is built

    # -- per firing ---------------------------------------------------------------------
    async def execute(self, inv: Invocation) -> TriggerResult:
        resource = await self.source.load(self.ctx, inv.namespace)
        obj, records = apply_parameters(resource, self.params, inv.events)
        kind, name = self._check(obj)
        namespace = str((obj.get("metadata") or {}).get("namespace") or inv.namespace)
        op = self.operation
        if op == "submit":
            wf = obj
            self._prepare(wf, inv)
            return await self._create(wf, namespace, inv, records)
        if op == "submit-from":
            wf = await self._from(kind, name, namespace)
            self._prepare(wf, inv)
            return await self._create(wf, namespace, inv, records)
        live = await self._workflow(name, namespace)
        if op == "resubmit":
            wf = _resubmitted(live, name)
            self._prepare(wf, inv)
            return await self._create(wf, namespace, inv, records)
        if op == "suspend":
            return await self._suspend(live, namespace, records)
        if op == "resume":
            return await self._resume(live, namespace, records)
        if op in _SHUTDOWN:
            return await self._shutdown(live, namespace, _SHUTDOWN[op], records)
        if op == "retry":
            return await self._retry(live, namespace, inv, records)
        raise PermanentError(f"argoWorkflow operation {op!r} is not supported")

    def _check(self, obj: dict[str, Any]) -> tuple[str, str]:
        """The object's kind and name, checked for the operation."""
        meta = obj.get("metadata") or {}
        kind = str(obj.get("kind", ""))
        name = str(meta.get("name") or "")
        where = "argoWorkflow.source"
        if self.operation == "submit":
            if obj.get("apiVersion") != API_VERSION or kind != WORKFLOW:
                raise PermanentError(
                    f"{where}: submit needs an {API_VERSION} Workflow, "
                    f"got {obj.get('apiVersion')!r} {kind!r}"
                )
            opts = self.options
            if not (name or meta.get("generateName") or opts.name or opts.generate_name):
                raise PermanentError(f"{where}: neither name nor generateName is given")
            return kind, name
        if not name:
            raise PermanentError(f"{where}: operation {self.operation} needs metadata.name")
        if self.operation == "submit-from":
            canonical = _SUBMIT_FROM_KINDS.get(kind.lower())
            if canonical is None:
                raise PermanentError(
                    f"{where}: submit-from needs a WorkflowTemplate, ClusterWorkflowTemplate "
                    f"or CronWorkflow, got kind {kind!r}"
                )
            return canonical, name
        return kind, name

    # -- building Workflows -------------------------------------------------------------
    def _prepare(self, wf: dict[str, Any], inv: Invocation) -> None:
        """Apply ``args``, the sensor labels, the firing key and the idempotent name."""
        apply_submit_options(wf, self.options)
        meta = wf.setdefault("metadata", {})
        labels = meta.get("labels") or {}
        meta["labels"] = labels
        labels[LABEL_SENSOR] = inv.sensor_name
        labels[LABEL_TRIGGER] = inv.trigger_name
        labels[LABEL_ACTION_TS] = str(int(time.time() * 1000))
        annotations = meta.get("annotations") or {}
        meta["annotations"] = annotations
        annotations[ANNOTATION_KEY] = inv.key
        if inv.trace_id:
            annotations[ANNOTATION_TRACE_ID] = inv.trace_id
        if not meta.get("name"):
            prefix = meta.pop("generateName", "")
            if not prefix:
                raise PermanentError("argoWorkflow: neither name nor generateName is given")
            meta["name"] = prefix + inv.key[:NAME_HASH_CHARS]

    async def _from(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        """The Workflow ``argo submit --from <kind>/<name>`` would create."""
        kube = self.ctx.kube
        if kind == "CronWorkflow":
            cron = await kube.get(API_VERSION, kind, name, namespace)
            if cron is None:
                raise PermanentError(f"CronWorkflow {namespace}/{name} not found")
            return _from_cron(cron, name)
        cluster = kind == "ClusterWorkflowTemplate"
        template = await kube.get(API_VERSION, kind, name, "" if cluster else namespace)
        if template is None:
            shown = name if cluster else f"{namespace}/{name}"
            raise PermanentError(f"{kind} {shown} not found")
        ref: dict[str, Any] = {"name": name}
        if cluster:
            ref["clusterScope"] = True
        label = LABEL_CLUSTER_WORKFLOW_TEMPLATE if cluster else LABEL_WORKFLOW_TEMPLATE
        return {
            "apiVersion": API_VERSION,
            "kind": WORKFLOW,
            "metadata": {"generateName": f"{name}-", "labels": {label: name}},
            "spec": {"workflowTemplateRef": ref},
        }

    async def _create(
        self, wf: dict[str, Any], namespace: str, inv: Invocation, records: list[dict[str, Any]]
    ) -> TriggerResult:
        meta = wf["metadata"]
        meta["namespace"] = namespace
        kube = self.ctx.kube
        try:
            created = await kube.create(wf, namespace)
        except AlreadyExists:
            live = await kube.get(API_VERSION, WORKFLOW, meta["name"], namespace)
            annotations = ((live or {}).get("metadata") or {}).get("annotations") or {}
            if live is not None and annotations.get(ANNOTATION_KEY) == inv.key:
                return TriggerResult("already-exists", _ref(live, namespace), records)
            raise PermanentError(
                f"Workflow {namespace}/{meta['name']} exists but was not created for these "
                "events (name clash)"
            ) from None
        ref = _ref(created, namespace)
        policy = self.ctx.policy.k8s if self.ctx.policy is not None else None
        if policy is not None:
            ref.update(await wait_for_labels(kube, ref, API_VERSION, policy))
        return TriggerResult("created", ref, records)

    # -- controlling Workflows ----------------------------------------------------------
    async def _workflow(self, name: str, namespace: str) -> dict[str, Any]:
        live = await self.ctx.kube.get(API_VERSION, WORKFLOW, name, namespace)
        if live is None:
            raise PermanentError(f"Workflow {namespace}/{name} not found")
        return live

    async def _patch(
        self,
        live: dict[str, Any],
        namespace: str,
        body: dict[str, Any],
        *,
        guarded: bool = False,
    ) -> dict[str, Any]:
        """Merge-patch ``body`` into the Workflow; ``guarded`` adds its resourceVersion,
        so a concurrent change makes the API answer 409 (retried)."""
        meta = live.get("metadata") or {}
        patch_meta: dict[str, Any] = {"name": meta.get("name"), "namespace": namespace}
        if guarded and meta.get("resourceVersion"):
            patch_meta["resourceVersion"] = meta["resourceVersion"]
        patch = {"apiVersion": API_VERSION, "kind": WORKFLOW, "metadata": patch_meta, **body}
        return await self.ctx.kube.patch(patch, namespace, "merge")

    async def _suspend(
        self, live: dict[str, Any], namespace: str, records: list[dict[str, Any]]
    ) -> TriggerResult:
        if (live.get("spec") or {}).get("suspend") is True:
            return TriggerResult("already-suspended", _ref(live, namespace), records)
        if _labels(live).get(LABEL_COMPLETED) == "true" or _phase(live) in COMPLETED_PHASES:
            raise PermanentError(f"cannot suspend completed Workflow {namespace}/{_name(live)}")
        patched = await self._patch(live, namespace, {"spec": {"suspend": True}})
        return TriggerResult("suspended", _ref(patched, namespace), records)

    async def _resume(
        self, live: dict[str, Any], namespace: str, records: list[dict[str, Any]]
    ) -> TriggerResult:
        status = live.get("status") or {}
        if status.get("offloadNodeStatusVersion") or status.get("compressedNodes"):
            raise PermanentError(
                f"cannot resume Workflow {namespace}/{_name(live)}: its node status is "
                "offloaded or compressed"
            )
        body: dict[str, Any] = {}
        if (live.get("spec") or {}).get("suspend") is True:
            body["spec"] = {"suspend": None}
        nodes = _resumed_nodes(status.get("nodes") or {})
        if nodes:
            body["status"] = {"nodes": nodes}
        if not body:
            return TriggerResult("not-suspended", _ref(live, namespace), records)
        patched = await self._patch(live, namespace, body, guarded=True)
        detail = _ref(patched, namespace)
        detail["resumedNodes"] = sorted(nodes)
        return TriggerResult("resumed", detail, records)

    async def _retry(
        self,
        live: dict[str, Any],
        namespace: str,
        inv: Invocation,
        records: list[dict[str, Any]],
    ) -> TriggerResult:
        annotations = (live.get("metadata") or {}).get("annotations") or {}
        if annotations.get(ANNOTATION_RETRIED_BY) == inv.key and _phase(live) not in (
            "Failed",
            "Error",
        ):
            return TriggerResult("already-retried", _ref(live, namespace), records)
        status = live.get("status") or {}
        if status.get("offloadNodeStatusVersion") or status.get("compressedNodes"):
            raise PermanentError(
                f"cannot retry Workflow {namespace}/{_name(live)}: its node status is "
                "offloaded or compressed"
            )
        opts = self.options
        wf, pods = formulate_retry(
            live,
            restart_successful=opts.restart_successful,
            node_field_selector=opts.node_field_selector,
            with_parameters=bool(opts.parameters),
        )
        if opts.parameters:
            override_parameters(wf, opts.parameters)
        meta = wf.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), ANNOTATION_RETRIED_BY: inv.key}
        for pod in pods:  # as Argo's server: the pods first, then the Workflow
            with contextlib.suppress(NotFound):
                await self.ctx.kube.delete("v1", "Pod", pod, namespace)
        updated = await self.ctx.kube.update(wf, namespace)
        detail = _ref(updated, namespace)
        detail["deletedPods"] = pods
        return TriggerResult("retried", detail, records)

    async def _shutdown(
        self, live: dict[str, Any], namespace: str, strategy: str, records: list[dict[str, Any]]
    ) -> TriggerResult:
        action = "terminated" if strategy == "Terminate" else "stopped"
        if (live.get("spec") or {}).get("shutdown") == strategy:
            return TriggerResult(f"already-{action}", _ref(live, namespace), records)
        if _phase(live) in COMPLETED_PHASES:
            raise PermanentError(
                f"cannot shut down completed Workflow {namespace}/{_name(live)} "
                f"(phase {_phase(live)})"
            )
        patched = await self._patch(live, namespace, {"spec": {"shutdown": strategy}})
        return TriggerResult(action, _ref(patched, namespace), records)


# -- pure helpers (Argo Workflows' conversions) -------------------------------------------


def apply_submit_options(wf: dict[str, Any], opts: SubmitOptions) -> None:
    """Set what ``args`` asked for on a Workflow, in place (``argo submit`` semantics)."""
    spec = wf.setdefault("spec", {})
    meta = wf.setdefault("metadata", {})
    if opts.entrypoint:
        spec["entrypoint"] = opts.entrypoint
    if opts.service_account:
        spec["serviceAccountName"] = opts.service_account
    if opts.priority is not None:
        spec["priority"] = opts.priority
    if opts.labels or opts.instance_id:
        labels = meta.get("labels") or {}
        labels.update(dict(opts.labels))
        if opts.instance_id:
            labels[LABEL_CONTROLLER_INSTANCE] = opts.instance_id
        meta["labels"] = labels
    if opts.parameters:
        override_parameters(wf, opts.parameters)
    if opts.generate_name:
        meta["generateName"] = opts.generate_name
    if opts.name:
        meta["name"] = opts.name


def override_parameters(wf: dict[str, Any], params: tuple[tuple[str, str], ...]) -> None:
    """Given parameters first, then the Workflow's others (Argo's ``-p`` semantics)."""
    arguments = wf.setdefault("spec", {}).setdefault("arguments", {})
    given = dict(params)
    new = [{"name": n, "value": v} for n, v in given.items()]
    new += [p for p in arguments.get("parameters") or [] if p.get("name") not in given]
    arguments["parameters"] = new


def _from_cron(cron: dict[str, Any], name: str) -> dict[str, Any]:
    spec = cron.get("spec") or {}
    cron_meta = cron.get("metadata") or {}
    labels: dict[str, str] = {}
    instance = (cron_meta.get("labels") or {}).get(LABEL_CONTROLLER_INSTANCE)
    if instance:
        labels[LABEL_CONTROLLER_INSTANCE] = instance
    labels[LABEL_CRON_WORKFLOW] = name
    annotations = {ANNOTATION_SCHEDULED_TIME: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    meta: dict[str, Any] = {"generateName": f"{name}-"}
    wf_meta = spec.get("workflowMetadata") or {}
    labels.update(wf_meta.get("labels") or {})
    annotations.update(wf_meta.get("annotations") or {})
    if wf_meta.get("finalizers"):
        meta["finalizers"] = list(wf_meta["finalizers"])
    meta["labels"] = labels
    meta["annotations"] = annotations
    owner = {
        "apiVersion": API_VERSION,
        "kind": "CronWorkflow",
        "name": name,
        "uid": cron_meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    meta["ownerReferences"] = [owner]
    return {
        "apiVersion": API_VERSION,
        "kind": WORKFLOW,
        "metadata": meta,
        "spec": copy.deepcopy(spec.get("workflowSpec") or {}),
    }


def _resubmitted(live: dict[str, Any], name: str) -> dict[str, Any]:
    meta = live.get("metadata") or {}
    spec = copy.deepcopy(live.get("spec") or {})
    if spec.get("activeDeadlineSeconds") == 0:
        del spec["activeDeadlineSeconds"]
    spec.pop("shutdown", None)
    labels = {
        k: v for k, v in (meta.get("labels") or {}).items() if k not in _NOT_CARRIED_ON_RESUBMIT
    }
    labels[LABEL_RESUBMITTED_FROM] = name
    new_meta: dict[str, Any] = {
        "generateName": meta.get("generateName") or f"{name}-",
        "labels": labels,
        "annotations": dict(meta.get("annotations") or {}),
    }
    if meta.get("ownerReferences"):
        new_meta["ownerReferences"] = copy.deepcopy(meta["ownerReferences"])
    return {
        "apiVersion": live.get("apiVersion") or API_VERSION,
        "kind": WORKFLOW,
        "metadata": new_meta,
        "spec": spec,
    }


def _resumed_nodes(nodes: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch entries marking each running Suspend node Succeeded."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out: dict[str, Any] = {}
    for node_id, node in nodes.items():
        if not isinstance(node, dict):
            continue
        if node.get("type") != "Suspend" or node.get("phase") != "Running":
            continue
        entry: dict[str, Any] = {"phase": "Succeeded", "finishedAt": now}
        outputs = node.get("outputs") or {}
        params = outputs.get("parameters")
        if params:
            entry["outputs"] = {"parameters": [_supplied_default(node_id, p) for p in params]}
        out[node_id] = entry
    return out


def _supplied_default(node_id: str, param: dict[str, Any]) -> dict[str, Any]:
    value_from = param.get("valueFrom") or {}
    if "supplied" not in value_from:
        return param
    if value_from.get("default") is None:
        raise PermanentError(
            f"cannot resume node {node_id}: output parameter {param.get('name')!r} has not "
            "been supplied and has no default"
        )
    new = {k: v for k, v in param.items() if k != "valueFrom"}
    new["value"] = value_from["default"]
    return new


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _phase(obj: dict[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase", ""))


def _ref(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {
        "kind": WORKFLOW,
        "namespace": meta.get("namespace", namespace),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
    }
