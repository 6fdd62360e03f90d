"""The azureServiceBus event source against real peers: the real SDK, the FAKE broker, NATS.

What is checked is the delivery contract: a message becomes exactly one event on the
bus and is completed only after the PubAck; a bus outage abandons (redelivers) instead
of losing; a slow publish keeps its lock; a lock lost during a stall does not double
the event; a body that can never be an event is dead-lettered and the queue keeps
flowing; broker restarts are survived; bad manifests fail with field paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
import yaml
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import MessageLockLostError, ServiceBusError
from pydantic import BaseModel, ValidationError

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.kernel.errors import BusUnavailableError, ConfigError
from app.kernel.events import Event, event_id_from
from app.kernel.spec import format_validation_error
from eventsources.azure_service_bus import (
    AzureServiceBusConfig,
    AzureServiceBusSource,
    ServiceBusTuning,
    TLSConfig,
    build_ssl_context,
)
from eventsources.base import SourceContext
from tests.servicebus_fixtures import FakeServiceBusServer
from tests.support.sensors import eventually
from tests.support.sources import CountingMetrics as Metrics
from tests.support.sources import DictSecrets as Secrets

SOURCE = "azure-service-bus"
SECRET = ("azure-secret", "connectionstring")
ARGO_EXAMPLE = (
    Path(__file__).resolve().parents[2]
    / "shared/argo-examples/event-sources/azure-service-bus.yaml"
)
FAST = ServiceBusTuning(
    receive_wait_seconds=1.0,
    publish_retry_seconds=10.0,
    publish_retry_initial_seconds=0.05,
    publish_retry_max_seconds=0.2,
    failure_pause_initial_seconds=0.05,
    failure_pause_max_seconds=0.3,
    reconnect_initial_seconds=0.1,
    reconnect_max_seconds=0.5,
    sdk_retry_total=0,
)

# Each test takes seconds (under 10 on a loaded machine); a source that hangs on the way
# out fails its test here instead of holding the run for minutes.
pytestmark = pytest.mark.timeout(45)


# -- helpers ---------------------------------------------------------------------------


class Publisher:
    """``ctx.publish`` onto a real Bus, counting attempts and failures per event id and
    the most publishes in flight at once.

    ``delay_seconds`` awaits before publishing (a slow bus: the loop keeps running);
    ``stall_seconds`` blocks the whole event loop once (a stalled process: nothing else,
    lock renewal included, runs meanwhile).
    """

    def __init__(self, bus: Bus, *, delay_seconds: float = 0.0, stall_seconds: float = 0.0):
        self.bus = bus
        self.delay_seconds = delay_seconds
        self.stall_seconds = stall_seconds
        self.attempts: Counter[str] = Counter()
        self.failures = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, event: Event) -> None:
        self.attempts[event.id] += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self._publish(event)
        finally:
            self.in_flight -= 1

    async def _publish(self, event: Event) -> None:
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if self.stall_seconds:
            stall, self.stall_seconds = self.stall_seconds, 0.0
            time.sleep(stall)
        try:
            await self.bus.publish("default", event)
        except BusUnavailableError:
            self.failures += 1
            raise


def _source(
    server: FakeServiceBusServer,
    publish: Callable[[Event], Awaitable[None]],
    events: dict[str, dict[str, Any]],
    *,
    metrics: Metrics | None = None,
    tuning: ServiceBusTuning = FAST,
) -> AzureServiceBusSource:
    ctx = SourceContext(
        publish=publish,
        secrets=Secrets({SECRET: server.connection_string}),
        log=logging.getLogger("test.azure_service_bus"),
        metrics=metrics or Metrics(),
    )
    configs = {name: AzureServiceBusConfig.model_validate(raw) for name, raw in events.items()}
    return AzureServiceBusSource(SOURCE, "argo-events", configs, ctx, tuning=tuning)


def _queue(name: str, **extra: Any) -> dict[str, Any]:
    return {"connectionString": {"name": SECRET[0], "key": SECRET[1]}, "queueName": name, **extra}


# A bound against hanging, not a timing assertion: each step takes a second or two even
# on a loaded machine, and a broken source fails its test in 15 s instead of 30.
_eventually = functools.partial(eventually, timeout=15.0, interval=0.05)


@contextlib.asynccontextmanager
async def _running(source: AzureServiceBusSource) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run())

    async def ready() -> bool:
        if task.done():
            task.result()  # surface the source's own error
        return source.ready()

    try:
        await _eventually(ready, "the source is receiving")
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Peer:
    """The test's own SDK client: sends, and peeks without locking (one open connection).

    Opening or closing an SDK link costs a few hundred milliseconds, so senders and peek
    receivers are opened once (those named up front concurrently), reused, and closed
    concurrently. A receiver used only for peeking never grants link credit, so it never
    takes a message away from the source under test. ``keep_alive=0`` only spares the
    helper's senders their idle pinger (closing waits for it); the source keeps its own.
    """

    def __init__(
        self,
        server: FakeServiceBusServer,
        *,
        queues: tuple[str, ...] = (),
        topics: tuple[str, ...] = (),
    ) -> None:
        self.client = ServiceBusClient.from_connection_string(
            server.connection_string, retry_total=1, keep_alive=0
        )
        self._queues = queues
        self._topics = topics
        self._senders: dict[str, Any] = {}
        self._peekers: dict[str, Any] = {}

    async def __aenter__(self) -> Peer:
        await self.client.__aenter__()
        opening = [self._sender(q, topic=False) for q in self._queues]
        opening += [self._sender(t, topic=True) for t in self._topics]
        opening += [self._peeker(q) for q in self._queues]
        await asyncio.gather(*(h.__aenter__() for h in opening))
        return self

    async def __aexit__(self, *exc: object) -> None:
        handlers = [*self._senders.values(), *self._peekers.values()]
        await asyncio.gather(*(h.close() for h in handlers), return_exceptions=True)
        await self.client.close()

    def _sender(self, entity: str, *, topic: bool) -> Any:
        if entity not in self._senders:
            self._senders[entity] = (
                self.client.get_topic_sender(entity)
                if topic
                else self.client.get_queue_sender(entity)
            )
        return self._senders[entity]

    def _peeker(self, entity: str, subscription: str = "") -> Any:
        key = f"{entity}/{subscription}"
        if key not in self._peekers:
            self._peekers[key] = (
                self.client.get_subscription_receiver(entity, subscription)
                if subscription
                else self.client.get_queue_receiver(entity)
            )
        return self._peekers[key]

    async def send(self, entity: str, *messages: ServiceBusMessage, topic: bool = False) -> None:
        sender = self._sender(entity, topic=topic)
        for i in range(0, len(messages), 100):
            await sender.send_messages(list(messages[i : i + 100]))

    async def peek(self, entity: str, subscription: str = "") -> list[Any]:
        """Every message still in the entity, locked or not."""
        receiver = self._peeker(entity, subscription)
        return list(await receiver.peek_messages(max_message_count=1000, sequence_number=1))


async def _stream_messages(nats_url: str) -> list[tuple[str, dict[str, Any]]]:
    """(subject, decoded CloudEvent) of every message in stream ``default``, in order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("default")
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("default", seq)
            out.append((msg.subject, orjson.loads(msg.data or b"{}")))
        return out
    finally:
        await nc.close()


