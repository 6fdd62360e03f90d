"""pytest fixtures that run the FAKE Service Bus broker (``tests/fakeservicebus``).

Add ``"tests.servicebus_fixtures"`` to ``pytest_plugins`` in ``tests/conftest.py``.

``fake_servicebus_factory(...)`` starts a broker subprocess on a free loopback port with
the queues, subscriptions and lock duration a test asks for, waits for its ready line
and kills it by PID at teardown; ``fake_servicebus`` is one broker with the defaults
(auto-created queues, topic ``events`` with subscriptions ``a`` and ``b``, 30 s locks).
"""

from __future__ import annotations

import contextlib
import ctypes
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.adapters.natsserver import kill_pid
from tests.support.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_PREFIX = "fakeservicebus ready on "


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec hook: a broker left by a killed pytest run dies with it (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


@dataclass
class FakeServiceBusServer:
    """One running fake broker and how to reach it."""

    host: str
    port: int
    lock_duration_seconds: float
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def connection_string(self) -> str:
        """What the SDK (and the event source's secret) is given to reach this broker."""
        return (
            f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName=k;"
            "SharedAccessKey=v;UseDevelopmentEmulator=true"
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """Kill the broker by PID (SIGTERM, then SIGKILL)."""
        if self.process is not None:
            kill_pid(self.process.pid)
            with contextlib.suppress(Exception):
                self.process.wait(timeout=1)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None


def start_fake_servicebus(
    log_dir: Path,
    *,
    queues: Sequence[str] = (),
    subscriptions: Sequence[str] = (),
    lock_duration_seconds: float = 30.0,
    max_delivery_count: int = 10,
    auto_create_queues: bool = True,
    port: int | None = None,
    timeout_seconds: float = 15.0,
) -> FakeServiceBusServer:
    """Start a broker subprocess and return once it printed its ready line.

    ``port`` pins the port (a restarted broker where clients expect the old one);
    otherwise a free one is picked, and another if it was taken before the bind.
    """
    last_error = ""
    pinned = port
    for _attempt in range(3):
        port = port or free_port()
        log_path = log_dir / f"fakeservicebus-{port}.log"
        args = [
            sys.executable, "-m", "tests.fakeservicebus",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--lock-duration-seconds", str(lock_duration_seconds),
            "--max-delivery-count", str(max_delivery_count),
        ]  # fmt: skip
        for q in queues:
            args += ["--queue", q]
        for s in subscriptions:
            args += ["--subscription", s]
        if not auto_create_queues:
            args.append("--no-auto-create")
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=logf,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        server = FakeServiceBusServer("127.0.0.1", port, lock_duration_seconds, log_path, proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_seconds
        line = b""
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                line = proc.stdout.readline()
                break
        if line.decode(errors="replace").startswith(READY_PREFIX) and proc.poll() is None:
            return server
        last_error = log_path.read_text(errors="replace")[-2000:]
        server.stop()
        if pinned is None:
            port = None
        else:
            time.sleep(0.2)  # the old broker's socket may still be going away
    raise RuntimeError(f"fake Service Bus broker did not start: {last_error}")


@pytest.fixture
def fake_servicebus_factory(
    tmp_path: Path,
) -> Iterator[Callable[..., FakeServiceBusServer]]:
    """Start brokers with custom queues/subscriptions/lock durations; all killed after."""
    started: list[FakeServiceBusServer] = []
    log_dir = tmp_path / "fakeservicebus"
    log_dir.mkdir(exist_ok=True)

    def start(**kwargs: object) -> FakeServiceBusServer:
        server = start_fake_servicebus(log_dir, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def fake_servicebus(
    fake_servicebus_factory: Callable[..., FakeServiceBusServer],
) -> FakeServiceBusServer:
    """A broker with auto-created queues and topic ``events`` (subscriptions a, b)."""
    return fake_servicebus_factory(subscriptions=["events/a", "events/b"])


__all__ = [
    "FakeServiceBusServer",
    "fake_servicebus",
    "fake_servicebus_factory",
    "start_fake_servicebus",
]
