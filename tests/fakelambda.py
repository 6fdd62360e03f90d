"""A FAKE AWS Lambda ``Invoke`` API over real HTTP on 127.0.0.1 (port 0).

moto's Lambda runs functions in containers; without a container engine (none here) its
docker-less backend echoes every payload and can never answer with a function error,
a throttle or an unknown function. This server answers ``POST
/2015-03-31/functions/{FunctionName}/invocations`` the way Lambda documents it, so the
real AWS SDK (the trigger's aiobotocore client) can be driven into those answers:
known functions return their result (200, 202 for ``Event``, 204 for ``DryRun``);
``errors`` maps a function name to its error (``X-Amz-Function-Error: Unhandled`` with
Lambda's ``{"errorMessage", "errorType"}`` body); unknown functions get 404
``ResourceNotFoundException``; ``fail_next`` queues answers (an HTTP status with
Lambda's error code for it) to play throttles and outages. Every request is recorded
with its signing access key id (from the SigV4 ``Authorization`` header).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

ERROR_CODES = {
    400: "InvalidRequestContentException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    409: "ResourceConflictException",
    429: "TooManyRequestsException",
    500: "ServiceException",
    502: "ServiceException",
    503: "ServiceException",
}
_KEY_ID = re.compile(r"Credential=([^/]+)/")


@dataclass
class Invoked:
    """One request the fake answered."""

    function: str
    invocation_type: str
    payload: Any
    access_key_id: str
    client_context: dict[str, Any] | None


@dataclass
class FakeLambda:
    """The fake server; ``invoked`` lists requests in order."""

    functions: set[str] = field(default_factory=lambda: {"hello"})
    errors: dict[str, str] = field(default_factory=dict)
    fail_next: list[int] = field(default_factory=list)
    invoked: list[Invoked] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _invoke(self, request: web.Request) -> web.Response:
        name = unquote(request.match_info["name"])
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        raw = await request.read()
        context = request.headers.get("X-Amz-Client-Context")
        auth = _KEY_ID.search(request.headers.get("Authorization", ""))
        self.invoked.append(Invoked(
            name, kind, json.loads(raw) if raw else None, auth.group(1) if auth else "",
            json.loads(base64.b64decode(context)) if context else None))  # fmt: skip
        if self.fail_next:
            status = self.fail_next.pop(0)
            return _error(status, ERROR_CODES.get(status, "ServiceException"), "fake failure")
        if name.rsplit(":", 1)[-1] not in self.functions:
            return _error(404, "ResourceNotFoundException", f"Function not found: {name}")
        if kind == "Event":
            return web.Response(status=202)
        if kind == "DryRun":
            return web.Response(status=204)
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if name in self.errors:
            headers["X-Amz-Function-Error"] = "Unhandled"
            body = {"errorMessage": self.errors[name], "errorType": "RuntimeError"}
            return web.json_response(body, headers=headers)
        return web.json_response({"echo": json.loads(raw) if raw else None}, headers=headers)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self._invoke)
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


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"Type": "User", "message": message}, status=status,
                             headers={"X-Amzn-ErrorType": code})  # fmt: skip
