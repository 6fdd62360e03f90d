"""The ``custom`` trigger against a real gRPC trigger server in the tests, built from
Argo's ``trigger.proto`` by protoc (grpcio-tools) independently of the trigger's own
message description: directly and end to end through the sensor runner over the bus.

Covers the three calls and what they carry (spec as YAML, parameters on the fetched
resource, the payload, the response to ApplyPolicy), the firing key as metadata (the
server executes a redelivered firing once), TLS with a CA from a Secret and
``serverNameOverride``, gRPC statuses classified transient or permanent, a refused
policy, the server down → retried → dead-lettered, and the message description
matching the shipped ``.proto``.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import orjson
import pytest
import yaml

from app.adapters.bus import Bus
from app.adapters.kube import FileKube
from app.adapters.secrets import ManifestSecrets
from app.compose.manifests import check_one, load_file, load_one
from app.kernel.errors import PermanentError, TransientError
from app.kernel.events import Event, new_event_id
from sensors.triggers.base import Invocation, TriggerContext
from sensors.triggers.custom import CustomTrigger, CustomTriggerConfig, file_descriptor
from tests.support.net import free_port
from tests.support.sensors import SensorHarness, dead_letters, eventually
from tests.test_argo_corpus import CORPUS
from tests.test_trigger_http import secret_manifest

NS = "ns1"
PROTO = Path(__file__).resolve().parents[1] / "sensors" / "triggers" / "proto" / "trigger.proto"
SERVER_NAME = "custom-trigger.test"


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    """protoc's Python modules for the shipped trigger.proto (the server's side)."""
    out = tmp_path_factory.mktemp("proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={out}",
         f"--grpc_python_out={out}", f"--descriptor_set_out={out / 'set.pb'}", PROTO.name],
        check=True,
    )  # fmt: skip
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("trigger_pb2"), importlib.import_module("trigger_pb2_grpc")
    finally:
        sys.path.remove(str(out))


@dataclass
class Executed:
    raw: bytes
    payload: bytes
    key: str

    @property
    def resource(self) -> Any:
        return orjson.loads(self.raw)


@dataclass
class TriggerServer:
    """A custom trigger server: FetchResource turns the spec into a PipelineRun-like
    object, Execute records it (once per idempotency key), ApplyPolicy accepts unless
    told otherwise. ``fail_next`` queues (method, status code) failures."""

    pb2: ModuleType
    fetched: list[dict[str, str]] = field(default_factory=list)
    executed: list[Executed] = field(default_factory=list)
    policy_requests: list[bytes] = field(default_factory=list)
    fail_next: list[tuple[str, grpc.StatusCode]] = field(default_factory=list)
    policy_success: bool = True
    calls: int = 0
    _responses: dict[str, bytes] = field(default_factory=dict)

    async def _maybe_fail(self, method: str, context: Any) -> None:
        self.calls += 1
        if self.fail_next and self.fail_next[0][0] == method:
            _, code = self.fail_next.pop(0)
            await context.abort(code, f"fake {code.name}")

    async def FetchResource(self, request: Any, context: Any) -> Any:
        await self._maybe_fail("FetchResource", context)
        spec = yaml.safe_load(request.resource)
        self.fetched.append(spec)
        if spec.get("raw"):
            return self.pb2.FetchResourceResponse(resource=spec["raw"].encode())
        obj = {"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
               "metadata": {"name": spec.get("name", "run"), "namespace": "default"},
               "spec": {"url": spec.get("url", "")}}  # fmt: skip
        return self.pb2.FetchResourceResponse(resource=orjson.dumps(obj))

    async def Execute(self, request: Any, context: Any) -> Any:
        await self._maybe_fail("Execute", context)
        key = dict(context.invocation_metadata()).get("idempotency-key", "")
        if key and key in self._responses:  # a repeat: answer as before, do nothing
            return self.pb2.ExecuteResponse(response=self._responses[key])
        self.executed.append(Executed(request.resource, request.payload, key))
        response = orjson.dumps({"run": len(self.executed)})
        self._responses[key] = response
        return self.pb2.ExecuteResponse(response=response)

    async def ApplyPolicy(self, request: Any, context: Any) -> Any:
        await self._maybe_fail("ApplyPolicy", context)
        self.policy_requests.append(request.request)
        message = "run accepted" if self.policy_success else "run rejected: quota"
        return self.pb2.ApplyPolicyResponse(success=self.policy_success, message=message)


async def start_server(
    stubs: tuple[ModuleType, ModuleType], credentials: Any = None
) -> tuple[grpc.aio.Server, TriggerServer, int]:
    pb2, pb2_grpc = stubs
    impl = TriggerServer(pb2)
    server = grpc.aio.server()
    pb2_grpc.add_TriggerServicer_to_server(impl, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, impl, port


@pytest.fixture
async def peer(stubs: tuple[ModuleType, ModuleType]) -> AsyncIterator[tuple[TriggerServer, str]]:
    server, impl, port = await start_server(stubs)
    try:
        yield impl, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
def ca() -> Any:
    import trustme

    return trustme.CA()


@pytest.fixture
async def ctx(tmp_path: Path, ca: Any) -> AsyncIterator[TriggerContext]:
    secrets = ManifestSecrets([secret_manifest("trigger-ca", ca=ca.cert_pem.bytes().decode(),
                                               bogus="not a cert")])  # fmt: skip
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


def trigger(ctx: TriggerContext, url: str, **cfg: Any) -> CustomTrigger:
    cfg.setdefault("serverURL", url)
    cfg.setdefault("spec", {"url": "https://example.test/pipeline.yaml", "name": "build"})
    return CustomTrigger(CustomTriggerConfig.model_validate(cfg), ctx)


NS_PARAM = [{"src": {"dependencyName": "test-dep", "dataKey": "body.namespace"},
             "dest": "metadata.namespace"}]  # fmt: skip
PAYLOAD = [{"src": {"dependencyName": "test-dep", "dataKey": "body.commit"}, "dest": "commit"}]


# --------------------------------------------------------------------------- protocol


def test_the_message_description_matches_the_shipped_proto(
    stubs: tuple[ModuleType, ModuleType],
) -> None:
    from google.protobuf import descriptor_pb2

    pb2, _ = stubs
    compiled = descriptor_pb2.FileDescriptorProto()
    pb2.DESCRIPTOR.CopyToProto(compiled)
    ours = file_descriptor()
    for fdp in (compiled, ours):
        for msg in fdp.message_type:
            for f in msg.field:
                f.ClearField("json_name")
    assert ours.package == compiled.package == "triggers"
    assert list(ours.message_type) == list(compiled.message_type)
    assert list(ours.service) == list(compiled.service)


# --------------------------------------------------------------------------- direct


async def test_fetch_parameters_execute_and_policy(
    peer: tuple[TriggerServer, str], ctx: TriggerContext
) -> None:
    server, url = peer
    t = trigger(ctx, url, parameters=NS_PARAM, payload=PAYLOAD)
    result = await t.execute(invocation({"body": {"namespace": "ci", "commit": "abc123"}}))
    assert server.fetched == [{"url": "https://example.test/pipeline.yaml", "name": "build"}]
    [run] = server.executed
    assert run.resource["metadata"] == {"name": "build", "namespace": "ci"}
    assert orjson.loads(run.payload) == {"commit": "abc123"}
    assert run.key == "k" * 32
    assert server.policy_requests == [b'{"run":1}']
    assert result.action == "executed"
    assert (result.detail["response"], result.detail["policy"]) == ('{"run":1}', "run accepted")
    assert [r["dest"] for r in result.parameters] == ["metadata.namespace", "commit"]


async def test_without_parameters_the_resource_goes_as_fetched(
    peer: tuple[TriggerServer, str], ctx: TriggerContext
) -> None:
    server, url = peer
    await trigger(ctx, url, spec={"raw": "kind: NotJson"}).execute(invocation({}))
    # not JSON, but there is nothing to apply: sent back as fetched; no payload: no bytes
    assert server.fetched == [{"raw": "kind: NotJson"}]
    assert [(r.raw, r.payload) for r in server.executed] == [(b"kind: NotJson", b"")]


async def test_a_resource_that_is_not_json_cannot_take_parameters(
    peer: tuple[TriggerServer, str], ctx: TriggerContext
) -> None:
    server, url = peer
    t = trigger(ctx, url, spec={"raw": "kind: NotJson"}, parameters=NS_PARAM)
    with pytest.raises(PermanentError, match="not a JSON object"):
        await t.execute(invocation({"body": {"namespace": "ci"}}))
    assert server.executed == []


async def test_a_redelivered_firing_is_executed_once_by_a_server_that_honours_the_key(
    peer: tuple[TriggerServer, str], ctx: TriggerContext
) -> None:
    server, url = peer
    t = trigger(ctx, url)
    first = await t.execute(invocation({}, key="a" * 32))
    again = await t.execute(invocation({}, key="a" * 32))
    other = await t.execute(invocation({}, key="b" * 32))
    assert len(server.executed) == 2
    assert first.detail["response"] == again.detail["response"] != other.detail["response"]


@pytest.mark.parametrize(
    ("method", "code", "error"),
    [
        ("FetchResource", grpc.StatusCode.UNAVAILABLE, TransientError),
        ("Execute", grpc.StatusCode.RESOURCE_EXHAUSTED, TransientError),
        ("Execute", grpc.StatusCode.INTERNAL, TransientError),
        ("ApplyPolicy", grpc.StatusCode.DEADLINE_EXCEEDED, TransientError),
        ("FetchResource", grpc.StatusCode.NOT_FOUND, PermanentError),
        ("Execute", grpc.StatusCode.INVALID_ARGUMENT, PermanentError),
        ("Execute", grpc.StatusCode.PERMISSION_DENIED, PermanentError),
    ],
)
async def test_statuses_are_classified(
    peer: tuple[TriggerServer, str],
    ctx: TriggerContext,
    method: str,
    code: grpc.StatusCode,
    error: type[Exception],
) -> None:
    server, url = peer
    server.fail_next = [(method, code)]
    with pytest.raises(error, match=f"{method} failed: {code.name}"):
        await trigger(ctx, url).execute(invocation({}))


async def test_a_refused_policy_is_permanent(
    peer: tuple[TriggerServer, str], ctx: TriggerContext
) -> None:
    server, url = peer
    server.policy_success = False
    with pytest.raises(PermanentError, match="ApplyPolicy refused the execution: run rejected"):
        await trigger(ctx, url).execute(invocation({}))


async def test_a_server_without_the_service_is_permanent(ctx: TriggerContext) -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with pytest.raises(PermanentError, match="UNIMPLEMENTED"):
            await trigger(ctx, f"127.0.0.1:{port}").execute(invocation({}))
    finally:
        await server.stop(None)


async def test_a_down_server_is_transient(ctx: TriggerContext) -> None:
    with pytest.raises(TransientError, match="FetchResource failed: UNAVAILABLE"):
        await trigger(ctx, f"127.0.0.1:{free_port()}").execute(invocation({}))


async def test_tls_with_a_ca_from_a_secret_and_a_server_name_override(
    stubs: tuple[ModuleType, ModuleType], ctx: TriggerContext, ca: Any
) -> None:
    cert = ca.issue_cert(SERVER_NAME)
    creds = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), b"".join(p.bytes() for p in cert.cert_chain_pems))]
    )
    server, impl, port = await start_server(stubs, creds)
    url = f"127.0.0.1:{port}"
    ca_ref = {"name": "trigger-ca", "key": "ca"}
    try:
        ok = trigger(ctx, url, secure=True, certSecret=ca_ref, serverNameOverride=SERVER_NAME)
        await ok.execute(invocation({}))
        assert len(impl.executed) == 1
        # the certificate names custom-trigger.test, not 127.0.0.1
        wrong_name = trigger(ctx, url, secure=True, certSecret=ca_ref)
        with pytest.raises(PermanentError, match="certificate verification failed"):
            await wrong_name.execute(invocation({}))
        bogus = trigger(ctx, url, secure=True, certSecret={**ca_ref, "key": "bogus"},
                        serverNameOverride=SERVER_NAME)  # fmt: skip
        with pytest.raises(PermanentError, match="not a PEM certificate"):
            await bogus.execute(invocation({}))
        assert len(impl.executed) == 1
    finally:
        await server.stop(None)


# --------------------------------------------------------------------------- config


DLQ = {"template": {"name": "to-log", "log": {}}, "atLeastOnce": True}


def sensor_doc(custom_cfg: dict[str, Any], **trigger_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s1", "namespace": NS},
        "spec": {
            "dependencies": [{"name": "test-dep", "eventSourceName": "webhook",
                              "eventName": "example"}],
            "triggers": [{"template": {"name": "pipeline", "custom": custom_cfg},
                          **trigger_extra}],
        },
    }  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"spec": {"a": "b"}}, "serverURL: required field is missing"),
        ({"serverURL": "", "spec": {"a": "b"}}, "custom trigger gRPC server url is not defined"),
        ({"serverURL": "h:1", "spec": {}}, "trigger body can't be empty"),
        ({"serverURL": "h:1", "spec": {"a": "b"}, "secure": True},
         "certSecret can't be nil when the trigger server connection is secure"),
        ({"serverURL": "h:1", "spec": {"a": {"nested": 1}}}, "spec.a"),
        ({"serverURL": "h:1", "spec": {"a": "b"}, "serverurl": "x"}, "serverurl: unknown field"),
    ],
)  # fmt: skip
def test_bad_config_fails_at_load(cfg: dict[str, Any], message: str) -> None:
    _obj, lines = check_one(sensor_doc(cfg))
    assert any(message in line for line in lines), lines


@pytest.mark.skipif(not CORPUS.is_dir(), reason="argo examples not present")
def test_argo_example_loads() -> None:
    result = load_file(CORPUS / "sensors" / "custom-trigger.yaml")
    assert result.errors == []


# --------------------------------------------------------------------------- end to end


async def test_runner_executes_once_per_event_with_template_parameters(
    bus: Bus, peer: tuple[TriggerServer, str], ctx: TriggerContext
) -> None:
    server, url = peer
    h = SensorHarness(bus, ctx)
    # Argo's example: template-level parameters set custom.spec.url, custom.parameters
    # set the fetched resource's namespace
    await h.start(load_one(sensor_doc(
        {"serverURL": url, "spec": {"url": "unused"}, "parameters": NS_PARAM},
        parameters=[{"src": {"dependencyName": "test-dep", "dataKey": "body.url"},
                     "dest": "custom.spec.url"}])))  # fmt: skip
    await bus.publish("default", event({"body": {"url": "https://x.test/p.yaml",
                                                 "namespace": "ci"}}))  # fmt: skip
    await eventually(lambda: len(h.traces.recent()) == 1)
    await h.stop()
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.action, out.attempts) == ("succeeded", "executed", 1)
    assert server.fetched == [{"url": "https://x.test/p.yaml"}]
    [run] = server.executed
    assert run.resource["metadata"]["namespace"] == "ci"


async def test_runner_retries_an_unavailable_server(
    bus: Bus, peer: tuple[TriggerServer, str], ctx: TriggerContext
) -> None:
    server, url = peer
    server.fail_next = [("FetchResource", grpc.StatusCode.UNAVAILABLE),
                        ("Execute", grpc.StatusCode.RESOURCE_EXHAUSTED)]  # fmt: skip
    h = SensorHarness(bus, ctx)
    cfg = {"serverURL": url, "spec": {"name": "r"}}
    await h.start(load_one(sensor_doc(cfg, retryStrategy={"steps": 3, "duration": "10ms"})))
    await bus.publish("default", event({}))
    await eventually(lambda: len(h.traces.recent()) == 1)
    await h.stop()
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("succeeded", 3)
    assert len(server.executed) == 1


async def test_runner_dead_letters_an_outage(bus: Bus, ctx: TriggerContext) -> None:
    h = SensorHarness(bus, ctx)
    cfg = {"serverURL": f"127.0.0.1:{free_port()}", "spec": {"name": "r"}}
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
    ev = event({})
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 3)
    assert out.detail["dlqTrigger"]["status"] == "succeeded"  # dlqTrigger fired
    assert "UNAVAILABLE" in out.error
    [dl] = await dead_letters(bus)
    assert dl["trigger"] == "pipeline" and dl["events"]["test-dep"]["id"] == ev.id
    await h.stop()


async def test_runner_dead_letters_a_refused_policy_at_once(
    bus: Bus, peer: tuple[TriggerServer, str], ctx: TriggerContext
) -> None:
    server, url = peer
    server.policy_success = False
    h = SensorHarness(bus, ctx)
    cfg = {"serverURL": url, "spec": {"name": "r"}}
    await h.start(load_one(sensor_doc(cfg, retryStrategy={"steps": 3, "duration": "10ms"})))
    await bus.publish("default", event({}))
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 1)
    assert "run rejected" in out.error
    await h.stop()
