"""Condition state at scale and across replicas, over a real nats-server.

A sensor with many ANDed dependencies used to list and read the whole key-value bucket
on every event (a consumer per read), and failed after a few hundred events. These
tests feed a 50-dependency sensor 1,000 events, restart it in the middle of a round,
run two replicas that split each dependency's events between them, and check that the
server holds no consumer for the bucket and only the events of the open round.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from app.adapters.bus import Bus
from app.adapters.kube import FileKube
from app.compose.manifests import load_one
from app.kernel.events import Event, new_event_id
from sensors.conditions import Condition
from sensors.condstate import ConditionState
from sensors.triggers.base import TriggerContext
from tests.support.sensors import SensorHarness, eventually

N_DEPS = 50
ROUNDS = 20
BUCKET = "KV_sensor_ns1_wide"


def deps(n: int = N_DEPS) -> list[str]:
    return [f"d{i:02d}" for i in range(n)]


def wide_sensor(names: list[str]) -> Any:
    """One ConfigMap per firing, one field per dependency (so a round mixed with another
    round's events would show)."""
    return load_one(
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Sensor",
            "metadata": {"name": "wide", "namespace": "ns1"},
            "spec": {
                "dependencies": [
                    {"name": d, "eventSourceName": "hook", "eventName": d} for d in names
                ],
                "triggers": [{"template": {"name": "make", "k8s": {
                    "operation": "create",
                    "source": {"resource": {
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"generateName": "round-"},
                        "data": {d: "none" for d in names},
                    }},
                    "parameters": [
                        {"src": {"dependencyName": d, "dataKey": "body.round"}, "dest": f"data.{d}"}
                        for d in names
                    ],
                }}}],
            },
        }
    )  # fmt: skip


def event(dep: str, round_no: int) -> Event:
    return Event(id=new_event_id(), source="hook", subject=dep, type="webhook",
                 data={"body": {"round": str(round_no)}})  # fmt: skip


def rounds_created(kube: FileKube) -> list[str]:
    """The round of each created object; fails if an object mixes rounds."""
    out = []
    for o in kube.list_objects():
        values = set(o["data"].values())
        assert len(values) == 1, f"an object mixes rounds: {sorted(values)}"
        out.append(values.pop())
    return sorted(out, key=int)


async def publish_round(bus: Bus, names: list[str], round_no: int, rng: random.Random) -> None:
    order = list(names)
    rng.shuffle(order)
    for d in order:
        await bus.publish("default", event(d, round_no))


async def bucket_consumers_and_records(bus: Bus) -> tuple[int, int]:
    info = await bus._jetstream().stream_info(BUCKET)
    return info.state.consumer_count, info.state.messages


async def only_the_marker_left(bus: Bus) -> bool:
    """No consumer on the bucket and one record (the marker) in it."""
    return await bucket_consumers_and_records(bus) == (0, 1)


async def test_fifty_dependencies_thousand_events_one_object_per_round(
    bus: Bus, tmp_path: Path
) -> None:
    names = deps()
    kube = FileKube(tmp_path / "objects")
    h = SensorHarness(bus, TriggerContext(kube=kube))
    await h.start(wide_sensor(names))
    rng = random.Random(9)
    try:
        for r in range(ROUNDS):
            await publish_round(bus, names, r, rng)
            await eventually(
                lambda r=r: len(kube.list_objects()) == r + 1, f"round {r} fired", timeout=30
            )
        await eventually(lambda: len(h.traces.recent(2000)) == N_DEPS * ROUNDS)
        assert rounds_created(kube) == [str(r) for r in range(ROUNDS)]
        assert not [t for t in h.traces.recent(2000) if t.error], "an event failed"
        # No consumer on the bucket, and fired rounds are purged: only the marker is left.
        # The purge follows the last round's create, so it is waited for.
        await eventually(
            lambda: only_the_marker_left(bus),
            "no bucket consumer and only the marker left",
        )
    finally:
        await h.stop()


