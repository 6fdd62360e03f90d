"""The amqp event source against a real RabbitMQ (one node per session) and the bus.

Argo's event data shape and the filter; a body that is not JSON is dead-lettered; no
``basic.ack`` before the PubAck (a source stopped during a bus outage leaves every
message in the queue, and the next one delivers each exactly once); a source that rides
out an outage; a broker restart mid-stream; credentials from Secrets.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
import yaml

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.compose.manifests import check_one
from app.kernel.errors import ConfigError
from app.kernel.events import event_id_from
from eventsources.amqp import AMQPConfig, AMQPSource
from tests.broker_fixtures import RabbitPeer
from tests.support.brokers import (
    CountingPublisher,
    Stream,
    eventually_long,
    running,
    source_context,
)
from tests.support.sources import CountingMetrics, DictSecrets

SOURCE = "amqp-source"
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ARGO_EXAMPLE = Path(__file__).resolve().parents[2] / "shared/argo-examples/event-sources/amqp.yaml"
_names = itertools.count()


@pytest.fixture
def stream(nats_server: EmbeddedNats) -> Stream:
    return Stream(nats_server.url)


@pytest.fixture
def names() -> tuple[str, str]:
    """An exchange and a queue name of the test's own (one broker serves the session)."""
    n = next(_names)
    return f"training-{n}", f"training-requests-{n}"


