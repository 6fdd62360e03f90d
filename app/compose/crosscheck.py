"""Checks across the manifests of one set: what no single object can tell about itself.

* A Sensor dependency that names an EventSource (``eventSourceName``) and event
  (``eventName``) that no EventSource in the set serves would never fire here. It is a
  warning, not an error: the EventSource may live elsewhere in the cluster.
* Two EventSources whose servers bind the same port (webhook-style sources): in a cluster
  each runs in its own pod and that is fine; ``triggerfish run`` serves every
  EventSource in one process, where the second cannot bind, so ``run`` refuses it
  (:func:`run_errors`) and ``validate`` warns.

Who calls it: :mod:`app.compose.validate` (warnings; errors with ``--strict``) and
:mod:`app.compose.loading` (``run``).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.compose.manifests import LoadResult, Origin, object_label

__all__ = ["Finding", "cross_checks", "run_errors"]


@dataclass(frozen=True)
class Finding:
    """One cross-object problem, placed on the object that has it."""

    origin: Origin
    kind: str
    name: str
    path: str
    message: str
    code: str  # "unserved-dependency" | "shared-port"
    namespace: str = ""

    def __str__(self) -> str:
        what = object_label(self.kind, self.namespace, self.name)
        return f"{self.origin} {what}: {self.path}: {self.message}"


def cross_checks(result: LoadResult) -> list[Finding]:
    """Every cross-object finding of ``result``, in file order of the objects they name."""
    findings: list[Finding] = []
    served: dict[str, set[str]] = {}
    ports: dict[str, tuple[str, str]] = {}
    for es in result.event_sources:
        name = es.obj.metadata.name
        events = served.setdefault(name, set())
        for key, configs in es.obj.spec.sources().items():
            for event_name, cfg in configs.items():
                events.add(event_name)
                port = getattr(cfg, "port", None)
                field = "port"
                if port is None:  # types served over the webhook contract
                    port = getattr(getattr(cfg, "webhook", None), "port", None)
                    field = "webhook.port"
                if port in (None, "", 0):
                    continue
                owner = ports.setdefault(str(port), (name, event_name))
                if owner[0] != name:
                    findings.append(Finding(
                        es.origin, "EventSource", name, f"spec.{key}.{event_name}.{field}",
                        f"port {port} is also bound by EventSource {owner[0]!r} "
                        f"(event {owner[1]!r}); one process cannot serve both "
                        "(triggerfish run refuses this; in a cluster each has its own pod)",
                        "shared-port", es.obj.metadata.namespace,
                    ))  # fmt: skip
    for sensor in result.sensors:
        for i, dep in enumerate(sensor.obj.spec.dependencies):
            offered = served.get(dep.event_source_name)
            if offered is not None and dep.event_name in offered:
                continue
            if offered is None:
                why = f"no EventSource {dep.event_source_name!r} in the given manifests"
            else:
                why = (
                    f"EventSource {dep.event_source_name!r} has no event {dep.event_name!r} "
                    f"(it has {', '.join(sorted(offered)) or 'none'})"
                )
            findings.append(Finding(
                sensor.origin, "Sensor", sensor.obj.metadata.name, f"spec.dependencies[{i}]",
                f"{why}: this dependency would never fire here", "unserved-dependency",
                sensor.obj.metadata.namespace,
            ))  # fmt: skip
    return findings


def run_errors(result: LoadResult) -> list[Finding]:
    """The findings that stop ``triggerfish run`` (one process serves every source)."""
    return [f for f in cross_checks(result) if f.code == "shared-port"]
