"""Standing pull requests (``app.adapters.pull``) against a real nats-server.

What the bus adapter relies on: never more handlers at once than the limit (with limit 1
the stream's order, and nothing delivered ahead of the running handler), few requests
whatever the rate, a consumer deleted under it recreated, a stop that always stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import app.adapters.pull as pull_module
from app.adapters.bus import Bus, BusMessage, event_subject
from app.kernel.events import Event, new_event_id
from tests.support.sensors import eventually

SUBJECT = event_subject("default", "webhook", "trigger")


def _event(i: int) -> Event:
    return Event(
        id=new_event_id(), source="webhook", subject="trigger", type="webhook", data={"i": i}
    )


@contextlib.asynccontextmanager
async def consuming(
    bus: Bus, durable: str, handler: Callable[[BusMessage], Awaitable[None]], concurrency: int
) -> AsyncIterator[asyncio.Task[None]]:
    ready = asyncio.Event()
    task = asyncio.create_task(
        bus.consume("default", SUBJECT, durable, handler, concurrency=concurrency, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)  # a stop that hangs fails the test here


async def _ack_pending(bus: Bus, durable: str) -> int:
    info = await bus._jetstream().consumer_info("default", durable)
    return int(info.num_ack_pending or 0)


async def test_limit_one_keeps_order_and_delivers_nothing_ahead(bus: Bus) -> None:
    """With limit 1 a message is asked for only after the previous handler returned:
    the consumer never holds two unacked messages, and the order is the stream's."""
    seen: list[int] = []
    unacked: list[int] = []

    async def handler(m: BusMessage) -> None:
        unacked.append(await _ack_pending(bus, "one"))
        await asyncio.sleep(0.01)
        seen.append(m.event.data["i"])
        await m.ack()

    async with consuming(bus, "one", handler, concurrency=1):
        for i in range(30):
            await bus.publish("default", _event(i))
        await eventually(lambda: len(seen) == 30, "30 handled")
    assert seen == list(range(30))
    assert max(unacked) == 1


async def test_never_more_handlers_than_the_limit(bus: Bus) -> None:
    running = 0
    most = 0
    done: list[int] = []

    async def handler(m: BusMessage) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1
        done.append(m.event.data["i"])
        await m.ack()

    async with consuming(bus, "four", handler, concurrency=4):
        for i in range(40):
            await bus.publish("default", _event(i))
        await eventually(lambda: len(done) == 40, "40 handled")
    assert sorted(done) == list(range(40))
    assert most == 4  # the limit is used, and never passed


async def test_one_request_serves_many_messages(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer seeing one message at a time asks again only when a quarter of its
    slots freed, not per message (the cost per-batch fetches paid)."""
    asks: list[int] = []
    ask = pull_module.StandingPull._ask

    async def counted(self: pull_module.StandingPull, batch: int, inbox: str) -> None:
        asks.append(batch)
        await ask(self, batch, inbox)

    monkeypatch.setattr(pull_module.StandingPull, "_ask", counted)
    done: list[int] = []

    async def handler(m: BusMessage) -> None:
        done.append(m.event.data["i"])
        await m.ack()

    async with consuming(bus, "many", handler, concurrency=64):
        for i in range(100):
            await bus.publish("default", _event(i))
            await asyncio.sleep(0.002)  # a trickle: the batches of one per-batch fetch gave
        await eventually(lambda: len(done) == 100, "100 handled")
    assert asks[0] == 64
    assert len(asks) < 20  # about one per 16 freed slots (7), never one per message (100)


async def test_a_deleted_consumer_is_recreated(bus: Bus) -> None:
    done: list[int] = []

    async def handler(m: BusMessage) -> None:
        done.append(m.event.data["i"])
        await m.ack()

    async with consuming(bus, "gone", handler, concurrency=8):
        await bus.publish("default", _event(0))
        await eventually(lambda: done == [0], "first handled")
        await bus._jetstream().delete_consumer("default", "gone")
        await eventually(lambda: "gone" in bus.consumer_errors, "the loss noticed", timeout=15)

        async def recreated() -> bool:
            with contextlib.suppress(Exception):
                await bus._jetstream().consumer_info("default", "gone")
                return True
            return False

        await eventually(recreated, "the consumer recreated", timeout=15)
        await bus.publish("default", _event(1))
        await eventually(lambda: done == [0, 1], "handled after recreation", timeout=15)
        await eventually(lambda: "gone" not in bus.consumer_errors, "error cleared")


async def test_stop_while_a_handler_finishes_always_stops(bus: Bus) -> None:
    """Cancelling the consumer as a handler frees its slot (which wakes the pull loop)
    stops it: the cancellation is never swallowed."""
    for attempt in range(20):
        durable = f"stop{attempt}"
        release = asyncio.Event()

        async def handler(m: BusMessage, release: asyncio.Event = release) -> None:
            await release.wait()
            await m.ack()

        async with consuming(bus, durable, handler, concurrency=1) as task:
            await bus.publish("default", _event(attempt))
            await eventually(lambda d=durable: _ack_pending(bus, d), "delivered")
            release.set()  # the slot frees in the same loop turn as the cancel below
            task.cancel()
        assert task.done()
