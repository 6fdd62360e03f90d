"""Singleton sources among replicas: two ``triggerfish eventsource`` pod processes of a
calendar EventSource with ``replicas: 2``, against the fake Kubernetes API and a real
nats-server, killed by PID.

Only the holder of the Lease ``<eventsource>-eventsource-calendar`` fires (the other's
``/readyz`` is ready and says it stands by; its events-sent counter stays at zero).
SIGKILL the holder: the standby takes the Lease once it has seen it unrenewed for the
lease duration, catches up from the tick the holder recorded last, and the bus holds
every tick exactly once (consecutive seconds, no gap, no repeat; a tick published by
both is dropped by its dedup id). The same for an MQTT source with a fixed client id:
one replica connects, the other connects only after the holder died, and the QoS 1
messages of the gap (kept by the broker for the persistent session) arrive once. Also:
the controller grants the pods the Lease and
ConfigMap rights this needs, and a source that is no singleton is never put under a
Lease.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import orjson
import pytest

from app.adapters.lease import parse_micro_time
from app.adapters.natsserver import EmbeddedNats
from app.compose.controller.builders import pod_role_rbac
from eventsources.calendar import CalendarConfig, CalendarSource
from eventsources.mqtt import MQTTConfig, MQTTSource
from eventsources.webhook import WebhookSource
from tests.broker_fixtures import MosquittoPeer
from tests.support.brokers import Stream
from tests.support.net import wait_for
from tests.test_podroles import RoleProc

NS = "argo-events"
LEASE = "nightly-eventsource-calendar"
LEASE_SECONDS = 2.0
FAST_LEASE = {
    "TRIGGERFISH_SINGLETON__LEASE_DURATION_SECONDS": str(LEASE_SECONDS),
    "TRIGGERFISH_SINGLETON__RENEW_DEADLINE_SECONDS": "1.5",
    "TRIGGERFISH_SINGLETON__RETRY_PERIOD_SECONDS": "0.3",
}
EVENTSOURCE = """
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: nightly}
spec:
  replicas: 2
  calendar:
    every-second:
      interval: 1s
      persistence:
        catchup: {enabled: true}
"""


def test_singleton_declarations() -> None:
    cal = {"a": CalendarConfig.model_validate({"interval": "1h"})}
    assert CalendarSource.singleton(cal)
    mqtt = {"a": MQTTConfig.model_validate({"url": "tcp://127.0.0.1:1883", "topic": "t",
                                            "clientId": "fixed"})}  # fmt: skip
    assert MQTTSource.singleton(mqtt)
    assert not WebhookSource.singleton({})


def test_controller_grants_leases_and_calendar_config_maps() -> None:
    def rules(spec: dict[str, Any]) -> list[dict[str, Any]]:
        meta = {"name": "nightly", "namespace": NS, "uid": "u1"}
        cr = {"apiVersion": "argoproj.io/v1alpha1", "kind": "EventSource", "metadata": meta,
              "spec": spec}  # fmt: skip
        role = pod_role_rbac(cr, "eventsource", "eventsources")[0]
        return list(role["rules"])

    persistence = {"configMap": {"name": "cal", "createIfNotExist": True}}
    cal = {"a": {"schedule": "0 * * * *", "persistence": persistence}}
    one = rules({"calendar": cal})
    assert not any("coordination.k8s.io" in r["apiGroups"] for r in one)
    assert {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cal"],
            "verbs": ["get", "update"]} in one  # fmt: skip
    assert {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]} in one
    two = rules({"replicas": 2, "calendar": cal})
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "verbs": ["get", "create", "update"]} in two  # fmt: skip


@pytest.fixture
def replicas(kube_api: Any, nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[Any]:
    kube_api.create_namespace(NS)
    kube_api.kubectl("apply", "-n", NS, "-f", "-", input=EVENTSOURCE)
    started: list[RoleProc] = []

    def start(identity: str) -> RoleProc:
        args = ["eventsource", "nightly", "--nats-url", nats_server.url, "--namespace", NS]
        env = {**FAST_LEASE, "TRIGGERFISH_SINGLETON__IDENTITY": identity}
        p = RoleProc(args, tmp_path / identity, str(kube_api.kubeconfig), env)
        started.append(p)
        return p.start()

    try:
        yield start
    finally:
        for p in started:
            p.stop()


def _sent(p: RoleProc) -> float:
    text = httpx.get(f"http://127.0.0.1:{p.api_port}/metrics", timeout=2).text
    m = re.search(r'^argo_events_events_sent_total\{[^}]*event_name="every-second"[^}]*\} (\S+)',
                  text, re.M)  # fmt: skip
    return float(m.group(1)) if m else 0.0


@pytest.mark.slow
def test_one_replica_fires_and_the_standby_takes_over_without_loss_or_doubles(
    replicas: Any, kube_api: Any, nats_server: EmbeddedNats
) -> None:
    server = kube_api.server
    stream = Stream(nats_server.url)

    def lease() -> dict[str, Any]:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{LEASE}"
        return dict(server.request("GET", path).get("spec") or {})

    def count() -> int:
        return asyncio.run(stream.count())

    a = replicas("replica-a")
    wait_for(lambda: lease().get("holderIdentity") == "replica-a", timeout=30, interval=0.05)
    b = replicas("replica-b")
    ready_b = b.readyz()
    assert ready_b["ready"] is True
    assert ready_b["standby"]["calendar"] == (f"standby: Lease {NS}/{LEASE} held by replica-a"), (
        ready_b
    )
    assert "standby" not in a.readyz()
    wait_for(lambda: count() >= 4, timeout=30, interval=0.1)
    assert _sent(a) >= 4
    assert _sent(b) == 0  # the standby fired nothing

    before = lease()
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGKILL)
    t_kill = time.time()
    a.proc.wait()
    a.proc = None
    last_renew_by_a = lease()["renewTime"]
    n_at_kill = count()
    wait_for(lambda: lease().get("holderIdentity") == "replica-b", timeout=30, interval=0.05)
    after = lease()
    assert after["leaseTransitions"] == before["leaseTransitions"] + 1
    took_over = parse_micro_time(after["acquireTime"])
    # safety: b waited out the lease after a's last renewal (never both firing)
    assert took_over - parse_micro_time(last_renew_by_a) >= LEASE_SECONDS - 0.1
    wait_for(lambda: count() >= n_at_kill + 4, timeout=30, interval=0.1)
    wait_for(lambda: "standby" not in b.readyz(), timeout=10, interval=0.05)
    assert _sent(b) >= 4
    print(f"\ntakeover {took_over - t_kill:.2f}s after the SIGKILL (lease {LEASE_SECONDS}s)")

    events = asyncio.run(stream.events())
    times = [
        datetime.strptime(e["data"]["eventTime"][:19], "%Y-%m-%d %H:%M:%S").timestamp()
        for e in events
    ]
    assert len(set(times)) == len(times), "a tick stored twice"
    assert times == sorted(times)
    gaps = [later - t for t, later in itertools.pairwise(times)]
    assert set(gaps) == {1.0}, f"ticks lost around the takeover: {gaps}"
    assert len({e["id"] for e in events}) == len(events)


MQTT_EVENTSOURCE = """
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {{name: requests}}
spec:
  replicas: 2
  mqtt:
    training:
      url: {url}
      topic: training/requests
      clientId: triggerfish-requests
      jsonBody: true
      qos: 1
      cleanSession: false
