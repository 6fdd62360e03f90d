"""pytest plugin: the real brokers the broker source tests read from (DESIGN §6).

Each is the Debian package's own server binary, started on a free loopback port with its
own config and data directory under the test's temp dir, ready when it answers on its
port, and stopped by PID (restartable on the same port for reconnect tests):

* ``redis_peer``: ``redis-server`` without persistence;
* ``mosquitto_peer``: ``mosquitto`` with its own config file.

A missing binary fails the test with the package to install (``.ci/run`` installs them).
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.adapters.natsserver import kill_pid
from tests.support.net import free_port, wait_for


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec hook: SIGTERM the broker when the test process dies (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _binary(name: str, package: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail(f"{name} not found: install the Debian package {package} (.ci/run does)")


def _accepts(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=0.5):
        return True


@dataclass(kw_only=True)
class Daemon:
    """A broker child process on ``host:port``; ``args()`` builds its command line."""

    name: str
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    env: dict[str, str] | None = None
    start_timeout_seconds: float = 15.0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def args(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return _accepts(self.host, self.port)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        with open(self.workdir / f"{self.name}.log", "ab") as logf:
            self.process = subprocess.Popen(
                self.args(),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=self.env,
                preexec_fn=_die_with_parent,
            )

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log()}")
            return self.ready()

        try:
            wait_for(up, timeout=self.start_timeout_seconds, interval=0.05)
        except (TimeoutError, AssertionError):
            self.stop()
            raise AssertionError(f"{self.name} did not start:\n{self.log()}") from None

    def log(self) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop by PID (SIGTERM, then SIGKILL); the port is kept for a restart."""
        if self.process is not None:
            kill_pid(self.process.pid)
            with contextlib.suppress(Exception):
                self.process.wait(timeout=1)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass(kw_only=True)
class RedisPeer(Daemon):
    name: str = "redis-server"

    def args(self) -> list[str]:
        return [
            _binary("redis-server", "redis-server"),
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--protected-mode", "no",
        ]  # fmt: skip

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@pytest.fixture
def redis_peer(tmp_path: Path) -> Iterator[RedisPeer]:
    peer = RedisPeer(workdir=tmp_path / "redis")
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()
