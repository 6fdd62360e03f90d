"""Pods report their status and counters on the bus, so the controller can show them.

In cluster mode every EventSource and Sensor runs in its own pods (several replicas,
restarted at any time), and the event-flow page is served by the controller, which runs
none of them. So each pod publishes, every ``ui.status_interval_seconds``, one report
onto the bus stream ``TRIGGERFISH_STATUS`` under
``_status.<namespace>.<kind>.<name>.<pod>``:

* whether it is ready, its bus connection, each source's listening state and error,
  why a sensor's runner or bus consumer stopped;
* its windowed counters (:meth:`app.adapters.metrics.RecentCounts.snapshot`: the
  time buckets themselves, not a total).

The stream keeps one message per subject (the latest report of each pod) for as long
as the page's window. Why this stays correct with several pods and restarts:

* counts add up over the reports of every pod of an object, and each bucket carries
  its start time, so the reader counts only buckets inside its window: a pod that died
  keeps contributing the events it really handled until they leave the window, and a
  restarted pod (a new name) starts from zero instead of being counted twice;
* a pod's state counts only while its report is fresh (younger than three intervals);
  an object with no fresh report shows "no pod reports" instead of a stale "ready".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from app.adapters.bus import Bus
from app.kernel.errors import BusUnavailableError
from app.kernel.settings import UiSettings
from app.kernel.subjects import subject_token

log = logging.getLogger("triggerfish.status")

STATUS_STREAM = "TRIGGERFISH_STATUS"
STATUS_PREFIX = "_status"
STALE_INTERVALS = 3
"""A report older than this many intervals is from a pod that is gone (or stuck)."""


def pod_name() -> str:
    """This process's name in its reports: the hostname (the pod's name in a cluster)
    plus a random suffix, so a restarted container is told apart."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


async def open_status_stream(bus: Bus, ui: UiSettings) -> None:
    """Create (or update) the status stream: the latest report per pod, kept one window
    plus three intervals (the counts a report carries cover one window)."""
    await bus.ensure_log_stream(
        STATUS_STREAM,
        [f"{STATUS_PREFIX}.>"],
        0,
        ui.window_seconds + STALE_INTERVALS * ui.status_interval_seconds,
        max_msgs_per_subject=1,
    )


def status_subject(namespace: str, kind: str, name: str, pod: str) -> str:
    return ".".join([STATUS_PREFIX] + [subject_token(x) for x in (namespace, kind, name, pod)])


async def report_status(
    bus: Callable[[], Bus | None],
    report: Callable[[], dict[str, Any] | None],
    subject: str,
    ui: UiSettings,
) -> None:
    """Publish ``report()`` to ``subject`` every interval until cancelled (``bus()`` and
    ``report()`` give None while the pod is (re)starting its runtime)."""
    opened: Bus | None = None
    while True:
        b, body = bus(), report()
        if b is not None and body is not None and b.connected:
            try:
                if opened is not b:
                    await open_status_stream(b, ui)
                    opened = b
                body["time"] = time.time()
                await b.publish_nowait(subject, orjson.dumps(body))
            except BusUnavailableError as e:
                log.debug("status report not published: %s", e)
        await asyncio.sleep(ui.status_interval_seconds)


async def read_reports(bus: Bus) -> list[dict[str, Any]]:
    """The latest report of every pod on that bus (including gone pods' until they age
    out; see :func:`is_fresh`)."""
    first, last = await bus.stream_bounds(STATUS_STREAM)
    if not last:
        return []
    latest: dict[str, dict[str, Any]] = {}
    msgs = await bus.read_stream(
        STATUS_STREAM, f"{STATUS_PREFIX}.>", last - first + 1, to_the_end=True
    )
    for m in msgs:  # oldest first: a pod's newer report replaces an older one
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(m.data)
            if isinstance(body, dict):
                latest[m.subject] = body
    return list(latest.values())


def is_fresh(report: dict[str, Any], ui: UiSettings, now: float | None = None) -> bool:
    """Whether the pod that sent ``report`` was alive a few intervals ago."""
    try:
        sent = float(report.get("time") or 0)
    except (TypeError, ValueError):
        return False
    now = time.time() if now is None else now
    return now - sent <= STALE_INTERVALS * ui.status_interval_seconds
