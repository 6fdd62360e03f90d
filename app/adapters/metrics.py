"""Prometheus metrics under Argo Events' names and labels, so existing dashboards work,
plus Triggerfish's own (``triggerfish_*``).

One :class:`Metrics` object per process, passed explicitly. Event sources see it through
:meth:`Metrics.for_namespace` (a view bound to their EventSource's namespace, the
``namespace`` label Argo sets); the sensor runner and the runtime use it directly.
Durations are histograms in milliseconds under Argo's names (Argo has summaries; a
histogram aggregates across pods). No ``*_created`` series are exported.

Argo's series (``pkg/metrics/metrics.go``):

* ``argo_events_event_service_running_total{namespace,eventsource_name}``: events of an
  EventSource that are being served;
* ``argo_events_events_sent_total`` / ``..._events_sent_failed_total`` /
  ``..._events_processing_failed_total`` /
  ``..._event_processing_duration_milliseconds``
  ``{namespace,eventsource_name,event_name}``: what sources published;
* ``argo_events_action_triggered_total`` / ``..._action_failed_total`` (every failed
  attempt) / ``..._action_retries_failed_total`` (failed for good) /
  ``..._action_duration_milliseconds`` ``{namespace,sensor_name,trigger_name}``;
* ``build_info{version,goversion,goarch,commit}`` (``goversion`` carries the Python
  version).
"""

from __future__ import annotations

import platform
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

_MS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)

disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The process's metric families in their own registry (tests get a fresh one)."""

    def __init__(self, namespace: str = "", version: str = "") -> None:
        self.registry = CollectorRegistry()
        self.namespace = namespace
        self.recent = RecentCounts()
        src = ["namespace", "eventsource_name", "event_name"]
        sen = ["namespace", "sensor_name", "trigger_name"]
        dep = ["namespace", "sensor_name", "dependency"]
        r = self.registry
        self.build_info = Gauge(
            "build_info",
            "A metric with a constant '1' value labeled by the version Triggerfish was built from",
            ["version", "goversion", "goarch", "commit"],
            registry=r,
        )
        self.build_info.labels(
            version or "unknown", f"python{platform.python_version()}", platform.machine(), ""
        ).set(1)
        self.event_service_running = Gauge(
            "argo_events_event_service_running_total",
            "How many configured events in the EventSource object are actively running",
            ["namespace", "eventsource_name"],
            registry=r,
        )
        self.events_sent = Counter(
            "argo_events_events_sent", "Events published to the bus", src, registry=r
        )
        self.events_sent_failed = Counter(
            "argo_events_events_sent_failed", "Events the bus did not accept", src, registry=r
        )
        self.events_processing_failed = Counter(
            "argo_events_events_processing_failed",
            "Events a source failed to process (includes events_sent_failed)",
            src,
            registry=r,
        )
        self.event_processing_duration = Histogram(
            "argo_events_event_processing_duration_milliseconds",
            "Time a source took to publish one event (until the bus acknowledged it)",
            src,
            buckets=_MS_BUCKETS,
            registry=r,
        )
        self.events_filtered = Counter(
            "argo_events_events_filtered", "Events dropped by the source filter", src, registry=r
        )
        self.action_triggered = Counter(
            "argo_events_action_triggered", "Triggers that succeeded", sen, registry=r
        )
        self.action_failed = Counter(
            "argo_events_action_failed", "Trigger attempts that failed", sen, registry=r
        )
        self.action_retries_failed = Counter(
            "argo_events_action_retries_failed",
            "Triggers that failed for good (retries exhausted or a permanent error)",
            sen,
            registry=r,
        )
        self.action_duration = Histogram(
            "argo_events_action_duration_milliseconds",
            "Time a trigger took",
            sen,
            buckets=_MS_BUCKETS,
            registry=r,
        )
        self.dead_lettered = Counter(
            "triggerfish_dead_lettered", "Firings sent to the dead-letter path", sen, registry=r
        )
        self.sensor_events_received = Counter(
            "triggerfish_sensor_events_received",
            "Events a sensor received, per dependency",
            dep,
            registry=r,
        )
        self.sensor_events_filtered = Counter(
            "triggerfish_sensor_events_filtered",
            "Events a dependency's filters rejected",
            dep,
            registry=r,
        )
        self.sensor_events_processing_failed = Counter(
            "triggerfish_sensor_events_processing_failed",
            "Events a sensor could not finish (left unacked, redelivered)",
            ["namespace", "sensor_name"],
            registry=r,
        )
        self.sensor_event_processing_duration = Histogram(
            "triggerfish_sensor_event_processing_duration_milliseconds",
            "Time a sensor spent on one event",
            ["namespace", "sensor_name"],
            buckets=_MS_BUCKETS,
            registry=r,
        )
        self.sensor_consumer_pending = Gauge(
            "triggerfish_sensor_consumer_pending",
            "Events waiting on the bus for a sensor dependency (consumer lag)",
            dep,
            registry=r,
        )
        self.sensor_consumer_ack_pending = Gauge(
            "triggerfish_sensor_consumer_ack_pending",
            "Events delivered to a sensor dependency and not yet acknowledged",
            dep,
            registry=r,
        )
        self.webhook_requests = Counter(
            "triggerfish_webhook_requests",
            "Webhook requests answered, by status code",
            ["namespace", "eventsource_name", "code"],
            registry=r,
        )
        self.bus_connected = Gauge(
            "triggerfish_bus_connected", "1 while the bus connection is up", registry=r
        )
        self.bus_publish_rejected = Counter(
            "triggerfish_bus_publish_rejected",
            "Publishes the bus refused (reason: stream_full, unavailable); nothing was stored",
            ["eventbus_name", "reason"],
            registry=r,
        )
        self.bus_server_restarts = Counter(
            "triggerfish_bus_server_restarts",
            "Times the embedded nats-server exited and was started again",
            registry=r,
        )

    def for_namespace(self, namespace: str) -> SourceMetrics:
        """What an event source of an EventSource in ``namespace`` counts with."""
        return SourceMetrics(self, namespace)

    def watch_bus(self, connected: Callable[[], bool]) -> None:
        """Report the bus connection state at every scrape."""
        self.bus_connected.set_function(lambda: 1.0 if connected() else 0.0)

    # The SourceMetrics protocol; ``namespace`` is the EventSource's (the view of
    # :meth:`for_namespace` passes it; tests and benches may leave it out).
    def event_sent(self, source: str, event_name: str, namespace: str | None = None) -> None:
        ns = self.namespace if namespace is None else namespace
        self.events_sent.labels(ns, source, event_name).inc()
        self.recent.inc(("source", ns, source, event_name), "published")

    def event_send_failed(self, source: str, event_name: str, namespace: str | None = None) -> None:
        ns = self.namespace if namespace is None else namespace
        self.events_sent_failed.labels(ns, source, event_name).inc()
        self.events_processing_failed.labels(ns, source, event_name).inc()
        self.recent.inc(("source", ns, source, event_name), "failed")

    def event_filtered(self, source: str, event_name: str, namespace: str | None = None) -> None:
        ns = self.namespace if namespace is None else namespace
        self.events_filtered.labels(ns, source, event_name).inc()
        self.recent.inc(("source", ns, source, event_name), "filtered")

    def http_request(self, source: str, status: int, namespace: str | None = None) -> None:
        ns = self.namespace if namespace is None else namespace
        self.webhook_requests.labels(ns, source, str(status)).inc()

    def publish_rejected(self, bus: str, reason: str) -> None:
        self.bus_publish_rejected.labels(bus, reason).inc()

    def render(self) -> bytes:
        """The text exposition format for ``GET /metrics``."""
        return bytes(generate_latest(self.registry))


class SourceMetrics:
    """:class:`Metrics` as one EventSource's namespace sees it (the ``namespace`` label)."""

    __slots__ = ("_m", "namespace")

    def __init__(self, metrics: Metrics, namespace: str) -> None:
        self._m = metrics
        self.namespace = namespace

    def event_sent(self, source: str, event_name: str) -> None:
        self._m.event_sent(source, event_name, self.namespace)

    def event_send_failed(self, source: str, event_name: str) -> None:
        self._m.event_send_failed(source, event_name, self.namespace)

    def event_filtered(self, source: str, event_name: str) -> None:
        self._m.event_filtered(source, event_name, self.namespace)

    def http_request(self, source: str, status: int) -> None:
        self._m.http_request(source, status, self.namespace)

    def publish_duration(self, source: str, event_name: str, ms: float) -> None:
        self._m.event_processing_duration.labels(self.namespace, source, event_name).observe(ms)

    def running(self, source: str, events: int) -> None:
        self._m.event_service_running.labels(self.namespace, source).inc(events)


