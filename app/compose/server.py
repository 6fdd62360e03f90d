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

The page and its API read a :class:`FlowView`: the running process's own counters
and runners here (:class:`StandaloneView`), the cluster's objects and pod reports in
the controller (:func:`add_flow` onto its probe app; :mod:`app.compose.clusterflow`).
``/readyz`` names the sources that cannot listen (``sourceErrors``) while they retry.

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
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response, Security
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from app import __version__
from app.adapters.kube import FileKube
from app.compose.flow import DeadLetterGone, DeadLetters, SensorView, flow_graph
from app.compose.runtime import Standalone
from app.kernel.errors import BusUnavailableError, ConfigError

STATIC = Path(__file__).with_name("static")
_GONE: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such dead letter (replayed, discarded or aged out)"}
}
_DOWN: dict[int | str, dict[str, Any]] = {503: {"description": "the bus is not reachable"}}


class FlowView(Protocol):
    """What the event-flow page and its API read: a ``triggerfish run`` process
    (:class:`StandaloneView`) or the controller (:class:`app.compose.clusterflow.ClusterFlow`)."""

    async def graph(self) -> dict[str, Any]:
        """The :func:`app.compose.flow.flow_graph` document."""
        ...

    async def traces(
        self, limit: int, *, before: int | None, namespace: str | None, sensor: str | None,
        **filters: Any,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Traces newest first (:meth:`app.compose.flow.TraceLog.query`)."""
        ...

    async def dead_letters(self, namespace: str | None = None) -> DeadLetters | None:
        """The dead letters (of that namespace's bus); None before the bus is connected."""
        ...

    async def all_dead_letters(self) -> list[DeadLetters]:
        """The dead letters of every bus the view reads."""
        ...


class StandaloneView:
    """The flow of one running :class:`Standalone`: its own counters and runners."""

    def __init__(self, rt: Standalone) -> None:
        self.rt = rt

    async def graph(self) -> dict[str, Any]:
        rt = self.rt
        return flow_graph(
            event_sources=rt.source_states(),
            sensors=[SensorView.of_runner(r) for r in rt.runners],
            runner_errors=rt.runner_errors(),
            consumer_errors=rt.consumer_errors(),
            store=rt.traces,
            bus_connected=rt.bus is not None and rt.bus.connected,
            argo_workflows_url=rt.settings.ui.argo_workflows_url,
        )

    async def traces(
        self, limit: int, *, before: int | None, namespace: str | None, sensor: str | None,
        **filters: Any,
    ) -> list[dict[str, Any]]:  # fmt: skip
        return await self.rt.trace_log.query(
            limit, before=before, namespace=namespace, sensor=sensor, **filters
        )

    async def dead_letters(self, namespace: str | None = None) -> DeadLetters | None:
        return self.rt.dead_letters

    async def all_dead_letters(self) -> list[DeadLetters]:
        return [self.rt.dead_letters] if self.rt.dead_letters is not None else []


def offline_api(title: str) -> FastAPI:
    """A FastAPI app whose ``/api/docs`` (Swagger UI) is served from a package, not a
    CDN, so it works air-gapped."""
    return FastAPIOffline(
        title=title,
        version=__version__,
        docs_url="/api/docs",
        redoc_url=None,
        static_url="/api/docs/static",
        favicon_url="/static/logo.svg",
    )


def token_router(token: bytes) -> APIRouter:
    """A router whose routes need ``Authorization: Bearer <token>`` (none when empty)."""
    return APIRouter(
        dependencies=[Depends(bearer_guard(token))] if token else [],
        responses={401: {"description": "missing or wrong bearer token"}} if token else {},
    )


def build_app(rt: Standalone) -> FastAPI:
    """The FastAPI app for one running :class:`Standalone`."""
    api = offline_api("Triggerfish")
    token = rt.settings.api_token.get_secret_value().encode()
    guarded = token_router(token)

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
        body: dict[str, Any] = {"bus": bus_ok, "sources": sources_ok, "busServer": server}
        errors = rt.source_errors()
        if errors:
            body["sourceErrors"] = errors  # why: e.g. cannot listen on a port (retrying)
        return body

    @guarded.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4")

    @guarded.get("/api/v1/objects")
    async def objects() -> list[dict[str, Any]]:
        if isinstance(rt.kube, FileKube):
            return rt.kube.list_objects()
        return []

    api.include_router(guarded)
    add_flow(api, StandaloneView(rt), token)
    return api


def add_flow(api: FastAPI, view: FlowView, token: bytes) -> None:
    """The event-flow page (``/``, ``/static``) and the API it reads, onto ``api``."""
    guarded = token_router(token)
    api.mount("/static", StaticFiles(directory=STATIC), name="static")

    @api.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def graph() -> dict[str, Any]:
        try:
            return await view.graph()
        except BusUnavailableError as e:
            raise HTTPException(503, str(e)) from e

    @guarded.get("/api/v1/eventsources", responses=_DOWN)
    async def eventsources() -> list[dict[str, Any]]:
        """Per EventSource: its types and event names; per event name its status
        (ready / not ready / error with the reason), counts over the recent window and
        since start, last event time and last error."""
        out = []
        for es in (await graph())["eventSources"]:
            types: dict[str, list[str]] = {}
            for e in es["events"]:
                types.setdefault(e["type"], []).append(e["name"])
            out.append(
                {
                    "name": es["name"],
                    "namespace": es["namespace"],
                    "types": {k: sorted(v) for k, v in types.items()},
                    "events": [
                        {"name": e["name"], "type": e["type"], **_status_view(e)}
                        for e in es["events"]
                    ],
                }
            )
        return out

    @guarded.get("/api/v1/sensors", responses=_DOWN)
    async def sensors() -> list[dict[str, Any]]:
        """Per Sensor: status, dependencies and triggers, each with its counts, last
        event time and last error."""
        return [
            {
                "name": s["name"],
                "namespace": s["namespace"],
                "status": s["status"],
                "dependencies": [
                    {
                        "name": d["name"],
                        "eventSourceName": d["eventSourceName"],
                        "eventName": d["eventName"],
                        **_status_view(d),
                    }
                    for d in s["dependencies"]
                ],
                "triggers": [
                    {
                        "name": t["name"],
                        "type": t["type"],
                        "conditions": t["conditions"],
                        **_status_view(t),
                    }
                    for t in s["triggers"]
                ],
            }
            for s in (await graph())["sensors"]
        ]

    @guarded.get("/api/v1/traces", responses=_DOWN)
    async def traces(q: TracesQuery = Query()) -> list[dict[str, Any]]:  # noqa: B008
        try:
            return await view.traces(
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

    @guarded.get("/api/v1/flow", responses=_DOWN)
    async def flow() -> dict[str, Any]:
        """The event-flow page's graph: event names → dependencies → sensors → triggers
        → recently created objects, with statuses and windowed counts."""
        return await graph()

    async def dead_letters(namespace: str | None) -> DeadLetters:
        found = await view.dead_letters(namespace)
        if found is None:
            raise HTTPException(
                503, "the bus is not connected yet (cluster mode: or give ?namespace=)"
            )
        return found

    @guarded.get("/api/v1/deadletters", responses=_DOWN)
    async def list_dead_letters(
        q: DeadLettersQuery = Query(),  # noqa: B008
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            for dl in await view.all_dead_letters():
                out += await dl.list(
                    sensor=q.sensor, trigger=q.trigger, limit=q.limit, before=q.before
                )
        except BusUnavailableError as e:
            raise HTTPException(503, str(e)) from e
        out.sort(key=lambda e: (e["time"], e["seq"]), reverse=True)
        return out[: q.limit]

    ns_param = Query(
        None, description="the dead letter's namespace (cluster mode: which namespace's bus)"
    )

    @guarded.get("/api/v1/deadletters/{bus}/{seq}", responses={**_GONE, **_DOWN})
    async def show_dead_letter(
        bus: str, seq: int = PathParam(ge=1), namespace: str | None = ns_param
    ) -> dict[str, Any]:
        try:
            return await (await dead_letters(namespace)).show(bus, seq)
        except DeadLetterGone as e:
            raise HTTPException(404, str(e)) from e
        except BusUnavailableError as e:
            raise HTTPException(503, str(e)) from e

    @guarded.post("/api/v1/deadletters/{bus}/{seq}/replay", responses={**_GONE, **_DOWN})
    async def replay_dead_letter(
        bus: str, seq: int = PathParam(ge=1), namespace: str | None = ns_param
    ) -> dict[str, Any]:
        """Run the trigger again for that firing (same events, same firing key), where
        the sensor runs (in cluster mode: one of its pods, asked over the bus); the
        dead letter is deleted when the trigger succeeds (``replayed: true``)."""
        try:
            return await (await dead_letters(namespace)).replay(bus, seq)
        except (DeadLetterGone, ConfigError) as e:
            raise HTTPException(404, str(e)) from e
        except BusUnavailableError as e:
            raise HTTPException(503, str(e)) from e

    @guarded.delete("/api/v1/deadletters/{bus}/{seq}", responses={**_GONE, **_DOWN})
    async def discard_dead_letter(
        bus: str, seq: int = PathParam(ge=1), namespace: str | None = ns_param
    ) -> dict[str, Any]:
        try:
            await (await dead_letters(namespace)).discard(bus, seq)
        except DeadLetterGone as e:
            raise HTTPException(404, str(e)) from e
        except BusUnavailableError as e:
            raise HTTPException(503, str(e)) from e
        return {"discarded": f"{bus}:{seq}"}

    api.include_router(guarded)


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
