"""The pod roles: ``triggerfish eventsource NAME`` and ``triggerfish sensor NAME``.

Who calls it: :mod:`app.compose.cli`, in the pods of the Deployments the controller creates
(or locally, the way a kubelet would start them). One process serves exactly one
EventSource (all its source types) or one Sensor, read from the Kubernetes API:

* the namespace is ``--namespace``, else ``POD_NAMESPACE``, the in-cluster namespace
  file or the kubeconfig context (:func:`app.adapters.kube.current_namespace`);
* the bus is ``--nats-url`` when given (local runs), else the EventBus's
  ``status.config.jetstream`` written by the controller (URL and token Secret), else its
  ``jetstreamExotic`` URL and access secret; Secrets are read through the API;
* the work itself is :class:`app.compose.runtime.Standalone` with that single object, so the
  start order (streams, consumers, then sources) and the ack rules are the ones
  ``triggerfish run`` has;
* the role watches its own object: a new spec (not merely new status) is validated and
  the runtime is restarted inside the process; an invalid new spec is logged and the
  running one kept. Several sensor replicas share the durable consumer names, so
  JetStream splits the events between them.

An EventSource with ``spec.replicas`` > 1 runs in as many pods; a source type that must
run once (calendar, MQTT with a fixed client id) runs only in the pod holding its
Lease (:class:`app.compose.runtime.Standalone`), the others are ready but idle and
``/readyz`` says so (``standby``).

``/healthz``, ``/readyz`` (also says which ``generation`` is served, and which sources
stand by for a Lease) and ``/metrics`` are served on ``--api-port``. The pod's status
and counters go onto the bus every ``ui.status_interval_seconds``
(:mod:`app.compose.status`) for the controller's event-flow page; a sensor pod also
answers replay requests for its dead letters there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from fastapi import Depends, FastAPI, Response
from fastapi.responses import PlainTextResponse

from app import __version__
from app.adapters.httpserver import QuietServer, guarded_protocol
from app.adapters.kube import ApiKube, KubeError, current_namespace
from app.adapters.metrics import Metrics
from app.adapters.secrets import ManifestSecrets
from app.compose.controller.builders import bus_url
from app.compose.manifests import ManifestInvalid, load_one
from app.compose.runtime import Manifests, Standalone
from app.compose.server import bearer_guard
from app.compose.status import pod_name, report_status, status_subject
from app.kernel.argo import API_VERSION
from app.kernel.errors import ConfigError, TriggerfishError
from app.kernel.eventbus import EventBus
from app.kernel.settings import Settings

log = logging.getLogger("triggerfish.podrole")

Role = Literal["eventsource", "sensor"]
KIND: dict[Role, str] = {"eventsource": "EventSource", "sensor": "Sensor"}


async def bus_connection(
    kube: ApiKube, namespace: str, bus_name: str
) -> tuple[str, str, EventBus | None]:
    """``(url, token, EventBus)`` of EventBus ``bus_name``, read through the API."""
    obj = await kube.get(API_VERSION, "EventBus", bus_name, namespace)
    if obj is None:
        raise ConfigError(f"eventbus {bus_name!r} not found in namespace {namespace}")
    eb = load_one(obj)
    assert isinstance(eb, EventBus)
    config = ((obj.get("status") or {}).get("config") or {}).get("jetstream") or {}
    url = str(config.get("url") or "")
    secret = config.get("accessSecret")
    exotic = (obj.get("spec") or {}).get("jetstreamExotic")
    if not url and exotic:
        url, secret = str(exotic.get("url") or ""), exotic.get("accessSecret")
    if not url:
        url = bus_url(bus_name, namespace)
    token = ""
    if secret:
        raw = await ManifestSecrets([], kube).get(namespace, secret["name"], secret["key"])
        token = _token(raw)
    return url, token, eb


def _token(raw: str) -> str:
    """A secret value is the token itself, or YAML with a ``token`` key (Argo's shape)."""
    with contextlib.suppress(yaml.YAMLError):
        data = yaml.safe_load(raw)
        if isinstance(data, dict) and "token" in data:
            return str(data["token"])
    return raw.strip()


class PodRole:
    """Serves one EventSource or Sensor and follows changes to its spec."""

    def __init__(
        self,
        role: Role,
        name: str,
        settings: Settings,
        kube: ApiKube,
        namespace: str,
        nats_url: str = "",
    ) -> None:
        self.role = role
        self.kind = KIND[role]
        self.name = name
        self.settings = settings
        self.kube = kube
        self.namespace = namespace
        self.nats_url = nats_url
        self.metrics = Metrics(namespace, version=__version__)
        self.metrics.recent.window_seconds = settings.ui.window_seconds
        self.pod = pod_name()
        self.rt: Standalone | None = None
        self.served: dict[str, Any] = {}
        """The object the running runtime was built from."""
        self._rt_stop = asyncio.Event()
        self._rt_task: asyncio.Task[None] | None = None
        self.died = asyncio.Event()
        """Set when the running runtime stopped on its own."""
        self._state_dir = Path(tempfile.mkdtemp(prefix=f"triggerfish-{role}-"))

    # -- runtime ----------------------------------------------------------------------
    async def _runtime(self, obj: dict[str, Any]) -> Standalone:
        model = load_one(obj)
        bus_name = str((obj.get("spec") or {}).get("eventBusName") or "default")
        settings = self.settings.model_copy(deep=True)
        settings.state_dir = self._state_dir
        buses: list[Any] = []
        if self.nats_url:
            settings.bus.nats_url = self.nats_url
            with contextlib.suppress(TriggerfishError):
                eb_obj = await self.kube.get(API_VERSION, "EventBus", bus_name, self.namespace)
                if eb_obj is not None:
                    buses.append(load_one(eb_obj))
        else:
            url, token, eb = await bus_connection(self.kube, self.namespace, bus_name)
            settings.bus.nats_url, settings.bus.token = url, token
            buses = [eb] if eb is not None else []
        m = Manifests(event_buses=buses)
        (m.event_sources if self.role == "eventsource" else m.sensors).append(model)
        rt = Standalone(m, settings)
        # the pod's counters outlive a runtime restarted for a new spec
        rt.metrics = self.metrics
        rt.replica_leases = True
        rt.traces.counts = self.metrics.recent
        return rt

    async def _start(self, obj: dict[str, Any]) -> None:
        """Build and start a runtime for ``obj``; returns once it is ready."""
        rt = await self._runtime(obj)
        self._rt_stop = asyncio.Event()
        task = asyncio.create_task(rt.run(self._rt_stop), name=f"{self.role}:{self.name}")
        ready = asyncio.create_task(rt.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()
            raise TriggerfishError(f"{self.kind} {self.name} stopped while starting")
        self.rt, self._rt_task, self.served = rt, task, obj
        task.add_done_callback(self._on_runtime_done)
        log.info("serving %s %s/%s generation %s", self.kind, self.namespace, self.name,
                 obj["metadata"].get("generation"))  # fmt: skip

    def _on_runtime_done(self, task: asyncio.Task[None]) -> None:
        """A runtime that ends without being asked to (a component died) ends the role."""
        if task is self._rt_task and not self._rt_stop.is_set():
            self.died.set()

    async def _stop_runtime(self) -> None:
        self._rt_stop.set()
        if self._rt_task is not None:
            with contextlib.suppress(BaseException):
                await self._rt_task
        self.rt, self._rt_task = None, None

    async def _changed(self, obj: dict[str, Any]) -> None:
        """Restart on a new spec; keep serving the old one when the new one is invalid."""
        if obj.get("spec") == self.served.get("spec"):
            self.served = obj
            return
        try:
            load_one(obj)
        except ManifestInvalid as e:
            log.error("new spec of %s %s is invalid, keeping the running one: %s",
                      self.kind, self.name, "; ".join(e.lines))  # fmt: skip
            return
        log.info("spec of %s %s changed: restarting it", self.kind, self.name)
        await self._stop_runtime()
        await self._start(obj)

    # -- own-object watch -------------------------------------------------------------
    async def _follow(self) -> None:
        selector = f"metadata.name={self.name}"
        rv = str(self.served["metadata"].get("resourceVersion") or "")
        while True:
            try:
                if not rv:
                    listed = await self.kube.list(API_VERSION, self.kind, self.namespace, selector)
                    rv = str(listed["metadata"]["resourceVersion"])
                    for item in listed.get("items") or []:
                        await self._changed(item)
                async for ev in self.kube.watch(
                    API_VERSION, self.kind, self.namespace, rv, field_selector=selector
                ):
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        rv = ""
                        break
                    rv = str(obj.get("metadata", {}).get("resourceVersion") or rv)
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        await self._changed(obj)
                    elif ev.get("type") == "DELETED":
                        log.warning("%s %s was deleted", self.kind, self.name)
            except KubeError as e:
                log.warning("watching %s %s: %s; retrying", self.kind, self.name, e)
                rv = ""
                await asyncio.sleep(1.0)

    # -- status on the bus (the controller's event-flow page reads it) -----------------
    def ready(self) -> bool:
        rt = self.rt
        return (
            rt is not None
            and rt.ready.is_set()
            and rt.bus is not None
            and rt.bus.connected
            and all(rt.source_ready(s) for s in rt.sources)
        )

    def report(self) -> dict[str, Any] | None:
        """This pod's status and counters (:mod:`app.compose.status`)."""
        rt = self.rt
        if rt is None or rt.bus is None:
            return None
        meta = self.served.get("metadata") or {}
        return {
            "pod": self.pod,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "generation": meta.get("generation"),
            "ready": self.ready(),
            "busConnected": rt.bus.connected,
            "sources": rt.source_states() if self.role == "eventsource" else [],
            "runnerErrors": rt.runner_errors(),
            "consumerErrors": rt.consumer_errors(),
            "counts": self.metrics.recent.snapshot(),
        }

    # -- process ----------------------------------------------------------------------
    def app(self) -> FastAPI:
        """Health, readiness and metrics of this pod."""
        api = FastAPI(title=f"Triggerfish {self.role}", version=__version__, docs_url=None)

        @api.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @api.get("/readyz")
        async def readyz(response: Response) -> dict[str, Any]:
            ok = self.ready()
            if not ok:
                response.status_code = 503
            meta = self.served.get("metadata") or {}
            body: dict[str, Any] = {"ready": ok, "generation": meta.get("generation"),
                                    "resourceVersion": meta.get("resourceVersion")}  # fmt: skip
            rt = self.rt
            if rt is not None:
                standby = {s.type_name: why for s in rt.sources if (why := rt.source_standby(s))}
                if standby:
                    body["standby"] = standby
            errors = rt.source_errors() if rt is not None else {}
            if errors:
                body["sourceErrors"] = errors
            return body

        token = self.settings.api_token.get_secret_value().encode()
        guard = [Depends(bearer_guard(token))] if token else []

        @api.get("/metrics", dependencies=guard, response_class=PlainTextResponse)
        async def metrics() -> Response:
            return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

        return api

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set or the runtime dies."""
        import uvicorn

        obj = await self.kube.get(API_VERSION, self.kind, self.name, self.namespace)
        if obj is None:
            raise ConfigError(f"{self.kind} {self.name!r} not found in {self.namespace}")
        tasks: list[asyncio.Task[Any]] = []
        try:
            if self.settings.api_port:
                cfg = uvicorn.Config(
                    self.app(), host=self.settings.api_host, port=self.settings.api_port,
                    log_level="warning", access_log=False, lifespan="off",
                    http=guarded_protocol(self.settings.http),
                    timeout_keep_alive=self.settings.http.keep_alive_timeout_seconds,
                )  # fmt: skip
                tasks.append(asyncio.create_task(QuietServer(cfg).serve(), name="pod-api"))
            await self._start(obj)
            tasks.append(asyncio.create_task(self._follow(), name="follow"))
            subject = status_subject(self.namespace, self.kind, self.name, self.pod)
            reporter = report_status(
                lambda: self.rt.bus if self.rt is not None else None,
                self.report,
                subject,
                self.settings.ui,
            )
            tasks.append(asyncio.create_task(reporter, name="status"))
            tasks.append(asyncio.create_task(stop.wait(), name="stop"))
            tasks.append(asyncio.create_task(self.died.wait(), name="runtime"))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.get_name() == "runtime" and self._rt_task is not None:
                    self._rt_task.result()  # re-raises what stopped it
                if t.get_name() != "stop":
                    t.result()
                    raise TriggerfishError(f"{self.kind} {self.name}: {t.get_name()} stopped")
        finally:
            for t in tasks:
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
            await self._stop_runtime()
            await self.kube.close()


async def run_role(
    role: Role, name: str, settings: Settings, namespace: str, nats_url: str, stop: asyncio.Event
) -> None:
    """The CLI's entry point for a pod role."""
    kube = ApiKube.from_settings(settings.kube)
    if kube is None:
        raise ConfigError(f"`triggerfish {role}` needs a Kubernetes API (kubeconfig or in-cluster)")
    ns = namespace or current_namespace(settings.kube)
    await PodRole(role, name, settings, kube, ns, nats_url).run(stop)
