"""The operations HTTP server of a process: health, readiness, metrics, read API.

Separate from the webhook ports (those are the event sources' hot path). Serves
``/healthz`` (alive: 503 once the embedded bus server has stayed down past
``bus.unhealthy_after_seconds``, a state restarting the process may cure), ``/readyz``
(bus connected and its embedded server running, sources listening: 503 while the bus
is down, i.e. while posts would be answered 503), ``/metrics``
(Prometheus), and ``/api/v1/...``: event sources, sensors, recent traces (what each
sensor did with each event, read from the bus), dead letters (list, show, replay,
discard), the event-flow graph with live counts and, without a cluster, the recorded
objects. ``/`` is the event-flow page: static HTML, CSS and JavaScript shipped inside
the package (``app/compose/static``), so it works without any network but loopback;
it reads the same API (asking for the bearer token when one is set). ``/api/docs``
serves Swagger UI from a package (fastapi-offline) for the same reason.

It binds ``127.0.0.1`` unless ``TRIGGERFISH_API_HOST`` says otherwise. When
``TRIGGERFISH_API_TOKEN`` is set, everything but the probes (``/healthz``, ``/readyz``)
and the API's own description (``/openapi.json``, ``/api/docs``) requires
``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise), and the
OpenAPI schema declares it.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response, Security
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from app import __version__
from app.adapters.kube import FileKube
from app.compose.flow import DeadLetterGone, DeadLetters, flow_graph
from app.compose.runtime import Standalone, source_plugins
from app.kernel.errors import BusUnavailableError, ConfigError

STATIC = Path(__file__).with_name("static")
_GONE: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such dead letter (replayed, discarded or aged out)"}
}
_DOWN: dict[int | str, dict[str, Any]] = {503: {"description": "the bus is not reachable"}}


def build_app(rt: Standalone) -> FastAPI:
    """The FastAPI app for one running :class:`Standalone`."""
    # Swagger UI from the fastapi-offline package, not a CDN: /api/docs works air-gapped.
    api = FastAPIOffline(
        title="Triggerfish",
        version=__version__,
        docs_url="/api/docs",
        redoc_url=None,
        static_url="/api/docs/static",
        favicon_url="/static/logo.svg",
    )
    token = rt.settings.api_token.get_secret_value().encode()
    guarded = APIRouter(
        dependencies=[Depends(bearer_guard(token))] if token else [],
        responses={401: {"description": "missing or wrong bearer token"}} if token else {},
    )

    api.mount("/static", StaticFiles(directory=STATIC), name="static")

    @api.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

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
        sources_ok = rt.ready.is_set() and all(rt.source_ready(s) for s in rt.sources)
        if not (bus_ok and sources_ok):
            response.status_code = 503
        return {"bus": bus_ok, "sources": sources_ok, "busServer": server}

    @guarded.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4")

    def graph() -> dict[str, Any]:
        return flow_graph(
            event_sources=rt.source_states(),
            runners=rt.runners,
            runner_errors=rt.runner_errors(),
            consumer_errors=rt.consumer_errors(),
            store=rt.traces,
            bus_connected=rt.bus is not None and rt.bus.connected,
            argo_workflows_url=rt.settings.ui.argo_workflows_url,
        )

    @guarded.get("/api/v1/eventsources")
    async def eventsources() -> list[dict[str, Any]]:
        """Per EventSource: its types and event names; per event name its status
        (ready / not ready / error with the reason), counts over the recent window and
        since start, last event time and last error."""
        nodes = {(n["namespace"], n["name"]): n for n in graph()["eventSources"]}
        out = []
        for es in rt.m.event_sources:
            ns = es.metadata.namespace or "default"
            node = nodes.get((ns, es.metadata.name), {"events": []})
            out.append(
                {
                    "name": es.metadata.name,
                    "namespace": ns,
                    "types": {key: sorted(events) for key, events in source_plugins(es)},
                    "events": [
                        {"name": e["name"], "type": e["type"], **_status_view(e)}
                        for e in node["events"]
                    ],
                }
            )
        return out

    @guarded.get("/api/v1/sensors")
    async def sensors() -> list[dict[str, Any]]:
        """Per Sensor: status, dependencies and triggers, each with its counts, last
        event time and last error."""
        nodes = {(n["namespace"], n["name"]): n for n in graph()["sensors"]}
        out = []
        for r in rt.runners:
            node = nodes[(r.namespace, r.name)]
            deps = {d["name"]: d for d in node["dependencies"]}
            trigs = {t["name"]: t for t in node["triggers"]}
            out.append(
                {
                    "name": r.name,
                    "namespace": r.namespace,
                    "status": node["status"],
                    "dependencies": [
                        {
                            "name": d.name,
                            "eventSourceName": d.event_source_name,
                            "eventName": d.event_name,
                            **_status_view(deps[d.name]),
                        }
                        for d in r.deps
                    ],
                    "triggers": [
                        {
                            "name": t.name,
                            "type": t.type_key,
                            "conditions": t.condition.text,
                            **_status_view(trigs[t.name]),
                        }
                        for t in r.triggers
                    ],
                }
            )
        return out

    @guarded.get("/api/v1/traces", responses=_DOWN)
    async def traces(q: TracesQuery = Query()) -> list[dict[str, Any]]:  # noqa: B008
        try:
            return await rt.trace_log.query(
                q.limit,
                before=q.before,
                namespace=q.namespace,
                sensor=q.sensor,
                event_id=q.event_id,
                dependency=q.dependency,
                trigger=q.trigger,
                outcome=q.outcome,
            )
        except BusUnavailableError as e:
            raise HTTPException(503, str(e)) from e

    @guarded.get("/api/v1/flow")
    async def flow() -> dict[str, Any]:
        """The event-flow page's graph: event names → dependencies → sensors → triggers
        → recently created objects, with statuses and windowed counts."""
        return graph()

    def dead_letters() -> DeadLetters:
        if rt.dead_letters is None:
            raise HTTPException(503, "the bus is not connected yet")
        return rt.dead_letters

    @guarded.get("/api/v1/deadletters", responses=_DOWN)
    async def list_dead_letters(
        q: DeadLettersQuery = Query(),  # noqa: B008
    ) -> list[dict[str, Any]]:
        try:
            return await dead_letters().list(
                sensor=q.sensor, trigger=q.trigger, limit=q.limit, before=q.before
            )
        except BusUnavailableError as e:
            raise HTTPException(503, str(e)) from e

    @guarded.get("/api/v1/deadletters/{bus}/{seq}", responses={**_GONE, **_DOWN})
    async def show_dead_letter(bus: str, seq: int = PathParam(ge=1)) -> dict[str, Any]:
        try:
            return await dead_letters().show(bus, seq)
        except DeadLetterGone as e:
            raise HTTPException(404, str(e)) from e
        except BusUnavailableError as e:
            raise HTTPException(503, str(e)) from e

    @guarded.post("/api/v1/deadletters/{bus}/{seq}/replay", responses={**_GONE, **_DOWN})
    async def replay_dead_letter(bus: str, seq: int = PathParam(ge=1)) -> dict[str, Any]:
        """Run the trigger again for that firing (same events, same firing key); the
        dead letter is deleted when the trigger succeeds (``replayed: true``)."""
        try:
            return await dead_letters().replay(bus, seq)
        except (DeadLetterGone, ConfigError) as e:
            raise HTTPException(404, str(e)) from e
        except BusUnavailableError as e:
            raise HTTPException(503, str(e)) from e

    @guarded.delete("/api/v1/deadletters/{bus}/{seq}", responses={**_GONE, **_DOWN})
    async def discard_dead_letter(bus: str, seq: int = PathParam(ge=1)) -> dict[str, Any]:
        try:
            await dead_letters().discard(bus, seq)
        except DeadLetterGone as e:
            raise HTTPException(404, str(e)) from e
        except BusUnavailableError as e:
            raise HTTPException(503, str(e)) from e
        return {"discarded": f"{bus}:{seq}"}

    @guarded.get("/api/v1/objects")
    async def objects() -> list[dict[str, Any]]:
        if isinstance(rt.kube, FileKube):
            return rt.kube.list_objects()
        return []

    api.include_router(guarded)
    return api


def _status_view(node: dict[str, Any]) -> dict[str, Any]:
    """A flow node's status fields for the list APIs."""
    c = node["counts"]
    last = c["lastTime"]
    return {
        "status": node["status"],
        "counts": {"window": c["window"], "total": c["total"]},
        "lastEventTime": datetime.fromtimestamp(last, UTC).isoformat() if last else None,
        "lastError": c["lastError"],
    }


