"""The ``awsLambda`` trigger against a real moto server (its docker-less Lambda backend
answers ``Invoke`` by echoing the payload; STS for ``roleARN``) and, for the answers
that backend cannot give (function errors, throttles, unknown functions, outages), the
FAKE Lambda Invoke API in ``tests/fakelambda``; always through the real AWS SDK over
HTTP. Directly and end to end through the sensor runner over the bus.
"""

from __future__ import annotations

import json
import logging
import shutil
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.adapters.bus import Bus
from app.adapters.kube import FileKube
from app.adapters.secrets import ManifestSecrets
from app.compose.manifests import check_one, load_file, load_one
from app.kernel.errors import PermanentError, TransientError
from app.kernel.events import Event, new_event_id
from sensors.trace import TriggerOutcome
from sensors.triggers.aws_lambda import AwsLambdaTrigger, AwsLambdaTriggerConfig
from sensors.triggers.base import Invocation, TriggerContext
from tests.fakelambda import FakeLambda
from tests.sqs_fixtures import MotoServer
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish
from tests.support.sensors import SensorHarness, dead_letters, eventually
from tests.test_argo_corpus import CORPUS
from tests.test_trigger_http import secret_manifest

NS = "ns1"
REPO = Path(__file__).resolve().parents[1]
ACCESS_KEY = "AKIATRIGGERFISH0001"
SECRET_KEY = "lambda-s3cret-key-9f8e7d6c"
KEYS = {"accessKey": {"name": "aws-secret", "key": "accesskey"},
        "secretKey": {"name": "aws-secret", "key": "secretkey"}}  # fmt: skip
PAYLOAD = [{"src": {"dependencyName": "test-dep", "dataKey": "body.name"}, "dest": "name"}]


