"""Fault injection for the fake API server, driven over HTTP like everything else.

Tests of the delivery promises need the API to answer a chosen status (429 with
``Retry-After``, 5xx, 409 Conflict, 422, 403) or to hold a request mid-flight (so a
test can look at the bus while a trigger is running). A real kube-apiserver cannot be
told to do that on demand, so the fake can, through its ``/fake/`` admin endpoints:

- ``POST /fake/faults`` adds a rule ``{"method", "path", "status"?, "reason"?,
  "retryAfter"?, "times"?, "hold"?}`` and answers ``{"id": N}``. A request matches a
  rule when its method and path (without the query) are equal to the rule's. The first
  ``times`` matching requests (default 1, 0 = all) are faulted: held until released
  when ``hold`` is true, then answered with a ``Status`` of ``status`` (and a
  ``Retry-After`` header when ``retryAfter`` is given), or passed on to the API when
  there is no ``status``.
- ``GET /fake/faults`` answers the rules (with ``hits`` and ``held``, the requests
  waiting now) and ``requests``: every request that matched a rule's method and path,
  faulted or not, in arrival order, with its ``contentType``, the status it got and
  ``t``, the server's monotonic clock in seconds when it arrived.
- ``POST /fake/faults/release`` lets every held request go on.
- ``DELETE /fake/faults`` (and ``POST /fake/reset``) drops the rules and the request
  log, releasing whatever was held.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REASONS = {
    403: "Forbidden",
    409: "Conflict",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


@dataclass
class Rule:
    """One fault rule (see the module docstring)."""

    id: int
    method: str
    path: str
    status: int | None = None
    reason: str = ""
    retry_after: int | None = None
    times: int = 1
    hold: bool = False
    hits: int = 0
    held: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id, "method": self.method, "path": self.path, "status": self.status,
            "reason": self.reason, "retryAfter": self.retry_after, "times": self.times,
            "hold": self.hold, "hits": self.hits, "held": self.held,
        }  # fmt: skip


class Faults:
    """The rules and the log of matching requests of one fake server."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.requests: list[dict[str, Any]] = []
        self._next_id = 1

    def add(self, spec: dict[str, Any]) -> Rule:
        status = spec.get("status")
        rule = Rule(
            id=self._next_id,
            method=str(spec["method"]).upper(),
            path=str(spec["path"]),
            status=int(status) if status is not None else None,
            reason=str(spec.get("reason") or REASONS.get(int(status or 0), "Failure")),
            retry_after=spec.get("retryAfter"),
            times=int(spec.get("times", 1)),
            hold=bool(spec.get("hold", False)),
        )
        self._next_id += 1
        self.rules.append(rule)
        return rule

    def release(self) -> int:
        """Let every held request go on; the number released."""
        n = 0
        for rule in self.rules:
            n += rule.held
            rule.release.set()
        return n

    def clear(self) -> None:
        self.release()
        self.rules = []
        self.requests = []

    def view(self) -> dict[str, Any]:
        return {"rules": [r.view() for r in self.rules], "requests": self.requests}

    def match(self, method: str, path: str) -> tuple[Rule | None, bool]:
        """The first faulting rule for a request, and whether any rule matched at all."""
        matched = False
        for rule in self.rules:
            if rule.method != method or rule.path != path:
                continue
            matched = True
            if rule.times == 0 or rule.hits < rule.times:
                rule.hits += 1
                return rule, True
        return None, matched


class FaultMiddleware:
    """ASGI middleware applying :class:`Faults` before the API sees a request."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.faults.rules:
            await self.app(scope, receive, send)
            return
        rule, matched = self.faults.match(scope["method"], scope["path"])
        if not matched:
            await self.app(scope, receive, send)
            return
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        entry: dict[str, Any] = {
            "method": scope["method"], "path": scope["path"], "t": time.monotonic(),
            "rule": rule.id if rule is not None else None, "status": None,
            "contentType": content_type,
        }  # fmt: skip
        self.faults.requests.append(entry)
        if rule is not None and rule.hold:
            rule.held += 1
            try:
                await rule.release.wait()
            finally:
                rule.held -= 1
        if rule is not None and rule.status is not None:
            entry["status"] = rule.status
            await _send_status(send, rule)
            return

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, receive, recording_send)


async def _send_status(send: Send, rule: Rule) -> None:
    assert rule.status is not None
    status = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"injected fault: {rule.status} {rule.reason}",
        "reason": rule.reason, "code": rule.status,
    }  # fmt: skip
    body = json.dumps(status).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if rule.retry_after is not None:
        headers.append((b"retry-after", str(rule.retry_after).encode()))
    await send({"type": "http.response.start", "status": rule.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