class TracesQuery(BaseModel):
    """``/api/v1/traces`` parameters; an unknown one is a 422, not silently ignored (a
    misspelt ``sensors=`` would otherwise list every sensor's traces)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sensor: str | None = Field(None, description="only this sensor's traces")
    namespace: str | None = Field(None, description="only sensors of this namespace")
    event_id: str | None = Field(None, alias="eventId", description="only this event's")
    dependency: str | None = Field(None, description="only events of this dependency")
    trigger: str | None = Field(None, description="only firings of this trigger")
    outcome: Literal["filtered", "fired", "failed", "waiting"] | None = Field(
        None, description="only traces with this outcome"
    )
    limit: int = Field(100, ge=1, le=1000, description="at most this many, newest first")
    before: int | None = Field(
        None, ge=1, description="only traces stored before this seq (the next page)"
    )


class DeadLettersQuery(BaseModel):
    """``/api/v1/deadletters`` parameters (unknown ones are a 422)."""

    model_config = ConfigDict(extra="forbid")

    sensor: str | None = Field(None, description="only this sensor's dead letters")
    trigger: str | None = Field(None, description="only this trigger's")
    limit: int = Field(100, ge=1, le=1000, description="at most this many, newest first")
    before: int | None = Field(None, ge=1, description="only those stored before this seq")


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
