"""The bus adapter: the only module that imports ``nats``.

It moves messages and nothing else (STYLE §4): one JetStream stream per EventBus,
subjects ``<bus>.<eventSourceName>.<eventName>``, publishes that carry ``Nats-Msg-Id``
and wait for their PubAck, durable pull consumers for sensors with explicit
ack/nak/in-progress. The sensor runner meets it through :class:`BusMessage` and a
handler coroutine; event sources through :meth:`Bus.publish`.

Failure contract: :meth:`Bus.publish` raises :class:`BusUnavailableError` when the event
is not known to be durable (not connected, no PubAck within
``publish_timeout_seconds``, stream error), :class:`StreamFullError` (a subclass) when
the stream is at its ``maxMsgs``/``maxBytes`` limit or the server's or the account's
JetStream storage is used up. Callers must then not ack upstream.

Streams discard *new* messages at their limits unless the EventBus asks for *old*
(``discard: 0``): a full stream refuses the publisher, which can answer 503 or leave
the message upstream, instead of silently dropping its oldest events, which may be
events a sensor has not consumed yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from app.adapters.pull import ConsumerGone, StandingPull
from app.kernel.errors import (
    BusUnavailableError,
    StateConflictError,
    StreamFullError,
    TransientError,
    TriggerfishError,
)
from app.kernel.events import Event
from app.kernel.settings import BusSettings
from app.kernel.subjects import event_subject, subject_token

__all__ = [
    "Bus",
    "BusMessage",
    "StateRecord",
    "StateStore",
    "StoredMessage",
    "StreamLimits",
    "event_subject",
    "subject_token",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Stream limits taken from the EventBus ``streamConfig`` (0 = unlimited).

    ``discard_new``: at a limit, refuse new messages (default) rather than drop the
    oldest (``streamConfig`` ``discard: 0``). ``retention``: 0 limits (every stored
    message counts until ``max_age``), 1 interest (a message goes once every consumer
    has acked it, so the limits count only unconsumed events), 2 work queue.
    """

    max_msgs: int = 1_000_000
    max_bytes: int = 1024 * 1024 * 1024
    max_age_seconds: float = 72 * 3600
    replicas: int = 1
    duplicates_seconds: float = 300.0
    discard_new: bool = True
    retention: int = 0


_RETENTION = {
    0: RetentionPolicy.LIMITS,
    1: RetentionPolicy.INTEREST,
    2: RetentionPolicy.WORK_QUEUE,
}

_STREAM_STORE_FAILED = 10077
"""JetStream's err_code for a store refusal; with discard *new* the description says
"maximum messages exceeded" / "maximum bytes exceeded"."""
_INSUFFICIENT_RESOURCES = 10023
"""The server's JetStream storage is used up (its ``max_file_store``)."""
_ACCOUNT_RESOURCES_EXCEEDED = 10002
"""The account's JetStream storage quota is used up: "resource limits exceeded for
account". As full as a stream at its limit: only consumed or aged-out events make room."""


def _is_stream_full(e: nats.js.errors.APIError) -> bool:
    code = getattr(e, "err_code", None)
    text = str(getattr(e, "description", "") or "")
    if code in (_INSUFFICIENT_RESOURCES, _ACCOUNT_RESOURCES_EXCEEDED):
        return True
    return code == _STREAM_STORE_FAILED and "exceeded" in text


class BusMessage:
    """One delivered bus message, decoded, with the ack verbs the runner needs."""

    __slots__ = ("_msg", "event", "num_delivered", "subject")

    def __init__(self, msg: Msg, event: Event) -> None:
        self._msg = msg
        self.event = event
        self.subject = msg.subject
        md = msg.metadata
        self.num_delivered: int = int(md.num_delivered) if md else 1

    async def ack(self) -> None:
        """Done with this message; it will not be delivered again."""
        await self._msg.ack()

    async def nak(self, delay_seconds: float | None = None) -> None:
        """Redeliver later (after ``delay_seconds`` when given)."""
        await self._msg.nak(delay=delay_seconds)

    async def in_progress(self) -> None:
        """Reset the ack-wait timer while long work (retries) is still going on."""
        await self._msg.in_progress()

    async def term(self) -> None:
        """Never deliver again (a message that is not an event at all)."""
        await self._msg.term()


