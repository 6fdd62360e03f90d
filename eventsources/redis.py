"""Redis pub/sub event source (``spec.redis``): one event per message on Redis channels.

Argo's ``RedisEventSource``. Redis pub/sub has no acknowledgement and no redelivery: a
message published while this source is disconnected, or that the bus refuses, is lost
(counted as failed and logged). Use ``redisStream`` where losing a message matters. The
subscription is made again with a bounded back-off whenever the connection drops.

redis-py (``redis.asyncio``) is imported only here and in :mod:`eventsources.redis_stream`,
which shares :func:`redis_client`. Registered as ``redis`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from pydantic import Field, field_validator

from app.kernel.argo import SecretKeySelector, TLSConfig
from app.kernel.errors import ConfigError, TransientError
from app.kernel.events import new_event_id
from app.kernel.spec import SpecModel
from eventsources.base import SourceContext
from eventsources.brokers import (
    Deliverer,
    Outcome,
    PerEventSource,
    Retry,
    TLSFiles,
    go_string,
    read_secret,
)
from eventsources.common import EventSourceFilter

#: Errors after which the connection is made again (the server went away or restarted).
REDIS_CONNECTION_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    TimeoutError,
)


def split_host_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as Argo's Go client reads ``hostAddress``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"hostAddress must be host:port, got {value!r}")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"hostAddress must be host:port, got {value!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"port out of range in {value!r}")
    return host.strip("[]"), number


class RedisConnection(SpecModel):
    """The connection fields Argo's Redis and Redis Streams sources share."""

    host_address: str = Field(description="host:port of the Redis server")
    password: SecretKeySelector | None = None
    username: str = Field("", description="ACL user name")
    db: int = Field(0, ge=0)
    tls: TLSConfig | None = None

    @field_validator("host_address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        split_host_address(v.strip())
        return v.strip()


class RedisConfig(RedisConnection):
    """One Redis pub/sub event (Argo ``RedisEventSource``)."""

    namespace: str = Field(
        "", description="accepted as in Argo; the Secret is read from the EventSource's"
    )
    channels: list[str] = Field(description="channels to subscribe to")
    metadata: dict[str, str] = Field(default_factory=dict)
    filter: EventSourceFilter | None = None
    json_body: bool = False

    @field_validator("channels")
    @classmethod
    def _some_channels(cls, v: list[str]) -> list[str]:
        if not v or any(not c for c in v):
            raise ValueError("must list at least one channel, none empty")
        return v


async def redis_client(
    cfg: RedisConnection, ctx: SourceContext, namespace: str, path: str
) -> tuple[aioredis.Redis, TLSFiles | None]:
    """A client for ``cfg`` (not connected yet) and the TLS files it reads."""
    host, port = split_host_address(cfg.host_address)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "db": cfg.db,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
    }
    if cfg.username:
        options["username"] = cfg.username
    if cfg.password is not None:
        options["password"] = await read_secret(ctx, namespace, cfg.password, f"{path}.password")
    tls = await TLSFiles.load(cfg.tls, ctx, namespace, path)
    if tls is not None:
        options.update(
            ssl=True,
            ssl_ca_data=tls.ca_data,
            ssl_certfile=tls.cert_file,
            ssl_keyfile=tls.key_file,
            ssl_cert_reqs="none" if tls.insecure else "required",
            ssl_check_hostname=not tls.insecure,
        )
    return aioredis.Redis(**options), tls


