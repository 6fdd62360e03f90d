"""A message on a cloud queue starts training, end to end in real processes.

``triggerfish run`` on the project's ``examples/sqs-training`` and
``examples/servicebus-training`` (pointed at moto and at the fake Service Bus broker),
a real embedded JetStream, and the fake Kubernetes API: one message with
``{"model":"resnet","dataset":"imagenet"}`` must start exactly one Workflow with those
parameters, and the message must leave the queue.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.net import wait_for
from tests.support.proc import Triggerfish
from tests.test_seed_e2e import list_workflows, params_of

REPO = Path(__file__).resolve().parents[1]
BODY = {"model": "resnet", "dataset": "imagenet"}


def _copy_example(name: str, dst: Path, patch: dict[str, Any]) -> Path:
    """The example directory with fields of its EventSource's one event replaced."""
    out = dst / name
    shutil.copytree(REPO / "examples" / name, out)
    es_path = out / "event-source.yaml"
    es = yaml.safe_load(es_path.read_text())
    kind = next(k for k in ("sqs", "azureServiceBus") if k in es["spec"])
    es["spec"][kind]["training"].update(patch)
    es_path.write_text(yaml.safe_dump(es))
    return out


def _one_workflow(kube_api: Any, tf: Triggerfish) -> None:
    wait_for(lambda: len(list_workflows(kube_api)) >= 1, timeout=30, interval=0.2)
    time.sleep(0.5)
    wfs = list_workflows(kube_api)
    assert len(wfs) == 1, tf.log()
    assert wfs[0]["metadata"]["name"].startswith("ml-pipeline-run-")
    assert wfs[0]["spec"]["workflowTemplateRef"]["name"] == "ml-pipeline-template"
    assert params_of(wfs[0]) == BODY


@pytest.mark.slow
def test_sqs_message_starts_one_workflow(tmp_path: Path, kube_api: Any, sqs_endpoint: str) -> None:
    import boto3

    client = boto3.client("sqs", region_name="us-east-1", endpoint_url=sqs_endpoint)
    url = client.create_queue(QueueName="training-requests")["QueueUrl"]
    manifests = _copy_example(
        "sqs-training", tmp_path, {"endpoint": sqs_endpoint, "waitTimeSeconds": 1}
    )
    tf = Triggerfish(files=[str(manifests)], state_dir=tmp_path / "state",
                     kubeconfig=str(kube_api.kubeconfig)).start()  # fmt: skip
    try:
        client.send_message(QueueUrl=url, MessageBody=json.dumps(BODY))
        _one_workflow(kube_api, tf)

        def queue_empty() -> bool:
            attrs = client.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"]
            return (
                attrs["ApproximateNumberOfMessages"] == "0"
                and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
            )

        wait_for(queue_empty, timeout=15, interval=0.2)
    finally:
        tf.stop()


@pytest.mark.slow
def test_service_bus_message_starts_one_workflow(
    tmp_path: Path, kube_api: Any, fake_servicebus_factory: Any
) -> None:
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    broker = fake_servicebus_factory(queues=["training-requests"])
    manifests = _copy_example("servicebus-training", tmp_path, {})
    secret_path = manifests / "secret.yaml"
    secret = yaml.safe_load(secret_path.read_text())
    secret["stringData"]["connectionString"] = broker.connection_string
    secret_path.write_text(yaml.safe_dump(secret))
    tf = Triggerfish(files=[str(manifests)], state_dir=tmp_path / "state",
                     kubeconfig=str(kube_api.kubeconfig)).start()  # fmt: skip
    try:
        with ServiceBusClient.from_connection_string(broker.connection_string) as sb:
            with sb.get_queue_sender("training-requests") as sender:
                sender.send_messages(ServiceBusMessage(json.dumps(BODY)))
            _one_workflow(kube_api, tf)
            with sb.get_queue_receiver("training-requests", max_wait_time=1) as receiver:
                assert receiver.peek_messages(max_message_count=10) == []  # completed
    finally:
        tf.stop()


