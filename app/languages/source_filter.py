"""An EventSource's ``filter.expression`` (expr-lang), compiled when the manifest loads.

Every source type (webhook, queues, brokers) drops events for which the expression is
false before they reach the bus. As in Argo the data must be a JSON object, top-level
keys have ``-`` replaced by ``_`` and dotted keys are expanded (``{"a.b": 1}`` reads as
``a.b``), numbers are floats, and any error or a non-bool result drops the event.
"""

from __future__ import annotations

import itertools
from typing import Any

from app.languages.expr import EvalError, Expression, compile_expr, show_value
from app.languages.gjson_values import gjson_value

__all__ = ["SourceFilter", "event_source_filter"]


def _source_env(data: Any) -> dict[str, Any] | None:
    """The variables Argo gives an EventSource filter: the data's top-level keys with
    ``-`` replaced by ``_``, dotted keys expanded, numbers as floats."""
    if not isinstance(data, dict):
        return None
    flat = {str(k).replace("-", "_"): gjson_value(v) for k, v in data.items()}
    keys = sorted(flat)
    shadowed = {k for k, nxt in itertools.pairwise(keys) if nxt.startswith(k + ".")}
    env: dict[str, Any] = {}
    for key in keys:
        if key in shadowed:
            continue
        *parents, leaf = key.split(".")
        node = env
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = flat[key]
    return env


class SourceFilter:
    """An EventSource ``filter.expression``, compiled once; call it with the event data
    (true: publish the event). :meth:`check` also says why."""

    __slots__ = ("expression",)

    def __init__(self, expression: Expression) -> None:
        self.expression = expression

    def check(self, data: Any) -> tuple[bool, str]:
        """``(publish, reason)`` for one event's data."""
        env = _source_env(data)
        if env is None:
            return False, "the event data is not a JSON object"
        try:
            result = self.expression.evaluate(env)
        except EvalError as e:
            return False, f"error: {e}"
        if not isinstance(result, bool):
            return False, f"result {show_value(result)} is not a bool"
        return result, "true" if result else "false"

    def __call__(self, data: Any) -> bool:
        return self.check(data)[0]

    def __repr__(self) -> str:
        return f"SourceFilter({self.expression.source!r})"


def event_source_filter(expression: str) -> SourceFilter:
    """Compile an EventSource ``filter.expression``; ``ValueError`` (with the position)
    when it does not parse or uses what is not supported."""
    return SourceFilter(compile_expr(expression))
