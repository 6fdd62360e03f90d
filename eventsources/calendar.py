"""Calendar event source (``spec.calendar``): one event per tick of a schedule.

Argo's ``CalendarEventSource``: a cron ``schedule`` (five fields, or six with leading
seconds) or a fixed ``interval`` (a Go duration; ``schedule`` wins when both are set),
read in ``timezone``, skipping every tick whose date (in that zone) is one of the
``exclusionDates``; ``metadata`` is passed along in each event; ``filter.expression`` as
on every source. Nothing upstream is acknowledged: what must not be lost or doubled is
the tick itself, so

* every tick's event id (the bus's ``Nats-Msg-Id``) is derived from the source, the
  event name, the schedule and the tick time: a tick published twice (a crash between
  the publish and the record below, a takeover by another replica) is stored once;
* after the bus took a tick, its event data is recorded as the event name's last tick
  (in the bus's key-value store, or Argo's ConfigMap when ``persistence.configMap`` is
  set and the process has a Kubernetes API), the same JSON Argo keeps in its ConfigMap;
* with ``persistence.catchup.enabled`` a (re)start fires every tick after the recorded
  one that is already due, oldest first, but none older than ``catchup.maxDuration``
  before now (all of them when it is empty, as in Argo); without it the schedule starts
  from now, as in Argo;
* a tick the bus refuses is retried (same id) until it is stored, before any later tick.

Time comes from the context's :class:`~app.kernel.clock.Clock`, so a test can run a day
of hourly ticks without waiting. The type is a singleton (:meth:`CalendarSource.singleton`):
with several replicas only the holder of the source's Lease fires.
Registered as ``calendar`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, ClassVar, Final

import orjson
from pydantic import Field, field_validator, model_validator

from app.kernel.argo import parse_go_duration
from app.kernel.errors import ConfigError, PermanentError, TransientError
from app.kernel.events import event_id_from
from app.kernel.spec import SpecModel
from app.languages.cron import CronSchedule, zone_named
from eventsources.base import SourceState
from eventsources.brokers import BusBackoff, Deliverer, Outcome, PerEventSource
from eventsources.common import EventSourceFilter

EXDATE_PREFIX: Final = "EXDATE:"
EXDATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
"""RFC 5545 DATE-TIME in UTC, the only form Argo's ``ParseExclusionDates`` reads."""
MAX_WAIT_SECONDS: Final = 60.0
"""Longest single wait for a tick: the clock is read again at least this often, so a
suspended host or a stepped clock is noticed."""
STATE_RETRY_SECONDS: Final = 1.0

_GO_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d{1,9}))? ([+-]\d{4})(?: \S+)?$")


def parse_exclusion_date(value: str) -> date:
    """The date of one ``EXDATE:20190102T150405Z`` entry; ``ValueError`` otherwise."""
    if not value.startswith(EXDATE_PREFIX):
        raise ValueError(f"{value!r} must start with {EXDATE_PREFIX!r} "
                         "(e.g. EXDATE:20190102T150405Z)")  # fmt: skip
    try:
        return datetime.strptime(value[len(EXDATE_PREFIX) :], EXDATE_FORMAT).date()
    except ValueError as e:
        raise ValueError(f"{value!r} is not EXDATE:YYYYMMDDTHHMMSSZ") from e


def go_time_string(t: datetime) -> str:
    """``t`` as Go's ``time.Time.String()`` writes it (Argo's ``eventTime``):
    ``2024-01-02 03:00:00 +0000 UTC``, fractional seconds only when non-zero."""
    text = t.strftime("%Y-%m-%d %H:%M:%S")
    if t.microsecond:
        text += "." + f"{t.microsecond:06d}".rstrip("0")
    offset = t.strftime("%z")
    return f"{text} {offset} {t.tzname() or offset}"


