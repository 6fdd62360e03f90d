"""The fake broker's entities and their peek-lock state machine, with no I/O.

A queue, or a topic's subscription, is an :class:`Entity` with a dead-letter
sub-entity. Messages move through Service Bus's peek-lock cycle:

* available → locked (a receiver got it; a lock token and a ``locked_until``),
* locked → gone (complete), available again (abandon, release, lock expiry: the
  delivery count grows except on release), deferred, or the dead-letter entity
  (dead-letter; also when the delivery count reaches ``max_delivery_count``).

The proton layer (``broker.py``) turns AMQP transfers, dispositions and management
requests into calls here; tests of the broker itself go through the real SDK.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.fakeservicebus.amqp import ParsedMessage, amqp_timestamp

DEAD_LETTER_SUFFIX = "/$deadletterqueue"
SUBSCRIPTIONS_INFIX = "/subscriptions/"
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"


class LockLostError(Exception):
    """The lock token is unknown or expired (Service Bus: ``message-lock-lost``)."""


class NotFoundError(Exception):
    """No entity at that path (Service Bus: ``amqp:not-found``)."""


@dataclass(slots=True)
class StoredMessage:
    """One message in one entity (fan-out gives each subscription its own copy)."""

    sequence_number: int
    enqueued_at: float
    message: ParsedMessage
    delivery_count: int = 0
    deferred: bool = False
    lock_token: uuid.UUID | None = None
    locked_until: float = 0.0

    def payload(self) -> bytes:
        """The bytes a receiver gets: header and annotations as Service Bus sets them."""
        annotations: dict[str, Any] = {
            "x-opt-sequence-number": self.sequence_number,
            "x-opt-enqueued-time": amqp_timestamp(self.enqueued_at),
        }
        if self.lock_token is not None:
            annotations["x-opt-locked-until"] = amqp_timestamp(self.locked_until)
        return self.message.encode(self.delivery_count, annotations)


@dataclass
class Entity:
    """A queue or a subscription (or the dead-letter sub-entity of one)."""

    path: str
    lock_duration_seconds: float
    max_delivery_count: int
    clock: Callable[[], float]
    sequence: Iterator[int]
    dead_letter: Entity | None = None
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    _available: list[int] = field(default_factory=list)
    _locks: dict[uuid.UUID, StoredMessage] = field(default_factory=dict)

    # -- arrivals ---------------------------------------------------------------------
    def enqueue(self, message: ParsedMessage, *, enqueued_at: float | None = None) -> StoredMessage:
        """Store a new message at the tail; returns it with its sequence number."""
        stored = StoredMessage(
            sequence_number=next(self.sequence),
            enqueued_at=self.clock() if enqueued_at is None else enqueued_at,
            message=message,
        )
        self.messages[stored.sequence_number] = stored
        heapq.heappush(self._available, stored.sequence_number)
        return stored

    # -- receivers --------------------------------------------------------------------
    def has_available(self) -> bool:
        return bool(self._available)

    def lock_next(self) -> StoredMessage | None:
        """Lock the oldest available message for a receiver, or None when there is none."""
        while self._available:
            seq = heapq.heappop(self._available)
            stored = self.messages.get(seq)
            if stored is None or stored.lock_token is not None or stored.deferred:
                continue
            stored.lock_token = uuid.uuid4()
            stored.locked_until = self.clock() + self.lock_duration_seconds
            self._locks[stored.lock_token] = stored
            return stored
        return None

    def take_next(self) -> StoredMessage | None:
        """Receive-and-delete: the oldest available message, removed at once."""
        stored = self.lock_next()
        if stored is not None and stored.lock_token is not None:
            self._locks.pop(stored.lock_token, None)
            self.messages.pop(stored.sequence_number, None)
            stored.lock_token = None
        return stored

    def _locked(self, token: uuid.UUID) -> StoredMessage:
        stored = self._locks.get(token)
        if stored is None or stored.locked_until <= self.clock():
            raise LockLostError(
                f"The lock supplied is invalid. Either the lock expired, or the message has "
                f"already been removed from the queue. Reference:{token}, Entity:{self.path}"
            )
        return stored

    def _unlock(self, stored: StoredMessage) -> None:
        if stored.lock_token is not None:
            self._locks.pop(stored.lock_token, None)
        stored.lock_token = None
        stored.locked_until = 0.0

    def _make_available(self, stored: StoredMessage, *, failed: bool) -> None:
        """Unlock; a deferred message stays deferred (only its sequence number finds it)."""
        self._unlock(stored)
        if failed:
            stored.delivery_count += 1
            if stored.delivery_count >= self.max_delivery_count:
                self._move_to_dead_letter(
                    stored,
                    MAX_DELIVERY_REASON,
                    f"Message could not be consumed after {self.max_delivery_count} "
                    "delivery attempts.",
                )
                return
        if not stored.deferred:
            heapq.heappush(self._available, stored.sequence_number)

    def _move_to_dead_letter(self, stored: StoredMessage, reason: str, description: str) -> None:
        self._unlock(stored)
        self.messages.pop(stored.sequence_number, None)
        if self.dead_letter is None:  # a dead-letter queue's own messages cannot go further
            return
        extra = {"DeadLetterReason": reason or "", "DeadLetterErrorDescription": description or ""}
        self.dead_letter.enqueue(
            stored.message.with_application_properties(extra), enqueued_at=stored.enqueued_at
        )

    def complete(self, token: uuid.UUID) -> None:
        stored = self._locked(token)
        self._unlock(stored)
        self.messages.pop(stored.sequence_number, None)

    def abandon(self, token: uuid.UUID, *, failed: bool = True) -> None:
        self._make_available(self._locked(token), failed=failed)

    def release(self, token: uuid.UUID) -> None:
        self._make_available(self._locked(token), failed=False)

    def defer(self, token: uuid.UUID) -> None:
        stored = self._locked(token)
        self._unlock(stored)
        stored.deferred = True

    def lock_deferred(self, sequence_numbers: list[int]) -> list[StoredMessage]:
        """Receive deferred messages by sequence number (each gets a fresh lock)."""
        out: list[StoredMessage] = []
        for seq in sequence_numbers:
            stored = self.messages.get(seq)
            if stored is None or not stored.deferred:
                raise NotFoundError(f"Failed to lock one or more specified messages: {seq}")
            if stored.lock_token is not None:
                self._unlock(stored)
            stored.lock_token = uuid.uuid4()
            stored.locked_until = self.clock() + self.lock_duration_seconds
            self._locks[stored.lock_token] = stored
            out.append(stored)
        return out

    def dead_letter_message(self, token: uuid.UUID, reason: str, description: str) -> None:
        self._move_to_dead_letter(self._locked(token), reason, description)

    def renew(self, token: uuid.UUID) -> float:
        stored = self._locked(token)
        stored.locked_until = self.clock() + self.lock_duration_seconds
        return stored.locked_until

    def is_current(self, token: uuid.UUID) -> bool:
        """True while ``token`` is the live lock of a message (for link dispositions)."""
        stored = self._locks.get(token)
        return stored is not None and stored.locked_until > self.clock()

    def expire_locks(self) -> int:
        """Return messages whose lock ran out to the entity; how many there were."""
        now = self.clock()
        expired = [s for s in self._locks.values() if s.locked_until <= now]
        for stored in expired:
            self._make_available(stored, failed=True)
        return len(expired)

    def peek(self, from_sequence: int, count: int) -> list[StoredMessage]:
        """Messages still in the entity (locked or not), oldest first, without locking."""
        out = [m for seq, m in sorted(self.messages.items()) if seq >= from_sequence]
        return out[: max(count, 0)]


class Namespace:
    """Every queue and topic of the fake namespace, found by path (case-insensitive)."""

    def __init__(
        self,
        *,
        lock_duration_seconds: float,
        max_delivery_count: int,
        auto_create_queues: bool,
        clock: Callable[[], float],
    ) -> None:
        self.lock_duration_seconds = lock_duration_seconds
        self.max_delivery_count = max_delivery_count
        self.auto_create_queues = auto_create_queues
        self.clock = clock
        self.sequence = itertools.count(1)
        self.queues: dict[str, Entity] = {}
        self.topics: dict[str, dict[str, Entity]] = {}

    def _entity(self, path: str) -> Entity:
        dlq = Entity(
            path + DEAD_LETTER_SUFFIX,
            self.lock_duration_seconds,
            self.max_delivery_count,
            self.clock,
            self.sequence,
        )
        return Entity(
            path,
            self.lock_duration_seconds,
            self.max_delivery_count,
            self.clock,
            self.sequence,
            dead_letter=dlq,
        )

    def add_queue(self, name: str) -> Entity:
        key = name.lower()
        if key not in self.queues:
            self.queues[key] = self._entity(key)
        return self.queues[key]

    def add_subscription(self, topic: str, subscription: str) -> Entity:
        subs = self.topics.setdefault(topic.lower(), {})
        key = subscription.lower()
        if key not in subs:
            subs[key] = self._entity(f"{topic.lower()}{SUBSCRIPTIONS_INFIX}{key}")
        return subs[key]

    def all_entities(self) -> Iterator[Entity]:
        for q in self.queues.values():
            yield q
            if q.dead_letter is not None:
                yield q.dead_letter
        for subs in self.topics.values():
            for s in subs.values():
                yield s
                if s.dead_letter is not None:
                    yield s.dead_letter

    def send_targets(self, path: str) -> list[Entity]:
        """Where a message sent to ``path`` lands: a queue, or every subscription of a topic."""
        key = path.lower()
        if key in self.topics:
            return list(self.topics[key].values())
        if key in self.queues:
            return [self.queues[key]]
        if self.auto_create_queues and "/" not in key and not key.startswith("$"):
            return [self.add_queue(key)]
        raise NotFoundError(f"The messaging entity '{path}' could not be found.")

    def receive_source(self, path: str) -> Entity:
        """The entity a receiver on ``path`` reads (queue, subscription, or their DLQ)."""
        key = path.lower()
        dead = key.endswith(DEAD_LETTER_SUFFIX)
        base = key[: -len(DEAD_LETTER_SUFFIX)] if dead else key
        entity: Entity | None = None
        if SUBSCRIPTIONS_INFIX in base:
            topic, _, sub = base.partition(SUBSCRIPTIONS_INFIX)
            entity = self.topics.get(topic, {}).get(sub)
        elif base in self.queues:
            entity = self.queues[base]
        elif base in self.topics:
            raise NotFoundError(f"'{path}' is a topic: receive from one of its subscriptions")
        elif self.auto_create_queues and "/" not in base and not base.startswith("$"):
            entity = self.add_queue(base)
        if entity is None:
            raise NotFoundError(f"The messaging entity '{path}' could not be found.")
        if dead:
            assert entity.dead_letter is not None
            return entity.dead_letter
        return entity
