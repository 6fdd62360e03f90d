"""Wall-clock time behind a small interface, so time-driven code can be tested.

Sources that fire on a schedule (the ``calendar`` source) read the time and wait for
the next tick through a :class:`Clock` handed to them in their context instead of
calling ``time.time()`` / ``asyncio.sleep()`` directly; a test passes a clock it moves
by hand and runs a day of hourly ticks in a moment (kopf's ``looptime`` idea, reduced
to the two calls we need). Production code uses :class:`SystemClock`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """The current time and a way to wait for a moment to come."""

    def now(self) -> float:
        """Seconds since the epoch (UTC), like ``time.time()``."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock (at once when <= 0). May
        return early; callers re-read :meth:`now`."""
        ...


class SystemClock:
    """The real clock: ``time.time()`` and ``asyncio.sleep()``."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
