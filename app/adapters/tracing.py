"""OpenTelemetry spans, exported over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; otherwise only the trace context is
carried, at the cost of a random span id per step.

The only module that imports ``opentelemetry``. Like logging, tracing is a process-wide
concern (the OpenTelemetry API itself keeps a global provider), so :func:`configure` is
called once at start and :func:`span` is used where a step begins:

* a webhook request (server span; an incoming ``traceparent`` header is continued),
* the publish to the bus (producer span; its context travels in the CloudEvent),
* a sensor handling an event (consumer span; the CloudEvent's context is continued),
  with children for the filters, the conditions and each trigger,
* a Kubernetes API call (client span).

The trigger span's trace id is written on the objects a trigger creates (annotation
``events.triggerfish.io/trace-id``), so a Workflow leads back to its request.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from app.kernel.tracecontext import TraceParent, child_of, parse_traceparent

__all__ = [
    "Span",
    "Traced",
    "configure",
    "current_traceparent",
    "enabled",
    "shutdown",
    "span",
]

Kind = Literal["internal", "server", "client", "producer", "consumer"]

_tracer: Any = None
_provider: Any = None
_current: contextvars.ContextVar[str] = contextvars.ContextVar("traceparent", default="")


def configure(service_name: str, exporter: Any = None) -> bool:
    """Export spans when an OTLP endpoint is configured in the environment, or to
    ``exporter`` (a span exporter: tests use the SDK's in-memory one); returns whether
    spans are recorded. Without either, spans are not recorded."""
    global _tracer, _provider
    if exporter is None and not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name}
        )
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("triggerfish")
    return True


def enabled() -> bool:
    """Whether spans are recorded and exported."""
    return _tracer is not None


def shutdown() -> None:
    """Flush and stop the exporter (at process exit)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


class Span:
    """The step in progress: its ``traceparent`` (for the CloudEvent) and ``trace_id``."""

    __slots__ = ("_span", "context")

    def __init__(self, context: TraceParent, otel_span: Any = None) -> None:
        self.context = context
        self._span = otel_span

    @property
    def traceparent(self) -> str:
        return str(self.context)

    @property
    def trace_id(self) -> str:
        return self.context.trace_id

    def set(self, key: str, value: str | int | float | bool) -> None:
        """An attribute on the exported span (nothing when spans are not recorded)."""
        if self._span is not None:
            self._span.set_attribute(key, value)

    def error(self, message: str) -> None:
        """Mark the span failed with ``message``."""
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, message))


def current_traceparent() -> str:
    """The context of the innermost open span of this task ("" outside any)."""
    return _current.get()


@contextlib.contextmanager
def span(
    name: str,
    parent: str | None = None,
    kind: Kind = "internal",
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Span]:
    """A span named ``name`` under ``parent`` (a ``traceparent``; the innermost open
    span of this task when ``None``; a new trace when neither)."""
    parent = parent if parent is not None else _current.get() or None
    if _tracer is None:
        ctx = child_of(parent)
        token = _current.set(str(ctx))
        try:
            yield Span(ctx)
        finally:
            _current.reset(token)
        return
    yield from _recorded(name, parent, kind, attributes)


def _recorded(
    name: str, parent: str | None, kind: Kind, attributes: Mapping[str, Any] | None
) -> Iterator[Span]:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    otel_ctx = (
        TraceContextTextMapPropagator().extract({"traceparent": parent})
        if parse_traceparent(parent) is not None
        else Context()
    )
    with _tracer.start_as_current_span(
        name,
        context=otel_ctx,
        kind=getattr(trace.SpanKind, kind.upper()),
        attributes=dict(attributes or {}),
        record_exception=True,
    ) as otel_span:
        sc = otel_span.get_span_context()
        ctx = TraceParent(f"{sc.trace_id:032x}", f"{sc.span_id:016x}", f"{int(sc.trace_flags):02x}")
        token = _current.set(str(ctx))
        try:
            yield Span(ctx, otel_span)
        finally:
            _current.reset(token)


class Traced:
    """``target`` with each coroutine method run in a client span named
    ``<prefix> <method> <kind>`` (the Kubernetes API calls of triggers)."""

    def __init__(self, target: Any, prefix: str) -> None:
        self._target = target
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr) or name.startswith("_"):
            return attr
        import inspect

        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            kind = ""
            if args and isinstance(args[0], Mapping):
                kind = str(args[0].get("kind", ""))
            elif len(args) >= 2 and isinstance(args[1], str):
                kind = args[1]
            with span(f"{self._prefix} {name} {kind}".rstrip(), kind="client") as sp:
                sp.set("triggerfish.api.verb", name)
                return await attr(*args, **kwargs)

        return call
