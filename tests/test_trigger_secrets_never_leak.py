"""The credentials of the nats, azureServiceBus, slack, email, awsLambda and openWhisk
triggers appear in no output of a real ``triggerfish run``.

One process (debug logging, JSON lines, so every ``extra`` field is written out) runs a
webhook source and a Sensor with two triggers of each type, one that succeeds and one
that fails with its credential in use (a refused token, a dead broker, an unknown
channel, a refused recipient, a function that fails, a refused OpenWhisk token) and is
dead-lettered. The peers are real servers on 127.0.0.1: a second nats-server with token
auth, the fake Service Bus broker, the fake Slack Web API, the fake Lambda Invoke API,
the fake OpenWhisk API, an SMTP server with STARTTLS and AUTH (its certificate trusted
through the process's ``SSL_CERT_FILE``). The peers prove the credentials were used;
then the log, every ``/api/v1/*`` answer, ``/metrics``, the probes, the OpenAPI document
and the spans exported over OTLP (each trigger's, errors included) are scanned for every
value.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakelambda import FakeLambda
from tests.fakeopenwhisk import FakeOpenWhisk
from tests.fakeslack import FakeSlack
from tests.servicebus_fixtures import FakeServiceBusServer
from tests.sqs_fixtures import AWS_TEST_ENV
from tests.support.natspeer import NatsPeer
from tests.support.net import free_port, wait_for
from tests.support.otlp import OtlpReceiver
from tests.support.proc import Triggerfish
from tests.test_trigger_email import PASSWORD as SMTP_PASSWORD
from tests.test_trigger_email import Mailbox, start_smtp
from tests.test_trigger_http import make_pki

NS = "argo-events"
NATS_TOKEN = "nats-tok-3c9d1e7f"
WRONG_TOKEN = "nats-wrong-8a7b6c5d"
SAS_KEY = "sas-trig-k3y-5f4e3d2c"
SLACK_TOKEN = "xoxb-leak-check-1b2c3d4e"
AWS_ACCESS_KEY = "AKIALEAKCHECK0001"
AWS_SECRET_KEY = "aws-leak-s3cret-6d5c4b3a"
WHISK_TOKEN = "5b1c0d2e-leak:whisk-s3cret-7e6d5c"
WHISK_WRONG = "5b1c0d2e-leak:whisk-wrong-1a2b3c"
SECRETS = [NATS_TOKEN, WRONG_TOKEN, SAS_KEY, SLACK_TOKEN, SMTP_PASSWORD, AWS_SECRET_KEY,
           WHISK_TOKEN, WHISK_WRONG]  # fmt: skip


def _in_thread(start: Callable[[], Awaitable[str]], stop: Callable[[], Awaitable[None]]
               ) -> Iterator[None]:  # fmt: skip
    """Run an aiohttp fake on its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    """The fake Slack Web API."""
    fake = FakeSlack(SLACK_TOKEN)
    for _ in _in_thread(fake.start, fake.stop):
        yield fake


@pytest.fixture
def aws_lambda() -> Iterator[FakeLambda]:
    """The fake Lambda Invoke API (moto's docker-less Lambda cannot fail a function)."""
    fake = FakeLambda(functions={"hello", "broken"}, errors={"broken": "boom"})
    for _ in _in_thread(fake.start, fake.stop):
        yield fake


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
            "stringData": data}  # fmt: skip


def _trigger(name: str, kind: str, cfg: dict[str, Any]) -> dict[str, Any]:
    return {"template": {"name": name, kind: cfg}, "retryStrategy": {"steps": 1}}


@pytest.fixture
def whisk() -> Iterator[FakeOpenWhisk]:
    """The fake OpenWhisk REST API."""
    fake = FakeOpenWhisk(WHISK_TOKEN)
    for _ in _in_thread(fake.start, fake.stop):
        yield fake