class RecentCounts:
    """Counts of what went through each part of the flow over the last ``window_seconds``
    (the event-flow page's edge labels), plus totals since start and the last error.

    Keys are tuples naming a node or edge (``("dependency", ns, sensor, dep)``); each
    count is kept in ``bucket_seconds`` buckets, so memory is bounded by the number of
    keys times ``window_seconds / bucket_seconds``. Updated from the event loop only.
    """

    def __init__(self, window_seconds: float = 300.0, bucket_seconds: float = 5.0) -> None:
        self.window_seconds = window_seconds
        self.bucket_seconds = bucket_seconds
        self._buckets: dict[tuple[str, ...], dict[str, deque[list[float]]]] = {}
        self._totals: dict[tuple[str, ...], dict[str, int]] = {}
        self._last: dict[tuple[str, ...], dict[str, Any]] = {}

    def inc(self, key: tuple[str, ...], what: str, n: int = 1) -> None:
        now = time.time()
        start = now - now % self.bucket_seconds
        ring = self._buckets.setdefault(key, {}).setdefault(what, deque())
        if ring and ring[-1][0] == start:
            ring[-1][1] += n
        else:
            ring.append([start, float(n)])
        while ring and ring[0][0] < now - self.window_seconds - self.bucket_seconds:
            ring.popleft()
        totals = self._totals.setdefault(key, {})
        totals[what] = totals.get(what, 0) + n
        self._last.setdefault(key, {})["time"] = now

    def note_error(self, key: tuple[str, ...], error: str) -> None:
        """Remember ``error`` as the last error seen at ``key`` (cleared by :meth:`clear_error`)."""
        self._last.setdefault(key, {}).update(error=error, errorTime=time.time())

    def clear_error(self, key: tuple[str, ...]) -> None:
        self._last.get(key, {}).pop("error", None)

    def snapshot(self) -> list[dict[str, Any]]:
        """Everything counted, as JSON-able data another process can :meth:`merge` (a
        pod publishes it; the controller adds up the pods of one object)."""
        out = []
        for key in set(self._buckets) | set(self._last):
            last = self._last.get(key, {})
            out.append(
                {
                    "key": list(key),
                    "buckets": {
                        w: [list(b) for b in ring] for w, ring in self._buckets.get(key, {}).items()
                    },
                    "total": dict(self._totals.get(key, {})),
                    "lastTime": last.get("time"),
                    "lastError": last.get("error", ""),
                    "errorTime": last.get("errorTime"),
                }
            )
        return out

    def merge(self, snapshot: list[dict[str, Any]]) -> None:
        """Add another process's :meth:`snapshot` (buckets and totals add up; the newest
        event time and the newest error win). Malformed entries are skipped."""
        for item in snapshot:
            try:
                key = tuple(str(k) for k in item["key"])
                for what, ring in (item.get("buckets") or {}).items():
                    mine = self._buckets.setdefault(key, {}).setdefault(str(what), deque())
                    merged: dict[float, float] = {b[0]: b[1] for b in mine}
                    for start, n in ring:
                        merged[float(start)] = merged.get(float(start), 0.0) + float(n)
                    mine.clear()
                    mine.extend([s, n] for s, n in sorted(merged.items()))
                totals = self._totals.setdefault(key, {})
                for what, n in (item.get("total") or {}).items():
                    totals[str(what)] = totals.get(str(what), 0) + int(n)
                last = self._last.setdefault(key, {})
                t = item.get("lastTime")
                if t is not None and float(t) > float(last.get("time") or 0):
                    last["time"] = float(t)
                et = item.get("errorTime")
                if item.get("lastError") and float(et or 0) >= float(last.get("errorTime") or 0):
                    last.update(error=str(item["lastError"]), errorTime=float(et or 0))
            except (KeyError, TypeError, ValueError):
                continue

    def get(self, key: tuple[str, ...]) -> dict[str, Any]:
        """``{"window": {what: n}, "total": {what: n}, "lastTime": s, "lastError": str}``."""
        since = time.time() - self.window_seconds
        window = {
            what: int(sum(n for start, n in ring if start + self.bucket_seconds > since))
            for what, ring in self._buckets.get(key, {}).items()
        }
        last = self._last.get(key, {})
        return {
            "window": window,
            "total": dict(self._totals.get(key, {})),
            "lastTime": last.get("time"),
            "lastError": last.get("error", ""),
        }
