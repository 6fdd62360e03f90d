"""NATS event source (``spec.nats``): one event per message on a subject of a NATS server.

Argo's ``NATSEventsSource`` on a core NATS subscription (optionally a queue group).
Core NATS has no acknowledgement: a message that arrives while the bus cannot store it
is counted as failed and lost, as it would be for any core NATS subscriber that is not
listening. For subjects kept in a JetStream stream on the upstream server, the
``jetStream`` field (beyond Argo) consumes them through a durable pull consumer instead
and acknowledges each message only after the bus's PubAck, so an outage of the bus or
of this source loses nothing.

This module and the bus adapter are the only importers of ``nats`` (nats-py): the
upstream server is a different server from the bus, with its own connection, options and
credentials, and the bus adapter's interface is about the bus, not about arbitrary
subjects. Registered as ``nats`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any, ClassVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from pydantic import Field, field_validator

from app.kernel.argo import SecretKeySelector, TLSConfig
from app.kernel.errors import TransientError
from app.kernel.events import event_id_from, new_event_id
from app.kernel.spec import SpecModel
from eventsources.brokers import (
    Backoff,
    BasicAuth,
    BusBackoff,
    Deliverer,
    Outcome,
    PerEventSource,
    Retry,
    body_of,
    read_secret,
    redact_url,
    ssl_context,
)
from eventsources.common import EventSourceFilter

#: Messages fetched per pull from a JetStream consumer, and how long one pull waits.
FETCH_BATCH = 10
FETCH_WAIT_SECONDS = 2.0
#: How long JetStream waits for our ack before redelivering (publishes take far less).
ACK_WAIT_SECONDS = 30.0

_NATSError = (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError)


class NATSAuth(SpecModel):
    """Argo ``NATSAuth``: one of basic, token, nkey or credential (Secret keys)."""

    basic: BasicAuth | None = None
    token: SecretKeySelector | None = None
    nkey: SecretKeySelector | None = None
    credential: SecretKeySelector | None = None


class NATSJetStream(SpecModel):
    """Beyond Argo: consume the subject from a JetStream stream, acking after the PubAck."""

    stream: str = Field("", description="stream holding the subject; found by subject if empty")
    durable: str = Field(
        "", description="durable consumer name; default triggerfish-<source>-<event>"
    )


class NATSConfig(SpecModel):
    """One NATS event (Argo ``NATSEventsSource``) plus ``jetStream``."""

    url: str = Field(description="NATS server URL (nats://host:port, comma-separated for more)")
    subject: str = Field(description="subject to subscribe to (wildcards allowed)")
    connection_backoff: Backoff | None = None
    json_body: bool = False
    tls: TLSConfig | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    auth: NATSAuth | None = None
    filter: EventSourceFilter | None = None
    queue: str | None = Field(None, description="queue group to subscribe in")
    jet_stream: NATSJetStream | None = None

    @field_validator("url", "subject")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        return v


def _durable_name(source: str, event: str) -> str:
    """A consumer name JetStream accepts (no ``.``, ``*``, ``>``, spaces)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"triggerfish-{source}-{event}")


