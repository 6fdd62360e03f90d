"""AMQP 0-9-1 event source (``spec.amqp``): one event per message from a RabbitMQ queue.

Argo's ``AMQPEventSource``: declare the exchange and a queue, bind them with the routing
key, consume. Made at-least-once: a message is ``basic.ack``ed only after the bus's
PubAck; when the bus refuses it, the source pauses and ``basic.nack``s it with requeue,
so the broker delivers it again. A message that cannot become an event (not JSON under
``jsonBody``) is nacked without requeue: the queue's dead-letter exchange gets it, if it
has one. Messages in flight when the connection drops are requeued by the broker.

aio-pika is imported only here. Registered as ``amqp`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.exceptions
import yaml
from pydantic import Field, field_validator, model_validator

from app.kernel.argo import SecretKeySelector, TLSConfig
from app.kernel.errors import ConfigError, TransientError
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
    ssl_context,
)
from eventsources.common import EventSourceFilter

#: Unacked messages the broker may send ahead (basic.qos prefetch).
PREFETCH = 32
#: Heartbeat, as Argo's client sets it.
HEARTBEAT_SECONDS = 10

_CONNECTION_ERRORS = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    TimeoutError,
)
_EXCHANGE_TYPES = frozenset({"direct", "fanout", "topic", "headers"})


def _table(text: str) -> dict[str, Any] | None:
    """Argo's ``queueDeclare.arguments``: a YAML mapping, as text."""
    if not text.strip():
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"arguments is not YAML: {e}") from e
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("arguments must be a YAML mapping of names to values")
    return value


class AMQPExchangeDeclare(SpecModel):
    """Argo ``AMQPExchangeDeclareConfig`` (``noWait: true`` is rejected as not supported)."""

    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    no_wait: bool = False


class AMQPQueueDeclare(SpecModel):
    """Argo ``AMQPQueueDeclareConfig``; ``arguments`` is a YAML mapping in a string."""

    name: str = ""
    durable: bool = False
    auto_delete: bool = False
    exclusive: bool = False
    no_wait: bool = False
    arguments: str = ""

    @field_validator("arguments")
    @classmethod
    def _yaml_table(cls, v: str) -> str:
        _table(v)
        return v


class AMQPQueueBind(SpecModel):
    """Argo ``AMQPQueueBindConfig``."""

    no_wait: bool = False


class AMQPConsume(SpecModel):
    """Argo ``AMQPConsumeConfig`` (``autoAck`` accepted: acks always follow the PubAck)."""

    consumer_tag: str = ""
    auto_ack: bool = False
    exclusive: bool = False
    no_local: bool = False
    no_wait: bool = False


#: Argo's defaults for the sections a manifest leaves out (its ``setDefaults``).
DEFAULT_EXCHANGE_DECLARE = AMQPExchangeDeclare(durable=True)
DEFAULT_QUEUE_DECLARE = AMQPQueueDeclare(exclusive=True)


class AMQPConfig(SpecModel):
    """One AMQP event (Argo ``AMQPEventSource``)."""

    url: str = Field("", description="amqp://user:pass@host:5672/vhost (or urlSecret)")
    url_secret: SecretKeySelector | None = None
    exchange_name: str = Field(description="exchange to declare and bind the queue to")
    exchange_type: str = Field(description="direct, fanout, topic or headers")
    routing_key: str = Field(description="binding key of the queue")
    connection_backoff: Backoff | None = None
    json_body: bool = False
    tls: TLSConfig | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    exchange_declare: AMQPExchangeDeclare | None = None
    queue_declare: AMQPQueueDeclare | None = None
    queue_bind: AMQPQueueBind | None = None
    consume: AMQPConsume | None = None
    auth: BasicAuth | None = None
    filter: EventSourceFilter | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip()
        if v and urlsplit(v).scheme.lower() not in ("amqp", "amqps"):
            raise ValueError("url must be amqp://... or amqps://...")
        return v

    @field_validator("exchange_name", "routing_key")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("exchange_type")
    @classmethod
    def _exchange_type(cls, v: str) -> str:
        if v not in _EXCHANGE_TYPES and not v.startswith("x-"):
            raise ValueError(f"must be one of {', '.join(sorted(_EXCHANGE_TYPES))} (or x-...)")
        return v

    @model_validator(mode="after")
    def _one_url(self) -> AMQPConfig:
        if bool(self.url) == (self.url_secret is not None):
            raise ValueError("exactly one of url or urlSecret must be given")
        if self.auth is not None and (self.auth.username is None or self.auth.password is None):
            raise ValueError("auth needs both username and password")
        return self


