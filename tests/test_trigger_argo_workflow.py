"""The ``argoWorkflow`` trigger against the fake Kubernetes API server, through the real
``kubernetes`` client transport (:class:`app.adapters.kube.ApiKube`): submit (idempotent under
redelivery), submit-from WorkflowTemplate / ClusterWorkflowTemplate / CronWorkflow,
resubmit, suspend, resume, terminate and stop; ``args``; and one run end to end through
the sensor runner over a real nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from app.adapters.bus import Bus
from app.adapters.kube import ApiKube
from app.adapters.metrics import Metrics
from app.compose.manifests import check_one, load_one
from app.kernel.errors import PermanentError
from app.kernel.events import Event, new_event_id
from app.kernel.settings import KubeSettings
from sensors.runner import RetryPolicy, SensorRunner
from sensors.spec import TriggerPolicy
from sensors.trace import TraceStore
from sensors.triggers.argo_workflow import ArgoWorkflowTrigger, ArgoWorkflowTriggerConfig
from sensors.triggers.base import Invocation, TriggerContext
from tests.fakekube.harness import KubeApi

NS = "argo-events"
API = "argoproj.io/v1alpha1"
KEY = "0123456789abcdef" * 2


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


def workflow(name: str = "", generate_name: str = "", **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name} if name else {"generateName": generate_name}
    return {
        "apiVersion": API,
        "kind": "Workflow",
        "metadata": meta,
        "spec": {
            "entrypoint": "main",
            "arguments": {"parameters": [{"name": "message", "value": "hello"}]},
            "templates": [{"name": "main", "container": {"image": "busybox"}}],
            **spec,
        },
    }


def make(ctx: TriggerContext, **cfg: Any) -> ArgoWorkflowTrigger:
    return ArgoWorkflowTrigger(ArgoWorkflowTriggerConfig.model_validate(cfg), ctx)


def inv(data: Any = None, key: str = KEY) -> Invocation:
    ev = Event(id=new_event_id(), source="hook", subject="a", type="webhook", data=data or {})
    return Invocation("s1", NS, "t1", {"a": ev}, key)


async def get_wf(kube: ApiKube, name: str) -> dict[str, Any]:
    obj = await kube.get(API, "Workflow", name, NS)
    assert obj is not None, name
    return obj


def workflow_names(kube_api: KubeApi) -> list[str]:
    doc = kube_api.kubectl_json("get", "workflows", "-n", NS)
    return sorted(item["metadata"]["name"] for item in doc["items"])


# --------------------------------------------------------------------------- submit


async def test_submit_creates_the_workflow_once_per_firing(
    ctx: TriggerContext, kube: ApiKube, kube_api: KubeApi
) -> None:
    dest = "spec.arguments.parameters.0.value"
    t = make(ctx, source={"resource": workflow(generate_name="run-")}, parameters=[
        {"src": {"dependencyName": "a", "dataKey": "body"}, "dest": dest}
    ])  # fmt: skip
    before = int(time.time() * 1000)
    first = await t.execute(inv({"body": "from-event"}))
    after = int(time.time() * 1000)
    assert first.action == "created"
    name = first.detail["name"]
    assert name == "run-" + KEY[:10]
    wf = await get_wf(kube, name)
    labels = wf["metadata"]["labels"]
    assert labels["events.argoproj.io/sensor"] == "s1"
    assert labels["events.argoproj.io/trigger"] == "t1"
    assert before <= int(labels["events.argoproj.io/action-timestamp"]) <= after  # ms
    assert wf["metadata"]["annotations"]["events.triggerfish.io/trigger-key"] == KEY
    assert wf["spec"]["arguments"]["parameters"] == [{"name": "message", "value": "from-event"}]
    # a redelivered firing: same key, no second Workflow
    again = await t.execute(inv({"body": "from-event"}))
    assert (again.action, again.detail["name"]) == ("already-exists", name)
    # another firing: another Workflow
    other = await t.execute(inv({"body": "x"}, key="f" * 32))
    assert other.action == "created"
    assert workflow_names(kube_api) == sorted([name, "run-" + "f" * 10])


async def test_submit_with_a_fixed_name_clashing_with_another_workflow_is_permanent(
    ctx: TriggerContext, kube: ApiKube
) -> None:
    await kube.create(
        {**workflow(name="fixed"), "metadata": {"name": "fixed", "namespace": NS}}, NS
    )
    t = make(ctx, source={"resource": workflow(name="fixed")})
    with pytest.raises(PermanentError, match="name clash"):
        await t.execute(inv())


async def test_submit_maps_args_onto_the_workflow(ctx: TriggerContext, kube: ApiKube) -> None:
    t = make(ctx, source={"resource": workflow(generate_name="run-")}, args=[
        "-p", "message=from-args", "--parameter=extra=1", "--serviceaccount", "wf-sa",
        "--entrypoint=other", "-l", "team=a,tier=b", "--priority", "3", "--generate-name", "g-",
    ])  # fmt: skip
    result = await t.execute(inv())
    assert result.detail["name"] == "g-" + KEY[:10]
    wf = await get_wf(kube, result.detail["name"])
    spec = wf["spec"]
    assert spec["arguments"]["parameters"] == [
        {"name": "message", "value": "from-args"},
        {"name": "extra", "value": "1"},
    ]
    assert (spec["serviceAccountName"], spec["entrypoint"], spec["priority"]) == (
        "wf-sa",
        "other",
        3,
    )
    assert wf["metadata"]["labels"]["team"] == "a" and wf["metadata"]["labels"]["tier"] == "b"


async def test_submit_needs_a_workflow(ctx: TriggerContext) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    with pytest.raises(PermanentError, match=r"submit needs an argoproj\.io/v1alpha1 Workflow"):
        make(ctx, source={"resource": cm})
    with pytest.raises(PermanentError, match="neither name nor generateName"):
        make(ctx, source={"inline": "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\n"})


async def test_submit_from_an_inline_json_source_into_its_own_namespace(
    ctx: TriggerContext, kube: ApiKube, kube_api: KubeApi
) -> None:
    kube_api.create_namespace("other")
    t = make(ctx, source={"inline": '{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",'
                                    ' "metadata": {"generateName": "j-", "namespace": "other"},'
                                    ' "spec": {"entrypoint": "main"}}'})  # fmt: skip
    result = await t.execute(inv())
    assert (result.detail["namespace"], result.detail["name"]) == ("other", "j-" + KEY[:10])
    assert await kube.get(API, "Workflow", "j-" + KEY[:10], "other") is not None


# --------------------------------------------------------------------------- submit-from


async def test_submit_from_a_workflow_template(ctx: TriggerContext, kube: ApiKube) -> None:
    await kube.create({"apiVersion": API, "kind": "WorkflowTemplate",
                       "metadata": {"name": "print", "namespace": NS},
                       "spec": {"entrypoint": "main", "templates": [{"name": "main"}]}},
                      NS)  # fmt: skip
    t = make(ctx, operation="submit-from", args=["-p", "message=hi"],
             source={"resource": {"apiVersion": API, "kind": "WorkflowTemplate",
                                  "metadata": {"name": "print"}}})  # fmt: skip
    result = await t.execute(inv())
    assert result.action == "created"
    wf = await get_wf(kube, result.detail["name"])
    assert wf["metadata"]["name"] == "print-" + KEY[:10]
    assert wf["spec"]["workflowTemplateRef"] == {"name": "print"}
    assert wf["spec"]["arguments"]["parameters"] == [{"name": "message", "value": "hi"}]
    assert wf["metadata"]["labels"]["workflows.argoproj.io/workflow-template"] == "print"
    assert wf["metadata"]["labels"]["events.argoproj.io/sensor"] == "s1"
    assert (await t.execute(inv())).action == "already-exists"


async def test_submit_from_a_cluster_workflow_template(ctx: TriggerContext, kube: ApiKube) -> None:
    await kube.create({"apiVersion": API, "kind": "ClusterWorkflowTemplate",
                       "metadata": {"name": "shared"}, "spec": {"entrypoint": "main"}},
                      "")  # fmt: skip
    t = make(ctx, operation="submit-from",
             source={"resource": {"apiVersion": API, "kind": "ClusterWorkflowTemplate",
                                  "metadata": {"name": "shared"}}})  # fmt: skip
    wf = await get_wf(kube, (await t.execute(inv())).detail["name"])
    assert wf["spec"]["workflowTemplateRef"] == {"name": "shared", "clusterScope": True}
    assert wf["metadata"]["labels"]["workflows.argoproj.io/cluster-workflow-template"] == "shared"


async def test_submit_from_a_cron_workflow(ctx: TriggerContext, kube: ApiKube) -> None:
    cron = await kube.create({
        "apiVersion": API, "kind": "CronWorkflow",
        "metadata": {"name": "nightly", "namespace": NS,
                     "labels": {"workflows.argoproj.io/controller-instanceid": "i1"}},
        "spec": {"schedules": ["0 1 * * *"],
                 "workflowMetadata": {"labels": {"team": "data"}, "annotations": {"a": "b"}},
                 "workflowSpec": {"entrypoint": "main", "templates": [{"name": "main"}]}},
    }, NS)  # fmt: skip
    t = make(ctx, operation="submit-from",
             source={"resource": {"apiVersion": API, "kind": "cronworkflow",
                                  "metadata": {"name": "nightly"}}})  # fmt: skip
    wf = await get_wf(kube, (await t.execute(inv())).detail["name"])
    assert wf["metadata"]["name"] == "nightly-" + KEY[:10]
    assert wf["spec"] == {"entrypoint": "main", "templates": [{"name": "main"}]}
    labels = wf["metadata"]["labels"]
    assert labels["workflows.argoproj.io/cron-workflow"] == "nightly"
    assert labels["workflows.argoproj.io/controller-instanceid"] == "i1"
    assert labels["team"] == "data" and wf["metadata"]["annotations"]["a"] == "b"
    assert "workflows.argoproj.io/scheduled-time" in wf["metadata"]["annotations"]
    [owner] = wf["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "CronWorkflow",
        "nightly",
        cron["metadata"]["uid"],
    )


async def test_submit_from_a_missing_template_or_a_wrong_kind_is_permanent(
    ctx: TriggerContext,
) -> None:
    t = make(ctx, operation="submit-from",
             source={"resource": {"apiVersion": API, "kind": "WorkflowTemplate",
                                  "metadata": {"name": "nope"}}})  # fmt: skip
    with pytest.raises(PermanentError, match=f"WorkflowTemplate {NS}/nope not found"):
        await t.execute(inv())
    with pytest.raises(PermanentError, match="submit-from needs a WorkflowTemplate"):
        make(ctx, operation="submit-from", source=named("w"))


# --------------------------------------------------------------------------- control


def named(name: str) -> dict[str, Any]:
    return {"resource": {"apiVersion": API, "kind": "Workflow", "metadata": {"name": name}}}


async def running(kube: ApiKube, name: str, **extra: Any) -> dict[str, Any]:
    obj = workflow(name=name)
    obj["metadata"]["namespace"] = NS
    obj.update(extra)
    return await kube.create(obj, NS)


async def test_suspend_and_resume(ctx: TriggerContext, kube: ApiKube) -> None:
    await running(kube, "w1", status={"phase": "Running", "nodes": {
        "w1": {"id": "w1", "type": "Steps", "phase": "Running"},
        "w1-1": {"id": "w1-1", "type": "Suspend", "phase": "Running",
                 "outputs": {"parameters": [
                     {"name": "approve", "valueFrom": {"supplied": {}, "default": "yes"}}]}},
        "w1-2": {"id": "w1-2", "type": "Suspend", "phase": "Succeeded"},
    }})  # fmt: skip
    suspend = make(ctx, operation="suspend", source=named("w1"))
    assert (await suspend.execute(inv())).action == "suspended"
    assert (await get_wf(kube, "w1"))["spec"]["suspend"] is True
    assert (await suspend.execute(inv())).action == "already-suspended"

    resume = make(ctx, operation="resume", source=named("w1"))
    result = await resume.execute(inv())
    assert result.action == "resumed" and result.detail["resumedNodes"] == ["w1-1"]
    wf = await get_wf(kube, "w1")
    assert "suspend" not in wf["spec"]
    nodes = wf["status"]["nodes"]
    assert nodes["w1-1"]["phase"] == "Succeeded" and nodes["w1-1"]["finishedAt"]
    assert nodes["w1-1"]["outputs"]["parameters"] == [{"name": "approve", "value": "yes"}]
    assert nodes["w1"]["phase"] == "Running" and nodes["w1-2"]["phase"] == "Succeeded"
    assert (await resume.execute(inv())).action == "not-suspended"


async def test_suspend_of_a_completed_workflow_is_permanent(
    ctx: TriggerContext, kube: ApiKube
) -> None:
    obj = workflow(name="done")
    obj["metadata"].update(namespace=NS, labels={"workflows.argoproj.io/completed": "true"})
    await kube.create(obj, NS)
    with pytest.raises(PermanentError, match="cannot suspend completed Workflow"):
        await make(ctx, operation="suspend", source=named("done")).execute(inv())


@pytest.mark.parametrize(("operation", "strategy"), [("terminate", "Terminate"), ("stop", "Stop")])
async def test_terminate_and_stop_set_the_shutdown_strategy(
    ctx: TriggerContext, kube: ApiKube, operation: str, strategy: str
) -> None:
    await running(kube, "w2", status={"phase": "Running"})
    t = make(ctx, operation=operation, source=named("w2"))
    result = await t.execute(inv())
    assert result.action == ("terminated" if operation == "terminate" else "stopped")
    assert (await get_wf(kube, "w2"))["spec"]["shutdown"] == strategy
    assert (await t.execute(inv())).action.startswith("already-")


async def test_shutdown_of_a_completed_workflow_is_permanent(
    ctx: TriggerContext, kube: ApiKube
) -> None:
    await running(kube, "w3", status={"phase": "Succeeded"})
    with pytest.raises(PermanentError, match="completed Workflow"):
        await make(ctx, operation="terminate", source=named("w3")).execute(inv())


async def test_control_of_a_missing_workflow_is_permanent(ctx: TriggerContext) -> None:
    with pytest.raises(PermanentError, match=f"Workflow {NS}/ghost not found"):
        await make(ctx, operation="stop", source=named("ghost")).execute(inv())


async def test_name_can_come_from_the_event(ctx: TriggerContext, kube: ApiKube) -> None:
    await running(kube, "from-event", status={"phase": "Running"})
    t = make(ctx, operation="suspend", source=named("placeholder"), parameters=[
        {"src": {"dependencyName": "a", "dataKey": "wf"}, "dest": "metadata.name"}])  # fmt: skip
    assert (await t.execute(inv({"wf": "from-event"}))).detail["name"] == "from-event"


async def test_resubmit_creates_a_copy(ctx: TriggerContext, kube: ApiKube) -> None:
    await running(kube, "orig", spec={**workflow()["spec"], "shutdown": "Stop",
                                      "activeDeadlineSeconds": 0},
                  status={"phase": "Failed"})  # fmt: skip
    live = await get_wf(kube, "orig")
    live["metadata"]["labels"] = {"workflows.argoproj.io/completed": "true", "team": "a"}
    await kube.update(live, NS)
    t = make(ctx, operation="resubmit", source=named("orig"), args=["-p", "message=again"])
    result = await t.execute(inv())
    assert result.detail["name"] == "orig-" + KEY[:10]
    wf = await get_wf(kube, result.detail["name"])
    labels = wf["metadata"]["labels"]
    assert labels["workflows.argoproj.io/resubmitted-from-workflow"] == "orig"
    assert labels["team"] == "a" and "workflows.argoproj.io/completed" not in labels
    assert "shutdown" not in wf["spec"] and "activeDeadlineSeconds" not in wf["spec"]
    assert wf["spec"]["arguments"]["parameters"] == [{"name": "message", "value": "again"}]
    assert "status" not in wf or not wf["status"].get("phase")


# --------------------------------------------------------------------------- load time


def sensor_doc(argo: dict[str, Any], **trigger_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s1", "namespace": NS},
        "spec": {
            "dependencies": [{"name": "a", "eventSourceName": "hook", "eventName": "a"}],
            "triggers": [{"template": {"name": "wf", "argoWorkflow": argo}, **trigger_extra}],
        },
    }


@pytest.mark.parametrize(
    ("argo", "line"),
    [
        ({"operation": "submit", "args": ["--watch"], "source": named("x")},
         "args: '--watch' is not supported for operation submit"),
        ({"operation": "suspend", "args": ["-p", "a=b"], "source": named("x")},
         "args: '-p' is not supported for operation suspend"),
        ({"operation": "retry", "args": ["--node-field-selector", "phase"], "source": named("x")},
         "args: --node-field-selector: invalid field selector term 'phase'"),
        ({"operation": "retry", "args": ["--restart-successful=maybe"], "source": named("x")},
         "args: --restart-successful expects true or false"),
        ({"operation": "retry", "args": ["--entrypoint", "x"], "source": named("x")},
         "args: '--entrypoint' is not supported for operation retry"),
        ({"operation": "submit", "args": ["--node-field-selector=p=a"], "source": named("x")},
         "args: '--node-field-selector' is not supported for operation submit"),
        ({"operation": "submit-from", "args": ["--restart-successful"], "source": named("x")},
         "args: '--restart-successful' is not supported for operation submit-from"),
        ({"source": {"git": {"url": "u", "cloneDirectory": "/d", "filePath": "f"}}},
         "spec.triggers[0].template.argoWorkflow.source.git: not supported yet"),
        ({"operation": "submit", "args": ["-p", "novalue"], "source": named("x")},
         "args: -p expects NAME=VALUE"),
        ({"operation": "launch", "source": named("x")}, "operation"),
    ],
)  # fmt: skip
def test_load_time_errors_name_the_field(argo: dict[str, Any], line: str) -> None:
    _obj, lines = check_one(sensor_doc(argo))
    assert any(line in x for x in lines), lines


def test_every_supported_operation_loads() -> None:
    ops = (
        "",
        "submit",
        "submit-from",
        "resubmit",
        "retry",
        "suspend",
        "resume",
        "terminate",
        "stop",
    )
    for op in ops:
        source = named("x")
        if op == "submit-from":
            source["resource"]["kind"] = "WorkflowTemplate"
        _obj, lines = check_one(sensor_doc({"operation": op, "source": source}))
        assert lines == [], (op, lines)


def test_a_source_the_operation_cannot_use_fails_validation() -> None:
    """What ``run`` refuses when it builds the trigger, ``validate`` refuses too."""
    _obj, lines = check_one(sensor_doc({"operation": "submit-from", "source": named("x")}))
    assert lines == [
        "spec.triggers[0].template.argoWorkflow.source: submit-from needs a WorkflowTemplate, "
        "ClusterWorkflowTemplate or CronWorkflow, got kind 'Workflow'"
    ]


# --------------------------------------------------------------------------- end to end


async def test_runner_submits_once_under_redelivery(
    bus: Bus, ctx: TriggerContext, kube_api: KubeApi
) -> None:
    s = load_one(sensor_doc({
        "source": {"resource": workflow(generate_name="hook-")},
        "parameters": [{"src": {"dependencyName": "a", "dataKey": "body.msg"},
                        "dest": "spec.arguments.parameters.0.value"}],
    }))  # fmt: skip
    traces = TraceStore()
    runner = SensorRunner(s, bus, ctx, traces, Metrics(), concurrency=4,
                          default_retry=RetryPolicy(steps=2, duration_seconds=0.01),
                          ack_wait_seconds=5.0)  # fmt: skip
    ready = asyncio.Event()
    task = asyncio.create_task(runner.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        eid = new_event_id()
        ev = Event(id=eid, source="hook", subject="a", type="webhook", data={"body": {"msg": "m"}})
        # the same event id published twice (outside the dedup window) is delivered twice
        await bus.publish_raw("default.hook.a", ev.to_json(), "x1")
        await bus.publish_raw("default.hook.a", ev.to_json(), "x2")
        for _ in range(500):
            if len(traces.recent()) == 2:
                break
            await asyncio.sleep(0.02)
        actions = sorted(t.triggers[0].action for t in traces.recent())
        assert actions == ["already-exists", "created"]
        [name] = workflow_names(kube_api)
        assert name.startswith("hook-")
        wf = kube_api.kubectl_json("get", "workflow", name, "-n", NS)
        assert wf["spec"]["arguments"]["parameters"][0]["value"] == "m"
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


# --------------------------------------------------------------------------- results


def ref(wf: dict[str, Any]) -> dict[str, Any]:
    meta = wf["metadata"]
    return {"kind": "Workflow", "namespace": NS, "name": meta["name"], "uid": meta["uid"]}


NAME_FROM_EVENT = [{"src": {"dependencyName": "a", "dataKey": "wf"}, "dest": "metadata.name"}]


@pytest.mark.parametrize(
    ("operation", "action"),
    [("suspend", "suspended"), ("resume", "not-suspended"), ("terminate", "terminated"),
     ("stop", "stopped"), ("resubmit", "created")],
)  # fmt: skip
async def test_every_operation_reports_the_object_and_its_parameters(
    ctx: TriggerContext, kube: ApiKube, operation: str, action: str
) -> None:
    """The result names the Workflow acted on (kind, namespace, name, uid) and carries the
    parameter records of the firing, whatever the operation, also when redelivered."""
    await running(kube, "from-event", status={"phase": "Running"})
    t = make(ctx, operation=operation, source=named("placeholder"), parameters=NAME_FROM_EVENT)
    result = await t.execute(inv({"wf": "from-event"}))
    assert result.action == action
    assert [r["dest"] for r in result.parameters] == ["metadata.name"]
    if operation != "resubmit":
        return
    made = await get_wf(kube, result.detail["name"])
    assert result.detail == ref(made)
    again = await t.execute(inv({"wf": "from-event"}))
    assert (again.action, again.detail) == ("already-exists", ref(made))
    assert [r["dest"] for r in again.parameters] == ["metadata.name"]
    with pytest.raises(PermanentError) as clash:
        await t.execute(inv({"wf": "from-event"}, key=KEY[:10] + "f" * 22))
    assert str(clash.value) == (
        f"Workflow {NS}/{made['metadata']['name']} exists but was not created for these "
        "events (name clash)"
    )


async def test_submit_from_reports_the_workflow_and_its_parameters(
    ctx: TriggerContext, kube: ApiKube
) -> None:
    await kube.create({"apiVersion": API, "kind": "WorkflowTemplate",
                       "metadata": {"name": "print", "namespace": NS},
                       "spec": {"entrypoint": "main"}}, NS)  # fmt: skip
    t = make(ctx, operation="submit-from", parameters=NAME_FROM_EVENT,
             source={"resource": {"apiVersion": API, "kind": "WorkflowTemplate",
                                  "metadata": {"name": "placeholder"}}})  # fmt: skip
    result = await t.execute(inv({"wf": "print"}))
    assert result.detail == ref(await get_wf(kube, "print-" + KEY[:10]))
    assert [r["dest"] for r in result.parameters] == ["metadata.name"]


async def test_the_source_is_read_with_the_firings_namespace(
    ctx: TriggerContext, kube: ApiKube
) -> None:
    """A configmap source is read in the Sensor's namespace, through the trigger's API."""
    await kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "wf-cm", "namespace": NS},
                       "data": {"wf": yaml.safe_dump(workflow(generate_name="cm-"))}},
                      NS)  # fmt: skip
    t = make(ctx, source={"configmap": {"name": "wf-cm", "key": "wf"}})
    result = await t.execute(inv())
    assert (result.action, result.detail["name"]) == ("created", "cm-" + KEY[:10])


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"apiVersion": API, "metadata": {"name": "x"}},
         f"argoWorkflow.source: submit needs an {API} Workflow, got '{API}' ''"),
        ({"apiVersion": "argoproj.io/v1", "kind": "Workflow", "metadata": {"name": "x"}},
         f"argoWorkflow.source: submit needs an {API} Workflow, got 'argoproj.io/v1' 'Workflow'"),
    ],
)  # fmt: skip
def test_submit_refuses_anything_but_a_workflow_naming_what_it_got(
    ctx: TriggerContext, obj: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError) as e:
        make(ctx, source={"resource": obj})
    assert str(e.value) == message


async def test_generate_name_may_come_from_args_alone(ctx: TriggerContext, kube: ApiKube) -> None:
    bare = {"apiVersion": API, "kind": "Workflow", "metadata": {}, "spec": {"entrypoint": "m"}}
    result = await make(ctx, source={"resource": bare}, args=["--generate-name", "a-"]).execute(
        inv()
    )
    assert result.detail["name"] == "a-" + KEY[:10]


def test_control_needs_a_name(ctx: TriggerContext) -> None:
    nameless = {"resource": {"apiVersion": API, "kind": "Workflow", "metadata": {}}}
    with pytest.raises(PermanentError) as e:
        make(ctx, operation="suspend", source=nameless)
    assert str(e.value) == "argoWorkflow.source: operation suspend needs metadata.name"


async def test_policy_waits_for_the_labels_of_the_created_workflow(
    kube: ApiKube,
) -> None:
    """``policy.k8s`` reads the created Workflow back through the API: labels it carries
    match at once; labels it never gets time out (or fail, with errorOnBackoffTimeout)."""
    template = workflow(generate_name="p-")
    template["metadata"]["labels"] = {"stage": "ready"}

    async def fire(labels: dict[str, str], error: bool, key: str) -> Any:
        policy = TriggerPolicy.model_validate({"k8s": {
            "labels": labels, "errorOnBackoffTimeout": error,
            "backoff": {"steps": 2, "duration": "10ms"}}})  # fmt: skip
        c = TriggerContext(kube=kube, policy=policy)
        try:
            return await make(c, source={"resource": template}).execute(inv(key=key))
        finally:
            await c.shared.aclose()

    matched = await fire({"stage": "ready"}, False, "a" * 32)
    assert matched.action == "created"
    assert (matched.detail["policy"], matched.detail["policyAttempts"]) == ("labels matched", 1)
    assert matched.detail["name"] == "p-" + "a" * 10
    timed_out = await fire({"stage": "done"}, False, "b" * 32)
    assert (timed_out.detail["policy"], timed_out.detail["policyAttempts"]) == ("timed out", 2)
    with pytest.raises(PermanentError, match=f"Workflow {NS}/p-cccccccccc did not get labels"):
        await fire({"stage": "done"}, True, "c" * 32)
