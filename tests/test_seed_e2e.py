"""Acceptance case one: the seed walkthrough, end to end, in real processes.

``triggerfish run`` on the seed manifests (byte for byte from ``../shared`` when present,
the project's ``examples/ml-pipeline`` otherwise), a real JetStream server (embedded,
or started by the fixture), the fake Kubernetes API used through the real client: the
seed's curl must create exactly one Workflow with the posted parameters.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.adapters.natsserver import EmbeddedNats
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish

REPO = Path(__file__).resolve().parents[1]
SHARED_SEED = REPO.parent / "shared" / "seed-manifests"
SEED = SHARED_SEED if SHARED_SEED.is_dir() else REPO / "examples" / "ml-pipeline"
BODY = {"model": "resnet", "dataset": "imagenet"}


def list_workflows(kube_api: Any, namespace: str = "argo-events") -> list[dict[str, Any]]:
    from kubernetes import client

    api = client.CustomObjectsApi(kube_api.api_client())
    res = api.list_namespaced_custom_object("argoproj.io", "v1alpha1", namespace, "workflows")
    return list(res["items"])


def params_of(wf: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}


def _run(tmp_path: Path, kube_api: Any, nats_url: str | None = None) -> tuple[Triggerfish, int]:
    port = free_port()
    tf = Triggerfish(
        files=[str(SEED)],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        nats_url=nats_url,
        port_map={12000: port},
    ).start()
    return tf, port


def _assert_one_seed_workflow(kube_api: Any, tf: Triggerfish) -> None:
    wait_for(lambda: len(list_workflows(kube_api)) >= 1, timeout=15)
    wfs = list_workflows(kube_api)
    assert len(wfs) == 1, tf.log()
    wf = wfs[0]
    assert wf["kind"] == "Workflow" and wf["apiVersion"] == "argoproj.io/v1alpha1"
    assert wf["metadata"]["namespace"] == "argo-events"
    assert wf["metadata"]["name"].startswith("ml-pipeline-run-")
    assert wf["spec"]["workflowTemplateRef"]["name"] == "ml-pipeline-template"
    assert params_of(wf) == {"model": "resnet", "dataset": "imagenet"}
    labels = wf["metadata"]["labels"]
    assert labels["events.argoproj.io/sensor"] == "ml-pipeline-sensor"
    assert labels["events.argoproj.io/trigger"] == "trigger-ml-pipeline"
    assert labels["events.argoproj.io/action-timestamp"].isdigit()


@pytest.mark.slow
def test_seed_walkthrough_with_embedded_bus(tmp_path: Path, kube_api: Any) -> None:
    tf, port = _run(tmp_path, kube_api)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/trigger", json=BODY, timeout=10)
        assert r.status_code == 200, r.text
        assert r.text == "success"
        _assert_one_seed_workflow(kube_api, tf)
        # the other seed objects were applied to the cluster too
        tmpl = kube_api.kubectl("get", "workflowtemplate", "ml-pipeline-template",
                                "-n", "argo-events", "-o", "name")  # fmt: skip
        assert "ml-pipeline-template" in tmpl.stdout
        # and the trace explains what happened
        traces = tf.api("/api/v1/traces?sensor=ml-pipeline-sensor")
        assert isinstance(traces, list) and traces
        t0 = traces[0]
        assert t0["dependency"] == "training-event"
        assert t0["triggers"][0]["status"] == "succeeded"
    finally:
        assert tf.stop() == 0, tf.log()


@pytest.mark.slow
def test_seed_walkthrough_with_fixture_nats(
    tmp_path: Path, kube_api: Any, nats_server: EmbeddedNats
) -> None:
    tf, port = _run(tmp_path, kube_api, nats_url=nats_server.url)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/trigger", json=BODY, timeout=10)
        assert r.status_code == 200, r.text
        _assert_one_seed_workflow(kube_api, tf)
    finally:
        tf.stop()


@pytest.mark.slow
def test_thousand_concurrent_events_make_thousand_workflows(tmp_path: Path, kube_api: Any) -> None:
    tf, port = _run(tmp_path, kube_api)
    n = 1000

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30, pool=None)) as c:

            async def one(i: int) -> int:
                r = await c.post(f"http://127.0.0.1:{port}/trigger",
                                 json={"model": f"m{i}", "dataset": f"d{i}"})  # fmt: skip
                return r.status_code

            return await asyncio.gather(*(one(i) for i in range(n)))

    try:
        codes = asyncio.run(burst())
        assert codes.count(200) == n
        wait_for(lambda: len(list_workflows(kube_api)) >= n, timeout=60, interval=0.5)
        wfs = list_workflows(kube_api)
        assert len(wfs) == n, tf.log()
        models = sorted(params_of(w)["model"] for w in wfs)
        assert models == sorted(f"m{i}" for i in range(n))  # none lost, none duplicated
    finally:
        tf.stop()
