"""The desired children of each kind, as plain Kubernetes objects (pure functions).

Names and labels follow Argo's controller so tooling that selects by them keeps
working: an EventBus ``X`` becomes the StatefulSet ``eventbus-X-js`` behind the headless
Service ``eventbus-X-js-svc``, a client Service ``eventbus-X-js-client-svc`` and, with
token auth, the Secret ``eventbus-X-js-client-auth`` (key ``token``); an EventSource
``X`` becomes the Deployment ``X-eventsource`` and, with ``spec.service``, the Service
``X-eventsource-svc``; a Sensor ``X`` becomes the Deployment ``X-sensor``. Unlike Argo,
Deployment names are fixed rather than generated, so a crashed controller finds its
children by name.

Every child carries an owner reference to its CR (``controller: true``: deleting the
CR deletes them) and the ``resource-spec-hash`` annotation: a hash of the desired
object, compared before updating, so an unchanged spec causes no write. Workloads
also put the hash on the pod template, which makes a spec change roll the pods.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import secrets
from typing import Any

import orjson

from app.compose.controller.config import ControllerSettings

Obj = dict[str, Any]

SPEC_HASH = "resource-spec-hash"
CR_SPEC_HASH = "triggerfish.io/cr-spec-hash"
MANAGED_BY = {"app.kubernetes.io/managed-by": "triggerfish"}
JS_CLIENT_PORT = 4222
JS_CLUSTER_PORT = 6222
JS_MONITOR_PORT = 8222
TOKEN_KEY = "token"

_POD_KEYS = (
    "serviceAccountName", "volumes", "securityContext", "nodeSelector", "tolerations",
    "imagePullSecrets", "priorityClassName", "priority", "affinity",
)  # fmt: skip
_CONTAINER_KEYS = (
    "resources", "imagePullPolicy", "securityContext", "volumeMounts", "env", "envFrom",
)  # fmt: skip


def owner_reference(cr: Obj) -> Obj:
    """The reference that makes ``cr`` the controller of a child."""
    meta = cr["metadata"]
    return {
        "apiVersion": cr["apiVersion"],
        "kind": cr["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def spec_hash(obj: Obj) -> str:
    """A stable hash of a desired object (key order does not matter)."""
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _child(cr: Obj, api_version: str, kind: str, name: str, labels: dict[str, str]) -> Obj:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": cr["metadata"]["namespace"],
            "labels": {**labels, **MANAGED_BY},
            "ownerReferences": [owner_reference(cr)],
        },
    }


def with_hash(obj: Obj) -> Obj:
    """``obj`` with its ``resource-spec-hash`` annotation (and on its pod template)."""
    out = copy.deepcopy(obj)
    h = spec_hash(obj)
    out["metadata"].setdefault("annotations", {})[SPEC_HASH] = h
    template = out.get("spec", {}).get("template")
    if isinstance(template, dict):
        template.setdefault("metadata", {}).setdefault("annotations", {})[SPEC_HASH] = h
    return out


# -- EventBus ----------------------------------------------------------------------------


def bus_labels(name: str) -> dict[str, str]:
    """Labels selecting an EventBus's server pods (Argo's)."""
    return {"controller": "eventbus-controller", "eventbus-name": name, "owner-name": name}


def js_service_name(bus: str) -> str:
    """The headless Service of the bus servers (peer DNS), Argo's name."""
    return f"eventbus-{bus}-js-svc"


def js_client_service_name(bus: str) -> str:
    """The Service clients connect to."""
    return f"eventbus-{bus}-js-client-svc"


def js_auth_secret_name(bus: str) -> str:
    """The Secret holding the client token (key ``token``), Argo's name."""
    return f"eventbus-{bus}-js-client-auth"


def bus_url(bus: str, namespace: str) -> str:
    """The URL pods of ``namespace`` use to reach EventBus ``bus``."""
    return f"nats://{js_client_service_name(bus)}.{namespace}.svc:{JS_CLIENT_PORT}"


