"""bench/e2e: webhook → sensor → object created, measured against the API's own ceiling.

One run, against one API server (the fake API by default, any cluster with
``--kubeconfig``), measures:

- **(c) the ceiling**: raw ``Workflow`` creates from this process through the same
  client (:class:`app.adapters.kube.ApiKube`) with the same in-flight limit as the
  sensor, for ``--seconds``: what the API server accepts from one Python client;
  measured again (c') after the end-to-end runs, so drift on a shared machine shows;
- **(t) the end-to-end rate**: ``triggerfish run`` (embedded JetStream) on the
  ml-pipeline example, a load generator posting to its webhook above the ceiling
  (``--rate``, default 1.5 x c); t is the rate of objects created over the offered
  window (after its first second), counted by a watch the bench holds on the run's
  Workflows (also open while (c) runs), and **t/c** the figure to watch; when a
  backlog was left once the posts stopped, **(d)** its drain rate (the sensor and the
  API alone, no ingest competing for the cores) and d/c;
  the backlog (accepted posts - created objects) is printed every second;
- **(s) the highest rate sustained**: runs offered from half of t upwards in steps of
  20 % until one falls behind; s is what the last run that kept up created per second,
  and **s/c** its ratio (each step prints its CPU per event, split by process);
- **receipt → create latency** p50/p99 at 30 % of t (a second, lighter run): from the
  event's CloudEvent time (the webhook's receipt; a ``contextKey`` parameter puts it on
  the Workflow) to the ``events.argoproj.io/action-timestamp`` label the trigger sets
  just before its create request, and to the moment a watch on the Workflows (opened by
  the bench) sees the object: stored by the API server, visible to any client.

``--pods`` runs the same (t), (d) and latency phases with Triggerfish as it is
deployed in a cluster instead of ``triggerfish run``: a ``nats-server`` with JetStream,
the manifests applied to the API server, and the ``triggerfish eventsource`` and
``triggerfish sensor`` pod roles as two processes (so the webhook and the sensor each
have an event loop of their own); their CPU and the nats-server's are what is counted.

``--sensors 1,10,100`` instead runs one Triggerfish per count, with that many Sensors
(each its own dependency on its own event name of one webhook EventSource) and the
same total offered rate spread over them, and prints the e2e rate and the CPU time per
event of the triggerfish process (+ its nats-server) for each count.

    python -m bench.e2e [--seconds 8] [--rate R] [--in-flight 64] [--concurrency 64]
                        [--pods | --sensors 1,10,100] [--kubeconfig PATH --namespace NS]

With ``--kubeconfig`` the cluster needs the ``argoproj.io`` ``Workflow`` CRD; the
Workflows are created suspended (an Argo controller, if any, runs no pods), labelled
with the run's id, and deleted at the end, as is the namespace if the bench created it.
Traffic of the default run goes only to 127.0.0.1; every process started is stopped by
PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

from app.adapters.kube import ApiKube
from app.kernel.errors import TriggerfishError
from app.kernel.settings import KubeSettings
from bench._common import cpu_seconds, percentile, run_loop
from tests.fakekube.kubeconfig import write_kubeconfig
from tests.fakekube.process import FakeKubeServer
from tests.support.natspeer import NatsPeer
from tests.support.net import free_port
from tests.support.proc import Triggerfish
from tests.test_podroles import RoleProc

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ml-pipeline"
WF_API = "argoproj.io/v1alpha1"
RUN_LABEL = "bench.triggerfish.io/run"
EVENT_TIME = "bench/event-time"
PORT = 12000
T = TypeVar("T")


# -- manifests ---------------------------------------------------------------------------


def _workflow_resource(run_id: str) -> dict[str, Any]:
    """The example's Workflow, suspended and labelled with the run."""
    sensor = yaml.safe_load((EXAMPLE / "sensor.yaml").read_text())
    k8s = sensor["spec"]["triggers"][0]["template"]["k8s"]
    res: dict[str, Any] = k8s["source"]["resource"]
    res["metadata"]["labels"] = {RUN_LABEL: run_id}
    res["spec"]["suspend"] = True
    return res


