"""The sqs event source against real peers: moto over HTTP and a real nats-server.

What is checked is the delivery contract: a message becomes exactly one event on the bus
and is deleted only after the PubAck; a bus outage, a slow bus or a lost PubAck loses
nothing and doubles nothing; undecodable messages go where ``dlq`` says; FIFO order holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
import yaml
from pydantic import ValidationError

from app.adapters.bus import Bus, StreamLimits
from app.adapters.natsserver import EmbeddedNats
from app.kernel.errors import BusUnavailableError, ConfigError, StreamFullError
from app.kernel.events import Event, event_id_from
from app.kernel.settings import BusSettings
from app.kernel.spec import format_validation_error
from eventsources.base import SourceContext
from eventsources.sqs import SQSConfig, SQSSource
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
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream
) -> None:
    url = await _create_queue(sqs, "slow-bus")
    real = _publisher(bus)
    published: list[str] = []

    async def slow_publish(event: Event) -> None:
        await asyncio.sleep(2.5)  # longer than the 1 s visibility timeout, twice over
        await real(event)
        published.append(event.id)

    source = _source(
        slow_publish,
        {"example": _cfg(sqs_endpoint, "slow-bus", visibilityTimeout=1, concurrency=2)},
    )
    async with _running(source):
        await sqs.send_message(QueueUrl=url, MessageBody="slow")

        async def stored_and_deleted() -> bool:
            return bool(published) and await _in_queue(sqs, url) == 0

        await _eventually(stored_and_deleted, "event stored and message deleted")

    assert await stream.count() == 1
    assert len(set(published)) == 1


async def test_lost_puback_redelivery_is_deduplicated(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream
) -> None:
    url = await _create_queue(sqs, "lost-ack")
    real = _publisher(bus)
    attempts: list[str] = []

    async def publish_then_lose_ack(event: Event) -> None:
        attempts.append(event.id)
        await real(event)
        if len(attempts) == 1:
            # Stored by JetStream, but the source never hears it: it must not delete.
            raise BusUnavailableError("PubAck lost")

    source = _source(
        publish_then_lose_ack, {"example": _cfg(sqs_endpoint, "lost-ack", visibilityTimeout=1)}
    )
    async with _running(source):
        await sqs.send_message(QueueUrl=url, MessageBody="once")

        async def redelivered_and_deleted() -> bool:
            return len(attempts) >= 2 and await _in_queue(sqs, url) == 0

        await _eventually(redelivered_and_deleted, "redelivered, then deleted")

    assert len(set(attempts)) == 1  # the redelivery carried the same event id
    assert await stream.count() == 1


# -- undecodable bodies ----------------------------------------------------------------
async def test_invalid_json_with_dlq_is_redriven_and_the_rest_flows(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream
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
    # The 60 s visibility timeout would hold the bad message far longer than this test
    # waits: it reaches the DLQ promptly only because the source makes it visible again.
    source = _source(
        _publisher(bus),
        {"example": _cfg(sqs_endpoint, "requests", jsonBody=True, dlq=True, visibilityTimeout=60)},
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


async def test_invalid_json_without_dlq_is_deleted_and_counted(
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    url = await _create_queue(sqs, "requests")
    metrics = Metrics()
    source = _source(
        _publisher(bus),
        {"example": _cfg(sqs_endpoint, "requests", jsonBody=True)},
        metrics=metrics,
    )
    caplog.set_level(logging.WARNING, logger="test.sqs")
    async with _running(source):
        bad_id, *_ = await _send_many(sqs, url, ["<xml/>", '{"ok": true}'])

        async def settled() -> bool:
            return await stream.count() == 1 and await _in_queue(sqs, url) == 0

        await _eventually(settled, "1 event, both messages gone")

    assert [e["data"]["body"] for _, e in await stream.messages()] == [{"ok": True}]
    assert metrics.counts == {("failed", "example"): 1, ("sent", "example"): 1}
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
    sqs: Any, sqs_endpoint: str, bus: Bus, stream: Stream
) -> None:
    """Stopped while a batch is being published: the message already on the bus is
    deleted, the one whose publish was cut short is visible again at once (not hidden for
    the 120 s visibility timeout, nor lost)."""
    url = await _create_queue(sqs, "mid-batch")
    await _send_many(sqs, url, ["go", "hold"])  # before the start: one batch
    real = _publisher(bus)
    published: list[str] = []
    holding = asyncio.Event()

    async def publish(event: Event) -> None:
        if event.data["body"] == "hold":
            holding.set()
            await asyncio.Event().wait()  # the stop comes in the middle of this publish
        await real(event)
        published.append(str(event.data["body"]))

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
