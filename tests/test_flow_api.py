"""The event-flow API of a real ``triggerfish run`` (embedded nats-server, fake
Kubernetes API): live counts from the process's counters, traces persisted on the bus
across a restart, dead letters listed, replayed exactly once, and discarded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.kernel.settings import BusSettings
from tests.support.flow import (
    BERT_DEP,
    REPO,
    SEED_DEP,
    SEED_EVENT,
    SEED_TRIGGER,
    WORKFLOWS,
    node,
    post,
    start_seed,
    workflows,
)
from tests.support.net import wait_for
from tests.support.proc import Triggerfish

pytestmark = pytest.mark.slow


def _get(tf: Any, path: str) -> Any:
    r = httpx.get(f"http://127.0.0.1:{tf.api_port}{path}", timeout=10)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def test_counts_statuses_objects_and_traces(tmp_path: Path, kube_api: Any) -> None:
    tf, port = start_seed(tmp_path, kube_api)
    try:
        flow = _get(tf, "/api/v1/flow")
        assert node(flow, SEED_DEP)["counts"]["window"] == {}
        assert node(flow, SEED_EVENT)["status"] == {"state": "ready", "reason": ""}
        post(port, {"model": "resnet", "dataset": "imagenet"})
        wait_for(lambda: node(_get(tf, "/api/v1/flow"), SEED_TRIGGER)["objects"], timeout=15)
        flow = _get(tf, "/api/v1/flow")
        assert node(flow, SEED_EVENT)["counts"]["window"] == {"published": 1}
        assert node(flow, SEED_DEP)["counts"]["window"] == {"received": 1}
        assert node(flow, BERT_DEP)["counts"]["window"] == {"received": 1, "filtered": 1}
        trig = node(flow, SEED_TRIGGER)
        assert trig["counts"]["window"] == {"fired": 1}
        assert trig["status"]["state"] == "ready"
        [obj] = trig["objects"]
        [wf] = workflows(kube_api)
        assert (obj["kind"], obj["namespace"], obj["name"]) == (
            "Workflow",
            "argo-events",
            wf["metadata"]["name"],
        )
        assert obj["url"] == (
            f"http://argo.example.invalid:2746/workflows/argo-events/{wf['metadata']['name']}"
        )

        # the same per object in the list APIs
        [seed] = [s for s in _get(tf, "/api/v1/sensors") if s["name"] == "ml-pipeline-sensor"]
        assert seed["status"] == {"state": "ready", "reason": ""}
        [t] = seed["triggers"]
        assert (t["counts"]["window"], t["lastError"]) == ({"fired": 1}, "")
        assert seed["dependencies"][0]["lastEventTime"].startswith("20")
        [es] = _get(tf, "/api/v1/eventsources")
        [ev] = es["events"]
        assert (ev["name"], ev["type"], ev["status"]["state"]) == ("trigger", "webhook", "ready")
        assert ev["counts"]["total"] == {"published": 1}

        # the traces behind those counts, with filters by outcome, dependency, trigger
        [filtered] = _get(tf, "/api/v1/traces?outcome=filtered")
        assert filtered["sensor"] == "bert-only" and filtered["filtered"] is True
        assert any("body.model" in r for r in filtered["filters"]), filtered["filters"]
        [fired] = _get(tf, "/api/v1/traces?trigger=trigger-ml-pipeline")
        assert fired["outcome"] == "fired"
        params = {p["dest"]: (p["value"], p["source"]) for p in fired["triggers"][0]["parameters"]}
        assert params["spec.arguments.parameters.0.value"] == ("resnet", "dataKey")
        both = _get(tf, f"/api/v1/traces?eventId={fired['event_id']}")
        assert {t["sensor"] for t in both} == {"bert-only", "ml-pipeline-sensor"}
        assert _get(tf, "/api/v1/traces?dependency=training-event") == [fired]
        older = _get(tf, f"/api/v1/traces?before={max(t['seq'] for t in both)}")
        assert [t["seq"] for t in older] == [min(t["seq"] for t in both)]
        r = httpx.get(f"http://127.0.0.1:{tf.api_port}/api/v1/traces?outcome=maybe")
        assert r.status_code == 422
    finally:
        tf.stop()


def test_a_bus_outage_shows_as_not_ready_with_its_reason(
    tmp_path: Path, kube_api: Any, nats_server: EmbeddedNats
) -> None:
    tf, port = start_seed(tmp_path, kube_api, nats_url=nats_server.url)
    try:
        sensor_id = "sn:argo-events/ml-pipeline-sensor"

        def status(node_id: str) -> dict[str, str]:
            flow = _get(tf, "/api/v1/flow")
            sensors = {s["id"]: s["status"] for s in flow["sensors"]}
            return sensors[node_id] if node_id in sensors else node(flow, node_id)["status"]

        assert status(sensor_id) == {"state": "ready", "reason": ""}
        nats_server.stop()
        wait_for(lambda: status(sensor_id)["state"] == "not ready", timeout=15)
        assert "bus disconnected" in status(sensor_id)["reason"]
        assert status(SEED_EVENT) == {
            "state": "not ready",
            "reason": "bus disconnected: posts get 503",
        }
        r = httpx.get(f"http://127.0.0.1:{tf.api_port}/api/v1/deadletters")
        assert r.status_code == 503
        nats_server.start()  # same port and store
        wait_for(lambda: status(sensor_id)["state"] == "ready", timeout=30)
        post(port, {"model": "resnet", "dataset": "after-outage"})
        wait_for(lambda: len(workflows(kube_api)) == 1, timeout=15)
    finally:
        tf.stop()


def test_a_sensor_whose_bus_consumer_is_down_shows_why(
    tmp_path: Path, kube_api: Any, nats_server: EmbeddedNats
) -> None:
    """The bus stays connected but the EventBus stream (with the sensors' durable
    consumers) is deleted under the running process: each sensor is "not ready", the
    reason naming the dependency whose consumer cannot consume; once the stream is
    back the consumers are recreated and the sensor is ready and fires again."""
    tf, port = start_seed(tmp_path, kube_api, nats_url=nats_server.url)
    try:
        sensor_id = "sn:argo-events/ml-pipeline-sensor"

        def status() -> dict[str, str]:
            flow = _get(tf, "/api/v1/flow")
            return dict(next(s["status"] for s in flow["sensors"] if s["id"] == sensor_id))

        assert status() == {"state": "ready", "reason": ""}
        asyncio.run(_jetstream(nats_server.url, lambda js: js.delete_stream("default")))
        wait_for(lambda: status()["state"] == "not ready", timeout=20)
        reason = status()["reason"]
        assert reason.startswith("bus consumer of training-event down: "), reason
        [seed] = [s for s in _get(tf, "/api/v1/sensors") if s["name"] == "ml-pipeline-sensor"]
        assert seed["status"] == {"state": "not ready", "reason": reason}

        async def recreate() -> None:
            bus = Bus(BusSettings(), nats_server.url)
            await bus.connect()
            try:
                await bus.ensure_stream("default")
            finally:
                await bus.close()

        asyncio.run(recreate())
        wait_for(lambda: status() == {"state": "ready", "reason": ""}, timeout=30)
        post(port, {"model": "resnet", "dataset": "after-the-stream-came-back"})
        wait_for(lambda: len(workflows(kube_api)) == 1, timeout=15)
    finally:
        tf.stop()


async def _jetstream(url: str, act: Any) -> None:
    """Run ``act(jetstream)`` on a connection of its own (the process's is untouched)."""
    nc = await nats.connect(url)
    try:
        await act(nc.jetstream())
    finally:
        await nc.close()


def test_traces_survive_a_restart(tmp_path: Path, kube_api: Any) -> None:
    tf, port = start_seed(tmp_path, kube_api)
    try:
        post(port, {"model": "resnet", "dataset": "kept"})
        wait_for(lambda: len(_get(tf, "/api/v1/traces")) == 2, timeout=15)
        before = _get(tf, "/api/v1/traces")
    finally:
        tf.stop()
    tf, port = start_seed(tmp_path, kube_api)
    try:
        assert _get(tf, "/api/v1/traces") == before
        flow = _get(tf, "/api/v1/flow")
        # counts are this process's own (it has seen nothing yet); the objects are
        # remembered from the persisted traces
        assert node(flow, SEED_DEP)["counts"]["window"] == {}
        [wf] = workflows(kube_api)
        assert [o["name"] for o in node(flow, SEED_TRIGGER)["objects"]] == [wf["metadata"]["name"]]
    finally:
        tf.stop()


def test_a_dead_letter_is_listed_then_replayed_once(tmp_path: Path, kube_api: Any) -> None:
    tf, port = start_seed(tmp_path, kube_api)
    base = f"http://127.0.0.1:{tf.api_port}"
    try:
        kube_api.fault("POST", WORKFLOWS, status=403, times=1)  # permanent: dead-lettered
        post(port, {"model": "resnet", "dataset": "coco"})
        wait_for(lambda: _get(tf, "/api/v1/deadletters"), timeout=15)
        [dl] = _get(tf, "/api/v1/deadletters")
        assert (dl["sensor"], dl["trigger"], dl["attempts"]) == (
            "ml-pipeline-sensor",
            "trigger-ml-pipeline",
            1,
        )
        assert "403" in dl["error"] or "orbidden" in dl["error"], dl["error"]
        assert dl["events"]["training-event"]["data"]["body"]["dataset"] == "coco"
        assert _get(tf, f"/api/v1/deadletters/{dl['bus']}/{dl['seq']}") == dl
        assert _get(tf, "/api/v1/deadletters?sensor=bert-only") == []
        flow = _get(tf, "/api/v1/flow")
        trig = node(flow, SEED_TRIGGER)
        assert trig["counts"]["window"] == {"failed": 1, "deadLettered": 1}
        assert trig["status"]["state"] == "error"
        assert "403" in trig["status"]["reason"] or "orbidden" in trig["status"]["reason"]
        [seed] = [s for s in _get(tf, "/api/v1/sensors") if s["name"] == "ml-pipeline-sensor"]
        assert seed["triggers"][0]["lastError"] == trig["status"]["reason"]
        assert workflows(kube_api) == []
        [failed] = _get(tf, "/api/v1/traces?outcome=failed")
        assert failed["triggers"][0]["status"] == "dead-lettered"

        # a double click: two replays at once; one runs the trigger, the other finds the
        # dead letter gone; one Workflow
        url = f"{base}/api/v1/deadletters/{dl['bus']}/{dl['seq']}/replay"
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: httpx.post(url, timeout=30), range(2)))
        assert sorted(a.status_code for a in answers) == [200, 404], [a.text for a in answers]
        ok = next(a.json() for a in answers if a.status_code == 200)
        assert ok["replayed"] is True
        assert ok["trace"]["triggers"][0]["status"] == "succeeded"
        [wf] = workflows(kube_api)
        assert wf["spec"]["arguments"]["parameters"][1]["value"] == "coco"
        assert _get(tf, "/api/v1/deadletters") == []
        assert httpx.post(url).status_code == 404
        trig = node(_get(tf, "/api/v1/flow"), SEED_TRIGGER)
        assert trig["status"]["state"] == "ready"
        assert trig["counts"]["window"]["fired"] == 1
    finally:
        tf.stop()


