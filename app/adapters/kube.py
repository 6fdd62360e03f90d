"""The Kubernetes adapter: the only module that imports ``kubernetes``.

Two implementations of :class:`sensors.triggers.base.KubeApi`:

* :class:`ApiKube` talks to the API server of the active kubeconfig / in-cluster config.
  The ``kubernetes`` package only loads that config (auth, TLS, proxies); requests go
  out from the event loop with aiohttp, so a sensor keeps as many creates in flight as
  the API server takes (a thread pool around the sync client spent its time in the GIL
  and in blocking SSL reads, and stalled at about a third of the server's rate).
  Resource names (plural, namespaced) come from API discovery, cached per group/version.
* :class:`FileKube` is what standalone mode uses when no cluster is configured: objects
  are written as YAML under ``<state>/objects/<namespace>/<kind>/<name>.yaml``, with the
  same create/409 semantics, so a pipeline can be tried without a cluster.

Errors are mapped at this boundary (STYLE §6): 409 AlreadyExists → :class:`AlreadyExists`,
404 → :class:`NotFound`, 409 Conflict / 429 / 5xx / connection errors →
:class:`~app.kernel.errors.TransientError` (carrying the response's ``Retry-After`` in
seconds, which the runner waits at least before its next attempt), any other 4xx →
:class:`~app.kernel.errors.PermanentError`. A 401 refreshes the credentials once and
retries once (a token file or exec plugin may have rotated them).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import random
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

import aiohttp
import orjson
import yaml

from app.kernel.errors import ConfigError, PermanentError, TransientError, TriggerfishError
from app.kernel.settings import KubeSettings

log = logging.getLogger(__name__)


class KubeError(TriggerfishError):
    """Base of the API errors callers branch on."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class AlreadyExists(KubeError):
    """409 AlreadyExists: an object of that name exists (idempotent creates expect it)."""


class NotFound(KubeError, PermanentError):
    """404 NotFound (not retried, as Argo: a missing namespace or kind stays missing)."""


class KubeTransientError(KubeError, TransientError):
    """A failure a retry may fix (conflict, throttling, server errors, network)."""


class KubePermanentError(KubeError, PermanentError):
    """A request the server refuses for good (invalid object, forbidden, ...)."""


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    """Where a kind lives in the API."""

    group_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str, name: str = "") -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        if self.namespaced:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _split_api_version(api_version: str) -> tuple[str, str]:
    if "/" in api_version:
        g, v = api_version.split("/", 1)
        return g, v
    return "", api_version


def _retry_after(headers: Any) -> float | None:
    """A ``Retry-After`` header given in seconds (the form the API server sends)."""
    value = None
    with contextlib.suppress(Exception):
        value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def _object_ref(obj: dict[str, Any]) -> tuple[str, str, str]:
    api_version = str(obj.get("apiVersion", ""))
    kind = str(obj.get("kind", ""))
    name = str((obj.get("metadata") or {}).get("name", ""))
    if not api_version or not kind:
        raise KubePermanentError("object needs apiVersion and kind", 422, "Invalid")
    return api_version, kind, name


