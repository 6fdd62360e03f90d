"""The webhook source's HTTP contract, in-process through ``httpx.ASGITransport``.

Every status code of DESIGN §3, the Argo-shaped event data, idempotency keys and the
"200 only after the publish returned" rule. The network is not the point here; the real
sockets and the real bus are in ``test_webhook_bus.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx
import pytest

from app.kernel.errors import BusUnavailableError, ConfigError, TransientError
from app.kernel.events import Event, event_id_from
from app.kernel.jsoncodec import PARSER_MAX_DEPTH
from app.kernel.settings import HttpServerSettings
from eventsources.base import SourceContext
from eventsources.webhook import WebhookConfig, WebhookSource
from eventsources.webhook_http import (
    MASKED_AUTHORIZATION,
    MAX_BODY_DEPTH,
    Dispatch,
    Route,
    WebhookApp,
    canonical_header_name,
)

TOKEN = "s3cr3t-t0ken"


class FakeSecrets:
    """Secrets by (namespace, name, key); counts reads to prove the token is read once."""

    def __init__(self, values: Mapping[tuple[str, str, str], str]) -> None:
        self.values = dict(values)
        self.reads = 0

    async def get(self, namespace: str, name: str, key: str) -> str:
        self.reads += 1
        return self.values[(namespace, name, key)]


class RecordingMetrics:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str]] = []
        self.filtered: list[tuple[str, str]] = []
        self.statuses: list[int] = []

    def event_sent(self, source: str, event_name: str) -> None:
        self.sent.append((source, event_name))

    def event_send_failed(self, source: str, event_name: str) -> None:
        self.failed.append((source, event_name))

    def event_filtered(self, source: str, event_name: str) -> None:
        self.filtered.append((source, event_name))

    def http_request(self, source: str, status: int) -> None:
        self.statuses.append(status)


class Publisher:
    """Records published events; can fail or block on demand."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail_with: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, event: Event) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_with is not None:
                raise self.fail_with
            self.events.append(event)
        finally:
            self.in_flight -= 1


def cfg(**fields: Any) -> WebhookConfig:
    base: dict[str, Any] = {"port": "12000", "endpoint": "/trigger", "method": "POST"}
    base.update(fields)
    return WebhookConfig.model_validate(base)


Harness = tuple[httpx.AsyncClient, Publisher, RecordingMetrics]


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    clients: list[httpx.AsyncClient] = []

    async def make(
        events: Mapping[str, WebhookConfig] | None = None,
        port: int = 12000,
        secrets: FakeSecrets | None = None,
        http: HttpServerSettings | None = None,
    ) -> Harness:
        publisher = Publisher()
        metrics = RecordingMetrics()
        source = WebhookSource(
            "webhook",
            "argo-events",
            events or {"trigger": cfg()},
            SourceContext(
                publish=publisher,
                secrets=secrets or FakeSecrets({}),
                metrics=metrics,
                log=logging.getLogger("test.webhook"),
                http=http or HttpServerSettings(),
            ),
        )
        apps = await source.prepare()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=apps[port]), base_url="http://hooks.test"
        )
        clients.append(client)
        return client, publisher, metrics

    yield make
    for c in clients:
        await c.aclose()


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


# -- 200 and the event ------------------------------------------------------------------


async def test_post_json_publishes_argo_shaped_event_then_answers_success(make_client):
    client, pub, metrics = await make_client(
        {"trigger": cfg(metadata={"team": "ml", "env": "dev"})}
    )
    r = await client.post(
        "/trigger",
        content=b'{"model":"resnet","dataset":"imagenet"}',
        headers={"content-type": "application/json", "x-run": "42"},
    )
    assert r.status_code == 200
    assert r.text == "success"
    assert len(pub.events) == 1
    ev = pub.events[0]
    assert (ev.type, ev.source, ev.subject) == ("webhook", "webhook", "trigger")
    assert len(ev.id) == 32 and int(ev.id, 16) >= 0
    assert ev.data["body"] == {"model": "resnet", "dataset": "imagenet"}
    assert ev.data["metadata"] == {"team": "ml", "env": "dev"}
    assert ev.data["header"]["Content-Type"] == ["application/json"]
    assert ev.data["header"]["X-Run"] == ["42"]
    assert "Host" not in ev.data["header"]  # Go keeps Host out of Request.Header
    assert metrics.sent == [("webhook", "trigger")]
    assert metrics.failed == []
    # the envelope survives the bus encoding
    assert Event.from_json(ev.to_json()).data == ev.data


async def test_success_is_not_sent_before_the_publish_returns(make_client):
    client, pub, _ = await make_client()
    pub.gate = asyncio.Event()
    request = asyncio.create_task(client.post("/trigger", json={"a": 1}))
    await asyncio.wait_for(pub.entered.wait(), 5)
    await asyncio.sleep(0.05)
    assert not request.done(), "answered before the publish returned"
    assert pub.events == []
    pub.gate.set()
    r = await asyncio.wait_for(request, 5)
    assert r.status_code == 200 and r.text == "success"
    assert len(pub.events) == 1


