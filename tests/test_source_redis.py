"""The redis and redisStream event sources against a real redis-server and the bus.

Pub/sub (``redis``): Argo's event data shape, the filter, a server restart (the source
subscribes again), a bus outage (lost and counted: pub/sub has no redelivery). Streams
(``redisStream``): nothing XACKed while the bus is down, then every entry exactly once;
a reader that dies with entries pending is picked up on restart, entries pending for
another consumer are taken over (XAUTOCLAIM), and a restarted server is read again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import yaml

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.compose.manifests import check_one
from app.kernel.events import event_id_from
from eventsources.redis import RedisConfig, RedisSource
from eventsources.redis_stream import RedisStreamConfig, RedisStreamSource
from tests.broker_fixtures import RedisPeer
from tests.support.brokers import (
    CountingPublisher,
    Stream,
    eventually_long,
    running,
    source_context,
)
from tests.support.sources import CountingMetrics, DictSecrets
from tests.test_webhook_bus import _self_signed

SOURCE = "redis-source"
EXAMPLES = Path(__file__).resolve().parents[2] / "shared/argo-examples/event-sources"


@pytest.fixture
def stream(nats_server: EmbeddedNats) -> Stream:
    return Stream(nats_server.url)


@pytest.fixture
async def client(redis_peer: RedisPeer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis(host=redis_peer.host, port=redis_peer.port)
    try:
        yield c
    finally:
        await c.aclose()


def _pubsub(
    publish: Any, events: dict[str, dict[str, Any]], metrics: CountingMetrics | None = None
) -> RedisSource:
    configs = {name: RedisConfig.model_validate(raw) for name, raw in events.items()}
    return RedisSource(SOURCE, "argo-events", configs, source_context(publish, metrics=metrics))


def _streams(
    publish: Any,
    events: dict[str, dict[str, Any]],
    metrics: CountingMetrics | None = None,
    secrets: DictSecrets | None = None,
) -> RedisStreamSource:
    configs = {name: RedisStreamConfig.model_validate(raw) for name, raw in events.items()}
    ctx = source_context(publish, metrics=metrics, secrets=secrets)
    return RedisStreamSource(SOURCE, "argo-events", configs, ctx)


async def _publish_until(
    client: aioredis.Redis, channel: str, stream: Stream, body: str, at_least: int
) -> None:
    """PUBLISH ``body`` every 0.1 s until an event with it is stored (bounded)."""

    async def arrived() -> bool:
        bodies = [e["data"]["body"] for e in await stream.events()]
        if body in bodies and len(bodies) >= at_least:
            return True
        with contextlib.suppress(ConnectionError, OSError, aioredis.ConnectionError):
            await client.publish(channel, body)
        await asyncio.sleep(0.1)
        return False

    await eventually_long(arrived, f"an event with body {body!r}")


# -- pub/sub -----------------------------------------------------------------------------
async def test_pubsub_message_has_argo_data_shape_and_filter(
    redis_peer: RedisPeer, client: aioredis.Redis, bus: Bus, stream: Stream
) -> None:
    metrics = CountingMetrics()
    source = _pubsub(
        CountingPublisher(bus),
        {
            "example": {
                "hostAddress": redis_peer.address,
                "channels": ["FOO", "BAR"],
                "jsonBody": True,
                "metadata": {"env": "test"},
                "filter": {"expression": "body.priority > 2"},
            },
            "notes": {"hostAddress": redis_peer.address, "channels": ["NOTES"]},
        },
        metrics,
    )
    async with running(source):
        for channel, body in [
            ("FOO", '{"priority": 5}'),
            ("BAR", '{"priority": 1}'),
            ("FOO", "not json"),
            ("NOTES", "hello, world"),
        ]:
            assert await client.publish(channel, body) == 1

        def handled() -> bool:
            return sum(metrics.counts.values()) == 4

        await eventually_long(handled, "4 messages handled")

    by_subject = {e["subject"]: e for e in await stream.events()}
    event = by_subject["example"]
    assert (event["type"], event["source"]) == ("redis", SOURCE)
    assert event["data"] == {
        "channel": "FOO",
        "pattern": "",
        "body": {"priority": 5},
        "metadata": {"env": "test"},
    }
    assert by_subject["notes"]["data"]["body"] == "hello, world"
    assert metrics.counts == {
        ("sent", "example"): 1,
        ("filtered", "example"): 1,
        ("failed", "example"): 1,
        ("sent", "notes"): 1,
    }


async def test_pubsub_subscribes_again_after_server_restart(
    redis_peer: RedisPeer, client: aioredis.Redis, bus: Bus, stream: Stream
) -> None:
    cfg = {"hostAddress": redis_peer.address, "channels": ["FOO"]}
    source = _pubsub(CountingPublisher(bus), {"example": cfg})
    async with running(source) as task:
        await _publish_until(client, "FOO", stream, "before", 1)
        redis_peer.restart()
        await _publish_until(client, "FOO", stream, "after", 2)
        assert not task.done()


async def test_pubsub_bus_outage_is_counted_and_the_source_carries_on(
    redis_peer: RedisPeer,
    client: aioredis.Redis,
    bus: Bus,
    stream: Stream,
    nats_server: EmbeddedNats,
) -> None:
    metrics = CountingMetrics()
    cfg = {"hostAddress": redis_peer.address, "channels": ["FOO"]}
    source = _pubsub(CountingPublisher(bus), {"example": cfg}, metrics)
    async with running(source):
        nats_server.kill()
        for i in range(5):
            await client.publish("FOO", f"lost {i}")

        def refused() -> bool:
            return metrics.counts["failed", "example"] == 5

        await eventually_long(refused, "5 publishes refused")
        nats_server.start()
        await _publish_until(client, "FOO", stream, "after", 1)
    assert {e["data"]["body"] for e in await stream.events()} == {"after"}


# -- streams -----------------------------------------------------------------------------
def _stream_cfg(peer: RedisPeer, *streams: str, **extra: Any) -> dict[str, Any]:
    return {"hostAddress": peer.address, "streams": list(streams), **extra}


async def _xadd_many(client: aioredis.Redis, stream: str, start: int, stop: int) -> list[str]:
    ids = []
    for i in range(start, stop):
        entry_id = await client.xadd(stream, {"i": str(i), "model": "resnet"})
        ids.append(entry_id.decode())
    return ids


async def _pending(client: aioredis.Redis, stream: str, group: str = "argo-events-cg") -> int:
    info = await client.xpending(stream, group)
    return int(info["pending"])


async def test_stream_entry_has_argo_data_shape_and_is_acked(
    redis_peer: RedisPeer, client: aioredis.Redis, bus: Bus, stream: Stream
) -> None:
    metrics = CountingMetrics()
    cfg = _stream_cfg(
        redis_peer,
        "FOO",
        "BAR",
        metadata={"env": "test"},
        filter={"expression": "values.model == 'resnet'"},
    )
    source = _streams(CountingPublisher(bus), {"example": cfg}, metrics)
    async with running(source):
        foo = await client.xadd("FOO", {"model": "resnet", "epochs": "3"})
        await client.xadd("BAR", {"model": "vgg"})

        async def settled() -> bool:
            return (
                sum(metrics.counts.values()) == 2
                and await _pending(client, "FOO") == 0
                and await _pending(client, "BAR") == 0
            )

        await eventually_long(settled, "2 entries handled and acked")

    [event] = await stream.events()
    assert (event["type"], event["subject"]) == ("redisStream", "example")
    assert event["id"] == event_id_from("redisStream", redis_peer.address, "0", "FOO", foo.decode())
    assert event["data"] == {
        "stream": "FOO",
        "message_id": foo.decode(),
        "values": {"model": "resnet", "epochs": "3"},
        "metadata": {"env": "test"},
    }
    assert metrics.counts == {("sent", "example"): 1, ("filtered", "example"): 1}


async def test_stream_bus_down_acks_nothing_then_each_entry_once(
    redis_peer: RedisPeer,
    client: aioredis.Redis,
    bus: Bus,
    stream: Stream,
    nats_server: EmbeddedNats,
) -> None:
    n = 200
    publisher = CountingPublisher(bus)
    source = _streams(publisher, {"example": _stream_cfg(redis_peer, "TRAIN")})
    async with running(source):
        nats_server.kill()
        ids = await _xadd_many(client, "TRAIN", 0, n)

        def several_refused() -> bool:
            return publisher.refused >= 3

        await eventually_long(several_refused, "publishes refused while the bus is down")
        groups = await client.xinfo_groups("TRAIN")
        assert groups[0]["pending"] >= 1
        assert groups[0]["last-delivered-id"] != b"0-0"
        # Nothing acked: every entry is either pending or not delivered yet.
        undelivered = len(
            await client.xrange("TRAIN", min=f"({groups[0]['last-delivered-id'].decode()}")
        )
        assert groups[0]["pending"] + undelivered == n

        nats_server.start()

        async def all_through() -> bool:
            return await stream.count() >= n and await _pending(client, "TRAIN") == 0

        await eventually_long(all_through, f"{n} events stored and acked", timeout=60)

    events = await stream.events()
    assert len(events) == n
    assert [e["data"]["message_id"] for e in events] == ids  # stream order kept


async def test_stream_reader_that_died_with_pending_entries_is_picked_up(
    redis_peer: RedisPeer,
    client: aioredis.Redis,
    bus: Bus,
    stream: Stream,
    nats_server: EmbeddedNats,
) -> None:
    cfg = {"example": _stream_cfg(redis_peer, "TRAIN")}
    publisher = CountingPublisher(bus)
    first = _streams(publisher, cfg)
    async with running(first):
        nats_server.kill()
        await _xadd_many(client, "TRAIN", 0, 20)

        async def read_not_acked() -> bool:
            return publisher.refused >= 1 and await _pending(client, "TRAIN") >= 1

        await eventually_long(read_not_acked, "entries read and left pending")
    # The reader is gone with entries pending; the bus returns; a new reader starts.
    nats_server.start()
    async with running(_streams(CountingPublisher(bus), cfg)):

        async def all_through() -> bool:
            return await stream.count() >= 20 and await _pending(client, "TRAIN") == 0

        await eventually_long(all_through, "20 events after the restart")
    assert sorted(int(e["data"]["values"]["i"]) for e in await stream.events()) == list(range(20))


async def test_stream_entries_pending_for_a_dead_consumer_are_claimed(
    redis_peer: RedisPeer, client: aioredis.Redis, bus: Bus, stream: Stream
) -> None:
    await client.xgroup_create("TRAIN", "argo-events-cg", id="$", mkstream=True)
    await _xadd_many(client, "TRAIN", 0, 5)
    # Another consumer read them and died without acking.
    await client.xreadgroup("argo-events-cg", "crashed-pod", {"TRAIN": ">"}, count=10)
    assert await _pending(client, "TRAIN") == 5
    source = _streams(CountingPublisher(bus), {"example": _stream_cfg(redis_peer, "TRAIN")})
    reader = source.workers[0]
    reader.claim_min_idle_seconds = 0.2
    reader.claim_interval_seconds = 0.2
    async with running(source):

        async def claimed() -> bool:
            return await stream.count() >= 5 and await _pending(client, "TRAIN") == 0

        await eventually_long(claimed, "5 entries claimed and delivered")
    assert sorted(int(e["data"]["values"]["i"]) for e in await stream.events()) == list(range(5))


async def test_stream_is_read_again_after_server_restart(
    redis_peer: RedisPeer, client: aioredis.Redis, bus: Bus, stream: Stream
) -> None:
    source = _streams(CountingPublisher(bus), {"example": _stream_cfg(redis_peer, "TRAIN")})
    async with running(source) as task:
        await _xadd_many(client, "TRAIN", 0, 10)

        async def first_ten() -> bool:
            return await stream.count() == 10

        await eventually_long(first_ten, "10 events")
        # No persistence: the stream and its group are gone after the restart.
        redis_peer.restart()

        async def after_restart() -> bool:
            if await stream.count() >= 20:
                return True
            if not await client.exists("TRAIN") or await client.xlen("TRAIN") < 10:
                await client.delete("TRAIN")
                await _xadd_many(client, "TRAIN", 10, 20)
            return False

        await eventually_long(after_restart, "10 more events after the restart", timeout=40)
        assert not task.done()
    values = sorted(int(e["data"]["values"]["i"]) for e in await stream.events())
    assert values == list(range(20))


async def test_stream_password_from_a_secret(
    tmp_path: Path, bus: Bus, stream: Stream, redis_peer: RedisPeer, client: aioredis.Redis
) -> None:
    await client.acl_setuser(
        "trainer", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"]
    )
    secrets = DictSecrets({("redis-auth", "password"): "s3cret"})
    cfg = _stream_cfg(
        redis_peer, "TRAIN", username="trainer", password={"name": "redis-auth", "key": "password"}
    )
    source = _streams(CountingPublisher(bus), {"example": cfg}, secrets=secrets)
    async with running(source):
        await _xadd_many(client, "TRAIN", 0, 1)

        async def one() -> bool:
            return await stream.count() == 1

        await eventually_long(one, "1 event")
    assert secrets.reads == [("argo-events", "redis-auth", "password")]


async def test_stream_over_tls_with_the_ca_from_a_secret(
    tmp_path: Path, bus: Bus, stream: Stream
) -> None:
    cert, key = _self_signed()
    peer = RedisPeer(workdir=tmp_path / "redis-tls", tls=(cert, key))
    peer.start()
    try:
        secrets = DictSecrets({("redis-tls", "ca"): cert})
        tls = {"caCertSecret": {"name": "redis-tls", "key": "ca"}}
        cfg = _stream_cfg(peer, "TRAIN", tls=tls)
        async with running(_streams(CountingPublisher(bus), {"example": cfg}, secrets=secrets)):
            ca = tmp_path / "ca.pem"
            ca.write_text(cert)
            client = aioredis.Redis(host=peer.host, port=peer.port, ssl=True, ssl_ca_certs=str(ca))
            try:
                await _xadd_many(client, "TRAIN", 0, 3)
            finally:
                await client.aclose()

            async def three() -> bool:
                return await stream.count() == 3

            await eventually_long(three, "3 events over TLS")
    finally:
        peer.stop()


# -- configuration ---------------------------------------------------------------------
def _event_source(key: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "redis"},
        "spec": {key: {"example": spec}},
    }


@pytest.mark.parametrize(
    ("key", "spec", "line"),
    [
        ("redis", {"hostAddress": "r:6379"}, "spec.redis.example.channels: required field"),
        ("redis", {"hostAddress": "r", "channels": ["A"]}, "spec.redis.example.hostAddress: "),
        ("redisStream", {"hostAddress": "r:1", "streams": []}, "spec.redisStream.example.streams"),
        (
            "redisStream",
            {"hostAddress": "r:1", "streams": ["A"], "filter": {"expression": "x =="}},
            "spec.redisStream.example.filter.expression: ",
        ),
        (
            "redisStream",
            {"hostAddress": "r:1", "streams": ["A"], "maxMsgCountPerRead": -1},
            "spec.redisStream.example.maxMsgCountPerRead: ",
        ),
    ],
)
def test_config_errors_are_one_line_naming_the_field(
    key: str, spec: dict[str, Any], line: str
) -> None:
    obj, problems = check_one(_event_source(key, spec))
    assert obj is None
    assert len(problems) == 1 and problems[0].startswith(line), problems


@pytest.mark.parametrize("name", ["redis.yaml", "redis-streams.yaml"])
def test_argo_example_manifest_loads(name: str) -> None:
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip("Argo example corpus not beside the repo")
    obj, problems = check_one(yaml.safe_load(path.read_text()))
    assert problems == [] and obj is not None


def test_defaults_match_argo() -> None:
    cfg = RedisStreamConfig.model_validate({"hostAddress": "r:6379", "streams": ["A"]})
    assert (cfg.group, cfg.count, cfg.db) == ("argo-events-cg", 10, 0)
    assert orjson.loads(orjson.dumps(cfg.metadata)) == {}
