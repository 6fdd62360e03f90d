"""The ``azureServiceBus`` trigger: send one message to a Service Bus queue or topic per
firing (Argo ``AzureServiceBusTrigger``).

Fields (:class:`AzureServiceBusTriggerConfig`): ``connectionString`` (a Secret key
holding the namespace's connection string); ``queueName`` or ``topicName``;
``subscriptionName`` (accepted, as in Argo, and unused: a sender writes to the topic and
every subscription gets a copy); ``payload`` (parameters set into an empty JSON
document, which becomes the message body, as Argo's ``ConstructPayload``);
``parameters`` (applied to this config first, e.g. ``dest: queueName``); ``tls``
(``caCertSecret``, ``clientCertSecret`` + ``clientKeySecret``, ``insecureSkipVerify``).

The official ``azure-servicebus`` SDK is imported inside the methods that send, so
validating a manifest does not load it. One client and sender per (namespace,
connection-string Secret key, entity, TLS) live in the context's
:class:`~sensors.triggers.base.SharedCache` and are closed with it; the SDK reconnects a
broken link on the next send. Sends on one sender take turns: the SDK's async sender is
not safe to share between coroutines (sends that overlap while it opens its link fail
with ``'NoneType' object has no attribute 'client_ready_async'``), and the runner fires
several events at once.

Semantics:
* Each message carries ``message_id`` = the firing key, the same on every retry and
  redelivery: an entity with duplicate detection stores the firing once. Without it a
  retried firing may arrive twice. A non-empty body is sent with ``content_type:
  application/json`` (Argo sets neither).
* Failure: the namespace cannot be reached, a timeout, a busy or full entity →
  :class:`~app.kernel.errors.TransientError` (retried by the runner); rejected
  credentials, a missing or disabled entity, a message over the size limit, a
  connection string that does not parse, a missing Secret key, a missing parameter
  value → :class:`~app.kernel.errors.PermanentError` (dead-lettered).
* The connection string and its key never appear in logs, traces or messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any, ClassVar

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.kernel.argo import SecretKeySelector, TLSConfig
from app.kernel.errors import PermanentError, TransientError
from app.kernel.spec import SpecModel
from sensors.spec import TriggerParameter
from sensors.triggers.base import Invocation, TriggerResult
from sensors.triggers.http import read_secret, ssl_context
from sensors.triggers.parameterized import ParameterizedTrigger

SEND_TIMEOUT_SECONDS = 30.0
"""How long one send may take (the SDK's own retries included) before it is retried."""

SDK_RETRY_TOTAL = 1
"""The SDK's own retries within one send; the runner's ``retryStrategy`` does the rest."""

_KEY_IN_TEXT = re.compile(r"(SharedAccessKey|SharedAccessSignature)=[^;\s]*", re.IGNORECASE)


def _field_error(field: str, message: str, value: Any) -> ValidationError:
    error = PydanticCustomError("value_error", message)
    return ValidationError.from_exception_data(
        "AzureServiceBusTriggerConfig", [InitErrorDetails(type=error, loc=(field,), input=value)]
    )


class AzureServiceBusTriggerConfig(SpecModel):
    """``template.azureServiceBus``: send the payload to ``queueName`` or ``topicName``."""

    connection_string: SecretKeySelector
    queue_name: str = ""
    topic_name: str = ""
    subscription_name: str = ""
    tls: TLSConfig | None = None
    payload: list[TriggerParameter]
    parameters: list[TriggerParameter] = Field(default_factory=list)

    @model_validator(mode="after")
    def _entity_and_credential(self) -> AzureServiceBusTriggerConfig:
        if self.queue_name and self.topic_name:
            raise _field_error("topicName", "set either queueName or topicName, not both",
                               self.topic_name)  # fmt: skip
        if not self.queue_name and not self.topic_name:
            raise _field_error("queueName", "neither queueName nor topicName is specified", "")
        tls = self.tls
        if tls is not None and (tls.client_cert_secret is None) != (tls.client_key_secret is None):
            raise _field_error(
                "tls", "clientCertSecret and clientKeySecret must be given together", None
            )
        return self

    @property
    def entity(self) -> str:
        """``queue <name>`` or ``topic <name>``, for messages and traces."""
        return f"queue {self.queue_name}" if self.queue_name else f"topic {self.topic_name}"


class _Sender:
    """One SDK client and sender for one entity; kept in the SharedCache."""

    def __init__(self, client: Any, sender: Any, secret_text: str) -> None:
        self.client = client
        self.sender = sender
        self.secret_text = secret_text
        self.turn = asyncio.Lock()
        """Held around each send (the SDK's sender is not coroutine-safe)."""

    async def close(self) -> None:
        for closable in (self.sender, self.client):
            with contextlib.suppress(Exception):
                await closable.close()


def _scrub(text: str, secret: str) -> str:
    """``text`` without the connection string or any key in it."""
    if secret:
        text = text.replace(secret, "<connection string>")
    return _KEY_IN_TEXT.sub(r"\1=<redacted>", text)


class AzureServiceBusTrigger(ParameterizedTrigger[AzureServiceBusTriggerConfig]):
    """Sends the payload to a Service Bus queue or topic (see the module docstring)."""

    has_payload: ClassVar[bool] = True

    type_name: ClassVar[str] = "azureServiceBus"
    config_model: ClassVar[type[SpecModel]] = AzureServiceBusTriggerConfig

    async def execute(self, inv: Invocation) -> TriggerResult:
        from azure.servicebus import ServiceBusMessage
        from azure.servicebus.exceptions import (
            MessageSizeExceededError,
            MessagingEntityDisabledError,
            MessagingEntityNotFoundError,
            ServiceBusAuthenticationError,
            ServiceBusAuthorizationError,
            ServiceBusError,
        )

        cfg, records = self._config_for(inv.events)
        body, payload_records = self._payload_for(cfg, inv.events)
        records += payload_records
        sender = await self._sender(cfg, inv.namespace)
        message = ServiceBusMessage(
            body, message_id=inv.key, content_type="application/json" if body else None
        )
        where = f"azureServiceBus {cfg.entity}"
        try:
            async with sender.turn:
                await asyncio.wait_for(
                    sender.sender.send_messages(message, timeout=SEND_TIMEOUT_SECONDS),
                    SEND_TIMEOUT_SECONDS + 5,
                )
        except (
            ServiceBusAuthenticationError,
            ServiceBusAuthorizationError,
            MessagingEntityNotFoundError,
            MessagingEntityDisabledError,
            MessageSizeExceededError,
        ) as e:
            text = _scrub(str(e), sender.secret_text)
            raise PermanentError(f"{where}: {type(e).__name__}: {text}") from e
        except (ServiceBusError, OSError, TimeoutError) as e:
            text = _scrub(str(e), sender.secret_text) or "timed out"
            raise TransientError(f"{where}: {type(e).__name__}: {text}") from e
        detail = {"name": where, "entity": cfg.entity, "messageId": inv.key, "bytes": len(body)}
        return TriggerResult("sent", detail, records)

    async def _sender(self, cfg: AzureServiceBusTriggerConfig, namespace: str) -> _Sender:
        sel = cfg.connection_string
        key = (
            "azureServiceBus.sender",
            namespace,
            sel.name,
            sel.key,
            cfg.queue_name,
            cfg.topic_name,
            None if cfg.tls is None else cfg.tls.model_dump_json(),
        )
        ctx = self.ctx

        async def make() -> _Sender:
            from azure.servicebus.aio import ServiceBusClient

            conn = await read_secret(ctx, namespace, sel.name, sel.key)
            kwargs: dict[str, Any] = {"retry_total": SDK_RETRY_TOTAL}
            if cfg.tls is not None:
                kwargs["ssl_context"] = await ssl_context(ctx, cfg.tls, namespace)
            try:
                client = ServiceBusClient.from_connection_string(conn, **kwargs)
            except ValueError as e:  # the SDK's message never contains the key
                raise PermanentError(
                    f"secret {namespace}/{sel.name} key {sel.key!r} is not a Service Bus "
                    f"connection string: {_scrub(str(e), conn)}"
                ) from e
            if cfg.queue_name:
                sender = client.get_queue_sender(cfg.queue_name)
            else:
                sender = client.get_topic_sender(cfg.topic_name)
            return _Sender(client, sender, conn)

        return await ctx.shared.get(key, make)


__all__ = ["AzureServiceBusTrigger", "AzureServiceBusTriggerConfig"]
