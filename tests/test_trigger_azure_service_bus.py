"""The ``azureServiceBus`` trigger against the FAKE Service Bus broker (real AMQP, the
real SDK on both ends): directly and end to end through the sensor runner over the bus.

Covers the payload built from parameters, queue and topic (every subscription gets a
copy), parameters applied to the config (queueName), the firing key as ``message_id``,
a broker outage (transient; retried and dead-lettered by the runner; the next send after
a restart goes through), concurrent firings on one sender, unusable connection strings
and missing Secrets (permanent), and the connection string kept out of messages, traces
and logs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from azure.servicebus.aio import ServiceBusClient

from app.adapters.bus import Bus
from app.adapters.kube import FileKube
from app.adapters.secrets import ManifestSecrets
from app.compose.manifests import check_one, load_one
from app.kernel.errors import PermanentError, TransientError
from app.kernel.events import Event, new_event_id
from sensors.triggers.azure_service_bus import (
    AzureServiceBusTrigger,
    AzureServiceBusTriggerConfig,
)
from sensors.triggers.base import Invocation, TriggerContext
from tests.servicebus_fixtures import FakeServiceBusServer
from tests.support.sensors import SensorHarness, dead_letters, eventually
from tests.test_trigger_http import secret_manifest

NS = "ns1"
KEY = "sb-k3y-s3cret-value"
CONN = {"name": "azure-service-bus", "key": "connectionString"}


def connection_string(srv: FakeServiceBusServer) -> str:
    """The broker's connection string with a recognisable key (the fake checks none)."""
    return srv.connection_string.replace("SharedAccessKey=v", f"SharedAccessKey={KEY}")


@pytest.fixture
async def ctx(
    tmp_path: Path, fake_servicebus: FakeServiceBusServer
) -> AsyncIterator[TriggerContext]:
    secrets = ManifestSecrets([
        secret_manifest("azure-service-bus", connectionString=connection_string(fake_servicebus),
                        broken="Endpoint=nowhere;SharedAccessKey=" + KEY),
    ])  # fmt: skip
    c = TriggerContext(kube=FileKube(tmp_path / "objects"), secrets=secrets)
    try:
        yield c
    finally:
        await c.shared.aclose()


async def receive(srv: FakeServiceBusServer, entity: str, count: int) -> list[Any]:
    """Up to ``count`` messages of a queue (or ``topic/sub``), completed."""
    topic, _, sub = entity.partition("/")
    out: list[Any] = []
    async with ServiceBusClient.from_connection_string(srv.connection_string) as client:
        receiver = (
            client.get_subscription_receiver(topic, sub) if sub
            else client.get_queue_receiver(entity)
        )  # fmt: skip
        async with receiver:
            for _ in range(10):
                if len(out) >= count:
                    break
                for m in await receiver.receive_messages(count - len(out), max_wait_time=1):
                    out.append(m)
                    await receiver.complete_message(m)
    return out


def body(msg: Any) -> Any:
    return orjson.loads(b"".join(msg.body))


def event(data: Any) -> Event:
    return Event(id=new_event_id(), source="webhook", subject="example", type="webhook",
                 data=data)  # fmt: skip


def invocation(data: Any, key: str = "k" * 32) -> Invocation:
    return Invocation("s1", NS, "t1", {"test-dep": event(data)}, key)


def trigger(ctx: TriggerContext, **cfg: Any) -> AzureServiceBusTrigger:
    cfg.setdefault("connectionString", CONN)
    cfg.setdefault("payload", PAYLOAD)
    return AzureServiceBusTrigger(AzureServiceBusTriggerConfig.model_validate(cfg), ctx)


PAYLOAD = [
    {"src": {"dependencyName": "test-dep", "dataKey": "body.message"}, "dest": "message"},
    {"src": {"dependencyName": "test-dep", "dataKey": "body.n", "useRawData": True},
     "dest": "meta.n"},
]  # fmt: skip
DATA = {"body": {"message": "hello", "n": 7, "queue": "q-from-event"}}


# --------------------------------------------------------------------------- direct


async def test_payload_arrives_on_the_queue_with_the_parameters_applied(
    fake_servicebus: FakeServiceBusServer, ctx: TriggerContext
) -> None:
    result = await trigger(ctx, queueName="queue").execute(invocation(DATA, key="f" * 32))
    [msg] = await receive(fake_servicebus, "queue", 1)
    assert body(msg) == {"message": "hello", "meta": {"n": 7}}
    assert msg.message_id == "f" * 32
    assert msg.content_type == "application/json"
    assert result.action == "sent" and result.detail["entity"] == "queue queue"
    assert [r["dest"] for r in result.parameters] == ["message", "meta.n"]


async def test_concurrent_firings_share_the_sender(
    fake_servicebus: FakeServiceBusServer, ctx: TriggerContext
) -> None:
    """The runner fires several events at once; overlapping sends on the SDK's shared
    sender, before its link is open, failed every one of them."""
    t = trigger(ctx, queueName="queue")
    keys = [f"{n:032d}" for n in range(8)]
    results = await asyncio.gather(*(t.execute(invocation(DATA, key=k)) for k in keys))
    assert [r.action for r in results] == ["sent"] * 8
    msgs = await receive(fake_servicebus, "queue", 8)
    assert sorted(m.message_id for m in msgs) == keys


