"""``template.conditionsReset``: cron ticks (in a timezone) clear a trigger's partial
condition state.

The tick computation is pure and checked with fixed instants, daylight saving changes
included. The reset loop and the runner run against a :class:`ManualClock`, so a test
moves time to the next tick instead of waiting for it; the runner tests use a real
nats-server, so what is cleared is the real key-value state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.adapters.bus import Bus
from app.adapters.kube import FileKube
from app.adapters.metrics import Metrics
from app.compose.manifests import load_one
from app.kernel.errors import ConfigError
from app.kernel.events import Event, new_event_id
from app.languages.cron import CronSchedule
from sensors.conditions import Condition
from sensors.condstate import ConditionState
from sensors.reset import ConditionsReset, run_resets
from sensors.runner import RetryPolicy, SensorRunner
from sensors.spec import ConditionsResetByTime, ConditionsResetCriteria
from sensors.trace import TraceStore
from sensors.triggers.base import TriggerContext
from tests.support.sensors import SensorHarness, eventually


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def criteria(*entries: tuple[str, str]) -> list[ConditionsResetCriteria]:
    """Entries built without the model's own checks, so the compiler's are what is tested."""
    return [
        ConditionsResetCriteria.model_construct(
            by_time=ConditionsResetByTime.model_construct(cron=cron, timezone=tz)
        )
        for cron, tz in entries
    ]


def reset_of(*entries: tuple[str, str]) -> ConditionsReset:
    reset = ConditionsReset.compile("t", criteria(*entries), "spec.triggers[0].template")
    assert reset is not None
    return reset


class ManualClock:
    """A clock that moves only when told; sleepers wake once it passes their deadline."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._moved = asyncio.Condition()
        self.sleepers = 0

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        until = self._now + timedelta(seconds=seconds)
        async with self._moved:
            self.sleepers += 1
            try:
                await self._moved.wait_for(lambda: self._now >= until)
            finally:
                self.sleepers -= 1

    async def set(self, when: datetime) -> None:
        async with self._moved:
            self._now = when
            self._moved.notify_all()


# -- the next tick (pure) -----------------------------------------------------------------
def test_cron_is_read_in_its_timezone_across_daylight_saving() -> None:
    nine_in_new_york = reset_of(("0 9 * * *", "America/New_York"))
    assert nine_in_new_york.next_tick(utc(2024, 1, 15, 12, 0)) == utc(2024, 1, 15, 14, 0)  # EST
    assert nine_in_new_york.next_tick(utc(2024, 7, 15, 12, 0)) == utc(2024, 7, 15, 13, 0)  # EDT


def test_hourly_tick_resumes_after_the_skipped_spring_hour() -> None:
    hourly = reset_of(("0 * * * *", "America/New_York"))
    # 01:30 EST on 2024-03-10; 02:00 local does not exist, the next tick is 03:00 EDT.
    assert hourly.next_tick(utc(2024, 3, 10, 6, 30)) == utc(2024, 3, 10, 7, 0)
    assert hourly.next_tick(utc(2024, 3, 10, 7, 0)) == utc(2024, 3, 10, 8, 0)


def test_default_timezone_is_utc_and_half_hour_zones_work() -> None:
    assert reset_of(("59 23 * * *", "")).next_tick(utc(2024, 1, 1, 12, 0)) == utc(
        2024, 1, 1, 23, 59
    )
    # 05:30 in Kolkata (UTC+05:30) is midnight UTC.
    assert reset_of(("30 5 * * *", "Asia/Kolkata")).next_tick(utc(2024, 1, 1, 1, 0)) == utc(
        2024, 1, 2, 0, 0
    )


