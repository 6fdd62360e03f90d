"""AWS SQS event source (``spec.sqs``): long-polls a queue and publishes one event per message.

Argo's ``SQSEventSource`` semantics, made at-least-once end to end: a message is deleted
from the queue only after the bus stored its event, so neither a bus outage nor a crash
loses a message, and the event id is derived from the SQS message id, so the redelivery
that at-least-once implies never becomes a second event on the bus.

The AWS SDK (aiobotocore, async) is imported only here (STYLE §2). Called by the runtime
through :class:`SQSSource`, registered as ``sqs`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import orjson
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, field_validator, model_validator

from app.kernel.argo import SecretKeySelector
from app.kernel.errors import ConfigError, TransientError
from app.kernel.events import event_id_from
from app.kernel.spec import SpecModel
from app.languages.source_filter import SourceFilter, event_source_filter
from eventsources.aws import role_session_name, session_for
from eventsources.base import EventSourcePlugin, SourceContext
from eventsources.common import EventSourceFilter

#: Argo polls with a 3 s long poll when ``waitTimeSeconds`` is 0 (or absent).
ARGO_DEFAULT_WAIT_SECONDS = 3
#: Argo hard-codes a 120 s visibility timeout on every receive.
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 120
#: SQS limits: long poll ≤ 20 s, visibility ≤ 12 h, ≤ 10 messages per receive/batch call.
MAX_WAIT_SECONDS = 20
MAX_VISIBILITY_TIMEOUT_SECONDS = 43_200
MAX_BATCH = 10
MAX_CONCURRENCY = 64

#: Back-off after a batch whose publishes failed (bus down): short, so the source resumes
#: quickly, but enough not to pull every message of the queue into flight during an outage.
PUBLISH_BACKOFF_MIN_SECONDS = 0.2
PUBLISH_BACKOFF_MAX_SECONDS = 3.0
#: Back-off after a failed SQS call (receive, GetQueueUrl); Argo sleeps a fixed 2 s.
SQS_BACKOFF_MIN_SECONDS = 0.5
SQS_BACKOFF_MAX_SECONDS = 10.0
#: Attempts for a DeleteMessageBatch whose entries fail for a reason that is not ours.
DELETE_ATTEMPTS = 3
#: On shutdown, how long deletes of already published messages may still run.
DRAIN_SECONDS = 5.0

_NO_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})

_SQSCallError = (ClientError, BotoCoreError, OSError, TimeoutError)


class SQSConfig(SpecModel):
    """One SQS event (Argo ``SQSEventSource``) plus three throughput knobs of our own."""

    access_key: SecretKeySelector | None = Field(
        None, description="Secret key holding the AWS access key id"
    )
    secret_key: SecretKeySelector | None = Field(
        None, description="Secret key holding the AWS secret access key"
    )
    session_token: SecretKeySelector | None = Field(
        None, description="Secret key holding an STS session token (temporary credentials)"
    )
    region: str = Field(description="AWS region of the queue")
    queue: str = Field(description="queue name; resolved to its URL with GetQueueUrl")
    queue_account_id: str = Field("", description="account id owning the queue (cross-account)")
    wait_time_seconds: int = Field(
        0, ge=0, le=MAX_WAIT_SECONDS, description="long-poll duration; 0 means 3 as in Argo"
    )
    role_arn: str = Field("", alias="roleARN", description="role to assume through STS")
    json_body: bool = Field(False, description="parse every body as JSON")
    metadata: dict[str, str] = Field(default_factory=dict)
    dlq: bool = Field(
        False, description="leave undecodable messages for the queue's redrive policy"
    )
    filter: EventSourceFilter | None = None
    endpoint: str = Field("", description="SQS (and STS) endpoint URL instead of AWS's")
    visibility_timeout: int = Field(
        DEFAULT_VISIBILITY_TIMEOUT_SECONDS,
        ge=1,
        le=MAX_VISIBILITY_TIMEOUT_SECONDS,
        description="seconds a received message stays hidden while it is published",
    )
    max_messages: int = Field(MAX_BATCH, ge=1, le=MAX_BATCH, description="messages per receive")
    concurrency: int = Field(1, ge=1, le=MAX_CONCURRENCY, description="parallel receive loops")

    @field_validator("region", "queue")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http:// or https:// URL, got {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> SQSConfig:
        # Argo reads both keys whenever either is given; a lone key is a typo, not a choice.
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("accessKey and secretKey must be given together")
        if self.session_token is not None and self.access_key is None:
            raise ValueError("sessionToken needs accessKey and secretKey")
        return self

    @property
    def effective_wait_seconds(self) -> int:
        """The long poll actually used: Argo turns 0 into 3 s."""
        return self.wait_time_seconds or ARGO_DEFAULT_WAIT_SECONDS

    @property
    def has_static_keys(self) -> bool:
        return self.access_key is not None


class _Outcome(Enum):
    """What happens to one received message once it has been handled."""

    DELETE = "delete"  # published, filtered out, or undecodable without dlq: remove it
    KEEP = "keep"  # not published: it reappears after the visibility timeout
    RELEASE = "release"  # undecodable with dlq: visible again now, so redrive happens soon


@dataclass(frozen=True, slots=True)
class _Received:
    """One received message: batch-local entry id, SQS message id, receipt handle."""

    entry_id: str
    message_id: str
    receipt: str
    raw: Mapping[str, Any]


def _error_code(e: BaseException) -> str:
    if isinstance(e, ClientError):
        return str(e.response.get("Error", {}).get("Code", ""))
    return ""


def _jsonable_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Message attributes as JSON: binary values base64-encoded, as Go's JSON does."""
    out: dict[str, Any] = {}
    for name, value in attrs.items():
        item: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(v, bytes | bytearray):
                item[k] = base64.b64encode(v).decode()
            elif isinstance(v, list):
                item[k] = [
                    base64.b64encode(x).decode() if isinstance(x, bytes | bytearray) else x
                    for x in v
                ]
            else:
                item[k] = v
        out[name] = item
    return out