async def _stream_count(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info("default")).state.messages)
    finally:
        await nc.close()


# -- the happy path ----------------------------------------------------------------------
async def test_message_becomes_one_event_with_argo_data_and_is_completed(
    fake_servicebus: FakeServiceBusServer, bus: Bus, nats_server: EmbeddedNats
) -> None:
    metrics = Metrics()
    source = _source(
        fake_servicebus,
        lambda e: bus.publish("default", e),
        {
            "train": _queue("jobs", jsonBody=True, metadata={"team": "ml"}),
            "notes": _queue("notes"),
        },
        metrics=metrics,
    )
    async with Peer(fake_servicebus, queues=("jobs", "notes")) as peer, _running(source):
        await peer.send(
            "jobs",
            ServiceBusMessage(
                '{"model": "resnet", "dataset": "imagenet"}',
                message_id="job-1",
                subject="train",
                content_type="application/json",
                correlation_id="corr-1",
                reply_to="replies",
                application_properties={"priority": 3, "owner": "ana"},
            ),
        )
        await peer.send("notes", ServiceBusMessage("plain text, not JSON"))

        async def both_published() -> bool:
            return await _stream_count(nats_server.url) == 2

        await _eventually(both_published, "two events in the stream")

        async def completed() -> bool:
            return not await peer.peek("jobs") and not await peer.peek("notes")

        await _eventually(completed, "both messages completed")

    by_subject = dict(await _stream_messages(nats_server.url))
    train = by_subject[f"default.{SOURCE}.train"]
    assert train["type"] == "azureServiceBus"
    assert train["source"] == SOURCE
    assert train["subject"] == "train"
    assert train["id"] == event_id_from(
        "azureServiceBus", f"127.0.0.1:{fake_servicebus.port}/jobs", "job-1"
    )
    data = train["data"]
    assert data["body"] == {"model": "resnet", "dataset": "imagenet"}
    assert data["applicationProperties"] == {"priority": 3, "owner": "ana"}
    assert data["contentType"] == "application/json"
    assert data["correlationID"] == "corr-1"
    assert data["messageID"] == "job-1"
    assert data["replyTo"] == "replies"
    assert data["subject"] == "train"
    assert isinstance(data["sequenceNumber"], int)
    assert data["enqueuedTime"].endswith("Z")
    assert data["metadata"] == {"team": "ml"}
    assert sorted(data) == sorted(
        [
            "applicationProperties", "body", "contentType", "correlationID", "enqueuedTime",
            "messageID", "replyTo", "sequenceNumber", "subject", "metadata",
        ]
    )  # fmt: skip

    notes = by_subject[f"default.{SOURCE}.notes"]["data"]
    assert notes["body"] == "plain text, not JSON"
    assert notes["metadata"] == {}
    assert metrics.counts["sent", "train"] == 1
    assert metrics.counts["sent", "notes"] == 1


