"""EventSource ``filter.expression`` on webhook, sqs and azureServiceBus.

What is checked: a bad expression fails validation with its field path (the model, the
manifest loader and ``triggerfish validate``); an event the expression rejects is never
published and never counted as sent, but counted as filtered; and the upstream side
treats it as handled: the webhook answers 200 marked ``filtered``, SQS deletes the
message, Service Bus completes it. The webhook runs in-process over ASGI; SQS and
Service Bus run against moto and the fake broker with a real nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.compose.manifests import ManifestInvalid, load_one
from app.compose.validate import EXIT_INVALID, validate_paths
from app.kernel.events import Event
from eventsources.azure_service_bus import (
    AzureServiceBusConfig,
    AzureServiceBusSource,
    ServiceBusTuning,
)
from eventsources.base import EventSourcePlugin, SourceContext
from eventsources.sqs import SQSConfig, SQSSource
from eventsources.webhook import WebhookConfig, WebhookSource
from tests.servicebus_fixtures import FakeServiceBusServer
from tests.support.sensors import eventually
from tests.support.sources import CountingMetrics as Metrics
from tests.support.sources import DictSecrets as Secrets

SECRET = ("sb", "connection")
FAST_SERVICE_BUS = ServiceBusTuning(
    receive_wait_seconds=1.0,
    publish_retry_seconds=5.0,
    publish_retry_initial_seconds=0.05,
    publish_retry_max_seconds=0.2,
    failure_pause_initial_seconds=0.05,
    failure_pause_max_seconds=0.3,
    reconnect_initial_seconds=0.1,
    reconnect_max_seconds=0.5,
    sdk_retry_total=0,
)


# -- helpers ---------------------------------------------------------------------------


class Recorder:
    """``ctx.publish`` that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


def _ctx(
    publish: Callable[[Event], Awaitable[None]], metrics: Metrics, secrets: Secrets | None = None
) -> SourceContext:
    return SourceContext(
        publish=publish,
        secrets=secrets or Secrets(),
        metrics=metrics,
        log=logging.getLogger("test.source_filters"),
    )


_eventually = functools.partial(eventually, timeout=30.0, interval=0.05)


