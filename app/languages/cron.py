"""Cron schedules read in a timezone, as Argo's cron parser (robfig/cron) takes them.

Used by a trigger's ``conditionsReset.byTime`` (validated when the Sensor loads, run by
:mod:`sensors.reset`) with five fields, and by the ``calendar`` event source
(:mod:`eventsources.calendar`), which also takes robfig's six-field form with a leading
seconds field (``CronSchedule.parse(..., seconds=True)``). A schedule that can never fire
(``0 0 30 2 *``) or an unknown zone is refused with a message saying why. croniter does
the date arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

__all__ = ["CronSchedule", "zone_named"]

_REFERENCE: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""Where a new schedule's first tick is looked for, to refuse one that never fires."""


def zone_named(timezone: str) -> tzinfo:
    """The zone named ``timezone`` (UTC when empty); ``ValueError`` when unknown."""
    if not timezone:
        return UTC
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"invalid timezone {timezone!r}") from e


def _aware(when: datetime) -> datetime:
    """``when`` with a timezone: a naive datetime is taken as UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A cron schedule read in ``zone``: five fields, or six with a leading seconds
    field when ``with_seconds``."""

    cron: str
    zone: tzinfo
    zone_name: str
    with_seconds: bool = False

    @classmethod
    def parse(cls, cron: str, timezone: str = "", *, seconds: bool = False) -> CronSchedule:
        """Compile ``cron`` in ``timezone`` (UTC when empty); ``ValueError`` saying what
        is wrong when it is not five valid fields (or six with a leading seconds field,
        when ``seconds`` allows them), never fires, or the zone is unknown."""
        zone = zone_named(timezone)
        fields = cron.split()
        if len(fields) != 5 and not (seconds and len(fields) == 6):
            expected = (
                "five or six fields expected ([second] minute hour day-of-month month day-of-week)"
                if seconds
                else "five fields expected (minute hour day-of-month month day-of-week)"
            )
            raise ValueError(f"invalid cron expression {cron!r}: {expected}")
        schedule = cls(" ".join(fields), zone, timezone or "UTC", len(fields) == 6)
        try:
            schedule.next_after(_REFERENCE)
        except CroniterBadDateError as e:
            raise ValueError(f"cron expression {cron!r} never matches a date") from e
        except ValueError as e:  # croniter's syntax errors are ValueErrors
            raise ValueError(f"invalid cron expression {cron!r}: {e}") from e
        return schedule

    def next_after(self, when: datetime) -> datetime:
        """The first tick strictly after ``when``, in UTC."""
        local = _aware(when).astimezone(self.zone)
        it = croniter(self.cron, local, second_at_beginning=self.with_seconds)
        return it.get_next(datetime).astimezone(UTC)

    def last_at_or_before(self, when: datetime) -> datetime:
        """The latest tick at or before ``when``, in UTC."""
        when = _aware(when)
        it = croniter(self.cron, when.astimezone(self.zone), second_at_beginning=self.with_seconds)
        prev = it.get_prev(datetime).astimezone(UTC)
        # croniter's previous tick is strictly before its start; ``when`` may be a tick.
        following = self.next_after(prev)
        return following if following <= when else prev

    def __str__(self) -> str:
        return f"{self.cron!r} {self.zone_name}"
