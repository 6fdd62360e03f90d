"""Kubernetes API faults, end to end: webhook → sensor → API, in real processes.

``triggerfish run`` creates Workflows in the fake API server while the fake's fault
rules (``tests/fakekube/faults.py``) throttle (429 with ``Retry-After``), fail (500,
503), answer slowly or reset the connection (before or after serving) on the Workflow
creates. Whatever the
transport underneath, every event accepted by the webhook must still yield exactly one
Workflow, or, once its ``retryStrategy`` is spent, one dead letter and none; a
``Retry-After`` must be honoured: the fake's request log shows the retry of the same
object arriving no earlier than the server asked (a check of behaviour, read from the
server's own clock, not a speed assertion). The tests only post to the webhook and
read the API, so they hold for any Kubernetes transport.
"""

from __future__ import annotations

import collections
import itertools
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish
from tests.test_seed_e2e import list_workflows, params_of

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ml-pipeline"
CREATES = "/apis/argoproj.io/v1alpha1/namespaces/argo-events/workflows"
EVENTS = 4


def manifests(tmp_path: Path, retry: dict[str, Any]) -> Path:
    """The ml-pipeline example with the trigger's ``retryStrategy`` set to ``retry``."""
    dst = tmp_path / "manifests"
    shutil.copytree(EXAMPLE, dst)
    path = dst / "sensor.yaml"
    sensor = yaml.safe_load(path.read_text())
    sensor["spec"]["triggers"][0]["retryStrategy"] = retry
    path.write_text(yaml.safe_dump(sensor))
    return dst


def start(tmp_path: Path, kube_api: Any, retry: dict[str, Any]) -> tuple[Triggerfish, int]:
    port = free_port()
    tf = Triggerfish(
        files=[str(manifests(tmp_path, retry))],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        port_map={12000: port},
        # A slow answer outlasts the client's wait, so the create is retried.
        extra_env={"TRIGGERFISH_KUBE__REQUEST_TIMEOUT_SECONDS": "1"},
    ).start()
    return tf, port


def post_events(port: int, tag: str) -> list[str]:
    models = [f"{tag}-{i}" for i in range(EVENTS)]
    for m in models:
        r = httpx.post(f"http://127.0.0.1:{port}/trigger", json={"model": m, "dataset": "d"},
                       timeout=10)  # fmt: skip
        assert r.status_code == 200, r.text
    return models


def finished(tf: Triggerfish) -> list[dict[str, Any]]:
    """Traces of the events the sensor is done with (its trigger ran to an outcome)."""
    traces = tf.api("/api/v1/traces?limit=100")
    assert isinstance(traces, list)
    return [t for t in traces if t["triggers"]]


def creates(kube_api: Any) -> list[dict[str, Any]]:
    """The Workflow creates the API saw, in arrival order, with the fault rule each got."""
    return [e for e in kube_api.faults()["requests"] if e["method"] == "POST"]


