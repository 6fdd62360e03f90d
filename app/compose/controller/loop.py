"""The controller's transport: list + watch per kind, a de-duplicating work queue.

Each of EventBus, EventSource and Sensor has an informer task: list (remembering the
list's resourceVersion), then watch from there; when the server ends a watch it is
resumed from the last resourceVersion seen; a ``410 Expired`` (history compacted) or a
dropped connection starts over with a fresh list, and objects that vanished meanwhile
are forgotten. A crashed controller therefore needs no state: it lists and converges.

Keys ``(kind, namespace, name)`` go into one queue, each key at most once while it
waits; one worker reconciles the newest cached copy. An EventBus change also queues
the EventSources and Sensors of its namespace, since their ``Deployed`` waits on it.
Deleted CRs need no work: their children carry owner references and are collected.

:func:`run_controller` puts all of it behind leader election (``app.adapters.lease``):
of several replicas only the Lease holder lists, watches and writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from typing import TYPE_CHECKING, Any

from app.adapters.kube import ApiKube, KubeError
from app.adapters.lease import LeaderLease, LeaseTiming
from app.compose.controller.config import ControllerSettings
from app.compose.controller.reconcilers import API_VERSION, Reconciler
from app.kernel.errors import TransientError

if TYPE_CHECKING:
    from app.compose.server import FlowView

log = logging.getLogger("triggerfish.controller")

KINDS = ("EventBus", "EventSource", "Sensor")
Key = tuple[str, str, str]


class Controller:
    """Watches the three kinds and reconciles them until cancelled."""

    def __init__(self, kube: ApiKube, cfg: ControllerSettings) -> None:
        self.kube = kube
        self.cfg = cfg
        self.reconciler = Reconciler(kube, cfg)
        self.cache: dict[Key, dict[str, Any]] = {}
        self.relists = 0
        """How many times an informer started over with a fresh list (410, errors)."""
        self.synced = asyncio.Event()
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._synced_kinds: set[str] = set()

    def enqueue(self, key: Key) -> None:
        """Ask for ``key`` to be reconciled (once, however often it is asked)."""
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def run(self) -> None:
        """Run the informers and the worker; returns only when cancelled or one fails."""
        tasks = [asyncio.create_task(self._informer(k), name=f"informer:{k}") for k in KINDS]
        tasks.append(asyncio.create_task(self._worker(), name="reconcile-worker"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)

    # -- informers --------------------------------------------------------------------
    async def _list(self, kind: str) -> str:
        listed = await self.kube.list(API_VERSION, kind, self.cfg.namespace)
        seen: set[Key] = set()
        for obj in listed.get("items") or []:
            obj.setdefault("apiVersion", API_VERSION)
            obj.setdefault("kind", kind)
            key = self._store(kind, obj)
            seen.add(key)
            self.enqueue(key)
        for key in [k for k in self.cache if k[0] == kind and k not in seen]:
            del self.cache[key]
        self._synced_kinds.add(kind)
        if self._synced_kinds.issuperset(KINDS):
            self.synced.set()
        return str(listed.get("metadata", {}).get("resourceVersion") or "")

    def _store(self, kind: str, obj: dict[str, Any]) -> Key:
        meta = obj["metadata"]
        key = (kind, str(meta.get("namespace") or ""), str(meta["name"]))
        self.cache[key] = obj
        return key

    async def _informer(self, kind: str) -> None:
        rv = ""
        backoff = 0.2
        while True:
            try:
                if not rv:
                    rv = await self._list(kind)
                async for event in self.kube.watch(
                    API_VERSION, kind, self.cfg.namespace, rv,
                    timeout_seconds=self.cfg.watch_timeout_seconds,
                ):  # fmt: skip
                    etype, obj = event.get("type"), event.get("object") or {}
                    if etype == "ERROR":
                        log.info("watch %s: %s; listing again", kind, obj.get("message", obj))
                        rv = ""
                        self.relists += 1
                        break
                    rv = str(obj.get("metadata", {}).get("resourceVersion") or rv)
                    if etype == "BOOKMARK":
                        continue
                    if etype == "DELETED":
                        meta = obj["metadata"]
                        self.cache.pop((kind, meta.get("namespace", ""), meta["name"]), None)
                        continue
                    self.enqueue(self._store(kind, obj))
                backoff = 0.2
            except (KubeError, TransientError) as e:
                log.warning("watch %s failed: %s; listing again in %.1fs", kind, e, backoff)
                rv = ""
                self.relists += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    # -- worker -----------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            obj = self.cache.get(key)
            if obj is None:
                continue
            try:
                await self._reconcile(key[0], obj)
            except (KubeError, TransientError) as e:
                log.warning("reconcile %s %s/%s failed: %s; retrying", *key, e)
                asyncio.get_running_loop().call_later(
                    self.cfg.retry_delay_seconds, self.enqueue, key
                )
            except Exception:  # a bug must not stop the other objects
                log.exception("reconcile %s %s/%s crashed", *key)

    async def _reconcile(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "EventBus":
            await self.reconciler.eventbus(obj)
            ns = obj["metadata"].get("namespace", "")
            for key in [k for k in self.cache if k[0] != "EventBus" and k[1] == ns]:
                self.enqueue(key)
        elif kind == "EventSource":
            await self.reconciler.eventsource(obj)
        else:
            await self.reconciler.sensor(obj)


def lease_identity(cfg: ControllerSettings) -> str:
    """This replica's name in the Lease: the setting, else ``<hostname>_<random>`` (the
    hostname is the pod name in a cluster; the suffix tells a restarted pod apart)."""
    return cfg.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


async def run_controller(
    kube: ApiKube,
    cfg: ControllerSettings,
    stop: asyncio.Event,
    api_host: str = "127.0.0.1",
    api_port: int = 0,
    identity: str = "",
    flow: FlowView | None = None,
    api_token: bytes = b"",
) -> None:
    """Run a :class:`Controller` until ``stop`` is set (the CLI's entry point), with
    ``/healthz`` and ``/readyz`` on ``api_host:api_port`` when a port is given.

    With ``cfg.leader_election`` (the default) the replica first waits for the Lease
    ``cfg.lease_namespace/cfg.lease_name``: a standby watches nothing and writes
    nothing; the leader runs a fresh :class:`Controller` (list, then watch: it needs no
    state from the previous leader) and cancels it when the Lease is lost, before
    anyone else may take it over. A standby is ready (it is doing its job).

    With ``flow``, the same port serves the event-flow page and its API (bearer
    ``api_token`` when set), on every replica."""
    current: list[Controller] = []

    async def reconcile() -> None:
        ctl = Controller(kube, cfg)
        current.append(ctl)
        try:
            await ctl.run()
        finally:
            current.remove(ctl)

    lease: LeaderLease | None = None
    if cfg.leader_election:
        timing = LeaseTiming(
            cfg.lease_duration_seconds, cfg.renew_deadline_seconds, cfg.retry_period_seconds
        )
        ns = cfg.lease_namespace or cfg.namespace or "default"
        lease = LeaderLease(kube, cfg.lease_name, ns, identity or lease_identity(cfg), timing)
        log.info("controller %s: leader election on Lease %s/%s", lease.identity, ns, lease.name)
        task = asyncio.create_task(lease.lead(reconcile))
    else:
        task = asyncio.create_task(reconcile())
    stopper = asyncio.create_task(stop.wait())
    tasks = [task, stopper]
    if api_port:
        import uvicorn

        from app.adapters.httpserver import QuietServer, guarded_protocol
        from app.compose.controller.health import build_health_app
        from app.kernel.settings import HttpServerSettings

        def ready() -> bool:
            if task.done():
                return False
            return all(c.synced.is_set() for c in current) and (lease is not None or bool(current))

        app = build_health_app(ready, flow, api_token)
        server = QuietServer(
            uvicorn.Config(app, host=api_host, port=api_port, log_level="warning",
                           access_log=False, lifespan="off",
                           http=guarded_protocol(HttpServerSettings()))
        )  # fmt: skip
        tasks.append(asyncio.create_task(server.serve()))
    try:
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
    finally:
        for t in tasks:
            t.cancel()
            with contextlib.suppress(BaseException):
                await t
