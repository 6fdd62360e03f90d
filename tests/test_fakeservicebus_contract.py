"""The contract between the real ``azure-servicebus`` SDK and our FAKE broker.

The event source's tests trust the fake to behave like Service Bus for what the source
uses. These tests pin that down through the SDK's public API, sync and async: sending
single messages and batches, peek-lock receive, complete, abandon (redelivered with
delivery count 1), dead-letter (received from the DLQ with its reason), lock renewal,
lock expiry (redelivered, the old lock lost), receive-and-delete, peek, topic fan-out.
If an SDK upgrade changes what it sends or expects, these fail first.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from azure.servicebus.exceptions import MessageLockLostError, MessagingEntityNotFoundError

from tests.servicebus_fixtures import FakeServiceBusServer

pytestmark = pytest.mark.timeout(60)


# ``keep_alive=0`` only drops the senders' idle pinger, whose one-second sleep every close
# waits out; receivers keep theirs (the SDK forces it when prefetch is 0).
def _client(server: FakeServiceBusServer) -> ServiceBusClient:
    return ServiceBusClient.from_connection_string(
        server.connection_string, retry_total=1, keep_alive=0
    )


def _aclient(server: FakeServiceBusServer) -> AsyncServiceBusClient:
    return AsyncServiceBusClient.from_connection_string(
        server.connection_string, retry_total=1, keep_alive=0
    )


def _text(message: object) -> str:
    return str(message)


def test_single_message_round_trip_with_properties(fake_servicebus: FakeServiceBusServer) -> None:
    with _client(fake_servicebus) as client:
        with client.get_queue_sender("orders") as sender:
            sender.send_messages(
                ServiceBusMessage(
                    '{"model": "resnet"}',
                    message_id="order-1",
                    subject="train",
                    content_type="application/json",
                    correlation_id="corr-1",
                    reply_to="replies",
                    application_properties={"team": "ml", "priority": 3},
                )
            )
        with client.get_queue_receiver("orders", max_wait_time=5) as receiver:
            [msg] = receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert _text(msg) == '{"model": "resnet"}'
            assert msg.message_id == "order-1"
            assert msg.subject == "train"
            assert msg.content_type == "application/json"
            assert msg.correlation_id == "corr-1"
            assert msg.reply_to == "replies"
            assert msg.application_properties == {b"team": b"ml", b"priority": 3}
            assert msg.sequence_number == 1
            assert msg.delivery_count == 0
            assert msg.enqueued_time_utc is not None
            assert msg.locked_until_utc is not None
            assert msg.locked_until_utc > msg.enqueued_time_utc
            assert isinstance(msg.lock_token, uuid.UUID)
            receiver.complete_message(msg)
            assert receiver.peek_messages(max_message_count=10, sequence_number=1) == []


def test_batches_arrive_as_separate_messages_in_order(
    fake_servicebus: FakeServiceBusServer,
) -> None:
    with _client(fake_servicebus) as client:
        with client.get_queue_sender("batch") as sender:
            batch = sender.create_message_batch()
            for i in range(3):
                batch.add_message(ServiceBusMessage(f"b{i}", message_id=f"b{i}"))
            sender.send_messages(batch)
            sender.send_messages([ServiceBusMessage("l0"), ServiceBusMessage("l1")])
        with client.get_queue_receiver("batch", max_wait_time=5) as receiver:
            got: list[object] = []
            while len(got) < 5:
                chunk = receiver.receive_messages(max_message_count=10, max_wait_time=5)
                assert chunk, "the broker stopped delivering"
                got += chunk
            assert [_text(m) for m in got] == ["b0", "b1", "b2", "l0", "l1"]
            assert [m.message_id for m in got[:3]] == ["b0", "b1", "b2"]  # type: ignore[attr-defined]
            seqs = [m.sequence_number for m in got]  # type: ignore[attr-defined]
            assert seqs == sorted(seqs) and len(set(seqs)) == 5
            for m in got:
                receiver.complete_message(m)  # type: ignore[arg-type]


def test_peek_shows_messages_without_locking_them(fake_servicebus: FakeServiceBusServer) -> None:
    with _client(fake_servicebus) as client:
        with client.get_queue_sender("peeked") as sender:
            sender.send_messages([ServiceBusMessage("p0"), ServiceBusMessage("p1")])
        with client.get_queue_receiver("peeked", max_wait_time=5) as receiver:
            peeked = receiver.peek_messages(max_message_count=10)
            assert [_text(m) for m in peeked] == ["p0", "p1"]
            got = receiver.receive_messages(max_message_count=2, max_wait_time=5)
            assert [_text(m) for m in got] == ["p0", "p1"]
            for m in got:
                receiver.complete_message(m)


def test_receive_and_delete_removes_on_delivery(fake_servicebus: FakeServiceBusServer) -> None:
    with _client(fake_servicebus) as client:
        with client.get_queue_sender("rad") as sender:
            sender.send_messages(ServiceBusMessage("gone"))
        with client.get_queue_receiver(
            "rad", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, max_wait_time=5
        ) as receiver:
            [msg] = receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert _text(msg) == "gone"
        with client.get_queue_receiver("rad", max_wait_time=1) as receiver:
            assert receiver.peek_messages(max_message_count=10, sequence_number=1) == []


async def test_abandon_redelivers_with_delivery_count_one(
    fake_servicebus: FakeServiceBusServer,
) -> None:
    async with _aclient(fake_servicebus) as client:
        async with client.get_queue_sender("abandon") as sender:
            await sender.send_messages(ServiceBusMessage("again", message_id="a-1"))
        async with client.get_queue_receiver("abandon", max_wait_time=5) as receiver:
            [first] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert first.delivery_count == 0
            await receiver.abandon_message(first)
            [second] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert second.message_id == "a-1"
            assert second.delivery_count == 1
            assert second.sequence_number == first.sequence_number
            assert second.lock_token != first.lock_token
            await receiver.complete_message(second)


async def test_dead_letter_lands_in_dlq_with_reason(
    fake_servicebus: FakeServiceBusServer,
) -> None:
    async with _aclient(fake_servicebus) as client:
        async with client.get_queue_sender("dlq") as sender:
            batch = await sender.create_message_batch()
            batch.add_message(ServiceBusMessage("poison", message_id="p-1"))
            batch.add_message(ServiceBusMessage("fine", message_id="f-1"))
            await sender.send_messages(batch)
        async with client.get_queue_receiver("dlq", max_wait_time=5) as receiver:
            [poison] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            await receiver.dead_letter_message(
                poison, reason="InvalidJSONBody", error_description="not JSON"
            )
            [fine] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert fine.message_id == "f-1"
            await receiver.complete_message(fine)
        async with client.get_queue_receiver(
            "dlq", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=5
        ) as dlq:
            [dead] = await dlq.receive_messages(max_message_count=1, max_wait_time=5)
            assert dead.message_id == "p-1"
            assert str(dead) == "poison"
            assert dead.dead_letter_reason == "InvalidJSONBody"
            assert dead.dead_letter_error_description == "not JSON"
            await dlq.complete_message(dead)


async def test_renewed_lock_outlives_the_original_lock(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
) -> None:
    server = fake_servicebus_factory(lock_duration_seconds=1.5)
    async with _aclient(server) as client:
        async with client.get_queue_sender("renew") as sender:
            await sender.send_messages(ServiceBusMessage("hold"))
        async with client.get_queue_receiver("renew", max_wait_time=5) as receiver:
            [msg] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            first_until = msg.locked_until_utc
            await asyncio.sleep(1.0)
            renewed_until = await receiver.renew_message_lock(msg)
            assert renewed_until > first_until
            await asyncio.sleep(1.0)  # past the original lock, within the renewed one
            await receiver.complete_message(msg)
            assert await receiver.peek_messages(max_message_count=5, sequence_number=1) == []


async def test_expired_lock_redelivers_and_the_old_lock_is_lost(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
) -> None:
    server = fake_servicebus_factory(lock_duration_seconds=0.5)
    async with _aclient(server) as client:
        async with client.get_queue_sender("expire") as sender:
            await sender.send_messages(ServiceBusMessage("slow", message_id="s-1"))
        async with client.get_queue_receiver("expire", max_wait_time=5) as receiver:
            [first] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            await asyncio.sleep(0.8)
            [second] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert second.message_id == "s-1"
            assert second.delivery_count == 1
            with pytest.raises(MessageLockLostError):
                await receiver.complete_message(first)
            await receiver.complete_message(second)


async def test_deferred_message_is_received_by_sequence_number_and_settled_via_management(
    fake_servicebus: FakeServiceBusServer,
) -> None:
    async with _aclient(fake_servicebus) as client:
        async with client.get_queue_sender("defer") as sender:
            await sender.send_messages(ServiceBusMessage("later", message_id="d-1"))
        async with client.get_queue_receiver("defer", max_wait_time=5) as receiver:
            [msg] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            seq = msg.sequence_number
            await receiver.defer_message(msg)
            # Deferred: still in the queue, but not delivered to receivers.
            [peeked] = await receiver.peek_messages(max_message_count=5, sequence_number=1)
            assert peeked.sequence_number == seq
            assert await receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
            [again] = await receiver.receive_deferred_messages([seq])
            assert again.message_id == "d-1"
            assert isinstance(again.lock_token, uuid.UUID)
            await receiver.renew_message_lock(again)
            await receiver.complete_message(again)  # a deferred message settles via $management
            assert await receiver.peek_messages(max_message_count=5, sequence_number=1) == []


def test_topic_fans_out_to_every_subscription(fake_servicebus: FakeServiceBusServer) -> None:
    with _client(fake_servicebus) as client:
        with client.get_topic_sender("events") as sender:
            sender.send_messages(ServiceBusMessage("fan", message_id="t-1"))
        for sub in ("a", "b"):
            with client.get_subscription_receiver("events", sub, max_wait_time=5) as receiver:
                [msg] = receiver.receive_messages(max_message_count=1, max_wait_time=5)
                assert msg.message_id == "t-1"
                assert _text(msg) == "fan"
                receiver.complete_message(msg)


def test_unknown_entity_is_not_found_without_auto_create(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
) -> None:
    server = fake_servicebus_factory(queues=["known"], auto_create_queues=False)
    with _client(server) as client:
        with (
            pytest.raises(MessagingEntityNotFoundError),
            client.get_queue_receiver("missing", max_wait_time=1) as receiver,
        ):
            receiver.receive_messages(max_message_count=1, max_wait_time=1)
        with client.get_queue_sender("known") as sender:
            sender.send_messages(ServiceBusMessage("ok"))
