"""Redis Streams event source (``spec.redisStream``): one event per stream entry.

Argo's ``RedisStreamEventSource``, made at-least-once end to end: entries are read
through a consumer group and XACKed only after the bus's PubAck. An entry the bus
refused stays in the group's pending list and is read again; pending entries left by a
crashed reader are read again on start, and entries pending for another consumer longer
than :data:`CLAIM_MIN_IDLE_SECONDS` are taken over with XAUTOCLAIM. The event id is
derived from (server, db, stream, entry id), so a redelivered entry is stored once.

redis-py is imported here and in :mod:`eventsources.redis` (whose connection fields and
client this module shares). Registered as ``redisStream`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import redis.asyncio as aioredis
import redis.exceptions
from pydantic import Field, field_validator

from app.kernel.errors import ConfigError
from app.kernel.events import event_id_from
from app.kernel.spec import SpecModel
from eventsources.brokers import (
    BusBackoff,
    Outcome,
    PerEventSource,
    Retry,
    go_string,
)
from eventsources.common import EventSourceFilter
from eventsources.redis import RedisConnection, RedisWorker

#: Argo's defaults: the consumer group, the consumer name, the entries per stream and read.
DEFAULT_CONSUMER_GROUP = "argo-events-cg"
CONSUMER_NAME = "argo-events-worker"
DEFAULT_MAX_MSG_COUNT_PER_READ = 10
#: How long one XREADGROUP blocks for new entries (Argo: 2 s).
BLOCK_MILLISECONDS = 2000
#: Entries pending for another consumer this long are taken over (that reader died).
CLAIM_MIN_IDLE_SECONDS = 60.0
#: How often pending entries of other consumers are looked for.
CLAIM_INTERVAL_SECONDS = 30.0


class RedisStreamConfig(RedisConnection):
    """One Redis Streams event (Argo ``RedisStreamEventSource``)."""

    streams: list[str] = Field(description="streams read through one consumer group")
    max_msg_count_per_read: int = Field(0, ge=0, description="entries per stream and read")
    consumer_group: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)
    filter: EventSourceFilter | None = None

    @field_validator("streams")
    @classmethod
    def _some_streams(cls, v: list[str]) -> list[str]:
        if not v or any(not s for s in v):
            raise ValueError("must list at least one stream, none empty")
        if len(set(v)) != len(v):
            raise ValueError("lists a stream twice")
        return v

    @property
    def group(self) -> str:
        return self.consumer_group or DEFAULT_CONSUMER_GROUP

    @property
    def count(self) -> int:
        return self.max_msg_count_per_read or DEFAULT_MAX_MSG_COUNT_PER_READ


class _GroupReader(RedisWorker):
    """One event name: its consumer group on every stream, read and acked."""

    type_key: ClassVar[str] = "redisStream"
    lost_note: ClassVar[str] = "reconnecting (unacked entries stay pending and are read again)"

    def __init__(self, plugin: RedisStreamSource, event_name: str, cfg: RedisStreamConfig) -> None:
        super().__init__(plugin, event_name, cfg)
        self.cfg: RedisStreamConfig = cfg
        self.claim_min_idle_seconds = CLAIM_MIN_IDLE_SECONDS
        self.claim_interval_seconds = CLAIM_INTERVAL_SECONDS
        self._bus_backoff = BusBackoff()

    async def _ensure_groups(self, client: aioredis.Redis, start: str) -> None:
        """Create the group on every stream (``start``: ``$`` as Argo, ``0`` after the
        group vanished, e.g. a server restarted without persistence)."""
        for stream in self.cfg.streams:
            try:
                await client.xgroup_create(stream, self.cfg.group, id=start, mkstream=True)
            except redis.exceptions.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise ConfigError(
                        f"cannot create consumer group {self.cfg.group!r} on stream "
                        f"{stream!r}: {e}",
                        self.path,
                    ) from e

    async def _serve(self, client: aioredis.Redis, retry: Retry) -> None:
        await self._ensure_groups(client, "$")
        self.live = True
        retry.reset()
        self.log.info(
            "%s: reading %s as group %s", self.where, ", ".join(self.cfg.streams), self.cfg.group
        )
        # Our own pending entries first: read but not acked before a crash or an outage.
        backlog = True
        next_claim = 0.0
        replies: Any
        while True:
            try:
                if time.monotonic() >= next_claim:
                    backlog = await self._claim_stale(client) or backlog
                    next_claim = time.monotonic() + self.claim_interval_seconds
                if backlog:
                    replies = await client.xreadgroup(
                        self.cfg.group,
                        CONSUMER_NAME,
                        dict.fromkeys(self.cfg.streams, "0"),
                        count=self.cfg.count,
                    )
                else:
                    replies = await client.xreadgroup(
                        self.cfg.group,
                        CONSUMER_NAME,
                        dict.fromkeys(self.cfg.streams, ">"),
                        count=self.cfg.count,
                        block=BLOCK_MILLISECONDS,
                    )
            except redis.exceptions.ResponseError as e:
                if "NOGROUP" not in str(e) and "UNBLOCKED" not in str(e):
                    raise
                self.log.warning(
                    "%s: consumer group %s or its stream is gone (deleted, or the server "
                    "restarted without persistence): creating it again (%s)",
                    self.where,
                    self.cfg.group,
                    e,
                )
                await self._ensure_groups(client, "0")
                continue
            entries = sum(len(r[1]) for r in replies or [])
            failed = False
            for stream, items in replies or []:
                if not await self._handle(client, go_string(stream), items):
                    failed = True
            if failed:
                backlog = True
                self.log.error(
                    "%s: entries not stored on the bus (%s); left pending for redelivery",
                    self.where,
                    self.deliver.last_error,
                )
                await self._bus_backoff.wait()
            else:
                self._bus_backoff.reset()
                if backlog and entries == 0:
                    backlog = False

    async def _claim_stale(self, client: aioredis.Redis) -> bool:
        """XAUTOCLAIM entries another consumer read and never acked (it died); they join
        our pending entries. True when any were taken over."""
        min_idle = int(self.claim_min_idle_seconds * 1000)
        taken = 0
        for stream in self.cfg.streams:
            cursor: Any = "0-0"
            for _ in range(100):  # bounded: at most 100 pages per pass
                reply = await client.xautoclaim(
                    stream,
                    self.cfg.group,
                    CONSUMER_NAME,
                    min_idle,
                    cursor,
                    count=self.cfg.count,
                )
                cursor, ids = reply[0], reply[1]
                taken += len(ids)
                if (go_string(cursor) if isinstance(cursor, bytes) else str(cursor)) == "0-0":
                    break
        if taken:
            self.log.info(
                "%s: took over %d entries pending for another consumer", self.where, taken
            )
        return taken > 0

    async def _handle(
        self, client: aioredis.Redis, stream: str, items: list[tuple[Any, Any]]
    ) -> bool:
        """Publish entries in order and XACK those done; False when the bus refused one
        (the rest of the batch is left pending too, so order holds)."""
        done: list[str] = []
        ok = True
        for raw_id, fields in items:
            entry_id = go_string(raw_id)
            if not fields:
                done.append(entry_id)  # deleted from the stream while pending
                continue
            data = {
                "stream": stream,
                "message_id": entry_id,
                "values": {go_string(k): go_string(v) for k, v in fields.items()},
                "metadata": dict(self.cfg.metadata),
            }
            event_id = event_id_from(
                "redisStream", self.cfg.host_address, str(self.cfg.db), stream, entry_id
            )
            outcome = await self.deliver.deliver(data, event_id, f"entry {stream}/{entry_id}")
            if outcome is Outcome.FAILED:
                ok = False
                break
            done.append(entry_id)
        if done:
            await client.xack(stream, self.cfg.group, *done)
        return ok


class RedisStreamSource(PerEventSource[RedisStreamConfig]):
    """Redis streams as events: ``spec.redisStream.<eventName>``.

    Fields (Argo's ``RedisStreamEventSource``): ``hostAddress``, ``db``, ``streams``,
    ``consumerGroup`` (default ``argo-events-cg``), ``maxMsgCountPerRead`` (default 10),
    ``username``, ``password`` (a Secret key), ``tls``, ``metadata``,
    ``filter.expression``. As in Argo, the group is created at ``$`` (entries added
    before the first start are not read) and the consumer is ``argo-events-worker``.

    Event data (Argo's ``RedisStreamEventData``): ``{"stream", "message_id", "values",
    "metadata"}``; ``values`` maps each field to its value as text.

    Acknowledgement: XACK only after the PubAck (or after the filter dropped the entry).
    A refused publish leaves that entry and the rest of its batch pending; the reader
    backs off and reads its pending entries again (``XREADGROUP ... 0``) before new ones,
    so a bus outage or a crash loses nothing and keeps each stream's order. Entries
    pending for another consumer for over a minute are taken over (XAUTOCLAIM). A stream
    that does not exist yet is created empty (MKSTREAM) instead of failing as Argo does;
    a group that vanished (a restarted server without persistence) is created again from
    the stream's start.
    """

    type_name: ClassVar[str] = "redisStream"
    config_model: ClassVar[type[SpecModel]] = RedisStreamConfig

    def worker(self, event_name: str, cfg: RedisStreamConfig) -> _GroupReader:
        return _GroupReader(self, event_name, cfg)
