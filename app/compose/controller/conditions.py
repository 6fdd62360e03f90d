"""Status conditions the way Argo writes them (``type``, ``status``, ``reason``,
``message``, ``lastTransitionTime``), plus the computed ``Ready``.

``lastTransitionTime`` changes only when a condition's status changes, so writing the
same state twice produces the same status and the controller does not patch again
(its own status writes come back through the watch).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Condition:
    """One condition as decided by a reconcile."""

    type: str
    status: Status
    reason: str = ""
    message: str = ""


def true(type_: str, reason: str = "", message: str = "") -> Condition:
    """A condition that holds."""
    return Condition(type_, "True", reason, message)


def false(type_: str, reason: str, message: str) -> Condition:
    """A condition that does not hold; ``reason`` is a CamelCase word, ``message`` says why."""
    return Condition(type_, "False", reason, message)


def merge_conditions(
    old: list[dict[str, Any]] | None, new: list[Condition], now: datetime | None = None
) -> list[dict[str, Any]]:
    """The condition list to write: ``new`` plus a ``Ready`` (all of ``new`` True),
    keeping each old ``lastTransitionTime`` whose status did not change."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ready_ok = all(c.status == "True" for c in new)
    decided = [*new, Condition("Ready", "True" if ready_ok else "False")]
    before = {str(c.get("type")): c for c in old or []}
    out: list[dict[str, Any]] = []
    for c in decided:
        prev = before.get(c.type)
        keep = prev is not None and prev.get("status") == c.status
        entry: dict[str, Any] = {
            "type": c.type,
            "status": c.status,
            "lastTransitionTime": prev.get("lastTransitionTime", stamp) if keep and prev else stamp,
        }
        if c.reason:
            entry["reason"] = c.reason
        if c.message:
            entry["message"] = c.message
        out.append(entry)
    return out


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The condition ``type_`` of an object's status, if set."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def is_true(obj: dict[str, Any], type_: str) -> bool:
    """Whether condition ``type_`` of ``obj`` is ``True``."""
    c = condition(obj, type_)
    return c is not None and c.get("status") == "True"
