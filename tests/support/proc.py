"""Run ``triggerfish run`` as a real subprocess for end-to-end and fault tests.

The process gets its own state directory, a free API port, a port map that moves the
manifests' webhook ports onto free ports, and the fake Kubernetes API's kubeconfig.
It is stopped (SIGTERM, or SIGKILL in fault tests) by PID; its log is kept for
assertion messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.net import free_port, wait_for


@dataclass
class Triggerfish:
    """One ``triggerfish run`` child process."""

    files: list[str]
    state_dir: Path
    kubeconfig: str | None = None
    nats_url: str | None = None
    port_map: dict[int, int] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    api_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(
        self, timeout: float = 60.0, until: Callable[[Triggerfish], bool] | None = None
    ) -> Triggerfish:
        """Start and wait until ready (or until ``until(self)`` holds)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.api_port = self.api_port or free_port()
        args = [sys.executable, "-m", "app.compose.cli", "run", "--state-dir", str(self.state_dir),
                "--api-port", str(self.api_port), "--bind-host", "127.0.0.1"]  # fmt: skip
        for f in self.files:
            args += ["-f", f]
        if self.nats_url:
            args += ["--nats-url", self.nats_url]
        for src, dst in self.port_map.items():
            args += ["--port-map", f"{src}={dst}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERFISH_")}
        env.pop("KUBECONFIG", None)
        env["HOME"] = str(self.state_dir)  # no ~/.kube/config from the machine
        if self.kubeconfig:
            env["KUBECONFIG"] = self.kubeconfig
        env.update(self.extra_env)
        self.log_path = self.state_dir / f"triggerfish-{time.time_ns()}.log"
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=str(Path(__file__).resolve().parents[2]),
            )  # fmt: skip
        try:
            check = self.is_ready if until is None else lambda: until(self)
            wait_for(check, timeout=timeout, interval=0.05)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"triggerfish did not become ready:\n{self.log()}") from None
        return self

    def is_ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"triggerfish exited early:\n{self.log()}")
        r = httpx.get(f"http://127.0.0.1:{self.api_port}/readyz", timeout=1)
        return r.status_code == 200

    def api(self, path: str) -> object:
        return httpx.get(f"http://127.0.0.1:{self.api_port}{path}", timeout=5).json()

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-8000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        rc = stop_child(self.proc, sig, timeout)
        self.proc = None
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def stop_child(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0
) -> int:
    """Send ``sig``, SIGKILL after ``timeout`` seconds; reap the PID, return its status."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
