"""Webhook event source (``spec.webhook``), and the base of every webhook-served type.

The runtime builds one :class:`WebhookSource` per EventSource with a ``webhook``
section and runs it; the per-request work lives in :mod:`eventsources.webhook_http`
(a raw ASGI app per port), this module owns the config model, cross-event validation,
secrets, and the uvicorn servers' lifecycle.

Other source types that receive HTTP requests (``github``, ``gitlab``, ``bitbucket``,
``bitbucketserver``, ``slack``, ``stripe``, ``sns``) subclass :class:`WebhookServedSource`
instead of copying any of this: each event of theirs holds Argo's ``webhook``
(:class:`WebhookContext`), and the subclass only adds what is its own:

* :meth:`WebhookServedSource.route_hooks`: the per-route ``verifier`` (signature or
  token check, 401/403 with nothing published), ``responder`` (direct answers such as a
  challenge) and ``shaper`` (Argo's event data shape for the type), see
  :mod:`eventsources.webhook_http`;
* :meth:`WebhookServedSource.check_event`: validation lines of its own fields;
* :meth:`WebhookServedSource.register_hooks` / :meth:`WebhookServedSource.unregister_hooks`:
  registering the endpoint with the provider once the servers listen, and removing it
  on shutdown (``deleteHookOnFinish``).

Everything else (ports, endpoints, methods, ``authSecret``, limits, TLS,
``filter.expression``, 200 only after the PubAck, 503 + ``Retry-After`` when the bus is
down, graceful shutdown) is the webhook source's, unchanged.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import uvicorn
from pydantic import Field, field_validator

from app.adapters.httpserver import QuietServer, guarded_protocol
from app.kernel.argo import SecretKeySelector
from app.kernel.errors import ConfigError, ListenError, TransientError, TriggerfishError
from app.kernel.spec import SpecModel
from app.languages.source_filter import SourceFilter, event_source_filter
from eventsources.base import EventSourcePlugin, SourceContext
from eventsources.common import EventSourceFilter
from eventsources.hookapi import ManagedHooks
from eventsources.webhook_http import (
    Dispatch,
    Responder,
    Route,
    Shaper,
    Verifier,
    WebhookApp,
    webhook_data,
)

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


class WebhookContext(SpecModel):
    """Argo's ``WebhookContext``: where and how one event's HTTP endpoint is served.

    The whole of a ``webhook`` event, and the ``webhook`` field of every other
    webhook-served type (``spec.github.<event>.webhook``).
    """

    endpoint: str
    method: str = "POST"
    port: str
    url: str = ""
    server_cert_secret: SecretKeySelector | None = None
    server_key_secret: SecretKeySelector | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    auth_secret: SecretKeySelector | None = None
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_BYTES

    @field_validator("endpoint")
    @classmethod
    def _endpoint_starts_with_slash(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("endpoint must start with '/'")
        return v

    @field_validator("port")
    @classmethod
    def _port_is_number(cls, v: str) -> str:
        if not v.isdigit() or not 0 < int(v) < 65536:
            raise ValueError(f"port must be a number between 1 and 65535, got {v!r}")
        return v

    @field_validator("method")
    @classmethod
    def _method_upper(cls, v: str) -> str:
        v = v.upper()
        if v not in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}:
            raise ValueError(f"unsupported HTTP method {v!r}")
        return v

    @field_validator("max_payload_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("maxPayloadSize must be positive")
        return v


class WebhookConfig(WebhookContext):
    """One webhook event (Argo ``WebhookEventSource``: ``WebhookContext`` + ``filter``)."""

    filter: EventSourceFilter | None = None


def _compile_filter(spec: EventSourceFilter | None) -> SourceFilter | None:
    """The event's compiled ``filter.expression``; ``ValueError`` when it is invalid."""
    return None if spec is None else event_source_filter(spec.expression)


@dataclass(frozen=True)
class RouteHooks:
    """What a webhook-served type adds to one event's route (:mod:`eventsources.webhook_http`)."""

    verifier: Verifier | None = None
    responder: Responder | None = None
    shaper: Shaper = webhook_data
    metadata: Mapping[str, str] | None = None
    """The ``metadata`` the shaper copies into the event; ``None``: the ``webhook``'s own."""


ConfigT = TypeVar("ConfigT", bound=SpecModel)


