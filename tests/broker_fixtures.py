"""pytest plugin: the real brokers the broker source tests read from (DESIGN §6).

Each is the Debian package's own server binary, started on a free loopback port with its
own config and data directory under the test's temp dir, ready when it answers on its
port, and stopped by PID (restartable on the same port for reconnect tests):

* ``redis_peer``: ``redis-server`` without persistence;
* ``mosquitto_peer``: ``mosquitto`` with its own config file and password file.

A missing binary fails the test with the package to install (``.ci/run`` installs them).
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.adapters.natsserver import kill_pid
from tests.support.net import free_port


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

        deadline = time.monotonic() + self.start_timeout_seconds
        while True:
            if self.process.poll() is not None:
                self.process = None
                raise AssertionError(f"{self.name} exited at start:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.ready():
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.name} did not start:\n{self.log()}")
            time.sleep(0.05)

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


@dataclass(kw_only=True)
class MosquittoPeer(Daemon):
    """Mosquitto with its own config file: anonymous clients plus one user from a
    password file (``USER``/``PASSWORD``), no persistence."""

    name: str = "mosquitto"
    USER = "trainer"
    PASSWORD = "s3cret"

    def args(self) -> list[str]:
        passwords = self.workdir / "passwords"
        if not passwords.exists():
            subprocess.run(
                [_binary("mosquitto_passwd", "mosquitto"), "-b", "-c", str(passwords),
                 self.USER, self.PASSWORD],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
            passwords.chmod(0o600)
        config = self.workdir / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} {self.host}\n"
            # As root, mosquitto drops to user "mosquitto", who cannot read the test's
            # temp dir: stay the user the tests run as.
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            f"password_file {passwords}\n"
            "persistence false\n"
            "max_queued_messages 1000\n"
            "log_dest stdout\n"
        )
        return [_binary("mosquitto", "mosquitto"), "-c", str(config)]

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"


@pytest.fixture
def mosquitto_peer(tmp_path: Path) -> Iterator[MosquittoPeer]:
    peer = MosquittoPeer(workdir=tmp_path / "mosquitto")
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()
