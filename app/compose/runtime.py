"""The standalone supervisor: every EventSource and Sensor of a set of manifests in one
process (``triggerfish run``).

Start order matters for "nothing lost": the bus first (embedded ``nats-server`` unless a
URL is given), then the streams, then every sensor's durable consumers, and only then
the event sources, so no event is accepted before something will consume it. Stop order
is the reverse: sources stop accepting, sensors stop consuming (unacked work is
redelivered on the next start and is idempotent), the bus closes, the embedded server
stops.

The embedded server is supervised: when it exits on its own it is started again on the
same store (same port when still free, else a new one the connection follows). The
connection, streams, KV buckets and durable consumers resume on it, so events already
answered 200 are still delivered. Meanwhile publishes fail (webhooks answer 503) and
``/readyz`` says not ready; if the server stays down longer than
``bus.unhealthy_after_seconds``, ``/healthz`` fails too, so a process supervisor can
replace the whole process.

Sources keep their progress (a calendar's last tick) in the bus's key-value bucket
``source-state``, or in a ConfigMap when their manifest names one and a Kubernetes API
is configured (:class:`SourceStates`). In a pod role of an EventSource with
``spec.replicas`` > 1 (:attr:`Standalone.replica_leases`), a source type that must run
once (:meth:`~eventsources.base.EventSourcePlugin.singleton`: calendar, MQTT with its
fixed client id) runs only while this replica holds the Lease
``<eventsource>-eventsource-<type>``; the others stand by, ready, and take over when the
holder stops renewing.

With no cluster configured, objects are recorded under ``<state>/objects`` and the log
says so; manifests of other kinds (WorkflowTemplate, RBAC, ...) are applied to the
cluster when there is one, recorded otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from app import __version__
from app.adapters import tracing
from app.adapters.bus import Bus, StateStore, StreamLimits
from app.adapters.kube import ApiKube, ConfigMapState, FileKube
from app.adapters.lease import LeaderLease, LeaseTiming
from app.adapters.metrics import Metrics, SourceMetrics
from app.adapters.natsserver import EmbeddedNats, last_line
from app.adapters.secrets import ManifestSecrets
from app.compose.flow import DeadLetters, TraceLog
from app.kernel.clock import Clock, SystemClock
from app.kernel.errors import (
    BusUnavailableError,
    ConfigError,
    ListenError,
    StreamFullError,
    TransientError,
    TriggerfishError,
)
from app.kernel.settings import Settings
from app.kernel.subjects import subject_token
from eventsources.base import EventSourcePlugin, SourceContext
from eventsources.registry import REGISTRY
from sensors.runner import RetryPolicy, SensorRunner
from sensors.trace import TraceStore
from sensors.triggers.base import TriggerContext

log = logging.getLogger("triggerfish.runtime")

BIND_RETRY_FIRST_SECONDS = 0.5
BIND_RETRY_MAX_SECONDS = 30.0
"""A source that cannot bind its port retries after 0.5 s, doubling up to 30 s."""


@dataclass
class Manifests:
    """The objects one standalone run serves."""

    event_buses: list[Any] = field(default_factory=list)
    event_sources: list[Any] = field(default_factory=list)
    sensors: list[Any] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)


def source_plugins(es: Any) -> list[tuple[str, dict[str, Any]]]:
    """``(type key, {eventName: config})`` for every source type an EventSource uses."""
    return [(key, dict(events)) for key, events in es.spec.sources().items() if events]


class SourceStates:
    """The durable stores sources keep progress in
    (:class:`eventsources.base.SourceStateStores`): the bus's KV bucket ``source-state``,
    and ConfigMaps through the Kubernetes API when this process has one."""

    BUCKET = "source-state"

    def __init__(self, bus: Bus, kube: ApiKube | FileKube | None) -> None:
        self._bus = bus
        self._kube = kube
        self._kv: StateStore | None = None

    async def bus(self) -> StateStore:
        if self._kv is None:
            self._kv = await self._bus.state_store(self.BUCKET)
        return self._kv

    async def config_map(
        self, namespace: str, name: str, create_if_missing: bool
    ) -> ConfigMapState | None:
        if not isinstance(self._kube, ApiKube):
            return None
        return await ConfigMapState(self._kube, namespace, name, create_if_missing).open()


class Standalone:
    """Runs a set of manifests until ``stop`` is set."""

    def __init__(self, manifests: Manifests, settings: Settings) -> None:
        self.m = manifests
        self.settings = settings
        self.metrics = Metrics(version=__version__)
        self._lag_task: asyncio.Task[None] | None = None
        self.metrics.recent.window_seconds = settings.ui.window_seconds
        self.traces = TraceStore(counts=self.metrics.recent)
        self.trace_log = TraceLog(self.traces, settings.traces)
        self.dead_letters: DeadLetters | None = None
        self._trace_task: asyncio.Task[None] | None = None
        self.nats: EmbeddedNats | None = None
        self.bus: Bus | None = None
        self.kube: ApiKube | FileKube | None = None
        self.sources: list[EventSourcePlugin[Any]] = []
        self.runners: list[SensorRunner] = []
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._tctx: TriggerContext | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._listen_errors: dict[int, str] = {}
        """id(source plugin) → why it cannot listen (it retries meanwhile)."""
        self.bus_down_since: float | None = None
        """monotonic time the embedded server was found dead; None while it runs."""
        self.clock: Clock = SystemClock()
        """The time sources fire schedules by (tests move a fake one)."""
        self.replica_leases = False
        """Set by a pod role: an EventSource with ``spec.replicas`` > 1 runs its singleton
        source types only while holding their Lease."""
        self.leases: dict[int, LeaderLease] = {}
        """``id(plugin)`` → the Lease that plugin runs under."""

    # -- start --------------------------------------------------------------------------
    def _bus_names(self) -> set[str]:
        names = {
            getattr(es.spec, "event_bus_name", None) or "default" for es in self.m.event_sources
        }
        names |= {getattr(s.spec, "event_bus_name", None) or "default" for s in self.m.sensors}
        return names or {"default"}

    def _limits(self, bus_name: str) -> StreamLimits:
        """Stream limits from the EventBus of that name. Replicas: 1 on the embedded
        server; otherwise the streamConfig's, else as many as the bus has servers (at
        most 3, JetStream's useful maximum)."""
        d = StreamLimits(duplicates_seconds=self.settings.bus.duplicates_window_seconds)
        eb = next((b for b in self.m.event_buses if b.metadata.name == bus_name), None)
        if eb is None:
            return d
        lim = eb.stream_limits()
        return StreamLimits(
            max_msgs=lim.max_msgs if lim.max_msgs is not None else d.max_msgs,
            max_bytes=lim.max_bytes if lim.max_bytes is not None else d.max_bytes,
            max_age_seconds=(
                lim.max_age_seconds if lim.max_age_seconds is not None else d.max_age_seconds
            ),
            replicas=1 if self.nats is not None else (lim.replicas or min(eb.replicas(), 3)),
            duplicates_seconds=(
                lim.duplicates_seconds
                if lim.duplicates_seconds is not None
                else d.duplicates_seconds
            ),
            discard_new=lim.discard != 0,
            retention=lim.retention or 0,
        )

    def _exotic_url(self) -> str:
        for eb in self.m.event_buses:
            ex = eb.spec.jetstream_exotic
            if ex is not None and ex.url:
                return str(ex.url)
        return ""

    async def _start_bus(self) -> None:
        url = self.settings.bus.nats_url or self._exotic_url()
        if not url:
            self.nats = EmbeddedNats(store_dir=self.settings.state_dir / "nats")
            await asyncio.to_thread(self.nats.start)
            url = self.nats.url
            log.info("embedded nats-server (JetStream) on %s, store %s", url, self.nats.store_dir)
        self.bus = Bus(self.settings.bus, url)
        await self.bus.connect()
        bus = self.bus
        self.metrics.watch_bus(lambda: bus.connected)
        for name in sorted(self._bus_names()):
            limits = self._limits(name)
            try:
                await self.bus.ensure_stream(name, limits)
            except BusUnavailableError as e:
                if limits.replicas <= 1:
                    raise
                # A bus with fewer servers than the EventBus asks for (one local server
                # for a 3-replica manifest) cannot place the replicas: serve with one.
                log.warning("stream %r with %d replicas failed (%s); using 1 replica",
                            name, limits.replicas, e)  # fmt: skip
                await self.bus.ensure_stream(name, dataclasses.replace(limits, replicas=1))
            log.info("bus stream %r ready", name)
        if self.nats is not None:
            self._supervisor = asyncio.create_task(self._supervise_nats(), name="bus-server")

    # -- embedded server supervision --------------------------------------------------
    async def _supervise_nats(self) -> None:
        """Restart the embedded nats-server whenever it exits, until :meth:`stop`."""
        nats = self.nats
        assert nats is not None
        while not await self._stopping_within(0.1):
            if nats.running:
                continue
            code = nats.process.returncode if nats.process is not None else None
            self.bus_down_since = time.monotonic()
            log.error("embedded nats-server (pid %s) exited with %s; restarting it on %s",
                      nats.pid, code, nats.store_dir)  # fmt: skip
            delay = 0.1
            while not self._stopping.is_set():
                try:
                    await asyncio.to_thread(nats.restart)
                except TransientError as e:
                    log.error("embedded nats-server did not restart (%s); retrying in %.1fs",
                              last_line(str(e)), delay)  # fmt: skip
                    await self._stopping_within(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if self.bus is not None and self.bus.url != nats.url:
                    # a port was taken meanwhile (maybe attempts ago): follow the server
                    self.bus.set_url(nats.url)
                self.metrics.bus_server_restarts.inc()
                log.warning("embedded nats-server restarted (pid %s) on %s after %.1fs",
                            nats.pid, nats.url, time.monotonic() - self.bus_down_since)  # fmt: skip
                self.bus_down_since = None
                break

    async def _stopping_within(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less when :meth:`stop` begins; True when stopping."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
        # that arrives as the event is set.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return self._stopping.is_set()

    def bus_server_state(self) -> str:
        """``external``, ``running`` or ``restarting`` (the embedded server is down)."""
        if self.nats is None:
            return "external"
        return "restarting" if self.bus_down_since is not None else "running"

    def healthy(self) -> bool:
        """False once the embedded server has been down for ``unhealthy_after_seconds``
        (a process that cannot serve and does not recover on its own)."""
        since = self.bus_down_since
        if since is None:
            return True
        return time.monotonic() - since < self.settings.bus.unhealthy_after_seconds

    def _namespaces(self) -> set[str]:
        out = {x.metadata.namespace or "default" for x in self.m.event_sources + self.m.sensors}
        for obj in self.m.others:
            ns = (obj.get("metadata") or {}).get("namespace")
            if ns:
                out.add(ns)
        return out

    async def _start_kube(self) -> None:
        api = ApiKube.from_settings(self.settings.kube)
        if api is None:
            root = self.settings.state_dir / "objects"
            self.kube = FileKube(root)
            log.warning(
                "no Kubernetes cluster configured: objects will be recorded as YAML under %s",
                root,
            )
        else:
            self.kube = api
            log.info("Kubernetes API at %s", api.server)
            for ns in sorted(self._namespaces()):
                try:
                    if await api.ensure_namespace(ns):
                        log.info("created namespace %s", ns)
                except TriggerfishError as e:
                    log.warning("could not ensure namespace %s: %s", ns, e)
        for obj in self.m.others:
            if obj.get("kind") in ("Secret",):
                continue
            meta = obj.get("metadata") or {}
            ns = meta.get("namespace", "default")
            try:
                result = await self.kube.apply(obj, ns)
                log.info("%s %s %s/%s", result, obj.get("kind"), ns, meta.get("name"))
            except TriggerfishError as e:
                log.warning(
                    "could not apply %s %s/%s: %s", obj.get("kind"), ns, meta.get("name"), e
                )

    async def start(self) -> None:
        """Bring everything up; returns once sources are listening."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        await self._start_bus()
        await self._start_kube()
        assert self.bus is not None and self.kube is not None
        if self.settings.traces.persist:
            await self.trace_log.open(self.bus)
            self.traces.sink = self.trace_log.sink
            self._trace_task = asyncio.create_task(self.trace_log.run(), name="trace-log")
        self.dead_letters = DeadLetters(
            self.bus,
            self.runners,
            sorted(self._bus_names()),
            replay_timeout_seconds=self.settings.ui.replay_timeout_seconds,
        )
        states = SourceStates(self.bus, self.kube)
        secrets = ManifestSecrets(
            self.m.others, self.kube if isinstance(self.kube, ApiKube) else None
        )
        kube: Any = tracing.Traced(self.kube, "k8s") if tracing.enabled() else self.kube
        tctx = TriggerContext(
            kube=kube, log=logging.getLogger("triggerfish.trigger"), secrets=secrets
        )
        self._tctx = tctx
        ss = self.settings.sensor
        retry = RetryPolicy(
            steps=ss.default_retry_steps,
            duration_seconds=ss.default_retry_duration_seconds,
            factor=ss.default_retry_factor,
            jitter=0.1,
            max_delay_seconds=ss.max_retry_delay_seconds,
        )
        for sensor in self.m.sensors:
            runner = SensorRunner(
                sensor,
                self.bus,
                tctx,
                self.traces,
                self.metrics,
                concurrency=ss.concurrency,
                max_ack_pending=self.settings.bus.max_ack_pending,
                default_retry=retry,
                ack_wait_seconds=self.settings.bus.ack_wait_seconds,
            )
            self.runners.append(runner)
        for runner in self.runners:
            r = asyncio.Event()
            self._tasks.append(asyncio.create_task(runner.run(r), name=f"sensor:{runner.name}"))
            await self._wait_or_fail(r, self._tasks[-1], f"sensor {runner.name}")
        # a replay asked anywhere on the bus runs here, where the sensor runs
        await self.dead_letters.serve_replays()
        for es in self.m.event_sources:
            bus_name = getattr(es.spec, "event_bus_name", None) or "default"
            for key, events in source_plugins(es):
                events = self._remap_ports(events)
                namespace = es.metadata.namespace or "default"
                source_metrics = self.metrics.for_namespace(namespace)
                ctx = SourceContext(
                    publish=self._publisher(bus_name, source_metrics),
                    secrets=secrets,
                    log=logging.getLogger(f"triggerfish.source.{key}"),
                    metrics=source_metrics,
                    bind_host=self.settings.bind_host,
                    http=self.settings.http,
                    kube=self.kube if isinstance(self.kube, ApiKube) else None,
                    state=states,
                    clock=self.clock,
                )
                plugin = REGISTRY.load(key)(
                    es.metadata.name, es.metadata.namespace or "default", events, ctx
                )
                self.sources.append(plugin)
                source_metrics.running(es.metadata.name, len(events))
                lease = self._lease_for(es, key, plugin)
                run = functools.partial(self._run_source, plugin)
                work = run() if lease is None else lease.lead(run)
                task = asyncio.create_task(work, name=f"source:{es.metadata.name}:{key}")
                self._tasks.append(task)
        for plugin, task in zip(self.sources, self._tasks[len(self.runners) :], strict=True):
            # a source that cannot listen does not hold up the others (it keeps retrying)
            await self._wait_until(
                lambda p=plugin: self.source_ready(p) or id(p) in self._listen_errors,
                task,
                f"event source {plugin.source_name}",
            )
        self._lag_task = asyncio.create_task(self._report_lag(), name="consumer-lag")
        self.ready.set()
        log.info(
            "ready: %d event source(s), %d sensor(s)", len(self.m.event_sources), len(self.runners)
        )

    def _lease_for(self, es: Any, key: str, plugin: EventSourcePlugin[Any]) -> LeaderLease | None:
        """The Lease ``plugin`` must hold to run, when it is a singleton among replicas."""
        replicas = getattr(es.spec, "replicas", None) or 1
        if not self.replica_leases or replicas <= 1 or not plugin.singleton(plugin.events):
            return None
        if not isinstance(self.kube, ApiKube):
            log.warning("%s %s: %d replicas but no Kubernetes API for a Lease: running it",
                        key, es.metadata.name, replicas)  # fmt: skip
            return None
        cfg = self.settings.singleton
        timing = LeaseTiming(
            cfg.lease_duration_seconds, cfg.renew_deadline_seconds, cfg.retry_period_seconds
        )
        identity = cfg.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        name = f"{es.metadata.name}-eventsource-{key.lower()}"
        lease = LeaderLease(self.kube, name, plugin.namespace, identity, timing)
        self.leases[id(plugin)] = lease
        log.info("%s %s runs once among %d replicas: only while holding Lease %s/%s as %s",
                 key, es.metadata.name, replicas, plugin.namespace, name, identity)  # fmt: skip
        return lease

    def source_standby(self, plugin: EventSourcePlugin[Any]) -> str:
        """Why ``plugin`` is idle on purpose ("" when it runs): a standby replica."""
        lease = self.leases.get(id(plugin))
        if lease is None or lease.is_leader.is_set():
            return ""
        holder = lease.holder
        held = f"held by {holder}" if holder and holder != lease.identity else "not acquired yet"
        return f"standby: Lease {lease.namespace}/{lease.name} {held}"

    def source_ready(self, plugin: EventSourcePlugin[Any]) -> bool:
        """Ready: listening, or standing by for its Lease (idle on purpose)."""
        return bool(self.source_standby(plugin)) or plugin.ready()

    async def _run_source(self, plugin: EventSourcePlugin[Any]) -> None:
        """Run a source; when it cannot bind its address (:class:`ListenError`: a port
        taken by another process), note why and try again with backoff, so the other
        sources and sensors keep working and this one recovers once the port is free."""
        delay = BIND_RETRY_FIRST_SECONDS
        while True:
            try:
                await plugin.run()
                return
            except ListenError as e:
                first = id(plugin) not in self._listen_errors
                self._listen_errors[id(plugin)] = str(e)
                (log.error if first else log.debug)(
                    "event source %s/%s (%s): %s; retrying every %.1fs at most",
                    plugin.namespace, plugin.source_name, plugin.type_name, e,
                    BIND_RETRY_MAX_SECONDS,
                )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, BIND_RETRY_MAX_SECONDS)

    def listen_error(self, plugin: EventSourcePlugin[Any]) -> str:
        """Why ``plugin`` is not listening, while it retries binding ("" otherwise)."""
        if plugin.ready():
            self._listen_errors.pop(id(plugin), None)
            return ""
        return self._listen_errors.get(id(plugin), "")

    def source_errors(self) -> dict[str, str]:
        """``namespace/name (type)`` → why that source is not listening now."""
        out = {}
        for plugin in self.sources:
            err = self.listen_error(plugin)
            if err:
                out[f"{plugin.namespace}/{plugin.source_name} ({plugin.type_name})"] = err
        return out

    async def _report_lag(self) -> None:
        """Keep the consumer-lag gauges of every sensor dependency current (a scrape must
        not wait on the bus, so they are polled here)."""
        bus = self.bus
        assert bus is not None
        while True:
            for runner in self.runners:
                for dep in runner.deps:
                    lag = await bus.consumer_lag(runner.bus_name, runner.durable_for(dep.name))
                    if lag is None:
                        continue
                    labels = (runner.namespace, runner.name, dep.name)
                    self.metrics.sensor_consumer_pending.labels(*labels).set(lag[0])
                    self.metrics.sensor_consumer_ack_pending.labels(*labels).set(lag[1])
            await asyncio.sleep(self.settings.bus.lag_poll_seconds)

    def runner_errors(self) -> dict[str, str]:
        """``namespace/name`` → why that sensor's runner stopped, for stopped ones."""
        out: dict[str, str] = {}
        for runner, task in zip(self.runners, self._tasks, strict=False):
            if task.done() and not task.cancelled() and task.exception() is not None:
                out[f"{runner.namespace}/{runner.name}"] = str(task.exception())
        return out

    def consumer_errors(self) -> dict[str, str]:
        """``namespace/name`` → why a sensor's bus consumer is not consuming now."""
        if self.bus is None:
            return {}
        out: dict[str, str] = {}
        for r in self.runners:
            for d in r.deps:
                err = self.bus.consumer_errors.get(
                    subject_token(f"{r.namespace}-{r.name}-{d.name}")
                )
                if err:
                    out[f"{r.namespace}/{r.name}"] = f"bus consumer of {d.name} down: {err}"
        return out

    def source_states(self) -> list[dict[str, Any]]:
        """Per EventSource: its event names with type, listening or not, and the error
        that stopped its server (a port it could not bind, ...)."""
        n = len(self.runners)
        by_source: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for es in self.m.event_sources:
            by_source[(es.metadata.namespace or "default", es.metadata.name)] = []
        for i, plugin in enumerate(self.sources):
            task = self._tasks[n + i] if n + i < len(self._tasks) else None
            error = self.listen_error(plugin)
            if task is not None and task.done() and not task.cancelled():
                exc = task.exception()
                error = str(exc) if exc is not None else "stopped"
            ready = self.source_ready(plugin) if not error else False
            standby = self.source_standby(plugin) if not error else ""
            events = by_source.setdefault((plugin.namespace, plugin.source_name), [])
            for name in sorted(plugin.events):
                state = {"name": name, "type": plugin.type_name, "ready": ready, "error": error}
                if standby:
                    state["standby"] = standby
                events.append(state)
        for es in self.m.event_sources:  # not started (yet): every event not ready
            key = (es.metadata.namespace or "default", es.metadata.name)
            if not by_source[key]:
                for type_key, events_of in source_plugins(es):
                    by_source[key] += [
                        {"name": e, "type": type_key, "ready": False, "error": ""}
                        for e in sorted(events_of)
                    ]
        return [
            {"namespace": ns, "name": name, "events": events}
            for (ns, name), events in by_source.items()
        ]

    def _remap_ports(self, events: dict[str, Any]) -> dict[str, Any]:
        """Apply ``--port-map`` to configs that listen on a port (webhook-like)."""
        pm = self.settings.port_map
        if not pm:
            return events
        out = {}
        for name, cfg in events.items():
            port = getattr(cfg, "port", None)
            if port is not None and str(port).isdigit() and int(port) in pm:
                cfg = cfg.model_copy(update={"port": str(pm[int(port)])})
            # Types served over the webhook contract hold the port in their ``webhook``.
            context = getattr(cfg, "webhook", None)
            port = getattr(context, "port", None)
            if context is not None and str(port).isdigit() and int(str(port)) in pm:
                moved = context.model_copy(update={"port": str(pm[int(str(port))])})
                cfg = cfg.model_copy(update={"webhook": moved})
            out[name] = cfg
        return out

    def _publisher(self, bus_name: str, source_metrics: SourceMetrics) -> Any:
        bus = self.bus
        assert bus is not None

        metrics = self.metrics

        async def publish(event: Any) -> None:
            t0 = time.perf_counter()
            try:
                with tracing.span(
                    f"publish {event.source}/{event.subject}",
                    parent=event.traceparent,
                    kind="producer",
                    attributes={"triggerfish.event_id": event.id, "messaging.system": "nats"},
                ) as sp:
                    event.traceparent = sp.traceparent
                    await bus.publish(bus_name, event)
                source_metrics.publish_duration(
                    event.source, event.subject, (time.perf_counter() - t0) * 1000
                )
            except StreamFullError:
                metrics.publish_rejected(bus_name, "stream_full")
                raise
            except BusUnavailableError:
                metrics.publish_rejected(bus_name, "unavailable")
                raise
            log.debug("event published %s/%s id=%s", event.source, event.subject, event.id)

        return publish

    @staticmethod
    async def _wait_or_fail(ev: asyncio.Event, task: asyncio.Task[None], what: str) -> None:
        waiter = asyncio.create_task(ev.wait())
        done, _ = await asyncio.wait(
            {waiter, task}, return_when=asyncio.FIRST_COMPLETED, timeout=30
        )
        if task in done:
            waiter.cancel()
            exc = task.exception()
            raise ConfigError(f"{what} failed to start: {exc}") from exc
        if waiter not in done:
            waiter.cancel()
            raise TriggerfishError(f"{what} did not become ready in 30s")

    @staticmethod
    async def _wait_until(check: Any, task: asyncio.Task[None], what: str) -> None:
        for _ in range(3000):
            if task.done():
                exc = task.exception()
                raise ConfigError(f"{what} failed to start: {exc}") from exc
            if check():
                return
            await asyncio.sleep(0.01)
        raise TriggerfishError(f"{what} did not become ready in 30s")

    # -- run / stop ---------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Start, serve until ``stop`` is set or a component dies, then stop."""
        try:
            await self.start()
            stopper = asyncio.create_task(stop.wait())
            watched = {stopper, *self._tasks}
            if self._supervisor is not None:
                watched.add(self._supervisor)
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            for t in done:
                if t is not stopper and not t.cancelled() and t.exception() is not None:
                    raise TriggerfishError(f"{t.get_name()} stopped: {t.exception()}")
        finally:
            await self.stop()

    async def stop(self) -> None:
        # sources first (stop accepting), then sensors, then the bus and the server
        self._stopping.set()
        if self._supervisor is not None:
            # not cancelled: a restart in progress must finish before the server stops
            with contextlib.suppress(BaseException):
                await self._supervisor
            self._supervisor = None
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(BaseException):
                await self._lag_task
            self._lag_task = None
        n_sensors = len(self.runners)
        for t in self._tasks[n_sensors:] + self._tasks[:n_sensors]:
            t.cancel()
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        if self._trace_task is not None:
            self._trace_task.cancel()
            with contextlib.suppress(BaseException):
                await self._trace_task
        if self.dead_letters is not None:
            await self.dead_letters.stop_serving()
        if self._tctx is not None:
            with contextlib.suppress(Exception):
                await self._tctx.shared.aclose()
        if self.bus is not None:
            await self.bus.close()
        if isinstance(self.kube, ApiKube):
            await self.kube.close()
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
        log.info("stopped")