async def test_topic_subscription_receives_its_copy_only(
    fake_servicebus: FakeServiceBusServer, bus: Bus, nats_server: EmbeddedNats
) -> None:
    cfg = {
        "connectionString": {"name": SECRET[0], "key": SECRET[1]},
        "topicName": "events",
        "subscriptionName": "a",
        "jsonBody": True,
    }
    source = _source(fake_servicebus, lambda e: bus.publish("default", e), {"fan": cfg})
    async with Peer(fake_servicebus, topics=("events",)) as peer, _running(source):
        await peer.send("events", ServiceBusMessage('{"n": 1}', message_id="t-1"), topic=True)

        async def published() -> bool:
            return await _stream_count(nats_server.url) == 1

        await _eventually(published, "the subscription's message became an event")

        async def completed() -> bool:
            return not await peer.peek("events", "a")

        await _eventually(completed, "subscription a's copy completed")
        # The other subscription's copy is untouched: fan-out is the broker's, not ours.
        [other] = await peer.peek("events", "b")
        assert other.message_id == "t-1"
    [(subject, event)] = await _stream_messages(nats_server.url)
    assert subject == f"default.{SOURCE}.fan"
    assert event["data"]["body"] == {"n": 1}


# -- failure paths -------------------------------------------------------------------------
async def test_bus_outage_abandons_then_every_message_becomes_exactly_one_event(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
    bus: Bus,
    nats_server: EmbeddedNats,
) -> None:
    server = fake_servicebus_factory(max_delivery_count=1000)
    n = 240
    publisher = Publisher(bus)
    tuning = ServiceBusTuning(
        receive_wait_seconds=1.0,
        publish_retry_seconds=0.3,  # give up quickly so the abandon path runs
        publish_retry_initial_seconds=0.05,
        publish_retry_max_seconds=0.1,
        failure_pause_initial_seconds=0.05,
        failure_pause_max_seconds=0.2,
        reconnect_initial_seconds=0.1,
        reconnect_max_seconds=0.5,
        sdk_retry_total=0,
    )
    metrics = Metrics()
    source = _source(server, publisher, {"bulk": _queue("bulk")}, metrics=metrics, tuning=tuning)
    async with Peer(server, queues=("bulk",)) as peer, _running(source):
        nats_server.kill()
        await peer.send("bulk", *(ServiceBusMessage(f"m{i}", message_id=f"m{i}") for i in range(n)))

        async def redelivered() -> bool:
            msgs = await peer.peek("bulk")
            return len(msgs) == n and any(m.delivery_count >= 1 for m in msgs)

        # Not completed, and handed back: all n still there, some delivered again.
        await _eventually(redelivered, "messages abandoned while the bus is down")
        assert publisher.failures > 0
        assert metrics.counts["failed", "bulk"] > 0

        nats_server.start()

        async def drained() -> bool:
            return not await peer.peek("bulk")

        await _eventually(drained, "every message completed after the bus came back", timeout=60)

    events = await _stream_messages(nats_server.url)
    ids = Counter(e["data"]["messageID"] for _, e in events)
    assert len(events) == n
    assert set(ids) == {f"m{i}" for i in range(n)}
    assert max(ids.values()) == 1
    # received in batches, whose messages are published together
    assert publisher.most_in_flight > 1


async def test_slow_publish_keeps_the_lock_and_publishes_once(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
    bus: Bus,
    nats_server: EmbeddedNats,
) -> None:
    server = fake_servicebus_factory(lock_duration_seconds=1.0)
    publisher = Publisher(bus, delay_seconds=2.0)  # twice the lock duration
    source = _source(server, publisher, {"slow": _queue("slow")})
    async with Peer(server, queues=("slow",)) as peer, _running(source):
        await peer.send("slow", ServiceBusMessage("take your time", message_id="s-1"))

        async def completed() -> bool:
            return await _stream_count(nats_server.url) == 1 and not await peer.peek("slow")

        await _eventually(completed, "the slow message published and completed")
    assert list(publisher.attempts.values()) == [1]  # the lock held: never redelivered


async def test_lock_lost_during_a_stall_gives_no_duplicate_event(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
    bus: Bus,
    nats_server: EmbeddedNats,
) -> None:
    server = fake_servicebus_factory(lock_duration_seconds=1.0)
    publisher = Publisher(bus, stall_seconds=2.0)  # the whole process stalls past the lock
    source = _source(server, publisher, {"stall": _queue("stall")})
    async with Peer(server, queues=("stall",)) as peer, _running(source):
        await peer.send("stall", ServiceBusMessage("once", message_id="x-1"))

        async def settled() -> bool:
            return sum(publisher.attempts.values()) >= 2 and not await peer.peek("stall")

        await _eventually(settled, "the redelivered message was published again and completed")
        # Published again after the redelivery (maybe more than once), always with the
        # same event id, so the stream holds the event once.
        [(event_id, attempts)] = publisher.attempts.items()
        assert attempts >= 2
        events = await _stream_messages(nats_server.url)
        assert [(e["id"], e["data"]["messageID"]) for _, e in events] == [(event_id, "x-1")]

        # The lost lock did not stop the lock renewal: the next slow publish keeps its lock.
        publisher.delay_seconds = 2.0  # twice the lock duration
        await peer.send("stall", ServiceBusMessage("slow", message_id="x-2"))

        async def second() -> bool:
            return await _stream_count(nats_server.url) == 2 and not await peer.peek("stall")

        await _eventually(second, "the slow second message published and completed")
    assert sorted(publisher.attempts.values()) == [1, attempts]