def bus_services(cr: Obj) -> list[Obj]:
    """The headless peer Service and the client Service of a bus."""
    name = cr["metadata"]["name"]
    labels = bus_labels(name)
    headless = _child(cr, "v1", "Service", js_service_name(name), labels)
    headless["spec"] = {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": labels,
        "ports": [
            {"name": "tcp-client", "port": JS_CLIENT_PORT},
            {"name": "cluster", "port": JS_CLUSTER_PORT},
            {"name": "monitor", "port": JS_MONITOR_PORT},
        ],
    }
    client = _child(cr, "v1", "Service", js_client_service_name(name), labels)
    client["spec"] = {
        "selector": labels,
        "ports": [{"name": "tcp-client", "port": JS_CLIENT_PORT, "targetPort": JS_CLIENT_PORT}],
    }
    return [with_hash(headless), with_hash(client)]


def bus_auth_secret(cr: Obj) -> Obj:
    """A new client-token Secret (created once; never rewritten, so the token is stable)."""
    name = cr["metadata"]["name"]
    secret = _child(cr, "v1", "Secret", js_auth_secret_name(name), bus_labels(name))
    token = secrets.token_urlsafe(32)
    secret["type"] = "Opaque"
    secret["data"] = {TOKEN_KEY: base64.b64encode(token.encode()).decode()}
    return secret


