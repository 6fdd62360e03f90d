"""``triggerfish controller`` against the fake Kubernetes API (real HTTP, real kubectl).

The controller runs in-process (an asyncio task) so a test can stop and restart it;
the seed manifests are applied unchanged with ``kubectl apply``. What the tests hold
it to: the children Argo's controller would create (names, labels, owner references),
the status conditions, refusing an invalid spec with a message, rolling a changed
Sensor, and surviving a 410 Expired watch and a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.adapters.kube import ApiKube
from app.compose.controller import Controller, ControllerSettings
from app.compose.controller.builders import CR_SPEC_HASH
from app.kernel.settings import KubeSettings

REPO = Path(__file__).resolve().parents[1]
SHARED_SEED = REPO.parent / "shared" / "seed-manifests"
SEED = SHARED_SEED if SHARED_SEED.is_dir() else REPO / "examples" / "ml-pipeline"
NS = "argo-events"


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    """Poll an async check until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(AssertionError, KeyError, TypeError):
            last = await check()
            if last:
                return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout}s (last: {last!r})")


class Harness:
    """The API as the test sees it, plus the running controller."""

    def __init__(self, kube_api: Any) -> None:
        self.kube_api = kube_api
        self.kube = ApiKube.from_settings(KubeSettings(kubeconfig=str(kube_api.kubeconfig)))
        assert self.kube is not None
        self.cfg = ControllerSettings(watch_timeout_seconds=1, retry_delay_seconds=0.2)
        self.ctl: Controller | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Controller:
        assert self.kube is not None
        self.ctl = Controller(self.kube, self.cfg)
        self.task = asyncio.create_task(self.ctl.run())
        return self.ctl

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    async def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        proc = await asyncio.to_thread(self.kube_api.kubectl, *args, input=input, check=check)
        return str(proc.stdout)

    async def get(self, api_version: str, kind: str, name: str) -> dict[str, Any] | None:
        assert self.kube is not None
        return await self.kube.get(api_version, kind, name, NS)

    async def cond(self, kind: str, name: str, type_: str) -> dict[str, Any] | None:
        obj = await self.get("argoproj.io/v1alpha1", kind, name)
        for c in ((obj or {}).get("status") or {}).get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return None


@pytest.fixture
async def h(kube_api: Any) -> AsyncIterator[Harness]:
    kube_api.create_namespace(NS)
    harness = Harness(kube_api)
    try:
        yield harness
    finally:
        await harness.stop()
        assert harness.kube is not None
        await harness.kube.close()


async def _apply_seed_and_converge(h: Harness) -> None:
    await h.kubectl("apply", "-n", NS, "-f", str(SEED))
    h.start()
    for kind, name in (("EventBus", "default"), ("EventSource", "webhook"),
                       ("Sensor", "ml-pipeline-sensor")):  # fmt: skip

        async def ready(k: str = kind, n: str = name) -> bool:
            c = await h.cond(k, n, "Ready")
            return c is not None and c["status"] == "True"

        await eventually(ready)


def _owned_by(obj: dict[str, Any], kind: str, name: str) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r["kind"] == kind and r["name"] == name and r.get("controller") for r in refs)


