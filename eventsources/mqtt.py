"""MQTT event source (``spec.mqtt``): one event per message on an MQTT topic.

Argo's ``MQTTEventSource`` subscribes with QoS 0 and a clean session: messages are
acknowledged by nobody and lost while the source is away. That stays the default. Beyond
Argo, ``qos: 1`` with ``cleanSession: false`` makes it at-least-once: the broker keeps
the session's messages while the source is disconnected, and each message's PUBACK is
sent only after the bus's PubAck; while the bus is down the message is held and its
publish retried (the broker stops sending once its in-flight window is full), and a
source that dies before acking gets the message again from the broker on reconnect.

aiomqtt (asyncio over paho-mqtt) is imported only here. aiomqtt has no manual
acknowledgement of its own; the paho client under it does (``manual_ack_set`` and
``ack``), and this module turns it on for ``qos: 1``. Registered as ``mqtt`` in
:mod:`eventsources.registry`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from typing import ClassVar, Literal
from urllib.parse import urlsplit

import aiomqtt
from pydantic import Field, field_validator, model_validator

from app.kernel.argo import TLSConfig
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

#: URL schemes Argo's Go client (paho) accepts for plain TCP and for TLS.
PLAIN_SCHEMES = frozenset({"tcp", "mqtt"})
TLS_SCHEMES = frozenset({"ssl", "tls", "mqtts", "tcps"})
DEFAULT_PORTS = {"plain": 1883, "tls": 8883}
#: Messages the broker may have in flight to us unacked (QoS 1); the MQTT default.
MAX_INFLIGHT = 20


class MQTTConfig(SpecModel):
    """One MQTT event (Argo ``MQTTEventSource``) plus ``qos`` and ``cleanSession``."""

    url: str = Field(description="broker URL: tcp://host:1883, ssl://host:8883")
    topic: str = Field(description="topic filter to subscribe to (+ and # allowed)")
    client_id: str = Field(alias="clientId", description="MQTT client identifier")
    connection_backoff: Backoff | None = None
    json_body: bool = False
    tls: TLSConfig | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    filter: EventSourceFilter | None = None
    auth: BasicAuth | None = None
    qos: Literal[0, 1] = Field(0, description="subscription QoS; 1 acks after the PubAck")
    clean_session: bool = Field(True, description="false keeps the session across reconnects")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip()
        parts = urlsplit(v)
        scheme = parts.scheme.lower()
        if scheme in ("ws", "wss"):
            raise ValueError(f"{scheme}:// (MQTT over websockets) is not supported yet")
        if scheme not in PLAIN_SCHEMES | TLS_SCHEMES or not parts.hostname:
            raise ValueError(f"url must be tcp://host:port or ssl://host:port, got {v!r}")
        try:
            _ = parts.port
        except ValueError as e:
            raise ValueError(f"bad port in url {v!r}") from e
        return v

    @field_validator("topic", "client_id")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _auth_pair(self) -> MQTTConfig:
        if self.auth is not None and (self.auth.username is None or self.auth.password is None):
            raise ValueError("auth needs both username and password")
        return self

    @property
    def host_port(self) -> tuple[str, int, bool]:
        parts = urlsplit(self.url)
        secure = parts.scheme.lower() in TLS_SCHEMES
        port = parts.port or DEFAULT_PORTS["tls" if secure else "plain"]
        return parts.hostname or "", port, secure


class _Subscriber:
    """One event name: a client session with the broker, made again when it drops."""

    def __init__(self, plugin: MQTTSource, event_name: str, cfg: MQTTConfig) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.log = plugin.ctx.log
        self.cfg = cfg
        self.deliver = Deliverer(plugin, event_name, cfg.filter.expression if cfg.filter else None)
        self.where = self.deliver.where
        self.path = f"spec.mqtt.{event_name}"
        self.live = False

    async def _client(self) -> aiomqtt.Client:
        cfg, ns = self.cfg, self.plugin.namespace
        host, port, secure = cfg.host_port
        tls = await ssl_context(cfg.tls, self.ctx, ns, self.path)
        if tls is None and secure:
            tls = await ssl_context(TLSConfig(enabled=True), self.ctx, ns, self.path)
        username = password = None
        if cfg.auth is not None and cfg.auth.username and cfg.auth.password:
            username = await read_secret(self.ctx, ns, cfg.auth.username, f"{self.path}.auth")
            password = await read_secret(self.ctx, ns, cfg.auth.password, f"{self.path}.auth")
        client = aiomqtt.Client(
            host,
            port,
            identifier=cfg.client_id,
            username=username,
            password=password,
            clean_session=cfg.clean_session,
            tls_context=tls,
            tls_insecure=bool(cfg.tls and cfg.tls.insecure_skip_verify) or None,
            timeout=10,
            max_inflight_messages=MAX_INFLIGHT,
        )
        if cfg.qos == 1:
            # aiomqtt acks on receipt; its paho client can leave the PUBACK to us.
            client._client.manual_ack_set(True)
        return client

    async def run(self) -> None:
        retry = Retry(self.cfg.connection_backoff)
        while True:
            try:
                client = await self._client()
            except TransientError as e:
                self.log.error("%s: %s; retrying", self.where, e)
                await retry.wait()
                continue
            try:
                async with client:
                    await client.subscribe(self.cfg.topic, qos=self.cfg.qos)
                    self.live = True
                    retry.reset()
                    self.log.info(
                        "%s: subscribed to %s (QoS %d)", self.where, self.cfg.topic, self.cfg.qos
                    )
                    async for message in client.messages:
                        await self._handle(client, message)
            except aiomqtt.MqttCodeError as e:
                if e.rc in (4, 5, 134, 135):  # bad user name or password / not authorized
                    raise ConfigError(f"the broker refused the connection: {e}", self.path) from e
                self.log.warning("%s: %s; reconnecting", self.where, e)
            except (aiomqtt.MqttError, OSError) as e:
                self.log.warning("%s: connection lost (%s); reconnecting", self.where, e)
            finally:
                self.live = False
            await retry.wait()

    def _event_id(self, message: aiomqtt.Message, payload: bytes) -> str:
        if message.qos == 0:
            return new_event_id()
        # A QoS 1 redelivery carries the same packet id and payload: same event id, so
        # the bus stores it once. Packet ids cycle through 65535 values per session.
        digest = hashlib.sha256(payload).hexdigest()
        return event_id_from(
            "mqtt", self.cfg.url, self.cfg.client_id, message.topic.value, str(message.mid), digest
        )

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        raw = message.payload
        payload = raw if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
        topic = message.topic.value
        what = f"message {message.mid} on {topic}"
        try:
            body = body_of(bytes(payload), self.cfg.json_body)
        except ValueError as e:
            self.deliver.invalid(what, str(e))
            self._ack(client, message)
            return
        data = {
            "topic": topic,
            "messageId": message.mid,
            "body": body,
            "metadata": dict(self.cfg.metadata),
        }
        event_id = self._event_id(message, bytes(payload))
        backoff = BusBackoff()
        while True:
            outcome = await self.deliver.deliver(data, event_id, what)
            if outcome is not Outcome.FAILED:
                self._ack(client, message)
                return
            if message.qos == 0:
                self.log.error(
                    "%s: %s lost: the bus did not store it (%s); QoS 0 has no redelivery",
                    self.where,
                    what,
                    self.deliver.last_error,
                )
                return
            # Held unacked: the broker redelivers it if we go away, so retry here.
            self.log.error(
                "%s: %s not stored on the bus (%s); not acked, retrying",
                self.where,
                what,
                self.deliver.last_error,
            )
            await backoff.wait()

    def _ack(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        if message.qos > 0:
            with contextlib.suppress(Exception):
                client._client.ack(message.mid, message.qos)


class MQTTSource(PerEventSource[MQTTConfig]):
    """MQTT topics as events: ``spec.mqtt.<eventName>``, one client session per event name.

    Fields (Argo's ``MQTTEventSource``): ``url`` (``tcp://`` / ``mqtt://``, or ``ssl://``
    / ``tls://`` / ``mqtts://`` for TLS; websockets are rejected as not supported yet),
    ``topic``, ``clientId``, ``auth`` (username and password Secret keys), ``tls``
    (Argo's TLSConfig), ``jsonBody``, ``metadata``, ``filter.expression``,
    ``connectionBackoff`` (the shape of the reconnect waits; the source never gives up).
    Beyond Argo: ``qos`` (0, Argo's, or 1) and ``cleanSession`` (default true, Argo's).

    Event data (Argo's ``MQTTEventData``): ``{"topic", "messageId", "body",
    "metadata"}``; ``messageId`` is the packet id (0 at QoS 0). ``body`` is the parsed
    JSON with ``jsonBody`` (a body that is not JSON is dropped and counted as failed, as
    in Argo), else the text (Argo: the bytes base64-encoded).

    Acknowledgement: none at QoS 0 (a message the bus refuses is logged, counted, lost).
    At QoS 1 the PUBACK goes out only after the PubAck; on a bus failure the message is
    held and published again with a growing pause until the bus takes it, and the event
    id is derived from the packet id and payload, so a broker redelivery is stored once.
    With ``cleanSession: false`` the broker also queues messages while the source is
    disconnected. A dropped connection is made again with a capped back-off.

    A singleton (:meth:`singleton`): the client id is fixed, and a broker disconnects the
    older of two sessions with one id, so with several replicas only the Lease holder
    connects.
    """

    type_name: ClassVar[str] = "mqtt"
    config_model: ClassVar[type[SpecModel]] = MQTTConfig

    def worker(self, event_name: str, cfg: MQTTConfig) -> _Subscriber:
        return _Subscriber(self, event_name, cfg)

    @classmethod
    def singleton(cls, events: Mapping[str, MQTTConfig]) -> bool:
        return any(cfg.client_id for cfg in events.values())

    @classmethod
    def check_config(cls, source_name: str, events: Mapping[str, MQTTConfig]) -> list[str]:
        lines = super().check_config(source_name, events)
        seen: dict[tuple[str, str], str] = {}
        for name, cfg in events.items():
            key = (cfg.url, cfg.client_id)
            if key in seen:
                # The broker disconnects the older of two sessions with one client id.
                lines.append(f"spec.mqtt.{name}.clientId: also used by {seen[key]}")
            seen[key] = name
        return lines
