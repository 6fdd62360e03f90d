"""The mqtt event source against a real Mosquitto broker and the bus.

QoS 0 (Argo's default): the event data shape, the filter, a broker restart. QoS 1 with a
persistent session: no PUBACK before the PubAck (a source stopped during a bus outage
leaves every message with the broker, and the next one gets each exactly once), and a
source that rides out the outage delivers each message once. Credentials come from
Secrets; a refused login is a clear configuration error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
import yaml

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.compose.manifests import check_one
from app.kernel.errors import ConfigError
from eventsources.mqtt import MQTTConfig, MQTTSource
from tests.broker_fixtures import MosquittoPeer
from tests.support.brokers import (
    CountingPublisher,
    Stream,
    eventually_long,
    running,
    source_context,
)
from tests.support.sources import CountingMetrics, DictSecrets
from tests.test_webhook_bus import _self_signed

SOURCE = "mqtt-source"
ARGO_EXAMPLE = Path(__file__).resolve().parents[2] / "shared/argo-examples/event-sources/mqtt.yaml"


@pytest.fixture
def stream(nats_server: EmbeddedNats) -> Stream:
    return Stream(nats_server.url)


@pytest.fixture
async def client(mosquitto_peer: MosquittoPeer) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        mosquitto_peer.host, mosquitto_peer.port, identifier="test-publisher"
    ) as c:
        yield c


def _source(
    publish: Any,
    events: dict[str, dict[str, Any]],
    metrics: CountingMetrics | None = None,
    secrets: DictSecrets | None = None,
) -> MQTTSource:
    configs = {name: MQTTConfig.model_validate(raw) for name, raw in events.items()}
    ctx = source_context(publish, metrics=metrics, secrets=secrets)
    return MQTTSource(SOURCE, "argo-events", configs, ctx)


def _cfg(peer: MosquittoPeer, topic: str, client_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": peer.url,
        "topic": topic,
        "clientId": client_id,
        "connectionBackoff": {"duration": "100ms"},
        **extra,
    }


async def test_message_has_argo_data_shape_and_filter(
    mosquitto_peer: MosquittoPeer, client: aiomqtt.Client, bus: Bus, stream: Stream
) -> None:
    metrics = CountingMetrics()
    source = _source(
        CountingPublisher(bus),
        {
            "example": _cfg(
                mosquitto_peer,
                "jobs/+",
                "src-1",
                jsonBody=True,
                metadata={"env": "test"},
                filter={"expression": "body.priority > 2"},
            ),
            "notes": _cfg(mosquitto_peer, "notes", "src-2"),
        },
        metrics,
    )
    async with running(source):
        await client.publish("jobs/train", b'{"priority": 5}')
        await client.publish("jobs/train", b'{"priority": 1}')
        await client.publish("jobs/train", b"not json")
        await client.publish("notes", b"hello, world")

        def handled() -> bool:
            return sum(metrics.counts.values()) == 4

        await eventually_long(handled, "4 messages handled")

    by_subject = {e["subject"]: e for e in await stream.events()}
    event = by_subject["example"]
    assert (event["type"], event["source"]) == ("mqtt", SOURCE)
    assert event["data"] == {
        "topic": "jobs/train",
        "messageId": 0,
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


async def _publish_until(
    peer: MosquittoPeer, topic: str, stream: Stream, body: str, at_least: int
) -> None:
    """Publish ``body`` every 0.1 s (reconnecting the test's client) until stored."""

    async def arrived() -> bool:
        bodies = [e["data"]["body"] for e in await stream.events()]
        if body in bodies and len(bodies) >= at_least:
            return True
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            async with aiomqtt.Client(peer.host, peer.port, identifier="test-retry") as c:
                await c.publish(topic, body.encode())
        await asyncio.sleep(0.1)
        return False

    await eventually_long(arrived, f"an event with body {body!r}")


async def test_subscribes_again_after_broker_restart(
    mosquitto_peer: MosquittoPeer, bus: Bus, stream: Stream
) -> None:
    source = _source(CountingPublisher(bus), {"example": _cfg(mosquitto_peer, "t", "src-r")})
    async with running(source) as task:
        await _publish_until(mosquitto_peer, "t", stream, "before", 1)
        mosquitto_peer.restart()
        await _publish_until(mosquitto_peer, "t", stream, "after", 2)
        assert not task.done()


async def _publish_qos1(peer: MosquittoPeer, topic: str, n: int) -> None:
    async with aiomqtt.Client(peer.host, peer.port, identifier="test-qos1") as c:
        for i in range(n):
            await c.publish(topic, orjson.dumps({"i": i}), qos=1)


async def test_qos1_nothing_acked_while_the_bus_is_down(
    mosquitto_peer: MosquittoPeer, bus: Bus, stream: Stream, nats_server: EmbeddedNats
) -> None:
    n = 200
    cfg = {
        "example": _cfg(mosquitto_peer, "train", "src-q", jsonBody=True, qos=1, cleanSession=False)
    }
    publisher = CountingPublisher(bus)
    async with running(_source(publisher, cfg)):
        nats_server.kill()
        await _publish_qos1(mosquitto_peer, "train", n)

        def refused() -> bool:
            return publisher.refused >= 3

        await eventually_long(refused, "publishes refused while the bus is down")
    # The source is gone without acking anything; the broker holds every message for
    # the session. The bus returns and a new source resumes the session.
    nats_server.start()
    async with running(_source(CountingPublisher(bus), cfg)):

        async def all_through() -> bool:
            return await stream.count() >= n

        await eventually_long(all_through, f"{n} events", timeout=60)
        await asyncio.sleep(0.5)  # a doubled event would have been stored by now
    events = await stream.events()
    assert sorted(e["data"]["body"]["i"] for e in events) == list(range(n))


async def test_qos1_source_rides_out_a_bus_outage(
    mosquitto_peer: MosquittoPeer, bus: Bus, stream: Stream, nats_server: EmbeddedNats
) -> None:
    n = 50
    cfg = _cfg(mosquitto_peer, "train", "src-o", jsonBody=True, qos=1, cleanSession=False)
    publisher = CountingPublisher(bus)
    async with running(_source(publisher, {"example": cfg})):
        nats_server.kill()
        await _publish_qos1(mosquitto_peer, "train", n)

        def refused() -> bool:
            return publisher.refused >= 2

        await eventually_long(refused, "publishes refused while the bus is down")
        nats_server.start()

        async def all_through() -> bool:
            return await stream.count() >= n

        await eventually_long(all_through, f"{n} events", timeout=60)
    events = await stream.events()
    assert [e["data"]["body"]["i"] for e in events] == list(range(n))  # in order, once


async def test_credentials_from_secrets_and_a_refused_login(
    mosquitto_peer: MosquittoPeer, client: aiomqtt.Client, bus: Bus, stream: Stream
) -> None:
    auth = {
        "username": {"name": "mqtt-auth", "key": "user"},
        "password": {"name": "mqtt-auth", "key": "password"},
    }
    good = DictSecrets(
        {("mqtt-auth", "user"): MosquittoPeer.USER, ("mqtt-auth", "password"): "s3cret"}
    )
    cfg = {"example": _cfg(mosquitto_peer, "t", "src-a", auth=auth)}
    async with running(_source(CountingPublisher(bus), cfg, secrets=good)):
        await client.publish("t", b"hi")

        async def one() -> bool:
            return await stream.count() == 1

        await eventually_long(one, "1 event")
    assert ("argo-events", "mqtt-auth", "password") in good.reads

    bad = DictSecrets({("mqtt-auth", "user"): MosquittoPeer.USER, ("mqtt-auth", "password"): "x"})
    with pytest.raises(ConfigError) as info:
        await asyncio.wait_for(_source(CountingPublisher(bus), cfg, secrets=bad).run(), 20)
    assert info.value.path == "spec.mqtt.example"
    assert "x" not in str(info.value).split(":")[-1].split()  # the password is not echoed


# -- configuration ---------------------------------------------------------------------
def _event_source(events: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "mqtt"},
        "spec": {"mqtt": events},
    }


