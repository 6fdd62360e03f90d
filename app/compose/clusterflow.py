"""The event-flow page in cluster mode: what ``triggerfish controller`` shows.

The controller runs no source and no sensor, so everything comes from elsewhere:

* the graph from the EventSource and Sensor objects in the Kubernetes API (listed at
  most once a second, so every controller replica can serve the page, leader or not);
* statuses and counts from the reports every pod publishes on its bus
  (:mod:`app.compose.status`): counts add up over an object's pods, a state counts
  only while its pod's report is fresh, an object without one shows "no pod reports";
* the objects each trigger created from the persisted traces (``TRIGGERFISH_TRACES``),
  read incrementally; ``/api/v1/traces`` reads that stream too;
* dead letters from each bus; a replay is asked over the bus of the sensor's pods
  (:meth:`app.compose.flow.DeadLetters.replay`), which run it where the sensor runs.

Buses: ``--nats-url`` (``bus.nats_url``) for every namespace when given, else the
EventBus of each object (``status.config.jetstream``, as the pods find it). One
connection per distinct URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.adapters.bus import Bus
from app.adapters.kube import ApiKube, KubeError
from app.adapters.metrics import RecentCounts
from app.compose.flow import (
    TRACE_PREFIX,
    TRACE_STREAM,
    DeadLetters,
    SensorView,
    TraceLog,
    flow_graph,
)
from app.compose.manifests import ManifestInvalid, load_one
from app.compose.podrole import bus_connection
from app.compose.runtime import source_plugins
from app.compose.status import is_fresh, read_reports
from app.kernel.argo import API_VERSION
from app.kernel.errors import BusUnavailableError, TriggerfishError
from app.kernel.settings import Settings
from sensors.trace import Trace, TraceStore

log = logging.getLogger("triggerfish.clusterflow")

_RECONNECT_SECONDS = 10.0
"""A bus the controller could not connect to is tried again after this long."""

_TRACE_TAIL = 2000
"""At most this many new traces are read per refresh (objects per trigger)."""


@dataclass
class _BusView:
    """One bus connection and what was read from it."""

    bus: Bus
    namespaces: set[str] = field(default_factory=set)
    bus_names: set[str] = field(default_factory=set)
    trace_log: TraceLog | None = None
    dead_letters: DeadLetters | None = None
    last_trace_seq: int = 0


class ClusterFlow:
    """The :class:`app.compose.server.FlowView` of a cluster, for the controller."""

    def __init__(self, kube: ApiKube, settings: Settings, namespace: str = "") -> None:
        self.kube = kube
        self.settings = settings
        self.namespace = namespace
        self._buses: dict[str, _BusView] = {}
        self._by_ns: dict[str, _BusView] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        """url → when and why connecting to it failed (tried again after a while)."""
        self._bus_errors: dict[str, str] = {}
        """namespace → why the controller cannot read that namespace's bus."""
        self.store = TraceStore(capacity=1000)
        self._graph: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        for v in self._buses.values():
            with contextlib.suppress(Exception):
                await v.bus.close()
        self._buses.clear()
        self._by_ns.clear()

    # -- buses ------------------------------------------------------------------------
    async def _connect(self, namespace: str, bus_name: str) -> _BusView | None:
        """The connection to the bus of ``namespace`` (None, with the reason noted, when
        it cannot be reached)."""
        try:
            if self.settings.bus.nats_url:
                url, token = self.settings.bus.nats_url, self.settings.bus.token
            else:
                url, token, _ = await bus_connection(self.kube, namespace, bus_name)
            view = self._buses.get(url)
            if view is None:
                failed = self._failed.get(url)
                if failed is not None and time.monotonic() - failed[0] < _RECONNECT_SECONDS:
                    raise BusUnavailableError(failed[1])
                bs = self.settings.bus.model_copy(update={"token": token})
                bus = Bus(bs, url)
                try:
                    # bounded: the client retries a server that does not answer forever
                    await asyncio.wait_for(bus.connect(), bs.connect_timeout_seconds + 3)
                except (TimeoutError, BusUnavailableError) as e:
                    with contextlib.suppress(Exception):
                        await bus.close()
                    why = str(e) or f"no answer from NATS at {url}"
                    self._failed[url] = (time.monotonic(), why)
                    raise BusUnavailableError(why) from e
                self._failed.pop(url, None)
                view = _BusView(bus)
                view.trace_log = TraceLog(self.store, self.settings.traces)
                view.trace_log.bus = bus
                self._buses[url] = view
        except TriggerfishError as e:
            self._bus_errors[namespace] = f"the controller cannot reach the bus: {e}"
            return None
        self._bus_errors.pop(namespace, None)
        view.namespaces.add(namespace)
        if bus_name not in view.bus_names:
            view.bus_names.add(bus_name)
            view.dead_letters = DeadLetters(
                view.bus,
                [],
                sorted(view.bus_names),
                replay_timeout_seconds=self.settings.ui.replay_timeout_seconds,
            )
        self._by_ns[namespace] = view
        return view

    async def _tail_traces(self, view: _BusView) -> None:
        """Note the objects of the traces stored since the last refresh."""
        first, last = await view.bus.stream_bounds(TRACE_STREAM)
        if last <= view.last_trace_seq:
            return
        start = max(view.last_trace_seq + 1, first, last - _TRACE_TAIL + 1)
        msgs = await view.bus.read_stream(TRACE_STREAM, f"{TRACE_PREFIX}.>", last - start + 1)
        for m in msgs:
            with contextlib.suppress(ValueError, orjson.JSONDecodeError):
                self.store.remember(Trace.from_dict(orjson.loads(m.data)))
        view.last_trace_seq = last

    # -- objects ----------------------------------------------------------------------
    async def _objects(self, kind: str) -> list[Any]:
        listed = await self.kube.list(API_VERSION, kind, self.namespace)
        out = []
        for obj in listed.get("items") or []:
            obj.setdefault("apiVersion", API_VERSION)
            obj.setdefault("kind", kind)
            try:
                out.append(load_one(obj))
            except ManifestInvalid:
                continue  # its status conditions say why (the reconciler writes them)
        return out

    # -- the FlowView -----------------------------------------------------------------
    async def graph(self) -> dict[str, Any]:
        async with self._lock:
            cached = self._graph
            if cached is not None and time.monotonic() - cached[0] < 1.0:
                return cached[1]
            doc = await self._build()
            self._graph = (time.monotonic(), doc)
            return doc

    async def _build(self) -> dict[str, Any]:
        ui = self.settings.ui
        try:
            sources = await self._objects("EventSource")
            sensors = await self._objects("Sensor")
        except KubeError as e:
            raise BusUnavailableError(f"cannot list objects: {e}") from e
        wanted: dict[str, str] = {}
        for obj in sources + sensors:
            ns = obj.metadata.namespace or "default"
            wanted.setdefault(ns, getattr(obj.spec, "event_bus_name", None) or "default")
        reports: list[dict[str, Any]] = []
        seen: set[int] = set()
        for ns, bus_name in sorted(wanted.items()):
            view = await self._connect(ns, bus_name)
            if view is None or id(view) in seen:
                continue
            seen.add(id(view))
            try:
                reports += await read_reports(view.bus)
                await self._tail_traces(view)
            except BusUnavailableError as e:
                for n in view.namespaces:
                    self._bus_errors[n] = f"the controller cannot read the bus: {e}"
        counts = RecentCounts(ui.window_seconds)
        now = time.time()
        fresh: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for r in reports:
            counts.merge(r.get("counts") or [])
            if is_fresh(r, ui, now):
                who = (str(r.get("kind")), str(r.get("namespace")), str(r.get("name")))
                fresh.setdefault(who, []).append(r)
        self.store.counts = counts
        runner_errors: dict[str, str] = {}
        consumer_errors: dict[str, str] = {}
        for s in sensors:
            ns, name = s.metadata.namespace or "default", s.metadata.name
            key = f"{ns}/{name}"
            pods = fresh.get(("Sensor", ns, name), [])
            down = self._absent(ns, "Sensor", pods)
            if not down:
                errors = [e for p in pods for e in (p.get("runnerErrors") or {}).values()]
                if errors and not any(p.get("ready") for p in pods):
                    runner_errors[key] = str(errors[0])
                down = _first_down(pods)
            if down:
                consumer_errors[key] = down
        doc = flow_graph(
            event_sources=[self._source_state(es, fresh) for es in sources],
            sensors=[SensorView.of_model(s) for s in sensors],
            runner_errors=runner_errors,
            consumer_errors=consumer_errors,
            store=self.store,
            bus_connected=True,  # per object: from its pods' reports
            argo_workflows_url=ui.argo_workflows_url,
        )
        # how many pods report for each object now (replicas, a restart in progress)
        for kind, nodes in (("EventSource", doc["eventSources"]), ("Sensor", doc["sensors"])):
            for n in nodes:
                n["pods"] = sorted(
                    str(p.get("pod")) for p in fresh.get((kind, n["namespace"], n["name"]), [])
                )
        return doc

    def _absent(self, namespace: str, kind: str, pods: list[dict[str, Any]]) -> str:
        """Why nothing is known of an object's pods ("" when some pod reports)."""
        if namespace in self._bus_errors:
            return self._bus_errors[namespace]
        if not pods:
            return f"no pod reports (is the {kind}'s Deployment running?)"
        return ""

    def _source_state(
        self, es: Any, fresh: dict[tuple[str, str, str], list[dict[str, Any]]]
    ) -> dict[str, Any]:
        ns, name = es.metadata.namespace or "default", es.metadata.name
        pods = fresh.get(("EventSource", ns, name), [])
        absent = self._absent(ns, "EventSource", pods)
        reported: dict[str, list[dict[str, Any]]] = {}
        for p in pods:
            for state in p.get("sources") or []:
                if state.get("namespace") == ns and state.get("name") == name:
                    for ev in state.get("events") or []:
                        reported.setdefault(str(ev.get("name")), []).append(
                            {**ev, "busConnected": p.get("busConnected", False)}
                        )
        events = []
        for type_key, configs in source_plugins(es):
            for ev_name in sorted(configs):
                seen = reported.get(ev_name, [])
                ready = any(e.get("ready") and e["busConnected"] for e in seen)
                error = "" if ready else next((str(e["error"]) for e in seen if e.get("error")), "")
                reason = absent or ("bus disconnected in its pod" if seen else "not listening")
                events.append(
                    {"name": ev_name, "type": type_key, "ready": ready, "error": error,
                     "reason": reason}
                )  # fmt: skip
        return {"namespace": ns, "name": name, "events": events}

    async def traces(
        self, limit: int, *, before: int | None, namespace: str | None, sensor: str | None,
        **filters: Any,
    ) -> list[dict[str, Any]]:  # fmt: skip
        await self.graph()  # connects to the buses of the objects listed now
        out: list[dict[str, Any]] = []
        for view in list(self._buses.values()):
            if namespace and namespace not in view.namespaces:
                continue
            assert view.trace_log is not None
            out += await view.trace_log.query(
                limit, before=before, namespace=namespace, sensor=sensor, **filters
            )
        if len(self._buses) > 1:  # sequence numbers of different buses do not compare
            out.sort(key=lambda t: str(t.get("received") or ""), reverse=True)
        return out[:limit]

    async def dead_letters(self, namespace: str | None = None) -> DeadLetters | None:
        """The dead letters of ``namespace``'s bus; without one, of the only bus (None
        when there are several: a sequence number names a message of one bus)."""
        found = await self.all_dead_letters()
        if namespace:
            view = self._by_ns.get(namespace)
            return view.dead_letters if view is not None else None
        return found[0] if len(found) == 1 else None

    async def all_dead_letters(self) -> list[DeadLetters]:
        await self.graph()  # connects to the buses of the objects listed now
        return [v.dead_letters for v in self._buses.values() if v.dead_letters is not None]


def _first_down(pods: list[dict[str, Any]]) -> str:
    """Why a sensor consumes nothing now, when none of its fresh pods is ready."""
    if any(p.get("ready") for p in pods):
        return ""
    for p in pods:
        if not p.get("busConnected"):
            return f"pod {p.get('pod')}: bus disconnected"
        for err in (p.get("consumerErrors") or {}).values():
            return f"pod {p.get('pod')}: {err}"
    return "not ready in any pod"
