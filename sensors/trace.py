"""Traces: what a sensor did with each event, kept for recent events (bounded memory).

A :class:`Trace` records the dependency an event matched, the parameters resolved and
where each value came from, and each trigger's result or error. The runner logs every
finished trace as one structured line and keeps the last ``capacity`` traces in a
:class:`TraceStore` for the API ("why did my sensor not fire?").

The store is also where the event-flow page's live numbers come from: each added trace
bumps the process's windowed counters (received / filtered per dependency; fired /
failed / dead-lettered per trigger), remembers the objects each trigger created and
the last error, and is handed to an optional ``sink`` (the process persists traces on
the bus there, so they outlive a restart and every pod's traces can be read).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from app.adapters.metrics import RecentCounts
from app.kernel.events import now_rfc3339

OUTCOMES = ("filtered", "fired", "failed", "waiting")
"""A trace's outcome (``/api/v1/traces?outcome=``): a filter rejected the event; a
trigger fired and none failed; something failed (a trigger, or the event's handling);
the event was stored for a condition that is not satisfied yet."""


@dataclass
class TriggerOutcome:
    """One trigger's result for one firing."""

    trigger: str
    status: str  # "succeeded" | "failed" | "dead-lettered" | "skipped"
    action: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    parameters: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    attempts: int = 0


@dataclass
class Trace:
    """Everything the sensor decided about one event."""

    sensor: str
    namespace: str
    event_id: str
    event_source: str
    event_name: str
    dependency: str
    received: str = field(default_factory=now_rfc3339)
    delivery: int = 1
    transform: str = ""
    """The dependency's ``transform`` on this event (``jq: applied``, ``script: failed``);
    empty when it has none. A failure's message is in :attr:`error`."""
    filters: list[str] = field(default_factory=list)
    filtered: bool = False
    conditions: dict[str, Any] = field(default_factory=dict)
    fired: bool = False
    triggers: list[TriggerOutcome] = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["outcome"] = self.outcome()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        """The inverse of :meth:`to_dict` (unknown keys ignored); ValueError if malformed."""
        try:
            fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
            outcomes = [
                TriggerOutcome(
                    **{k: v for k, v in o.items() if k in TriggerOutcome.__dataclass_fields__}
                )
                for o in fields.pop("triggers", [])
            ]
            return cls(**fields, triggers=outcomes)
        except (TypeError, AttributeError) as e:
            raise ValueError(f"not a trace: {e}") from e

    def outcome(self) -> str:
        """One of :data:`OUTCOMES`."""
        if self.filtered:
            return "filtered"
        if self.error or any(o.status != "succeeded" for o in self.triggers):
            return "failed"
        return "fired" if self.fired else "waiting"

    def matches(
        self,
        *,
        sensor: str | None = None,
        namespace: str | None = None,
        event_id: str | None = None,
        dependency: str | None = None,
        trigger: str | None = None,
        outcome: str | None = None,
    ) -> bool:
        """Whether this trace passes every filter that is given."""
        return (
            (not sensor or self.sensor == sensor)
            and (not namespace or self.namespace == namespace)
            and (not event_id or self.event_id == event_id)
            and (not dependency or self.dependency == dependency)
            and (not trigger or any(o.trigger == trigger for o in self.triggers))
            and (not outcome or self.outcome() == outcome)
        )


class TraceStore:
    """The last ``capacity`` traces, newest last; safe to read from another thread.

    ``counts`` (the process's :class:`RecentCounts`) is bumped for every added trace;
    ``sink`` is called with every added trace (it must not block)."""

    def __init__(self, capacity: int = 1000, counts: RecentCounts | None = None) -> None:
        self._items: deque[Trace] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.counts = counts if counts is not None else RecentCounts()
        self.sink: Callable[[Trace], None] | None = None
        self._objects: dict[tuple[str, str, str], deque[dict[str, Any]]] = {}

    def add(self, trace: Trace) -> None:
        with self._lock:
            self._items.append(trace)
        self.count(trace)
        if self.sink is not None:
            self.sink(trace)

    def remember(self, trace: Trace) -> None:
        """Keep a trace read back from storage (after a restart): listed and its objects
        noted, but not counted again and not persisted again."""
        with self._lock:
            self._items.append(trace)
        for o in trace.triggers:
            if o.status == "succeeded":
                self._note_object(trace, o)

    def count(self, trace: Trace) -> None:
        """Bump the windowed counters and note objects and errors for ``trace``."""
        c = self.counts
        if trace.event_id and not trace.dependency.startswith("("):  # not a restart/replay
            dep = ("dependency", trace.namespace, trace.sensor, trace.dependency)
            c.inc(dep, "received")
            if trace.filtered:
                c.inc(dep, "filtered")
            if trace.error:
                c.inc(dep, "failed")
                c.note_error(dep, trace.error)
            else:
                c.clear_error(dep)
        for o in trace.triggers:
            key = ("trigger", trace.namespace, trace.sensor, o.trigger)
            if o.status == "succeeded":
                c.inc(key, "fired")
                c.clear_error(key)
                self._note_object(trace, o)
            else:
                c.inc(key, "failed")
                if o.status == "dead-lettered":
                    c.inc(key, "deadLettered")
                c.note_error(key, o.error or o.status)

    def _note_object(self, trace: Trace, o: TriggerOutcome) -> None:
        d = o.detail
        if not d.get("name") and not d.get("kind"):
            return
        ring = self._objects.setdefault((trace.namespace, trace.sensor, o.trigger), deque(maxlen=5))
        ring.append(
            {
                "kind": d.get("kind", ""),
                "apiVersion": d.get("apiVersion", ""),
                "namespace": d.get("namespace", ""),
                "name": d.get("name", ""),
                "action": o.action,
                "time": trace.received,
                "eventId": trace.event_id,
            }
        )

    def objects(self, namespace: str, sensor: str, trigger: str) -> list[dict[str, Any]]:
        """The objects trigger ``trigger`` created most recently, newest first."""
        return list(self._objects.get((namespace, sensor, trigger), ()))[::-1]

    def recent(
        self, limit: int = 100, sensor: str | None = None, event_id: str | None = None, **more: Any
    ) -> list[Trace]:
        with self._lock:
            items = list(self._items)
        items = [t for t in items if t.matches(sensor=sensor, event_id=event_id, **more)]
        return items[-limit:][::-1]
