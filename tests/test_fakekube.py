"""Contract tests for the fake Kubernetes API server, through the real clients.

Everything here goes through the ``kubernetes`` Python client (typed APIs,
``CustomObjectsApi``, ``DynamicClient``, ``watch``) or the real ``kubectl`` binary, so
a behaviour the fake gets wrong shows up as a client-visible difference. The seed
walkthrough's manifests are applied byte for byte when ``../shared/seed-manifests``
exists; the self-contained kubectl tests write their own manifests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client, watch

from tests.fakekube.harness import KubeApi
from tests.fakekube.patches import strategic_merge_patch
from tests.fakekube.store import NAME_ALPHABET
from tests.support.net import wait_for

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "seed-manifests"
ARGO = ("argoproj.io", "v1alpha1")
NS = "default"


def _status(e: client.ApiException) -> dict[str, Any]:
    body = json.loads(e.body or "{}")
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == e.status
    return dict(body)


def _cm(name: str = "", labels: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"labels": labels or {}, **meta}
    if name:
        metadata["name"] = name
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"k": "v"}}


def _cr(kind: str, name: str, spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, **meta},
        "spec": spec or {},
    }


@pytest.fixture
def core(kube_api: KubeApi) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api.api_client())


@pytest.fixture
def custom(kube_api: KubeApi) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api.api_client())


@pytest.fixture
def http(kube_api: KubeApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kube_api.url, timeout=10) as c:
        yield c


# ------------------------------------------------------------------ discovery


def test_discovery_legacy_and_aggregated(kube_api: KubeApi, http: httpx.Client) -> None:
    assert http.get("/version").json()["gitVersion"].startswith("v1.")
    assert http.get("/api").json()["versions"] == ["v1"]
    groups = {g["name"] for g in http.get("/apis").json()["groups"]}
    assert {"apps", "rbac.authorization.k8s.io", "coordination.k8s.io", "argoproj.io"} <= groups
    argo = {r["name"]: r for r in http.get("/apis/argoproj.io/v1alpha1").json()["resources"]}
    assert argo["eventbus"]["kind"] == "EventBus" and argo["eventbus"]["shortNames"] == ["eb"]
    assert argo["eventsources"]["shortNames"] == ["es"]
    assert argo["sensors"]["shortNames"] == ["sn"] and "sensors/status" in argo
    assert argo["workflows"]["namespaced"] and "workflows/status" not in argo
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    agg = http.get("/apis", headers={"Accept": accept})
    assert "g=apidiscovery.k8s.io" in agg.headers["content-type"]
    assert agg.json()["kind"] == "APIGroupDiscoveryList"
    assert http.get("/openapi/v3").json()["paths"]["apis/argoproj.io/v1alpha1"]
    for probe in ("/healthz", "/readyz", "/livez"):
        assert http.get(probe).status_code == 200
    missing = http.get("/apis/nope.io/v1/things")
    assert missing.status_code == 404 and missing.json()["kind"] == "Status"


def test_dynamic_client_crud(kube_api: KubeApi) -> None:
    dyn = kube_api.dynamic_client()
    sensors = dyn.resources.get(api_version="argoproj.io/v1alpha1", kind="Sensor")
    assert sensors.name == "sensors" and sensors.namespaced
    bus = dyn.resources.get(api_version="argoproj.io/v1alpha1", kind="EventBus")
    assert bus.name == "eventbus"
    created = sensors.create(body=_cr("Sensor", "s1", {"a": 1}, labels={"x": "1"}), namespace=NS)
    assert created.metadata.name == "s1" and created.metadata.uid
    patched = sensors.patch(
        body={"spec": {"b": 2}},
        name="s1",
        namespace=NS,
        content_type="application/merge-patch+json",
    )
    assert patched.spec.a == 1 and patched.spec.b == 2 and patched.metadata.generation == 2
    assert [i.metadata.name for i in sensors.get(namespace=NS, label_selector="x=1").items] == [
        "s1"
    ]
    sensors.delete(name="s1", namespace=NS)
    assert sensors.get(namespace=NS).items == []


# ------------------------------------------------------------------ create


def test_generate_name_returns_full_distinct_objects(
    core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    made = [
        core.create_namespaced_config_map_with_http_info(NS, _cm(generateName="run-"))
        for _ in range(20)
    ]
    assert {status for _, status, _ in made} == {201}
    objs = [obj for obj, _, _ in made]
    names = [o.metadata.name for o in objs]
    assert len(set(names)) == len(names)
    for o in objs:
        assert o is not None and o.data == {"k": "v"}
        suffix = o.metadata.name.removeprefix("run-")
        assert len(suffix) == 5 and set(suffix) <= set(NAME_ALPHABET)
        assert o.metadata.uid and o.metadata.creation_timestamp and o.metadata.namespace == NS
    versions = [int(o.metadata.resource_version) for o in objs]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    wf = custom.create_namespaced_custom_object(
        *ARGO,
        NS,
        "workflows",
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Workflow",
            "metadata": {"generateName": "ml-pipeline-run-"},
            "spec": {"workflowTemplateRef": {"name": "ml-pipeline-template"}},
        },
    )
    assert wf["metadata"]["name"].startswith("ml-pipeline-run-")
    assert wf["metadata"]["generation"] == 1 and wf["kind"] == "Workflow"
    assert wf["spec"]["workflowTemplateRef"]["name"] == "ml-pipeline-template"


def test_create_errors(core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    core.create_namespaced_config_map(NS, _cm("dup"))
    with pytest.raises(client.ApiException) as exists:
        core.create_namespaced_config_map(NS, _cm("dup"))
    body = _status(exists.value)
    assert exists.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "dup", "kind": "configmaps"}
    assert body["message"] == 'configmaps "dup" already exists'

    with pytest.raises(client.ApiException) as nameless:
        core.create_namespaced_config_map(NS, _cm())
    body = _status(nameless.value)
    assert nameless.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"

    with pytest.raises(client.ApiException) as bad_name:
        custom.create_namespaced_custom_object(*ARGO, NS, "sensors", _cr("Sensor", "Bad_Name"))
    assert bad_name.value.status == 422

    with pytest.raises(client.ApiException) as bad_label:
        core.create_namespaced_config_map(NS, _cm("l", labels={"a": "not ok!"}))
    assert bad_label.value.status == 422

    with pytest.raises(client.ApiException) as mismatch:
        core.create_namespaced_config_map(NS, _cm("x", namespace="other"))
    assert mismatch.value.status == 400 and _status(mismatch.value)["reason"] == "BadRequest"

    with pytest.raises(client.ApiException) as no_ns:
        core.create_namespaced_config_map("missing", _cm("x"))
    assert no_ns.value.status == 404 and "namespaces" in _status(no_ns.value)["message"]

    with pytest.raises(client.ApiException) as missing:
        custom.get_namespaced_custom_object(*ARGO, NS, "eventsources", "nope")
    body = _status(missing.value)
    assert missing.value.status == 404 and body["reason"] == "NotFound"
    assert body["details"] == {"name": "nope", "group": "argoproj.io", "kind": "eventsources"}


def test_method_not_allowed(kube_api: KubeApi, http: httpx.Client) -> None:
    http.post("/api/v1/namespaces/default/configmaps", json=_cm("m")).raise_for_status()
    r = http.post("/api/v1/namespaces/default/configmaps/m", json=_cm("m"))
    assert r.status_code == 405 and r.json()["reason"] == "MethodNotAllowed"


# ------------------------------------------------------------------ update / patch


def test_stale_resource_version_conflicts(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_config_map(NS, _cm("c"))
    first.data = {"k": "v2"}
    second = core.replace_namespaced_config_map("c", NS, first)
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    first.data = {"k": "stale"}
    with pytest.raises(client.ApiException) as stale:
        core.replace_namespaced_config_map("c", NS, first)
    body = _status(stale.value)
    assert stale.value.status == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]
    assert core.read_namespaced_config_map("c", NS).data == {"k": "v2"}
    # A no-op update keeps the version; an update without resourceVersion is unconditional.
    same = core.replace_namespaced_config_map("c", NS, second)
    assert same.metadata.resource_version == second.metadata.resource_version
    second.metadata.resource_version = None
    second.data = {"k": "v3"}
    assert core.replace_namespaced_config_map("c", NS, second).data == {"k": "v3"}


def test_merge_json_and_strategic_patches(
    kube_api: KubeApi, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    merge = "application/merge-patch+json"
    core.create_namespaced_config_map(NS, _cm("p", labels={"a": "1", "b": "2"}))
    out = core.patch_namespaced_config_map(
        "p", NS, {"metadata": {"labels": {"a": None, "c": "3"}}}, _content_type=merge
    )
    assert out.metadata.labels == {"b": "2", "c": "3"}
    out = core.patch_namespaced_config_map(
        "p", NS, [{"op": "replace", "path": "/data/k", "value": "json"}]
    )
    assert out.data == {"k": "json"}
    with pytest.raises(client.ApiException) as failed:
        core.patch_namespaced_config_map("p", NS, [{"op": "test", "path": "/data/k", "value": "x"}])
    assert failed.value.status == 422
    # The client sends dict bodies as strategic merge patches.
    assert core.patch_namespaced_config_map("p", NS, {"data": {"z": "1"}}).data == {
        "k": "json",
        "z": "1",
    }
    not_a_list = httpx.patch(
        f"{kube_api.url}/api/v1/namespaces/default/configmaps/p",
        json={"data": {}},
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert not_a_list.status_code == 400 and not_a_list.json()["reason"] == "BadRequest"

    apps = client.AppsV1Api(kube_api.api_client())
    containers = [
        {"name": "app", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
        {"name": "side", "image": "s:1"},
    ]
    dep = {
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": containers}},
        },
    }
    apps.create_namespaced_deployment(NS, dep)
    smp = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "side", "image": "s:2", "env": [{"name": "Y", "value": "2"}]}
                    ]
                }
            }
        }
    }
    out_dep = apps.patch_namespaced_deployment(
        "d", NS, smp, _content_type="application/strategic-merge-patch+json"
    )
    got = {c.name: c for c in out_dep.spec.template.spec.containers}
    assert got["app"].image == "a:1" and got["side"].image == "s:2"
    assert [e.name for e in got["side"].env] == ["Y"] and out_dep.metadata.generation == 2

    custom.create_namespaced_custom_object(*ARGO, NS, "eventsources", _cr("EventSource", "es"))
    out_es = custom.patch_namespaced_custom_object(
        *ARGO, NS, "eventsources", "es", {"spec": {"a": 1}}
    )
    assert out_es["spec"] == {"a": 1}
    with pytest.raises(client.ApiException) as unsupported:
        custom.patch_namespaced_custom_object(
            *ARGO,
            NS,
            "eventsources",
            "es",
            {"spec": {"a": 2}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert unsupported.value.status == 415


def test_status_subresource(custom: client.CustomObjectsApi) -> None:
    es = _cr("EventSource", "webhook", {"webhook": {}})
    es["status"] = {"ignored": True}
    created = custom.create_namespaced_custom_object(*ARGO, NS, "eventsources", es)
    assert "status" not in created and created["metadata"]["generation"] == 1
    status = {"status": {"conditions": [{"type": "Deployed", "status": "True"}]}}
    after = custom.patch_namespaced_custom_object_status(
        *ARGO,
        NS,
        "eventsources",
        "webhook",
        {
            **status,
            "spec": {"changed": "no"},
        },
    )
    assert after["status"] == status["status"] and after["spec"] == {"webhook": {}}
    assert after["metadata"]["generation"] == 1
    main = custom.patch_namespaced_custom_object(
        *ARGO, NS, "eventsources", "webhook", {"spec": {"x": 1}, "status": {"hacked": True}}
    )
    assert main["status"] == status["status"] and main["metadata"]["generation"] == 2
    got = custom.get_namespaced_custom_object_status(*ARGO, NS, "eventsources", "webhook")
    assert got["status"] == status["status"]
    replaced = custom.replace_namespaced_custom_object_status(
        *ARGO, NS, "eventsources", "webhook", dict(got, status={"phase": "ok"})
    )
    assert replaced["status"] == {"phase": "ok"} and replaced["spec"] == main["spec"]

    # Workflows have no status subresource: status is written with the object.
    wf = _cr("Workflow", "wf")
    wf["status"] = {"phase": "Running"}
    assert custom.create_namespaced_custom_object(*ARGO, NS, "workflows", wf)["status"] == {
        "phase": "Running"
    }
    with pytest.raises(client.ApiException) as no_sub:
        custom.get_namespaced_custom_object_status(*ARGO, NS, "workflows", "wf")
    assert no_sub.value.status == 404


# ------------------------------------------------------------------ list


def test_label_and_field_selectors(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    kube_api.create_namespace("other")
    for name, labels in {
        "a": {"app": "a", "tier": "web"},
        "b": {"app": "b"},
        "c": {"app": "c", "tier": "db"},
        "n": {},
    }.items():
        core.create_namespaced_config_map(NS, _cm(name, labels=labels))
    core.create_namespaced_config_map("other", _cm("a", labels={"app": "a"}))

    def names(**kw: Any) -> list[str]:
        return sorted(i.metadata.name for i in core.list_namespaced_config_map(NS, **kw).items)

    assert names(label_selector="app=a") == ["a"]
    assert names(label_selector="app==a") == ["a"]
    assert names(label_selector="app!=a") == ["b", "c", "n"]
    assert names(label_selector="app in (a, b)") == ["a", "b"]
    assert names(label_selector="app notin (a,b)") == ["c", "n"]
    assert names(label_selector="tier") == ["a", "c"]
    assert names(label_selector="!tier") == ["b", "n"]
    assert names(label_selector="app in (a,c),tier!=db") == ["a"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b,metadata.namespace=default") == ["a", "c", "n"]
    everywhere = core.list_config_map_for_all_namespaces(label_selector="app=a")
    assert sorted((i.metadata.namespace, i.metadata.name) for i in everywhere.items) == [
        ("default", "a"),
        ("other", "a"),
    ]
    with pytest.raises(client.ApiException) as bad:
        core.list_namespaced_config_map(NS, label_selector="app in a")
    assert bad.value.status == 400
    with pytest.raises(client.ApiException) as unsupported:
        core.list_namespaced_config_map(NS, field_selector="data.k=v")
    assert unsupported.value.status == 400


def test_list_pages_with_limit_and_continue(core: client.CoreV1Api) -> None:
    for i in range(5):
        core.create_namespaced_config_map(NS, _cm(f"cm-{i}"))
    seen: list[str] = []
    token = None
    while True:
        page = core.list_namespaced_config_map(NS, limit=2, _continue=token)
        seen += [i.metadata.name for i in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert seen == [f"cm-{i}" for i in range(5)]


# ------------------------------------------------------------------ delete


def test_delete_finalizers_and_cascades(
    kube_api: KubeApi, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    core.create_namespaced_config_map(NS, _cm("gone"))
    status = core.delete_namespaced_config_map("gone", NS)
    status = status if isinstance(status, dict) else status.to_dict()
    assert status["status"] == "Success" and status["details"]["name"] == "gone"

    core.create_namespaced_config_map(NS, _cm("held", finalizers=["example.com/hold"]))
    core.delete_namespaced_config_map("held", NS)
    held = core.read_namespaced_config_map("held", NS)
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map(
        "held", NS, {"metadata": {"finalizers": None}}, _content_type="application/merge-patch+json"
    )
    with pytest.raises(client.ApiException) as after:
        core.read_namespaced_config_map("held", NS)
    assert after.value.status == 404

    owner = custom.create_namespaced_custom_object(*ARGO, NS, "sensors", _cr("Sensor", "owner"))
    ref = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }
    core.create_namespaced_config_map(NS, _cm("owned", ownerReferences=[ref]))
    custom.delete_namespaced_custom_object(*ARGO, NS, "sensors", "owner")
    assert core.list_namespaced_config_map(NS).items == []

    kube_api.create_namespace("doomed")
    core.create_namespaced_config_map("doomed", _cm("inside"))
    core.delete_namespace("doomed")
    assert (
        core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=doomed").items
        == []
    )
    with pytest.raises(client.ApiException) as protected:
        core.delete_namespace("default")
    assert protected.value.status == 403


WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "size": {"type": "integer"},
                                    "color": {"type": "string", "default": "red"},
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


def _widget(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": spec,
    }


def test_crd_registers_its_resource_with_its_schema(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    ext = client.ApiextensionsV1Api(kube_api.api_client())
    created = ext.create_custom_resource_definition(WIDGET_CRD)
    assert {c.type for c in created.status.conditions} >= {"Established", "NamesAccepted"}
    widgets = ("example.com", "v1", NS, "widgets")

    with pytest.raises(client.ApiException) as strict:
        custom.create_namespaced_custom_object(
            *widgets, _widget({"size": 1, "colour": "x"}), field_validation="Strict"
        )
    assert strict.value.status == 400
    assert 'unknown field "spec.colour"' in _status(strict.value)["message"]
    with pytest.raises(client.ApiException) as wrong_type:
        custom.create_namespaced_custom_object(*widgets, _widget({"size": "big"}))
    assert wrong_type.value.status == 422 and "spec.size" in wrong_type.value.body
    # Without Strict, unknown fields are pruned with a warning and defaults filled in.
    obj, _, headers = custom.create_namespaced_custom_object_with_http_info(
        *widgets, _widget({"size": 1, "colour": "x"})
    )
    assert obj["spec"] == {"size": 1, "color": "red"}
    assert headers["Warning"].startswith("299 - ") and "spec.colour" in headers["Warning"]

    ext.delete_custom_resource_definition("widgets.example.com")
    with pytest.raises(client.ApiException) as gone:
        custom.list_namespaced_custom_object(*widgets)
    assert gone.value.status == 404


def test_kubectl_rejects_typos_for_crds_with_schemas(kube_api: KubeApi, tmp_path: Path) -> None:
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(WIDGET_CRD))
    kube_api.kubectl("apply", "-f", str(tmp_path / "crd.yaml"))
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(_widget({"size": 1, "colour": "x"})))
    typo = kube_api.kubectl("apply", "-f", str(tmp_path / "w.yaml"), check=False)
    assert typo.returncode != 0 and 'unknown field "spec.colour"' in typo.stderr
    out = kube_api.kubectl("apply", "--validate=false", "-f", str(tmp_path / "w.yaml")).stdout
    assert "widget.example.com/w created" in out


# ------------------------------------------------------------------ watch


def _stream(core: client.CoreV1Api, expect: int, **kw: Any) -> list[tuple[str, str]]:
    """Watch config maps until ``expect`` events arrived (or the 5 s server timeout)."""
    w = watch.Watch()
    got: list[tuple[str, str]] = []
    for e in w.stream(core.list_namespaced_config_map, NS, timeout_seconds=5, **kw):
        got.append((e["type"], e["object"].metadata.name))
        if len(got) == expect:
            w.stop()
    return got


def test_watch_streams_added_modified_deleted(core: client.CoreV1Api) -> None:
    start = core.list_namespaced_config_map(NS).metadata.resource_version
    events: list[tuple[str, str]] = []
    w = watch.Watch()

    def consume() -> None:
        for e in w.stream(
            core.list_namespaced_config_map,
            NS,
            resource_version=start,
            label_selector="w=1",
            timeout_seconds=10,
        ):
            events.append((e["type"], e["object"].metadata.name))
            if len(events) == 4:
                w.stop()

    t = threading.Thread(target=consume)
    t.start()
    core.create_namespaced_config_map(NS, _cm("ignored"))
    core.create_namespaced_config_map(NS, _cm("x", labels={"w": "1"}))
    core.patch_namespaced_config_map(
        "x", NS, {"data": {"k": "2"}}, _content_type="application/merge-patch+json"
    )
    core.patch_namespaced_config_map(  # leaves the selector: a DELETED for this watch
        "x", NS, {"metadata": {"labels": {"w": "0"}}}, _content_type="application/merge-patch+json"
    )
    core.create_namespaced_config_map(NS, _cm("y", labels={"w": "1"}))
    core.delete_namespaced_config_map("y", NS)
    t.join(15)
    assert not t.is_alive()
    assert events == [("ADDED", "x"), ("MODIFIED", "x"), ("DELETED", "x"), ("ADDED", "y")]
    # Without a resourceVersion a watch starts with the current objects as ADDED.
    assert _stream(core, 1, label_selector="w") == [("ADDED", "x")]


def test_watch_expired_resource_version_gets_410(
    kube_api: KubeApi, core: client.CoreV1Api, http: httpx.Client
) -> None:
    old = core.list_namespaced_config_map(NS).metadata.resource_version
    core.create_namespaced_config_map(NS, _cm("a"))
    kube_api.compact()
    with pytest.raises(client.ApiException) as gone:
        _stream(core, 1, resource_version=old)
    assert gone.value.status == 410
    params = {"watch": "1", "resourceVersion": old, "timeoutSeconds": "1"}
    with http.stream("GET", "/api/v1/namespaces/default/configmaps", params=params) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[0]["type"] == "ERROR"
    assert lines[0]["object"]["code"] == 410 and lines[0]["object"]["reason"] == "Expired"
    # The current version is still good after compaction.
    now = core.list_namespaced_config_map(NS).metadata.resource_version
    core.create_namespaced_config_map(NS, _cm("b"))
    assert _stream(core, 1, resource_version=now) == [("ADDED", "b")]


def _watch_lines(http: httpx.Client, params: dict[str, str], until: int, act: Any) -> list[Any]:
    """Open a raw watch, run ``act()`` once it is open, read ``until`` lines (or its end)."""
    out: list[Any] = []
    with http.stream("GET", "/api/v1/namespaces/default/configmaps", params=params) as r:
        assert r.status_code == 200
        wait_for(lambda: http.get("/fake/state").json()["watchers"] >= 1, timeout=5)
        act()
        for line in r.iter_lines():
            if line:
                out.append(json.loads(line))
            if len(out) >= until:
                break
    return out


def test_live_watch_expires_with_410_and_history_is_gone(
    kube_api: KubeApi, core: client.CoreV1Api, http: httpx.Client
) -> None:
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    core.create_namespaced_config_map(NS, _cm("before"))
    params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "10"}
    lines = _watch_lines(http, params, 3, lambda: kube_api.expire_watches())
    assert [x["type"] for x in lines] == ["ADDED", "ERROR"]
    assert lines[1]["object"]["code"] == 410 and lines[1]["object"]["reason"] == "Expired"
    assert http.get("/fake/state").json()["watchers"] == 0
    # resuming from where that watch started is too old now: a list is needed
    with pytest.raises(client.ApiException) as gone:
        _stream(core, 1, resource_version=rv)
    assert gone.value.status == 410


def test_bookmarks_only_for_watches_that_allow_them(
    kube_api: KubeApi, core: client.CoreV1Api, http: httpx.Client
) -> None:
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    core.create_namespaced_config_map(NS, _cm("elsewhere", labels={"w": "0"}))

    def bookmark_then_change() -> None:
        kube_api.bookmark_watches()
        core.create_namespaced_config_map(NS, _cm("seen", labels={"w": "1"}))

    params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "10", "labelSelector": "w=1"}
    with_marks = _watch_lines(
        http, {**params, "allowWatchBookmarks": "true"}, 2, bookmark_then_change
    )
    assert [x["type"] for x in with_marks] == ["BOOKMARK", "ADDED"]
    mark = with_marks[0]["object"]
    assert mark["kind"] == "ConfigMap" and int(mark["metadata"]["resourceVersion"]) > int(rv)
    assert int(mark["metadata"]["resourceVersion"]) < int(
        with_marks[1]["object"]["metadata"]["resourceVersion"]
    )
    without = _watch_lines(http, params, 1, lambda: kube_api.bookmark_watches())
    assert [x["type"] for x in without] == ["ADDED"]  # the backlog; no BOOKMARK line


# ------------------------------------------------------------------ kubectl

MANIFESTS = """\
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  nats:
    native: {replicas: 3, auth: token}
