"""Shared pieces of every manifest model: the base config, object metadata, error paths.

All spec models derive from :class:`SpecModel`: Argo's camelCase field names are
accepted as-is (aliases generated from the snake_case attribute names), unknown fields
are rejected, and :func:`format_validation_error` turns pydantic errors into lines
that name the manifest path the way users write it (``spec.triggers[0].template``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """Base of every manifest model: camelCase aliases, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
    )


class ObjectMeta(SpecModel):
    """The subset of Kubernetes ``metadata`` a manifest may carry; extra keys allowed."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str = ""
    generate_name: str = ""
    namespace: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


def format_loc(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """Render a pydantic error location as ``a.b[0].c`` (list indexes in brackets)."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # pydantic adds the validator name for tagged unions / function validators;
            # those are not user-visible path segments.
            if part.startswith(("function-", "union[", "tagged-union[")):
                continue
            out += f".{part}" if out else str(part)
    return out


def format_validation_error(err: ValidationError, prefix: str = "") -> list[str]:
    """One ``path: message`` line per error, messages phrased for manifest authors."""
    lines: list[str] = []
    for e in err.errors():
        path = format_loc(tuple(e["loc"]), prefix)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{path}: {msg}" if path else msg)
    return lines


def dump(model: BaseModel) -> dict[str, Any]:
    """Serialise a spec model back to Argo's camelCase shape, without unset fields."""
    return model.model_dump(by_alias=True, exclude_none=True, exclude_unset=True)