"""


async def _publish(peer: MosquittoPeer, start: int, n: int) -> None:
    async with aiomqtt.Client(peer.host, peer.port, identifier="test-publisher") as c:
        for i in range(start, start + n):
            await c.publish("training/requests", orjson.dumps({"i": i}), qos=1)


@pytest.mark.slow
def test_mqtt_with_a_fixed_client_id_connects_from_one_replica_only(
    kube_api: Any, nats_server: EmbeddedNats, mosquitto_peer: MosquittoPeer, tmp_path: Path
) -> None:
    kube_api.create_namespace(NS)
    kube_api.kubectl("apply", "-n", NS, "-f", "-",
                     input=MQTT_EVENTSOURCE.format(url=mosquitto_peer.url))  # fmt: skip
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/requests-eventsource-mqtt"
    stream = Stream(nats_server.url)

    def holder() -> str:
        spec = kube_api.server.request("GET", lease_path).get("spec") or {}
        return str(spec.get("holderIdentity") or "")

    def start(identity: str) -> RoleProc:
        args = ["eventsource", "requests", "--nats-url", nats_server.url, "--namespace", NS]
        env = {**FAST_LEASE, "TRIGGERFISH_SINGLETON__IDENTITY": identity}
        return RoleProc(args, tmp_path / identity, str(kube_api.kubeconfig), env).start()

    a = start("mqtt-a")
    b: RoleProc | None = None
    try:
        wait_for(lambda: holder() == "mqtt-a", timeout=30, interval=0.05)
        b = start("mqtt-b")
        assert "held by mqtt-a" in b.readyz()["standby"]["mqtt"]
        asyncio.run(_publish(mosquitto_peer, 0, 20))
        wait_for(lambda: asyncio.run(stream.count()) >= 20, timeout=30, interval=0.1)
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait()
        a.proc = None
        # published while nobody is connected: the broker keeps them for the session
        asyncio.run(_publish(mosquitto_peer, 20, 20))
        wait_for(lambda: holder() == "mqtt-b", timeout=30, interval=0.05)
        wait_for(lambda: asyncio.run(stream.count()) >= 40, timeout=30, interval=0.1)
    finally:
        a.stop()
        if b is not None:
            b.stop()
    bodies = [e["data"]["body"]["i"] for e in asyncio.run(stream.events())]
    assert sorted(bodies) == list(range(40)), bodies
    # the broker never had two sessions with the client id at once (its log is
    # complete once it stopped)
    mosquitto_peer.stop()
    log = (mosquitto_peer.workdir / "mosquitto.log").read_text(errors="replace")
    assert log.count("as triggerfish-requests") >= 2, log[-3000:]  # a, then b
    assert "already connected" not in log, log[-3000:]