def _use_docker_free_lambda(moto: MotoServer) -> None:
    body = json.dumps({"lambda": {"use_docker": False}}).encode()
    req = urllib.request.Request(f"{moto.endpoint}/moto-api/config", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


@pytest.fixture
def moto_lambda(
    moto_server: MotoServer, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> str:
    """moto, reset, answering Lambda without containers; the SDK sends Lambda and STS
    calls there."""
    moto_server.reset()
    _use_docker_free_lambda(moto_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", moto_server.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_server.endpoint)
    return moto_server.endpoint


@pytest.fixture
async def fake(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FakeLambda]:
    server = FakeLambda(functions={"hello", "broken"}, errors={"broken": "boom"})
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", await server.start())
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[TriggerContext]:
    secrets = ManifestSecrets([secret_manifest("aws-secret", accesskey=ACCESS_KEY,
                                               secretkey=SECRET_KEY)])  # fmt: skip
    c = TriggerContext(kube=FileKube(tmp_path / "objects"), secrets=secrets)
    try:
        yield c
    finally:
        await c.shared.aclose()


def event(data: Any) -> Event:
    return Event(id=new_event_id(), source="webhook", subject="example", type="webhook",
                 data=data)  # fmt: skip


def invocation(data: Any, key: str = "k" * 32) -> Invocation:
    return Invocation("s1", NS, "t1", {"test-dep": event(data)}, key)


def trigger(ctx: TriggerContext, **cfg: Any) -> AwsLambdaTrigger:
    cfg.setdefault("functionName", "hello")
    cfg.setdefault("region", "us-east-1")
    cfg.setdefault("payload", PAYLOAD)
    return AwsLambdaTrigger(AwsLambdaTriggerConfig.model_validate(cfg), ctx)


# --------------------------------------------------------------------------- moto


async def test_invoke_sends_the_payload(moto_lambda: str, ctx: TriggerContext) -> None:
    result = await trigger(ctx, **KEYS).execute(invocation({"body": {"name": "argo"}}))
    assert result.action == "lambda 200"
    # moto's docker-less backend answers with the event it was given
    assert json.loads(result.detail["response"]) == {"name": "argo"}
    assert result.detail["invocationType"] == "RequestResponse"
    assert [r["dest"] for r in result.parameters] == ["name"]
    assert SECRET_KEY not in repr(result)


@pytest.mark.parametrize(("kind", "status"), [("Event", 202), ("DryRun", 204)])
async def test_invocation_types(
    moto_lambda: str, ctx: TriggerContext, kind: str, status: int
) -> None:
    result = await trigger(ctx, invocationType=kind).execute(invocation({"body": {"name": "x"}}))
    assert (result.action, result.detail["status"]) == (f"lambda {status}", status)


async def test_role_is_assumed_through_sts(moto_lambda: str, ctx: TriggerContext) -> None:
    t = trigger(ctx, roleARN="arn:aws:iam::123456789012:role/some-role", **KEYS)
    result = await t.execute(invocation({"body": {"name": "role"}}))
    assert json.loads(result.detail["response"]) == {"name": "role"}


async def test_parameters_set_the_function_and_payload(
    moto_lambda: str, ctx: TriggerContext
) -> None:
    t = trigger(ctx, functionName="unused", parameters=[
        {"src": {"dependencyName": "test-dep", "dataKey": "body.fn"}, "dest": "functionName"},
        {"src": {"dependencyName": "test-dep", "value": "greeting"}, "dest": "payload.0.dest"},
    ])  # fmt: skip
    result = await t.execute(invocation({"body": {"fn": "deploy", "name": "n"}}))
    assert result.detail["function"] == "deploy"
    assert json.loads(result.detail["response"]) == {"greeting": "n"}


async def test_status_policy(moto_lambda: str, ctx: TriggerContext) -> None:
    from sensors.spec import TriggerPolicy

    policy = TriggerPolicy.model_validate({"status": {"allow": [200]}})
    strict = TriggerContext(kube=ctx.kube, secrets=ctx.secrets, policy=policy, shared=ctx.shared)
    await trigger(strict).execute(invocation({"body": {"name": "x"}}))
    with pytest.raises(PermanentError, match=r"answered 202, expected policy.status.allow \[200\]"):
        await trigger(strict, invocationType="Event").execute(invocation({"body": {"name": "x"}}))


async def test_a_missing_payload_key_is_permanent(moto_lambda: str, ctx: TriggerContext) -> None:
    with pytest.raises(PermanentError, match=r"body\.name"):
        await trigger(ctx).execute(invocation({"body": {}}))


async def test_missing_secret_is_permanent(moto_lambda: str, ctx: TriggerContext) -> None:
    t = trigger(ctx, accessKey={"name": "nope", "key": "a"}, secretKey=KEYS["secretKey"])
    with pytest.raises(PermanentError, match="nope"):
        await t.execute(invocation({"body": {"name": "x"}}))


# --------------------------------------------------------------------------- fake


async def test_keys_from_the_secret_sign_the_request_and_the_key_is_passed(
    fake: FakeLambda, ctx: TriggerContext
) -> None:
    await trigger(ctx, **KEYS).execute(invocation({"body": {"name": "a"}}, key="f" * 32))
    await trigger(ctx, invocationType="Event").execute(invocation({"body": {"name": "b"}}))
    first, second = fake.invoked
    assert (first.access_key_id, first.payload) == (ACCESS_KEY, {"name": "a"})
    assert first.client_context == {"custom": {"triggerfish-key": "f" * 32}}
    # without keys: the default chain (the environment's dummy keys); no context for Event
    assert (second.access_key_id, second.invocation_type) == ("testing", "Event")
    assert second.client_context is None


async def test_a_function_error_is_permanent(fake: FakeLambda, ctx: TriggerContext) -> None:
    with pytest.raises(PermanentError, match=r"the function failed \(Unhandled\).*boom"):
        await trigger(ctx, functionName="broken").execute(invocation({"body": {"name": "x"}}))


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (429, TransientError, "TooManyRequestsException"),
        (500, TransientError, "ServiceException"),
        (503, TransientError, "ServiceException"),
        (409, TransientError, "ResourceConflictException"),
        (403, PermanentError, "AccessDeniedException"),
        (400, PermanentError, "InvalidRequestContentException"),
    ],
)
async def test_answers_are_classified(
    fake: FakeLambda, ctx: TriggerContext, status: int, error: type[Exception], code: str
) -> None:
    fake.fail_next = [status]
    with pytest.raises(error, match=code) as err:
        await trigger(ctx, **KEYS).execute(invocation({"body": {"name": "x"}}))
    assert SECRET_KEY not in str(err.value)


async def test_an_unknown_function_is_permanent(fake: FakeLambda, ctx: TriggerContext) -> None:
    with pytest.raises(PermanentError, match="ResourceNotFoundException"):
        await trigger(ctx, functionName="nope").execute(invocation({"body": {"name": "x"}}))


async def test_an_unreachable_endpoint_is_transient(fake: FakeLambda, ctx: TriggerContext) -> None:
    await fake.stop()
    with pytest.raises(TransientError, match="EndpointConnectionError"):
        await trigger(ctx).execute(invocation({"body": {"name": "x"}}))


# --------------------------------------------------------------------------- config


DLQ = {"template": {"name": "to-log", "log": {}}, "atLeastOnce": True}


def sensor_doc(lambda_cfg: dict[str, Any], **trigger_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s1", "namespace": NS},
        "spec": {
            "dependencies": [{"name": "test-dep", "eventSourceName": "webhook",
                              "eventName": "example"}],
            "triggers": [{"template": {"name": "invoke", "awsLambda": lambda_cfg},
                          **trigger_extra}],
        },
    }  # fmt: skip


BASE = {"functionName": "hello", "region": "us-east-1", "payload": PAYLOAD}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"functionName": "hello", "region": "r"}, "payload: required field is missing"),
        ({**BASE, "functionName": ""}, "function name is not specified"),
        ({**BASE, "region": ""}, "region is not specified"),
        ({**BASE, "invocationType": "Sync"}, "invocationType"),
        ({**BASE, "accessKey": KEYS["accessKey"]}, "accessKey and secretKey must be given"),
        ({**BASE, "rolearn": "x"}, "rolearn: unknown field"),
    ],
)  # fmt: skip
def test_bad_config_fails_at_load(cfg: dict[str, Any], message: str) -> None:
    _obj, lines = check_one(sensor_doc(cfg))
    assert any(message in line for line in lines), lines