def test_next_is_strictly_after_and_last_is_at_or_before() -> None:
    hourly = reset_of(("0 * * * *", ""))
    assert hourly.next_tick(utc(2024, 5, 1, 10, 0)) == utc(2024, 5, 1, 11, 0)
    assert hourly.last_tick(utc(2024, 5, 1, 10, 0)) == utc(2024, 5, 1, 10, 0)
    assert hourly.last_tick(utc(2024, 5, 1, 10, 59, 59)) == utc(2024, 5, 1, 10, 0)
    # A naive instant is taken as UTC.
    assert hourly.next_tick(datetime(2024, 5, 1, 10, 30)) == utc(2024, 5, 1, 11, 0)


def test_several_entries_reset_on_the_ticks_of_each() -> None:
    reset = reset_of(("0 12 * * *", "UTC"), ("0 9 * * *", "Europe/Paris"))  # 08:00 UTC
    assert reset.next_tick(utc(2024, 1, 1, 0, 0)) == utc(2024, 1, 1, 8, 0)
    assert reset.next_tick(utc(2024, 1, 1, 8, 0)) == utc(2024, 1, 1, 12, 0)
    assert reset.last_tick(utc(2024, 1, 1, 13, 0)) == utc(2024, 1, 1, 12, 0)
    assert reset.last_tick(utc(2024, 1, 1, 11, 0)) == utc(2024, 1, 1, 8, 0)


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        (("61 * * * *", ""), "cron", "out of range"),
        (("* * * *", ""), "cron", "five fields"),
        (("0 * * * * *", ""), "cron", "five fields"),  # seconds are not Argo's
        (("0 0 30 2 *", ""), "cron", "never matches"),
        (("0 * * * *", "Mars/Olympus_Mons"), "timezone", "invalid timezone"),
    ],
)
def test_bad_entry_fails_with_its_path(entry: tuple[str, str], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConditionsReset.compile(
            "t", criteria(("0 0 * * *", ""), entry), "spec.triggers[2].template"
        )
    assert info.value.path == f"spec.triggers[2].template.conditionsReset[1].byTime.{field}"
    assert words in info.value.message


def test_no_entries_means_no_reset() -> None:
    assert ConditionsReset.compile("t", [], "spec.triggers[0].template") is None
    assert str(CronSchedule.parse("0  9 * * 1-5", "Europe/Paris")) == "'0 9 * * 1-5' Europe/Paris"


# -- the loop -----------------------------------------------------------------------------
async def test_loop_clears_at_each_tick_and_retries_a_failed_clear() -> None:
    clock = ManualClock(utc(2024, 1, 1, 9, 30))
    calls: list[datetime] = []
    fail_next = [True]

    async def clear(older_than: datetime | None) -> None:
        assert older_than is None  # a tick clears everything
        calls.append(clock.now())
        if fail_next and fail_next.pop():
            raise RuntimeError("state store unavailable")

    task = asyncio.create_task(run_resets(reset_of(("0 * * * *", "")), clear, clock))
    try:
        await eventually(lambda: clock.sleepers == 1)
        assert calls == []
        await clock.set(utc(2024, 1, 1, 10, 0))  # the tick: the clear fails ...
        await eventually(lambda: len(calls) == 1 and clock.sleepers == 1)
        await clock.set(utc(2024, 1, 1, 10, 0, 1))  # ... and is retried after a back-off
        await eventually(lambda: len(calls) == 2 and clock.sleepers == 1)
        await clock.set(utc(2024, 1, 1, 10, 30))  # nothing between ticks
        await asyncio.sleep(0.05)
        assert len(calls) == 2
        await clock.set(utc(2024, 1, 1, 13, 5))  # three ticks missed: one clear
        await eventually(lambda: len(calls) == 3 and clock.sleepers == 1)
        await clock.set(utc(2024, 1, 1, 14, 0))
        await eventually(lambda: len(calls) == 4)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the runner over a real bus -------------------------------------------------------------
SENSOR = "s1"


def sensor(deps: list[str], resets: list[dict[str, str]]) -> Any:
    template: dict[str, Any] = {
        "name": "make-job",
        "conditionsReset": [{"byTime": r} for r in resets],
        "k8s": {
            "operation": "create",
            "source": {
                "resource": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"generateName": "job-"},
                    "data": {d: "none" for d in deps},
                }
            },
            "parameters": [
                {"src": {"dependencyName": d, "dataKey": "body.v"}, "dest": f"data.{d}"}
                for d in deps
            ],
        },
    }
    return load_one(
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Sensor",
            "metadata": {"name": SENSOR, "namespace": "ns1"},
            "spec": {
                "dependencies": [
                    {"name": d, "eventSourceName": "hook", "eventName": d} for d in deps
                ],
                "triggers": [{"template": template}],
            },
        }
    )


