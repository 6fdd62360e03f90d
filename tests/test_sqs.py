"""The sqs event source against real peers: moto over HTTP and a real nats-server.

What is checked is the delivery contract: a message becomes exactly one event on the bus
and is deleted only after the PubAck; a bus outage, a slow bus or a lost PubAck loses
nothing and doubles nothing; undecodable messages go where ``dlq`` says; FIFO order holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import orjson
import pytest
import yaml
from aiohttp import web
from pydantic import ValidationError

from app.adapters.bus import Bus, StreamLimits
from app.adapters.natsserver import EmbeddedNats
from app.kernel.errors import BusUnavailableError, ConfigError, StreamFullError
from app.kernel.events import Event, event_id_from
from app.kernel.settings import BusSettings
from app.kernel.spec import format_validation_error
from eventsources.base import SourceContext
from eventsources.sqs import SQSConfig, SQSSource
from tests.support.net import free_port
from tests.support.sensors import eventually
from tests.support.sources import CountingMetrics as Metrics
from tests.support.sources import DictSecrets as Secrets

SOURCE = "aws-sqs"
ARGO_EXAMPLE = (
    Path(__file__).resolve().parents[2] / "shared/argo-examples/event-sources/aws-sqs.yaml"
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# -- helpers ---------------------------------------------------------------------------


Publish = Callable[[Event], Awaitable[None]]


def _publisher(bus: Bus) -> Publish:
    async def publish(event: Event) -> None:
        await bus.publish("default", event)

    return publish


def _held_at_hold(bus: Bus) -> tuple[Publish, list[str], asyncio.Event]:
    """A publish onto ``bus`` that never returns for the body "hold" (a stop is to come
    in the middle of it), the bodies published, and the event set once "hold" is held."""
    published: list[str] = []
    holding = asyncio.Event()

    async def publish(event: Event) -> None:
        if event.data["body"] == "hold":
            holding.set()
            await asyncio.Event().wait()
        await bus.publish("default", event)
        published.append(str(event.data["body"]))

    return publish, published, holding


def _source(
    publish: Publish,
    events: dict[str, dict[str, Any]],
    *,
    secrets: Secrets | None = None,
    metrics: Metrics | None = None,
) -> SQSSource:
    ctx = SourceContext(
        publish=publish,
        secrets=secrets or Secrets({}),
        log=logging.getLogger("test.sqs"),
        metrics=metrics or Metrics(),
    )
    configs = {name: SQSConfig.model_validate(raw) for name, raw in events.items()}
    return SQSSource(SOURCE, "argo-events", configs, ctx)


def _cfg(endpoint: str, queue: str, **extra: Any) -> dict[str, Any]:
    return {
        "region": "us-east-1",
        "queue": queue,
        "endpoint": endpoint,
        "waitTimeSeconds": 1,
        **extra,
    }


#: Sources started by ``_running`` and not stopped yet.
_RUNNING: list[asyncio.Task[None]] = []


async def _eventually(
    check: Callable[[], Awaitable[bool]], what: str, *, timeout: float = 10.0
) -> None:
    """``eventually``, failing at once when a running source has crashed.

    A source whose task ended with an error will never make the condition true: its
    error is the test's failure, not a timeout after the whole wait.
    """

    async def alive_and(check: Callable[[], Awaitable[bool]] = check) -> bool:
        for task in _RUNNING:
            if task.done() and not task.cancelled():
                task.result()  # raises the source's error
        return await check()

    await eventually(alive_and, what, timeout=timeout, interval=0.05)


@contextlib.asynccontextmanager
async def _running(source: SQSSource) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run())

    async def ready() -> bool:
        return source.ready()

    _RUNNING.append(task)
    try:
        await _eventually(ready, "source ready")
        yield task
    finally:
        _RUNNING.remove(task)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _create_queue(sqs: Any, name: str, **attributes: str) -> str:
    resp = await sqs.create_queue(QueueName=name, Attributes=attributes)
    return str(resp["QueueUrl"])


async def _send_many(sqs: Any, url: str, bodies: list[str]) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(bodies), 10):
        chunk = bodies[start : start + 10]
        resp = await sqs.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(chunk)],
        )
        assert not resp.get("Failed")
        ids += [s["MessageId"] for s in sorted(resp["Successful"], key=lambda s: int(s["Id"]))]
    return ids


async def _in_queue(sqs: Any, url: str) -> int:
    """Messages not deleted yet: visible plus in flight."""
    resp = await sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    a = resp["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def _moto_state(endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=5) as resp:
        return dict(orjson.loads(resp.read()))


class Stream:
    """Reads the ``default`` stream with nats-py directly, not through the code under test."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def count(self) -> int:
        nc = await nats.connect(self.url)
        try:
            info = await nc.jetstream().stream_info("default")
            return int(info.state.messages)
        finally:
            await nc.close()

    async def messages(self) -> list[tuple[str, dict[str, Any]]]:
        """Every stored message in order, as (subject, decoded CloudEvent)."""
        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("default")
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg("default", seq)
                out.append((str(m.subject), orjson.loads(m.data or b"{}")))
            return out
        finally:
            await nc.close()