N_OUTAGE = 200


def _models(kube_api: Any) -> list[str]:
    return [params_of(w)["model"] for w in list_workflows(kube_api)]


def _exactly_one_each(kube_api: Any, tf: Triggerfish, n: int) -> None:
    want = {f"m{i}" for i in range(n)}
    wait_for(lambda: want <= set(_models(kube_api)), timeout=90, interval=0.5)
    time.sleep(1.0)  # let any redelivery land, so a duplicate would show
    models = _models(kube_api)
    assert sorted(models) == sorted(want), tf.log()


@pytest.mark.slow
def test_sqs_bus_outage_loses_nothing(
    tmp_path: Path, kube_api: Any, sqs_endpoint: str, nats_server: Any
) -> None:
    import boto3

    client = boto3.client("sqs", region_name="us-east-1", endpoint_url=sqs_endpoint)
    url = client.create_queue(QueueName="training-requests")["QueueUrl"]
    manifests = _copy_example(
        "sqs-training", tmp_path,
        {"endpoint": sqs_endpoint, "waitTimeSeconds": 1, "visibilityTimeout": 5},
    )  # fmt: skip
    tf = Triggerfish(files=[str(manifests)], state_dir=tmp_path / "state",
                     kubeconfig=str(kube_api.kubeconfig),
                     nats_url=nats_server.url).start()  # fmt: skip
    try:
        nats_server.kill()
        for start in range(0, N_OUTAGE, 10):
            client.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": json.dumps({"model": f"m{i}", "dataset": "d"})}
                for i in range(start, start + 10)
            ])  # fmt: skip
        time.sleep(3)
        # Nothing deleted while the bus is down. moto counts the visible and the
        # in-flight messages one after the other while the source keeps receiving and
        # releasing them, so a single reading can count a message twice or not at all;
        # a deleted message lowers every reading, so the most frequent one must be N.
        readings = []
        for _ in range(7):
            attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
            a = attrs["Attributes"]
            readings.append(
                int(a["ApproximateNumberOfMessages"])
                + int(a["ApproximateNumberOfMessagesNotVisible"])
            )
        assert Counter(readings).most_common(1)[0][0] == N_OUTAGE, readings
        assert _models(kube_api) == []
        nats_server.start()
        _exactly_one_each(kube_api, tf, N_OUTAGE)
    finally:
        tf.stop()


@pytest.mark.slow
def test_service_bus_bus_outage_loses_nothing(
    tmp_path: Path, kube_api: Any, fake_servicebus_factory: Any, nats_server: Any
) -> None:
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    broker = fake_servicebus_factory(queues=["training-requests"], lock_duration_seconds=5)
    manifests = _copy_example("servicebus-training", tmp_path, {})
    secret_path = manifests / "secret.yaml"
    secret = yaml.safe_load(secret_path.read_text())
    secret["stringData"]["connectionString"] = broker.connection_string
    secret_path.write_text(yaml.safe_dump(secret))
    tf = Triggerfish(files=[str(manifests)], state_dir=tmp_path / "state",
                     kubeconfig=str(kube_api.kubeconfig),
                     nats_url=nats_server.url).start()  # fmt: skip
    try:
        nats_server.kill()
        with ServiceBusClient.from_connection_string(broker.connection_string) as sb:
            with sb.get_queue_sender("training-requests") as sender:
                for start in range(0, N_OUTAGE, 50):
                    sender.send_messages([
                        ServiceBusMessage(json.dumps({"model": f"m{i}", "dataset": "d"}))
                        for i in range(start, start + 50)
                    ])  # fmt: skip
            time.sleep(3)
            assert _models(kube_api) == []
            nats_server.start()
            _exactly_one_each(kube_api, tf, N_OUTAGE)
            with sb.get_queue_receiver("training-requests", max_wait_time=1) as receiver:
                assert receiver.peek_messages(max_message_count=10) == []  # all completed
    finally:
        tf.stop()
