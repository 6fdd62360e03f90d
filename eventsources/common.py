"""Config pieces shared by several source types (secret selectors, event filters)."""

from __future__ import annotations

from app.kernel.spec import SpecModel


class SecretKeySelector(SpecModel):
    """A key of a Kubernetes Secret in the EventSource's namespace (``{name, key}``)."""

    name: str
    key: str
    optional: bool | None = None


class EventSourceFilter(SpecModel):
    """``filter.expression``: drop events for which the expression is false."""

    expression: str = ""
