"""Leader election on a ``coordination.k8s.io/v1`` Lease, against the fake API server.

First :class:`app.adapters.lease.LeaderLease` on its own (two candidates in one test,
each with its own API client, real HTTP): one wins, the other waits out the lease,
a release hands over at once, concurrent candidates never both win a round, a leader
that finds another holder stops, and :meth:`LeaderLease.lead` cancels the work when
the lease is lost and runs it again when won back. Then two ``triggerfish
controller`` processes: one reconciles, the other only polls the Lease; SIGKILL the
leader and the standby takes over after the lease expired, creating what was added
meanwhile and rewriting nothing the first one did (the fake API's request log, by
``User-Agent``, shows who did what).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.adapters.kube import ApiKube
from app.adapters.lease import LeaderLease, LeaseTiming, parse_micro_time
from app.kernel.errors import ConfigError
from app.kernel.settings import KubeSettings
from tests.support.net import wait_for
from tests.support.sensors import eventually

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "ml-pipeline"
NS = "argo-events"
FAST = LeaseTiming(lease_duration_seconds=1.5, renew_deadline_seconds=1.0, retry_period_seconds=0.2)


@pytest.fixture
async def clients(kube_api: Any) -> AsyncIterator[list[ApiKube]]:
    """Three independent API clients (one per candidate, one for the test's own reads)."""
    kubes = []
    for _ in range(3):
        k = ApiKube.from_settings(KubeSettings(kubeconfig=str(kube_api.kubeconfig)))
        assert k is not None
        kubes.append(k)
    try:
        yield kubes
    finally:
        for k in kubes:
            await k.close()


async def lease_spec(kube: ApiKube, name: str = "elect", ns: str = "default") -> dict[str, Any]:
    obj = await kube.get("coordination.k8s.io/v1", "Lease", name, ns)
    assert obj is not None
    return dict(obj["spec"])


def test_timing_is_checked_like_client_go() -> None:
    LeaseTiming()  # 15 / 10 / 2
    with pytest.raises(ConfigError, match="greater than the renew deadline"):
        LeaseTiming(lease_duration_seconds=10, renew_deadline_seconds=10)
    with pytest.raises(ConfigError, match=r"1\.2 x the retry period"):
        LeaseTiming(lease_duration_seconds=10, renew_deadline_seconds=2, retry_period_seconds=2)


async def test_one_wins_the_other_waits_out_the_lease(clients: list[ApiKube]) -> None:
    a = LeaderLease(clients[0], "elect", "default", "a", FAST)
    b = LeaderLease(clients[1], "elect", "default", "b", FAST)
    assert await a.try_acquire_or_renew()
    assert a.is_leader.is_set()
    first = await lease_spec(clients[2])
    assert first["holderIdentity"] == "a" and first["leaseTransitions"] == 0
    assert first["leaseDurationSeconds"] == 2  # whole seconds on the wire, rounded
    assert not await b.try_acquire_or_renew()  # held, not expired
    assert await a.renew()
    renewed = await lease_spec(clients[2])
    assert renewed["acquireTime"] == first["acquireTime"]
    assert parse_micro_time(renewed["renewTime"]) > parse_micro_time(first["renewTime"])
    # a stops renewing (as if it died): b gets it once it saw the record unchanged for
    # the lease duration, not before
    assert not await b.try_acquire_or_renew()
    t0 = time.monotonic()
    await asyncio.wait_for(b.acquire(), timeout=30)
    waited = time.monotonic() - t0
    spec = await lease_spec(clients[2])
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    assert waited >= FAST.lease_duration_seconds - FAST.retry_period_seconds * 1.2
    assert parse_micro_time(spec["acquireTime"]) - parse_micro_time(renewed["renewTime"]) >= 1.5
    # the old holder, back again, sees b's lease and loses at once
    assert not await a.renew()
    assert a.lost.is_set() and not a.is_leader.is_set()


async def test_release_hands_over_at_once(clients: list[ApiKube]) -> None:
    a = LeaderLease(clients[0], "elect", "default", "a", FAST)
    b = LeaderLease(clients[1], "elect", "default", "b", FAST)
    await a.acquire()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert not a.is_leader.is_set()
    assert (await lease_spec(clients[2]))["holderIdentity"] == ""
    assert await b.try_acquire_or_renew()  # no waiting: the holder is empty
    spec = await lease_spec(clients[2])
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    await a.release()  # not the holder: touches nothing
    assert (await lease_spec(clients[2]))["holderIdentity"] == "b"


async def test_concurrent_candidates_never_both_win(clients: list[ApiKube]) -> None:
    a = LeaderLease(clients[0], "elect", "default", "a", FAST)
    b = LeaderLease(clients[1], "elect", "default", "b", FAST)
    wins: collections.Counter[str] = collections.Counter()
    for _ in range(15):
        won = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
        assert won.count(True) <= 1, won  # a stale resourceVersion gets 409, never a win
        holder = (await lease_spec(clients[2]))["holderIdentity"]
        if any(won):
            wins["a" if won[0] else "b"] += 1
            assert holder == ("a" if won[0] else "b")
        for cand in (a, b):  # hand the lease back for the next round
            await cand.release()
    assert sum(wins.values()) >= 1


async def test_leader_stops_when_another_holds_the_lease(clients: list[ApiKube]) -> None:
    a = LeaderLease(clients[0], "elect", "default", "a", FAST)
    await a.acquire()
    lease = await clients[2].get("coordination.k8s.io/v1", "Lease", "elect", "default")
    assert lease is not None
    lease["spec"]["holderIdentity"] = "intruder"
    await clients[2].update(lease, "default")
    assert not await a.renew()
    assert a.lost.is_set() and not a.is_leader.is_set()


async def test_lead_cancels_the_work_on_loss_and_runs_it_again_when_won_back(
    clients: list[ApiKube],
) -> None:
    a = LeaderLease(clients[0], "elect", "default", "a", FAST)
    intruder = LeaderLease(clients[1], "elect", "default", "intruder", FAST)
    started: list[float] = []
    cancelled: list[float] = []

    async def work() -> None:
        started.append(time.monotonic())
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(time.monotonic())
            raise

    task = asyncio.create_task(a.lead(work))
    try:
        await eventually(lambda: len(started) == 1, "work started")
        # someone else takes the lease over (as after a long pause of a): a must stop
        lease = await clients[2].get("coordination.k8s.io/v1", "Lease", "elect", "default")
        assert lease is not None
        lease["spec"]["holderIdentity"] = "intruder"
        await clients[2].update(lease, "default")
        await eventually(lambda: len(cancelled) == 1, "work cancelled", timeout=10)
        assert not a.is_leader.is_set()
        # the intruder hands it back: a leads again and starts the work once more
        intruder.is_leader.set()
        await intruder.release()
        await eventually(lambda: len(started) == 2, "work started again", timeout=10)
        assert (await lease_spec(clients[2]))["holderIdentity"] == "a"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(cancelled) == 2
    assert (await lease_spec(clients[2]))["holderIdentity"] == "", "released on cancel"


# -- two controller processes -----------------------------------------------------------

LEASE_SECONDS = 3.0
CONTROLLER_ENV = {
    "TRIGGERFISH_CONTROLLER_LEASE_DURATION_SECONDS": str(LEASE_SECONDS),
    "TRIGGERFISH_CONTROLLER_RENEW_DEADLINE_SECONDS": "2",
    "TRIGGERFISH_CONTROLLER_RETRY_PERIOD_SECONDS": "0.5",
    "TRIGGERFISH_CONTROLLER_WATCH_TIMEOUT_SECONDS": "5",
    "TRIGGERFISH_CONTROLLER_RETRY_DELAY_SECONDS": "0.2",
    "TRIGGERFISH_CONTROLLER_LEASE_NAMESPACE": NS,
    "TRIGGERFISH_API_PORT": "0",
}


class ControllerProcess:
    """One ``triggerfish controller`` child named ``identity``, stopped by PID."""

    def __init__(self, identity: str, kubeconfig: Path, workdir: Path) -> None:
        self.identity = identity
        self.log_path = workdir / f"controller-{identity}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERFISH_")}
        env.pop("KUBECONFIG", None)
        env.update(CONTROLLER_ENV, KUBECONFIG=str(kubeconfig), HOME=str(workdir),
                   TRIGGERFISH_CONTROLLER_IDENTITY=identity)  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "app.compose.cli", "controller"], env=env, cwd=str(REPO),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sensor_named(name: str) -> str:
    doc = yaml.safe_load((SEED / "sensor.yaml").read_text())
    doc["metadata"]["name"] = name
    return json.dumps(doc)