class TokenFile:
    """A bearer token kept in a file that is rotated on disk (in-cluster service-account
    tokens, a kubeconfig user's ``tokenFile``): re-read whenever the file changes.

    A ``stat`` per request is cheaper than a timer and sees a rotation at once (kubelet
    swaps the projected token through a symlink, so the inode changes).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._header: str | None = None

    def header(self) -> str | None:
        try:
            st = self.path.stat()
        except OSError:
            return self._header  # mid-rotation: keep the last token
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature != self._signature:
            with contextlib.suppress(OSError):
                token = self.path.read_text().strip()
                if token:
                    self._header = f"Bearer {token}"
                    self._signature = signature
        return self._header


def _kubeconfig_token_file(config_files: list[str], user_name: str) -> Path | None:
    """The ``tokenFile`` of kubeconfig user ``user_name`` when the token comes from it
    (no inline token, exec plugin or auth provider, which the loader prefers)."""
    for f in config_files:
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
            doc = yaml.safe_load(Path(f).read_text()) or {}
            for u in doc.get("users") or []:
                if u.get("name") != user_name:
                    continue
                user = u.get("user") or {}
                if "tokenFile" not in user or {"token", "exec", "auth-provider"} & set(user):
                    return None
                path = Path(os.path.expanduser(str(user["tokenFile"])))
                return path if path.is_absolute() else Path(f).resolve().parent / path
    return None


def _ssl_context(configuration: Any) -> ssl.SSLContext | None:
    """TLS settings of the loaded configuration: CA, client certificate, verification."""
    if not str(configuration.host).startswith("https"):
        return None
    try:
        ctx = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
        if not configuration.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            ctx.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"Kubernetes TLS settings: {e}") from e
    return ctx


class ApiKube:
    """KubeApi over the Kubernetes REST API (kubeconfig or in-cluster config).

    Requests go out from the event loop through one aiohttp session: kept-alive
    connections, at most ``max_in_flight`` requests at once (a semaphore, and a
    connection pool of the same size). Auth and TLS come from the ``kubernetes``
    package's config loading (:meth:`from_settings`): the loaded ``Configuration``
    gives the host, CA, client certificate, ``insecure-skip-tls-verify``,
    ``tls-server-name``, the proxy and the ``Authorization`` header. Credentials that
    change are followed: a token file is re-read when it changes on disk, exec plugins
    and expiring tokens are refreshed through the configuration's refresh hook (in a
    thread, at most every ``credential_refresh_seconds``), and a 401 forces one
    refresh and one retry. Watches use a second session without the in-flight bound,
    so long-lived streams never hold a slot that creates wait for.
    """

    def __init__(
        self, configuration: Any, settings: KubeSettings, token_file: Path | None = None
    ) -> None:
        self._cfg = configuration
        self._settings = settings
        self._base = str(configuration.host).rstrip("/")
        self._ssl = _ssl_context(configuration)
        self._server_hostname: str | None = getattr(configuration, "tls_server_name", None)
        self._proxy = self._proxy_for(configuration)
        self._proxy_headers = getattr(configuration, "proxy_headers", None)
        self._token_file = TokenFile(token_file) if token_file is not None else None
        self._header: str | None = None
        self._header_at = float("-inf")
        self._auth_lock: asyncio.Lock | None = None
        self._limit = max(1, settings.max_in_flight)
        self._user_agent = "triggerfish"
        self._sem: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout_seconds)
        self._resources: dict[tuple[str, str], ResourceInfo] = {}
        self._plurals: dict[tuple[str, str], str] = {}
        self._discovery_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: KubeSettings) -> ApiKube | None:
        """Load the active config; ``None`` when there is no cluster configured at all."""
        from kubernetes import client, config  # imported here: optional at start-up
        from kubernetes.config.config_exception import ConfigException
        from kubernetes.config.incluster_config import SERVICE_TOKEN_FILENAME

        if settings.disabled:
            return None
        configuration = client.Configuration()
        kubeconfig = settings.kubeconfig or os.environ.get("KUBECONFIG", "")
        default_path = Path.home() / ".kube" / "config"
        token_file: Path | None = None
        try:
            if kubeconfig or default_path.exists():
                files = [f for f in (kubeconfig or str(default_path)).split(os.pathsep) if f]
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig or None,
                    context=settings.context or None,
                    client_configuration=configuration,
                )
                contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig or None
                )
                if settings.context:
                    active = next((c for c in contexts if c["name"] == settings.context), active)
                user = str((active.get("context") or {}).get("user") or "")
                token_file = _kubeconfig_token_file(files, user) if user else None
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
                token_file = Path(SERVICE_TOKEN_FILENAME)
            else:
                return None
        except (ConfigException, OSError) as e:
            raise ConfigError(f"cannot load Kubernetes configuration: {e}") from e
        return cls(configuration, settings, token_file)

    @staticmethod
    def _proxy_for(configuration: Any) -> str | None:
        proxy = getattr(configuration, "proxy", None)
        if not proxy:
            return None
        if not str(proxy).startswith(("http://", "https://")):
            raise ConfigError(f"Kubernetes proxy {proxy!r}: only http(s) proxies are supported")
        no_proxy = getattr(configuration, "no_proxy", None)
        host = urlsplit(str(configuration.host)).hostname or ""
        if no_proxy and proxy_bypass_environment(host, {"no": str(no_proxy)}):
            return None
        return str(proxy)

    @property
    def server(self) -> str:
        return self._base

    @property
    def max_in_flight(self) -> int:
        """Requests this client sends at once (callers size their own concurrency on it)."""
        return self._limit

    async def close(self) -> None:
        for s in (self._session, self._watch_session):
            if s is not None:
                with contextlib.suppress(Exception):
                    await s.close()
        self._session = self._watch_session = None

    def set_user_agent(self, value: str) -> None:
        """The ``User-Agent`` of every request from now on (a controller replica names
        itself, so the API's audit log and the tests can tell replicas apart)."""
        self._user_agent = value

    # -- transport ----------------------------------------------------------------------
    def _sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        """The sessions of the running loop (made on first use, inside the loop)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._watch_session is None or self._loop is not loop:
            self._loop = loop
            self._sem = asyncio.Semaphore(self._limit)
            self._auth_lock = asyncio.Lock()
            headers = {"Accept": "application/json"}
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._limit, ssl=self._ssl if self._ssl is not None else True
                ),
                headers=headers,
                skip_auto_headers=("Accept-Encoding",),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._watch_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, ssl=self._ssl if self._ssl is not None else True
                ),
                headers=headers,
            )
        return self._session, self._watch_session

    async def _auth(self, force: bool = False) -> str | None:
        """The ``Authorization`` header value, refreshed as the credential requires."""
        if self._token_file is not None:
            return self._token_file.header()
        now = time.monotonic()
        if not force and now - self._header_at < self._settings.credential_refresh_seconds:
            return self._header
        assert self._auth_lock is not None
        async with self._auth_lock:
            if force or now - self._header_at >= self._settings.credential_refresh_seconds:
                try:
                    # The hook may run an exec plugin or read a file: not on the loop.
                    header = await asyncio.to_thread(
                        self._cfg.get_api_key_with_prefix, "BearerToken"
                    )
                except Exception as e:  # plugin failures surface as many types
                    raise KubeTransientError(f"refreshing Kubernetes credentials: {e}") from e
                self._header = str(header) if header else None
                self._header_at = time.monotonic()
        return self._header

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        session, _ = self._sessions()
        assert self._sem is not None
        url = self._base + path + (f"?{urlencode(query)}" if query else "")
        data = orjson.dumps(body) if body is not None else None
        refreshed = False
        while True:
            headers: dict[str, str] = {"User-Agent": self._user_agent}
            if data is not None:
                headers["Content-Type"] = content_type
            async with self._sem:
                auth = await self._auth()
                if auth:
                    headers["Authorization"] = auth
                try:
                    async with session.request(
                        method,
                        url,
                        data=data,
                        headers=headers,
                        timeout=self._timeout,
                        proxy=self._proxy,
                        proxy_headers=self._proxy_headers,
                        server_hostname=self._server_hostname,
                    ) as resp:
                        raw = await resp.read()
                        status = resp.status
                        resp_headers = resp.headers
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    raise KubeTransientError(f"{method} {path}: {type(e).__name__}: {e}") from e
            if 200 <= status <= 299:
                return orjson.loads(raw) if raw else None
            if status == 401 and not refreshed:
                refreshed = True  # credentials may have rotated: refresh once, retry once
                if await self._auth(force=True) != auth:
                    continue
            raise self._error(status, raw, method, path, resp_headers)

    @staticmethod
    def _error(
        status: int, data: bytes | str, method: str, path: str, headers: Any = None
    ) -> KubeError:
        reason, message = "", ""
        with contextlib.suppress(Exception):
            st = orjson.loads(data)
            reason = str(st.get("reason", ""))
            message = str(st.get("message", ""))
        text = f"{method} {path}: {status} {reason}: {message}".rstrip(": ")
        if status == 409 and reason == "AlreadyExists":
            return AlreadyExists(text, status, reason)
        if status == 404:
            return NotFound(text, status, reason)
        if status in (409, 429) or status >= 500:
            err = KubeTransientError(text, status, reason)
            err.retry_after_seconds = _retry_after(headers)
            return err
        return KubePermanentError(text, status, reason)

    # -- discovery ----------------------------------------------------------------------
    async def _discover(self, api_version: str) -> None:
        group, version = _split_api_version(api_version)
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            doc = await self._request("GET", path)
        except NotFound as e:
            raise KubePermanentError(f"API group/version {api_version} is not served") from e
        for r in doc.get("resources", []):
            if "/" in r.get("name", ""):
                continue  # subresources
            info = ResourceInfo(api_version, r["kind"], r["name"], bool(r.get("namespaced")))
            self._resources[(api_version, r["kind"])] = info
            self._plurals[(api_version, r["name"])] = r["kind"]

    async def _resource(self, api_version: str, kind: str) -> ResourceInfo:
        info = self._resources.get((api_version, kind))
        if info is None:
            # One discovery request per group/version, however many callers wait on it.
            lock = self._discovery_locks.setdefault(api_version, asyncio.Lock())
            async with lock:
                info = self._resources.get((api_version, kind))
                if info is None:
                    await self._discover(api_version)
                    info = self._resources.get((api_version, kind))
        if info is None:
            raise KubePermanentError(f"kind {kind} is not served by {api_version}", 404)
        return info

    async def kind_of(self, api_version: str, plural: str) -> str:
        """The kind served as resource ``plural`` (``workflows``) under ``api_version``:
        Argo's resource source names the resource, the verbs here take the kind.
        :class:`KubePermanentError` (404) when the API does not serve it."""
        kind = self._plurals.get((api_version, plural))
        if kind is None:
            lock = self._discovery_locks.setdefault(api_version, asyncio.Lock())
            async with lock:
                kind = self._plurals.get((api_version, plural))
                if kind is None:
                    await self._discover(api_version)
                    kind = self._plurals.get((api_version, plural))
        if kind is None:
            raise KubePermanentError(f"resource {plural} is not served by {api_version}", 404)
        return kind

    # -- verbs --------------------------------------------------------------------------
    async def create(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        api_version, kind, _ = _object_ref(obj)
        info = await self._resource(api_version, kind)
        ns = (obj.get("metadata") or {}).get("namespace") or namespace
        return dict(await self._request("POST", info.path(ns), obj))

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str
    ) -> dict[str, Any] | None:
        info = await self._resource(api_version, kind)
        try:
            return dict(await self._request("GET", info.path(namespace, name)))
        except NotFound:
            return None

    async def update(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        api_version, kind, name = _object_ref(obj)
        info = await self._resource(api_version, kind)
        ns = (obj.get("metadata") or {}).get("namespace") or namespace
        if not (obj.get("metadata") or {}).get("resourceVersion"):
            live = await self._request("GET", info.path(ns, name))
            obj = copy.deepcopy(obj)
            obj.setdefault("metadata", {})["resourceVersion"] = live["metadata"]["resourceVersion"]
        return dict(await self._request("PUT", info.path(ns, name), obj))

    _PATCH_TYPES = {
        "merge": "application/merge-patch+json",
        "json": "application/json-patch+json",
        "strategic": "application/strategic-merge-patch+json",
        "apply": "application/apply-patch+yaml",
    }

    async def patch(self, obj: dict[str, Any], namespace: str, patch_type: str) -> dict[str, Any]:
        api_version, kind, name = _object_ref(obj)
        info = await self._resource(api_version, kind)
        ns = (obj.get("metadata") or {}).get("namespace") or namespace
        ctype = self._PATCH_TYPES.get(patch_type, patch_type)
        query = {"fieldManager": "triggerfish"} if patch_type == "apply" else None
        return dict(await self._request("PATCH", info.path(ns, name), obj, query, ctype))

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        if not name:  # the path would be the collection: every object of the kind
            raise KubePermanentError(f"delete {kind}: no name given", 0, "Invalid")
        info = await self._resource(api_version, kind)
        await self._request("DELETE", info.path(namespace, name))

    # -- list / watch / status (the controller and the pod roles) ----------------------
    async def _collection(self, api_version: str, kind: str, namespace: str) -> str:
        """The collection URL; an empty ``namespace`` means all namespaces."""
        info = await self._resource(api_version, kind)
        if namespace or not info.namespaced:
            return info.path(namespace)
        return ResourceInfo(info.group_version, kind, info.plural, False).path("")

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str = "",
        field_selector: str = "",
        label_selector: str = "",
        limit: int = 0,
    ) -> dict[str, Any]:
        """The list object (``items`` and ``metadata.resourceVersion``) of a kind; with
        ``limit``, its first page only."""
        query = {"fieldSelector": field_selector} if field_selector else {}
        if label_selector:
            query["labelSelector"] = label_selector
        if limit:
            query["limit"] = str(limit)
        path = await self._collection(api_version, kind, namespace)
        return dict(await self._request("GET", path, None, query or None))

    async def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        resource_version: str,
        *,
        timeout_seconds: int = 300,
        field_selector: str = "",
        label_selector: str = "",
        allow_watch_bookmarks: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (``{"type", "object"}``) after ``resource_version`` until the server
        ends the watch. An ``ERROR`` event (410 Expired) is yielded as is: the caller
        re-lists. A dropped connection raises :class:`KubeTransientError`. With
        ``allow_watch_bookmarks`` the server may send ``BOOKMARK`` events, whose object
        carries only a newer ``metadata.resourceVersion`` to resume from."""
        _, session = self._sessions()
        query = {"watch": "true", "resourceVersion": resource_version,
                 "timeoutSeconds": str(timeout_seconds)}  # fmt: skip
        if allow_watch_bookmarks:
            query["allowWatchBookmarks"] = "true"
        if field_selector:
            query["fieldSelector"] = field_selector
        if label_selector:
            query["labelSelector"] = label_selector
        path = f"{await self._collection(api_version, kind, namespace)}?{urlencode(query)}"
        headers: dict[str, str] = {"User-Agent": self._user_agent}
        auth = await self._auth()
        if auth:
            headers["Authorization"] = auth
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout_seconds + 10)
        try:
            async with session.get(
                self._base + path,
                headers=headers,
                timeout=timeout,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
                server_hostname=self._server_hostname,
            ) as resp:
                if resp.status != 200:
                    raise self._error(resp.status, await resp.read(), "GET", path)
                buf = b""
                # Lines split by hand: a watch event may be longer than aiohttp's line limit.
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield dict(orjson.loads(line))
                if buf.strip():
                    yield dict(orjson.loads(buf))
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise KubeTransientError(f"watch {kind}: {type(e).__name__}: {e}") from e

    async def patch_status(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        """Merge-patch ``obj["status"]`` through the status subresource."""
        api_version, kind, name = _object_ref(obj)
        info = await self._resource(api_version, kind)
        path = info.path(namespace, name) + "/status"
        body = {"status": obj.get("status") or {}}
        return dict(await self._request("PATCH", path, body, None, self._PATCH_TYPES["merge"]))

    async def ensure_namespace(self, name: str) -> bool:
        """Create namespace ``name`` unless it exists; True when it was created."""
        if await self.get("v1", "Namespace", name, "") is not None:
            return False
        try:
            await self.create(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, ""
            )
        except AlreadyExists:
            return False
        return True

    async def apply(self, obj: dict[str, Any], namespace: str) -> str:
        """Create, or replace when it exists (for manifests loaded at start-up)."""
        try:
            await self.create(obj, namespace)
            return "created"
        except AlreadyExists:
            await self.update(obj, namespace)
            return "updated"


class ConfigMapState:
    """A ConfigMap used as a small key → text store (one ``data`` entry per key), the
    way Argo's calendar source keeps its last fired time (``persistence.configMap``).

    :meth:`open` checks the ConfigMap exists, creating it when ``create_if_missing``
    (Argo's ``createIfNotExist``) and refusing with a :class:`ConfigError` otherwise.
    :meth:`put` is a read-modify-write carrying the ``resourceVersion`` read, retried
    (after a short random pause) on a conflict, so writers of other keys are never
    overwritten. API errors surface
    as the adapter's :class:`KubeError` subclasses (transient ones retriable).
    """

    CONFLICT_RETRIES = 10

    def __init__(self, kube: ApiKube, namespace: str, name: str, create_if_missing: bool) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.create_if_missing = create_if_missing

    async def open(self) -> ConfigMapState:
        if await self.kube.get("v1", "ConfigMap", self.name, self.namespace) is None:
            if not self.create_if_missing:
                raise ConfigError(
                    f"ConfigMap {self.namespace}/{self.name} does not exist "
                    "(set createIfNotExist to create it)"
                )
            await self._create({})
        return self

    async def _create(self, data: dict[str, str]) -> None:
        meta = {"name": self.name, "namespace": self.namespace}
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}
        with contextlib.suppress(AlreadyExists):
            await self.kube.create(body, self.namespace)

    async def get(self, key: str) -> bytes | None:
        cm = await self.kube.get("v1", "ConfigMap", self.name, self.namespace)
        value = ((cm or {}).get("data") or {}).get(key)
        return None if value is None else str(value).encode()

    async def put(self, key: str, value: bytes) -> None:
        text = value.decode()
        for attempt in range(self.CONFLICT_RETRIES):
            cm = await self.kube.get("v1", "ConfigMap", self.name, self.namespace)
            if cm is None:
                if not self.create_if_missing:
                    raise KubePermanentError(
                        f"ConfigMap {self.namespace}/{self.name} was deleted", 404, "NotFound"
                    )
                await self._create({key: text})
                continue
            cm = dict(cm)
            cm["data"] = {**(cm.get("data") or {}), key: text}
            try:
                await self.kube.update(cm, self.namespace)
                return
            except KubeTransientError as e:
                if e.status != 409 or attempt == self.CONFLICT_RETRIES - 1:
                    raise
                # another writer got in between: read again after a short random pause,
                # so two writers do not keep colliding in lockstep
                await asyncio.sleep(random.uniform(0, 0.02 * (attempt + 1)))