def _manifests(peer: NatsPeer, broker: FakeServiceBusServer, smtp_port: int,
               whisk_url: str) -> list[Any]:  # fmt: skip
    live = broker.connection_string.replace("SharedAccessKey=v", f"SharedAccessKey={SAS_KEY}")
    dead = live.replace(f":{broker.port};", f":{free_port()};")
    payload = [{"src": {"dependencyName": "w", "dataKey": "body.msg"}, "dest": "msg"}]
    nats_cfg = {"url": peer.url, "subject": "leak", "payload": payload}
    sb_cfg = {"queueName": "leak-out", "payload": payload}
    slack_cfg = {"slackToken": {"name": "creds", "key": "slack"}, "message": "hello"}
    mail_cfg = {"host": "127.0.0.1", "port": smtp_port, "username": "mailer",
                "smtpPassword": {"name": "creds", "key": "smtp"}, "from": "tf@email.com",
                "subject": "s", "body": "b"}  # fmt: skip
    lambda_cfg = {"region": "us-east-1", "payload": payload,
                  "accessKey": {"name": "creds", "key": "awsid"},
                  "secretKey": {"name": "creds", "key": "awssecret"}}  # fmt: skip
    triggers = [
        _trigger("nats-ok", "nats", {**nats_cfg, "auth": {"token": {"name": "creds",
                                                                   "key": "nats"}}}),
        _trigger("nats-refused", "nats", {**nats_cfg, "auth": {"token": {"name": "creds",
                                                                        "key": "wrong"}}}),
        _trigger("sb-ok", "azureServiceBus",
                 {**sb_cfg, "connectionString": {"name": "creds", "key": "sb"}}),
        _trigger("sb-dead", "azureServiceBus",
                 {**sb_cfg, "connectionString": {"name": "creds", "key": "sbdead"}}),
        _trigger("slack-ok", "slack", {**slack_cfg, "channel": "general"}),
        _trigger("slack-unknown", "slack", {**slack_cfg, "channel": "nowhere"}),
        _trigger("mail-ok", "email", {**mail_cfg, "to": ["ok@email.com"]}),
        _trigger("mail-refused", "email", {**mail_cfg, "to": ["gone@email.com"]}),
        _trigger("lambda-ok", "awsLambda", {**lambda_cfg, "functionName": "hello"}),
        _trigger("lambda-fails", "awsLambda", {**lambda_cfg, "functionName": "broken"}),
        _trigger("whisk-ok", "openWhisk", {"host": whisk_url, "actionName": "hello",
                                           "payload": payload,
                                           "authToken": {"name": "creds", "key": "whisk"}}),
        _trigger("whisk-refused", "openWhisk", {"host": whisk_url, "actionName": "hello",
                                                "payload": payload,
                                                "authToken": {"name": "creds",
                                                              "key": "whiskwrong"}}),
    ]  # fmt: skip
    hook = {"port": "12000", "endpoint": "/hook", "method": "POST"}
    return [
        _secret("creds", {"nats": NATS_TOKEN, "wrong": WRONG_TOKEN, "sb": live, "sbdead": dead,
                          "slack": SLACK_TOKEN, "smtp": SMTP_PASSWORD,
                          "awsid": AWS_ACCESS_KEY, "awssecret": AWS_SECRET_KEY,
                          "whisk": WHISK_TOKEN, "whiskwrong": WHISK_WRONG}),
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "EventSource",
         "metadata": {"name": "hooks", "namespace": NS}, "spec": {"webhook": {"hook": hook}}},
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "Sensor",
         "metadata": {"name": "leak-check", "namespace": NS},
         "spec": {"dependencies": [{"name": "w", "eventSourceName": "hooks", "eventName": "hook"}],
                  "triggers": triggers}},
    ]  # fmt: skip


@pytest.mark.slow
def test_trigger_credentials_appear_in_no_output(
    tmp_path: Path,
    fake_servicebus: FakeServiceBusServer,
    slack: FakeSlack,
    aws_lambda: FakeLambda,
    whisk: FakeOpenWhisk,
) -> None:
    with OtlpReceiver() as otlp:
        _run_and_scan(tmp_path, fake_servicebus, slack, aws_lambda, whisk, otlp)


