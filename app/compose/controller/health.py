"""The controller's probe endpoints: ``/healthz`` (the process answers) and ``/readyz``
(the leader: every informer has listed its kind at least once and the loop is running;
a standby replica waiting for the Lease is ready too, it is doing its job)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Response


def build_health_app(ready: Callable[[], bool]) -> FastAPI:
    """The probe app; ``ready`` says whether the controller has converged once."""
    api = FastAPI(title="triggerfish controller", docs_url=None, redoc_url=None)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(response: Response) -> dict[str, Any]:
        ok = ready()
        if not ok:
            response.status_code = 503
        return {"ready": ok}

    return api