---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: webhook
spec:
  service:
    ports: [{port: 12000, targetPort: 12000}]
  webhook:
    trigger: {port: "12000", endpoint: /trigger, method: POST}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: sensor
spec:
  dependencies: [{name: dep, eventSourceName: webhook, eventName: trigger}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - {name: app, image: "nginx:1", env: [{name: A, value: "1"}]}
        - {name: side, image: busybox}
"""


def test_kubectl_apply_get_update_delete(kube_api: KubeApi, tmp_path: Path) -> None:
    kube_api.kubectl("create", "namespace", "demo")
    manifest = tmp_path / "all.yaml"
    manifest.write_text(MANIFESTS)
    out = kube_api.kubectl("apply", "-n", "demo", "-f", str(manifest)).stdout
    assert "eventbus.argoproj.io/default created" in out
    assert "deployment.apps/web created" in out
    listed = kube_api.kubectl("get", "es,sn,eb", "-n", "demo").stdout
    for name in (
        "eventsource.argoproj.io/webhook",
        "sensor.argoproj.io/sensor",
        "eventbus.argoproj.io/default",
    ):
        assert name in listed
    assert "unchanged" in kube_api.kubectl("apply", "-n", "demo", "-f", str(manifest)).stdout

    # Second apply with changes: strategic patch for Deployments, merge patch for CRs.
    manifest.write_text(
        MANIFESTS.replace("nginx:1", "nginx:2")
        .replace("replicas: 3", "replicas: 5")
        .replace("        - {name: side, image: busybox}\n", "")
    )
    out = kube_api.kubectl("apply", "-n", "demo", "-f", str(manifest)).stdout
    assert "eventbus.argoproj.io/default configured" in out
    assert "deployment.apps/web configured" in out
    dep = kube_api.kubectl_json("get", "deployment", "web", "-n", "demo")
    assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == ["app"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:2"
    bus = client.CustomObjectsApi(kube_api.api_client()).get_namespaced_custom_object(
        *ARGO, "demo", "eventbus", "default"
    )
    assert bus["spec"]["nats"]["native"]["replicas"] == 5 and bus["metadata"]["generation"] == 2

    kube_api.kubectl("label", "es", "webhook", "-n", "demo", "team=data")
    assert (
        kube_api.kubectl_json("get", "es", "-n", "demo", "-l", "team=data")["items"][0]["metadata"][
            "name"
        ]
        == "webhook"
    )

    out = kube_api.kubectl("delete", "-n", "demo", "-f", str(manifest)).stdout
    assert out.count("deleted") == 4
    assert "No resources found" in kube_api.kubectl("get", "es,sn,eb", "-n", "demo").stderr
    missing = kube_api.kubectl("get", "sn", "sensor", "-n", "demo", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_kubectl_create_sends_protobuf(kube_api: KubeApi) -> None:
    kube_api.kubectl("create", "namespace", "pb")
    kube_api.kubectl("create", "configmap", "cm", "-n", "pb", "--from-literal=a=b")
    kube_api.kubectl("create", "secret", "generic", "s", "-n", "pb", "--from-literal=pw=x")
    kube_api.kubectl("create", "serviceaccount", "sa", "-n", "pb")
    core = client.CoreV1Api(kube_api.api_client())
    assert core.read_namespace("pb").status.phase == "Active"
    assert core.read_namespaced_config_map("cm", "pb").data == {"a": "b"}
    assert core.read_namespaced_secret("s", "pb").data == {"pw": "eA=="}
    assert core.read_namespaced_service_account("sa", "pb").metadata.uid


def _apply_dir(kube_api: KubeApi, directory: Path, namespace: str) -> str:
    return kube_api.kubectl("apply", "-n", namespace, "-f", str(directory)).stdout


@pytest.mark.skipif(not SEED_DIR.is_dir(), reason="../shared/seed-manifests not present")
def test_kubectl_applies_seed_manifests_verbatim(kube_api: KubeApi) -> None:
    kube_api.kubectl("create", "namespace", "argo-events")
    out = _apply_dir(kube_api, SEED_DIR, "argo-events")
    files = sorted(SEED_DIR.glob("*.yaml"))
    assert out.count(" created") == len(files)
    listed = kube_api.kubectl("get", "es,sn,eb", "-n", "argo-events").stdout
    assert "eventsource.argoproj.io/webhook" in listed
    assert "sensor.argoproj.io/ml-pipeline-sensor" in listed
    assert "eventbus.argoproj.io/default" in listed
    for f in files:
        doc = yaml.safe_load(f.read_text())
        got = kube_api.kubectl_json("get", "-n", "argo-events", "-f", str(f))
        applied = got["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        assert json.loads(applied)["kind"] == doc["kind"]
        for key in set(doc) - {"metadata", "apiVersion", "kind"}:
            assert got[key] == doc[key], f"{f.name}: {key}"
    again = _apply_dir(kube_api, SEED_DIR, "argo-events")
    assert again.count(" unchanged") == len(files)


# ------------------------------------------------------------------ pure helpers


def test_strategic_merge_patch_directives() -> None:
    pod = {
        "metadata": {"finalizers": ["a"]},
        "spec": {
            "containers": [
                {"name": "app", "image": "a", "ports": [{"containerPort": 80, "name": "http"}]},
                {"name": "side", "image": "s"},
            ],
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
        },
    }
    patch = {
        "metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]},
        "spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
            "containers": [
                {"name": "side", "$patch": "delete"},
                {"name": "app", "ports": [{"containerPort": 81}]},
            ],
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
        },
    }
    out = strategic_merge_patch(pod, patch)
    assert out["metadata"]["finalizers"] == ["b"]
    assert out["spec"]["containers"] == [
        {
            "name": "app",
            "image": "a",
            "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 81}],
        }
    ]
    assert out["spec"]["strategy"] == {"type": "Recreate"}
    svc = {"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}
    assert strategic_merge_patch(svc, {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}) == {
        "spec": {"ports": [{"port": 80, "targetPort": 9090}]}
    }


def test_fault_rules_answer_statuses_hold_requests_and_are_reset(
    kube_api: KubeApi, core: client.CoreV1Api
) -> None:
    path = f"/api/v1/namespaces/{NS}/configmaps"
    kube_api.fault("POST", path, status=429, retryAfter=2, times=1)
    with pytest.raises(client.ApiException) as e:
        core.create_namespaced_config_map(NS, _cm("a"))
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "2"
    assert _status(e.value)["reason"] == "TooManyRequests"
    core.create_namespaced_config_map(NS, _cm("a"))  # times=1: the next one goes through
    assert core.list_namespaced_config_map(NS).items[0].metadata.name == "a"
    kube_api.fault("POST", path, hold=True)
    result: list[Any] = []
    t = threading.Thread(
        target=lambda: result.append(core.create_namespaced_config_map(NS, _cm("b")))
    )
    t.start()
    wait_for(lambda: kube_api.faults()["rules"][1]["held"] == 1)
    assert kube_api.faults()["rules"][1]["held"] == 1 and not result
    assert kube_api.release() == 1
    t.join(10)
    assert result and result[0].metadata.name == "b"
    seen = [(r["method"], r["status"]) for r in kube_api.faults()["requests"]]
    assert seen == [("POST", 429), ("POST", 201), ("POST", 201)]
    kube_api.reset()
    assert kube_api.faults() == {"rules": [], "requests": []}
