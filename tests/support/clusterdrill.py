"""The clustered-JetStream drill, shared by ``tests/test_cluster.py`` and ``bench/cluster.py``.

``triggerfish run`` on the seed manifests is pointed at a three-node cluster
(``--nats-url`` with the three client URLs); the seed EventBus asks for three replicas,
so the stream and its consumer are R3. Then:

1. the node Triggerfish is connected to is first made leader of the stream and of its
   consumer (leader step-downs), then a burst of ``events`` webhook posts; once a
   quarter is accepted that node is SIGKILLed (connection, stream leader and consumer
   leader lost at once); once three quarters are accepted (or the burst is over) it is
   started again on its store and the cluster waits until it has caught up;
2. a rolling restart of all three nodes (SIGTERM, start, wait until healthy, next
   one, each node down until ``down_events`` more posts were accepted) while posts keep
   arriving at a steady pace, up to ``rolling_events``.

Posters behave as the webhook contract asks: each event carries its own
``X-Request-Id`` (so a retry is the same event), and a ``503`` is retried after its
``Retry-After``. The drill then waits until every accepted event has its Workflow and
reports what it saw: which events were accepted, how many Workflows each produced,
Triggerfish's PID before and after, and the log lines it wrote during each phase
(per-event lines excluded: those grow with the traffic by design).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.natscluster import NatsCluster, NatsNode
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "ml-pipeline"
STREAM = "default"
PER_EVENT_LINE = re.compile(r" INFO .*(\b(id|event)=[0-9a-f]{32}\b|\(events [0-9a-f]{32})")
"""The INFO lines written about one event (received, traced, object created): they grow
with the traffic by design; every other line must not."""


@dataclass
class Poster:
    """Posts events ``m<i>`` to the webhook, retrying 503s, and records what was accepted."""

    url: str
    concurrency: int = 32
    accepted: set[str] = field(default_factory=set)
    posted: int = 0
    retries_503: int = 0
    retries_error: int = 0
    give_up_seconds: float = 180.0
    gave_up: list[str] = field(default_factory=list)

    async def post_one(self, c: httpx.AsyncClient, model: str) -> None:
        self.posted += 1
        deadline = time.monotonic() + self.give_up_seconds
        while time.monotonic() < deadline:
            try:
                r = await c.post(
                    self.url,
                    json={"model": model, "dataset": "d"},
                    headers={"X-Request-Id": f"drill-{model}"},
                )
            except httpx.HTTPError:
                self.retries_error += 1
                await asyncio.sleep(0.2)
                continue
            if r.status_code == 200:
                self.accepted.add(model)
                return
            if r.status_code != 503:
                raise AssertionError(f"{model}: unexpected {r.status_code} {r.text}")
            self.retries_503 += 1
            await asyncio.sleep(float(r.headers.get("Retry-After") or 1))
        self.gave_up.append(model)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            limits=httpx.Limits(max_connections=self.concurrency),
            timeout=httpx.Timeout(30, pool=None),
        )

    async def burst(self, models: list[str]) -> None:
        """Post every model with ``concurrency`` workers."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        for m in models:
            queue.put_nowait(m)
        async with self.client() as c:

            async def worker() -> None:
                while not queue.empty():
                    await self.post_one(c, queue.get_nowait())

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def paced(self, prefix: str, rate_per_second: float, limit: int, stop: Any) -> int:
        """Post ``<prefix><i>`` at ``rate_per_second`` until ``stop`` is set or ``limit``
        events were started; waits for every started post to finish; returns the count."""
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        async with self.client() as c:
            t0 = time.monotonic()
            while n < limit and not stop.is_set():
                due = t0 + n / rate_per_second
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                t = asyncio.create_task(self.post_one(c, f"{prefix}{n}"))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                n += 1
            if tasks:
                await asyncio.gather(*tasks)
        return n


def stream_info(node: NatsNode, stream: str = STREAM) -> dict[str, Any]:
    """A stream as one node's monitoring endpoint reports it (config, cluster)."""
    url = f"http://127.0.0.1:{node.monitor_port}/jsz?streams=true&consumers=true&config=true"
    with urllib.request.urlopen(url, timeout=2) as resp:
        jsz = json.loads(resp.read())
    for account in jsz.get("account_details") or []:
        for s in account.get("stream_detail") or []:
            if s.get("name") == stream:
                return dict(s)
    raise LookupError(f"stream {stream!r} not on {node.name}")


