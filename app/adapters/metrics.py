"""Prometheus metrics under Argo Events' names and labels, so existing dashboards work.

One :class:`Metrics` object per process, passed explicitly; it satisfies the
``SourceMetrics`` protocol of event sources and is used by the sensor runner.
Durations are histograms in milliseconds, as Argo names them.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_MS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


class Metrics:
    """The process's metric families in their own registry (tests get a fresh one)."""

    def __init__(self, namespace: str = "") -> None:
        self.registry = CollectorRegistry()
        self.namespace = namespace
        self.recent = RecentCounts()
        src = ["namespace", "eventsource_name", "event_name"]
        sen = ["namespace", "sensor_name", "trigger_name"]
        r = self.registry
        self.events_sent = Counter(
            "argo_events_events_sent", "Events published to the bus", src, registry=r
        )
        self.events_sent_failed = Counter(
            "argo_events_events_sent_failed", "Events the bus did not accept", src, registry=r
        )
        self.events_filtered = Counter(
            "argo_events_events_filtered", "Events dropped by the source filter", src, registry=r
        )
        self.events_processing_failed = Counter(
            "argo_events_events_processing_failed",
            "Events a sensor could not process",
            ["namespace", "sensor_name"],
            registry=r,
        )
        self.event_processing_duration = Histogram(
            "argo_events_event_processing_duration_milliseconds",
            "Time a sensor spent on one event",
            ["namespace", "sensor_name"],
            buckets=_MS_BUCKETS,
            registry=r,
        )
        self.action_triggered = Counter(
            "argo_events_action_triggered", "Triggers that succeeded", sen, registry=r
        )
        self.action_failed = Counter(
            "argo_events_action_failed", "Triggers that failed", sen, registry=r
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

    # SourceMetrics protocol
    def event_sent(self, source: str, event_name: str) -> None:
        self.events_sent.labels(self.namespace, source, event_name).inc()
        self.recent.inc(("source", source, event_name), "published")

    def event_send_failed(self, source: str, event_name: str) -> None:
        self.events_sent_failed.labels(self.namespace, source, event_name).inc()
        self.recent.inc(("source", source, event_name), "failed")

    def event_filtered(self, source: str, event_name: str) -> None:
        self.events_filtered.labels(self.namespace, source, event_name).inc()
        self.recent.inc(("source", source, event_name), "filtered")

    def publish_rejected(self, bus: str, reason: str) -> None:
        self.bus_publish_rejected.labels(bus, reason).inc()

    def render(self) -> bytes:
        """The text exposition format for ``GET /metrics``."""
        return bytes(generate_latest(self.registry))


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
