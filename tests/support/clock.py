"""A fake wall clock for time-driven code (the calendar source): a test moves it by hand.

It implements :class:`app.kernel.clock.Clock`: :meth:`FakeClock.sleep` parks the caller
until :meth:`FakeClock.advance` (or :meth:`FakeClock.set`) moves the time past its
deadline, so a day of hourly ticks runs in a moment and no test waits on real time
for a schedule. Named a fake: it stands in for time passing, which cannot be waited
for here.
"""

from __future__ import annotations

import asyncio


class FakeClock:
    """Time that moves only when told to."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + seconds, fut))
        try:
            await fut
        finally:
            self._sleepers = [(d, f) for d, f in self._sleepers if f is not fut]

    def set(self, when: float) -> None:
        """Move to ``when`` (never backwards) and wake every sleeper now due."""
        self._now = max(self._now, when)
        for deadline, fut in list(self._sleepers):
            if deadline <= self._now and not fut.done():
                fut.set_result(None)

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    @property
    def sleepers(self) -> int:
        """How many callers wait on this clock now."""
        return sum(1 for _, f in self._sleepers if not f.done())