@pytest.fixture
async def channel(rabbitmq_peer: RabbitPeer) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(rabbitmq_peer.url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


def _source(
    publish: Any,
    events: dict[str, dict[str, Any]],
    metrics: CountingMetrics | None = None,
    secrets: DictSecrets | None = None,
) -> AMQPSource:
    configs = {name: AMQPConfig.model_validate(raw) for name, raw in events.items()}
    ctx = source_context(publish, metrics=metrics, secrets=secrets)
    return AMQPSource(SOURCE, "argo-events", configs, ctx)


def _cfg(peer: RabbitPeer, names: tuple[str, str], **extra: Any) -> dict[str, Any]:
    exchange, queue = names
    return {
        "url": peer.url,
        "exchangeName": exchange,
        "exchangeType": "topic",
        "routingKey": "train.#",
        "connectionBackoff": {"duration": "100ms"},
        "queueDeclare": {"name": queue, "durable": True},
        "consume": {"consumerTag": "triggerfish"},
        **extra,
    }


async def _publish(
    channel: aio_pika.abc.AbstractChannel, exchange: str, n: int, start: int = 0
) -> None:
    ex = await channel.get_exchange(exchange)
    for i in range(start, start + n):
        await ex.publish(
            aio_pika.Message(
                orjson.dumps({"i": i}),
                message_id=f"m-{i}",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="train.gpu",
        )


async def _ready_count(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def test_message_has_argo_data_shape_filter_and_dead_letters(
    rabbitmq_peer: RabbitPeer,
    channel: aio_pika.abc.AbstractChannel,
    names: tuple[str, str],
    bus: Bus,
    stream: Stream,
) -> None:
    exchange, queue = names
    dlx = await channel.declare_exchange(f"{exchange}-dlx", "fanout")
    dead = await channel.declare_queue(f"{queue}-dead")
    await dead.bind(dlx)
    metrics = CountingMetrics()
    cfg = _cfg(
        rabbitmq_peer,
        names,
        jsonBody=True,
        metadata={"env": "test"},
        filter={"expression": "body.priority > 2"},
        queueDeclare={
            "name": queue,
            "durable": True,
            "arguments": f"x-dead-letter-exchange: {exchange}-dlx",
        },
    )
    async with running(_source(CountingPublisher(bus), {"example": cfg}, metrics)):
        ex = await channel.get_exchange(exchange)
        await ex.publish(
            aio_pika.Message(
                b'{"priority": 5}',
                content_type="application/json",
                message_id="m-1",
                correlation_id="c-1",
                app_id="trainer",
                type="train",
                priority=3,
                expiration=60,
                headers={"traceparent": TRACE},
            ),
            routing_key="train.gpu",
        )
        await ex.publish(aio_pika.Message(b'{"priority": 1}'), routing_key="train.cpu")
        await ex.publish(aio_pika.Message(b"not json"), routing_key="train.cpu")

        async def settled() -> bool:
            return (
                sum(metrics.counts.values()) == 3
                and await _ready_count(channel, f"{queue}-dead") == 1
            )

        await eventually_long(settled, "3 messages handled, 1 dead-lettered")

    [event] = await stream.events()
    assert (event["type"], event["source"], event["subject"]) == ("amqp", SOURCE, "example")
    assert event["id"] == event_id_from("amqp", exchange, "m-1")
    assert event["traceparent"] == TRACE  # the publisher's trace continues
    data = event["data"]
    assert data.pop("timestamp") == "0001-01-01 00:00:00 +0000 UTC"  # none was sent
    assert data == {
        "contentType": "application/json",
        "contentEncoding": "",
        "deliveryMode": 1,
        "priority": 3,
        "correlationId": "c-1",
        "replyTo": "",
        "expiration": "60000",
        "messageId": "m-1",
        "type": "train",
        "appId": "trainer",
        "exchange": exchange,
        "routingKey": "train.gpu",
        "body": {"priority": 5},
        "metadata": {"env": "test"},
    }
    assert metrics.counts == {
        ("sent", "example"): 1,
        ("filtered", "example"): 1,
        ("failed", "example"): 1,
    }
    assert await _ready_count(channel, queue) == 0


async def test_nothing_acked_while_the_bus_is_down(
    rabbitmq_peer: RabbitPeer,
    channel: aio_pika.abc.AbstractChannel,
    names: tuple[str, str],
    bus: Bus,
    stream: Stream,
    nats_server: EmbeddedNats,
) -> None:
    n = 200
    exchange, queue = names
    cfg = {"example": _cfg(rabbitmq_peer, names, jsonBody=True)}
    publisher = CountingPublisher(bus)
    async with running(_source(publisher, cfg)):
        nats_server.kill()
        await _publish(channel, exchange, n)

        def refused() -> bool:
            return publisher.refused >= 3

        await eventually_long(refused, "publishes refused while the bus is down")

    # The source is gone: whatever it held unacked went back to the queue.
    async def all_in_queue() -> bool:
        return await _ready_count(channel, queue) == n

    await eventually_long(all_in_queue, f"all {n} messages back in the queue")

    nats_server.start()
    async with running(_source(CountingPublisher(bus), cfg)):

        async def all_through() -> bool:
            return await stream.count() >= n and await _ready_count(channel, queue) == 0

        await eventually_long(all_through, f"{n} events", timeout=60)
        await asyncio.sleep(0.5)  # a doubled event would have been stored by now
    events = await stream.events()
    assert sorted(e["data"]["body"]["i"] for e in events) == list(range(n))


async def test_source_rides_out_a_bus_outage(
    rabbitmq_peer: RabbitPeer,
    channel: aio_pika.abc.AbstractChannel,
    names: tuple[str, str],
    bus: Bus,
    stream: Stream,
    nats_server: EmbeddedNats,
) -> None:
    n = 50
    exchange, queue = names
    publisher = CountingPublisher(bus)
    cfg = {"example": _cfg(rabbitmq_peer, names, jsonBody=True)}
    async with running(_source(publisher, cfg)):
        nats_server.kill()
        await _publish(channel, exchange, n)

        def refused() -> bool:
            return publisher.refused >= 2

        await eventually_long(refused, "publishes refused while the bus is down")
        nats_server.start()

        async def all_through() -> bool:
            return await stream.count() >= n and await _ready_count(channel, queue) == 0

        await eventually_long(all_through, f"{n} events", timeout=60)
    events = await stream.events()
    assert sorted(e["data"]["body"]["i"] for e in events) == list(range(n))


@pytest.mark.slow
async def test_broker_restart_mid_stream_loses_and_doubles_nothing(
    rabbitmq_peer: RabbitPeer, names: tuple[str, str], bus: Bus, stream: Stream
) -> None:
    n = 200
    exchange, _ = names
    cfg = {"example": _cfg(rabbitmq_peer, names, jsonBody=True)}
    async with running(_source(CountingPublisher(bus), cfg)) as task:
        connection = await aio_pika.connect(rabbitmq_peer.url)
        await _publish(await connection.channel(), exchange, n // 2)
        await connection.close()
        # Durable queue, persistent messages. Started from this thread, not a worker
        # thread: the broker is asked to die with the thread that started it.
        rabbitmq_peer.stop()
        await asyncio.sleep(1)  # the source sees the connection go and starts retrying
        rabbitmq_peer.start()
        connection = await aio_pika.connect(rabbitmq_peer.url)
        await _publish(await connection.channel(), exchange, n // 2, start=n // 2)
        await connection.close()

        async def all_through() -> bool:
            return await stream.count() >= n

        await eventually_long(all_through, f"{n} events", timeout=90)
        assert not task.done()
    await asyncio.sleep(0.5)
    events = await stream.events()
    assert sorted(e["data"]["body"]["i"] for e in events) == list(range(n))


async def test_url_and_credentials_from_secrets_and_a_refused_login(
    rabbitmq_peer: RabbitPeer,
    channel: aio_pika.abc.AbstractChannel,
    names: tuple[str, str],
    bus: Bus,
    stream: Stream,
) -> None:
    exchange, _ = names
    url = f"amqp://{rabbitmq_peer.host}:{rabbitmq_peer.port}/"
    auth = {
        "username": {"name": "amqp", "key": "user"},
        "password": {"name": "amqp", "key": "password"},
    }
    cfg = _cfg(rabbitmq_peer, names, auth=auth, urlSecret={"name": "amqp", "key": "url"})
    del cfg["url"]
    good = DictSecrets(
        {("amqp", "url"): url + "\n", ("amqp", "user"): "guest", ("amqp", "password"): "guest"}
    )
    async with running(_source(CountingPublisher(bus), {"example": cfg}, secrets=good)):
        await _publish(channel, exchange, 1)

        async def one() -> bool:
            return await stream.count() == 1

        await eventually_long(one, "1 event")
    assert ("argo-events", "amqp", "url") in good.reads

    bad = DictSecrets({**good.values, ("amqp", "password"): "wrong"})
    with pytest.raises(ConfigError) as info:
        await asyncio.wait_for(
            _source(CountingPublisher(bus), {"example": cfg}, secrets=bad).run(), 30
        )
    assert info.value.path == "spec.amqp.example"
    assert "wrong" not in str(info.value)


# -- configuration ---------------------------------------------------------------------
BASE = {"url": "amqp://rabbit:5672", "exchangeName": "e", "exchangeType": "fanout",
        "routingKey": "k"}  # fmt: skip


def _event_source(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "amqp"},
        "spec": {"amqp": {"example": spec}},
    }


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ({**BASE, "exchangeDeclare": {"noWait": True}}, "spec.amqp.example.exchangeDeclare.noW"),
        ({**BASE, "consume": {"noLocal": True}}, "spec.amqp.example.consume.noLocal: not supp"),
        ({**BASE, "urlSecret": {"name": "s", "key": "u"}}, "spec.amqp.example: exactly one of"),
        ({**BASE, "exchangeType": "fan"}, "spec.amqp.example.exchangeType: must be one of"),
        ({**BASE, "routingKey": ""}, "spec.amqp.example.routingKey: must not be empty"),
        ({**BASE, "url": "http://x"}, "spec.amqp.example.url: url must be amqp"),
        (
            {**BASE, "queueDeclare": {"arguments": "[1, 2]"}},
            "spec.amqp.example.queueDeclare.arguments: ",
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
