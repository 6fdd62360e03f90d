"""Free-port and readiness helpers for the real servers the tests start."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``check`` until it returns true; raise ``TimeoutError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as e:
            last = e
        time.sleep(interval)
    raise TimeoutError(f"condition not met in {timeout}s (last error: {last!r})")