def _manifests(workdir: Path, namespace: str, sensors: int, run_id: str) -> Path:
    """EventBus, a webhook EventSource with one event per sensor, and ``sensors`` copies of
    the example's Sensor (each on its own event), recording the event time."""
    dst = workdir / f"manifests-{sensors}"
    dst.mkdir(parents=True)
    bus = yaml.safe_load((EXAMPLE / "eventbus.yaml").read_text())
    bus["metadata"]["namespace"] = namespace
    es = yaml.safe_load((EXAMPLE / "event-source.yaml").read_text())
    es["metadata"]["namespace"] = namespace
    names = ["trigger"] if sensors == 1 else [f"e{i}" for i in range(sensors)]
    es["spec"]["webhook"] = {
        n: {"port": str(PORT), "endpoint": f"/{n}", "method": "POST"} for n in names
    }
    template = yaml.safe_load((EXAMPLE / "sensor.yaml").read_text())
    docs: list[dict[str, Any]] = [bus, es]
    for i, n in enumerate(names):
        s = yaml.safe_load(yaml.safe_dump(template))
        s["metadata"]["namespace"] = namespace
        if sensors > 1:
            s["metadata"]["name"] = f"{template['metadata']['name']}-{i}"
        s["spec"]["dependencies"][0]["eventName"] = n
        k8s = s["spec"]["triggers"][0]["template"]["k8s"]
        k8s["source"]["resource"] = _workflow_resource(run_id)
        k8s["parameters"].append(
            {
                "src": {"dependencyName": "training-event", "contextKey": "time"},
                "dest": f"metadata.annotations.{EVENT_TIME}",
            }
        )
        docs.append(s)
    (dst / "all.yaml").write_text(yaml.safe_dump_all(docs))
    return dst


# -- the API server ----------------------------------------------------------------------


@dataclass
class Target:
    """The API server the run measures, and what to clean up."""

    kubeconfig: Path
    namespace: str
    run_id: str
    in_flight: int
    server: FakeKubeServer | None = None
    created_namespace: bool = False
    where: str = ""

    def client(self) -> ApiKube:
        api = ApiKube.from_settings(
            KubeSettings(kubeconfig=str(self.kubeconfig), max_in_flight=self.in_flight)
        )
        assert api is not None
        return api


async def _prepare_namespace(target: Target) -> None:
    api = target.client()
    try:
        target.created_namespace = await api.ensure_namespace(target.namespace)
        try:
            await api.list(WF_API, "Workflow", target.namespace, label_selector=RUN_LABEL)
        except TriggerfishError as e:
            raise SystemExit(f"the cluster does not serve argoproj.io Workflows: {e}") from e
    finally:
        await api.close()


async def _cleanup(target: Target) -> int:
    api = target.client()
    try:
        if target.created_namespace:
            await api.delete("v1", "Namespace", target.namespace, "")
            return -1
        sel = f"{RUN_LABEL}={target.run_id}"
        items = (await api.list(WF_API, "Workflow", target.namespace, label_selector=sel))["items"]
        names = [w["metadata"]["name"] for w in items]
        for i in range(0, len(names), 500):
            await asyncio.gather(
                *(api.delete(WF_API, "Workflow", n, target.namespace) for n in names[i : i + 500]),
                return_exceptions=True,
            )
        return len(names)
    finally:
        await api.close()


# -- (c): raw creates --------------------------------------------------------------------


