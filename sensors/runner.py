"""The sensor runner: per-event domain work for one Sensor (STYLE §4).

For every dependency it asks the bus for a durable consumer on
``<bus>.<eventSourceName>.<eventName>`` and handles each delivered event:

* **Fast path** (one dependency, so every trigger's condition is met by that event):
  fire the triggers and ack the bus message only after they all succeeded or were
  dead-lettered. Events are processed concurrently.
* **Condition path** (several dependencies): the event is stored as the latest event of
  its dependency for each trigger whose condition names it (in memory, written through
  to a JetStream key-value bucket, so a restart between dependency A and B still fires
  once B arrives, and replicas sharing the consumers see each other's events: see
  :mod:`sensors.condstate`); then every trigger whose condition it completed fires and
  its state is cleared; then the message is acked. Processed one event at a time per
  sensor, in order.

Triggers run with bounded retries (``retryStrategy``, whatever ``atLeastOnce`` says).
Transient failures are retried (waiting at least the ``Retry-After`` a peer asked for,
within ``max_delay_seconds``); when retries are exhausted, or on a permanent failure,
the firing goes to the dead-letter subject ``<bus>._dlq.<sensor>.<trigger>`` and the
message is acked. When the dead letter cannot be published, the message is nak'd, not
acked, so it is redelivered. Each firing carries a key hashed from (sensor, trigger, event ids),
which triggers use to make their effects idempotent under redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from app.adapters import tracing
from app.kernel import jsoncodec
from app.kernel.errors import (
    ConfigError,
    PermanentError,
    ScriptError,
    TransientError,
    TriggerfishError,
)
from app.kernel.events import Event
from app.kernel.subjects import dead_letter_subject, event_subject
from sensors.conditions import Condition
from sensors.condstate import Completion, ConditionState
from sensors.filters import CompiledFilters, FilterVerdict
from sensors.parameters import apply_parameters, compile_parameters
from sensors.reset import Clock, ConditionsReset, SystemClock, run_resets
from sensors.trace import Trace, TraceStore, TriggerOutcome
from sensors.transform import CompiledTransform
from sensors.triggers.base import Invocation, Trigger, TriggerContext, TriggerResult
from sensors.triggers.registry import TRIGGERS

log = logging.getLogger("triggerfish.sensor")
trace_log = logging.getLogger("triggerfish.trace")
"""One line per processed event; with JSON logs the line carries the whole trace."""


class Message(Protocol):
    """A delivered bus message (implemented by ``app.adapters.bus.BusMessage``)."""

    event: Event
    num_delivered: int

    async def ack(self) -> None: ...

    async def nak(self, delay_seconds: float | None = None) -> None: ...

    async def in_progress(self) -> None: ...


class BusPort(Protocol):
    """What the runner needs from the bus adapter."""

    async def consume(
        self,
        bus: str,
        subject: str,
        durable: str,
        handler: Callable[[Any], Awaitable[None]],
        *,
        concurrency: int = 1,
        ack_wait_seconds: float | None = None,
        ready: asyncio.Event | None = None,
    ) -> None: ...

    async def publish_raw(self, subject: str, payload: bytes, msg_id: str) -> None: ...

    async def state_store(self, name: str) -> Any: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff (Argo's ``retryStrategy`` / k8s ``wait.Backoff``)."""

    steps: int = 5
    duration_seconds: float = 1.0
    factor: float = 1.0
    jitter: float = 1.0
    max_delay_seconds: float = 30.0

    def delays(self) -> list[float]:
        """The sleeps between ``steps`` attempts."""
        out, d = [], self.duration_seconds
        for _ in range(max(0, self.steps - 1)):
            j = d * self.jitter * random.random() if self.jitter > 0 else 0.0
            out.append(min(d + j, self.max_delay_seconds))
            d *= self.factor
        return out


