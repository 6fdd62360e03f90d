"""Standing pull requests (``app.adapters.pull``) against a real nats-server.

What the bus adapter relies on: never more handlers at once than the limit (with limit 1
the stream's order, and nothing delivered ahead of the running handler), few requests
whatever the rate, a consumer deleted under it recreated, a stop that always stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.msg import Msg

import app.adapters.pull as pull_module
from app.adapters.bus import Bus, BusMessage, event_subject
from app.adapters.natsserver import EmbeddedNats
from app.kernel.events import Event, new_event_id
from tests.support.sensors import eventually

SUBJECT = event_subject("default", "webhook", "trigger")
_PENDING = "Nats-Pending-Messages"  # how much of an ended request went unfilled


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


async def _delivered(bus: Bus, durable: str) -> int:
    info = await bus._jetstream().consumer_info("default", durable)
    return int(info.delivered.consumer_seq or 0)


async def test_limit_one_keeps_order_and_delivers_nothing_ahead(bus: Bus) -> None:
    """With limit 1 a message is asked for only after the previous handler returned:
    while the handler of message i runs the server has delivered exactly i + 1
    messages, and the order is the stream's.

    (The server's count of delivered messages, not its ack-pending count: the server
    applies acks on its own queue, so a just-sent ack may not be counted yet when the
    next message arrives, while a delivery is counted before the message leaves.)"""
    seen: list[int] = []
    ahead: list[int] = []

    async def handler(m: BusMessage) -> None:
        ahead.append(await _delivered(bus, "one") - m.event.data["i"])
        await asyncio.sleep(0.01)
        seen.append(m.event.data["i"])
        await m.ack()

    async with consuming(bus, "one", handler, concurrency=1):
        for i in range(30):
            await bus.publish("default", _event(i))
        await eventually(lambda: len(seen) == 30, "30 handled")
    assert seen == list(range(30))
    assert ahead == [1] * 30


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


def _count_asks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch of every pull request a StandingPull sends (still sent)."""
    asks: list[int] = []
    ask = pull_module.StandingPull._ask

    async def counted(self: pull_module.StandingPull, batch: int, inbox: str) -> None:
        asks.append(batch)
        await ask(self, batch, inbox)

    monkeypatch.setattr(pull_module.StandingPull, "_ask", counted)
    return asks


