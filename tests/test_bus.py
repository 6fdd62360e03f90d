"""The bus adapter against a real nats-server: PubAck, dedup, durable consumers, outages."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import shutil
import socket
import subprocess
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType

from app.adapters.bus import Bus, BusMessage, StreamLimits, event_subject
from app.adapters.natsserver import EmbeddedNats, find_binary
from app.kernel.errors import BusUnavailableError, StreamFullError
from app.kernel.events import Event, new_event_id
from app.kernel.settings import BusSettings
from tests.support.net import free_port, wait_for
from tests.support.sensors import eventually


def _event(i: int, eid: str | None = None, pad: int = 0) -> Event:
    return Event(
        id=eid or new_event_id(),
        source="webhook",
        subject="trigger",
        type="webhook",
        data={"body": {"i": i}, **({"pad": "x" * pad} if pad else {})},
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


async def _consume_until(
    bus: Bus,
    durable: str,
    handler: Callable[[BusMessage], Awaitable[None]],
    body: Callable[[], Awaitable[None]],
    **kw: Any,
) -> None:
    """Run ``bus.consume`` on the default stream around ``body`` (started once the
    consumer exists), then cancel it."""
    ready = asyncio.Event()
    task = asyncio.create_task(
        bus.consume("default", "default.webhook.trigger", durable, handler, ready=ready, **kw)
    )
    try:
        await asyncio.wait_for(ready.wait(), 5)
        assert durable not in bus.consumer_errors  # a clean start records no error
        await body()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not bus._pulls  # nothing left for a reconnect to reset


async def _consumer(bus: Bus, durable: str) -> Any:
    return await bus._jetstream().consumer_info("default", durable)


async def test_a_handler_that_raises_does_not_stop_delivery(bus: Bus) -> None:
    """A failing handler frees its slot: with one slot, the next message still comes."""
    got: list[int] = []
    second = asyncio.Event()

    async def handler(m: BusMessage) -> None:
        got.append(m.event.data["body"]["i"])
        if len(got) == 1:
            raise RuntimeError("handler bug")
        await m.ack()
        second.set()

    async def body() -> None:
        await bus.publish("default", _event(0))
        await bus.publish("default", _event(1))
        await asyncio.wait_for(second.wait(), 10)

    await _consume_until(bus, "raises", handler, body, concurrency=1)
    assert got == [0, 1]


async def test_a_message_that_is_not_an_event_is_terminated(bus: Bus) -> None:
    """Bytes that are not a CloudEvent never reach the handler and are never delivered
    again (term), and the messages behind them still are."""
    got: list[int] = []
    handled = asyncio.Event()

    async def handler(m: BusMessage) -> None:
        got.append(m.event.data["body"]["i"])
        await m.ack()
        handled.set()

    async def body() -> None:
        await bus.publish_raw("default.webhook.trigger", b"not an event", "junk-1")
        await bus.publish("default", _event(7))
        await asyncio.wait_for(handled.wait(), 10)

        async def settled() -> bool:
            info = await _consumer(bus, "junk")
            return int(info.num_ack_pending) == 0 and int(info.num_pending) == 0

        await eventually(settled, "the junk message terminated, the event acked", timeout=5)
        info = await _consumer(bus, "junk")
        assert int(info.num_redelivered) == 0

    await _consume_until(bus, "junk", handler, body, ack_wait_seconds=30.0)
    assert got == [7]


async def test_a_message_that_is_not_an_event_frees_its_slot_at_once(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one slot, a message that is not an event is asked for alone; once it is
    terminated the consumer asks for the next message at once, not only when the open
    request's heartbeat wait runs out (made longer than the test's bound here)."""
    import app.adapters.pull as pull_module

    monkeypatch.setattr(pull_module, "HEARTBEAT_SECONDS", 14.0)  # < expires / 2
    got: list[int] = []

    async def handler(m: BusMessage) -> None:
        got.append(m.event.data["body"]["i"])
        await m.ack()

    async def body() -> None:
        await bus.publish_raw("default.webhook.trigger", b"not an event", "junk-2")

        async def terminated() -> bool:
            return (
                int((await _consumer(bus, "junk1")).num_ack_pending) == 0
                and int((await _consumer(bus, "junk1")).delivered.consumer_seq) == 1
            )

        await eventually(terminated, "the junk message delivered and terminated")
        await bus.publish("default", _event(8))
        await eventually(lambda: got == [8], "the event behind it handled", timeout=10)

    await _consume_until(bus, "junk1", handler, body, concurrency=1)


