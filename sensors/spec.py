"""pydantic models of the Argo ``Sensor`` (``argoproj.io/v1alpha1``), loaded as-is.

Field names are Argo's camelCase (aliases of the snake_case attributes); unknown fields
are rejected with their path.
"""

from __future__ import annotations

from typing import Literal

from app.spec import SpecModel


class TriggerParameterSource(SpecModel):
    """Where a parameter's value comes from (``src``). Resolution order: template → key
    → value (default) → error."""

    dependency_name: str
    context_key: str | None = None
    context_template: str | None = None
    data_key: str | None = None
    data_template: str | None = None
    value: str | None = None
    use_raw_data: bool = False


class TriggerParameter(SpecModel):
    """One parameter: a value from an event set at ``dest`` (an sjson path)."""

    src: TriggerParameterSource
    dest: str
    operation: Literal["", "overwrite", "append", "prepend"] = ""
