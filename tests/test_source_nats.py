"""The nats event source against a second, real nats-server (the upstream) and the bus.

Core NATS: Argo's event data shape, the filter, a restart of the upstream server, a bus
outage (lost and counted: core NATS cannot redeliver). JetStream subjects (``jetStream``):
nothing is acked while the bus is down, then every message is exactly one event, also
across a restart of the upstream server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
import yaml
from nats.js.api import StreamConfig

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.compose.manifests import check_one
from eventsources.nats import NATSConfig, NATSSource
from tests.support.brokers import (
    CountingPublisher,
    Stream,
    eventually_long,
    running,
    source_context,
)
from tests.support.sources import CountingMetrics

SOURCE = "nats-source"
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ARGO_EXAMPLE = Path(__file__).resolve().parents[2] / "shared/argo-examples/event-sources/nats.yaml"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A second nats-server with JetStream: the server the source reads, not the bus."""
    server = EmbeddedNats(store_dir=tmp_path / "upstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stream(nats_server: EmbeddedNats) -> Stream:
    return Stream(nats_server.url)


@pytest.fixture
async def client(upstream: EmbeddedNats) -> AsyncIterator[nats.NATS]:
    nc = await nats.connect(upstream.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        yield nc
    finally:
        await nc.close()


def _source(
    publish: Any, events: dict[str, dict[str, Any]], metrics: CountingMetrics | None = None
) -> NATSSource:
    configs = {name: NATSConfig.model_validate(raw) for name, raw in events.items()}
    return NATSSource(SOURCE, "argo-events", configs, source_context(publish, metrics=metrics))


def _cfg(upstream: EmbeddedNats, subject: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": upstream.url,
        "subject": subject,
        "connectionBackoff": {"duration": "100ms"},
        **extra,
    }


# -- core NATS ---------------------------------------------------------------------------
async def test_core_message_has_argo_data_shape(
    upstream: EmbeddedNats, client: nats.NATS, bus: Bus, stream: Stream
) -> None:
    metrics = CountingMetrics()
    source = _source(
        CountingPublisher(bus),
        {
            "example": _cfg(upstream, "foo.*", jsonBody=True, metadata={"env": "test"}),
            "notes": _cfg(upstream, "notes", queue="workers"),
        },
        metrics,
    )
    async with running(source):
        await client.publish(
            "foo.bar", b'{"model": "resnet"}', headers={"team": "ml", "traceparent": TRACE}
        )
        await client.publish("notes", b"hello, world")
        await client.flush()

        async def two() -> bool:
            return await stream.count() == 2

        await eventually_long(two, "2 events")

    by_subject = {e["subject"]: e for e in await stream.events()}
    event = by_subject["example"]
    assert (event["type"], event["source"]) == ("nats", SOURCE)
    assert event["data"] == {
        "subject": "foo.bar",
        "body": {"model": "resnet"},
        "header": {"team": ["ml"], "traceparent": [TRACE]},
        "metadata": {"env": "test"},
    }
    assert event["traceparent"] == TRACE  # the publisher's trace continues
    notes = by_subject["notes"]["data"]
    assert notes == {"subject": "notes", "body": "hello, world", "metadata": {}}
    assert metrics.counts == {("sent", "example"): 1, ("sent", "notes"): 1}


async def test_filter_and_invalid_json(
    upstream: EmbeddedNats, client: nats.NATS, bus: Bus, stream: Stream
) -> None:
    metrics = CountingMetrics()
    cfg = _cfg(upstream, "jobs", jsonBody=True, filter={"expression": "body.priority > 2"})
    source = _source(CountingPublisher(bus), {"example": cfg}, metrics)
    async with running(source):
        for body in (b'{"priority": 1}', b"not json", b'{"priority": 5}', b'{"priority": 3}'):
            await client.publish("jobs", body)
        await client.flush()

        def settled() -> bool:
            return sum(metrics.counts.values()) == 4

        await eventually_long(settled, "4 messages handled")

    assert sorted(e["data"]["body"]["priority"] for e in await stream.events()) == [3, 5]
    assert metrics.counts == {
        ("sent", "example"): 2,
        ("filtered", "example"): 1,
        ("failed", "example"): 1,
    }


async def _publish_until(
    client: nats.NATS, subject: str, stream: Stream, body: bytes, at_least: int
) -> None:
    """Publish ``body`` every 0.1 s until the stream holds ``at_least`` events (bounded)."""

    async def arrived() -> bool:
        with_body = [e for e in await stream.events() if e["data"]["body"] == body.decode()]
        if len(with_body) >= 1 and await stream.count() >= at_least:
            return True
        await client.publish(subject, body)
        await asyncio.sleep(0.1)
        return False

    await eventually_long(arrived, f"an event with body {body!r}")


async def test_core_resubscribes_after_upstream_restart(
    upstream: EmbeddedNats, client: nats.NATS, bus: Bus, stream: Stream
) -> None:
    source = _source(CountingPublisher(bus), {"example": _cfg(upstream, "restart")})
    async with running(source) as task:
        await _publish_until(client, "restart", stream, b"before", 1)
        upstream.stop()
        upstream.start()  # same port: both clients reconnect
        await _publish_until(client, "restart", stream, b"after", 2)
        assert not task.done()


async def test_core_bus_outage_is_counted_and_the_source_carries_on(
    upstream: EmbeddedNats,
    client: nats.NATS,
    bus: Bus,
    stream: Stream,
    nats_server: EmbeddedNats,
) -> None:
    publisher = CountingPublisher(bus)
    metrics = CountingMetrics()
    source = _source(publisher, {"example": _cfg(upstream, "outage")}, metrics)
    async with running(source) as task:
        nats_server.kill()
        for i in range(5):
            await client.publish("outage", f"lost {i}".encode())
        await client.flush()

        def refused() -> bool:
            return metrics.counts["failed", "example"] == 5

        await eventually_long(refused, "5 publishes refused")
        nats_server.start()
        await _publish_until(client, "outage", stream, b"after", 1)
        assert not task.done()
    assert {e["data"]["body"] for e in await stream.events()} == {"after"}


# -- JetStream subjects: ack after the PubAck ----------------------------------------------
async def _jetstream_setup(client: nats.NATS) -> Any:
    js = client.jetstream()
    await js.add_stream(StreamConfig(name="ORDERS", subjects=["orders.>"]))
    return js


async def _publish_retrying(js: Any, subject: str, payload: bytes, msg_id: str) -> None:
    """A test-side JetStream publish that waits out the test client's own reconnect."""
    for _ in range(100):
        try:
            await js.publish(subject, payload, timeout=1, headers={"Nats-Msg-Id": msg_id})
            return
        except (nats.errors.Error, TimeoutError):
            await asyncio.sleep(0.1)
    raise AssertionError(f"could not publish to {subject}")


async def _consumer(client: nats.NATS, durable: str) -> Any:
    return await client.jetstream().consumer_info("ORDERS", durable)


async def test_jetstream_bus_down_acks_nothing_then_each_message_once(
    upstream: EmbeddedNats,
    client: nats.NATS,
    bus: Bus,
    stream: Stream,
    nats_server: EmbeddedNats,
) -> None:
    n = 200
    js = await _jetstream_setup(client)
    publisher = CountingPublisher(bus)
    cfg = _cfg(upstream, "orders.>", jsonBody=True, jetStream={"durable": "orders-reader"})
    source = _source(publisher, {"example": cfg})
    async with running(source):
        nats_server.kill()
        for i in range(n):
            await js.publish(f"orders.{i % 3}", orjson.dumps({"i": i}))

        def several_refused() -> bool:
            return publisher.refused >= 3

        await eventually_long(several_refused, "publishes refused while the bus is down")
        info = await _consumer(client, "orders-reader")
        assert info.ack_floor.stream_seq == 0  # nothing acknowledged upstream
        assert info.num_pending + info.num_ack_pending + info.num_redelivered >= 1

        nats_server.start()

        async def all_through() -> bool:
            info = await _consumer(client, "orders-reader")
            return (
                info.ack_floor.stream_seq == n
                and info.num_ack_pending == 0
                and await stream.count() >= n
            )

        await eventually_long(all_through, f"{n} events stored and acked", timeout=60)

    events = await stream.events()
    assert len(events) == n
    assert sorted(e["data"]["body"]["i"] for e in events) == list(range(n))
    assert {e["data"]["subject"] for e in events} == {"orders.0", "orders.1", "orders.2"}


@pytest.mark.slow
async def test_jetstream_upstream_restart_mid_stream_loses_and_doubles_nothing(
    upstream: EmbeddedNats, client: nats.NATS, bus: Bus, stream: Stream
) -> None:
    n = 200
    js = await _jetstream_setup(client)
    cfg = _cfg(upstream, "orders.>", jsonBody=True, jetStream={})
    source = _source(CountingPublisher(bus), {"example": cfg})
    async with running(source) as task:
        for i in range(n // 2):
            await js.publish("orders.a", orjson.dumps({"i": i}))
        upstream.stop()
        upstream.start()  # file store: the stream and the durable consumer survive
        for i in range(n // 2, n):
            await _publish_retrying(js, "orders.a", orjson.dumps({"i": i}), f"m{i}")

        async def all_through() -> bool:
            return await stream.count() >= n

        await eventually_long(all_through, f"{n} events", timeout=60)
        assert not task.done()
    await asyncio.sleep(0.5)  # a doubled event would have been stored by now
    events = await stream.events()
    assert sorted(e["data"]["body"]["i"] for e in events) == list(range(n))


# -- configuration ---------------------------------------------------------------------
def _event_source(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "nats"},
        "spec": {"nats": {"example": {"url": "nats://x:4222", "subject": "s", **spec}}},
    }


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ({"auth": {"nkey": {"name": "s", "key": "k"}}}, "spec.nats.example.auth.nkey: not supp"),
        (
            {"auth": {"credential": {"name": "s", "key": "k"}}},
            "spec.nats.example.auth.credential: not supported yet",
        ),
        ({"filter": {"expression": "body.x =="}}, "spec.nats.example.filter.expression: "),
        ({"subject": " "}, "spec.nats.example.subject: must not be empty"),
        ({"queueGroup": "q"}, "spec.nats.example.queueGroup: unknown field"),
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


async def test_a_password_in_the_url_never_reaches_the_log(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.support.net import free_port

    url = f"nats://trainer:hunter2@127.0.0.1:{free_port()}"  # nothing listens there
    source = _source(CountingPublisher(bus), {"example": {"url": url, "subject": "s"}})
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(source.run())

    def tried() -> bool:
        return any("nats://***@127.0.0.1" in r.getMessage() for r in caplog.records)

    try:
        await eventually_long(tried, "a failed connect logged")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert "hunter2" not in caplog.text
    assert not source.ready()
