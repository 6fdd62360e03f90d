"""The webhook source's HTTP hot path: one raw ASGI app per port, no framework routing.

Why raw ASGI: a webhook request's own work is small (read ≤1 MiB, parse JSON, build a
CloudEvent, await the PubAck), so per-request framework overhead (routing, request
objects, dependency injection, middleware) is what limits throughput (DESIGN §7: a
FastAPI handler does ~4.5k req/s here, a bare ASGI app ~33k). This module keeps the
per-request path to one dict lookup for the route, one pass over the raw header list,
one ``orjson.loads`` and the awaited publish; every response message is built once at
import time.

:class:`WebhookApp` is what :class:`eventsources.webhook.WebhookSource` serves with
uvicorn, and what the tests drive in-process through ``httpx.ASGITransport``. It knows
nothing about uvicorn or the bus: it is given the routes of its port and a
:class:`Dispatch` bundle (publish, metrics, event factory, log).

Status codes (DESIGN §3): 200 ``success`` only after ``publish`` returned; 200
``filtered`` with ``X-Triggerfish-Filtered: true`` when the route's ``filter`` dropped
the event (nothing published; routes without a filter pay one attribute check); 404 unknown
path; 405 wrong method (``Allow``); 401 missing/wrong bearer token; 413 body over the
limit (``Content-Length`` up front, streamed bytes counted for chunked bodies, and the
decoded size of a ``gzip``/``deflate`` body); 415 (with ``Accept-Encoding``) for any
other ``Content-Encoding``; 400 body that is not JSON, nested deeper than
:data:`MAX_BODY_DEPTH`, or a corrupt compressed stream; 503 + ``Retry-After`` when the
publish raised a :class:`app.kernel.errors.TransientError` (nothing was accepted, the
client may retry) or when the port already handles ``max_in_flight`` requests; 500 on
anything unexpected (short message to the client, traceback only in the log). Slow and
oversized request heads, and bodies that stall, are cut off below the app
(:mod:`app.adapters.httpserver`: 408 / 431).

Other source types reuse all of the above (``github``, ``gitlab``, ``bitbucket``, ...):
a :class:`Route` carries three per-route hooks, run in this order once the body is read
and its ``Content-Encoding`` undone:

1. ``verifier`` (``async (Request) -> Rejection | None``): checks the request (a
   provider's signature over :attr:`Request.raw_body`, a shared token header); a
   :class:`Rejection` is answered 401 or 403 with its reason and nothing is published.
   Compare secrets with :func:`hmac.compare_digest` (see
   :mod:`eventsources.webhook_verifiers` for the shared HMAC and token checks).
2. ``responder`` (``async (Request) -> Reply | None``): answers a request directly
   without publishing (Slack's ``url_verification`` challenge, SNS's
   ``SubscriptionConfirmation``); ``None`` goes on to publish.
3. ``shaper`` (``(Request, Route) -> data``): the event data in the type's own Argo
   shape (default :func:`webhook_data`, the webhook source's ``{"header", "body",
   "metadata"}``). It raises :class:`BadRequest` (answered 400) for a body that cannot
   become an event, or :class:`Skip` (answered 200 ``filtered``, nothing published)
   for a request the type's own settings drop (e.g. an event kind not subscribed to).

``filter.expression`` then runs over the shaped data, and the publish/answer contract
is the same for every type. A hook that raises anything else is answered 500 and
logged; nothing is published.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qs

import orjson

from app.adapters import tracing
from app.kernel import jsoncodec
from app.kernel.errors import TransientError
from app.kernel.events import Event, event_id_from, new_event_id
from eventsources.base import SourceMetrics

if TYPE_CHECKING:
    from app.languages.source_filter import SourceFilter

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MASKED_AUTHORIZATION: Final = "*** Masked Auth Secret ***"
"""What the ``Authorization`` header's value becomes in event data (Argo's wording)."""

RETRY_AFTER_SECONDS: Final = 1
"""``Retry-After`` on a 503: the bus reconnects within a fraction of a second."""

HEALTH_PATH: Final = "/health"

DEFAULT_MAX_IN_FLIGHT: Final = 1024
"""Requests one port handles at once; more are answered 503 + ``Retry-After``."""

# -- header names ---------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def canonical_header_name(name: str) -> str:
    """Canonicalise a header name the way Go's ``textproto.CanonicalMIMEHeaderKey`` does.

    The first letter and every letter after a hyphen upper-case, the rest lower-case
    (``x-run`` → ``X-Run``, ``X-API-KEY`` → ``X-Api-Key``). A name holding a byte that
    is not valid in a header field name is returned unchanged, as Go does.
    """
    if not _TOKEN_RE.fullmatch(name):
        return name
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


# Kinds of request headers the hot path looks at while it copies the header list.
_PLAIN, _AUTH, _DROP, _CTYPE, _CLEN, _IDEM_KEY, _REQ_ID, _TE, _CENC = range(9)

_SPECIAL: Final[dict[bytes, int]] = {
    b"authorization": _AUTH,
    # Go's server moves these out of Request.Header, so Argo's event data lacks them.
    b"host": _DROP,
    b"transfer-encoding": _TE,
    b"content-type": _CTYPE,
    b"content-length": _CLEN,
    b"content-encoding": _CENC,
    b"idempotency-key": _IDEM_KEY,
    b"x-request-id": _REQ_ID,
}

_NAME_CACHE_MAX: Final = 2048
_name_cache: dict[bytes, tuple[str, int]] = {
    raw: (canonical_header_name(raw.decode("latin-1")), kind) for raw, kind in _SPECIAL.items()
}


def _header_info(raw: bytes) -> tuple[str, int]:
    """Canonical name and kind of a lower-case raw header name, memoised (bounded)."""
    info = _name_cache.get(raw)
    if info is None:
        info = (canonical_header_name(raw.decode("latin-1")), _PLAIN)
        if len(_name_cache) < _NAME_CACHE_MAX:
            _name_cache[raw] = info
    return info


# -- prebuilt responses ---------------------------------------------------------------

_TEXT: Final = (b"content-type", b"text/plain; charset=utf-8")


def _response(
    status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> tuple[Message, Message]:
    """The two ASGI messages of a small text response (built once, sent many times)."""
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [_TEXT, (b"content-length", str(len(body)).encode()), *extra],
    }
    return start, {"type": "http.response.body", "body": body, "more_body": False}


_CLOSE: Final = ((b"connection", b"close"),)
_OK: Final = _response(200, b"success")
_FILTERED: Final = _response(200, b"filtered", ((b"x-triggerfish-filtered", b"true"),))
"""A 200, because retrying cannot change the outcome; marked, because nothing was sent."""
_HEALTH_OK: Final = _response(200, b"OK")
_NOT_FOUND: Final = _response(404, b"404 page not found")
_TOO_LARGE: Final = _response(413, b"request body too large", _CLOSE)
_BAD_AUTH_HEADER: Final = _response(
    401, b"Invalid Authorization Header", ((b"www-authenticate", b"Bearer"),)
)
_BAD_TOKEN: Final = _response(401, b"Invalid Auth token", ((b"www-authenticate", b"Bearer"),))
_UNAVAILABLE: Final = _response(
    503,
    b"event bus unavailable, event not recorded; retry later",
    ((b"retry-after", str(RETRY_AFTER_SECONDS).encode()),),
)
_INTERNAL: Final = _response(500, b"internal error, event not recorded")
_OVERLOADED: Final = _response(
    503,
    b"too many requests in flight, event not recorded; retry later",
    ((b"retry-after", str(RETRY_AFTER_SECONDS).encode()),),
)
_UNSUPPORTED_ENCODING: Final = _response(
    415,
    b"unsupported Content-Encoding (gzip, deflate and identity are accepted)",
    ((b"accept-encoding", b"gzip, deflate"),),
)


def _closing(response: tuple[Message, Message]) -> tuple[Message, Message]:
    """The same response, closing the connection afterwards."""
    start, body = response
    return {**start, "headers": [*start["headers"], *_CLOSE]}, body


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request announces a body (that a rejection will leave unread)."""
    for name, value in headers:
        if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
            return True
    return False


