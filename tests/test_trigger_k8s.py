"""The k8s trigger's idempotent create against the fake Kubernetes API.

A firing's name is the ``generateName`` prefix plus the start of its key, and the key
is stored in an annotation. A 409 AlreadyExists is a success only when the existing
object carries the same key (the same firing, redelivered); an object carrying another
firing's key, or none, is a name clash: a PermanentError, never a silent success.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from app.adapters.kube import ApiKube
from app.kernel.errors import PermanentError, TransientError
from app.kernel.events import Event, new_event_id
from app.kernel.settings import KubeSettings
from sensors.triggers.base import Invocation, TriggerContext
from sensors.triggers.k8s import (
    ANNOTATION_KEY,
    ANNOTATION_TRACE_ID,
    NAME_HASH_CHARS,
    K8sTrigger,
    K8sTriggerConfig,
)
from tests.fakekube.harness import KubeApi

NS = "ns1"
KEY = "0123456789abcdef" * 2
OTHER_KEY = "fedcba9876543210" * 2


@pytest.fixture
async def kube(kube_api: KubeApi) -> AsyncIterator[ApiKube]:
    kube_api.create_namespace(NS)
    api = ApiKube.from_settings(KubeSettings(kubeconfig=str(kube_api.kubeconfig)))
    assert api is not None
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def ctx(kube: ApiKube) -> AsyncIterator[TriggerContext]:
    c = TriggerContext(kube=kube)
    try:
        yield c
    finally:
        await c.shared.aclose()


def configmap(**meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


def trigger(ctx: TriggerContext, resource: dict[str, Any]) -> K8sTrigger:
    config = K8sTriggerConfig.model_validate(
        {"operation": "create", "source": {"resource": resource}}
    )
    return K8sTrigger(config, ctx)


def inv(key: str = KEY) -> Invocation:
    ev = Event(id=new_event_id(), source="hook", subject="a", type="webhook", data={})
    return Invocation("s1", NS, "t1", {"a": ev}, key)


async def existing(kube: ApiKube, name: str, key: str | None) -> None:
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if key is not None:
        meta["annotations"] = {ANNOTATION_KEY: key}
    await kube.create(configmap(**meta), NS)


async def test_redelivered_firing_finds_its_own_object(ctx: TriggerContext, kube: ApiKube) -> None:
    t = trigger(ctx, configmap(generateName="job-"))
    first = await t.execute(inv())
    assert (first.action, first.detail["name"]) == ("created", "job-" + KEY[:NAME_HASH_CHARS])
    live = await kube.get("v1", "ConfigMap", first.detail["name"], NS)
    assert live is not None and live["metadata"]["annotations"][ANNOTATION_KEY] == KEY
    again = await t.execute(inv())
    assert again.action == "already-exists"
    assert again.detail == {"kind": "ConfigMap", "namespace": NS, "name": first.detail["name"],
                            "uid": live["metadata"]["uid"]}  # fmt: skip


@pytest.mark.parametrize("live_key", [OTHER_KEY, None], ids=["another-firing", "no-key"])
async def test_generated_name_taken_by_another_object_is_a_name_clash(
    ctx: TriggerContext, kube: ApiKube, live_key: str | None
) -> None:
    name = "job-" + KEY[:NAME_HASH_CHARS]
    await existing(kube, name, live_key)
    t = trigger(ctx, configmap(generateName="job-"))
    with pytest.raises(PermanentError) as e:
        await t.execute(inv())
    assert str(e.value) == (
        f"ConfigMap {NS}/{name} exists but was not created for these events (name clash)"
    )


@pytest.mark.parametrize("live_key", [OTHER_KEY, None], ids=["another-firing", "no-key"])
async def test_fixed_name_taken_by_another_object_is_a_name_clash(
    ctx: TriggerContext, kube: ApiKube, live_key: str | None
) -> None:
    await existing(kube, "fixed", live_key)
    t = trigger(ctx, configmap(name="fixed"))
    with pytest.raises(PermanentError, match="name clash"):
        await t.execute(inv())


async def test_fixed_name_redelivered_firing_finds_its_own_object(
    ctx: TriggerContext, kube: ApiKube
) -> None:
    t = trigger(ctx, configmap(name="fixed"))
    assert (await t.execute(inv())).action == "created"
    assert (await t.execute(inv())).action == "already-exists"
    with pytest.raises(PermanentError, match="name clash"):
        await t.execute(inv(OTHER_KEY))


# --------------------------------------------------------------------------- create details


def make(ctx: TriggerContext, **cfg: Any) -> K8sTrigger:
    return K8sTrigger(K8sTriggerConfig.model_validate(cfg), ctx)


async def test_create_labels_namespaces_and_the_result(
    ctx: TriggerContext, kube: ApiKube, kube_api: KubeApi
) -> None:
    kube_api.create_namespace("ns2")
    template = configmap(generateName="job-", labels={"team": "ml"})
    t = make(ctx, source={"resource": template})  # no operation: create
    before = int(time.time() * 1000)
    first = await t.execute(inv())
    after = int(time.time() * 1000)
    live = await kube.get("v1", "ConfigMap", first.detail["name"], NS)
    assert live is not None
    labels = live["metadata"]["labels"]
    assert labels["team"] == "ml"
    assert (labels["events.argoproj.io/sensor"], labels["events.argoproj.io/trigger"]) == (
        "s1", "t1",
    )  # fmt: skip
    assert before <= int(labels["events.argoproj.io/action-timestamp"]) <= after  # ms
    assert first.action == "created"
    assert first.detail == {"kind": "ConfigMap", "namespace": NS, "name": live["metadata"]["name"],
                            "uid": live["metadata"]["uid"]}  # fmt: skip
    # the template is not changed by a firing: another firing gets its own name
    second = await t.execute(inv(OTHER_KEY))
    assert second.detail["name"] == "job-" + OTHER_KEY[:NAME_HASH_CHARS]
    assert template["metadata"] == {"generateName": "job-", "labels": {"team": "ml"}}
    # an object that names its namespace is created there
    there = make(ctx, source={"resource": configmap(name="there", namespace="ns2")})
    out = await there.execute(inv())
    assert (out.detail["namespace"], out.detail["name"]) == ("ns2", "there")
    assert await kube.get("v1", "ConfigMap", "there", "ns2") is not None


async def test_parameters_set_values_and_errors_name_the_field(ctx: TriggerContext) -> None:
    t = make(
        ctx,
        source={"resource": configmap(name="p")},
        parameters=[{"src": {"dependencyName": "a", "dataKey": "body.v"}, "dest": "data.k"}],
    )
    ev = Event(id=new_event_id(), source="hook", subject="a", type="webhook",
               data={"body": {"v": "from-event"}})  # fmt: skip
    out = await t.execute(Invocation("s1", NS, "t1", {"a": ev}, KEY))
    assert [(r["where"], r["value"]) for r in out.parameters] == [("k8s.parameters", "from-event")]
    with pytest.raises(PermanentError, match=r"parameter 0 \(a\) in k8s\.parameters"):
        await t.execute(inv())
    with pytest.raises(PermanentError, match=r"^k8s\.source\.file\.path is empty"):
        await make(ctx, source={"file": {"path": ""}}).execute(inv())


async def test_update_patch_and_delete(
    ctx: TriggerContext, kube: ApiKube, kube_api: KubeApi
) -> None:
    await existing(kube, "cm", KEY)
    await existing(kube, "other", KEY)
    ref = {"kind": "ConfigMap", "namespace": NS, "name": "cm"}
    params = [{"src": {"dependencyName": "a", "value": "v"}, "dest": "data.from-param"}]

    def trigger_for(op: str, data: dict[str, str], **extra: Any) -> K8sTrigger:
        resource = {**configmap(name="cm"), "data": data}
        return make(ctx, operation=op, source={"resource": resource}, parameters=params, **extra)

    updated = await trigger_for("update", {"k": "u"}).execute(inv())
    live = await kube.get("v1", "ConfigMap", "cm", NS)
    assert live is not None and live["data"] == {"k": "u", "from-param": "v"}
    assert updated.action == "updated"
    assert updated.detail == {**ref, "uid": live["metadata"]["uid"]}
    assert [r["dest"] for r in updated.parameters] == ["data.from-param"]

    path = f"/api/v1/namespaces/{NS}/configmaps/cm"
    kube_api.fault("PATCH", path, times=0)  # no fault: only logs the request
    strategic = "application/strategic-merge-patch+json"
    patched = await trigger_for("patch", {"p": "1"}, patchStrategy=strategic).execute(inv())
    live = await kube.get("v1", "ConfigMap", "cm", NS)
    assert live is not None and live["data"] == {"k": "u", "from-param": "v", "p": "1"}
    assert patched.action == "patched"
    assert patched.detail == {**ref, "uid": live["metadata"]["uid"]}
    assert [r["dest"] for r in patched.parameters] == ["data.from-param"]
    assert [r["contentType"] for r in kube_api.faults()["requests"]] == [strategic]

    deleted = await trigger_for("delete", {}).execute(inv())
    assert (deleted.action, deleted.detail) == ("deleted", {**ref, "uid": ""})
    assert [r["dest"] for r in deleted.parameters] == ["data.from-param"]
    assert await kube.get("v1", "ConfigMap", "cm", NS) is None
    assert await kube.get("v1", "ConfigMap", "other", NS) is not None  # only that one


@pytest.mark.parametrize(
    ("strategy", "patch_type"),
    [
        (None, "merge"),
        ("", "merge"),
        ("application/merge-patch+json", "merge"),
        ("application/json-patch+json", "json"),
        ("Application/JSON-Patch+JSON", "json"),
        ("json", "json"),
        ("JSON", "json"),
        ("application/strategic-merge-patch+json", "strategic"),
        ("application/apply-patch+yaml", "apply"),
        ("Application/Apply-Patch+YAML", "apply"),
    ],
)
def test_patch_strategy_names_the_patch_type(strategy: str | None, patch_type: str) -> None:
    from sensors.triggers.k8s import _patch_type

    assert _patch_type(strategy) == patch_type


async def test_policy_reads_the_created_object_through_the_api(kube: ApiKube) -> None:
    from sensors.spec import TriggerPolicy

    policy = TriggerPolicy.model_validate(
        {"k8s": {"labels": {"events.argoproj.io/trigger": "t1"}, "errorOnBackoffTimeout": True}}
    )
    ctx = TriggerContext(kube=kube, policy=policy)
    out = await make(ctx, source={"resource": configmap(generateName="pol-")}).execute(inv())
    assert (out.action, out.detail["policy"]) == ("created", "labels matched")
    await ctx.shared.aclose()


async def test_name_wins_over_generate_name_and_annotations_are_kept(
    ctx: TriggerContext, kube: ApiKube
) -> None:
    both = configmap(name="given", generateName="gen-", annotations={"team/owner": "ml"})
    out = await make(ctx, source={"resource": both}).execute(inv())
    assert out.detail["name"] == "given"
    live = await kube.get("v1", "ConfigMap", "given", NS)
    assert live is not None
    assert live["metadata"]["annotations"] == {"team/owner": "ml", ANNOTATION_KEY: KEY}


async def test_object_without_metadata_is_refused_by_the_api_for_good(
    ctx: TriggerContext,
) -> None:
    bare = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}}
    with pytest.raises(PermanentError, match="422"):
        await make(ctx, source={"resource": bare}).execute(inv())


async def test_delete_result_names_the_object_without_a_uid(
    ctx: TriggerContext, kube: ApiKube
) -> None:
    await existing(kube, "gone", KEY)
    out = await make(ctx, operation="delete", source={"resource": configmap(name="gone")}).execute(
        inv()
    )
    assert out.detail == {"kind": "ConfigMap", "namespace": NS, "name": "gone", "uid": ""}


async def test_delete_without_a_name_is_refused_and_deletes_nothing(
    ctx: TriggerContext, kube: ApiKube
) -> None:
    """A nameless delete would address the whole collection: it fails for good instead."""
    await existing(kube, "keep-1", KEY)
    await existing(kube, "keep-2", KEY)
    nameless = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "x-"}}
    with pytest.raises(PermanentError, match=r"delete needs metadata\.name"):
        await make(ctx, operation="delete", source={"resource": nameless}).execute(inv())
    for name in ("keep-1", "keep-2"):
        assert await kube.get("v1", "ConfigMap", name, NS) is not None


async def test_redelivered_firing_reports_its_parameters_too(ctx: TriggerContext) -> None:
    t = make(
        ctx,
        source={"resource": configmap(generateName="p-")},
        parameters=[{"src": {"dependencyName": "a", "value": "v"}, "dest": "data.k"}],
    )
    first, again = await t.execute(inv()), await t.execute(inv())
    assert (first.action, again.action) == ("created", "already-exists")
    assert (
        [r["dest"] for r in again.parameters] == ["data.k"] == [r["dest"] for r in first.parameters]
    )


# --- liveObject: update the live object, not the template --------------------------------


def live_trigger(ctx: TriggerContext, resource: dict[str, Any]) -> K8sTrigger:
    return make(
        ctx,
        operation="update",
        liveObject=True,
        source={"resource": resource},
        parameters=[{"src": {"dependencyName": "a", "dataKey": "body.v"}, "dest": "data.k"}],
    )


def event_inv(v: str) -> Invocation:
    ev = Event(id=new_event_id(), source="hook", subject="a", type="webhook",
               data={"body": {"v": v}})  # fmt: skip
    return Invocation("s1", NS, "t1", {"a": ev}, KEY)


async def test_live_object_update_changes_only_what_the_parameters_set(
    ctx: TriggerContext, kube: ApiKube
) -> None:
    await kube.create(
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "cm", "namespace": NS, "labels": {"team": "ml"}},
         "data": {"k": "old", "keep": "me"}},
        NS,
    )  # fmt: skip
    # the source only identifies the object; its data is not what gets written
    template = {**configmap(name="cm", namespace=NS), "data": {"k": "template"}}
    out = await live_trigger(ctx, template).execute(event_inv("new"))
    live = await kube.get("v1", "ConfigMap", "cm", NS)
    assert live is not None
    assert live["data"] == {"k": "new", "keep": "me"}
    assert live["metadata"]["labels"]["team"] == "ml"
    assert out.action == "updated" and out.detail["uid"] == live["metadata"]["uid"]
    # without liveObject the template replaces the object (what liveObject avoids)
    replace = make(ctx, operation="update", source={"resource": template})
    await replace.execute(inv())
    live = await kube.get("v1", "ConfigMap", "cm", NS)
    assert live is not None and live["data"] == {"k": "template"}


async def test_live_object_update_loses_no_concurrent_change(
    ctx: TriggerContext, kube: ApiKube, kube_api: KubeApi
) -> None:
    await kube.create(configmap(name="cm", namespace=NS), NS)
    path = f"/api/v1/namespaces/{NS}/configmaps/cm"
    kube_api.fault("PUT", path, hold=True)  # the update waits after the live read
    t = live_trigger(ctx, configmap(name="cm", namespace=NS))
    firing = asyncio.create_task(t.execute(event_inv("from-event")))
    for _ in range(200):
        if any(r.get("held") for r in kube_api.faults()["rules"]):
            break
        await asyncio.sleep(0.02)
    other = await kube.get("v1", "ConfigMap", "cm", NS)
    assert other is not None
    other["data"]["concurrent"] = "change"
    await kube.update(other, NS)  # someone else writes meanwhile
    kube_api.release()
    with pytest.raises(TransientError):  # 409 Conflict: the read was stale
        await firing
    await t.execute(event_inv("from-event"))  # the retry reads the object again
    live = await kube.get("v1", "ConfigMap", "cm", NS)
    assert live is not None
    assert live["data"] == {"k": "from-event", "concurrent": "change"}


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        (configmap(namespace=NS), "k8s.source: liveObject needs metadata.name"),
        (configmap(name="cm"), "k8s.source: liveObject needs metadata.namespace"),
        (configmap(name="absent", namespace=NS), f"k8s.liveObject: ConfigMap {NS}/absent not"),
    ],
)
async def test_live_object_needs_an_object_that_exists(
    ctx: TriggerContext, resource: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError, match=f"^{message}"):
        await live_trigger(ctx, resource).execute(event_inv("x"))


async def test_live_object_of_a_cluster_scoped_kind_needs_no_namespace(
    ctx: TriggerContext, kube: ApiKube, kube_api: KubeApi
) -> None:
    kube_api.create_namespace("team-a")
    t = make(
        ctx,
        operation="update",
        liveObject=True,
        source={"resource": {"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": "team-a"}}},
        parameters=[{"src": {"dependencyName": "a", "dataKey": "body.v"},
                     "dest": "metadata.labels.owner"}],
    )  # fmt: skip
    await t.execute(event_inv("ml"))
    live = await kube.get("v1", "Namespace", "team-a", "")
    assert live is not None and live["metadata"]["labels"]["owner"] == "ml"


@pytest.mark.parametrize("operation", ["create", "patch", "delete"])
def test_live_object_is_refused_at_load_with_other_operations(operation: str) -> None:
    with pytest.raises(ValidationError, match="liveObject is only valid for operation update"):
        K8sTriggerConfig.model_validate(
            {"operation": operation, "liveObject": True,
             "source": {"resource": configmap(name="cm")}}
        )  # fmt: skip


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("trace_id", [TRACE_ID, ""], ids=["traced", "none"])
async def test_created_object_carries_the_firings_trace_id(
    ctx: TriggerContext, kube: ApiKube, trace_id: str
) -> None:
    """The trace id annotation links an object to the firing's trace; none without one."""
    firing = inv()
    firing.trace_id = trace_id
    out = await trigger(ctx, configmap(generateName="t-")).execute(firing)
    live = await kube.get("v1", "ConfigMap", out.detail["name"], NS)
    assert live is not None
    annotations = live["metadata"]["annotations"]
    assert annotations.get(ANNOTATION_TRACE_ID) == (trace_id or None)
    assert annotations[ANNOTATION_KEY] == KEY
