"""The ``openWhisk`` trigger against a FAKE OpenWhisk REST API over real HTTP
(``tests/fakeopenwhisk``): directly and end to end through the sensor runner over the bus.

Covers the URL (host, version, namespace, package actions), the token as basic auth,
the payload as the action's parameters, parameters setting the action, the result and
the 202 of a long run in the trace, errors classified transient or permanent (a failed
action, throttling, outages, a refused token, an unknown action), an outage retried
then dead-lettered by the runner, and the token kept out of messages, traces and logs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from app.adapters.bus import Bus
from app.adapters.kube import FileKube
from app.adapters.secrets import ManifestSecrets
from app.compose.manifests import check_one, load_one
from app.kernel.errors import PermanentError, TransientError
from app.kernel.events import Event, new_event_id
from sensors.spec import TriggerPolicy
from sensors.triggers.base import Invocation, TriggerContext
from sensors.triggers.openwhisk import OpenWhiskTrigger, OpenWhiskTriggerConfig
from tests.fakeopenwhisk import FakeOpenWhisk, echo, fail, slow
from tests.support.net import free_port
from tests.support.sensors import SensorHarness, dead_letters, eventually
from tests.test_argo_corpus import CORPUS
from tests.test_trigger_http import secret_manifest

NS = "ns1"
TOKEN = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:s3cretWhiskKeyZ9"
TOKEN_REF = {"name": "whisk-secret", "key": "token"}
PAYLOAD = [{"src": {"dependencyName": "test-dep", "dataKey": "body.name"}, "dest": "name"}]


@pytest.fixture
async def whisk() -> AsyncIterator[FakeOpenWhisk]:
    fake = FakeOpenWhisk(TOKEN, actions={"_/hello": echo, "_/broken": fail, "_/slow": slow,
                                         "team/utils/hello": echo})  # fmt: skip
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[TriggerContext]:
    secrets = ManifestSecrets([secret_manifest("whisk-secret", token=TOKEN, old="x:y")])
    c = TriggerContext(kube=FileKube(tmp_path / "objects"), secrets=secrets)
    try:
        yield c
    finally:
        await c.shared.aclose()


def event(data: Any) -> Event:
    return Event(id=new_event_id(), source="webhook", subject="example", type="webhook",
                 data=data)  # fmt: skip


def invocation(data: Any) -> Invocation:
    return Invocation("s1", NS, "t1", {"test-dep": event(data)}, "k" * 32)


def trigger(ctx: TriggerContext, whisk: FakeOpenWhisk, **cfg: Any) -> OpenWhiskTrigger:
    cfg.setdefault("host", whisk.url)
    cfg.setdefault("actionName", "hello")
    cfg.setdefault("authToken", TOKEN_REF)
    cfg.setdefault("payload", PAYLOAD)
    return OpenWhiskTrigger(OpenWhiskTriggerConfig.model_validate(cfg), ctx)


# --------------------------------------------------------------------------- direct


async def test_invokes_the_action_with_the_payload(
    whisk: FakeOpenWhisk, ctx: TriggerContext
) -> None:
    result = await trigger(ctx, whisk).execute(invocation({"body": {"name": "argo"}}))
    [call] = whisk.invoked
    assert (call.namespace, call.action, call.params) == ("_", "hello", {"name": "argo"})
    assert call.query == {"blocking": "true", "result": "true"}
    assert call.headers["Idempotency-Key"] == "k" * 32
    assert result.action == "openWhisk 200"
    assert orjson.loads(result.detail["result"])["greeting"] == "hello argo"
    assert TOKEN not in repr(result)


async def test_namespace_version_and_package_action(
    whisk: FakeOpenWhisk, ctx: TriggerContext
) -> None:
    t = trigger(ctx, whisk, namespace="team", version="v1", actionName="utils/hello")
    await t.execute(invocation({"body": {"name": "x"}}))
    [call] = whisk.invoked
    assert (call.namespace, call.action) == ("team", "utils/hello")


def test_url_follows_the_go_client() -> None:
    def url(**cfg: Any) -> str:
        base = {"actionName": "hello", "payload": PAYLOAD}
        return OpenWhiskTriggerConfig.model_validate({**base, **cfg}).url()

    assert url(host="openwhisk.argo-events.svc:9000") == (
        "https://openwhisk.argo-events.svc:9000/api/v1/namespaces/_/actions/hello"
        "?blocking=true&result=true")  # fmt: skip
    assert url(host="http://ow:3233/", namespace="guest", version="v2").startswith(
        "http://ow:3233/api/v2/namespaces/guest/actions/hello?"
    )


async def test_parameters_set_the_action(whisk: FakeOpenWhisk, ctx: TriggerContext) -> None:
    t = trigger(ctx, whisk, actionName="unused", parameters=[
        {"src": {"dependencyName": "test-dep", "dataKey": "body.action"}, "dest": "actionName"},
    ])  # fmt: skip
    result = await t.execute(invocation({"body": {"action": "hello", "name": "p"}}))
    assert [c.action for c in whisk.invoked] == ["hello"]
    assert [r["dest"] for r in result.parameters] == ["actionName", "name"]


async def test_a_long_run_is_accepted_with_its_activation(
    whisk: FakeOpenWhisk, ctx: TriggerContext
) -> None:
    result = await trigger(ctx, whisk, actionName="slow").execute(
        invocation({"body": {"name": "s"}})
    )
    assert (result.action, result.detail["activationId"]) == ("openWhisk 202", "act00000001")


async def test_status_policy(whisk: FakeOpenWhisk, ctx: TriggerContext) -> None:
    policy = TriggerPolicy.model_validate({"status": {"allow": [200]}})
    strict = TriggerContext(kube=ctx.kube, secrets=ctx.secrets, policy=policy, shared=ctx.shared)
    with pytest.raises(PermanentError, match=r"answered 202, expected policy.status.allow \[200\]"):
        await trigger(strict, whisk, actionName="slow").execute(invocation({"body": {"name": "s"}}))


@pytest.mark.parametrize(
    ("failure", "error", "match"),
    [
        (500, TransientError, "answered 500"),
        (502, TransientError, "answered 502"),  # a proxy's 502, not an action's error
        (503, TransientError, "answered 503"),
        (429, TransientError, "answered 429"),
        (400, PermanentError, "answered 400"),
    ],
)
async def test_answers_are_classified(
    whisk: FakeOpenWhisk, ctx: TriggerContext, failure: int, error: type[Exception], match: str
) -> None:
    whisk.fail_next = [failure]
    with pytest.raises(error, match=match) as err:
        await trigger(ctx, whisk).execute(invocation({"body": {"name": "x"}}))
    assert TOKEN not in str(err.value)


async def test_a_failed_action_is_permanent(whisk: FakeOpenWhisk, ctx: TriggerContext) -> None:
    with pytest.raises(PermanentError, match=r"the action failed.*action crashed"):
        await trigger(ctx, whisk, actionName="broken").execute(invocation({"body": {"name": "x"}}))


async def test_refused_token_and_unknown_action_are_permanent(
    whisk: FakeOpenWhisk, ctx: TriggerContext
) -> None:
    bad = trigger(ctx, whisk, authToken={**TOKEN_REF, "key": "old"})
    with pytest.raises(PermanentError, match="answered 401") as err:
        await bad.execute(invocation({"body": {"name": "x"}}))
    assert "x:y" not in str(err.value)
    with pytest.raises(PermanentError, match="answered 404"):
        await trigger(ctx, whisk, actionName="nope").execute(invocation({"body": {"name": "x"}}))
    assert whisk.invoked == []


async def test_missing_secret_and_missing_key_are_permanent(
    whisk: FakeOpenWhisk, ctx: TriggerContext
) -> None:
    with pytest.raises(PermanentError, match="nope"):
        t = trigger(ctx, whisk, authToken={"name": "nope", "key": "t"})
        await t.execute(invocation({"body": {"name": "x"}}))
    with pytest.raises(PermanentError, match=r"body\.name"):
        await trigger(ctx, whisk).execute(invocation({"body": {}}))
    assert whisk.requests == 0


async def test_an_unreachable_host_is_transient(whisk: FakeOpenWhisk, ctx: TriggerContext) -> None:
    t = trigger(ctx, whisk)
    await whisk.stop()
    with pytest.raises(TransientError, match="ClientConnectorError"):
        await t.execute(invocation({"body": {"name": "x"}}))


# --------------------------------------------------------------------------- config


DLQ = {"template": {"name": "to-log", "log": {}}, "atLeastOnce": True}


def sensor_doc(whisk_cfg: dict[str, Any], **trigger_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s1", "namespace": NS},
        "spec": {
            "dependencies": [{"name": "test-dep", "eventSourceName": "webhook",
                              "eventName": "example"}],
            "triggers": [{"template": {"name": "whisk", "openWhisk": whisk_cfg},
                          **trigger_extra}],
        },
    }  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"host": "h", "actionName": "a"}, "payload: required field is missing"),
        ({"host": "", "actionName": "a", "payload": PAYLOAD}, "host URL is not specified"),
        ({"host": "h", "actionName": "", "payload": PAYLOAD}, "action name is not specified"),
        ({"host": "h", "actionName": "a", "payload": PAYLOAD, "authToken": {"name": "s"}},
         "authToken.key: required field is missing"),
        ({"host": "h", "actionname": "a", "payload": PAYLOAD}, "actionname: unknown field"),
    ],
)  # fmt: skip
def test_bad_config_fails_at_load(cfg: dict[str, Any], message: str) -> None:
    _obj, lines = check_one(sensor_doc(cfg))
    assert any(message in line for line in lines), lines


@pytest.mark.skipif(not CORPUS.is_dir(), reason="argo examples not present")
def test_argo_example_loads_with_its_key_spelled_as_argo_reads_it() -> None:
    """Argo's example writes ``openwhisk`` (a known-bad example of the corpus test);
    with the key Argo's decoder reads, ``openWhisk``, every field of it loads."""
    text = (CORPUS / "sensors" / "trigger-openwhisk.yaml").read_text()
    assert text.count("openwhisk:") == 1
    _obj, lines = check_one(yaml.safe_load(text.replace("openwhisk:", "openWhisk:")))
    assert lines == []


