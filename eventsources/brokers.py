"""What the message-broker sources (nats, redis, redisStream, mqtt, amqp) share.

Why one module: every broker type has Argo's ``connectionBackoff``, ``tls``, basic
auth from Secrets, ``jsonBody``, ``metadata`` and ``filter``, and every one must turn a
payload into Argo's ``body``, drop filtered events, publish, count, and reconnect with a
bounded back-off when the broker goes away. Written once here, each type's module keeps
only its protocol: how to subscribe and how to acknowledge. No client library is
imported here; each type imports its own (one forbidden contract per library).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import enum
import random
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import orjson
from pydantic import Field, PlainValidator, WithJsonSchema, field_validator

from app.kernel.argo import SecretKeySelector, TLSConfig, duration_seconds
from app.kernel.errors import ConfigError, TransientError
from app.kernel.events import Event
from app.kernel.spec import SpecModel
from app.languages.source_filter import SourceFilter, event_source_filter
from eventsources.base import EventSourcePlugin, SourceContext

#: A reconnect never waits longer than this, whatever ``connectionBackoff`` says: a
#: broker that comes back is used again within this bound.
MAX_RECONNECT_WAIT_SECONDS = 30.0
#: Back-off while the bus refuses publishes (broker messages stay upstream meanwhile).
BUS_BACKOFF_MIN_SECONDS = 0.2
BUS_BACKOFF_MAX_SECONDS = 3.0


def _duration(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a Go duration string (e.g. '10s') or nanoseconds")
    duration_seconds(value)  # raises ValueError for what Go would reject
    return value


Duration = Annotated[
    int | str,
    PlainValidator(_duration),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}]}),
]


def _amount(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise ValueError("must be a number") from e


class Backoff(SpecModel):
    """Argo ``Backoff`` as ``connectionBackoff``: the first wait, its growth and jitter.

    ``steps`` is accepted; a source never gives up reconnecting (Argo stops after
    ``steps`` failed connects and the pod restarts), the wait is capped instead.
    """

    duration: Duration | None = None
    factor: float | None = None
    jitter: float | None = None
    steps: int = Field(0, ge=0)

    @field_validator("factor", "jitter", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        return None if v is None else _amount(v)


class BasicAuth(SpecModel):
    """Argo ``BasicAuth``: Secret keys holding the username and the password."""

    username: SecretKeySelector | None = None
    password: SecretKeySelector | None = None


class Retry:
    """Waits of a reconnect loop: ``connectionBackoff`` shaped, capped, reset on success."""

    def __init__(self, backoff: Backoff | None, default_first: float = 1.0) -> None:
        b = backoff or Backoff()
        self.first = duration_seconds(b.duration) if b.duration is not None else default_first
        self.first = min(max(self.first, 0.05), MAX_RECONNECT_WAIT_SECONDS)
        self.factor = max(b.factor if b.factor is not None else 2.0, 1.0)
        self.jitter = max(b.jitter if b.jitter is not None else 0.1, 0.0)
        self.current = self.first

    def reset(self) -> None:
        self.current = self.first

    async def wait(self) -> float:
        """Sleep the current wait (plus jitter) and grow the next one; returns the wait."""
        wait = min(self.current * (1 + random.uniform(0, self.jitter)), MAX_RECONNECT_WAIT_SECONDS)
        self.current = min(self.current * self.factor, MAX_RECONNECT_WAIT_SECONDS)
        await asyncio.sleep(wait)
        return wait


# -- secrets and TLS ----------------------------------------------------------------------
async def read_secret(
    ctx: SourceContext, namespace: str, selector: SecretKeySelector, path: str
) -> str:
    """One Secret key; errors name the field path, never the value."""
    try:
        return await ctx.secrets.get(namespace, selector.name, selector.key)
    except (ConfigError, TransientError):
        raise
    except Exception as e:
        raise ConfigError(
            f"cannot read key {selector.key!r} of secret {selector.name!r}: {type(e).__name__}",
            path=path,
        ) from e


async def ssl_context(
    tls: TLSConfig | None, ctx: SourceContext, namespace: str, path: str
) -> ssl.SSLContext | None:
    """An SSL context from Argo's ``TLSConfig``; None when TLS is not configured.

    As in Argo, TLS is on when any of its fields is set (``enabled: true`` alone means
    TLS with the system's CAs).
    """
    if tls is None or not (
        tls.enabled
        or tls.ca_cert_secret
        or tls.client_cert_secret
        or tls.client_key_secret
        or tls.insecure_skip_verify
    ):
        return None
    tls_path = f"{path}.tls"
    context = ssl.create_default_context()
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.ca_cert_secret is not None:
        ca_path = f"{tls_path}.caCertSecret"
        ca = await read_secret(ctx, namespace, tls.ca_cert_secret, ca_path)
        try:
            context.load_verify_locations(cadata=ca)
        except ssl.SSLError as e:
            raise ConfigError(f"not a PEM certificate: {e}", ca_path) from e
    if (tls.client_cert_secret is None) != (tls.client_key_secret is None):
        raise ConfigError("clientCertSecret and clientKeySecret go together", tls_path)
    if tls.client_cert_secret is not None and tls.client_key_secret is not None:
        cert = await read_secret(
            ctx, namespace, tls.client_cert_secret, f"{tls_path}.clientCertSecret"
        )
        key = await read_secret(
            ctx, namespace, tls.client_key_secret, f"{tls_path}.clientKeySecret"
        )
        # ssl loads client certificates from files only: write them where only we can read.
        with tempfile.TemporaryDirectory(prefix="triggerfish-tls-") as tmp:
            cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            key_path.touch(0o600)
            cert_path.write_text(cert)
            key_path.write_text(key)
            try:
                context.load_cert_chain(cert_path, key_path)
            except ssl.SSLError as e:
                raise ConfigError(f"unusable client certificate/key: {e}", tls_path) from e
    return context


class TLSFiles:
    """Argo's ``TLSConfig`` as PEM text and files, for clients that take no SSL context.

    The client certificate and key are written to a private temporary directory that
    lives as long as this object (the client reads them again on every reconnect).
    """

    def __init__(self) -> None:
        self.ca_data: str | None = None
        self.cert_file: str | None = None
        self.key_file: str | None = None
        self.insecure = False
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    async def load(
        cls, tls: TLSConfig | None, ctx: SourceContext, namespace: str, path: str
    ) -> TLSFiles | None:
        """The files for ``tls``; None when TLS is not configured. Checks them with
        :func:`ssl_context` first, so a bad certificate fails with the field's path."""
        if await ssl_context(tls, ctx, namespace, path) is None or tls is None:
            return None
        out = cls()
        out.insecure = tls.insecure_skip_verify
        tls_path = f"{path}.tls"
        if tls.ca_cert_secret is not None:
            out.ca_data = await read_secret(
                ctx, namespace, tls.ca_cert_secret, f"{tls_path}.caCertSecret"
            )
        if tls.client_cert_secret is not None and tls.client_key_secret is not None:
            cert = await read_secret(
                ctx, namespace, tls.client_cert_secret, f"{tls_path}.clientCertSecret"
            )
            key = await read_secret(
                ctx, namespace, tls.client_key_secret, f"{tls_path}.clientKeySecret"
            )
            out._dir = tempfile.TemporaryDirectory(prefix="triggerfish-tls-")
            cert_path, key_path = Path(out._dir.name) / "cert.pem", Path(out._dir.name) / "key.pem"
            key_path.touch(0o600)
            cert_path.write_text(cert)
            key_path.write_text(key)
            out.cert_file, out.key_file = str(cert_path), str(key_path)
        return out

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def redact_url(url: str) -> str:
    """``url`` (comma-separated URLs too) without passwords, for log lines."""
    out = []
    for one in url.split(","):
        scheme, sep, rest = one.strip().partition("://")
        if sep and "@" in rest.split("/", 1)[0]:
            rest = "***@" + rest.split("@", 1)[1]
        out.append(f"{scheme}{sep}{rest}")
    return ",".join(out)


# -- payloads -------------------------------------------------------------------------------
def go_string(payload: bytes) -> str:
    """A payload as Go's JSON encodes a ``string``: invalid UTF-8 becomes U+FFFD."""
    return payload.decode(errors="replace")


def text_or_base64(payload: bytes) -> str:
    """A payload as text; base64 when it is not UTF-8 (what Go's JSON does to ``[]byte``)."""
    try:
        return payload.decode()
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode()


def body_of(payload: bytes, json_body: bool) -> Any:
    """Argo's ``body``: the parsed JSON with ``jsonBody``, else the text.

    Raises ``ValueError`` for a payload that is not JSON under ``jsonBody`` (Argo fails to
    marshal such an event and drops it).
    """
    if json_body:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"body is not JSON ({e})") from e
    return text_or_base64(payload)


