"""bench/conditions: per-event cost of the condition path for 2 / 10 / 50 ANDed
dependencies, over a real nats-server (embedded JetStream, file store, temp dir).

For each width it builds a sensor whose one trigger ANDs every dependency (a ``log``
trigger, so the target costs nothing) and hands ``--events`` events, round after round,
to :meth:`sensors.runner.SensorRunner.handle` (filters, condition state written through
to the key-value bucket, firing, trace), timing each call. Beside it, measured in the
same run on the same server:

* ceiling: one bare KV ``put`` per event, the write-through no design can avoid;
* before: what each event cost when the state was read back on every event (put, list
  the bucket's keys, get each), capped at ``--before-events`` events per width since
  each listing opens a consumer on the server.

Events that only wait (stored) and events that complete a round (firing: the trigger,
the marker write, the purge) are also shown apart. Flat means the µs/event figures do
not grow with the number of dependencies. Memory:
the process's RSS before and after each width, and the records left in the bucket
(fired rounds are purged, so 1 = the trigger's marker).

    python -m bench.conditions [--events 2000] [--before-events 200] [--widths 2,10,50]
                               [--warmup 500]

Traffic goes only to 127.0.0.1; the nats-server is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType

from app.adapters.bus import Bus
from app.adapters.metrics import Metrics
from app.adapters.natsserver import EmbeddedNats
from app.compose.dryrun import OfflineMessage, RecordingKube
from app.compose.manifests import load_one
from app.kernel.events import Event, new_event_id
from app.kernel.settings import BusSettings
from sensors.runner import RetryPolicy, SensorRunner
from sensors.trace import TraceStore
from sensors.triggers.base import TriggerContext


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _sensor(width: int, name: str = "") -> Any:
    names = [f"d{i:02d}" for i in range(width)]
    return load_one(
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Sensor",
            "metadata": {"name": name or f"wide{width}", "namespace": "bench"},
            "spec": {
                "dependencies": [
                    {"name": d, "eventSourceName": "hook", "eventName": d} for d in names
                ],
                "triggers": [{"template": {"name": "all", "log": {}}}],
            },
        }
    )


def _event(dep: str, n: int) -> Event:
    return Event(id=new_event_id(), source="hook", subject=dep, type="webhook",
                 data={"body": {"n": n, "model": "resnet", "dataset": "imagenet"}})  # fmt: skip


def _summary(samples_us: list[float]) -> str:
    s = sorted(samples_us)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"mean {statistics.fmean(s):7.1f}  p50 {statistics.median(s):7.1f}  p99 {p99:7.1f}"


async def _product(
    bus: Bus, width: int, events: int, name: str = ""
) -> tuple[list[float], list[float], int, int, int]:
    sensor = _sensor(width, name)
    runner = SensorRunner(
        sensor, bus, TriggerContext(kube=RecordingKube()), TraceStore(), Metrics(), concurrency=1,
        default_retry=RetryPolicy(steps=1),
    )  # fmt: skip
    await runner.prepare()
    deps = [d.name for d in sensor.spec.dependencies]
    samples: list[float] = []
    completing: list[float] = []
    fired = 0
    for n in range(events):
        dep = deps[n % width]
        msg = OfflineMessage(_event(dep, n))
        t0 = time.perf_counter()
        await runner.handle(dep, msg)
        took = (time.perf_counter() - t0) * 1e6
        if not msg.acked:
            raise SystemExit(f"event {n} was not acked: {runner.traces.recent(1)[0].error}")
        if runner.traces.recent(1)[0].fired:
            fired += 1
            completing.append(took)
        else:
            samples.append(took)
    info = await bus._jetstream().stream_info(f"KV_sensor_bench_{sensor.metadata.name}")
    return samples, completing, fired, info.state.messages, info.state.consumer_count


async def _ceiling(url: str, width: int, events: int) -> list[float]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(
            KeyValueConfig(bucket=f"ceiling{width}", history=1, storage=StorageType.FILE)
        )
        payload = _event("d00", 0).to_json()
        samples = []
        for n in range(events):
            t0 = time.perf_counter()
            await kv.put(f"k{n % width}", payload)
            samples.append((time.perf_counter() - t0) * 1e6)
        return samples
    finally:
        await nc.close()


async def _before(url: str, width: int, events: int) -> list[float]:
    """Put, then list and read the whole bucket: the per-event read-back design."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(
            KeyValueConfig(bucket=f"before{width}", history=1, storage=StorageType.FILE)
        )
        payload = _event("d00", 0).to_json()
        samples = []
        for n in range(events):
            t0 = time.perf_counter()
            await kv.put(f"all__d{n % width:02d}", payload)
            try:
                keys = await kv.keys()
            except nats.js.errors.NoKeysError:
                keys = []
            for k in keys:
                await kv.get(k)
            if len(keys) == width:
                for k in keys:
                    await kv.delete(k)
            samples.append((time.perf_counter() - t0) * 1e6)
        return samples
    finally:
        await nc.close()


async def run(widths: Sequence[int], events: int, before_events: int, warmup: int) -> None:
    logging.getLogger("triggerfish").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-conditions-") as tmp:
        server = EmbeddedNats(store_dir=Path(tmp) / "nats")
        server.start()
        try:
            bus = Bus(BusSettings(), server.url)
            await bus.connect()
            try:
                await _product(bus, 2, warmup, "warmup")  # untimed: first-use costs
                print(f"condition path, {events} events per width, µs per event")
                for width in widths:
                    rss0 = _rss_kib()
                    stored, completing, fired, records, consumers = await _product(
                        bus, width, events
                    )
                    rss1 = _rss_kib()
                    ceiling = await _ceiling(server.url, width, events)
                    before = await _before(server.url, width, min(before_events, events))
                    print(
                        f"{width:3d} deps  all      {_summary(stored + completing)}"
                        f"  fired {fired} rounds, bucket {records} records,"
                        f" {consumers} consumers, RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB"
                    )
                    print(f"          stored   {_summary(stored)}  (events that wait)")
                    print(f"          firing   {_summary(completing)}  (events that complete)")
                    print(f"          ceiling  {_summary(ceiling)}  (one KV put)")
                    print(
                        f"          before   {_summary(before)}  (put + list + read all;"
                        f" {len(before)} events)"
                    )
            finally:
                await bus.close()
        finally:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.conditions", description=__doc__)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--before-events", type=int, default=200)
    p.add_argument("--widths", default="2,10,50")
    p.add_argument("--warmup", type=int, default=500, help="untimed events first")
    a = p.parse_args(argv)
    widths = [int(w) for w in a.widths.split(",") if w.strip()]
    asyncio.run(run(widths, a.events, a.before_events, a.warmup))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
