"""A FAKE Apache OpenWhisk REST API: action invocation over real HTTP on 127.0.0.1
(port 0).

OpenWhisk (a controller, an invoker, CouchDB, Kafka, a container runtime) cannot run
here, so this server answers ``POST /api/v1/namespaces/{namespace}/actions/{action}``
the way OpenWhisk documents it: basic auth with the ``uuid:key`` token (401 without or
with another one), 404 for an unknown action, a JSON object body (400 otherwise), and
with ``blocking=true&result=true`` the action's result (200), or ``{"error": ...}``
with 502 when the action fails, or ``{"activationId"}`` with 202 when the action runs
longer than the wait. ``actions`` maps ``namespace/name`` to what the action does;
``fail_next`` queues HTTP statuses to play outages and throttles. Every accepted
invocation is recorded.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Action = Callable[[dict[str, Any]], dict[str, Any]]
"""Params → result; raising ``RuntimeError`` is an application error; returning
``{"__slow__": True}`` plays a run longer than the blocking wait."""


@dataclass
class Invoked:
    namespace: str
    action: str
    params: dict[str, Any]
    query: dict[str, str]
    headers: dict[str, str]


def echo(params: dict[str, Any]) -> dict[str, Any]:
    return {"greeting": f"hello {params.get('name', 'stranger')}", "params": params}


def fail(params: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("action crashed")


def slow(params: dict[str, Any]) -> dict[str, Any]:
    return {"__slow__": True}


@dataclass
class FakeOpenWhisk:
    """The fake server; ``invoked`` lists accepted invocations in order."""

    token: str
    actions: dict[str, Action] = field(default_factory=lambda: {"_/hello": echo})
    fail_next: list[int] = field(default_factory=list)
    invoked: list[Invoked] = field(default_factory=list)
    requests: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def _invoke(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.fail_next:
            return web.Response(status=self.fail_next.pop(0), text="fake failure")
        expected = "Basic " + base64.b64encode(self.token.encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "The supplied authentication is invalid",
                                      "code": "a1"}, status=401)  # fmt: skip
        ns, name = request.match_info["namespace"], request.match_info["action"]
        action = self.actions.get(f"{ns}/{name}")
        if action is None:
            return web.json_response({"error": "The requested resource does not exist.",
                                      "code": "a2"}, status=404)  # fmt: skip
        try:
            params = json.loads(await request.read() or b"{}")
        except ValueError:
            params = None
        if not isinstance(params, dict):
            return web.json_response({"error": "The request content was malformed",
                                      "code": "a3"}, status=400)  # fmt: skip
        self.invoked.append(Invoked(ns, name, params, dict(request.query),
                                    dict(request.headers)))  # fmt: skip
        try:
            result = action(params)
        except RuntimeError as e:
            return web.json_response({"error": str(e)}, status=502)
        if result.get("__slow__"):
            return web.json_response({"activationId": f"act{next(self._ids):08d}"}, status=202)
        return web.json_response(result)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/api/v1/namespaces/{namespace}/actions/{action:.+}", self._invoke)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
