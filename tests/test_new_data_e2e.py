"""New data lands, training starts: end to end in real processes.

``triggerfish run`` on the project's examples with a real ``nats-server`` as the bus and
the fake Kubernetes API:

* ``examples/file-training``: a CSV file written into a temporary directory starts one
  Workflow whose ``dataset`` is the file's path; a file the regexp does not match
  starts none.
* ``examples/s3-new-data``: a moto S3 bucket with an ``s3:ObjectCreated:*``
  notification to a moto SQS queue; uploading an object makes the ``sqs`` source start
  one Workflow whose ``dataset`` is the object key (the ``s3:TestEvent`` moto sends when
  the notification is configured starts none), and the queue is left empty.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.adapters.natsserver import EmbeddedNats
from tests.support.net import wait_for
from tests.support.proc import Triggerfish
from tests.test_seed_e2e import list_workflows, params_of

REPO = Path(__file__).resolve().parents[1]


def _example(name: str, dst: Path, kind: str, event: str, patch: dict[str, Any]) -> Path:
    """The example directory (plus the WorkflowTemplate) with its event's fields patched."""
    out = dst / name
    shutil.copytree(REPO / "examples" / name, out)
    shutil.copy(REPO / "examples/ml-pipeline/workflowtemplate.yaml", out)
    es_path = out / "event-source.yaml"
    es = yaml.safe_load(es_path.read_text())
    es["spec"][kind][event].update(patch)
    es_path.write_text(yaml.safe_dump(es))
    return out


def _run(manifests: Path, tmp_path: Path, kube_api: Any, nats_server: EmbeddedNats) -> Triggerfish:
    return Triggerfish(
        files=[str(manifests)],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        nats_url=nats_server.url,
    ).start()


def _datasets(kube_api: Any) -> list[str]:
    return [params_of(w)["dataset"] for w in list_workflows(kube_api)]


def _exactly(kube_api: Any, tf: Triggerfish, want: list[str]) -> None:
    wait_for(lambda: len(list_workflows(kube_api)) >= len(want), timeout=30, interval=0.2)
    time.sleep(1.0)  # a second (wrong) Workflow would show by now
    assert sorted(_datasets(kube_api)) == sorted(want), tf.log()
    for wf in list_workflows(kube_api):
        assert wf["metadata"]["name"].startswith("ml-pipeline-run-")
        assert params_of(wf)["model"] == "resnet"


@pytest.mark.slow
def test_a_file_written_into_the_directory_starts_one_workflow(
    tmp_path: Path, kube_api: Any, nats_server: EmbeddedNats
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    manifests = _example(
        "file-training", tmp_path, "file", "new-data",
        {"watchPathConfig": {"directory": f"{incoming}/", "pathRegexp": r"\.csv$"}},
    )  # fmt: skip
    tf = _run(manifests, tmp_path, kube_api, nats_server)
    try:
        (incoming / "notes.txt").write_text("not data")
        part = incoming / ".imagenet.part"
        part.write_text("a,b\n1,2\n")
        os.rename(part, incoming / "imagenet.csv")
        _exactly(kube_api, tf, [f"{incoming}/imagenet.csv"])
    finally:
        tf.stop()


@pytest.mark.slow
def test_an_object_created_in_s3_starts_one_workflow_with_its_key(
    tmp_path: Path, kube_api: Any, nats_server: EmbeddedNats, sqs_endpoint: str
) -> None:
    import boto3

    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=sqs_endpoint)
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=sqs_endpoint)
    url = sqs.create_queue(QueueName="new-training-data")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.create_bucket(Bucket="training-data")
    s3.put_bucket_notification_configuration(
        Bucket="training-data",
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    manifests = _example(
        "s3-new-data", tmp_path, "sqs", "object-created",
        {"endpoint": sqs_endpoint, "waitTimeSeconds": 1},
    )  # fmt: skip
    tf = _run(manifests, tmp_path, kube_api, nats_server)
    try:
        s3.put_object(Bucket="training-data", Key="imagenet-2026-12.csv", Body=b"a,b\n1,2\n")
        _exactly(kube_api, tf, ["imagenet-2026-12.csv"])

        def queue_empty() -> bool:
            attrs = sqs.get_queue_attributes(
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
