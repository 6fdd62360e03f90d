"""A FAKE Azure Service Bus broker: just enough AMQP 1.0 for the real SDK's tests.

No Service Bus emulator runs on the test machines, and general AMQP brokers do not
answer Service Bus's claims-based-security handshake, so this broker, built on
``python-qpid-proton``'s reactor, answers what ``azure-servicebus`` actually sends
(learned from its ``_pyamqp`` code) over plain AMQP, as the SDK does for a connection
string with ``UseDevelopmentEmulator=true``:

* SASL ANONYMOUS: the SDK authenticates through ``$cbs`` whether it holds a connection
  string or an Azure AD credential, so ANONYMOUS is all it offers (proton's built-in
  SASL has no server side for PLAIN, and no Service Bus client path needs it);
* ``$cbs``: a ``put-token`` request is answered on the ``$cbs`` reply link with
  ``status-code: 200`` and ``correlation_id`` = the request's message id (any token);
* sender links to a queue or topic; an SDK batch (one transfer, one encoded message per
  Data section) is split into its messages; a topic copies each message to every
  subscription;
* receiver links on ``<queue>``, ``<topic>/Subscriptions/<sub>`` and their
  ``/$DeadLetterQueue``: peek-lock deliveries tagged with a 16-byte lock token, with
  ``x-opt-locked-until``, ``x-opt-sequence-number`` and ``x-opt-enqueued-time``
  annotations and the header's delivery count; receive-and-delete when the link is
  attached pre-settled; drain honoured;
* dispositions: accepted (complete), modified (abandon; defer when undeliverable-here),
  rejected (dead-letter with the reason from the error info), released; each answered
  with a settled disposition of the same outcome, or ``rejected`` with
  ``com.microsoft:message-lock-lost`` when the lock is gone;
* lock expiry (``--lock-duration-seconds``) and ``--max-delivery-count``;
* ``<entity>/$management``: ``renew-lock``, ``update-disposition``, ``peek-message``,
  ``receive-by-sequence-number`` (deferred messages); other operations answer 501.

Not implemented: sessions, scheduled messages, TTL expiry, duplicate detection,
filters/rules on subscriptions, transactions, TLS, checking tokens or claims, SASL PLAIN,
and the transfer's message format (proton's Python API does not show it: batches are
recognised by their shape, see ``amqp.split_batch``).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from proton import (
    UNDESCRIBED,
    Array,
    Condition,
    Data,
    Delivery,
    Disposition,
    Endpoint,
    Handler,
    Link,
    Message,
    Receiver,
    Sender,
    symbol,
)
from proton._events import Event
from proton.reactor import Container

from tests.fakeservicebus.amqp import (
    AmqpDecodeError,
    ParsedMessage,
    amqp_timestamp,
    decode_sections,
    split_batch,
)
from tests.fakeservicebus.store import (
    Entity,
    LockLostError,
    Namespace,
    NotFoundError,
)

log = logging.getLogger("fakeservicebus")

CBS_NODE = "$cbs"
MANAGEMENT_SUFFIX = "/$management"
LOCK_LOST = "com.microsoft:message-lock-lost"
DEAD_LETTER_CONDITION = "com.microsoft:dead-letter"
TICK_SECONDS = 0.05
RECEIVE_CREDIT = 500
MAX_MESSAGE_SIZE = 256 * 1024

LinkKind = Literal["cbs", "management", "entity"]


def node_path(address: str | None) -> str:
    """The node an address names: ``amqps://host:port/q`` and ``q`` both give ``q``."""
    if not address:
        return ""
    if "://" in address:
        address = urlparse(address).path
    return address.strip("/")


@dataclass
class LinkState:
    """What the broker knows about one attached link."""

    kind: LinkKind
    node: str
    entity: Entity | None = None
    receive_and_delete: bool = False
    outbox: deque[bytes] = field(default_factory=deque)
    next_tag: int = 0


