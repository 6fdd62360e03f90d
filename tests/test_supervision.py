"""One instance per state directory, and a supervised embedded bus, in real processes.

* A second ``triggerfish run`` on a state directory in use refuses with one line naming
  the holder's PID, exits non-zero, and leaves the first instance and its nats-server
  alone (it used to take that server for a leftover and kill it); a server whose owner
  is dead is still found and replaced.
* SIGKILL of the embedded nats-server mid-burst: Triggerfish starts it again on the same
  store and port, and every event answered 200 before, during or after produces exactly
  one Workflow. A round of a two-dependency sensor half stored when the server dies
  completes once after the restart: its state bucket and both consumers resume.
* A server that cannot come back (broken store, then its port taken): ``/readyz`` and
  posts say 503 meanwhile, ``/healthz`` fails after ``unhealthy_after_seconds``; once the
  store is back the server starts on a new port, the connection follows, and everything
  answered 200 is processed once.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.adapters.natsserver import find_binary, kill_pid
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish
from tests.test_seed_e2e import SEED, list_workflows, params_of

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _nats_pid(tf: Triggerfish) -> int:
    return int((tf.state_dir / "nats" / "nats-server.pid").read_text())


def _nats_urls(tf: Triggerfish) -> list[str]:
    """Every URL the embedded server was (re)started on, from the log, in order."""
    text = tf.log_path.read_text(errors="replace") if tf.log_path else ""
    return re.findall(r"nats-server (?:\(JetStream\) on|restarted \(pid \d+\) on) (nats://[\d.:]+)",
                      text)  # fmt: skip


def _start(tmp_path: Path, kube_api: Any, **env: str) -> tuple[Triggerfish, str]:
    port = free_port()
    tf = Triggerfish(
        files=[str(SEED)],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        port_map={12000: port},
        extra_env=env,
    ).start()
    return tf, f"http://127.0.0.1:{port}/trigger"


def _post(url: str, model: str) -> httpx.Response:
    return httpx.post(url, json={"model": model, "dataset": "d"}, timeout=15)


def _assert_each_once(kube_api: Any, tf: Triggerfish, want: set[str]) -> None:
    def settled() -> bool:
        return want <= {params_of(w)["model"] for w in list_workflows(kube_api)}

    try:
        wait_for(settled, timeout=60, interval=0.5)
    except TimeoutError:
        got = {params_of(w)["model"] for w in list_workflows(kube_api)}
        raise AssertionError(f"lost: {sorted(want - got)[:10]}\n{tf.log()}") from None
    counts = collections.Counter(params_of(w)["model"] for w in list_workflows(kube_api))
    dupes = {m: c for m, c in counts.items() if c > 1}
    assert not dupes, f"duplicated: {dupes}"


@pytest.mark.slow
def test_second_instance_on_same_state_dir_refuses_and_touches_nothing(
    tmp_path: Path, kube_api: Any
) -> None:
    tf, url = _start(tmp_path, kube_api)
    try:
        assert tf.proc is not None
        nats_pid = _nats_pid(tf)
        second = subprocess.run(
            [sys.executable, "-m", "app.compose.cli", "run", "--state-dir", str(tf.state_dir),
             "--api-port", str(free_port()), "--port-map", f"12000={free_port()}",
             "-f", str(SEED)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
            env={**os.environ, "HOME": str(tf.state_dir), "KUBECONFIG": str(kube_api.kubeconfig)},
        )  # fmt: skip
        out = (second.stdout + second.stderr).strip().splitlines()
        assert second.returncode != 0
        assert len(out) == 1, out
        assert f"pid {tf.proc.pid}" in out[0] and str(tf.state_dir) in out[0], out
        # the first instance and its server are untouched and still serve
        assert _alive(nats_pid) and _nats_pid(tf) == nats_pid
        assert (tf.state_dir / "triggerfish.lock").read_text().strip() == str(tf.proc.pid)
        assert _post(url, "after-second").status_code == 200
        _assert_each_once(kube_api, tf, {"after-second"})
        assert "restart" not in tf.log(), tf.log()
    finally:
        assert tf.stop() == 0, tf.log()
    # the lock went with the process: the same state dir starts again
    tf2, url2 = _start(tmp_path, kube_api)
    try:
        assert _post(url2, "third").status_code == 200
    finally:
        tf2.stop()


@pytest.mark.slow
def test_server_left_behind_by_a_dead_instance_is_replaced(tmp_path: Path, kube_api: Any) -> None:
    store = (tmp_path / "state" / "nats").resolve()
    store.mkdir(parents=True)
    # what a SIGKILLed instance can leave: its server on this store, its PID file
    orphan = subprocess.Popen(
        [find_binary(), "-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-js",
         "-sd", str(store / "jetstream")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    (store / "nats-server.pid").write_text(str(orphan.pid))
    try:
        tf, url = _start(tmp_path, kube_api)
        try:
            assert orphan.wait(timeout=15) is not None  # stopped: no live owner held the lock
            assert _nats_pid(tf) != orphan.pid
            assert "left behind by an earlier run" in tf.log()
            assert _post(url, "fresh").status_code == 200
            _assert_each_once(kube_api, tf, {"fresh"})
        finally:
            tf.stop()
    finally:
        kill_pid(orphan.pid)


@pytest.mark.slow
def test_embedded_nats_sigkill_mid_burst_is_restarted_and_nothing_is_lost(
    tmp_path: Path, kube_api: Any
) -> None:
    tf, url = _start(tmp_path, kube_api)
    n = 400
    accepted: list[str] = []
    killed: list[int] = []

    async def burst() -> None:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(15, pool=None)) as c:

            async def one(i: int) -> None:
                try:
                    r = await c.post(url, json={"model": f"m{i}", "dataset": "d"})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    accepted.append(f"m{i}")

            async def killer() -> None:
                while len(accepted) < n // 4:
                    await asyncio.sleep(0.005)
                pid = _nats_pid(tf)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

            await asyncio.gather(killer(), *(one(i) for i in range(n)))

    try:
        asyncio.run(burst())
        assert killed and accepted, tf.log()
        wait_for(lambda: _post(url, "after").status_code == 200, timeout=30, interval=0.25)
        accepted.append("after")
        assert _nats_pid(tf) != killed[0] and not _alive(killed[0])
        urls = _nats_urls(tf)
        assert len(urls) == 2 and urls[0] == urls[1], urls  # same port after the restart
        _assert_each_once(kube_api, tf, set(accepted))
        metrics = httpx.get(f"http://127.0.0.1:{tf.api_port}/metrics", timeout=5).text
        assert "triggerfish_bus_server_restarts_total 1.0" in metrics
        assert httpx.get(f"http://127.0.0.1:{tf.api_port}/healthz", timeout=5).status_code == 200
    finally:
        assert tf.stop() == 0, tf.log()


@pytest.mark.slow
def test_bus_that_cannot_restart_is_reported_then_recovers_on_a_new_port(
    tmp_path: Path, kube_api: Any
) -> None:
    tf, url = _start(tmp_path, kube_api, TRIGGERFISH_BUS__UNHEALTHY_AFTER_SECONDS="2")
    api = f"http://127.0.0.1:{tf.api_port}"
    store = tf.state_dir / "nats" / "jetstream"
    aside = tf.state_dir / "nats" / "jetstream.aside"
    squatter = socket.socket()
    try:
        assert _post(url, "before").status_code == 200
        old_port = int(_nats_urls(tf)[0].rsplit(":", 1)[1])
        store.rename(aside)
        store.write_text("not a directory")  # the server cannot start on this
        os.kill(_nats_pid(tf), signal.SIGKILL)

        def restarting() -> bool:
            r = httpx.get(f"{api}/readyz", timeout=5)
            # not ready at once (connection lost); "restarting" once the supervisor has
            # seen the process exit
            return r.status_code == 503 and r.json()["busServer"] == "restarting"

        wait_for(restarting, timeout=15)
        r = _post(url, "during")
        assert r.status_code == 503 and r.headers.get("Retry-After"), r.text
        metrics = httpx.get(f"{api}/metrics", timeout=5).text
        assert 'triggerfish_bus_publish_rejected_total{eventbus_name="default",' \
               'reason="unavailable"} 1.0' in metrics, metrics  # fmt: skip
        wait_for(lambda: httpx.get(f"{api}/healthz", timeout=5).status_code == 503, timeout=30)

        # its port is taken meanwhile, then the store comes back
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen(1)
        store.unlink()
        aside.rename(store)

        wait_for(lambda: httpx.get(f"{api}/readyz", timeout=5).status_code == 200, timeout=30)
        assert httpx.get(f"{api}/healthz", timeout=5).status_code == 200
        wait_for(lambda: _post(url, "after").status_code == 200, timeout=30, interval=0.25)
        urls = _nats_urls(tf)
        assert len(urls) == 2 and urls[1] != urls[0], urls
        _assert_each_once(kube_api, tf, {"before", "after"})
        assert "during" not in {params_of(w)["model"] for w in list_workflows(kube_api)}
        log = tf.log()
        assert log.count("did not restart") < 20, log  # retries back off: bounded log
    finally:
        squatter.close()
        assert tf.stop() == 0, tf.log()


@pytest.mark.slow
def test_stop_while_the_bus_cannot_restart_exits_cleanly(tmp_path: Path, kube_api: Any) -> None:
    tf, _ = _start(tmp_path, kube_api)
    store = tf.state_dir / "nats" / "jetstream"
    store.rename(tf.state_dir / "nats" / "jetstream.aside")
    store.write_text("not a directory")
    os.kill(_nats_pid(tf), signal.SIGKILL)
    wait_for(lambda: "did not restart" in tf.log(), timeout=15)
    assert tf.stop() == 0, tf.log()
    assert not (tf.state_dir / "nats" / "nats-server.pid").exists()
    assert "stopped" in tf.log()


AND_MANIFESTS = """\
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: webhook, namespace: argo-events}
spec:
  webhook:
    model: {port: "12000", endpoint: /model, method: POST}
    data: {port: "12000", endpoint: /data, method: POST}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {name: both, namespace: argo-events}