class WebhookServedSource(EventSourcePlugin[ConfigT]):
    """Serves the events of one EventSource over the webhook HTTP contract.

    The base of :class:`WebhookSource` and of every type whose events hold Argo's
    ``webhook`` (a :class:`WebhookContext`). A subclass sets ``type_name``,
    ``config_model`` and ``context_field`` (the config's attribute holding the
    :class:`WebhookContext`; ``""`` when the config is one), and overrides what is its
    own: :meth:`route_hooks` (where it may also add :class:`~eventsources.hookapi.HookTarget`
    entries to :attr:`managed_hooks`, which the default :meth:`register_hooks` /
    :meth:`unregister_hooks` keep with the provider) and :meth:`check_event`. The
    event's ``filter`` (an attribute named ``filter``, Argo's place for it on every
    type) is compiled and applied to the shaped data; its ``metadata`` is what
    :class:`RouteHooks` names.

    Ack/failure semantics are the webhook source's: 200 only after the PubAck, 503 +
    ``Retry-After`` when the bus is down, a verifier's 401/403 with nothing published.
    Hook registration runs once every port listens (providers send a ping right
    away); failures are logged and retried every ``registration_retry_seconds`` (at
    most ``registration_attempts`` times), the endpoint keeps serving meanwhile (a hook
    may also be made by hand). Unregistration runs on shutdown, bounded by
    ``unregistration_timeout_seconds``; failures are logged.
    """

    context_field: ClassVar[str] = "webhook"
    """The config attribute holding the event's :class:`WebhookContext` (``""``: the config)."""
    registration_retry_seconds: ClassVar[float] = 60.0
    registration_attempts: ClassVar[int] = 10
    unregistration_timeout_seconds: ClassVar[float] = 10.0

    shutdown_grace_seconds: ClassVar[float] = 5.0
    """How long in-flight requests may take to finish when the source is stopped."""
    listen_backlog: ClassVar[int] = 2048
    """Pending-connection queue of each listening socket."""

    def __init__(
        self,
        source_name: str,
        namespace: str,
        events: Mapping[str, ConfigT],
        ctx: SourceContext,
    ) -> None:
        super().__init__(source_name, namespace, events, ctx)
        self._apps: dict[int, WebhookApp] | None = None
        self._tls: dict[int, ssl.SSLContext] = {}
        self._servers: list[QuietServer] = []
        self.managed_hooks = ManagedHooks(ctx.log)
        """Provider hooks to keep (:mod:`eventsources.hookapi`); subclasses add targets."""
        self._hooks_touched = False
        """Whether :meth:`register_hooks` ran (so shutdown undoes what it made)."""

    # -- what a subclass says ------------------------------------------------------------
    @classmethod
    def webhook_context(cls, cfg: ConfigT) -> WebhookContext:
        """The event's :class:`WebhookContext`."""
        context = getattr(cfg, cls.context_field) if cls.context_field else cfg
        if not isinstance(context, WebhookContext):
            raise TypeError(f"{cls.__name__}: {cls.context_field!r} is not a WebhookContext")
        return context

    @classmethod
    def context_path(cls, event_name: str) -> str:
        """The manifest path of the event's :class:`WebhookContext`, for messages."""
        base = f"spec.{cls.type_name}.{event_name}"
        return f"{base}.{cls.context_field}" if cls.context_field else base

    @classmethod
    def check_event(cls, event_name: str, cfg: ConfigT) -> list[str]:
        """The type's own validation lines (``path: message``) for one event."""
        return []

    async def route_hooks(self, event_name: str, cfg: ConfigT) -> RouteHooks:
        """The verifier, responder and shaper of the event's route (secrets read here)."""
        return RouteHooks()

    async def register_hooks(self) -> bool:
        """Register the endpoints with the provider; ``True`` when nothing is left to do.

        Called once every port listens, and again after ``registration_retry_seconds``
        while it returns ``False`` or raises. Must be idempotent (reuse an existing
        hook). The default registers the targets added to :attr:`managed_hooks`."""
        return await self.managed_hooks.register()

    async def unregister_hooks(self) -> None:
        """Remove what :meth:`register_hooks` made (``deleteHookOnFinish``), on shutdown."""
        await self.managed_hooks.unregister()

    async def read_secret(self, selector: SecretKeySelector, path: str) -> str:
        """A secret's value with one trailing newline dropped (as Argo does); a
        :class:`ConfigError` naming ``path`` when it is missing or empty. (The secret
        resolver registers every value it reads, stripped too, for redaction from
        every log line.)"""
        secret = await self._secret(selector, path)
        if secret.endswith("\n"):
            secret = secret[:-1]
        if not secret:
            raise ConfigError("the secret's value is empty", path)
        return secret

    # -- validation -------------------------------------------------------------------
    @classmethod
    def check_config(cls, source_name: str, events: Mapping[str, ConfigT]) -> list[str]:
        """Cross-event checks (one event per port+endpoint, TLS agreed per port), every
        ``filter.expression`` compiled, and the type's own :meth:`check_event` lines,
        so a bad manifest fails validation with its path."""
        lines: list[str] = []
        taken: dict[tuple[str, str], str] = {}
        tls_by_port: dict[str, tuple[str, bool]] = {}
        for name, event in events.items():
            cfg = cls.webhook_context(event)
            path = cls.context_path(name)
            key = (cfg.port, cfg.endpoint)
            if key in taken:
                lines.append(
                    f"{path}.endpoint: endpoint {cfg.endpoint} on port {cfg.port} is already "
                    f"used by event {taken[key]!r}"
                )
            else:
                taken[key] = name
            try:
                _compile_filter(getattr(event, "filter", None))
            except ValueError as e:
                lines.append(f"spec.{cls.type_name}.{name}.filter.expression: {e}")
            has_cert = cfg.server_cert_secret is not None
            has_key = cfg.server_key_secret is not None
            if has_cert != has_key:
                lines.append(f"{path}: serverCertSecret and serverKeySecret must be set together")
            first = tls_by_port.setdefault(cfg.port, (name, has_cert and has_key))
            if first[1] != (has_cert and has_key):
                lines.append(
                    f"{path}: port {cfg.port} is served with TLS by one event and without "
                    f"by another ({first[0]!r}); use one setting per port"
                )
            lines += cls.check_event(name, event)
        return lines

    # -- start ------------------------------------------------------------------------
    async def prepare(self) -> dict[int, WebhookApp]:
        """Validate, read the secrets once, and build the ASGI app of every port.

        Idempotent; :meth:`run` calls it. Raises :class:`ConfigError` for an invalid
        configuration (the ``path: message`` lines of :meth:`check_config`).
        """
        if self._apps is not None:
            return self._apps
        problems = self.check_config(self.source_name, self.events)
        if problems:
            raise ConfigError("; ".join(problems))
        dispatch = Dispatch(
            source_name=self.source_name,
            publish=self.ctx.publish,
            make_event=self.make_event,
            metrics=self.ctx.metrics,
            log=self.ctx.log,
        )
        by_port: dict[int, dict[str, Route]] = {}
        for name, event in self.events.items():
            cfg = self.webhook_context(event)
            path = self.context_path(name)
            token: bytes | None = None
            if cfg.auth_secret is not None:
                token = (await self.read_secret(cfg.auth_secret, f"{path}.authSecret")).encode()
            hooks = await self.route_hooks(name, event)
            port = int(cfg.port)
            by_port.setdefault(port, {})[cfg.endpoint] = Route(
                event_name=name,
                endpoint=cfg.endpoint,
                method=cfg.method,
                max_payload_bytes=cfg.max_payload_size,
                metadata=dict(cfg.metadata if hooks.metadata is None else hooks.metadata),
                token=token,
                filter=_compile_filter(getattr(event, "filter", None)),
                verifier=hooks.verifier,
                responder=hooks.responder,
                shaper=hooks.shaper,
            )
            if cfg.server_cert_secret and cfg.server_key_secret and port not in self._tls:
                self._tls[port] = await self._tls_context(
                    cfg.server_cert_secret, cfg.server_key_secret, path
                )
        limit = self.ctx.http.max_in_flight_requests
        self._apps = {
            port: WebhookApp(port, routes, dispatch, max_in_flight=limit)
            for port, routes in by_port.items()
        }
        return self._apps

    async def _secret(self, selector: SecretKeySelector, path: str) -> str:
        try:
            return await self.ctx.secrets.get(self.namespace, selector.name, selector.key)
        except TriggerfishError:
            raise
        except Exception as e:
            raise ConfigError(
                f"cannot read key {selector.key!r} of secret {selector.name!r}: {e}", path
            ) from e

    async def _tls_context(
        self, cert: SecretKeySelector, key: SecretKeySelector, path: str
    ) -> ssl.SSLContext:
        """An SSL server context from PEM secrets (the files exist only while loading)."""
        cert_pem = await self._secret(cert, f"{path}.serverCertSecret")
        key_pem = await self._secret(key, f"{path}.serverKeySecret")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory(prefix="triggerfish-tls-") as tmp:
            cert_file = os.path.join(tmp, "tls.crt")
            key_file = os.path.join(tmp, "tls.key")
            for file, pem in ((cert_file, cert_pem), (key_file, key_pem)):
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(pem)
            try:
                context.load_cert_chain(cert_file, key_file)
            except (ssl.SSLError, OSError) as e:
                raise ConfigError(f"invalid TLS certificate or key: {e.strerror or e}", path) from e
        return context

    # -- serve ------------------------------------------------------------------------
    def ready(self) -> bool:
        """True once every port's server is listening (and until it stops)."""
        return bool(self._servers) and all(s.started and not s.should_exit for s in self._servers)

    async def run(self) -> None:
        """Listen on every port and serve until cancelled, then shut down cleanly.

        On cancellation the listeners close at once, in-flight requests get
        ``shutdown_grace_seconds`` to finish (their publishes complete and are answered),
        and keep-alive connections are closed. A port that cannot be bound raises
        :class:`ListenError` (the runtime retries it with backoff); a bad config raises
        :class:`ConfigError`.
        """
        apps = await self.prepare()
        servers: list[QuietServer] = []
        tasks: list[asyncio.Task[None]] = []
        sockets: list[socket.socket] = []
        hooks: asyncio.Task[None] | None = None
        try:
            for port, app in apps.items():
                sock = self._listen(port)
                sockets.append(sock)
                # ``loop`` only matters to ``uvicorn.run``: serve() runs on the process's
                # loop, which the CLI should make uvloop (~10% more requests/s).
                config = uvicorn.Config(
                    app,
                    loop="uvloop",
                    http=guarded_protocol(self.ctx.http),
                    timeout_keep_alive=self.ctx.http.keep_alive_timeout_seconds,
                    ws="none",
                    lifespan="off",
                    interface="asgi3",
                    access_log=False,
                    log_config=None,
                    proxy_headers=False,
                    server_header=False,
                    backlog=self.listen_backlog,
                    timeout_graceful_shutdown=int(self.shutdown_grace_seconds),
                )
                config.load()
                config.ssl = self._tls.get(port)
                server = QuietServer(
                    config, handshake_timeout_seconds=self.ctx.http.header_timeout_seconds
                )
                servers.append(server)
                tasks.append(
                    asyncio.create_task(
                        server.serve(sockets=[sock]), name=f"webhook:{self.source_name}:{port}"
                    )
                )
            self._servers = servers
            listening = [
                f"{self.ctx.bind_host}:{port} ({', '.join(app.routes_by_event)})"
                for port, app in apps.items()
            ]
            self.ctx.log.info(
                "%s source %s listening on %s",
                self.type_name,
                self.source_name,
                ", ".join(listening),
            )
            hooks = asyncio.create_task(
                self._manage_hooks(servers), name=f"hooks:{self.source_name}"
            )
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
            raise TransientError(f"webhook source {self.source_name}: a server stopped")
        finally:
            try:
                if hooks is not None:
                    hooks.cancel()
                    await asyncio.wait([hooks])
                    if self._hooks_touched:
                        await self._unregister()
            finally:
                for server in servers:
                    server.should_exit = True
            try:
                if tasks:
                    await asyncio.wait(tasks, timeout=self.shutdown_grace_seconds + 1)
            finally:  # even when cancelled again while waiting: leave nothing running
                for t in tasks:
                    t.cancel()
                for sock in sockets:
                    sock.close()
                self._servers = []

    async def _manage_hooks(self, servers: list[QuietServer]) -> None:
        """Once every server listens, register the hooks, retrying while it fails."""
        while not all(s.started for s in servers):
            if any(s.should_exit for s in servers):
                return
            await asyncio.sleep(0.01)
        for attempt in range(1, self.registration_attempts + 1):
            self._hooks_touched = True
            try:
                if await self.register_hooks():
                    return
            except ConfigError as e:
                self.ctx.log.error("%s source %s: %s", self.type_name, self.source_name, e)
                return
            except Exception as e:  # a provider outage must not stop the endpoint
                self.ctx.log.warning(
                    "%s source %s: registering hooks failed (attempt %d of %d): %s",
                    self.type_name,
                    self.source_name,
                    attempt,
                    self.registration_attempts,
                    e,
                )
            if attempt < self.registration_attempts:
                await asyncio.sleep(self.registration_retry_seconds)
        self.ctx.log.error(
            "%s source %s: gave up registering hooks after %d attempts; create them by hand",
            self.type_name,
            self.source_name,
            self.registration_attempts,
        )

    async def _unregister(self) -> None:
        """:meth:`unregister_hooks`, bounded in time; failures are logged, not raised."""
        try:
            async with asyncio.timeout(self.unregistration_timeout_seconds):
                await self.unregister_hooks()
        except Exception as e:
            self.ctx.log.warning(
                "%s source %s: removing hooks failed: %s", self.type_name, self.source_name, e
            )

    def _listen(self, port: int) -> socket.socket:
        """A bound, non-blocking listening socket on ``ctx.bind_host``:``port``."""
        host = self.ctx.bind_host
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as e:
            raise ListenError(f"cannot listen on {host}:{port}: {e}") from e
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise ListenError(f"cannot listen on {host}:{port}: {e}") from e
        return sock


