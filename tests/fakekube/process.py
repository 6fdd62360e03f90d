"""The fake API server as a child process: started on a free port, stopped by PID.

The server binds port 0 itself and prints ``fakekube ready <url>`` once serving, so
there is no window where a port picked by the parent is taken by someone else. Its
stdout and stderr (including the access log) go to ``<log_dir>/fakekube.log``; when it
fails to start, that log is in the exception. On Linux the child also gets SIGTERM if
the test process dies (``PR_SET_PDEATHSIG``), so no server outlives a killed run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "fakekube ready "  # then the URL; printed by ``python -m tests.fakekube``


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class FakeKubeServer:
    """One ``python -m tests.fakekube`` process and the admin calls tests need."""

    log_dir: Path
    host: str = "127.0.0.1"
    history: int = 1000
    start_timeout_seconds: float = 20.0
    extra_args: tuple[str, ...] = ()
    """More ``python -m tests.fakekube`` flags (``--tls-cert`` ..., ``--tokens-file``)."""
    ssl_context: ssl.SSLContext | None = None
    """How :meth:`request` talks to a server started with ``--tls-cert``."""
    process: subprocess.Popen[bytes] | None = None
    url: str = ""

    @property
    def log_path(self) -> Path:
        return self.log_dir / "fakekube.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cmd = [
            sys.executable, "-m", "tests.fakekube",
            "--host", self.host, "--port", "0", "--history", str(self.history), *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + self.start_timeout_seconds
        while time.monotonic() < deadline:
            text = self.log_text()[offset:]
            for line in text.splitlines():
                if line.startswith(READY_PREFIX):
                    self.url = line[len(READY_PREFIX) :].strip()
                    return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"fake Kubernetes API server exited with {self.process.returncode} before "
                    f"it was ready; log {self.log_path}:\n{text}"
                )
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"fake Kubernetes API server not ready in {self.start_timeout_seconds}s; "
            f"log {self.log_path}:\n{self.log_text()[offset:]}"
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ensure_running(self) -> None:
        """Restart a server that died (a later test still gets one; the URL changes)."""
        if not self.running():
            self.start()

    def stop(self, timeout_seconds: float = 5.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout_seconds``; waits for the exit."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """A JSON request to the server (for the ``/fake/`` admin endpoints and raw checks)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
        return json.loads(raw) if raw else None

    def reset(self) -> None:
        self.request("POST", "/fake/reset")

    def compact(self, keep: int = 0) -> int:
        """Drop watch history; returns the oldest resourceVersion a watch can resume from."""
        return int(self.request("POST", f"/fake/compact?keep={keep}")["compactedResourceVersion"])

    def state(self) -> dict[str, Any]:
        return dict(self.request("GET", "/fake/state"))

    def inject_fault(self, method: str, path: str, **rule: Any) -> None:
        """Add a fault rule of ``faults.py`` (``status``, ``retryAfter``, ``times``, ...)."""
        self.request("POST", "/fake/faults", {"method": method, "path": path, **rule})

    def seen(self) -> dict[str, Any]:
        """API requests since the last reset and the most in progress at once."""
        return dict(self.request("GET", "/fake/gate/requests"))

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """API requests served after sequence number ``since`` (``seq``, ``method``,
        ``path``, ``query``, ``userAgent``), oldest first; the last 20,000 are kept."""
        return list(self.request("GET", f"/fake/requests?since={since}")["items"])
