"""A fake Kubernetes API server for tests; not a conformant implementation.

What it covers (enough for the ``kubernetes`` Python client, its ``DynamicClient`` and
``kubectl`` 1.37 ``apply``/``get``/``delete``/``wait``):

- discovery: ``/version``, ``/api``, ``/apis`` (legacy and aggregated v2/v2beta1),
  ``/api/v1``, ``/apis/<g>``, ``/apis/<g>/<v>``; OpenAPI v3 stubs that make kubectl use
  server-side field validation (see ``openapi.py``); ``/openapi/v2`` as JSON only;
- the kinds in ``resources.BUILTIN`` (core, apps, rbac, coordination, apiextensions,
  argoproj.io) plus whatever a created ``CustomResourceDefinition`` declares;
- create/get/list/update/patch (merge, JSON, strategic subset, simplified apply)/delete/
  deletecollection, the ``status`` subresource, ``dryRun=All``, label and field
  selectors, ``limit``/``continue``, ``Table`` and ``PartialObjectMetadata`` output,
  watches (resume from a resourceVersion, 410 Expired, ``sendInitialEvents``);
- metadata validation (names, labels), finalizers, owner-reference cascades, namespace
  deletion; CRD schemas (pruning, defaults, types, ``fieldValidation=Strict``);
- protobuf request bodies for the kinds ``kubectl create <kind>`` sends (``protobuf.py``);
- ``Status`` errors shaped like the real ones (see ``errors.py``).

Not covered: authentication and authorization (any token is accepted, RBAC objects
are stored, not enforced), admission and defaulting beyond a few metadata fields,
schema checks for built-in kinds (``fieldValidation`` is ignored for them), protobuf
responses and protobuf bodies of other kinds (``kubectl create deployment``), field
ownership for server-side apply, subresources other than ``status`` (no logs, exec,
scale, eviction), controllers (nothing runs pods or fills Deployment status), and
graceful pod deletion.

Test-only endpoints live under ``/fake/`` (``POST /fake/reset``, ``POST /fake/compact``,
``POST /fake/watches/expire`` (forget the history and end every live watch with an
ERROR 410 Expired event, as the real server does to a watcher that fell behind),
``POST /fake/watches/bookmark`` (a BOOKMARK at the current resourceVersion to every live
watch that allows them, as the real server sends about once a minute),
``POST /fake/watches/close`` (end every live watch normally, as its timeout would),
``GET /fake/state``, ``GET /fake/requests``: the last requests with method, path and
``User-Agent``, for tests that ask who did what, the fault rules of ``faults.py``:
``/fake/faults``, and from ``gate.py`` bearer-token checks (given a tokens file) and
``GET /fake/gate/requests``); run it with ``python -m tests.fakekube``.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.fakekube import discovery, errors, openapi
from tests.fakekube.api import ResourceHandler, json_response
from tests.fakekube.errors import ApiError
from tests.fakekube.faults import FaultMiddleware, Faults
from tests.fakekube.gate import Gate
from tests.fakekube.resources import ResourceRegistry
from tests.fakekube.store import Store

log = logging.getLogger("fakekube")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
REQUEST_LOG_SIZE = 20_000


class RequestLog:
    """ASGI wrapper remembering every API request (not ``/fake/`` ones), oldest first."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.entries: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.seq = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/fake/"):
            self.seq += 1
            headers = dict(scope.get("headers") or [])
            self.entries.append({
                "seq": self.seq,
                "method": scope["method"],
                "path": scope["path"],
                "query": scope.get("query_string", b"").decode(errors="replace"),
                "userAgent": headers.get(b"user-agent", b"").decode(errors="replace"),
            })  # fmt: skip
        await self.app(scope, receive, send)