async def test_invalid_json_is_dead_lettered_with_a_reason_and_the_queue_keeps_flowing(
    fake_servicebus: FakeServiceBusServer, bus: Bus, nats_server: EmbeddedNats
) -> None:
    source = _source(
        fake_servicebus,
        lambda e: bus.publish("default", e),
        {"orders": _queue("orders", jsonBody=True)},
    )
    async with Peer(fake_servicebus, queues=("orders",)) as peer, _running(source):
        await peer.send(
            "orders",
            ServiceBusMessage("{not json", message_id="bad-1"),
            ServiceBusMessage('{"ok": 1}', message_id="good-1"),
        )
        await peer.send("orders", ServiceBusMessage('{"ok": 2}', message_id="good-2"))

        async def good_ones() -> bool:
            return await _stream_count(nats_server.url) == 2

        await _eventually(good_ones, "the valid messages became events")

        async def queue_empty() -> bool:
            return not await peer.peek("orders")

        await _eventually(queue_empty, "the queue is empty")

        async with peer.client.get_queue_receiver(
            "orders", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=5
        ) as dlq:
            [dead] = await dlq.receive_messages(max_message_count=5, max_wait_time=5)
            assert dead.message_id == "bad-1"
            assert dead.dead_letter_reason == "InvalidJSONBody"
            assert "not JSON" in (dead.dead_letter_error_description or "")
            await dlq.complete_message(dead)

    events = await _stream_messages(nats_server.url)
    assert [e["data"]["messageID"] for _, e in events] == ["good-1", "good-2"]


async def test_broker_restart_is_survived(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
    bus: Bus,
    nats_server: EmbeddedNats,
) -> None:
    server = fake_servicebus_factory()
    source = _source(server, lambda e: bus.publish("default", e), {"q": _queue("restart")})
    async with _running(source) as task:
        async with Peer(server) as peer:
            await peer.send("restart", ServiceBusMessage("before", message_id="r-1"))

            async def first() -> bool:
                return await _stream_count(nats_server.url) == 1

            await _eventually(first, "the first message became an event")
        server.stop()

        async def noticed() -> bool:
            return not source.ready()

        await _eventually(noticed, "the source noticed the broker is gone")
        # A new broker on the same port, as after a restart of the real service.
        restarted = fake_servicebus_factory(port=server.port)
        async with Peer(restarted) as peer:
            await peer.send("restart", ServiceBusMessage("after", message_id="r-2"))

            async def second() -> bool:
                return await _stream_count(nats_server.url) == 2

            await _eventually(second, "the source reconnected and published the new message")
        assert not task.done()
    events = await _stream_messages(nats_server.url)
    assert [e["data"]["body"] for _, e in events] == ["before", "after"]


async def test_a_bus_outage_within_the_retry_window_is_ridden_out_without_abandoning(
    fake_servicebus: FakeServiceBusServer, bus: Bus, nats_server: EmbeddedNats
) -> None:
    """While the bus is away for less than ``publishRetrySeconds`` the message is held and
    the publish retried: it is not handed back (its delivery count is not spent)."""
    publisher = Publisher(bus)
    metrics = Metrics()
    tuning = dataclasses.replace(FAST, publish_retry_seconds=60.0)
    source = _source(
        fake_servicebus, publisher, {"held": _queue("held")}, metrics=metrics, tuning=tuning
    )
    async with Peer(fake_servicebus, queues=("held",)) as peer, _running(source):
        nats_server.kill()
        await peer.send("held", ServiceBusMessage("wait for me", message_id="w-1"))

        async def failing() -> bool:
            return publisher.failures >= 2

        await _eventually(failing, "two publishes failed while the bus is down")
        nats_server.start()

        async def through() -> bool:
            return await _stream_count(nats_server.url) == 1 and not await peer.peek("held")

        await _eventually(through, "the held message published and completed")
    assert metrics.counts == {("sent", "held"): 1}
    assert metrics.sources == {SOURCE}
    assert list(publisher.attempts.values()) == [publisher.failures + 1]


