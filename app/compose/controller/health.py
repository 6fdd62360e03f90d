"""The controller's HTTP server: ``/healthz`` (the process answers), ``/readyz`` (the
leader: every informer has listed its kind at least once and the loop is running; a
standby replica waiting for the Lease is ready too, it is doing its job) and, with a
:class:`app.compose.clusterflow.ClusterFlow`, the event-flow page and its API (every
replica serves it: it reads the API server and the buses, not the leader's cache)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Response

from app.compose.server import FlowView, add_flow, offline_api


def build_health_app(
    ready: Callable[[], bool], flow: FlowView | None = None, token: bytes = b""
) -> FastAPI:
    """The probe app; ``ready`` says whether the controller has converged once."""
    if flow is None:
        api = FastAPI(title="triggerfish controller", docs_url=None, redoc_url=None)
    else:
        api = offline_api("Triggerfish controller")

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(response: Response) -> dict[str, Any]:
        ok = ready()
        if not ok:
            response.status_code = 503
        return {"ready": ok}

    if flow is not None:
        add_flow(api, flow, token)
    return api