async def test_a_topic_copies_to_every_subscription(
    fake_servicebus: FakeServiceBusServer, ctx: TriggerContext
) -> None:
    t = trigger(ctx, topicName="events", subscriptionName="a")
    await t.execute(invocation(DATA))
    for sub in ("events/a", "events/b"):
        [msg] = await receive(fake_servicebus, sub, 1)
        assert body(msg)["message"] == "hello"


async def test_parameters_set_the_queue(
    fake_servicebus: FakeServiceBusServer, ctx: TriggerContext
) -> None:
    param = {"src": {"dependencyName": "test-dep", "dataKey": "body.queue"}, "dest": "queueName"}
    t = trigger(ctx, queueName="unused", parameters=[param])
    result = await t.execute(invocation(DATA))
    [msg] = await receive(fake_servicebus, "q-from-event", 1)
    assert body(msg)["message"] == "hello"
    assert result.parameters[0]["dest"] == "queueName"


async def test_missing_payload_value_is_permanent(ctx: TriggerContext) -> None:
    with pytest.raises(PermanentError, match=r"body\.message"):
        await trigger(ctx, queueName="queue").execute(invocation({"body": {}}))


async def test_unusable_connection_string_is_permanent_and_not_shown(ctx: TriggerContext) -> None:
    t = trigger(ctx, queueName="queue", connectionString={"name": CONN["name"], "key": "broken"})
    with pytest.raises(PermanentError, match="is not a Service Bus connection string") as err:
        await t.execute(invocation(DATA))
    assert KEY not in str(err.value)


async def test_missing_secret_is_permanent(ctx: TriggerContext) -> None:
    t = trigger(ctx, queueName="queue", connectionString={"name": "nope", "key": "x"})
    with pytest.raises(PermanentError, match="nope"):
        await t.execute(invocation(DATA))


async def test_outage_is_transient_and_a_restarted_broker_is_used_again(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
    fake_servicebus: FakeServiceBusServer,
    ctx: TriggerContext,
) -> None:
    t = trigger(ctx, queueName="queue")
    await t.execute(invocation(DATA))
    fake_servicebus.stop()
    with pytest.raises(TransientError, match="queue queue: ServiceBusConnectionError") as err:
        await t.execute(invocation(DATA))
    assert KEY not in str(err.value)
    again = fake_servicebus_factory(port=fake_servicebus.port)
    await t.execute(invocation({"body": {"message": "after", "n": 1}}))
    [msg] = await receive(again, "queue", 1)  # the broker's store went with the old process
    assert body(msg)["message"] == "after"


# --------------------------------------------------------------------------- config


def sensor_doc(sb: dict[str, Any], **trigger_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s1", "namespace": NS},
        "spec": {
            "dependencies": [{"name": "test-dep", "eventSourceName": "webhook",
                              "eventName": "example"}],
            "triggers": [{"template": {"name": "send", "azureServiceBus": sb}, **trigger_extra}],
        },
    }  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"connectionString": CONN, "payload": []},
         "queueName: neither queueName nor topicName is specified"),
        ({"connectionString": CONN, "payload": [], "queueName": "q", "topicName": "t"},
         "topicName: set either queueName or topicName, not both"),
        ({"payload": [], "queueName": "q"}, "connectionString: required field is missing"),
        ({"connectionString": CONN, "queueName": "q"}, "payload: required field is missing"),
        ({"connectionString": CONN, "queueName": "q", "payload": [],
          "tls": {"clientKeySecret": {"name": "a", "key": "b"}}}, "must be given together"),
        ({"connectionString": CONN, "queueName": "q",
          "payload": [{"src": {"dependencyName": "nope"}, "dest": "x"}]},
         "'nope' names no dependency"),
    ],
)  # fmt: skip
def test_bad_config_fails_at_load(cfg: dict[str, Any], message: str) -> None:
    _obj, lines = check_one(sensor_doc(cfg))
    assert any(message in line for line in lines), lines


# --------------------------------------------------------------------------- end to end


async def test_runner_sends_once_per_event_and_keeps_the_key_secret(
    bus: Bus,
    fake_servicebus: FakeServiceBusServer,
    ctx: TriggerContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc({"connectionString": CONN, "queueName": "queue",
                                       "payload": PAYLOAD})))  # fmt: skip
    ev = Event(id=new_event_id(), source="webhook", subject="example", type="webhook", data=DATA)
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1)
    await h.stop()
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.action, out.attempts) == ("succeeded", "sent", 1)
    [msg] = await receive(fake_servicebus, "queue", 1)
    assert body(msg) == {"message": "hello", "meta": {"n": 7}}
    trace = orjson.dumps(h.traces.recent()[0].__dict__, default=str).decode()
    assert KEY not in trace and KEY not in caplog.text


async def test_runner_retries_an_outage_then_dead_letters(
    bus: Bus, fake_servicebus: FakeServiceBusServer, ctx: TriggerContext
) -> None:
    fake_servicebus.stop()
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc({"connectionString": CONN, "queueName": "queue",
                                       "payload": PAYLOAD},
                                      retryStrategy={"steps": 3, "duration": "10ms"})))  # fmt: skip
    ev = Event(id=new_event_id(), source="webhook", subject="example", type="webhook", data=DATA)
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1, timeout=60)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 3)
    assert "ServiceBusConnectionError" in out.error and KEY not in out.error
    [dl] = await dead_letters(bus)
    assert dl["trigger"] == "send" and dl["events"]["test-dep"]["id"] == ev.id
    await h.stop()