async def test_in_progress_holds_off_redelivery_past_the_ack_wait(bus: Bus) -> None:
    """A handler that keeps saying ``in_progress`` holds its message past several ack
    waits without a redelivery (a free slot would take it at once)."""
    seen: list[int] = []

    async def handler(m: BusMessage) -> None:
        seen.append(m.num_delivered)
        if m.num_delivered == 1:
            for _ in range(16):  # 4 s, the ack wait is 1.5 s
                await m.in_progress()
                await asyncio.sleep(0.25)
        await m.ack()

    async def body() -> None:
        await bus.publish("default", _event(1))

        async def acked() -> bool:
            info = await _consumer(bus, "in-progress")
            return len(seen) == 1 and int(info.num_ack_pending) == 0

        await eventually(acked, "the message acked after the long work", timeout=15)

    await _consume_until(bus, "in-progress", handler, body, concurrency=2, ack_wait_seconds=1.5)
    assert seen == [1]
    assert int((await _consumer(bus, "in-progress")).num_redelivered) == 0


async def test_consumer_is_durable_new_only_explicit_and_kept(
    bus: Bus, bus_settings: BusSettings
) -> None:
    """The consumer is created with the promised settings, starts at new messages (the
    event published before it existed is not delivered), and a second ``consume`` of the
    same durable keeps it as it is (its position and its ack wait)."""
    await bus.publish("default", _event(0))  # before the consumer: never delivered
    got: list[int] = []
    one = asyncio.Event()

    async def handler(m: BusMessage) -> None:
        got.append(m.event.data["body"]["i"])
        await m.ack()
        one.set()

    async def body() -> None:
        await bus.publish("default", _event(1))
        await asyncio.wait_for(one.wait(), 10)

    await _consume_until(bus, "durable", handler, body, ack_wait_seconds=7.0)
    assert got == [1]
    cfg = (await _consumer(bus, "durable")).config
    assert cfg.durable_name == "durable"
    assert cfg.deliver_policy == DeliverPolicy.NEW
    assert cfg.ack_policy == AckPolicy.EXPLICIT
    assert cfg.ack_wait == 7.0
    assert cfg.max_deliver == -1
    assert cfg.max_ack_pending == bus_settings.max_ack_pending
    assert cfg.filter_subject == "default.webhook.trigger"

    await bus.publish("default", _event(2))  # while nobody consumes: kept for the durable

    async def second_body() -> None:
        await eventually(lambda: len(got) == 2, "the event stored meanwhile delivered")

    await _consume_until(bus, "durable", handler, second_body, ack_wait_seconds=3.0)
    assert got == [1, 2]
    assert (await _consumer(bus, "durable")).config.ack_wait == 7.0


async def test_one_handler_at_a_time_by_default(bus: Bus) -> None:
    """Without ``concurrency`` the handlers run one after the other, in stream order,
    even when several messages wait (all three are stored before the consumer runs)."""

    async def nothing(m: BusMessage) -> None:
        await m.ack()

    async def created() -> None:
        pass

    await _consume_until(bus, "serial", nothing, created)  # creates the durable
    sent = [_event(i) for i in range(3)]
    for e in sent:
        await bus.publish("default", e)
    running = 0
    most = 0
    got: list[str] = []

    async def slow(m: BusMessage) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.3)
        got.append(m.event.id)
        running -= 1
        await m.ack()

    async def body() -> None:
        await eventually(lambda: len(got) == 3, "the three events handled")

    await _consume_until(bus, "serial", slow, body)
    assert got == [e.id for e in sent]
    assert most == 1


