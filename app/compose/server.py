"""The operations HTTP server of a process: health, readiness, metrics, read API.

Separate from the webhook ports (those are the event sources' hot path). Serves
``/healthz`` (alive: 503 once the embedded bus server has stayed down past
``bus.unhealthy_after_seconds``, a state restarting the process may cure), ``/readyz``
(bus connected and its embedded server running, sources listening: 503 while the bus
is down, i.e. while posts would be answered 503), ``/metrics``
(Prometheus), and ``/api/v1/...``: event sources, sensors, recent traces (what each
sensor did with each event) and, without a cluster, the recorded objects.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Response

from app import __version__
from app.adapters.kube import FileKube
from app.compose.runtime import Standalone, source_plugins


def build_app(rt: Standalone) -> FastAPI:
    """The FastAPI app for one running :class:`Standalone`."""
    api = FastAPI(title="Triggerfish", version=__version__, docs_url="/api/docs")

    @api.get("/healthz")
    async def healthz(response: Response) -> dict[str, str]:
        if not rt.healthy():
            response.status_code = 503
            return {"status": "bus server down", "busServer": rt.bus_server_state()}
        return {"status": "ok", "busServer": rt.bus_server_state()}

    @api.get("/readyz")
    async def readyz(response: Response) -> dict[str, Any]:
        server = rt.bus_server_state()
        bus_ok = rt.bus is not None and rt.bus.connected and server != "restarting"
        sources_ok = rt.ready.is_set() and all(s.ready() for s in rt.sources)
        if not (bus_ok and sources_ok):
            response.status_code = 503
        return {"bus": bus_ok, "sources": sources_ok, "busServer": server}

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/api/v1/eventsources")
    async def eventsources() -> list[dict[str, Any]]:
        return [
            {
                "name": es.metadata.name,
                "namespace": es.metadata.namespace or "default",
                "types": {key: sorted(events) for key, events in source_plugins(es)},
            }
            for es in rt.m.event_sources
        ]

    @api.get("/api/v1/sensors")
    async def sensors() -> list[dict[str, Any]]:
        return [
            {
                "name": r.name,
                "namespace": r.namespace,
                "dependencies": [
                    {
                        "name": d.name,
                        "eventSourceName": d.event_source_name,
                        "eventName": d.event_name,
                    }
                    for d in r.deps
                ],
                "triggers": [
                    {"name": t.name, "type": t.type_key, "conditions": t.condition.text}
                    for t in r.triggers
                ],
            }
            for r in rt.runners
        ]

    @api.get("/api/v1/traces")
    async def traces(
        sensor: str | None = None,
        event_id: str | None = Query(None, alias="eventId"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        return [t.to_dict() for t in rt.traces.recent(limit, sensor, event_id)]

    @api.get("/api/v1/objects")
    async def objects() -> list[dict[str, Any]]:
        if isinstance(rt.kube, FileKube):
            return rt.kube.list_objects()
        return []

    return api