@pytest.mark.slow
def test_standby_controller_takes_over_from_a_killed_leader_without_double_work(
    kube_api: Any, tmp_path: Path
) -> None:
    kube_api.create_namespace(NS)
    server = kube_api.server

    def lease() -> dict[str, Any]:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/triggerfish-controller"
        return dict(server.request("GET", path))

    def holder() -> str:
        return str((lease().get("spec") or {}).get("holderIdentity") or "")

    def names(collection: str) -> set[str]:
        return {o["metadata"]["name"] for o in server.request("GET", collection)["items"]}

    deployments = f"/apis/apps/v1/namespaces/{NS}/deployments"
    a = ControllerProcess("ctl-a", kube_api.kubeconfig, tmp_path)
    b: ControllerProcess | None = None
    try:
        wait_for(lambda: holder() == "ctl-a", timeout=30, interval=0.1)
        b = ControllerProcess("ctl-b", kube_api.kubeconfig, tmp_path)

        def by(identity: str, since: int = 0) -> list[dict[str, Any]]:
            return [r for r in server.requests(since) if r["userAgent"].endswith(f"/{identity}")]

        # b polls the Lease a few times while a leads and reconciles the seed
        kube_api.kubectl("apply", "-n", NS, "-f", str(SEED))
        wait_for(lambda: "ml-pipeline-sensor-sensor" in names(deployments), timeout=30)
        wait_for(lambda: len(by("ctl-b")) >= 6, timeout=30, interval=0.1)
        before_kill = lease()["spec"]
        assert before_kill["holderIdentity"] == "ctl-a"
        kill_seq = server.requests()[-1]["seq"]
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGKILL)
        t_kill = time.time()
        a.stop()  # reaps it
        last_renew_by_a = lease()["spec"]["renewTime"]
        kube_api.kubectl("apply", "-n", NS, "-f", "-", input=_sensor_named("second"))

        wait_for(lambda: "second-sensor" in names(deployments), timeout=60, interval=0.1)
        after = lease()["spec"]
        assert after["holderIdentity"] == "ctl-b", b.log()
        assert after["leaseTransitions"] == before_kill["leaseTransitions"] + 1
        took_over = parse_micro_time(after["acquireTime"])
        # safety: b waited out the lease after a's last renewal (no overlap)
        assert took_over - parse_micro_time(last_renew_by_a) >= LEASE_SECONDS - 0.1
        print(f"\ntakeover {took_over - t_kill:.2f}s after the SIGKILL "
              f"(lease {LEASE_SECONDS}s, retry 0.5s)")  # fmt: skip

        requests = server.requests()
        # while a led, b only ever touched the Lease (and discovery of its group)
        b_before = [r for r in requests if r["seq"] <= kill_seq and "/ctl-b" in r["userAgent"]]
        assert b_before and all("coordination.k8s.io" in r["path"] for r in b_before), b_before
        a_work = [r for r in requests if "/ctl-a" in r["userAgent"] and "/leases" not in r["path"]]
        assert any(r["method"] == "POST" for r in a_work), "a did the work while leading"
        # every child was created exactly once: POSTs per collection == objects in it
        posts = collections.Counter(
            r["path"] for r in requests if r["method"] == "POST" and "/leases" not in r["path"]
        )
        for collection, n in posts.items():
            if collection.endswith("/namespaces"):
                continue
            assert n == len(names(collection)), (collection, n, names(collection))
        assert names(deployments) == {"webhook-eventsource", "ml-pipeline-sensor-sensor",
                                      "second-sensor"}  # fmt: skip
        assert posts[deployments] == 3
        # b re-listed what a had done and found it converged: no write touches it
        b_writes = [r for r in by("ctl-b", kill_seq) if r["method"] in ("PUT", "PATCH", "DELETE")
                    and "/leases" not in r["path"]]  # fmt: skip
        assert all("second" in r["path"] for r in b_writes), b_writes
    finally:
        a.stop()
        if b is not None:
            b.stop()