Made = tuple[int, dict[str, Any]] | None
Answer = Callable[[dict[str, Any]], Made | Awaitable[Made]]


class FaultySQS:
    """An HTTP front for moto that answers chosen SQS calls itself.

    ``answers[action]`` sees each request of that action and returns (or awaits) the
    answer (status, JSON), or None to forward it; everything else is forwarded to moto
    unchanged. moto never fails an entry for a reason of its own (only a stale receipt
    handle, a sender fault) and never refuses a call, so the retries for those are
    reached only through this front.
    """

    def __init__(self, moto: str) -> None:
        self.moto = moto
        self.answers: dict[str, Answer] = {}
        self.calls: list[str] = []
        #: The messages of every ReceiveMessage answer moto gave that had any.
        self.received: list[list[dict[str, Any]]] = []
        #: Set when the front stops: answers that hold a request wait for it.
        self.stopping = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.http: aiohttp.ClientSession | None = None
        self.endpoint = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.http = aiohttp.ClientSession()
        self.endpoint = f"http://127.0.0.1:{port}"
        return self.endpoint

    async def stop(self) -> None:
        self.stopping.set()
        if self.http is not None:
            await self.http.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        assert self.http is not None
        action = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        self.calls.append(action)
        body = await request.read()
        answer = self.answers.get(action)
        made = answer(orjson.loads(body)) if answer is not None else None
        if inspect.isawaitable(made):
            made = await made
        if made is not None:
            status, payload = made
            return web.Response(
                status=status, body=orjson.dumps(payload), content_type="application/x-amz-json-1.0"
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self.http.request(
            request.method, self.moto + request.path_qs, headers=headers, data=body
        ) as resp:
            answered = await resp.read()
            if action == "ReceiveMessage" and resp.status == 200:
                messages = orjson.loads(answered).get("Messages")
                if messages:
                    self.received.append(messages)
            return web.Response(
                status=resp.status,
                body=answered,
                headers={"Content-Type": resp.headers.get("Content-Type", "")},
            )


def _server_fault(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Every entry of the batch failed, SQS's fault (worth another try)."""
    failed = [
        {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
        for e in request["Entries"]
    ]
    return 200, {"Successful": [], "Failed": failed}


def _refused(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The whole call refused (an error the SDK does not retry by itself)."""
    return 403, {"__type": "com.amazonaws.sqs#AccessDenied", "message": "not now"}


def _once(fault: Answer) -> Answer:
    """``fault`` for the first request, then forward."""
    left = [fault]

    def answer(request: dict[str, Any]) -> Made | Awaitable[Made]:
        return left.pop()(request) if left else None

    return answer


@pytest.fixture
async def faulty_sqs(sqs_endpoint: str) -> AsyncIterator[FaultySQS]:
    front = FaultySQS(sqs_endpoint)
    await front.start()
    try:
        yield front
    finally:
        await front.stop()


@pytest.fixture
def stream(nats_server: EmbeddedNats) -> Stream:
    return Stream(nats_server.url)


@pytest.fixture
def bus_settings() -> BusSettings:
    """A publish gives up after 1 s (the suite's default is 2 s): while NATS is down every
    failed publish costs that long, and a publish to a live server takes milliseconds."""
    return BusSettings(publish_timeout_seconds=1.0, ack_wait_seconds=5.0)


# -- the happy path --------------------------------------------------------------------
async def test_message_becomes_event_then_is_deleted(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream
) -> None:
    json_url = await _create_queue(sqs, "training-requests")
    text_url = await _create_queue(sqs, "plain-notes")
    metrics = Metrics()
    source = _source(
        _publisher(bus),
        {
            "example": _cfg(
                sqs_endpoint, "training-requests", jsonBody=True, metadata={"env": "test"}
            ),
            "notes": _cfg(sqs_endpoint, "plain-notes"),
        },
        metrics=metrics,
    )
    async with _running(source):
        sent = await sqs.send_message(
            QueueUrl=json_url,
            MessageBody='{"model": "resnet", "dataset": "imagenet"}',
            MessageAttributes={
                "team": {"DataType": "String", "StringValue": "ml"},
                "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
                "traceparent": {"DataType": "String", "StringValue": TRACEPARENT},
            },
        )
        text = await sqs.send_message(QueueUrl=text_url, MessageBody="hello, world")

        async def two_events_and_queues_empty() -> bool:
            return (
                await stream.count() == 2
                and await _in_queue(sqs, json_url) == 0
                and await _in_queue(sqs, text_url) == 0
            )

        await _eventually(two_events_and_queues_empty, "2 events, both messages deleted")

    by_subject = dict(await stream.messages())
    event = by_subject[f"default.{SOURCE}.example"]
    assert event["traceparent"] == TRACEPARENT  # the sender's trace continues
    assert "traceparent" not in by_subject[f"default.{SOURCE}.notes"]
    assert event["type"] == "sqs"
    assert event["source"] == SOURCE
    assert event["subject"] == "example"
    assert event["id"] == event_id_from("sqs", json_url, sent["MessageId"])
    data = event["data"]
    assert data["messageId"] == sent["MessageId"]
    assert data["body"] == {"model": "resnet", "dataset": "imagenet"}
    assert data["metadata"] == {"env": "test"}
    assert data["messageAttributes"]["team"] == {"DataType": "String", "StringValue": "ml"}
    assert data["messageAttributes"]["blob"]["BinaryValue"] == "AAE="

    notes = by_subject[f"default.{SOURCE}.notes"]["data"]
    assert notes["messageId"] == text["MessageId"]
    assert notes["body"] == "hello, world"  # the text itself, not Argo's base64
    assert notes["metadata"] == {}
    assert metrics.counts == {("sent", "example"): 1, ("sent", "notes"): 1}
    assert metrics.sources == {SOURCE}


# -- the bus is down, slow, or loses a PubAck ------------------------------------------
async def test_bus_down_deletes_nothing_then_every_message_is_one_event(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream, nats_server: EmbeddedNats
) -> None:
    n = 100
    url = await _create_queue(sqs, "outage")
    failures = 0
    real = _publisher(bus)

    async def publish(event: Event) -> None:
        nonlocal failures
        try:
            await real(event)
        except BusUnavailableError:
            failures += 1
            raise

    source = _source(
        publish, {"example": _cfg(sqs_endpoint, "outage", visibilityTimeout=1, concurrency=2)}
    )
    async with _running(source):
        nats_server.kill()
        ids = await _send_many(sqs, url, [orjson.dumps({"i": i}).decode() for i in range(n)])

        async def several_failed_publishes() -> bool:
            return failures >= 20  # a failed batch on each of the two loops

        await _eventually(several_failed_publishes, "publishes failing while NATS is down")

        # Nothing deleted without a PubAck. moto derives both counts from the clock in
        # one request, so a message whose 1 s visibility ends in between is missed by
        # one read; polled, not read once. The final check below is exact: a message
        # deleted now would never reach the stream.
        async def all_still_queued() -> bool:
            return await _in_queue(sqs, url) == n

        await _eventually(all_still_queued, f"all {n} messages still in the queue", timeout=5)

        nats_server.start()

        async def all_through() -> bool:
            return await _in_queue(sqs, url) == 0 and await stream.count() >= n

        await _eventually(all_through, f"{n} events stored and the queue empty", timeout=40)

    stored = await stream.messages()
    assert len(stored) == n
    assert sorted(e["data"]["messageId"] for _, e in stored) == sorted(ids)
    assert {e["id"] for _, e in stored} == {event_id_from("sqs", url, i) for i in ids}


async def test_full_stream_leaves_messages_in_the_queue_until_there_is_room(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream
) -> None:
    room, n = 5, 12
    await bus.ensure_stream("default", StreamLimits(max_msgs=room))  # discard new
    url = await _create_queue(sqs, "backlog")
    full = 0
    real = _publisher(bus)

    async def publish(event: Event) -> None:
        nonlocal full
        try:
            await real(event)
        except StreamFullError:
            full += 1
            raise

    source = _source(publish, {"example": _cfg(sqs_endpoint, "backlog", visibilityTimeout=1)})
    async with _running(source):
        ids = await _send_many(sqs, url, [orjson.dumps({"i": i}).decode() for i in range(n)])

        async def refused_at_the_limit() -> bool:
            return full >= n - room and await stream.count() == room

        await _eventually(refused_at_the_limit, "stream full, further publishes refused")

        async def rest_still_queued() -> bool:
            return await _in_queue(sqs, url) == n - room

        await _eventually(rest_still_queued, f"{n - room} messages left in the queue", timeout=5)

        await bus.ensure_stream("default", StreamLimits(max_msgs=0))  # room again

        async def all_through() -> bool:
            return await _in_queue(sqs, url) == 0 and await stream.count() >= n

        await _eventually(all_through, f"{n} events stored and the queue empty", timeout=40)

    stored = await stream.messages()
    assert sorted(e["data"]["messageId"] for _, e in stored) == sorted(ids)  # none dropped


async def test_publish_slower_than_visibility_timeout_is_one_event(
    sqs: Any, faulty_sqs: FaultySQS, bus: Bus, stream: Stream
) -> None:
    """The publish takes longer than the 2 s visibility timeout (it waits until the
    source has extended the visibility twice): the message is not handed to the other
    receive loop meanwhile, so it is published once, then deleted."""
    url = await _create_queue(sqs, "slow-bus")
    real = _publisher(bus)
    attempts: list[str] = []
    extended: list[int] = []

    def record(request: dict[str, Any]) -> Made:
        extended.extend(int(e["VisibilityTimeout"]) for e in request["Entries"])
        return None  # forwarded

    faulty_sqs.answers["ChangeMessageVisibilityBatch"] = record

    async def slow_publish(event: Event) -> None:
        attempts.append(event.id)

        async def extended_twice() -> bool:
            return len(extended) >= 2

        await _eventually(extended_twice, "the visibility extended twice")
        await real(event)

    source = _source(
        slow_publish,
        {"example": _cfg(faulty_sqs.endpoint, "slow-bus", visibilityTimeout=2, concurrency=2)},
    )
    async with _running(source):
        await sqs.send_message(QueueUrl=url, MessageBody="slow")

        async def stored_and_deleted() -> bool:
            return await stream.count() == 1 and await _in_queue(sqs, url) == 0

        await _eventually(stored_and_deleted, "event stored and message deleted")

    assert len(attempts) == 1
    assert extended[:2] == [2, 2]


@pytest.mark.parametrize("queue", ["keeper", "keeper.fifo"])
async def test_only_messages_still_being_published_have_their_visibility_extended(
    queue: str, sqs: Any, faulty_sqs: FaultySQS, bus: Bus, stream: Stream
) -> None:
    """One batch of a fast and a slow message: while the slow one is published, only it
    is kept invisible; the fast one, already on the bus, is left to be deleted."""
    fifo = queue.endswith(".fifo")
    url = await _create_queue(sqs, queue, **({"FifoQueue": "true"} if fifo else {}))
    for body in ("fast", "slow"):
        group = {"MessageGroupId": "g", "MessageDeduplicationId": body} if fifo else {}
        await sqs.send_message(QueueUrl=url, MessageBody=body, **group)
    real = _publisher(bus)
    extended: list[str] = []

    def record(request: dict[str, Any]) -> Made:
        extended.extend(e["ReceiptHandle"] for e in request["Entries"])
        return None  # forwarded

    faulty_sqs.answers["ChangeMessageVisibilityBatch"] = record

    async def publish(event: Event) -> None:
        if event.data["body"] == "slow":

            async def extended_once() -> bool:
                return bool(extended)

            await _eventually(extended_once, "the visibility extended")
        await real(event)

    source = _source(publish, {"example": _cfg(faulty_sqs.endpoint, queue, visibilityTimeout=1)})
    async with _running(source):

        async def stored_and_deleted() -> bool:
            return await stream.count() == 2 and await _in_queue(sqs, url) == 0

        await _eventually(stored_and_deleted, "both events stored, both messages deleted")

    (batch,) = faulty_sqs.received[:1]
    body_of = {m["ReceiptHandle"]: m["Body"] for m in batch}
    assert sorted(body_of.values()) == ["fast", "slow"]
    assert {body_of[h] for h in extended} == {"slow"}


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (BusUnavailableError("PubAck lost"), "PubAck lost"),
        (RuntimeError("PubAck lost"), "RuntimeError: PubAck lost"),
    ],
    ids=["transient", "unexpected"],
)
async def test_lost_puback_redelivery_is_deduplicated(
    error: Exception,
    reason: str,
    sqs: Any,
    sqs_endpoint: str,
    bus: Bus,
    stream: Stream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The bus stores the event but the publish raises (a lost PubAck, or an error of
    any other kind): the message is not deleted, is counted as failed, named with the
    reason in the loop's warning, and comes back with the same event id."""
    url = await _create_queue(sqs, "lost-ack")
    real = _publisher(bus)
    attempts: list[str] = []

    async def publish_then_lose_ack(event: Event) -> None:
        attempts.append(event.id)
        await real(event)
        if len(attempts) == 1:
            # Stored by JetStream, but the source never hears it: it must not delete.
            raise error

    metrics = Metrics()
    caplog.set_level(logging.WARNING, logger="test.sqs")
    source = _source(
        publish_then_lose_ack,
        {"example": _cfg(sqs_endpoint, "lost-ack", visibilityTimeout=1)},
        metrics=metrics,
    )
    async with _running(source):
        (mid,) = await _send_many(sqs, url, ["once"])

        async def redelivered_and_deleted() -> bool:
            return len(attempts) >= 2 and await _in_queue(sqs, url) == 0

        await _eventually(redelivered_and_deleted, "redelivered, then deleted")

    assert len(set(attempts)) == 1  # the redelivery carried the same event id
    assert await stream.count() == 1
    assert metrics.counts == {("failed", "example"): 1, ("sent", "example"): 1}
    assert metrics.sources == {SOURCE}
    warned = [r.getMessage() for r in caplog.records if "not published" in r.getMessage()]
    assert len(warned) == 1 and f"1 of 1 messages not published ({reason})" in warned[0]
    assert warned[0].endswith(f"Message ids: {mid}")


# -- undecodable bodies ----------------------------------------------------------------
async def test_invalid_json_with_dlq_is_redriven_and_the_rest_flows(
    sqs: Any, faulty_sqs: FaultySQS, bus: Bus, stream: Stream
) -> None:
    dlq_url = await _create_queue(sqs, "requests-dlq")
    dlq_arn = (await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    url = await _create_queue(
        sqs,
        "requests",
        RedrivePolicy=orjson.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1}).decode(),
    )
    metrics = Metrics()
    released: list[tuple[str, int]] = []

    def record(request: dict[str, Any]) -> Made:
        released.extend((e["Id"], int(e["VisibilityTimeout"])) for e in request["Entries"])
        return None  # forwarded

    faulty_sqs.answers["ChangeMessageVisibilityBatch"] = record
    # The 60 s visibility timeout would hold the bad message far longer than this test
    # waits: it reaches the DLQ promptly only because the source makes it visible again.
    source = _source(
        _publisher(bus),
        {
            "example": _cfg(
                faulty_sqs.endpoint, "requests", jsonBody=True, dlq=True, visibilityTimeout=60
            )
        },
        metrics=metrics,
    )
    async with _running(source):
        await _send_many(sqs, url, ["{not json", '{"ok": 1}', '{"ok": 2}'])

        async def settled() -> bool:
            return (
                await stream.count() == 2
                and await _in_queue(sqs, url) == 0
                and await _in_queue(sqs, dlq_url) == 1
            )

        await _eventually(settled, "2 events, bad message in the DLQ")

    dead = await sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)
    assert [m["Body"] for m in dead["Messages"]] == ["{not json"]
    assert sorted(e["data"]["body"]["ok"] for _, e in await stream.messages()) == [1, 2]
    assert metrics.counts["failed", "example"] >= 1
    assert metrics.counts["sent", "example"] == 2
    assert [seconds for _, seconds in released] == [0]  # visible again at once


async def test_invalid_json_without_dlq_is_deleted_and_counted(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    """An undecodable message is deleted and counted as failed; one the filter does not
    pass is deleted and counted as filtered; only the rest is published."""
    url = await _create_queue(sqs, "requests")
    metrics = Metrics()
    source = _source(
        _publisher(bus),
        {
            "example": _cfg(
                sqs_endpoint, "requests", jsonBody=True, filter={"expression": "body.ok == true"}
            )
        },
        metrics=metrics,
    )
    caplog.set_level(logging.WARNING, logger="test.sqs")
    async with _running(source):
        bad_id, *_ = await _send_many(sqs, url, ["<xml/>", '{"ok": true}', '{"ok": false}'])

        async def settled() -> bool:
            return await stream.count() == 1 and await _in_queue(sqs, url) == 0

        await _eventually(settled, "1 event, all three messages gone")

    assert [e["data"]["body"] for _, e in await stream.messages()] == [{"ok": True}]
    assert metrics.counts == {
        ("failed", "example"): 1,
        ("sent", "example"): 1,
        ("filtered", "example"): 1,
    }
    assert metrics.sources == {SOURCE}
    assert any(bad_id in r.getMessage() for r in caplog.records)


# -- FIFO, credentials, a queue that appears later ------------------------------------
async def test_fifo_queue_keeps_order(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream
) -> None:
    url = await _create_queue(sqs, "jobs.fifo", FifoQueue="true")
    source = _source(_publisher(bus), {"example": _cfg(sqs_endpoint, "jobs.fifo", jsonBody=True)})
    async with _running(source):
        for i in range(25):
            await sqs.send_message(
                QueueUrl=url,
                MessageBody=orjson.dumps({"step": i}).decode(),
                MessageGroupId="pipeline-1",
                MessageDeduplicationId=f"step-{i}",
            )

        async def all_through() -> bool:
            return await stream.count() == 25 and await _in_queue(sqs, url) == 0

        await _eventually(all_through, "25 FIFO events")

    assert [e["data"]["body"]["step"] for _, e in await stream.messages()] == list(range(25))


async def test_fifo_failure_leaves_the_rest_of_the_batch_so_nothing_overtakes(
    sqs: Any, faulty_sqs: FaultySQS, bus: Bus, stream: Stream
) -> None:
    """The third message of a FIFO batch of five fails to publish once: nothing after it
    is published from that batch; it and the two after it come back after the 1 s
    visibility timeout and each reaches the bus once.

    The order they come back in is not checked: moto hands back the messages of a group
    whose visibility ended together out of order (SQS keeps it); what the source
    decides is that the first batch stops at the failure.
    """
    url = await _create_queue(sqs, "steps.fifo", FifoQueue="true")
    for i in range(5):
        await sqs.send_message(
            QueueUrl=url,
            MessageBody=orjson.dumps({"step": i}).decode(),
            MessageGroupId="pipeline-1",
            MessageDeduplicationId=f"step-{i}",
        )
    real = _publisher(bus)
    attempts: list[tuple[int, int]] = []  # (step, receives with messages so far)

    async def publish(event: Event) -> None:
        step = int(event.data["body"]["step"])
        attempts.append((step, len(faulty_sqs.received)))
        if step == 2 and [s for s, _ in attempts].count(2) == 1:
            raise BusUnavailableError("not this time")
        await real(event)

    metrics = Metrics()
    source = _source(
        publish,
        {"example": _cfg(faulty_sqs.endpoint, "steps.fifo", jsonBody=True, visibilityTimeout=1)},
        metrics=metrics,
    )
    async with _running(source):

        async def all_through() -> bool:
            return await stream.count() == 5 and await _in_queue(sqs, url) == 0

        await _eventually(all_through, "5 FIFO events")

    assert [len(batch) for batch in faulty_sqs.received[:1]] == [5]
    assert [step for step, batches in attempts if batches == 1] == [0, 1, 2]
    assert sorted(step for step, _ in attempts) == [0, 1, 2, 2, 3, 4]
    assert sorted(e["data"]["body"]["step"] for _, e in await stream.messages()) == list(range(5))
    assert metrics.counts == {("failed", "example"): 1, ("sent", "example"): 5}
    assert metrics.sources == {SOURCE}


async def test_keys_from_secrets_and_assumed_role(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream
) -> None:
    url = await _create_queue(sqs, "secured")
    secrets = Secrets(
        {
            ("aws-secret", "accesskey"): "AKIDTRIGGERFISH\n",
            ("aws-secret", "secretkey"): "not-a-real-secret",
            ("aws-secret", "token"): "session-token",
        }
    )
    keys = {
        "accessKey": {"name": "aws-secret", "key": "accesskey"},
        "secretKey": {"name": "aws-secret", "key": "secretkey"},
        "sessionToken": {"name": "aws-secret", "key": "token"},
    }
    source = _source(
        _publisher(bus),
        {
            "keys": _cfg(sqs_endpoint, "secured", **keys),
            "role": _cfg(
                sqs_endpoint,
                "secured",
                roleARN="arn:aws:iam::123456789012:role/triggerfish-reader",
                **keys,
            ),
        },
        secrets=secrets,
    )
    async with _running(source):
        await _send_many(sqs, url, [f"m{i}" for i in range(10)])

        async def all_through() -> bool:
            return await stream.count() == 10 and await _in_queue(sqs, url) == 0

        await _eventually(all_through, "10 events through both credential paths")

    assert ("argo-events", "aws-secret", "accesskey") in secrets.reads
    assert ("argo-events", "aws-secret", "token") in secrets.reads
    # moto's STS recorded the role the "role" event assumed.
    state = await asyncio.to_thread(_moto_state, sqs_endpoint)
    assumed = state["sts"]["AssumedRole"]
    assert [a["role_arn"] for a in assumed] == ["arn:aws:iam::123456789012:role/triggerfish-reader"]
    assert assumed[0]["session_name"] == f"triggerfish-{SOURCE}-role"


async def test_queue_created_after_start_is_picked_up(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream
) -> None:
    source = _source(_publisher(bus), {"example": _cfg(sqs_endpoint, "late")})
    task = asyncio.create_task(source.run())
    try:
        await asyncio.sleep(0.3)
        assert not source.ready()
        url = await _create_queue(sqs, "late")

        async def ready() -> bool:
            return source.ready()

        await _eventually(ready, "source ready once the queue exists")
        await sqs.send_message(QueueUrl=url, MessageBody="finally")

        async def through() -> bool:
            return await stream.count() == 1 and await _in_queue(sqs, url) == 0

        await _eventually(through, "event stored")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_stopping_during_a_long_poll_does_not_hide_messages(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream
) -> None:
    url = await _create_queue(sqs, "restart")
    # 120 s visibility: a message taken by the dying poll and not given back would miss
    # this test's 20 s bound.
    cfg = {"example": _cfg(sqs_endpoint, "restart", waitTimeSeconds=2, visibilityTimeout=120)}
    first = _source(_publisher(bus), cfg)
    async with _running(first) as task:
        task.cancel()
        # Arrives while the first source's long poll is still open on the server.
        await sqs.send_message(QueueUrl=url, MessageBody="during restart")
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async with _running(_source(_publisher(bus), cfg)):

        async def through() -> bool:
            return await stream.count() == 1 and await _in_queue(sqs, url) == 0

        await _eventually(through, "the message from the stopped poll delivered promptly")


# -- configuration ---------------------------------------------------------------------
def _errors(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        SQSConfig.model_validate(raw)
    return format_validation_error(info.value, "spec.sqs.example")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"queue": "q"}, "spec.sqs.example.region: required field is missing"),
        ({"region": "us-east-1"}, "spec.sqs.example.queue: required field is missing"),
        ({"region": " ", "queue": "q"}, "spec.sqs.example.region: must not be empty"),
        ({"region": "us-east-1", "queue": "q", "waitTimeSeconds": 21}, "waitTimeSeconds"),
        ({"region": "us-east-1", "queue": "q", "maxMessages": 0}, "maxMessages"),
        ({"region": "us-east-1", "queue": "q", "maxMessages": 11}, "maxMessages"),
        ({"region": "us-east-1", "queue": "q", "visibilityTimeout": 0}, "visibilityTimeout"),
        ({"region": "us-east-1", "queue": "q", "concurrency": 0}, "concurrency"),
        ({"region": "us-east-1", "queue": "q", "endpoint": "localhost:4566"}, "endpoint"),
        ({"region": "us-east-1", "queue": "q", "queueURL": "x"}, "queueURL: unknown field"),
        (
            {"region": "us-east-1", "queue": "q", "accessKey": {"name": "s", "key": "k"}},
            "accessKey and secretKey must be given together",
        ),
    ],
)
def test_config_errors_name_the_field(raw: dict[str, Any], expected: str) -> None:
    lines = _errors(raw)
    assert any(expected in line for line in lines), lines


def test_config_defaults_match_argo() -> None:
    cfg = SQSConfig.model_validate({"region": "us-east-1", "queue": "q", "roleARN": "arn:x"})
    assert cfg.role_arn == "arn:x"
    assert cfg.effective_wait_seconds == 3  # 0 means 3 s, as in Argo
    assert (cfg.visibility_timeout, cfg.max_messages, cfg.concurrency) == (120, 10, 1)
    assert not cfg.json_body and not cfg.dlq


@pytest.mark.skipif(not ARGO_EXAMPLE.is_file(), reason="Argo example corpus not beside the repo")
def test_argo_example_manifest_loads() -> None:
    manifest = yaml.safe_load(ARGO_EXAMPLE.read_text())
    for raw in manifest["spec"]["sqs"].values():
        cfg = SQSConfig.model_validate(raw)
        assert cfg.region == "us-east-1"


async def test_invalid_filter_is_rejected_at_start() -> None:
    async def never(event: Event) -> None:
        raise AssertionError("no event expected")

    source = _source(
        never,
        {"example": {"region": "us-east-1", "queue": "q", "filter": {"expression": "body.x =="}}},
    )
    with pytest.raises(ConfigError) as info:
        await source.run()
    assert info.value.path == "spec.sqs.example.filter.expression"


async def test_stopping_mid_batch_deletes_what_was_published_and_gives_back_the_rest(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped while a batch is being published: the message already on the bus is
    deleted, the one whose publish was cut short is visible again at once (not hidden for
    the 120 s visibility timeout, nor lost), and SQS refuses none of those calls."""
    caplog.set_level(logging.WARNING, logger="test.sqs")
    url = await _create_queue(sqs, "mid-batch")
    await _send_many(sqs, url, ["go", "hold"])  # before the start: one batch
    publish, published, holding = _held_at_hold(bus)

    source = _source(publish, {"example": _cfg(sqs_endpoint, "mid-batch", visibilityTimeout=120)})
    async with _running(source) as task:

        async def mid_batch() -> bool:
            return holding.is_set() and published == ["go"]

        await _eventually(mid_batch, "'go' published while 'hold' is being published")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    resp = await sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attrs = resp["Attributes"]
    assert (
        attrs["ApproximateNumberOfMessages"],
        attrs["ApproximateNumberOfMessagesNotVisible"],
    ) == (
        "1",
        "0",
    )
    again = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    assert [m["Body"] for m in again["Messages"]] == ["hold"]
    assert [e["data"]["body"] for _, e in await stream.messages()] == ["go"]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_entries_sqs_refuses_on_shutdown_are_logged_by_message_id(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    """The queue is purged while a batch is being published, so when the source stops,
    SQS refuses its delete of the published message and its visibility change of the
    other one (their receipt handles are gone): each refusal is logged with the message
    id and SQS's code, and the stop still completes."""
    url = await _create_queue(sqs, "purged")
    go_id, hold_id = await _send_many(sqs, url, ["go", "hold"])
    publish, published, holding = _held_at_hold(bus)

    caplog.set_level(logging.WARNING, logger="test.sqs")
    source = _source(publish, {"example": _cfg(sqs_endpoint, "purged", visibilityTimeout=120)})
    async with _running(source) as task:

        async def mid_batch() -> bool:
            return holding.is_set() and published == ["go"]

        await _eventually(mid_batch, "'go' published while 'hold' is being published")
        await sqs.purge_queue(QueueUrl=url)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"message {go_id} was published but cannot be deleted: ReceiptHandleIsInvalid" in line
        for line in lines
    ), lines
    assert any(
        f"cannot change the visibility of message {hold_id} to 0s: ReceiptHandleIsInvalid" in line
        for line in lines
    ), lines
    assert [e["data"]["body"] for _, e in await stream.messages()] == ["go"]


# -- deletes SQS fails or refuses --------------------------------------------------------
@pytest.mark.parametrize("fault", [_server_fault, _refused], ids=["entries-failed", "refused"])
async def test_delete_sqs_fails_once_is_tried_again(
    fault: Answer, sqs: Any, faulty_sqs: FaultySQS, bus: Bus, stream: Stream
) -> None:
    """The first DeleteMessageBatch fails (every entry with a server fault, or the whole
    call refused): the published messages are deleted by the next attempt, not left
    hidden for the 120 s visibility timeout and published again."""
    url = await _create_queue(sqs, "retried")
    faulty_sqs.answers["DeleteMessageBatch"] = _once(fault)
    source = _source(
        _publisher(bus),
        {"example": _cfg(faulty_sqs.endpoint, "retried", visibilityTimeout=120)},
    )
    async with _running(source):
        await _send_many(sqs, url, ["a", "b"])

        async def deleted() -> bool:
            return await _in_queue(sqs, url) == 0

        await _eventually(deleted, "both messages deleted by the second attempt")

    assert faulty_sqs.calls.count("DeleteMessageBatch") == 2
    assert sorted(e["data"]["body"] for _, e in await stream.messages()) == ["a", "b"]


async def test_delete_failing_every_time_gives_up_after_three_attempts(
    sqs: Any, faulty_sqs: FaultySQS, bus: Bus, stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    """Every delete with the first receipt handle fails: three attempts, then the delete
    is given up and logged with the message id. The message comes back after its
    visibility timeout (1 s here), is published again with the same event id and
    deleted with its new receipt handle; the bus stores it once."""
    url = await _create_queue(sqs, "given-up")
    doomed: set[str] = set()
    attempts: list[int] = []

    def fail_the_first_receipt(request: dict[str, Any]) -> Made:
        handles = {e["ReceiptHandle"] for e in request["Entries"]}
        if not doomed:
            doomed.update(handles)
        if handles != doomed:
            return None
        attempts.append(1)
        return _server_fault(request)

    faulty_sqs.answers["DeleteMessageBatch"] = fail_the_first_receipt
    caplog.set_level(logging.WARNING, logger="test.sqs")
    source = _source(
        _publisher(bus), {"example": _cfg(faulty_sqs.endpoint, "given-up", visibilityTimeout=1)}
    )
    async with _running(source):
        (mid,) = await _send_many(sqs, url, ["once"])

        async def given_up_and_deleted() -> bool:
            return any("gave up" in r.getMessage() for r in caplog.records) and (
                await _in_queue(sqs, url) == 0
            )

        await _eventually(given_up_and_deleted, "the delete given up, the message deleted")

    assert len(attempts) == 3
    (line,) = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert f"gave up deleting 1 published messages ({mid})" in line
    assert await stream.count() == 1


async def test_stopping_while_sqs_holds_the_poll_past_its_wait_does_not_hang(
    sqs: Any, faulty_sqs: FaultySQS, bus: Bus
) -> None:
    """SQS holds the long poll open past ``waitTimeSeconds``: a stop waits for it at most
    two seconds more, not until the client's read timeout (``waitTimeSeconds`` + 15 s)."""
    await _create_queue(sqs, "held")
    held = asyncio.Event()

    async def hold(request: dict[str, Any]) -> Made:
        held.set()
        await faulty_sqs.stopping.wait()  # not answered while the test runs
        return None

    source = _source(_publisher(bus), {"example": _cfg(faulty_sqs.endpoint, "held")})
    async with _running(source) as task:
        faulty_sqs.answers["ReceiveMessage"] = hold

        async def holding() -> bool:
            return held.is_set()

        await _eventually(holding, "a receive held by SQS")
        task.cancel()
        # 1 s wait + 2 s grace; the read timeout would end it only after 16 s
        done, _ = await asyncio.wait([task], timeout=10)
        assert done, "the stop waited for the unanswered poll"


async def test_stop_hands_back_every_message_of_the_last_poll_by_its_own_entry(
    sqs: Any, faulty_sqs: FaultySQS, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """The poll a stop waits for brings two messages: each is made visible again in one
    ChangeMessageVisibilityBatch with an entry of its own. SQS fails the first entry
    here: that message id is logged, and the other message is visible at once."""
    url = await _create_queue(sqs, "handed-back")
    held, answer = asyncio.Event(), asyncio.Event()
    entries: list[dict[str, Any]] = []

    async def hold_the_first_poll(request: dict[str, Any]) -> Made:
        if not held.is_set():
            held.set()
            await answer.wait()
        return None  # forwarded to moto, which has both messages by then

    async def fail_the_first_entry(request: dict[str, Any]) -> Made:
        entries.extend(request["Entries"])
        first, *rest = request["Entries"]
        for e in rest:
            await sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=e["ReceiptHandle"], VisibilityTimeout=0
            )
        failed = {"Id": first["Id"], "SenderFault": False, "Code": "InternalError"}
        return 200, {"Successful": [{"Id": e["Id"]} for e in rest], "Failed": [failed]}

    faulty_sqs.answers["ReceiveMessage"] = hold_the_first_poll
    faulty_sqs.answers["ChangeMessageVisibilityBatch"] = fail_the_first_entry
    caplog.set_level(logging.WARNING, logger="test.sqs")
    source = _source(
        _publisher(bus),
        {"example": _cfg(faulty_sqs.endpoint, "handed-back", visibilityTimeout=120)},
    )
    async with _running(source) as task:

        async def holding() -> bool:
            return held.is_set()

        await _eventually(holding, "the first poll held")
        task.cancel()
        ids = await _send_many(sqs, url, ["a", "b"])
        answer.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert len(entries) == 2 and len({e["Id"] for e in entries}) == 2
    visible = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    (back,) = [m["MessageId"] for m in visible["Messages"]]
    (kept,) = set(ids) - {back}
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        f"cannot change the visibility of message {kept} to 0s: InternalError" in line
        for line in lines
    ), lines


async def test_stop_waits_for_the_deletes_still_running(
    sqs: Any, faulty_sqs: FaultySQS, bus: Bus, stream: Stream
) -> None:
    """Stopped while the delete of a published message is running (its first attempt
    answered only after the stop, with a server fault): the stop waits for the retry,
    which deletes it, before closing the client."""
    url = await _create_queue(sqs, "draining")
    held, answer = asyncio.Event(), asyncio.Event()

    async def hold_then_fail(request: dict[str, Any]) -> Made:
        held.set()
        await answer.wait()
        return _server_fault(request)

    faulty_sqs.answers["DeleteMessageBatch"] = _once(hold_then_fail)
    source = _source(
        _publisher(bus), {"example": _cfg(faulty_sqs.endpoint, "draining", visibilityTimeout=120)}
    )
    async with _running(source) as task:
        await _send_many(sqs, url, ["m"])

        async def deleting() -> bool:
            return held.is_set()

        await _eventually(deleting, "the delete held")
        task.cancel()
        # the receive loop stops within its 1 s poll; a stop that did not wait for the
        # delete would have closed the client by now
        await asyncio.wait([task], timeout=2)
        answer.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert faulty_sqs.calls.count("DeleteMessageBatch") == 2
    assert await _in_queue(sqs, url) == 0
    assert await stream.count() == 1