def event(name: str, v: str, time: datetime | None = None) -> Event:
    ev = Event(
        id=new_event_id(), source="hook", subject=name, type="webhook", data={"body": {"v": v}}
    )
    if time is not None:
        ev.time = time.isoformat().replace("+00:00", "Z")
    return ev


class Harness(SensorHarness):
    """A SensorHarness with a manual reset clock, writing objects to files."""

    def __init__(self, bus: Bus, kube: FileKube, clock: ManualClock) -> None:
        super().__init__(bus, TriggerContext(kube=kube), default_retry=RetryPolicy(steps=1),
                         reset_clock=clock)  # fmt: skip
        self.kube = kube
        self.clock = clock

    async def publish_and_wait(self, ev: Event) -> None:
        """Publish one event and wait until the runner has handled (traced) it."""
        before = len(self.traces.recent(1000))
        await self.bus.publish("default", ev)
        await eventually(lambda: len(self.traces.recent(1000)) > before)

    def objects(self) -> list[dict[str, Any]]:
        return [o for o in self.kube.list_objects() if o["kind"] == "ConfigMap"]


async def stored(bus: Bus, deps: Sequence[str] = ("a", "b")) -> list[str]:
    """``trigger__dependency`` of every event the bucket holds, as a new replica reads it."""
    state = ConditionState(
        await bus.state_store(f"sensor-ns1-{SENSOR}"),
        {"make-job": Condition.compile(None, list(deps))},
        list(deps),
    )
    await state.load()
    return [f"make-job__{d}" for d in state.present("make-job")]


def reset_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("conditions reset")]


