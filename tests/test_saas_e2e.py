"""Slack, Stripe and SNS start training, end to end in real processes.

``triggerfish run`` on the project's ``examples/slack-training``,
``examples/stripe-training`` and ``examples/sns-training`` (their ports moved to free
ones, their Secrets filled with test values), a real ``nats-server`` as the bus and the
fake Kubernetes API: a correctly signed request starts exactly one Workflow with the
parameters the request carries; a badly signed one is refused and starts none. For
SNS the source subscribes itself to a moto topic, and a message published there is
delivered by moto over HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import yaml

from app.adapters.natsserver import EmbeddedNats
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish
from tests.test_seed_e2e import list_workflows, params_of

REPO = Path(__file__).resolve().parents[1]


def _example(name: str, dst: Path, edit: Any) -> Path:
    """The example (plus the WorkflowTemplate) with ``edit(docs_by_kind)`` applied."""
    out = dst / name
    shutil.copytree(REPO / "examples" / name, out)
    shutil.copy(REPO / "examples/ml-pipeline/workflowtemplate.yaml", out)
    docs = {}
    for f in out.glob("*.yaml"):
        doc = yaml.safe_load(f.read_text())
        docs[doc["kind"]] = (f, doc)
    edit({kind: doc for kind, (_f, doc) in docs.items()})
    for f, doc in docs.values():
        f.write_text(yaml.safe_dump(doc))
    return out


def _run(manifests: Path, tmp_path: Path, kube_api: Any, nats: EmbeddedNats) -> Triggerfish:
    return Triggerfish(
        files=[str(manifests)],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        nats_url=nats.url,
    ).start()


def _one_workflow(kube_api: Any, tf: Triggerfish, params: dict[str, str]) -> None:
    wait_for(lambda: len(list_workflows(kube_api)) >= 1, timeout=30, interval=0.2)
    time.sleep(1.0)  # a second (wrong) Workflow would show by now
    wfs = list_workflows(kube_api)
    assert len(wfs) == 1, tf.log()
    assert wfs[0]["metadata"]["name"].startswith("ml-pipeline-run-")
    assert params_of(wfs[0]) == params


@pytest.mark.slow
def test_a_signed_slack_slash_command_starts_one_workflow(
    tmp_path: Path, kube_api: Any, nats_server: EmbeddedNats
) -> None:
    port, secret = free_port(), "e2e-slack-signing-secret"

    def edit(docs: dict[str, Any]) -> None:
        docs["Secret"]["stringData"] = {"signingSecret": secret, "token": "e2e-token"}
        docs["EventSource"]["spec"]["slack"]["train-command"]["webhook"]["port"] = str(port)

    tf = _run(_example("slack-training", tmp_path, edit), tmp_path, kube_api, nats_server)
    try:
        body = urlencode(
            {"command": "/train", "text": "resnet imagenet", "user_name": "ada", "token": "t"}
        ).encode()
        stamp = str(int(time.time()))
        sig = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        url = f"http://127.0.0.1:{port}/slack"
        forged = {**form, "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": "v0=" + "0" * 64}
        assert httpx.post(url, content=body, headers=forged).status_code == 403
        signed = {
            **form,
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": "v0=" + sig.hexdigest(),
        }
        r = httpx.post(url, content=body, headers=signed)
        assert (r.status_code, r.text) == (200, "success"), tf.log()
        _one_workflow(kube_api, tf, {"model": "resnet", "dataset": "imagenet"})
        assert secret not in tf.log()
    finally:
        tf.stop()


@pytest.mark.slow
def test_a_signed_stripe_event_starts_one_workflow(
    tmp_path: Path, kube_api: Any, nats_server: EmbeddedNats
) -> None:
    port, secret = free_port(), "whsec_e2e_0c1d2e"

    def edit(docs: dict[str, Any]) -> None:
        docs["Secret"]["stringData"] = {"signingSecret": secret}
        docs["EventSource"]["spec"]["stripe"]["subscriptions"]["webhook"]["port"] = str(port)

    tf = _run(_example("stripe-training", tmp_path, edit), tmp_path, kube_api, nats_server)
    try:
        body = json.dumps(
            {
                "id": "evt_e2e",
                "object": "event",
                "type": "customer.subscription.created",
                "data": {"object": {"id": "sub_1", "object": "subscription"}},
            }
        ).encode()
        stamp = str(int(time.time()))
        v1 = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        url = f"http://127.0.0.1:{port}/stripe"
        assert httpx.post(url, content=body).status_code == 401
        bad = {"Stripe-Signature": f"t={stamp},v1={'0' * 64}"}
        assert httpx.post(url, content=body, headers=bad).status_code == 403
        r = httpx.post(url, content=body, headers={"Stripe-Signature": f"t={stamp},v1={v1}"})
        assert (r.status_code, r.text) == (200, "success"), tf.log()
        _one_workflow(kube_api, tf, {"model": "churn", "dataset": "customer.subscription.created"})
        assert secret not in tf.log()
    finally:
        tf.stop()


@pytest.mark.slow
def test_an_sns_message_published_on_a_moto_topic_starts_one_workflow(
    tmp_path: Path, kube_api: Any, nats_server: EmbeddedNats, sqs_endpoint: str
) -> None:
    import boto3

    sns = boto3.client("sns", region_name="us-east-1", endpoint_url=sqs_endpoint)
    topic = sns.create_topic(Name="training-requests")["TopicArn"]
    port = free_port()

    def edit(docs: dict[str, Any]) -> None:
        event = docs["EventSource"]["spec"]["sns"]["training"]
        event.update(topicArn=topic, endpoint=sqs_endpoint, validateSignature=False)
        event["webhook"].update(port=str(port), url=f"http://127.0.0.1:{port}")

    tf = _run(_example("sns-training", tmp_path, edit), tmp_path, kube_api, nats_server)
    try:

        def subscribed() -> bool:
            subs = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
            return [s["Endpoint"] for s in subs] == [f"http://127.0.0.1:{port}/sns"]

        wait_for(subscribed, timeout=30, interval=0.2)
        sns.publish(TopicArn=topic, Message=json.dumps({"model": "resnet", "dataset": "imagenet"}))
        _one_workflow(kube_api, tf, {"model": "resnet", "dataset": "imagenet"})
    finally:
        tf.stop()
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
