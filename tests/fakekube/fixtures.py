"""pytest fixtures for the fake Kubernetes API server (loaded from ``tests/conftest.py``).

- ``fake_kube_server`` (session): one server process for the whole run, on a free
  port, log in a session temp directory, stopped by PID at the end.
- ``kube_api`` (function): resets the server's state, then yields a
  :class:`~tests.fakekube.harness.KubeApi` with ``url``, ``kubeconfig``,
  ``api_client()``, ``dynamic_client()``, ``kubectl(*args, check=True)``,
  ``kubectl_json(*args)``, ``create_namespace(name)``, ``compact(keep=0)``,
  ``expire_watches()``, ``close_watches()``, ``bookmark_watches()``, ``requests(since)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakekube.harness import KubeApi
from tests.fakekube.process import FakeKubeServer


@pytest.fixture(scope="session")
def fake_kube_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubeServer]:
    server = FakeKubeServer(log_dir=tmp_path_factory.mktemp("fakekube"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kube_api(fake_kube_server: FakeKubeServer, tmp_path: Path) -> Iterator[KubeApi]:
    fake_kube_server.ensure_running()
    fake_kube_server.reset()
    api = KubeApi(fake_kube_server, tmp_path / "kube")
    try:
        yield api
    finally:
        api.close()
