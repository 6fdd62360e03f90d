"""``argoWorkflow`` operation ``retry``: Argo Workflows' retry rewrite
(``workflow/util.FormulateRetryWorkflow``) as table tests on node graphs, and the
trigger against the fake Kubernetes API (pods deleted, the Workflow updated with its
resourceVersion, a redelivered firing recognised)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.adapters.kube import ApiKube
from app.kernel.errors import PermanentError
from app.kernel.events import Event, new_event_id
from app.kernel.settings import KubeSettings
from sensors.triggers.argo_retry import FieldSelector, formulate_retry, pod_name
from sensors.triggers.argo_workflow import (
    ANNOTATION_RETRIED_BY,
    ArgoWorkflowTrigger,
    ArgoWorkflowTriggerConfig,
    parse_args,
)
from sensors.triggers.base import Invocation, TriggerContext
from tests.fakekube.harness import KubeApi

NS = "argo-events"
API = "argoproj.io/v1alpha1"
KEY = "0123456789abcdef" * 2


def node(nid: str, name: str, type_: str, phase: str, *children: str, **extra: Any) -> Any:
    return nid, {"id": nid, "name": name, "displayName": name.rsplit(".", 1)[-1],
                 "type": type_, "phase": phase, "children": list(children), **extra}  # fmt: skip


def failed_steps(phase: str = "Failed") -> dict[str, Any]:
    """wf: one step group running ``ok`` (succeeded) and ``bad`` (failed), then an exit
    handler that ran."""
    nodes = dict(
        [
            node("wf", "wf", "Steps", "Failed", "wf-1", outboundNodes=["wf-3"]),
            node("wf-1", "wf[0]", "StepGroup", "Failed", "wf-2", "wf-3", boundaryID="wf"),
            node("wf-2", "wf[0].ok", "Pod", "Succeeded", boundaryID="wf", templateName="ok"),
            node("wf-3", "wf[0].bad", "Pod", "Failed", boundaryID="wf", templateName="bad",
                 message="exit 1"),
            node("wf-4", "wf.onExit", "Pod", "Succeeded", templateName="notify"),
        ]
    )  # fmt: skip
    return {
        "apiVersion": API,
        "kind": "Workflow",
        "metadata": {"name": "wf", "namespace": NS,
                     "labels": {"workflows.argoproj.io/completed": "true", "team": "ml"}},
        "spec": {"entrypoint": "main", "shutdown": "Stop", "activeDeadlineSeconds": 0},
        "status": {"phase": phase, "message": "child failed", "finishedAt": "2024-01-01T00:00:00Z",
                   "conditions": [{"type": "Completed", "status": "True"},
                                  {"type": "PodRunning", "status": "False"}],
                   "nodes": nodes},
    }  # fmt: skip


def test_pod_names_follow_argo() -> None:
    wf = {"metadata": {"name": "wf"}}
    # FNV-1a 32 of "a" is 0xe40c292c
    assert pod_name(wf, {"name": "a", "templateName": "t"}) == "wf-t-3826002220"
    assert pod_name(wf, {"name": "wf"}) == "wf"
    assert pod_name(wf, {"name": "a", "templateRef": {"name": "x", "template": "r"}}).startswith(
        "wf-r-"
    )
    v1 = {
        "metadata": {"name": "wf", "annotations": {"workflows.argoproj.io/pod-name-format": "v1"}}
    }
    assert pod_name(v1, {"name": "a", "id": "wf-123"}) == "wf-123"
    long = {"metadata": {"name": "w" * 300}}
    assert len(pod_name(long, {"name": "a"})) <= 253


def test_the_failed_step_is_deleted_and_its_path_reset() -> None:
    wf = failed_steps()
    new, pods = formulate_retry(wf)
    nodes = new["status"]["nodes"]
    assert sorted(nodes) == ["wf", "wf-1", "wf-2"]  # bad and the exit handler are gone
    assert (nodes["wf"]["phase"], nodes["wf-1"]["phase"], nodes["wf-2"]["phase"]) == (
        "Running", "Running", "Succeeded",
    )  # fmt: skip
    assert nodes["wf-1"]["children"] == ["wf-2"] and nodes["wf"]["outboundNodes"] == []
    assert nodes["wf"]["finishedAt"] is None and nodes["wf"]["startedAt"]
    assert pods == [pod_name(wf, wf["status"]["nodes"]["wf-3"]),
                    pod_name(wf, wf["status"]["nodes"]["wf-4"])]  # fmt: skip
    status = new["status"]
    assert "phase" not in status and "message" not in status and status["finishedAt"] is None
    assert {"type": "Completed", "status": "False"} in status["conditions"]
    assert {"type": "Completed", "status": "True"} not in status["conditions"]
    assert new["metadata"]["labels"] == {"team": "ml"}
    assert "shutdown" not in new["spec"] and "activeDeadlineSeconds" not in new["spec"]
    assert wf["status"]["phase"] == "Failed"  # the input is not changed


def test_a_retried_node_is_judged_by_its_retry_parent() -> None:
    nodes = dict(
        [
            node("r", "r", "Steps", "Failed", "r-1"),
            node("r-1", "r[0]", "StepGroup", "Failed", "r-2", boundaryID="r"),
            node("r-2", "r[0].flaky", "Retry", "Failed", "r-3", "r-4", boundaryID="r"),
            node("r-3", "r[0].flaky(0)", "Pod", "Failed", boundaryID="r",
                 nodeFlag={"retried": True}, templateName="flaky"),
            node("r-4", "r[0].flaky(1)", "Pod", "Failed", boundaryID="r",
                 nodeFlag={"retried": True}, templateName="flaky"),
        ]
    )  # fmt: skip
    wf = {"metadata": {"name": "r"}, "status": {"phase": "Error", "nodes": nodes}}
    new, pods = formulate_retry(wf)
    out = new["status"]["nodes"]
    assert sorted(out) == ["r", "r-1", "r-2"]
    assert [out[n]["phase"] for n in ("r", "r-1", "r-2")] == ["Running"] * 3
    assert out["r-2"]["children"] == []
    assert len(pods) == 2


def test_a_container_resets_its_pod_and_a_suspend_node_loses_its_supplied_value() -> None:
    nodes = dict(
        [
            node("d", "d", "DAG", "Failed", "d-1", "d-2"),
            node("d-1", "d.approve", "Suspend", "Succeeded", boundaryID="d",
                 outputs={"parameters": [{"name": "ok", "value": "yes"}]}),
            node("d-2", "d.job", "Pod", "Failed", "d-3", boundaryID="d", templateName="job"),
            node("d-3", "d.job.main", "Container", "Failed", boundaryID="d"),
        ]
    )  # fmt: skip
    wf = {"metadata": {"name": "d"}, "status": {"phase": "Failed", "nodes": nodes}}
    new, pods = formulate_retry(wf, restart_successful=True, node_field_selector="id=d-1")
    out = new["status"]["nodes"]
    # the pod and its container are deleted; the suspend node asked again
    assert sorted(out) == ["d"]
    assert pods == [pod_name(wf, nodes["d-2"])]
    wf2 = {"metadata": {"name": "d"}, "status": {"phase": "Failed", "nodes": dict(nodes)}}
    wf2["status"]["nodes"]["d-1"] = {**nodes["d-1"], "children": []}
    new2, _ = formulate_retry(wf2)
    assert sorted(new2["status"]["nodes"]) == ["d", "d-1"]
    assert new2["status"]["nodes"]["d-1"]["outputs"] == {
        "parameters": [{"name": "ok", "value": "yes"}]
    }


@pytest.mark.parametrize(
    ("phase", "options", "message"),
    [
        ("Running", {}, "cannot retry a workflow in phase Running"),
        ("", {}, "cannot retry a workflow in phase Unknown"),
        ("Succeeded", {}, "to retry a succeeded workflow, set the options restartSuccessful"),
        ("Succeeded", {"restart_successful": True}, "to retry a succeeded workflow"),
    ],
)
def test_only_a_failed_workflow_is_retried_unless_asked(
    phase: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError, match=message):
        formulate_retry(failed_steps(phase), **options)


def test_a_succeeded_workflow_restarts_the_selected_nodes() -> None:
    wf = failed_steps("Succeeded")
    wf["status"]["nodes"]["wf-3"]["phase"] = "Succeeded"
    new, pods = formulate_retry(wf, restart_successful=True, node_field_selector="templateName=ok")
    assert sorted(new["status"]["nodes"]) == ["wf", "wf-1", "wf-3"]
    assert pods[0] == pod_name(wf, wf["status"]["nodes"]["wf-2"])


def test_parameters_make_reset_groups_expand_again() -> None:
    new, _ = formulate_retry(failed_steps(), with_parameters=True)
    assert sorted(new["status"]["nodes"]) == ["wf", "wf-1"]
    assert new["status"]["nodes"]["wf-1"]["children"] == []


@pytest.mark.parametrize(
    ("selector", "fields", "matches"),
    [
        ("phase=Failed", {"phase": "Failed"}, True),
        ("phase==Failed", {"phase": "Failed"}, True),
        ("phase!=Failed", {"phase": "Failed"}, False),
        ("phase=Failed,templateName=a", {"phase": "Failed", "templateName": "b"}, False),
        ("inputs.parameters.x.value=a\\,b", {"inputs.parameters.x.value": "a,b"}, True),
        ("displayName=", {}, True),
    ],
)
def test_field_selectors(selector: str, fields: dict[str, str], matches: bool) -> None:
    assert FieldSelector.parse(selector).matches(fields) is matches


def test_retry_args() -> None:
    opts = parse_args(["--restart-successful", "--node-field-selector", "phase=Failed",
                       "-p", "a=b"], "retry")  # fmt: skip
    assert (opts.restart_successful, opts.node_field_selector, opts.parameters) == (
        True, "phase=Failed", (("a", "b"),),
    )  # fmt: skip
    assert parse_args(["--restart-successful=false"], "retry").restart_successful is False


# --------------------------------------------------------------------------- the trigger


@pytest.fixture
async def kube(kube_api: KubeApi) -> AsyncIterator[ApiKube]:
    kube_api.create_namespace(NS)
    api = ApiKube.from_settings(KubeSettings(kubeconfig=str(kube_api.kubeconfig)))
    assert api is not None
    try:
        yield api
    finally:
        await api.close()


def _inv(key: str = KEY) -> Invocation:
    ev = Event(id=new_event_id(), source="hook", subject="a", type="webhook", data={})
    return Invocation("s1", NS, "t1", {"a": ev}, key)


async def test_retry_deletes_the_failed_pods_and_reopens_the_workflow(
    kube: ApiKube, kube_api: KubeApi
) -> None:
    wf = failed_steps()
    await kube.create(wf, NS)
    bad_pod = pod_name(wf, wf["status"]["nodes"]["wf-3"])
    ok_pod = pod_name(wf, wf["status"]["nodes"]["wf-2"])
    for name in (bad_pod, ok_pod):  # the exit handler's pod is already gone
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
               "spec": {"containers": [{"name": "main", "image": "busybox"}]}}  # fmt: skip
        await kube.create(pod, NS)
    ctx = TriggerContext(kube=kube)
    config = ArgoWorkflowTriggerConfig.model_validate(
        {"operation": "retry", "args": ["-p", "message=again"],
         "source": {"resource": {"apiVersion": API, "kind": "Workflow",
                                 "metadata": {"name": "wf"}}}}
    )  # fmt: skip
    trigger = ArgoWorkflowTrigger(config, ctx)
    try:
        result = await trigger.execute(_inv())
        assert result.action == "retried"
        # with -p the reset step group runs again whole: both of its pods go, and the
        # exit handler's (already gone: not found is fine)
        notify = pod_name(wf, wf["status"]["nodes"]["wf-4"])
        assert result.detail["deletedPods"] == [ok_pod, bad_pod, notify]
        assert await kube.get("v1", "Pod", bad_pod, NS) is None
        assert await kube.get("v1", "Pod", ok_pod, NS) is None
        live = await kube.get(API, "Workflow", "wf", NS)
        assert live is not None
        assert "phase" not in live["status"]
        assert sorted(live["status"]["nodes"]) == ["wf", "wf-1"]  # -p: the group expands again
        assert live["spec"]["arguments"]["parameters"] == [{"name": "message", "value": "again"}]
        assert live["metadata"]["annotations"][ANNOTATION_RETRIED_BY] == KEY
        # a redelivered firing finds its own retry; another firing finds nothing to retry
        assert (await trigger.execute(_inv())).action == "already-retried"
        with pytest.raises(PermanentError, match="cannot retry a workflow in phase Unknown"):
            await trigger.execute(_inv("f" * 32))
    finally:
        await ctx.shared.aclose()