# --------------------------------------------------------------------------- end to end


async def test_runner_invokes_once_per_event(
    bus: Bus, whisk: FakeOpenWhisk, ctx: TriggerContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h = SensorHarness(bus, ctx)
    cfg = {"host": whisk.url, "actionName": "hello", "authToken": TOKEN_REF, "payload": PAYLOAD}
    await h.start(load_one(sensor_doc(cfg)))
    await bus.publish("default", event({"body": {"name": "argo"}}))
    await eventually(lambda: len(h.traces.recent()) == 1)
    await h.stop()
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.action, out.attempts) == ("succeeded", "openWhisk 200", 1)
    assert [c.params for c in whisk.invoked] == [{"name": "argo"}]
    trace = orjson.dumps(h.traces.recent()[0].__dict__, default=str).decode()
    assert TOKEN not in trace and TOKEN not in caplog.text


async def test_runner_retries_a_throttle(
    bus: Bus, whisk: FakeOpenWhisk, ctx: TriggerContext
) -> None:
    whisk.fail_next = [429, 503]
    h = SensorHarness(bus, ctx)
    cfg = {"host": whisk.url, "actionName": "hello", "authToken": TOKEN_REF, "payload": PAYLOAD}
    await h.start(load_one(sensor_doc(cfg, retryStrategy={"steps": 3, "duration": "10ms"})))
    await bus.publish("default", event({"body": {"name": "x"}}))
    await eventually(lambda: len(h.traces.recent()) == 1)
    await h.stop()
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("succeeded", 3)
    assert whisk.requests == 3 and len(whisk.invoked) == 1


