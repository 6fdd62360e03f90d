"""Traces: what a sensor did with each event, kept for recent events (bounded memory).

A :class:`Trace` records the dependency an event matched, the parameters resolved and
where each value came from, and each trigger's result or error. The runner logs every
finished trace as one structured line and keeps the last ``capacity`` traces in a
:class:`TraceStore` for the API ("why did my sensor not fire?").
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from app.kernel.events import now_rfc3339


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
    filters: list[str] = field(default_factory=list)
    filtered: bool = False
    conditions: dict[str, Any] = field(default_factory=dict)
    fired: bool = False
    triggers: list[TriggerOutcome] = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TraceStore:
    """The last ``capacity`` traces, newest last; safe to read from another thread."""

    def __init__(self, capacity: int = 1000) -> None:
        self._items: deque[Trace] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, trace: Trace) -> None:
        with self._lock:
            self._items.append(trace)

    def recent(
        self, limit: int = 100, sensor: str | None = None, event_id: str | None = None
    ) -> list[Trace]:
        with self._lock:
            items = list(self._items)
        if sensor:
            items = [t for t in items if t.sensor == sensor]
        if event_id:
            items = [t for t in items if t.event_id == event_id]
        return items[-limit:][::-1]
