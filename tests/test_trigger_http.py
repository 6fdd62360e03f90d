"""The ``http`` trigger against a real HTTP server on 127.0.0.1 (port 0) that records
what it receives, directly and end to end through the sensor runner over a real
nats-server.

Covers the payload, headers from the manifest, from events and from Secrets and
ConfigMaps, basic auth, TLS (CA, mutual TLS, skip-verify), ``policy.status``, retries of
5xx and timeouts, dead letters, and the ``Idempotency-Key`` header.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from app.adapters.bus import Bus
from app.adapters.kube import FileKube
from app.adapters.secrets import ManifestSecrets
from app.compose.manifests import check_one, load_one
from app.kernel.errors import PermanentError, TransientError
from app.kernel.events import Event, new_event_id
from sensors.runner import RetryPolicy
from sensors.spec import TriggerPolicy
from sensors.triggers.base import Invocation, TriggerContext
from sensors.triggers.http import HttpTrigger, HttpTriggerConfig, safe_url
from tests.support.net import free_port
from tests.support.sensors import SensorHarness, dead_letters, eventually

NS = "ns1"
TOKEN = "t0p-s3cr3t-token"


# --------------------------------------------------------------------------- the server


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    delay_seconds: float = 0.0
    content_type: str = "text/plain"


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class RecordingServer:
    """Records every request; answers with the queued replies, then ``default``.

    ``routes`` maps a path to a fixed reply (used to serve documents)."""

    requests: list[Received] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    default: Reply = field(default_factory=Reply)
    routes: dict[str, Reply] = field(default_factory=dict)
    url: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Received(request.method, request.path, request.query_string,
                     {k.lower(): v for k, v in request.headers.items()}, body)
        )  # fmt: skip
        reply = self.routes.get(request.path)
        if reply is None:
            reply = self.replies.pop(0) if self.replies else self.default
        if reply.delay_seconds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), reply.delay_seconds)
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)

    async def start(self, tls: ssl.SSLContext | None = None) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[RecordingServer]:
    s = RecordingServer()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


# --------------------------------------------------------------------------- helpers


def secret_manifest(name: str, **values: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[TriggerContext]:
    kube = FileKube(tmp_path / "objects")
    secrets = ManifestSecrets([secret_manifest("api", token=TOKEN, user="alice", pw="pa:ss")])
    c = TriggerContext(kube=kube, secrets=secrets)
    try:
        yield c
    finally:
        await c.shared.aclose()


def event(data: Any, eid: str | None = None) -> Event:
    return Event(id=eid or new_event_id(), source="hook", subject="a", type="webhook", data=data)


def invocation(data: Any, key: str = "k" * 32) -> Invocation:
    return Invocation("s1", NS, "t1", {"a": event(data)}, key)


def trigger(ctx: TriggerContext, policy: dict[str, Any] | None = None, **cfg: Any) -> HttpTrigger:
    if policy is not None:
        ctx.policy = TriggerPolicy.model_validate(policy)
    return HttpTrigger(HttpTriggerConfig.model_validate(cfg), ctx)


# --------------------------------------------------------------------------- requests


async def test_payload_is_built_from_parameters(
    server: RecordingServer, ctx: TriggerContext
) -> None:
    t = trigger(ctx, url=server.url + "/hello", payload=[
        {"src": {"dependencyName": "a", "dataKey": "body.name"}, "dest": "bucket"},
        {"src": {"dependencyName": "a", "contextKey": "type"}, "dest": "meta.type"},
        {"src": {"dependencyName": "a", "dataKey": "body.n", "useRawData": True}, "dest": "n"},
        {"src": {"dependencyName": "a", "dataKey": "body.missing", "value": "dflt"},
         "dest": "list.-1"},
    ])  # fmt: skip
    result = await t.execute(invocation({"body": {"name": "b1", "n": 7}}, key="f" * 32))
    assert result.action == "http 200"
    assert result.detail["status"] == 200
    [req] = server.requests
    assert req.method == "POST" and req.path == "/hello"
    assert req.json() == {"bucket": "b1", "meta": {"type": "webhook"}, "n": 7, "list": ["dflt"]}
    assert req.headers["content-type"] == "application/json"
    assert req.headers["idempotency-key"] == "f" * 32
    assert [r["dest"] for r in result.parameters] == ["bucket", "meta.type", "n", "list.-1"]


async def test_empty_dest_sends_the_value_as_the_whole_body(
    server: RecordingServer, ctx: TriggerContext
) -> None:
    payload = [{"src": {"dependencyName": "a", "dataKey": "body.msg"}, "dest": ""}]
    t = trigger(ctx, url=server.url, method="PUT", payload=payload)
    await t.execute(invocation({"body": {"msg": "plain text"}}))
    [req] = server.requests
    assert req.method == "PUT"
    assert req.body == b"plain text"
    assert "content-type" not in req.headers


async def test_get_without_payload_sends_no_body(
    server: RecordingServer, ctx: TriggerContext
) -> None:
    await trigger(ctx, url=server.url + "/q?x=1", method="GET").execute(invocation({}))
    [req] = server.requests
    assert (req.method, req.path, req.query, req.body) == ("GET", "/q", "x=1", b"")


async def test_missing_payload_key_is_permanent_and_named(
    server: RecordingServer, ctx: TriggerContext
) -> None:
    payload = [{"src": {"dependencyName": "a", "dataKey": "body.nope"}, "dest": "x"}]
    t = trigger(ctx, url=server.url, payload=payload)
    with pytest.raises(PermanentError, match=r"parameter 0 .*body\.nope"):
        await t.execute(invocation({"body": {}}))
    assert server.requests == []


async def test_parameters_apply_to_the_trigger_config(
    server: RecordingServer, ctx: TriggerContext
) -> None:
    t = trigger(ctx, url="http://placeholder.invalid", method="POST", parameters=[
        {"src": {"dependencyName": "a", "dataTemplate": server.url + "/items/{{ .Input.id }}"},
         "dest": "url"},
        {"src": {"dependencyName": "a", "dataKey": "verb"}, "dest": "method"},
        {"src": {"dependencyName": "a", "dataKey": "id"}, "dest": "headers.X-Item"},
    ])  # fmt: skip
    result = await t.execute(invocation({"id": "42", "verb": "PATCH"}))
    [req] = server.requests
    assert (req.method, req.path, req.headers["x-item"]) == ("PATCH", "/items/42", "42")
    assert [r["dest"] for r in result.parameters] == ["url", "method", "headers.X-Item"]


async def test_headers_dynamic_headers_and_host(
    server: RecordingServer, ctx: TriggerContext
) -> None:
    t = trigger(ctx, url=server.url, host="api.example.test",
                headers={"X-Static": "s", "Idempotency-Key": "mine"},
                dynamicHeaders=[{"src": {"dependencyName": "a", "dataKey": "rid"},
                                 "dest": "X-Request-Id"}])  # fmt: skip
    await t.execute(invocation({"rid": "r-1"}))
    [req] = server.requests
    assert req.headers["x-static"] == "s"
    assert req.headers["x-request-id"] == "r-1"
    assert req.headers["host"] == "api.example.test"
    assert req.headers["idempotency-key"] == "mine"  # the manifest's own wins


async def test_secure_headers_and_basic_auth_from_secrets_and_configmaps(
    server: RecordingServer, ctx: TriggerContext
) -> None:
    assert isinstance(ctx.kube, FileKube)
    await ctx.kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "cfg", "namespace": NS},
                           "data": {"tenant": "blue"}}, NS)  # fmt: skip
    t = trigger(ctx, url=server.url, secureHeaders=[
        {"name": "serviceToken", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
        {"name": "X-Tenant", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "tenant"}}},
    ], basicAuth={"username": {"name": "api", "key": "user"},
                  "password": {"name": "api", "key": "pw"}})  # fmt: skip
    result = await t.execute(invocation({}))
    [req] = server.requests
    assert req.headers["servicetoken"] == TOKEN
    assert req.headers["x-tenant"] == "blue"
    assert req.headers["authorization"] == "Basic " + base64.b64encode(b"alice:pa:ss").decode()
    assert TOKEN not in repr(result)


async def test_secrets_are_read_through_kubernetes_without_a_resolver(
    server: RecordingServer, tmp_path: Path
) -> None:
    kube = FileKube(tmp_path / "k")
    await kube.create(secret_manifest("api", token="from-api"), NS)
    ctx = TriggerContext(kube=kube)
    try:
        ref = {"secretKeyRef": {"name": "api", "key": "token"}}
        t = trigger(ctx, url=server.url, secureHeaders=[{"name": "T", "valueFrom": ref}])
        await t.execute(invocation({}))
        assert server.requests[0].headers["t"] == "from-api"
    finally:
        await ctx.shared.aclose()


async def test_missing_secret_is_permanent_and_names_no_value(
    server: RecordingServer, ctx: TriggerContext
) -> None:
    t = trigger(ctx, url=server.url, secureHeaders=[
        {"name": "T", "valueFrom": {"secretKeyRef": {"name": "api", "key": "nokey"}}}])  # fmt: skip
    with pytest.raises(PermanentError, match="api") as err:
        await t.execute(invocation({}))
    assert TOKEN not in str(err.value)
    assert server.requests == []


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("status", "allow", "outcome"),
    [
        (200, None, "ok"),
        (204, None, "ok"),
        (404, None, PermanentError),
        (400, None, PermanentError),
        (429, None, TransientError),
        (500, None, TransientError),
        (503, None, TransientError),
        (201, [200, 201], "ok"),
        (200, [201], PermanentError),
        (404, [404], "ok"),
        (502, [200], TransientError),
    ],
)
async def test_status_policy(
    server: RecordingServer,
    ctx: TriggerContext,
    status: int,
    allow: list[int] | None,
    outcome: Any,
) -> None:
    server.default = Reply(status, b"server says no")
    policy = {"status": {"allow": allow}} if allow is not None else None
    t = trigger(ctx, policy, url=server.url)
    if outcome == "ok":
        assert (await t.execute(invocation({}))).action == f"http {status}"
    else:
        with pytest.raises(outcome, match=f"answered {status}.*server says no"):
            await t.execute(invocation({}))


async def test_timeout_is_transient(server: RecordingServer, ctx: TriggerContext) -> None:
    server.default = Reply(delay_seconds=30)
    t = trigger(ctx, url=server.url, timeout=1)
    with pytest.raises(TransientError, match="timed out after 1s"):
        await t.execute(invocation({}))


async def test_connection_refused_is_transient(ctx: TriggerContext) -> None:
    t = trigger(ctx, url=f"http://127.0.0.1:{free_port()}/x")
    with pytest.raises(TransientError):
        await t.execute(invocation({}))


async def test_unsupported_scheme_is_permanent(ctx: TriggerContext) -> None:
    with pytest.raises(PermanentError, match="only http and https"):
        await trigger(ctx, url="ftp://127.0.0.1/x").execute(invocation({}))


def test_safe_url_drops_credentials_and_query() -> None:
    assert safe_url("https://u:p@h.example:8443/a/b?token=x") == "https://h.example:8443/a/b"


# --------------------------------------------------------------------------- TLS


@dataclass
class Pki:
    ca_pem: str
    server_cert_pem: str
    server_key_pem: str
    client_cert_pem: str
    client_key_pem: str
    dir: Path


def make_pki(tmp: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def key_pem(k: ec.EllipticCurvePrivateKey) -> str:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()  # fmt: skip

    def name(cn: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test-ca")).issuer_name(name("test-ca"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip

    def leaf(cn: str, usage: Any, san: list[Any]) -> tuple[str, str]:
        k = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
            .public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )  # fmt: skip
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(k)

    import ipaddress

    server_cert, server_key = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])  # fmt: skip
    client_cert, client_key = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return Pki(ca.public_bytes(serialization.Encoding.PEM).decode(), server_cert, server_key,
               client_cert, client_key, tmp)  # fmt: skip


def server_tls(pki: Pki, require_client: bool) -> ssl.SSLContext:
    (pki.dir / "s.crt").write_text(pki.server_cert_pem)
    (pki.dir / "s.key").write_text(pki.server_key_pem)
    c = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    c.load_cert_chain(pki.dir / "s.crt", pki.dir / "s.key")
    if require_client:
        c.verify_mode = ssl.CERT_REQUIRED
        c.load_verify_locations(cadata=pki.ca_pem)
    return c


async def test_tls_ca_client_certificate_and_skip_verify(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    srv = RecordingServer()
    url = await srv.start(server_tls(pki, require_client=True))
    secrets = ManifestSecrets([secret_manifest("tls", ca=pki.ca_pem, crt=pki.client_cert_pem,
                                               key=pki.client_key_pem)])  # fmt: skip
    ctx = TriggerContext(kube=FileKube(tmp_path / "k"), secrets=secrets)
    try:
        mtls = {"caCertSecret": {"name": "tls", "key": "ca"},
                "clientCertSecret": {"name": "tls", "key": "crt"},
                "clientKeySecret": {"name": "tls", "key": "key"}}  # fmt: skip
        assert (await trigger(ctx, url=url, tls=mtls).execute(invocation({}))).action == "http 200"
        # the server's certificate is not trusted by the system store
        with pytest.raises(PermanentError, match="certificate verification failed"):
            await trigger(ctx, url=url).execute(invocation({}))
        # trusted, but without a client certificate the server refuses the handshake
        with pytest.raises(TransientError):
            await trigger(ctx, url=url, tls={"caCertSecret": {"name": "tls", "key": "ca"}}).execute(
                invocation({})
            )
        skip = {**mtls, "insecureSkipVerify": True}
        del skip["caCertSecret"]
        assert (await trigger(ctx, url=url, tls=skip).execute(invocation({}))).action == "http 200"
        assert len(srv.requests) == 2
    finally:
        await ctx.shared.aclose()
        await srv.stop()


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("http", "message"),
    [
        ({"url": ""}, "server URL is not specified"),
        ({"url": "http://x", "method": "get"}, "method"),
        ({"url": "http://x", "secureHeaders": [{"name": "a", "valueFrom": {}}]},
         "exactly one of secretKeyRef or configMapKeyRef"),
        ({"url": "http://x", "tls": {"clientCertSecret": {"name": "a", "key": "b"}}},
         "must be given together"),
        ({"url": "http://x", "payload": [{"src": {"dependencyName": "nope"}, "dest": "x"}]},
         "'nope' names no dependency"),
        ({"url": "http://x", "dynamicHeaders": [{"src": {"dependencyName": "a"}, "dest": ""}]},
         "must not be empty"),
        ({"url": "http://x", "timout": 3}, "timout: unknown field"),
    ],
)  # fmt: skip
def test_bad_config_fails_at_load(http: dict[str, Any], message: str) -> None:
    _obj, lines = check_one(sensor_doc(http))
    assert any(message in line for line in lines), lines


def test_argo_shaped_http_triggers_load() -> None:
    doc = sensor_doc({"url": "http://x", "method": "GET", "timeout": 5,
                      "payload": [{"src": {"dependencyName": "a", "dataKey": "body"}, "dest": ""}],
                      "secureHeaders": [{"name": "t", "valueFrom": {"secretKeyRef":
                                         {"name": "s", "key": "k"}}}],
                      "tls": {"insecureSkipVerify": True}},
                     policy={"status": {"allow": [200, 201]}})  # fmt: skip
    _obj, lines = check_one(doc)
    assert lines == []


# --------------------------------------------------------------------------- end to end


def sensor_doc(
    http: dict[str, Any], *, policy: dict[str, Any] | None = None, **trigger_extra: Any
) -> dict[str, Any]:
    trig: dict[str, Any] = {"template": {"name": "call", "http": http}, **trigger_extra}
    if policy is not None:
        trig["policy"] = policy
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s1", "namespace": NS},
        "spec": {
            "dependencies": [{"name": "a", "eventSourceName": "hook", "eventName": "a"}],
            "triggers": [trig],
        },
    }


class Harness(SensorHarness):
    """A SensorHarness whose trigger context carries the trigger's ``policy``."""

    def __init__(self, bus: Bus, ctx: TriggerContext) -> None:
        super().__init__(bus, ctx, concurrency=4, default_retry=RetryPolicy(steps=1),
                         ack_wait_seconds=5.0)  # fmt: skip

    async def start(self, doc: dict[str, Any]) -> None:  # type: ignore[override]
        s = load_one(doc)
        self.ctx.policy = s.spec.triggers[0].policy  # type: ignore[union-attr]
        await super().start(s)