async def test_runner_dead_letters_an_outage(bus: Bus, ctx: TriggerContext) -> None:
    cfg = {"host": f"http://127.0.0.1:{free_port()}", "actionName": "hello",
           "authToken": TOKEN_REF, "payload": PAYLOAD}  # fmt: skip
    h = SensorHarness(bus, ctx)
    await h.start(
        load_one(
            sensor_doc(
                cfg,
                retryStrategy={"steps": 3, "duration": "10ms"},
                dlqTrigger=DLQ,
                atLeastOnce=True,
            )
        )
    )
    ev = event({"body": {"name": "x"}})
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 3)
    assert out.detail["dlqTrigger"]["status"] == "succeeded"  # dlqTrigger fired
    [dl] = await dead_letters(bus)
    assert dl["trigger"] == "whisk" and dl["events"]["test-dep"]["id"] == ev.id
    await h.stop()


async def test_runner_dead_letters_a_failed_action_at_once(
    bus: Bus, whisk: FakeOpenWhisk, ctx: TriggerContext
) -> None:
    cfg = {"host": whisk.url, "actionName": "broken", "authToken": TOKEN_REF, "payload": PAYLOAD}
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc(cfg, retryStrategy={"steps": 3, "duration": "10ms"})))
    await bus.publish("default", event({"body": {"name": "x"}}))
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 1)
    assert "action crashed" in out.error
    await h.stop()