async def test_seed_manifests_become_argo_like_children(h: Harness) -> None:
    await _apply_seed_and_converge(h)

    sts = await h.get("apps/v1", "StatefulSet", "eventbus-default-js")
    assert sts is not None and sts["spec"]["replicas"] == 3
    assert _owned_by(sts, "EventBus", "default")
    labels = sts["metadata"]["labels"]
    assert labels["controller"] == "eventbus-controller"
    assert labels["eventbus-name"] == "default"
    assert labels["app.kubernetes.io/managed-by"] == "triggerfish"
    main = sts["spec"]["template"]["spec"]["containers"][0]
    assert main["image"] == "nats:2.10-alpine"
    assert "-js" in main["args"] and "--auth=$(NATS_TOKEN)" in main["args"]
    routes = next(a for a in main["args"] if a.startswith("--routes="))
    assert routes.count("nats://eventbus-default-js-") == 3
    headless = await h.get("v1", "Service", "eventbus-default-js-svc")
    assert headless is not None and headless["spec"]["clusterIP"] == "None"
    client = await h.get("v1", "Service", "eventbus-default-js-client-svc")
    assert client is not None and client["spec"]["ports"][0]["port"] == 4222
    secret = await h.get("v1", "Secret", "eventbus-default-js-client-auth")
    assert secret is not None and secret["data"]["token"]
    eb = await h.get("argoproj.io/v1alpha1", "EventBus", "default")
    assert eb is not None
    config = eb["status"]["config"]["jetstream"]
    assert config["url"] == "nats://eventbus-default-js-client-svc.argo-events.svc:4222"
    assert config["accessSecret"] == {"name": "eventbus-default-js-client-auth", "key": "token"}
    assert {c["type"] for c in eb["status"]["conditions"]} == {"Configured", "Deployed", "Ready"}
    assert all(c["lastTransitionTime"] for c in eb["status"]["conditions"])

    dep = await h.get("apps/v1", "Deployment", "webhook-eventsource")
    assert dep is not None and _owned_by(dep, "EventSource", "webhook")
    assert dep["metadata"]["labels"]["eventsource-name"] == "webhook"
    pod = dep["spec"]["template"]
    assert pod["spec"]["containers"][0]["args"][:2] == ["eventsource", "webhook"]
    svc = await h.get("v1", "Service", "webhook-eventsource-svc")
    assert svc is not None and svc["spec"]["ports"][0]["port"] == 12000
    assert all(pod["metadata"]["labels"][k] == v for k, v in svc["spec"]["selector"].items())

    sdep = await h.get("apps/v1", "Deployment", "ml-pipeline-sensor-sensor")
    assert sdep is not None and _owned_by(sdep, "Sensor", "ml-pipeline-sensor")
    spod = sdep["spec"]["template"]["spec"]
    assert spod["serviceAccountName"] == "operate-workflow-sa"
    assert spod["containers"][0]["args"][:2] == ["sensor", "ml-pipeline-sensor"]
    # the sensor's pods may read their own Sensor, their EventBus and its auth Secret
    role = await h.get("rbac.authorization.k8s.io/v1", "Role", "ml-pipeline-sensor-sensor")
    assert role is not None and _owned_by(role, "Sensor", "ml-pipeline-sensor")
    by_resource = {r["resources"][0]: r for r in role["rules"]}
    assert by_resource["sensors"]["resourceNames"] == ["ml-pipeline-sensor"]
    assert by_resource["eventbus"]["resourceNames"] == ["default"]
    assert by_resource["secrets"]["verbs"] == ["get"]
    assert by_resource["secrets"]["resourceNames"] == ["eventbus-default-js-client-auth"]
    binding = await h.get(
        "rbac.authorization.k8s.io/v1", "RoleBinding", "ml-pipeline-sensor-sensor"
    )
    assert binding is not None
    assert binding["subjects"][0]["name"] == "operate-workflow-sa"
    es_binding = await h.get("rbac.authorization.k8s.io/v1", "RoleBinding", "webhook-eventsource")
    assert es_binding is not None and es_binding["subjects"][0]["name"] == "default"
    sn = await h.get("argoproj.io/v1alpha1", "Sensor", "ml-pipeline-sensor")
    assert sn is not None
    types = {c["type"]: c["status"] for c in sn["status"]["conditions"]}
    assert types == {"DependenciesProvided": "True", "TriggersProvided": "True",
                     "Deployed": "True", "Ready": "True"}  # fmt: skip

    out = await h.kubectl("get", "es,sn,eb", "-n", NS)
    for name in ("webhook", "ml-pipeline-sensor", "default"):
        assert name in out

    # converged: nothing left to write (the status would otherwise keep changing)
    rv = sdep["metadata"]["resourceVersion"]
    await asyncio.sleep(0.3)
    again = await h.get("apps/v1", "Deployment", "ml-pipeline-sensor-sensor")
    assert again is not None and again["metadata"]["resourceVersion"] == rv


