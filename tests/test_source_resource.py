"""The resource event source against the fake Kubernetes API and the real bus.

Changes are made through the real API client (``ApiKube``) over HTTP; events are read
back from the JetStream stream with nats-py. Every test ends its changes with a marker
object and waits for the marker's event: the watch delivers in order, so once the marker
is on the bus, anything else would be too, and the whole list can be compared exactly
(nothing missing, nothing doubled) without waiting for time to pass.

Covered: Argo's event data for ADD/UPDATE/DELETE, ``eventTypes``, each filter
(``labels`` as the server-side selector, ``fields``, ``prefix``, ``createdBy``,
``afterStart``), the watch ending normally, expiring (410) with changes made while the
source was disconnected, the API failing for a while, bookmarks moving the resume point
past changes the selector hides, a bus that refuses publishes, and the clear errors for
a missing cluster, an unknown resource and bad filter fields.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml

from app.adapters.bus import Bus
from app.adapters.kube import ApiKube
from app.adapters.natsserver import EmbeddedNats
from app.compose.manifests import ManifestInvalid, load_one
from app.kernel.errors import BusUnavailableError, ConfigError
from app.kernel.events import Event
from app.kernel.settings import KubeSettings
from eventsources.resource import ResourceConfig, ResourceSource
from tests.fakekube.harness import KubeApi
from tests.support.brokers import CountingPublisher, Stream, eventually_long, running
from tests.support.brokers import source_context as broker_context
from tests.support.sources import CountingMetrics

NS = "argo-events"
SOURCE = "resource-source"
WF = "argoproj.io/v1alpha1"
WORKFLOWS = f"/apis/argoproj.io/v1alpha1/namespaces/{NS}/workflows"
EXAMPLE = Path(__file__).resolve().parents[2] / "shared/argo-examples/event-sources/resource.yaml"


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
def stream(nats_server: EmbeddedNats) -> Stream:
    return Stream(nats_server.url)


def workflows(**overrides: Any) -> dict[str, Any]:
    raw = {
        "namespace": NS,
        "group": "argoproj.io",
        "version": "v1alpha1",
        "resource": "workflows",
        "eventTypes": ["ADD", "UPDATE", "DELETE"],
    }
    raw.update(overrides)
    return raw


def source(
    publish: Any,
    kube: ApiKube | None,
    events: dict[str, dict[str, Any]],
    metrics: CountingMetrics | None = None,
) -> ResourceSource:
    configs = {name: ResourceConfig.model_validate(raw) for name, raw in events.items()}
    ctx = broker_context(publish, metrics=metrics)
    ctx.kube = kube
    return ResourceSource(SOURCE, NS, configs, ctx)


async def create(
    kube: ApiKube, name: str, labels: dict[str, str] | None = None, phase: str = ""
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": WF,
        "kind": "Workflow",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"entrypoint": "main"},
    }
    if phase:
        obj["status"] = {"phase": phase}
    return await kube.create(obj, NS)


async def patch(kube: ApiKube, name: str, body: dict[str, Any]) -> dict[str, Any]:
    meta = {**body.get("metadata", {}), "name": name}
    obj = {"apiVersion": WF, "kind": "Workflow", **body, "metadata": meta}
    return await kube.patch(obj, NS, "merge")


async def delete(kube: ApiKube, name: str) -> None:
    await kube.delete(WF, "Workflow", name, NS)


async def until_marker(stream: Stream, marker: str) -> list[dict[str, Any]]:
    """Every stored event, once the event about object ``marker`` is among them."""

    async def seen() -> bool:
        return any(e["data"]["body"]["metadata"]["name"] == marker for e in await stream.events())

    await eventually_long(seen, f"event for {marker}")
    return await stream.events()


async def until_seen(stream: Stream, *wanted: tuple[str, str, str]) -> list[dict[str, Any]]:
    """Every stored event, once each ``(event name, type, object name)`` is among them
    (one marker per event name: each event name has a watch of its own)."""

    async def seen() -> bool:
        return set(wanted) <= set(triples(await stream.events()))

    await eventually_long(seen, f"events {wanted}")
    return await stream.events()


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["data"]["type"], e["data"]["body"]["metadata"]["name"]) for e in events]


def triples(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["subject"], *t) for e, t in zip(events, summary(events), strict=True)]


async def test_add_update_delete_carry_argos_event_data(
    kube: ApiKube, bus: Bus, stream: Stream
) -> None:
    metrics = CountingMetrics()
    src = source(CountingPublisher(bus), kube, {"wf": workflows(metadata={"team": "ml"})}, metrics)
    async with running(src):
        created = await create(kube, "train-1", phase="Running")
        updated = await patch(kube, "train-1", {"status": {"phase": "Succeeded"}})
        await delete(kube, "train-1")
        await create(kube, "marker")
        events = await until_marker(stream, "marker")
    assert summary(events) == [
        ("ADD", "train-1"), ("UPDATE", "train-1"), ("DELETE", "train-1"), ("ADD", "marker"),
    ]  # fmt: skip
    add, update, remove = (e["data"] for e in events[:3])
    assert set(add) == {"type", "body", "oldBody", "group", "version", "resource", "metadata"}
    assert (add["group"], add["version"], add["resource"]) == (
        "argoproj.io",
        "v1alpha1",
        "workflows",
    )
    assert add["metadata"] == {"team": "ml"}
    assert add["oldBody"] is None and remove["oldBody"] is None
    assert add["body"]["metadata"]["uid"] == created["metadata"]["uid"]
    assert add["body"]["kind"] == "Workflow" and add["body"]["apiVersion"] == WF
    assert update["body"]["status"]["phase"] == "Succeeded"
    assert update["body"]["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
    assert update["oldBody"]["status"]["phase"] == "Running"
    assert remove["body"]["metadata"]["name"] == "train-1"
    first = events[0]
    assert (first["type"], first["source"], first["subject"]) == ("resource", SOURCE, "wf")
    assert len({e["id"] for e in events}) == len(events)
    assert metrics.counts["sent", "wf"] == 4


async def test_event_types_pick_what_is_sent(kube: ApiKube, bus: Bus, stream: Stream) -> None:
    events_of = {"upd": workflows(eventTypes=["UPDATE"]), "del": workflows(eventTypes=["DELETE"])}
    async with running(source(CountingPublisher(bus), kube, events_of)):
        await create(kube, "a")
        await patch(kube, "a", {"metadata": {"labels": {"x": "1"}}})
        await delete(kube, "a")
        await create(kube, "marker")
        await patch(kube, "marker", {"metadata": {"labels": {"x": "1"}}})
        await delete(kube, "marker")
        events = await until_seen(stream, ("upd", "UPDATE", "marker"), ("del", "DELETE", "marker"))
    assert sorted(triples(events)) == [
        ("del", "DELETE", "a"), ("del", "DELETE", "marker"),
        ("upd", "UPDATE", "a"), ("upd", "UPDATE", "marker"),
    ]  # fmt: skip
    assert all(e["data"]["metadata"] == {} for e in events)  # none configured


async def test_label_filter_is_the_servers_label_selector(
    kube: ApiKube, kube_api: KubeApi, bus: Bus, stream: Stream
) -> None:
    labels = [
        {"key": "stage", "operation": "in", "value": "train,tune"},
        {"key": "app", "value": "ml"},
    ]
    src = source(CountingPublisher(bus), kube, {"wf": workflows(filter={"labels": labels})})
    async with running(src):
        await create(kube, "other-app", {"app": "web", "stage": "train"})
        await create(kube, "no-stage", {"app": "ml"})
        await create(kube, "trained", {"app": "ml", "stage": "train"})
        await create(kube, "marker", {"app": "ml", "stage": "tune"})
        events = await until_marker(stream, "marker")
    assert summary(events) == [("ADD", "trained"), ("ADD", "marker")]
    gets = [r for r in kube_api.requests() if r["path"] == WORKFLOWS and r["method"] == "GET"]
    selectors = {parse_qs(r["query"])["labelSelector"][0] for r in gets}
    assert selectors == {"app==ml,stage in (train,tune)"}, gets


async def test_fields_filter_matches_paths_in_the_object(
    kube: ApiKube, bus: Bus, stream: Stream
) -> None:
    events_of = {
        "done": workflows(
            eventTypes=["ADD", "UPDATE"],
            filter={"fields": [{"key": "status.phase", "operation": "==", "value": "^Succeeded$"}]},
        ),
        "not-running": workflows(
            eventTypes=["ADD"],
            filter={"fields": [{"key": "status.phase", "operation": "!=", "value": "Running"}]},
        ),
    }
    async with running(source(CountingPublisher(bus), kube, events_of)):
        await create(kube, "a", phase="Running")
        await patch(kube, "a", {"status": {"phase": "Succeeded"}})
        await create(kube, "b", phase="Failed")
        await create(kube, "c")  # no status.phase at all: a field filter needs the field
        await create(kube, "marker", phase="Succeeded")
        events = await until_seen(
            stream, ("done", "ADD", "marker"), ("not-running", "ADD", "marker")
        )
    assert sorted(triples(events)) == sorted([
        ("done", "UPDATE", "a"), ("done", "ADD", "marker"),
        ("not-running", "ADD", "b"), ("not-running", "ADD", "marker"),
    ])  # fmt: skip


async def test_prefix_and_created_by(kube: ApiKube, bus: Bus, stream: Stream) -> None:
    events_of = {
        "prefixed": workflows(eventTypes=["ADD"], filter={"prefix": "train-"}),
        "old-only": workflows(eventTypes=["ADD"], filter={"createdBy": "2019-04-06T12:52:11Z"}),
        "until-2100": workflows(eventTypes=["ADD"], filter={"createdBy": "2100-01-01T00:00:00Z"}),
    }
    metrics = CountingMetrics()
    async with running(source(CountingPublisher(bus), kube, events_of, metrics)):
        await create(kube, "eval-1")
        await create(kube, "train-marker")
        events = await until_seen(
            stream, ("prefixed", "ADD", "train-marker"), ("until-2100", "ADD", "train-marker")
        )
        await eventually_long(lambda: metrics.counts["filtered", "old-only"] == 2)
    assert sorted(triples(events)) == [
        ("prefixed", "ADD", "train-marker"),
        ("until-2100", "ADD", "eval-1"), ("until-2100", "ADD", "train-marker"),
    ]  # fmt: skip
    assert metrics.counts["filtered", "old-only"] == 2
    assert metrics.counts["filtered", "prefixed"] == 1


async def test_after_start_skips_what_existed_before(
    kube: ApiKube, bus: Bus, stream: Stream
) -> None:
    await create(kube, "existing", phase="Running")
    events_of = {
        "after": workflows(filter={"afterStart": True}),
        "all": workflows(eventTypes=["ADD"]),
    }
    async with running(source(CountingPublisher(bus), kube, events_of)):
        await patch(kube, "existing", {"status": {"phase": "Succeeded"}})
        await create(kube, "new")
        await create(kube, "marker")
        events = await until_seen(stream, ("after", "ADD", "marker"), ("all", "ADD", "marker"))
    assert sorted(triples(events)) == sorted([
        ("after", "UPDATE", "existing"), ("after", "ADD", "new"), ("after", "ADD", "marker"),
        ("all", "ADD", "existing"), ("all", "ADD", "new"), ("all", "ADD", "marker"),
    ])  # fmt: skip


async def test_expired_watch_lists_again_and_sends_only_real_changes(
    kube: ApiKube, kube_api: KubeApi, bus: Bus, stream: Stream
) -> None:
    for name in ("kept", "changed", "removed"):
        await create(kube, name, phase="Running")
    async with running(source(CountingPublisher(bus), kube, {"wf": workflows()})):
        await create(kube, "seen-live")
        await until_marker(stream, "seen-live")
        # The next list is held, so these changes happen while nothing watches.
        kube_api.fault("GET", WORKFLOWS, hold=True)
        assert kube_api.expire_watches() == 1
        await eventually_long(lambda: kube_api.faults()["rules"][0]["held"] == 1)
        await patch(kube, "changed", {"status": {"phase": "Succeeded"}})
        await delete(kube, "removed")
        await create(kube, "added-meanwhile")
        assert kube_api.release() == 1
        # watching again after the list: later changes arrive once
        await patch(kube, "added-meanwhile", {"status": {"phase": "Running"}})
        await create(kube, "marker")
        events = await until_marker(stream, "marker")
    assert summary(events) == [
        ("ADD", "kept"), ("ADD", "changed"), ("ADD", "removed"), ("ADD", "seen-live"),
        ("UPDATE", "changed"), ("ADD", "added-meanwhile"), ("DELETE", "removed"),
        ("UPDATE", "added-meanwhile"), ("ADD", "marker"),
    ]  # fmt: skip
    changed = events[4]["data"]
    assert changed["oldBody"]["status"]["phase"] == "Running"
    assert changed["body"]["status"]["phase"] == "Succeeded"
    assert events[6]["data"]["body"]["metadata"]["name"] == "removed"


async def test_watch_ended_or_api_failing_resumes_without_loss_or_repeat(
    kube: ApiKube, kube_api: KubeApi, bus: Bus, stream: Stream
) -> None:
    async with running(source(CountingPublisher(bus), kube, {"wf": workflows()})):
        await create(kube, "one")
        await until_marker(stream, "one")
        # the server ends the watch; the next two attempts fail; changes go on meanwhile
        kube_api.fault("GET", WORKFLOWS, status=503, times=2)
        assert kube_api.close_watches() == 1
        await patch(kube, "one", {"status": {"phase": "Running"}})
        await create(kube, "two")
        await eventually_long(lambda: kube_api.faults()["rules"][0]["hits"] == 2)
        await patch(kube, "two", {"status": {"phase": "Running"}})
        await create(kube, "marker")
        events = await until_marker(stream, "marker")
    assert summary(events) == [
        ("ADD", "one"), ("UPDATE", "one"), ("ADD", "two"), ("UPDATE", "two"), ("ADD", "marker"),
    ]  # fmt: skip
    lists = [r for r in kube_api.requests() if r["path"] == WORKFLOWS and r["method"] == "GET"
             and "watch=true" not in r["query"]]  # fmt: skip
    assert len(lists) == 1  # resumed from its resourceVersion: no second list


async def test_a_410_answer_to_the_watch_request_lists_again(
    kube: ApiKube, kube_api: KubeApi, bus: Bus, stream: Stream
) -> None:
    src = source(CountingPublisher(bus), kube, {"wf": workflows()})
    async with running(src):
        await create(kube, "one")
        await until_marker(stream, "one")
        kube_api.fault("GET", WORKFLOWS, status=410, reason="Expired", times=1)
        assert kube_api.close_watches() == 1
        await eventually_long(lambda: kube_api.faults()["rules"][0]["hits"] == 1)
        await patch(kube, "one", {"status": {"phase": "Running"}})
        await create(kube, "marker")
        events = await until_marker(stream, "marker")
        assert src.ready()
    assert summary(events) == [("ADD", "one"), ("UPDATE", "one"), ("ADD", "marker")]
    lists = [r for r in kube_api.requests() if r["path"] == WORKFLOWS and r["method"] == "GET"
             and "watch=true" not in r["query"]]  # fmt: skip
    assert len(lists) == 2  # the first, and the one after the 410


async def test_every_namespace_and_cluster_scoped_resources(
    kube: ApiKube, kube_api: KubeApi, bus: Bus, stream: Stream
) -> None:
    kube_api.create_namespace("team-b")
    events_of = {
        "cms": {"group": "", "version": "v1", "resource": "configmaps", "eventTypes": ["ADD"],
                "filter": {"prefix": "cm-"}},
        "nss": {"version": "v1", "resource": "namespaces", "namespace": NS,
                "eventTypes": ["ADD"], "filter": {"afterStart": True}},
    }  # fmt: skip
    async with running(source(CountingPublisher(bus), kube, events_of)):
        for ns in (NS, "team-b"):
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{ns}"}}
            await kube.create(body, ns)
        await kube.create({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": "marker"}}, "")  # fmt: skip
        events = await until_seen(stream, ("nss", "ADD", "marker"))
        await until_seen(stream, ("cms", "ADD", "cm-team-b"))
        events = await stream.events()
    got = sorted((*t, e["data"]["body"]["metadata"].get("namespace", ""))
                 for t, e in zip(triples(events), events, strict=True))  # fmt: skip
    assert got == [
        ("cms", "ADD", f"cm-{NS}", NS), ("cms", "ADD", "cm-team-b", "team-b"),
        ("nss", "ADD", "marker", ""),
    ]  # fmt: skip


async def test_bookmark_moves_the_resume_point_past_hidden_changes(
    kube: ApiKube, kube_api: KubeApi, bus: Bus, stream: Stream
) -> None:
    labels = [{"key": "watched", "value": "yes"}]
    src = source(CountingPublisher(bus), kube, {"wf": workflows(filter={"labels": labels})})
    async with running(src):
        await create(kube, "first", {"watched": "yes"})
        await until_marker(stream, "first")
        for i in range(3):  # changes this watch never sees (the selector hides them)
            await create(kube, f"hidden-{i}")
        now = kube_api.state()["resourceVersion"]
        kube_api.compact()  # history up to now is gone: only `now` can be resumed from
        assert kube_api.bookmark_watches() == 1
        assert kube_api.close_watches() == 1
        await create(kube, "marker", {"watched": "yes"})
        events = await until_marker(stream, "marker")
    assert summary(events) == [("ADD", "first"), ("ADD", "marker")]
    gets = [r for r in kube_api.requests() if r["path"] == WORKFLOWS and r["method"] == "GET"]
    assert sum("watch=true" not in r["query"] for r in gets) == 1  # no list after the bookmark
    watches = [r["query"] for r in gets if "watch=true" in r["query"]]
    assert "allowWatchBookmarks=true" in watches[0]
    assert f"resourceVersion={now}&" in watches[-1] + "&"


class FlakyPublisher(CountingPublisher):
    """Refuses the first ``fail`` publishes as an unavailable bus would."""

    def __init__(self, bus: Bus, fail: int) -> None:
        super().__init__(bus)
        self.fail = fail
        self.attempts: list[str] = []

    async def __call__(self, event: Event) -> None:
        self.attempts.append(event.id)
        if self.fail > 0:
            self.fail -= 1
            raise BusUnavailableError("bus down (test)")
        await super().__call__(event)


async def test_refused_publish_is_retried_with_the_same_id_before_moving_on(
    kube: ApiKube, bus: Bus, stream: Stream
) -> None:
    publisher = FlakyPublisher(bus, fail=2)
    metrics = CountingMetrics()
    async with running(source(publisher, kube, {"wf": workflows()}, metrics)):
        await create(kube, "a")
        await create(kube, "marker")
        events = await until_marker(stream, "marker")
    assert summary(events) == [("ADD", "a"), ("ADD", "marker")]
    assert publisher.attempts[:3] == [events[0]["id"]] * 3
    assert metrics.counts["failed", "wf"] == 2 and metrics.counts["sent", "wf"] == 2


async def test_event_id_is_deterministic_per_object_version_and_type(
    kube: ApiKube, bus: Bus, stream: Stream
) -> None:
    await create(kube, "a")
    for _ in range(2):  # a restarted source lists "a" again: same id, the bus drops it
        async with running(source(CountingPublisher(bus), kube, {"wf": workflows()})):
            await until_marker(stream, "a")
    assert summary(await stream.events()) == [("ADD", "a")]


async def test_two_replicas_store_each_change_once(kube: ApiKube, bus: Bus, stream: Stream) -> None:
    """Active-active replicas of one EventSource give a change the same id, so the bus's
    dedup window keeps one copy (the source needs no Lease)."""
    first, second = CountingPublisher(bus), CountingPublisher(bus)
    async with (
        running(source(first, kube, {"wf": workflows()})),
        running(source(second, kube, {"wf": workflows()})),
    ):
        await create(kube, "a")
        await patch(kube, "a", {"status": {"phase": "Running"}})
        await create(kube, "marker")
        events = await until_marker(stream, "marker")
        marker_id = events[-1]["id"]
        await eventually_long(lambda: marker_id in first.stored and marker_id in second.stored)
        events = await stream.events()
    assert first.stored == second.stored == [e["id"] for e in events]
    assert summary(events) == [("ADD", "a"), ("UPDATE", "a"), ("ADD", "marker")]


async def test_without_a_cluster_or_with_an_unknown_resource_it_fails_clearly(
    kube: ApiKube, bus: Bus
) -> None:
    with pytest.raises(ConfigError) as no_cluster:
        await source(CountingPublisher(bus), None, {"wf": workflows()}).run()
    assert "spec.resource.wf" in str(no_cluster.value)
    assert "needs a Kubernetes API" in str(no_cluster.value)
    with pytest.raises(ConfigError) as unknown:
        await source(CountingPublisher(bus), kube, {"wf": workflows(resource="nosuch")}).run()
    assert "nosuch" in str(unknown.value) and "spec.resource.wf" in str(unknown.value)


def _es(cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "r"},
        "spec": {"resource": {"e": cfg}},
    }


@pytest.mark.parametrize(
    ("cfg", "line"),
    [
        ({"version": "v1", "resource": "pods"}, "spec.resource.e.eventTypes: required field"),
        (workflows(version=""), "spec.resource.e.version: must be specified"),
        (workflows(eventTypes=["CREATE"]), "spec.resource.e.eventTypes[0]:"),
        (workflows(eventTypes=[]), "spec.resource.e.eventTypes: must list at least one"),
        (workflows(filter={"labels": [{"key": "a", "operation": "~", "value": "b"}]}),
         "spec.resource.e.filter.labels[0]: unknown label operation '~'"),
        (workflows(filter={"labels": [{"key": "a", "operation": "gt", "value": "b"}]}),
         "spec.resource.e.filter.labels[0]: operation 'gt' needs an integer value"),
        (workflows(filter={"labels": [{"key": "", "value": "b"}]}),
         "spec.resource.e.filter.labels[0].key: key can't be empty for selector"),
        (workflows(filter={"fields": [{"key": "a", "operation": "in", "value": "b"}]}),
         "spec.resource.e.filter.fields[0]: unknown field operation 'in'"),
        (workflows(filter={"fields": [{"key": "status.phase", "value": "(x"}]}),
         "spec.resource.e.filter.fields[0]: invalid regular expression '(x'"),
        (workflows(filter={"createdBy": "yesterday"}), "spec.resource.e.filter.createdBy:"),
    ],
)  # fmt: skip
def test_bad_fields_fail_with_their_path(cfg: dict[str, Any], line: str) -> None:
    with pytest.raises(ManifestInvalid) as e:
        load_one(_es(cfg))
    assert any(x.startswith(line) for x in e.value.lines), e.value.lines


@pytest.mark.skipif(not EXAMPLE.exists(), reason="argo examples not present")
def test_argos_example_loads() -> None:
    es = load_one(yaml.safe_load(EXAMPLE.read_text()))
    cfg = es.spec.sources()["resource"]["example"]
    assert (cfg.namespace, cfg.group, cfg.version, cfg.resource) == (
        "argo-events", "argoproj.io", "v1alpha1", "workflows",
    )  # fmt: skip
    assert cfg.event_types == ["ADD"] and cfg.filter.after_start
