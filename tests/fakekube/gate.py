"""What stands in front of the fake's API: bearer-token checks and injected faults.

Both exist so the Kubernetes adapter's transport can be tested against real HTTP:

- with a tokens file (``--tokens-file``), an API request must carry
  ``Authorization: Bearer <t>`` for a ``t`` listed in the file, which is re-read on
  every request so a test can rotate credentials; otherwise 401 ``Unauthorized``;
- ``POST /fake/gate/faults`` with ``{"status": 429, "count": 2, "headers": {"Retry-After":
  "1"}}`` answers the next ``count`` API requests with that status and headers
  (a ``Status`` body like the real server's), before they reach the resources;
- ``GET /fake/gate/requests`` lists the API requests seen since the last reset (method,
  path, monotonic arrival time, status answered, client port) and the most requests
  that were in progress at once, so a test can check retries, their spacing, the
  client's in-flight bound and connection reuse; ``POST /fake/reset`` clears it all.

``/fake/`` endpoints themselves need no token.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_REASONS = {
    401: "Unauthorized",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class Gate:
    """ASGI middleware: auth check, fault injection, request log."""

    def __init__(self, app: ASGIApp, tokens_file: str | None = None) -> None:
        self.app = app
        self.tokens_file = Path(tokens_file) if tokens_file else None
        self.faults: list[dict[str, Any]] = []
        self.requests: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.in_progress = 0
        self.max_in_progress = 0

    def reset(self) -> None:
        self.faults.clear()
        self.requests.clear()
        self.max_in_progress = self.in_progress

    def _tokens(self) -> set[str]:
        assert self.tokens_file is not None
        try:
            return {t.strip() for t in self.tokens_file.read_text().splitlines() if t.strip()}
        except OSError:
            return set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/fake/"):
            if scope["type"] == "http" and path == "/fake/reset":
                self.reset()
            if scope["type"] == "http" and path in ("/fake/gate/faults", "/fake/gate/requests"):
                await self._admin(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("", 0)
        entry: dict[str, Any] = {
            "method": scope["method"],
            "path": path,
            "time": time.monotonic(),
            "status": 0,
            "client_port": client[1],
        }
        self.requests.append(entry)
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            await self._api(scope, receive, send, entry)
        finally:
            self.in_progress -= 1

    async def _api(self, scope: Scope, receive: Receive, send: Send, entry: dict[str, Any]) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        if self.tokens_file is not None:
            auth = headers.get("authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if token not in self._tokens():
                entry["status"] = 401
                await _status(send, 401, "Unauthorized", {})
                return
        if self.faults:
            fault = self.faults[0]
            fault["count"] -= 1
            if fault["count"] <= 0:
                self.faults.pop(0)
            status = int(fault["status"])
            entry["status"] = status
            message = f"injected fault {status}"
            await _status(send, status, message, dict(fault.get("headers") or {}))
            return

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, receive, logged_send)

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST" and scope["path"] == "/fake/gate/faults":
            body = b""
            while True:
                msg = await receive()
                body += msg.get("body", b"")
                if not msg.get("more_body"):
                    break
            fault = json.loads(body or b"{}")
            fault.setdefault("count", 1)
            self.faults.append(fault)
            await _json(send, 200, {"faults": self.faults})
        else:
            await _json(
                send, 200, {"requests": list(self.requests), "maxInProgress": self.max_in_progress}
            )


async def _json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


async def _status(send: Send, code: int, message: str, headers: dict[str, str]) -> None:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, "InternalError"),
        "code": code,
    }
    await _json(send, code, body, headers)