class RateLimiter:
    """``rateLimit``: at most ``per_unit`` firings per ``unit_seconds`` (a token bucket
    that starts full); callers wait for a token, they are never refused."""

    def __init__(self, per_unit: int, unit_seconds: float) -> None:
        self.rate = per_unit / unit_seconds
        self.capacity = float(per_unit)
        self.tokens = float(per_unit)
        self.last = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


_UNIT_SECONDS = {"Second": 1.0, "Minute": 60.0, "Hour": 3600.0, "": 1.0}


class PreparedTrigger:
    """One trigger of the sensor, compiled at load: type, condition, params, retries."""

    def __init__(
        self, spec: Any, dependencies: list[str], ctx: TriggerContext, defaults: RetryPolicy
    ) -> None:
        template = spec.template
        ctx = dataclasses.replace(ctx, policy=getattr(spec, "policy", None))
        self.name: str = template.name
        self.spec = spec
        self.type_key: str = template.trigger_type
        self.config: Any = template.trigger_config
        if self.type_key not in TRIGGERS:
            raise ConfigError(f"trigger type {self.type_key!r} is not supported", self.name)
        self.plugin_cls: type[Trigger] = TRIGGERS.load(self.type_key)
        self.ctx = ctx
        try:
            self.condition = Condition.compile(getattr(template, "conditions", None), dependencies)
        except ValueError as e:
            raise ConfigError(str(e), "template.conditions") from e
        self.template_params = compile_parameters(spec.parameters, where="parameters")
        rs = getattr(spec, "retry_strategy", None)
        if rs is not None:
            self.retry = RetryPolicy(
                steps=rs.steps_value,
                duration_seconds=rs.duration_seconds,
                factor=rs.factor_value,
                jitter=rs.jitter_value,
                max_delay_seconds=defaults.max_delay_seconds,
            )
        else:
            self.retry = defaults
        rl = getattr(spec, "rate_limit", None)
        self.limiter = (
            RateLimiter(rl.requests_per_unit, _UNIT_SECONDS[rl.unit])
            if rl is not None and rl.requests_per_unit > 0
            else None
        )
        dlq = getattr(spec, "dlq_trigger", None)
        try:
            self.dlq = PreparedTrigger(dlq, dependencies, ctx, defaults) if dlq else None
        except ConfigError as e:
            raise ConfigError(e.message, _join("dlqTrigger", e.path)) from e
        try:
            self._plugin = None if self.template_params else self.plugin_cls(self.config, ctx)
        except ConfigError as e:
            raise ConfigError(e.message, _join("template", e.path)) from e
        except (ValueError, PermanentError) as e:  # the config cannot work, whatever the event
            inner, sep, message = str(e).partition(": ")
            if sep and inner.startswith(f"{self.type_key}.") and " " not in inner:
                raise ConfigError(message, f"template.{inner}") from e
            raise ConfigError(str(e), f"template.{self.type_key}") from e
        self._template_dict: dict[str, Any] | None = None

    def plugin_for(self, events: Mapping[str, Event]) -> tuple[Trigger, list[dict[str, Any]]]:
        """The plugin to run: shared, or built from a template with parameters applied."""
        if self._plugin is not None:
            return self._plugin, []
        if self._template_dict is None:
            self._template_dict = self.spec.template.model_dump(
                by_alias=True, exclude_none=True, exclude_unset=True
            )
        new_template, records = apply_parameters(self._template_dict, self.template_params, events)
        try:
            cfg = self.config.__class__.model_validate(new_template[self.type_key])
        except Exception as e:
            raise PermanentError(f"trigger template after parameters is invalid: {e}") from e
        return self.plugin_cls(cfg, self.ctx), records


def _join(prefix: str, path: str) -> str:
    """``prefix.path`` (a field path under ``prefix``); ``prefix`` when ``path`` is empty."""
    return f"{prefix}.{path}" if path else prefix