def compile_filter(expression: str | None) -> SourceFilter | None:
    """The compiled ``filter.expression``; ``ValueError`` when it is invalid."""
    return None if not expression else event_source_filter(expression)


def check_filters(type_key: str, events: dict[str, Any]) -> list[str]:
    """``check_config`` lines for every event's ``filter.expression`` that does not compile."""
    lines: list[str] = []
    for name, cfg in events.items():
        try:
            compile_filter(cfg.filter.expression if cfg.filter else None)
        except ValueError as e:
            lines.append(f"spec.{type_key}.{name}.filter.expression: {e}")
    return lines


# -- delivering one message -----------------------------------------------------------------
class Outcome(enum.Enum):
    """What became of one upstream message; the caller acknowledges accordingly."""

    SENT = "sent"  # stored on the bus: acknowledge upstream
    FILTERED = "filtered"  # consumed on purpose: acknowledge upstream, nothing published
    INVALID = "invalid"  # cannot become an event (bad JSON): consume it, counted as failed
    FAILED = "failed"  # the bus did not take it: leave it upstream, retry later


class Deliverer:
    """Filter, publish and count the messages of one event name (all broker types)."""

    def __init__(
        self, plugin: EventSourcePlugin[Any], event_name: str, expression: str | None
    ) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.event_name = event_name
        self.where = f"{plugin.type_name} {plugin.source_name}/{event_name}"
        try:
            self.filter = compile_filter(expression)
        except ValueError as e:
            raise ConfigError(
                str(e), path=f"spec.{plugin.type_name}.{event_name}.filter.expression"
            ) from e
        self.last_error = ""

    def invalid(self, what: str, reason: str) -> Outcome:
        """Count and log a message that cannot become an event."""
        self.ctx.metrics.event_send_failed(self.plugin.source_name, self.event_name)
        self.ctx.log.error("%s: %s dropped: %s", self.where, what, reason)
        return Outcome.INVALID

    async def deliver(
        self, data: dict[str, Any], event_id: str, what: str, traceparent: str = ""
    ) -> Outcome:
        """Publish ``data`` unless the filter drops it; returns what the caller should do.

        ``traceparent``: the W3C trace context the upstream message carried, continued
        by the publish."""
        source, name = self.plugin.source_name, self.event_name
        if self.filter is not None:
            passed, reason = self.filter.check(data)
            if not passed:
                self.ctx.metrics.event_filtered(source, name)
                self.ctx.log.debug(
                    "%s: %s filtered out (%r: %s)",
                    self.where,
                    what,
                    self.filter.expression.source,
                    reason,
                )
                return Outcome.FILTERED
        event: Event = self.plugin.make_event(name, data, event_id)
        event.traceparent = traceparent
        try:
            await self.ctx.publish(event)
        except TransientError as e:
            self.ctx.metrics.event_send_failed(source, name)
            self.last_error = str(e)
            return Outcome.FAILED
        except Exception as e:
            self.ctx.metrics.event_send_failed(source, name)
            self.ctx.log.exception("%s: %s: publish raised unexpectedly", self.where, what)
            self.last_error = f"{type(e).__name__}: {e}"
            return Outcome.FAILED
        self.ctx.metrics.event_sent(source, name)
        return Outcome.SENT


