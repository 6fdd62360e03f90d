"""Standing pull requests: how a durable consumer's messages reach a sensor.

A JetStream pull consumer delivers only what the client asked for. Asking per batch
(``fetch``: a no-wait probe, then a lingering request, then return) costs two requests
and a status reply for every batch, and a consumer that sees a few events a second gets
batches of one: with a hundred sensors, each on its own event name, most of the bus's
work was pull requests rather than events. :class:`StandingPull` keeps requests open
instead, the way nats.go's ``Consume`` does: it asks for as many messages as it has free
handler slots, with ``expires`` and an idle heartbeat, and asks again when a quarter of
the slots have freed up. Messages then arrive as they are published, one request per
many messages, whatever the rate.

What it promises the bus adapter:

* at most ``limit`` handlers run at once, and with ``limit`` 1 messages are handled one
  after the other in stream order (a message is delivered only once the previous one's
  handler returned, so nothing waits unacked in the client behind a slow trigger);
* requests lost to a server restart, a reconnect or a leader change are noticed (no
  heartbeat for :data:`SILENCE_SECONDS`, a reconnect, or a 408/409 status naming the
  unfilled count) and asked for again;
* a consumer that vanished (``Consumer Deleted``, no responders) ends :meth:`run` with
  :class:`ConsumerGone`, so the caller recreates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

log = logging.getLogger(__name__)

EXPIRES_SECONDS = 30.0
"""How long one pull request stays open on the server (then a 408 says how much of it
went unfilled, and a new one is sent)."""
HEARTBEAT_SECONDS = 2.0
"""The server sends an idle heartbeat this often while a request is open and idle."""
SILENCE_SECONDS = 2 * HEARTBEAT_SECONDS + 1.0
"""No message and no heartbeat for this long while requests are open: they are gone."""

_STATUS = "Status"
_DESCRIPTION = "Description"
_PENDING = "Nats-Pending-Messages"


class ConsumerGone(nats.errors.Error):
    """The consumer no longer answers pull requests (deleted, or its stream is gone)."""


class StandingPull:
    """Keeps pull requests open on one durable consumer and runs ``deliver`` per message.

    ``deliver`` is awaited in the subscription's own task, one message at a time; it
    acquires a slot with :meth:`slot`, starts the handler and returns (waiting for the
    slot is what keeps order with ``limit`` 1). The caller reports each finished
    handler with :meth:`release`. ``alive`` is called whenever the server answers.
    """

    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        limit: int,
        deliver: Callable[[Msg], Awaitable[None]],
        alive: Callable[[], None] = lambda: None,
    ) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._limit = max(1, limit)
        self._refill = max(1, self._limit // 4)
        self._deliver = deliver
        self._slots = asyncio.Semaphore(self._limit)
        self._wake = asyncio.Event()
        self._busy = 0
        self._outstanding = 0
        """Messages asked for and not yet delivered (or reported unfilled)."""
        self._seen = 0.0
        self._gone: str | None = None
        self._alive = alive
        """Called whenever the server answers (a message or a heartbeat)."""

    # -- called by the caller ---------------------------------------------------------
    async def slot(self) -> None:
        """Wait for a free handler slot (keeps order with ``limit`` 1)."""
        await self._slots.acquire()
        self._busy += 1

    def release(self) -> None:
        """A handler finished: free its slot and maybe ask for more."""
        self._busy -= 1
        self._slots.release()
        if self._limit - self._busy - self._outstanding >= self._refill:
            self._wake.set()

    def reset(self) -> None:
        """Forget the open requests (after a reconnect): ask again at once."""
        self._outstanding = 0
        self._wake.set()

    async def run(self) -> None:
        """Ask for messages as slots free up, until cancelled or the consumer is gone."""
        loop = asyncio.get_running_loop()
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, cb=self._on_msg)
        try:
            while True:
                if self._gone is not None:
                    raise ConsumerGone(self._gone)
                now = loop.time()
                if self._outstanding > 0 and now - self._seen > SILENCE_SECONDS:
                    log.debug("pull %s: no heartbeat, asking again", self._next)
                    self._outstanding = 0
                free = self._limit - self._busy - self._outstanding
                if free > 0 and (free >= self._refill or self._outstanding == 0):
                    await self._ask(free, inbox)
                    self._seen = now
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                # cancellation that arrives as the event is set, and the consumer
                # would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARTBEAT_SECONDS):
                        await self._wake.wait()
        finally:
            # A closed connection took the subscription with it.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    # -- internals --------------------------------------------------------------------
    async def _ask(self, batch: int, inbox: str) -> None:
        request = {
            "batch": batch,
            "expires": int(EXPIRES_SECONDS * 1e9),
            "idle_heartbeat": int(HEARTBEAT_SECONDS * 1e9),
        }
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=inbox)
        self._outstanding += batch

    async def _on_msg(self, msg: Msg) -> None:
        self._seen = asyncio.get_running_loop().time()
        status = msg.headers.get(_STATUS) if msg.headers else None
        if not status:
            self._outstanding = max(0, self._outstanding - 1)
            self._alive()
            await self._deliver(msg)
            return
        headers = msg.headers or {}
        if status == "100":  # idle heartbeat: the requests are alive
            self._alive()
            return
        description = headers.get(_DESCRIPTION, "")
        if status == "503" or (status == "409" and "Consumer Deleted" in description):
            self._gone = f"{status} {description or 'no responders'}".strip()
        elif status in ("404", "408", "409"):
            # A request ended: the server says how much of it went unfilled; without
            # that count, forget every open request and ask again.
            pending = headers.get(_PENDING)
            if pending is not None and pending.isdigit():
                self._outstanding = max(0, self._outstanding - int(pending))
            else:
                self._outstanding = 0
            if status == "409":
                log.debug("pull %s: %s %s", self._next, status, description)
        else:
            log.warning("pull %s: unexpected status %s %s", self._next, status, description)
            self._outstanding = 0
        self._wake.set()
