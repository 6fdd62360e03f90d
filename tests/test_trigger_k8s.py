"""The k8s trigger's idempotent create against the fake Kubernetes API.

A firing's name is the ``generateName`` prefix plus the start of its key, and the key
is stored in an annotation. A 409 AlreadyExists is a success only when the existing
object carries the same key (the same firing, redelivered); an object carrying another
firing's key, or none, is a name clash: a PermanentError, never a silent success.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.adapters.kube import ApiKube
from app.kernel.errors import PermanentError
from app.kernel.events import Event, new_event_id
from app.kernel.settings import KubeSettings
from sensors.triggers.base import Invocation, TriggerContext
from sensors.triggers.k8s import ANNOTATION_KEY, NAME_HASH_CHARS, K8sTrigger, K8sTriggerConfig
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
    assert (again.action, again.detail["name"]) == ("already-exists", first.detail["name"])


@pytest.mark.parametrize("live_key", [OTHER_KEY, None], ids=["another-firing", "no-key"])
async def test_generated_name_taken_by_another_object_is_a_name_clash(
    ctx: TriggerContext, kube: ApiKube, live_key: str | None
) -> None:
    await existing(kube, "job-" + KEY[:NAME_HASH_CHARS], live_key)
    t = trigger(ctx, configmap(generateName="job-"))
    with pytest.raises(PermanentError, match="name clash"):
        await t.execute(inv())


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