async def test_publishes_run_concurrently_on_one_endpoint(make_client):
    client, pub, _ = await make_client()
    pub.gate = asyncio.Event()
    requests = [asyncio.create_task(client.post("/trigger", json={"i": i})) for i in range(5)]
    for _ in range(200):
        if pub.in_flight == 5:
            break
        await asyncio.sleep(0.01)
    assert pub.in_flight == 5, "publishes were serialised"
    pub.gate.set()
    responses = await asyncio.gather(*requests)
    assert [r.status_code for r in responses] == [200] * 5
    assert sorted(e.data["body"]["i"] for e in pub.events) == [0, 1, 2, 3, 4]


async def test_empty_body_becomes_null(make_client):
    client, pub, _ = await make_client()
    r = await client.post("/trigger")
    assert r.status_code == 200
    assert pub.events[0].data["body"] is None


async def test_non_object_json_is_kept_as_is(make_client):
    client, pub, _ = await make_client()
    r = await client.post("/trigger", content=b"[1, 2, 3]")
    assert r.status_code == 200
    assert pub.events[0].data["body"] == [1, 2, 3]


# -- 404 / 405 / health ---------------------------------------------------------------


async def test_unknown_path_is_404(make_client):
    client, pub, _ = await make_client()
    for path in ("/nope", "/trigger/", "/Trigger"):
        r = await client.post(path, json={})
        assert r.status_code == 404, path
    assert pub.events == []


async def test_wrong_method_is_405_with_allow(make_client):
    client, pub, _ = await make_client()
    for method in ("GET", "PUT", "DELETE"):
        r = await client.request(method, "/trigger")
        assert r.status_code == 405, method
        assert r.headers["allow"] == "POST"
    assert pub.events == []


async def test_rejection_leaving_a_body_unread_closes_the_connection(make_client):
    events, secrets = _auth_source()
    client, _, _ = await make_client(events, secrets=secrets)
    with_body = await client.post("/trigger", json={"a": 1})
    assert with_body.status_code == 401
    assert with_body.headers["connection"] == "close"
    assert (await client.post("/nope", json={})).headers["connection"] == "close"
    assert (await client.put("/trigger", json={})).headers["connection"] == "close"
    # nothing unread: the connection stays open
    assert "connection" not in (await client.get("/nope")).headers
    assert "connection" not in (await client.get("/trigger")).headers
    assert "connection" not in (await client.get("/health")).headers


async def test_health_on_every_port(make_client):
    events = {
        "a": cfg(port="12000", endpoint="/a"),
        "b": cfg(port="13000", endpoint="/b"),
    }
    for port in (12000, 13000):
        client, _, _ = await make_client(events, port=port)
        r = await client.get("/health")
        assert (r.status_code, r.text) == (200, "OK")


# -- 413 ------------------------------------------------------------------------------


async def test_body_over_limit_by_content_length_is_413(make_client):
    client, pub, metrics = await make_client({"trigger": cfg(maxPayloadSize=64)})
    r = await client.post("/trigger", json={"x": "y" * 100})
    assert r.status_code == 413
    assert r.headers["connection"] == "close"
    assert pub.events == [] and metrics.sent == []
    ok = await client.post("/trigger", json={"x": "y" * 10})
    assert ok.status_code == 200


async def test_body_over_limit_by_chunked_stream_is_413(make_client):
    client, pub, _ = await make_client({"trigger": cfg(maxPayloadSize=64)})
    request = client.build_request(
        "POST", "/trigger", content=_chunks(b'{"x": "', b"y" * 40, b"z" * 40, b'"}')
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    r = await client.send(request)
    assert r.status_code == 413
    assert pub.events == []


def _body_of(size: int) -> bytes:
    """A JSON body of exactly ``size`` bytes."""
    body = b'{"x":"' + b"y" * (size - 8) + b'"}'
    assert len(body) == size
    return body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_of_exactly_the_limit_is_200_and_one_byte_more_is_413(make_client, chunked):
    limit = 64
    client, pub, _ = await make_client({"trigger": cfg(maxPayloadSize=limit)})

    async def post(body: bytes) -> httpx.Response:
        if not chunked:
            request = client.build_request("POST", "/trigger", content=body)
            assert request.headers["content-length"] == str(len(body))
            return await client.send(request)
        # several chunks, so the running count is checked, not only the first chunk
        request = client.build_request(
            "POST", "/trigger", content=_chunks(body[:10], body[10:40], body[40:])
        )
        assert "content-length" not in request.headers
        return await client.send(request)

    at_limit = await post(_body_of(limit))
    assert at_limit.status_code == 200, at_limit.text
    assert pub.events[0].data["body"] == {"x": "y" * (limit - 8)}
    over = await post(_body_of(limit + 1))
    assert over.status_code == 413
    assert len(pub.events) == 1
    # one big chunk over the limit is refused as well
    if chunked:
        request = client.build_request("POST", "/trigger", content=_chunks(_body_of(limit + 1)))
        assert (await client.send(request)).status_code == 413


async def test_chunked_body_under_limit_is_accepted(make_client):
    client, pub, _ = await make_client({"trigger": cfg(maxPayloadSize=64)})
    r = await client.post("/trigger", content=_chunks(b'{"a": ', b"1", b"}"))
    assert r.status_code == 200
    assert pub.events[0].data["body"] == {"a": 1}


# -- 400 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"model": '),
        ("application/json; charset=utf-8", b"not json"),
        ("text/plain", b"hello"),  # Argo parses every non-form body as JSON
        (None, b"{'single': 'quotes'}"),
    ],
)
async def test_invalid_json_is_400(make_client, content_type, body):
    client, pub, metrics = await make_client()
    headers = {"content-type": content_type} if content_type else {}
    r = await client.post("/trigger", content=body, headers=headers)
    assert r.status_code == 400
    assert "not valid JSON" in r.text
    assert "Traceback" not in r.text
    assert pub.events == [] and metrics.sent == []


