"""Bus subject naming (DESIGN §3), shared by the bus adapter and the sensor runner.

``<bus>.<eventSourceName>.<eventName>`` for events; ``<bus>._dlq.<sensor>.<trigger>``
for dead letters (``_`` cannot start a Kubernetes name, so it never clashes with an
EventSource).
"""

from __future__ import annotations

import functools
import re

_TOKEN_RE = re.compile(r"[^A-Za-z0-9_-]")


def subject_token(value: str) -> str:
    """Make a name safe as one NATS subject token (no dots, spaces or wildcards)."""
    return _TOKEN_RE.sub("_", value) or "_"


@functools.lru_cache(maxsize=4096)
def event_subject(bus: str, event_source: str, event_name: str) -> str:
    """The subject an event of ``event_source``/``event_name`` is published on."""
    return f"{subject_token(bus)}.{subject_token(event_source)}.{subject_token(event_name)}"


def dead_letter_subject(bus: str, sensor: str, trigger: str) -> str:
    """The subject a sensor's failed firings are dead-lettered to."""
    return f"{subject_token(bus)}._dlq.{subject_token(sensor)}.{subject_token(trigger)}"
