"""The operations HTTP server of a process: health, readiness, metrics, read API.

Separate from the webhook ports (those are the event sources' hot path). Serves
``/healthz`` (alive: 503 once the embedded bus server has stayed down past
``bus.unhealthy_after_seconds``, a state restarting the process may cure), ``/readyz``
(bus connected and its embedded server running, sources listening: 503 while the bus
is down, i.e. while posts would be answered 503), ``/metrics``
(Prometheus), and ``/api/v1/...``: event sources, sensors, recent traces (what each
sensor did with each event) and, without a cluster, the recorded objects.

It binds ``127.0.0.1`` unless ``TRIGGERFISH_API_HOST`` says otherwise. When
``TRIGGERFISH_API_TOKEN`` is set, everything but the probes (``/healthz``, ``/readyz``)
and the API's own description (``/openapi.json``, ``/api/docs``) requires
``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise), and the
OpenAPI schema declares it.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response, Security
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from app import __version__
from app.adapters.kube import FileKube
from app.compose.runtime import Standalone, source_plugins


def build_app(rt: Standalone) -> FastAPI:
    """The FastAPI app for one running :class:`Standalone`."""
    api = FastAPI(title="Triggerfish", version=__version__, docs_url="/api/docs")
    token = rt.settings.api_token.get_secret_value().encode()
    guarded = APIRouter(
        dependencies=[Depends(bearer_guard(token))] if token else [],
        responses={401: {"description": "missing or wrong bearer token"}} if token else {},
    )

    @api.get("/healthz")
    async def healthz(response: Response) -> dict[str, str]:
        if not rt.healthy():
            response.status_code = 503
            return {"status": "bus server down", "busServer": rt.bus_server_state()}
        return {"status": "ok", "busServer": rt.bus_server_state()}

    @api.get("/readyz", responses={503: {"description": "not ready (same body)"}})
    async def readyz(response: Response) -> dict[str, Any]:
        server = rt.bus_server_state()
        bus_ok = rt.bus is not None and rt.bus.connected and server != "restarting"
        sources_ok = rt.ready.is_set() and all(s.ready() for s in rt.sources)
        if not (bus_ok and sources_ok):
            response.status_code = 503
        return {"bus": bus_ok, "sources": sources_ok, "busServer": server}

    @guarded.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4")

    @guarded.get("/api/v1/eventsources")
    async def eventsources() -> list[dict[str, Any]]:
        return [
            {
                "name": es.metadata.name,
                "namespace": es.metadata.namespace or "default",
                "types": {key: sorted(events) for key, events in source_plugins(es)},
            }
            for es in rt.m.event_sources
        ]

    @guarded.get("/api/v1/sensors")
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

    @guarded.get("/api/v1/traces")
    async def traces(q: TracesQuery = Query()) -> list[dict[str, Any]]:  # noqa: B008
        return [t.to_dict() for t in rt.traces.recent(q.limit, q.sensor, q.event_id)]

    @guarded.get("/api/v1/objects")
    async def objects() -> list[dict[str, Any]]:
        if isinstance(rt.kube, FileKube):
            return rt.kube.list_objects()
        return []

    api.include_router(guarded)
    return api


class TracesQuery(BaseModel):
    """``/api/v1/traces`` parameters; an unknown one is a 422, not silently ignored (a
    misspelt ``sensors=`` would otherwise list every sensor's traces)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sensor: str | None = Field(None, description="only this sensor's traces")
    event_id: str | None = Field(None, alias="eventId", description="only this event's")
    limit: int = Field(100, ge=1, le=1000, description="at most this many, newest first")


def bearer_guard(token: bytes) -> Any:
    """A FastAPI dependency that lets a request through only with ``token`` as bearer."""
    scheme = HTTPBearer(auto_error=False, description="the TRIGGERFISH_API_TOKEN setting")

    # No ``Annotated[...]`` here: under postponed annotations FastAPI could not resolve
    # the local ``scheme`` inside it.
    async def guard(
        creds: HTTPAuthorizationCredentials | None = Security(scheme),  # noqa: B008
    ) -> None:
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    return guard
