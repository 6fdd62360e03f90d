"""W3C Trace Context (``traceparent``) values: parse, make, continue.

Why in the kernel: every event carries its trace context in the CloudEvent (the
distributed-tracing extension), whether or not spans are exported, so that a created
Workflow can be traced back to the request that caused it. Span export is the tracing
adapter's job (:mod:`app.adapters.tracing`); this module only handles the text.

Format: ``00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>``; all-zero ids
and version ``ff`` are invalid (W3C Trace Context, level 1).
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

__all__ = ["TraceParent", "child_of", "parse_traceparent"]

_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class TraceParent(NamedTuple):
    """A parsed ``traceparent``."""

    trace_id: str
    span_id: str
    flags: str = "01"

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The trace context in ``value``; ``None`` when absent or invalid (a bad header
    starts a new trace, as the spec says, instead of failing the request)."""
    if not value:
        return None
    m = _RE.fullmatch(value.strip().lower())
    if m is None:
        return None
    version, trace_id, span_id, flags = m.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00" and len(value.strip()) != 55:
        return None
    return TraceParent(trace_id, span_id, flags)


def child_of(parent: str | None) -> TraceParent:
    """A new span's context: in ``parent``'s trace when it is valid, else a new trace
    (sampled)."""
    p = parse_traceparent(parent)
    span_id = os.urandom(8).hex()
    if p is None:
        return TraceParent(os.urandom(16).hex(), span_id, "01")
    return TraceParent(p.trace_id, span_id, p.flags)
