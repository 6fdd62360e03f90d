"""The webhook HTTP contract reused by other source types: per-route verifier, responder
and shaper (:mod:`eventsources.webhook_http`), the :class:`WebhookServedSource` base
(validation paths, secrets, hook registration lifecycle) and the shared verifiers.

A small ``demo`` type stands in for github/gitlab/slack: its events hold Argo's
``webhook`` context, a signing secret, and its data shape is ``{"headers", "body"}``.
HTTP edge cases run in-process (``httpx.ASGITransport``); the lifecycle test serves a
real port.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import orjson
import pytest

from app.kernel.argo import SecretKeySelector
from app.kernel.errors import BusUnavailableError, ConfigError
from app.kernel.events import Event
from app.kernel.spec import SpecModel
from eventsources.base import SourceContext
from eventsources.common import EventSourceFilter
from eventsources.webhook import RouteHooks, WebhookContext, WebhookServedSource
from eventsources.webhook_http import BadRequest, Reply, Request, Route, Skip
from eventsources.webhook_verifiers import (
    header_token_verifier,
    hmac_hex_matches,
    hub_signature_verifier,
)
from tests.support.net import free_port
from tests.support.sources import CountingMetrics, DictSecrets

SECRET = "hook-signing-secret-1"


class DemoConfig(SpecModel):
    webhook: WebhookContext
    webhook_secret: SecretKeySelector | None = None
    kinds: list[str] = []
    metadata: dict[str, str] = {}
    filter: EventSourceFilter | None = None


def demo_data(request: Request, route: Route) -> Any:
    if not request.body:
        raise BadRequest("empty body")
    body = orjson.loads(request.body)
    return {"headers": request.headers, "body": body, "metadata": dict(route.metadata)}


class DemoSource(WebhookServedSource[DemoConfig]):
    type_name: ClassVar[str] = "demo"
    config_model: ClassVar[type[SpecModel]] = DemoConfig
    registration_retry_seconds: ClassVar[float] = 0.01

    registered: list[str]
    unregistered: list[str]
    fail_registrations = 0
    seen_listening: list[bool]

    @classmethod
    def check_event(cls, event_name: str, cfg: DemoConfig) -> list[str]:
        if "bad" in cfg.kinds:
            return [f"spec.demo.{event_name}.kinds: 'bad' is not a kind"]
        return []

    async def route_hooks(self, event_name: str, cfg: DemoConfig) -> RouteHooks:
        verifier = None
        if cfg.webhook_secret is not None:
            path = f"spec.demo.{event_name}.webhookSecret"
            secret = await self.read_secret(cfg.webhook_secret, path)
            verifier = hub_signature_verifier(secret.encode(), ["X-Demo-Signature"])
        kinds = set(cfg.kinds)

        async def challenge(request: Request) -> Reply | None:
            if request.header("X-Demo-Challenge"):
                return Reply(b'{"challenge":"ok"}', content_type="application/json")
            return None

        def shape(request: Request, route: Route) -> Any:
            kind = request.header("X-Demo-Kind") or ""
            if kinds and kind not in kinds:
                raise Skip(f"kind {kind!r} not subscribed")
            return demo_data(request, route)

        return RouteHooks(
            verifier=verifier, responder=challenge, shaper=shape, metadata=cfg.metadata
        )

    async def register_hooks(self) -> bool:
        port = int(self.webhook_context(next(iter(self.events.values()))).port)
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            self.seen_listening.append(True)
        if self.fail_registrations:
            self.fail_registrations -= 1
            raise OSError("provider down")
        self.registered.append("hook")
        return True

    async def unregister_hooks(self) -> None:
        self.unregistered.append("hook")


def demo_cfg(port: int = 12000, **fields: Any) -> DemoConfig:
    base: dict[str, Any] = {"webhook": {"port": str(port), "endpoint": "/push"}}
    base.update(fields)
    return DemoConfig.model_validate(base)


def signed(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Publisher:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail: Exception | None = None

    async def __call__(self, event: Event) -> None:
        if self.fail is not None:
            raise self.fail
        self.events.append(event)


def make_source(
    events: Mapping[str, DemoConfig], publisher: Publisher, port_host: str = "127.0.0.1"
) -> tuple[DemoSource, CountingMetrics]:
    metrics = CountingMetrics()
    source = DemoSource(
        "hooks",
        "argo-events",
        events,
        SourceContext(
            publish=publisher,
            secrets=DictSecrets({("demo", "secret"): SECRET + "\n"}),
            metrics=metrics,
            log=logging.getLogger("test.demo"),
            bind_host=port_host,
        ),
    )
    source.registered, source.unregistered, source.seen_listening = [], [], []
    return source, metrics


SIGNED = {"webhookSecret": {"name": "demo", "key": "secret"}}


async def client_for(
    events: Mapping[str, DemoConfig],
) -> tuple[httpx.AsyncClient, Publisher, CountingMetrics]:
    publisher = Publisher()
    source, metrics = make_source(events, publisher)
    apps = await source.prepare()
    transport = httpx.ASGITransport(app=apps[12000])
    return httpx.AsyncClient(transport=transport, base_url="http://x"), publisher, metrics


# -- verifier ---------------------------------------------------------------------------


async def test_signed_request_is_published_in_the_types_shape() -> None:
    client, pub, metrics = await client_for({"push": demo_cfg(**SIGNED, metadata={"a": "b"})})
    body = b'{"after":"abc123"}'
    async with client:
        r = await client.post("/push", content=body, headers={"X-Demo-Signature": signed(body)})
    assert (r.status_code, r.text) == (200, "success")
    [event] = pub.events
    assert (event.type, event.subject) == ("demo", "push")
    assert event.data["body"] == {"after": "abc123"}
    assert event.data["metadata"] == {"a": "b"}
    assert event.data["headers"]["X-Demo-Signature"] == [signed(body)]
    assert metrics.counts["sent", "push"] == 1


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Demo-Signature": signed(b"other body")}, 403),
        ({"X-Demo-Signature": signed(b'{"after":"abc123"}', "wrong-secret")}, 403),
        ({"X-Demo-Signature": "md5=00"}, 403),
        ({"X-Demo-Signature": "garbage"}, 403),
    ],
)
async def test_unsigned_or_badly_signed_request_is_refused_and_not_published(
    headers: dict[str, str], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    client, pub, metrics = await client_for({"push": demo_cfg(**SIGNED)})
    with caplog.at_level(logging.WARNING, "test.demo"):
        async with client:
            r = await client.post("/push", content=b'{"after":"abc123"}', headers=headers)
    assert r.status_code == status
    assert pub.events == []
    assert metrics.statuses[status] == 1 and metrics.counts["sent", "push"] == 0
    assert "not published" in caplog.text
    assert SECRET not in caplog.text and SECRET not in r.text


async def test_signature_covers_the_bytes_as_sent_and_the_shaper_sees_them_decoded() -> None:
    client, pub, _ = await client_for({"push": demo_cfg(**SIGNED)})
    wire = gzip.compress(b'{"after":"zipped"}')
    async with client:
        r = await client.post(
            "/push",
            content=wire,
            headers={"Content-Encoding": "gzip", "X-Demo-Signature": signed(wire)},
        )
    assert r.status_code == 200
    assert pub.events[0].data["body"] == {"after": "zipped"}


async def test_verifier_rejects_even_when_the_bus_is_down_and_503_after_it_accepts() -> None:
    client, pub, _ = await client_for({"push": demo_cfg(**SIGNED)})
    pub.fail = BusUnavailableError("bus down")
    body = b'{"after":"abc"}'
    async with client:
        bad = await client.post("/push", content=body)
        good = await client.post("/push", content=body, headers={"X-Demo-Signature": signed(body)})
    assert bad.status_code == 401
    assert good.status_code == 503 and good.headers["retry-after"] == "1"


# -- responder and shaper ---------------------------------------------------------------


async def test_responder_answers_directly_after_verification_without_publishing() -> None:
    client, pub, _ = await client_for({"push": demo_cfg(**SIGNED)})
    body = b'{"type":"challenge"}'
    async with client:
        unsigned = await client.post("/push", content=body, headers={"X-Demo-Challenge": "1"})
        headers = {"X-Demo-Challenge": "1", "X-Demo-Signature": signed(body)}
        r = await client.post("/push", content=body, headers=headers)
    assert unsigned.status_code == 401
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"challenge": "ok"}
    assert pub.events == []


async def test_shaper_skip_is_a_marked_200_and_bad_request_a_400() -> None:
    client, pub, metrics = await client_for({"push": demo_cfg(kinds=["push"])})
    async with client:
        skipped = await client.post("/push", content=b"{}", headers={"X-Demo-Kind": "ping"})
        empty = await client.post("/push", content=b"", headers={"X-Demo-Kind": "push"})
        ok = await client.post("/push", content=b"{}", headers={"X-Demo-Kind": "push"})
    assert (skipped.status_code, skipped.text) == (200, "filtered")
    assert skipped.headers["x-triggerfish-filtered"] == "true"
    assert (empty.status_code, empty.text) == (400, "empty body")
    assert ok.status_code == 200
    assert len(pub.events) == 1
    assert metrics.counts["filtered", "push"] == 1


async def test_filter_expression_runs_over_the_shaped_data() -> None:
    spec = demo_cfg(filter={"expression": 'body.ref == "refs/heads/main"'})
    client, pub, _ = await client_for({"push": spec})
    async with client:
        other = await client.post("/push", json={"ref": "refs/heads/dev"})
        main = await client.post("/push", json={"ref": "refs/heads/main"})
    assert other.text == "filtered" and main.text == "success"
    assert [e.data["body"]["ref"] for e in pub.events] == ["refs/heads/main"]


async def test_the_webhook_contract_still_applies_to_other_types() -> None:
    client, pub, _ = await client_for({"push": demo_cfg(webhook={
        "port": "12000", "endpoint": "/push", "maxPayloadSize": 10})})  # fmt: skip
    async with client:
        assert (await client.get("/push")).status_code == 405
        assert (await client.post("/nope", content=b"{}")).status_code == 404
        assert (await client.post("/push", content=b"{" * 20)).status_code == 413
        assert (await client.get("/health")).status_code == 200
    assert pub.events == []


# -- validation and secrets -------------------------------------------------------------


def test_check_config_names_the_types_paths() -> None:
    lines = DemoSource.check_config(
        "hooks",
        {
            "a": demo_cfg(kinds=["bad"]),
            "b": demo_cfg(filter={"expression": "body.x =="}),
        },
    )
    assert "spec.demo.a.kinds: 'bad' is not a kind" in lines
    assert any(line.startswith("spec.demo.b.webhook.endpoint: endpoint /push") for line in lines)
    assert any(line.startswith("spec.demo.b.filter.expression:") for line in lines)


async def test_empty_secret_is_a_config_error_naming_the_field() -> None:
    source, _ = make_source({"push": demo_cfg(**SIGNED)}, Publisher())
    source.ctx.secrets = DictSecrets({("demo", "secret"): "\n"})
    with pytest.raises(ConfigError, match=r"spec\.demo\.push\.webhookSecret"):
        await source.prepare()


# -- hook registration lifecycle --------------------------------------------------------


async def _run_until(source: DemoSource, done: Any) -> asyncio.Task[None]:
    task = asyncio.create_task(source.run())
    for _ in range(500):
        if done():
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return task


async def test_hooks_register_once_listening_retry_and_unregister_on_shutdown() -> None:
    port = free_port()
    source, _ = make_source({"push": demo_cfg(port)}, Publisher())
    source.fail_registrations = 2
    task = await _run_until(source, lambda: source.registered)
    assert source.registered == ["hook"]
    assert source.seen_listening == [True, True, True]  # every attempt found the port open
    assert source.unregistered == []
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert source.unregistered == ["hook"]


# -- shared verifiers -------------------------------------------------------------------


def _request(headers: dict[str, list[str]], body: bytes = b"x") -> Request:
    return Request("POST", "/", b"", headers, b"", body, body)


async def test_hub_signature_verifier_tries_headers_in_order() -> None:
    verify = hub_signature_verifier(b"k", ["X-Hub-Signature-256", "X-Hub-Signature"])
    sha1 = "sha1=" + hmac.new(b"k", b"x", hashlib.sha1).hexdigest()
    assert await verify(_request({"X-Hub-Signature": [sha1]})) is None
    wrong_first = {"X-Hub-Signature-256": ["sha256=00"], "X-Hub-Signature": [sha1]}
    rejection = await verify(_request(wrong_first))
    assert rejection is not None and rejection.status == 403


async def test_header_token_verifier() -> None:
    verify = header_token_verifier("X-Gitlab-Token", b"tok")
    assert await verify(_request({"X-Gitlab-Token": ["tok"]})) is None
    missing = await verify(_request({}))
    wrong = await verify(_request({"X-Gitlab-Token": ["tok2"]}))
    assert missing is not None and missing.status == 401
    assert wrong is not None and wrong.status == 403


def test_hmac_hex_matches_is_case_insensitive_and_exact() -> None:
    digest = hmac.new(b"k", b"m", hashlib.sha256).hexdigest()
    assert hmac_hex_matches(b"k", b"m", digest.upper(), "sha256")
    assert not hmac_hex_matches(b"k", b"m", digest[:-1], "sha256")
    assert not hmac_hex_matches(b"k", b"m2", digest, "sha256")
