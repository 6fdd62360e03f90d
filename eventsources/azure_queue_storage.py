"""Azure Queue Storage event source (``spec.azureQueueStorage``): one event per message.

Argo's ``AzureQueueStorageEventSource``: poll a storage queue (10 messages at a time,
hidden for 120 s while handled, ``waitTimeInSeconds`` between empty polls), delete each
message only after the bus's PubAck. A message the bus refused is made visible again
after a short pause (instead of after the 120 s), so it is retried soon; the event id is
derived from (account, queue, message id), so a redelivered message is stored once.

The Azure Storage SDK (``azure.storage.queue``, async) is imported only here; the
Azure SDKs' contract names this module and the Service Bus source. Registered as
``azureQueueStorage`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
from typing import Any, ClassVar

from azure.core.exceptions import AzureError, ClientAuthenticationError, ResourceNotFoundError
from azure.storage.queue.aio import QueueClient
from pydantic import Field, field_validator, model_validator

from app.kernel.argo import SecretKeySelector
from app.kernel.errors import ConfigError, TransientError
from app.kernel.events import event_id_from
from app.kernel.spec import SpecModel
from eventsources.brokers import (
    BusBackoff,
    Deliverer,
    Outcome,
    PerEventSource,
    Retry,
    body_of,
    read_secret,
)
from eventsources.common import EventSourceFilter

#: Argo's fixed numbers: messages per receive, seconds hidden while handled, pause
#: after an empty receive when ``waitTimeInSeconds`` is not set.
MESSAGES_PER_RECEIVE = 10
VISIBILITY_TIMEOUT_SECONDS = 120
DEFAULT_WAIT_SECONDS = 3

_CALL_ERRORS = (AzureError, OSError, TimeoutError)


class AzureQueueStorageConfig(SpecModel):
    """One Azure Queue Storage event (Argo ``AzureQueueStorageEventSource``)."""

    storage_account_name: str = Field(
        "", description="account reached with Azure AD credentials when no connectionString"
    )
    connection_string: SecretKeySelector | None = None
    queue_name: str = Field(description="queue to receive from")
    json_body: bool = False
    dlq: bool = Field(False, description="leave undecodable messages in the queue")
    metadata: dict[str, str] = Field(default_factory=dict)
    filter: EventSourceFilter | None = None
    decode_message: bool = Field(False, description="message text is base64: decode it")
    wait_time_in_seconds: int | None = Field(
        None, ge=0, le=3600, description="pause after an empty receive (default 3)"
    )

    @field_validator("queue_name")
    @classmethod
    def _queue_name(cls, v: str) -> str:
        if not 3 <= len(v) <= 63:
            raise ValueError("must be 3 to 63 characters (an Azure queue name)")
        return v

    @model_validator(mode="after")
    def _account(self) -> AzureQueueStorageConfig:
        if self.connection_string is None and not self.storage_account_name:
            raise ValueError("connectionString or storageAccountName must be given")
        return self


def go_rfc3339(value: dt.datetime | None) -> str:
    """A time as Go's JSON encodes ``time.Time`` (RFC 3339, ``Z`` for UTC)."""
    if value is None:
        return "0001-01-01T00:00:00Z"
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    text = value.astimezone(dt.UTC).isoformat()
    return text.replace("+00:00", "Z")


def _base64(text: str) -> bytes:
    """Argo's decode: URL-safe base64 first, then standard base64."""
    for decode in (base64.urlsafe_b64decode, base64.standard_b64decode):
        with contextlib.suppress(binascii.Error, ValueError):
            return decode(text.encode())
    raise ValueError("message is not base64")