def _run_and_scan(
    tmp_path: Path,
    fake_servicebus: FakeServiceBusServer,
    slack: FakeSlack,
    aws_lambda: FakeLambda,
    whisk: FakeOpenWhisk,
    otlp: OtlpReceiver,
) -> None:
    from azure.servicebus import ServiceBusClient

    pki = make_pki(tmp_path)
    for name, text in (("s.crt", pki.server_cert_pem), ("s.key", pki.server_key_pem),
                       ("ca.pem", pki.ca_pem)):  # fmt: skip
        (tmp_path / name).write_text(text)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    box = Mailbox(rcpt_answers={"gone@email.com": ["550 5.1.1 no such user"]})
    smtp = start_smtp(box, tls)
    peer = NatsPeer(tmp_path / "nats-peer", token=NATS_TOKEN).start()
    tf: Triggerfish | None = None
    try:
        manifests = tmp_path / "manifests.yaml"
        manifests.write_text(yaml.safe_dump_all(
            _manifests(peer, fake_servicebus, smtp.port, whisk.url)))  # fmt: skip
        port = free_port()
        tf = Triggerfish(
            files=[str(manifests)], state_dir=tmp_path / "state", port_map={12000: port},
            extra_env={"TRIGGERFISH_LOG_LEVEL": "DEBUG", "TRIGGERFISH_LOG_FORMAT": "json",
                       "TRIGGERFISH_SENSOR__SLACK_API_URL": slack.url,
                       "SSL_CERT_FILE": str(tmp_path / "ca.pem"),
                       **AWS_TEST_ENV, "AWS_ENDPOINT_URL_LAMBDA": aws_lambda.url, **otlp.env},
        ).start()  # fmt: skip
        base = f"http://127.0.0.1:{tf.api_port}"
        hook = f"http://127.0.0.1:{port}/hook"
        assert httpx.post(hook, json={"msg": "leak?"}).status_code == 200

        def outcomes() -> dict[str, str]:
            traces = httpx.get(f"{base}/api/v1/traces").json()
            return {t["trigger"]: t["status"] for tr in traces for t in tr["triggers"]}

        wait_for(lambda: len(outcomes()) == 12, timeout=90, interval=0.3)
        done = outcomes()
        assert {k: v for k, v in done.items() if k.endswith("-ok")} == {
            "nats-ok": "succeeded", "sb-ok": "succeeded", "slack-ok": "succeeded",
            "mail-ok": "succeeded", "lambda-ok": "succeeded",
            "whisk-ok": "succeeded"}, done  # fmt: skip
        assert sorted(v for k, v in done.items() if not k.endswith("-ok")) == ["dead-lettered"] * 6

        # The credentials were really used: each peer saw them.
        url = f"http://127.0.0.1:{peer.monitor_port}/varz"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert json.loads(resp.read())["in_msgs"] >= 1
        with (
            ServiceBusClient.from_connection_string(fake_servicebus.connection_string) as sb,
            sb.get_queue_receiver("leak-out", max_wait_time=2) as receiver,
        ):
            [msg] = receiver.receive_messages(max_message_count=2, max_wait_time=2)
            assert json.loads(b"".join(msg.body)) == {"msg": "leak?"}
        assert [p.authorization for p in slack.posted] == [f"Bearer {SLACK_TOKEN}"]
        assert [r for _f, r, _m in box.messages] == [["ok@email.com"]]
        assert len(box.logins) == 2
        assert sorted((i.function, i.access_key_id) for i in aws_lambda.invoked) == [
            ("broken", AWS_ACCESS_KEY), ("hello", AWS_ACCESS_KEY)]  # fmt: skip
        assert [i.params for i in whisk.invoked] == [{"msg": "leak?"}] and whisk.requests == 2

        outputs: dict[str, str] = {}
        paths = ["/api/v1/eventsources", "/api/v1/sensors", "/api/v1/traces",
                 "/api/v1/traces?limit=1000", "/api/v1/objects", "/metrics", "/healthz",
                 "/readyz", "/openapi.json"]  # fmt: skip
        for path in paths:
            outputs[path] = httpx.get(f"{base}{path}").text
    finally:
        if tf is not None:
            tf.stop()
        peer.stop()
        smtp.controller.stop()
    outputs["log"] = tf.log_path.read_text(errors="replace") if tf.log_path else ""
    assert '"level": "debug"' in outputs["log"]
    assert "authorization violation" in outputs["/api/v1/traces"]
    outputs["spans"] = otlp.scannable([f"trigger {name}" for name in done])
    leaks = [
        (secret, where, text[max(0, text.find(secret) - 200) : text.find(secret) + 50])
        for where, text in outputs.items()
        for secret in SECRETS
        if secret in text
    ]
    assert leaks == []
