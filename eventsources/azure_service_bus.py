"""Azure Service Bus event source (``spec.azureServiceBus``): a queue or a topic subscription.

Every message of the queue (or subscription) becomes one event. The official
``azure-servicebus`` SDK's async client is imported only here (STYLE §2), and
``azure-identity`` only when ``fullyQualifiedNamespace`` asks for Azure AD credentials.

Why peek-lock always: Argo receives in receive-and-delete mode unless ``deferDelete`` is
set, so an event is lost whenever the bus publish fails after the receive. Here a
message is completed only after JetStream acknowledged the event (STYLE §5), whatever
``deferDelete`` says; the field is accepted so Argo manifests keep loading.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import enum
import logging
import ssl
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from azure.servicebus import ServiceBusReceivedMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusError,
)
from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.kernel.argo import SecretKeySelector
from app.kernel.errors import ConfigError, TransientError
from app.kernel.events import event_id_from
from app.kernel.spec import SpecModel
from app.languages.source_filter import SourceFilter, event_source_filter
from eventsources.base import EventSourcePlugin, SourceContext
from eventsources.common import EventSourceFilter

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

TYPE_NAME = "azureServiceBus"
DEAD_LETTER_REASON_INVALID_JSON = "InvalidJSONBody"
_MAX_DESCRIPTION_CHARS = 1024

# The SDK logs every AMQP link and session state change at INFO; this plugin logs what
# matters itself. Only a level nobody configured is changed.
_SDK_LOGGER = logging.getLogger("azure.servicebus")
if _SDK_LOGGER.level == logging.NOTSET:
    _SDK_LOGGER.setLevel(logging.WARNING)


class TLSConfig(SpecModel):
    """Argo's ``TLSConfig``: secrets holding PEM certificates, and two switches."""

    ca_cert_secret: SecretKeySelector | None = None
    client_cert_secret: SecretKeySelector | None = None
    client_key_secret: SecretKeySelector | None = None
    insecure_skip_verify: bool = False
    enabled: bool = False


def _field_error(field: str, message: str, value: Any) -> ValidationError:
    """A validation error located at ``field`` (so the manifest path names the field)."""
    error = PydanticCustomError("value_error", message)
    return ValidationError.from_exception_data(
        "AzureServiceBusConfig", [InitErrorDetails(type=error, loc=(field,), input=value)]
    )


class AzureServiceBusConfig(SpecModel):
    """One Service Bus event (Argo ``AzureServiceBusEventSource``).

    Exactly one of ``queueName`` or ``topicName`` + ``subscriptionName``; a
    ``connectionString`` secret, or ``fullyQualifiedNamespace`` for Azure AD (the
    default credential chain: workload identity, managed identity, environment, CLI).
    """

    connection_string: SecretKeySelector | None = None
    fully_qualified_namespace: str = ""
    queue_name: str = ""
    topic_name: str = ""
    subscription_name: str = ""
    tls: TLSConfig | None = None
    json_body: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    filter: EventSourceFilter | None = None
    defer_delete: bool = Field(
        False, description="accepted for Argo compatibility; messages are always peek-locked"
    )

    @model_validator(mode="after")
    def _one_entity_and_one_credential(self) -> AzureServiceBusConfig:
        if self.queue_name and (self.topic_name or self.subscription_name):
            raise _field_error(
                "queueName",
                "set either queueName, or topicName with subscriptionName, not both",
                self.queue_name,
            )
        if not self.queue_name:
            if self.topic_name and not self.subscription_name:
                raise _field_error(
                    "subscriptionName",
                    "required when topicName is set",
                    self.subscription_name,
                )
            if self.subscription_name and not self.topic_name:
                raise _field_error("topicName", "required when subscriptionName is set", "")
            if not self.topic_name:
                raise _field_error(
                    "queueName",
                    "set queueName, or topicName with subscriptionName",
                    "",
                )
        if self.connection_string is None and not self.fully_qualified_namespace:
            raise _field_error(
                "connectionString",
                "set connectionString, or fullyQualifiedNamespace to use Azure AD credentials",
                None,
            )
        return self

    @property
    def entity_path(self) -> str:
        """The entity the receiver reads: ``queue`` or ``topic/Subscriptions/sub``."""
        if self.queue_name:
            return self.queue_name
        return f"{self.topic_name}/Subscriptions/{self.subscription_name}"


