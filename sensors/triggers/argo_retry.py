"""``argoWorkflow`` operation ``retry``: Argo Workflows' retry of a failed Workflow.

Argo Events runs ``argo retry NAME``; the Argo server then rewrites the Workflow so its
controller runs the failed part again (``workflow/util.FormulateRetryWorkflow`` and the
server's ``RetryWorkflow``). This module is that rewrite, done on the Workflow object
we read through the Kubernetes API, so the trigger needs neither the CLI nor the Argo
server. :func:`formulate_retry` is pure: it returns the Workflow to write back and the
pods to delete first.

The rewrite, as Argo's:

* Only a ``Failed`` or ``Error`` Workflow is retried; a ``Succeeded`` one only with
  ``--restart-successful`` and ``--node-field-selector``.
* The Workflow is reopened: the ``completed`` and archiving labels go, the
  ``Completed`` condition becomes ``False``, phase, message, finish time, PVCs and
  ``spec.shutdown`` are cleared (a zero ``activeDeadlineSeconds`` too).
* The nodes to run again are the failed execution nodes (container, pod, HTTP, plugin)
  with no succeeded descendant, plus, with ``--restart-successful``, the nodes the
  ``--node-field-selector`` matches. Each is deleted with its descendants, and the path
  from it to the root is reset to ``Running``: step/task groups and their boundaries,
  failed retry nodes, and for a container its pod. Reset suspend nodes lose their
  supplied outputs. Nodes of the exit handler are deleted. Pods of deleted pod nodes
  (named as Argo names them, ``v1`` or ``v2``) are deleted.
* With parameters (``-p``), reset step/task groups also lose their children, so the
  controller expands them again with the new values.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.kernel.errors import PermanentError

__all__ = ["FieldSelector", "formulate_retry", "pod_name"]

LABEL_COMPLETED = "workflows.argoproj.io/completed"
LABEL_ARCHIVING_STATUS = "workflows.argoproj.io/workflow-archiving-status"
ANNOTATION_POD_NAME_FORMAT = "workflows.argoproj.io/pod-name-format"

_GROUP_TYPES = frozenset({"DAG", "TaskGroup", "StepGroup", "Steps"})
_EXECUTION_TYPES = frozenset({"Container", "Pod", "HTTP", "Plugin"})
_MAX_POD_PREFIX = 253 - 10  # Kubernetes' name limit less the hash


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _failed(node: dict[str, Any]) -> bool:
    return node.get("phase") in ("Failed", "Error")


def _template(node: dict[str, Any]) -> str:
    ref = node.get("templateRef") or {}
    return str(ref.get("template") or node.get("templateName") or "")


def _fnv32a(text: str) -> int:
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def pod_name(wf: dict[str, Any], node: dict[str, Any]) -> str:
    """The pod Argo created for ``node`` (``v1``: the node id; ``v2``, the default: the
    Workflow name, the template name and a hash of the node name)."""
    annotations = (wf.get("metadata") or {}).get("annotations") or {}
    if annotations.get(ANNOTATION_POD_NAME_FORMAT) == "v1":
        return str(node.get("id", ""))
    wf_name = str((wf.get("metadata") or {}).get("name", ""))
    node_name = str(node.get("name", ""))
    if node_name == wf_name:
        return wf_name
    prefix = wf_name
    template = _template(node)
    if template:
        prefix = f"{prefix}-{template}"
    prefix = prefix[: _MAX_POD_PREFIX - 1]
    return f"{prefix}-{_fnv32a(node_name)}"


# --------------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class FieldSelector:
    """A Kubernetes field selector (``a=b,c!=d``), as ``--node-field-selector`` takes it."""

    terms: tuple[tuple[str, bool, str], ...]  # (field, equal?, value)

    @classmethod
    def parse(cls, text: str) -> FieldSelector:
        """``ValueError`` when a term has no ``=``, ``==`` or ``!=``."""
        terms: list[tuple[str, bool, str]] = []
        for raw in _split_unescaped(text, ","):
            if not raw.strip():
                continue
            for op, equal in (("!=", False), ("==", True), ("=", True)):
                at = _find_unescaped(raw, op)
                if at >= 0:
                    key = _unescape(raw[:at].strip())
                    value = _unescape(raw[at + len(op) :].strip())
                    terms.append((key, equal, value))
                    break
            else:
                raise ValueError(f"invalid field selector term {raw!r} (expected f=v or f!=v)")
        return cls(tuple(terms))

    def matches(self, fields: dict[str, str]) -> bool:
        return all((fields.get(k, "") == v) == equal for k, equal, v in self.terms)


def _find_unescaped(text: str, needle: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(needle, i):
            return i
        i += 1
    return -1


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    while True:
        at = _find_unescaped(text, sep)
        if at < 0:
            parts.append(text)
            return parts
        parts.append(text[:at])
        text = text[at + 1 :]


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _node_fields(node: dict[str, Any]) -> dict[str, str]:
    """The fields a node selector can name (Argo's ``SelectorMatchesNode``)."""
    fields = {
        "displayName": str(node.get("displayName", "")),
        "templateName": _template(node),
        "phase": str(node.get("phase", "")),
        "name": str(node.get("name", "")),
        "id": str(node.get("id", "")),
    }
    ref = node.get("templateRef")
    if ref:
        fields["templateRef.name"] = str(ref.get("name", ""))
        fields["templateRef.template"] = str(ref.get("template", ""))
    for param in (node.get("inputs") or {}).get("parameters") or []:
        value = param.get("value")
        fields[f"inputs.parameters.{param.get('name')}.value"] = "" if value is None else str(value)
    return fields


# --------------------------------------------------------------------------- the node graph


@dataclass(eq=False)
class _Node:
    id: str
    status: dict[str, Any]
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)

    @property
    def type(self) -> str:
        return str(self.status.get("type", ""))