_NOT_FOUND_CLOSE: Final = _closing(_NOT_FOUND)
_BAD_AUTH_HEADER_CLOSE: Final = _closing(_BAD_AUTH_HEADER)
_BAD_TOKEN_CLOSE: Final = _closing(_BAD_TOKEN)
_OVERLOADED_CLOSE: Final = _closing(_OVERLOADED)


async def _send(send: Send, response: tuple[Message, Message]) -> None:
    await send(response[0])
    await send(response[1])


# -- per-route hooks -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One request as a route's verifier, responder and shaper see it (read-only)."""

    method: str
    path: str
    query: bytes
    """The raw query string (without ``?``)."""
    headers: Mapping[str, list[str]]
    """Canonical header names (``X-Hub-Signature-256``) to their values, as Go's
    ``http.Header``; ``Authorization`` is masked here (see :attr:`authorization`)."""
    content_type: bytes
    raw_body: bytes
    """The body exactly as received: what providers sign."""
    body: bytes
    """The body with its ``Content-Encoding`` undone (the same as ``raw_body`` without one)."""
    authorization: bytes | None = field(default=None, repr=False)
    """The first ``Authorization`` header's real value, for verifiers that need it."""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or ``None``."""
        values = self.headers.get(canonical_header_name(name))
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A verifier's refusal: answered with ``status`` and ``reason``, nothing published.

    ``reason`` goes to the client and the log: never put a secret or a signature in it.
    """

    status: Literal[400, 401, 403]
    reason: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A responder's direct answer to a request that is not an event."""

    body: bytes = b""
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def messages(self) -> tuple[Message, Message]:
        """The two ASGI messages of this reply."""
        extra = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers)
        start, body = _response(self.status, self.body, extra)
        start["headers"][0] = (b"content-type", self.content_type.encode("latin-1"))
        return start, body