Handler = Callable[[BusMessage], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One message of a state bucket, in bucket order: ``revision`` is its position,
    ``value`` is ``None`` for a deletion marker."""

    revision: int
    key: str
    value: bytes | None


_STATE_ERRORS = (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from a stream: its sequence, subject, bytes and store time
    (epoch seconds; 0 when unknown)."""

    seq: int
    subject: str
    data: bytes
    time: float


class StateStore:
    """Durable key → bytes state in one JetStream KV bucket, read as an ordered log.

    Every call is one JetStream API request (a publish, a message get, a purge): none
    creates a consumer, so per-event use stays O(1) in server resources. Errors become
    :class:`BusUnavailableError`; a lost revision check becomes
    :class:`StateConflictError`.
    """

    def __init__(self, js: JetStreamContext, kv: Any, bucket: str) -> None:
        self._js = js
        self._kv = kv
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."

    async def put(self, key: str, value: bytes) -> int:
        """Store ``value`` under ``key``; returns its revision."""
        try:
            return int(await self._kv.put(key, value))
        except _STATE_ERRORS as e:
            raise BusUnavailableError(f"state put {key!r} failed: {e}") from e

    async def get(self, key: str) -> bytes | None:
        """The current value of ``key``; ``None`` when absent or deleted."""
        record = await self.latest(key)
        return None if record is None else record.value

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Store ``value`` only if ``key``'s latest revision is ``last`` (0: absent)."""
        try:
            return int(await self._kv.update(key, value, last=last))
        except nats.js.errors.KeyWrongLastSequenceError as e:
            raise StateConflictError(f"state {key!r} changed since revision {last}") from e
        except _STATE_ERRORS as e:
            raise BusUnavailableError(f"state update {key!r} failed: {e}") from e

    async def delete(self, key: str) -> None:
        """Write a deletion marker for ``key`` (readers of the log see it)."""
        try:
            await self._kv.delete(key)
        except nats.js.errors.KeyNotFoundError:
            return
        except _STATE_ERRORS as e:
            raise BusUnavailableError(f"state delete {key!r} failed: {e}") from e

    async def next_record(self, after: int) -> StateRecord | None:
        """The first record with a revision above ``after``; ``None`` past the end."""
        try:
            msg = await self._js.get_msg(
                self._stream, seq=after + 1, subject=f"{self._prefix}>", next=True
            )
        except nats.js.errors.NotFoundError:
            return None
        except _STATE_ERRORS as e:
            raise BusUnavailableError(f"state read failed: {e}") from e
        return self._record(msg)

    async def latest(self, key: str) -> StateRecord | None:
        """The newest record of ``key`` (a deletion marker included); ``None`` if none."""
        try:
            msg = await self._js.get_msg(self._stream, subject=f"{self._prefix}{key}")
        except nats.js.errors.NotFoundError:
            return None
        except _STATE_ERRORS as e:
            raise BusUnavailableError(f"state read of {key!r} failed: {e}") from e
        return self._record(msg)

    async def purge(self, key_filter: str, before: int | None = None) -> None:
        """Remove, without leaving markers, the records whose key matches ``key_filter``
        (a key, or a prefix ending in ``.>``), only those below revision ``before``
        when given."""
        try:
            await self._js.purge_stream(
                self._stream, seq=before, subject=f"{self._prefix}{key_filter}"
            )
        except _STATE_ERRORS as e:
            raise BusUnavailableError(f"state purge {key_filter!r} failed: {e}") from e

    def _record(self, msg: Any) -> StateRecord:
        op = (msg.headers or {}).get("KV-Operation")
        value = None if op in ("DEL", "PURGE") else (msg.data or b"")
        return StateRecord(int(msg.seq), str(msg.subject).removeprefix(self._prefix), value)


class NoResponderError(TriggerfishError):
    """A request found nobody serving its subject (:meth:`Bus.request`)."""


class Bus:
    """A connection to one NATS server and the JetStream streams of our EventBuses."""

    def __init__(self, settings: BusSettings, url: str) -> None:
        self.settings = settings
        self.url = url
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._streams: dict[str, StreamLimits] = {}
        self._closed = False
        self._last_server = ""
        self._restore: asyncio.Task[None] | None = None
        self.consumer_errors: dict[str, str] = {}
        """durable consumer name → why it is not consuming now (absent while it is)."""
        self._pulls: set[StandingPull] = set()
        """The consumers' open pull requests, asked again after a reconnect."""

    # -- connection -------------------------------------------------------------------
    @property
    def servers(self) -> list[str]:
        """The server URLs of :attr:`url` (a comma-separated list reaches a cluster)."""
        return [u.strip() for u in self.url.split(",") if u.strip()]

    def _server_now(self) -> str:
        """The server connected to (kept after a disconnect, for the log line)."""
        cu = self._nc.connected_url if self._nc is not None else None
        if cu is not None:
            self._last_server = f"{cu.scheme}://{cu.netloc}"
        return self._last_server or self.url

    async def connect(self) -> None:
        """Connect (reconnecting forever afterwards, to any server of the list or of the
        cluster's gossip); raise if the first attempt fails."""

        async def on_disconnect() -> None:
            if self._closed:  # our own close: not an outage
                return
            log.warning("bus disconnected from %s", self._server_now())

        async def on_reconnect() -> None:
            log.info("bus reconnected to %s", self._server_now())
            for pull in list(self._pulls):  # requests open on the old server are gone
                pull.reset()
            # A server restarted on an empty store has lost our streams: recreate them,
            # in a task of its own: the client runs this callback inside its reconnect
            # loop, and JetStream calls there (slow while a cluster elects leaders) would
            # hold that loop up and race the next disconnect.
            if self._restore is None or self._restore.done():
                self._restore = asyncio.create_task(self._restore_streams())

        async def on_error(e: Exception) -> None:
            log.debug("bus error: %s", e)

        opts: dict[str, Any] = {
            "servers": self.servers,
            "connect_timeout": self.settings.connect_timeout_seconds,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            "allow_reconnect": True,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
            "error_cb": on_error,
            "pending_size": 8 * 1024 * 1024,
        }
        if self.settings.token:
            opts["token"] = self.settings.token
        try:
            self._nc = await nats.connect(**opts)
        except Exception as e:
            raise BusUnavailableError(f"cannot connect to NATS at {self.url}: {e}") from e
        self._js = self._nc.jetstream(timeout=self.settings.publish_timeout_seconds)
        self._server_now()

    async def _restore_streams(self) -> None:
        for name, limits in list(self._streams.items()):
            with contextlib.suppress(Exception):
                await self.ensure_stream(name, limits)

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def set_url(self, url: str) -> None:
        """Reconnect to ``url`` from now on (the embedded server moved to a new port).

        The connection object stays, so subscriptions, durable consumers and KV
        handles carry over: the client's next reconnect attempt goes to ``url``.
        """
        self.url = url
        if self._nc is not None and not self._nc.is_closed:
            self._nc.set_server_pool([url])

    async def close(self) -> None:
        self._closed = True
        if self._restore is not None:
            self._restore.cancel()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=1)
            with contextlib.suppress(Exception):
                await self._nc.close()

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise BusUnavailableError("bus is not connected")
        return self._js

    # -- streams ----------------------------------------------------------------------
    async def ensure_stream(self, bus: str, limits: StreamLimits | None = None) -> None:
        """Create or update the stream of EventBus ``bus`` (subjects ``<bus>.>``)."""
        limits = limits or StreamLimits(duplicates_seconds=self.settings.duplicates_window_seconds)
        js = self._jetstream()
        name = subject_token(bus)
        cfg = StreamConfig(
            name=name,
            subjects=[f"{name}.>"],
            retention=_RETENTION[limits.retention],
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW if limits.discard_new else DiscardPolicy.OLD,
            max_msgs=limits.max_msgs or -1,
            max_bytes=limits.max_bytes or -1,
            max_age=limits.max_age_seconds or 0,
            num_replicas=limits.replicas,
            duplicate_window=limits.duplicates_seconds,
        )
        try:
            try:
                await js.stream_info(name)
                await js.update_stream(cfg)
            except nats.js.errors.NotFoundError:
                await js.add_stream(cfg)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as e:
            raise BusUnavailableError(f"cannot create stream {name!r}: {e}") from e
        self._streams[bus] = limits

    # -- publish ----------------------------------------------------------------------
    async def publish(self, bus: str, event: Event) -> None:
        """Publish ``event`` and return only once JetStream has stored it.

        The subject is ``<bus>.<event.source>.<event.subject>``; ``event.id`` is the
        dedup id, so a retried publish of the same event is stored once.
        """
        await self.publish_raw(
            event_subject(bus, event.source, event.subject), event.to_json(), event.id
        )

    async def publish_raw(self, subject: str, payload: bytes, msg_id: str) -> None:
        """Publish bytes with a dedup id and await the PubAck (see :meth:`publish`).

        While nobody answers for the stream (a cluster electing a new stream leader
        after a node died: followers drop what they receive, so an attempt may also
        just time out) or the client is moving to another server, the publish is tried
        again with the same dedup id, each attempt waiting at most a third of
        ``publish_timeout_seconds`` and all of them within it: a short election costs
        the caller a wait instead of a 503, and the event is stored once. A full
        stream is not retried (:class:`StreamFullError` at once).
        """
        loop = asyncio.get_running_loop()
        budget = self.settings.publish_timeout_seconds
        deadline = loop.time() + budget
        attempt_cap = max(0.5, budget / 3)
        delay = 0.05
        while True:
            nc = self._nc
            failure: Exception
            try:
                if nc is None or not nc.is_connected:
                    raise BusUnavailableError("bus is not connected")
                await self._jetstream().publish(
                    subject,
                    payload,
                    timeout=max(0.01, min(deadline - loop.time(), attempt_cap)),
                    headers={"Nats-Msg-Id": msg_id},
                )
                return
            except nats.js.errors.APIError as e:
                if _is_stream_full(e):
                    raise StreamFullError(f"stream full, publish to {subject} refused: "
                                          f"{e.description}") from e  # fmt: skip
                if not isinstance(e, nats.js.errors.ServiceUnavailableError):
                    raise BusUnavailableError(f"publish to {subject} not acknowledged: {e}") from e
                failure = e
            except (
                BusUnavailableError,
                TimeoutError,
                nats.errors.TimeoutError,
                nats.js.errors.NoStreamResponseError,
            ) as e:
                failure = e
            except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
                raise BusUnavailableError(f"publish to {subject} not acknowledged: {e}") from e
            # the client passes through disconnected/reconnecting/connecting while it
            # moves to another server; only a closed client is a reason to stop now
            again = nc is not None and not self._closed and not nc.is_closed
            if not again or loop.time() + delay >= deadline:
                if isinstance(failure, BusUnavailableError):
                    raise failure
                msg = f"publish to {subject} not acknowledged: {failure}"
                raise BusUnavailableError(msg) from failure
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # -- bounded logs (traces) and reading a stream back ---------------------------
    async def ensure_log_stream(
        self,
        name: str,
        subjects: list[str],
        max_msgs: int,
        max_age_seconds: float,
        *,
        max_msgs_per_subject: int = 0,
    ) -> None:
        """Create or update a stream that keeps the newest ``max_msgs`` messages for at
        most ``max_age_seconds`` (discarding the oldest), e.g. the persisted traces;
        ``max_msgs_per_subject``: keep only that many per subject (the latest reports)."""
        js = self._jetstream()
        cfg = StreamConfig(
            name=name,
            subjects=subjects,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_msgs=max_msgs or -1,
            max_age=max_age_seconds or 0,
            max_msgs_per_subject=max_msgs_per_subject or -1,
            num_replicas=1,
        )
        try:
            try:
                await js.stream_info(name)
                await js.update_stream(cfg)
            except nats.js.errors.NotFoundError:
                await js.add_stream(cfg)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as e:
            raise BusUnavailableError(f"cannot create stream {name!r}: {e}") from e

    async def publish_nowait(self, subject: str, payload: bytes) -> None:
        """Publish without waiting for the PubAck (best effort: traces, not events)."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise BusUnavailableError("bus is not connected")
        try:
            await nc.publish(subject, payload)
        except (nats.errors.Error, OSError) as e:
            raise BusUnavailableError(f"publish to {subject} failed: {e}") from e

    # -- request / reply (core NATS, not stored) --------------------------------------
    async def request(self, subject: str, payload: bytes, timeout_seconds: float) -> bytes:
        """Ask whoever serves ``subject`` (:meth:`serve`) and wait for the answer;
        :class:`NoResponderError` when nobody serves it."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise BusUnavailableError("bus is not connected")
        try:
            msg = await nc.request(subject, payload, timeout=timeout_seconds)
        except nats.errors.NoRespondersError as e:
            raise NoResponderError(f"nobody serves {subject}") from e
        except (TimeoutError, nats.errors.TimeoutError) as e:
            raise BusUnavailableError(f"no answer on {subject} in {timeout_seconds:g}s") from e
        except (nats.errors.Error, OSError) as e:
            raise BusUnavailableError(f"request on {subject} failed: {e}") from e
        return bytes(msg.data)

    async def serve(
        self, subject: str, queue: str, handler: Callable[[bytes], Awaitable[bytes]]
    ) -> Callable[[], Awaitable[None]]:
        """Answer requests on ``subject`` with ``handler`` (one request at a time; the
        members of ``queue`` share them, each request goes to one). Returns a function
        that stops serving. The subscription follows reconnects."""
        nc = self._nc
        if nc is None:
            raise BusUnavailableError("bus is not connected")

        async def answer(msg: Msg) -> None:
            reply = await handler(msg.data)
            if msg.reply:
                with contextlib.suppress(nats.errors.Error, OSError):
                    await msg.respond(reply)

        try:
            sub = await nc.subscribe(subject, queue=queue, cb=answer)
        except (nats.errors.Error, OSError) as e:
            raise BusUnavailableError(f"cannot serve {subject}: {e}") from e

        async def stop() -> None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()

        return stop

    async def read_stream(
        self,
        stream: str,
        filter_subject: str,
        last: int,
        *,
        before: int | None = None,
        timeout_seconds: float = 2.0,
        to_the_end: bool = False,
    ) -> list[StoredMessage]:
        """The stored messages of ``stream`` on ``filter_subject`` among its newest
        ``last`` sequence numbers (below ``before`` when given), oldest first; read with
        an ephemeral consumer that acks nothing. ``to_the_end``: also those stored while
        reading (a stream keeping one message per subject replaces a message that was
        not read yet by one past the end: without it, that subject would be missed)."""
        js = self._jetstream()
        try:
            info = await js.stream_info(subject_token(stream))
            state = info.state
            if not state.messages:
                return []
            first_seq, last_seq = int(state.first_seq), int(state.last_seq)
            if before is not None:
                last_seq = min(last_seq, before - 1)
            if last_seq < first_seq:
                return []
            start = max(first_seq, last_seq - max(1, last) + 1)
            psub = await js.pull_subscribe(
                filter_subject,
                stream=subject_token(stream),
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start,
                    ack_policy=AckPolicy.NONE,
                    inactive_threshold=30.0,
                    filter_subject=filter_subject,
                    max_ack_pending=-1,
                ),
            )
        except nats.js.errors.NotFoundError:
            return []
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as e:
            raise BusUnavailableError(f"cannot read stream {stream!r}: {e}") from e
        out: list[StoredMessage] = []
        try:
            while True:
                try:
                    pending = (await psub.consumer_info()).num_pending or 0
                    if pending == 0:
                        break
                    msgs = await psub.fetch(min(256, pending), timeout=timeout_seconds)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                done = False
                for m in msgs:
                    md = m.metadata
                    if int(md.sequence.stream) > last_seq and not to_the_end:
                        done = True
                        break
                    out.append(
                        StoredMessage(
                            seq=int(md.sequence.stream),
                            subject=m.subject,
                            data=m.data,
                            time=md.timestamp.timestamp() if md.timestamp else 0.0,
                        )
                    )
                if done or len(out) > last + 10_000:  # to_the_end on a busy stream
                    break
        except (nats.errors.Error, nats.js.errors.Error) as e:
            raise BusUnavailableError(f"cannot read stream {stream!r}: {e}") from e
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
        return out

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        """``(first_seq, last_seq)`` of a stream; ``(0, 0)`` when it does not exist."""
        try:
            state = (await self._jetstream().stream_info(subject_token(stream))).state
        except nats.js.errors.NotFoundError:
            return 0, 0
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as e:
            raise BusUnavailableError(f"cannot read stream {stream!r}: {e}") from e
        return int(state.first_seq), int(state.last_seq)

    async def get_stored(self, stream: str, seq: int) -> StoredMessage | None:
        """One stored message by sequence number; None when it is gone."""
        try:
            raw = await self._jetstream().get_msg(subject_token(stream), seq)
        except nats.js.errors.NotFoundError:
            return None
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as e:
            raise BusUnavailableError(f"cannot read message {seq} of {stream!r}: {e}") from e
        return StoredMessage(seq=seq, subject=raw.subject or "", data=raw.data or b"", time=0.0)

    async def delete_stored(self, stream: str, seq: int) -> bool:
        """Delete one stored message; False when it was already gone."""
        try:
            return bool(await self._jetstream().delete_msg(subject_token(stream), seq))
        except nats.js.errors.NotFoundError:
            return False
        except nats.js.errors.APIError as e:
            if getattr(e, "code", None) == 404 or "not found" in str(e).lower():
                return False
            raise BusUnavailableError(f"cannot delete message {seq} of {stream!r}: {e}") from e
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as e:
            raise BusUnavailableError(f"cannot delete message {seq} of {stream!r}: {e}") from e

    # -- key-value state --------------------------------------------------------------
    async def state_store(self, name: str) -> StateStore:
        """A JetStream key-value bucket for durable sensor state (file storage), with as
        many replicas as the streams asked for: on a cluster, state survives the loss of
        a node like the events do."""
        js = self._jetstream()
        bucket = subject_token(name).replace("-", "_")
        replicas = max((lim.replicas for lim in self._streams.values()), default=1)
        try:
            try:
                kv = await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                kv = await js.create_key_value(
                    KeyValueConfig(
                        bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas
                    )
                )
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as e:
            raise BusUnavailableError(f"cannot open state bucket {bucket!r}: {e}") from e
        return StateStore(js, kv, bucket)

    async def consumer_lag(self, bus: str, durable: str) -> tuple[int, int] | None:
        """``(pending, ack_pending)`` of a durable consumer: events not yet delivered and
        events delivered but not acked; ``None`` when the bus or the consumer is not there."""
        try:
            info = await self._jetstream().consumer_info(subject_token(bus), subject_token(durable))
        except (BusUnavailableError, TimeoutError, nats.errors.Error, nats.js.errors.Error):
            return None
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    # -- consume ----------------------------------------------------------------------
    async def consume(
        self,
        bus: str,
        subject: str,
        durable: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        ack_wait_seconds: float | None = None,
        ready: asyncio.Event | None = None,
    ) -> None:
        """Run ``handler`` for every message of a durable pull consumer, until cancelled.

        The consumer is created on first use with ``DeliverPolicy.NEW`` (a new sensor
        does not replay history) and keeps its position across restarts. Messages the
        handler does not ack are redelivered after ``ack_wait_seconds``. With
        ``concurrency`` > 1 several handlers run at once (order is then not kept); with
        1 they run one after the other in stream order. Messages are asked for with
        standing pull requests (:class:`app.adapters.pull.StandingPull`), never more
        than there are free handlers. ``ready`` is set once the consumer exists, so
        callers can start sources after.
        """
        stream = subject_token(bus)
        name = subject_token(durable)
        tasks: set[asyncio.Task[None]] = set()
        backoff = 0.1
        try:
            while not self._closed:
                try:
                    # every round checks the consumer: a round ends only with an error
                    # (the pull never returns), and the consumer or its stream may be gone
                    await self._ensure_consumer(stream, name, subject, ack_wait_seconds)
                    if ready is not None:
                        ready.set()
                    await self._pull(stream, name, handler, concurrency, tasks)
                except (nats.errors.Error, nats.js.errors.Error, OSError, TransientError) as e:
                    if name not in self.consumer_errors:
                        # the server answered since the last error (alive() cleared it):
                        # a new outage starts again at the shortest wait
                        backoff = 0.1
                    why = (
                        "no answer from JetStream (leader election, or the server is down)"
                        if isinstance(
                            e,
                            nats.js.errors.ServiceUnavailableError
                            | nats.errors.NoRespondersError
                            | ConsumerGone,
                        )
                        else str(e)
                    )
                    log.warning("consumer %s: %s; retrying in %.1fs", name, why, backoff)
                    self.consumer_errors[name] = f"{type(e).__name__}: {e}".rstrip(": ")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            for t in tasks:
                t.cancel()

    async def _ensure_consumer(
        self, stream: str, name: str, subject: str, ack_wait_seconds: float | None
    ) -> None:
        """Create the durable consumer unless it exists (its settings are then kept)."""
        js = self._jetstream()
        try:
            await js.consumer_info(stream, name)
            return
        except nats.js.errors.NotFoundError:
            pass
        await js.add_consumer(
            stream,
            config=ConsumerConfig(
                name=name,
                durable_name=name,
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ack_wait_seconds or self.settings.ack_wait_seconds,
                max_deliver=-1,
                max_ack_pending=self.settings.max_ack_pending,
                filter_subject=subject,
            ),
        )

    async def _pull(
        self,
        stream: str,
        name: str,
        handler: Handler,
        concurrency: int,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        """Deliver the consumer's messages to ``handler`` until an error ends it."""
        nc = self._nc
        if nc is None or nc.is_closed:
            raise BusUnavailableError("bus is not connected")

        def alive() -> None:
            self.consumer_errors.pop(name, None)

        async def deliver(m: Msg) -> None:
            await pull.slot()
            bm = self._decode(m)
            if bm is None:
                # not an event: ended here, and its slot freed like a handler's, which
                # wakes the loop to ask for what comes next (else, if it was the last
                # message asked for, nothing would until the heartbeat wait ran out)
                try:
                    await m.term()
                finally:
                    pull.release()
                return
            t = asyncio.create_task(self._run_one(handler, bm, pull))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        pull = StandingPull(nc, stream, name, concurrency, deliver, alive)
        self._pulls.add(pull)
        try:
            await pull.run()
        finally:
            self._pulls.discard(pull)

    async def _run_one(self, handler: Handler, bm: BusMessage, pull: StandingPull) -> None:
        try:
            await handler(bm)
        except Exception:  # the handler owns error handling; never kill the loop
            log.exception("sensor handler failed on event %s", bm.event.id)
        finally:
            pull.release()

    @staticmethod
    def _decode(m: Msg) -> BusMessage | None:
        try:
            return BusMessage(m, Event.from_json(m.data))
        except ValueError as e:
            log.error("dropping a bus message on %s that is not a CloudEvent: %s", m.subject, e)
            return None