class _Poller:
    """One event name: its queue client and receive loop."""

    def __init__(
        self, plugin: AzureQueueStorageSource, event_name: str, cfg: AzureQueueStorageConfig
    ) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.log = plugin.ctx.log
        self.cfg = cfg
        self.deliver = Deliverer(plugin, event_name, cfg.filter.expression if cfg.filter else None)
        self.where = self.deliver.where
        self.path = f"spec.azureQueueStorage.{event_name}"
        self.live = False
        self._bus_backoff = BusBackoff()

    async def _client(self) -> tuple[QueueClient, Any]:
        """The queue client, and the credential to close with it (AAD only)."""
        cfg = self.cfg
        if cfg.connection_string is not None:
            conn = await read_secret(
                self.ctx,
                self.plugin.namespace,
                cfg.connection_string,
                f"{self.path}.connectionString",
            )
            try:
                return QueueClient.from_connection_string(conn.strip(), cfg.queue_name), None
            except ValueError as e:
                raise ConfigError(
                    "not a storage connection string", f"{self.path}.connectionString"
                ) from e
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
        url = f"https://{cfg.storage_account_name}.queue.core.windows.net/"
        return QueueClient(url, cfg.queue_name, credential=credential), credential

    async def run(self) -> None:
        retry = Retry(None)
        while True:
            try:
                client, credential = await self._client()
            except TransientError as e:
                self.log.error("%s: %s; retrying", self.where, e)
                await retry.wait()
                continue
            try:
                async with client:
                    await self._poll(client, retry)
            except ClientAuthenticationError as e:
                raise ConfigError(f"the storage account refused: {e.message}", self.path) from e
            except ResourceNotFoundError:
                self.log.error(
                    "%s: queue %s does not exist (yet); retrying", self.where, self.cfg.queue_name
                )
            except _CALL_ERRORS as e:
                self.log.warning("%s: %s; retrying", self.where, type(e).__name__)
            finally:
                self.live = False
                if credential is not None:
                    with contextlib.suppress(Exception):
                        await credential.close()
            await retry.wait()

    async def _poll(self, client: QueueClient, retry: Retry) -> None:
        wait = (
            DEFAULT_WAIT_SECONDS
            if self.cfg.wait_time_in_seconds is None
            else self.cfg.wait_time_in_seconds
        )
        await client.get_queue_properties()  # fails here when the queue is missing
        self.live = True
        retry.reset()
        self.log.info("%s: receiving from queue %s", self.where, self.cfg.queue_name)
        while True:
            messages = [
                m
                async for m in client.receive_messages(
                    messages_per_page=MESSAGES_PER_RECEIVE,
                    max_messages=MESSAGES_PER_RECEIVE,
                    visibility_timeout=VISIBILITY_TIMEOUT_SECONDS,
                )
            ]
            failed = 0
            for m in messages:
                if not await self._handle(client, m):
                    failed += 1
            if failed:
                self.log.error(
                    "%s: %d message(s) not stored on the bus (%s); left in the queue",
                    self.where,
                    failed,
                    self.deliver.last_error,
                )
            else:
                self._bus_backoff.reset()
            if not messages:
                await asyncio.sleep(wait)

    async def _handle(self, client: QueueClient, m: Any) -> bool:
        """One message: publish and delete, or leave it; False when the bus refused it."""
        what = f"message {m.id}"
        text = m.content if isinstance(m.content, str) else str(m.content or "")
        try:
            payload = _base64(text) if self.cfg.decode_message else text.encode()
            body = body_of(payload, self.cfg.json_body)
        except ValueError as e:
            if self.cfg.dlq:
                self.deliver.invalid(what, f"{e}; left in the queue (dlq: true)")
            else:
                self.deliver.invalid(what, f"{e}; deleted (dlq: false)")
                await self._delete(client, m)
            return True
        data = {
            "body": body,
            "messageID": m.id,
            "insertionTime": go_rfc3339(m.inserted_on),
            "metadata": dict(self.cfg.metadata),
        }
        account = self.cfg.storage_account_name or client.account_name or ""
        event_id = event_id_from("azureQueueStorage", account, self.cfg.queue_name, m.id)
        if await self.deliver.deliver(data, event_id, what) is Outcome.FAILED:
            # Visible again after a short pause rather than after the 120 s.
            pause = max(1, round(self._bus_backoff.current))
            await self._bus_backoff.wait()
            with contextlib.suppress(*_CALL_ERRORS):
                await client.update_message(m, pop_receipt=m.pop_receipt, visibility_timeout=pause)
            return False
        await self._delete(client, m)
        return True

    async def _delete(self, client: QueueClient, m: Any) -> None:
        try:
            await client.delete_message(m.id, m.pop_receipt)
        except _CALL_ERRORS as e:
            # It comes back after the visibility timeout and is deduplicated by the bus.
            self.log.warning("%s: message %s handled but not deleted: %s", self.where, m.id, e)


class AzureQueueStorageSource(PerEventSource[AzureQueueStorageConfig]):
    """Azure storage queues as events: ``spec.azureQueueStorage.<eventName>``.

    Fields (Argo's ``AzureQueueStorageEventSource``): ``connectionString`` (a Secret
    key) or ``storageAccountName`` (Azure AD default credentials), ``queueName``,
    ``jsonBody``, ``decodeMessage`` (the text is base64: URL-safe, then standard),
    ``dlq``, ``metadata``, ``filter.expression``, ``waitTimeInSeconds`` (pause after an
    empty receive; default 3).

    Event data (Argo's ``AzureQueueStorageEventData``): ``{"body", "messageID",
    "insertionTime", "metadata"}``; ``body`` is the parsed JSON with ``jsonBody``, else
    the text (Argo: base64 of the bytes).

    Acknowledgement: a message is deleted only after the PubAck (or when the filter drops
    it). A refused publish leaves it in the queue, visible again after a short pause. A
    message that cannot become an event (not base64 under ``decodeMessage``, not JSON
    under ``jsonBody``) is deleted, or left in the queue with ``dlq: true`` (counted as
    failed either way), as in Argo.
    """

    type_name: ClassVar[str] = "azureQueueStorage"
    config_model: ClassVar[type[SpecModel]] = AzureQueueStorageConfig

    def worker(self, event_name: str, cfg: AzureQueueStorageConfig) -> _Poller:
        return _Poller(self, event_name, cfg)
