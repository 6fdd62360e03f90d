"""Two ``triggerfish run`` processes sharing one nats-server and a sensor's durable
consumers, as two replicas of a sensor pod do: the events of one round land on both,
and each round must still create exactly one object, also when one replica is
SIGKILLed in the middle of a round: the events it stored are in the bucket, and the
other replica completes the round with them.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.adapters.natsserver import EmbeddedNats
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish

DEPS = ["a", "b", "c"]
ROUNDS = 12


def write_manifests(root: Path) -> Path:
    """A webhook with one endpoint per dependency, and a sensor ANDing them into one
    ConfigMap per round (one field per dependency, so a mixed round shows)."""
    root.mkdir(parents=True)
    source = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "hook", "namespace": "replicas"},
        "spec": {"webhook": {d: {"port": "12000", "endpoint": f"/{d}", "method": "POST"}
                             for d in DEPS}},
    }  # fmt: skip
    sensor = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "rounds", "namespace": "replicas"},
        "spec": {
            "dependencies": [{"name": d, "eventSourceName": "hook", "eventName": d}
                             for d in DEPS],
            "triggers": [{
                "template": {"name": "round", "k8s": {
                    "operation": "create",
                    "source": {"resource": {
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"generateName": "round-"},
                        "data": {d: "none" for d in DEPS},
                    }},
                    "parameters": [
                        {"src": {"dependencyName": d, "dataKey": "body.round"},
                         "dest": f"data.{d}"}
                        for d in DEPS
                    ],
                }},
                "retryStrategy": {"steps": 5, "duration": "200ms"},
            }],
        },
    }  # fmt: skip
    (root / "source.yaml").write_text(yaml.safe_dump(source))
    (root / "sensor.yaml").write_text(yaml.safe_dump(sensor))
    return root


def traces(tf: Triggerfish) -> list[dict[str, Any]]:
    if tf.proc is None:
        return []
    got = tf.api("/api/v1/traces?limit=1000")
    assert isinstance(got, list)
    return got


def rounds_created(kube_api: Any) -> list[str]:
    from kubernetes import client

    items = client.CoreV1Api(kube_api.api_client()).list_namespaced_config_map("replicas").items
    out = []
    for cm in items:
        if not cm.metadata.name.startswith("round-"):
            continue
        values = set((cm.data or {}).values())
        assert len(values) == 1, f"{cm.metadata.name} mixes rounds: {cm.data}"
        out.append(values.pop())
    return sorted(out, key=int)


@pytest.mark.slow
def test_two_replicas_fire_each_round_once_and_survive_a_sigkill(
    tmp_path: Path, kube_api: Any, nats_server: EmbeddedNats
) -> None:
    manifests = write_manifests(tmp_path / "manifests")
    replicas: list[Triggerfish] = []
    ports: list[int] = []
    try:
        for i in range(2):
            ports.append(free_port())
            replicas.append(
                Triggerfish(
                    files=[str(manifests)],
                    state_dir=tmp_path / f"replica-{i}",
                    kubeconfig=str(kube_api.kubeconfig),
                    nats_url=nats_server.url,
                    port_map={12000: ports[-1]},
                    # A short ack wait, so the killed replica's unacked event comes back
                    # to the survivor quickly.
                    extra_env={"TRIGGERFISH_BUS__ACK_WAIT_SECONDS": "3"},
                ).start()
            )

        def post(replica: int, dep: str, n: int) -> None:
            r = httpx.post(f"http://127.0.0.1:{ports[replica]}/{dep}", json={"round": str(n)},
                           timeout=10)  # fmt: skip
            assert r.status_code == 200, r.text

        def handled(replica: int) -> int:
            return sum(1 for t in traces(replicas[replica]) if t["dependency"] in DEPS)

        for n in range(ROUNDS):
            if n == ROUNDS // 2:
                # Both replicas have handled events (the consumers are shared) ...
                assert handled(0) and handled(1), (handled(0), handled(1))
                # ... then half a round is stored, and one replica dies before the rest.
                before = handled(0) + handled(1)
                post(0, DEPS[0], n)
                post(1, DEPS[1], n)
                wait_for(lambda b=before: handled(0) + handled(1) == b + 2, timeout=30)
                replicas[0].kill()
                post(1, DEPS[2], n)
            else:
                live = [0, 1] if n < ROUNDS // 2 else [1]
                for j, d in enumerate(DEPS):
                    post(live[(n + j) % len(live)], d, n)
            wait_for(lambda n=n: len(rounds_created(kube_api)) == n + 1, timeout=60,
                     interval=0.2)  # fmt: skip
        time.sleep(1.0)  # a second firing of any round would land now
        got = rounds_created(kube_api)
        assert got == [str(n) for n in range(ROUNDS)], collections.Counter(got)
    finally:
        for tf in replicas:
            tf.stop()
