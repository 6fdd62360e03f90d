"""FAKE hook APIs of GitHub, GitLab, Bitbucket Cloud and Bitbucket Server over real HTTP.

No provider is reachable from the tests, so these servers (aiohttp on 127.0.0.1, port
0) answer the hook calls the git hosting sources make, on each provider's documented
paths, auth and JSON shapes:

* GitHub REST v3: ``/repos/{owner}/{repo}/hooks`` and ``/orgs/{org}/hooks`` (list, POST
  201), ``.../hooks/{id}`` (PATCH, DELETE 204); ``Authorization: Bearer|token``; a
  hook's URL in ``config.url``; ``401 {"message": "Bad credentials"}``.
* GitLab v4: ``/api/v4/projects/{id}/hooks`` and ``/api/v4/groups/{id}/hooks`` (ids or
  URL-encoded paths), ``.../hooks/{id}`` (PUT, DELETE); ``PRIVATE-TOKEN``.
* Bitbucket Cloud 2.0: ``/2.0/repositories/{owner}/{slug}/hooks`` (``{"values": [...]}``,
  ``uuid`` ids), PUT/DELETE by uuid; HTTP basic or ``Bearer``.
* Bitbucket Server 1.0: ``/rest/api/1.0/projects/{key}/repos/{slug}/webhooks``
  (``{"values": [...], "isLastPage": true}``), PUT/DELETE by id; ``Bearer``.

Every store keeps hooks by collection path; tests read ``hooks`` and the recorded
``calls`` (method, path: never the credentials) and queue failures with ``fail_next``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeHookHost:
    """One fake provider: its hook store, credentials and call log."""

    kind: str
    """``github`` | ``gitlab`` | ``bitbucket`` | ``bitbucketserver``."""
    token: str = ""
    username: str = ""
    password: str = ""
    hooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Hooks by collection (``repos/o/r``), as the provider would list them."""
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    url: str = ""
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    # -- auth ---------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        if self.kind == "gitlab":
            return request.headers.get("PRIVATE-TOKEN") == self.token
        auth = request.headers.get("Authorization", "")
        if self.kind == "bitbucket" and auth.startswith("Basic "):
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            return (user, pw) == (self.username, self.password) and bool(self.username)
        scheme, _, value = auth.partition(" ")
        return scheme in ("Bearer", "token") and value == self.token and bool(self.token)

    # -- shapes -------------------------------------------------------------------------
    def _url_of(self, hook: dict[str, Any]) -> str:
        return str(hook["config"]["url"]) if self.kind == "github" else str(hook["url"])

    def _new(self, body: dict[str, Any]) -> dict[str, Any]:
        hook = dict(body)
        if self.kind == "bitbucket":
            hook["uuid"] = "{" + str(uuid.uuid4()) + "}"
        else:
            hook["id"] = next(self._ids)
        if self.kind == "github":
            hook.setdefault("name", "web")
            hook["config"] = {k: v for k, v in hook.get("config", {}).items() if k != "secret"}
            hook["config"]["secret_set"] = "secret" in body.get("config", {})
        return hook

    def _id_of(self, hook: dict[str, Any]) -> str:
        return str(hook["uuid"] if self.kind == "bitbucket" else hook["id"])

    def _listing(self, hooks: list[dict[str, Any]]) -> Any:
        if self.kind == "bitbucket":
            return {"values": hooks, "pagelen": 100, "size": len(hooks), "page": 1}
        if self.kind == "bitbucketserver":
            return {"values": hooks, "size": len(hooks), "isLastPage": True, "start": 0}
        return hooks

    def urls(self, collection: str) -> list[str]:
        """The URLs the hooks of ``collection`` deliver to."""
        return [self._url_of(h) for h in self.hooks.get(collection, [])]

    # -- handlers -----------------------------------------------------------------------
    def _guard(self, request: web.Request) -> web.Response | None:
        self.calls.append((request.method, request.path))
        if self.fail_next:
            status = self.fail_next.pop(0)
            return web.json_response({"message": "fake outage"}, status=status)
        if not self._authorized(request):
            return web.json_response({"message": "Bad credentials"}, status=401)
        return None

    async def _collection(self, request: web.Request) -> web.Response:
        refused = self._guard(request)
        if refused is not None:
            return refused
        collection = unquote(request.match_info["collection"])
        hooks = self.hooks.setdefault(collection, [])
        if request.method == "GET":
            return web.json_response(self._listing(hooks))
        hook = self._new(await request.json())
        hooks.append(hook)
        return web.json_response(hook, status=201)

    async def _one(self, request: web.Request) -> web.Response:
        refused = self._guard(request)
        if refused is not None:
            return refused
        collection = unquote(request.match_info["collection"])
        hooks = self.hooks.get(collection, [])
        hook_id = unquote(request.match_info["hook_id"])
        found = next((h for h in hooks if self._id_of(h) == hook_id), None)
        if found is None:
            return web.json_response({"message": "Not Found"}, status=404)
        if request.method == "DELETE":
            hooks.remove(found)
            return web.Response(status=204)
        body = await request.json()
        kept = {k: found[k] for k in ("id", "uuid") if k in found}
        found.clear()
        found.update({**self._new(body), **kept})
        return web.json_response(found)

    def _routes(self) -> list[web.RouteDef]:
        prefix, leaf = {
            "github": ("", "hooks"),
            "gitlab": ("/api/v4", "hooks"),
            "bitbucket": ("/2.0", "hooks"),
            "bitbucketserver": ("/rest/api/1.0", "webhooks"),
        }[self.kind]
        patterns = {
            "github": ["repos/{o}/{r}", "orgs/{o}"],
            "gitlab": ["projects/{g}", "groups/{g}"],
            "bitbucket": ["repositories/{o}/{r}"],
            "bitbucketserver": ["projects/{o}/repos/{r}"],
        }[self.kind]
        routes: list[web.RouteDef] = []
        for pattern in patterns:
            # The collection is the path between the prefix and the leaf, kept whole.
            regex = pattern.replace("{o}", "[^/]+").replace("{r}", "[^/]+").replace("{g}", ".+")
            base = f"{prefix}/{{collection:{regex}}}/{leaf}"
            routes += [
                web.get(base, self._collection),
                web.post(base, self._collection),
                web.patch(base + "/{hook_id:[^/]+}", self._one),
                web.put(base + "/{hook_id:[^/]+}", self._one),
                web.delete(base + "/{hook_id:[^/]+}", self._one),
            ]
        return routes

    @property
    def api_url(self) -> str:
        """The base URL a source is configured with."""
        suffix = {"github": "/", "gitlab": "", "bitbucket": "/2.0/", "bitbucketserver": "/rest"}
        return self.url + suffix[self.kind]

    async def start(self) -> str:
        app = web.Application()
        app.add_routes(self._routes())
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


@contextmanager
def threaded(fake: FakeHookHost) -> Iterator[FakeHookHost]:
    """Serve ``fake`` from its own event loop in a thread (for subprocess tests)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