async def test_idle_receives_filtered_and_abandoned_batches_keep_the_one_connection(
    fake_servicebus: FakeServiceBusServer,
    bus: Bus,
    nats_server: EmbeddedNats,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An empty receive, a filtered message, abandoned batches (the very first batch
    included, and again after a completed one) are all routine: the source keeps its one
    broker connection through them (a reconnect would drop every lock it holds)."""
    caplog.set_level(logging.INFO, logger="test.azure_service_bus")
    publisher = Publisher(bus)
    metrics = Metrics()
    tuning = dataclasses.replace(
        FAST,
        receive_wait_seconds=0.2,
        publish_retry_seconds=0.0,  # abandon at the first failed publish
    )
    events = {"kept": _queue("kept", filter={"expression": 'body != "skip"'})}
    source = _source(fake_servicebus, publisher, events, metrics=metrics, tuning=tuning)

    def abandoned(times: int) -> Callable[[], bool]:
        return lambda: metrics.counts["failed", "kept"] >= times

    async with Peer(fake_servicebus, queues=("kept",)) as peer, _running(source):
        await asyncio.sleep(1.0)  # several empty receives
        nats_server.kill()
        await peer.send(
            "kept",
            ServiceBusMessage("skip", message_id="k-0"),
            ServiceBusMessage("first", message_id="k-1"),
        )
        await _eventually(abandoned(2), "the first message abandoned twice")
        nats_server.start()

        async def first() -> bool:
            return await _stream_count(nats_server.url) == 1 and not await peer.peek("kept")

        await _eventually(first, "the first message published, the skipped one completed")
        nats_server.kill()
        await peer.send("kept", ServiceBusMessage("second", message_id="k-2"))
        await _eventually(abandoned(3), "the second message abandoned")
        nats_server.start()

        async def second() -> bool:
            return await _stream_count(nats_server.url) == 2 and not await peer.peek("kept")

        await _eventually(second, "the second message published after the bus came back")
    connects = [r for r in caplog.records if r.getMessage().endswith(": receiving")]
    assert len(connects) == 1
    assert not [r for r in caplog.records if "reconnecting" in r.getMessage()]
    assert metrics.counts["filtered", "kept"] == 1
    assert metrics.counts["sent", "kept"] == 2
    assert metrics.sources == {SOURCE}
    stored = await _stream_messages(nats_server.url)
    assert [e["data"]["messageID"] for _, e in stored] == ["k-1", "k-2"]


async def test_a_publish_failing_for_another_reason_abandons_and_the_redelivery_goes_through(
    fake_servicebus: FakeServiceBusServer, bus: Bus, nats_server: EmbeddedNats
) -> None:
    """A publish error that is not an outage hands the message back (Service Bus
    dead-letters it only after MaxDeliveryCount attempts); the redelivery is published,
    carrying the sender's trace context."""
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    refusals = 1

    async def refuse_once(event: Event) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise RuntimeError("the event cannot be published now")
        await bus.publish("default", event)

    metrics = Metrics()
    source = _source(fake_servicebus, refuse_once, {"odd": _queue("odd")}, metrics=metrics)
    async with Peer(fake_servicebus, queues=("odd",)) as peer, _running(source):
        await peer.send(
            "odd",
            ServiceBusMessage(
                "again", message_id="o-1", application_properties={"traceparent": traceparent}
            ),
        )

        async def through() -> bool:
            return await _stream_count(nats_server.url) == 1 and not await peer.peek("odd")

        await _eventually(through, "the redelivered message published and completed")
    assert metrics.counts == {("failed", "odd"): 1, ("sent", "odd"): 1}
    assert metrics.sources == {SOURCE}
    [(_, event)] = await _stream_messages(nats_server.url)
    assert event["data"]["messageID"] == "o-1"
    assert event["traceparent"] == traceparent


async def test_a_failed_batch_pauses_the_receives_and_each_pause_doubles(
    fake_servicebus: FakeServiceBusServer,
) -> None:
    """After a batch that was handed back the source waits before receiving again, and
    waits twice as long after the next failure: a failing bus or publisher is not
    hammered. Lower bounds only (a slow machine makes the gaps longer, never shorter)."""
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def refuse(event: Event) -> None:
        attempts.append(loop.time())
        raise RuntimeError("the event cannot be published now")

    tuning = dataclasses.replace(
        FAST, failure_pause_initial_seconds=0.3, failure_pause_max_seconds=2.0
    )
    source = _source(fake_servicebus, refuse, {"paced": _queue("paced")}, tuning=tuning)
    async with Peer(fake_servicebus, queues=("paced",)) as peer, _running(source):
        await peer.send("paced", ServiceBusMessage("x", message_id="p-1"))
        await _eventually(lambda: len(attempts) >= 3, "three deliveries of the message")
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    slack = 0.02  # the event loop may run a timer up to its clock resolution early
    assert gaps[0] >= 0.3 - slack, gaps
    assert gaps[1] >= 0.6 - slack, gaps


async def test_a_stop_the_sdk_loses_in_a_settle_call_still_stops(
    fake_servicebus: FakeServiceBusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's calls wait with ``asyncio.wait_for``, which on Python 3.11 can return
    instead of raising a cancellation that arrives as the awaited frame does. Here the
    real abandon call is wrapped to lose the stop that lands in it, every time: the
    source must still stop (the stop is read from the task, not only from the raise)."""
    entered = asyncio.Event()
    lost = 0
    abandon = ServiceBusReceiver.abandon_message

    async def losing_abandon(self: ServiceBusReceiver, message: Any) -> None:
        nonlocal lost
        entered.set()
        try:
            await asyncio.sleep(0.5)  # the stop lands here
        except asyncio.CancelledError:
            lost += 1  # lost, as the SDK's wait_for may: the call returns normally
        await abandon(self, message)

    monkeypatch.setattr(ServiceBusReceiver, "abandon_message", losing_abandon)

    async def refuse(event: Event) -> None:
        raise RuntimeError("the event cannot be published now")

    source = _source(fake_servicebus, refuse, {"lossy": _queue("lossy")})
    async with Peer(fake_servicebus, queues=("lossy",)) as peer:
        task = asyncio.create_task(source.run())
        await peer.send("lossy", ServiceBusMessage("x", message_id="l-1"))
        await _eventually(entered.is_set, "the message is being handed back")
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        if not done:  # the bug: it went on receiving; end it for the other tests
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
        assert done, "the source went on after the stop"
        assert lost == 1
        assert task.cancelled()


async def _stop(task: asyncio.Task[None]) -> bool:
    """Cancel the source's task; True when it ended within a bound against hanging (a
    source that went on is cancelled until it ends, for the tests after it)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=5)
    return bool(done)


def _ids(messages: list[Any]) -> list[str]:
    return [str(m.message_id) for m in messages]