class BadRequest(Exception):
    """The request body cannot become an event (answered 400 with the message)."""


class Skip(Exception):
    """The type's own settings drop this request (answered 200 ``filtered``, not published)."""


Verifier = Callable[[Request], Awaitable[Rejection | None]]
"""Checks one request; ``None`` accepts it. Runs before anything is published."""
Responder = Callable[[Request], Awaitable[Reply | None]]
"""Answers a request directly instead of publishing it; ``None`` publishes as usual."""
Shaper = Callable[[Request, "Route"], Any]
"""The event data of one accepted request (raises :class:`BadRequest` or :class:`Skip`)."""


def webhook_data(request: Request, route: Route) -> Any:
    """The webhook source's event data (Argo's ``WebhookEventData``):
    ``{"header": {...}, "body": <parsed body>, "metadata": {...}}``."""
    body = parse_body(request.method, request.content_type, request.query, request.body)
    return {"header": request.headers, "body": body, "metadata": dict(route.metadata)}


# -- routes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One webhook event as the hot path needs it, precomputed at start."""

    event_name: str
    endpoint: str
    method: str
    max_payload_bytes: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    token: bytes | None = field(default=None, repr=False)
    """The bearer token (``authSecret``), read once at start; ``None`` = no auth."""
    filter: SourceFilter | None = None
    """The compiled ``filter.expression``; ``None`` = publish every request."""
    verifier: Verifier | None = None
    """Checks each request after its body is read (signatures); ``None`` = no check."""
    responder: Responder | None = None
    """Answers requests that are not events (challenges); ``None`` = every one is."""
    shaper: Shaper = webhook_data
    """Builds the event data in the type's Argo shape."""
    method_not_allowed: tuple[Message, Message] = field(init=False, repr=False)
    method_not_allowed_close: tuple[Message, Message] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        allow = ((b"allow", self.method.encode()),)
        response = _response(405, b"method not allowed", allow)
        object.__setattr__(self, "method_not_allowed", response)
        object.__setattr__(self, "method_not_allowed_close", _closing(response))


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What a :class:`WebhookApp` hands its events to (one per EventSource)."""

    source_name: str
    publish: Callable[[Event], Awaitable[None]]
    """Returns once the bus holds the event (PubAck); raises when it does not."""
    make_event: Callable[[str, Any, str], Event]
    metrics: SourceMetrics
    log: logging.Logger


class _TooLarge(Exception):
    """The streamed body grew past the route's limit (answered 413)."""


