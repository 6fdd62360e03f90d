"""What the event-flow page and its API show: the graph, persisted traces, dead letters.

* :func:`flow_graph` turns the running manifests and the process's own counters
  (:class:`app.adapters.metrics.RecentCounts`, bumped as events are published,
  filtered, processed and fired) into one JSON document: each EventSource's event
  names, each Sensor's dependencies and triggers, the objects each trigger created
  most recently, a status with its reason for every node, and windowed counts.
* :class:`TraceLog` publishes every trace to a bounded bus stream and reads them back,
  so ``/api/v1/traces`` answers after a restart and sees what every process on the
  bus did; without a bus it falls back to the traces kept in memory.
* :class:`DeadLetters` lists the firings the sensors dead-lettered
  (``<bus>._dlq.<sensor>.<trigger>``), replays one (the sensor's trigger runs again
  with the same events, hence the same firing key) or discards it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from app.adapters.bus import Bus
from app.kernel.errors import BusUnavailableError, TriggerfishError
from app.kernel.events import Event
from app.kernel.settings import TraceSettings
from app.kernel.subjects import subject_token
from sensors.runner import SensorRunner
from sensors.trace import Trace, TraceStore

log = logging.getLogger("triggerfish.flow")

TRACE_STREAM = "TRIGGERFISH_TRACES"
TRACE_PREFIX = "_traces"
"""Trace subjects: ``_traces.<namespace>.<sensor>.<dependency>`` (``_`` cannot start a
Kubernetes name, so no EventBus stream's ``<bus>.>`` overlaps)."""


_SCAN = 500
"""Sequence numbers of the trace stream read per step of a query."""


class TraceLog:
    """Persists traces on the bus (best effort, bounded queue) and reads them back."""

    def __init__(self, store: TraceStore, settings: TraceSettings, queue_size: int = 10_000):
        self.store = store
        self.settings = settings
        self.bus: Bus | None = None
        self.dropped = 0
        self._queue: asyncio.Queue[Trace] = asyncio.Queue(maxsize=queue_size)

    def sink(self, trace: Trace) -> None:
        """Called for every trace the store gets; never blocks (drops when full)."""
        try:
            self._queue.put_nowait(trace)
        except asyncio.QueueFull:
            self.dropped += 1

    async def open(self, bus: Bus) -> None:
        """Create the stream and remember the objects recent traces created (so the
        page shows them after a restart)."""
        await bus.ensure_log_stream(
            TRACE_STREAM,
            [f"{TRACE_PREFIX}.>"],
            self.settings.max_msgs,
            self.settings.max_age_seconds,
        )
        self.bus = bus
        with contextlib.suppress(TriggerfishError):
            for t in reversed(await self.query(limit=1000)):
                self.store.remember(Trace.from_dict(t))

    async def run(self) -> None:
        """Publish queued traces until cancelled."""
        while True:
            trace = await self._queue.get()
            if self.bus is None:
                continue
            subject = ".".join(
                [TRACE_PREFIX]
                + [subject_token(x) for x in (trace.namespace, trace.sensor, trace.dependency)]
            )
            try:
                await self.bus.publish_nowait(subject, orjson.dumps(trace))
            except BusUnavailableError:
                self.dropped += 1

    async def query(
        self,
        limit: int = 100,
        *,
        before: int | None = None,
        namespace: str | None = None,
        sensor: str | None = None,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Traces newest first, each with its ``seq`` (pass the last one as ``before``
        for the next page); from the bus stream, else from memory."""
        wanted = {k: v for k, v in filters.items() if v}
        if self.bus is None:
            items = self.store.recent(limit, sensor, namespace=namespace, **wanted)
            return [t.to_dict() for t in items]
        subject = TRACE_PREFIX + "." + (subject_token(namespace) if namespace else "*")
        subject += "." + (subject_token(sensor) if sensor else "*") + ".>"
        first, last = await self.bus.stream_bounds(TRACE_STREAM)
        end = min(before, last + 1) if before else last + 1
        out: list[dict[str, Any]] = []
        # newest first, a window of sequence numbers at a time, until enough matched
        while end > first and len(out) < limit:
            msgs = await self.bus.read_stream(TRACE_STREAM, subject, _SCAN, before=end)
            end -= _SCAN
            for m in reversed(msgs):
                try:
                    trace = Trace.from_dict(orjson.loads(m.data))
                except (ValueError, orjson.JSONDecodeError):
                    continue
                if trace.matches(namespace=namespace, sensor=sensor, **wanted):
                    out.append({**trace.to_dict(), "seq": m.seq})
                    if len(out) >= limit:
                        break
        return out


class DeadLetterGone(TriggerfishError):
    """The dead letter is no longer stored (replayed, discarded or aged out)."""


class DeadLetters:
    """The dead-letter subjects of every EventBus a process uses."""

    def __init__(self, bus: Bus, runners: list[SensorRunner], bus_names: list[str]) -> None:
        self.bus = bus
        self.runners = runners
        self.bus_names = sorted(bus_names)
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    @staticmethod
    def _entry(bus: str, seq: int, data: bytes, stored: float) -> dict[str, Any] | None:
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(body, dict):
            return None
        events = body.get("events") or {}
        when = body.get("time") or (
            datetime.fromtimestamp(stored, UTC).isoformat() if stored else ""
        )
        return {
            "id": f"{bus}:{seq}",
            "bus": bus,
            "seq": seq,
            "sensor": body.get("sensor", ""),
            "namespace": body.get("namespace", ""),
            "trigger": body.get("trigger", ""),
            "error": body.get("error", ""),
            "attempts": body.get("attempts", 1),
            "key": body.get("key", ""),
            "time": when,
            "events": events if isinstance(events, dict) else {},
        }

    async def list(
        self,
        *,
        sensor: str | None = None,
        trigger: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """Dead letters newest first (``before``: a sequence number, for paging)."""
        out: list[dict[str, Any]] = []
        for bus in self.bus_names:
            subject = f"{subject_token(bus)}._dlq."
            subject += f"{subject_token(sensor)}." if sensor else "*."
            subject += subject_token(trigger) if trigger else "*"
            for m in await self.bus.read_stream(bus, subject, 10**12, before=before):
                entry = self._entry(bus, m.seq, m.data, m.time)
                if entry is not None:
                    out.append(entry)
        out.sort(key=lambda e: (e["time"], e["seq"]), reverse=True)
        return out[:limit]

    async def show(self, bus: str, seq: int) -> dict[str, Any]:
        if bus not in self.bus_names:
            raise DeadLetterGone(f"no EventBus {bus!r} here")
        m = await self.bus.get_stored(bus, seq)
        entry = (
            self._entry(bus, seq, m.data, m.time)
            if m is not None and "._dlq." in m.subject
            else None
        )
        if entry is None:
            raise DeadLetterGone(f"dead letter {bus}:{seq} is gone (replayed or discarded)")
        return entry

    async def replay(self, bus: str, seq: int) -> dict[str, Any]:
        """Run the dead letter's trigger again; delete the dead letter when it succeeds.

        One replay at a time per dead letter; a second one after a success finds it gone
        (:class:`DeadLetterGone`), and the trigger's firing key keeps a late duplicate
        from creating a second object."""
        lock = self._locks.setdefault((bus, seq), asyncio.Lock())
        async with lock:
            entry = await self.show(bus, seq)
            runner = next(
                (
                    r
                    for r in self.runners
                    if r.name == entry["sensor"] and r.namespace == entry["namespace"]
                ),
                None,
            )
            if runner is None:
                raise DeadLetterGone(
                    f"sensor {entry['namespace']}/{entry['sensor']} does not run here"
                )
            events: Mapping[str, Event] = {
                dep: Event.from_json(orjson.dumps(ev)) for dep, ev in entry["events"].items()
            }
            trace = await runner.replay(entry["trigger"], events)
            ok = all(o.status == "succeeded" for o in trace.triggers)
            if ok:
                await self.bus.delete_stored(bus, seq)
            self._locks.pop((bus, seq), None)
            return {"replayed": ok, "deadLetter": entry, "trace": trace.to_dict()}

    async def discard(self, bus: str, seq: int) -> None:
        await self.show(bus, seq)
        if not await self.bus.delete_stored(bus, seq):
            raise DeadLetterGone(f"dead letter {bus}:{seq} is gone (replayed or discarded)")


def _status(ok: bool, error: str, not_ready: str) -> dict[str, str]:
    if error:
        return {"state": "error", "reason": error}
    if not ok:
        return {"state": "not ready", "reason": not_ready}
    return {"state": "ready", "reason": ""}


def workflow_link(base: str, obj: Mapping[str, Any]) -> str:
    """The Argo Workflows UI page of a created Workflow; empty without a base URL."""
    if not base or obj.get("kind") != "Workflow" or not obj.get("name"):
        return ""
    return f"{base.rstrip('/')}/workflows/{obj.get('namespace') or 'default'}/{obj['name']}"


def flow_graph(
    *,
    event_sources: list[dict[str, Any]],
    runners: list[SensorRunner],
    runner_errors: Mapping[str, str],
    consumer_errors: Mapping[str, str],
    store: TraceStore,
    bus_connected: bool,
    argo_workflows_url: str,
) -> dict[str, Any]:
    """The page's document. ``event_sources``: ``{name, namespace, events: [{name, type,
    ready, error}]}``; ``runner_errors``: ``namespace/name`` → why that sensor stopped;
    ``consumer_errors``: why a sensor's bus consumer is not consuming now (not ready)."""
    counts = store.counts
    sources = []
    for es in event_sources:
        events = []
        for ev in es["events"]:
            c = counts.get(("source", es["namespace"], es["name"], ev["name"]))
            events.append(
                {
                    **{k: ev[k] for k in ("name", "type")},
                    "id": f"ev:{es['namespace']}/{es['name']}/{ev['name']}",
                    "status": _status(
                        ev["ready"] and bus_connected,
                        ev["error"] or c["lastError"],
                        "not listening" if not ev["ready"] else "bus disconnected: posts get 503",
                    ),
                    "counts": c,
                }
            )
        sources.append(
            {
                "id": f"es:{es['namespace']}/{es['name']}",
                "name": es["name"],
                "namespace": es["namespace"],
                "events": events,
            }
        )
    sensors = []
    for r in runners:
        deps = []
        for d in r.deps:
            c = counts.get(("dependency", r.namespace, r.name, d.name))
            deps.append(
                {
                    "name": d.name,
                    "id": f"dep:{r.namespace}/{r.name}/{d.name}",
                    "eventSourceName": d.event_source_name,
                    "eventName": d.event_name,
                    # a Sensor consumes EventSources of its own namespace, as in Argo
                    "from": f"ev:{r.namespace}/{d.event_source_name}/{d.event_name}",
                    "counts": c,
                    "status": _status(True, c["lastError"], ""),
                }
            )
        triggers = []
        for t in r.triggers:
            c = counts.get(("trigger", r.namespace, r.name, t.name))
            objects = [
                {**o, "url": workflow_link(argo_workflows_url, o)}
                for o in store.objects(r.namespace, r.name, t.name)
            ]
            triggers.append(
                {
                    "name": t.name,
                    "id": f"trg:{r.namespace}/{r.name}/{t.name}",
                    "type": t.type_key,
                    "conditions": t.condition.text,
                    "counts": c,
                    "status": _status(True, c["lastError"], ""),
                    "objects": objects,
                }
            )
        key = f"{r.namespace}/{r.name}"
        error = runner_errors.get(key, "")
        if not bus_connected:
            down = "bus disconnected: its consumers wait for it to come back"
        else:
            down = consumer_errors.get(key, "")
        sensors.append(
            {
                "id": f"sn:{r.namespace}/{r.name}",
                "name": r.name,
                "namespace": r.namespace,
                "status": _status(not down, error, down),
                "dependencies": deps,
                "triggers": triggers,
            }
        )
    return {
        "windowSeconds": counts.window_seconds,
        "generated": datetime.now(UTC).isoformat(),
        "argoWorkflowsUrl": argo_workflows_url,
        "eventSources": sources,
        "sensors": sensors,
    }
