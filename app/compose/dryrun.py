"""A Sensor's runner built without a bus or a cluster: the stand-ins it runs against.

Two callers: ``triggerfish test`` (:mod:`app.compose.offline`) hands events to such a
runner and prints what it would do; manifest loading (:mod:`app.compose.manifests`)
builds one for every Sensor so that whatever ``run`` compiles when it starts (filters,
expressions, regexes, templates, conditions, cron schedules, parameters, trigger
configs) is compiled by ``validate`` too, with the same code. Nothing here touches the
network or the disk.
"""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from app.adapters.kube import AlreadyExists, NotFound
from app.adapters.metrics import Metrics
from app.kernel.errors import ConfigError, StateConflictError
from app.kernel.events import Event
from sensors.runner import RetryPolicy, SensorRunner
from sensors.spec import Sensor
from sensors.trace import TraceStore
from sensors.triggers.base import TriggerContext


class RecordingKube:
    """A KubeApi that records what would be done instead of doing it."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, dict[str, Any]]] = []
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}

    def _key(self, obj: dict[str, Any], ns: str) -> tuple[str, str, str]:
        meta = obj.get("metadata") or {}
        return (str(obj.get("kind")), meta.get("namespace") or ns, str(meta.get("name", "")))

    async def create(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            meta["name"] = meta.pop("generateName", "obj-") + uuid.uuid4().hex[:5]
        key = self._key(obj, namespace)
        if key in self._objects:
            raise AlreadyExists(f"{key} exists", 409, "AlreadyExists")
        self._objects[key] = obj
        self.actions.append(("create", obj))
        return obj

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str
    ) -> dict[str, Any] | None:
        return self._objects.get((kind, namespace, name))

    async def update(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        self.actions.append(("update", copy.deepcopy(obj)))
        return obj

    async def patch(self, obj: dict[str, Any], namespace: str, patch_type: str) -> dict[str, Any]:
        self.actions.append((f"patch ({patch_type})", copy.deepcopy(obj)))
        return obj

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        if (kind, namespace, name) in self._objects:
            del self._objects[(kind, namespace, name)]
        elif not name:
            raise NotFound("no name", 404, "NotFound")
        self.actions.append(
            ("delete", {"kind": kind, "metadata": {"name": name, "namespace": namespace}})
        )


@dataclass(frozen=True)
class MemoryRecord:
    revision: int
    key: str
    value: bytes | None


class MemoryState:
    """In-memory stand-in for the JetStream KV bucket of a multi-dependency sensor: the
    same ordered-log view (revisions, revision-checked updates, purges)."""

    def __init__(self) -> None:
        self.records: list[MemoryRecord] = []
        self.revision = 0

    def _append(self, key: str, value: bytes | None) -> int:
        self.revision += 1
        self.records = [r for r in self.records if r.key != key]
        self.records.append(MemoryRecord(self.revision, key, value))
        return self.revision

    async def put(self, key: str, value: bytes) -> int:
        return self._append(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        current = next((r.revision for r in self.records if r.key == key), 0)
        if current != last:
            raise StateConflictError(f"state {key!r} changed since revision {last}")
        return self._append(key, value)

    async def delete(self, key: str) -> None:
        self._append(key, None)

    async def next_record(self, after: int) -> MemoryRecord | None:
        return next((r for r in self.records if r.revision > after), None)

    async def latest(self, key: str) -> MemoryRecord | None:
        return next((r for r in self.records if r.key == key), None)

    async def purge(self, key_filter: str, before: int | None = None) -> None:
        def hit(r: MemoryRecord) -> bool:
            if key_filter.endswith(".>"):
                matched = r.key.startswith(key_filter[:-1])
            else:
                matched = r.key == key_filter
            return matched and (before is None or r.revision < before)

        self.records = [r for r in self.records if not hit(r)]


class OfflineBus:
    """What the runner needs from a bus, offline: state, and a dead-letter log."""

    def __init__(self) -> None:
        self.state = MemoryState()
        self.dead_letters: list[dict[str, Any]] = []

    async def consume(self, *args: Any, **kwargs: Any) -> None:
        raise ConfigError("offline runs hand events to the runner directly")

    async def publish_raw(self, subject: str, payload: bytes, msg_id: str) -> None:
        self.dead_letters.append({"subject": subject, **json.loads(payload)})

    async def state_store(self, name: str) -> MemoryState:
        return self.state


@dataclass
class OfflineMessage:
    """A delivered message with nothing behind its ack verbs."""

    event: Event
    num_delivered: int = 1
    acked: bool = field(default=False)

    async def ack(self) -> None:
        self.acked = True

    async def nak(self, delay_seconds: float | None = None) -> None:
        self.acked = False

    async def in_progress(self) -> None:
        return None


def offline_runner(
    sensor: Sensor,
    kube: RecordingKube | None = None,
    bus: OfflineBus | None = None,
    traces: TraceStore | None = None,
    *,
    read_files: bool = True,
) -> SensorRunner:
    """The real :class:`SensorRunner` for ``sensor`` over the stand-ins above; raises
    :class:`ConfigError` (with the field path) for what does not compile, as ``run``
    would at start. ``read_files=False`` leaves ``source.file`` objects unread (they
    live in the sensor's pod, not where manifests are validated)."""
    ctx = TriggerContext(kube=kube or RecordingKube(), read_files=read_files)
    return SensorRunner(
        sensor, bus or OfflineBus(), ctx, traces or TraceStore(), Metrics(),
        concurrency=1, default_retry=RetryPolicy(steps=1),
    )  # fmt: skip