_HandlerMethod = Callable[["FakeServiceBus", Event], None]


def _guarded(method: _HandlerMethod) -> _HandlerMethod:
    """Log a handler's exception instead of letting it stop the whole broker."""

    @functools.wraps(method)
    def wrapper(self: FakeServiceBus, event: Event) -> None:
        try:
            method(self, event)
        except Exception:
            log.exception("%s failed", method.__name__)

    return wrapper


class FakeServiceBus(Handler):
    """The proton handler: every connection, session and link of the fake broker."""

    def __init__(self, namespace: Namespace, host: str, port: int) -> None:
        super().__init__()
        self.namespace = namespace
        self.host = host
        self.port = port
        self.links: dict[Link, LinkState] = {}
        self.container: Container | None = None

    # -- lifecycle --------------------------------------------------------------------
    def on_reactor_init(self, event: Event) -> None:
        self.container = event.container
        event.container.listen(f"{self.host}:{self.port}")
        event.container.schedule(TICK_SECONDS, self)
        print(f"fakeservicebus ready on {self.host}:{self.port}", flush=True)

    def on_timer_task(self, event: Event) -> None:
        try:
            expired = sum(e.expire_locks() for e in self.namespace.all_entities())
            if expired:
                log.debug("%d lock(s) expired", expired)
            self._pump_all()
        except Exception:  # a bug here must not stop the clock: locks would never expire
            log.exception("lock expiry tick failed")
        finally:
            if self.container is not None:
                self.container.schedule(TICK_SECONDS, self)

    def on_connection_bound(self, event: Event) -> None:
        sasl = event.transport.sasl()
        sasl.allow_insecure_mechs = True
        sasl.allowed_mechs("ANONYMOUS")

    def on_connection_remote_open(self, event: Event) -> None:
        conn = event.connection
        if conn.state & Endpoint.LOCAL_UNINIT:
            conn.open()

    def on_session_remote_open(self, event: Event) -> None:
        session = event.session
        if session.state & Endpoint.LOCAL_UNINIT:
            session.open()

    @_guarded
    def on_link_remote_open(self, event: Event) -> None:
        link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        address = link.remote_source.address if link.is_sender else link.remote_target.address
        node = node_path(address)
        try:
            state = self._classify(link, node)
        except NotFoundError as e:
            link.open()
            link.condition = Condition("amqp:not-found", str(e))
            link.close()
            return
        self.links[link] = state
        if link.is_receiver:
            link.max_message_size = MAX_MESSAGE_SIZE
        link.open()
        if isinstance(link, Receiver):
            link.flow(RECEIVE_CREDIT)

    def _classify(self, link: Link, node: str) -> LinkState:
        lower = node.lower()
        if lower == CBS_NODE:
            return LinkState("cbs", lower)
        if lower.endswith(MANAGEMENT_SUFFIX):
            base = lower[: -len(MANAGEMENT_SUFFIX)]
            if base in self.namespace.topics:  # a topic sender's node: nothing to manage here
                return LinkState("management", lower)
            return LinkState("management", lower, entity=self.namespace.receive_source(base))
        if link.is_sender:
            entity = self.namespace.receive_source(lower)
            pre_settled = link.remote_snd_settle_mode == Link.SND_SETTLED
            return LinkState("entity", lower, entity=entity, receive_and_delete=pre_settled)
        self.namespace.send_targets(lower)  # raises NotFoundError for unknown entities
        return LinkState("entity", lower)

    def _forget(self, links: Iterable[Link]) -> None:
        for link in list(links):
            self.links.pop(link, None)

    def on_link_remote_close(self, event: Event) -> None:
        link = event.link
        self._forget([link])
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.close()

    def on_link_remote_detach(self, event: Event) -> None:
        self.on_link_remote_close(event)

    def on_session_remote_close(self, event: Event) -> None:
        session = event.session
        self._forget(k for k in self.links if k.session == session)
        if not session.state & Endpoint.LOCAL_CLOSED:
            session.close()

    def on_connection_remote_close(self, event: Event) -> None:
        conn = event.connection
        self._forget(k for k in self.links if k.connection == conn)
        if not conn.state & Endpoint.LOCAL_CLOSED:
            conn.close()

    def on_transport_closed(self, event: Event) -> None:
        conn = event.connection
        if conn is not None:
            self._forget(k for k in self.links if k.connection == conn)

    # -- flow -------------------------------------------------------------------------
    @_guarded
    def on_link_flow(self, event: Event) -> None:
        link = event.link
        state = self.links.get(link)
        if state is None or not isinstance(link, Sender):
            return
        self._flush_outbox(link, state)
        if state.kind == "entity":
            self._pump(link, state)
        if link.drain_mode and link.credit > 0:
            link.drained()

    def _pump_all(self) -> None:
        for link, state in list(self.links.items()):
            if state.kind == "entity" and isinstance(link, Sender):
                self._pump(link, state)

    def _pump(self, link: Sender, state: LinkState) -> None:
        """Give this receiver link as many messages as it has credit for."""
        entity = state.entity
        if entity is None or not link.state & Endpoint.LOCAL_ACTIVE:
            return
        while link.credit > 0 and entity.has_available():
            stored = entity.take_next() if state.receive_and_delete else entity.lock_next()
            if stored is None:
                break
            token = stored.lock_token or uuid.uuid4()
            delivery = link.delivery(token.bytes_le)
            delivery.fsb_entity = entity
            delivery.fsb_token = stored.lock_token
            link.send(stored.payload())
            link.advance()
            if state.receive_and_delete:
                delivery.settle()
        if link.drain_mode and link.credit > 0:
            link.drained()

    def _send_reply(self, link: Sender, state: LinkState, payload: bytes) -> None:
        state.outbox.append(payload)
        self._flush_outbox(link, state)

    def _flush_outbox(self, link: Sender, state: LinkState) -> None:
        while state.outbox and link.credit > 0:
            state.next_tag += 1
            delivery = link.delivery(str(state.next_tag))
            link.send(state.outbox.popleft())
            link.advance()
            delivery.settle()

    # -- deliveries -------------------------------------------------------------------
    @_guarded
    def on_delivery(self, event: Event) -> None:
        delivery = event.delivery
        link = delivery.link
        if isinstance(link, Receiver):
            self._incoming(link, delivery)
        else:
            self._disposition(delivery)

    def _incoming(self, link: Receiver, delivery: Delivery) -> None:
        if not delivery.readable or delivery.partial:
            return
        payload = bytes(link.recv(delivery.pending) or b"")
        link.advance()
        if link.credit < RECEIVE_CREDIT // 2:
            link.flow(RECEIVE_CREDIT - link.credit)
        state = self.links.get(link)
        if state is None:
            self._settle(delivery, Disposition.REJECTED, Condition("amqp:not-found", "no link"))
            return
        try:
            if state.kind == "cbs":
                self._cbs_request(link, state, payload)
            elif state.kind == "management":
                self._management_request(link, state, payload)
            else:
                self._enqueue(state.node, payload)
        except (AmqpDecodeError, NotFoundError, ValueError) as e:
            cond = "amqp:not-found" if isinstance(e, NotFoundError) else "amqp:decode-error"
            self._settle(delivery, Disposition.REJECTED, Condition(cond, str(e)))
            return
        self._settle(delivery, Disposition.ACCEPTED)

    @staticmethod
    def _settle(delivery: Delivery, outcome: Any, condition: Condition | None = None) -> None:
        if condition is not None:
            delivery.local.condition = condition
        delivery.update(outcome)
        delivery.settle()

    def _enqueue(self, node: str, payload: bytes) -> None:
        sections = decode_sections(payload)
        batch = split_batch(sections)
        messages = [ParsedMessage.from_sections(s) for s in (batch or [sections])]
        targets = self.namespace.send_targets(node)
        now = time.time()
        for message in messages:
            for entity in targets:
                entity.enqueue(message, enqueued_at=now)
        self._pump_all()

    def _disposition(self, delivery: Delivery) -> None:
        """A receiver settled (or proposed an outcome for) one of our deliveries.

        ``rcv-settle-mode second`` (what the SDK uses for peek-lock) sends the outcome
        unsettled and waits for us to settle with the outcome we applied; a disposition
        the client already settled (``released`` of prefetched messages) needs no echo.
        """
        entity: Entity | None = getattr(delivery, "fsb_entity", None)
        token: uuid.UUID | None = getattr(delivery, "fsb_token", None)
        outcome = delivery.remote_state
        remote_settled = delivery.settled
        if entity is None or token is None or not outcome:
            if remote_settled:
                delivery.settle()
            return
        log.debug("disposition %s settled=%s on %s", outcome, remote_settled, entity.path)
        remote = delivery.remote
        try:
            if not entity.is_current(token):
                raise LockLostError("The lock supplied is invalid or has expired.")
            if outcome == Disposition.ACCEPTED:
                entity.complete(token)
            elif outcome == Disposition.RELEASED:
                entity.release(token)
            elif outcome == Disposition.MODIFIED:
                if remote.undeliverable:
                    entity.defer(token)
                else:
                    entity.abandon(token, failed=remote.failed)
                delivery.local.failed = remote.failed
                delivery.local.undeliverable = remote.undeliverable
            elif outcome == Disposition.REJECTED:
                reason, description = _dead_letter_details(remote.condition)
                entity.dead_letter_message(token, reason, description)
            else:
                return  # RECEIVED and other non-terminal states: nothing to do
        except LockLostError as e:
            if remote_settled:
                delivery.settle()
            else:
                self._settle(delivery, Disposition.REJECTED, Condition(LOCK_LOST, str(e)))
            return
        if not remote_settled:
            delivery.update(outcome)
        delivery.settle()
        self._pump_all()

    # -- request/response nodes ---------------------------------------------------------
    def _reply_link(self, request_link: Receiver, node: str) -> tuple[Sender, LinkState] | None:
        """Our sender link on the same connection whose source is the request's node."""
        fallback: tuple[Sender, LinkState] | None = None
        for link, state in self.links.items():
            if not isinstance(link, Sender) or state.node != node:
                continue
            if link.connection != request_link.connection:
                continue
            if link.session == request_link.session:
                return link, state
            fallback = (link, state)
        return fallback

    def _respond(
        self,
        request_link: Receiver,
        node: str,
        request: Message,
        status: dict[str, Any],
        body: Any = None,
    ) -> None:
        reply = self._reply_link(request_link, node)
        if reply is None:
            log.warning("no reply link for %s", node)
            return
        response = Message(body=body, correlation_id=request.id, properties=status)
        response.address = request.reply_to
        self._send_reply(reply[0], reply[1], bytes(response.encode()))

    def _cbs_request(self, link: Receiver, state: LinkState, payload: bytes) -> None:
        request = _decode_message(payload)
        operation = str((request.properties or {}).get("operation", ""))
        if operation != "put-token":
            status = {"status-code": 501, "status-description": f"unsupported {operation!r}"}
        else:
            status = {"status-code": 200, "status-description": "OK"}
        self._respond(link, state.node, request, status)

    def _management_request(self, link: Receiver, state: LinkState, payload: bytes) -> None:
        request = _decode_message(payload)
        operation = str((request.properties or {}).get("operation", ""))
        log.debug("management %s %r on %s", operation, request.body, state.node)
        body = request.body if isinstance(request.body, dict) else {}
        args = {str(k): v for k, v in body.items()}
        try:
            if state.entity is None:
                raise NotImplementedError(f"{operation!r} on a topic is not implemented")
            code, response = self._management_operation(state.entity, operation, args)
            status: dict[str, Any] = {"statusCode": code, "statusDescription": "OK"}
        except LockLostError as e:
            code, response = 410, None
            status = {
                "statusCode": 410,
                "statusDescription": str(e),
                "errorCondition": symbol(LOCK_LOST),
            }
        except NotFoundError as e:
            response = None
            status = {
                "statusCode": 404,
                "statusDescription": str(e),
                "errorCondition": symbol("com.microsoft:message-not-found"),
            }
        except NotImplementedError as e:
            response = None
            status = {
                "statusCode": 501,
                "statusDescription": str(e),
                "errorCondition": symbol("amqp:not-implemented"),
            }
        self._respond(link, state.node, request, status, response)
        self._pump_all()

    def _management_operation(
        self, entity: Entity, operation: str, args: dict[str, Any]
    ) -> tuple[int, Any]:
        if operation == "com.microsoft:renew-lock":
            tokens = _uuids(args.get("lock-tokens"))
            until = [entity.renew(t) for t in tokens]
            return 200, {
                "expirations": Array(
                    UNDESCRIBED, Data.TIMESTAMP, *[amqp_timestamp(u) for u in until]
                )
            }
        if operation == "com.microsoft:update-disposition":
            tokens = _uuids(args.get("lock-tokens"))
            status = str(args.get("disposition-status", ""))
            reason = str(args.get("deadletter-reason", "") or "")
            description = str(args.get("deadletter-description", "") or "")
            for t in tokens:
                if status == "completed":
                    entity.complete(t)
                elif status == "abandoned":
                    entity.abandon(t)
                elif status == "suspended":
                    entity.dead_letter_message(t, reason, description)
                elif status == "defered":
                    entity.defer(t)
                else:
                    raise NotImplementedError(f"disposition-status {status!r}")
            return 200, {}
        if operation == "com.microsoft:receive-by-sequence-number":
            seqs = [int(x) for x in _elements(args.get("sequence-numbers"))]
            locked = entity.lock_deferred(seqs)
            return 200, {
                "messages": [{"message": m.payload(), "lock-token": m.lock_token} for m in locked]
            }
        if operation == "com.microsoft:peek-message":
            start = int(args.get("from-sequence-number", 0) or 0)
            count = int(args.get("message-count", 1) or 1)
            found = entity.peek(start, count)
            if not found:
                return 204, None
            return 200, {"messages": [{"message": m.payload()} for m in found]}
        raise NotImplementedError(f"operation {operation!r} is not implemented by the fake")