def by_object(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in entries:
        out[e["name"]].append(e)
    return out


FAULTS: dict[str, dict[str, Any]] = {
    "429 with Retry-After": {"status": 429, "retryAfter": 1, "times": 3},
    "500": {"status": 500, "times": 3},
    "503 with Retry-After": {"status": 503, "retryAfter": 1, "times": 3},
    "slow answer": {"delay": 2, "times": 2},
    "reset before serving": {"reset": "before", "times": 3},
    "reset after serving": {"reset": "after", "times": 3},
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_event_yields_one_workflow_under_api_faults(
    fault: str, tmp_path: Path, kube_api: Any
) -> None:
    rule = FAULTS[fault]
    tf, port = start(tmp_path, kube_api, {"steps": 8, "duration": "200ms", "factor": 1.5})
    try:
        kube_api.fault("POST", CREATES, **rule)
        models = post_events(port, "m")
        # Done when the sensor has finished with every event (objects alone can exist
        # before that: a slow answer's create was served while the client gave up).
        wait_for(lambda: len(finished(tf)) >= EVENTS, timeout=60, interval=0.25)
        assert [t["triggers"][0]["status"] for t in finished(tf)] == ["succeeded"] * EVENTS
        time.sleep(1.0)  # a duplicate from a late retry would land now
        got = collections.Counter(params_of(w)["model"] for w in list_workflows(kube_api))
        assert got == collections.Counter(models), f"{fault}: {got}\n{tf.log()}"

        log = creates(kube_api)
        assert len([e for e in log if e["rule"] is not None]) == rule["times"], log
        # Each object was attempted again after each fault, and one attempt was served
        # (a retry after a served attempt got 409, which the create takes as done).
        for name, attempts in by_object(log).items():
            assert 201 in [e["status"] for e in attempts], f"{name}: {attempts}"
            assert attempts[-1]["rule"] is None, f"{name}: last attempt faulted: {attempts}"
        if "retryAfter" in rule:
            for name, attempts in by_object(log).items():
                for before, after in itertools.pairwise(attempts):
                    if before["rule"] is not None:
                        waited = after["t"] - before["t"]
                        assert waited >= rule["retryAfter"], (
                            f"{name}: retried {waited:.3f}s after a {before['status']} that"
                            f" asked for Retry-After {rule['retryAfter']}s"
                        )
    finally:
        tf.stop()


@pytest.mark.slow
def test_past_retry_strategy_each_event_is_dead_lettered_once(
    tmp_path: Path, kube_api: Any
) -> None:
    steps = 3
    tf, port = start(tmp_path, kube_api, {"steps": steps, "duration": "100ms"})
    try:
        kube_api.fault("POST", CREATES, status=500, times=0)  # every create fails
        models = post_events(port, "dl")

        wait_for(lambda: len(finished(tf)) >= EVENTS, timeout=60, interval=0.25)
        statuses = [t["triggers"][0]["status"] for t in finished(tf)]
        assert statuses == ["dead-lettered"] * EVENTS, statuses
        assert [t["triggers"][0]["attempts"] for t in finished(tf)] == [steps] * EVENTS
        assert list_workflows(kube_api) == []
        attempts = by_object(creates(kube_api))
        assert len(attempts) == len(models)
        assert all(len(a) == steps and all(e["status"] == 500 for e in a)
                   for a in attempts.values()), attempts  # fmt: skip
        metrics = httpx.get(f"http://127.0.0.1:{tf.api_port}/metrics", timeout=5).text
        assert any(
            line.startswith("triggerfish_dead_lettered_total")
            and line.rstrip().endswith(f" {float(EVENTS)}")
            for line in metrics.splitlines()
        ), [line for line in metrics.splitlines() if "dead" in line]
    finally:
        tf.stop()


# -- the fault rules themselves ------------------------------------------------------------
def test_reset_and_delay_rules_over_http(kube_api: Any) -> None:
    """A reset drops the connection (before serving: nothing created; after: created,
    answer lost); a delay answers late; the log names the object of each request."""
    path = "/api/v1/namespaces/default/configmaps"
    kube_api.fault("POST", path, reset="before")
    kube_api.fault("POST", path, reset="after")
    kube_api.fault("POST", path, delay=0.3)
    url = kube_api.url + path

    def create(name: str) -> httpx.Response:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
        return httpx.post(url, json=body, timeout=5)

    with pytest.raises(httpx.TransportError):
        create("first")
    with pytest.raises(httpx.TransportError):
        create("second")
    assert create("third").status_code == 201
    assert create("fourth").status_code == 201
    names = {i["metadata"]["name"] for i in httpx.get(url, timeout=5).json()["items"]}
    assert names == {"second", "third", "fourth"}  # "first" never reached the API
    log = creates_on(kube_api, path)
    assert [(e["name"], e["status"], e["rule"] is not None) for e in log] == [
        ("first", None, True), ("second", 201, True), ("third", 201, True),
        ("fourth", 201, False),
    ]  # fmt: skip
    assert log[3]["t"] - log[2]["t"] >= 0.3  # the third was answered only after its delay
    answer = kube_api.server.request(
        "POST", "/fake/faults", {"method": "POST", "path": path, "reset": "x"}
    )
    assert answer["code"] == 400 and "reset" in answer["message"]


def creates_on(kube_api: Any, path: str) -> list[dict[str, Any]]:
    return [e for e in kube_api.faults()["requests"] if e["path"] == path]