def with_credentials(url: str, username: str, password: str) -> str:
    """``url`` with its user info replaced by ``username``/``password`` (quoted)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def go_time_string(value: dt.datetime | None) -> str:
    """A timestamp as Go's ``time.Time.String()`` prints it in UTC (Argo's ``timestamp``)."""
    if value is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


class _Consumer:
    """One event name: connection, channel, declarations and the consumer."""

    def __init__(self, plugin: AMQPSource, event_name: str, cfg: AMQPConfig) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.log = plugin.ctx.log
        self.cfg = cfg
        self.deliver = Deliverer(plugin, event_name, cfg.filter.expression if cfg.filter else None)
        self.where = self.deliver.where
        self.path = f"spec.amqp.{event_name}"
        self.live = False
        self._bus_backoff = BusBackoff()

    async def _connect(self) -> aio_pika.abc.AbstractConnection:
        cfg, ns = self.cfg, self.plugin.namespace
        url = cfg.url
        if cfg.url_secret is not None:
            url = (
                await read_secret(self.ctx, ns, cfg.url_secret, f"{self.path}.urlSecret")
            ).strip()
        options: dict[str, Any] = {"heartbeat": HEARTBEAT_SECONDS, "timeout": 10}
        if cfg.auth is not None and cfg.auth.username and cfg.auth.password:
            # As in Argo, auth wins over credentials in the URL (aio-pika reads them only
            # from the URL once one is given).
            url = with_credentials(
                url,
                await read_secret(self.ctx, ns, cfg.auth.username, self.path),
                await read_secret(self.ctx, ns, cfg.auth.password, self.path),
            )
        tls = await ssl_context(cfg.tls, self.ctx, ns, self.path)
        if tls is not None:
            options["ssl"] = True
            options["ssl_context"] = tls
        connection: aio_pika.abc.AbstractConnection = await aio_pika.connect(url, **options)
        return connection

    async def run(self) -> None:
        retry = Retry(self.cfg.connection_backoff)
        if self.cfg.consume is not None and self.cfg.consume.auto_ack:
            self.log.info(
                "%s: consume.autoAck is true; messages are still acked only after the bus "
                "stored them",
                self.where,
            )
        while True:
            try:
                connection = await self._connect()
            except TransientError as e:
                self.log.error("%s: %s; retrying", self.where, e)
                await retry.wait()
                continue
            except aio_pika.exceptions.ProbableAuthenticationError as e:
                raise ConfigError(f"the broker refused the credentials: {e}", self.path) from e
            except _CONNECTION_ERRORS as e:
                self.log.error(
                    "%s: cannot connect: %s; retrying in about %.1fs",
                    self.where,
                    e or type(e).__name__,
                    retry.current,
                )
                await retry.wait()
                continue
            try:
                await self._serve(connection, retry)
                self.log.warning("%s: the broker closed the channel; reconnecting", self.where)
            except aiormq.exceptions.ChannelClosed as e:
                # A declaration the broker refused (e.g. a queue declared differently
                # before): it will refuse it again, but the other side may change it.
                self.log.error("%s: the broker refused: %s; retrying", self.where, e)
            except _CONNECTION_ERRORS as e:
                self.log.warning(
                    "%s: connection lost (%s); reconnecting (unacked messages are requeued "
                    "by the broker)",
                    self.where,
                    e or type(e).__name__,
                )
            finally:
                self.live = False
                with contextlib.suppress(Exception):
                    await connection.close()
            await retry.wait()

    async def _serve(self, connection: aio_pika.abc.AbstractConnection, retry: Retry) -> None:
        cfg = self.cfg
        ex = cfg.exchange_declare or DEFAULT_EXCHANGE_DECLARE
        qd = cfg.queue_declare or DEFAULT_QUEUE_DECLARE
        consume = cfg.consume or AMQPConsume()
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        exchange = await channel.declare_exchange(
            cfg.exchange_name,
            cfg.exchange_type,
            durable=ex.durable,
            auto_delete=ex.auto_delete,
            internal=ex.internal,
        )
        queue = await channel.declare_queue(
            qd.name or None,
            durable=qd.durable,
            exclusive=qd.exclusive,
            auto_delete=qd.auto_delete,
            arguments=_table(qd.arguments),
        )
        await queue.bind(exchange, routing_key=cfg.routing_key)
        async with queue.iterator(
            no_ack=False,
            exclusive=consume.exclusive,
            consumer_tag=consume.consumer_tag or None,
        ) as messages:
            self.live = True
            retry.reset()
            self.log.info(
                "%s: consuming queue %s bound to %s with %r",
                self.where,
                queue.name,
                cfg.exchange_name,
                cfg.routing_key,
            )
            async for message in messages:
                await self._handle(message)

    def _data(self, m: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
        return {
            "contentType": m.content_type or "",
            "contentEncoding": m.content_encoding or "",
            "deliveryMode": int(m.delivery_mode or 0),
            "priority": int(m.priority or 0),
            "correlationId": m.correlation_id or "",
            "replyTo": m.reply_to or "",
            "expiration": _expiration(m.expiration),
            "messageId": m.message_id or "",
            "timestamp": go_time_string(m.timestamp),
            "type": m.type or "",
            "appId": m.app_id or "",
            "exchange": m.exchange or "",
            "routingKey": m.routing_key or "",
            "body": body_of(m.body, self.cfg.json_body),
            "metadata": dict(self.cfg.metadata),
        }

    async def _handle(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        what = f"message {message.message_id or message.delivery_tag}"
        try:
            data = self._data(message)
        except ValueError as e:
            self.deliver.invalid(what, f"{e}; rejected without requeue (dead-lettered if set)")
            await message.nack(requeue=False)
            return
        event_id = (
            event_id_from("amqp", self.cfg.exchange_name, message.message_id)
            if message.message_id
            else new_event_id()
        )
        trace = (message.headers or {}).get("traceparent")
        if isinstance(trace, bytes):
            trace = trace.decode(errors="replace")
        outcome = await self.deliver.deliver(data, event_id, what, str(trace or ""))
        if outcome is Outcome.FAILED:
            self.log.error(
                "%s: %s not stored on the bus (%s); requeued",
                self.where,
                what,
                self.deliver.last_error,
            )
            # Pause before handing it back, or the broker redelivers it at once.
            await self._bus_backoff.wait()
            await message.nack(requeue=True)
            return
        self._bus_backoff.reset()
        await message.ack()


def _expiration(value: Any) -> str:
    """Argo's ``expiration``: the property as sent, milliseconds in text (aio-pika decodes
    it to seconds); ``""`` when unset."""
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(round(value * 1000))
    return ""


class AMQPSource(PerEventSource[AMQPConfig]):
    """AMQP queues as events: ``spec.amqp.<eventName>``, one connection per event name.

    Fields (Argo's ``AMQPEventSource``): ``url`` or ``urlSecret``, ``exchangeName``,
    ``exchangeType``, ``routingKey``, ``exchangeDeclare`` (durable, autoDelete,
    internal), ``queueDeclare`` (name, durable, autoDelete, exclusive, arguments as a
    YAML mapping), ``queueBind``, ``consume`` (consumerTag, exclusive, autoAck),
    ``auth`` (username and password Secret keys), ``tls``, ``jsonBody``, ``metadata``,
    ``filter.expression``, ``connectionBackoff`` (the shape of the reconnect waits; the
    source never gives up). Argo's defaults apply to sections left out (a durable
    exchange; an exclusive, server-named queue). ``noWait: true`` and
    ``consume.noLocal: true`` are rejected as not supported.

    Event data (Argo's ``AMQPEventData``): ``contentType``, ``contentEncoding``,
    ``deliveryMode``, ``priority``, ``correlationId``, ``replyTo``, ``expiration``,
    ``messageId``, ``timestamp`` (Go's time format), ``type``, ``appId``,
    ``exchange``, ``routingKey``, ``body`` (parsed JSON with ``jsonBody``, else the text:
    Argo's is base64), ``metadata``.

    Acknowledgement: always manual, also with ``consume.autoAck: true`` (Argo then lets
    the broker forget a message on delivery): ``basic.ack`` after the PubAck;
    ``basic.nack`` with requeue after a pause when the bus refuses it; without requeue
    when the body cannot become an event. The event id derives from the message id when
    the publisher set one, so a redelivery is stored once. Note that Argo's default queue
    (exclusive, server-named) disappears with the connection: messages published while
    the source is disconnected reach no queue. Declare a named, durable queue for them.
    """

    type_name: ClassVar[str] = "amqp"
    config_model: ClassVar[type[SpecModel]] = AMQPConfig

    def worker(self, event_name: str, cfg: AMQPConfig) -> _Consumer:
        return _Consumer(self, event_name, cfg)