def create_app(*, history_limit: int = 1000, tokens_file: str | None = None) -> Gate:
    """A fresh fake API server with its own registry and store, behind its :class:`Gate`."""
    registry = ResourceRegistry()
    store = Store(registry, history_limit=history_limit)
    resources = ResourceHandler(store)
    faults = Faults()

    def _get_only(request: Request) -> None:
        if request.method != "GET":
            raise errors.method_not_allowed()

    async def version(request: Request) -> Response:
        _get_only(request)
        return json_response(discovery.SERVER_VERSION)

    def _discovery(request: Request, core: bool) -> Response | None:
        v = discovery.aggregated_version(request.headers.get("accept", ""))
        if v is None:
            return None
        body = discovery.aggregated(registry, core=core, version=v)
        return Response(json.dumps(body), media_type=discovery.aggregated_content_type(v))

    async def api_root(request: Request) -> Response:
        _get_only(request)
        return _discovery(request, True) or json_response(
            discovery.api_versions(request.url.netloc)
        )

    async def apis_root(request: Request) -> Response:
        _get_only(request)
        return _discovery(request, False) or json_response(discovery.api_group_list(registry))

    async def core(request: Request) -> Response:
        return await _resources(
            request, "", request.path_params["version"], request.path_params.get("rest", "")
        )

    async def group(request: Request) -> Response:
        _get_only(request)
        body = discovery.api_group(registry, request.path_params["group"])
        if body is None:
            raise errors.path_not_found()
        return json_response(body)

    async def grouped(request: Request) -> Response:
        p = request.path_params
        return await _resources(request, p["group"], p["version"], p.get("rest", ""))

    async def _resources(request: Request, grp: str, ver: str, rest: str) -> Response:
        parts = [s for s in rest.split("/") if s]
        if not parts:
            _get_only(request)
            body = discovery.resource_list(registry, grp, ver)
            if body is None:
                raise errors.path_not_found()
            return json_response(body)
        if discovery.resource_list(registry, grp, ver) is None:
            raise errors.path_not_found()
        return await resources(request, grp, ver, parts)

    async def openapi_v2(request: Request) -> Response:
        _get_only(request)
        accept = request.headers.get("accept", "")
        if accept and "json" not in accept and "*/*" not in accept:
            return json_response(
                ApiError(406, "NotAcceptable", "only application/json is served").status(), 406
            )
        return json_response(openapi.v2(registry))

    async def openapi_v3_root(request: Request) -> Response:
        _get_only(request)
        return json_response(openapi.v3_root(registry))

    async def openapi_v3_gv(request: Request) -> Response:
        _get_only(request)
        parts = request.path_params["rest"].strip("/").split("/")
        doc = None
        if parts[:1] == ["api"] and len(parts) == 2:
            doc = openapi.v3_group_version(registry, "", parts[1])
        elif parts[:1] == ["apis"] and len(parts) == 3:
            doc = openapi.v3_group_version(registry, parts[1], parts[2])
        if doc is None:
            raise errors.path_not_found()
        return json_response(doc)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def fake_reset(request: Request) -> Response:
        faults.clear()
        store.reset()
        requests.entries.clear()
        return json_response(store.stats())

    async def fake_faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                rule = faults.add(await request.json())
            except (KeyError, TypeError, ValueError) as e:
                raise ApiError(400, "BadRequest", f"invalid fault rule: {e}") from e
            return json_response({"id": rule.id})
        if request.method == "DELETE":
            faults.clear()
        return json_response(faults.view())

    async def fake_faults_release(request: Request) -> Response:
        return json_response({"released": faults.release()})

    async def fake_compact(request: Request) -> Response:
        keep = int(request.query_params.get("keep", "0"))
        store.compact(keep)
        return json_response(store.stats())

    async def fake_watches_expire(request: Request) -> Response:
        return json_response({"expired": store.expire_watchers(), **store.stats()})

    async def fake_watches_close(request: Request) -> Response:
        n = store.stats()["watchers"]
        store.close_watchers()
        return json_response({"closed": n, **store.stats()})

    async def fake_watches_bookmark(request: Request) -> Response:
        return json_response({"signalled": store.bookmark_watchers(), **store.stats()})

    async def fake_state(request: Request) -> Response:
        return json_response(store.stats())

    async def fake_requests(request: Request) -> Response:
        since = int(request.query_params.get("since", "0"))
        return json_response({"items": [e for e in requests.entries if e["seq"] > since]})

    async def not_found(request: Request) -> Response:
        raise errors.path_not_found()

    async def api_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ApiError):  # registered for ApiError only
            raise exc
        return json_response(exc.status(), exc.code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = ApiError(500, "InternalError", f"fake server error: {exc!r}").status()
        return json_response(body, 500)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        store.close_watchers()

    routes = [
        Route("/version", version, methods=METHODS),
        Route("/api", api_root, methods=METHODS),
        Route("/api/{version}", core, methods=METHODS),
        Route("/api/{version}/{rest:path}", core, methods=METHODS),
        Route("/apis", apis_root, methods=METHODS),
        Route("/apis/{group}", group, methods=METHODS),
        Route("/apis/{group}/{version}", grouped, methods=METHODS),
        Route("/apis/{group}/{version}/{rest:path}", grouped, methods=METHODS),
        Route("/openapi/v2", openapi_v2, methods=METHODS),
        Route("/openapi/v3", openapi_v3_root, methods=METHODS),
        Route("/openapi/v3/{rest:path}", openapi_v3_gv, methods=METHODS),
        Route("/healthz", health),
        Route("/readyz", health),
        Route("/livez", health),
        Route("/fake/reset", fake_reset, methods=["POST"]),
        Route("/fake/compact", fake_compact, methods=["POST"]),
        Route("/fake/watches/expire", fake_watches_expire, methods=["POST"]),
        Route("/fake/watches/bookmark", fake_watches_bookmark, methods=["POST"]),
        Route("/fake/watches/close", fake_watches_close, methods=["POST"]),
        Route("/fake/state", fake_state, methods=["GET"]),
        Route("/fake/requests", fake_requests, methods=["GET"]),
        Route("/fake/faults", fake_faults, methods=["GET", "POST", "DELETE"]),
        Route("/fake/faults/release", fake_faults_release, methods=["POST"]),
        Route("/{path:path}", not_found, methods=METHODS),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: api_error, Exception: internal_error},
        lifespan=lifespan,
        middleware=[Middleware(FaultMiddleware, faults=faults)],
    )
    app.state.store = store
    requests = RequestLog(app)
    return Gate(requests, tokens_file)