def parse_go_time(text: str) -> datetime:
    """Read back an ``eventTime`` (ours or Argo's, whose may end in a monotonic
    `` m=+1.23`` reading); ``ValueError`` when it is neither."""
    m = _GO_TIME.match(text.split(" m=")[0].strip())
    if m is None:
        raise ValueError(f"unreadable event time {text!r}")
    frac = (m.group(2) or "").ljust(6, "0")[:6]
    return datetime.strptime(f"{m.group(1)}.{frac} {m.group(3)}", "%Y-%m-%d %H:%M:%S.%f %z")


class CatchupConfiguration(SpecModel):
    """``persistence.catchup``: fire the ticks missed while the source was away."""

    enabled: bool = False
    max_duration: str = Field("", description="oldest missed tick fired, as a Go duration")

    @field_validator("max_duration")
    @classmethod
    def _duration(cls, v: str) -> str:
        if v and parse_go_duration(v) < 0:
            raise ValueError(f"invalid duration {v!r}: must not be negative")
        return v


class ConfigMapPersistence(SpecModel):
    """``persistence.configMap``: keep the last tick in this ConfigMap (Argo's store)."""

    name: str = ""
    create_if_not_exist: bool = False


class EventPersistence(SpecModel):
    """``persistence``: how the last tick is kept and whether missed ones are fired."""

    catchup: CatchupConfiguration | None = None
    config_map: ConfigMapPersistence | None = None


class CalendarConfig(SpecModel):
    """One calendar event (Argo ``CalendarEventSource``)."""

    schedule: str = Field("", description="cron: five fields, or six with leading seconds")
    interval: str = Field("", description="Go duration between ticks (when no schedule)")
    exclusion_dates: list[str] = Field(default_factory=list)
    timezone: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)
    persistence: EventPersistence | None = None
    filter: EventSourceFilter | None = None

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        if v:
            CronSchedule.parse(v, seconds=True)
        return v

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str) -> str:
        if v and parse_go_duration(v) <= 0:
            raise ValueError(f"invalid interval {v!r}: must be positive")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        zone_named(v)
        return v

    @field_validator("exclusion_dates")
    @classmethod
    def _exclusion_dates(cls, v: list[str]) -> list[str]:
        for item in v:
            parse_exclusion_date(item)
        return v

    @model_validator(mode="after")
    def _schedule_or_interval(self) -> CalendarConfig:
        if not self.schedule and not self.interval:
            raise ValueError("must have either schedule or interval")
        return self

    @property
    def catchup(self) -> CatchupConfiguration | None:
        c = self.persistence.catchup if self.persistence else None
        return c if c is not None and c.enabled else None


def _constant_delay(t: datetime, delay: timedelta) -> datetime:
    """robfig's ``ConstantDelaySchedule`` (Argo's ``interval``): the previous tick plus
    the delay, rounded down to the whole second; never the same tick again (for a delay
    under a second the rounding could give ``t`` itself, which Argo then fires in a
    busy loop), then simply ``t + delay``."""
    n = t + delay - timedelta(microseconds=t.microsecond)
    return n if n > t else t + delay


class Ticks:
    """The ticks of one calendar event: ``next_after(t)`` is the first tick strictly
    after ``t`` whose date (in the schedule's zone) is not excluded; aware datetimes in
    that zone."""

    def __init__(self, cfg: CalendarConfig) -> None:
        self.zone: tzinfo = zone_named(cfg.timezone)
        self.excluded = frozenset(parse_exclusion_date(d) for d in cfg.exclusion_dates)
        self.interval: timedelta | None = None
        self._step: Callable[[datetime], datetime]
        if cfg.schedule:
            cron = CronSchedule.parse(cfg.schedule, cfg.timezone, seconds=True)
            self.identity = f"schedule={cron.cron}"
            self._step = lambda t: cron.next_after(t).astimezone(self.zone)
        else:
            delay = timedelta(seconds=parse_go_duration(cfg.interval))
            self.interval = delay
            self.identity = f"interval={delay.total_seconds()!r}"
            self._step = lambda t: _constant_delay(t, delay).astimezone(self.zone)
        self.identity += f" tz={cfg.timezone or 'UTC'}"

    def next_after(self, t: datetime) -> datetime:
        n = self._step(t.astimezone(self.zone))
        while n.date() in self.excluded:
            day_end = datetime.combine(n.date() + timedelta(days=1), datetime.min.time(), self.zone)
            if (
                self.interval is not None
                and self.interval >= timedelta(seconds=1)
                and not (self.interval.microseconds)
            ):  # whole-second steps: jump over the day in one go
                missing = (day_end - n) / self.interval
                steps = int(missing) + (1 if missing > int(missing) else 0)
                n = (n + steps * self.interval).astimezone(self.zone)
                if n.date() in self.excluded:
                    continue
                return n
            if self.interval is None:  # cron: the first tick at or after the next midnight
                n = self._step(day_end - timedelta(seconds=1))
            else:
                n = self._step(n)
        return n