# -- 401 ------------------------------------------------------------------------------


def _auth_source() -> tuple[dict[str, WebhookConfig], FakeSecrets]:
    secrets = FakeSecrets({("argo-events", "hook-token", "token"): TOKEN + "\n"})
    events = {"trigger": cfg(authSecret={"name": "hook-token", "key": "token"})}
    return events, secrets


async def test_missing_token_is_401(make_client):
    events, secrets = _auth_source()
    client, pub, _ = await make_client(events, secrets=secrets)
    r = await client.post("/trigger", json={})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    r = await client.post("/trigger", json={}, headers={"authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401
    assert pub.events == []


async def test_wrong_token_is_401(make_client):
    events, secrets = _auth_source()
    client, pub, _ = await make_client(events, secrets=secrets)
    for wrong in ("nope", TOKEN + "x", TOKEN[:-1], ""):
        r = await client.post("/trigger", json={}, headers={"authorization": f"Bearer {wrong}"})
        assert r.status_code == 401, wrong
        assert TOKEN not in r.text
    assert pub.events == []


async def test_right_token_is_200_and_masked_in_the_event(make_client):
    events, secrets = _auth_source()
    client, pub, _ = await make_client(events, secrets=secrets)
    for _ in range(3):
        r = await client.post(
            "/trigger", json={"a": 1}, headers={"authorization": f"Bearer {TOKEN}"}
        )
        assert r.status_code == 200
    assert secrets.reads == 1, "the token is read once, at start"
    for ev in pub.events:
        assert ev.data["header"]["Authorization"] == [MASKED_AUTHORIZATION]
        assert TOKEN.encode() not in ev.to_json()


async def test_authorization_is_masked_without_auth_secret_too(make_client):
    client, pub, _ = await make_client()
    r = await client.post("/trigger", json={}, headers={"authorization": "Bearer private"})
    assert r.status_code == 200
    assert pub.events[0].data["header"]["Authorization"] == [MASKED_AUTHORIZATION]
    assert b"private" not in pub.events[0].to_json()


async def test_empty_auth_secret_is_a_config_error():
    source = WebhookSource(
        "webhook",
        "argo-events",
        {"trigger": cfg(authSecret={"name": "t", "key": "k"})},
        SourceContext(publish=Publisher(), secrets=FakeSecrets({("argo-events", "t", "k"): "\n"})),
    )
    with pytest.raises(ConfigError, match=r"spec\.webhook\.trigger\.authSecret"):
        await source.prepare()


# -- 503 / 500 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error", [BusUnavailableError("no PubAck in time"), TransientError("bus reconnecting")]
)
async def test_bus_unavailable_is_503_with_retry_after(make_client, error):
    client, pub, metrics = await make_client()
    pub.fail_with = error
    r = await client.post("/trigger", json={"a": 1})
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1
    assert r.text != "success"
    assert metrics.failed == [("webhook", "trigger")] and metrics.sent == []
    pub.fail_with = None
    r = await client.post("/trigger", json={"a": 1})
    assert r.status_code == 200


async def test_unexpected_error_is_500_without_traceback(make_client, caplog):
    client, pub, metrics = await make_client()
    pub.fail_with = RuntimeError("boom: internal detail")
    with caplog.at_level(logging.ERROR, logger="test.webhook"):
        r = await client.post("/trigger", json={"a": 1}, headers={"idempotency-key": "k1"})
    assert r.status_code == 500
    assert "Traceback" not in r.text and "internal detail" not in r.text
    assert metrics.failed == [("webhook", "trigger")]
    records = [rec for rec in caplog.records if rec.name == "test.webhook"]
    assert records, "no log line for the failure"
    from app.kernel.events import event_id_from

    assert event_id_from("webhook", "trigger", "k1") in records[-1].getMessage()


# -- headers, GET, forms --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("x-run", "X-Run"),
        ("content-type", "Content-Type"),
        ("X-API-KEY", "X-Api-Key"),
        ("x-b3-traceid", "X-B3-Traceid"),
        ("etag", "Etag"),
        ("x--double", "X--Double"),
        ("x_underscore-name", "X_underscore-Name"),
        ("bad header", "bad header"),  # not a valid field name: unchanged, as in Go
    ],
)
def test_header_names_are_canonicalised_like_go(raw, canonical):
    assert canonical_header_name(raw) == canonical