async def test_one_request_serves_many_messages(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer seeing one message at a time asks again only when a quarter of its
    slots freed, not per message (the cost per-batch fetches paid)."""
    asks = _count_asks(monkeypatch)
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
            await eventually(lambda d=durable: _delivered(bus, d), "delivered")
            release.set()  # the slot frees in the same loop turn as the cancel below
            task.cancel()
        assert task.done()


# -- the status messages a pull request can end with, fed one by one ----------------------


class _Recorder:
    """A StandingPull on the bus's real connection that records what it delivers and
    each sign of life: the status replies are fed to it directly, so each branch is
    reached every time (its asks go to a consumer that does not exist, unless a test
    has them recorded instead with :func:`_record_asks` or names a real consumer)."""

    def __init__(self, bus: Bus, limit: int, consumer: str = "c") -> None:
        self.delivered: list[bytes] = []
        self.alive = 0

        async def deliver(m: Msg) -> None:
            self.delivered.append(m.data)

        def alive() -> None:
            self.alive += 1

        assert bus._nc is not None
        self.nc = bus._nc
        self.pull = pull_module.StandingPull(bus._nc, "default", consumer, limit, deliver, alive)

    async def feed(self, status: str | None, **headers: str) -> None:
        hdrs = {"Status": status, **headers} if status else None
        await self.pull._on_msg(Msg(self.nc, subject="_INBOX.x", data=b"d", headers=hdrs))


def _record_asks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every StandingPull records what it asks for instead of sending it, counting it as
    due as a sent request would be; returns the batches asked for."""
    asks: list[int] = []

    async def recorded(self: pull_module.StandingPull, batch: int, inbox: str) -> None:
        asks.append(batch)
        self._outstanding += batch

    monkeypatch.setattr(pull_module.StandingPull, "_ask", recorded)
    return asks


@contextlib.asynccontextmanager
async def running(pull: pull_module.StandingPull) -> AsyncIterator[asyncio.Task[None]]:
    """Runs the loop; cancels it after (a stop that hangs fails the test here)."""
    task = asyncio.create_task(pull.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


async def test_status_replies_adjust_what_is_asked_for(bus: Bus) -> None:
    r = _Recorder(bus, limit=8)
    p = r.pull
    await p._ask(8, "_INBOX.unused")  # eight asked for
    await r.feed(None)  # a message: seven still due
    assert (p._outstanding, r.delivered, r.alive) == (7, [b"d"], 1)
    await r.feed("100", Description="Idle Heartbeat")  # alive, nothing changes
    assert (p._outstanding, r.alive) == (7, 2)
    # a request expired with 5 of its messages unfilled: those are no longer due
    await r.feed("408", Description="Request Timeout", **{_PENDING: "5"})
    assert p._outstanding == 2
    # a request ended without saying how much: forget every open request, ask again
    await r.feed("409", Description="Leadership Change")
    assert p._outstanding == 0
    assert p._gone is None and r.delivered == [b"d"]
    # a 409 that names its unfilled count is counted like a 408
    await p._ask(6, "_INBOX.unused")
    await r.feed("409", Description="Message Size Exceeds MaxBytes", **{_PENDING: "4"})
    assert p._outstanding == 2
    # a count larger than what is due (a request made before a reset): nothing is due
    await r.feed("408", Description="Request Timeout", **{_PENDING: "5"})
    assert p._outstanding == 0
    # a status it does not know: forget every open request, ask again
    await p._ask(3, "_INBOX.unused")
    await r.feed("400", Description="Bad Request")
    assert p._outstanding == 0
    assert p._gone is None and r.delivered == [b"d"]


@pytest.mark.parametrize(
    ("status", "headers", "reason"),
    [
        ("409", {"Description": "Consumer Deleted"}, "409 Consumer Deleted"),
        ("503", {}, "503 no responders"),  # the server's no-responders reply has no text
    ],
)
async def test_a_consumer_that_stopped_answering_ends_the_loop(
    bus: Bus, status: str, headers: dict[str, str], reason: str
) -> None:
    """The loop ends with :class:`ConsumerGone` naming the reply (the bus shows it in
    ``consumer_errors``). Checked on the reply itself first: the recorder's consumer
    does not exist, so a loop that went on asking would end with a 503 of its own."""
    r = _Recorder(bus, limit=2)
    await r.feed(status, **headers)
    assert r.pull._gone == reason
    with pytest.raises(pull_module.ConsumerGone) as gone:
        await asyncio.wait_for(r.pull.run(), 5)
    assert str(gone.value) == reason


@pytest.mark.parametrize("limit", [1, 4])
async def test_silence_forgets_the_open_requests(
    bus: Bus, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """No message and no heartbeat for SILENCE_SECONDS while requests are open: they
    are presumed lost (a restarted server) and asked for again (with limit 1 a single
    open request is all there is)."""
    monkeypatch.setattr(pull_module, "SILENCE_SECONDS", 0.05)
    monkeypatch.setattr(pull_module, "HEARTBEAT_SECONDS", 0.02)
    asks = _record_asks(monkeypatch)  # asked, but nothing will ever answer
    r = _Recorder(bus, limit=limit)
    async with running(r.pull):
        await eventually(lambda: len(asks) >= 3, "asked again after each silence")
    assert set(asks) == {limit}  # the whole limit each time: nothing was counted as due


async def test_reset_asks_again_at_once(bus: Bus) -> None:
    """After a reconnect (:meth:`StandingPull.reset`) the open requests are forgotten."""
    r = _Recorder(bus, limit=4)
    await r.pull._ask(4, "_INBOX.unused")
    r.pull.reset()
    assert r.pull._outstanding == 0 and r.pull._wake.is_set()


@pytest.mark.parametrize(("limit", "quarter"), [(8, 2), (7, 1)])
async def test_a_freed_quarter_wakes_the_loop(bus: Bus, limit: int, quarter: int) -> None:
    """A finished handler wakes the loop once a quarter of the limit (rounded down, at
    least one slot) is free and not asked for."""
    r = _Recorder(bus, limit=limit)
    p = r.pull
    await p._ask(limit - quarter, "_INBOX.unused")
    for _ in range(quarter):
        await p.slot()
    p._wake.clear()
    for _ in range(quarter - 1):
        p.release()  # less than a quarter free: not yet
        assert not p._wake.is_set()
    p.release()  # a quarter free: ask
    assert p._wake.is_set()


async def test_the_loop_asks_a_quarter_at_a_time_and_never_leaves_nothing_open(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the loop asks for as requests end: every free slot once a quarter of the
    limit is free; whatever is free when no request is open any more; never more than
    is free, never nothing."""
    monkeypatch.setattr(pull_module, "SILENCE_SECONDS", 60.0)  # a slow turn is no loss
    asks = _record_asks(monkeypatch)
    r = _Recorder(bus, limit=8)  # a quarter: 2
    p = r.pull

    async def ended(unfilled: int) -> None:
        """A request ends with ``unfilled`` messages not sent; the loop wakes on it."""
        await r.feed("408", Description="Request Timeout", **{_PENDING: str(unfilled)})
        await eventually(lambda: not p._wake.is_set(), "the loop took the wake")

    async with running(p):
        await eventually(lambda: asks == [8], "the whole limit asked for")
        await ended(1)  # 7 due, 1 free: less than a quarter while requests are open
        assert asks == [8]
        await ended(1)  # 6 due, 2 free: a quarter
        assert asks == [8, 2]
        for _ in range(7):
            await p.slot()
        await ended(8)  # nothing due, 7 busy, 1 free: nothing is open, so ask for it
        assert asks == [8, 2, 1]
        await p.slot()
        await ended(1)  # nothing due, all 8 busy: nothing to ask for
        assert asks == [8, 2, 1]


async def test_an_idle_request_is_kept_open_by_heartbeats(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request asks the server for idle heartbeats: while it has nothing to send,
    each heartbeat tells the bus the consumer is alive, and nothing is asked again."""
    monkeypatch.setattr(pull_module, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(pull_module, "SILENCE_SECONDS", 60.0)  # a slow turn is no loss
    asks = _count_asks(monkeypatch)
    await bus._ensure_consumer("default", "idle", SUBJECT, None)
    r = _Recorder(bus, limit=4, consumer="idle")
    async with running(r.pull):
        await eventually(lambda: r.alive >= 3, "three heartbeats")
    assert asks == [4] and r.delivered == []


async def test_a_stop_after_the_connection_closed_is_a_clean_stop(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping a consumer whose connection is closed (the bus closing) cancels it
    cleanly: the subscription went with the connection, and unsubscribing is no error."""
    monkeypatch.setattr(pull_module, "SILENCE_SECONDS", 60.0)
    asks = _record_asks(monkeypatch)

    async def deliver(m: Msg) -> None:
        raise AssertionError("nothing is asked for, so nothing arrives")

    nc = await nats.connect(nats_server.url)
    pull = pull_module.StandingPull(nc, "default", "c", 2, deliver)
    task = asyncio.create_task(pull.run())
    try:
        await eventually(lambda: asks == [2], "asked")
    finally:
        await nc.close()
        task.cancel()
        await asyncio.wait([task], timeout=10)
    assert task.cancelled()