class _QueueConsumer:
    """Everything about one event name: its client, queue URL and receive loops."""

    def __init__(
        self,
        plugin: SQSSource,
        event_name: str,
        cfg: SQSConfig,
        source_filter: SourceFilter | None = None,
    ) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.log = plugin.ctx.log
        self.event_name = event_name
        self.cfg = cfg
        self.filter = source_filter
        self.where = f"sqs {plugin.source_name}/{event_name}"
        self.queue_url = ""
        self.fifo = cfg.queue.endswith(".fifo")
        self.receiving = False
        self._client: Any = None
        self._client_cm: Any = None
        self._client_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        # Bounds deletes still running behind the receive loops, so a slow SQS slows
        # receiving down instead of piling up tasks.
        self._background_slots = asyncio.Semaphore(4 * cfg.concurrency)

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Resolve the queue, then run ``concurrency`` receive loops until cancelled."""
        try:
            await self._start()
            loops = [
                asyncio.create_task(self._receive_loop(), name=f"{self.where} loop {i}")
                for i in range(self.cfg.concurrency)
            ]
            try:
                await _first_failure(loops)
            finally:
                for t in loops:
                    t.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
        finally:
            await self._drain()
            if self._client_cm is not None:
                with contextlib.suppress(Exception):
                    await self._client_cm.__aexit__(None, None, None)

    async def _start(self) -> None:
        """Build the client and resolve the queue URL, retrying what may heal by itself.

        A ConfigError (an unreadable secret) stops the source; a transient failure
        (secret store unavailable, queue not created yet, network) is retried with
        back-off, so a source may start before its queue exists.
        """
        backoff = SQS_BACKOFF_MIN_SECONDS
        while True:
            try:
                await self._open_client()
                break
            except TransientError as e:
                self.log.error(
                    "%s: cannot build the SQS client: %s; retrying in %.1fs",
                    self.where,
                    e,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, SQS_BACKOFF_MAX_SECONDS)
        await self._resolve_queue_url()

    async def _drain(self) -> None:
        """Let deletes of already published messages finish (briefly) before closing."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=DRAIN_SECONDS)

    # -- client and credentials ----------------------------------------------------------
    async def _secret(self, selector: SecretKeySelector, field: str) -> str | None:
        path = f"spec.sqs.{self.event_name}.{field}"
        try:
            value = await self.ctx.secrets.get(self.plugin.namespace, selector.name, selector.key)
        except (ConfigError, TransientError):
            if selector.optional:
                return None
            raise
        except Exception as e:
            if selector.optional:
                return None
            raise ConfigError(
                f"cannot read key {selector.key!r} of secret {selector.name!r}: {type(e).__name__}",
                path=path,
            ) from e
        # Secrets made with `echo` end in a newline that AWS would reject as a bad key.
        return value.strip()

    async def _static_keys(self) -> dict[str, str]:
        """``aws_access_key_id`` etc. from the configured secrets; empty = default chain."""
        cfg = self.cfg
        if cfg.access_key is None or cfg.secret_key is None:
            return {}
        access = await self._secret(cfg.access_key, "accessKey")
        secret = await self._secret(cfg.secret_key, "secretKey")
        if not access or not secret:
            return {}
        keys = {"aws_access_key_id": access, "aws_secret_access_key": secret}
        if cfg.session_token is not None:
            token = await self._secret(cfg.session_token, "sessionToken")
            if token:
                keys["aws_session_token"] = token
        return keys

    def _client_config(self) -> AioConfig:
        return AioConfig(
            region_name=self.cfg.region,
            # Load the service models in a thread: create_client would read them from
            # disk on the event loop otherwise.
            warm_up_loader_caches=True,
            max_pool_connections=max(10, 4 * self.cfg.concurrency),
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            # A long poll answers after up to waitTimeSeconds; never time it out first.
            read_timeout=self.cfg.effective_wait_seconds + 15,
        )

    async def _open_client(self) -> None:
        """(Re)build the SQS client from the secrets, the role or the default chain."""
        cfg = self.cfg
        session, keys = await session_for(
            await self._static_keys(),
            role_arn=cfg.role_arn,
            region=cfg.region,
            endpoint=cfg.endpoint,
            session_name=role_session_name(self.plugin.source_name, self.event_name),
            role_path=f"spec.sqs.{self.event_name}.roleARN",
        )
        cm = session.create_client(
            "sqs",
            region_name=cfg.region,
            endpoint_url=cfg.endpoint or None,
            config=self._client_config(),
            **keys,
        )
        client = await cm.__aenter__()
        old_cm, self._client_cm, self._client = self._client_cm, cm, client
        if old_cm is not None:
            with contextlib.suppress(Exception):
                await old_cm.__aexit__(None, None, None)

    async def _reopen_after_expiry(self, seen: Any) -> None:
        """Temporary credentials from a secret expired: read the secret again (as Argo)."""
        async with self._client_lock:
            if self._client is not seen:
                return  # another loop already did it
            self.log.info("%s: credentials expired, reading them again", self.where)
            try:
                await self._open_client()
            except (ConfigError, TransientError) as e:
                # Keep the old client: the next failure tries again, and the source
                # stays up for when the Secret is fixed.
                self.log.error("%s: cannot read the credentials again: %s", self.where, e)

    async def _resolve_queue_url(self) -> None:
        """GetQueueUrl, retried with back-off: a queue may be created after the source."""
        kwargs: dict[str, str] = {"QueueName": self.cfg.queue}
        if self.cfg.queue_account_id:
            kwargs["QueueOwnerAWSAccountId"] = self.cfg.queue_account_id
        backoff = SQS_BACKOFF_MIN_SECONDS
        while True:
            client = self._client
            try:
                resp = await client.get_queue_url(**kwargs)
            except _SQSCallError as e:
                code = _error_code(e)
                if code in _NO_QUEUE_CODES:
                    self.log.error(
                        "%s: queue %r does not exist; retrying in %.1fs",
                        self.where,
                        self.cfg.queue,
                        backoff,
                    )
                else:
                    self.log.error(
                        "%s: cannot resolve the URL of queue %r: %s; retrying in %.1fs",
                        self.where,
                        self.cfg.queue,
                        e,
                        backoff,
                    )
                    if code in _EXPIRED_CODES and self.cfg.has_static_keys:
                        await self._reopen_after_expiry(client)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, SQS_BACKOFF_MAX_SECONDS)
                continue
            self.queue_url = str(resp["QueueUrl"])
            self.fifo = self.queue_url.endswith(".fifo")
            self.log.info("%s: listening on %s", self.where, self.queue_url)
            return

    # -- receive ------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        cfg = self.cfg
        sqs_backoff = SQS_BACKOFF_MIN_SECONDS
        publish_backoff = PUBLISH_BACKOFF_MIN_SECONDS
        while True:
            client = self._client
            self.receiving = True
            receive = asyncio.ensure_future(
                client.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=cfg.max_messages,
                    WaitTimeSeconds=cfg.effective_wait_seconds,
                    VisibilityTimeout=cfg.visibility_timeout,
                    MessageAttributeNames=["All"],
                )
            )
            try:
                resp = await asyncio.shield(receive)
            except asyncio.CancelledError:
                await self._release_in_flight(receive)
                raise
            except _SQSCallError as e:
                self.log.error(
                    "%s: receive failed: %s; retrying in %.1fs", self.where, e, sqs_backoff
                )
                if _error_code(e) in _EXPIRED_CODES and cfg.has_static_keys:
                    await self._reopen_after_expiry(client)
                await asyncio.sleep(sqs_backoff)
                sqs_backoff = min(sqs_backoff * 2, SQS_BACKOFF_MAX_SECONDS)
                continue
            sqs_backoff = SQS_BACKOFF_MIN_SECONDS
            messages = resp.get("Messages") or []
            if not messages:
                continue
            failures = await self._process_batch(messages)
            if not failures:
                publish_backoff = PUBLISH_BACKOFF_MIN_SECONDS
                continue
            # Bus unavailable: pause before taking more messages into flight; those not
            # published come back after the visibility timeout.
            self.log.warning(
                "%s: %d of %d messages not published (%s); they stay in the queue and come "
                "back after the visibility timeout; pausing %.1fs. Message ids: %s",
                self.where,
                len(failures),
                len(messages),
                failures[0][1],
                publish_backoff,
                ", ".join(mid for mid, _ in failures),
            )
            await asyncio.sleep(publish_backoff)
            publish_backoff = min(publish_backoff * 2, PUBLISH_BACKOFF_MAX_SECONDS)

    async def _release_in_flight(self, receive: asyncio.Future[Any]) -> None:
        """Shutdown during a long poll: let it end, and make what it got visible again.

        SQS still hands out messages to a poll whose client went away; dropping the
        connection would hide them for the whole visibility timeout (120 s by default)
        on every restart. Waiting at most ``waitTimeSeconds`` avoids that.
        """
        try:
            resp = await asyncio.wait_for(receive, self.cfg.effective_wait_seconds + 2)
        except (asyncio.CancelledError, *_SQSCallError):
            receive.cancel()
            return
        batch = [
            _Received(str(i), str(m.get("MessageId", "")), str(m["ReceiptHandle"]), m)
            for i, m in enumerate(resp.get("Messages") or [])
        ]
        if batch:
            self.log.info(
                "%s: stopping; %d just received messages made visible again",
                self.where,
                len(batch),
            )
            await self._change_visibility(batch, 0)

    async def _process_batch(self, messages: list[Mapping[str, Any]]) -> list[tuple[str, str]]:
        """Publish a received batch, then delete what was published.

        Returns the messages whose publish failed, as (message id, reason).
        """
        batch = [
            _Received(str(i), str(m.get("MessageId", "")), str(m["ReceiptHandle"]), m)
            for i, m in enumerate(messages)
        ]
        # Entries whose handling is not finished: the visibility keeper extends these.
        pending: dict[str, _Received] = {r.entry_id: r for r in batch}
        keeper = asyncio.create_task(self._keep_invisible(pending))
        outcomes: dict[str, _Outcome] = {}
        failures: list[tuple[str, str]] = []
        try:
            if self.fifo:
                # Order within a message group is the point of a FIFO queue: publish one
                # at a time, and after a failure publish nothing more from this batch, so
                # no later message overtakes the one that will come back.
                for r in batch:
                    outcome = await self._handle(r, failures)
                    outcomes[r.entry_id] = outcome
                    pending.pop(r.entry_id, None)
                    if outcome is _Outcome.KEEP:
                        pending.clear()
                        break
            else:

                async def one(r: _Received) -> None:
                    outcomes[r.entry_id] = await self._handle(r, failures)
                    pending.pop(r.entry_id, None)

                await asyncio.gather(*(one(r) for r in batch))
        except asyncio.CancelledError:
            await self._settle_on_shutdown(batch, outcomes)
            raise
        finally:
            pending.clear()
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        to_delete = [r for r in batch if outcomes.get(r.entry_id) is _Outcome.DELETE]
        to_release = [r for r in batch if outcomes.get(r.entry_id) is _Outcome.RELEASE]
        if to_release:
            await self._change_visibility(to_release, 0)
        if to_delete:
            await self._background_slots.acquire()
            task = asyncio.create_task(self._delete(to_delete))
            self._background.add(task)
            task.add_done_callback(self._background_done)
        return failures

    async def _settle_on_shutdown(
        self, batch: list[_Received], outcomes: Mapping[str, _Outcome]
    ) -> None:
        """Stopping mid-batch: delete what was published, make the rest visible again.

        The rest may have reached the bus already; the redelivery carries the same event
        id, so the bus drops it. Without this, a restart would hide them for the whole
        visibility timeout.
        """
        done = [r for r in batch if outcomes.get(r.entry_id) is _Outcome.DELETE]
        rest = [r for r in batch if outcomes.get(r.entry_id) is not _Outcome.DELETE]
        with contextlib.suppress(Exception):
            if done:
                await self._delete(done)
            if rest:
                await self._change_visibility(rest, 0)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        self._background_slots.release()

    async def _handle(self, r: _Received, failures: list[tuple[str, str]]) -> _Outcome:
        """Turn one message into an event and publish it; say what to do with it.

        A failed publish is appended to ``failures`` (message id, reason), so an outage
        costs one log line per batch rather than one per message.
        """
        cfg = self.cfg
        source, event_name = self.plugin.source_name, self.event_name
        text = str(r.raw.get("Body", ""))
        body: Any = text
        if cfg.json_body:
            try:
                body = orjson.loads(text)
            except orjson.JSONDecodeError as e:
                self.ctx.metrics.event_send_failed(source, event_name)
                if cfg.dlq:
                    self.log.warning(
                        "%s: message %s has an invalid JSON body (%s); left for the "
                        "queue's redrive policy (dlq: true)",
                        self.where,
                        r.message_id,
                        e,
                    )
                    return _Outcome.RELEASE
                self.log.error(
                    "%s: message %s has an invalid JSON body (%s); deleted (dlq: false)",
                    self.where,
                    r.message_id,
                    e,
                )
                return _Outcome.DELETE
        data = {
            "messageId": r.message_id,
            "messageAttributes": _jsonable_attributes(r.raw.get("MessageAttributes") or {}),
            "body": body,
            "metadata": dict(cfg.metadata),
        }
        if self.filter is not None:
            passed, reason = self.filter.check(data)
            if not passed:
                # Consumed on purpose: left in the queue it would come back forever.
                self.ctx.metrics.event_filtered(source, event_name)
                self.log.debug(
                    "%s: message %s filtered out, deleted without publishing (%r: %s)",
                    self.where,
                    r.message_id,
                    self.filter.expression.source,
                    reason,
                )
                return _Outcome.DELETE
        event = self.plugin.make_event(
            event_name, data, event_id_from("sqs", self.queue_url, r.message_id)
        )
        trace_attr = (r.raw.get("MessageAttributes") or {}).get("traceparent") or {}
        event.traceparent = str(trace_attr.get("StringValue") or "")  # continued by publish
        try:
            await self.ctx.publish(event)
        except TransientError as e:
            self.ctx.metrics.event_send_failed(source, event_name)
            failures.append((r.message_id, str(e)))
            return _Outcome.KEEP
        except Exception as e:
            self.ctx.metrics.event_send_failed(source, event_name)
            self.log.exception(
                "%s: message %s: publish raised unexpectedly", self.where, r.message_id
            )
            failures.append((r.message_id, f"{type(e).__name__}: {e}"))
            return _Outcome.KEEP
        self.ctx.metrics.event_sent(source, event_name)
        return _Outcome.DELETE

    # -- visibility and deletes -----------------------------------------------------------
    async def _keep_invisible(self, pending: Mapping[str, _Received]) -> None:
        """While publishes are slow, push the visibility timeout out every half of it.

        A bus that takes longer than the timeout would otherwise let SQS hand the same
        messages to another receiver, which publishes them again (deduplicated, but
        wasted work that grows into a redelivery storm exactly when the bus is slow).
        """
        vt = self.cfg.visibility_timeout
        started = time.monotonic()
        while True:
            await asyncio.sleep(vt / 2)
            still = list(pending.values())
            if not still:
                return
            self.log.info(
                "%s: publishing %d message(s) takes %.1fs; extending their visibility by %ds",
                self.where,
                len(still),
                time.monotonic() - started,
                vt,
            )
            await self._change_visibility(still, vt)

    async def _change_visibility(self, entries: Iterable[_Received], seconds: int) -> None:
        items = list(entries)
        try:
            resp = await self._client.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": r.entry_id, "ReceiptHandle": r.receipt, "VisibilityTimeout": seconds}
                    for r in items
                ],
            )
        except _SQSCallError as e:
            self.log.warning(
                "%s: cannot change the visibility of %d messages to %ds: %s",
                self.where,
                len(items),
                seconds,
                e,
            )
            return
        by_id = {r.entry_id: r for r in items}
        for failed in resp.get("Failed") or []:
            r = by_id.get(str(failed.get("Id")))
            self.log.warning(
                "%s: cannot change the visibility of message %s to %ds: %s %s",
                self.where,
                r.message_id if r else failed.get("Id"),
                seconds,
                failed.get("Code"),
                failed.get("Message"),
            )

    async def _delete(self, entries: list[_Received]) -> None:
        """DeleteMessageBatch, retrying entries that failed for a reason that is not ours.

        A delete that never succeeds is not a lost or doubled event: the message comes
        back after the visibility timeout, is published again with the same event id,
        and the bus's dedup window drops the copy.
        """
        todo = entries
        for attempt in range(DELETE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(0.2 * 2**attempt)
            try:
                resp = await self._client.delete_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": r.entry_id, "ReceiptHandle": r.receipt} for r in todo],
                )
            except _SQSCallError as e:
                self.log.warning(
                    "%s: deleting %d published messages failed: %s", self.where, len(todo), e
                )
                continue
            by_id = {r.entry_id: r for r in todo}
            retry: list[_Received] = []
            for failed in resp.get("Failed") or []:
                r = by_id.get(str(failed.get("Id")))
                if r is None:
                    continue
                if failed.get("SenderFault"):
                    # E.g. the receipt handle went stale because the message was received
                    # again after its visibility timeout; that receiver deletes it.
                    self.log.warning(
                        "%s: message %s was published but cannot be deleted: %s %s",
                        self.where,
                        r.message_id,
                        failed.get("Code"),
                        failed.get("Message"),
                    )
                else:
                    retry.append(r)
            if not retry:
                return
            todo = retry
        self.log.error(
            "%s: gave up deleting %d published messages (%s); they will be received again "
            "and deduplicated by the bus",
            self.where,
            len(todo),
            ", ".join(r.message_id for r in todo),
        )


