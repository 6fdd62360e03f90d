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
  with the same events, hence the same firing key) or discards it. A replay runs where
  the sensor runs: in this process when it runs the sensor, else asked over the bus
  (``_replay.<namespace>.<sensor>``) of the sensor's pods, one of which runs it.
* :class:`SensorView` is what the graph needs of a sensor, from a running runner or
  from the Sensor object alone (the controller's page, :mod:`app.compose.clusterflow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from app.adapters.bus import Bus, NoResponderError
from app.kernel.errors import BusUnavailableError, ConfigError, TriggerfishError
from app.kernel.events import Event
from app.kernel.settings import TraceSettings
from app.kernel.subjects import subject_token
from sensors.conditions import Condition
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


REPLAY_PREFIX = "_replay"
"""Replay requests: ``_replay.<namespace>.<sensor>`` (core NATS request/reply)."""


def replay_subject(namespace: str, sensor: str) -> str:
    return f"{REPLAY_PREFIX}.{subject_token(namespace)}.{subject_token(sensor)}"


class DeadLetterGone(TriggerfishError):
    """The dead letter is no longer stored (replayed, discarded or aged out)."""


class DeadLetters:
    """The dead-letter subjects of every EventBus a process uses."""

    def __init__(
        self,
        bus: Bus,
        runners: list[SensorRunner],
        bus_names: list[str],
        replay_timeout_seconds: float = 60.0,
    ) -> None:
        self.bus = bus
        self.runners = runners
        self.bus_names = sorted(bus_names)
        self.replay_timeout_seconds = replay_timeout_seconds
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._stop_serving: list[Any] = []

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

        Where the sensor runs: here when this process runs it, else the request goes
        over the bus to the sensor's pods (``_replay.<namespace>.<sensor>``, one of its
        replicas answers; :meth:`serve_replays`). One replay at a time per dead letter
        in a process; a second one after a success finds it gone
        (:class:`DeadLetterGone`), and the trigger's firing key (the same events, the
        same key) keeps a concurrent duplicate from creating a second object."""
        entry = await self.show(bus, seq)
        runner = self._runner(entry["namespace"], entry["sensor"])
        if runner is None:
            return await self._replay_remote(entry)
        lock = self._locks.setdefault((bus, seq), asyncio.Lock())
        async with lock:
            entry = await self.show(bus, seq)
            events: Mapping[str, Event] = {
                dep: Event.from_json(orjson.dumps(ev)) for dep, ev in entry["events"].items()
            }
            trace = await runner.replay(entry["trigger"], events)
            ok = all(o.status == "succeeded" for o in trace.triggers)
            if ok:
                await self.bus.delete_stored(bus, seq)
            self._locks.pop((bus, seq), None)
            return {"replayed": ok, "deadLetter": entry, "trace": trace.to_dict()}

    def _runner(self, namespace: str, sensor: str) -> SensorRunner | None:
        return next(
            (r for r in self.runners if r.name == sensor and r.namespace == namespace), None
        )

    async def _replay_remote(self, entry: dict[str, Any]) -> dict[str, Any]:
        subject = replay_subject(entry["namespace"], entry["sensor"])
        ask = orjson.dumps({"bus": entry["bus"], "seq": entry["seq"]})
        try:
            raw = await self.bus.request(subject, ask, self.replay_timeout_seconds)
        except NoResponderError as e:
            raise DeadLetterGone(
                f"sensor {entry['namespace']}/{entry['sensor']} does not run "
                "(no pod of it answers on the bus)"
            ) from e
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise BusUnavailableError(f"unreadable answer from the sensor: {raw[:80]!r}") from e
        if not isinstance(answer, dict) or not isinstance(answer.get("result"), dict):
            error = str(answer.get("error") if isinstance(answer, dict) else answer)
            if isinstance(answer, dict) and answer.get("gone"):
                raise DeadLetterGone(error)
            raise BusUnavailableError(f"the sensor could not replay it: {error}")
        return dict(answer["result"])

    async def serve_replays(self) -> None:
        """Answer replay requests for the sensors this process runs (their pods share a
        queue group, so one replica runs each request)."""
        for r in self.runners:

            async def answer(ask: bytes) -> bytes:
                try:
                    body = orjson.loads(ask)
                    result = await self.replay(str(body["bus"]), int(body["seq"]))
                except (DeadLetterGone, ConfigError) as e:
                    return orjson.dumps({"error": str(e), "gone": True})
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    return orjson.dumps({"error": f"malformed replay request: {e}"})
                except TriggerfishError as e:
                    return orjson.dumps({"error": f"replay failed: {e}"})
                return orjson.dumps({"result": result})

            stop = await self.bus.serve(replay_subject(r.namespace, r.name), "replay", answer)
            self._stop_serving.append(stop)

    async def stop_serving(self) -> None:
        for stop in self._stop_serving:
            await stop()
        self._stop_serving.clear()

    async def discard(self, bus: str, seq: int) -> None:
        await self.show(bus, seq)
        if not await self.bus.delete_stored(bus, seq):
            raise DeadLetterGone(f"dead letter {bus}:{seq} is gone (replayed or discarded)")


@dataclass(frozen=True)
class DependencyView:
    """What the page shows of one dependency."""

    name: str
    event_source_name: str
    event_name: str


@dataclass(frozen=True)
class TriggerView:
    """What the page shows of one trigger."""

    name: str
    type_key: str
    conditions: str


@dataclass(frozen=True)
class SensorView:
    """What the page shows of one Sensor: from a running :class:`SensorRunner`, or from
    the Sensor object alone (the controller, which runs no sensor)."""

    namespace: str
    name: str
    deps: tuple[DependencyView, ...]
    triggers: tuple[TriggerView, ...]

    @classmethod
    def of_runner(cls, r: SensorRunner) -> SensorView:
        return cls(
            r.namespace,
            r.name,
            tuple(DependencyView(d.name, d.event_source_name, d.event_name) for d in r.deps),
            tuple(TriggerView(t.name, t.type_key, t.condition.text) for t in r.triggers),
        )

    @classmethod
    def of_model(cls, sensor: Any) -> SensorView:
        """From a loaded Sensor model (a condition that does not compile shows as written)."""
        deps = tuple(
            DependencyView(d.name, d.event_source_name, d.event_name)
            for d in sensor.spec.dependencies
        )
        names = [d.name for d in deps]
        triggers = []
        for t in sensor.spec.triggers:
            written = getattr(t.template, "conditions", None)
            try:
                text = Condition.compile(written, names).text
            except ValueError:
                text = written or ""
            triggers.append(TriggerView(t.template.name, t.template.trigger_type, text))
        return cls(
            sensor.metadata.namespace or "default", sensor.metadata.name, deps, tuple(triggers)
        )


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
    sensors: list[SensorView],
    runner_errors: Mapping[str, str],
    consumer_errors: Mapping[str, str],
    store: TraceStore,
    bus_connected: bool,
    argo_workflows_url: str,
) -> dict[str, Any]:
    """The page's document. ``event_sources``: ``{name, namespace, events: [{name, type,
    ready, error}]}``; ``runner_errors``: ``namespace/name`` → why that sensor stopped;
    ``consumer_errors``: why a sensor's bus consumer is not consuming now (not ready).
    An event may carry a ``reason`` for not being ready (default: not listening)."""
    counts = store.counts
    sources = []
    for es in event_sources:
        events = []
        for ev in es["events"]:
            c = counts.get(("source", es["namespace"], es["name"], ev["name"]))
            status = _status(
                ev["ready"] and bus_connected,
                ev["error"] or c["lastError"],
                (ev.get("reason") or "not listening")
                if not ev["ready"]
                else "bus disconnected: posts get 503",
            )
            if status["state"] == "ready" and ev.get("standby"):
                status["reason"] = ev["standby"]  # idle on purpose: another replica fires
            events.append(
                {
                    **{k: ev[k] for k in ("name", "type")},
                    "id": f"ev:{es['namespace']}/{es['name']}/{ev['name']}",
                    "status": status,
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
    sensor_nodes = []
    for r in sensors:
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
                    "conditions": t.conditions,
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
        sensor_nodes.append(
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
        "sensors": sensor_nodes,
    }
