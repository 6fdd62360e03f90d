"""Prometheus metrics under Argo Events' names and labels, so existing dashboards work.

One :class:`Metrics` object per process, passed explicitly; it satisfies the
``SourceMetrics`` protocol of event sources and is used by the sensor runner.
Durations are histograms in milliseconds, as Argo names them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_MS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


class Metrics:
    """The process's metric families in their own registry (tests get a fresh one)."""

    def __init__(self, namespace: str = "") -> None:
        self.registry = CollectorRegistry()
        self.namespace = namespace
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

    def event_send_failed(self, source: str, event_name: str) -> None:
        self.events_sent_failed.labels(self.namespace, source, event_name).inc()

    def event_filtered(self, source: str, event_name: str) -> None:
        self.events_filtered.labels(self.namespace, source, event_name).inc()

    def publish_rejected(self, bus: str, reason: str) -> None:
        self.bus_publish_rejected.labels(bus, reason).inc()

    def render(self) -> bytes:
        """The text exposition format for ``GET /metrics``."""
        return bytes(generate_latest(self.registry))