def _compile_filter(cfg: SQSConfig) -> SourceFilter | None:
    """The event's compiled ``filter.expression``; ``ValueError`` when it is invalid."""
    return None if cfg.filter is None else event_source_filter(cfg.filter.expression)


async def _first_failure(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for every task; the first one that fails ends the wait with its exception."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]


class SQSSource(EventSourcePlugin[SQSConfig]):
    """AWS SQS queues as events: ``spec.sqs.<eventName>``, one queue per event name.

    Fields (Argo's ``SQSEventSource``, camelCase):

    * ``region`` (required), ``queue`` (required: the queue *name*, resolved to its URL
      with GetQueueUrl), ``queueAccountId`` (owner account of a cross-account queue),
      ``endpoint`` (an SQS-compatible server instead of AWS; STS calls for ``roleARN``
      go there too).
    * ``accessKey`` / ``secretKey`` / ``sessionToken``: Secret keys in the EventSource's
      namespace; without them, the standard AWS credential chain (environment, files,
      IRSA/web identity, instance role). ``roleARN``: assume that role through STS (with
      the configured keys as the source credentials when given, else the chain), with
      automatic refresh.
    * ``waitTimeSeconds`` (0-20): long-poll duration; 0 means 3 s, as in Argo.
    * ``jsonBody``: parse each body as JSON. ``dlq``: see failures below.
      ``metadata``: copied into every event. ``filter.expression``: an expr-lang
      expression over the event data (``body.priority > 2``), compiled at validation;
      a message for which it is not true is deleted without being published.
    * Beyond Argo: ``visibilityTimeout`` (1-43200 s, default 120 — Argo hard-codes 120),
      ``maxMessages`` (1-10 per receive, default 10), ``concurrency`` (parallel receive
      loops per event name, 1-64, default 1).

    Event data: ``{"messageId", "messageAttributes", "body", "metadata"}``. ``body`` is
    the parsed JSON with ``jsonBody: true``, else the text. Differences from Argo, on
    purpose: Argo's non-JSON body is the text base64-encoded (a Go ``[]byte``); ours is
    the text itself. ``metadata`` is always present (``{}`` when empty) and
    ``messageAttributes`` carries the SDK's keys (``DataType``, ``StringValue``,
    ``BinaryValue`` base64) without Argo's ``null`` entries, so ``dataKey`` paths such as
    ``messageAttributes.team.StringValue`` keep working. The event id is derived from
    (queue URL, message id): a redelivered message is the same event, and the bus's dedup
    window stores it once.

    Ack and failure semantics (at-least-once):

    * A message is deleted only after ``ctx.publish`` returned (the bus PubAck), in
      DeleteMessageBatch calls; entries that fail for a server reason are retried, a
      stale receipt handle is logged (the message comes back and is deduplicated).
    * Publish failure (bus down or slow): the message is not deleted and reappears after
      the visibility timeout; the loop logs it, counts it as failed, backs off (0.2-3 s)
      and keeps consuming. With a redrive policy, every such delivery counts against
      ``maxReceiveCount``: size it for the bus outages you want to ride out.
    * A publish slower than half the visibility timeout extends the message's visibility
      (ChangeMessageVisibilityBatch, every half timeout), so a slow bus does not make SQS
      hand the same messages to another receiver.
    * Filtered out (``filter.expression`` not true): the message is deleted (it was
      consumed on purpose; left in the queue it would come back after every visibility
      timeout), counted as filtered, never as sent, and logged at debug level.
    * Invalid JSON with ``jsonBody: true``: with ``dlq: true`` the message is not deleted
      and its visibility is set to 0 so the queue's redrive policy moves it to the DLQ
      promptly; with ``dlq: false`` it is deleted. Either way it is counted as failed
      and logged with its message id, and the next messages keep flowing.
    * FIFO queues (``.fifo``): messages of a batch are published one by one in order; after
      a failure the rest of the batch is left in the queue so nothing overtakes it.
    * Shutdown (cancellation): the long poll in flight is allowed to finish (at most
      ``waitTimeSeconds``) and what it returned is made visible again at once; a batch
      being published has its published messages deleted and the rest made visible, so
      a restart does not hide messages for the visibility timeout.
    * SQS call failures (receive, GetQueueUrl — e.g. the queue does not exist yet) are
      logged and retried with back-off (0.5-10 s); expired temporary credentials from a
      Secret are read again, as Argo does.

    ``ready()`` is true once every event's queue URL is resolved and its first receive is
    in flight.
    """

    type_name: ClassVar[str] = "sqs"
    config_model: ClassVar[type[SpecModel]] = SQSConfig

    def __init__(
        self,
        source_name: str,
        namespace: str,
        events: Mapping[str, SQSConfig],
        ctx: SourceContext,
    ) -> None:
        super().__init__(source_name, namespace, events, ctx)
        self._consumers: list[_QueueConsumer] = []

    @classmethod
    def check_config(cls, source_name: str, events: Mapping[str, SQSConfig]) -> list[str]:
        """Compile every ``filter.expression``, so a bad one fails validation with its path."""
        lines: list[str] = []
        for name, cfg in events.items():
            try:
                _compile_filter(cfg)
            except ValueError as e:
                lines.append(f"spec.sqs.{name}.filter.expression: {e}")
        return lines

    async def run(self) -> None:
        consumers: list[_QueueConsumer] = []
        for name, cfg in self.events.items():
            try:
                source_filter = _compile_filter(cfg)
            except ValueError as e:
                raise ConfigError(str(e), path=f"spec.sqs.{name}.filter.expression") from e
            consumers.append(_QueueConsumer(self, name, cfg, source_filter))
        self._consumers = consumers
        tasks = [asyncio.create_task(c.run(), name=c.where) for c in self._consumers]
        try:
            await _first_failure(tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def ready(self) -> bool:
        return bool(self._consumers) and all(c.receiving for c in self._consumers)
