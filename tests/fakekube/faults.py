"""Fault injection for the fake API server, driven over HTTP like everything else.

Tests of the delivery promises need the API to answer a chosen status (429 with
``Retry-After``, 5xx, 409 Conflict, 422, 403) or to hold a request mid-flight (so a
test can look at the bus while a trigger is running). A real kube-apiserver cannot be
told to do that on demand, so the fake can, through its ``/fake/`` admin endpoints:

- ``POST /fake/faults`` adds a rule ``{"method", "path", "status"?, "reason"?,
  "retryAfter"?, "times"?, "hold"?, "delay"?, "reset"?}`` and answers ``{"id": N}``. A
  request matches a rule when its method and path (without the query) are equal to the
  rule's. The first ``times`` matching requests (default 1, 0 = all) are faulted: held
  until released when ``hold`` is true, then answered with a ``Status`` of ``status``
  (and a ``Retry-After`` header when ``retryAfter`` is given), or passed on to the API
  when there is no ``status``. A slow answer: ``delay`` seconds between serving the
  request and answering it (a client that gave up meanwhile retries something that
  happened). A connection reset (TCP RST): ``reset`` ``"before"`` the API sees the
  request, or ``"after"`` it served it (the answer is lost).
- ``GET /fake/faults`` answers the rules (with ``hits`` and ``held``, the requests
  waiting now) and ``requests``: every request that matched a rule's method and path,
  faulted or not, in arrival order, with its ``contentType``, the status it got
  (``None`` when reset before serving; for a reset after, the status that was
  lost), ``t``, the server's monotonic clock in seconds when it arrived, and
  ``name``, the object's name when the body is a JSON object with
  ``metadata.name`` (so a test can follow the retries of one object).
- ``POST /fake/faults/release`` lets every held request go on.
- ``DELETE /fake/faults`` (and ``POST /fake/reset``) drops the rules and the request
  log, releasing whatever was held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
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
    delay: float = 0.0
    reset: str = ""
    hits: int = 0
    held: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id, "method": self.method, "path": self.path, "status": self.status,
            "reason": self.reason, "retryAfter": self.retry_after, "times": self.times,
            "hold": self.hold, "delay": self.delay, "reset": self.reset, "hits": self.hits,
            "held": self.held,
        }  # fmt: skip


class Faults:
    """The rules and the log of matching requests of one fake server."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.requests: list[dict[str, Any]] = []
        self._next_id = 1

    def add(self, spec: dict[str, Any]) -> Rule:
        status = spec.get("status")
        reset = str(spec.get("reset") or "")
        if reset not in ("", "before", "after"):
            raise ValueError(f"reset must be 'before' or 'after', not {reset!r}")
        rule = Rule(
            id=self._next_id,
            method=str(spec["method"]).upper(),
            path=str(spec["path"]),
            status=int(status) if status is not None else None,
            reason=str(spec.get("reason") or REASONS.get(int(status or 0), "Failure")),
            retry_after=spec.get("retryAfter"),
            times=int(spec.get("times", 1)),
            hold=bool(spec.get("hold", False)),
            delay=float(spec.get("delay") or 0.0),
            reset=reset,
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
            "rule": rule.id if rule is not None else None, "status": None, "name": None,
            "contentType": content_type,
        }  # fmt: skip
        self.faults.requests.append(entry)
        if scope["method"] in ("POST", "PUT", "PATCH"):  # note the object's name
            body = await _read_body(receive)
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                entry["name"] = json.loads(body)["metadata"]["name"]
            receive = _replay(body)
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
        if rule is not None and rule.reset == "before" and _reset_connection(scope):
            return
        if rule is None or not (rule.delay or rule.reset == "after"):

            async def recording_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    entry["status"] = message["status"]
                await send(message)

            await self.app(scope, receive, recording_send)
            return
        held: list[Message] = []  # served now, answered later (or never)

        async def holding_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            held.append(message)

        await self.app(scope, receive, holding_send)
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.reset == "after" and _reset_connection(scope):
            return
        for message in held:
            await send(message)


TRANSPORT_KEY = "fakekube.transport"
"""Where :class:`ConnectionAccess` puts the connection's transport in the scope."""


class ConnectionAccess:
    """Outermost ASGI layer: makes the TCP transport of each request reachable by
    :class:`FaultMiddleware` (to reset it), from uvicorn's response cycle."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is not None:
            scope.setdefault("extensions", {})[TRANSPORT_KEY] = transport
        await self.app(scope, receive, send)


def _reset_connection(scope: Scope) -> bool:
    """Abort the request's connection with a TCP RST; false when not reachable."""
    transport = (scope.get("extensions") or {}).get(TRANSPORT_KEY)
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return True


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _replay(body: bytes) -> Receive:
    """A ``receive`` that hands over ``body`` again, then waits as a server does."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


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
