"""What stands in front of the fake's API: bearer-token checks and a request log.

Both exist so the Kubernetes adapter's transport can be tested against real HTTP:

- with a tokens file (``--tokens-file``), an API request must carry
  ``Authorization: Bearer <t>`` for a ``t`` listed in the file, which is re-read on
  every request so a test can rotate credentials; otherwise 401 ``Unauthorized``;
- ``GET /fake/gate/requests`` lists the API requests seen since the last reset (method,
  path, monotonic arrival time, status answered, client port) and the most requests
  that were in progress at once, so a test can check the client's in-flight bound,
  connection reuse, discovery caching and credential refreshes; ``POST /fake/reset``
  clears it.

Injected faults (429 with ``Retry-After``, 5xx, resets) are ``faults.py``'s; the gate
sits outside them, so the log shows the status a fault answered. ``/fake/`` endpoints
need no token.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Gate:
    """ASGI middleware: auth check and request log."""

    def __init__(self, app: ASGIApp, tokens_file: str | None = None) -> None:
        self.app = app
        self.tokens_file = Path(tokens_file) if tokens_file else None
        self.requests: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.in_progress = 0
        self.max_in_progress = 0

    def reset(self) -> None:
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
            if scope["type"] == "http" and path == "/fake/gate/requests":
                body = {"requests": list(self.requests), "maxInProgress": self.max_in_progress}
                await _json(send, 200, body)
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
        if self.tokens_file is not None:
            headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
            auth = headers.get("authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if token not in self._tokens():
                entry["status"] = 401
                status = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Failure", "message": "Unauthorized",
                          "reason": "Unauthorized", "code": 401}  # fmt: skip
                await _json(send, 401, status)
                return

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, receive, logged_send)


async def _json(send: Send, status: int, body: Any) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})
