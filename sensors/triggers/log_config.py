"""Config model of the ``log`` trigger (Argo ``LogTrigger``).

Kept apart from the trigger class (:mod:`sensors.triggers.log`) so the Sensor model can
validate ``template.log`` without importing the runtime.
"""

from __future__ import annotations

from pydantic import Field

from app.kernel.spec import SpecModel


class LogTriggerConfig(SpecModel):
    """``template.log``: log each firing; ``intervalSeconds`` is the minimum number of
    seconds between two log lines (0: every firing)."""

    interval_seconds: int = Field(0, ge=0)