async def test_a_consumer_whose_stream_vanished_is_recreated(bus: Bus) -> None:
    """The stream (and with it the consumer) is deleted under a running ``consume``: the
    consumer's error is recorded under its name while it cannot consume. A ``consume``
    of the same durable started during the outage (a sensor restarted) keeps trying too;
    once the stream is back it creates the consumer with its settings, the error is
    cleared and delivery goes on."""
    got: list[int] = []

    async def handler(m: BusMessage) -> None:
        got.append(m.event.data["body"]["i"])
        await m.ack()

    async def body() -> None:
        await bus.publish("default", _event(0))
        await eventually(lambda: got == [0], "the first event handled")
        assert "vanish" not in bus.consumer_errors
        await bus._jetstream().delete_stream("default")
        await eventually(lambda: "vanish" in bus.consumer_errors, "the error recorded")
        error = bus.consumer_errors["vanish"]
        assert error.startswith(("ConsumerGone: ", "NotFoundError: ")), error
        await eventually(
            lambda: bus.consumer_errors.get("vanish", "").startswith("NotFoundError: "),
            "the missing stream named",
        )

    await _consume_until(bus, "vanish", handler, body, ack_wait_seconds=9.0)
    again = asyncio.create_task(
        bus.consume("default", "default.webhook.trigger", "vanish", handler, ack_wait_seconds=9.0)
    )
    try:
        await asyncio.sleep(0.5)  # the outage goes on: the new consume fails meanwhile
        assert not again.done()
        await bus.ensure_stream("default")
        await eventually(lambda: "vanish" not in bus.consumer_errors, "the error cleared")
        await bus.publish("default", _event(1))
        await eventually(lambda: got == [0, 1], "the event after the outage handled")
    finally:
        again.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await again
    cfg = (await _consumer(bus, "vanish")).config
    assert (cfg.ack_wait, cfg.filter_subject) == (9.0, "default.webhook.trigger")


@pytest.fixture
def small_store_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server whose JetStream store holds 256 KiB, with two accounts: ``srv``
    shares the server's store, ``quota`` may use 32 KiB of it. Yields its address."""
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f'jetstream {{ store_dir: "{tmp_path / "js"}", max_file_store: 256KB }}\n'
        "accounts {\n"
        "  SRV: { jetstream: enabled, users: [{user: srv, password: srv}] }\n"
        "  QUOTA: { jetstream: { max_file: 32KB, max_mem: 0 },"
        " users: [{user: quota, password: quota}] }\n"
        "}\n"
    )
    log = (tmp_path / "nats.log").open("wb")
    proc = subprocess.Popen([find_binary(), "-c", str(conf)], stdout=log, stderr=log)
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() is None)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
        log.close()


@pytest.mark.parametrize(
    ("user", "why"),
    [("srv", "insufficient resources"), ("quota", "resource limits exceeded for account")],
)
async def test_used_up_storage_is_a_full_stream(small_store_nats: str, user: str, why: str) -> None:
    """When the server's store or the account's quota is used up, a publish is refused
    at once as a full stream (not retried as an election, not counted as an outage),
    and what was stored before stays."""
    bus = Bus(BusSettings(publish_timeout_seconds=2.0), f"nats://{user}:{user}@{small_store_nats}")
    await bus.connect()
    try:
        await bus.ensure_stream("default", StreamLimits(max_bytes=0))
        stored = 0
        with pytest.raises(StreamFullError, match=why):
            for i in range(1000):
                await bus.publish("default", _event(i, f"e{i}", pad=1000))
                stored += 1
        assert stored > 0
        assert await bus.stream_bounds("default") == (1, stored)
    finally:
        await bus.close()