def event_data(tick: datetime, cfg: CalendarConfig) -> dict[str, Any]:
    """Argo's ``CalendarEventData``: ``eventTime`` and, when set, ``metadata``."""
    data: dict[str, Any] = {"eventTime": go_time_string(tick)}
    if cfg.metadata:
        data["metadata"] = dict(cfg.metadata)
    return data


class _Calendar:
    """One event name: wait for each tick, publish it, record it."""

    def __init__(self, plugin: CalendarSource, event_name: str, cfg: CalendarConfig) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.event_name = event_name
        self.cfg = cfg
        self.ticks = Ticks(cfg)
        self.where = f"calendar {plugin.source_name}/{event_name}"
        expression = cfg.filter.expression if cfg.filter else None
        self.deliverer = Deliverer(plugin, event_name, expression)
        self.live = False
        self.last_tick: datetime | None = None
        """The last tick published (or filtered out) by this worker."""
        self.store: SourceState | None = None
        self.key = ""

    # -- state ------------------------------------------------------------------------
    async def _open_store(self) -> None:
        stores = self.ctx.state
        if stores is None:
            self.ctx.log.info("%s: no state store: a restart starts from the current time",
                              self.where)  # fmt: skip
            return
        cm = self.cfg.persistence.config_map if self.cfg.persistence else None
        if cm is not None and cm.name:
            try:
                store = await stores.config_map(
                    self.plugin.namespace, cm.name, cm.create_if_not_exist
                )
            except ConfigError as e:
                raise ConfigError(
                    e.message, path=f"spec.calendar.{self.event_name}.persistence.configMap"
                ) from e
            if store is not None:
                self.store, self.key = store, f"{self.plugin.source_name}.{self.event_name}"
                return
            self.ctx.log.warning(
                "%s: persistence.configMap %r not used (no Kubernetes API in this process): "
                "the last tick is kept in the bus's key-value store", self.where, cm.name
            )  # fmt: skip
        self.store = await stores.bus()
        parts = ("calendar", self.plugin.namespace, self.plugin.source_name, self.event_name)
        self.key = ".".join(re.sub(r"[^-_=A-Za-z0-9]", "_", p) or "_" for p in parts)

    async def _recorded(self) -> datetime | None:
        assert self.store is not None
        raw = await self.store.get(self.key)
        if not raw:
            return None
        try:
            return parse_go_time(str(orjson.loads(raw)["eventTime"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            self.ctx.log.error("%s: recorded last tick unreadable (%s); starting from now",
                               self.where, e)  # fmt: skip
            return None

    async def _start_point(self) -> datetime:
        """Where the first wait starts: now, or the recorded tick when catching up
        (no earlier than ``maxDuration`` ago)."""
        now = datetime.fromtimestamp(self.ctx.clock.now(), UTC)
        catchup = self.cfg.catchup
        if catchup is None or self.store is None:
            return now
        last = await self._recorded()
        if last is None:
            return now
        if catchup.max_duration:
            bound = now - timedelta(seconds=parse_go_duration(catchup.max_duration))
            if last < bound:
                self.ctx.log.info("%s: catching up from %s (maxDuration %s), not from %s",
                                  self.where, bound, catchup.max_duration, last)  # fmt: skip
                return bound
        if last < now:
            self.ctx.log.info("%s: catching up the ticks after %s", self.where, last)
        return last

    async def _record(self, payload: bytes) -> None:
        """Keep ``payload`` as the last tick; retried while the store is unavailable."""
        if self.store is None:
            return
        while True:
            try:
                await self.store.put(self.key, payload)
                return
            except TransientError as e:
                self.ctx.log.warning("%s: recording the last tick failed (%s); retrying",
                                     self.where, e)  # fmt: skip
            except PermanentError as e:
                self.ctx.log.error("%s: recording the last tick failed: %s", self.where, e)
                return
            await asyncio.sleep(STATE_RETRY_SECONDS)

    # -- ticks ------------------------------------------------------------------------
    def event_id(self, tick: datetime) -> str:
        p = self.plugin
        return event_id_from("calendar", p.namespace, p.source_name, self.event_name,
                             self.ticks.identity, tick.astimezone(UTC).isoformat())  # fmt: skip

    async def run(self) -> None:
        while True:
            try:
                await self._open_store()
                last = await self._start_point()
                break
            except TransientError as e:
                self.ctx.log.warning("%s: state store unavailable (%s); retrying", self.where, e)
                await asyncio.sleep(STATE_RETRY_SECONDS)
        self.live = True
        clock = self.ctx.clock
        backoff = BusBackoff()
        tick = self.ticks.next_after(last)
        while True:
            wait = tick.timestamp() - clock.now()
            if wait > 0:
                await clock.sleep(min(wait, MAX_WAIT_SECONDS))
                continue
            data = event_data(tick, self.cfg)
            outcome = await self.deliverer.deliver(data, self.event_id(tick), f"tick {tick}")
            if outcome is Outcome.FAILED:
                self.ctx.log.warning("%s: tick %s not stored (%s); retrying", self.where,
                                     go_time_string(tick), self.deliverer.last_error)  # fmt: skip
                await backoff.wait()
                continue
            backoff.reset()
            await self._record(orjson.dumps(data))
            self.last_tick = tick
            tick = self.ticks.next_after(tick)


class CalendarSource(PerEventSource[CalendarConfig]):
    """Schedules as events: ``spec.calendar.<eventName>``, one timer per event name.

    Fields (Argo's ``CalendarEventSource``): ``schedule`` (cron, five fields or six with
    leading seconds), ``interval`` (Go duration), ``exclusionDates``
    (``EXDATE:YYYYMMDDTHHMMSSZ``; the date part is compared in ``timezone``),
    ``timezone`` (IANA name), ``metadata``, ``persistence.catchup`` (``enabled``,
    ``maxDuration``), ``persistence.configMap`` (``name``, ``createIfNotExist``),
    ``filter.expression``.

    Event data (Argo's ``CalendarEventData``): ``{"eventTime": "2024-01-02 03:00:00
    +0000 UTC", "metadata": {...}}``, ``eventTime`` in Go's ``time.String()`` form in the
    schedule's zone, ``metadata`` only when set.

    Delivery: a tick is recorded as fired only after the bus stored it; a tick the bus
    refuses is retried with the same event id until stored (later ticks wait); a crash
    between the publish and the record republishes the tick with the same id, which the
    bus's dedup window drops. Catch-up after a restart as described in the module.
    """

    type_name: ClassVar[str] = "calendar"
    config_model: ClassVar[type[SpecModel]] = CalendarConfig

    def worker(self, event_name: str, cfg: CalendarConfig) -> _Calendar:
        return _Calendar(self, event_name, cfg)

    @classmethod
    def singleton(cls, events: Mapping[str, CalendarConfig]) -> bool:
        return bool(events)
