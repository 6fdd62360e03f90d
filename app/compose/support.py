"""What the engine implements today, as one table, checked after a manifest has loaded.

The models accept everything Argo accepts; this table says which of it Triggerfish
actually does yet. A manifest that uses a valid Argo field the engine does not
implement fails with one line naming it (``spec.dependencies[0].filters: not supported
yet``) instead of the field being silently ignored. When a feature lands, flip its
entry here.

How the table reads. Keys are paths in a manifest, with ``[]`` for any list item and
``*`` for any map key (an event name). A value is

* ``True``: supported; everything below it too, unless a longer key says otherwise;
* ``False``: not supported yet;
* a frozenset: supported for these values only.

A field with no entry of its own takes its parent's answer; a field whose ancestors have
no entry either is not supported (new Argo fields are refused until someone says
otherwise). Fields left at their zero value (``false``, ``""``, ``[]``, ``{}``, null)
count as not used. Registered plugins (:data:`eventsources.registry.REGISTRY`,
:data:`sensors.triggers.registry.TRIGGERS`) are supported unless an entry
narrows them, so registering a type needs no edit here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from app.kernel.spec import SpecModel, dump

Rule = bool | frozenset[Any]

# Parameters (``src`` → ``dest``), wherever a trigger takes them.
PARAMETER: dict[str, Rule] = {
    "src.dependencyName": True,
    "src.dataKey": True,
    "src.value": True,
    "src.useRawData": True,
    "src.contextKey": True,
    "src.dataTemplate": True,
    "src.contextTemplate": True,
    "dest": True,
    "operation": frozenset({"", "overwrite", "append", "prepend"}),
}

# The pod template of an EventSource or Sensor deployment.
POD_TEMPLATE: dict[str, Rule] = {
    "serviceAccountName": True,
    "metadata": False,
    "container": False,
    "volumes": False,
    "securityContext": False,
    "nodeSelector": False,
    "tolerations": False,
    "imagePullSecrets": False,
    "priorityClassName": False,
    "priority": False,
    "affinity": False,
}

EVENT_SOURCE: dict[str, Rule] = {
    "spec.eventBusName": True,
    "spec.replicas": True,
    "spec.service": True,
    **{f"spec.template.{k}": v for k, v in POD_TEMPLATE.items()},
    "spec.webhook": True,
    "spec.webhook.*.filter": True,
    "spec.github.*.githubApp": False,
    "spec.bitbucketserver.*.projects": False,
    "spec.bitbucketserver.*.oneEventPerChange": False,
    "spec.bitbucketserver.*.skipBranchRefsChangedOnOpenPR": False,
    "spec.bitbucketserver.*.tls": False,
    "spec.bitbucketserver.*.checkInterval": False,
    "spec.nats.*.auth.nkey": False,
    "spec.nats.*.auth.credential": False,
    "spec.amqp.*.exchangeDeclare.noWait": False,
    "spec.amqp.*.queueDeclare.noWait": False,
    "spec.amqp.*.queueBind.noWait": False,
    "spec.amqp.*.consume.noWait": False,
    "spec.amqp.*.consume.noLocal": False,
}

_TRIGGER: dict[str, Rule] = {
    "template.name": True,
    "template.conditions": True,
    "template.conditionsReset": True,
    "template.k8s": True,
    "template.k8s.operation": frozenset({"create", "update", "patch", "delete"}),
    "template.k8s.source.resource": True,
    "template.k8s.source.inline": True,
    "template.k8s.source.file": True,
    "template.k8s.source.url": True,
    "template.k8s.source.configmap": True,
    "template.k8s.source.git": False,
    "template.k8s.source.s3": False,
    "template.k8s.patchStrategy": True,
    "template.k8s.liveObject": True,
    **{f"template.k8s.parameters[].{k}": v for k, v in PARAMETER.items()},
    "template.log": True,
    "template.http": True,
    **{f"template.http.payload[].{k}": v for k, v in PARAMETER.items()},
    **{f"template.http.parameters[].{k}": v for k, v in PARAMETER.items()},
    **{f"template.http.dynamicHeaders[].{k}": v for k, v in PARAMETER.items()},
    "template.nats": True,
    **{f"template.nats.payload[].{k}": v for k, v in PARAMETER.items()},
    **{f"template.nats.parameters[].{k}": v for k, v in PARAMETER.items()},
    "template.azureServiceBus": True,
    **{f"template.azureServiceBus.payload[].{k}": v for k, v in PARAMETER.items()},
    **{f"template.azureServiceBus.parameters[].{k}": v for k, v in PARAMETER.items()},
    "template.slack": True,
    **{f"template.slack.parameters[].{k}": v for k, v in PARAMETER.items()},
    "template.email": True,
    **{f"template.email.parameters[].{k}": v for k, v in PARAMETER.items()},
    "template.awsLambda": True,
    **{f"template.awsLambda.payload[].{k}": v for k, v in PARAMETER.items()},
    **{f"template.awsLambda.parameters[].{k}": v for k, v in PARAMETER.items()},
    "template.openWhisk": True,
    **{f"template.openWhisk.payload[].{k}": v for k, v in PARAMETER.items()},
    **{f"template.openWhisk.parameters[].{k}": v for k, v in PARAMETER.items()},
    "template.custom": True,
    **{f"template.custom.payload[].{k}": v for k, v in PARAMETER.items()},
    **{f"template.custom.parameters[].{k}": v for k, v in PARAMETER.items()},
    "template.argoWorkflow": True,
    "template.argoWorkflow.operation": frozenset(
        {"submit", "submit-from", "resubmit", "retry", "suspend", "resume", "terminate", "stop"}
    ),
    "template.argoWorkflow.source.resource": True,
    "template.argoWorkflow.source.inline": True,
    "template.argoWorkflow.source.file": True,
    "template.argoWorkflow.source.url": True,
    "template.argoWorkflow.source.configmap": True,
    "template.argoWorkflow.source.git": False,
    "template.argoWorkflow.source.s3": False,
    **{f"template.argoWorkflow.parameters[].{k}": v for k, v in PARAMETER.items()},
    **{f"parameters[].{k}": v for k, v in PARAMETER.items()},
    "retryStrategy": True,
    "atLeastOnce": True,
    "rateLimit": True,
    "policy.status": True,
    "policy.k8s": True,
    "dlqTrigger": True,
}

SENSOR: dict[str, Rule] = {
    "spec.dependencies[].name": True,
    "spec.dependencies[].eventSourceName": True,
    "spec.dependencies[].eventName": True,
    "spec.dependencies[].filters": True,
    "spec.dependencies[].filtersLogicalOperator": True,
    "spec.dependencies[].transform": True,
    **{f"spec.triggers[].{k}": v for k, v in _TRIGGER.items()},
    **{f"spec.template.{k}": v for k, v in POD_TEMPLATE.items()},
    "spec.eventBusName": True,
    "spec.replicas": True,
    "spec.errorOnFailedRound": False,
    "spec.revisionHistoryLimit": False,
    "spec.loggingFields": False,
}

EVENT_BUS: dict[str, Rule] = {
    "spec.nats.native": True,
    "spec.nats.exotic": False,
    "spec.jetstream": True,
    "spec.jetstreamExotic": True,
    "spec.kafka": False,
}


def _with_plugins(kind: str, table: dict[str, Rule]) -> dict[str, Rule]:
    """The table plus a ``True`` entry (and the parameter rules) for every registered
    plugin it does not mention."""
    out = dict(table)
    if kind == "EventSource":
        from eventsources.registry import REGISTRY

        for key in REGISTRY:
            out.setdefault(f"spec.{key}", True)
    elif kind == "Sensor":
        from sensors.triggers.registry import TRIGGERS

        for key in TRIGGERS:
            base = f"spec.triggers[].template.{key}"
            if base not in out:
                out[base] = True
                for k, v in PARAMETER.items():
                    out.setdefault(f"{base}.parameters[].{k}", v)
    return out


TABLES: dict[str, dict[str, Rule]] = {
    "EventSource": EVENT_SOURCE,
    "Sensor": SENSOR,
    "EventBus": EVENT_BUS,
}


def _is_zero(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or value == {}


class _Checker:
    """Walks a dumped spec against one table and yields a line per unsupported field."""

    def __init__(self, rules: Mapping[str, Rule]) -> None:
        self.rules = rules
        self.prefixes: set[str] = set()
        for key in rules:
            for i, ch in enumerate(key):
                if ch in ".[":
                    self.prefixes.add(key[:i])

    def _child_pattern(self, pattern: str, key: str) -> str:
        exact = f"{pattern}.{key}"
        if exact in self.rules or exact in self.prefixes:
            return exact
        star = f"{pattern}.*"
        if star in self.rules or star in self.prefixes:
            return star
        return exact

    def check(self, pattern: str, path: str, value: Any, inherited: bool | None) -> Iterator[str]:
        rule = self.rules.get(pattern)
        if isinstance(rule, frozenset):
            if value not in rule:
                yield f"{path}: {value!r} is not supported yet"
            return
        effective = inherited if rule is None else rule
        if effective is False:
            yield f"{path}: not supported yet"
            return
        below = pattern in self.prefixes
        if not below:
            if effective is None:
                yield f"{path}: not supported yet"
            return
        if isinstance(value, dict):
            for key, child in value.items():
                if not _is_zero(child):
                    yield from self.check(
                        self._child_pattern(pattern, str(key)), f"{path}.{key}", child, effective
                    )
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if not _is_zero(item):
                    yield from self.check(f"{pattern}[]", f"{path}[{i}]", item, effective)
        elif effective is None:
            yield f"{path}: not supported yet"


def unsupported(model: SpecModel) -> list[str]:
    """``path: not supported yet`` lines for every field of a loaded EventBus,
    EventSource or Sensor that the engine does not implement; empty when it all is."""
    doc = dump(model)
    kind = str(doc.get("kind", type(model).__name__))
    table = TABLES.get(kind)
    if table is None:
        return []
    spec = doc.get("spec")
    if _is_zero(spec):
        return []
    return list(_Checker(_with_plugins(kind, table)).check("spec", "spec", spec, None))