def _decode_message(payload: bytes) -> Message:
    message = Message()
    try:
        message.decode(payload)
    except Exception as e:
        raise AmqpDecodeError(f"undecodable request: {e}") from e
    return message


def _elements(value: Any) -> list[Any]:
    """The items of an AMQP array or list (a lone value counts as one item)."""
    if value is None:
        return []
    items = value.elements if isinstance(value, Array) else value
    return list(items) if isinstance(items, list | tuple) else [items]


def _uuids(value: Any) -> list[uuid.UUID]:
    out: list[uuid.UUID] = []
    for item in _elements(value):
        if isinstance(item, uuid.UUID):
            out.append(item)
        elif isinstance(item, bytes | bytearray | memoryview) and len(item) == 16:
            out.append(uuid.UUID(bytes=bytes(item)))
        else:
            out.append(uuid.UUID(str(item)))
    return out


def _dead_letter_details(condition: Condition | None) -> tuple[str, str]:
    if condition is None:
        return "", ""
    info = condition.info or {}
    reason = info.get("DeadLetterReason") or info.get(symbol("DeadLetterReason")) or ""
    description = (
        info.get("DeadLetterErrorDescription")
        or info.get(symbol("DeadLetterErrorDescription"))
        or condition.description
        or ""
    )
    return str(reason), str(description)