@contextlib.asynccontextmanager
async def _running(source: EventSourcePlugin[Any]) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run())

    async def ready() -> bool:
        if task.done():
            task.result()  # surface a startup error instead of waiting
        return source.ready()

    try:
        await _eventually(ready, "source ready")
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _stream(nats_url: str) -> list[dict[str, Any]]:
    """Every CloudEvent stored in stream ``default``, read with nats-py directly."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("default")
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            m = await js.get_msg("default", seq)
            out.append(orjson.loads(m.data or b"{}"))
        return out
    finally:
        await nc.close()


def _source_doc(key: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "filtered", "namespace": "argo-events"},
        "spec": {key: {"example": config}},
    }


def _problems(doc: dict[str, Any]) -> list[str]:
    try:
        load_one(doc)
    except ManifestInvalid as e:
        return e.lines
    return []


WEBHOOK = {"port": "12000", "endpoint": "/train", "method": "POST"}
SQS = {"region": "us-east-1", "queue": "q"}
SERVICE_BUS = {"connectionString": {"name": SECRET[0], "key": SECRET[1]}, "queueName": "q"}


# -- validation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "config"),
    [("webhook", WEBHOOK), ("sqs", SQS), ("azureServiceBus", SERVICE_BUS)],
)
def test_manifest_with_a_filter_loads_and_a_bad_one_names_the_field(
    key: str, config: dict[str, Any]
) -> None:
    assert _problems(_source_doc(key, {**config, "filter": {"expression": "body.n > 2"}})) == []

    [line] = _problems(_source_doc(key, {**config, "filter": {"expression": "body.n >"}}))
    assert line.startswith(f"spec.{key}.example.filter.expression: ")
    assert "position" in line  # says where in the expression

    [line] = _problems(_source_doc(key, {**config, "filter": {"expression": "nope(body)"}}))
    assert line.startswith(f"spec.{key}.example.filter.expression: ")
    assert "nope" in line


def test_empty_expression_is_refused_rather_than_dropping_every_event() -> None:
    # Argo compiles an empty expression per event, fails, and drops every event.
    [line] = _problems(_source_doc("webhook", {**WEBHOOK, "filter": {"expression": ""}}))
    assert line.startswith("spec.webhook.example.filter.expression: ")


def test_validate_command_reports_the_bad_expression(tmp_path: Path) -> None:
    manifest = tmp_path / "source.yaml"
    manifest.write_text(
        orjson.dumps(
            _source_doc("webhook", {**WEBHOOK, "filter": {"expression": "body.model =="}})
        ).decode()
    )
    out = io.StringIO()
    assert validate_paths([str(tmp_path)], out) == EXIT_INVALID
    [line] = out.getvalue().splitlines()
    assert "EventSource argo-events/filtered: spec.webhook.example.filter.expression: " in line


# -- webhook ---------------------------------------------------------------------------
async def _webhook(
    events: dict[str, dict[str, Any]],
) -> tuple[httpx.AsyncClient, Recorder, Metrics]:
    recorder, metrics = Recorder(), Metrics()
    configs = {name: WebhookConfig.model_validate(raw) for name, raw in events.items()}
    source = WebhookSource("hooks", "argo-events", configs, _ctx(recorder, metrics))
    apps = await source.prepare()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=apps[12000]), base_url="http://hooks.test"
    )
    return client, recorder, metrics


async def test_webhook_publishes_what_passes_and_marks_what_is_filtered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="test.source_filters")
    client, recorder, metrics = await _webhook(
        {
            "train": {
                **WEBHOOK,
                "filter": {"expression": 'header["X-Run"][0] != "0" && body.model == "resnet"'},
            },
            "open": {**WEBHOOK, "endpoint": "/open"},
        }
    )
    async with client:
        passed = await client.post("/train", json={"model": "resnet"}, headers={"X-Run": "7"})
        wrong_model = await client.post("/train", json={"model": "vgg"}, headers={"X-Run": "7"})
        missing = await client.post("/train", json={"other": 1})  # no X-Run header
        unfiltered = await client.post("/open", json={"model": "vgg"})

    assert (passed.status_code, passed.text) == (200, "success")
    assert "x-triggerfish-filtered" not in passed.headers
    for r in (wrong_model, missing):
        assert (r.status_code, r.text) == (200, "filtered")
        assert r.headers["x-triggerfish-filtered"] == "true"
    assert (unfiltered.status_code, unfiltered.text) == (200, "success")

    assert [(e.subject, e.data["body"]) for e in recorder.events] == [
        ("train", {"model": "resnet"}),
        ("open", {"model": "vgg"}),
    ]
    assert metrics.counts == {("sent", "train"): 1, ("filtered", "train"): 2, ("sent", "open"): 1}
    reasons = [r.getMessage() for r in caplog.records if "filtered out" in r.getMessage()]
    assert len(reasons) == 2
    assert all(r.startswith("webhook hooks/train: request filtered out") for r in reasons)
    assert reasons[0].endswith(": false)")
    assert "error" in reasons[1]  # the missing header: an evaluation error drops the event


async def test_webhook_filter_sees_the_argo_shaped_data() -> None:
    # Top-level keys of the data are what the expression names; metadata is there too.
    client, recorder, _ = await _webhook(
        {
            "train": {
                **WEBHOOK,
                "metadata": {"stage": "prod"},
                "filter": {"expression": 'metadata.stage == "prod" && body.n >= 2'},
            }
        }
    )
    async with client:
        low = await client.post("/train", json={"n": 1})
        high = await client.post("/train", json={"n": 2})
    assert (low.text, high.text) == ("filtered", "success")
    assert [e.data["body"] for e in recorder.events] == [{"n": 2}]


# -- sqs -------------------------------------------------------------------------------
async def _queue_depth(sqs: Any, url: str) -> int:
    """Messages not deleted yet: visible plus in flight."""
    resp = await sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    a = resp["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


async def test_sqs_deletes_filtered_messages_without_publishing(
    sqs: Any, sqs_endpoint: str, bus: Bus, nats_server: EmbeddedNats
) -> None:
    url = str((await sqs.create_queue(QueueName="jobs"))["QueueUrl"])
    metrics = Metrics()
    config = SQSConfig.model_validate(
        {
            "region": "us-east-1",
            "queue": "jobs",
            "endpoint": sqs_endpoint,
            "waitTimeSeconds": 1,
            "jsonBody": True,
            "filter": {"expression": "body.priority > 2"},
        }
    )
    source = SQSSource(
        "aws-sqs",
        "argo-events",
        {"example": config},
        _ctx(lambda e: bus.publish("default", e), metrics),
    )
    bodies = [{"job": i, "priority": p} for i, p in enumerate([5, 1, 3, 0])]
    async with _running(source):
        for body in bodies:
            await sqs.send_message(QueueUrl=url, MessageBody=orjson.dumps(body).decode())

        async def handled() -> bool:
            return (
                await _queue_depth(sqs, url) == 0
                and metrics.counts["filtered", "example"] == 2
                and metrics.counts["sent", "example"] == 2
            )

        await _eventually(handled, "every message handled and deleted")

    stored = await _stream(nats_server.url)
    assert sorted(e["data"]["body"]["job"] for e in stored) == [0, 2]
    assert metrics.counts == {("sent", "example"): 2, ("filtered", "example"): 2}


# -- azureServiceBus -------------------------------------------------------------------
async def test_service_bus_completes_filtered_messages_without_publishing(
    fake_servicebus: FakeServiceBusServer, bus: Bus, nats_server: EmbeddedNats
) -> None:
    metrics = Metrics()
    config = AzureServiceBusConfig.model_validate(
        {**SERVICE_BUS, "queueName": "jobs", "jsonBody": True,
         "filter": {"expression": 'applicationProperties.team == "ml" && body.n > 0'}}
    )  # fmt: skip
    source = AzureServiceBusSource(
        "azure-sb",
        "argo-events",
        {"train": config},
        _ctx(
            lambda e: bus.publish("default", e),
            metrics,
            secrets=Secrets({SECRET: fake_servicebus.connection_string}),
        ),
        tuning=FAST_SERVICE_BUS,
    )
    messages = [
        ServiceBusMessage(orjson.dumps({"n": n}), application_properties={"team": team})
        for n, team in [(1, "ml"), (0, "ml"), (2, "web"), (3, "ml")]
    ]
    client = ServiceBusClient.from_connection_string(
        fake_servicebus.connection_string, retry_total=1, keep_alive=0
    )
    async with client, _running(source):
        async with client.get_queue_sender("jobs") as sender:
            await sender.send_messages(messages)

        async def handled() -> bool:
            return metrics.counts["filtered", "train"] == 2 and metrics.counts["sent", "train"] == 2

        await _eventually(handled, "every message published or filtered")
        queue = client.get_queue_receiver("jobs")
        dead = client.get_queue_receiver("jobs", sub_queue=ServiceBusSubQueue.DEAD_LETTER)
        async with queue, dead:

            async def settled() -> bool:
                left = await queue.peek_messages(max_message_count=100, sequence_number=1)
                return not left

            await _eventually(settled, "every message completed")
            assert await dead.peek_messages(max_message_count=100, sequence_number=1) == []

    stored = await _stream(nats_server.url)
    assert sorted(e["data"]["body"]["n"] for e in stored) == [1, 3]
    assert metrics.counts == {("sent", "train"): 2, ("filtered", "train"): 2}