async def test_restart_between_halves_of_a_round_fires_once(bus: Bus, tmp_path: Path) -> None:
    names = deps()
    kube = FileKube(tmp_path / "objects")
    rng = random.Random(3)
    first = SensorHarness(bus, TriggerContext(kube=kube))
    await first.start(wide_sensor(names))
    try:
        await publish_round(bus, names, 0, rng)
        await eventually(lambda: len(kube.list_objects()) == 1, "round 0 fired")
        half = list(names)
        rng.shuffle(half)
        for d in half[: N_DEPS // 2]:
            await bus.publish("default", event(d, 1))
        await eventually(lambda: len(first.traces.recent(2000)) == N_DEPS + N_DEPS // 2)
    finally:
        await first.stop()
    assert len(kube.list_objects()) == 1

    second = SensorHarness(bus, TriggerContext(kube=kube))
    await second.start(wide_sensor(names))
    try:
        for d in half[N_DEPS // 2 :]:
            await bus.publish("default", event(d, 1))
        await eventually(lambda: len(kube.list_objects()) == 2, "round 1 fired after restart")
        await eventually(lambda: len(second.traces.recent(2000)) == N_DEPS // 2)
        await asyncio.sleep(0.3)  # a second firing, if any, would land now
        assert rounds_created(kube) == ["0", "1"]
        # A restart with nothing pending fires nothing.
        await second.stop()
        await second.start(wide_sensor(names))
        await asyncio.sleep(0.3)
        assert rounds_created(kube) == ["0", "1"]
    finally:
        await second.stop()


async def test_two_replicas_sharing_the_consumers_fire_each_round_once(
    bus: Bus, tmp_path: Path
) -> None:
    """Each dependency's events are split between two runners (same durable consumers),
    so a round's events land on both: the one whose write completes it fires."""
    names = deps(10)
    kube = FileKube(tmp_path / "objects")
    replicas = [SensorHarness(bus, TriggerContext(kube=kube)) for _ in range(2)]
    for r in replicas:
        await r.start(wide_sensor(names))
    rng = random.Random(5)
    rounds = 30
    try:
        for n in range(rounds):
            await publish_round(bus, names, n, rng)
            await eventually(
                lambda n=n: len(kube.list_objects()) == n + 1, f"round {n} fired", timeout=30
            )
        # every event handled (a redelivery under load records one trace more)
        await eventually(
            lambda: sum(len(r.traces.recent(2000)) for r in replicas) >= 10 * rounds,
            "every event handled",
            timeout=30,
        )
        await asyncio.sleep(0.3)
        assert rounds_created(kube) == [str(n) for n in range(rounds)]
        handled = [len(r.traces.recent(2000)) for r in replicas]
        assert all(handled), f"one replica got every event ({handled}): nothing was shared"
    finally:
        for r in replicas:
            await r.stop()


async def test_interleaved_writers_agree_on_every_round(bus: Bus) -> None:
    """Three states over one bucket, written in random interleavings (each a replica):
    every round completes exactly once, on the writer of its last event, with that
    round's events, including after one of them reads the bucket back mid-way."""
    names = ["a", "b", "c"]
    cond = {"t": Condition.compile("a && (b || c)", names)}
    store = await bus.state_store("sensor-ns1-interleave")
    writers = [ConditionState(store, cond, names) for _ in range(3)]
    for w in writers:
        await w.load()
    rng = random.Random(11)
    fired: list[tuple[int, dict[str, str]]] = []
    for n in range(60):
        if n == 30:
            writers[1] = ConditionState(store, cond, names)  # a restarted replica
            assert await writers[1].load() == []
        w = rng.randrange(3)
        dep = rng.choice(names)
        ev = Event(id=f"e{n}", source="hook", subject=dep, type="webhook", data={})
        for c in await writers[w].add(["t"], dep, ev):
            fired.append((n, {d: e.id for d, e in c.events.items()}))
            await writers[w].fired(c)
    # The reference: one state applying the same events in order.
    expected: list[tuple[int, dict[str, str]]] = []
    live: dict[str, str] = {}
    rng = random.Random(11)
    for n in range(60):
        rng.randrange(3)
        dep = rng.choice(names)
        live[dep] = f"e{n}"
        if cond["t"].satisfied(set(live)):
            expected.append((n, dict(live)))
            live = {}
    assert fired == expected
    assert len(expected) > 10


async def test_redelivered_events_do_not_fire_again(bus: Bus, tmp_path: Path) -> None:
    """An event delivered again after its round fired (it was not acked in time) is not
    stored again, before or after a restart: it cannot complete a second round."""
    names = deps(2)
    kube = FileKube(tmp_path / "objects")
    h = SensorHarness(bus, TriggerContext(kube=kube))
    await h.start(wide_sensor(names))
    a, b = event("d00", 0), event("d01", 0)
    try:
        for ev in (a, b):
            await bus.publish("default", ev)
        await eventually(lambda: len(kube.list_objects()) == 1)
        # The same event ids again (other publish ids, so the bus delivers them again).
        await bus.publish_raw("default.hook.d00", a.to_json(), "again-a")
        await eventually(lambda: len(h.traces.recent()) == 3)
        await bus.publish("default", event("d01", 1))
        await eventually(lambda: len(h.traces.recent()) == 4)
        await asyncio.sleep(0.3)
        assert rounds_created(kube) == ["0"]
    finally:
        await h.stop()
    h2 = SensorHarness(bus, TriggerContext(kube=kube))
    await h2.start(wide_sensor(names))
    try:
        await bus.publish_raw("default.hook.d01", b.to_json(), "again-b")
        await eventually(lambda: len(h2.traces.recent()) == 1)
        await bus.publish("default", event("d00", 1))
        # d01 of round 1 is still stored: this completes round 1, not a mix with round 0.
        await eventually(lambda: len(kube.list_objects()) == 2)
        await asyncio.sleep(0.3)
        assert rounds_created(kube) == ["0", "1"]
    finally:
        await h2.stop()


async def test_a_round_its_writer_did_not_mark_is_taken_over(bus: Bus) -> None:
    """A replica stops after its event completed a round but before marking it fired:
    a replica that starts fires it (same events, so the same firing key), and so does
    a running one that gets the unacked event redelivered."""
    names = ["a", "b"]
    cond = {"t": Condition.compile(None, names)}
    store = await bus.state_store("sensor-ns1-takeover")
    crashed, running = ConditionState(store, cond, names), ConditionState(store, cond, names)
    await crashed.load()
    await running.load()
    a = Event(id="a1", source="hook", subject="a", type="webhook", data={})
    b = Event(id="b1", source="hook", subject="b", type="webhook", data={})
    assert await crashed.add(["t"], "a", a) == []
    [round_] = await crashed.add(["t"], "b", b)  # ... and then it stops: never marked
    assert {d: e.id for d, e in round_.events.items()} == {"a": "a1", "b": "b1"}

    starting = ConditionState(store, cond, names)
    [pending] = await starting.load()
    assert {d: e.id for d, e in pending.events.items()} == {"a": "a1", "b": "b1"}

    [redelivered] = await running.add(["t"], "b", b)
    assert {d: e.id for d, e in redelivered.events.items()} == {"a": "a1", "b": "b1"}
    await running.fired(redelivered)
    # Marked: nobody fires it again, and a new replica finds nothing pending.
    assert await ConditionState(store, cond, names).load() == []
    assert await running.add(["t"], "b", b) == []


async def test_concurrent_writers_never_fire_an_event_twice(bus: Bus) -> None:
    """Three replicas writing at the same time (each one event at a time, as a runner
    does): every round fired satisfies the condition, no event is in two rounds, and
    nothing is left unmarked."""
    names = ["a", "b", "c"]
    cond = {"t": Condition.compile("a && (b || c)", names)}
    store = await bus.state_store("sensor-ns1-concurrent")
    rng = random.Random(17)
    queues = [
        [
            Event(id=f"w{w}e{n}", source="hook", subject=dep, type="webhook", data={})
            for n, dep in enumerate(rng.choice(names) for _ in range(40))
        ]
        for w in range(3)
    ]
    fired: list[dict[str, str]] = []

    async def replica(queue: list[Event]) -> None:
        state = ConditionState(store, cond, names)
        await state.load()
        for ev in queue:
            for c in await state.add(["t"], ev.subject, ev):
                fired.append({d: e.id for d, e in c.events.items()})
                await asyncio.sleep(0)  # let the others write while this one fires
                await state.fired(c)

    await asyncio.gather(*(replica(q) for q in queues))
    assert len(fired) > 10
    for r in fired:
        assert cond["t"].satisfied(set(r)), r
    used = [i for r in fired for i in r.values()]
    assert len(used) == len(set(used)), "an event fired in two rounds"
    assert await ConditionState(store, cond, names).load() == []


async def test_state_written_by_the_earlier_layout_is_read_at_start(bus: Bus) -> None:
    """Keys ``<trigger>__<dependency>`` (one per dependency, the earlier layout) are
    taken over at start: an upgrade between A and B still fires once B arrives."""
    names = ["a", "b"]
    cond = {"t": Condition.compile(None, names)}
    store = await bus.state_store("sensor-ns1-legacy")
    a = Event(id="a1", source="hook", subject="a", type="webhook", data={"v": 1})
    await store.put("t__a", a.to_json())
    await store.put("t__b", b"{}")
    await store.delete("t__b")  # a deletion marker the earlier layout left behind
    state = ConditionState(store, cond, names)
    assert await state.load() == []
    assert state.present("t") == ["a"]
    b = Event(id="b1", source="hook", subject="b", type="webhook", data={})
    [round_] = await state.add(["t"], "b", b)
    assert round_.events["a"].data == {"v": 1}
    await state.fired(round_)
    info = await bus._jetstream().stream_info("KV_sensor_ns1_legacy")
    assert info.state.messages == 1  # the marker; the old keys are gone
