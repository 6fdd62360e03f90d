"""What the broker source tests share: running a source plugin against the real bus,
reading the bus's stream directly with nats-py, and a publisher that counts failures.

The upstream peers themselves (a second nats-server, redis-server, mosquitto, RabbitMQ)
are started by the fixtures in ``tests/broker_fixtures.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import orjson

from app.adapters.bus import Bus
from app.kernel.errors import BusUnavailableError
from app.kernel.events import Event
from eventsources.base import EventSourcePlugin, SourceContext
from tests.support.sensors import eventually
from tests.support.sources import CountingMetrics, DictSecrets

eventually_long = functools.partial(eventually, timeout=30.0, interval=0.05)


class CountingPublisher:
    """Publishes to the real bus; counts what it stored and what the bus refused."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.stored: list[str] = []
        self.refused = 0

    async def __call__(self, event: Event) -> None:
        try:
            await self.bus.publish("default", event)
        except BusUnavailableError:
            self.refused += 1
            raise
        self.stored.append(event.id)


def source_context(
    publish: Callable[[Event], Awaitable[None]],
    *,
    secrets: DictSecrets | None = None,
    metrics: CountingMetrics | None = None,
) -> SourceContext:
    return SourceContext(
        publish=publish,
        secrets=secrets or DictSecrets({}),
        log=logging.getLogger("test.brokers"),
        metrics=metrics or CountingMetrics(),
    )


@contextlib.asynccontextmanager
async def running(source: EventSourcePlugin[Any]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``source`` until the block ends; entered once the source says it is ready."""
    task = asyncio.create_task(source.run())

    async def ready() -> bool:
        if task.done():
            task.result()  # surface a startup error instead of waiting
        return source.ready()

    try:
        await eventually_long(ready, "source ready")
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Stream:
    """Reads the bus's ``default`` stream with nats-py, not through the code under test."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def count(self) -> int:
        nc = await nats.connect(self.url)
        try:
            info = await nc.jetstream().stream_info("default")
            return int(info.state.messages)
        finally:
            await nc.close()

    async def events(self) -> list[dict[str, Any]]:
        """Every stored CloudEvent in order."""
        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("default")
            out: list[dict[str, Any]] = []
            if not info.state.messages:
                return out
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg("default", seq)
                out.append(orjson.loads(m.data or b"{}"))
            return out
        finally:
            await nc.close()
