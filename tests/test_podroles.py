"""The pod roles as a kubelet would run them: ``triggerfish eventsource webhook`` and
``triggerfish sensor ml-pipeline-sensor`` as separate processes, reading their objects
from the fake Kubernetes API (seed manifests applied with kubectl), talking through a
real nats-server, killed by PID at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.adapters.natsserver import EmbeddedNats
from tests.support.net import free_port, wait_for
from tests.support.proc import stop_child
from tests.test_seed_e2e import list_workflows, params_of

REPO = Path(__file__).resolve().parents[1]
SHARED_SEED = REPO.parent / "shared" / "seed-manifests"
SEED = SHARED_SEED if SHARED_SEED.is_dir() else REPO / "examples" / "ml-pipeline"
NS = "argo-events"
BODY = {"model": "resnet", "dataset": "imagenet"}


@dataclass
class RoleProc:
    """One ``triggerfish eventsource|sensor NAME`` child process."""

    args: list[str]
    workdir: Path
    kubeconfig: str
    env: dict[str, str] = field(default_factory=dict)
    api_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> RoleProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERFISH_")}
        env.pop("POD_NAMESPACE", None)
        env.update(HOME=str(self.workdir), KUBECONFIG=self.kubeconfig, **self.env)
        self.log_path = self.workdir / f"role-{time.time_ns()}.log"
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.compose.cli", *self.args,
                 "--api-port", str(self.api_port)],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=str(REPO),
            )  # fmt: skip
        try:
            wait_for(lambda: self.readyz()["ready"], timeout=60, interval=0.05)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"{self.args} did not become ready:\n{self.log()}") from None
        return self

    def readyz(self) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"{self.args} exited:\n{self.log()}")
        r = httpx.get(f"http://127.0.0.1:{self.api_port}/readyz", timeout=2)
        return dict(r.json())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_child(self.proc, timeout=10)
        self.proc = None


@pytest.fixture
def roles(kube_api: Any, nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[Any]:
    kube_api.create_namespace(NS)
    kube_api.kubectl("apply", "-n", NS, "-f", str(SEED))
    started: list[RoleProc] = []
    port = free_port()

    def start(role: str, name: str, **env: str) -> RoleProc:
        args = [role, name, "--nats-url", nats_server.url]
        if role == "eventsource":
            args += ["--namespace", NS, "--bind-host", "127.0.0.1", "--port-map", f"12000={port}"]
        p = RoleProc(args, tmp_path / f"{role}-{len(started)}", str(kube_api.kubeconfig), env)
        started.append(p)
        return p.start()

    start.port = port  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for p in started:
            p.stop()


def _post(port: int, body: dict[str, str]) -> None:
    r = httpx.post(f"http://127.0.0.1:{port}/trigger", json=body, timeout=10)
    assert r.status_code == 200, r.text


def _changed_sensor() -> str:
    doc = yaml.safe_load((SEED / "sensor.yaml").read_text())
    k8s = doc["spec"]["triggers"][0]["template"]["k8s"]
    k8s["source"]["resource"]["metadata"]["labels"] = {"model": "none"}
    k8s["parameters"].append(
        {"src": {"dependencyName": "training-event", "dataKey": "body.model"},
         "dest": "metadata.labels.model"}
    )  # fmt: skip
    return json.dumps(doc)


@pytest.mark.slow
def test_seed_curl_then_a_live_sensor_change(roles: Any, kube_api: Any) -> None:
    # the sensor finds its namespace the way a pod does (POD_NAMESPACE)
    sensor = roles("sensor", "ml-pipeline-sensor", POD_NAMESPACE=NS)
    source = roles("eventsource", "webhook")
    _post(roles.port, BODY)
    wait_for(lambda: len(list_workflows(kube_api)) >= 1, timeout=15)
    wfs = list_workflows(kube_api)
    assert len(wfs) == 1, sensor.log()
    assert params_of(wfs[0]) == {"model": "resnet", "dataset": "imagenet"}
    assert wfs[0]["metadata"]["name"].startswith("ml-pipeline-run-")

    pid = sensor.proc.pid if sensor.proc else None
    kube_api.kubectl("apply", "-f", "-", input=_changed_sensor())
    gen = kube_api.kubectl_json("get", "sensor", "ml-pipeline-sensor", "-n", NS)["metadata"][
        "generation"
    ]
    wait_for(lambda: sensor.readyz()["generation"] == gen and sensor.readyz()["ready"], timeout=15)
    assert sensor.proc is not None and sensor.proc.pid == pid  # same process, new spec
    _post(roles.port, {"model": "vit", "dataset": "coco"})
    wait_for(lambda: len(list_workflows(kube_api)) >= 2, timeout=15)
    new = [w for w in list_workflows(kube_api) if params_of(w)["model"] == "vit"]
    assert len(new) == 1, sensor.log()
    assert new[0]["metadata"]["labels"]["model"] == "vit"
    metrics = httpx.get(f"http://127.0.0.1:{source.api_port}/metrics", timeout=5).text
    assert "argo_events_events_sent" in metrics


@pytest.mark.slow
def test_two_sensor_replicas_share_the_work(roles: Any, kube_api: Any) -> None:
    a = roles("sensor", "ml-pipeline-sensor", POD_NAMESPACE=NS)
    b = roles("sensor", "ml-pipeline-sensor", POD_NAMESPACE=NS)
    roles("eventsource", "webhook")
    n = 500

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30, pool=None)) as c:

            async def one(i: int) -> int:
                r = await c.post(f"http://127.0.0.1:{roles.port}/trigger",
                                 json={"model": f"m{i}", "dataset": f"d{i}"})  # fmt: skip
                return r.status_code

            return await asyncio.gather(*(one(i) for i in range(n)))

    assert asyncio.run(burst()).count(200) == n
    wait_for(lambda: len(list_workflows(kube_api)) >= n, timeout=40, interval=0.25)
    time.sleep(0.5)  # a duplicate would show up now
    wfs = list_workflows(kube_api)
    assert len(wfs) == n, a.log() + b.log()
    assert sorted(params_of(w)["model"] for w in wfs) == sorted(f"m{i}" for i in range(n))


@pytest.mark.slow
def test_pod_metrics_require_the_api_token_when_one_is_set(roles: Any) -> None:
    source = roles("eventsource", "webhook", TRIGGERFISH_API_TOKEN="pod-t0ken")
    base = f"http://127.0.0.1:{source.api_port}"
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200  # probes stay open
    assert httpx.get(f"{base}/metrics", timeout=5).status_code == 401
    wrong = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer no"}, timeout=5)
    assert wrong.status_code == 401
    good = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer pod-t0ken"}, timeout=5)
    assert good.status_code == 200
    assert "argo_events_events_sent" in good.text
