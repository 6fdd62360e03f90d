"""Secret values never appear in what Triggerfish prints or serves.

One real ``triggerfish run`` (debug logging, JSON lines, so every ``extra`` field of
every record is written out) gets known secret values through every path that reads
one: a webhook ``authSecret`` (and the bearer token a client sends), a ``github``
``webhookSecret`` (signing a delivery) and ``apiToken`` (registering the hook on a fake
GitHub API), SQS ``accessKey`` /
``secretKey`` (against moto), a Service Bus connection string with its
``SharedAccessKey`` (against the fake broker), and an HTTP trigger's ``basicAuth`` and
``secureHeaders`` (against a local recording server, once answering 200 and once 500 so
the failure path, its retries and the dead letter are taken too). After one event from
each source has gone through both triggers, every output is scanned for every value:
the process log, every ``/api/v1/*`` answer, ``/metrics``, the probes, the OpenAPI
document and the spans it exported over OTLP (errors included). The recording server
proves the values were really used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakegithosts import FakeHookHost, threaded
from tests.servicebus_fixtures import FakeServiceBusServer
from tests.support.net import free_port, wait_for
from tests.support.otlp import OtlpReceiver
from tests.support.proc import Triggerfish

NS = "argo-events"
WEBHOOK_TOKEN = "wh-t0ken-5e3c7a1f"
AWS_ACCESS_KEY = "AKIALEAKCHECK4F2A9B1"
AWS_SECRET_KEY = "aws-s3cret-9f8e7d6c5b"
SAS_KEY = "sas-k3y-1a2b3c4d5e"
BASIC_USER = "robot"
BASIC_PASSWORD = "basic-pw-0f1e2d3c"
HEADER_SECRET = "hdr-s3cret-77aa88bb"
GITHUB_HOOK_SECRET = "gh-hook-s3cret-4d3c2b1a"
GITHUB_TOKEN = "ghp-leak-check-6f5e4d3c"
BASIC_HEADER = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
SECRETS = [WEBHOOK_TOKEN, AWS_ACCESS_KEY, AWS_SECRET_KEY, SAS_KEY, BASIC_PASSWORD,
           BASIC_HEADER, HEADER_SECRET, GITHUB_HOOK_SECRET, GITHUB_TOKEN]  # fmt: skip


class _Recorder(BaseHTTPRequestHandler):
    """The HTTP trigger's target: records each request; ``/fail`` answers 500."""

    seen: list[tuple[str, dict[str, str]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.seen.append((self.path, dict(self.headers.items())))
        status = 500 if self.path == "/fail" else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def target() -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    seen: list[tuple[str, dict[str, str]]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
            "stringData": data}  # fmt: skip


def _webhook_source() -> dict[str, Any]:
    hook = {"port": "12000", "endpoint": "/hook", "method": "POST",
            "authSecret": {"name": "webhook-token", "key": "token"}}  # fmt: skip
    return {"webhook": {"hook": hook}}


def _github_source(api_url: str) -> dict[str, Any]:
    push = {"webhook": {"port": "12001", "endpoint": "/github",
                        "url": "https://hooks.example.com"},
            "repositories": [{"owner": "ml-team", "names": ["training"]}],
            "events": ["push"], "active": True,
            "webhookSecret": {"name": "github", "key": "secret"},
            "apiToken": {"name": "github", "key": "token"},
            "githubBaseURL": api_url, "githubUploadURL": api_url}  # fmt: skip
    return {"github": {"push": push}}


def _sqs_source(endpoint: str) -> dict[str, Any]:
    q = {"region": "us-east-1", "queue": "leak-check", "endpoint": endpoint,
         "waitTimeSeconds": 1, "jsonBody": True,
         "accessKey": {"name": "aws", "key": "access"},
         "secretKey": {"name": "aws", "key": "secret"}}  # fmt: skip
    return {"sqs": {"q": q}}


def _servicebus_source() -> dict[str, Any]:
    sb = {"connectionString": {"name": "servicebus", "key": "connectionString"},
          "queueName": "leak-check", "jsonBody": True}  # fmt: skip
    return {"azureServiceBus": {"sb": sb}}


def _http_trigger(name: str, url: str) -> dict[str, Any]:
    http = {"url": url, "method": "POST", "payload": [],
            "basicAuth": {"username": {"name": "http-auth", "key": "user"},
                          "password": {"name": "http-auth", "key": "password"}},
            "secureHeaders": [{"name": "X-Api-Key", "valueFrom": {
                "secretKeyRef": {"name": "http-auth", "key": "header"}}}]}  # fmt: skip
    return {
        "template": {"name": name, "conditions": "w || s || b || g", "http": http},
        "retryStrategy": {"steps": 1, "duration": "10ms"},
    }


def _manifests(
    sqs_endpoint: str, broker: FakeServiceBusServer, target_url: str, github_api: str
) -> list[Any]:
    connection = broker.connection_string.replace("SharedAccessKey=v", f"SharedAccessKey={SAS_KEY}")
    assert SAS_KEY in connection
    es = {"apiVersion": "argoproj.io/v1alpha1", "kind": "EventSource"}
    deps = [
        {"name": "w", "eventSourceName": "hooks", "eventName": "hook"},
        {"name": "s", "eventSourceName": "queue", "eventName": "q"},
        {"name": "b", "eventSourceName": "bus", "eventName": "sb"},
        {"name": "g", "eventSourceName": "git", "eventName": "push"},
    ]
    return [
        _secret("webhook-token", {"token": WEBHOOK_TOKEN}),
        _secret("aws", {"access": AWS_ACCESS_KEY, "secret": AWS_SECRET_KEY}),
        _secret("servicebus", {"connectionString": connection}),
        _secret("github", {"secret": GITHUB_HOOK_SECRET, "token": GITHUB_TOKEN}),
        _secret(
            "http-auth", {"user": BASIC_USER, "password": BASIC_PASSWORD, "header": HEADER_SECRET}
        ),
        {**es, "metadata": {"name": "hooks", "namespace": NS}, "spec": _webhook_source()},
        {**es, "metadata": {"name": "queue", "namespace": NS}, "spec": _sqs_source(sqs_endpoint)},
        {**es, "metadata": {"name": "bus", "namespace": NS}, "spec": _servicebus_source()},
        {**es, "metadata": {"name": "git", "namespace": NS}, "spec": _github_source(github_api)},
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Sensor",
            "metadata": {"name": "leak-check", "namespace": NS},
            "spec": {
                "dependencies": deps,
                "triggers": [
                    _http_trigger("ok", f"{target_url}/ok"),
                    _http_trigger("fails", f"{target_url}/fail"),
                ],
            },
        },
    ]


@pytest.mark.slow
def test_secret_values_appear_in_no_output(
    tmp_path: Path,
    sqs_endpoint: str,
    fake_servicebus: FakeServiceBusServer,
    target: tuple[str, list[tuple[str, dict[str, str]]]],
) -> None:

    target_url, seen = target
    github = FakeHookHost("github", token=GITHUB_TOKEN)
    with threaded(github), OtlpReceiver() as otlp:
        _run_and_scan(tmp_path, sqs_endpoint, fake_servicebus, target_url, seen, github, otlp)


def _run_and_scan(
    tmp_path: Path,
    sqs_endpoint: str,
    fake_servicebus: FakeServiceBusServer,
    target_url: str,
    seen: list[tuple[str, dict[str, str]]],
    github: FakeHookHost,
    otlp: OtlpReceiver,
) -> None:
    import boto3
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=sqs_endpoint)
    queue_url = sqs.create_queue(QueueName="leak-check")["QueueUrl"]
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(
        yaml.safe_dump_all(_manifests(sqs_endpoint, fake_servicebus, target_url, github.api_url))
    )
    port, github_port = free_port(), free_port()
    tf = Triggerfish(
        files=[str(manifests)],
        state_dir=tmp_path / "state",
        port_map={12000: port, 12001: github_port},
        extra_env={"TRIGGERFISH_LOG_LEVEL": "DEBUG", "TRIGGERFISH_LOG_FORMAT": "json",
                   **otlp.env},
    ).start()  # fmt: skip
    base = f"http://127.0.0.1:{tf.api_port}"
    try:
        hook = f"http://127.0.0.1:{port}/hook"
        auth = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
        assert httpx.post(hook, json={"from": "webhook"}, headers=auth).status_code == 200
        assert httpx.post(hook, json={}, headers={"Authorization": "Bearer no"}).status_code == 401
        push = json.dumps({"ref": "refs/heads/main", "after": "abc"}).encode()
        signature = hmac.new(GITHUB_HOOK_SECRET.encode(), push, hashlib.sha256).hexdigest()
        gh = f"http://127.0.0.1:{github_port}/github"
        for sig, status in ((signature, 200), ("0" * 64, 403)):
            headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sig}"}
            assert httpx.post(gh, content=push, headers=headers).status_code == status
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"from": "sqs"}))
        with (
            ServiceBusClient.from_connection_string(fake_servicebus.connection_string) as sb,
            sb.get_queue_sender("leak-check") as sender,
        ):
            sender.send_messages(ServiceBusMessage(json.dumps({"from": "servicebus"})))

        def all_done() -> bool:
            traces = httpx.get(f"{base}/api/v1/traces").json()
            outcomes = [t["status"] for tr in traces for t in tr["triggers"]]
            return len(traces) >= 4 and sorted(outcomes).count("dead-lettered") >= 4

        wait_for(all_done, timeout=60, interval=0.3)
        # The secrets were really used: the target saw each of them.
        ok = [h for path, h in seen if path == "/ok"]
        assert len(ok) == 4, seen
        wait_for(lambda: github.urls("repos/ml-team/training"), timeout=15, interval=0.1)
        for headers in ok + [h for path, h in seen if path == "/fail"]:
            assert headers["Authorization"] == f"Basic {BASIC_HEADER}"
            assert headers["X-Api-Key"] == HEADER_SECRET

        outputs: dict[str, str] = {}
        paths = ["/api/v1/eventsources", "/api/v1/sensors", "/api/v1/traces",
                 "/api/v1/traces?limit=1000", "/api/v1/objects", "/metrics", "/healthz",
                 "/readyz", "/openapi.json"]  # fmt: skip
        for path in paths:
            outputs[path] = httpx.get(f"{base}{path}").text
    finally:
        tf.stop()
    outputs["log"] = tf.log_path.read_text(errors="replace") if tf.log_path else ""
    assert "dead-lettered" in outputs["/api/v1/traces"]
    assert '"level": "debug"' in outputs["log"]
    outputs["spans"] = otlp.scannable(["webhook hook", "trigger ok", "trigger fails"])
    leaks = [
        (secret, where, text[max(0, text.find(secret) - 200) : text.find(secret) + 50])
        for where, text in outputs.items()
        for secret in SECRETS
        if secret in text
    ]
    assert leaks == []


def test_registered_secrets_are_redacted_from_every_part_of_a_log_line() -> None:
    import logging

    from app.kernel.logs import JsonFormatter, RedactingFormatter, register_secret

    register_secret("unit-s3cret-ab12\n")
    formatter = RedactingFormatter(JsonFormatter())
    try:
        raise ValueError("boom unit-s3cret-ab12")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "msg %s", ("unit-s3cret-ab12",), exc_info
    )
    record.detail = {"token": "unit-s3cret-ab12"}
    line = formatter.format(record)
    assert "unit-s3cret-ab12" not in line
    for part in ('"message": "msg [redacted]"', '"token": "[redacted]"', "boom [redacted]"):
        assert part in line
