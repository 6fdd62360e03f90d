"""Manifests → what a standalone run serves, refusing to start on any invalid manifest."""

from __future__ import annotations

from app.compose.crosscheck import run_errors
from app.compose.manifests import load_paths
from app.compose.runtime import Manifests
from app.kernel.errors import ConfigError


def load_for_run(paths: list[str]) -> Manifests:
    """Load and validate ``paths``; raise one ConfigError listing every problem."""
    res = load_paths(paths)
    lines = [str(e) for e in res.errors] + [str(f) for f in run_errors(res)]
    if lines:
        raise ConfigError("invalid manifests:\n  " + "\n  ".join(lines))
    if not res.event_sources and not res.sensors:
        raise ConfigError(f"no EventSource or Sensor found in {', '.join(paths)}")
    return Manifests(
        event_buses=[x.obj for x in res.event_buses],
        event_sources=[x.obj for x in res.event_sources],
        sensors=[x.obj for x in res.sensors],
        others=[x.obj for x in res.others],
    )