async def test_invalid_eventsource_is_refused_with_a_message(h: Harness) -> None:
    await _apply_seed_and_converge(h)
    bad = {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "EventSource",
        "metadata": {"name": "broken", "namespace": NS},
        "spec": {"webhook": {"x": {"port": "13000", "endpoint": "/x", "method": "POST",
                                   "bogusField": 1}}},
    }  # fmt: skip
    await h.kubectl("apply", "-f", "-", input=json.dumps(bad))
    c = await eventually(lambda: h.cond("EventSource", "broken", "SourcesProvided"))
    assert c["status"] == "False" and c["reason"] == "InvalidEventSource"
    assert "bogusField" in c["message"]
    deployed = await eventually(lambda: h.cond("EventSource", "broken", "Deployed"))
    assert deployed["status"] == "False"
    assert await h.get("apps/v1", "Deployment", "broken-eventsource") is None


async def test_eventsource_waits_for_its_eventbus(h: Harness) -> None:
    h.start()
    await h.kubectl("apply", "-n", NS, "-f", str(SEED / "event-source.yaml"))
    c = await eventually(lambda: h.cond("EventSource", "webhook", "Deployed"))
    assert c["status"] == "False" and c["reason"] == "EventBusNotFound"
    await h.kubectl("apply", "-n", NS, "-f", str(SEED / "eventbus.yaml"))

    async def deployed() -> bool:
        c = await h.cond("EventSource", "webhook", "Deployed")
        return c is not None and c["status"] == "True"

    await eventually(deployed)
    assert await h.get("apps/v1", "Deployment", "webhook-eventsource") is not None


def _with_third_parameter(sensor_yaml: str) -> str:
    import yaml

    doc = yaml.safe_load(sensor_yaml)
    k8s = doc["spec"]["triggers"][0]["template"]["k8s"]
    k8s["source"]["resource"]["metadata"]["labels"] = {"model": "none"}
    k8s["parameters"].append(
        {"src": {"dependencyName": "training-event", "dataKey": "body.model"},
         "dest": "metadata.labels.model"}
    )  # fmt: skip
    return json.dumps(doc)


async def test_updated_sensor_rolls_its_deployment_and_delete_cascades(h: Harness) -> None:
    await _apply_seed_and_converge(h)
    before = await h.get("apps/v1", "Deployment", "ml-pipeline-sensor-sensor")
    assert before is not None
    old = before["spec"]["template"]["metadata"]["annotations"][CR_SPEC_HASH]
    changed = _with_third_parameter((SEED / "sensor.yaml").read_text())
    await h.kubectl("apply", "-f", "-", input=changed)

    async def rolled() -> bool:
        dep = await h.get("apps/v1", "Deployment", "ml-pipeline-sensor-sensor")
        return dep is not None and dep["spec"]["template"]["metadata"]["annotations"][
            CR_SPEC_HASH
        ] not in (old,)

    await eventually(rolled)
    await h.kubectl("delete", "sensor", "ml-pipeline-sensor", "-n", NS)

    async def gone() -> bool:
        return await h.get("apps/v1", "Deployment", "ml-pipeline-sensor-sensor") is None

    await eventually(gone)


