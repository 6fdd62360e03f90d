"""The ``log`` trigger: writes the firing's events to the log (debugging sensors).

Fields: ``intervalSeconds`` (Argo: minimum seconds between two log lines; 0 = every
firing). Never fails; a suppressed firing still counts as a success.
"""

from __future__ import annotations

import time
from typing import ClassVar

from pydantic import Field

from app.kernel.spec import SpecModel
from sensors.triggers.base import Invocation, Trigger, TriggerContext, TriggerResult


class LogTriggerConfig(SpecModel):
    """``template.log``: log each firing; ``intervalSeconds`` is the minimum number of
    seconds between two log lines (0: every firing)."""

    interval_seconds: int = Field(0, ge=0)


class LogTrigger(Trigger):
    """Logs each firing, at most once per ``intervalSeconds``."""

    type_name: ClassVar[str] = "log"
    config_model: ClassVar[type[SpecModel]] = LogTriggerConfig

    def __init__(self, config: LogTriggerConfig, ctx: TriggerContext) -> None:
        super().__init__(config, ctx)
        self._last = 0.0

    async def execute(self, inv: Invocation) -> TriggerResult:
        interval = float(getattr(self.config, "interval_seconds", 0) or 0)
        now = time.monotonic()
        if interval and now - self._last < interval:
            return TriggerResult("suppressed", {"intervalSeconds": interval})
        self._last = now
        for dep, ev in inv.events.items():
            self.ctx.log.info(
                "log trigger %s/%s: dependency=%s event=%s source=%s subject=%s data=%s",
                inv.sensor_name,
                inv.trigger_name,
                dep,
                ev.id,
                ev.source,
                ev.subject,
                ev.data,
            )
        return TriggerResult("logged", {"events": {d: e.id for d, e in inv.events.items()}})
