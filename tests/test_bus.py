"""The bus adapter against a real nats-server: PubAck, dedup, durable consumers, outages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from app.adapters.bus import Bus, BusMessage, event_subject
from app.adapters.natsserver import EmbeddedNats
from app.kernel.errors import BusUnavailableError
from app.kernel.events import Event, new_event_id


def _event(i: int, eid: str | None = None) -> Event:
    return Event(
        id=eid or new_event_id(),
        source="webhook",
        subject="trigger",
        type="webhook",
        data={"body": {"i": i}},
    )


async def _collect(
    bus: Bus,
    durable: str,
    n: int,
    publish: Callable[[], Awaitable[None]] | None = None,
    timeout: float = 10.0,
) -> list[BusMessage]:
    got: list[BusMessage] = []
    done = asyncio.Event()

    async def handler(m: BusMessage) -> None:
        got.append(m)
        await m.ack()
        if len(got) >= n:
            done.set()

    ready = asyncio.Event()
    task = asyncio.create_task(
        bus.consume(
            "default",
            event_subject("default", "webhook", "trigger"),
            durable,
            handler,
            concurrency=1,
            ready=ready,
        )
    )
    await asyncio.wait_for(ready.wait(), 5)
    if publish is not None:
        await publish()
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return got


async def test_publish_then_consume_roundtrip(bus: Bus) -> None:
    ready = asyncio.Event()
    got: list[Event] = []

    async def handler(m: BusMessage) -> None:
        got.append(m.event)
        await m.ack()

    task = asyncio.create_task(
        bus.consume("default", "default.webhook.trigger", "s1", handler, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 5)
    sent = [_event(i) for i in range(5)]
    for e in sent:
        await bus.publish("default", e)
    for _ in range(200):
        if len(got) == 5:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert [e.id for e in got] == [e.id for e in sent]
    assert got[0].data == {"body": {"i": 0}}
    assert got[0].type == "webhook" and got[0].source == "webhook"


async def test_same_event_id_is_stored_once(bus: Bus) -> None:
    eid = new_event_id()

    async def publish() -> None:
        for _ in range(3):
            await bus.publish("default", _event(1, eid))
        await bus.publish("default", _event(2))

    got = await _collect(bus, "dedup", 2, publish)
    assert len(got) == 2
    assert got[0].event.id == eid


async def test_publish_fails_fast_when_server_is_down(bus: Bus, nats_server: EmbeddedNats) -> None:
    nats_server.kill()
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(BusUnavailableError):
        await bus.publish("default", _event(1))
    assert loop.time() - t0 < 5.0
    nats_server.start()
    for _ in range(200):
        if bus.connected:
            break
        await asyncio.sleep(0.05)
    await bus.publish("default", _event(2))


async def test_unacked_message_is_redelivered(bus: Bus) -> None:
    seen: list[int] = []
    ready = asyncio.Event()

    async def handler(m: BusMessage) -> None:
        seen.append(m.num_delivered)
        if m.num_delivered == 1:
            await m.nak()
        else:
            await m.ack()

    task = asyncio.create_task(
        bus.consume("default", "default.webhook.trigger", "redeliver", handler, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 5)
    await bus.publish("default", _event(1))
    for _ in range(200):
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert seen[:2] == [1, 2]


async def test_nak_with_a_delay_is_not_redelivered_sooner(bus: Bus) -> None:
    """``nak(delay_seconds)`` reaches the server: the redelivery comes no sooner (a lower
    bound the server guarantees, not a timing measurement); the message names its subject."""
    loop = asyncio.get_running_loop()
    seen: list[tuple[int, str, float]] = []
    ready = asyncio.Event()
    redelivered = asyncio.Event()
    nak_at = 0.0

    async def handler(m: BusMessage) -> None:
        nonlocal nak_at
        seen.append((m.num_delivered, m.subject, loop.time()))
        if m.num_delivered == 1:
            nak_at = loop.time()
            await m.nak(delay_seconds=1.0)
        else:
            await m.ack()
            redelivered.set()

    task = asyncio.create_task(
        bus.consume("default", "default.webhook.trigger", "nak-delay", handler, ready=ready)
    )
    try:
        await asyncio.wait_for(ready.wait(), 5)
        await bus.publish("default", _event(1))
        await asyncio.wait_for(redelivered.wait(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [(n, s) for n, s, _ in seen] == [
        (1, "default.webhook.trigger"),
        (2, "default.webhook.trigger"),
    ]
    assert seen[1][2] - nak_at >= 0.9
