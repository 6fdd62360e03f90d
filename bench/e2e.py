"""bench/e2e: sustained webhook → sensor → object-created rate, end to end.

Starts the fake Kubernetes API (tests/fakekube), then ``triggerfish run`` (embedded
JetStream) on a copy of the ml-pipeline example whose sensor also records the event's
CloudEvent ``time`` on each Workflow (a ``contextKey`` parameter). A load generator in
this process (aiohttp; httpx slows down with concurrency) posts at a fixed offered
rate for a fixed time; every second it samples accepted posts (200s) and triggers done
(``argo_events_action_triggered_total`` from
/metrics), so a growing gap shows a backlog. At the end it lists the Workflows and
computes webhook-receipt → create latency from the event time and the
``events.argoproj.io/action-timestamp`` label.

    python -m bench.e2e [--seconds 10] [--rate 1000] [--concurrency 64]

Traffic goes only to 127.0.0.1; every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import httpx
import yaml

from tests.fakekube.harness import KubeApi
from tests.fakekube.process import FakeKubeServer
from tests.support.net import free_port
from tests.support.proc import Triggerfish

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ml-pipeline"


def _prepare(workdir: Path) -> Path:
    """The example, with the event time added as a Workflow annotation."""
    dst = workdir / "manifests"
    shutil.copytree(EXAMPLE, dst)
    sensor_path = dst / "sensor.yaml"
    sensor = yaml.safe_load(sensor_path.read_text())
    k8s = sensor["spec"]["triggers"][0]["template"]["k8s"]
    k8s["parameters"].append(
        {
            "src": {"dependencyName": "training-event", "contextKey": "time"},
            "dest": "metadata.annotations.bench/event-time",
        }
    )
    sensor_path.write_text(yaml.safe_dump(sensor))
    return dst


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _triggered(client: httpx.AsyncClient, api_port: int) -> int:
    r = await client.get(f"http://127.0.0.1:{api_port}/metrics")
    total = 0.0
    for line in r.text.splitlines():
        if line.startswith("argo_events_action_triggered_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def _load(
    port: int, api_port: int, seconds: float, rate: float, conc: int
) -> dict[str, object]:
    url = f"http://127.0.0.1:{port}/trigger"
    accepted = 0
    failed = 0
    samples: list[tuple[float, int, int]] = []
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=conc * 4)
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as c:

        async def worker() -> None:
            nonlocal accepted, failed
            while True:
                i = await queue.get()
                if i < 0:
                    return
                try:
                    async with c.post(url, json={"model": f"m{i}", "dataset": "bench"}) as r:
                        await r.read()
                        if r.status == 200:
                            accepted += 1
                        else:
                            failed += 1
                except aiohttp.ClientError:
                    failed += 1

        async def sampler(t0: float, stop: asyncio.Event) -> None:
            async with httpx.AsyncClient(timeout=5) as mc:
                while not stop.is_set():
                    samples.append(
                        (time.monotonic() - t0, accepted, await _triggered(mc, api_port))
                    )
                    await asyncio.sleep(1.0)

        workers = [asyncio.create_task(worker()) for _ in range(conc)]
        t0 = time.monotonic()
        stop = asyncio.Event()
        st = asyncio.create_task(sampler(t0, stop))
        sent = 0
        while (now := time.monotonic() - t0) < seconds:
            due = int(now * rate)
            while sent < due:
                await queue.put(sent)
                sent += 1
            await asyncio.sleep(0.001)
        for _ in workers:
            await queue.put(-1)
        await asyncio.gather(*workers)
        offered_seconds = time.monotonic() - t0
        # drain: wait until the sensor caught up (or 60 s)
        async with httpx.AsyncClient(timeout=5) as mc:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and await _triggered(mc, api_port) < accepted:
                await asyncio.sleep(0.25)
            drained_at = time.monotonic() - t0
            done = await _triggered(mc, api_port)
        stop.set()
        await st
    return {
        "sent": sent,
        "accepted": accepted,
        "failed": failed,
        "done": done,
        "offered_seconds": offered_seconds,
        "drained_seconds": drained_at,
        "samples": samples,
    }


def _latencies(kube: KubeApi) -> list[float]:
    from kubernetes import client

    api = client.CustomObjectsApi(kube.api_client())
    items = api.list_namespaced_custom_object(
        "argoproj.io", "v1alpha1", "argo-events", "workflows"
    )["items"]
    out = []
    for wf in items:
        meta = wf["metadata"]
        ev = (meta.get("annotations") or {}).get("bench/event-time")
        ts = (meta.get("labels") or {}).get("events.argoproj.io/action-timestamp")
        if not ev or not ts:
            continue
        ev = re.sub(r"Z$", "+00:00", ev)
        out.append(int(ts) - datetime.fromisoformat(ev).timestamp() * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="offered posts per second")
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tf-bench-e2e-"))
    server = FakeKubeServer(log_dir=work / "kube")
    server.start()
    kube = KubeApi(server, work)
    port = free_port()
    tf = Triggerfish(files=[str(_prepare(work))], state_dir=work / "state",
                     kubeconfig=str(kube.kubeconfig), port_map={12000: port})  # fmt: skip
    try:
        tf.start()
        res = asyncio.run(_load(port, tf.api_port, args.seconds, args.rate, args.concurrency))
        lat = _latencies(kube)
    finally:
        tf.stop()
        kube.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    accepted = int(res["accepted"])  # type: ignore[call-overload]
    done = int(res["done"])  # type: ignore[call-overload]
    print(
        f"bench/e2e: offered {args.rate:.0f}/s for {args.seconds:.0f}s, {args.concurrency} clients"
    )
    print(f"  accepted (200)      {accepted}  failed {res['failed']}")
    print(
        f"  objects created     {done}  ({done / float(res['drained_seconds']):.0f}/s overall, "  # type: ignore[arg-type]
        f"drained at {float(res['drained_seconds']):.1f}s)"
    )  # type: ignore[arg-type]
    print(
        f"  receipt→create ms   p50 {_pct(lat, 0.5):.1f}  p99 {_pct(lat, 0.99):.1f}  "
        f"max {max(lat) if lat else float('nan'):.1f}  (n={len(lat)})"
    )
    print("  backlog over time (t, accepted, created, accepted-created):")
    for t, a, c in res["samples"]:  # type: ignore[attr-defined]
        print(f"    {t:5.1f}s  {a:7d}  {c:7d}  {a - c:6d}")
    gaps = [a - c for _, a, c in res["samples"]]  # type: ignore[attr-defined]
    trend = statistics.mean(gaps[len(gaps) // 2 :]) if gaps else 0
    verdict = "yes" if trend > args.rate else "no"
    print(f"  backlog builds: {verdict} (mean gap in 2nd half {trend:.0f})")


if __name__ == "__main__":
    main()