async def test_headers_are_lists_with_every_value(make_client):
    client, pub, _ = await make_client()
    r = await client.post(
        "/trigger",
        json={},
        headers=[("x-tag", "a"), ("X-Tag", "b"), ("x-github-event", "push")],
    )
    assert r.status_code == 200
    header = pub.events[0].data["header"]
    assert header["X-Tag"] == ["a", "b"]
    assert header["X-Github-Event"] == ["push"]
    assert all(isinstance(v, list) for v in header.values())


async def test_get_gives_the_query_as_a_map_of_lists(make_client):
    client, pub, _ = await make_client({"ping": cfg(endpoint="/ping", method="GET")})
    r = await client.get("/ping?model=resnet&tag=a&tag=b&empty=&q=a%20b+c")
    assert r.status_code == 200
    assert pub.events[0].data["body"] == {
        "model": ["resnet"],
        "tag": ["a", "b"],
        "empty": [""],
        "q": ["a b c"],
    }
    r = await client.get("/ping")
    assert pub.events[1].data["body"] == {}


async def test_form_post_gives_a_map_of_lists(make_client):
    client, pub, _ = await make_client()
    r = await client.post("/trigger", data={"model": "resnet", "tag": ["a", "b"]})
    assert r.status_code == 200
    assert pub.events[0].data["header"]["Content-Type"] == ["application/x-www-form-urlencoded"]
    assert pub.events[0].data["body"] == {"model": ["resnet"], "tag": ["a", "b"]}


async def test_curl_d_json_with_default_form_content_type_is_json(make_client):
    # `curl -d '{"model":"resnet"}' -X POST url` sends JSON labelled as a form post
    client, pub, _ = await make_client()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = await client.post(
        "/trigger", content=b'{"model":"resnet","dataset":"imagenet"}', headers=form
    )
    assert r.status_code == 200
    assert pub.events[0].data["body"] == {"model": "resnet", "dataset": "imagenet"}
    r = await client.post("/trigger", content=b"{not json", headers=form)
    assert r.status_code == 200
    assert pub.events[1].data["body"] == {"{not json": [""]}


# -- idempotency ----------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Idempotency-Key", "X-Request-Id"])
async def test_client_key_gives_the_same_event_id_on_retry(make_client, header):
    client, pub, _ = await make_client()
    for _ in range(2):
        r = await client.post("/trigger", json={"a": 1}, headers={header: "order-123"})
        assert r.status_code == 200
    await client.post("/trigger", json={"a": 1}, headers={header: "order-124"})
    await client.post("/trigger", json={"a": 1})
    await client.post("/trigger", json={"a": 1})
    ids = [e.id for e in pub.events]
    assert ids[0] == ids[1]
    assert len(set(ids)) == 4


async def test_idempotency_key_wins_over_request_id(make_client):
    client, pub, _ = await make_client()
    await client.post("/trigger", json={}, headers={"Idempotency-Key": "k", "X-Request-Id": "r1"})
    await client.post("/trigger", json={}, headers={"Idempotency-Key": "k", "X-Request-Id": "r2"})
    assert pub.events[0].id == pub.events[1].id


async def test_same_key_on_different_events_gives_different_ids(make_client):
    events = {"a": cfg(endpoint="/a"), "b": cfg(endpoint="/b")}
    client, pub, _ = await make_client(events)
    await client.post("/a", json={}, headers={"Idempotency-Key": "k"})
    await client.post("/b", json={}, headers={"Idempotency-Key": "k"})
    assert pub.events[0].id != pub.events[1].id


# -- several events on one port; config checks ----------------------------------------


async def test_several_event_names_on_one_port(make_client):
    events = {
        "train": cfg(endpoint="/train"),
        "deploy": cfg(endpoint="/deploy", method="PUT", metadata={"stage": "prod"}),
        "ping": cfg(endpoint="/ping", method="GET"),
    }
    client, pub, metrics = await make_client(events)
    assert (await client.post("/train", json={"m": "a"})).status_code == 200
    assert (await client.put("/deploy", json={"m": "b"})).status_code == 200
    assert (await client.get("/ping?x=1")).status_code == 200
    r = await client.post("/deploy", json={})
    assert r.status_code == 405 and r.headers["allow"] == "PUT"
    assert [e.subject for e in pub.events] == ["train", "deploy", "ping"]
    assert pub.events[1].data["metadata"] == {"stage": "prod"}
    assert metrics.sent == [("webhook", "train"), ("webhook", "deploy"), ("webhook", "ping")]


def test_same_port_and_endpoint_is_a_config_error():
    lines = WebhookSource.check_config(
        "webhook",
        {
            "a": cfg(endpoint="/x"),
            "b": cfg(endpoint="/x", method="GET"),
            "c": cfg(endpoint="/x", port="13000"),
        },
    )
    assert len(lines) == 1
    assert lines[0].startswith("spec.webhook.b.endpoint: ")
    assert "'a'" in lines[0]


def test_filter_expression_is_compiled_by_check_config():
    good = cfg(endpoint="/good", filter={"expression": "body.x == 1"})
    bad = cfg(endpoint="/bad", filter={"expression": "body.x =="})
    lines = WebhookSource.check_config("webhook", {"good": good, "bad": bad})
    assert len(lines) == 1
    assert lines[0].startswith("spec.webhook.bad.filter.expression: ")