def bus_statefulset(cr: Obj, replicas: int, token_auth: bool, cfg: ControllerSettings) -> Obj:
    """The JetStream servers: ``replicas`` pods clustered through the headless Service."""
    name = cr["metadata"]["name"]
    ns = cr["metadata"]["namespace"]
    spec = cr.get("spec") or {}
    install: Obj = spec.get("jetstream") or (spec.get("nats") or {}).get("native") or {}
    labels = bus_labels(name)
    sts_name = f"eventbus-{name}-js"
    args = [
        "--name=$(POD_NAME)", "-js", "--store_dir=/data/jetstream",
        f"--port={JS_CLIENT_PORT}", f"--http_port={JS_MONITOR_PORT}",
    ]  # fmt: skip
    if replicas > 1:
        peers = ",".join(
            f"nats://{sts_name}-{i}.{js_service_name(name)}.{ns}.svc:{JS_CLUSTER_PORT}"
            for i in range(replicas)
        )
        args += [f"--cluster_name=eventbus-{name}",
                 f"--cluster=nats://0.0.0.0:{JS_CLUSTER_PORT}", f"--routes={peers}"]  # fmt: skip
    env: list[Obj] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]
    if token_auth:
        args.append("--auth=$(NATS_TOKEN)")
        ref = {"name": js_auth_secret_name(name), "key": TOKEN_KEY}
        env.append({"name": "NATS_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    container: Obj = {
        "name": "main",
        "image": cfg.nats_image,
        "args": args,
        "env": env,
        "ports": [
            {"name": "client", "containerPort": JS_CLIENT_PORT},
            {"name": "cluster", "containerPort": JS_CLUSTER_PORT},
            {"name": "monitor", "containerPort": JS_MONITOR_PORT},
        ],
        "volumeMounts": [{"name": "js-data", "mountPath": "/data/jetstream"}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz?js-enabled-only=true", "port": JS_MONITOR_PORT}
        },
    }
    ct = install.get("containerTemplate") or {}
    for key in ("resources", "imagePullPolicy", "securityContext"):
        if ct.get(key):
            container[key] = ct[key]
    pod: Obj = {"containers": [container]}
    for key in _POD_KEYS:
        if install.get(key):
            pod[key] = install[key]
    persistence = install.get("persistence")
    sts = _child(cr, "apps/v1", "StatefulSet", sts_name, labels)
    sts["spec"] = {
        "replicas": replicas,
        "serviceName": js_service_name(name),
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": {**_pod_labels(install), **labels}}, "spec": pod},
    }
    if persistence:
        claim: Obj = {
            "metadata": {"name": "js-data"},
            "spec": {
                "accessModes": [persistence.get("accessMode") or "ReadWriteOnce"],
                "resources": {
                    "requests": {"storage": str(persistence.get("volumeSize") or "20Gi")}
                },
            },
        }
        if persistence.get("storageClassName"):
            claim["spec"]["storageClassName"] = persistence["storageClassName"]
        sts["spec"]["volumeClaimTemplates"] = [claim]
    else:
        pod["volumes"] = [*pod.get("volumes", []), {"name": "js-data", "emptyDir": {}}]
    return with_hash(sts)


def _pod_labels(template: Obj) -> dict[str, str]:
    return dict((template.get("metadata") or {}).get("labels") or {})


# -- EventSource / Sensor ------------------------------------------------------------------


def eventsource_labels(name: str) -> dict[str, str]:
    """Labels selecting an EventSource's pods (Argo's)."""
    return {"controller": "eventsource-controller", "eventsource-name": name, "owner-name": name}


def sensor_labels(name: str) -> dict[str, str]:
    """Labels selecting a Sensor's pods (Argo's)."""
    return {"controller": "sensor-controller", "sensor-name": name, "owner-name": name}


def _role_deployment(
    cr: Obj, role: str, labels: dict[str, str], cfg: ControllerSettings, ports: list[Obj]
) -> Obj:
    """A Deployment running ``triggerfish <role> <name>`` with the CR's pod template."""
    name = cr["metadata"]["name"]
    spec = cr.get("spec") or {}
    template: Obj = spec.get("template") or {}
    user: Obj = template.get("container") or {}
    env: list[Obj] = [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "TRIGGERFISH_EVENTBUS_NAME", "value": spec.get("eventBusName") or "default"},
        {"name": "TRIGGERFISH_API_HOST", "value": "0.0.0.0"},
        *(user.get("env") or []),
    ]
    probe_port = cfg.pod_api_port
    container: Obj = {
        "name": "main",
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "args": [role, name, f"--api-port={probe_port}"],
        "env": env,
        "ports": [{"name": "metrics", "containerPort": probe_port}, *ports],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": probe_port}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": probe_port}},
    }
    for key in _CONTAINER_KEYS:
        if key != "env" and user.get(key):
            container[key] = user[key]
    pod: Obj = {"containers": [container]}
    for key in _POD_KEYS:
        if template.get(key):
            pod[key] = template[key]
    meta = template.get("metadata") or {}
    pod_meta: Obj = {"labels": {**(meta.get("labels") or {}), **labels}}
    if meta.get("annotations"):
        pod_meta["annotations"] = dict(meta["annotations"])
    dep = _child(cr, "apps/v1", "Deployment", f"{name}-{role}", labels)
    dep["spec"] = {
        "replicas": spec.get("replicas") or 1,
        "selector": {"matchLabels": labels},
        "template": {"metadata": pod_meta, "spec": pod},
    }
    if spec.get("revisionHistoryLimit") is not None:
        dep["spec"]["revisionHistoryLimit"] = spec["revisionHistoryLimit"]
    # The CR's whole spec (triggers, sources) is hashed into the pod template: the pods
    # read it from the API, so any spec change rolls them even when the pod is the same.
    pod_meta.setdefault("annotations", {})[CR_SPEC_HASH] = spec_hash(spec)
    return with_hash(dep)


def eventsource_deployment(cr: Obj, cfg: ControllerSettings) -> Obj:
    """The Deployment of an EventSource (ports of ``spec.service`` exposed)."""
    service = (cr.get("spec") or {}).get("service") or {}
    ports = []
    for p in service.get("ports") or []:
        target = p.get("targetPort", p["port"])
        if isinstance(target, int):
            ports.append({"containerPort": target, "protocol": p.get("protocol") or "TCP"})
    return _role_deployment(
        cr, "eventsource", eventsource_labels(cr["metadata"]["name"]), cfg, ports
    )


