"""A FAKE Slack Web API: ``chat.postMessage`` over real HTTP on 127.0.0.1 (port 0).

No Slack workspace is reachable from the tests, so this server answers what the
``slack`` trigger sends the way Slack documents it: form-encoded (or JSON) fields, the
token as ``Authorization: Bearer``, HTTP 200 with ``{"ok": true, "channel", "ts",
"message"}`` or ``{"ok": false, "error": ...}`` (``not_authed``, ``invalid_auth``,
``channel_not_found``, ``no_text``, ``invalid_blocks``, ``invalid_attachments``,
``thread_not_found``). Channels are known by name and by ID; ``thread_ts`` must name a
message of the channel. Tests queue extra answers (``fail_next``: an HTTP status or an
``ok: false`` error) to play outages and rate limits.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Posted:
    """One message the fake accepted."""

    channel: str  # the channel's ID
    ts: str
    fields: dict[str, str]
    authorization: str

    @property
    def text(self) -> str:
        return self.fields.get("text", "")

    def json_field(self, name: str) -> Any:
        return json.loads(self.fields[name])


@dataclass
class FakeSlack:
    """The fake server; ``posted`` lists accepted messages in order."""

    token: str
    channels: dict[str, str] = field(default_factory=lambda: {"general": "C0GENERAL"})
    posted: list[Posted] = field(default_factory=list)
    requests: int = 0
    fail_next: list[int | str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _channel_id(self, name_or_id: str) -> str | None:
        if name_or_id in self.channels.values():
            return name_or_id
        return self.channels.get(name_or_id)

    async def _post_message(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.content_type == "application/json":
            fields = {k: v if isinstance(v, str) else json.dumps(v)
                      for k, v in (await request.json()).items()}  # fmt: skip
        else:
            fields = {k: str(v) for k, v in (await request.post()).items()}
        if self.fail_next:
            failure = self.fail_next.pop(0)
            if isinstance(failure, int):
                headers = {"Retry-After": "1"} if failure == 429 else {}
                return web.Response(status=failure, text="fake failure", headers=headers)
            return web.json_response({"ok": False, "error": failure})
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return web.json_response({"ok": False, "error": "not_authed"})
        if auth != f"Bearer {self.token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        channel = self._channel_id(fields.get("channel", ""))
        if channel is None:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        if not (fields.get("text") or fields.get("blocks") or fields.get("attachments")):
            return web.json_response({"ok": False, "error": "no_text"})
        for name in ("blocks", "attachments"):
            if name in fields:
                try:
                    ok = isinstance(json.loads(fields[name]), list)
                except ValueError:
                    ok = False
                if not ok:
                    return web.json_response({"ok": False, "error": f"invalid_{name}"})
        thread = fields.get("thread_ts")
        if thread and not any(p.ts == thread and p.channel == channel for p in self.posted):
            return web.json_response({"ok": False, "error": "thread_not_found"})
        ts = f"1700000000.{next(self._ts):06d}"
        self.posted.append(Posted(channel, ts, fields, auth))
        message = {"text": fields.get("text", ""), "ts": ts}
        return web.json_response({"ok": True, "channel": channel, "ts": ts, "message": message})

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/api/chat.postMessage", self._post_message)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{bound}/api/"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
