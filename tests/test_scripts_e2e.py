"""``transform`` and ``filters.script`` through the real runner and a real nats-server.

Events published on the bus reach a SensorRunner whose dependencies transform them
(Lua, jq) and filter them with a Lua script; the objects created (FileKube, the
standalone no-cluster target) carry the transformed values, the traces say what each
script did, and a runaway script (Lua or jq) fails its own event while the others keep
flowing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.adapters.bus import Bus
from app.adapters.kube import FileKube
from app.compose.manifests import load_one
from app.kernel.events import Event, new_event_id
from sensors.triggers.base import TriggerContext
from tests.support.sensors import SensorHarness, eventually

TRANSFORM = """
if event.body.loop then while true do end end
if event.body.pattern then string.rep("a", 400):find(".-.-.-.-b") end
if event.body.bomb then
  local t = {}
  for i = 1, 1e9 do t[i] = string.rep("x", 4096) .. i end
end
event.body.model = string.upper(event.body.model)
return event
"""
FILTER = "return event.body.model ~= 'SKIP'"
JQ = 'if .body.loop then last(range(1e18)) else .body.model |= ascii_downcase + "-jq" end'


def _sensor() -> Any:
    def configmap(dep: str) -> dict[str, Any]:
        return {
            "name": f"make-{dep}",
            "conditions": dep,
            "k8s": {
                "operation": "create",
                "source": {
                    "resource": {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"generateName": f"{dep}-"},
                        "data": {"model": "none"},
                    }
                },
                "parameters": [
                    {"src": {"dependencyName": dep, "dataKey": "body.model"}, "dest": "data.model"}
                ],
            },
        }

    return load_one(
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Sensor",
            "metadata": {"name": "scripted", "namespace": "ns1"},
            "spec": {
                "dependencies": [
                    {
                        "name": "lua",
                        "eventSourceName": "hook",
                        "eventName": "lua",
                        "transform": {"script": TRANSFORM},
                        "filters": {"script": FILTER},
                    },
                    {
                        "name": "jq",
                        "eventSourceName": "hook",
                        "eventName": "jq",
                        "transform": {"jq": JQ},
                    },
                ],
                "triggers": [{"template": configmap("lua")}, {"template": configmap("jq")}],
            },
        }
    )


def _event(name: str, **body: Any) -> Event:
    return Event(id=new_event_id(), source="hook", subject=name, type="webhook",
                 data={"header": {}, "body": body})  # fmt: skip


def _models(kube: FileKube) -> list[str]:
    return sorted(o["data"]["model"] for o in kube.list_objects() if o["kind"] == "ConfigMap")


async def test_transform_and_script_filter_through_the_bus(bus: Bus, tmp_path: Path) -> None:
    kube = FileKube(tmp_path / "objects")
    h = SensorHarness(bus, TriggerContext(kube=kube))
    await h.start(_sensor())
    await bus.publish("default", _event("lua", model="resnet"))
    await bus.publish("default", _event("lua", model="skip"))  # SKIP after the transform
    await bus.publish("default", _event("jq", model="BERT"))
    await eventually(lambda: len(h.traces.recent()) == 3)
    await eventually(lambda: len(_models(kube)) == 2)
    assert _models(kube) == ["RESNET", "bert-jq"]
    traces = {(t.dependency, t.filtered): t for t in h.traces.recent()}
    fired = traces[("lua", False)]
    assert fired.transform == "script: applied"
    assert fired.filters == ["script: returned true"]
    assert fired.triggers[0].parameters[0]["value"] == "RESNET"
    skipped = traces[("lua", True)]
    assert skipped.filters == ["script: returned false (passes only on true)"]
    assert not skipped.triggers
    assert traces[("jq", False)].transform == "jq: applied"
    await h.stop()


async def test_a_runaway_transform_fails_its_event_and_others_keep_flowing(
    bus: Bus, tmp_path: Path
) -> None:
    kube = FileKube(tmp_path / "objects")
    h = SensorHarness(bus, TriggerContext(kube=kube))
    await h.start(_sensor(), ack_wait_seconds=30.0)  # no redelivery while a script runs
    await bus.publish("default", _event("lua", model="a", loop=True))
    await bus.publish("default", _event("lua", model="b", bomb=True))
    await bus.publish("default", _event("jq", model="C"))
    await bus.publish("default", _event("jq", model="E", loop=True))
    await bus.publish("default", _event("lua", model="f", pattern=True))
    await bus.publish("default", _event("lua", model="d"))
    await eventually(lambda: len(h.traces.recent()) == 6, timeout=30)
    await eventually(lambda: len(_models(kube)) == 2)
    assert _models(kube) == ["D", "c-jq"]
    failed = sorted((t.transform, t.error) for t in h.traces.recent() if t.outcome() == "failed")
    assert failed == [
        ("jq: failed", "transform jq: the jq program ran past its time limit of 2 s"),
        ("script: failed", "transform script: the script ran past its limit of "
         "10000000 instructions"),
        ("script: failed", "transform script: the script ran past its memory limit of "
         "33554432 bytes"),
        ("script: failed", "transform script: the script ran past its time limit of 2 s"),
    ]  # fmt: skip
    await h.stop()
    # failed events are acked (as Argo drops them), not redelivered forever
    info = await bus._jetstream().consumer_info("default", "ns1-scripted-lua")
    assert info.num_ack_pending == 0 and info.num_pending == 0