class _Subscriber:
    """One event name: its connection to the upstream server and its subscription."""

    def __init__(self, plugin: NATSSource, event_name: str, cfg: NATSConfig) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.log = plugin.ctx.log
        self.event_name = event_name
        self.cfg = cfg
        self.deliver = Deliverer(plugin, event_name, cfg.filter.expression if cfg.filter else None)
        self.where = self.deliver.where
        self.path = f"spec.nats.{event_name}"
        self.live = False
        self.nc: Client | None = None

    async def _options(self) -> dict[str, Any]:
        cfg, ns, ctx = self.cfg, self.plugin.namespace, self.ctx
        opts: dict[str, Any] = {}
        tls = await ssl_context(cfg.tls, ctx, ns, self.path)
        if tls is not None:
            opts["tls"] = tls
        auth = cfg.auth
        if auth is not None:
            # The first one given wins, in Argo's order.
            if auth.basic is not None:
                if auth.basic.username is not None:
                    opts["user"] = await read_secret(
                        ctx, ns, auth.basic.username, f"{self.path}.auth.basic.username"
                    )
                if auth.basic.password is not None:
                    opts["password"] = await read_secret(
                        ctx, ns, auth.basic.password, f"{self.path}.auth.basic.password"
                    )
            elif auth.token is not None:
                opts["token"] = await read_secret(ctx, ns, auth.token, f"{self.path}.auth.token")
        return opts

    async def _connect(self) -> Client:
        retry = Retry(self.cfg.connection_backoff)
        servers = [u.strip() for u in self.cfg.url.split(",") if u.strip()]
        shown = redact_url(self.cfg.url)
        while True:
            try:
                opts = await self._options()
            except TransientError as e:
                self.log.error("%s: %s; retrying", self.where, e)
                await retry.wait()
                continue

            async def on_disconnect() -> None:
                self.log.warning("%s: disconnected from %s; reconnecting", self.where, shown)

            async def on_reconnect() -> None:
                self.log.info("%s: reconnected to %s", self.where, shown)

            last_error = ""

            async def on_error(e: Exception) -> None:
                # nats-py retries by itself (the first connect too): say each new
                # problem once, not once per attempt.
                nonlocal last_error
                text = str(e) or type(e).__name__
                if text != last_error:
                    self.log.warning("%s: %s: %s; retrying", self.where, shown, text)
                    last_error = text

            try:
                return await nats.connect(
                    servers=servers,
                    name=f"triggerfish {self.plugin.source_name}/{self.event_name}",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=min(retry.first, 2.0),
                    connect_timeout=5,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    error_cb=on_error,
                    **opts,
                )
            except _NATSError as e:
                wait = retry.current
                self.log.error(
                    "%s: cannot connect to %s: %s; retrying in about %.1fs",
                    self.where,
                    shown,
                    e or type(e).__name__,
                    wait,
                )
                await retry.wait()

    def _data(self, msg: Msg) -> dict[str, Any]:
        data: dict[str, Any] = {
            "subject": msg.subject,
            "body": body_of(msg.data, self.cfg.json_body),
        }
        if msg.headers:
            # Argo's header is Go's http.Header: every name maps to a list of values.
            data["header"] = {k: [v] for k, v in msg.headers.items()}
        data["metadata"] = dict(self.cfg.metadata)
        return data

    async def run(self) -> None:
        self.nc = await self._connect()
        try:
            if self.cfg.jet_stream is not None:
                await self._run_jetstream(self.nc, self.cfg.jet_stream)
            else:
                await self._run_core(self.nc)
        finally:
            with contextlib.suppress(Exception):
                await self.nc.close()

    # -- core NATS: no acknowledgement ------------------------------------------------------
    async def _run_core(self, nc: Client) -> None:
        async def handle(msg: Msg) -> None:
            try:
                data = self._data(msg)
            except ValueError as e:
                self.deliver.invalid(f"message on {msg.subject}", str(e))
                return
            outcome = await self.deliver.deliver(
                data, new_event_id(), f"message on {msg.subject}", _traceparent(msg)
            )
            if outcome is Outcome.FAILED:
                # Core NATS cannot redeliver: say so, once per message.
                self.log.error(
                    "%s: message on %s lost: the bus did not store it (%s); core NATS "
                    "has no redelivery (use jetStream for at-least-once)",
                    self.where,
                    msg.subject,
                    self.deliver.last_error,
                )

        sub = await nc.subscribe(self.cfg.subject, queue=self.cfg.queue or "", cb=handle)
        await nc.flush()
        self.live = True
        self.log.info("%s: subscribed to %s", self.where, self.cfg.subject)
        try:
            await asyncio.Event().wait()
        finally:
            self.live = False
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- JetStream: ack after the PubAck ----------------------------------------------------
    async def _run_jetstream(self, nc: Client, js_cfg: NATSJetStream) -> None:
        js = nc.jetstream()
        durable = (
            js_cfg.durable
            or self.cfg.queue
            or _durable_name(self.plugin.source_name, self.event_name)
        )
        retry = Retry(self.cfg.connection_backoff)
        while True:
            try:
                sub = await js.pull_subscribe(
                    self.cfg.subject,
                    durable=durable,
                    stream=js_cfg.stream or None,
                    config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_SECONDS),
                )
                break
            except nats.js.errors.NotFoundError as e:
                self.log.error(
                    "%s: no JetStream stream holds subject %s yet (%s); retrying",
                    self.where,
                    self.cfg.subject,
                    e,
                )
                await retry.wait()
            except _NATSError as e:
                self.log.error(
                    "%s: cannot create consumer %s: %r; retrying", self.where, durable, e
                )
                await retry.wait()
        self.live = True
        self.log.info("%s: consuming %s as durable %s", self.where, self.cfg.subject, durable)
        bus_backoff = BusBackoff()
        try:
            while True:
                try:
                    msgs = await sub.fetch(FETCH_BATCH, timeout=FETCH_WAIT_SECONDS)
                except TimeoutError:
                    continue
                except _NATSError as e:
                    self.log.warning("%s: fetch failed: %r; retrying", self.where, e)
                    await retry.wait()
                    continue
                retry.reset()
                failed = await self._handle_batch(msgs)
                if failed:
                    self.log.error(
                        "%s: %d message(s) not stored on the bus (%s); left in JetStream "
                        "for redelivery",
                        self.where,
                        failed,
                        self.deliver.last_error,
                    )
                    await bus_backoff.wait()
                else:
                    bus_backoff.reset()
        finally:
            self.live = False
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle_batch(self, msgs: list[Msg]) -> int:
        """Publish each message and ack it after the PubAck; returns how many failed."""
        failed = 0
        for msg in msgs:
            meta = msg.metadata
            what = f"message {meta.stream}/{meta.sequence.stream}"
            if failed:
                # Keep the order: once one failed, the rest of the batch waits too.
                await _quietly(msg.nak(delay=BusBackoff().current))
                failed += 1
                continue
            try:
                data = self._data(msg)
            except ValueError as e:
                self.deliver.invalid(what, str(e))
                await _quietly(msg.term())
                continue
            event_id = event_id_from("nats", meta.stream, str(meta.sequence.stream))
            outcome = await self.deliver.deliver(data, event_id, what, _traceparent(msg))
            if outcome is Outcome.FAILED:
                await _quietly(msg.nak(delay=BusBackoff().current))
                failed += 1
            else:
                await _quietly(msg.ack())
        return failed


