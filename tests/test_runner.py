"""The sensor runner over a real nats-server: conditions with durable state, retries,
dead letters, idempotent creates under redelivery.

Objects go to :class:`app.adapters.kube.FileKube` (the standalone no-cluster target, a real
implementation) or, for failures, to an API server address nothing listens on.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from app.adapters.bus import Bus
from app.adapters.kube import ApiKube, FileKube
from app.compose.manifests import load_one
from app.kernel.events import Event, new_event_id
from app.kernel.settings import KubeSettings
from sensors.conditions import Condition
from sensors.condstate import ConditionState
from sensors.runner import RetryPolicy, firing_concurrency
from sensors.triggers.base import TriggerContext
from tests.support.net import free_port
from tests.support.sensors import SensorHarness, dead_letters, eventually


def sensor(deps: list[str], conditions: str | None = None, **trigger_extra: Any) -> Any:
    template: dict[str, Any] = {
        "name": "make-job",
        "k8s": {
            "operation": "create",
            "source": {
                "resource": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"generateName": "job-"},
                    "data": {"a": "none", "b": "none"},
                }
            },
            "parameters": [
                {
                    "src": {"dependencyName": d, "dataKey": "body.v", "value": "absent"},
                    "dest": f"data.{d}",
                }
                for d in deps
            ],
        },
    }
    if conditions:
        template["conditions"] = conditions
    return load_one(
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Sensor",
            "metadata": {"name": "s1", "namespace": "ns1"},
            "spec": {
                "dependencies": [
                    {"name": d, "eventSourceName": "hook", "eventName": d} for d in deps
                ],
                "triggers": [{"template": template, **trigger_extra}],
            },
        }
    )


def event(name: str, v: str, eid: str | None = None) -> Event:
    return Event(id=eid or new_event_id(), source="hook", subject=name, type="webhook",
                 data={"body": {"v": v}})  # fmt: skip


def harness(bus: Bus, kube: Any) -> SensorHarness:
    return SensorHarness(bus, TriggerContext(kube=kube))


def objects(kube: FileKube) -> list[dict[str, Any]]:
    return [o for o in kube.list_objects() if o["kind"] == "ConfigMap"]


async def test_and_condition_fires_once_across_restart(bus: Bus, tmp_path: Path) -> None:
    kube = FileKube(tmp_path / "objects")
    h = harness(bus, kube)
    s = sensor(["a", "b"])
    await h.start(s)
    await bus.publish("default", event("a", "first-a"))
    await bus.publish("default", event("a", "latest-a"))  # latest event per dependency wins
    await eventually(lambda: len(h.traces.recent()) == 2)
    assert objects(kube) == []
    await h.stop()  # restart between dependency A and B

    h2 = harness(bus, kube)
    await h2.start(sensor(["a", "b"]))
    await bus.publish("default", event("b", "the-b"))
    await eventually(lambda: len(objects(kube)) == 1)
    await asyncio.sleep(0.3)
    objs = objects(kube)
    assert len(objs) == 1
    assert objs[0]["data"] == {"a": "latest-a", "b": "the-b"}
    # state was cleared after firing: a new b alone does not fire again
    await bus.publish("default", event("b", "b2"))
    await asyncio.sleep(0.5)
    assert len(objects(kube)) == 1
    await h2.stop()


async def test_or_condition_fires_per_event(bus: Bus, tmp_path: Path) -> None:
    kube = FileKube(tmp_path / "objects")
    h = harness(bus, kube)
    await h.start(sensor(["a", "b"], conditions="a || b"))
    await bus.publish("default", event("a", "x"))
    await bus.publish("default", event("b", "y"))
    await bus.publish("default", event("a", "z"))
    await eventually(lambda: len(objects(kube)) == 3)
    datas = sorted((o["data"]["a"], o["data"]["b"]) for o in objects(kube))
    # a dependency that did not fire the trigger falls back to the parameter's default
    assert datas == [("absent", "y"), ("x", "absent"), ("z", "absent")]
    await h.stop()


async def test_redelivered_event_does_not_create_twice(bus: Bus, tmp_path: Path) -> None:
    kube = FileKube(tmp_path / "objects")
    h = harness(bus, kube)
    await h.start(sensor(["a"]))
    eid = new_event_id()
    # the same event id published outside the dedup window is delivered twice
    await bus.publish_raw("default.hook.a", event("a", "v", eid).to_json(), "x1")
    await bus.publish_raw("default.hook.a", event("a", "v", eid).to_json(), "x2")
    await eventually(lambda: len(h.traces.recent()) == 2)
    assert len(objects(kube)) == 1
    actions = sorted(t.triggers[0].action for t in h.traces.recent())
    assert actions == ["already-exists", "created"]
    await h.stop()


async def test_failing_target_is_retried_then_dead_lettered_and_acked(
    bus: Bus, tmp_path: Path
) -> None:
    dead = ApiKube.from_settings(
        KubeSettings(kubeconfig=str(_kubeconfig(tmp_path, free_port())), request_timeout_seconds=1)
    )
    assert dead is not None
    h = harness(bus, dead)
    s = sensor(["a"], retryStrategy={"steps": 3, "duration": "10ms"})
    await h.start(s)
    ev = event("a", "v")
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1, timeout=20)
    t = h.traces.recent()[0]
    assert t.triggers[0].status == "dead-lettered"
    assert t.triggers[0].attempts == 3
    dl = await dead_letters(bus)
    assert len(dl) == 1
    assert dl[0]["trigger"] == "make-job" and dl[0]["events"]["a"]["id"] == ev.id
    await h.stop()
    info = await bus._jetstream().consumer_info("default", "ns1-s1-a")
    assert info.num_ack_pending == 0 and info.num_pending == 0
    await dead.close()


async def test_missing_key_without_default_names_parameter_and_path(
    bus: Bus, tmp_path: Path
) -> None:
    kube = FileKube(tmp_path / "objects")
    s = load_one(
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Sensor",
            "metadata": {"name": "s2", "namespace": "ns1"},
            "spec": {
                "dependencies": [{"name": "a", "eventSourceName": "hook", "eventName": "a"}],
                "triggers": [{"template": {"name": "t", "k8s": {
                    "operation": "create",
                    "source": {"resource": {"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": {"name": "x"}}},
                    "parameters": [{"src": {"dependencyName": "a", "dataKey": "body.nope"},
                                    "dest": "data.x"}],
                }}}],
            },
        }
    )  # fmt: skip
    h = harness(bus, kube)
    await h.start(s)
    await bus.publish("default", event("a", "v"))
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert out.status == "dead-lettered"
    assert out.attempts == 1  # permanent: not retried
    assert "parameter 0" in out.error and "body.nope" in out.error
    assert objects(kube) == []
    await h.stop()


def _kubeconfig(tmp_path: Path, port: int) -> Path:
    p = tmp_path / "dead-kubeconfig"
    p.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    return p


@pytest.mark.parametrize("text", ["a &&", "(a || b", "a && c", "a b"])
def test_bad_conditions_fail_at_load(text: str) -> None:
    from app.compose.manifests import check_one

    doc = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s", "namespace": "n"},
        "spec": {
            "dependencies": [
                {"name": "a", "eventSourceName": "e", "eventName": "a"},
                {"name": "b", "eventSourceName": "e", "eventName": "b"},
            ],
            "triggers": [{"template": {"name": "t", "conditions": text, "log": {}}}],
        },
    }
    _obj, lines = check_one(doc)
    assert lines, f"{text!r} should be rejected"
    assert any("conditions" in line for line in lines)


async def test_dlq_trigger_runs_when_retries_are_exhausted(bus: Bus, tmp_path: Path) -> None:
    dead = ApiKube.from_settings(
        KubeSettings(kubeconfig=str(_kubeconfig(tmp_path, free_port())), request_timeout_seconds=1)
    )
    assert dead is not None
    s = sensor(
        ["a"],
        retryStrategy={"steps": 2, "duration": "10ms"},
        atLeastOnce=True,
        dlqTrigger={"template": {"name": "to-log", "log": {}}, "atLeastOnce": True},
    )
    h = harness(bus, dead)
    await h.start(s)
    await bus.publish("default", event("a", "v"))
    await eventually(lambda: len(h.traces.recent()) == 1, timeout=20)
    out = h.traces.recent()[0].triggers[0]
    assert out.status == "dead-lettered"
    assert out.detail["dlqTrigger"] == {
        "trigger": "to-log",
        "status": "succeeded",
        "action": "logged",
        "error": "",
    }
    assert len(await dead_letters(bus)) == 1
    await h.stop()
    await dead.close()


async def test_rate_limit_spaces_firings(bus: Bus, tmp_path: Path) -> None:
    kube = FileKube(tmp_path / "objects")
    h = harness(bus, kube)
    await h.start(sensor(["a"], rateLimit={"unit": "Second", "requestsPerUnit": 5}))
    for i in range(8):
        await bus.publish("default", event("a", f"v{i}"))
    await eventually(lambda: len(objects(kube)) == 8, timeout=20)
    stamps = sorted(
        int(o["metadata"]["labels"]["events.argoproj.io/action-timestamp"]) for o in objects(kube)
    )
    # a bucket of 5 starts full: the 6th..8th firing wait for tokens at 5/s
    assert stamps[-1] - stamps[0] >= 400
    await h.stop()


async def test_filtered_event_is_acked_and_explained(bus: Bus, tmp_path: Path) -> None:
    kube = FileKube(tmp_path / "objects")
    s = load_one(
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Sensor",
            "metadata": {"name": "f1", "namespace": "ns1"},
            "spec": {
                "dependencies": [{
                    "name": "a", "eventSourceName": "hook", "eventName": "a",
                    "filters": {"data": [
                        {"path": "body.v", "type": "string", "value": ["resnet"]},
                    ]},
                }],
                "triggers": [{"template": {"name": "t", "log": {}}}],
            },
        }
    )  # fmt: skip
    h = harness(bus, kube)
    await h.start(s)
    await bus.publish("default", event("a", "bert"))
    await bus.publish("default", event("a", "resnet-50"))  # string values are unanchored regexes
    await eventually(lambda: len(h.traces.recent()) == 2)
    by_value = {t.filtered: t for t in h.traces.recent()}
    rejected, passed = by_value[True], by_value[False]
    assert not rejected.triggers and any("bert" in r for r in rejected.filters)
    assert passed.triggers[0].status == "succeeded"

    async def all_acked() -> bool:  # the ack follows the trace: wait for it, then stop
        info = await bus._jetstream().consumer_info("default", "ns1-f1-a")
        return info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(all_acked, "both events acked")
    await h.stop()


@pytest.mark.parametrize(
    ("error_on_timeout", "status"), [(True, "dead-lettered"), (False, "succeeded")]
)
async def test_k8s_policy_waits_for_labels(
    bus: Bus, tmp_path: Path, error_on_timeout: bool, status: str
) -> None:
    kube = FileKube(tmp_path / "objects")
    policy = {"k8s": {"labels": {"ready": "yes"}, "backoff": {"steps": 2, "duration": "10ms"},
                      "errorOnBackoffTimeout": error_on_timeout}}  # fmt: skip
    h = harness(bus, kube)
    await h.start(sensor(["a"], policy=policy), default_retry=RetryPolicy(steps=1))
    await bus.publish("default", event("a", "v"))
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert out.status == status
    if status == "succeeded":
        assert out.detail["policy"] == "timed out"
    else:
        assert "did not get labels" in out.error
    await h.stop()


async def test_k8s_policy_succeeds_when_labels_match(bus: Bus, tmp_path: Path) -> None:
    kube = FileKube(tmp_path / "objects")
    policy = {"k8s": {"labels": {"events.argoproj.io/trigger": "make-job"},
                      "errorOnBackoffTimeout": True}}  # fmt: skip
    h = harness(bus, kube)
    await h.start(sensor(["a"], policy=policy))
    await bus.publish("default", event("a", "v"))
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert out.status == "succeeded" and out.detail["policy"] == "labels matched"
    await h.stop()


async def test_rate_limit_per_minute_holds_the_firing_after_the_burst() -> None:
    from sensors.runner import RateLimiter

    limiter = RateLimiter(2, 60.0)  # rateLimit {unit: Minute, requestsPerUnit: 2}
    await asyncio.wait_for(limiter.acquire(), 5)
    await asyncio.wait_for(limiter.acquire(), 5)  # the bucket starts full
    # the next token comes after 30 s: it cannot be there a fraction of a second later
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(limiter.acquire(), 0.3)


def test_fast_path_keeps_the_api_clients_slots_busy_within_max_ack_pending(
    tmp_path: Path,
) -> None:
    api = ApiKube.from_settings(
        KubeSettings(kubeconfig=str(_kubeconfig(tmp_path, free_port())), max_in_flight=100)
    )
    assert api is not None
    assert firing_concurrency(64, api, 4096) == 200  # twice the API client's slots
    assert firing_concurrency(64, api, 150) == 150  # never above max_ack_pending
    assert firing_concurrency(300, api, 4096) == 300  # the setting is a floor
    assert firing_concurrency(64, FileKube(tmp_path), 0) == 64  # no in-flight limit


async def test_condition_path_trace_shows_state_fired_and_waiting(bus: Bus, tmp_path: Path) -> None:
    kube = FileKube(tmp_path / "objects")
    h = harness(bus, kube)
    await h.start(sensor(["a", "b"], conditions="a && b"))
    await bus.publish("default", event("a", "x"))
    await eventually(lambda: len(h.traces.recent()) == 1)
    await bus.publish("default", event("b", "y"))
    await eventually(lambda: len(h.traces.recent()) == 2)
    second, first = h.traces.recent()
    assert (first.dependency, first.fired) == ("a", False)
    assert first.conditions == {
        "state": {"make-job": ["a"]},
        "fired": [],
        "waiting": {"make-job": "a && b"},
    }
    assert first.triggers == []
    assert (second.dependency, second.fired) == ("b", True)
    assert second.conditions == {
        "state": {"make-job": ["a", "b"]},
        "fired": ["make-job"],
        "waiting": {},
    }
    assert [t.status for t in second.triggers] == ["succeeded"]
    await h.stop()


async def test_state_left_satisfied_by_a_crash_fires_once_at_start(
    bus: Bus, tmp_path: Path
) -> None:
    # a crash after both events were stored, before the trigger fired
    kube = FileKube(tmp_path / "objects")
    state = await bus.state_store("sensor-ns1-s1")
    await state.put("make-job__a", event("a", "stored-a").to_json())
    await state.put("make-job__b", event("b", "stored-b").to_json())
    h = harness(bus, kube)
    await h.start(sensor(["a", "b"]))
    assert [o["data"] for o in objects(kube)] == [{"a": "stored-a", "b": "stored-b"}]
    [trace] = h.traces.recent()
    assert (trace.sensor, trace.namespace, trace.dependency) == ("s1", "ns1", "(restart)")
    assert (trace.event_id, trace.event_source, trace.event_name) == ("", "", "")
    assert trace.fired and [t.status for t in trace.triggers] == ["succeeded"]
    left = ConditionState(state, {"make-job": Condition.compile(None, ["a", "b"])}, ["a", "b"])
    await left.load()
    assert left.present("make-job") == []  # the fired round's events are gone
    await h.stop()
    h2 = harness(bus, kube)  # a second start finds nothing left to fire
    await h2.start(sensor(["a", "b"]))
    assert h2.traces.recent() == [] and len(objects(kube)) == 1
    await h2.stop()


@pytest.mark.parametrize(
    ("steps", "expected"),
    [(0, []), (1, []), (2, [1.0]), (4, [1.0, 2.0, 4.0]), (6, [1.0, 2.0, 4.0, 5.0, 5.0])],
)
def test_retry_delays_grow_by_the_factor_up_to_the_cap(steps: int, expected: list[float]) -> None:
    policy = RetryPolicy(steps=steps, duration_seconds=1.0, factor=2.0, jitter=0.0,
                         max_delay_seconds=5.0)  # fmt: skip
    assert policy.delays() == expected


def test_retry_jitter_adds_up_to_its_fraction_of_each_delay() -> None:
    import random

    saved = random.getstate()
    random.seed(1234)  # a fixed draw; the global generator is restored after
    try:
        policy = RetryPolicy(steps=9, duration_seconds=1.0, factor=1.5, jitter=0.5,
                             max_delay_seconds=100.0)  # fmt: skip
        delays = policy.delays()
    finally:
        random.setstate(saved)
    bases = [1.5**i for i in range(8)]
    assert all(b <= d < b * 1.5 for b, d in zip(bases, delays, strict=True)), delays
    assert any(d > b for b, d in zip(bases, delays, strict=True))


def test_firing_key_is_32_hex_chars_stable_and_per_event() -> None:
    from sensors.runner import firing_key

    a, b = event("a", "v"), event("a", "v")
    key = firing_key("ns1", "s1", "t", {"a": a})
    assert len(key) == 32 and int(key, 16) >= 0
    assert firing_key("ns1", "s1", "t", {"a": a}) == key
    assert firing_key("ns1", "s1", "t", {"a": b}) != key
    assert firing_key("ns1", "s1", "t2", {"a": a}) != key


async def test_unexpected_trigger_error_is_retried_then_dead_lettered(
    bus: Bus, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    h = harness(bus, FileKube(blocked / "objects"))  # writing there raises an OSError
    await h.start(sensor(["a"]))
    await bus.publish("default", event("a", "v"))
    await eventually(lambda: len(h.traces.recent()) == 1)
    [trace] = h.traces.recent()
    assert trace.error == "" and trace.delivery == 1
    out = trace.triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 2)
    assert out.error.startswith(("NotADirectoryError", "FileExistsError"))
    await h.stop()


async def test_trigger_level_parameters_build_the_template_per_firing(
    bus: Bus, tmp_path: Path
) -> None:
    from sensors.runner import firing_key

    kube = FileKube(tmp_path / "objects")
    # trigger-level parameters rewrite the template itself, here the object's data
    s = sensor(
        ["a"],
        parameters=[
            {"src": {"dependencyName": "a", "dataKey": "body.v"},
             "dest": "k8s.source.resource.data.b"},
        ],
    )  # fmt: skip
    h = harness(bus, kube)
    await h.start(s)
    ev = event("a", "from-template")
    await bus.publish("default", ev)
    await eventually(lambda: len(objects(kube)) == 1)
    [obj] = objects(kube)
    assert obj["data"] == {"a": "from-template", "b": "from-template"}
    key = firing_key("ns1", "s1", "make-job", {"a": ev})
    assert obj["metadata"]["annotations"]["events.triggerfish.io/trigger-key"] == key
    assert obj["metadata"]["name"] == "job-" + key[:10]
    await eventually(lambda: len(h.traces.recent()) == 1)  # the trace follows the object
    out = h.traces.recent()[0].triggers[0]
    assert out.trigger == "make-job"
    # the template's parameter first, then the k8s one
    assert [(p["where"], p["dest"]) for p in out.parameters] == [
        ("parameters", "k8s.source.resource.data.b"),
        ("k8s.parameters", "data.a"),
    ]
    await h.stop()


async def test_fast_path_trace_names_the_event_and_what_was_done(bus: Bus, tmp_path: Path) -> None:
    kube = FileKube(tmp_path / "objects")
    h = harness(bus, kube)
    await h.start(sensor(["a"]))
    ev = event("a", "v")
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1)
    [t] = h.traces.recent()
    assert (t.sensor, t.namespace, t.dependency, t.delivery) == ("s1", "ns1", "a", 1)
    assert (t.event_id, t.event_source, t.event_name) == (ev.id, "hook", "a")
    assert t.conditions == {"satisfied": True}
    assert (t.fired, t.filtered, t.error) == (True, False, "")
    assert [(o.trigger, o.status, o.action) for o in t.triggers] == [
        ("make-job", "succeeded", "created")
    ]
    await h.stop()


async def test_one_trace_log_line_per_event(
    bus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triggerfish.trace")
    kube = FileKube(tmp_path / "objects")
    s = load_one(
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Sensor",
            "metadata": {"name": "f1", "namespace": "ns1"},
            "spec": {
                "dependencies": [{
                    "name": "a", "eventSourceName": "hook", "eventName": "a",
                    "filters": {"data": [{"path": "body.v", "type": "string", "value": ["go"]}]},
                }],
                "triggers": [{"template": {"name": "t1", "log": {}}},
                             {"template": {"name": "t2", "log": {}}}],
            },
        }
    )  # fmt: skip
    h = harness(bus, kube)
    await h.start(s)
    stop, go = event("a", "stop"), event("a", "go")
    await bus.publish("default", stop)
    await eventually(lambda: len(h.traces.recent()) == 1)
    await bus.publish("default", go)
    await eventually(lambda: len(h.traces.recent()) == 2)
    await h.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "triggerfish.trace"]
    assert lines == [
        f"trace sensor=f1 event={stop.id} dependency=a filtered=True fired=False triggers=-",
        f"trace sensor=f1 event={go.id} dependency=a filtered=False fired=True"
        " triggers=t1:succeeded, t2:succeeded",
    ]


async def test_each_failed_firing_gets_its_own_dead_letter(bus: Bus, tmp_path: Path) -> None:
    # dead letters carry the firing key as their dedup id: two firings, two dead letters
    kube = FileKube(tmp_path / "objects")
    h = harness(bus, kube)
    await h.start(sensor(["a"], parameters=[
        {"src": {"dependencyName": "a", "dataKey": "body.missing"},
         "dest": "k8s.source.resource.data.b"},
    ]))  # fmt: skip
    first, second = event("a", "1"), event("a", "2")
    await bus.publish("default", first)
    await bus.publish("default", second)
    await eventually(lambda: len(h.traces.recent()) == 2)
    assert [t.triggers[0].status for t in h.traces.recent()] == ["dead-lettered"] * 2
    ids = sorted(d["events"]["a"]["id"] for d in await dead_letters(bus))
    assert ids == sorted([first.id, second.id])
    await h.stop()