def stream_leader(cluster: NatsCluster) -> NatsNode:
    """The node currently leading the seed stream's replica group."""

    def leader_name() -> str:
        for n in cluster.nodes:
            if n.running:
                try:
                    name = str(stream_info(n).get("cluster", {}).get("leader") or "")
                except (OSError, LookupError, ValueError):
                    continue
                if name:
                    return name
        return ""

    found = [""]

    def known() -> bool:
        found[0] = leader_name()
        return bool(found[0])

    wait_for(known, timeout=30, interval=0.1)
    return next(n for n in cluster.nodes if n.name == found[0])


def connected_node(cluster: NatsCluster) -> NatsNode:
    """The node holding the one client connection (Triggerfish's; the drill opens none)."""

    def clients(n: NatsNode) -> int:
        url = f"http://127.0.0.1:{n.monitor_port}/connz"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(json.loads(resp.read()).get("num_connections") or 0)

    found = [n for n in cluster.nodes if n.running and clients(n) > 0]
    assert len(found) == 1, f"expected one node with a client, got {[n.name for n in found]}"
    return found[0]


def concentrate_on(cluster: NatsCluster, target: NatsNode) -> bool:
    """Move the leadership of the seed stream and of its consumers to ``target`` (leader
    step-downs naming it as preferred), so one SIGKILL hits Triggerfish's connection,
    the stream leader and the consumer leader at once. True when all three coincide."""

    def leaders() -> tuple[str, list[tuple[str, str]]]:
        info = stream_info(stream_leader(cluster))
        consumers = [
            (str(c["name"]), str((c.get("cluster") or {}).get("leader") or ""))
            for c in info.get("consumer_detail") or []
        ]
        return str(info["cluster"]["leader"]), consumers

    async def move() -> bool:
        import nats

        nc = await nats.connect(servers=cluster.urls)
        body = json.dumps({"placement": {"preferred": target.name}}).encode()
        try:
            for _ in range(10):
                stream_at, consumers = leaders()
                if stream_at == target.name and all(at == target.name for _, at in consumers):
                    return True
                subjects = [] if stream_at == target.name else [f"STREAM.LEADER.STEPDOWN.{STREAM}"]
                subjects += [
                    f"CONSUMER.LEADER.STEPDOWN.{STREAM}.{name}"
                    for name, at in consumers
                    if at != target.name
                ]
                for subject in subjects:
                    with contextlib.suppress(Exception):
                        await nc.request(f"$JS.API.{subject}", body, timeout=5)
                await asyncio.sleep(1.0)
            return False
        finally:
            await nc.close()

    return asyncio.run(move())


@dataclass
class DrillReport:
    """What one drill observed; the test asserts on it, the bench prints it."""

    accepted: set[str]
    gave_up: list[str]
    counts: collections.Counter[str]
    replicas: int
    consumer_replicas: list[int]
    killed: str
    killed_led_everything: bool
    kill_log_lines: list[str]
    pid_before: int
    pid_after: int | None
    alive_after: bool
    ready_after: bool
    rolling_log_lines: list[str]
    retries_503: int
    retries_error: int
    phase_seconds: dict[str, float]

    @property
    def lost(self) -> list[str]:
        return sorted(self.accepted - set(self.counts))

    @property
    def duplicated(self) -> dict[str, int]:
        return {m: c for m, c in self.counts.items() if c > 1}

    @property
    def unasked(self) -> list[str]:
        """Workflows for events never answered 200 (a 503 that was stored anyway and
        never retried would show here; posters retry, so it must stay empty)."""
        return sorted(set(self.counts) - self.accepted)


def list_workflows(kube_api: Any, namespace: str = "argo-events") -> list[dict[str, Any]]:
    from kubernetes import client

    api = client.CustomObjectsApi(kube_api.api_client())
    res: Any = api.list_namespaced_custom_object("argoproj.io", "v1alpha1", namespace, "workflows")
    return list(res["items"])


def model_of(wf: dict[str, Any]) -> str:
    params = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
    return str(params["model"])


