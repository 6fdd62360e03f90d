"""Acceptance: chain the next stage when a training Workflow succeeds, in real processes.

``triggerfish run -f examples/chain-on-success/`` (the example as shipped) against a real
nats-server and the fake Kubernetes API; the training Workflows are changed with the
real ``kubectl``. Each success must create exactly one evaluation Workflow: also when a
finished Workflow changes again, when the source's watch expires (410) and the success
happens while nothing watches (the list that follows must find it once), and when a run
is created and finished while nothing watches (first seen as an ADD, already Succeeded).
The same chain runs as pods (``triggerfish eventsource`` / ``sensor``) read from the
cluster.

No sleeps decide anything: the sensor's traces (the operations API) say when an event
was processed, so "no second Workflow" is checked after the event that could have made
one was seen and rejected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.adapters.natsserver import EmbeddedNats
from tests.fakekube.harness import KubeApi
from tests.support.net import wait_for
from tests.support.proc import Triggerfish
from tests.test_podroles import RoleProc

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "chain-on-success"
NS = "argo-events"
WORKFLOWS = f"/apis/argoproj.io/v1alpha1/namespaces/{NS}/workflows"


def set_phase(kube_api: KubeApi, name: str, phase: str) -> None:
    patch = json.dumps({"status": {"phase": phase}})
    kube_api.kubectl("-n", NS, "patch", "workflow", name, "--type", "merge", "-p", patch)


def create_training(kube_api: KubeApi, name: str, model: str, phase: str = "") -> None:
    wf: dict[str, Any] = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name, "labels": {"stage": "train"}},
        "spec": {
            "entrypoint": "train",
            "arguments": {"parameters": [{"name": "model", "value": model}]},
        },
    }
    if phase:
        wf["status"] = {"phase": phase}
    kube_api.kubectl("-n", NS, "create", "-f", "-", input=json.dumps(wf))


def evaluations(kube_api: KubeApi) -> list[str]:
    """The ``trained-workflow`` parameter of every evaluation Workflow, sorted."""
    listed = kube_api.kubectl_json("-n", NS, "get", "workflows", "-l", "stage=evaluate")
    return sorted(wf["spec"]["arguments"]["parameters"][0]["value"] for wf in listed["items"])


def traces(tf: Triggerfish, sensor: str = "chain-on-success") -> list[dict[str, Any]]:
    out = tf.api(f"/api/v1/traces?sensor={sensor}")
    assert isinstance(out, list)
    return out


def fired(trace: dict[str, Any]) -> bool:
    return any(t.get("status") == "succeeded" for t in trace.get("triggers") or [])


@pytest.mark.slow
def test_one_next_workflow_per_success_also_across_an_expired_watch(
    tmp_path: Path, kube_api: KubeApi, nats_server: EmbeddedNats
) -> None:
    tf = Triggerfish(
        files=[str(EXAMPLE)],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        nats_url=nats_server.url,
    ).start()
    try:
        # The example's training Workflow was applied by the run; it runs, then succeeds.
        set_phase(kube_api, "train-resnet", "Running")
        set_phase(kube_api, "train-resnet", "Succeeded")
        wait_for(lambda: evaluations(kube_api) == ["train-resnet"], timeout=30)
        # A finished Workflow that changes again is not a new success.
        kube_api.kubectl("-n", NS, "label", "workflow", "train-resnet", "reviewed=yes")
        wait_for(lambda: len(traces(tf)) == 2, timeout=30)
        assert [fired(t) for t in traces(tf)].count(True) == 1, traces(tf)
        assert evaluations(kube_api) == ["train-resnet"]

        # A second training run; its watch expires and it succeeds while nothing watches.
        create_training(kube_api, "train-bert", "bert")
        set_phase(kube_api, "train-bert", "Running")
        kube_api.fault("GET", WORKFLOWS, hold=True)  # the list after the 410 waits
        assert kube_api.expire_watches() >= 1
        wait_for(lambda: kube_api.faults()["rules"][0]["held"] == 1, timeout=30)
        set_phase(kube_api, "train-bert", "Succeeded")
        assert kube_api.release() == 1
        wait_for(lambda: evaluations(kube_api) == ["train-bert", "train-resnet"], timeout=30)

        # A run created and finished while nothing watches is first seen Succeeded (ADD).
        kube_api.fault("GET", WORKFLOWS, hold=True)
        assert kube_api.expire_watches() >= 1
        wait_for(lambda: kube_api.faults()["rules"][1]["held"] == 1, timeout=30)
        create_training(kube_api, "train-vit", "vit", phase="Succeeded")
        assert kube_api.release() == 1
        wait_for(lambda: "train-vit" in evaluations(kube_api), timeout=30)

        # and a later success, watched live again, is seen exactly once
        set_phase(kube_api, "train-resnet", "Running")
        set_phase(kube_api, "train-resnet", "Succeeded")
        wait_for(lambda: len(traces(tf)) == 5, timeout=30)
        assert [fired(t) for t in traces(tf)].count(True) == 4, traces(tf)
        assert evaluations(kube_api) == ["train-bert", "train-resnet", "train-resnet", "train-vit"]
        listed = kube_api.kubectl_json("-n", NS, "get", "workflows", "-l", "stage=evaluate")
        models = sorted(w["spec"]["arguments"]["parameters"][1]["value"] for w in listed["items"])
        assert models == ["bert", "resnet", "resnet", "vit"]
    finally:
        assert tf.stop() == 0, tf.log()


@pytest.mark.slow
def test_the_chain_as_pods_read_from_the_cluster(
    tmp_path: Path, kube_api: KubeApi, nats_server: EmbeddedNats
) -> None:
    """Cluster mode: the manifests applied with kubectl, ``triggerfish eventsource`` and
    ``triggerfish sensor`` as separate processes (the source gets the API the pod has)."""
    kube_api.create_namespace(NS)
    kube_api.kubectl("apply", "-n", NS, "-f", str(EXAMPLE))  # as the example's README says
    kube_api.kubectl("create", "-n", NS, "-f", str(EXAMPLE / "workflows"))
    started: list[RoleProc] = []
    try:
        for role, name in (("sensor", "chain-on-success"), ("eventsource", "training-workflows")):
            args = [role, name, "--nats-url", nats_server.url, "--namespace", NS]
            workdir = tmp_path / role
            started.append(RoleProc(args, workdir, str(kube_api.kubeconfig)).start())
        set_phase(kube_api, "train-resnet", "Running")
        set_phase(kube_api, "train-resnet", "Succeeded")
        wait_for(lambda: evaluations(kube_api) == ["train-resnet"], timeout=30)
        # however the expired watch and these changes interleave, one success each
        kube_api.expire_watches()
        kube_api.kubectl("-n", NS, "label", "workflow", "train-resnet", "reviewed=yes")
        create_training(kube_api, "train-vit", "vit")
        set_phase(kube_api, "train-vit", "Running")
        set_phase(kube_api, "train-vit", "Succeeded")
        wait_for(lambda: len(evaluations(kube_api)) == 2, timeout=30)
        assert evaluations(kube_api) == ["train-resnet", "train-vit"], started[0].log()
    finally:
        for p in started:
            p.stop()


ARGO = REPO.parent / "shared" / "argo-examples"


@pytest.mark.slow
@pytest.mark.skipif(not (ARGO / "event-sources" / "resource.yaml").exists(), reason="no corpus")
def test_argos_own_resource_example_pair_runs_unchanged(
    tmp_path: Path, kube_api: KubeApi, nats_server: EmbeddedNats
) -> None:
    """Argo's resource EventSource and Sensor examples, byte for byte: a Workflow labelled
    ``app: my-workflow`` created after the start makes one ``resource-workflow-…``."""
    kube_api.create_namespace(NS)  # Argo's example watches argo-events
    tf = Triggerfish(
        files=[
            str(ARGO / "event-sources" / "resource.yaml"),
            str(ARGO / "sensors" / "resource.yaml"),
        ],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        nats_url=nats_server.url,
    ).start()
    try:
        wf = {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "my-workflow", "labels": {"app": "my-workflow"}},
            "spec": {"entrypoint": "main"},
        }
        kube_api.kubectl("-n", NS, "create", "-f", "-", input=json.dumps(wf))

        def made() -> list[dict[str, Any]]:
            listed = kube_api.kubectl_json("get", "workflows", "-A", "-l", "app=resource-workflow")
            return list(listed["items"])

        wait_for(lambda: len(made()) == 1, timeout=30)
        wait_for(lambda: len(traces(tf, "resource")) == 1, timeout=30)
        message = made()[0]["spec"]["arguments"]["parameters"][0]["value"]
        assert json.loads(message)["metadata"]["name"] == "my-workflow"  # dataKey: body
        assert len(made()) == 1
    finally:
        assert tf.stop() == 0, tf.log()