def test_a_dead_letter_can_be_discarded(tmp_path: Path, kube_api: Any) -> None:
    tf, port = start_seed(tmp_path, kube_api)
    base = f"http://127.0.0.1:{tf.api_port}"
    try:
        kube_api.fault("POST", WORKFLOWS, status=403, times=1)
        post(port, {"model": "resnet", "dataset": "unwanted"})
        wait_for(lambda: _get(tf, "/api/v1/deadletters"), timeout=15)
        [dl] = _get(tf, "/api/v1/deadletters")
        assert "Forbidden" in dl["error"]
        url = f"{base}/api/v1/deadletters/{dl['bus']}/{dl['seq']}"
        assert httpx.delete(url).json() == {"discarded": dl["id"]}
        assert httpx.get(url).status_code == 404
        assert httpx.delete(url).status_code == 404
        assert httpx.post(f"{url}/replay").status_code == 404
        assert _get(tf, "/api/v1/deadletters") == []
        assert workflows(kube_api) == []
        # not a dead letter: an event's sequence number is refused the same way
        assert httpx.get(f"{base}/api/v1/deadletters/default/1").status_code == 404
        assert httpx.get(f"{base}/api/v1/deadletters/nosuchbus/1").status_code == 404
        assert httpx.get(f"{base}/api/v1/deadletters/default/0").status_code == 422
    finally:
        tf.stop()


