"""The Kubernetes adapter: the only module that imports ``kubernetes``.

Two implementations of :class:`sensors.triggers.base.KubeApi`:

* :class:`ApiKube` talks to the API server of the active kubeconfig / in-cluster config
  through the ``kubernetes`` client's transport (auth, TLS, proxies, retries of
  ``Retry-After``), sends JSON and parses responses itself, and runs the blocking
  calls on a bounded thread pool so the event loop never waits on the network.
  Resource names (plural, namespaced) come from API discovery, cached per group/version.
* :class:`FileKube` is what standalone mode uses when no cluster is configured: objects
  are written as YAML under ``<state>/objects/<namespace>/<kind>/<name>.yaml``, with the
  same create/409 semantics, so a pipeline can be tried without a cluster.

Errors are mapped at this boundary (STYLE §6): 409 AlreadyExists → :class:`AlreadyExists`,
404 → :class:`NotFound`, 409 Conflict / 429 / 5xx / connection errors →
:class:`~app.kernel.errors.TransientError` (carrying the response's ``Retry-After`` in
seconds, which the runner waits at least before its next attempt), any other 4xx →
:class:`~app.kernel.errors.PermanentError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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


class ApiKube:
    """KubeApi over the Kubernetes REST API (kubeconfig or in-cluster config)."""

    def __init__(self, api_client: Any, settings: KubeSettings) -> None:
        self._api = api_client
        self._settings = settings
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, settings.workers), thread_name_prefix="kube"
        )
        self._resources: dict[tuple[str, str], ResourceInfo] = {}
        self._discovered: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: KubeSettings) -> ApiKube | None:
        """Load the active config; ``None`` when there is no cluster configured at all."""
        from kubernetes import client, config  # imported here: optional at start-up
        from kubernetes.config.config_exception import ConfigException

        if settings.disabled:
            return None
        configuration = client.Configuration()
        kubeconfig = settings.kubeconfig or os.environ.get("KUBECONFIG", "")
        default_path = Path.home() / ".kube" / "config"
        try:
            if kubeconfig or default_path.exists():
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig or None,
                    context=settings.context or None,
                    client_configuration=configuration,
                )
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            else:
                return None
        except (ConfigException, OSError) as e:
            raise ConfigError(f"cannot load Kubernetes configuration: {e}") from e
        # urllib3 pool as large as the thread pool, so threads don't queue for sockets.
        configuration.connection_pool_maxsize = max(
            configuration.connection_pool_maxsize or 0, settings.workers
        )
        return cls(client.ApiClient(configuration), settings)

    @property
    def server(self) -> str:
        return str(self._api.configuration.host)

    def set_user_agent(self, value: str) -> None:
        """The ``User-Agent`` of every request from now on."""
        self._api.user_agent = value

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self._api.close()

    # -- transport ----------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        if query:
            path = f"{path}?{urlencode(query)}"
        headers = {"Accept": "application/json"}
        payload: Any = None
        if body is not None:
            headers["Content-Type"] = content_type
            payload = body
        try:
            m, url, hdrs, _b, _p = self._api.param_serialize(
                method=method,
                resource_path=path,
                header_params=headers,
                auth_settings=["BearerToken"],
            )
            resp = self._api.call_api(
                m,
                url,
                header_params=hdrs,
                body=payload,
                _request_timeout=self._settings.request_timeout_seconds,
            )
            resp.read()
        except Exception as e:  # urllib3/socket errors surface as many types
            status = int(getattr(e, "status", 0) or 0)
            if status:
                body = getattr(e, "body", b"") or b""
                err = self._error(status, body, method, path, getattr(e, "headers", None))
                raise err from e
            raise KubeTransientError(f"{method} {path}: {e}") from e
        data = resp.data or b""
        if not 200 <= resp.status <= 299:
            raise self._error(resp.status, data, method, path, resp.headers)
        return orjson.loads(data) if data else None

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

    async def _call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    # -- discovery ----------------------------------------------------------------------
    def _discover(self, api_version: str) -> None:
        group, version = _split_api_version(api_version)
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            doc = self._request("GET", path)
        except NotFound as e:
            raise KubePermanentError(f"API group/version {api_version} is not served") from e
        with self._lock:
            for r in doc.get("resources", []):
                if "/" in r.get("name", ""):
                    continue  # subresources
                info = ResourceInfo(api_version, r["kind"], r["name"], bool(r.get("namespaced")))
                self._resources[(api_version, r["kind"])] = info
            self._discovered.add(api_version)

    def _resource(self, api_version: str, kind: str) -> ResourceInfo:
        info = self._resources.get((api_version, kind))
        if info is None:
            self._discover(api_version)
            info = self._resources.get((api_version, kind))
        if info is None:
            raise KubePermanentError(f"kind {kind} is not served by {api_version}", 404)
        return info

    # -- verbs --------------------------------------------------------------------------
    def _create(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        api_version, kind, _ = _object_ref(obj)
        info = self._resource(api_version, kind)
        ns = (obj.get("metadata") or {}).get("namespace") or namespace
        return dict(self._request("POST", info.path(ns), obj))

    async def create(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        return dict(await self._call(self._create, obj, namespace))

    def _get(self, api_version: str, kind: str, name: str, namespace: str) -> Any:
        info = self._resource(api_version, kind)
        try:
            return self._request("GET", info.path(namespace, name))
        except NotFound:
            return None

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str
    ) -> dict[str, Any] | None:
        res = await self._call(self._get, api_version, kind, name, namespace)
        return dict(res) if res is not None else None

    def _update(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        api_version, kind, name = _object_ref(obj)
        info = self._resource(api_version, kind)
        ns = (obj.get("metadata") or {}).get("namespace") or namespace
        if not (obj.get("metadata") or {}).get("resourceVersion"):
            live = self._request("GET", info.path(ns, name))
            obj = copy.deepcopy(obj)
            obj.setdefault("metadata", {})["resourceVersion"] = live["metadata"]["resourceVersion"]
        return dict(self._request("PUT", info.path(ns, name), obj))

    async def update(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        return dict(await self._call(self._update, obj, namespace))

    _PATCH_TYPES = {
        "merge": "application/merge-patch+json",
        "json": "application/json-patch+json",
        "strategic": "application/strategic-merge-patch+json",
        "apply": "application/apply-patch+yaml",
    }

    def _patch(self, obj: dict[str, Any], namespace: str, patch_type: str) -> dict[str, Any]:
        api_version, kind, name = _object_ref(obj)
        info = self._resource(api_version, kind)
        ns = (obj.get("metadata") or {}).get("namespace") or namespace
        ctype = self._PATCH_TYPES.get(patch_type, patch_type)
        query = {"fieldManager": "triggerfish"} if patch_type == "apply" else None
        return dict(self._request("PATCH", info.path(ns, name), obj, query, ctype))

    async def patch(self, obj: dict[str, Any], namespace: str, patch_type: str) -> dict[str, Any]:
        return dict(await self._call(self._patch, obj, namespace, patch_type))

    def _delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        info = self._resource(api_version, kind)
        self._request("DELETE", info.path(namespace, name))

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        await self._call(self._delete, api_version, kind, name, namespace)

    # -- list / watch / status (the controller and the pod roles) ----------------------
    def _collection(self, api_version: str, kind: str, namespace: str) -> str:
        """The collection URL; an empty ``namespace`` means all namespaces."""
        info = self._resource(api_version, kind)
        if namespace or not info.namespaced:
            return info.path(namespace)
        return ResourceInfo(info.group_version, kind, info.plural, False).path("")

    def _list(
        self, api_version: str, kind: str, namespace: str, field_selector: str
    ) -> dict[str, Any]:
        query = {"fieldSelector": field_selector} if field_selector else None
        return dict(
            self._request("GET", self._collection(api_version, kind, namespace), None, query)
        )

    async def list(
        self, api_version: str, kind: str, namespace: str = "", field_selector: str = ""
    ) -> dict[str, Any]:
        """The list object (``items`` and ``metadata.resourceVersion``) of a kind."""
        return dict(await self._call(self._list, api_version, kind, namespace, field_selector))

    def _watch_stream(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        resource_version: str,
        timeout_seconds: int,
        field_selector: str,
    ) -> Any:
        query = {"watch": "true", "resourceVersion": resource_version,
                 "timeoutSeconds": str(timeout_seconds)}  # fmt: skip
        if field_selector:
            query["fieldSelector"] = field_selector
        path = f"{self._collection(api_version, kind, namespace)}?{urlencode(query)}"
        try:
            m, url, hdrs, _b, _p = self._api.param_serialize(
                method="GET", resource_path=path,
                header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
            )  # fmt: skip
            resp = self._api.call_api(m, url, header_params=hdrs,
                                      _request_timeout=(10, timeout_seconds + 10))  # fmt: skip
        except Exception as e:
            raise KubeTransientError(f"watch {path}: {e}") from e
        if resp.status != 200:
            raise self._error(resp.status, resp.read() or b"", "GET", path)
        return resp.response

    async def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        resource_version: str,
        *,
        timeout_seconds: int = 300,
        field_selector: str = "",
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (``{"type", "object"}``) after ``resource_version`` until the server
        ends the watch. An ``ERROR`` event (410 Expired) is yielded as is: the caller
        re-lists. A dropped connection raises :class:`KubeTransientError`."""
        raw = await self._call(self._watch_stream, api_version, kind, namespace,
                               resource_version, timeout_seconds, field_selector)  # fmt: skip
        lines = iter(raw)
        try:
            while True:
                try:
                    line = await self._call(next, lines, None)
                except Exception as e:
                    raise KubeTransientError(f"watch {kind}: {e}") from e
                if line is None:
                    return
                if line.strip():
                    yield dict(orjson.loads(line))
        finally:
            # Unblocks a read still waiting in a pool thread (cancellation, shutdown),
            # so the thread ends and the process can exit.
            with contextlib.suppress(Exception):
                raw.shutdown()
            with contextlib.suppress(Exception):
                raw.release_conn()

    def _patch_status(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        api_version, kind, name = _object_ref(obj)
        info = self._resource(api_version, kind)
        path = info.path(namespace, name) + "/status"
        body = {"status": obj.get("status") or {}}
        return dict(self._request("PATCH", path, body, None, self._PATCH_TYPES["merge"]))

    async def patch_status(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        """Merge-patch ``obj["status"]`` through the status subresource."""
        return dict(await self._call(self._patch_status, obj, namespace))

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