async def test_a_refused_publish_that_is_not_about_room_is_not_retried(
    nats_server: EmbeddedNats,
) -> None:
    """A stream error other than a limit (a message above the stream's maximum size) and
    a message above the server's maximum payload are a plain :class:`BusUnavailableError`
    at once: trying again could not help, so the long budget is not spent."""
    bus = Bus(BusSettings(publish_timeout_seconds=60.0), nats_server.url)
    await bus.connect()
    try:
        await bus._jetstream().add_stream(name="small", subjects=["small.>"], max_msg_size=256)
        with pytest.raises(BusUnavailableError, match="not acknowledged") as info:
            await asyncio.wait_for(bus.publish("small", _event(0, pad=1000)), 20)
        assert not isinstance(info.value, StreamFullError)
        assert "message size exceeds maximum" in str(info.value)

        await bus.ensure_stream("default")
        with pytest.raises(BusUnavailableError, match="maximum payload exceeded") as info:
            await asyncio.wait_for(bus.publish("default", _event(0, pad=2 * 1024 * 1024)), 20)
        assert str(info.value).startswith("publish to default.webhook.trigger not acknowledged")
    finally:
        await bus.close()


async def test_stream_is_created_and_updated_as_the_eventbus_asks(bus: Bus) -> None:
    """The stream of an EventBus takes its subjects, file storage and every limit (0 is
    unlimited; the dedup window defaults to the setting), and a second ``ensure_stream``
    updates it in place (the stored events stay)."""
    js = bus._jetstream()
    await bus.ensure_stream("Orders")
    cfg = (await js.stream_info("Orders")).config
    assert cfg.subjects == ["Orders.>"]
    assert (cfg.storage, cfg.retention, cfg.discard) == (
        StorageType.FILE,
        RetentionPolicy.LIMITS,
        DiscardPolicy.NEW,
    )
    assert (cfg.max_msgs, cfg.max_bytes, cfg.max_age) == (1_000_000, 1024**3, 72 * 3600)
    assert cfg.duplicate_window == bus.settings.duplicates_window_seconds
    await bus.publish("Orders", _event(0))

    limits = StreamLimits(
        max_msgs=0, max_bytes=0, max_age_seconds=0, duplicates_seconds=60.0,
        discard_new=False,
    )  # fmt: skip
    await bus.ensure_stream("Orders", limits)
    info = await js.stream_info("Orders")
    cfg = info.config
    assert (cfg.max_msgs, cfg.max_bytes, cfg.max_age) == (-1, -1, 0)
    assert cfg.discard == DiscardPolicy.OLD
    assert (cfg.duplicate_window, cfg.num_replicas) == (60.0, 1)
    assert int(info.state.messages) == 1

    await bus.ensure_stream("Jobs", StreamLimits(retention=2))
    assert (await js.stream_info("Jobs")).config.retention == RetentionPolicy.WORK_QUEUE