def current_namespace(settings: KubeSettings) -> str:
    """The namespace a pod role serves when none is given: ``POD_NAMESPACE``, the
    in-cluster service account's namespace file, the kubeconfig context's, ``default``."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    sa_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    with contextlib.suppress(OSError):
        return sa_file.read_text().strip() or "default"
    from kubernetes import config

    with contextlib.suppress(Exception):
        _all, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=settings.kubeconfig or os.environ.get("KUBECONFIG") or None
        )
        if settings.context:
            active = next(c for c in _all if c["name"] == settings.context)
        return str((active.get("context") or {}).get("namespace") or "default")
    return "default"


class FileKube:
    """Records objects as YAML under a directory; used when no cluster is configured.

    Not a cluster: nothing runs the objects. It keeps create's semantics (a given name
    exists once, 409 otherwise) so idempotent triggers behave the same as against an
    API server, and the API/UI can list what was created.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = asyncio.Lock()

    def _file(self, kind: str, name: str, namespace: str) -> Path:
        return self.root / (namespace or "_cluster") / kind / f"{name}.yaml"

    @staticmethod
    def _ns(obj: dict[str, Any], namespace: str) -> str:
        return str((obj.get("metadata") or {}).get("namespace") or namespace)

    def _write(self, path: Path, obj: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp.{os.getpid()}")
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False))
        os.replace(tmp, path)

    async def create(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        _api_version, kind, name = _object_ref(obj)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not name:
            prefix = meta.pop("generateName", "") or f"{kind.lower()}-"
            name = prefix + uuid.uuid4().hex[:5]
            meta["name"] = name
        ns = self._ns(obj, namespace)
        meta["namespace"] = ns
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        path = self._file(kind, name, ns)
        async with self._lock:
            if path.exists():
                raise AlreadyExists(f"{kind} {ns}/{name} already exists", 409, "AlreadyExists")
            await asyncio.to_thread(self._write, path, obj)
        return obj

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str
    ) -> dict[str, Any] | None:
        path = self._file(kind, name, namespace)
        if not path.exists():
            return None
        data = yaml.safe_load(path.read_text())
        return dict(data) if isinstance(data, dict) else None

    async def update(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        _, kind, name = _object_ref(obj)
        ns = self._ns(obj, namespace)
        path = self._file(kind, name, ns)
        if not path.exists():
            raise NotFound(f"{kind} {ns}/{name} not found", 404, "NotFound")
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["namespace"] = ns
        await asyncio.to_thread(self._write, path, obj)
        return obj

    async def patch(self, obj: dict[str, Any], namespace: str, patch_type: str) -> dict[str, Any]:
        api_version, kind, name = _object_ref(obj)
        ns = self._ns(obj, namespace)
        live = await self.get(api_version, kind, name, ns)
        if live is None:
            raise NotFound(f"{kind} {ns}/{name} not found", 404, "NotFound")
        if patch_type not in ("merge", "strategic", "apply"):
            raise KubePermanentError(f"patch type {patch_type!r} is not recorded offline")
        merged: dict[str, Any] = dict(merge_patch(live, obj))
        await asyncio.to_thread(self._write, self._file(kind, name, ns), merged)
        return merged

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        path = self._file(kind, name, namespace)
        if not path.exists():
            raise NotFound(f"{kind} {namespace}/{name} not found", 404, "NotFound")
        path.unlink()

    async def apply(self, obj: dict[str, Any], namespace: str) -> str:
        _, kind, name = _object_ref(obj)
        path = self._file(kind, name, self._ns(obj, namespace))
        existed = path.exists()
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["namespace"] = self._ns(obj, namespace)
        await asyncio.to_thread(self._write, path, obj)
        return "updated" if existed else "created"

    def list_objects(self) -> list[dict[str, Any]]:
        """Every recorded object (for the API and UI)."""
        out: list[dict[str, Any]] = []
        if not self.root.exists():
            return out
        for f in sorted(self.root.glob("*/*/*.yaml")):
            with contextlib.suppress(Exception):
                data = yaml.safe_load(f.read_text())
                if isinstance(data, dict):
                    out.append(data)
        return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``null`` deletes a key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result