@dataclass(frozen=True, slots=True)
class ServiceBusTuning:
    """Knobs of the receive loop that are not part of Argo's manifest.

    The defaults suit production; tests pass shorter ones. ``publish_retry_seconds`` is
    how long a message is held (its lock renewed) while the bus is unavailable before it
    is abandoned: long enough to ride out a NATS restart without spending the message's
    delivery count (Service Bus dead-letters after ``MaxDeliveryCount``, 10 by default),
    short enough for another replica with a working bus to take it over.
    """

    receive_batch_size: int = 32
    receive_wait_seconds: float = 5.0
    publish_retry_seconds: float = 60.0
    publish_retry_initial_seconds: float = 0.2
    publish_retry_max_seconds: float = 2.0
    failure_pause_initial_seconds: float = 0.5
    failure_pause_max_seconds: float = 30.0
    reconnect_initial_seconds: float = 0.5
    reconnect_max_seconds: float = 30.0
    shutdown_settle_seconds: float = 2.0
    sdk_retry_total: int = 3


class _Outcome(enum.Enum):
    COMPLETE = "complete"
    ABANDON = "abandon"
    DEAD_LETTER = "dead-letter"


@dataclass(frozen=True, slots=True)
class _Result:
    outcome: _Outcome
    reason: str = ""
    description: str = ""


class InvalidBodyError(ValueError):
    """The message can never become an event (``jsonBody`` set, body is not JSON)."""


# -- event data ---------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """Make an AMQP value JSON-safe: the SDK hands strings and keys over as bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, Mapping):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return _rfc3339(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _rfc3339(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _raw_body(msg: ServiceBusReceivedMessage) -> Any:
    """The message body: bytes for Data sections, the value for AMQP value/sequence."""
    body_type = msg.body_type
    if body_type == AmqpMessageBodyType.DATA:
        return b"".join(bytes(part) for part in msg.body)
    if body_type == AmqpMessageBodyType.SEQUENCE:
        return [list(section) for section in msg.body]
    return msg.body


def _body(msg: ServiceBusReceivedMessage, json_body: bool) -> Any:
    """``jsonBody``: the parsed JSON (else :class:`InvalidBodyError`); otherwise text.

    Text is the UTF-8 decoding of the body; a body that is not UTF-8 is given as base64
    (Argo marshals every body as base64 bytes; text keeps ``dataKey: body.x`` working).
    """
    raw = _raw_body(msg)
    if json_body:
        if isinstance(raw, bytes | str):
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise InvalidBodyError(f"jsonBody is set but the body is not JSON: {e}") from e
        return _jsonable(raw)  # an AMQP value body is structured already
    return _jsonable(raw)


def _traceparent(msg: ServiceBusReceivedMessage) -> str:
    """The W3C trace context a sender attached (``traceparent``, or the SDK's
    ``Diagnostic-Id`` in the same format); "" when none."""
    props = msg.application_properties or {}
    for key in (b"traceparent", "traceparent", b"Diagnostic-Id", "Diagnostic-Id"):
        value = props.get(key)
        if value:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def message_key(msg: ServiceBusReceivedMessage) -> str:
    """What identifies a message across redeliveries: its id, else its sequence number."""
    if msg.message_id is not None and str(msg.message_id) != "":
        return str(msg.message_id)
    return f"sequence:{msg.sequence_number}"


def event_data(msg: ServiceBusReceivedMessage, config: AzureServiceBusConfig) -> dict[str, Any]:
    """Argo's ``AzureServiceBusEventData`` shape (DESIGN §3); raises InvalidBodyError."""
    enqueued = msg.enqueued_time_utc
    return {
        "applicationProperties": _jsonable(msg.application_properties or {}),
        "body": _body(msg, config.json_body),
        "contentType": msg.content_type,
        "correlationID": _jsonable(msg.correlation_id),
        "enqueuedTime": _rfc3339(enqueued) if enqueued is not None else None,
        "messageID": _jsonable(msg.message_id),
        "replyTo": msg.reply_to,
        "sequenceNumber": msg.sequence_number,
        "subject": msg.subject,
        "metadata": dict(config.metadata),
    }


