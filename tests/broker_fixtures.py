"""pytest plugin: the real brokers the broker source tests read from (DESIGN §6).

Each is a real server (a Debian package's binary, or Azurite from npm), started on a
free loopback port with its own config and data directory under the test's temp dir,
ready when it answers on its port, and stopped by PID (restartable on the same port for
reconnect tests):

* ``redis_peer``: ``redis-server`` without persistence;
* ``mosquitto_peer``: ``mosquitto`` with its own config file and password file;
* ``rabbitmq_peer`` (one per session: it takes seconds to boot): ``rabbitmq-server``
  with its own node name, ports and directories, its ``epmd`` stopped by PID too;
* ``azurite_peer``: Azurite's queue service (npm package ``azurite``, run with Node.js,
  installed under ``.ci/azurite`` by ``.ci/run``), in memory.

A missing binary fails the test with the package to install (``.ci/run`` installs them).
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import os
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
    #: (certificate PEM, key PEM): serve TLS only, with this self-signed certificate.
    tls: tuple[str, str] | None = None

    def args(self) -> list[str]:
        args = [
            _binary("redis-server", "redis-server"),
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--protected-mode", "no",
        ]  # fmt: skip
        if self.tls is not None:
            cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
            cert.write_text(self.tls[0])
            key.write_text(self.tls[1])
            key.chmod(0o600)
            args[args.index("--port") + 1] = "0"
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                     "--tls-auth-clients", "no"]  # fmt: skip
        return args

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
    #: (certificate PEM, key PEM): serve TLS with this self-signed certificate instead.
    tls: tuple[str, str] | None = None

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
        if self.tls is not None:
            cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
            cert.write_text(self.tls[0])
            key.write_text(self.tls[1])
            key.chmod(0o600)
            with open(config, "a") as f:
                f.write(f"cafile {cert}\ncertfile {cert}\nkeyfile {key}\n")
        return [_binary("mosquitto", "mosquitto"), "-c", str(config)]

    @property
    def url(self) -> str:
        return f"{'ssl' if self.tls else 'tcp'}://{self.host}:{self.port}"


@pytest.fixture
def mosquitto_peer(tmp_path: Path) -> Iterator[MosquittoPeer]:
    peer = MosquittoPeer(workdir=tmp_path / "mosquitto")
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # runs as the caller, unlike /usr/sbin's


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), deepest last."""
    out: list[int] = []
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        kids = [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except (OSError, ValueError):
        return out
    for kid in kids:
        out.append(kid)
        out += _children(kid)
    return out


def _epmd_pids(port: int) -> list[int]:
    """The ``epmd`` daemon started for our node: found by its own ERL_EPMD_PORT."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"epmd" not in (proc / "cmdline").read_bytes().split(b"\0")[0]:
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"ERL_EPMD_PORT={port}".encode() in env:
            found.append(int(proc.name))
    return found


@dataclass(kw_only=True)
class RabbitPeer(Daemon):
    """RabbitMQ with its own node name, ports (AMQP, distribution, epmd) and data and log
    directories, all set through RABBITMQ_* variables; no plugins. Slow to start, so
    one per test session."""

    name: str = "rabbitmq"
    start_timeout_seconds: float = 120.0
    dist_port: int = 0
    epmd_port: int = 0
    _log_offset: int = 0

    @property
    def node(self) -> str:
        return f"triggerfish-test-{self.port}@localhost"

    @property
    def node_log(self) -> Path:
        return self.workdir / "log" / f"{self.node}.log"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def args(self) -> list[str]:
        if not Path(RABBITMQ_SERVER).is_file():
            pytest.fail("rabbitmq-server not found: install the Debian package rabbitmq-server")
        return [RABBITMQ_SERVER]

    def start(self) -> None:
        self.port = self.port or free_port(self.host)
        self.dist_port = self.dist_port or free_port(self.host)
        self.epmd_port = self.epmd_port or free_port(self.host)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "enabled_plugins").write_text("[].\n")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),  # the Erlang cookie goes here
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq"),  # none: defaults
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
        }
        self._log_offset = self.node_log.stat().st_size if self.node_log.exists() else 0
        super().start()

    def ready(self) -> bool:
        if not self.node_log.exists():
            return False
        with open(self.node_log, "rb") as f:
            f.seek(self._log_offset)
            booted = b"Server startup complete" in f.read()
        return booted and _accepts(self.host, self.port)

    def log(self) -> str:
        text = super().log()
        if self.node_log.exists():
            text += "\n" + self.node_log.read_text(errors="replace")[-3000:]
        return text

    def stop(self) -> None:
        """The Erlang VM first (SIGTERM: a clean stop), then the script, then epmd."""
        if self.process is not None:
            for pid in _children(self.process.pid):  # the VM first: a clean stop
                kill_pid(pid, timeout_seconds=30)
        super().stop()
        for pid in _epmd_pids(self.epmd_port):
            kill_pid(pid)


@pytest.fixture(scope="session")
def rabbitmq_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitPeer]:
    peer = RabbitPeer(workdir=tmp_path_factory.mktemp("rabbitmq"))
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


REPO = Path(__file__).resolve().parents[1]
#: Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def _azurite_queue() -> str:
    local = REPO / ".ci" / "azurite" / "node_modules" / ".bin" / "azurite-queue"
    if local.is_file():
        return str(local)
    found = shutil.which("azurite-queue")
    if found:
        return found
    pytest.fail("azurite-queue not found: npm install --prefix .ci/azurite (.ci/run does)")


@dataclass(kw_only=True)
class AzuritePeer(Daemon):
    """Azurite's queue service (Node.js, from npm), in-memory, no telemetry."""

    name: str = "azurite-queue"

    def args(self) -> list[str]:
        return [
            _azurite_queue(),
            "--queueHost", self.host,
            "--queuePort", str(self.port),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--silent",
        ]  # fmt: skip

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};"
            f"QueueEndpoint=http://{self.host}:{self.port}/{AZURITE_ACCOUNT};"
        )


@pytest.fixture
def azurite_peer(tmp_path: Path) -> Iterator[AzuritePeer]:
    peer = AzuritePeer(workdir=tmp_path / "azurite")
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()