def test_tls_settings_must_be_complete_and_agree_per_port():
    secret = {"name": "tls", "key": "crt"}
    lines = WebhookSource.check_config(
        "webhook",
        {
            "a": cfg(endpoint="/a", serverCertSecret=secret),
            "b": cfg(endpoint="/b", port="13000", serverCertSecret=secret, serverKeySecret=secret),
            "c": cfg(endpoint="/c", port="13000"),
        },
    )
    assert any(
        line.startswith("spec.webhook.a: serverCertSecret and serverKeySecret") for line in lines
    )
    assert any(line.startswith("spec.webhook.c: port 13000 is served with TLS") for line in lines)


async def test_run_refuses_an_invalid_filter():
    source = WebhookSource(
        "webhook",
        "argo-events",
        {"a": cfg(filter={"expression": "body.x =="})},
        SourceContext(publish=Publisher(), secrets=FakeSecrets({})),
    )
    with pytest.raises(ConfigError, match=r"spec\.webhook\.a\.filter\.expression: "):
        await asyncio.wait_for(source.run(), 5)
    assert not source.ready()


async def test_token_never_appears_in_reprs():
    events, secrets = _auth_source()
    source = WebhookSource(
        "webhook", "argo-events", events, SourceContext(publish=Publisher(), secrets=secrets)
    )
    apps = await source.prepare()
    assert TOKEN not in repr(apps[12000].routes)


# -- hostile input: 200 or a documented 4xx, never a 500 --------------------------------


def _nested(levels: int) -> bytes:
    """A valid JSON document ``levels`` deep, alternating objects and arrays."""
    opens = b"".join(b'{"k":' if i % 2 == 0 else b"[" for i in range(levels))
    closes = b"".join(b"}" if i % 2 == 0 else b"]" for i in reversed(range(levels)))
    return opens + b"1" + closes


@pytest.mark.parametrize("levels", [1, 253, 254, 255, 600, MAX_BODY_DEPTH])
async def test_nested_json_is_accepted_up_to_the_parser_limit(make_client, levels):
    client, pub, _ = await make_client({"trigger": cfg(maxPayloadSize=1 << 16)})
    body = _nested(levels)
    r = await client.post("/trigger", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, r.text) == (200, "success")
    event = pub.events[0]
    encoded = event.to_json()
    # The body is in the envelope as sent, and the envelope round-trips with the parser
    # every consumer uses (compared as bytes: deep values overflow Python's ``==``).
    assert b'"body":' + body + b',"metadata":' in encoded
    assert Event.from_json(encoded).to_json() == encoded


@pytest.mark.parametrize("levels", [MAX_BODY_DEPTH + 1, PARSER_MAX_DEPTH + 1, 50_000])
@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
async def test_json_nested_deeper_than_the_limit_is_400_saying_so(
    make_client, levels, content_type
):
    client, pub, _ = await make_client({"trigger": cfg(maxPayloadSize=1 << 20)})
    r = await client.post(
        "/trigger", content=_nested(levels), headers={"content-type": content_type}
    )
    assert r.status_code == 400
    assert r.text == f"request body is nested deeper than {MAX_BODY_DEPTH} levels"
    assert pub.events == []


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (b'{"s": "\xff\xfe"}', 400, None),  # invalid UTF-8
        (b'{"s": "\xed\xa0\x80"}', 400, None),  # a UTF-8-encoded surrogate
        (b'{"s": "\\ud800"}', 400, None),  # a lone surrogate escape
        (b'{"s": "\\ud83d\\ude00"}', 200, {"s": "\U0001f600"}),  # a valid pair
        (b'{"n": 1e400}', 400, None),  # beyond the float range
        (b'{"n": -1e400}', 400, None),
        (b'{"n": 123456789012345678901234567890}', 200, {"n": 1.2345678901234568e29}),
        (b'{"n": NaN}', 400, None),
        (b'{"n": Infinity}', 400, None),
        (b'{"a": 1, "a": 2}', 200, {"a": 2}),  # duplicate keys: the last one wins
        (b'{"s": "a\x00b"}', 400, None),  # a raw NUL inside a string
        (b'{"s": "a\\u0000b"}', 200, {"s": "a\x00b"}),  # an escaped NUL
        (b"\x00", 400, None),
        (b"\xef\xbb\xbf{}", 400, None),  # a byte order mark
        (b"   ", 200, None),  # blank: no body
        (b"", 200, None),
    ],
)
async def test_hostile_json_bodies_get_the_contract(make_client, body, status, expected):
    client, pub, _ = await make_client()
    r = await client.post("/trigger", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    if status == 200:
        assert pub.events[0].data["body"] == expected
        assert Event.from_json(pub.events[0].to_json()).data == pub.events[0].data
    else:
        assert r.text.startswith("request body is not valid JSON")
        assert pub.events == []


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 200),
        ("text/plain", 200),
        ("application/xml", 200),
        ("multipart/form-data; boundary=x", 200),
        (b"\xff/\xfe", 200),
        ("application/x-www-form-urlencoded", 200),
    ],
)
async def test_any_content_type_with_a_json_body_is_accepted(make_client, content_type, status):
    client, pub, _ = await make_client()
    headers = {"content-type": content_type} if content_type else {}
    r = await client.post("/trigger", content=b'{"a": [1]}', headers=headers)
    assert r.status_code == status
    assert pub.events[0].data["body"] == {"a": [1]}


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