class _Disconnected(Exception):
    """The client went away before its body was read (nothing to answer)."""


class _UnsupportedEncoding(Exception):
    """A ``Content-Encoding`` this server cannot decode (answered 415)."""


MAX_BODY_DEPTH: Final = jsoncodec.PARSER_MAX_DEPTH - 2
"""Deepest JSON body accepted: the parser's own limit, less the two levels the event
envelope (``{"data": {"body": ...}}``) adds, so every consumer can parse the event."""

_TOO_DEEP: Final = f"request body is nested deeper than {MAX_BODY_DEPTH} levels"


def _parse_json(body: bytes) -> Any:
    """``orjson.loads`` plus the nesting limit; ``orjson.JSONDecodeError`` when invalid."""
    value = orjson.loads(body)
    # Only a body with that many brackets can be that deep: one count instead of a walk.
    if (
        len(body) > 2 * MAX_BODY_DEPTH
        and body.count(b"[") + body.count(b"{") > MAX_BODY_DEPTH
        and jsoncodec.depth(value) > MAX_BODY_DEPTH
    ):
        raise BadRequest(_TOO_DEEP)
    return value


_DECODERS: Final[dict[bytes, int]] = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}
"""``zlib`` window bits of each accepted content coding (31: gzip, 15: zlib stream)."""


def decode_content(encoding: bytes, body: bytes, limit: int) -> bytes:
    """The body with its ``Content-Encoding`` (a list, applied in order) undone.

    ``gzip`` (and ``x-gzip``, several members allowed) and ``deflate`` (a zlib stream)
    are decoded, ``identity`` is skipped, an empty body stays empty. The decoded size is
    checked while decoding: :class:`_TooLarge` as soon as it passes ``limit`` (a
    compression bomb costs at most ``limit`` bytes of memory); :class:`BadRequest` for
    a corrupt or truncated stream; :class:`_UnsupportedEncoding` for any other coding.
    """
    for raw in reversed(encoding.split(b",")):
        coding = raw.strip().lower()
        if coding in (b"", b"identity"):
            continue
        wbits = _DECODERS.get(coding)
        if wbits is None:
            raise _UnsupportedEncoding
        if body:
            body = _inflate(body, wbits, limit, coding.decode("latin-1"))
    return body


def _inflate(data: bytes, wbits: int, limit: int, name: str) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        decoder = zlib.decompressobj(wbits)
        try:
            chunk = decoder.decompress(data, limit - total + 1)
        except zlib.error as e:
            raise BadRequest(f"request body is not valid {name}: {e}") from None
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        parts.append(chunk)
        if not decoder.eof:
            raise BadRequest(f"request body is truncated {name} data")
        data = decoder.unused_data
        if not data:
            return b"".join(parts)
        if wbits != 31:  # only gzip may hold several members
            raise BadRequest(f"request body has data after the end of the {name} stream")


_FORM: Final = b"application/x-www-form-urlencoded"
_BODYLESS_METHODS: Final = frozenset({"GET", "HEAD"})


def _values_map(text: str) -> dict[str, list[str]]:
    """A query string or form body as Go's ``url.Values``: a map of lists of strings."""
    return parse_qs(text, keep_blank_values=True, errors="replace")