@pytest.mark.skipif(not CORPUS.is_dir(), reason="argo examples not present")
def test_argo_example_loads() -> None:
    result = load_file(CORPUS / "sensors" / "aws-lambda-trigger.yaml")
    assert result.errors == []


# --------------------------------------------------------------------------- end to end


async def first_outcome(h: SensorHarness) -> TriggerOutcome:
    """The trigger outcome of the first trace that has one: on a loaded machine the
    event can be redelivered while its first delivery still runs, and the redelivery's
    trace (no trigger run) may be recorded first."""
    await eventually(
        lambda: any(t.triggers for t in h.traces.recent()), "a trigger outcome", timeout=30
    )
    return next(t for t in h.traces.recent() if t.triggers).triggers[0]


async def test_runner_invokes_once_per_event(
    bus: Bus, moto_lambda: str, ctx: TriggerContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc({**BASE, **KEYS}, parameters=[
        {"src": {"dependencyName": "test-dep", "dataKey": "body.fn"},
         "dest": "awsLambda.functionName"}])))  # fmt: skip
    await bus.publish("default", event({"body": {"name": "argo", "fn": "greeter"}}))
    out = await first_outcome(h)
    await h.stop()
    assert (out.status, out.action, out.attempts) == ("succeeded", "lambda 200", 1)
    trace = orjson.dumps(
        next(t for t in h.traces.recent() if t.triggers).__dict__, default=str
    ).decode()
    assert "greeter" in trace and '\\"name\\":\\"argo\\"' in trace  # moto's echo
    assert SECRET_KEY not in trace and SECRET_KEY not in caplog.text


async def test_runner_retries_a_throttle(bus: Bus, fake: FakeLambda, ctx: TriggerContext) -> None:
    fake.fail_next = [429, 503]
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc(BASE, retryStrategy={"steps": 3, "duration": "10ms"})))
    await bus.publish("default", event({"body": {"name": "x"}}))
    out = await first_outcome(h)
    await h.stop()
    assert (out.status, out.attempts) == ("succeeded", 3)
    assert len(fake.invoked) == 3
    assert len({json.dumps(i.client_context) for i in fake.invoked}) == 1  # one key


async def test_runner_dead_letters_an_outage(
    bus: Bus, aws_env: dict[str, str], ctx: TriggerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", f"http://127.0.0.1:{free_port()}")
    h = SensorHarness(bus, ctx)
    await h.start(
        load_one(
            sensor_doc(
                BASE,
                retryStrategy={"steps": 3, "duration": "10ms"},
                dlqTrigger=DLQ,
                atLeastOnce=True,
            )
        )
    )
    ev = event({"body": {"name": "x"}})
    await bus.publish("default", ev)
    out = await first_outcome(h)
    assert (out.status, out.attempts) == ("dead-lettered", 3)
    assert out.detail["dlqTrigger"]["status"] == "succeeded"  # dlqTrigger fired
    assert "EndpointConnectionError" in out.error
    [dl] = await dead_letters(bus)
    assert dl["trigger"] == "invoke" and dl["events"]["test-dep"]["id"] == ev.id
    await h.stop()


async def test_runner_dead_letters_a_function_error_at_once(
    bus: Bus, fake: FakeLambda, ctx: TriggerContext
) -> None:
    h = SensorHarness(bus, ctx)
    await h.start(load_one(sensor_doc({**BASE, "functionName": "broken"},
                                      retryStrategy={"steps": 3, "duration": "10ms"})))  # fmt: skip
    await bus.publish("default", event({"body": {"name": "x"}}))
    out = await first_outcome(h)
    assert (out.status, out.attempts) == ("dead-lettered", 1)
    assert "boom" in out.error
    await h.stop()


@pytest.mark.slow
def test_the_example_invokes_moto_from_a_webhook(moto_lambda: str, tmp_path: Path) -> None:
    """``examples/lambda-deploy-hook`` in a real ``triggerfish run``, against moto."""
    import httpx

    example = tmp_path / "example"
    shutil.copytree(REPO / "examples" / "lambda-deploy-hook", example)
    port = free_port()
    tf = Triggerfish(files=[str(example)], state_dir=tmp_path / "state",
                     port_map={12100: port}).start()  # fmt: skip
    try:
        notice = json.loads((example / "events" / "checkout.event.json").read_text())
        answer = httpx.post(f"http://127.0.0.1:{port}/deployed", json=notice, timeout=5)
        assert answer.status_code == 200

        def outcomes() -> list[Any]:
            traces: Any = tf.api("/api/v1/traces")
            return [t for tr in traces for t in tr["triggers"]]

        wait_for(lambda: len(outcomes()) == 1, timeout=30, interval=0.2)
        [out] = outcomes()
        assert (out["trigger"], out["status"]) == ("record-deployment", "succeeded"), tf.log()
        assert json.loads(out["detail"]["response"]) == notice  # moto's echo
    finally:
        tf.stop()