def _retry_delay(planned: float, error: Exception, policy: RetryPolicy) -> float:
    """The planned backoff, or the peer's ``Retry-After`` when that is longer (capped)."""
    asked = error.retry_after_seconds if isinstance(error, TransientError) else None
    if asked is None or asked <= planned:
        return planned
    return min(asked, max(planned, policy.max_delay_seconds))


def firing_key(namespace: str, sensor: str, trigger: str, events: Mapping[str, Event]) -> str:
    """Stable hex key of (sensor, trigger, event ids): same events → same key."""
    h = hashlib.sha256(f"{namespace}/{sensor}\x00{trigger}".encode())
    for dep in sorted(events):
        h.update(f"\x00{dep}={events[dep].id}".encode())
    return h.hexdigest()[:32]


def firing_concurrency(floor: int, kube: Any, max_ack_pending: int) -> int:
    """Events a fast-path sensor works on at once.

    Enough to keep every request slot of the Kubernetes client busy while other firings
    are between steps (filters, parameters, ack): twice its in-flight limit, at least
    ``floor``; never more than the consumer may hold unacked (``max_ack_pending``), which
    also bounds the memory the events in progress take.
    """
    want = max(floor, 2 * int(getattr(kube, "max_in_flight", 0) or 0))
    return max(1, min(want, max_ack_pending) if max_ack_pending > 0 else want)