def _dlq(tf: Any, *args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERFISH_")}
    if token:
        env["TRIGGERFISH_API_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "app.compose.cli", "dlq", "--api",
         f"http://127.0.0.1:{tf.api_port}", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )  # fmt: skip


def test_the_dlq_command(tmp_path: Path, kube_api: Any) -> None:
    tf, port = start_seed(tmp_path, kube_api, TRIGGERFISH_API_TOKEN="cli-t0ken")
    try:
        assert _dlq(tf, "list", token="cli-t0ken").stdout == "no dead letters\n"
        denied = _dlq(tf, "list")
        assert denied.returncode == 1
        assert denied.stderr == "triggerfish: error: 401: missing or wrong bearer token\n"
        kube_api.fault("POST", WORKFLOWS, status=403, times=2)
        post(port, {"model": "resnet", "dataset": "first"})
        post(port, {"model": "resnet", "dataset": "second"})
        wait_for(lambda: len(_dlq(tf, "list", token="cli-t0ken").stdout.splitlines()) == 2)
        lines = _dlq(tf, "list", "--sensor", "ml-pipeline-sensor", token="cli-t0ken").stdout
        ids = [line.split("\t")[0] for line in lines.splitlines()]
        assert all(
            "argo-events/ml-pipeline-sensor/trigger-ml-pipeline" in x for x in lines.splitlines()
        )
        shown = [json.loads(_dlq(tf, "show", i, token="cli-t0ken").stdout) for i in ids]
        by_dataset = {s["events"]["training-event"]["data"]["body"]["dataset"]: s for s in shown}
        replay = _dlq(tf, "replay", by_dataset["first"]["id"], token="cli-t0ken")
        assert replay.returncode == 0, replay.stderr
        [wf] = workflows(kube_api)
        assert replay.stdout.startswith(f"replayed {by_dataset['first']['id']}: created Workflow")
        assert wf["metadata"]["name"] in replay.stdout
        again = _dlq(tf, "replay", by_dataset["first"]["id"], token="cli-t0ken")
        assert again.returncode == 1 and "404" in again.stderr
        gone = _dlq(tf, "discard", by_dataset["second"]["id"], token="cli-t0ken")
        assert gone.stdout == f"discarded {by_dataset['second']['id']}\n"
        assert _dlq(tf, "list", token="cli-t0ken").stdout == "no dead letters\n"
        assert len(workflows(kube_api)) == 1
        bad = _dlq(tf, "show", "default", token="cli-t0ken")
        assert bad.returncode == 2 and "expected BUS:SEQ" in bad.stderr
    finally:
        tf.stop()


def test_same_named_sources_in_two_namespaces_are_counted_apart(tmp_path: Path) -> None:
    """``push`` exists in ``team-a`` and ``team-b``: an event to one counts for that one."""
    from tests.support.net import free_port

    ports = {"team-a": free_port(), "team-b": free_port()}
    docs = [
        f"""apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {{name: push, namespace: {ns}}}
spec:
  webhook:
    hook: {{port: "{port}", endpoint: /hook, method: POST}}
"""
        for ns, port in ports.items()
    ]
    (tmp_path / "two.yaml").write_text("---\n".join(docs))
    tf = Triggerfish(files=[str(tmp_path / "two.yaml")], state_dir=tmp_path / "state").start()
    try:
        r = httpx.post(f"http://127.0.0.1:{ports['team-a']}/hook", json={"n": 1})
        assert r.status_code == 200, r.text

        def counts() -> dict[str, Any]:
            out = {}
            for es in _get(tf, "/api/v1/eventsources"):
                [ev] = es["events"]
                out[es["namespace"]] = ev["counts"]["total"]
            return out

        wait_for(lambda: counts()["team-a"] == {"published": 1}, timeout=10)
        assert counts() == {"team-a": {"published": 1}, "team-b": {}}
    finally:
        tf.stop()


def test_a_source_that_cannot_listen_does_not_stop_the_others(tmp_path: Path) -> None:
    """``held``'s port is taken by the test: ``triggerfish run`` starts anyway, ``free``
    and its sensor work, ``held`` shows why it is not listening (page API, readiness),
    and it starts listening once the port is released."""
    import socket

    from tests.support.net import free_port

    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    held_port, free = blocker.getsockname()[1], free_port()
    docs = [
        f"""apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {{name: {name}, namespace: team}}
spec:
  webhook:
    hook: {{port: "{port}", endpoint: /hook, method: POST}}
"""
        for name, port in (("held", held_port), ("free", free))
    ]
    docs.append(
        """apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {name: on-free, namespace: team}
spec:
  dependencies:
    - {name: dep, eventSourceName: free, eventName: hook}
  triggers:
    - template: {name: note, log: {}}
"""
    )
    (tmp_path / "m.yaml").write_text("---\n".join(docs))

    def started(tf: Triggerfish) -> bool:
        if tf.proc is None or tf.proc.poll() is not None:
            raise AssertionError(f"triggerfish exited:\n{tf.log()}")
        r = httpx.get(f"http://127.0.0.1:{tf.api_port}/readyz", timeout=1)
        return r.status_code == 503 and bool(r.json().get("sourceErrors"))

    tf = Triggerfish(files=[str(tmp_path / "m.yaml")], state_dir=tmp_path / "state")
    tf.start(until=started)
    try:
        ready = httpx.get(f"http://127.0.0.1:{tf.api_port}/readyz", timeout=5)
        assert ready.status_code == 503
        [(who, why)] = ready.json()["sourceErrors"].items()
        assert who == "team/held (webhook)"
        assert why.startswith(f"cannot listen on 127.0.0.1:{held_port}: ")
        assert "in use" in why
        by_name = {es["name"]: es for es in _get(tf, "/api/v1/eventsources")}
        [held] = by_name["held"]["events"]
        assert held["status"]["state"] == "error"
        assert held["status"]["reason"] == why
        [ok] = by_name["free"]["events"]
        assert ok["status"] == {"state": "ready", "reason": ""}
        # the other source and its sensor work meanwhile
        r = httpx.post(f"http://127.0.0.1:{free}/hook", json={"n": 1}, timeout=10)
        assert r.status_code == 200, r.text
        wait_for(lambda: _get(tf, "/api/v1/traces?sensor=on-free"), timeout=10)
        [trace] = _get(tf, "/api/v1/traces?sensor=on-free")
        assert trace["outcome"] == "fired"
        # the port is freed: the source binds it on a retry, and the process is ready
        blocker.close()
        wait_for(tf.is_ready, timeout=40)
        [held] = {es["name"]: es for es in _get(tf, "/api/v1/eventsources")}["held"]["events"]
        assert held["status"] == {"state": "ready", "reason": ""}
        r = httpx.post(f"http://127.0.0.1:{held_port}/hook", json={"n": 2}, timeout=10)
        assert r.status_code == 200, r.text
    finally:
        blocker.close()
        tf.stop()
