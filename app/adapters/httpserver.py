"""A uvicorn server that leaves the process's signal handlers alone.

``uvicorn.Server.serve`` installs SIGINT/SIGTERM handlers and re-raises the signal when
it stops; inside Triggerfish the runtime owns signals and stops servers by cancelling
their tasks. Used by the operations API and the webhook source.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn


class QuietServer(uvicorn.Server):
    """``uvicorn.Server`` without signal handling (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def install_signal_handlers(self) -> None:  # the same hook in older uvicorn releases
        return None