def run_drill(
    tmp_path: Path,
    kube_api: Any,
    cluster: NatsCluster,
    *,
    events: int,
    rolling_events: int,
    rolling_rate_per_second: float = 100.0,
    down_events: int = 300,
    concurrency: int = 32,
    settle_timeout: float = 300.0,
) -> DrillReport:
    """Run both phases against a started ``cluster``; Triggerfish is stopped at the end."""
    port = free_port()
    tf = Triggerfish(
        files=[str(SEED)],
        state_dir=tmp_path / "state",
        kubeconfig=str(kube_api.kubeconfig),
        nats_url=cluster.url,
        port_map={12000: port},
    ).start(timeout=60)
    assert tf.proc is not None and tf.log_path is not None
    pid_before = tf.proc.pid
    poster = Poster(f"http://127.0.0.1:{port}/trigger", concurrency=concurrency)
    phases: dict[str, float] = {}
    try:
        info = stream_info(stream_leader(cluster))
        replicas = int(info["config"]["num_replicas"])
        consumer_replicas = [
            int((c.get("config") or {}).get("num_replicas") or replicas)
            for c in info.get("consumer_detail") or []
        ]
        killed = connected_node(cluster)
        concentrated = concentrate_on(cluster, killed)

        async def phase_one() -> None:
            async def operator() -> None:
                while len(poster.accepted) < events // 4:
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(killed.kill)
                while len(poster.accepted) < 3 * events // 4 and not burst.done():
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(cluster.restart, killed)

            burst = asyncio.create_task(poster.burst([f"m{i}" for i in range(events)]))
            await asyncio.gather(burst, operator())

        log_offset = tf.log_path.stat().st_size
        t0 = time.monotonic()
        asyncio.run(phase_one())
        phases["burst with a node killed"] = time.monotonic() - t0
        _settle(kube_api, poster.accepted, settle_timeout)
        phases["burst settled"] = time.monotonic() - t0
        kill_lines = _log_lines(tf.log_path, log_offset)
        log_offset = tf.log_path.stat().st_size

        async def phase_two() -> None:
            stop = asyncio.Event()

            async def operator() -> None:
                for node in cluster.nodes:
                    before = len(poster.accepted)
                    await asyncio.to_thread(node.stop)
                    # let traffic run against the two remaining nodes for a while
                    while len(poster.accepted) < before + down_events and not paced.done():
                        await asyncio.sleep(0.05)
                    await asyncio.to_thread(cluster.restart, node)
                stop.set()

            paced = asyncio.create_task(
                poster.paced("r", rolling_rate_per_second, rolling_events, stop)
            )
            await asyncio.gather(paced, operator())

        t1 = time.monotonic()
        asyncio.run(phase_two())
        phases["rolling restart"] = time.monotonic() - t1
        _settle(kube_api, poster.accepted, settle_timeout)
        time.sleep(2.0)  # let any redelivery land, so a duplicate would show
        rolling_lines = _log_lines(tf.log_path, log_offset)
        counts = collections.Counter(model_of(w) for w in list_workflows(kube_api))
        alive = tf.proc is not None and tf.proc.poll() is None
        ready = alive and tf.is_ready()
        return DrillReport(
            accepted=set(poster.accepted),
            gave_up=list(poster.gave_up),
            counts=counts,
            replicas=replicas,
            consumer_replicas=consumer_replicas,
            killed=killed.name,
            killed_led_everything=concentrated,
            kill_log_lines=kill_lines,
            pid_before=pid_before,
            pid_after=tf.proc.pid if tf.proc is not None else None,
            alive_after=alive,
            ready_after=ready,
            rolling_log_lines=rolling_lines,
            retries_503=poster.retries_503,
            retries_error=poster.retries_error,
            phase_seconds=phases,
        )
    finally:
        tf.stop()


def _log_lines(path: Path, offset: int) -> list[str]:
    """Lines logged since ``offset``, per-event lines left out."""
    text = path.read_bytes()[offset:].decode(errors="replace")
    return [ln for ln in text.splitlines() if ln and not PER_EVENT_LINE.search(ln)]


def _settle(kube_api: Any, accepted: set[str], timeout: float) -> None:
    """Wait until every accepted event has a Workflow (bounded; not a timing check:
    past the bound the report shows what is missing)."""

    def done() -> bool:
        got = {model_of(w) for w in list_workflows(kube_api)}
        return accepted <= got

    with contextlib.suppress(TimeoutError):
        wait_for(done, timeout=timeout, interval=0.5)
