"""Traces on the bus (real nats-server): bounded by the settings, read back newest
first across many scan windows, filtered, paged, and shared by two readers."""

from __future__ import annotations

import asyncio

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.compose.flow import TRACE_STREAM, TraceLog
from app.kernel.settings import BusSettings, TraceSettings
from sensors.trace import Trace, TraceStore, TriggerOutcome


def _trace(i: int) -> Trace:
    t = Trace(
        sensor="odd" if i % 2 else "even",
        namespace="ns",
        event_id=f"ev-{i:04d}",
        event_source="src",
        event_name="push",
        dependency="dep",
    )
    t.fired = True
    status = "dead-lettered" if i % 7 == 0 else "succeeded"
    t.triggers.append(TriggerOutcome(trigger="make", status=status))
    return t


async def _drain(bus: Bus, count: int) -> None:
    for _ in range(500):
        _, last = await bus.stream_bounds(TRACE_STREAM)
        if last >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"only {last} of {count} traces reached the stream")


async def test_bounded_newest_first_filtered_and_paged(bus: Bus, nats_server: EmbeddedNats) -> None:
    store = TraceStore()
    log = TraceLog(store, TraceSettings(max_msgs=1000, max_age_seconds=3600))
    await log.open(bus)
    store.sink = log.sink
    task = asyncio.create_task(log.run())
    try:
        for i in range(1300):
            store.add(_trace(i))
        await _drain(bus, 1300)
        first, last = await bus.stream_bounds(TRACE_STREAM)
        assert (first, last) == (301, 1300)  # the oldest 300 were dropped

        newest = await log.query(limit=3)
        assert [t["event_id"] for t in newest] == ["ev-1299", "ev-1298", "ev-1297"]
        assert [t["seq"] for t in newest] == [1300, 1299, 1298]
        odd = await log.query(limit=2, sensor="odd")
        assert [t["event_id"] for t in odd] == ["ev-1299", "ev-1297"]
        page2 = await log.query(limit=2, sensor="odd", before=odd[-1]["seq"])
        assert [t["event_id"] for t in page2] == ["ev-1295", "ev-1293"]
        # found across several scan windows; gone once dropped
        assert [t["seq"] for t in await log.query(event_id="ev-0301")] == [302]
        assert await log.query(event_id="ev-0299") == []
        failed = await log.query(limit=1000, outcome="failed")
        assert len(failed) == len([i for i in range(300, 1300) if i % 7 == 0])
        assert all(t["triggers"][0]["status"] == "dead-lettered" for t in failed)
        assert await log.query(sensor="nobody") == []

        # a second process on the same bus reads the same traces
        other = Bus(BusSettings(), nats_server.url)
        await other.connect()
        try:
            reader = TraceLog(TraceStore(), TraceSettings(max_msgs=1000))
            await reader.open(other)
            assert await reader.query(limit=3) == newest
            # ... and remembers the objects they name (none here: no detail)
            assert reader.store.recent(1)[0].event_id == "ev-1299"
        finally:
            await other.close()
    finally:
        task.cancel()


async def test_without_persistence_the_traces_in_memory_answer() -> None:
    store = TraceStore(capacity=50)
    log = TraceLog(store, TraceSettings(persist=False))
    for i in range(60):
        store.add(_trace(i))
    assert [t["event_id"] for t in await log.query(limit=2)] == ["ev-0059", "ev-0058"]
    assert [t["event_id"] for t in await log.query(limit=2, sensor="even")] == [
        "ev-0058",
        "ev-0056",
    ]
    failed = await log.query(limit=100, outcome="failed")
    assert [t["event_id"] for t in failed] == [
        "ev-0056",
        "ev-0049",
        "ev-0042",
        "ev-0035",
        "ev-0028",
        "ev-0021",
        "ev-0014",
    ]
    assert await log.query(event_id="ev-0009") == []  # beyond the capacity
    assert (await log.query(event_id="ev-0010"))[0]["outcome"] == "fired"