BASE = {"url": "tcp://broker:1883", "topic": "t", "clientId": "c"}


@pytest.mark.parametrize(
    ("events", "line"),
    [
        ({"example": {**BASE, "url": "ws://broker:80"}}, "spec.mqtt.example.url: ws:// (MQTT"),
        ({"example": {**BASE, "url": "broker:1883"}}, "spec.mqtt.example.url: url must be"),
        ({"example": {"url": "tcp://b:1", "topic": "t"}}, "spec.mqtt.example.clientId: requ"),
        ({"example": {**BASE, "qos": 2}}, "spec.mqtt.example.qos: "),
        ({"a": BASE, "b": BASE}, "spec.mqtt.b.clientId: also used by a"),
        (
            {"example": {**BASE, "auth": {"username": {"name": "s", "key": "u"}}}},
            "spec.mqtt.example: auth needs both username and password",
        ),
    ],
)
def test_config_errors_are_one_line_naming_the_field(events: dict[str, Any], line: str) -> None:
    obj, problems = check_one(_event_source(events))
    assert obj is None
    assert len(problems) == 1 and problems[0].startswith(line), problems


@pytest.mark.skipif(not ARGO_EXAMPLE.is_file(), reason="Argo example corpus not beside the repo")
def test_argo_example_manifest_loads() -> None:
    obj, problems = check_one(yaml.safe_load(ARGO_EXAMPLE.read_text()))
    assert problems == [] and obj is not None


async def test_tls_with_the_ca_from_a_secret(tmp_path: Path, bus: Bus, stream: Stream) -> None:
    cert, key = _self_signed()
    peer = MosquittoPeer(workdir=tmp_path / "mosquitto-tls", tls=(cert, key))
    peer.start()
    try:
        secrets = DictSecrets({("mqtt-tls", "ca"): cert})
        tls = {"caCertSecret": {"name": "mqtt-tls", "key": "ca"}}
        cfg = {"example": _cfg(peer, "t", "src-tls", tls=tls)}
        assert cfg["example"]["url"].startswith("ssl://")
        async with running(_source(CountingPublisher(bus), cfg, secrets=secrets)):
            ca = tmp_path / "ca.pem"
            ca.write_text(cert)
            tls_params = aiomqtt.TLSParameters(ca_certs=str(ca))
            async with aiomqtt.Client(peer.host, peer.port, tls_params=tls_params) as c:
                await c.publish("t", b"over tls")

            async def one() -> bool:
                return await stream.count() == 1

            await eventually_long(one, "1 event over TLS")

        # Without the CA the broker's certificate is not trusted: no session, no crash.
        untrusting = _source(CountingPublisher(bus), {"example": _cfg(peer, "t", "src-no-ca")})
        task = asyncio.create_task(untrusting.run())
        await asyncio.sleep(1.5)
        assert not untrusting.ready() and not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        peer.stop()
    assert [e["data"]["body"] for e in await stream.events()] == ["over tls"]
