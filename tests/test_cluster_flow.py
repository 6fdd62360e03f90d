"""The event-flow page in cluster mode, with real processes: ``triggerfish controller``
serving it, the seed pipeline's pod roles (``triggerfish eventsource webhook``, two
replicas of ``triggerfish sensor ml-pipeline-sensor``) reading their objects from the
fake Kubernetes API, a real nats-server between them, and a headless Chromium.

What it shows: the graph comes from the objects, statuses and counts from what every
pod reports on the bus (summed over replicas, not doubled by a pod restart), created
objects from the persisted traces, and a dead-letter replay asked at the controller runs
in a sensor pod, once however often it is clicked.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By

from app.adapters.natsserver import EmbeddedNats
from tests.support.browser import chromium, count_text, find, node_css, screenshot, wait
from tests.support.flow import SEED_DEP, SEED_EVENT, SEED_TRIGGER, WORKFLOWS, node
from tests.support.net import free_port, wait_for
from tests.support.proc import stop_child
from tests.test_podroles import NS, SEED, RoleProc
from tests.test_seed_e2e import list_workflows, params_of

pytestmark = pytest.mark.slow

SENSOR = "sn:argo-events/ml-pipeline-sensor"
FAST = {
    "TRIGGERFISH_UI__STATUS_INTERVAL_SECONDS": "0.3",
    "TRIGGERFISH_SENSOR__DEFAULT_RETRY_STEPS": "1",
    "TRIGGERFISH_SENSOR__DEFAULT_RETRY_DURATION_SECONDS": "0.05",
}


@dataclass
class ControllerProc:
    """One ``triggerfish controller`` child process with its API port."""

    kubeconfig: str
    nats_url: str
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ControllerProc:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERFISH_")}
        env.update(
            KUBECONFIG=self.kubeconfig,
            HOME=str(self.log_path.parent),
            TRIGGERFISH_API_PORT=str(self.port),
            TRIGGERFISH_UI__ARGO_WORKFLOWS_URL="http://argo.example.invalid:2746",
            **FAST,
        )
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.compose.cli", "controller",
                 "--nats-url", self.nats_url],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"the controller exited:\n{self.log()}")
            return httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200

        wait_for(ready, timeout=30, interval=0.1)
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        r = httpx.get(self.base + path, timeout=10)
        assert r.status_code == 200, (path, r.status_code, r.text, self.log())
        return r.json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_child(self.proc, timeout=15)
        self.proc = None


@dataclass
class Cluster:
    controller: ControllerProc
    kube_api: Any
    nats_url: str
    tmp: Path
    webhook_port: int
    pods: list[RoleProc]

    def pod(self, role: str, name: str) -> RoleProc:
        args = [role, name, "--nats-url", self.nats_url, "--namespace", NS]
        if role == "eventsource":
            args += ["--bind-host", "127.0.0.1", "--port-map", f"12000={self.webhook_port}"]
        p = RoleProc(args, self.tmp / f"{role}-{len(self.pods)}",
                     str(self.kube_api.kubeconfig), dict(FAST))  # fmt: skip
        self.pods.append(p)
        return p.start()

    def post(self, body: dict[str, str]) -> None:
        r = httpx.post(f"http://127.0.0.1:{self.webhook_port}/trigger", json=body, timeout=10)
        assert r.status_code == 200, r.text

    def flow(self) -> dict[str, Any]:
        return dict(self.controller.get("/api/v1/flow"))


@pytest.fixture
def cluster(kube_api: Any, nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[Cluster]:
    kube_api.create_namespace(NS)
    kube_api.kubectl("apply", "-n", NS, "-f", str(SEED))
    ctl = ControllerProc(str(kube_api.kubeconfig), nats_server.url, tmp_path / "controller.log")
    c = Cluster(ctl, kube_api, nats_server.url, tmp_path, free_port(), [])
    try:
        ctl.start()
        yield c
    finally:
        for p in c.pods:
            p.stop()
        ctl.stop()


def _sensor(flow: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in flow["sensors"] if s["id"] == SENSOR)


def test_the_controller_serves_the_cluster_flow(cluster: Cluster, tmp_path: Path) -> None:
    # before any pod runs: the graph from the objects, "no pod reports" as the reason
    flow = cluster.flow()
    assert _sensor(flow)["status"]["state"] == "not ready"
    assert "no pod reports" in _sensor(flow)["status"]["reason"]
    assert node(flow, SEED_EVENT)["status"]["state"] == "not ready"
    assert node(flow, SEED_TRIGGER)["type"] == "k8s"

    first = cluster.pod("sensor", "ml-pipeline-sensor")
    cluster.pod("sensor", "ml-pipeline-sensor")
    cluster.pod("eventsource", "webhook")
    wait_for(lambda: _sensor(cluster.flow())["status"]["state"] == "ready", timeout=15)
    wait_for(lambda: node(cluster.flow(), SEED_EVENT)["status"]["state"] == "ready", timeout=15)
    [es] = cluster.controller.get("/api/v1/eventsources")
    assert (es["namespace"], es["name"], es["types"]) == (NS, "webhook", {"webhook": ["trigger"]})

    # events split between the two sensor replicas: the counts add up over both
    for n in range(4):
        cluster.post({"model": "resnet", "dataset": f"set-{n}"})
    wait_for(lambda: len(list_workflows(cluster.kube_api)) == 4, timeout=20)

    def counted() -> bool:
        f = cluster.flow()
        return (
            node(f, SEED_DEP)["counts"]["window"] == {"received": 4}
            and node(f, SEED_TRIGGER)["counts"]["window"] == {"fired": 4}
            and node(f, SEED_EVENT)["counts"]["window"] == {"published": 4}
        )

    wait_for(counted, timeout=15)
    names = {w["metadata"]["name"] for w in list_workflows(cluster.kube_api)}
    objects = node(cluster.flow(), SEED_TRIGGER)["objects"]
    assert {o["name"] for o in objects} == names
    assert all(o["url"].endswith(f"/workflows/{NS}/{o['name']}") for o in objects)
    traces = cluster.controller.get("/api/v1/traces?sensor=ml-pipeline-sensor")
    assert len(traces) == 4 and {t["outcome"] for t in traces} == {"fired"}

    # a replica goes away and a new one starts: still 4, not lost, not doubled
    pods = _sensor(cluster.flow())["pods"]
    assert len(pods) == 2
    first.stop()
    cluster.pod("sensor", "ml-pipeline-sensor")

    def replaced() -> bool:
        now = _sensor(cluster.flow())["pods"]
        return len(now) == 2 and len(set(now) & set(pods)) == 1

    wait_for(replaced, timeout=15)
    assert counted()
    assert _sensor(cluster.flow())["status"]["state"] == "ready"

    # the page, from the controller, in a browser that reaches nothing but loopback
    with chromium(tmp_path) as browser:
        browser.get(cluster.controller.base + "/")
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, node_css(SEED_TRIGGER)))
        assert "trigger" in find(browser, node_css(SEED_EVENT)).text
        sensor = find(browser, node_css(SENSOR)).text
        assert "ml-pipeline-sensor" in sensor and "trigger-ml-pipeline" in sensor
        wait(browser, lambda d: count_text(d, SEED_TRIGGER, "fired") == "4 fired")
        # how many pods of each report now
        assert find(browser, node_css(SENSOR) + " .pods").text == "2 pods"
        assert find(browser, node_css("es:argo-events/webhook") + " .pods").text == "1 pod"
        # the newest three Workflows, linked to the Argo Workflows UI
        wait(browser, lambda d: sum(n in find(d, "#col-objects").text for n in names) == 3)
        links = browser.find_elements(By.CSS_SELECTOR, "#col-objects a")
        assert all(a.get_attribute("href").rsplit("/", 1)[1] in names for a in links), links
        shot = screenshot(browser, tmp_path, "flow-page-cluster.png")
        target = os.environ.get("TRIGGERFISH_DOCS_SCREENSHOT")
        if target:
            shutil.copy(shot, target)


def test_a_replay_at_the_controller_runs_in_the_sensor_pod(cluster: Cluster) -> None:
    cluster.pod("sensor", "ml-pipeline-sensor")
    cluster.pod("sensor", "ml-pipeline-sensor")
    cluster.pod("eventsource", "webhook")
    cluster.kube_api.fault("POST", WORKFLOWS, status=403, times=1)
    cluster.post({"model": "resnet", "dataset": "coco"})
    wait_for(lambda: cluster.controller.get("/api/v1/deadletters"), timeout=20)
    [dl] = cluster.controller.get("/api/v1/deadletters")
    assert (dl["namespace"], dl["sensor"], dl["trigger"]) == (
        NS, "ml-pipeline-sensor", "trigger-ml-pipeline"
    )  # fmt: skip
    assert "Forbidden" in dl["error"] or "403" in dl["error"]
    assert list_workflows(cluster.kube_api) == []

    # a double click: two replays at once; the controller runs no sensor, so both go
    # over the bus to the sensor's pods
    url = f"{cluster.controller.base}/api/v1/deadletters/{dl['bus']}/{dl['seq']}/replay"
    url += f"?namespace={NS}"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: httpx.post(url, timeout=30), range(2)))
    codes = sorted(a.status_code for a in answers)
    assert codes in ([200, 200], [200, 404]), [a.text for a in answers]
    ok = next(a.json() for a in answers if a.status_code == 200)
    assert ok["replayed"] is True
    assert ok["trace"]["triggers"][0]["status"] == "succeeded"
    [wf] = list_workflows(cluster.kube_api)
    assert params_of(wf) == {"model": "resnet", "dataset": "coco"}
    assert cluster.controller.get("/api/v1/deadletters") == []
    again = httpx.post(url, timeout=30)
    assert again.status_code == 404
    # the replayed firing shows on the page's trigger, taken from the pods' reports (two
    # replicas may both have run it at once: the second found the Workflow there)
    fired = codes.count(200)
    wait_for(
        lambda: node(cluster.flow(), SEED_TRIGGER)["counts"]["total"].get("fired") == fired,
        timeout=10,
    )
    assert len(list_workflows(cluster.kube_api)) == 1


def test_a_replay_for_a_sensor_that_runs_nowhere_is_a_404(cluster: Cluster) -> None:
    sensor = cluster.pod("sensor", "ml-pipeline-sensor")
    cluster.pod("eventsource", "webhook")
    cluster.kube_api.fault("POST", WORKFLOWS, status=403, times=1)
    cluster.post({"model": "resnet", "dataset": "lost"})
    wait_for(lambda: cluster.controller.get("/api/v1/deadletters"), timeout=20)
    [dl] = cluster.controller.get("/api/v1/deadletters")
    sensor.stop()
    r = httpx.post(
        f"{cluster.controller.base}/api/v1/deadletters/{dl['bus']}/{dl['seq']}/replay", timeout=30
    )
    assert r.status_code == 404
    assert "no pod of it answers" in r.json()["detail"]
    assert len(cluster.controller.get("/api/v1/deadletters")) == 1
    # a pod of it runs again: `triggerfish dlq replay` at the controller gets it done there
    cluster.pod("sensor", "ml-pipeline-sensor")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERFISH_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.compose.cli", "dlq", "--api", cluster.controller.base,
         "replay", dl["id"], "--namespace", NS],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [wf] = list_workflows(cluster.kube_api)
    assert done.stdout == f"replayed {dl['id']}: created Workflow {wf['metadata']['name']}\n"
    assert params_of(wf)["dataset"] == "lost"
    assert cluster.controller.get("/api/v1/deadletters") == []


def test_a_bus_the_controller_cannot_reach_is_the_reason_shown(
    kube_api: Any, tmp_path: Path
) -> None:
    kube_api.create_namespace(NS)
    kube_api.kubectl("apply", "-n", NS, "-f", str(SEED))
    dead = f"nats://127.0.0.1:{free_port()}"
    ctl = ControllerProc(str(kube_api.kubeconfig), dead, tmp_path / "controller.log").start()
    try:
        flow = ctl.get("/api/v1/flow")
        status = _sensor(flow)["status"]
        assert status["state"] == "not ready"
        assert status["reason"].startswith("the controller cannot reach the bus: ")
        assert node(flow, SEED_EVENT)["status"]["reason"] == status["reason"]
        r = httpx.get(f"{ctl.base}/api/v1/deadletters", timeout=30)
        assert r.status_code == 200 and r.json() == []
    finally:
        ctl.stop()


class _StartsWhileNotListening(RoleProc):
    """A pod role counted as started once it says why it cannot listen."""

    def readyz(self) -> dict[str, Any]:
        body = super().readyz()
        return {**body, "ready": body["ready"] or bool(body.get("sourceErrors"))}


def test_a_pod_that_cannot_listen_says_why_on_the_controller_page(cluster: Cluster) -> None:
    import socket

    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", cluster.webhook_port))
    blocker.listen(1)
    try:
        args = ["eventsource", "webhook", "--nats-url", cluster.nats_url, "--namespace", NS,
                "--bind-host", "127.0.0.1",
                "--port-map", f"12000={cluster.webhook_port}"]  # fmt: skip
        pod = _StartsWhileNotListening(
            args, cluster.tmp / "held", str(cluster.kube_api.kubeconfig), dict(FAST)
        )
        cluster.pods.append(pod)
        pod.start()
        want = f"cannot listen on 127.0.0.1:{cluster.webhook_port}: "
        wait_for(
            lambda: node(cluster.flow(), SEED_EVENT)["status"]["reason"].startswith(want),
            timeout=15,
        )
        assert node(cluster.flow(), SEED_EVENT)["status"]["state"] == "error"
        blocker.close()
        wait_for(lambda: node(cluster.flow(), SEED_EVENT)["status"]["state"] == "ready", timeout=40)
        assert pod.readyz()["ready"] is True
    finally:
        blocker.close()
