"""The small interface every event source plugin implements, and what it is given.

A plugin is constructed with the EventSource's name and namespace, the validated config
of each of its event names (``{eventName: config}``, config being the plugin's own
pydantic model) and a :class:`SourceContext`. ``run()`` serves until cancelled.

Delivery contract (STYLE §5): a plugin acknowledges upstream (HTTP 200, SQS delete,
Service Bus complete) only after ``ctx.publish`` returned; ``publish`` raises
:class:`app.kernel.errors.BusUnavailableError` when the event is not durable.

A source that has no upstream to acknowledge (a schedule) keeps its progress in a
small durable store it opens through ``ctx.state`` (:class:`SourceStateStores`: the
bus's key-value store, or a ConfigMap when the manifest asks for one and the process
has a Kubernetes API), and reads the time through ``ctx.clock`` so tests can move it.
A type that must not run twice at once (a fixed MQTT client id, a schedule) says so
with :meth:`EventSourcePlugin.singleton`; with several replicas the runtime then runs
it only while it holds a Lease.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from app.kernel.clock import Clock, SystemClock
from app.kernel.events import Event
from app.kernel.settings import HttpServerSettings
from app.kernel.spec import SpecModel


class SecretResolver(Protocol):
    """Reads one key of a Kubernetes Secret (standalone: from loaded manifests)."""

    async def get(self, namespace: str, name: str, key: str) -> str: ...


class KubeWatchApi(Protocol):
    """The Kubernetes API as a source that watches objects reads it (``ApiKube``)."""

    async def kind_of(self, api_version: str, plural: str) -> str:
        """The kind served as resource ``plural`` (discovery)."""

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str = "",
        field_selector: str = "",
        label_selector: str = "",
        limit: int = 0,
    ) -> dict[str, Any]:
        """The list object: ``items`` and ``metadata.resourceVersion``."""

    def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        resource_version: str,
        *,
        timeout_seconds: int = 300,
        field_selector: str = "",
        label_selector: str = "",
        allow_watch_bookmarks: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events after ``resource_version`` until the server ends the watch."""


class SourceMetrics(Protocol):
    """Counters a source reports (Argo's metric names; see app.adapters.metrics)."""

    def event_sent(self, source: str, event_name: str) -> None: ...

    def event_send_failed(self, source: str, event_name: str) -> None: ...

    def event_filtered(self, source: str, event_name: str) -> None: ...

    def http_request(self, source: str, status: int) -> None:
        """A request a source's HTTP server answered (webhook-style sources)."""


class _NullMetrics:
    def event_sent(self, source: str, event_name: str) -> None:
        pass

    def event_send_failed(self, source: str, event_name: str) -> None:
        pass

    def event_filtered(self, source: str, event_name: str) -> None:
        pass

    def http_request(self, source: str, status: int) -> None:
        pass


class SourceState(Protocol):
    """A small durable key → bytes store where a source keeps its progress."""

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``; ``None`` when there is none. Raises
        :class:`app.kernel.errors.TransientError` when the store cannot be read."""
        ...

    async def put(self, key: str, value: bytes) -> object:
        """Store ``value`` under ``key`` durably before returning (raises
        :class:`app.kernel.errors.TransientError` when it could not)."""
        ...


class SourceStateStores(Protocol):
    """Where a source's state may live (the process decides what is available)."""

    async def bus(self) -> SourceState:
        """The bus's key-value store (a JetStream KV bucket shared by every source)."""
        ...

    async def config_map(
        self, namespace: str, name: str, create_if_missing: bool
    ) -> SourceState | None:
        """ConfigMap ``namespace/name`` as a store, one key per entry of its ``data``;
        ``None`` when this process has no Kubernetes API. Raises
        :class:`app.kernel.errors.ConfigError` when it does not exist and may not be
        created."""
        ...


@dataclass
class SourceContext:
    """Everything a source plugin needs from the process, bundled (no 15-arg ctors)."""

    publish: Callable[[Event], Awaitable[None]]
    secrets: SecretResolver
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("triggerfish.source"))
    metrics: SourceMetrics = field(default_factory=_NullMetrics)
    bind_host: str = "0.0.0.0"
    http: HttpServerSettings = field(default_factory=HttpServerSettings)
    """Limits of the HTTP servers a source runs (timeouts, head size, requests in flight)."""
    kube: KubeWatchApi | None = None
    """The Kubernetes API (kubeconfig or in-cluster service account); None when no
    cluster is configured. Sources that watch cluster objects need it."""
    state: SourceStateStores | None = None
    """Durable stores for a source's progress; ``None``: nothing survives a restart."""
    clock: Clock = field(default_factory=SystemClock)
    """Wall-clock time and waiting, for sources that fire on a schedule."""


ConfigT = TypeVar("ConfigT", bound=SpecModel)


class EventSourcePlugin(abc.ABC, Generic[ConfigT]):
    """Base class of a source type; subclasses set ``type_name`` and ``config_model``."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[SpecModel]]

    def __init__(
        self,
        source_name: str,
        namespace: str,
        events: Mapping[str, ConfigT],
        ctx: SourceContext,
    ) -> None:
        self.source_name = source_name
        self.namespace = namespace
        self.events = dict(events)
        self.ctx = ctx

    @abc.abstractmethod
    async def run(self) -> None:
        """Serve until cancelled; raise only for errors that should stop the process."""

    def ready(self) -> bool:
        """True once the source accepts events (listening, subscribed)."""
        return True

    @classmethod
    def singleton(cls, events: Mapping[str, ConfigT]) -> bool:
        """True when at most one process may run these events at a time (a schedule
        would fire once per replica, a fixed client id would be kicked off by the
        broker): with several replicas, only the holder of a Lease runs them."""
        return False

    @classmethod
    def check_config(cls, source_name: str, events: Mapping[str, ConfigT]) -> list[str]:
        """Cross-event validation (e.g. port conflicts); ``path: message`` lines."""
        return []

    def make_event(self, event_name: str, data: Any, event_id: str) -> Event:
        """Build the CloudEvent for one upstream message of ``event_name``."""
        return Event(
            id=event_id,
            source=self.source_name,
            subject=event_name,
            type=self.type_name,
            data=data,
        )
