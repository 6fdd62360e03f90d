"""The interface every trigger type implements, and what an invocation carries.

The runner resolves the trigger-level parameters (``template.parameters``) into the
template, validates the plugin's config from it, and calls :meth:`Trigger.execute` with
the events that satisfied the sensor's conditions. ``execute`` raises
:class:`app.kernel.errors.TransientError` for what a retry may fix and
:class:`app.kernel.errors.PermanentError` for what it cannot; it returns a
:class:`TriggerResult` describing what it did, which goes into the trace.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from app.kernel.events import Event
from app.kernel.spec import SpecModel

if TYPE_CHECKING:
    from sensors.spec import TriggerPolicy

T = TypeVar("T")


class KubeApi(Protocol):
    """What triggers need from Kubernetes; implemented by :mod:`app.adapters.kube`."""

    async def create(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]: ...

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str
    ) -> dict[str, Any] | None: ...

    async def update(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]: ...

    async def patch(
        self, obj: dict[str, Any], namespace: str, patch_type: str
    ) -> dict[str, Any]: ...

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None: ...


class SecretResolver(Protocol):
    """Reads one key of a Kubernetes Secret (``app.adapters.secrets.ManifestSecrets``; the same
    shape as the event sources' resolver)."""

    async def get(self, namespace: str, name: str, key: str) -> str: ...


@dataclass
class _Entry:
    value: Any
    expires_at: float | None  # time.monotonic(); None = kept until evicted or closed


class SharedCache:
    """Values shared by every trigger instance built from one :class:`TriggerContext`.

    The runner builds a new trigger instance per firing when template-level parameters
    are used, so what must outlive one instance lives here: the HTTP client session,
    TLS contexts, objects fetched from ``url``/``configmap`` sources, secret values.
    :meth:`get` creates a value once per key (concurrent first uses wait for the same
    creation; a failed creation is not cached), optionally for ``ttl_seconds`` only.
    Beyond ``max_entries`` the least recently used values that have no ``close``
    method are dropped. :meth:`aclose` closes every value that has one (HTTP sessions);
    call it once at shutdown.
    """

    def __init__(self, max_entries: int = 512) -> None:
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._max_entries = max_entries

    def _fresh(self, key: Hashable) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    async def get(
        self,
        key: Hashable,
        factory: Callable[[], Awaitable[T]],
        *,
        ttl_seconds: float | None = None,
    ) -> T:
        """The value under ``key``, created with ``factory()`` if absent or expired."""
        entry = self._fresh(key)
        if entry is not None:
            return entry.value  # type: ignore[no-any-return]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self._fresh(key)
            if entry is not None:
                return entry.value  # type: ignore[no-any-return]
            value = await factory()
            expires = None if ttl_seconds is None else time.monotonic() + ttl_seconds
            self._entries[key] = _Entry(value, expires)
            self._evict()
            return value

    def _evict(self) -> None:
        excess = len(self._entries) - self._max_entries
        if excess <= 0:
            return
        for key in [k for k, e in self._entries.items() if not hasattr(e.value, "close")]:
            if excess <= 0:
                break
            del self._entries[key]
            self._locks.pop(key, None)
            excess -= 1

    async def aclose(self) -> None:
        """Close every cached value that has a ``close`` method, and forget them all."""
        entries = list(self._entries.values())
        self._entries.clear()
        self._locks.clear()
        for entry in entries:
            close = getattr(entry.value, "close", None)
            if close is None:
                continue
            result = close()
            if inspect.isawaitable(result):
                await result


@dataclass
class TriggerContext:
    """Collaborators a trigger may use, bundled.

    ``secrets`` reads Secret keys (``http`` secure headers, basic auth, TLS); without
    one, triggers read Secrets through ``kube``. ``policy`` is the trigger's
    ``policy`` (the runner gives each trigger a copy of the context carrying its own).
    ``shared`` holds what outlives one trigger instance (see :class:`SharedCache`).
    """

    kube: KubeApi
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("triggerfish.trigger"))
    secrets: SecretResolver | None = None
    policy: TriggerPolicy | None = None
    shared: SharedCache = field(default_factory=SharedCache)
    read_files: bool = True
    """Read ``source.file`` objects when a trigger is built (false when only validating
    manifests, where the sensor's files are not)."""


@dataclass
class Invocation:
    """One firing of a trigger.

    ``events`` maps dependency names to the events that satisfied the conditions;
    ``key`` is a short stable hash of (sensor, trigger, event ids): the same events give
    the same key, so a redelivered firing can be recognised (idempotent names).
    """

    sensor_name: str
    namespace: str
    trigger_name: str
    events: Mapping[str, Event]
    key: str
    trace_id: str = ""
    """The W3C trace id of this firing (written on created objects); "" when unknown."""


@dataclass
class TriggerResult:
    """What a trigger did, for logs, traces and metrics."""

    action: str  # e.g. "created", "already-exists", "logged", "http 200"
    detail: dict[str, Any] = field(default_factory=dict)
    parameters: list[dict[str, Any]] = field(default_factory=list)


class Trigger(abc.ABC):
    """Base class of a trigger type; subclasses set ``type_name`` and ``config_model``."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[SpecModel]]

    def __init__(self, config: Any, ctx: TriggerContext) -> None:
        self.config = config
        self.ctx = ctx

    @abc.abstractmethod
    async def execute(self, inv: Invocation) -> TriggerResult:
        """Perform the action once for ``inv``; raise Transient/PermanentError on failure."""
