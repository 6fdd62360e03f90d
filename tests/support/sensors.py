"""Running a SensorRunner over the real bus in tests, and waiting for what it did."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from nats.js.api import ConsumerConfig, DeliverPolicy

from app.adapters.bus import Bus
from app.adapters.metrics import Metrics
from sensors.runner import RetryPolicy, SensorRunner
from sensors.trace import TraceStore
from sensors.triggers.base import TriggerContext


class SensorHarness:
    """One SensorRunner task on ``bus`` with ``ctx``; traces collected in ``traces``.

    ``runner_options`` go to :class:`SensorRunner` (defaults: 8 concurrent events, two
    quick attempts per trigger, a 2 s ack wait so redelivery tests stay short).
    """

    def __init__(self, bus: Bus, ctx: TriggerContext, **runner_options: Any) -> None:
        self.bus = bus
        self.ctx = ctx
        self.options: dict[str, Any] = {
            "concurrency": 8,
            "default_retry": RetryPolicy(steps=2, duration_seconds=0.01),
            "ack_wait_seconds": 2.0,
            **runner_options,
        }
        self.traces = TraceStore()
        self.metrics = Metrics()
        self.task: asyncio.Task[None] | None = None

    async def start(self, sensor: Any, **overrides: Any) -> None:
        runner = SensorRunner(
            sensor, self.bus, self.ctx, self.traces, self.metrics, **{**self.options, **overrides}
        )
        ready = asyncio.Event()
        self.task = asyncio.create_task(runner.run(ready))
        await asyncio.wait_for(ready.wait(), 10)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
            self.task = None


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    what: str = "condition",
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Poll ``check`` (sync or async) until it is true; fail the test after ``timeout``
    (a bound against hanging, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {what}")
        await asyncio.sleep(interval)


async def dead_letters(bus: Bus) -> list[dict[str, Any]]:
    """Every message on the bus's dead-letter subjects, decoded."""
    sub = await bus._jetstream().pull_subscribe(
        "default._dlq.>", stream="default", config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    try:
        msgs = await sub.fetch(100, timeout=2)
    except Exception:
        return []
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return [orjson.loads(m.data) for m in msgs]
