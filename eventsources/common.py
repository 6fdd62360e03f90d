"""Config pieces shared by several source types (the event filter)."""

from __future__ import annotations

from app.kernel.spec import SpecModel


class EventSourceFilter(SpecModel):
    """``filter.expression``: drop events for which the expression is false."""

    expression: str = ""
