"""The calendar source (``spec.calendar``) against a real nats-server, on a fake clock.

Time is a :class:`tests.support.clock.FakeClock` handed to the runtime, so a day of
hourly ticks runs in a moment; everything else is real: the bus stream the events land
in, the JetStream KV bucket the last tick is recorded in, the fake Kubernetes API for
Argo's ConfigMap option. The acceptance test runs 24 hours of an hourly schedule through
``Standalone`` with two restarts in between (one while ticks fell due, one after a crash
that lost the record of the last two ticks) and finds exactly 24 events, none doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from app.adapters.bus import Bus
from app.adapters.kube import ApiKube, ConfigMapState
from app.adapters.natsserver import EmbeddedNats
from app.compose.loading import load_for_run
from app.compose.runtime import SourceStates, Standalone
from app.compose.validate import validate_paths
from app.kernel.errors import TriggerfishError
from app.kernel.settings import KubeSettings, Settings
from eventsources.calendar import (
    CalendarConfig,
    CalendarSource,
    Ticks,
    go_time_string,
    parse_go_time,
)
from tests.support.brokers import CountingPublisher, Stream, eventually_long, source_context
from tests.support.clock import FakeClock
from tests.support.sources import CountingMetrics

START = datetime(2024, 3, 1, 0, 30, tzinfo=UTC)
HOUR = 3600.0


def _ts(d: datetime) -> float:
    return d.timestamp()


# -- the pure parts --------------------------------------------------------------------
def test_event_time_is_go_time_string() -> None:
    t = datetime(2024, 3, 1, 5, 0, tzinfo=UTC)
    assert go_time_string(t) == "2024-03-01 05:00:00 +0000 UTC"
    ny = Ticks(CalendarConfig.model_validate({"schedule": "0 5 * * *", "timezone":
                                              "America/New_York"})).next_after(t)  # fmt: skip
    assert go_time_string(ny) == "2024-03-01 05:00:00 -0500 EST"
    frac = datetime(2024, 3, 1, 5, 0, 0, 250000, tzinfo=UTC)
    assert go_time_string(frac) == "2024-03-01 05:00:00.25 +0000 UTC"
    # Argo's own persisted form (with the monotonic reading) reads back too
    argo = parse_go_time("2024-03-01 05:00:00.123456789 +0000 UTC m=+3600.000000001")
    assert argo == datetime(2024, 3, 1, 5, 0, 0, 123456, tzinfo=UTC)


ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
       st.sampled_from(ZONES))  # fmt: skip
def test_event_time_round_trips(naive: datetime, zone: str) -> None:
    ticks = Ticks(CalendarConfig.model_validate({"interval": "1s", "timezone": zone}))
    t = naive.replace(tzinfo=UTC).astimezone(ticks.zone)
    assert parse_go_time(go_time_string(t)) == t


def _ticks(cfg: dict[str, Any], after: datetime, n: int) -> list[datetime]:
    ticks = Ticks(CalendarConfig.model_validate(cfg))
    out = []
    for _ in range(n):
        after = ticks.next_after(after)
        out.append(after)
    return out


def test_exclusion_dates_skip_whole_days_in_the_schedule_zone() -> None:
    cfg = {"schedule": "0 12 * * *", "exclusionDates": ["EXDATE:20240302T150405Z",
                                                         "EXDATE:20240304T000000Z"]}  # fmt: skip
    days = [t.date() for t in _ticks(cfg, START, 4)]
    assert days == [date(2024, 3, 1), date(2024, 3, 3), date(2024, 3, 5), date(2024, 3, 6)]
    # in Tokyo, 2024-03-02 starts at 15:00 UTC on the 1st: hourly ticks stop there
    tokyo = _ticks({"schedule": "0 * * * *", "timezone": "Asia/Tokyo",
                    "exclusionDates": ["EXDATE:20240302T000000Z"]}, START, 15)  # fmt: skip
    assert tokyo[13].astimezone(UTC) == datetime(2024, 3, 1, 14, 0, tzinfo=UTC)
    assert tokyo[14].astimezone(UTC) == datetime(2024, 3, 2, 15, 0, tzinfo=UTC)
    # an interval steps over an excluded day without changing its phase
    every = _ticks({"interval": "7m", "exclusionDates": ["EXDATE:20240302T000000Z"]},
                   datetime(2024, 3, 1, 23, 50, tzinfo=UTC), 3)  # fmt: skip
    assert every[0] == datetime(2024, 3, 1, 23, 57, tzinfo=UTC)
    assert every[1].date() == date(2024, 3, 3)
    assert (every[1] - every[0]) % timedelta(minutes=7) == timedelta(0)


def test_timezone_and_six_field_schedules() -> None:
    # 09:00 in New York is 14:00 UTC in winter and 13:00 UTC after the DST change
    ny = _ticks({"schedule": "0 9 * * *", "timezone": "America/New_York"},
                datetime(2024, 3, 9, 0, 0, tzinfo=UTC), 2)  # fmt: skip
    assert [t.astimezone(UTC).hour for t in ny] == [14, 13]
    assert [t.hour for t in ny] == [9, 9]
    secs = _ticks({"schedule": "*/20 * * * * *"}, START, 3)
    assert [t.second for t in secs] == [20, 40, 0]


def test_interval_is_robfig_constant_delay() -> None:
    # the previous tick plus the delay, rounded down to the whole second
    ticks = _ticks({"interval": "1h30m"}, datetime(2024, 3, 1, 0, 0, 5, 700000, tzinfo=UTC), 2)
    assert ticks == [datetime(2024, 3, 1, 1, 30, 5, tzinfo=UTC),
                     datetime(2024, 3, 1, 3, 0, 5, tzinfo=UTC)]  # fmt: skip
    # under a second, the rounding would give the same tick again: it moves on instead
    fast = _ticks({"interval": "500ms"}, datetime(2024, 3, 1, 0, 0, 0, 500000, tzinfo=UTC), 3)
    assert fast == [datetime(2024, 3, 1, 0, 0, 1, tzinfo=UTC) + timedelta(milliseconds=500 * i)
                    for i in range(3)]  # fmt: skip


# -- validation ------------------------------------------------------------------------
def _es(events: dict[str, Any], name: str = "nightly") -> dict[str, Any]:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "EventSource",
            "metadata": {"name": name, "namespace": "argo-events"},
            "spec": {"calendar": events}}  # fmt: skip


@pytest.mark.parametrize(
    ("events", "line"),
    [
        ({"a": {"schedule": "61 * * * *"}}, "spec.calendar.a.schedule: invalid cron expression"),
        ({"a": {"schedule": "* * *"}}, "spec.calendar.a.schedule: invalid cron expression"),
        ({"a": {"interval": "10 seconds"}}, "spec.calendar.a.interval: invalid duration"),
        ({"a": {"interval": "-5s"}}, "spec.calendar.a.interval: invalid interval"),
        ({"a": {"interval": "1h", "timezone": "Mars/Olympus"}},
         "spec.calendar.a.timezone: invalid timezone 'Mars/Olympus'"),
        ({"a": {"interval": "1h", "exclusionDates": ["2024-01-01"]}},
         "spec.calendar.a.exclusionDates: '2024-01-01' must start with 'EXDATE:'"),
        ({"a": {"interval": "1h", "persistence": {"catchup": {"enabled": True,
                                                              "maxDuration": "lots"}}}},
         "spec.calendar.a.persistence.catchup.maxDuration: invalid duration"),
        ({"a": {"metadata": {"x": "y"}}}, "spec.calendar.a: must have either schedule or interval"),
        ({"a": {"interval": "1h", "filter": {"expression": "metadata.x =="}}},
         "spec.calendar.a.filter.expression:"),
    ],
)  # fmt: skip
def test_bad_fields_are_one_line_naming_the_path(
    tmp_path: Path, events: dict[str, Any], line: str
) -> None:
    path = tmp_path / "es.yaml"
    path.write_text(yaml.safe_dump(_es(events)))
    out = io.StringIO()
    assert validate_paths([str(path)], out) != 0
    text = out.getvalue()
    assert line in text, text
    assert "Traceback" not in text


def test_the_example_and_argos_calendar_examples_validate() -> None:
    repo = Path(__file__).resolve().parents[1]
    corpus = repo.parent / "shared" / "argo-examples"
    paths = [str(repo / "examples" / "nightly-retraining")]
    paths += [str(p) for p in (corpus / "event-sources" / "calendar.yaml",
                               corpus / "sensors" / "calendar.yaml") if p.exists()]  # fmt: skip
    out = io.StringIO()
    assert validate_paths(paths, out) == 0, out.getvalue()
    assert "ok   " in out.getvalue() and "EventSource argo-events/nightly" in out.getvalue()


# -- a source on the real bus, fake clock -------------------------------------------------
@contextlib.asynccontextmanager
async def _calendar(
    bus: Bus, clock: FakeClock, events: dict[str, Any], name: str = "nightly"
) -> AsyncIterator[tuple[CalendarSource, CountingPublisher]]:
    publisher = CountingPublisher(bus)
    ctx = source_context(publisher)
    ctx.clock = clock
    ctx.state = SourceStates(bus, None)
    cfgs = {k: CalendarConfig.model_validate(v) for k, v in events.items()}
    source = CalendarSource(name, "argo-events", cfgs, ctx)
    task = asyncio.create_task(source.run())
    try:
        await eventually_long(lambda: source.ready() and clock.sleepers == len(cfgs), "waiting")
        yield source, publisher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _step(clock: FakeClock, stream: Stream, seconds: float, expect: int) -> None:
    clock.advance(seconds)

    async def stored() -> bool:
        return await stream.count() >= expect

    await eventually_long(stored, f"{expect} events on the bus")


async def test_interval_metadata_and_event_shape(bus: Bus, nats_server: EmbeddedNats) -> None:
    clock = FakeClock(_ts(START) + 0.25)
    stream = Stream(nats_server.url)
    events = {"every-20m": {"interval": "20m", "metadata": {"model": "resnet"},
                            "timezone": "Europe/Paris"}}  # fmt: skip
    async with _calendar(bus, clock, events):
        await _step(clock, stream, 20 * 60, 1)
        await _step(clock, stream, 20 * 60, 2)
        await _step(clock, stream, 60 * 60, 5)
    got = await stream.events()
    assert [e["data"] for e in got[:2]] == [
        {"eventTime": "2024-03-01 01:50:00 +0100 CET", "metadata": {"model": "resnet"}},
        {"eventTime": "2024-03-01 02:10:00 +0100 CET", "metadata": {"model": "resnet"}},
    ]
    assert {(e["type"], e["source"], e["subject"]) for e in got} == {
        ("calendar", "nightly", "every-20m")
    }
    assert len({e["id"] for e in got}) == 5


async def test_filter_expression_drops_ticks(bus: Bus, nats_server: EmbeddedNats) -> None:
    clock = FakeClock(_ts(START))
    stream = Stream(nats_server.url)
    events = {"dropped": {"interval": "1h", "filter": {"expression": "metadata.run == 'yes'"},
                          "metadata": {"run": "no"}},
              "kept": {"interval": "1h", "filter": {"expression": "metadata.run == 'yes'"},
                       "metadata": {"run": "yes"}}}  # fmt: skip
    async with _calendar(bus, clock, events) as (source, _):
        metrics = source.ctx.metrics
        assert isinstance(metrics, CountingMetrics)
        await _step(clock, stream, HOUR, 1)
        await _step(clock, stream, HOUR, 2)
        # each tick is counted as sent or filtered, per event name, as on every source
        await eventually_long(lambda: metrics.counts["filtered", "dropped"] == 2, "counted")
    assert {e["subject"] for e in await stream.events()} == {"kept"}
    assert metrics.counts["sent", "kept"] == 2 and metrics.counts["sent", "dropped"] == 0
    assert metrics.sources == {"nightly"}


async def test_a_tick_the_bus_refuses_is_retried_not_skipped(
    bus: Bus, nats_server: EmbeddedNats
) -> None:
    clock = FakeClock(_ts(START))
    stream = Stream(nats_server.url)
    async with _calendar(bus, clock, {"hourly": {"schedule": "0 * * * *"}}) as (_, pub):
        nats_server.stop()
        clock.advance(HOUR)
        await eventually_long(lambda: pub.refused >= 2, "publishes refused while down")
        nats_server.start()
        await eventually_long(lambda: len(pub.stored) == 1, "the tick stored once back")
    [event] = await stream.events()
    assert event["data"]["eventTime"] == "2024-03-01 01:00:00 +0000 UTC"


# -- acceptance: 24 h, two restarts, through the runtime ----------------------------------
CALENDAR_ES = """
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: nightly, namespace: argo-events}
spec:
  calendar:
    hourly:
      schedule: "0 * * * *"
      persistence:
        catchup: {enabled: true, maxDuration: 6h}