async def _ceiling(target: Target, seconds: float) -> tuple[float, int, int]:
    """Creates/s through ApiKube with ``in_flight`` workers; (rate, ok, errors)."""
    api = target.client()
    body = _workflow_resource(target.run_id)
    ok = errors = 0
    try:
        await api.create(body, target.namespace)  # discovery and connections warm
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal ok, errors
            while time.monotonic() < deadline:
                try:
                    await api.create(body, target.namespace)
                    ok += 1
                except TriggerfishError:
                    errors += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(target.in_flight)))
        return ok / (time.monotonic() - t0), ok, errors
    finally:
        await api.close()


# -- (t): end to end ---------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
    return out


@dataclass
class Run:
    """One offered-load run against a running Triggerfish."""

    offered: float
    seconds: float
    accepted: int = 0
    failed: int = 0
    created: int = 0
    drained_seconds: float = 0.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    cpu_seconds: float = 0.0
    """triggerfish + its nats-server, over the offered window."""
    cpu_bus_seconds: float = 0.0
    """Of which its nats-server (the embedded bus: a child process)."""
    cpu_by_process: list[float] = field(default_factory=list)
    """Per Triggerfish process (the deployment's ``pids``), over the window."""
    window_created: int = 0
    window_seconds: float = 0.0
    drain_created: int = 0
    """Objects created after the last post was answered (the backlog, sensor alone)."""
    drain_seconds: float = 0.0
    started_wall: float = 0.0

    @property
    def rate(self) -> float:
        """Objects created per second over the offered window (after its first second)."""
        return self.window_created / self.window_seconds if self.window_seconds else 0.0

    @property
    def drain_rate(self) -> float:
        """Objects created per second while only the backlog was left (no posts)."""
        return self.drain_created / self.drain_seconds if self.drain_seconds else 0.0

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / self.window_created * 1e6 if self.window_created else 0.0

    @property
    def bus_cpu_us_per_event(self) -> float:
        return self.cpu_bus_seconds / self.window_created * 1e6 if self.window_created else 0.0


@dataclass
class Deployment:
    """What serves the webhook and runs the sensor: its processes, and how to stop them."""

    port: int
    pids: list[int]
    """The Triggerfish processes."""
    bus_pids: list[int]
    """Their nats-server."""
    stops: list[Callable[[], None]]

    def stop(self) -> None:
        for stop in reversed(self.stops):
            stop()


async def _offer(
    dep: Deployment,
    endpoints: Sequence[str],
    rate: float,
    seconds: float,
    conc: int,
    watcher: Watcher,
) -> Run:
    """Post at ``rate`` for ``seconds``; created objects are counted by ``watcher``."""
    run = Run(offered=rate, seconds=seconds, started_wall=time.time())
    base = watcher.count
    # Unbounded: the offered pace never waits for answers (open loop); what the webhook
    # has not taken when the window ends is posted after it, and still counted.
    queue: asyncio.Queue[int] = asyncio.Queue()
    urls = [f"http://127.0.0.1:{dep.port}/{e}" for e in endpoints]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as c:

        async def worker() -> None:
            while (i := await queue.get()) >= 0:
                try:
                    body = {"model": f"m{i}", "dataset": "bench"}
                    async with c.post(urls[i % len(urls)], json=body) as r:
                        await r.read()
                        if r.status == 200:
                            run.accepted += 1
                        else:
                            run.failed += 1
                except aiohttp.ClientError:
                    run.failed += 1

        async def sampler(t0: float, stop: asyncio.Event) -> None:
            while not stop.is_set():
                run.samples.append((time.monotonic() - t0, run.accepted, watcher.count - base))
                await asyncio.sleep(1.0)

        workers = [asyncio.create_task(worker()) for _ in range(conc)]
        t0 = time.monotonic()
        stop = asyncio.Event()
        st = asyncio.create_task(sampler(t0, stop))
        sent = 0
        mark: tuple[float, int, float, float] | None = None
        per_process: list[float] = []
        while (now := time.monotonic() - t0) < seconds:
            if mark is None and now >= 1.0:  # the window starts after one second
                bus_cpu = sum(map(cpu_seconds, dep.bus_pids))
                mark = (now, watcher.count, sum(map(cpu_seconds, dep.pids)) + bus_cpu, bus_cpu)
                per_process = [cpu_seconds(p) for p in dep.pids]
            due = int(now * rate)
            while sent < due:
                queue.put_nowait(sent)
                sent += 1
            await asyncio.sleep(0.001)
        end = (time.monotonic() - t0, watcher.count)
        bus_end = sum(map(cpu_seconds, dep.bus_pids))
        cpu_end = sum(map(cpu_seconds, dep.pids)) + bus_end
        if mark is not None:
            run.window_seconds = end[0] - mark[0]
            run.window_created = end[1] - mark[1]
            run.cpu_seconds = cpu_end - mark[2]
            run.cpu_bus_seconds = bus_end - mark[3]
            run.cpu_by_process = [
                cpu_seconds(p) - before for p, before in zip(dep.pids, per_process, strict=True)
            ]
        for _ in workers:
            queue.put_nowait(-1)
        await asyncio.gather(*workers)
        posted = (time.monotonic(), watcher.count)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run.created = watcher.count - base
            if run.created >= run.accepted:
                break
            await asyncio.sleep(0.1)
        run.drained_seconds = time.monotonic() - t0
        if run.created - (posted[1] - base) >= 200:  # a backlog worth timing
            run.drain_created = watcher.count - posted[1]
            run.drain_seconds = time.monotonic() - posted[0]
        stop.set()
        await st
    return run


