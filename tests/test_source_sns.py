"""The sns source on a real port against the real bus, signed with a test key.

A FAKE SNS certificate host (HTTPS on 127.0.0.1, its TLS certificate from a test CA
the source trusts through ``SSL_CERT_FILE``) serves the signing certificate and the
``SubscribeURL``; the host is allowed through ``TRIGGERFISH_SOURCES__SNS_CERT_HOSTS``.
Notifications signed with version 1 (SHA1) and 2 (SHA256) publish Argo's data; a
``SubscriptionConfirmation`` is confirmed by fetching its URL, not published; unsigned,
badly signed, foreign-topic and foreign-certificate messages are refused with nothing
published (and nothing fetched). With moto: the source subscribes itself to a topic
and a published message arrives as an event.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.compose.manifests import check_one
from eventsources.sns import SNSSource, canonical_string
from tests.support.brokers import Stream, eventually_long
from tests.support.saas import serving

TOPIC = "arn:aws:sns:us-east-1:123456789012:training-requests"
EVENT = {
    "webhook": {"endpoint": "/sns", "port": "12000", "method": "POST"},
    "topicArn": TOPIC,
    "region": "us-east-1",
    "validateSignature": True,
    "metadata": {"source": "sns"},
}
EXAMPLES = Path(__file__).resolve().parents[2] / "shared/argo-examples/event-sources"


@dataclass
class FakeCertHost:
    """A FAKE SNS certificate and confirmation host over HTTPS (named a fake)."""

    key: rsa.RSAPrivateKey
    cert_pem: bytes
    url: str = ""
    fetched: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def _cert(self, request: web.Request) -> web.Response:
        self.fetched.append(request.path_qs)
        return web.Response(body=self.cert_pem, content_type="application/x-pem-file")

    async def _confirm(self, request: web.Request) -> web.Response:
        self.fetched.append(request.path_qs)
        arn = f"{TOPIC}:0b1c"
        body = f"<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>{arn}"
        body += "</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
        return web.Response(text=body, content_type="text/xml")

    def sign(self, message: dict[str, Any], version: str = "2") -> dict[str, Any]:
        """``message`` signed as SNS signs (canonical string, RSA PKCS#1 v1.5)."""
        message = {**message, "SignatureVersion": version,
                   "SigningCertURL": f"{self.url}/SimpleNotificationService-test.pem"}  # fmt: skip
        digest = hashes.SHA256() if version == "2" else hashes.SHA1()
        raw = self.key.sign(canonical_string(message), padding.PKCS1v15(), digest)
        return {**message, "Signature": base64.b64encode(raw).decode()}


def _signing_certificate() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
async def cert_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeCertHost]:
    test_ca = trustme.CA()
    key, pem = _signing_certificate()
    host = FakeCertHost(key, pem)
    app = web.Application()
    app.router.add_get("/SimpleNotificationService-test.pem", host._cert)
    app.router.add_get("/", host._confirm)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("127.0.0.1").configure_cert(context)
    host.runner = web.AppRunner(app)
    await host.runner.setup()
    site = web.TCPSite(host.runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    host.url = f"https://127.0.0.1:{host.runner.addresses[0][1]}"
    ca_file = tmp_path / "ca.pem"
    test_ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    monkeypatch.setenv("TRIGGERFISH_SOURCES__SNS_CERT_HOSTS", '["127.0.0.1"]')
    try:
        yield host
    finally:
        await host.runner.cleanup()


@pytest.fixture
def stream(nats_server: EmbeddedNats) -> Stream:
    return Stream(nats_server.url)


def notification(text: str, topic: str = TOPIC) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": topic,
        "Subject": "training",
        "Message": text,
        "Timestamp": "2026-12-02T12:00:00.000Z",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    }


def _post(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "content": json.dumps(message).encode(),
        "headers": {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-Amz-Sns-Message-Type": message["Type"],
        },
    }


async def test_signed_notifications_v1_and_v2_publish_argo_data(
    bus: Bus, stream: Stream, cert_host: FakeCertHost
) -> None:
    async with serving(SNSSource, bus, {"topic": EVENT}, {}) as served:
        for version, text in (("1", '{"model":"resnet"}'), ("2", '{"model":"bert"}')):
            message = cert_host.sign(notification(text), version)
            r = await served.http.post("/sns", **_post(message))
            assert (r.status_code, r.text) == (200, "success")
    events = [e["data"] for e in await stream.events()]
    assert [e["body"]["Message"] for e in events] == ['{"model":"resnet"}', '{"model":"bert"}']
    assert events[0]["body"] == cert_host.sign(notification('{"model":"resnet"}'), "1")
    assert events[0]["header"]["X-Amz-Sns-Message-Type"] == ["Notification"]
    assert events[0]["metadata"] == {"source": "sns"}
    # The certificate was fetched once and kept.
    assert cert_host.fetched == ["/SimpleNotificationService-test.pem"]