def _traceparent(msg: Msg) -> str:
    """The W3C trace context a publisher put in the message's headers; "" when none."""
    return (msg.headers or {}).get("traceparent", "")


async def _quietly(call: Any) -> None:
    """An ack/nak whose loss only means a redelivery (deduplicated by the event id)."""
    with contextlib.suppress(*_NATSError):
        await call


class NATSSource(PerEventSource[NATSConfig]):
    """NATS subjects as events: ``spec.nats.<eventName>``, one subscription per event name.

    Fields (Argo's ``NATSEventsSource``): ``url``, ``subject``, ``queue`` (queue group),
    ``jsonBody``, ``metadata``, ``filter.expression``, ``tls`` (Argo's TLSConfig),
    ``auth.basic`` / ``auth.token`` (Secret keys), ``connectionBackoff`` (the shape of
    the reconnect waits; the source never gives up). ``auth.nkey`` and
    ``auth.credential`` are rejected as not supported yet. Beyond Argo: ``jetStream``
    (``stream``, ``durable``) for subjects kept in a JetStream stream.

    Event data (Argo's ``NATSEventData``): ``{"subject", "body", "header"?, "metadata"}``;
    ``header`` maps each header name to a list of values and is present only when the
    message has headers. ``body`` is the parsed JSON with ``jsonBody``, else the text
    (Argo: the bytes base64-encoded); a body that is not JSON under ``jsonBody`` is
    dropped and counted as failed, as in Argo.

    Acknowledgement: core NATS has none (a message the bus refuses is logged, counted and
    lost; the server may also drop messages for a subscriber that falls behind). With
    ``jetStream``, a message is acked only after the PubAck, naked on a bus failure (and
    the rest of its batch with it, so order holds) and redelivered; the event id is derived
    from (stream, sequence), so a redelivery is stored once. nats-py reconnects by itself
    when the server restarts, and resubscribes.
    """

    type_name: ClassVar[str] = "nats"
    config_model: ClassVar[type[SpecModel]] = NATSConfig

    def worker(self, event_name: str, cfg: NATSConfig) -> _Subscriber:
        return _Subscriber(self, event_name, cfg)
