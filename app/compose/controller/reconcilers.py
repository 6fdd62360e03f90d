"""One reconcile per kind: validate the CR, check its EventBus, apply the children,
write the status conditions.

Idempotent by construction: a child is created when missing, updated only when its
``resource-spec-hash`` differs from the desired one, and the status is patched only
when it changed. A spec the user got wrong is a configuration error (STYLE §6): it is
reported in a ``False`` condition with the problems as the message, never retried; an
API failure is a transient error the loop retries.

Argo's conditions: EventBus ``Configured``, ``Deployed``; EventSource
``SourcesProvided``, ``Deployed``; Sensor ``DependenciesProvided``,
``TriggersProvided``, ``Deployed``; each also gets ``Ready`` (all of them true).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from app.adapters.kube import AlreadyExists, ApiKube, NotFound
from app.compose.controller import builders as b
from app.compose.controller.conditions import Condition, false, is_true, merge_conditions, true
from app.compose.controller.config import ControllerSettings
from app.compose.manifests import ManifestInvalid, load_one
from app.kernel.eventbus import EventBus

log = logging.getLogger("triggerfish.controller")

Obj = dict[str, Any]
API_VERSION = "argoproj.io/v1alpha1"


def _ns_name(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return str(meta.get("namespace") or ""), str(meta["name"])


class Reconciler:
    """Reconciles single objects through the Kubernetes API."""

    def __init__(self, kube: ApiKube, cfg: ControllerSettings) -> None:
        self.kube = kube
        self.cfg = cfg

    # -- shared -----------------------------------------------------------------------
    async def apply_child(self, desired: Obj, *, create_only: bool = False) -> str:
        """Create ``desired``, or update it when its spec hash changed; returns what
        was done (``created``, ``updated``, ``unchanged``)."""
        api_version, kind = desired["apiVersion"], desired["kind"]
        ns, name = _ns_name(desired)
        live = await self.kube.get(api_version, kind, name, ns)
        if live is None:
            try:
                await self.kube.create(desired, ns)
            except AlreadyExists:
                return "unchanged"  # raced with another write; the next event compares
            log.info("created %s %s/%s", kind, ns, name)
            return "created"
        want = (desired["metadata"].get("annotations") or {}).get(b.SPEC_HASH)
        have = (live["metadata"].get("annotations") or {}).get(b.SPEC_HASH)
        if create_only or want == have:
            return "unchanged"
        update = copy.deepcopy(desired)
        update["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        if kind == "Service":  # the API server owns the allocated cluster IPs
            for key in ("clusterIP", "clusterIPs"):
                if key in live.get("spec", {}) and key not in update["spec"]:
                    update["spec"][key] = live["spec"][key]
        await self.kube.update(update, ns)
        log.info("updated %s %s/%s", kind, ns, name)
        return "updated"

    async def delete_child(self, cr: Obj, api_version: str, kind: str, name: str) -> None:
        """Delete a child that is no longer wanted, if this CR owns it."""
        ns = cr["metadata"]["namespace"]
        live = await self.kube.get(api_version, kind, name, ns)
        owners = (live or {}).get("metadata", {}).get("ownerReferences") or []
        if any(o.get("uid") == cr["metadata"]["uid"] for o in owners):
            try:
                await self.kube.delete(api_version, kind, name, ns)
            except NotFound:
                return
            log.info("deleted %s %s/%s", kind, ns, name)

    async def write_status(
        self, cr: Obj, conditions: list[Condition], extra: Obj | None = None
    ) -> bool:
        """Patch the CR's status through the status subresource when it changed."""
        old: Obj = dict(cr.get("status") or {})
        new: Obj = {**old, **(extra or {})}
        new["conditions"] = merge_conditions(old.get("conditions"), conditions)
        if new == old:
            return False
        ns, name = _ns_name(cr)
        body = {"apiVersion": cr["apiVersion"], "kind": cr["kind"],
                "metadata": {"name": name, "namespace": ns}, "status": new}  # fmt: skip
        await self.kube.patch_status(body, ns)
        return True

    async def _bus_problem(self, namespace: str, bus: str) -> Condition | None:
        """Why a source or sensor cannot be deployed on EventBus ``bus``, if it can't."""
        eb = await self.kube.get(API_VERSION, "EventBus", bus, namespace)
        if eb is None:
            return false(
                "Deployed", "EventBusNotFound", f"eventbus {bus!r} not found in {namespace}"
            )
        if not is_true(eb, "Deployed"):
            return false("Deployed", "EventBusNotDeployed", f"eventbus {bus!r} is not deployed yet")
        return None

    # -- kinds ------------------------------------------------------------------------
    async def eventbus(self, cr: Obj) -> None:
        """JetStream servers for ``nats.native``/``jetstream``; nothing for exotic."""
        try:
            model = load_one(cr)
        except ManifestInvalid as e:
            msg = "; ".join(e.lines)
            await self.write_status(
                cr,
                [false("Configured", "InvalidSpec", msg),
                 false("Deployed", "NotConfigured", "the spec is invalid")],
            )  # fmt: skip
            return
        assert isinstance(model, EventBus)
        ns, name = _ns_name(cr)
        exotic = model.spec.jetstream_exotic
        if exotic is not None:
            config: Obj = {"url": exotic.url}
            secret = (cr["spec"]["jetstreamExotic"] or {}).get("accessSecret")
            if secret:
                config["accessSecret"] = secret
            await self.write_status(
                cr,
                [true("Configured"),
                 true("Deployed", "Skipped", "Skip deployment because of using exotic config.")],
                {"config": {"jetstream": config}},
            )  # fmt: skip
            return
        token_auth = model.auth() == "token" or model.spec.jetstream is not None
        if token_auth:
            await self.apply_child(b.bus_auth_secret(cr), create_only=True)
        for svc in b.bus_services(cr):
            await self.apply_child(svc)
        await self.apply_child(b.bus_statefulset(cr, model.replicas(), token_auth, self.cfg))
        config = {"url": b.bus_url(name, ns)}
        if token_auth:
            config["accessSecret"] = {"name": b.js_auth_secret_name(name), "key": b.TOKEN_KEY}
        await self.write_status(
            cr,
            [true("Configured"), true("Deployed", "Succeeded", "JetStream is deployed")],
            {"config": {"jetstream": config}},
        )

    async def eventsource(self, cr: Obj) -> None:
        """A Deployment (and Service) once the spec is valid and the bus deployed."""
        try:
            load_one(cr)
        except ManifestInvalid as e:
            await self.write_status(
                cr,
                [false("SourcesProvided", "InvalidEventSource", "; ".join(e.lines)),
                 false("Deployed", "InvalidSpec", "the spec is invalid: not deployed")],
            )  # fmt: skip
            return
        ns, _name = _ns_name(cr)
        bus = str((cr.get("spec") or {}).get("eventBusName") or "default")
        problem = await self._bus_problem(ns, bus)
        if problem is not None:
            await self.write_status(cr, [true("SourcesProvided"), problem])
            return
        for obj in b.pod_role_rbac(cr, "eventsource", "eventsources"):
            await self.apply_child(obj)
        await self.apply_child(b.eventsource_deployment(cr, self.cfg))
        svc = b.eventsource_service(cr)
        if svc is not None:
            await self.apply_child(svc)
        else:
            await self.delete_child(cr, "v1", "Service", f"{_name}-eventsource-svc")
        await self.write_status(cr, [true("SourcesProvided"), true("Deployed")])

    async def sensor(self, cr: Obj) -> None:
        """A Deployment once the spec is valid and the bus deployed."""
        try:
            load_one(cr)
        except ManifestInvalid as e:
            trig = [x for x in e.lines if x.startswith("spec.triggers")]
            deps = [x for x in e.lines if not x.startswith("spec.triggers")]
            conds = [
                false("DependenciesProvided", "InvalidDependencies", "; ".join(deps))
                if deps
                else true("DependenciesProvided"),
                false("TriggersProvided", "InvalidTriggers", "; ".join(trig))
                if trig
                else true("TriggersProvided"),
                false("Deployed", "InvalidSpec", "the spec is invalid: not deployed"),
            ]
            await self.write_status(cr, conds)
            return
        ns, _name = _ns_name(cr)
        bus = str((cr.get("spec") or {}).get("eventBusName") or "default")
        provided = [true("DependenciesProvided"), true("TriggersProvided")]
        problem = await self._bus_problem(ns, bus)
        if problem is not None:
            await self.write_status(cr, [*provided, problem])
            return
        for obj in b.pod_role_rbac(cr, "sensor", "sensors"):
            await self.apply_child(obj)
        await self.apply_child(b.sensor_deployment(cr, self.cfg))
        await self.write_status(cr, [*provided, true("Deployed")])
