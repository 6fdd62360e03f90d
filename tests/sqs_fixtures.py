"""pytest plugin: a real moto server (SQS, STS over HTTP) for the SQS tests (DESIGN §6).

``moto_server`` starts ``python -m moto.server -H 127.0.0.1 -p PORT`` once per session on
a free port, ready when ``GET /moto-api/`` answers, and kills it by PID at the end.
``sqs_endpoint`` resets moto's state (``POST /moto-api/reset``) and gives each test
dummy AWS credentials through the environment, so the real AWS client talks to moto
and never to AWS. ``sqs`` is an aiobotocore SQS client for the test's own calls.

:class:`MotoServer` is also used by ``bench/sqs.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.adapters.natsserver import kill_pid
from tests.support.net import free_port, wait_for

MOTO_REGION = "us-east-1"

#: What the AWS SDKs read from the environment: dummy keys for moto, and nothing that
#: could send a test to a real account (profiles, web identity, instance metadata).
AWS_TEST_ENV: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": MOTO_REGION,
    "AWS_REGION": MOTO_REGION,
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
AWS_UNSET_ENV = (
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec hook: SIGTERM moto when the test process dies (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


@dataclass
class MotoServer:
    """A ``moto.server`` child process on 127.0.0.1, started on a free port."""

    log_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    start_timeout_seconds: float = 30.0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start moto and wait until its management API answers; retry a taken port."""
        last: Exception | None = None
        for _ in range(3):
            self.port = free_port(self.host)
            with open(self.log_path, "ab") as logf:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            try:
                wait_for(self._answers, timeout=self.start_timeout_seconds, interval=0.05)
                return
            except TimeoutError as e:
                last = e
                self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"moto server did not start: {last}; log tail:\n{tail}")

    def _answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise TimeoutError("moto server exited")  # port taken: give up this attempt
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1) as resp:
            return bool(resp.status == 200)

    def reset(self) -> None:
        """Forget every queue and message (between tests)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()

    def stop(self) -> None:
        """Kill the server by PID (SIGTERM, then SIGKILL)."""
        if self.process is not None:
            kill_pid(self.process.pid)
            with contextlib.suppress(Exception):
                self.process.wait(timeout=1)
            self.process = None


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Dummy AWS credentials and region in the environment, for the standard chain."""
    for name in AWS_UNSET_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(AWS_TEST_ENV)


@pytest.fixture
def sqs_endpoint(moto_server: MotoServer, aws_env: dict[str, str]) -> str:
    """The URL of a freshly reset moto server."""
    moto_server.reset()
    return moto_server.endpoint


@pytest.fixture
async def sqs(sqs_endpoint: str) -> AsyncIterator[Any]:
    """An aiobotocore SQS client on moto, for creating queues and sending messages."""
    from aiobotocore.session import AioSession

    session = AioSession()
    async with session.create_client(
        "sqs", region_name=MOTO_REGION, endpoint_url=sqs_endpoint
    ) as client:
        yield client
