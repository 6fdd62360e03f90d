"""Clustered JetStream: a node killed mid-burst, then a rolling restart of all three.

The drill (``tests/support/clusterdrill.py``) runs ``triggerfish run`` against a
three-node cluster with the seed's R3 stream. What must hold: every event answered 200
yields exactly one Workflow, Triggerfish itself is never restarted and is ready at the
end, and its log during either phase stays bounded (a fixed number of reconnect and
retry lines, not lines per event).

2,000 events here (the drill's full 10,000 runs in ``python -m bench.cluster``; on
the 2-core CI machine 10,000 take over a minute, too long for every run of the suite).

Two narrower checks on the same cluster fixture: a sensor's state bucket is replicated
like the stream (any one node can die), and publishes wait out a stream leader
election instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from app.adapters.bus import Bus, StreamLimits
from app.kernel.errors import BusUnavailableError
from app.kernel.settings import BusSettings
from tests.support.clusterdrill import run_drill, stream_info, stream_leader
from tests.support.natscluster import NatsCluster
from tests.support.sensors import eventually

LOG_LINE_BOUND = 300


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_node_killed_mid_burst_and_rolling_restart_lose_and_duplicate_nothing(
    tmp_path: Path, kube_api: Any, nats_cluster: NatsCluster
) -> None:
    r = run_drill(tmp_path, kube_api, nats_cluster, events=2_000, rolling_events=3_000)
    assert r.replicas == 3, "the seed EventBus asks for 3 replicas"
    assert r.consumer_replicas and all(n in (0, 3) for n in r.consumer_replicas), r
    assert not r.gave_up, f"posts never accepted: {r.gave_up[:10]}"
    assert len(r.accepted) >= 2_000 + 300 * 3, "both phases carried traffic"
    assert not r.lost, f"accepted events lost: {r.lost[:10]} ({len(r.lost)})"
    assert not r.duplicated, f"duplicated: {dict(list(r.duplicated.items())[:10])}"
    assert not r.unasked, f"objects for events never accepted: {r.unasked[:10]}"
    assert r.alive_after and r.ready_after and r.pid_after == r.pid_before
    assert len(r.rolling_log_lines) < LOG_LINE_BOUND, "\n".join(r.rolling_log_lines[-60:])
    assert len(r.kill_log_lines) < LOG_LINE_BOUND, "\n".join(r.kill_log_lines[-60:])
    print(
        f"\naccepted {len(r.accepted)}, objects {sum(r.counts.values())}, "
        f"503 retries {r.retries_503}, killed {r.killed} "
        f"(led stream and consumer: {r.killed_led_everything}), log lines: kill phase "
        f"{len(r.kill_log_lines)}, rolling restart {len(r.rolling_log_lines)}, "
        f"phases {r.phase_seconds}"
    )


async def _items(store: Any) -> dict[str, bytes]:
    """The live keys of a state bucket, read as its log (the way a sensor reads it)."""
    out: dict[str, bytes] = {}
    revision = 0
    while (record := await store.next_record(revision)) is not None:
        revision = record.revision
        if record.value is None:
            out.pop(record.key, None)
        else:
            out[record.key] = record.value
    return out


@pytest.mark.slow
async def test_sensor_state_bucket_survives_the_loss_of_any_node(
    nats_cluster: NatsCluster,
) -> None:
    """Partial condition state (the KV bucket) is replicated like the stream: with any
    one node SIGKILLed, what was written is still read back and new writes land."""
    bus = Bus(BusSettings(publish_timeout_seconds=2.0), nats_cluster.url)
    await bus.connect()
    try:
        await bus.ensure_stream("default", StreamLimits(replicas=3))
        store = await bus.state_store("sensor-argo-events-s")
        await store.put("before", b"1")
        info = stream_info(nats_cluster.nodes[0], "KV_sensor_argo_events_s")
        assert info["config"]["num_replicas"] == 3
        want = {"before": b"1"}
        for node in nats_cluster.nodes:
            await asyncio.to_thread(node.kill)

            async def readable(w: dict[str, bytes] = want) -> bool:
                with contextlib.suppress(BusUnavailableError):
                    return await _items(store) == w
                return False

            await eventually(readable, f"state readable with {node.name} down", timeout=30)
            await store.put(f"without-{node.name}", b"2")
            want[f"without-{node.name}"] = b"2"
            await asyncio.to_thread(nats_cluster.restart, node)
        assert await _items(store) == want
    finally:
        await bus.close()


@pytest.mark.slow
async def test_publish_rides_over_a_stream_leader_election(nats_cluster: NatsCluster) -> None:
    """Right after the stream leader's node is SIGKILLed nobody answers for the stream
    until a new leader is elected: publishes wait that out (same dedup id) within the
    publish timeout instead of failing, and each is stored once."""
    bus = Bus(BusSettings(publish_timeout_seconds=30.0), nats_cluster.url)
    await bus.connect()
    try:
        await bus.ensure_stream("default", StreamLimits(replicas=3))
        leader = await asyncio.to_thread(stream_leader, nats_cluster)
        await asyncio.to_thread(leader.kill)
        for i in range(20):  # a BusUnavailableError here is the 503 a poster would get
            await bus.publish_raw("default.src.ev", b"{}", f"ev-{i}")
        await bus.publish_raw("default.src.ev", b"{}", "ev-0")  # a retry: deduplicated
        await asyncio.to_thread(nats_cluster.restart, leader)
        survivor = next(n for n in nats_cluster.nodes if n is not leader)
        assert stream_info(survivor)["state"]["messages"] == 20
    finally:
        await bus.close()