def _graph(wf_name: str, nodes: dict[str, dict[str, Any]]) -> dict[str, _Node]:
    """Every node with its parent (one, as Argo records it) and children."""
    graph = {nid: _Node(nid, n) for nid, n in nodes.items()}
    parents: dict[str, str] = {}
    for nid in sorted(nodes):
        for child in nodes[nid].get("children") or []:
            parents[child] = nid
    for nid, node in graph.items():
        name = str(node.status.get("name", ""))
        if nid not in parents and name != wf_name and not name.startswith(f"{wf_name}.onExit"):
            raise PermanentError(f"retry: couldn't find the parent node of {nid}")
        node.parent = graph.get(parents.get(nid, ""))
        for child in node.status.get("children") or []:
            if child not in graph:
                raise PermanentError(f"retry: node {nid} names a missing child {child}")
            node.children.append(graph[child])
    return graph


def _descendants(node: _Node) -> set[str]:
    out: set[str] = set()
    queue = deque([node])
    while queue:
        for child in queue.popleft().children:
            out.add(child.id)
            queue.append(child)
    return out


def _sorted_from_root(graph: dict[str, _Node], wf_name: str) -> list[_Node]:
    """Breadth first from the root node (the exit handler's nodes are not reached)."""
    root = next((n for n in graph.values() if n.status.get("name") == wf_name), None)
    if root is None:
        raise PermanentError("retry: the Workflow has no root node")
    order: list[_Node] = []
    seen = {root.id}
    queue = deque([root])
    while queue:
        node = queue.popleft()
        order.append(node)
        for child in node.children:
            if child.id not in seen:
                seen.add(child.id)
                queue.append(child)
    return order


def _reset_until(node: _Node | None, match: str, by_type: bool, reset: set[str]) -> _Node:
    while node is not None:
        if (node.type if by_type else node.id) == match:
            reset.add(node.id)
            return node
        node = node.parent
    raise PermanentError(f"retry: ran out of nodes seeking {match}")


def _reset_boundaries(node: _Node | None, reset: set[str]) -> _Node | None:
    while node is not None:
        if node.parent is not None and node.parent.type == "Retry":
            reset.add(node.parent.id)
            node = node.parent
        if node.parent is not None and node.parent.type in ("StepGroup", "TaskGroup"):
            reset.add(node.parent.id)
        boundary = str(node.status.get("boundaryID") or "")
        if not boundary:
            return node.parent
        node = _reset_until(node, boundary, False, reset)
    return None


def _reset_path(start: _Node) -> tuple[set[str], set[str]]:
    """What running ``start`` again takes: the nodes to reset and to delete."""
    delete = _descendants(start) | {start.id}
    reset: set[str] = set()
    if start.parent is None:
        return reset, delete
    node: _Node | None = start
    while node is not None:
        if node.type in _GROUP_TYPES:
            reset.add(node.id)
            node = _reset_boundaries(node, reset)
            continue
        if node.type == "Retry" and _failed(node.status):
            reset.add(node.id)
        elif node.type == "Container":
            pod = _reset_until(node, "Pod", True, reset)
            delete.add(pod.id)
            delete |= _descendants(pod)
            node = pod.parent
            continue
        node = node.parent
    return reset, delete


def _has_succeeded_descendant(
    nodes: dict[str, dict[str, Any]], node: dict[str, Any], chosen: set[str]
) -> bool:
    for child_id in node.get("children") or []:
        child = nodes.get(child_id) or {}
        if (child_id not in chosen and child.get("phase") == "Succeeded") or (
            _has_succeeded_descendant(nodes, child, chosen)
        ):
            return True
    return False


def _reset_node(node: dict[str, Any]) -> dict[str, Any]:
    node = copy.deepcopy(node)
    if node.get("type") == "Suspend" and node.get("outputs"):
        node["outputs"]["parameters"] = [
            {"name": p.get("name"), "valueFrom": {"supplied": {}}}
            for p in node["outputs"].get("parameters") or []
        ]
    if node.get("phase") != "Skipped":
        node["phase"] = "Running"
    node.pop("message", None)
    node["startedAt"] = _now()
    node["finishedAt"] = None
    return node