class RedisWorker(abc.ABC):
    """One event name of a Redis source: connect, serve, reconnect with backoff.

    Subclasses set ``type_key`` (the manifest key, for field paths) and ``lost_note``
    (what a lost connection means for their messages) and implement :meth:`_serve`.
    Bad credentials stop the source (a :class:`ConfigError` naming the event);
    anything else is retried.
    """

    type_key: ClassVar[str]
    lost_note: ClassVar[str]

    def __init__(self, plugin: PerEventSource[Any], event_name: str, cfg: Any) -> None:
        self.plugin = plugin
        self.log = plugin.ctx.log
        self.cfg = cfg
        self.deliver = Deliverer(plugin, event_name, cfg.filter.expression if cfg.filter else None)
        self.where = self.deliver.where
        self.path = f"spec.{self.type_key}.{event_name}"
        self.live = False

    async def run(self) -> None:
        retry = Retry(None)
        while True:
            try:
                client, tls = await redis_client(
                    self.cfg, self.plugin.ctx, self.plugin.namespace, self.path
                )
            except TransientError as e:
                self.log.error("%s: %s; retrying", self.where, e)
                await retry.wait()
                continue
            try:
                await self._serve(client, retry)
            except redis.exceptions.AuthenticationError as e:
                raise ConfigError(f"Redis refused the credentials: {e}", self.path) from e
            except REDIS_CONNECTION_ERRORS as e:
                self.log.warning(
                    "%s: connection to %s lost (%s); %s",
                    self.where,
                    self.cfg.host_address,
                    e or type(e).__name__,
                    self.lost_note,
                )
            finally:
                self.live = False
                with contextlib.suppress(Exception):
                    await client.aclose()
                if tls is not None:
                    tls.close()
            await retry.wait()

    @abc.abstractmethod
    async def _serve(self, client: aioredis.Redis, retry: Retry) -> None:
        """Consume on ``client`` until the connection fails (raise) or cancelled."""


class _Channels(RedisWorker):
    """One event name: a pub/sub connection, made again when it drops."""

    type_key: ClassVar[str] = "redis"
    lost_note: ClassVar[str] = (
        "messages published meanwhile are lost (pub/sub has no redelivery); reconnecting"
    )

    async def _serve(self, client: aioredis.Redis, retry: Retry) -> None:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*self.cfg.channels)
            # The first reply confirms the subscription (Argo waits for it too).
            await pubsub.get_message(timeout=5)
            self.live = True
            retry.reset()
            self.log.info(
                "%s: subscribed to %s on %s",
                self.where,
                ", ".join(self.cfg.channels),
                self.cfg.host_address,
            )
            while True:
                message = await pubsub.get_message(timeout=5)
                if message is None or message.get("type") != "message":
                    continue
                await self._handle(message)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _handle(self, message: Mapping[str, Any]) -> None:
        channel = go_string(message["channel"])
        payload: bytes = message["data"]
        pattern = message.get("pattern")
        what = f"message on {channel}"
        body: Any
        if self.cfg.json_body:
            try:
                body = orjson.loads(payload)
            except orjson.JSONDecodeError as e:
                self.deliver.invalid(what, f"body is not JSON ({e})")
                return
        else:
            body = go_string(payload)
        data = {
            "channel": channel,
            "pattern": go_string(pattern) if pattern else "",
            "body": body,
            "metadata": dict(self.cfg.metadata),
        }
        if await self.deliver.deliver(data, new_event_id(), what) is Outcome.FAILED:
            self.log.error(
                "%s: %s lost: the bus did not store it (%s); Redis pub/sub has no redelivery",
                self.where,
                what,
                self.deliver.last_error,
            )


class RedisSource(PerEventSource[RedisConfig]):
    """Redis channels as events: ``spec.redis.<eventName>``, one subscription per event name.

    Fields (Argo's ``RedisEventSource``): ``hostAddress`` (host:port), ``db``,
    ``channels``, ``username`` and ``password`` (a Secret key), ``tls`` (Argo's
    TLSConfig), ``jsonBody``, ``metadata``, ``filter.expression``. ``namespace`` is
    accepted and, as in Argo today, changes nothing: the password Secret is the
    EventSource's.

    Event data (Argo's ``RedisEventData``): ``{"channel", "pattern", "body",
    "metadata"}``; ``pattern`` is always ``""`` (channels, not patterns, are subscribed).
    ``body`` is the parsed JSON with ``jsonBody`` (a body that is not JSON is dropped and
    counted as failed, as in Argo), else the text.

    No acknowledgement exists in Redis pub/sub: what arrives while the bus is down or
    while this source reconnects is lost, logged and counted as failed.
    """

    type_name: ClassVar[str] = "redis"
    config_model: ClassVar[type[SpecModel]] = RedisConfig

    def worker(self, event_name: str, cfg: RedisConfig) -> _Channels:
        return _Channels(self, event_name, cfg)