def parse_body(method: str, content_type: bytes, query: bytes, body: bytes) -> Any:
    """The ``body`` of the event data, shaped as Argo shapes it.

    * ``GET``/``HEAD``: the query parameters as a map of lists.
    * ``application/x-www-form-urlencoded``: the form fields as a map of lists —
      except a body that is a JSON object or array (``curl -d '{...}'`` sends JSON
      with curl's default form content type): that is taken as JSON, so the
      walkthrough's curl works with or without ``-H Content-Type``.
    * anything else: the body must be JSON (Argo embeds it as raw JSON); an empty body
      becomes ``null`` (Argo answers 400 there; accepting an empty ``curl -X POST`` as
      a bare trigger is a deliberate difference).

    Raises :class:`BadRequest` when a body meant as JSON is not valid JSON (orjson:
    strict UTF-8, no lone surrogates, no ``NaN``/``Infinity``, no number beyond the
    float range; integers beyond 64 bits become floats, a repeated key keeps its last
    value) or is nested deeper than :data:`MAX_BODY_DEPTH`.
    """
    if method in _BODYLESS_METHODS:
        return _values_map(query.decode("utf-8", "replace")) if query else {}
    if content_type and content_type.split(b";", 1)[0].strip().lower() == _FORM:
        if body[:1] in (b"{", b"["):
            try:
                return _parse_json(body)
            except orjson.JSONDecodeError as e:
                if "depth" in str(e):
                    raise BadRequest(_TOO_DEEP) from None
        return _values_map(body.decode("utf-8", "replace")) if body else {}
    if not body or body.isspace():
        return None
    try:
        return _parse_json(body)
    except orjson.JSONDecodeError as e:
        if "depth" in str(e):
            raise BadRequest(_TOO_DEEP) from None
        raise BadRequest(f"request body is not valid JSON: {e}") from None


def json_body(request: Request) -> Any:
    """The request body as JSON, for types whose body Argo embeds as raw JSON.

    :class:`BadRequest` when it is empty, not valid JSON, or nested deeper than
    :data:`MAX_BODY_DEPTH` (Argo cannot marshal such an event either: 400).
    """
    if not request.body or request.body.isspace():
        raise BadRequest("request body is empty; a JSON payload is expected")
    try:
        return _parse_json(request.body)
    except orjson.JSONDecodeError as e:
        if "depth" in str(e):
            raise BadRequest(_TOO_DEEP) from None
        raise BadRequest(f"request body is not valid JSON: {e}") from None


def provider_data(request: Request, route: Route, body: Any) -> dict[str, Any]:
    """The event data of the Git hosting types (Argo's ``GithubEventData``,
    ``GitLabEventData``, ``BitbucketEventData``, ``BitbucketServerEventData``):
    ``{"headers": {...}, "body": ..., "metadata": {...}}``, ``metadata`` left out when
    empty (Go's ``omitempty``)."""
    data: dict[str, Any] = {"headers": request.headers, "body": body}
    if route.metadata:
        data["metadata"] = dict(route.metadata)
    return data


def json_provider_data(request: Request, route: Route) -> Any:
    """:func:`provider_data` of the JSON body: the shaper of ``gitlab``, ``bitbucket``
    and ``bitbucketserver``."""
    return provider_data(request, route, json_body(request))