async def test_gzip_body_is_decoded(make_client):
    client, pub, _ = await make_client()
    body = b'{"model": "resnet"}'
    for encoding, encoded in [
        ("gzip", _gzip(body)),
        ("x-gzip", _gzip(body)),
        ("GZIP", _gzip(body)),
        ("deflate", zlib.compress(body)),
        ("identity", body),
        ("gzip, identity", _gzip(body)),
        ("deflate, gzip", _gzip(zlib.compress(body))),
        ("gzip", _gzip(body[:5]) + _gzip(body[5:])),  # two gzip members
    ]:
        r = await client.post("/trigger", content=encoded, headers={"content-encoding": encoding})
        assert (r.status_code, r.text) == (200, "success"), encoding
        assert pub.events[-1].data["body"] == {"model": "resnet"}
        assert pub.events[-1].data["header"]["Content-Encoding"] == [encoding]


async def test_size_limit_applies_to_the_decoded_body(make_client):
    client, pub, _ = await make_client({"trigger": cfg(maxPayloadSize=1024)})
    fits = b'{"x": "' + b"y" * 1000 + b'"}'
    r = await client.post("/trigger", content=_gzip(fits), headers={"content-encoding": "gzip"})
    assert r.status_code == 200
    too_big = b'{"x": "' + b"y" * 1100 + b'"}'
    assert len(_gzip(too_big)) < 1024
    r = await client.post("/trigger", content=_gzip(too_big), headers={"content-encoding": "gzip"})
    assert r.status_code == 413
    # A bomb: 64 MiB of zeros in ~64 KiB, nested twice; refused after 1 KiB of output.
    bomb = _gzip(_gzip(b"\0" * (64 << 20)))
    r = await client.post("/trigger", content=bomb, headers={"content-encoding": "gzip, gzip"})
    assert r.status_code == 413
    assert len(pub.events) == 1


@pytest.mark.parametrize(
    ("encoding", "body", "message"),
    [
        ("gzip", b"not gzip at all", "request body is not valid gzip"),
        ("gzip", gzip.compress(b'{"a": 1}', mtime=0)[:-6], "request body is truncated gzip data"),
        ("deflate", b"\x00\x01", "request body is not valid deflate"),
        (
            "deflate",
            zlib.compress(b"{}") + b"junk",
            "request body has data after the end of the deflate",
        ),
        ("gzip", gzip.compress(b"{}", mtime=0) + b"junk", "request body is not valid gzip"),
        ("gzip", gzip.compress(b"\xff", mtime=0), "request body is not valid JSON"),
    ],
)
async def test_corrupt_compressed_body_is_400(make_client, encoding, body, message):
    client, pub, _ = await make_client()
    r = await client.post("/trigger", content=body, headers={"content-encoding": encoding})
    assert r.status_code == 400
    assert r.text.startswith(message), r.text
    assert pub.events == []


@pytest.mark.parametrize("encoding", ["br", "compress", "zstd", "gzip, br", b"\xff"])
async def test_unknown_content_encoding_is_415_with_accept_encoding(make_client, encoding):
    client, pub, _ = await make_client()
    r = await client.post("/trigger", content=b"{}", headers={"content-encoding": encoding})
    assert r.status_code == 415
    assert r.headers["accept-encoding"] == "gzip, deflate"
    assert pub.events == []


async def test_requests_in_flight_are_bounded_with_503_and_retry_after(make_client):
    client, pub, _ = await make_client(http=HttpServerSettings(max_in_flight_requests=2))
    pub.gate = asyncio.Event()
    held = [asyncio.create_task(client.post("/trigger", json={"i": i})) for i in range(2)]
    while pub.in_flight < 2:
        await asyncio.sleep(0.01)
    over = await client.post("/trigger", json={"i": 2})
    assert over.status_code == 503
    assert over.headers["retry-after"] == "1"
    assert over.headers["connection"] == "close"  # its body was never read
    assert (await client.get("/health")).status_code == 200  # probes are not refused
    pub.gate.set()
    assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
    assert (await client.post("/trigger", json={"i": 3})).status_code == 200
    assert sorted(e.data["body"]["i"] for e in pub.events) == [0, 1, 3]


# -- the edges of the contract ---------------------------------------------------------


async def test_invalid_content_length_is_400(make_client):
    client, pub, _ = await make_client()
    request = client.build_request("POST", "/trigger", content=b"{}")
    request.headers["content-length"] = "two"
    r = await client.send(request)
    assert (r.status_code, r.text) == (400, "invalid Content-Length")
    assert pub.events == []