class SensorRunner:
    """Runs one Sensor against the bus until cancelled."""

    def __init__(
        self,
        sensor: Any,
        bus: BusPort,
        trigger_ctx: TriggerContext,
        traces: TraceStore,
        metrics: Any,
        *,
        concurrency: int = 64,
        max_ack_pending: int = 0,
        default_retry: RetryPolicy | None = None,
        ack_wait_seconds: float = 30.0,
        reset_clock: Clock | None = None,
    ) -> None:
        self.sensor = sensor
        self.name: str = sensor.metadata.name
        self.namespace: str = sensor.metadata.namespace or "default"
        self.bus = bus
        self.bus_name: str = getattr(sensor.spec, "event_bus_name", None) or "default"
        self.deps = list(sensor.spec.dependencies)
        dep_names = [d.name for d in self.deps]
        self.filters: dict[str, CompiledFilters] = {}
        self.transforms: dict[str, CompiledTransform] = {}
        for i, d in enumerate(self.deps):
            try:
                transform = CompiledTransform.compile(d.transform)
                self.filters[d.name] = CompiledFilters.compile(
                    d.filters, d.filters_logical_operator or ""
                )
            except ValueError as e:
                inner, sep, message = str(e).partition(": ")
                if sep and " " not in inner:  # the message starts with the field's path
                    raise ConfigError(message, f"spec.dependencies[{i}].{inner}") from e
                raise ConfigError(str(e), f"spec.dependencies[{i}].filters") from e
            if transform is not None:
                self.transforms[d.name] = transform
        # Dependencies running user scripts (jq, Lua) are screened in a worker thread:
        # the scripts are bounded, but a slow one must not hold up other events.
        self._scripted = {
            d.name for d in self.deps if d.name in self.transforms or self.filters[d.name].scripted
        }
        self.triggers: list[PreparedTrigger] = []
        for i, t in enumerate(sensor.spec.triggers):
            try:
                prepared = PreparedTrigger(
                    t, dep_names, trigger_ctx, default_retry or RetryPolicy()
                )
            except ConfigError as e:
                raise ConfigError(e.message, _join(f"spec.triggers[{i}]", e.path)) from e
            self.triggers.append(prepared)
        # Compiled for every sensor (a bad cron fails at load), run only where there is
        # condition state to clear (several dependencies).
        self.resets: dict[str, ConditionsReset] = {}
        for i, t in enumerate(sensor.spec.triggers):
            reset = ConditionsReset.compile(
                t.template.name, t.template.conditions_reset, f"spec.triggers[{i}].template"
            )
            if reset is not None:
                self.resets[t.template.name] = reset
        self.reset_clock: Clock = reset_clock or SystemClock()
        self.traces = traces
        self.metrics = metrics
        self.concurrency = firing_concurrency(concurrency, trigger_ctx.kube, max_ack_pending)
        self.ack_wait_seconds = ack_wait_seconds
        self.fast_path = len(self.deps) == 1
        self._lock = asyncio.Lock()
        self._state: ConditionState | None = None
        self._relevant = {
            d: [t for t in self.triggers if d in t.condition.names()] for d in dep_names
        }

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Consume every dependency; ``ready`` is set once all consumers exist."""
        await self.prepare()
        readies: list[asyncio.Event] = []
        tasks: list[asyncio.Task[None]] = []
        if not self.fast_path and self.resets:
            # Before consuming: an event must not combine with state a reset cleared.
            await self._reset_missed()
            tasks += [
                asyncio.create_task(
                    run_resets(reset, self._clearer(name), self.reset_clock),
                    name=f"sensor:{self.name}:reset:{name}",
                )
                for name, reset in self.resets.items()
            ]
        for dep in self.deps:
            r = asyncio.Event()
            readies.append(r)
            subject = event_subject(self.bus_name, dep.event_source_name, dep.event_name)
            tasks.append(
                asyncio.create_task(
                    self.bus.consume(
                        self.bus_name,
                        subject,
                        self.durable_for(dep.name),
                        self._handler(dep.name),
                        concurrency=self.concurrency if self.fast_path else 1,
                        ack_wait_seconds=self.ack_wait_seconds,
                        ready=r,
                    ),
                    name=f"sensor:{self.name}:{dep.name}",
                )
            )
        try:
            await asyncio.gather(*(r.wait() for r in readies))
            if ready is not None:
                ready.set()
            log.info(
                "sensor %s/%s listening on %d dependencies",
                self.namespace,
                self.name,
                len(self.deps),
            )
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def prepare(self) -> None:
        """Open the durable condition state (multi-dependency sensors) and fire what a
        previous run left satisfied; :meth:`run` calls it, offline runs call it alone."""
        if not self.fast_path and self._state is None:
            store = await self.bus.state_store(f"sensor-{self.namespace}-{self.name}")
            state = ConditionState(
                store,
                {t.name: t.condition for t in self.triggers},
                [d.name for d in self.deps],
            )
            await self._fire_pending(await state.load(), state)
            self._state = state

    # -- conditionsReset ----------------------------------------------------------------
    def _clearer(self, trigger: str) -> Callable[[datetime | None], Awaitable[None]]:
        async def clear(older_than: datetime | None) -> None:
            await self.reset_conditions(trigger, older_than)

        return clear

    async def _reset_missed(self) -> None:
        """Clear what a reset tick while the sensor was not running would have cleared."""
        now = self.reset_clock.now()
        for name, reset in self.resets.items():
            await self.reset_conditions(name, reset.last_tick(now))

    async def reset_conditions(self, trigger: str, older_than: datetime | None = None) -> None:
        """Delete trigger ``trigger``'s stored dependency events (``conditionsReset``):
        all of them, or those whose event time is before ``older_than``. Runs under the
        runner's lock, so it never interleaves with an event being accumulated."""
        if self._state is None:
            return
        async with self._lock:
            cleared = await self._state.reset(trigger, older_than)
        reset = self.resets.get(trigger)
        log.log(
            logging.INFO if cleared or older_than is None else logging.DEBUG,
            "conditions reset sensor=%s trigger=%s schedule=%s%s: cleared %s",
            self.name,
            trigger,
            reset if reset is not None else "-",
            f" (missed tick at {older_than.isoformat()})" if older_than is not None else "",
            ", ".join(cleared) if cleared else "nothing stored",
        )

    def _handler(self, dep: str) -> Callable[[Message], Awaitable[None]]:
        async def handle(msg: Message) -> None:
            await self.handle(dep, msg)

        return handle

    def durable_for(self, dep: str) -> str:
        """The durable consumer name of dependency ``dep`` (shared by every replica)."""
        return f"{self.namespace}-{self.name}-{dep}"

    # -- per event ----------------------------------------------------------------------
    async def handle(self, dep: str, msg: Message) -> None:
        """Process one delivered event of dependency ``dep``; ack when done."""
        with tracing.span(
            f"sensor {self.name}",
            parent=msg.event.traceparent,
            kind="consumer",
            attributes={
                "triggerfish.sensor": f"{self.namespace}/{self.name}",
                "triggerfish.dependency": dep,
                "triggerfish.event_id": msg.event.id,
                "triggerfish.delivery": msg.num_delivered,
            },
        ):
            await self._handle(dep, msg)

    async def _handle(self, dep: str, msg: Message) -> None:
        ev = msg.event
        t0 = time.perf_counter()
        trace = Trace(
            sensor=self.name,
            namespace=self.namespace,
            event_id=ev.id,
            event_source=ev.source,
            event_name=ev.subject,
            dependency=dep,
            delivery=msg.num_delivered,
        )
        log.info(
            "event received sensor=%s dependency=%s source=%s/%s id=%s delivery=%d",
            self.name, dep, ev.source, ev.subject, ev.id, msg.num_delivered,
        )  # fmt: skip
        self.metrics.sensor_events_received.labels(self.namespace, self.name, dep).inc()
        try:
            with tracing.span("filters") as sp:
                try:
                    if dep in self._scripted:
                        ev, verdict = await asyncio.to_thread(self.screen, dep, ev)
                    else:
                        ev, verdict = self.screen(dep, ev)
                except ScriptError as e:
                    # The same event would fail the same way again: record and drop it,
                    # as Argo drops an event whose transform failed.
                    trace.transform = f"{self.transforms[dep].language}: failed"
                    trace.error = str(e)
                    sp.set("triggerfish.error", trace.error)
                    self.metrics.sensor_events_processing_failed.labels(
                        self.namespace, self.name
                    ).inc()
                    log.warning(
                        "event dropped sensor=%s dependency=%s id=%s: %s",
                        self.name, dep, ev.id, e,
                    )  # fmt: skip
                    await msg.ack()
                    return
                sp.set("triggerfish.passed", verdict.passed)
                sp.set("triggerfish.verdict", str(verdict))
            if dep in self.transforms:
                trace.transform = f"{self.transforms[dep].language}: applied"
            trace.filters = verdict.reasons
            if not verdict.passed:
                trace.filtered = True
                self.metrics.sensor_events_filtered.labels(self.namespace, self.name, dep).inc()
                log.info(
                    "event filtered sensor=%s dependency=%s id=%s: %s",
                    self.name, dep, ev.id, "; ".join(verdict.reasons),
                )  # fmt: skip
                await msg.ack()
                return
            if self.fast_path:
                trace.conditions = {"satisfied": True}
                trace.fired = True
                await self._fire_all(self.triggers, {dep: ev}, trace, msg)
            else:
                async with self._lock:
                    with tracing.span("conditions"):
                        await self._accumulate(dep, ev, trace, msg)
            await msg.ack()
        except Exception as e:
            # Not durable and not done (bus down while dead-lettering, state store
            # unavailable): leave it unacked so it is redelivered.
            trace.error = f"{type(e).__name__}: {e}"
            self.metrics.sensor_events_processing_failed.labels(self.namespace, self.name).inc()
            log.warning(
                "sensor %s: event %s not done, will be redelivered: %s", self.name, ev.id, e
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay_seconds=1.0)
        finally:
            self.traces.add(trace)
            if trace_log.isEnabledFor(logging.INFO):
                results = ", ".join(f"{o.trigger}:{o.status}" for o in trace.triggers) or "-"
                trace_log.info(
                    "trace sensor=%s event=%s dependency=%s filtered=%s fired=%s triggers=%s",
                    self.name, ev.id, dep, trace.filtered, trace.fired, results,
                    extra={"trace": trace},  # serialised only by the JSON formatter
                )  # fmt: skip
            self.metrics.sensor_event_processing_duration.labels(self.namespace, self.name).observe(
                (time.perf_counter() - t0) * 1000
            )

    def screen(self, dep: str, ev: Event) -> tuple[Event, FilterVerdict]:
        """Dependency ``dep``'s transform then filters, applied to ``ev`` (no I/O): the
        event as the rest of the sensor sees it and the verdict. :class:`ScriptError`
        when the transform fails (a failing script filter is a failed verdict)."""
        transform = self.transforms.get(dep)
        if transform is not None:
            ev = transform.apply(ev)
        return ev, self.filters[dep].evaluate(ev)

    async def _accumulate(self, dep: str, ev: Event, trace: Trace, msg: Message) -> None:
        assert self._state is not None
        relevant = self._relevant[dep]
        fire = await self._state.add([t.name for t in relevant], dep, ev)
        fired = {c.trigger: c for c in fire}
        trace.conditions = {
            "state": {
                t.name: sorted(fired[t.name].entries)
                if t.name in fired
                else self._state.present(t.name)
                for t in relevant
            },
            "fired": [c.trigger for c in fire],
            "waiting": {t.name: t.condition.text for t in relevant if t.name not in fired},
        }
        for c in fire:
            trace.fired = True
            await self._fire_all([self._trigger(c.trigger)], c.events, trace, msg)
            await self._state.fired(c)

    def _trigger(self, name: str) -> PreparedTrigger:
        return next(t for t in self.triggers if t.name == name)

    async def _fire_pending(self, pending: list[Completion], state: ConditionState) -> None:
        """At start: fire rounds the bucket shows complete that no replica marked fired
        (a crash between completing and marking; same firing key, so no duplicate)."""
        for c in pending:
            trace = Trace(self.name, self.namespace, "", "", "", "(restart)")
            trace.fired = True
            await self._fire_all([self._trigger(c.trigger)], c.events, trace, None)
            await state.fired(c)
            self.traces.add(trace)

    # -- triggers -----------------------------------------------------------------------
    async def _fire_all(
        self,
        triggers: list[PreparedTrigger],
        events: Mapping[str, Event],
        trace: Trace,
        msg: Message | None,
    ) -> None:
        for t in triggers:
            outcome = await self._fire_one(t, events, msg)
            trace.triggers.append(outcome)

    async def replay(self, trigger: str, events: Mapping[str, Event]) -> Trace:
        """Run trigger ``trigger`` again for a dead-lettered firing's ``events``.

        The firing key is the same as the first time (it is hashed from the event ids),
        so a trigger that made its effect idempotent does not create a second object
        when both the original and a replay got through. A failed replay is not
        dead-lettered again (the dead letter being replayed is still there)."""
        t = next((x for x in self.triggers if x.name == trigger), None)
        if t is None:
            raise ConfigError(f"sensor {self.name} has no trigger {trigger!r}")
        first = next(iter(events.values()), None)
        trace = Trace(
            sensor=self.name,
            namespace=self.namespace,
            event_id=first.id if first else "",
            event_source=first.source if first else "",
            event_name=first.subject if first else "",
            dependency="(replay)",
        )
        trace.conditions = {"replayed": True}
        trace.fired = True
        try:
            trace.triggers.append(await self._fire_one(t, events, None, dead_letter=False))
        finally:
            self.traces.add(trace)
        return trace

    async def _fire_one(
        self,
        t: PreparedTrigger,
        events: Mapping[str, Event],
        msg: Message | None,
        *,
        dead_letter: bool = True,
    ) -> TriggerOutcome:
        with tracing.span(f"trigger {t.name}", attributes={"triggerfish.trigger": t.name}) as sp:
            outcome = await self._fire_attempts(t, events, msg, sp.trace_id, dead_letter)
            if outcome.status != "succeeded":
                sp.error(outcome.error or outcome.status)
            return outcome

    async def _fire_attempts(
        self,
        t: PreparedTrigger,
        events: Mapping[str, Event],
        msg: Message | None,
        trace_id: str,
        dead_letter: bool,
    ) -> TriggerOutcome:
        key = firing_key(self.namespace, self.name, t.name, events)
        inv = Invocation(self.name, self.namespace, t.name, events, key, trace_id)
        outcome = TriggerOutcome(trigger=t.name, status="failed")
        delays = t.retry.delays()
        labels = (self.namespace, self.name, t.name)
        last: Exception | None = None
        for attempt in range(len(delays) + 1):
            outcome.attempts = attempt + 1
            if t.limiter is not None:
                await t.limiter.acquire()
            t0 = time.perf_counter()
            try:
                plugin, template_records = t.plugin_for(events)
                result: TriggerResult = await plugin.execute(inv)
            except PermanentError as e:
                last = e
                self.metrics.action_failed.labels(*labels).inc()
                break
            except Exception as e:  # transient or unexpected: retry within bounds
                last = e
                self.metrics.action_failed.labels(*labels).inc()
                if not isinstance(e, TriggerfishError):
                    log.exception("trigger %s/%s raised unexpectedly", self.name, t.name)
                if attempt < len(delays):
                    delay = _retry_delay(delays[attempt], e, t.retry)
                    log.warning(
                        "trigger %s/%s attempt %d failed (%s); retrying in %.2fs",
                        self.name, t.name, attempt + 1, e, delay,
                    )  # fmt: skip
                    if msg is not None:
                        with contextlib.suppress(Exception):
                            await msg.in_progress()
                    await asyncio.sleep(delay)
                continue
            finally:
                self.metrics.action_duration.labels(*labels).observe(
                    (time.perf_counter() - t0) * 1000
                )
            outcome.status = "succeeded"
            outcome.action = result.action
            outcome.detail = result.detail
            outcome.parameters = template_records + result.parameters
            self.metrics.action_triggered.labels(*labels).inc()
            d = result.detail
            log.info(
                "trigger %s/%s %s %s %s/%s (events %s)",
                self.name, t.name, result.action, d.get("kind", ""), d.get("namespace", ""),
                d.get("name", ""), ",".join(e.id for e in events.values()),
            )  # fmt: skip
            return outcome
        # Failed for good: dead-letter (raises if the bus cannot take it → not acked).
        self.metrics.action_retries_failed.labels(*labels).inc()
        outcome.error = f"{type(last).__name__}: {last}" if last else "unknown error"
        if not dead_letter:
            log.error("trigger %s/%s failed again: %s", self.name, t.name, outcome.error)
            return outcome
        log.error("trigger %s/%s failed: %s; dead-lettering", self.name, t.name, outcome.error)
        if t.dlq is not None:
            dlq_outcome = await self._fire_one(t.dlq, events, msg)
            outcome.detail["dlqTrigger"] = {
                "trigger": dlq_outcome.trigger,
                "status": dlq_outcome.status,
                "action": dlq_outcome.action,
                "error": dlq_outcome.error,
            }
        await self._dead_letter(t, key, events, outcome.error, outcome.attempts)
        self.metrics.dead_lettered.labels(*labels).inc()
        outcome.status = "dead-lettered"
        return outcome

    async def _dead_letter(
        self,
        t: PreparedTrigger,
        key: str,
        events: Mapping[str, Event],
        error: str,
        attempts: int = 1,
    ) -> None:
        subject = dead_letter_subject(self.bus_name, self.name, t.name)
        payload = jsoncodec.dumps(
            {
                "sensor": self.name,
                "namespace": self.namespace,
                "trigger": t.name,
                "error": error,
                "key": key,
                "attempts": attempts,
                "time": datetime.now(UTC).isoformat(),
                "events": {d: orjson.loads(e.to_json()) for d, e in events.items()},
            }
        )
        await self.bus.publish_raw(subject, payload, f"dlq-{key}")
