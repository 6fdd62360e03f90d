"""The sensor runner's delivery promises, each pinned by a deterministic test.

* A bus message is acked only after its trigger finished: while the Kubernetes API
  holds the create mid-flight the message is still unacked; the runner is then stopped
  and a new one gets the message again and leaves exactly one object.
* The API's answer decides retry or dead letter: 500 / 503 / 429 / 409 Conflict are
  retried (a 429's ``Retry-After`` is waited), 422 / 403 get one attempt and a dead
  letter.
* A dead letter the bus does not take is not swallowed: the message is nak'd and
  redelivered until the dead letter is stored.

Real peers: a ``nats-server`` and the fake Kubernetes API (its ``/fake/faults`` rules
answer the statuses and hold the requests).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.adapters.bus import Bus
from app.adapters.kube import ApiKube, FileKube
from app.compose.manifests import load_one
from app.kernel.events import Event, new_event_id
from app.kernel.settings import KubeSettings
from sensors.runner import RetryPolicy
from sensors.triggers.base import TriggerContext
from tests.fakekube.harness import KubeApi
from tests.support.sensors import SensorHarness, dead_letters, eventually

NS = "ns1"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
CONSUMER = f"{NS}-s1-a"


@pytest.fixture
async def kube(kube_api: KubeApi) -> AsyncIterator[ApiKube]:
    kube_api.create_namespace(NS)
    api = ApiKube.from_settings(KubeSettings(kubeconfig=str(kube_api.kubeconfig)))
    assert api is not None
    try:
        yield api
    finally:
        await api.close()


def sensor(data_key: str = "body.v") -> Any:
    """One dependency ``a``; its trigger creates a ConfigMap named from the firing."""
    return load_one(
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Sensor",
            "metadata": {"name": "s1", "namespace": NS},
            "spec": {
                "dependencies": [{"name": "a", "eventSourceName": "hook", "eventName": "a"}],
                "triggers": [{"template": {"name": "make", "k8s": {
                    "operation": "create",
                    "source": {"resource": {"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": {"generateName": "job-"}}},
                    "parameters": [{"src": {"dependencyName": "a", "dataKey": data_key},
                                    "dest": "data.v"}],
                }}}],
            },
        }
    )  # fmt: skip


def event() -> Event:
    return Event(id=new_event_id(), source="hook", subject="a", type="webhook",
                 data={"body": {"v": "x"}})  # fmt: skip


def configmaps(kube_api: KubeApi) -> list[str]:
    doc = kube_api.kubectl_json("get", "configmaps", "-n", NS)
    return sorted(i["metadata"]["name"] for i in doc["items"])


async def ack_pending(bus: Bus) -> int:
    info = await bus._jetstream().consumer_info("default", CONSUMER)
    return int(info.num_ack_pending)


async def deliveries(bus: Bus) -> int:
    """How many times the consumer handed a message out (redeliveries included)."""
    info = await bus._jetstream().consumer_info("default", CONSUMER)
    return int(info.delivered.consumer_seq)


def posts(kube_api: KubeApi) -> list[dict[str, Any]]:
    return [r for r in kube_api.faults()["requests"] if r["method"] == "POST"]


# -------------------------------------------------------------- ack after the trigger


async def test_message_stays_unacked_while_the_trigger_runs_and_survives_a_restart(
    bus: Bus, kube_api: KubeApi, kube: ApiKube
) -> None:
    kube_api.fault("POST", CONFIGMAPS, hold=True, times=0)  # every create waits
    h = SensorHarness(bus, TriggerContext(kube=kube))
    await h.start(sensor())
    await bus.publish("default", event())
    await eventually(
        lambda: kube_api.faults()["rules"][0]["held"] >= 1, "the create is held by the API"
    )
    # The trigger is mid-execution: the message must not be acked yet.
    assert await ack_pending(bus) == 1, "acked before the trigger finished"
    assert h.traces.recent() == []
    await h.stop()  # the runner goes away before its trigger finished

    # The create it sent still lands (the crash came after the request, before the ack).
    kube_api.server.request("DELETE", "/fake/faults")
    await eventually(lambda: len(configmaps(kube_api)) == 1, "the held create landed")

    h2 = SensorHarness(bus, TriggerContext(kube=kube))
    await h2.start(sensor())
    await eventually(lambda: len(h2.traces.recent()) == 1, "the message is redelivered")
    trace = h2.traces.recent()[0]
    assert trace.delivery >= 2
    assert (trace.triggers[0].status, trace.triggers[0].action) == ("succeeded", "already-exists")
    assert len(configmaps(kube_api)) == 1
    await eventually(lambda: _is_zero(ack_pending(bus)), "the redelivered message is acked")
    await h2.stop()


async def _is_zero(n: Any) -> bool:
    return await n == 0


# -------------------------------------------------------------- API status → retry or DLQ


@pytest.mark.parametrize(
    ("status", "retried"),
    [(500, True), (503, True), (429, True), (409, True), (422, False), (403, False)],
)
async def test_api_status_decides_between_retry_and_dead_letter(
    bus: Bus, kube_api: KubeApi, kube: ApiKube, status: int, retried: bool
) -> None:
    # A transient answer is given once (the retry then succeeds); a permanent one always.
    kube_api.fault("POST", CONFIGMAPS, status=status, times=1 if retried else 0)
    h = SensorHarness(
        bus, TriggerContext(kube=kube), default_retry=RetryPolicy(steps=3, duration_seconds=0.01)
    )
    await h.start(sensor())
    ev = event()
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    got = [r["status"] for r in posts(kube_api)]
    if retried:
        assert (out.status, out.attempts) == ("succeeded", 2), out.error
        assert got == [status, 201]
        assert len(configmaps(kube_api)) == 1
        assert await dead_letters(bus) == []
    else:
        assert (out.status, out.attempts) == ("dead-lettered", 1)
        assert got == [status]
        assert f"{status}" in out.error
        assert configmaps(kube_api) == []
        [dead] = await dead_letters(bus)
        assert {k: dead[k] for k in ("sensor", "namespace", "trigger", "error", "events")} == {
            "sensor": "s1",
            "namespace": NS,
            "trigger": "make",
            "error": out.error,
            "events": {"a": orjson.loads(ev.to_json())},
        }
        assert dead["attempts"] == 1 and len(dead["key"]) == 32
    await eventually(lambda: _is_zero(ack_pending(bus)), "the message is acked")
    await h.stop()


async def test_429_retry_waits_the_retry_after_the_api_asked_for(
    bus: Bus, kube_api: KubeApi, kube: ApiKube
) -> None:
    kube_api.fault("POST", CONFIGMAPS, status=429, retryAfter=1, times=1)
    h = SensorHarness(
        bus, TriggerContext(kube=kube), default_retry=RetryPolicy(steps=2, duration_seconds=0.01)
    )
    await h.start(sensor())
    await bus.publish("default", event())
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    # Retried after the wait, by the API client itself or by the runner's next attempt.
    assert out.status == "succeeded" and out.attempts in (1, 2), out.error
    first, second = posts(kube_api)
    assert (first["status"], second["status"]) == (429, 201)
    # The planned backoff is 10 ms; the API asked for 1 s (a lower bound, never flaky).
    assert second["t"] - first["t"] >= 1.0
    await h.stop()


async def test_transient_answers_until_retries_run_out_are_dead_lettered_with_the_error(
    bus: Bus, kube_api: KubeApi, kube: ApiKube
) -> None:
    kube_api.fault("POST", CONFIGMAPS, status=503, times=0)
    h = SensorHarness(
        bus, TriggerContext(kube=kube), default_retry=RetryPolicy(steps=3, duration_seconds=0.01)
    )
    await h.start(sensor())
    await bus.publish("default", event())
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 3)
    assert out.error.startswith("KubeTransientError: POST ") and "503" in out.error
    assert [r["status"] for r in posts(kube_api)] == [503, 503, 503]
    await h.stop()


async def test_retries_longer_than_the_ack_wait_keep_the_message_in_progress(
    bus: Bus, kube_api: KubeApi, kube: ApiKube
) -> None:
    # Three failed attempts 1 s apart outlast the 2 s ack wait; in_progress() before
    # each back-off keeps the bus from handing the message out a second time.
    kube_api.fault("POST", CONFIGMAPS, status=503, times=3)
    h = SensorHarness(
        bus,
        TriggerContext(kube=kube),
        default_retry=RetryPolicy(steps=4, duration_seconds=1.0, jitter=0.0),
        ack_wait_seconds=2.0,
    )
    await h.start(sensor())
    await bus.publish("default", event())
    await eventually(lambda: len(h.traces.recent()) >= 1, timeout=20)
    await eventually(lambda: _is_zero(ack_pending(bus)), "the message is acked")
    assert await deliveries(bus) == 1, "handed out again while its trigger was retrying"
    [trace] = h.traces.recent()
    assert (trace.delivery, trace.triggers[0].status, trace.triggers[0].attempts) == (
        1, "succeeded", 4,
    )  # fmt: skip
    assert [r["status"] for r in posts(kube_api)] == [503, 503, 503, 201]
    await h.stop()


async def test_dlq_trigger_retries_longer_than_the_ack_wait_keep_the_message_in_progress(
    bus: Bus, kube_api: KubeApi, kube: ApiKube
) -> None:
    # The trigger is refused for good (422); its dlqTrigger then needs four attempts
    # 1 s apart, which outlast the 2 s ack wait: the message must not be handed out again.
    kube_api.create_namespace("ns2")
    kube_api.fault("POST", CONFIGMAPS, status=422, times=0)
    kube_api.fault("POST", "/api/v1/namespaces/ns2/configmaps", status=503, times=3)
    doc = sensor().model_dump(by_alias=True, exclude_none=True)
    dlq_target = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"generateName": "dlq-", "namespace": "ns2"}}  # fmt: skip
    trigger = doc["spec"]["triggers"][0]
    trigger["atLeastOnce"] = True
    trigger["dlqTrigger"] = {
        "atLeastOnce": True,
        "template": {
            "name": "to-dlq",
            "k8s": {"operation": "create", "source": {"resource": dlq_target}},
        },
    }
    h = SensorHarness(
        bus,
        TriggerContext(kube=kube),
        default_retry=RetryPolicy(steps=4, duration_seconds=1.0, jitter=0.0),
        ack_wait_seconds=2.0,
    )
    await h.start(load_one(doc))
    await bus.publish("default", event())
    await eventually(lambda: len(h.traces.recent()) >= 1, timeout=20)
    await eventually(lambda: _is_zero(ack_pending(bus)), "the message is acked")
    assert await deliveries(bus) == 1, "handed out again while its dlqTrigger was retrying"
    [trace] = h.traces.recent()
    out = trace.triggers[0]
    assert (trace.delivery, out.status, out.attempts) == (1, "dead-lettered", 1)
    assert out.detail["dlqTrigger"]["status"] == "succeeded"
    await h.stop()


# -------------------------------------------------------------- dead letter not stored


async def test_dead_letter_the_bus_refuses_is_nakd_and_redelivered(
    bus: Bus, tmp_path: Path
) -> None:
    js = bus._jetstream()
    full = (await js.stream_info("default")).config
    # The stream stops taking the dead-letter subject: its publish gets no PubAck.
    narrowed = (await js.stream_info("default")).config
    narrowed.subjects = ["default.hook.>"]
    await js.update_stream(narrowed)
    h = SensorHarness(bus, TriggerContext(kube=FileKube(tmp_path / "objects")))
    await h.start(sensor(data_key="body.missing"))  # fails for good: a missing key
    await bus.publish("default", event())

    def redelivered() -> bool:
        return any(t.delivery >= 2 for t in h.traces.recent())

    await eventually(redelivered, "the message is redelivered after the lost dead letter")
    first = next(t for t in h.traces.recent() if t.delivery == 1)
    second = next(t for t in h.traces.recent() if t.delivery == 2)
    assert first.error.startswith("BusUnavailableError: publish to default._dlq.s1.make ")
    assert await dead_letters(bus) == []
    # nak'd with a delay of a second (a lower bound: it cannot come back sooner)
    gap = datetime.fromisoformat(second.received) - datetime.fromisoformat(first.received)
    assert gap.total_seconds() >= 0.9
    failed = h.metrics.registry.get_sample_value(
        "triggerfish_sensor_events_processing_failed_total", {"namespace": NS, "sensor_name": "s1"}
    )
    assert failed is not None and failed >= 1

    await js.update_stream(full)  # the bus takes dead letters again
    await eventually(
        lambda: any(not t.error and t.triggers for t in h.traces.recent()),
        "the dead letter is stored",
    )
    done = next(t for t in h.traces.recent() if not t.error and t.triggers)
    assert done.triggers[0].status == "dead-lettered" and done.delivery >= 2
    await eventually(lambda: _is_zero(ack_pending(bus)), "the message is acked")
    assert len(await dead_letters(bus)) == 1
    await h.stop()


async def test_action_and_event_durations_are_measured_in_milliseconds(
    bus: Bus, kube_api: KubeApi, kube: ApiKube
) -> None:
    kube_api.fault("POST", CONFIGMAPS, hold=True)
    h = SensorHarness(bus, TriggerContext(kube=kube))
    await h.start(sensor())
    await bus.publish("default", event())
    await eventually(lambda: kube_api.faults()["rules"][0]["held"] == 1, "the create is held")
    await asyncio.sleep(0.3)  # the attempt lasts at least this long
    kube_api.release()
    await eventually(lambda: len(h.traces.recent()) == 1)
    labels = {"namespace": NS, "sensor_name": "s1", "trigger_name": "make"}
    registry = h.metrics.registry
    assert registry.get_sample_value("argo_events_action_duration_milliseconds_count", labels) == 1
    total = registry.get_sample_value("argo_events_action_duration_milliseconds_sum", labels)
    assert total is not None and 300 <= total < 60_000
    per_event = {"namespace": NS, "sensor_name": "s1"}
    name = "triggerfish_sensor_event_processing_duration_milliseconds"
    assert registry.get_sample_value(f"{name}_count", per_event) == 1
    total = registry.get_sample_value(f"{name}_sum", per_event)
    assert total is not None and 300 <= total < 60_000
    await h.stop()