async def test_error_answers_carry_their_text_and_length(make_client):
    client, _, _ = await make_client({"trigger": cfg(maxPayloadSize=8)})
    for method, path, body, status, text in [
        ("PUT", "/trigger", b"", 405, "method not allowed"),
        ("POST", "/nope", b"", 404, "404 page not found"),
        ("POST", "/trigger", b"[1, 2, 3, 4, 5]", 413, "request body too large"),
        ("POST", "/trigger", b"[1", 400, None),
        ("POST", "/trigger", b"[1]", 200, "success"),
    ]:
        r = await client.request(method, path, content=body)
        assert r.status_code == status, (method, path)
        if text is not None:
            assert r.text == text
        assert r.headers["content-length"] == str(len(r.content))
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert (await client.put("/trigger")).headers["allow"] == "POST"


async def test_401_without_a_body_keeps_the_connection(make_client):
    events, secrets = _auth_source()
    client, _, _ = await make_client(events, secrets=secrets)
    r = await client.post("/trigger", headers={"content-length": "0"})
    assert r.status_code == 401 and "connection" not in r.headers
    wrong = await client.post("/trigger", headers={"authorization": "Bearer x"})
    assert wrong.status_code == 401 and "connection" not in wrong.headers
    chunked = await client.post("/trigger", content=_chunks(b"{}"))
    assert chunked.status_code == 401 and chunked.headers["connection"] == "close"


@pytest.mark.parametrize(
    ("headers", "closes"),
    [
        ([(b"content-length", b"0")], False),
        ([(b"content-length", b"2")], True),
        ([(b"transfer-encoding", b"chunked")], True),
        ([(b"x-other", b"1")], False),
    ],
)
async def test_rejection_closes_only_when_a_body_was_announced(headers, closes):
    app = await _app()
    for path, method in (("/nope", "POST"), ("/trigger", "PUT")):
        sent = await _call(app, path, method, headers, [{"type": "http.request"}])
        start_headers = dict(sent[0]["headers"])
        assert (start_headers.get(b"connection") == b"close") is closes, (path, headers)


async def test_asgi_messages_without_optional_keys(make_client):
    # ASGI lets a server leave out "body" and "more_body" (defaults b"" and False)
    app, pub = await _app_and_publisher()
    sent = await _call(app, "/trigger", "POST", [], [{"type": "http.request"}])
    assert sent[0]["status"] == 200 and pub.events[0].data["body"] is None
    parts = [
        {"type": "http.request", "body": b"[1", "more_body": True},
        {"type": "http.request", "more_body": True},
        {"type": "http.request", "body": b"]"},
    ]
    sent = await _call(app, "/trigger", "POST", [], parts)
    assert sent[0]["status"] == 200 and pub.events[1].data["body"] == [1]


async def test_lifespan_is_answered():
    app = await _app()
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app({"type": "lifespan"}, receive, send), 5)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    await asyncio.wait_for(app({"type": "websocket"}, receive, send), 5)  # ignored
    assert len(sent) == 2


async def test_header_never_seen_before_is_canonicalised_every_time(make_client):
    client, pub, _ = await make_client()
    name = f"x-probe-{uuid.uuid4().hex[:8]}"
    for _ in range(2):  # the second time from the name cache
        assert (await client.post("/trigger", json={}, headers={name: "v"})).status_code == 200
    canonical = canonical_header_name(name)
    assert [e.data["header"][canonical] for e in pub.events] == [["v"], ["v"]]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded; charset=utf-8",
        "Application/X-WWW-Form-Urlencoded ; charset=utf-8; x=y",
    ],
)
async def test_form_content_type_with_parameters_is_a_form(make_client, content_type):
    client, pub, _ = await make_client()
    r = await client.post("/trigger", content=b"a=1", headers={"content-type": content_type})
    assert r.status_code == 200 and pub.events[0].data["body"] == {"a": ["1"]}
    r = await client.post("/trigger", content=b"[1,2]", headers={"content-type": content_type})
    assert r.status_code == 200 and pub.events[1].data["body"] == [1, 2]


async def test_bytes_that_are_not_utf8_are_replaced_in_forms_and_queries(make_client):
    client, pub, _ = await make_client()
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = await client.post("/trigger", content=b"a=\xff\xfe", headers=form)
    assert r.status_code == 200 and pub.events[0].data["body"] == {"a": ["\ufffd\ufffd"]}
    app, pub2 = await _app_and_publisher({"get": cfg(endpoint="/g", method="GET")})
    sent = await _call(app, "/g", "GET", [], [{"type": "http.request"}], query=b"a=\xff")
    assert sent[0]["status"] == 200 and pub2.events[0].data["body"] == {"a": ["\ufffd"]}