async def test_runner_sends_the_request_once_per_event(
    bus: Bus, server: RecordingServer, ctx: TriggerContext
) -> None:
    h = Harness(bus, ctx)
    await h.start(sensor_doc({
        "url": server.url + "/hook",
        "payload": [{"src": {"dependencyName": "a", "dataKey": "body.v"}, "dest": "value"}],
        "secureHeaders": [{"name": "X-Token",
                           "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}],
    }))  # fmt: skip
    ev = Event(
        id=new_event_id(), source="hook", subject="a", type="webhook", data={"body": {"v": "x"}}
    )
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.action, out.attempts) == ("succeeded", "http 200", 1)
    [req] = server.requests
    assert req.json() == {"value": "x"} and req.headers["x-token"] == TOKEN
    assert TOKEN not in orjson.dumps(h.traces.recent()[0].__dict__, default=str).decode()
    await h.stop()


async def test_runner_retries_5xx_with_the_same_idempotency_key(
    bus: Bus, server: RecordingServer, ctx: TriggerContext
) -> None:
    server.replies = [Reply(503), Reply(500)]
    h = Harness(bus, ctx)
    await h.start(sensor_doc({"url": server.url},
                             retryStrategy={"steps": 3, "duration": "10ms"}))  # fmt: skip
    await bus.publish("default", event({"body": {}}))
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.action, out.attempts) == ("succeeded", "http 200", 3)
    keys = {r.headers["idempotency-key"] for r in server.requests}
    assert len(server.requests) == 3 and len(keys) == 1
    await h.stop()


