"""The file event source against a real directory and the real bus.

Argo's event data (``name``, fsnotify's ``op`` number, ``metadata``), ``path`` and
``pathRegexp`` matching, each ``eventType`` recovered from watchfiles' changes (inotify
and polling), the filter, a bus outage (the change is held and stored once the bus is
back), and validation lines naming the field.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from watchfiles import Change

from app.adapters.bus import Bus
from app.adapters.natsserver import EmbeddedNats
from app.compose.manifests import check_one
from eventsources.file import FileConfig, FileSource, Op, OpClassifier
from tests.support.brokers import (
    CountingPublisher,
    Stream,
    eventually_long,
    running,
    source_context,
)
from tests.support.sources import CountingMetrics

SOURCE = "file-source"
EXAMPLES = Path(__file__).resolve().parents[2] / "shared/argo-examples/event-sources"


@pytest.fixture
def stream(nats_server: EmbeddedNats) -> Stream:
    return Stream(nats_server.url)


def _source(
    publish: Any, events: dict[str, dict[str, Any]], metrics: CountingMetrics | None = None
) -> FileSource:
    configs = {name: FileConfig.model_validate(raw) for name, raw in events.items()}
    return FileSource(SOURCE, "argo-events", configs, source_context(publish, metrics=metrics))


async def _data(stream: Stream, n: int) -> list[dict[str, Any]]:
    async def enough() -> bool:
        return await stream.count() >= n

    await eventually_long(enough, f"{n} events")
    await asyncio.sleep(0.3)  # a further (wrong) event would show by now
    return [e["data"] for e in await stream.events()]


# -- the classifier (watchfiles' three kinds → fsnotify's five operations) -------------------
def test_classifier_recovers_fsnotify_ops(tmp_path: Path) -> None:
    d = str(tmp_path)
    (tmp_path / "old.txt").write_text("x")
    (tmp_path / "keep.txt").write_text("x")
    c = OpClassifier(d)
    c.scan()

    (tmp_path / "empty").touch()
    (tmp_path / "full").write_text("data")
    assert sorted(c.classify({(Change.added, f"{d}/empty"), (Change.added, f"{d}/full")})) == [
        ("empty", Op.CREATE),
        ("full", Op.CREATE),
        ("full", Op.WRITE),
    ]
    os.chmod(tmp_path / "keep.txt", 0o600)
    assert list(c.classify({(Change.modified, f"{d}/keep.txt")})) == [("keep.txt", Op.CHMOD)]
    (tmp_path / "keep.txt").write_text("longer")
    assert list(c.classify({(Change.modified, f"{d}/keep.txt")})) == [("keep.txt", Op.WRITE)]
    os.rename(tmp_path / "old.txt", tmp_path / "new.txt")
    assert list(c.classify({(Change.deleted, f"{d}/old.txt"), (Change.added, f"{d}/new.txt")})) == [
        ("new.txt", Op.CREATE),
        ("old.txt", Op.RENAME),
    ]
    os.remove(tmp_path / "new.txt")
    assert list(c.classify({(Change.deleted, f"{d}/new.txt")})) == [("new.txt", Op.REMOVE)]
    # Changes outside the watched directory itself are not its files.
    assert list(c.classify({(Change.added, f"{d}/sub/x"), (Change.added, d)})) == []


# -- end to end through the bus ---------------------------------------------------------
async def test_created_file_has_argo_data_and_only_matching_names_publish(
    tmp_path: Path, bus: Bus, stream: Stream
) -> None:
    metrics = CountingMetrics()
    source = _source(
        CountingPublisher(bus),
        {
            "csv": {
                "watchPathConfig": {"directory": f"{tmp_path}/", "pathRegexp": r"\.csv$"},
                "eventType": "CREATE",
                "metadata": {"team": "ml"},
                "filter": {"expression": 'name != "' + f"{tmp_path}/skip.csv" + '"'},
            },
            "marker": {
                "watchPathConfig": {"directory": str(tmp_path), "path": "DONE"},
                "eventType": "CREATE",
            },
        },
        metrics,
    )
    async with running(source):
        (tmp_path / "other.txt").write_text("ignored")
        (tmp_path / "skip.csv").write_text("filtered")
        (tmp_path / "train.csv").write_text("a,b\n1,2\n")
        (tmp_path / "DONE").touch()
        data = await _data(stream, 2)
    by_name = {d["name"]: d for d in data}
    assert by_name == {
        f"{tmp_path}/train.csv": {
            "name": f"{tmp_path}/train.csv",
            "op": 1,
            "metadata": {"team": "ml"},
        },
        f"{tmp_path}/DONE": {"name": f"{tmp_path}/DONE", "op": 1, "metadata": {}},
    }
    assert metrics.counts["filtered", "csv"] == 1
    assert metrics.counts["sent", "csv"] == 1 and metrics.counts["sent", "marker"] == 1


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
async def test_each_event_type(tmp_path: Path, bus: Bus, stream: Stream, polling: bool) -> None:
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.txt").write_text("one")
    (tmp_path / "c.txt").write_text("one")

    def watch(op: str, path: str) -> dict[str, Any]:
        return {
            "watchPathConfig": {"directory": str(tmp_path), "path": path},
            "eventType": op,
            "polling": polling,
        }

    source = _source(
        CountingPublisher(bus),
        {
            "write": watch("WRITE", "a.txt"),
            "chmod": watch("CHMOD", "b.txt"),
            "rename": watch("RENAME", "c.txt"),
            "remove": watch("REMOVE", "a.txt"),
        },
    )
    async with running(source):
        (tmp_path / "a.txt").write_text("two, longer")
        await _data(stream, 1)
        os.chmod(tmp_path / "b.txt", 0o600)
        await _data(stream, 2)
        os.rename(tmp_path / "c.txt", tmp_path / "d.txt")
        await _data(stream, 3)
        os.remove(tmp_path / "a.txt")
        data = await _data(stream, 4)
    assert [(d["name"].rsplit("/", 1)[1], d["op"]) for d in data] == [
        ("a.txt", 2),
        ("b.txt", 16),
        ("c.txt", 8),
        ("a.txt", 4),
    ]


async def test_a_change_during_a_bus_outage_is_stored_once_the_bus_is_back(
    tmp_path: Path, bus: Bus, stream: Stream, nats_server: EmbeddedNats
) -> None:
    publisher = CountingPublisher(bus)
    source = _source(
        publisher,
        {
            "new": {
                "watchPathConfig": {"directory": str(tmp_path), "path": "x"},
                "eventType": "CREATE",
            }
        },
    )
    async with running(source):
        nats_server.kill()
        (tmp_path / "x").touch()

        async def refused() -> bool:
            return publisher.refused > 0

        await eventually_long(refused, "a refused publish")
        nats_server.start()
        data = await _data(stream, 1)
    assert data == [{"name": f"{tmp_path}/x", "op": 1, "metadata": {}}]
    assert len(publisher.stored) == 1


async def test_a_directory_that_appears_later_is_watched(
    tmp_path: Path, bus: Bus, stream: Stream
) -> None:
    d = tmp_path / "later"
    source = _source(
        CountingPublisher(bus),
        {"new": {"watchPathConfig": {"directory": str(d), "path": "x"}, "eventType": "CREATE"}},
    )
    task = asyncio.create_task(source.run())
    try:
        await asyncio.sleep(0.3)
        assert not source.ready() and not task.done()
        d.mkdir()

        async def ready() -> bool:
            return source.ready()

        await eventually_long(ready, "watching the new directory")
        (d / "x").touch()
        assert [e["name"] for e in await _data(stream, 1)] == [f"{d}/x"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- validation --------------------------------------------------------------------------
def _event_source(file: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "f"},
        "spec": {"file": {"e": file}},
    }


@pytest.mark.parametrize(
    ("file", "line"),
    [
        ({"watchPathConfig": {"directory": "/d", "path": "x"}}, "spec.file.e.eventType"),
        (
            {"watchPathConfig": {"directory": "/d", "path": "x"}, "eventType": "create"},
            "spec.file.e.eventType: must be one of CREATE, WRITE, REMOVE, RENAME, CHMOD",
        ),
        (
            {"watchPathConfig": {"directory": "d", "path": "x"}, "eventType": "CREATE"},
            "spec.file.e.watchPathConfig.directory: directory must be an absolute file path",
        ),
        (
            {"watchPathConfig": {"directory": "/d", "path": "/x"}, "eventType": "CREATE"},
            "spec.file.e.watchPathConfig.path: path must be a relative file path",
        ),
        (
            {"watchPathConfig": {"directory": "/d"}, "eventType": "CREATE"},
            "spec.file.e.watchPathConfig: either path or pathRegexp must be specified",
        ),
        (
            {
                "watchPathConfig": {"directory": "/d", "path": "x", "pathRegexp": "x"},
                "eventType": "CREATE",
            },
            "spec.file.e.watchPathConfig: path and pathRegexp cannot be specified together",
        ),
        (
            {"watchPathConfig": {"directory": "/d", "pathRegexp": "(?=x)"}, "eventType": "CREATE"},
            "spec.file.e.watchPathConfig.pathRegexp:",
        ),
    ],
)
def test_invalid_config_names_the_field(file: dict[str, Any], line: str) -> None:
    obj, problems = check_one(_event_source(file))
    assert obj is None
    assert len(problems) == 1 and problems[0].startswith(line), problems


def test_argo_example_manifest_fails_only_on_the_pod_template() -> None:
    path = EXAMPLES / "file.yaml"
    if not path.is_file():
        pytest.skip("Argo example corpus not beside the repo")
    obj, problems = check_one(yaml.safe_load(path.read_text()))
    assert problems and all("spec.template." in p and "not supported" in p for p in problems)
    example = dict(yaml.safe_load(path.read_text()))
    del example["spec"]["template"]
    obj, problems = check_one(example)
    assert problems == [] and obj is not None
