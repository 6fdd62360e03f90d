"""The azureQueueStorage event source against Azurite's queue service and the bus.

Argo's event data shape, the filter, ``decodeMessage`` and ``dlq``; nothing deleted while
the bus is down, then every message exactly once; a restart of the storage service.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from azure.storage.queue.aio import QueueClient

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.compose.manifests import check_one
from app.kernel.events import event_id_from
from eventsources.azure_queue_storage import AzureQueueStorageConfig, AzureQueueStorageSource
from tests.broker_fixtures import AzuritePeer
from tests.support.brokers import (
    CountingPublisher,
    Stream,
    eventually_long,
    running,
    source_context,
)
from tests.support.sources import CountingMetrics, DictSecrets

SOURCE = "azure-queue-storage"
ARGO_EXAMPLE = (
    Path(__file__).resolve().parents[2]
    / "shared/argo-examples/event-sources/azure-queue-storage.yaml"
)
SECRET = {"name": "azure-secret", "key": "connectionstring"}


@pytest.fixture
def stream(nats_server: EmbeddedNats) -> Stream:
    return Stream(nats_server.url)


@pytest.fixture
async def queue(azurite_peer: AzuritePeer) -> AsyncIterator[QueueClient]:
    async with QueueClient.from_connection_string(
        azurite_peer.connection_string, "training-requests"
    ) as q:
        await q.create_queue()
        yield q


def _source(
    peer: AzuritePeer,
    publish: Any,
    events: dict[str, dict[str, Any]],
    metrics: CountingMetrics | None = None,
) -> AzureQueueStorageSource:
    configs = {
        name: AzureQueueStorageConfig.model_validate(
            {"queueName": "training-requests", "connectionString": SECRET, **raw}
        )
        for name, raw in events.items()
    }
    secrets = DictSecrets({("azure-secret", "connectionstring"): peer.connection_string})
    ctx = source_context(publish, metrics=metrics, secrets=secrets)
    return AzureQueueStorageSource(SOURCE, "argo-events", configs, ctx)


async def _in_queue(q: QueueClient) -> int:
    return int((await q.get_queue_properties()).approximate_message_count)


async def test_message_has_argo_data_shape_filter_and_decoding(
    azurite_peer: AzuritePeer, queue: QueueClient, bus: Bus, stream: Stream
) -> None:
    metrics = CountingMetrics()
    cfg = {
        "jsonBody": True,
        "decodeMessage": True,
        "metadata": {"env": "test"},
        "filter": {"expression": "body.priority > 2"},
        "waitTimeInSeconds": 0,
    }
    source = _source(azurite_peer, CountingPublisher(bus), {"example": cfg}, metrics)
    async with running(source):
        sent = await queue.send_message(base64.b64encode(b'{"priority": 5}').decode())
        await queue.send_message(base64.b64encode(b'{"priority": 1}').decode())
        await queue.send_message(base64.b64encode(b"not json").decode())
        await queue.send_message("%%% not base64 %%%")

        async def settled() -> bool:
            return sum(metrics.counts.values()) == 4 and await _in_queue(queue) == 0

        await eventually_long(settled, "4 messages handled, all deleted (dlq: false)")

    [event] = await stream.events()
    assert (event["type"], event["source"]) == ("azureQueueStorage", SOURCE)
    assert event["id"] == event_id_from(
        "azureQueueStorage", "devstoreaccount1", "training-requests", sent.id
    )
    data = event["data"]
    assert data["insertionTime"].endswith("Z")
    assert data == {
        "body": {"priority": 5},
        "messageID": sent.id,
        "insertionTime": data["insertionTime"],
        "metadata": {"env": "test"},
    }
    assert metrics.counts == {
        ("sent", "example"): 1,
        ("filtered", "example"): 1,
        ("failed", "example"): 2,
    }


async def test_dlq_leaves_an_undecodable_message_in_the_queue(
    azurite_peer: AzuritePeer, queue: QueueClient, bus: Bus, stream: Stream
) -> None:
    metrics = CountingMetrics()
    cfg = {"jsonBody": True, "dlq": True, "waitTimeInSeconds": 0}
    async with running(_source(azurite_peer, CountingPublisher(bus), {"example": cfg}, metrics)):
        await queue.send_message("not json")
        await queue.send_message('{"ok": 1}')

        async def settled() -> bool:
            # the good one stored and then deleted; the bad one counted, hidden for the
            # visibility timeout and not deleted
            return (
                await stream.count() == 1
                and metrics.counts["failed", "example"] >= 1
                and await _in_queue(queue) == 1
            )

        await eventually_long(settled, "1 event, the bad message counted and left queued")
    assert await _in_queue(queue) == 1
    assert [e["data"]["body"] for e in await stream.events()] == [{"ok": 1}]


async def test_bus_down_deletes_nothing_then_each_message_once(
    azurite_peer: AzuritePeer,
    queue: QueueClient,
    bus: Bus,
    stream: Stream,
    nats_server: EmbeddedNats,
) -> None:
    n = 200
    publisher = CountingPublisher(bus)
    cfg = {"jsonBody": True, "waitTimeInSeconds": 0}
    async with running(_source(azurite_peer, publisher, {"example": cfg})):
        nats_server.kill()
        ids = [(await queue.send_message(orjson.dumps({"i": i}).decode())).id for i in range(n)]

        def refused() -> bool:
            return publisher.refused >= 3

        await eventually_long(refused, "publishes refused while the bus is down")
        assert await _in_queue(queue) == n  # nothing deleted without a PubAck

        nats_server.start()

        async def all_through() -> bool:
            return await stream.count() >= n and await _in_queue(queue) == 0

        await eventually_long(all_through, f"{n} events stored, queue empty", timeout=90)

    events = await stream.events()
    assert len(events) == n
    assert sorted(e["data"]["messageID"] for e in events) == sorted(ids)


async def test_storage_service_restart(azurite_peer: AzuritePeer, bus: Bus, stream: Stream) -> None:
    cfg = {"waitTimeInSeconds": 0}
    source = _source(azurite_peer, CountingPublisher(bus), {"example": cfg})
    async with QueueClient.from_connection_string(
        azurite_peer.connection_string, "training-requests"
    ) as q:
        await q.create_queue()
        async with running(source) as task:
            await q.send_message("before")

            async def one() -> bool:
                return await stream.count() == 1

            await eventually_long(one, "1 event")
            azurite_peer.restart()  # in memory: the queue is gone
            await q.create_queue()
            await q.send_message("after")

            async def two() -> bool:
                return await stream.count() == 2

            await eventually_long(two, "the message sent after the restart")
            assert not task.done()
    assert [e["data"]["body"] for e in await stream.events()] == ["before", "after"]


# -- configuration ---------------------------------------------------------------------
def _event_source(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "aqs"},
        "spec": {"azureQueueStorage": {"example": spec}},
    }


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ({"queueName": "test"}, "spec.azureQueueStorage.example: connectionString or storage"),
        (
            {"queueName": "q", "connectionString": SECRET},
            "spec.azureQueueStorage.example.queueName: must be 3 to 63",
        ),
        (
            {"queueName": "test", "connectionString": SECRET, "waitTimeInSeconds": -1},
            "spec.azureQueueStorage.example.waitTimeInSeconds: ",
        ),
        (
            {"queueName": "test", "connectionString": SECRET, "filter": {"expression": "a =="}},
            "spec.azureQueueStorage.example.filter.expression: ",
        ),
    ],
)
def test_config_errors_are_one_line_naming_the_field(spec: dict[str, Any], line: str) -> None:
    obj, problems = check_one(_event_source(spec))
    assert obj is None
    assert len(problems) == 1 and problems[0].startswith(line), problems


@pytest.mark.skipif(not ARGO_EXAMPLE.is_file(), reason="Argo example corpus not beside the repo")
def test_argo_example_manifest_loads() -> None:
    obj, problems = check_one(yaml.safe_load(ARGO_EXAMPLE.read_text()))
    assert problems == [] and obj is not None