async def test_a_stream_lost_with_the_servers_store_is_recreated(
    bus: Bus, nats_server: EmbeddedNats
) -> None:
    """A server restarted on an empty store has lost the streams and the consumers:
    after the reconnect the bus creates each stream again with the limits it was last
    given, a running ``consume`` its consumer, and delivery goes on."""
    await bus.ensure_stream("kept", StreamLimits(max_msgs=5))
    got: list[int] = []

    async def handler(m: BusMessage) -> None:
        got.append(m.event.data["body"]["i"])
        await m.ack()

    async def body() -> None:
        nats_server.kill()
        shutil.rmtree(nats_server.store_dir / "jetstream")
        nats_server.start()

        async def restored() -> bool:
            with contextlib.suppress(Exception):
                return (await bus._jetstream().stream_info("kept")).config.max_msgs == 5
            return False

        await eventually(restored, "the stream created again", timeout=20)
        await bus.publish("kept", _event(1))
        assert await bus.stream_bounds("kept") == (1, 1)
        await eventually(lambda: got == [1], "the event delivered after the loss", timeout=20)

    ready = asyncio.Event()
    task = asyncio.create_task(bus.consume("kept", "kept.>", "after-loss", handler, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        await body()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_publish_waits_out_a_server_restart_within_its_budget(
    nats_server: EmbeddedNats,
) -> None:
    """A publish made while the server is down is tried again with the same dedup id
    until the server is back (within ``publish_timeout_seconds``): it returns, and the
    event is stored once."""
    bus = Bus(BusSettings(publish_timeout_seconds=15.0), nats_server.url)
    await bus.connect()
    try:
        await bus.ensure_stream("default")
        nats_server.kill()
        await eventually(lambda: not bus.connected, "the client saw the server go")
        task = asyncio.create_task(bus.publish("default", _event(1, "once")))
        await asyncio.sleep(0.5)  # a few attempts fail meanwhile
        assert not task.done()
        nats_server.start()
        await asyncio.wait_for(task, 20)
        assert await bus.stream_bounds("default") == (1, 1)
        stored = await bus.get_stored("default", 1)
        assert stored is not None and Event.from_json(stored.data).id == "once"
    finally:
        await bus.close()


async def test_publish_waits_for_a_stream_that_does_not_answer_yet(bus: Bus) -> None:
    """While no stream answers for the subject (as while a cluster elects its leader),
    the publish is tried again; once the stream answers it returns and the event is
    stored once, under its dedup id."""
    task = asyncio.create_task(bus.publish_raw("late.webhook.trigger", b"{}", "late-1"))
    await asyncio.sleep(0.5)  # no responders: several attempts fail meanwhile
    assert not task.done()
    await bus.ensure_stream("late")
    await asyncio.wait_for(task, 10)
    assert await bus.stream_bounds("late") == (1, 1)
    await bus.publish_raw("late.webhook.trigger", b"{}", "late-1")  # the same id again
    assert await bus.stream_bounds("late") == (1, 1)


async def test_publish_gives_up_at_its_budget_when_no_stream_answers(
    nats_server: EmbeddedNats,
) -> None:
    """With nobody answering for the stream, the publish fails once its budget is spent
    (not sooner: it was tried again meanwhile) and says the event was not stored."""
    bus = Bus(BusSettings(publish_timeout_seconds=1.0), nats_server.url)
    await bus.connect()
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        with pytest.raises(
            BusUnavailableError,
            match=r"^publish to nowhere\.x not acknowledged: nats: no response from stream$",
        ):
            await bus.publish_raw("nowhere.x", b"{}", "lost-1")
        assert loop.time() - t0 >= 0.5  # a lower bound: the attempts were spaced out
    finally:
        await bus.close()


async def test_a_stream_without_a_leader_is_tried_again_and_named_when_given_up(
    nats_server: EmbeddedNats,
) -> None:
    """A JetStream cluster electing a stream leader answers a publish with a 503 API
    error. Here a plain subscriber on the real server answers every publish on the
    subject with that error, as the cluster would: the publish is tried again within its
    budget, and when the budget is spent the error names the 503."""
    answers = 0
    peer = await nats.connect(nats_server.url)

    async def no_leader(msg: Msg) -> None:
        nonlocal answers
        answers += 1
        error = {"code": 503, "err_code": 10008,
                 "description": "JetStream system temporarily unavailable"}  # fmt: skip
        await msg.respond(json.dumps({"error": error}).encode())

    await peer.subscribe("electing.x", cb=no_leader)
    await peer.flush()
    bus = Bus(BusSettings(publish_timeout_seconds=1.0), nats_server.url)
    await bus.connect()
    try:
        with pytest.raises(BusUnavailableError) as raised:
            await bus.publish_raw("electing.x", b"{}", "elect-1")
        assert str(raised.value) == (
            "publish to electing.x not acknowledged: nats: ServiceUnavailableError: "
            "code=503 err_code=10008 description='JetStream system temporarily unavailable'"
        )
        assert answers >= 2  # tried again, not given up at the first 503
    finally:
        await bus.close()
        await peer.close()


async def test_publish_on_a_closed_or_unconnected_bus_fails_at_once(
    nats_server: EmbeddedNats, bus_settings: BusSettings
) -> None:
    """Before ``connect`` and after ``close`` a publish is refused as not connected
    (nothing to wait for: the client will not come back)."""
    bus = Bus(BusSettings(publish_timeout_seconds=30.0), nats_server.url)
    with pytest.raises(BusUnavailableError, match=r"^bus is not connected$"):
        await asyncio.wait_for(bus.publish("default", _event(1)), 10)
    await bus.connect()
    await bus.ensure_stream("default")
    await bus.publish("default", _event(2))
    await bus.close()
    with pytest.raises(BusUnavailableError, match=r"^bus is not connected$"):
        await asyncio.wait_for(bus.publish("default", _event(3)), 10)


async def test_replicas_the_server_cannot_give_fail_the_stream_setup(bus: Bus) -> None:
    """A stream asking for three replicas of a single server is refused, and the refusal
    names the stream (the replicas reach the server)."""
    with pytest.raises(BusUnavailableError, match=r"^cannot create stream 'triple': "):
        await bus.ensure_stream("triple", StreamLimits(replicas=3))


async def test_an_attempt_that_gets_no_answer_leaves_time_for_another(bus: Bus) -> None:
    """A publish whose first attempt is swallowed (a subscriber that never answers
    stands for a stream follower that drops it while a leader is elected) is tried
    again within its budget: each attempt waits a third of it, so once the stream
    answers the publish returns, stored once."""
    nc = await nats.connect(bus.url)
    try:
        seen: list[str] = []

        async def swallow(msg: Msg) -> None:
            seen.append((msg.headers or {}).get("Nats-Msg-Id", ""))

        await nc.subscribe("mute.>", cb=swallow)
        await nc.flush()
        task = asyncio.create_task(bus.publish_raw("mute.webhook.trigger", b"{}", "mute-1"))
        await eventually(lambda: len(seen) >= 1, "the first attempt swallowed")
        await bus.ensure_stream("mute")
        await asyncio.wait_for(task, 10)
        await eventually(lambda: len(seen) >= 2, "the second attempt seen too")
        assert set(seen) == {"mute-1"}
        assert await bus.stream_bounds("mute") == (1, 1)
    finally:
        await nc.close()


async def test_close_ends_a_publish_that_waits_for_the_server(
    nats_server: EmbeddedNats,
) -> None:
    """A publish waiting for the server to come back ends at once when the bus is
    closed (nothing can come back), without spending its budget."""
    bus = Bus(BusSettings(publish_timeout_seconds=60.0), nats_server.url)
    await bus.connect()
    await bus.ensure_stream("default")
    nats_server.kill()
    await eventually(lambda: not bus.connected, "the client saw the server go")
    task = asyncio.create_task(bus.publish("default", _event(1)))
    await asyncio.sleep(0.3)
    assert not task.done()
    await bus.close()
    with pytest.raises(BusUnavailableError, match=r"^bus is not connected$"):
        await asyncio.wait_for(task, 10)


async def test_cancelling_consume_cancels_its_running_handlers(bus: Bus) -> None:
    """A handler still running when its ``consume`` is cancelled is cancelled with it
    (a stopped sensor leaves no work behind), and a finished handler's task is not
    kept (a long-running sensor does not collect one per event)."""
    started = asyncio.Event()
    cancelled = asyncio.Event()
    finished: list[weakref.ref[asyncio.Task[Any]]] = []

    async def handler(m: BusMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        if m.event.data["body"]["i"] == 0:
            await m.ack()
            finished.append(weakref.ref(task))
            return
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def body() -> None:
        await bus.publish("default", _event(0))

        def collected() -> bool:
            gc.collect()
            return len(finished) == 1 and finished[0]() is None

        await eventually(collected, "the finished handler's task let go")
        await bus.publish("default", _event(1))
        await asyncio.wait_for(started.wait(), 10)

    await _consume_until(bus, "cancel", handler, body, concurrency=2)
    await asyncio.wait_for(cancelled.wait(), 5)