async def test_runner_dead_letters_a_status_the_policy_denies(
    bus: Bus, server: RecordingServer, ctx: TriggerContext
) -> None:
    server.default = Reply(200)
    h = Harness(bus, ctx)
    await h.start(sensor_doc({"url": server.url}, policy={"status": {"allow": [201]}},
                             retryStrategy={"steps": 3, "duration": "10ms"}))  # fmt: skip
    ev = event({"body": {}})
    await bus.publish("default", ev)
    await eventually(lambda: len(h.traces.recent()) == 1)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 1)  # permanent: not retried
    assert "answered 200, expected policy.status.allow [201]" in out.error
    [dl] = await dead_letters(bus)
    assert dl["trigger"] == "call" and dl["events"]["a"]["id"] == ev.id
    await h.stop()


async def test_runner_dead_letters_after_timeouts(
    bus: Bus, server: RecordingServer, ctx: TriggerContext
) -> None:
    server.default = Reply(delay_seconds=30)
    h = Harness(bus, ctx)
    await h.start(sensor_doc({"url": server.url, "timeout": 1},
                             retryStrategy={"steps": 2, "duration": "10ms"}))  # fmt: skip
    await bus.publish("default", event({}))
    await eventually(lambda: len(h.traces.recent()) == 1, timeout=20)
    out = h.traces.recent()[0].triggers[0]
    assert (out.status, out.attempts) == ("dead-lettered", 2)
    assert "timed out" in out.error
    await h.stop()


async def test_runner_template_parameters_build_the_url_per_event(
    bus: Bus, server: RecordingServer, ctx: TriggerContext
) -> None:
    h = Harness(bus, ctx)
    await h.start(sensor_doc({"url": "http://unused.invalid"}, parameters=[
        {"src": {"dependencyName": "a", "dataTemplate": server.url + "/u/{{ .Input.who }}"},
         "dest": "http.url"}]))  # fmt: skip
    for who in ("ann", "bob"):
        await bus.publish("default", event({"who": who}))
    await eventually(lambda: len(h.traces.recent()) == 2)
    assert sorted(r.path for r in server.requests) == ["/u/ann", "/u/bob"]
    await h.stop()