async def test_tick_clears_the_partial_state_so_a_later_b_alone_does_not_fire(
    bus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triggerfish.sensor")
    start = datetime.now(UTC)
    clock = ManualClock(start)
    h = Harness(bus, FileKube(tmp_path / "objects"), clock)
    await h.start(sensor(["a", "b"], [{"cron": "0 * * * *", "timezone": "America/New_York"}]))
    try:
        await h.publish_and_wait(event("a", "stale-a"))
        assert await stored(bus) == ["make-job__a"]

        await clock.set(reset_of(("0 * * * *", "America/New_York")).next_tick(start))
        await eventually(lambda: bool(reset_lines(caplog)))
        assert await stored(bus) == []
        [line] = reset_lines(caplog)
        assert "sensor=s1 trigger=make-job" in line
        assert "America/New_York" in line
        assert line.endswith("cleared a")

        await h.publish_and_wait(event("b", "the-b"))
        assert h.objects() == []  # a was forgotten: b alone does not fire
        await h.publish_and_wait(event("a", "fresh-a"))
        await eventually(lambda: len(h.objects()) == 1)
        assert h.objects()[0]["data"] == {"a": "fresh-a", "b": "the-b"}
    finally:
        await h.stop()


async def test_tick_missed_while_stopped_clears_older_events_at_start(
    bus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triggerfish.sensor")
    now = datetime.now(UTC)
    clock = ManualClock(now)
    kube = FileKube(tmp_path / "objects")
    s = sensor(["a", "b"], [{"cron": "0 * * * *", "timezone": ""}])
    first = Harness(bus, kube, clock)
    await first.start(s)
    try:
        # An event from before the last hourly tick (the clock does not move meanwhile).
        await first.publish_and_wait(event("a", "old-a", time=now - timedelta(hours=2)))
        assert await stored(bus) == ["make-job__a"]
    finally:
        await first.stop()

    second = Harness(bus, kube, clock)
    await second.start(s)
    try:
        assert await stored(bus) == []
        [line] = reset_lines(caplog)
        assert "missed tick" in line and line.endswith("cleared a")
        await second.publish_and_wait(event("b", "the-b"))
        assert second.objects() == []
        # Events after the last tick are kept: a new a completes the condition.
        await second.publish_and_wait(event("a", "new-a"))
        await eventually(lambda: len(second.objects()) == 1)
        assert second.objects()[0]["data"] == {"a": "new-a", "b": "the-b"}
    finally:
        await second.stop()


async def test_single_dependency_sensor_runs_no_reset(bus: Bus, tmp_path: Path) -> None:
    h = Harness(bus, FileKube(tmp_path / "objects"), ManualClock(datetime.now(UTC)))
    await h.start(sensor(["a"], [{"cron": "0 * * * *", "timezone": ""}]))
    try:
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert not any(":reset:" in n for n in names)
        await h.publish_and_wait(event("a", "only-a"))
        await eventually(lambda: len(h.objects()) == 1)
    finally:
        await h.stop()


def test_bad_cron_fails_when_the_sensor_is_loaded() -> None:
    from app.compose.manifests import check_one

    doc = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s", "namespace": "n"},
        "spec": {
            "dependencies": [
                {"name": "a", "eventSourceName": "e", "eventName": "a"},
                {"name": "b", "eventSourceName": "e", "eventName": "b"},
            ],
            "triggers": [{"template": {
                "name": "t", "conditions": "a && b", "log": {},
                "conditionsReset": [{"byTime": {"cron": "0 25 * * *"}}],  # hour 25
            }}],
        },
    }  # fmt: skip
    _, lines = check_one(doc)
    assert len(lines) == 1
    assert lines[0].startswith("spec.triggers[0].template.conditionsReset[0].byTime.cron: ")


async def test_reset_before_an_instant_reads_every_kind_of_event_time(
    bus: Bus, tmp_path: Path
) -> None:
    # what a missed tick clears: events strictly before the tick, their time read with
    # its offset, a time without offset as UTC, and an unreadable time as new (kept)
    tick = utc(2024, 1, 1, 12, 0)
    times = {
        "at": "2024-01-01T12:00:00Z",  # exactly at the tick: not before it, kept
        "naive": "2024-01-01T11:59:00",  # no offset: UTC, before the tick, cleared
        "offset": "2024-01-01T13:30:00+02:00",  # 11:30 UTC: before, cleared
        "later": "2024-01-01T14:30:00+02:00",  # 12:30 UTC: after, kept
        "bad": "yesterday",  # unreadable: counts as new, kept
    }
    kube = FileKube(tmp_path / "objects")
    # one dependency never arrives, so nothing fires and every event stays stored
    s = sensor([*times, "never"], [{"cron": "0 * * * *", "timezone": ""}])
    h = Harness(bus, kube, ManualClock(tick))
    await h.start(s)
    try:
        for dep, when in times.items():
            ev = event(dep, dep)
            ev.time = when
            await h.publish_and_wait(ev)
        assert len(await stored(bus, [*times, "never"])) == len(times)
    finally:
        await h.stop()
    runner = SensorRunner(s, bus, TriggerContext(kube=kube), TraceStore(), Metrics(),
                          reset_clock=ManualClock(tick))  # fmt: skip
    await runner.prepare()
    await runner.reset_conditions("make-job", tick)
    assert await stored(bus, [*times, "never"]) == [
        "make-job__at",
        "make-job__bad",
        "make-job__later",
    ]
