"""``triggerfish test``: run one Sensor offline against given events.

No bus and no cluster: events are read from JSON files (webhook-shaped data, a bare
body, or full CloudEvents), handed to the real :class:`sensors.runner.SensorRunner`
through an in-memory message and state store, and every object the triggers would
create is recorded instead of sent. The trace of each event (dependency, conditions,
parameters and where each value came from, trigger result) and the objects are
printed. Exit code 0 when at least one trigger fired, 1 when nothing would fire, 2 on
invalid input.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, TextIO

import yaml

from app.compose.dryrun import OfflineBus, OfflineMessage, RecordingKube, offline_runner
from app.compose.manifests import load_paths
from app.kernel.errors import ConfigError
from app.kernel.events import Event, new_event_id
from sensors.trace import Trace, TraceStore


def read_event(path: str, dependencies: list[Any]) -> tuple[str | None, Event]:
    """``[DEP=]FILE`` → (dependency name or None, Event)."""
    dep: str | None = None
    if "=" in path and not Path(path).exists():
        dep, path = path.split("=", 1)
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read event {path}: {e}") from e
    if isinstance(doc, dict) and "specversion" in doc:
        ev = Event.from_json(json.dumps(doc).encode())
        return dep, ev
    data = (
        doc
        if isinstance(doc, dict) and ("body" in doc or "header" in doc)
        else {
            "header": {"Content-Type": ["application/json"]},
            "body": doc,
            "metadata": {},
        }
    )
    d = next((x for x in dependencies if x.name == dep), None) if dep else None
    return dep, Event(
        id=new_event_id(),
        source=d.event_source_name if d else "",
        subject=d.event_name if d else "",
        type="webhook",
        data=data,
    )


def _match(ev: Event, dep: str | None, deps: list[Any], used: set[str]) -> str:
    names = [d.name for d in deps]
    if dep is not None:
        if dep not in names:
            raise ConfigError(f"event names dependency {dep!r}, which the sensor does not have")
        return dep
    for d in deps:
        if ev.source and d.event_source_name == ev.source and d.event_name == ev.subject:
            return str(d.name)
    for d in deps:
        if d.name not in used:
            return str(d.name)
    return str(deps[0].name)


def why_not_fired(t: Trace) -> str:
    """One sentence: why no trigger fired for the event of ``t``."""
    if t.error:
        return f"the event could not be processed: {t.error}"
    if t.filtered:
        return f"the event did not pass the filters of dependency {t.dependency}"
    waiting = t.conditions.get("waiting") if isinstance(t.conditions, dict) else None
    if waiting:
        return "conditions not met yet: " + "; ".join(
            f"trigger {name} waits for {cond!r}" for name, cond in sorted(waiting.items())
        )
    return "no trigger depends on this dependency"


def _print_trace(out: TextIO, n: int, t: Trace) -> None:
    out.write(
        f"event {n}: {t.event_source}/{t.event_name} id={t.event_id} → dependency {t.dependency}\n"
    )
    if t.transform:
        out.write(f"  transform: {t.transform}\n")
    verdict = "rejected" if t.filtered else "passed"
    if t.filters:
        out.write(f"  filters: {verdict}\n")
        for reason in t.filters:
            out.write(f"    - {reason}\n")
    else:
        out.write(f"  filters: {verdict} (no filters)\n")
    if t.conditions and not t.filtered:
        state = t.conditions.get("state")
        if t.conditions.get("satisfied") is True:
            out.write("  conditions: satisfied\n")
        elif isinstance(state, dict):
            for name, have in sorted(state.items()):
                out.write(f"  conditions of {name}: have {', '.join(have) or 'nothing'}\n")
        else:
            out.write(f"  conditions: {json.dumps(t.conditions)}\n")
    if not t.fired:
        out.write(f"  no trigger fired: {why_not_fired(t)}\n")
    for o in t.triggers:
        d = o.detail
        what = f"{o.action} {d.get('kind', '')} {d.get('namespace', '')}/{d.get('name', '')}"
        out.write(
            f"  trigger {o.trigger}: {o.status}" + (f" ({what.strip()})" if o.action else "") + "\n"
        )
        for p in o.parameters:
            out.write(
                f"    parameter {p.get('index')} {p.get('dest')} = {json.dumps(p.get('value'))}"
                f" (from {p.get('source')})\n"
            )
        if o.error:
            out.write(f"    error: {o.error}\n")
    if t.error and t.fired:
        out.write(f"  error: {t.error}\n")


async def run_offline(
    sensor_file: str, event_files: list[str], out: TextIO, output: str = "text"
) -> int:
    """Run the Sensor in ``sensor_file`` against ``event_files`` and report to ``out``
    (``output``: ``text`` for people, ``json`` for scripts). Exit code: 0 when a trigger
    fired, 1 when none would, 2 for invalid input."""
    res = load_paths([sensor_file])
    if res.errors:
        for e in res.errors:
            out.write(f"error {e}\n")
        return 2
    if len(res.sensors) != 1:
        raise ConfigError(f"{sensor_file}: expected exactly one Sensor, found {len(res.sensors)}")
    sensor = res.sensors[0].obj
    kube = RecordingKube()
    bus = OfflineBus()
    traces = TraceStore()
    runner = offline_runner(sensor, kube, bus, traces)
    await runner.prepare()
    deps = list(sensor.spec.dependencies)
    used: set[str] = set()
    fired = 0
    seen: list[Trace] = []
    for n, path in enumerate(event_files, 1):
        dep_hint, ev = read_event(path, deps)
        dep = _match(ev, dep_hint, deps, used)
        used.add(dep)
        d = next(x for x in deps if x.name == dep)
        if not ev.source:
            ev.source, ev.subject = d.event_source_name, d.event_name
        await runner.handle(dep, OfflineMessage(ev))
        trace = traces.recent(1)[0]
        seen.append(trace)
        if output == "text":
            _print_trace(out, n, trace)
        fired += sum(1 for o in trace.triggers if o.status == "succeeded")
    if output == "json":
        doc = {
            "sensor": f"{sensor.metadata.namespace or 'default'}/{sensor.metadata.name}",
            "events": [
                {**t.to_dict(), **({} if t.fired else {"notFired": why_not_fired(t)})} for t in seen
            ],
            "actions": [{"action": verb, "object": obj} for verb, obj in kube.actions],
            "deadLetters": bus.dead_letters,
            "firings": fired,
        }
        out.write(json.dumps(doc, indent=2, default=str) + "\n")
        return 0 if fired else 1
    for verb, obj in kube.actions:
        out.write(f"--- would {verb}:\n")
        out.write(yaml.safe_dump(obj, sort_keys=False))
    for dl in bus.dead_letters:
        out.write(f"--- would dead-letter to {dl['subject']}: {dl['error']}\n")
    out.write(f"{fired} trigger firing(s), {len(kube.actions)} object action(s)\n")
    return 0 if fired else 1


def run_offline_sync(
    sensor_file: str, event_files: list[str], out: TextIO, output: str = "text"
) -> int:
    return asyncio.run(run_offline(sensor_file, event_files, out, output))