# --------------------------------------------------------------------------- the rewrite


def _reopened(wf: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(wf)
    meta = new.setdefault("metadata", {})
    labels = meta.get("labels") or {}
    labels.pop(LABEL_COMPLETED, None)
    labels.pop(LABEL_ARCHIVING_STATUS, None)
    meta["labels"] = labels
    status = new.setdefault("status", {})
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Completed"]
    conditions.append({"type": "Completed", "status": "False"})
    status["conditions"] = conditions
    status.pop("phase", None)
    status["nodes"] = {}
    status.pop("message", None)
    status["startedAt"] = _now()
    status["finishedAt"] = None
    stored = status.get("storedWorkflowTemplateSpec")
    if isinstance(stored, dict):
        stored.pop("shutdown", None)
    spec = new.setdefault("spec", {})
    spec.pop("shutdown", None)
    status["persistentVolumeClaims"] = []
    if spec.get("activeDeadlineSeconds") == 0:
        del spec["activeDeadlineSeconds"]
    return new


def formulate_retry(
    wf: dict[str, Any],
    *,
    restart_successful: bool = False,
    node_field_selector: str = "",
    with_parameters: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """The retried Workflow (parameters not applied yet) and the pods to delete first.

    :class:`PermanentError` when the Workflow cannot be retried (its phase, a bad
    selector, a node graph that does not hold together).
    """
    meta = wf.get("metadata") or {}
    wf_name = str(meta.get("name", ""))
    status = wf.get("status") or {}
    phase = str(status.get("phase") or "")
    if phase == "Succeeded":
        if not (restart_successful and node_field_selector):
            raise PermanentError(
                "to retry a succeeded workflow, set the options restartSuccessful and "
                "nodeFieldSelector"
            )
    elif phase not in ("Failed", "Error"):
        raise PermanentError(f"cannot retry a workflow in phase {phase or 'Unknown'}")
    nodes: dict[str, dict[str, Any]] = {
        str(k): v for k, v in (status.get("nodes") or {}).items() if isinstance(v, dict)
    }
    for nid, node in nodes.items():
        node.setdefault("id", nid)
    new = _reopened(wf)

    chosen: set[str] = set()
    if restart_successful and node_field_selector:
        try:
            selector = FieldSelector.parse(node_field_selector)
        except ValueError as e:
            raise PermanentError(f"retry: {e}") from e
        chosen = {nid for nid, n in nodes.items() if selector.matches(_node_fields(n))}
    failed: set[str] = set()
    for nid, node in nodes.items():
        if _failed(node) and node.get("type") in _EXECUTION_TYPES:
            seen_from = node
            if (node.get("nodeFlag") or {}).get("retried"):
                retry_parent = next(
                    (
                        n
                        for n in nodes.values()
                        if n.get("type") == "Retry" and nid in (n.get("children") or [])
                    ),
                    None,
                )
                seen_from = retry_parent or node
            if not _has_succeeded_descendant(nodes, seen_from, chosen):
                failed.add(nid)
    chosen |= failed

    graph = _graph(wf_name, nodes)
    ordered = _sorted_from_root(graph, wf_name)
    to_reset: set[str] = set()
    to_delete: set[str] = set()
    for start in ordered:  # topological: a node deleted above is not reset below
        if start.id in chosen and start.id not in to_delete:
            reset, delete = _reset_path(start)
            to_reset |= reset
            to_delete |= delete
    if with_parameters:
        for nid in list(to_reset):
            if nid not in to_delete and graph[nid].type in ("TaskGroup", "StepGroup"):
                to_delete |= _descendants(graph[nid])

    new_nodes: dict[str, dict[str, Any]] = {
        nid: _reset_node(nodes[nid]) for nid in to_reset if nid not in to_delete
    }
    pods: list[str] = []

    def delete_pod(node: dict[str, Any]) -> None:
        name = pod_name(wf, node)
        if name not in pods:
            pods.append(name)

    for nid in sorted(to_delete):
        if nodes[nid].get("type") == "Pod":
            delete_pod(nodes[nid])
    on_exit = f"{wf_name}.onExit"
    for nid, node in nodes.items():
        name = str(node.get("name", ""))
        if nid not in new_nodes and nid not in to_delete and not name.startswith(on_exit):
            new_nodes[nid] = copy.deepcopy(node)
        if name == on_exit:
            queue = deque([node])
            while queue:
                current = queue.popleft()
                delete_pod(current)
                for child in current.get("children") or []:
                    if child not in nodes:
                        raise PermanentError(
                            f"retry: node {current.get('id')} names a missing child"
                        )
                    queue.append(nodes[child])
    for nid, node in new_nodes.items():
        old = nodes[nid]
        if "children" in old:
            node["children"] = [c for c in old.get("children") or [] if c not in to_delete]
        if "outboundNodes" in old:
            node["outboundNodes"] = [
                c for c in old.get("outboundNodes") or [] if c not in to_delete
            ]
    new["status"]["nodes"] = new_nodes
    return new, pods