"""


class Runtime:
    """``Standalone`` serving the calendar manifest on the test's bus and fake clock."""

    def __init__(self, tmp_path: Path, nats_url: str, clock: FakeClock, manifest: str) -> None:
        path = tmp_path / "calendar.yaml"
        path.write_text(manifest)
        self.path = path
        self.settings = Settings(state_dir=tmp_path / "state", api_port=0)
        self.settings.bus.nats_url = nats_url
        self.settings.kube.disabled = True
        self.settings.traces.persist = False
        self.clock = clock
        self.rt: Standalone | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.rt = Standalone(load_for_run([str(self.path)]), self.settings)
        self.rt.clock = self.clock
        self._stop = asyncio.Event()
        self._task = task = asyncio.create_task(self.rt.run(self._stop))
        ready = asyncio.create_task(self.rt.ready.wait())
        await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            self._task = None
            task.result()
        assert ready.done(), "runtime not ready in 30 s"
        await eventually_long(lambda: self.clock.sleepers == 1, "the source waiting")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def test_a_day_of_hourly_ticks_with_two_restarts_gives_24_events(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    clock = FakeClock(_ts(START))
    stream = Stream(nats_server.url)
    run = Runtime(tmp_path, nats_server.url, clock, CALENDAR_ES)
    await run.start()
    try:
        for hour in range(1, 9):  # 01:00 .. 08:00
            await _step(clock, stream, HOUR, hour)
        # restart 1: down for three hours; the ticks that fell due meanwhile are fired
        # on start, oldest first
        await run.stop()
        clock.advance(3 * HOUR)
        await run.start()
        assert await stream.count() == 11
        for hour in range(12, 17):  # 12:00 .. 16:00
            await _step(clock, stream, HOUR, hour)
        # restart 2: a crash right after the publish of 15:00 and 16:00 lost their
        # record (the KV still says 14:00): both are published again with their ids,
        # and the bus's dedup keeps one of each
        await run.stop()
        bus = Bus(run.settings.bus, nats_server.url)
        await bus.connect()
        try:
            store = await bus.state_store(SourceStates.BUCKET)
            key = "calendar.argo-events.nightly.hourly"
            recorded = orjson.loads(await store.get(key) or b"{}")
            assert recorded == {"eventTime": "2024-03-01 16:00:00 +0000 UTC"}
            await store.put(key, orjson.dumps({"eventTime": "2024-03-01 14:00:00 +0000 UTC"}))
        finally:
            await bus.close()
        await run.start()
        assert await stream.count() == 16
        for hour in range(17, 25):  # 17:00 .. 00:00 the next day
            await _step(clock, stream, HOUR, hour)
        clock.advance(10 * 60)  # nothing due before 01:00
        await asyncio.sleep(0.2)
    finally:
        await run.stop()
    events = await stream.events()
    times = [e["data"]["eventTime"] for e in events]
    expected = [go_time_string(START + timedelta(minutes=30) + timedelta(hours=h))
                for h in range(24)]  # fmt: skip
    assert times == expected
    assert len({e["id"] for e in events}) == 24


async def test_without_catchup_a_restart_starts_from_now_as_argo(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    clock = FakeClock(_ts(START))
    stream = Stream(nats_server.url)
    manifest = CALENDAR_ES.replace("catchup: {enabled: true, maxDuration: 6h}",
                                   "catchup: {enabled: false}")  # fmt: skip
    run = Runtime(tmp_path, nats_server.url, clock, manifest)
    await run.start()
    try:
        await _step(clock, stream, HOUR, 1)
        await run.stop()
        clock.advance(2 * HOUR)  # 02:00 and 03:00 fall due while down
        await run.start()
        await _step(clock, stream, HOUR, 2)
    finally:
        await run.stop()
    times = [e["data"]["eventTime"] for e in await stream.events()]
    assert times == ["2024-03-01 01:00:00 +0000 UTC", "2024-03-01 04:00:00 +0000 UTC"]


async def test_catchup_is_bounded_by_max_duration(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    clock = FakeClock(_ts(START))
    stream = Stream(nats_server.url)
    run = Runtime(tmp_path, nats_server.url, clock, CALENDAR_ES)
    await run.start()
    try:
        await _step(clock, stream, HOUR, 1)  # 01:00
        await run.stop()
        clock.advance(10 * HOUR)  # now 11:30; maxDuration 6h: from 05:30 on
        await run.start()
        assert await stream.count() == 1 + 6  # 06:00 .. 11:00
    finally:
        await run.stop()
    times = [e["data"]["eventTime"][11:16] for e in await stream.events()]
    assert times == ["01:00", "06:00", "07:00", "08:00", "09:00", "10:00", "11:00"]


async def test_exclusion_dates_hold_live_and_in_the_catchup_after_a_restart(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    clock = FakeClock(_ts(START))
    stream = Stream(nats_server.url)
    daily = """schedule: "0 12 * * *"
      exclusionDates: ["EXDATE:20240302T000000Z", "EXDATE:20240305T093000Z"]"""
    manifest = CALENDAR_ES.replace('schedule: "0 * * * *"', daily)
    run = Runtime(tmp_path, nats_server.url, clock, manifest.replace(", maxDuration: 6h", ""))
    await run.start()
    try:
        await _step(clock, stream, 12 * HOUR, 1)  # 03-01 12:00
        await run.stop()
        clock.advance(3 * 24 * HOUR)  # now 03-04 12:30: 03-02 (excluded) fell due while down
        await run.start()
        assert await stream.count() == 3  # 03-03 and 03-04 caught up
        await _step(clock, stream, 2 * 24 * HOUR, 4)  # 03-05 excluded, 03-06 fires
    finally:
        await run.stop()
    days = [e["data"]["eventTime"][:16] for e in await stream.events()]
    assert days == ["2024-03-01 12:00", "2024-03-03 12:00", "2024-03-04 12:00",
                    "2024-03-06 12:00"]  # fmt: skip


async def test_config_map_persistence_through_the_kubernetes_api(
    tmp_path: Path, nats_server: EmbeddedNats, kube_api: Any
) -> None:
    kube_api.create_namespace("argo-events")
    clock = FakeClock(_ts(START))
    stream = Stream(nats_server.url)
    manifest = CALENDAR_ES + "        configMap: {name: calendar-state, createIfNotExist: true}\n"
    run = Runtime(tmp_path, nats_server.url, clock, manifest)
    run.settings.kube.disabled = False
    run.settings.kube.kubeconfig = str(kube_api.kubeconfig)
    await run.start()
    try:
        await _step(clock, stream, HOUR, 1)

        def data() -> dict[str, str]:
            path = "/api/v1/namespaces/argo-events/configmaps/calendar-state"
            return dict(kube_api.server.request("GET", path).get("data") or {})

        await eventually_long(lambda: "nightly.hourly" in data(), "the ConfigMap entry")
        # Argo's key and payload: the event data of the last tick
        assert orjson.loads(data()["nightly.hourly"]) == {
            "eventTime": "2024-03-01 01:00:00 +0000 UTC"
        }
        await run.stop()
        clock.advance(2 * HOUR)
        await run.start()  # catches up from the ConfigMap's tick
        assert await stream.count() == 3
    finally:
        await run.stop()


async def test_config_map_that_must_exist_is_a_clear_error(
    tmp_path: Path, nats_server: EmbeddedNats, kube_api: Any
) -> None:
    kube_api.create_namespace("argo-events")
    manifest = CALENDAR_ES + "        configMap: {name: missing}\n"
    run = Runtime(tmp_path, nats_server.url, FakeClock(_ts(START)), manifest)
    run.settings.kube.disabled = False
    run.settings.kube.kubeconfig = str(kube_api.kubeconfig)
    with pytest.raises(TriggerfishError) as e:
        await run.start()
    assert ("spec.calendar.hourly.persistence.configMap: ConfigMap argo-events/missing does "
            "not exist (set createIfNotExist to create it)") in str(e.value)  # fmt: skip


async def test_config_map_writers_of_different_keys_never_overwrite_each_other(
    kube_api: Any,
) -> None:
    kube_api.create_namespace("argo-events")
    kubes = [ApiKube.from_settings(KubeSettings(kubeconfig=str(kube_api.kubeconfig)))
             for _ in range(2)]  # fmt: skip
    try:
        stores = [await ConfigMapState(k, "argo-events", "shared", True).open()
                  for k in kubes if k is not None]  # fmt: skip
        assert len(stores) == 2

        async def write(store: ConfigMapState, key: str) -> None:
            for i in range(10):
                await store.put(key, f"{key}-{i}".encode())

        await asyncio.gather(write(stores[0], "a.one"), write(stores[1], "b.two"))
        assert await stores[0].get("a.one") == b"a.one-9"
        assert await stores[0].get("b.two") == b"b.two-9"
        assert await stores[1].get("missing") is None
    finally:
        for k in kubes:
            if k is not None:
                await k.close()
