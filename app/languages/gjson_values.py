"""How gjson reads a JSON value as a number, a bool or a plain value (``Result.Float()``,
``Result.Bool()``, ``Result.Value()``).

Argo's data filters, expression fields and EventSource filters all see event data
through these views, so the conversions live once, beside the path language.
"""

from __future__ import annotations

from typing import Any, Final

from app.languages.expr import go_parse_float

__all__ = ["GO_BOOLS", "gjson_bool", "gjson_float", "gjson_value"]

GO_BOOLS: Final = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _as_float(v: int | float) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer beyond float64: gjson reads ±Inf
        return float("inf") if v > 0 else float("-inf")


def gjson_float(v: Any) -> float:
    """gjson ``Result.Float()``."""
    if v is True:
        return 1.0
    if _is_num(v):
        return _as_float(v)
    if isinstance(v, str):
        f = go_parse_float(v)
        return 0.0 if f is None else f
    return 0.0


def gjson_bool(v: Any) -> bool:
    """gjson ``Result.Bool()``."""
    if isinstance(v, bool):
        return v
    if _is_num(v):
        return bool(v != 0)
    if isinstance(v, str):
        return GO_BOOLS.get(v.lower(), False)
    return False


def gjson_value(v: Any) -> Any:
    """gjson ``Result.Value()``: the JSON value with every number a float64."""
    if _is_num(v):
        return _as_float(v)
    if isinstance(v, list):
        return [gjson_value(x) for x in v]
    if isinstance(v, dict):
        return {k: gjson_value(x) for k, x in v.items()}
    return v