async def test_a_stop_between_two_settles_hands_back_exactly_the_unsettled_messages(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three messages received in one batch, all published; the stop lands while the
    third is being completed (the real complete call is wrapped to hold there). The two
    completed ones stay completed; only the third is handed back (abandoned) on the way
    out: neither a settled message handed back (its lock is gone, the call fails) nor
    an unsettled one left locked for its 60 s."""
    server = fake_servicebus_factory(lock_duration_seconds=60.0)
    batches: list[list[str]] = []
    completing: list[str] = []
    completed: list[str] = []
    handed_back: list[str] = []
    holding = asyncio.Event()
    receive = ServiceBusReceiver.receive_messages
    complete = ServiceBusReceiver.complete_message
    abandon = ServiceBusReceiver.abandon_message

    async def recording_receive(self: ServiceBusReceiver, *args: Any, **kwargs: Any) -> Any:
        batch = await receive(self, *args, **kwargs)
        if batch:
            batches.append(_ids(batch))
        return batch

    async def holding_third_complete(self: ServiceBusReceiver, message: Any) -> None:
        completing.append(str(message.message_id))
        if len(completing) == 3:
            holding.set()
            await asyncio.Event().wait()  # the stop lands here
        await complete(self, message)
        completed.append(str(message.message_id))

    async def recording_abandon(self: ServiceBusReceiver, message: Any) -> None:
        handed_back.append(str(message.message_id))
        await abandon(self, message)

    monkeypatch.setattr(ServiceBusReceiver, "receive_messages", recording_receive)
    monkeypatch.setattr(ServiceBusReceiver, "complete_message", holding_third_complete)
    monkeypatch.setattr(ServiceBusReceiver, "abandon_message", recording_abandon)
    published: list[str] = []

    async def accept(event: Event) -> None:
        published.append(event.data["messageID"])

    source = _source(server, accept, {"trio": _queue("trio")})
    async with Peer(server, queues=("trio",)) as peer:
        # Queued before the source starts: its first receive takes all three at once.
        await peer.send(
            "trio", *(ServiceBusMessage(f"m{i}", message_id=f"t-{i}") for i in range(3))
        )
        task = asyncio.create_task(source.run())
        await _eventually(holding.is_set, "the third message is being completed")
        assert await _stop(task), "the source went on after the stop"
        assert task.cancelled()
        [batch] = batches
        assert sorted(batch) == ["t-0", "t-1", "t-2"]
        assert sorted(published) == sorted(batch)
        assert completing == batch
        assert completed == batch[:2]
        assert handed_back == batch[2:]
        assert _ids(await peer.peek("trio")) == batch[2:]


async def test_a_hand_back_refused_on_shutdown_does_not_keep_the_rest_locked(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped with two messages being published, the first hand-back fails (its lock
    lost, as the broker may answer): the second is still handed back, and the stop
    completes."""
    server = fake_servicebus_factory(lock_duration_seconds=60.0)
    tried: list[str] = []
    handed_back: list[str] = []
    abandon = ServiceBusReceiver.abandon_message

    async def refusing_the_first_abandon(self: ServiceBusReceiver, message: Any) -> None:
        tried.append(str(message.message_id))
        if len(tried) == 1:
            raise MessageLockLostError(message="the lock of the message was lost")
        await abandon(self, message)
        handed_back.append(str(message.message_id))

    monkeypatch.setattr(ServiceBusReceiver, "abandon_message", refusing_the_first_abandon)
    hang, is_holding = _hanging_publish()
    source = _source(server, hang, {"pair": _queue("pair")})
    async with Peer(server, queues=("pair",)) as peer:
        # Queued before the source starts: its first receive takes both at once.
        await peer.send(
            "pair",
            ServiceBusMessage("a", message_id="p-0"),
            ServiceBusMessage("b", message_id="p-1"),
        )
        task = asyncio.create_task(source.run())
        await _eventually(is_holding, "the messages are being published")
        assert await _stop(task), "the source did not stop"
        assert task.cancelled()
    assert sorted(tried) == ["p-0", "p-1"]
    assert handed_back == tried[1:]


async def test_a_failed_dead_letter_call_is_logged_and_the_connection_kept(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
    bus: Bus,
    nats_server: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The dead-letter call of a body that is not JSON fails once (the broker's error):
    the failure is logged and the source goes on on the same connection; the message
    comes back when its lock expires and is dead-lettered then."""
    caplog.set_level(logging.INFO, logger="test.azure_service_bus")
    server = fake_servicebus_factory(lock_duration_seconds=1.0)
    refusals = 1
    dead_letter = ServiceBusReceiver.dead_letter_message

    async def refusing_once(self: ServiceBusReceiver, message: Any, **kwargs: Any) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise ServiceBusError("the broker did not take the disposition")
        await dead_letter(self, message, **kwargs)

    monkeypatch.setattr(ServiceBusReceiver, "dead_letter_message", refusing_once)
    source = _source(
        server, lambda e: bus.publish("default", e), {"strict": _queue("strict", jsonBody=True)}
    )
    async with Peer(server, queues=("strict",)) as peer, _running(source):
        await peer.send("strict", ServiceBusMessage("{not json", message_id="bad-1"))
        await _eventually(lambda: refusals == 0, "the dead-letter call refused")
        await peer.send("strict", ServiceBusMessage('{"ok": 1}', message_id="good-1"))

        async def settled() -> bool:
            return await _stream_count(nats_server.url) == 1 and not await peer.peek("strict")

        await _eventually(settled, "the good message published, the bad one dead-lettered")
        async with peer.client.get_queue_receiver(
            "strict", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=5
        ) as dlq:
            [dead] = await dlq.receive_messages(max_message_count=5, max_wait_time=5)
            assert dead.message_id == "bad-1"
            assert dead.dead_letter_reason == "InvalidJSONBody"
            await dlq.complete_message(dead)
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "dead-letter of message bad-1 failed" in m]) == 1
    assert len([m for m in lines if m.endswith(": receiving")]) == 1
    assert not [m for m in lines if "reconnecting" in m]


async def test_a_stop_the_sdk_loses_in_a_receive_call_still_stops_and_hands_back_the_batch(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in a settle call, a stop that lands in the receive call can be lost by the SDK,
    which then returns what it received. The real receive call is wrapped to lose the
    first stop and then receive a queued message: the source must still stop, and hand
    that message back at once instead of publishing it."""
    server = fake_servicebus_factory(lock_duration_seconds=60.0)
    lost = 0
    handed_back: list[str] = []
    entered = asyncio.Event()
    receive = ServiceBusReceiver.receive_messages
    abandon = ServiceBusReceiver.abandon_message

    async def losing_receive(self: ServiceBusReceiver, *args: Any, **kwargs: Any) -> Any:
        nonlocal lost
        if not entered.is_set():
            entered.set()
            try:
                await asyncio.Event().wait()  # the stop lands here
            except asyncio.CancelledError:
                lost += 1  # lost, as the SDK's wait_for may: the call goes on
        return await receive(self, *args, **kwargs)

    async def recording_abandon(self: ServiceBusReceiver, message: Any) -> None:
        await abandon(self, message)
        handed_back.append(str(message.message_id))

    monkeypatch.setattr(ServiceBusReceiver, "receive_messages", losing_receive)
    monkeypatch.setattr(ServiceBusReceiver, "abandon_message", recording_abandon)
    published: list[str] = []

    async def accept(event: Event) -> None:
        published.append(event.data["messageID"])

    source = _source(server, accept, {"late": _queue("late")})
    async with Peer(server, queues=("late",)) as peer:
        await peer.send("late", ServiceBusMessage("x", message_id="r-1"))
        task = asyncio.create_task(source.run())
        await _eventually(entered.is_set, "the source is receiving")
        assert await _stop(task), "the source went on after the stop"
        assert task.cancelled()
        assert lost == 1
        assert published == []
        assert handed_back == ["r-1"]
        [waiting] = await peer.peek("late")
        assert waiting.message_id == "r-1"


# -- configuration -------------------------------------------------------------------------
class _Wrapper(BaseModel):
    """Stands in for the EventSource spec so error paths read like a manifest's."""

    azureServiceBus: dict[str, AzureServiceBusConfig]


def _errors(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as exc:
        _Wrapper.model_validate({"azureServiceBus": {"ev": raw}})
    return format_validation_error(exc.value, "spec")


CONN = {"connectionString": {"name": "s", "key": "k"}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {**CONN, "queueName": "q", "topicName": "t", "subscriptionName": "s"},
            "spec.azureServiceBus.ev.queueName: set either queueName, or topicName with "
            "subscriptionName, not both",
        ),
        (
            {**CONN},
            "spec.azureServiceBus.ev.queueName: set queueName, or topicName with subscriptionName",
        ),
        (
            {**CONN, "topicName": "t"},
            "spec.azureServiceBus.ev.subscriptionName: required when topicName is set",
        ),
        (
            {**CONN, "subscriptionName": "s"},
            "spec.azureServiceBus.ev.topicName: required when subscriptionName is set",
        ),
        (
            {"queueName": "q"},
            "spec.azureServiceBus.ev.connectionString: set connectionString, or "
            "fullyQualifiedNamespace to use Azure AD credentials",
        ),
        (
            {**CONN, "queueName": "q", "queue": "typo"},
            "spec.azureServiceBus.ev.queue: unknown field",
        ),
    ],
)
def test_config_errors_name_the_field(raw: dict[str, Any], expected: str) -> None:
    assert _errors(raw) == [expected]


@pytest.mark.skipif(not ARGO_EXAMPLE.is_file(), reason="Argo example corpus not beside the repo")
def test_argo_example_and_argo_fields_load() -> None:
    doc = yaml.safe_load(ARGO_EXAMPLE.read_text())
    [(name, raw)] = doc["spec"]["azureServiceBus"].items()
    cfg = AzureServiceBusConfig.model_validate(raw)
    assert (name, cfg.queue_name, cfg.json_body) == ("example", "test", True)
    assert cfg.connection_string is not None
    assert (cfg.connection_string.name, cfg.connection_string.key) == SECRET

    full = AzureServiceBusConfig.model_validate(
        {
            "fullyQualifiedNamespace": "ns.servicebus.windows.net",
            "topicName": "t",
            "subscriptionName": "s",
            "deferDelete": True,
            "metadata": {"a": "b"},
            "tls": {
                "caCertSecret": {"name": "tls", "key": "ca"},
                "clientCertSecret": {"name": "tls", "key": "crt"},
                "clientKeySecret": {"name": "tls", "key": "key"},
                "insecureSkipVerify": False,
                "enabled": True,
            },
        }
    )
    assert full.entity_path == "t/Subscriptions/s"
    assert full.defer_delete is True
    assert full.tls is not None and full.tls.enabled


def test_invalid_filter_is_refused_at_validation() -> None:
    good = AzureServiceBusConfig.model_validate(
        {**CONN, "queueName": "q", "filter": {"expression": "body.x == 1"}}
    )
    bad = AzureServiceBusConfig.model_validate(
        {**CONN, "queueName": "q", "filter": {"expression": "body.x =="}}
    )
    [line] = AzureServiceBusSource.check_config(SOURCE, {"good": good, "ev": bad})
    assert line.startswith("spec.azureServiceBus.ev.filter.expression: ")


async def test_invalid_filter_stops_the_source_with_a_config_error() -> None:
    async def never(event: Event) -> None:
        raise AssertionError("nothing to publish")

    ctx = SourceContext(publish=never, secrets=Secrets({}))
    cfg = AzureServiceBusConfig.model_validate(_queue("q", filter={"expression": "body.x =="}))
    source = AzureServiceBusSource(SOURCE, "argo-events", {"ev": cfg}, ctx, tuning=FAST)
    with pytest.raises(ConfigError, match=r"spec\.azureServiceBus\.ev\.filter\.expression"):
        await source.run()


async def test_malformed_connection_string_is_a_config_error_without_the_secret() -> None:
    secret_value = "Endpoint=;SharedAccessKey=super-secret-value"

    async def never(event: Event) -> None:
        raise AssertionError("nothing to publish")

    ctx = SourceContext(
        publish=never,
        secrets=Secrets({SECRET: secret_value}),
        log=logging.getLogger("test.azure_service_bus"),
    )
    cfg = AzureServiceBusConfig.model_validate(_queue("q"))
    source = AzureServiceBusSource(SOURCE, "argo-events", {"ev": cfg}, ctx, tuning=FAST)
    with pytest.raises(ConfigError) as exc:
        await asyncio.wait_for(source.run(), 10)
    assert "spec.azureServiceBus.ev.connectionString" in str(exc.value)
    assert "super-secret-value" not in str(exc.value)


async def test_tls_config_builds_a_context() -> None:
    async def never(event: Event) -> None:
        raise AssertionError("nothing to publish")

    ctx = SourceContext(publish=never, secrets=Secrets({}))
    assert await build_ssl_context(TLSConfig(enabled=True), ctx, "ns") is None
    context = await build_ssl_context(TLSConfig(insecureSkipVerify=True), ctx, "ns")
    assert context is not None and context.check_hostname is False
    with pytest.raises(ConfigError, match="go together"):
        await build_ssl_context(
            TLSConfig.model_validate({"clientCertSecret": {"name": "a", "key": "b"}}), ctx, "ns"
        )


def _hanging_publish() -> tuple[Callable[[Event], Awaitable[None]], Callable[[], bool]]:
    """A publish that never returns (a stop is to come in the middle of it), and a
    check that one has started."""
    holding = asyncio.Event()

    async def hang(event: Event) -> None:
        holding.set()
        await asyncio.Event().wait()

    return hang, holding.is_set


async def test_stopping_mid_publish_hands_the_message_back_at_once(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
    bus: Bus,
    nats_server: EmbeddedNats,
) -> None:
    """Stopped while a message is being published: it is abandoned on the way out, so the
    next receiver gets it now, not when its 60 s lock expires; it becomes one event."""
    server = fake_servicebus_factory(lock_duration_seconds=60.0)
    hang, is_holding = _hanging_publish()

    events = {"handback": _queue("handback")}
    async with Peer(server, queues=("handback",)) as peer:
        async with _running(_source(server, hang, events)) as task:
            await peer.send("handback", ServiceBusMessage("hold", message_id="h-1"))
            await _eventually(is_holding, "the message is being published")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        async with _running(_source(server, Publisher(bus), events)):

            async def through() -> bool:
                return await _stream_count(nats_server.url) == 1 and not await peer.peek("handback")

            await _eventually(through, "the handed-back message delivered", timeout=20.0)
    [(_, event)] = await _stream_messages(nats_server.url)
    assert event["data"]["messageID"] == "h-1"


async def test_stopping_while_the_broker_does_not_answer_still_stops(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
) -> None:
    """Handing in-flight messages back is bounded (``shutdown_settle_seconds``): a broker
    that holds the connection but answers nothing (here: its process paused) does not
    keep the source from stopping; the locks expire on their own."""
    server = fake_servicebus_factory(lock_duration_seconds=60.0)
    hang, is_holding = _hanging_publish()

    source = _source(server, hang, {"frozen": _queue("frozen")})
    async with Peer(server, queues=("frozen",)) as peer:
        task = asyncio.create_task(source.run())
        try:
            await _eventually(source.ready, "the source is receiving")
            await peer.send("frozen", ServiceBusMessage("hold", message_id="f-1"))
            await _eventually(is_holding, "the message is being published")
            os.kill(server.pid, signal.SIGSTOP)
            try:
                task.cancel()
                done, _ = await asyncio.wait([task], timeout=20.0)  # a bound against hanging
                assert done, "the source did not stop while the broker was not answering"
            finally:
                os.kill(server.pid, signal.SIGCONT)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