# -- lock renewal -------------------------------------------------------------------------
class _LockKeeper:
    """Renews the locks of messages whose events are still being published.

    The SDK's ``AutoLockRenewer`` looks once a second and renews only within 10 s of
    expiry, which cannot keep short locks; this renews each lock when half of its span
    is left, so a slow publish never lets the lock lapse (a lapse means a redelivery:
    harmless thanks to the event id, but wasted work and a delivery count spent).
    """

    def __init__(self, receiver: ServiceBusReceiver, ctx: SourceContext, where: str) -> None:
        self._receiver = receiver
        self._ctx = ctx
        self._where = where
        self._held: dict[int, tuple[ServiceBusReceivedMessage, float]] = {}
        self._changed = asyncio.Event()

    def hold(self, messages: list[ServiceBusReceivedMessage]) -> None:
        now = dt.datetime.now(dt.UTC)
        for m in messages:
            until = m.locked_until_utc
            if until is None:
                continue
            span = max((until - now).total_seconds(), 0.1)
            self._held[id(m)] = (m, span)
        self._changed.set()

    def release(self, messages: list[ServiceBusReceivedMessage]) -> None:
        for m in messages:
            self._held.pop(id(m), None)

    async def run(self) -> None:
        while True:
            wait = 1.0
            for key, (m, span) in list(self._held.items()):
                until = m.locked_until_utc
                if until is None:
                    continue
                left = (until - dt.datetime.now(dt.UTC)).total_seconds()
                if left > span / 2:
                    wait = min(wait, left - span / 2)
                    continue
                try:
                    await self._receiver.renew_message_lock(m)
                except MessageLockLostError:
                    self._ctx.log.info(
                        "%s: lock of message %s lost while publishing; its redelivery is "
                        "deduplicated by the event id",
                        self._where,
                        message_key(m),
                    )
                    self._held.pop(key, None)
                except ServiceBusError as e:
                    self._ctx.log.warning(
                        "%s: renewing the lock of message %s failed: %s",
                        self._where,
                        message_key(m),
                        e,
                    )
                    wait = min(wait, 0.2)
                else:
                    # renewed for another span: look again when half of it is left (a
                    # fixed look a second later would miss locks of a second or less)
                    wait = min(wait, span / 2)
            self._changed.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
            # cancellation that arrives as the event is set (the loop would not stop).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.02)):
                    await self._changed.wait()


# -- TLS ----------------------------------------------------------------------------------
async def build_ssl_context(
    tls: TLSConfig, ctx: SourceContext, namespace: str, path: str = ""
) -> ssl.SSLContext | None:
    """An SSL context from Argo's TLSConfig, or None when the SDK's defaults apply."""
    if not (
        tls.ca_cert_secret
        or tls.client_cert_secret
        or tls.client_key_secret
        or tls.insecure_skip_verify
    ):
        return None
    tls_path = f"{path}.tls" if path else "tls"
    context = ssl.create_default_context()
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.ca_cert_secret is not None:
        ca_path = f"{tls_path}.caCertSecret"
        ca = await _secret(ctx, namespace, tls.ca_cert_secret, ca_path)
        try:
            context.load_verify_locations(cadata=ca)
        except ssl.SSLError as e:
            raise ConfigError(f"not a PEM certificate: {e}", ca_path) from e
    if (tls.client_cert_secret is None) != (tls.client_key_secret is None):
        raise ConfigError("clientCertSecret and clientKeySecret go together", tls_path)
    if tls.client_cert_secret is not None and tls.client_key_secret is not None:
        cert = await _secret(ctx, namespace, tls.client_cert_secret, f"{tls_path}.clientCertSecret")
        key = await _secret(ctx, namespace, tls.client_key_secret, f"{tls_path}.clientKeySecret")
        # ssl loads client certificates from files only: write them where only we can read.
        with tempfile.TemporaryDirectory(prefix="triggerfish-tls-") as tmp:
            cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert_path.write_text(cert)
            key_path.write_text(key)
            key_path.chmod(0o600)
            try:
                context.load_cert_chain(cert_path, key_path)
            except ssl.SSLError as e:
                raise ConfigError(f"unusable client certificate/key: {e}", tls_path) from e
    return context


async def _secret(ctx: SourceContext, namespace: str, sel: SecretKeySelector, path: str) -> str:
    try:
        return await ctx.secrets.get(namespace, sel.name, sel.key)
    except ConfigError:
        raise
    except Exception as e:  # the resolver's own errors: report where, never the value
        raise TransientError(f"{path}: cannot read secret {sel.name}/{sel.key}: {e}") from e


def _compile_filter(config: AzureServiceBusConfig) -> SourceFilter | None:
    """The event's compiled ``filter.expression``; ``ValueError`` when it is invalid."""
    return None if config.filter is None else event_source_filter(config.filter.expression)