class BusBackoff:
    """The pause after a publish the bus refused, so an outage is not a busy loop."""

    def __init__(self) -> None:
        self.current = BUS_BACKOFF_MIN_SECONDS

    def reset(self) -> None:
        self.current = BUS_BACKOFF_MIN_SECONDS

    async def wait(self) -> None:
        await asyncio.sleep(self.current)
        self.current = min(self.current * 2, BUS_BACKOFF_MAX_SECONDS)


async def first_failure(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for every task; the first one that fails ends the wait with its exception."""
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                exc = None if t.cancelled() else t.exception()
                if exc is not None:
                    raise exc
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Worker(Protocol):
    """What a broker source runs per event name: a subscription, a consumer, a poller."""

    where: str
    live: bool
    """True while it is connected and receiving (the source's readiness)."""

    async def run(self) -> None: ...


ConfigT = TypeVar("ConfigT", bound=SpecModel)


class PerEventSource(EventSourcePlugin[ConfigT]):
    """A broker source: one :class:`Worker` per event name (made by :meth:`worker`), all
    run together; the first that fails for good stops the others. Ready once every
    worker is live; ``filter.expression`` checked at load."""

    def __init__(
        self,
        source_name: str,
        namespace: str,
        events: Mapping[str, ConfigT],
        ctx: SourceContext,
    ) -> None:
        super().__init__(source_name, namespace, events, ctx)
        self.workers: list[Worker] = [self.worker(n, c) for n, c in self.events.items()]

    @abc.abstractmethod
    def worker(self, event_name: str, cfg: ConfigT) -> Worker:
        """The worker serving ``event_name``."""

    @classmethod
    def check_config(cls, source_name: str, events: Mapping[str, ConfigT]) -> list[str]:
        return check_filters(cls.type_name, dict(events))

    async def run(self) -> None:
        await first_failure([asyncio.create_task(w.run(), name=w.where) for w in self.workers])

    def ready(self) -> bool:
        return bool(self.workers) and all(w.live for w in self.workers)