async def test_subscription_confirmation_fetches_the_subscribe_url_and_publishes_nothing(
    bus: Bus, stream: Stream, cert_host: FakeCertHost
) -> None:
    confirm = f"{cert_host.url}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37"
    message = cert_host.sign(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "165545c9",
            "Token": "2336412f37",
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe to the topic.",
            "SubscribeURL": confirm,
            "Timestamp": "2026-12-02T12:00:00.000Z",
        }
    )
    async with serving(SNSSource, bus, {"topic": EVENT}, {}) as served:
        r = await served.http.post("/sns", **_post(message))
        assert r.status_code == 200, r.text
    assert f"/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37" in cert_host.fetched
    assert await stream.count() == 0


def _bad_cases(host: FakeCertHost) -> list[tuple[str, dict[str, Any], int]]:
    good = host.sign(notification("x"))
    unsigned = notification("x")
    tampered = {**good, "Message": "y"}
    foreign_topic = host.sign(notification("x", topic=TOPIC + "-other"))
    foreign_cert = {**good, "SigningCertURL": "https://attacker.example/cert.pem"}
    plain_http = {**good, "SigningCertURL": "http://sns.us-east-1.amazonaws.com/c.pem"}
    confirmation = {"Type": "SubscriptionConfirmation", "TopicArn": TOPIC, "Token": "t",
                    "SubscribeURL": f"{host.url}/?Action=ConfirmSubscription&Token=t"}  # fmt: skip
    return [
        ("unsigned", unsigned, 401),
        ("tampered", tampered, 403),
        ("foreign-topic", foreign_topic, 403),
        ("foreign-cert-host", foreign_cert, 403),
        ("cert-over-http", plain_http, 403),
        ("bad-version", {**good, "SignatureVersion": "3"}, 403),
        ("unsigned-confirmation", confirmation, 401),
    ]


async def test_bad_messages_are_refused_and_nothing_is_published_or_fetched(
    bus: Bus, stream: Stream, cert_host: FakeCertHost
) -> None:
    async with serving(SNSSource, bus, {"topic": EVENT}, {}) as served:
        for name, message, status in _bad_cases(cert_host):
            r = await served.http.post("/sns", **_post(message))
            assert r.status_code == status, (name, r.text)
        r = await served.http.post("/sns", content=b"not json")
        assert r.status_code == 400
    assert await stream.count() == 0
    assert not any("ConfirmSubscription" in f for f in cert_host.fetched)


async def test_without_validate_signature_the_topic_is_still_checked(
    bus: Bus, stream: Stream
) -> None:
    event = {**EVENT, "validateSignature": False}
    async with serving(SNSSource, bus, {"topic": event}, {}) as served:
        r = await served.http.post("/sns", **_post(notification("x", topic="arn:other")))
        assert r.status_code == 403
        r = await served.http.post("/sns", **_post(notification("x")))
        assert r.status_code == 200
    assert await stream.count() == 1


async def test_the_source_subscribes_to_a_moto_topic_and_receives_its_messages(
    bus: Bus, stream: Stream, sqs_endpoint: str
) -> None:
    import boto3

    sns = boto3.client("sns", region_name="us-east-1", endpoint_url=sqs_endpoint)
    topic = sns.create_topic(Name="training-requests")["TopicArn"]
    event = {
        **EVENT,
        "topicArn": topic,
        "validateSignature": False,
        "endpoint": sqs_endpoint,
        "webhook": {**EVENT["webhook"], "url": "http://127.0.0.1:{port}/"},
    }
    async with serving(SNSSource, bus, {"topic": event}, {}) as served:

        def subscribed() -> bool:
            subs = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
            return [s["Endpoint"] for s in subs] == [f"{served.url}/sns"]

        await eventually_long(subscribed, "the endpoint subscribed")
        # moto posts to the endpoint before it answers: publish from a thread.
        await asyncio.to_thread(sns.publish, TopicArn=topic, Message='{"model":"resnet"}')
        await eventually_long(lambda: stream.count(), "the message as an event")
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
    [data] = [e["data"] for e in await stream.events()]
    assert data["body"]["Message"] == '{"model":"resnet"}'
    assert data["body"]["TopicArn"] == topic


def _event_source(sns: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "s"},
        "spec": {"sns": {"e": sns}},
    }


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        ({**EVENT, "topicArn": ""}, "spec.sns.e.topicArn: Value error, must specify topic arn"),
        ({**EVENT, "region": ""}, "spec.sns.e.region: Value error, must specify region"),
        ({**EVENT, "accessKey": {"name": "a", "key": "b"}}, "spec.sns.e: Value error, accessKey"),
    ],
)
def test_invalid_config_names_the_field(fields: dict[str, Any], line: str) -> None:
    obj, problems = check_one(_event_source(fields))
    assert obj is None and problems and problems[0].startswith(line.split(" Value error,")[0]), (
        problems
    )


def test_argo_example_manifest_loads() -> None:
    path = EXAMPLES / "aws-sns.yaml"
    if not path.is_file():
        pytest.skip("Argo example corpus not beside the repo")
    obj, problems = check_one(yaml.safe_load(path.read_text()))
    assert problems == [] and obj is not None