class WebhookApp:
    """The ASGI app of one webhook port: its routes, ``/health``, and the publish.

    Requests on different routes (and on the same one) are handled concurrently: no
    lock, every request awaits its own PubAck, and the bus client pipelines them on
    one connection.
    """

    __slots__ = (
        "_clock",
        "_dispatch",
        "_in_flight",
        "_last_warning",
        "_max_in_flight",
        "_routes",
        "_suppressed_warnings",
        "port",
    )

    def __init__(
        self,
        port: int,
        routes: Mapping[str, Route],
        dispatch: Dispatch,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self._routes: dict[str, Route] = dict(routes)
        self._dispatch = dispatch
        self._clock = clock
        """Seconds, monotonic; only the rate limit of the 503 warning reads it."""
        self._last_warning = -math.inf  # the first 503 is always logged
        self._suppressed_warnings = 0
        self._max_in_flight = max_in_flight
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Requests on an event route being read, published or answered right now."""
        return self._in_flight

    @property
    def routes(self) -> Mapping[str, Route]:
        """The routes of this port by endpoint path."""
        return self._routes

    @property
    def routes_by_event(self) -> dict[str, Route]:
        """The routes of this port by event name."""
        return {r.event_name: r for r in self._routes.values()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await _lifespan(receive, send)
            return
        status = 0

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._http(scope, receive, counted)
        finally:
            if status:
                self._dispatch.metrics.http_request(self._dispatch.source_name, status)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A rejection that leaves a request body unread closes the connection (as Go's
        # server does): a client waiting on ``Expect: 100-continue`` never sends the
        # body, and its next request must not be read as that body.
        route = self._routes.get(scope["path"])
        if route is None:
            # A user's own ``/health`` endpoint wins, as in Argo's router.
            if scope["path"] == HEALTH_PATH:
                await _send(send, _HEALTH_OK)
            else:
                closing = _declares_body(scope["headers"])
                await _send(send, _NOT_FOUND_CLOSE if closing else _NOT_FOUND)
            return
        if scope["method"] != route.method:
            closing = _declares_body(scope["headers"])
            await _send(
                send, route.method_not_allowed_close if closing else route.method_not_allowed
            )
            return
        if self._in_flight >= self._max_in_flight:
            # Refused before its body is read: memory stays bounded under overload.
            closing = _declares_body(scope["headers"])
            await _send(send, _OVERLOADED_CLOSE if closing else _OVERLOADED)
            return
        self._in_flight += 1
        try:
            await self._accept(route, scope, receive, send)
        except _Disconnected:
            return
        except Exception:
            # Publish failures are handled (and logged with their event id) in _accept;
            # this is a failure before any event existed.
            self._dispatch.log.exception(
                "webhook %s/%s: unexpected error before an event was built, answered 500",
                self._dispatch.source_name,
                route.event_name,
            )
            # If the response had already started there is nothing more to say.
            with contextlib.suppress(Exception):
                await _send(send, _INTERNAL)
        finally:
            self._in_flight -= 1

    async def _accept(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        """Check, read, publish and answer one request."""
        header: dict[str, list[str]] = {}
        content_type = b""
        content_length = b""
        authorization: bytes | None = None
        idem_key: bytes | None = None
        request_id: bytes | None = None
        encoding = b""
        chunked = False
        for raw_name, raw_value in scope["headers"]:
            name, kind = _header_info(raw_name)
            if kind:
                if kind == _AUTH:
                    if authorization is None:
                        authorization = raw_value
                    header[name] = [MASKED_AUTHORIZATION]
                    continue
                if kind == _DROP:
                    continue
                if kind == _TE:
                    chunked = True
                    continue
                if kind == _CTYPE:
                    content_type = content_type or raw_value
                elif kind == _CLEN:
                    content_length = raw_value
                elif kind == _IDEM_KEY:
                    idem_key = idem_key or raw_value
                elif kind == _REQ_ID:
                    request_id = request_id or raw_value
                elif kind == _CENC:
                    encoding = encoding + b"," + raw_value if encoding else raw_value
            value = raw_value.decode("utf-8", "replace")
            values = header.get(name)
            if values is None:
                header[name] = [value]
            else:
                values.append(value)

        token = route.token
        if token is not None:
            closing = chunked or (bool(content_length) and content_length != b"0")
            if authorization is None or authorization[:7].lower() != b"bearer ":
                await _send(send, _BAD_AUTH_HEADER_CLOSE if closing else _BAD_AUTH_HEADER)
                return
            if not hmac.compare_digest(authorization[7:], token):
                await _send(send, _BAD_TOKEN_CLOSE if closing else _BAD_TOKEN)
                return

        method: str = scope["method"]
        raw_body = body = b""
        if method not in _BODYLESS_METHODS:
            limit = route.max_payload_bytes
            if content_length:
                try:
                    declared = int(content_length)
                except ValueError:
                    await _send(send, _response(400, b"invalid Content-Length"))
                    return
                if declared > limit:
                    await _send(send, _TOO_LARGE)
                    return
            try:
                raw_body = body = await _read_body(receive, limit)
                if encoding:
                    body = decode_content(encoding, raw_body, limit)
            except _TooLarge:
                await _send(send, _TOO_LARGE)
                return
            except _UnsupportedEncoding:
                await _send(send, _UNSUPPORTED_ENCODING)
                return
            except BadRequest as e:
                await _send(send, _response(400, str(e).encode()))
                return

        dispatch = self._dispatch
        request = Request(
            method=method,
            path=route.endpoint,
            query=scope["query_string"],
            headers=header,
            content_type=content_type,
            raw_body=raw_body,
            body=body,
            authorization=authorization,
        )
        if route.verifier is not None:
            rejection = await route.verifier(request)
            if rejection is not None:
                self._warn(
                    route,
                    f"request rejected ({rejection.status}), not published: {rejection.reason}",
                )
                await _send(send, _response(rejection.status, rejection.reason.encode()))
                return
        if route.responder is not None:
            reply = await route.responder(request)
            if reply is not None:
                await _send(send, reply.messages())
                return
        try:
            data = route.shaper(request, route)
        except BadRequest as e:
            await _send(send, _response(400, str(e).encode()))
            return
        except Skip as e:
            await self._filtered(route, str(e), send)
            return

        if route.filter is not None:
            passed, reason = route.filter.check(data)
            if not passed:
                await self._filtered(route, f"{route.filter.expression.source!r}: {reason}", send)
                return
        key = idem_key or request_id
        if key:
            event_id = event_id_from(
                dispatch.source_name, route.event_name, key.decode("utf-8", "replace")
            )
        else:
            event_id = new_event_id()
        event = dispatch.make_event(route.event_name, data, event_id)
        incoming = header.get("Traceparent")
        try:
            with tracing.span(
                f"webhook {route.event_name}",
                parent=incoming[0] if incoming else "",
                kind="server",
                attributes={"triggerfish.event_id": event_id},
            ) as sp:
                event.traceparent = sp.traceparent
                await dispatch.publish(event)
        except TransientError as e:
            dispatch.metrics.event_send_failed(dispatch.source_name, route.event_name)
            self._warn_unavailable(route, event_id, e)
            await _send(send, _UNAVAILABLE)
            return
        except Exception:
            dispatch.metrics.event_send_failed(dispatch.source_name, route.event_name)
            dispatch.log.exception(
                "webhook %s/%s: publishing event %s failed unexpectedly, answered 500",
                dispatch.source_name,
                route.event_name,
                event_id,
            )
            await _send(send, _INTERNAL)
            return
        dispatch.metrics.event_sent(dispatch.source_name, route.event_name)
        await _send(send, _OK)
        return

    async def _filtered(self, route: Route, reason: str, send: Send) -> None:
        """Answer 200 ``filtered``: the request was fine, but it is not published."""
        dispatch = self._dispatch
        dispatch.metrics.event_filtered(dispatch.source_name, route.event_name)
        dispatch.log.debug(
            "webhook %s/%s: request filtered out, not published (%s)",
            dispatch.source_name,
            route.event_name,
            reason,
        )
        await _send(send, _FILTERED)

    def _warn_unavailable(self, route: Route, event_id: str, err: Exception) -> None:
        """Log a 503 with its event id (rate limited: an outage is loud enough)."""
        self._warn(route, f"event {event_id} not recorded, answered 503: {err}")

    def _warn(self, route: Route, message: str) -> None:
        """Log a warning about ``route``, at most once a second; the lines skipped in
        between are counted in the next one (a flood of bad requests is one line/s)."""
        now = self._clock()
        if now - self._last_warning < 1.0:
            self._suppressed_warnings += 1
            return
        more = f" ({self._suppressed_warnings} more since the last line)"
        self._dispatch.log.warning(
            "webhook %s/%s: %s%s",
            self._dispatch.source_name,
            route.event_name,
            message,
            more if self._suppressed_warnings else "",
        )
        self._last_warning = now
        self._suppressed_warnings = 0


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; :class:`_TooLarge` as soon as it passes ``limit`` bytes."""
    message = await receive()
    if message["type"] != "http.request":
        raise _Disconnected
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise _TooLarge
    if not message.get("more_body", False):
        return body
    parts = [body]
    total = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer the lifespan protocol (servers that send it); nothing to set up."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
