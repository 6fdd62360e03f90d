"""The interface every trigger type implements, and what an invocation carries.

The runner resolves the trigger-level parameters (``template.parameters``) into the
template, validates the plugin's config from it, and calls :meth:`Trigger.execute` with
the events that satisfied the sensor's conditions. ``execute`` raises
:class:`app.errors.TransientError` for what a retry may fix and
:class:`app.errors.PermanentError` for what it cannot; it returns a
:class:`TriggerResult` describing what it did, which goes into the trace.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from app.events import Event
from app.spec import SpecModel


class KubeApi(Protocol):
    """What triggers need from Kubernetes; implemented by :mod:`app.kube`."""

    async def create(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]: ...

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str
    ) -> dict[str, Any] | None: ...

    async def update(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]: ...

    async def patch(
        self, obj: dict[str, Any], namespace: str, patch_type: str
    ) -> dict[str, Any]: ...

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None: ...


@dataclass
class TriggerContext:
    """Collaborators a trigger may use, bundled."""

    kube: KubeApi
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("triggerfish.trigger"))


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
