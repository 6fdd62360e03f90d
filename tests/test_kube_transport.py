"""The Kubernetes adapter's async transport against the fake API served over TLS.

Each auth mode the ``kubernetes`` package's config loading yields is exercised through
a real kubeconfig against a fake API server that enforces it: a client certificate
(the server requires one signed by its CA), a bearer token, a token file rotated on disk
between requests, an exec credential plugin, ``insecure-skip-tls-verify``, a kubeconfig
``proxy-url`` (through a fake CONNECT proxy). Then the error mapping (connection errors
are transient; 429/5xx are transient and carry ``Retry-After`` for the runner), the
in-flight bound, connection reuse and the discovery cache, as the server saw them
(``/fake/gate/requests``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from app.adapters.kube import AlreadyExists, ApiKube, KubePermanentError, KubeTransientError
from app.kernel.settings import KubeSettings
from tests.fakekube.process import FakeKubeServer
from tests.support.net import free_port

NS = "default"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"


class Tls:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = root / "server.pem"
        self.server_key = root / "server.key"
        server.private_key_pem.write_to_path(str(self.server_key))
        for i, blob in enumerate(server.cert_chain_pems):
            blob.write_to_path(str(self.server_cert), append=i > 0)
        client = self.ca.issue_cert("triggerfish@example.test")
        self.client_cert = root / "client.pem"
        self.client_key = root / "client.key"
        client.private_key_pem.write_to_path(str(self.client_key))
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx

    def server_args(self, client_ca: bool = False) -> tuple[str, ...]:
        args = ("--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key))
        return args + (("--client-ca", str(self.ca_file)) if client_ca else ())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return Tls(tmp_path_factory.mktemp("tls"))


def _server(root: Path, tls: Tls, *extra: str, client_ca: bool = False) -> FakeKubeServer:
    server = FakeKubeServer(
        log_dir=root, extra_args=tls.server_args(client_ca) + extra, ssl_context=tls.context()
    )
    server.start()
    return server


@pytest.fixture(scope="module")
def cert_server(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[FakeKubeServer]:
    """HTTPS; the TLS handshake requires a client certificate signed by the CA."""
    server = _server(tmp_path_factory.mktemp("cert-server"), tls, client_ca=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "accepted"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def token_server(
    tmp_path_factory: pytest.TempPathFactory, tls: Tls, tokens: Path
) -> Iterator[FakeKubeServer]:
    """HTTPS; every API request needs a bearer token listed in ``tokens``."""
    server = _server(tmp_path_factory.mktemp("token-server"), tls, "--tokens-file", str(tokens))
    try:
        yield server
    finally:
        server.stop()


def kubeconfig(path: Path, server: str, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": NS}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


@pytest.fixture
async def clients() -> AsyncIterator[list[ApiKube]]:
    """Closes the clients a test made."""
    made: list[ApiKube] = []
    try:
        yield made
    finally:
        for c in made:
            await c.close()


def client(clients: list[ApiKube], config: Path, **settings: Any) -> ApiKube:
    api = ApiKube.from_settings(KubeSettings(kubeconfig=str(config), **settings))
    assert api is not None
    clients.append(api)
    return api


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


# ----------------------------------------------------------------------------- auth modes


async def test_client_certificate(
    cert_server: FakeKubeServer, tls: Tls, tmp_path: Path, clients: list[ApiKube]
) -> None:
    cert_server.reset()
    cfg = kubeconfig(
        tmp_path / "kc",
        cert_server.url,
        {"certificate-authority": str(tls.ca_file)},
        {"client-certificate": str(tls.client_cert), "client-key": str(tls.client_key)},
    )
    api = client(clients, cfg)
    created = await api.create(configmap("by-cert", a="1"), NS)
    assert created["metadata"]["name"] == "by-cert"
    got = await api.get("v1", "ConfigMap", "by-cert", NS)
    assert got is not None and got["data"] == {"a": "1"}


async def test_without_the_client_certificate_the_handshake_fails_transiently(
    cert_server: FakeKubeServer, tls: Tls, tmp_path: Path, clients: list[ApiKube]
) -> None:
    cfg = kubeconfig(
        tmp_path / "kc",
        cert_server.url,
        {"certificate-authority": str(tls.ca_file)},
        {"token": "t"},
    )
    with pytest.raises(KubeTransientError):
        await client(clients, cfg).get("v1", "ConfigMap", "x", NS)


async def test_bearer_token(
    token_server: FakeKubeServer, tls: Tls, tokens: Path, tmp_path: Path, clients: list[ApiKube]
) -> None:
    token_server.reset()
    tokens.write_text("good-token\n")
    ca = {"certificate-authority": str(tls.ca_file)}
    good = client(
        clients, kubeconfig(tmp_path / "good", token_server.url, ca, {"token": "good-token"})
    )
    await good.create(configmap("by-token"), NS)
    assert await good.get("v1", "ConfigMap", "by-token", NS) is not None
    bad = client(clients, kubeconfig(tmp_path / "bad", token_server.url, ca, {"token": "other"}))
    with pytest.raises(KubePermanentError) as e:
        await bad.get("v1", "ConfigMap", "by-token", NS)
    assert e.value.status == 401


async def test_token_file_rotated_on_disk_between_requests(
    token_server: FakeKubeServer, tls: Tls, tokens: Path, tmp_path: Path, clients: list[ApiKube]
) -> None:
    token_server.reset()
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    tokens.write_text("first\n")
    cfg = kubeconfig(
        tmp_path / "kc",
        token_server.url,
        {"certificate-authority": str(tls.ca_file)},
        {"tokenFile": "token"},
    )
    api = client(clients, cfg)
    await api.create(configmap("rotated"), NS)
    # Rotate: the server now accepts only the new token, the file holds it.
    tokens.write_text("second\n")
    new = tmp_path / "token.new"
    new.write_text("second\n")
    new.replace(token_file)
    assert await api.get("v1", "ConfigMap", "rotated", NS) is not None
    statuses = [r["status"] for r in token_server.seen()["requests"]]
    assert 401 not in statuses  # the new token went out on the first try


EXEC_PLUGIN = textwrap.dedent(
    """
    import datetime, json, pathlib, sys
    here = pathlib.Path(sys.argv[1])
    runs = here / "runs"
    runs.write_text(str(int(runs.read_text() or "0") + 1) if runs.exists() else "1")
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    print(json.dumps({
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": {
            "token": (here / "token").read_text().strip(),
            "expirationTimestamp": soon.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }))
    """
)


async def test_exec_credential_plugin_writing_a_token(
    token_server: FakeKubeServer, tls: Tls, tokens: Path, tmp_path: Path, clients: list[ApiKube]
) -> None:
    token_server.reset()
    plugin = tmp_path / "plugin.py"
    plugin.write_text(EXEC_PLUGIN)
    (tmp_path / "token").write_text("from-plugin-1")
    tokens.write_text("from-plugin-1\n")
    exec_cfg = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": sys.executable,
        "args": [str(plugin), str(tmp_path)],
        "interactiveMode": "Never",
    }
    cfg = kubeconfig(
        tmp_path / "kc",
        token_server.url,
        {"certificate-authority": str(tls.ca_file)},
        {"exec": exec_cfg},
    )
    # The token expires within the loader's skew, so every check re-runs the plugin.
    api = client(clients, cfg, credential_refresh_seconds=0)
    await api.create(configmap("by-plugin"), NS)
    (tmp_path / "token").write_text("from-plugin-2")
    tokens.write_text("from-plugin-2\n")
    assert await api.get("v1", "ConfigMap", "by-plugin", NS) is not None
    assert int((tmp_path / "runs").read_text()) >= 2


async def test_a_401_refreshes_the_credential_once_and_retries(
    token_server: FakeKubeServer, tls: Tls, tokens: Path, tmp_path: Path, clients: list[ApiKube]
) -> None:
    token_server.reset()
    plugin = tmp_path / "plugin.py"
    plugin.write_text(EXEC_PLUGIN)
    (tmp_path / "token").write_text("p1")
    tokens.write_text("p1\n")
    exec_cfg = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": sys.executable,
        "args": [str(plugin), str(tmp_path)],
    }
    cfg = kubeconfig(
        tmp_path / "kc",
        token_server.url,
        {"certificate-authority": str(tls.ca_file)},
        {"exec": exec_cfg},
    )
    api = client(clients, cfg, credential_refresh_seconds=3600)  # only a 401 refreshes
    await api.create(configmap("refresh"), NS)
    (tmp_path / "token").write_text("p2")
    tokens.write_text("p2\n")
    assert await api.get("v1", "ConfigMap", "refresh", NS) is not None
    statuses = [r["status"] for r in token_server.seen()["requests"]]
    assert statuses[-2:] == [401, 200]


async def test_insecure_skip_tls_verify(
    token_server: FakeKubeServer, tokens: Path, tmp_path: Path, clients: list[ApiKube]
) -> None:
    tokens.write_text("t\n")
    verified = client(clients, kubeconfig(tmp_path / "v", token_server.url, {}, {"token": "t"}))
    with pytest.raises(KubeTransientError, match=r"(?i)certificate"):
        await verified.get("v1", "ConfigMap", "x", NS)
    cfg = kubeconfig(
        tmp_path / "i", token_server.url, {"insecure-skip-tls-verify": True}, {"token": "t"}
    )
    assert await client(clients, cfg).get("v1", "ConfigMap", "absent", NS) is None


# ----------------------------------------------------------------------------- errors


async def test_connection_refused_is_transient(tmp_path: Path, clients: list[ApiKube]) -> None:
    cfg = kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{free_port()}", {}, {"token": "t"})
    api = client(clients, cfg, request_timeout_seconds=2)
    with pytest.raises(KubeTransientError):
        await api.create(configmap("nowhere"), NS)


async def test_server_gone_between_requests_is_transient(
    tmp_path: Path, tls: Tls, clients: list[ApiKube]
) -> None:
    server = _server(tmp_path / "srv", tls)
    try:
        cfg = kubeconfig(
            tmp_path / "kc", server.url, {"certificate-authority": str(tls.ca_file)}, {"token": "t"}
        )
        api = client(clients, cfg, request_timeout_seconds=2)
        await api.create(configmap("before"), NS)
    finally:
        server.stop()
    with pytest.raises(KubeTransientError):
        await api.get("v1", "ConfigMap", "before", NS)


async def test_429_and_503_are_transient_and_carry_retry_after(
    token_server: FakeKubeServer, tls: Tls, tokens: Path, tmp_path: Path, clients: list[ApiKube]
) -> None:
    token_server.reset()
    tokens.write_text("t\n")
    cfg = kubeconfig(
        tmp_path / "kc",
        token_server.url,
        {"certificate-authority": str(tls.ca_file)},
        {"token": "t"},
    )
    api = client(clients, cfg)
    token_server.inject_fault("POST", CONFIGMAPS, status=429, retryAfter=2)
    with pytest.raises(KubeTransientError) as e:
        await api.create(configmap("throttled"), NS)
    assert (e.value.status, e.value.retry_after_seconds) == (429, 2)
    token_server.inject_fault("POST", CONFIGMAPS, status=503)
    with pytest.raises(KubeTransientError) as e:
        await api.create(configmap("throttled"), NS)
    assert (e.value.status, e.value.retry_after_seconds) == (503, None)
    # The transport does not retry them itself: the runner does, waiting at least
    # Retry-After (tests/test_kube_faults.py), so each fault was one request.
    await api.create(configmap("throttled"), NS)
    posts = [r for r in token_server.seen()["requests"] if r["method"] == "POST"]
    assert [r["status"] for r in posts] == [429, 503, 201]


async def test_status_mapping(
    token_server: FakeKubeServer, tls: Tls, tokens: Path, tmp_path: Path, clients: list[ApiKube]
) -> None:
    token_server.reset()
    tokens.write_text("t\n")
    cfg = kubeconfig(
        tmp_path / "kc",
        token_server.url,
        {"certificate-authority": str(tls.ca_file)},
        {"token": "t"},
    )
    api = client(clients, cfg)
    await api.create(configmap("twice"), NS)
    with pytest.raises(AlreadyExists):
        await api.create(configmap("twice"), NS)
    token_server.inject_fault("GET", f"{CONFIGMAPS}/twice", status=500)
    with pytest.raises(KubeTransientError) as e:
        await api.get("v1", "ConfigMap", "twice", NS)
    assert e.value.status == 500
    token_server.inject_fault("GET", f"{CONFIGMAPS}/twice", status=403)
    with pytest.raises(KubePermanentError) as p:
        await api.get("v1", "ConfigMap", "twice", NS)
    assert p.value.status == 403


# ----------------------------------------------------------------------------- pooling


async def test_in_flight_bound_connection_reuse_and_cached_discovery(
    token_server: FakeKubeServer, tls: Tls, tokens: Path, tmp_path: Path, clients: list[ApiKube]
) -> None:
    token_server.reset()
    tokens.write_text("t\n")
    cfg = kubeconfig(
        tmp_path / "kc",
        token_server.url,
        {"certificate-authority": str(tls.ca_file)},
        {"token": "t"},
    )
    api = client(clients, cfg, max_in_flight=4)
    assert api.max_in_flight == 4
    await asyncio.gather(*(api.create(configmap(f"c{i}"), NS) for i in range(60)))
    seen = token_server.seen()
    posts = [r for r in seen["requests"] if r["method"] == "POST"]
    assert len(posts) == 60 and {r["status"] for r in posts} == {201}
    assert seen["maxInProgress"] <= 4
    assert len({r["client_port"] for r in seen["requests"]}) <= 4  # kept-alive connections
    discovery = [r for r in seen["requests"] if r["path"] == "/api/v1"]
    assert len(discovery) == 1


class FakeConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 (a fake: tunnels bytes, records targets)."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        self.tunnels.append(target)
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_proxy_url_from_the_kubeconfig_tunnels_https(
    token_server: FakeKubeServer, tls: Tls, tokens: Path, tmp_path: Path, clients: list[ApiKube]
) -> None:
    tokens.write_text("t\n")
    proxy = FakeConnectProxy()
    await proxy.start()
    try:
        cluster = {
            "certificate-authority": str(tls.ca_file),
            "proxy-url": f"http://127.0.0.1:{proxy.port}",
        }
        api = client(
            clients, kubeconfig(tmp_path / "kc", token_server.url, cluster, {"token": "t"})
        )
        assert await api.get("v1", "ConfigMap", "via-proxy", NS) is None
        await api.close()
    finally:
        await proxy.stop()
    port = token_server.url.rsplit(":", 1)[1]
    assert proxy.tunnels and all(t == f"127.0.0.1:{port}" for t in proxy.tunnels)