# -- the plugin ---------------------------------------------------------------------------
class AzureServiceBusSource(EventSourcePlugin[AzureServiceBusConfig]):
    """Receives from Azure Service Bus queues or topic subscriptions, one event per message.

    Fields (``spec.azureServiceBus.<eventName>``): ``connectionString`` (secret) or
    ``fullyQualifiedNamespace`` (Azure AD default credentials); ``queueName``, or
    ``topicName`` + ``subscriptionName``; ``jsonBody`` (parse the body as JSON);
    ``metadata`` (copied into every event); ``tls`` (Argo's TLSConfig: CA, client
    certificate, ``insecureSkipVerify``); ``deferDelete`` (accepted, changes nothing:
    messages are always peek-locked); ``filter.expression`` (an expr-lang expression
    over the event data, compiled at validation: a message for which it is not true is
    not published).

    Event data: ``{applicationProperties, body, contentType, correlationID,
    enqueuedTime, messageID, replyTo, sequenceNumber, subject, metadata}``; ``body`` is
    the parsed JSON with ``jsonBody``, else text (base64 when not UTF-8).

    Acknowledgement and failure semantics:

    * peek-lock always; a message is completed only after ``ctx.publish`` returned,
      i.e. JetStream stored the event;
    * the event id is derived from the namespace, entity and message id, so a
      redelivery (lock expired, complete lost, another replica) is dropped by the bus's
      dedup window instead of becoming a second event;
    * bus unavailable: the message is held, its lock renewed, and the publish retried
      for ``publish_retry_seconds``; then it is abandoned (redelivered, delivery count
      + 1) and the source pauses before receiving again;
    * a message that can never become an event (``jsonBody`` with a body that is not
      JSON) is dead-lettered with reason ``InvalidJSONBody`` and a description;
    * a message dropped by ``filter`` is completed (consumed on purpose: abandoned, it
      would come back until dead-lettered), counted as filtered, never as sent, and
      logged at debug level;
    * locks are renewed while a publish is slow; broker and connection errors close the
      client and reconnect with exponential backoff; nothing here crashes the process
      except a configuration error (bad connection string, bad ``filter``).
    """

    type_name: ClassVar[str] = TYPE_NAME
    config_model: ClassVar[type[SpecModel]] = AzureServiceBusConfig

    def __init__(
        self,
        source_name: str,
        namespace: str,
        events: Mapping[str, AzureServiceBusConfig],
        ctx: SourceContext,
        *,
        tuning: ServiceBusTuning | None = None,
    ) -> None:
        super().__init__(source_name, namespace, events, ctx)
        self.tuning = tuning or ServiceBusTuning()
        self._listening: set[str] = set()
        self._filters: dict[str, SourceFilter] = {}

    def ready(self) -> bool:
        """True while every event's receiver link is attached."""
        return len(self._listening) == len(self.events)

    @classmethod
    def check_config(
        cls, source_name: str, events: Mapping[str, AzureServiceBusConfig]
    ) -> list[str]:
        """Compile every ``filter.expression``, so a bad one fails validation with its path."""
        lines: list[str] = []
        for name, config in events.items():
            try:
                _compile_filter(config)
            except ValueError as e:
                lines.append(f"spec.{TYPE_NAME}.{name}.filter.expression: {e}")
        return lines

    async def run(self) -> None:
        filters: dict[str, SourceFilter] = {}
        for name, config in self.events.items():
            try:
                source_filter = _compile_filter(config)
            except ValueError as e:
                raise ConfigError(str(e), f"spec.{TYPE_NAME}.{name}.filter.expression") from e
            if source_filter is not None:
                filters[name] = source_filter
        self._filters = filters
        # Plain tasks rather than a TaskGroup: a ConfigError must reach the caller as
        # itself, not wrapped in an ExceptionGroup.
        tasks = [
            asyncio.create_task(self._serve(name, config), name=f"{TYPE_NAME}:{name}")
            for name, config in self.events.items()
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- connection management --------------------------------------------------------
    async def _serve(self, event_name: str, config: AzureServiceBusConfig) -> None:
        """Receive for one event forever, reconnecting with backoff after any failure."""
        where = f"{self.source_name}/{event_name} ({config.entity_path})"
        backoff = self.tuning.reconnect_initial_seconds
        while True:
            try:
                client, credential = await self._client(event_name, config)
                try:
                    async with client, self._receiver(client, config) as receiver:
                        self._listening.add(event_name)
                        self.ctx.log.info("%s: receiving", where)
                        backoff = self.tuning.reconnect_initial_seconds
                        await self._consume(event_name, config, client, receiver, where)
                finally:
                    self._listening.discard(event_name)
                    if credential is not None:
                        with contextlib.suppress(Exception):
                            await credential.close()
            except (asyncio.CancelledError, ConfigError):
                raise
            except Exception as e:  # SDK, network, secret lookups: retry, never crash
                # A missing entity or rejected credentials need a person; say so louder.
                level = (
                    logging.ERROR
                    if isinstance(e, MessagingEntityNotFoundError | ServiceBusAuthenticationError)
                    else logging.WARNING
                )
                self.ctx.log.log(
                    level, "%s: %s: %s; reconnecting in %.1fs", where, type(e).__name__, e, backoff
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.tuning.reconnect_max_seconds)

    async def _client(
        self, event_name: str, config: AzureServiceBusConfig
    ) -> tuple[ServiceBusClient, AsyncTokenCredential | None]:
        path = f"spec.{TYPE_NAME}.{event_name}"
        kwargs: dict[str, Any] = {"retry_total": self.tuning.sdk_retry_total}
        if config.tls is not None:
            context = await build_ssl_context(config.tls, self.ctx, self.namespace, path)
            if context is not None:
                kwargs["ssl_context"] = context
        if config.connection_string is not None:
            conn = await _secret(
                self.ctx, self.namespace, config.connection_string, f"{path}.connectionString"
            )
            try:
                return ServiceBusClient.from_connection_string(conn, **kwargs), None
            except ValueError as e:  # the SDK's message never contains the key
                raise ConfigError(
                    f"secret {config.connection_string.name}/{config.connection_string.key} "
                    f"is not a Service Bus connection string: {e}",
                    f"{path}.connectionString",
                ) from e
        try:
            from azure.identity.aio import DefaultAzureCredential
        except ImportError as e:
            raise ConfigError(
                "fullyQualifiedNamespace needs the azure-identity package",
                f"{path}.fullyQualifiedNamespace",
            ) from e
        credential = DefaultAzureCredential()
        client = ServiceBusClient(config.fully_qualified_namespace, credential, **kwargs)
        return client, credential

    def _receiver(
        self, client: ServiceBusClient, config: AzureServiceBusConfig
    ) -> ServiceBusReceiver:
        common: dict[str, Any] = {
            "receive_mode": ServiceBusReceiveMode.PEEK_LOCK,
            "prefetch_count": 0,
        }
        if config.queue_name:
            return client.get_queue_receiver(config.queue_name, **common)
        return client.get_subscription_receiver(
            config.topic_name, config.subscription_name, **common
        )

    # -- the receive loop -------------------------------------------------------------
    async def _consume(
        self,
        event_name: str,
        config: AzureServiceBusConfig,
        client: ServiceBusClient,
        receiver: ServiceBusReceiver,
        where: str,
    ) -> None:
        entity = f"{client.fully_qualified_namespace}/{config.entity_path}".lower()
        keeper = _LockKeeper(receiver, self.ctx, where)
        pause = self.tuning.failure_pause_initial_seconds
        keeper_task = asyncio.create_task(keeper.run(), name=f"{where}: lock renewal")
        task = asyncio.current_task()
        try:
            while True:
                batch = await receiver.receive_messages(
                    max_message_count=self.tuning.receive_batch_size,
                    max_wait_time=self.tuning.receive_wait_seconds,
                )
                if task is not None and task.cancelling():
                    # A stop that landed in the receive call: the SDK's call can return
                    # (with messages, locked to this receiver) instead of raising it, and
                    # the loop would go on. Hand what came back and stop.
                    await self._abandon_on_shutdown(receiver, batch, where)
                    raise asyncio.CancelledError
                if not batch:
                    continue
                settled = 0
                keeper.hold(batch)
                try:
                    try:
                        results = await self._process(event_name, config, entity, batch, where)
                    finally:
                        keeper.release(batch)
                    for msg, result in zip(batch, results, strict=True):
                        await self._settle(receiver, msg, result, where)
                        settled += 1
                except asyncio.CancelledError:
                    await self._abandon_on_shutdown(receiver, batch[settled:], where)
                    raise
                if any(r.outcome is _Outcome.ABANDON for r in results):
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, self.tuning.failure_pause_max_seconds)
                else:
                    pause = self.tuning.failure_pause_initial_seconds
        finally:
            keeper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper_task

    async def _process(
        self,
        event_name: str,
        config: AzureServiceBusConfig,
        entity: str,
        batch: list[ServiceBusReceivedMessage],
        where: str,
    ) -> list[_Result]:
        """Publish a received batch concurrently; one settle decision per message."""
        return list(
            await asyncio.gather(
                *(self._to_bus(event_name, config, entity, m, where) for m in batch)
            )
        )

    async def _to_bus(
        self,
        event_name: str,
        config: AzureServiceBusConfig,
        entity: str,
        msg: ServiceBusReceivedMessage,
        where: str,
    ) -> _Result:
        key = message_key(msg)
        try:
            data = event_data(msg, config)
        except InvalidBodyError as e:
            self.ctx.log.error("%s: dead-lettering message %s: %s", where, key, e)
            return _Result(
                _Outcome.DEAD_LETTER,
                DEAD_LETTER_REASON_INVALID_JSON,
                str(e)[:_MAX_DESCRIPTION_CHARS],
            )
        source_filter = self._filters.get(event_name)
        if source_filter is not None:
            passed, reason = source_filter.check(data)
            if not passed:
                self.ctx.metrics.event_filtered(self.source_name, event_name)
                self.ctx.log.debug(
                    "%s: message %s filtered out, completed without publishing (%r: %s)",
                    where,
                    key,
                    source_filter.expression.source,
                    reason,
                )
                return _Result(_Outcome.COMPLETE)
        event = self.make_event(event_name, data, event_id_from(TYPE_NAME, entity, key))
        event.traceparent = _traceparent(msg)  # continued by the publish span
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.tuning.publish_retry_seconds
        delay = self.tuning.publish_retry_initial_seconds
        while True:
            try:
                await self.ctx.publish(event)
            except TransientError as e:
                if loop.time() + delay > deadline:
                    self.ctx.metrics.event_send_failed(self.source_name, event_name)
                    self.ctx.log.warning(
                        "%s: bus unavailable, abandoning message %s for redelivery: %s",
                        where,
                        key,
                        e,
                    )
                    return _Result(_Outcome.ABANDON)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.tuning.publish_retry_max_seconds)
                continue
            except Exception:
                # Not an outage: hand the message back; Service Bus dead-letters it after
                # MaxDeliveryCount attempts if it keeps failing, so nothing is lost silently.
                self.ctx.metrics.event_send_failed(self.source_name, event_name)
                self.ctx.log.exception("%s: publishing message %s failed", where, key)
                return _Result(_Outcome.ABANDON)
            self.ctx.metrics.event_sent(self.source_name, event_name)
            return _Result(_Outcome.COMPLETE)

    async def _settle(
        self,
        receiver: ServiceBusReceiver,
        msg: ServiceBusReceivedMessage,
        result: _Result,
        where: str,
    ) -> None:
        key = message_key(msg)
        try:
            if result.outcome is _Outcome.COMPLETE:
                await receiver.complete_message(msg)
            elif result.outcome is _Outcome.ABANDON:
                await receiver.abandon_message(msg)
            else:
                await receiver.dead_letter_message(
                    msg, reason=result.reason, error_description=result.description
                )
        except MessageLockLostError:
            # The message comes back; its event id makes the second publish a no-op.
            self.ctx.log.info(
                "%s: lock of message %s expired before %s; the redelivery is deduplicated",
                where,
                key,
                result.outcome.value,
            )
        except ServiceBusError as e:
            # Unsettled messages return after their lock expires; the next receive
            # surfaces a broken connection and the caller reconnects.
            self.ctx.log.warning(
                "%s: %s of message %s failed: %s", where, result.outcome.value, key, e
            )
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # A stop that landed in the settle call: the SDK's call can return instead
            # of raising it, and the receive loop would go on. Stop here; the caller
            # hands the rest of the batch back.
            raise asyncio.CancelledError

    async def _abandon_on_shutdown(
        self, receiver: ServiceBusReceiver, batch: list[ServiceBusReceivedMessage], where: str
    ) -> None:
        """Hand in-flight messages back at once instead of leaving them locked."""

        async def abandon_all() -> None:
            for msg in batch:
                with contextlib.suppress(ServiceBusError):
                    await receiver.abandon_message(msg)

        try:
            await asyncio.wait_for(abandon_all(), timeout=self.tuning.shutdown_settle_seconds)
        except (TimeoutError, Exception) as e:  # best effort: locks expire anyway
            self.ctx.log.debug("%s: abandoning in-flight messages on shutdown: %s", where, e)


__all__ = [
    "AzureServiceBusConfig",
    "AzureServiceBusSource",
    "InvalidBodyError",
    "ServiceBusTuning",
    "TLSConfig",
    "event_data",
    "message_key",
]