async def test_503_warnings_are_rate_limited_and_count_what_they_left_out(caplog):
    now = [100.0]
    pub = Publisher()
    pub.fail_with = BusUnavailableError("down")
    route = Route(event_name="trigger", endpoint="/trigger", method="POST",
                  max_payload_bytes=1024)  # fmt: skip
    dispatch = Dispatch(
        source_name="webhook",
        publish=pub,
        make_event=lambda name, data, eid: Event(id=eid, source="webhook", subject=name,
                                                 type="webhook", data=data),
        metrics=RecordingMetrics(),
        log=logging.getLogger("test.webhook"),
    )  # fmt: skip
    app = WebhookApp(12000, {"/trigger": route}, dispatch, clock=lambda: now[0])
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://h")
    key = {"idempotency-key": "k1"}
    with caplog.at_level(logging.WARNING, logger="test.webhook"):
        for step in (0.0, 0.25, 0.5, 0.25, 0.5, 0.5):  # seconds after the previous request
            now[0] += step
            assert (await client.post("/trigger", json={}, headers=key)).status_code == 503
    await client.aclose()
    lines = [r.getMessage() for r in caplog.records if r.name == "test.webhook"]
    event_id = event_id_from("webhook", "trigger", "k1")
    assert lines == [
        f"webhook webhook/trigger: event {event_id} not recorded, answered 503: down",
        f"webhook webhook/trigger: event {event_id} not recorded, answered 503: down"
        " (2 more since the last line)",
        f"webhook webhook/trigger: event {event_id} not recorded, answered 503: down"
        " (1 more since the last line)",
    ]


async def _app_and_publisher(
    events: Mapping[str, WebhookConfig] | None = None,
) -> tuple[Any, Publisher]:
    publisher = Publisher()
    source = WebhookSource(
        "webhook",
        "argo-events",
        events or {"trigger": cfg()},
        SourceContext(publish=publisher, secrets=FakeSecrets({}), metrics=RecordingMetrics(),
                      log=logging.getLogger("test.webhook")),
    )  # fmt: skip
    apps = await source.prepare()
    return apps[12000], publisher


async def _app() -> Any:
    return (await _app_and_publisher())[0]


async def _call(
    app: Any,
    path: str,
    method: str,
    headers: list[tuple[bytes, bytes]],
    incoming: list[dict[str, Any]],
    query: bytes = b"",
) -> list[dict[str, Any]]:
    """Drive the ASGI app directly with the given request messages; what it sent."""
    sent: list[dict[str, Any]] = []
    pending = list(incoming)

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers,
             "query_string": query}  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


async def test_bytes_that_are_not_utf8_anywhere_are_replaced_not_a_500():
    app, pub = await _app_and_publisher({"get": cfg(endpoint="/g", method="GET"), "post": cfg()})
    form = (b"content-type", b"application/x-www-form-urlencoded")
    sent = await _call(app, "/g", "GET", [], [{"type": "http.request"}], query=b"a=%FF&b=%e2%82")
    assert sent[0]["status"] == 200
    assert pub.events[0].data["body"] == {"a": ["\ufffd"], "b": ["\ufffd"]}
    sent = await _call(app, "/trigger", "POST", [form],
                       [{"type": "http.request", "body": b"a=%FF"}])  # fmt: skip
    assert sent[0]["status"] == 200 and pub.events[1].data["body"] == {"a": ["\ufffd"]}
    headers = [(b"x-name", b"caf\xe9"), (b"idempotency-key", b"k\xff")]
    for _ in range(2):
        sent = await _call(app, "/trigger", "POST", headers, [{"type": "http.request"}])
        assert sent[0]["status"] == 200
    assert pub.events[2].data["header"]["X-Name"] == ["caf\ufffd"]
    assert pub.events[2].id == pub.events[3].id == event_id_from("webhook", "post", "k\ufffd")


@pytest.mark.parametrize("first", [b"authorization", b"transfer-encoding", b"host"])
async def test_headers_after_a_special_one_are_kept(first):
    app, pub = await _app_and_publisher()
    value = b"chunked" if first == b"transfer-encoding" else b"Bearer x"
    headers = [(first, value), (b"x-after", b"1"), (b"content-type", b"application/json")]
    sent = await _call(app, "/trigger", "POST", headers, [{"type": "http.request", "body": b"{}"}])
    assert sent[0]["status"] == 200
    assert pub.events[0].data["header"]["X-After"] == ["1"]
    assert pub.events[0].data["header"]["Content-Type"] == ["application/json"]


async def test_wrong_token_with_a_body_closes_the_connection(make_client):
    events, secrets = _auth_source()
    client, _, _ = await make_client(events, secrets=secrets)
    r = await client.post("/trigger", json={"a": 1}, headers={"authorization": "Bearer nope"})
    assert r.status_code == 401 and r.headers["connection"] == "close"


async def test_filtered_request_is_counted_for_its_source_and_event(make_client):
    events = {"trigger": cfg(filter={"expression": "body.keep == true"})}
    client, pub, metrics = await make_client(events)
    r = await client.post("/trigger", json={"keep": False})
    assert (r.status_code, r.headers["x-triggerfish-filtered"]) == (200, "true")
    assert metrics.filtered == [("webhook", "trigger")] and pub.events == []


async def test_failure_before_an_event_exists_is_500_and_logged(caplog):
    app, pub = await _app_and_publisher()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/trigger", "headers": []}  # no query
    with caplog.at_level(logging.ERROR, logger="test.webhook"):
        await app(scope, receive, send)
    assert sent[0]["status"] == 500 and sent[1]["body"] == b"internal error, event not recorded"
    assert any("before an event was built" in r.getMessage() for r in caplog.records)
    assert pub.events == []

    async def gone(message: dict[str, Any]) -> None:
        raise OSError("client went away")

    await app(scope, receive, gone)  # nothing to answer to: no error escapes either
