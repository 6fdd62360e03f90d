"""The slack source on a real port against the real bus.

Signed Events API callbacks, interactions and slash commands publish Argo's data; the
URL verification challenge is answered without publishing; unsigned, wrongly signed,
replayed (old timestamp) and wrong-token requests are refused with nothing published;
the secrets never reach the log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.compose.manifests import check_one
from eventsources.slack import SlackSource
from tests.support.brokers import Stream
from tests.support.saas import serving

SIGNING_SECRET = "slack-signing-secret-8f1d"
TOKEN = "slack-verification-token-77"
SECRETS = {
    ("slack-secret", "signingSecret"): SIGNING_SECRET + "\n",
    ("slack-secret", "token"): TOKEN,
}
EVENT = {
    "webhook": {"endpoint": "/slack", "port": "12000", "method": "POST"},
    "signingSecret": {"name": "slack-secret", "key": "signingSecret"},
    "token": {"name": "slack-secret", "key": "token"},
    "metadata": {"team": "ml"},
}
EXAMPLES = Path(__file__).resolve().parents[2] / "shared/argo-examples/event-sources"


def sign(body: bytes, secret: str = SIGNING_SECRET, at: int | None = None) -> dict[str, str]:
    """Slack's headers for ``body``: ``v0=`` HMAC-SHA256 over ``v0:<ts>:<body>``."""
    stamp = str(int(time.time()) if at is None else at)
    digest = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256)
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": "v0=" + digest.hexdigest()}


def callback(text: str, token: str = TOKEN) -> bytes:
    return json.dumps(
        {
            "token": token,
            "team_id": "T1",
            "type": "event_callback",
            "event": {"type": "app_mention", "user": "U1", "text": text, "channel": "C1"},
            "event_id": "Ev1",
        }
    ).encode()


@pytest.fixture
def stream(nats_server: EmbeddedNats) -> Stream:
    return Stream(nats_server.url)


async def test_signed_requests_publish_argo_data_and_the_challenge_is_answered(
    bus: Bus, stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(SlackSource, bus, {"chat": EVENT}, SECRETS) as served:
        http, metrics = served.http, served.metrics
        challenge = json.dumps(
            {"token": TOKEN, "challenge": "3eZbrw1aB", "type": "url_verification"}
        ).encode()
        r = await http.post("/slack", content=challenge, headers=sign(challenge))
        assert (r.status_code, r.text) == (200, "3eZbrw1aB")
        assert r.headers["content-type"].startswith("text/plain")

        body = callback("<@U0> train resnet")
        r = await http.post("/slack", content=body, headers=sign(body))
        assert (r.status_code, r.text) == (200, "success")

        command = urlencode(
            {
                "token": TOKEN,
                "team_id": "T1",
                "team_domain": "acme",
                "channel_id": "C1",
                "channel_name": "ml",
                "user_id": "U1",
                "user_name": "ada",
                "command": "/train",
                "text": "resnet imagenet",
                "response_url": "https://hooks.slack.test/r",
                "trigger_id": "1.2",
                "api_app_id": "A1",
            }
        ).encode()
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        r = await http.post("/slack", content=command, headers={**form, **sign(command)})
        assert r.status_code == 200, r.text

        payload = {"type": "block_actions", "user": {"id": "U1"}, "actions": [{"value": "go"}]}
        interaction = urlencode({"payload": json.dumps(payload)}).encode()
        r = await http.post("/slack", content=interaction, headers={**form, **sign(interaction)})
        assert r.status_code == 200, r.text

        rate_limited = json.dumps({"token": TOKEN, "type": "app_rate_limited"}).encode()
        r = await http.post("/slack", content=rate_limited, headers=sign(rate_limited))
        assert (r.status_code, r.text) == (200, "success")
    data = [e["data"] for e in await stream.events()]
    assert data == [
        {
            "type": "app_mention",
            "Data": {"type": "app_mention", "user": "U1", "text": "<@U0> train resnet",
                     "channel": "C1"},
            "metadata": {"team": "ml"},
        },
        {
            "token": TOKEN, "team_id": "T1", "team_domain": "acme",
            "is_enterprise_install": False, "channel_id": "C1", "channel_name": "ml",
            "user_id": "U1", "user_name": "ada", "command": "/train", "text": "resnet imagenet",
            "response_url": "https://hooks.slack.test/r", "trigger_id": "1.2",
            "api_app_id": "A1", "metadata": {"team": "ml"},
        },
        {**payload, "metadata": {"team": "ml"}},
    ]  # fmt: skip
    assert metrics.counts["sent", "chat"] == 3
    assert SIGNING_SECRET not in caplog.text and TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, callback("x"), 401),
        ({"X-Slack-Request-Timestamp": str(int(time.time()))}, callback("x"), 401),
        (sign(callback("x"), secret="another-secret"), callback("x"), 403),
        (sign(callback("x"), at=int(time.time()) - 6 * 60), callback("x"), 403),
        (sign(callback("x")), callback("tampered"), 403),
        (sign(callback("x", token="forged")), callback("x", token="forged"), 403),
    ],
    ids=["unsigned", "no-signature", "wrong-secret", "replayed", "tampered", "wrong-token"],
)
async def test_bad_requests_are_refused_and_nothing_is_published(
    bus: Bus, stream: Stream, headers: dict[str, str], body: bytes, status: int
) -> None:
    async with serving(SlackSource, bus, {"chat": EVENT}, SECRETS) as served:
        http, metrics = served.http, served.metrics
        r = await http.post("/slack", content=body, headers=headers)
        assert r.status_code == status, r.text
        # The challenge is not answered to an unsigned request either.
        challenge = json.dumps({"token": TOKEN, "challenge": "c", "type": "url_verification"})
        r = await http.post("/slack", content=challenge)
        assert r.status_code == 401 and r.text != "c"
    assert await stream.count() == 0
    assert metrics.counts["sent", "chat"] == 0


async def test_a_form_post_that_is_neither_command_nor_interaction_is_400(
    bus: Bus, stream: Stream
) -> None:
    async with serving(SlackSource, bus, {"chat": EVENT}, SECRETS) as served:
        body = b"foo=bar"
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(body)}
        r = await served.http.post("/slack", content=body, headers=headers)
    assert r.status_code == 400 and "could not determine slack type" in r.text
    assert await stream.count() == 0


def _event_source(slack: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "s"},
        "spec": {"slack": {"e": slack}},
    }


@pytest.mark.parametrize(
    ("missing", "line"),
    [
        ("token", "spec.slack.e.token"),
        ("signingSecret", "spec.slack.e.signingSecret"),
        ("webhook", "spec.slack.e.webhook"),
    ],
)
def test_argo_required_fields_are_named(missing: str, line: str) -> None:
    spec = {k: v for k, v in EVENT.items() if k != missing}
    obj, problems = check_one(_event_source(spec))
    assert obj is None and len(problems) == 1 and problems[0].startswith(line), problems


def test_argo_example_manifest_loads() -> None:
    path = EXAMPLES / "slack.yaml"
    if not path.is_file():
        pytest.skip("Argo example corpus not beside the repo")
    obj, problems = check_one(yaml.safe_load(path.read_text()))
    assert problems == [] and obj is not None