async def test_survives_410_and_a_restart(h: Harness, kube_api: Any) -> None:
    await _apply_seed_and_converge(h)
    ctl = h.ctl
    assert ctl is not None
    relists = ctl.relists
    # move the resourceVersion on, then drop the history the next watch resumes from
    await h.kubectl("create", "configmap", "bump", "-n", NS)
    await asyncio.to_thread(kube_api.compact)
    await eventually(lambda: asyncio.sleep(0, ctl.relists > relists), timeout=10)
    await h.kubectl("patch", "sensor", "ml-pipeline-sensor", "-n", NS, "--type", "merge",
                    "-p", '{"spec":{"replicas":2}}')  # fmt: skip

    async def replicas(n: int) -> bool:
        dep = await h.get("apps/v1", "Deployment", "ml-pipeline-sensor-sensor")
        return dep is not None and dep["spec"]["replicas"] == n

    await eventually(lambda: replicas(2))

    # a crashed controller resumes from a fresh list
    await h.stop()
    await h.kubectl("patch", "sensor", "ml-pipeline-sensor", "-n", NS, "--type", "merge",
                    "-p", '{"spec":{"replicas":3}}')  # fmt: skip
    await asyncio.to_thread(kube_api.compact)
    h.start()
    await eventually(lambda: replicas(3))


def test_controller_process_serves_probes(kube_api: Any, tmp_path: Path) -> None:
    """``triggerfish controller`` as a process: /healthz at once, /readyz once synced."""
    import os
    import subprocess
    import sys

    import httpx

    from tests.support.net import free_port, wait_for

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERFISH_")}
    env.update(KUBECONFIG=str(kube_api.kubeconfig), TRIGGERFISH_API_PORT=str(port))
    log = (tmp_path / "controller.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "app.compose.cli", "controller"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:

        def ready() -> bool:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200

        wait_for(ready, timeout=30, interval=0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json() == {"status": "ok"}
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
        log.close()


SECRET_TOKEN = "tok-9f3a1c77e2b04d5e8a61"
SECRET_PASSWORD = "pw-5b2e9d0c4a7f41e3b8d2"


async def test_secret_values_never_reach_status_children_or_the_log(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The controller reads specs that reference Secrets (a webhook's ``authSecret``, an
    http trigger's ``basicAuth``); the values stay in the Secrets: none is copied into an
    object's status, into what the controller creates, or into its log."""
    import yaml

    extra = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook-auth"},
         "stringData": {"token": SECRET_TOKEN, "password": SECRET_PASSWORD}},
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "EventSource",
         "metadata": {"name": "guarded"},
         "spec": {"webhook": {"in": {"port": "12001", "endpoint": "/in", "method": "POST",
                                      "authSecret": {"name": "hook-auth", "key": "token"}}}}},
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "Sensor", "metadata": {"name": "caller"},
         "spec": {"dependencies": [{"name": "d", "eventSourceName": "guarded", "eventName": "in"}],
                  "triggers": [{"template": {"name": "call", "http": {
                      "url": "http://example.invalid/hook", "method": "POST",
                      "basicAuth": {"username": {"name": "hook-auth", "key": "token"},
                                    "password": {"name": "hook-auth", "key": "password"}}}}}]}},
    ]  # fmt: skip
    caplog.set_level("DEBUG")
    await h.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump_all(extra))
    await _apply_seed_and_converge(h)
    for kind, name in (("EventSource", "guarded"), ("Sensor", "caller")):

        async def deployed(k: str = kind, n: str = name) -> bool:
            c = await h.cond(k, n, "Deployed")
            return c is not None and c["status"] == "True"

        await eventually(deployed)
    seen: list[str] = []
    for kind in ("eventsources", "sensors", "eventbus", "deployments", "services", "roles",
                 "rolebindings", "serviceaccounts", "statefulsets", "configmaps"):  # fmt: skip
        out = await h.kubectl("get", kind, "-n", NS, "-o", "json")
        seen.append(out)
        assert json.loads(out)["items"] is not None
    everything = "\n".join(seen) + "\n" + caplog.text
    assert "guarded" in everything and "caller" in everything  # the scan saw them
    for value in (SECRET_TOKEN, SECRET_PASSWORD):
        assert value not in everything