class Watcher:
    """Records when each of the run's Workflows is first seen by a watch (wall clock):
    the moment the API server has stored it, as any other client would see it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.seen: dict[str, tuple[float, str, str]] = {}
        """name → (seen at, event-time annotation, action-timestamp label)"""
        self._task: asyncio.Task[None] | None = None
        self._api = target.client()

    async def start(self) -> None:
        sel = f"{RUN_LABEL}={self.target.run_id}"
        ns = self.target.namespace
        listed = await self._api.list(WF_API, "Workflow", ns, label_selector=sel, limit=1)
        rv = listed["metadata"]["resourceVersion"]

        async def run() -> None:
            async for ev in self._api.watch(WF_API, "Workflow", ns, rv, label_selector=sel):
                obj = ev.get("object") or {}
                name = (obj.get("metadata") or {}).get("name")
                if ev.get("type") == "ADDED" and name and name not in self.seen:
                    meta = obj["metadata"]
                    self.seen[name] = (
                        time.time(),
                        (meta.get("annotations") or {}).get(EVENT_TIME, ""),
                        (meta.get("labels") or {}).get("events.argoproj.io/action-timestamp", ""),
                    )

        self._task = asyncio.create_task(run())

    @property
    def count(self) -> int:
        """Objects of the run the watch has seen created."""
        return len(self.seen)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self._api.close()

    def latencies(self) -> tuple[list[float], list[float]]:
        """receipt → create issued (the trigger's action-timestamp label, ms resolution)
        and receipt → seen by the watch, in ms."""
        issued, seen = [], []
        for at, ev, ts in self.seen.values():
            if not ev or not ts:
                continue  # not from the sensor (the ceiling's creates)
            received = datetime.fromisoformat(re.sub(r"Z$", "+00:00", ev)).timestamp()
            issued.append(int(ts) - received * 1000)
            seen.append((at - received) * 1000)
        return sorted(issued), sorted(seen)


def _start_tf(target: Target, work: Path, sensors: int) -> Deployment:
    """``triggerfish run``: one process, its embedded nats-server a child of it."""
    port = free_port()
    tf = Triggerfish(
        files=[str(_manifests(work, target.namespace, sensors, target.run_id))],
        state_dir=work / f"state-{sensors}",
        kubeconfig=str(target.kubeconfig),
        port_map={PORT: port},
        extra_env={"TRIGGERFISH_KUBE__MAX_IN_FLIGHT": str(target.in_flight)},
    )
    tf.start(timeout=120)
    assert tf.proc is not None
    return Deployment(port, [tf.proc.pid], _children(tf.proc.pid), [tf.stop])


async def _apply(target: Target, manifests: Path, delete: bool = False) -> None:
    """Create the manifests' objects in the API server (or delete them again)."""
    api = target.client()
    try:
        for doc in yaml.safe_load_all((manifests / "all.yaml").read_text()):
            if delete:
                with contextlib.suppress(TriggerfishError):
                    await api.delete(
                        doc["apiVersion"], doc["kind"], doc["metadata"]["name"], target.namespace
                    )
            else:
                await api.create(doc, target.namespace)
    finally:
        await api.close()


def _start_pods(target: Target, work: Path) -> Deployment:
    """The cluster topology: a JetStream nats-server, the manifests in the API server, and
    the eventsource and sensor pod roles as two processes."""
    manifests = _manifests(work, target.namespace, 1, target.run_id)
    dep = Deployment(free_port(), [], [], [])
    try:
        nats = NatsPeer(work / "pods-nats", jetstream=True).start()
        dep.stops.append(nats.stop)
        dep.bus_pids.append(nats.pid)
        dep.stops.append(lambda: run_loop(_apply(target, manifests, delete=True)))
        run_loop(_apply(target, manifests))
        docs = list(yaml.safe_load_all((manifests / "all.yaml").read_text()))
        env = {"TRIGGERFISH_KUBE__MAX_IN_FLIGHT": str(target.in_flight)}
        common = ["--nats-url", nats.url, "--namespace", target.namespace]
        for role, doc in (("eventsource", docs[1]), ("sensor", docs[2])):
            args = [role, doc["metadata"]["name"], *common]
            if role == "eventsource":
                args += ["--bind-host", "127.0.0.1", "--port-map", f"{PORT}={dep.port}"]
            pod = RoleProc(args, work / f"pod-{role}", str(target.kubeconfig), dict(env))
            pod.start()
            dep.stops.append(pod.stop)
            assert pod.proc is not None
            dep.pids.append(pod.proc.pid)
    except BaseException:
        dep.stop()
        raise
    return dep


def _kept_up(run: Run, concurrency: int) -> tuple[bool, int]:
    """Whether the pipeline kept up with ``run``'s offered rate: it created at least 95 %
    of it over the window, and the backlog when the posts stopped was no more than what
    is in flight anyway (the posters' concurrency, or a quarter second of events)."""
    in_window = [s for s in run.samples if s[0] <= run.seconds]
    lag = in_window[-1][1] - in_window[-1][2] if in_window else run.accepted
    ok = run.rate >= 0.95 * run.offered and lag <= max(2 * concurrency, 0.25 * run.offered)
    return ok, lag


def _split(run: Run) -> str:
    """CPU per event of each Triggerfish process and of the nats-server."""
    n = run.window_created or 1
    parts = [f"{1e6 * c / n:.0f}" for c in run.cpu_by_process]
    return " + ".join(parts) + f" + bus {1e6 * run.cpu_bus_seconds / n:.0f}"


def _sustained(target: Target, dep: Deployment, t: float, args: argparse.Namespace) -> float:
    """(s): the highest rate the pipeline sustains, offered from half of (t) upwards in
    steps of 20 % until it falls behind; the rate created in the last step it kept up."""
    rate = max(20.0, round(0.5 * t))
    best = 0.0
    while True:
        r, _ = run_loop(
            _watched(
                target,
                functools.partial(_offer, dep, ["trigger"], rate, args.seconds, args.concurrency),
            )
        )
        kept, lag = _kept_up(r, args.concurrency)
        print(
            f"  offered {rate:6.0f}/s  created {r.rate:6.0f}/s  backlog when the posts "
            f"stopped {lag:6d}  cpu {r.cpu_us_per_event:5.0f} µs/event ({_split(r)})  "
            + ("kept up" if kept else "fell behind")
        )
        if not kept:
            return best
        best = r.rate
        rate = round(rate * 1.2)


def _backlog(run: Run) -> None:
    print("  backlog over time (t, accepted, created, accepted-created):")
    for t, a, c in run.samples:
        print(f"    {t:5.1f}s  {a:7d}  {c:7d}  {a - c:6d}")


# -- main --------------------------------------------------------------------------------


async def _watched(target: Target, fn: Callable[[Watcher], Awaitable[T]]) -> tuple[T, Watcher]:
    """Run ``fn`` with a watch on the run's Workflows open (in every phase, so the API
    server does the same work for the ceiling as for the end-to-end runs)."""
    watcher = Watcher(target)
    await watcher.start()
    try:
        result = await fn(watcher)
        await asyncio.sleep(0.5)  # the last ADDED events
    finally:
        await watcher.stop()
    return result, watcher


def _e2e(target: Target, work: Path, args: argparse.Namespace) -> None:
    (c, c_ok, c_err), _ = run_loop(_watched(target, lambda w: _ceiling(target, args.seconds)))
    print(
        f"(c) raw creates, {target.in_flight} in flight   {c:8.0f}/s  ({c_ok} ok, {c_err} errors)"
    )
    dep = _start_pods(target, work) if args.pods else _start_tf(target, work, 1)
    print(
        "topology: "
        + (
            "pods (eventsource and sensor processes, a nats-server)"
            if args.pods
            else "triggerfish run (one process, its embedded nats-server)"
        )
    )
    try:
        offered = args.rate or max(100.0, round(1.5 * c))
        sat, _ = run_loop(
            _watched(
                target,
                lambda w: _offer(dep, ["trigger"], offered, args.seconds, args.concurrency, w),
            )
        )
        t = sat.rate
        print(
            f"(t) end to end, offered {offered:.0f}/s  {t:8.0f}/s  "
            f"(accepted {sat.accepted}, failed {sat.failed}, created {sat.created}, "
            f"drained at {sat.drained_seconds:.1f}s; cpu {sat.cpu_us_per_event:.0f} µs/event: "
            f"{_split(sat)})"
        )
        print(f"t/c = {t / c:.2f}" if c else "t/c = n/a", "(c measured again at the end)")
        if sat.drain_rate:
            print(
                f"(d) backlog drain, no posts   {sat.drain_rate:8.0f}/s  "
                f"({sat.drain_created} objects in {sat.drain_seconds:.1f}s: sensor + API alone)"
                f"  d/c = {sat.drain_rate / c:.2f}"
            )
        if sat.accepted - sat.created > 0:
            print(f"  NOT DRAINED: {sat.accepted - sat.created} accepted events not created")
        _backlog(sat)
        print("(s) the highest rate sustained, offered in steps:")
        sus = _sustained(target, dep, t, args)
        print(f"(s) sustained end to end        {sus:8.0f}/s  s/c = {sus / c:.2f}" if c else "")
        light = max(1.0, round(0.3 * t))
        lr, watcher = run_loop(
            _watched(
                target,
                lambda w: _offer(dep, ["trigger"], light, args.seconds, args.concurrency, w),
            )
        )
    finally:
        dep.stop()
    # Again, now that Triggerfish is stopped: a shared machine drifts, and a ratio
    # against two ceilings around it says how much.
    (c2, _, _), _ = run_loop(_watched(target, lambda w: _ceiling(target, args.seconds)))
    print(
        f"(c') raw creates again           {c2:8.0f}/s  "
        f"t/c' = {t / c2:.2f}, t/mean(c, c') = {2 * t / (c + c2):.2f}, "
        f"s/mean = {2 * sus / (c + c2):.2f}"
        + (f", d/mean = {2 * sat.drain_rate / (c + c2):.2f}" if sat.drain_rate else "")
    )
    issued, seen = watcher.latencies()
    print(f"receipt→create at {light:.0f}/s (30 % of t), created {lr.created}/{lr.accepted}:")
    for label, lat in (("create issued", issued), ("seen by a watch", seen)):
        print(
            f"  {label:16s} p50 {percentile(lat, 50):6.1f} ms  p99 {percentile(lat, 99):6.1f} ms"
            f"  max {lat[-1] if lat else float('nan'):6.1f} ms  (n={len(lat)})"
        )


def _sensors(target: Target, work: Path, args: argparse.Namespace, counts: list[int]) -> None:
    offered = args.rate
    if not offered:
        (c, _, _), _ = run_loop(_watched(target, lambda w: _ceiling(target, args.seconds)))
        offered = max(100.0, round(1.5 * c))
        print(f"(c) raw creates, {target.in_flight} in flight   {c:8.0f}/s")
    print(
        "sensors  offered/s  e2e/s  cpu µs/event (of which bus)  accepted  created  "
        "(vs 1 sensor: rate, cpu)"
    )
    first: Run | None = None
    for n in counts:
        if target.server is not None:
            target.server.reset()
        dep = _start_tf(target, work, n)
        names = ["trigger"] if n == 1 else [f"e{i}" for i in range(n)]
        try:
            r, _ = run_loop(
                _watched(
                    target,
                    functools.partial(_offer, dep, names, offered, args.seconds, args.concurrency),
                )
            )
        finally:
            dep.stop()
        first = first or r
        rel = (
            f"{r.rate / first.rate:.2f}, {first.cpu_us_per_event / r.cpu_us_per_event:.2f}"
            if first.rate and r.cpu_us_per_event
            else "-"
        )
        print(
            f"{n:7d}  {offered:9.0f}  {r.rate:5.0f}  {r.cpu_us_per_event:12.0f} "
            f"({r.bus_cpu_us_per_event:5.0f})        "
            f"{r.accepted:8d}  {r.created:7d}  ({rel})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rate", type=float, default=0.0, help="offered posts/s; 0 = 1.5 x c")
    ap.add_argument("--concurrency", type=int, default=64, help="concurrent posters")
    ap.add_argument("--in-flight", type=int, default=64, help="API requests in flight")
    ap.add_argument("--sensors", default="", help="e.g. 1,10,100: the sensors-count bench")
    ap.add_argument(
        "--pods", action="store_true", help="eventsource and sensor pod roles, not `run`"
    )
    ap.add_argument("--kubeconfig", default="", help="measure this cluster instead")
    ap.add_argument("--namespace", default="", help="with --kubeconfig (default tf-bench)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tf-bench-e2e-"))
    run_id = uuid.uuid4().hex[:10]
    server: FakeKubeServer | None = None
    try:
        if args.kubeconfig:
            target = Target(
                Path(args.kubeconfig).resolve(),
                args.namespace or "tf-bench",
                run_id,
                args.in_flight,
                where=f"kubeconfig {args.kubeconfig}",
            )
        else:
            server = FakeKubeServer(log_dir=work / "kube", extra_args=("--no-access-log",))
            server.start()
            target = Target(
                write_kubeconfig(work / "kubeconfig", server.url),
                args.namespace or "argo-events",
                run_id,
                args.in_flight,
                server,
                where=f"fake API (tests/fakekube) {server.url}",
            )
        run_loop(_prepare_namespace(target))
        print(
            f"bench/e2e against {target.where}, namespace {target.namespace}, "
            f"{os.cpu_count()} CPUs, {args.seconds:.0f}s per phase, "
            f"{args.concurrency} posters"
        )
        if args.sensors:
            _sensors(target, work, args, [int(x) for x in args.sensors.split(",")])
        else:
            _e2e(target, work, args)
    finally:
        if args.kubeconfig and "target" in locals():
            n = run_loop(_cleanup(target))
            print("cleanup: namespace deleted" if n < 0 else f"cleanup: {n} Workflows deleted")
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
