"""``template.conditionsReset``: forget a trigger's half-met conditions on a schedule.

Why: with ``conditions: "a && b"`` the sensor keeps the latest ``a`` until a ``b``
arrives, however long that takes, so an ``a`` from Monday fires together with a ``b``
from Friday. ``conditionsReset: [{byTime: {cron, timezone}}]`` bounds that: on every
tick of the cron the trigger's stored dependency events are deleted, and a ``b`` after
the tick waits for a new ``a``.

Who calls it: :class:`sensors.runner.SensorRunner` compiles a :class:`ConditionsReset`
for each trigger that has entries when it is built (so a bad cron fails with its field
path before anything runs) and, for sensors with several dependencies (the only ones
with condition state), runs :func:`run_resets` as one task per such trigger; the task
calls the runner back to clear the state under the runner's lock.

Semantics (Argo's ``pkg/sensors/listener.go`` and its JetStream trigger connection):

* ``cron``: five fields (minute, hour, day of month, month, day of week), as Argo's
  parser takes them; ranges, lists, steps and month/day names work, seconds do not.
  A schedule that can never fire (``0 0 30 2 *``) is refused at load.
* ``timezone``: an IANA name, UTC when empty; the cron is read in local time, so
  ``0 9 * * *`` with ``America/New_York`` fires at 09:00 in New York across daylight
  saving changes (a tick in the skipped spring hour happens when the clock resumes,
  one in the repeated autumn hour happens twice; a second clear is harmless).
* Several entries: the trigger resets on the ticks of each of them.
* On a tick, every stored dependency event of the trigger is deleted.
* At start, stored events older than the most recent tick are deleted: a sensor that
  was not running at that tick would otherwise keep state the schedule says is gone
  (Argo's ``lastResetTime``). Newer events stay. "Older" compares the event's
  CloudEvents ``time`` (Argo compares when the bus stored it; the two differ only by
  the source-to-bus latency); an event without a readable time is kept.

The clock is a :class:`Clock` (the system clock by default) so tests can move time
instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Final, Protocol

from app.kernel.errors import ConfigError
from app.languages.cron import CronSchedule, zone_named
from sensors.spec import ConditionsResetCriteria

__all__ = [
    "Clock",
    "ConditionsReset",
    "CronSchedule",
    "SystemClock",
    "run_resets",
]

log = logging.getLogger("triggerfish.sensor")

MAX_SLEEP_SECONDS: Final = 60.0
"""Longest single wait before the wall clock is read again: asyncio sleeps on the
monotonic clock, so a wall clock stepped by NTP or a resumed VM would otherwise shift
an hourly tick by the size of the step."""

CLEAR_RETRY_MIN_SECONDS: Final = 1.0
CLEAR_RETRY_MAX_SECONDS: Final = 30.0
"""Back-off bounds when clearing fails (state store unavailable): a missed reset lets
stale events combine, so it is retried rather than skipped."""


class Clock(Protocol):
    """Wall-clock time and waiting, as the reset loop needs them."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (may return early; the loop reads :meth:`now` again)."""
        ...


class SystemClock:
    """The real clock: ``datetime.now(UTC)`` and ``asyncio.sleep``."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ConditionsReset:
    """A trigger's ``conditionsReset`` entries, compiled: when its state is cleared."""

    __slots__ = ("schedules", "trigger")

    def __init__(self, trigger: str, schedules: Sequence[CronSchedule]) -> None:
        if not schedules:
            raise ValueError("a conditions reset needs at least one schedule")
        self.trigger = trigger
        self.schedules = tuple(schedules)

    @classmethod
    def compile(
        cls, trigger: str, criteria: Sequence[ConditionsResetCriteria], where: str
    ) -> ConditionsReset | None:
        """Compile ``template.conditionsReset`` of trigger ``trigger``; ``None`` when it
        has no entries. ``where`` is the template's path (``spec.triggers[0].template``):
        a bad entry raises :class:`ConfigError` at ``<where>.conditionsReset[i].byTime``
        plus the field."""
        schedules: list[CronSchedule] = []
        for i, criterion in enumerate(criteria):
            by_time = criterion.by_time
            loc = f"{where}.conditionsReset[{i}].byTime"
            if not by_time.cron:
                raise ConfigError("a cron expression is required", f"{loc}.cron")
            try:
                zone_named(by_time.timezone)
            except ValueError as e:
                raise ConfigError(str(e), f"{loc}.timezone") from e
            try:
                schedules.append(CronSchedule.parse(by_time.cron, by_time.timezone))
            except ValueError as e:
                raise ConfigError(str(e), f"{loc}.cron") from e
        return cls(trigger, schedules) if schedules else None

    def next_tick(self, after: datetime) -> datetime:
        """The first tick of any schedule strictly after ``after``, in UTC."""
        return min(s.next_after(after) for s in self.schedules)

    def last_tick(self, at: datetime) -> datetime:
        """The latest tick of any schedule at or before ``at``, in UTC."""
        return max(s.last_at_or_before(at) for s in self.schedules)

    def __str__(self) -> str:
        return ", ".join(str(s) for s in self.schedules)

    def __repr__(self) -> str:
        return f"ConditionsReset({self.trigger!r}, {self})"


Clear = Callable[[datetime | None], Awaitable[None]]
"""Clears a trigger's stored events: all of them (``None``), or those older than the
given time (the catch-up at start)."""


async def run_resets(reset: ConditionsReset, clear: Clear, clock: Clock | None = None) -> None:
    """Call ``clear(None)`` at every tick of ``reset`` until cancelled.

    The catch-up of events stored before the last tick is the caller's, before it
    starts consuming (see :meth:`ConditionsReset.last_tick`): done here it would race
    the first events. A clear that fails is retried with back-off; when the loop falls
    behind (a clock step, a long failure), missed ticks fold into one clear.
    """
    clock = clock or SystemClock()
    tick = reset.next_tick(clock.now())
    while True:
        while (left := (tick - clock.now()).total_seconds()) > 0:
            await clock.sleep(min(left, MAX_SLEEP_SECONDS))
        delay = CLEAR_RETRY_MIN_SECONDS
        while True:
            try:
                await clear(None)
                break
            except Exception as e:
                log.warning(
                    "conditions reset of trigger %s at %s failed: %s; retrying in %.0fs",
                    reset.trigger,
                    tick.isoformat(),
                    e,
                    delay,
                )
                await clock.sleep(delay)
                delay = min(delay * 2, CLEAR_RETRY_MAX_SECONDS)
        tick = reset.next_tick(max(tick, clock.now()))
