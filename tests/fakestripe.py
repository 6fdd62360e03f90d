"""A FAKE Stripe API: webhook endpoints over real HTTP on 127.0.0.1 (port 0).

No Stripe account is reachable from the tests, so this server answers what the
``stripe`` source's ``createWebhook`` sends the way Stripe documents it: the API key
as ``Authorization: Bearer`` (else 401 with Stripe's error object), form-encoded
``url`` and ``enabled_events[]`` on ``POST /v1/webhook_endpoints`` (answered with the
endpoint object, whose ``secret`` only this answer carries), ``GET
/v1/webhook_endpoints`` (a list object, ``limit`` / ``starting_after`` paging,
``has_more``; no secrets) and ``DELETE /v1/webhook_endpoints/{id}``.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeStripe:
    """The fake server; ``endpoints`` holds the registered webhook endpoints by id."""

    api_key: str
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    url: str = ""
    _runner: web.AppRunner | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response(
            {"error": {"type": "invalid_request_error", "message": message}}, status=status
        )

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, "Invalid API Key provided")
        form = await request.post()
        url = form.get("url")
        events = form.getall("enabled_events[]", [])
        if not isinstance(url, str) or not url or not events:
            return self._error(400, "Missing required param: url or enabled_events")
        endpoint_id = f"we_{next(self._ids):04d}"
        endpoint = {
            "id": endpoint_id,
            "object": "webhook_endpoint",
            "url": url,
            "enabled_events": [str(e) for e in events],
            "status": "enabled",
        }
        self.endpoints[endpoint_id] = endpoint
        return web.json_response({**endpoint, "secret": "whsec_" + secrets.token_hex(16)})

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, "Invalid API Key provided")
        limit = int(request.query.get("limit", "10"))
        ids = sorted(self.endpoints)
        after = request.query.get("starting_after")
        if after:
            ids = [i for i in ids if i > after]
        page = [self.endpoints[i] for i in ids[:limit]]
        return web.json_response(
            {"object": "list", "data": page, "has_more": len(ids) > limit, "url": request.path}
        )

    async def _delete(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, "Invalid API Key provided")
        endpoint_id = request.match_info["id"]
        if self.endpoints.pop(endpoint_id, None) is None:
            return self._error(404, f"No such webhook endpoint: '{endpoint_id}'")
        return web.json_response({"id": endpoint_id, "object": "webhook_endpoint", "deleted": True})

    async def start(self) -> FakeStripe:
        app = web.Application()
        app.router.add_post("/v1/webhook_endpoints", self._create)
        app.router.add_get("/v1/webhook_endpoints", self._list)
        app.router.add_delete("/v1/webhook_endpoints/{id}", self._delete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
