"""The stripe source on a real port against the real bus and a FAKE Stripe API.

Signed events publish Argo's ``{"event", "metadata"}``; ``eventFilter`` drops other
types (200 filtered); unsigned, wrongly signed, stale and malformed signatures are
refused with nothing published; ``createWebhook`` registers exactly one endpoint on the
fake Stripe API (also across a restart) and verifies with the secret Stripe returned.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.compose.manifests import check_one
from eventsources.stripe import StripeSource
from tests.fakestripe import FakeStripe
from tests.support.brokers import Stream, eventually_long
from tests.support.saas import serving

WHSEC = "whsec_test_5b1f0c"
API_KEY = "sk_test_51Hx"
SECRETS = {("stripe", "whsec"): WHSEC + "\n", ("stripe", "api-key"): API_KEY}
EVENT = {
    "webhook": {"endpoint": "/stripe", "port": "12000", "method": "POST"},
    "signingSecret": {"name": "stripe", "key": "whsec"},
    "eventFilter": ["charge.succeeded", "customer.subscription.created"],
    "metadata": {"team": "billing-ml"},
}
EXAMPLES = Path(__file__).resolve().parents[2] / "shared/argo-examples/event-sources"


def stripe_event(kind: str, event_id: str = "evt_1") -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": kind,
            "created": 1764676800,
            "livemode": False,
            "data": {"object": {"id": "ch_1", "object": "charge", "amount": 4200}},
        }
    ).encode()


def sign(body: bytes, secret: str = WHSEC, at: int | None = None) -> dict[str, str]:
    """``Stripe-Signature: t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>">``."""
    stamp = str(int(time.time()) if at is None else at)
    v1 = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={stamp},v1={v1}"}


@pytest.fixture
def stream(nats_server: EmbeddedNats) -> Stream:
    return Stream(nats_server.url)


@pytest.fixture
async def fake_stripe(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeStripe]:
    fake = await FakeStripe(API_KEY).start()
    monkeypatch.setenv("TRIGGERFISH_SOURCES__STRIPE_API_URL", fake.url)
    try:
        yield fake
    finally:
        await fake.stop()


async def test_signed_events_publish_argo_data_and_the_filter_drops_others(
    bus: Bus, stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(StripeSource, bus, {"pay": EVENT}, SECRETS) as served:
        body = stripe_event("charge.succeeded")
        r = await served.http.post("/stripe", content=body, headers=sign(body))
        assert (r.status_code, r.text) == (200, "success")
        other = stripe_event("invoice.paid", "evt_2")
        r = await served.http.post("/stripe", content=other, headers=sign(other))
        assert r.status_code == 200 and r.headers["x-triggerfish-filtered"] == "true"
        # Several v1 signatures (secret rolling): one matching is enough.
        both = sign(body)["Stripe-Signature"] + ",v1=" + "0" * 64
        r = await served.http.post("/stripe", content=body, headers={"Stripe-Signature": both})
        assert r.status_code == 200
        assert served.metrics.counts["filtered", "pay"] == 1
    data = [e["data"] for e in await stream.events()]
    assert data[0] == {"event": json.loads(body), "metadata": {"team": "billing-ml"}}
    assert len(data) == 2
    assert WHSEC not in caplog.text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (sign(stripe_event("charge.succeeded"), secret="whsec_other"), 403),
        (sign(stripe_event("charge.succeeded"), at=int(time.time()) - 301), 403),
        ({"Stripe-Signature": "v1=abc"}, 403),
        (sign(stripe_event("charge.failed")), 403),
    ],
    ids=["unsigned", "wrong-secret", "stale", "malformed", "signed-other-body"],
)
async def test_bad_signatures_are_refused_and_nothing_is_published(
    bus: Bus, stream: Stream, headers: dict[str, str], status: int
) -> None:
    async with serving(StripeSource, bus, {"pay": EVENT}, SECRETS) as served:
        body = stripe_event("charge.succeeded")
        r = await served.http.post("/stripe", content=body, headers=headers)
        assert r.status_code == status, r.text
    assert await stream.count() == 0


async def test_create_webhook_registers_one_endpoint_and_uses_its_secret(
    bus: Bus, stream: Stream, fake_stripe: FakeStripe
) -> None:
    event = {
        "webhook": {"endpoint": "/stripe", "port": "12000", "url": "https://hooks.example.test/"},
        "createWebhook": True,
        "apiKey": {"name": "stripe", "key": "api-key"},
        "eventFilter": ["charge.succeeded"],
    }
    for run in range(2):  # a restart replaces the endpoint: still exactly one
        async with serving(StripeSource, bus, {"pay": event}, SECRETS) as served:

            async def registered() -> bool:
                return bool(served.source._secrets)  # type: ignore[attr-defined]

            await eventually_long(registered, "the endpoint registered")
            assert [(e["url"], e["enabled_events"]) for e in fake_stripe.endpoints.values()] == [
                ("https://hooks.example.test/stripe", ["charge.succeeded"])
            ]
            secret = served.source._secrets["pay"].decode()  # type: ignore[attr-defined]
            assert secret.startswith("whsec_")
            body = stripe_event("charge.succeeded", f"evt_{run}")
            r = await served.http.post("/stripe", content=body, headers=sign(body, WHSEC))
            assert r.status_code == 403  # the configured secret is not this endpoint's
            r = await served.http.post("/stripe", content=body, headers=sign(body, secret))
            assert r.status_code == 200, r.text
    assert [e["data"]["event"]["id"] for e in await stream.events()] == ["evt_0", "evt_1"]


async def test_a_bad_api_key_is_logged_without_the_key_and_requests_are_refused(
    bus: Bus, stream: Stream, fake_stripe: FakeStripe, caplog: pytest.LogCaptureFixture
) -> None:
    event = {
        "webhook": {"endpoint": "/stripe", "port": "12000", "url": "https://hooks.example.test"},
        "createWebhook": True,
        "apiKey": {"name": "stripe", "key": "api-key"},
    }
    secrets = {("stripe", "api-key"): "sk_test_wrong_key"}
    async with serving(StripeSource, bus, {"pay": event}, secrets) as served:

        def failed() -> bool:
            return "HTTP 401: Invalid API Key provided" in caplog.text

        await eventually_long(failed, "the registration failure logged")
        body = stripe_event("charge.succeeded")
        r = await served.http.post("/stripe", content=body, headers=sign(body))
        assert r.status_code == 401
    assert fake_stripe.endpoints == {}
    assert "sk_test_wrong_key" not in caplog.text
    assert await stream.count() == 0


def _event_source(stripe: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "s"},
        "spec": {"stripe": {"e": stripe}},
    }


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        ({"webhook": EVENT["webhook"]}, "spec.stripe.e.signingSecret: required unless"),
        (
            {"webhook": EVENT["webhook"], "createWebhook": True},
            "spec.stripe.e.apiKey: required with createWebhook",
        ),
    ],
)
def test_unsigned_configurations_are_refused_at_load(fields: dict[str, Any], line: str) -> None:
    obj, problems = check_one(_event_source(fields))
    assert obj is None and problems and problems[0].startswith(line), problems


def test_argo_example_manifest_loads() -> None:
    path = EXAMPLES / "stripe.yaml"
    if not path.is_file():
        pytest.skip("Argo example corpus not beside the repo")
    obj, problems = check_one(yaml.safe_load(path.read_text()))
    assert problems == [] and obj is not None
