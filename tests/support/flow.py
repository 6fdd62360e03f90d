"""A ``triggerfish run`` of the seed pipeline for the event-flow page's tests.

The seed example (webhook → ml-pipeline-sensor → k8s Workflow) plus one more Sensor on
the same webhook event whose data filter only passes ``model: bert``, so a ``resnet``
event shows a rejecting filter with its reason. Objects go to the fake Kubernetes API,
whose fault rules make a Workflow create fail on demand (a failing trigger, a dead
letter to replay).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from kubernetes import client

from tests.support.net import free_port
from tests.support.proc import Triggerfish

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = "/apis/argoproj.io/v1alpha1/namespaces/argo-events/workflows"

BERT_ONLY = """\
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: bert-only
  namespace: argo-events
spec:
  dependencies:
    - name: bert-event
      eventSourceName: webhook
      eventName: trigger
      filters:
        data:
          - path: body.model
            type: string
            value: ["bert"]
  triggers:
    - template:
        name: log-bert
        log: {}
"""


def start_seed(
    tmp: Path, kube_api: Any, nats_url: str | None = None, **env: str
) -> tuple[Triggerfish, int]:
    """Start the seed pipeline (+ the ``bert-only`` sensor); answers it and its webhook
    port. Fast retries, so a failing trigger is dead-lettered within a second."""
    extra = tmp / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / "bert-only.yaml").write_text(BERT_ONLY)
    port = free_port()
    tf = Triggerfish(
        files=[str(REPO / "examples" / "ml-pipeline"), str(extra)],
        state_dir=tmp / "state",
        kubeconfig=str(kube_api.kubeconfig),
        nats_url=nats_url,
        port_map={12000: port},
        extra_env={
            "TRIGGERFISH_SENSOR__DEFAULT_RETRY_STEPS": "2",
            "TRIGGERFISH_SENSOR__DEFAULT_RETRY_DURATION_SECONDS": "0.05",
            "TRIGGERFISH_UI__ARGO_WORKFLOWS_URL": "http://argo.example.invalid:2746",
            **env,
        },
    ).start()
    return tf, port


def post(port: int, body: dict[str, Any]) -> None:
    """One webhook event, answered 200 (stored on the bus)."""
    r = httpx.post(f"http://127.0.0.1:{port}/trigger", json=body)
    assert r.status_code == 200, r.text


def workflows(kube_api: Any) -> list[dict[str, Any]]:
    api = client.CustomObjectsApi(kube_api.api_client())
    out = api.list_namespaced_custom_object("argoproj.io", "v1alpha1", "argo-events", "workflows")
    return list(out["items"])


def node(flow: dict[str, Any], node_id: str) -> dict[str, Any]:
    """The node of ``/api/v1/flow`` with that id (event name, dependency or trigger)."""
    for es in flow["eventSources"]:
        for ev in es["events"]:
            if ev["id"] == node_id:
                return dict(ev)
    for s in flow["sensors"]:
        for x in s["dependencies"] + s["triggers"]:
            if x["id"] == node_id:
                return dict(x)
    raise KeyError(node_id)


SEED_DEP = "dep:argo-events/ml-pipeline-sensor/training-event"
SEED_TRIGGER = "trg:argo-events/ml-pipeline-sensor/trigger-ml-pipeline"
BERT_DEP = "dep:argo-events/bert-only/bert-event"
SEED_EVENT = "ev:argo-events/webhook/trigger"