class WebhookSource(WebhookServedSource[WebhookConfig]):
    """Serves every webhook event of one EventSource, one HTTP server per port.

    Fields of each event (``spec.webhook.<eventName>``, Argo's ``WebhookContext``):

    * ``port`` (string, required): the port to listen on; events sharing a port share
      one server, each on its own ``endpoint``.
    * ``endpoint`` (required, starts with ``/``): the exact request path.
    * ``method`` (default ``POST``): the one accepted method; others get 405 + ``Allow``.
    * ``authSecret``: Secret key holding a bearer token; requests must send
      ``Authorization: Bearer <token>`` (else 401). Read once at start (one trailing
      newline dropped, as Argo does), compared in constant time.
    * ``maxPayloadSize`` (bytes, default 1 MiB): larger bodies get 413; for a
      ``gzip``/``deflate`` body (decoded here; other codings get 415) the limit applies
      to the decoded size.
    * ``metadata``: a string map copied into every event's data.
    * ``serverCertSecret`` / ``serverKeySecret``: PEM certificate and key; when both
      are set the port serves HTTPS (all events on that port must agree).
    * ``url``: informational (the externally visible URL), not used for serving.
    * ``filter.expression``: an expr-lang expression over the event data
      (``body.model == "resnet"``; see :func:`app.languages.source_filter.event_source_filter`),
      compiled at validation; a request for which it is not true is answered but not
      published.

    Event data is Argo's: ``{"header": {Canonical-Name: [values]}, "body": ...,
    "metadata": {...}}`` with ``Authorization`` masked; ``body`` is the posted JSON,
    or a map of lists for GET query strings and form posts.

    Ack/failure semantics: a request is answered 200 ``success`` only after
    ``ctx.publish`` returned (the bus holds the event). If the publish raises a
    :class:`~app.kernel.errors.TransientError` (bus down, no PubAck in time) the answer is
    503 with ``Retry-After`` and nothing was accepted; any other failure is 500. An
    ``Idempotency-Key`` (else ``X-Request-Id``) header makes the event id
    deterministic, so a client retry after a lost answer is deduplicated by the bus.
    A request dropped by ``filter`` is answered 200 ``filtered`` with
    ``X-Triggerfish-Filtered: true`` (the client did nothing wrong, and retrying would
    not change the outcome), counted as filtered, never as sent, and logged at debug
    level with the reason. Requests are processed concurrently; there is no ordering
    between them.
    ``GET /health`` answers 200 on every port.

    Limits (``ctx.http``, the ``TRIGGERFISH_HTTP__*`` settings): at most
    ``max_in_flight_requests`` event requests per port (more get 503 + ``Retry-After``
    before their body is read); request heads must arrive in time and fit
    (408 / 431), bodies must arrive in time (408); see :mod:`app.adapters.httpserver`.
    Hostile bodies get 400 with the reason (:func:`eventsources.webhook_http.parse_body`).
    """

    type_name: ClassVar[str] = "webhook"
    config_model: ClassVar[type[SpecModel]] = WebhookConfig
    context_field: ClassVar[str] = ""