spec:
  dependencies:
    - {name: m, eventSourceName: webhook, eventName: model}
    - {name: d, eventSourceName: webhook, eventName: data}
  triggers:
    - template:
        name: run
        conditions: "m && d"
        k8s:
          operation: create
          source:
            resource:
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              metadata: {generateName: both-}
              spec:
                arguments:
                  parameters: [{name: model, value: none}, {name: dataset, value: none}]
          parameters:
            - src: {dependencyName: m, dataKey: body.model}
              dest: spec.arguments.parameters.0.value
            - src: {dependencyName: d, dataKey: body.dataset}
              dest: spec.arguments.parameters.1.value
"""


@pytest.mark.slow
def test_a_round_half_done_when_the_embedded_nats_dies_completes_once_after_its_restart(
    tmp_path: Path, kube_api: Any
) -> None:
    """The supervised restart brings back the sensor's condition state (its KV bucket)
    and both dependencies' durable consumers: the half of a round stored before the
    SIGKILL and the half posted after it fire together, once, and the next round too."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for f in SEED.glob("*.yaml"):  # the EventBus, template and RBAC of the seed
        if not re.search(r"^kind: (EventSource|Sensor)$", f.read_text(), re.M):
            (manifests / f.name).write_text(f.read_text())
    (manifests / "and.yaml").write_text(AND_MANIFESTS)
    port = free_port()
    tf = Triggerfish(
        files=[str(manifests)],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        port_map={12000: port},
    ).start()
    base = f"http://127.0.0.1:{port}"
    api = f"http://127.0.0.1:{tf.api_port}"

    def post(path: str, body: dict[str, str]) -> int:
        return httpx.post(f"{base}/{path}", json=body, timeout=15).status_code

    def rounds() -> collections.Counter[tuple[str, str]]:
        return collections.Counter(
            (params_of(w)["model"], params_of(w)["dataset"]) for w in list_workflows(kube_api)
        )

    try:
        assert post("model", {"model": "r0"}) == 200
        traces = f"{api}/api/v1/traces"
        wait_for(lambda: len(httpx.get(traces, timeout=5).json()) == 1, timeout=30, interval=0.1)
        killed = _nats_pid(tf)
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: _nats_pid(tf) != killed, timeout=30, interval=0.1)
        wait_for(lambda: post("data", {"dataset": "d0"}) == 200, timeout=30, interval=0.25)
        wait_for(lambda: sum(rounds().values()) == 1, timeout=60, interval=0.25)
        assert post("model", {"model": "r1"}) == 200
        assert post("data", {"dataset": "d1"}) == 200
        wait_for(lambda: sum(rounds().values()) == 2, timeout=60, interval=0.25)
        wait_for(lambda: len(httpx.get(traces, timeout=5).json()) >= 4, timeout=30, interval=0.1)
        assert rounds() == {("r0", "d0"): 1, ("r1", "d1"): 1}, tf.log()
        assert not _alive(killed)
        metrics = httpx.get(f"{api}/metrics", timeout=5).text
        assert "triggerfish_bus_server_restarts_total 1.0" in metrics
    finally:
        assert tf.stop() == 0, tf.log()