def eventsource_service(cr: Obj) -> Obj | None:
    """``<name>-eventsource-svc`` when ``spec.service`` is set, else ``None``."""
    service = (cr.get("spec") or {}).get("service")
    if not service:
        return None
    name = cr["metadata"]["name"]
    labels = eventsource_labels(name)
    svc = _child(cr, "v1", "Service", f"{name}-eventsource-svc", labels)
    meta = service.get("metadata") or {}
    svc["metadata"]["labels"].update(meta.get("labels") or {})
    if meta.get("annotations"):
        svc["metadata"]["annotations"] = dict(meta["annotations"])
    svc["spec"] = {"selector": labels, "ports": [dict(p) for p in service.get("ports") or []]}
    if service.get("clusterIP"):
        svc["spec"]["clusterIP"] = service["clusterIP"]
    return with_hash(svc)


def sensor_deployment(cr: Obj, cfg: ControllerSettings) -> Obj:
    """The Deployment of a Sensor."""
    return _role_deployment(cr, "sensor", sensor_labels(cr["metadata"]["name"]), cfg, [])


# -- what a pod role may read ------------------------------------------------------------


def _selectors(node: Any, out: set[str]) -> None:
    """Names of every ``{name, key}`` selector in a spec (Secret or ConfigMap keys)."""
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and isinstance(node.get("key"), str):
            out.add(node["name"])
        for v in node.values():
            _selectors(v, out)
    elif isinstance(node, list):
        for v in node:
            _selectors(v, out)


def _eventsource_state_rules(spec: Obj) -> list[Obj]:
    """What an EventSource's pods write: the Leases its singleton sources run under
    (several replicas), the ConfigMaps its calendars keep their last tick in."""
    rules: list[Obj] = []
    if (spec.get("replicas") or 1) > 1:
        rules.append({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "verbs": ["get", "create", "update"]})  # fmt: skip
    maps = [
        ((ev or {}).get("persistence") or {}).get("configMap") or {}
        for ev in (spec.get("calendar") or {}).values()
    ]
    names = sorted({str(m["name"]) for m in maps if m.get("name")})
    if names:
        rules.append({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": names,
                      "verbs": ["get", "update"]})  # fmt: skip
    if any(m.get("name") and m.get("createIfNotExist") for m in maps):
        # create cannot be limited to names: the object does not exist yet
        rules.append({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]})
    return rules


def pod_role_rbac(cr: Obj, role: str, plural: str) -> list[Obj]:
    """A Role + RoleBinding letting the pods of ``cr`` read what ``triggerfish <role>``
    reads through the API, and nothing more: their own object, their EventBus (and its
    auth Secret), and the Secrets/ConfigMaps the spec names; for an EventSource also
    the Leases and calendar ConfigMaps it writes."""
    name = cr["metadata"]["name"]
    spec = cr.get("spec") or {}
    bus = str(spec.get("eventBusName") or "default")
    referenced: set[str] = set()
    _selectors(spec, referenced)
    secrets = sorted(referenced | {js_auth_secret_name(bus)})
    read = ["get", "list", "watch"]
    labels = eventsource_labels(name) if role == "eventsource" else sensor_labels(name)
    rules: list[Obj] = [
        {"apiGroups": ["argoproj.io"], "resources": [plural], "resourceNames": [name],
         "verbs": read},
        {"apiGroups": ["argoproj.io"], "resources": ["eventbus"], "resourceNames": [bus],
         "verbs": read},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": secrets,
         "verbs": ["get"]},
    ]  # fmt: skip
    if referenced:
        rules.append(
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": sorted(referenced),
             "verbs": ["get"]}
        )  # fmt: skip
    if role == "eventsource":
        rules += _eventsource_state_rules(spec)
    role_obj = _child(cr, "rbac.authorization.k8s.io/v1", "Role", f"{name}-{role}", labels)
    role_obj["rules"] = rules
    sa = str((spec.get("template") or {}).get("serviceAccountName") or "default")
    binding = _child(cr, "rbac.authorization.k8s.io/v1", "RoleBinding", f"{name}-{role}", labels)
    binding["roleRef"] = {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{name}-{role}",
    }
    binding["subjects"] = [
        {"kind": "ServiceAccount", "name": sa, "namespace": cr["metadata"]["namespace"]}
    ]
    return [with_hash(role_obj), with_hash(binding)]
