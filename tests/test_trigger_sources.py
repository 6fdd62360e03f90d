"""Trigger object sources (:mod:`sensors.triggers.sources`) against real peers: files in a
temp directory, a real HTTP server on 127.0.0.1, ConfigMaps in the fake Kubernetes API
server; and the :class:`~sensors.triggers.base.SharedCache` they are cached in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.adapters.kube import ApiKube, FileKube
from app.compose.manifests import check_one
from app.kernel.errors import PermanentError, TransientError
from app.kernel.events import Event, new_event_id
from app.kernel.settings import KubeSettings
from sensors.triggers.base import Invocation, SharedCache, TriggerContext
from sensors.triggers.k8s import K8sTrigger, K8sTriggerConfig
from sensors.triggers.sources import URL_MAX_BYTES, ArtifactLocation, ResourceSource
from tests.fakekube.harness import KubeApi
from tests.support.net import free_port
from tests.test_trigger_http import RecordingServer, Reply

NS = "ns1"
OBJ = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "made-"},
       "data": {"k": "v"}}  # fmt: skip


def source(**loc: Any) -> ResourceSource:
    return ResourceSource(ArtifactLocation.model_validate(loc), where="k8s.source")


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[TriggerContext]:
    c = TriggerContext(kube=FileKube(tmp_path / "objects"))
    try:
        yield c
    finally:
        await c.shared.aclose()


@pytest.fixture
async def server() -> AsyncIterator[RecordingServer]:
    s = RecordingServer()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


# --------------------------------------------------------------------------- static kinds


async def test_resource_and_inline_yaml_or_json(ctx: TriggerContext) -> None:
    assert await source(resource=OBJ).load(ctx, NS) == OBJ
    assert await source(inline=yaml.safe_dump(OBJ)).load(ctx, NS) == OBJ
    assert await source(inline=json.dumps(OBJ)).load(ctx, NS) == OBJ


@pytest.mark.parametrize(
    ("loc", "message"),
    [
        ({"inline": "- a\n- b\n"}, "k8s.source.inline is not a YAML/JSON object"),
        ({"inline": "a: [unclosed"}, "k8s.source.inline is not valid YAML/JSON"),
        ({"file": {"path": "/nonexistent/wf.yaml"}}, "k8s.source.file: cannot read"),
        ({"git": {"url": "u", "cloneDirectory": "/d", "filePath": "f"}},
         "k8s.source.git is not supported"),
        ({"s3": {"endpoint": "e", "bucket": {"name": "b"}}}, "k8s.source.s3 is not supported"),
    ],
)  # fmt: skip
def test_bad_static_sources_fail_when_built(loc: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        source(**loc)


def test_k8s_trigger_reads_its_file_when_built_unless_only_validating(tmp_path: Path) -> None:
    """A sensor's pod fails at start on a missing file; a manifest check away from the
    pod (``read_files=False``) leaves the file for the first firing."""
    cfg = K8sTriggerConfig.model_validate({"source": {"file": {"path": str(tmp_path / "no")}}})
    kube = FileKube(tmp_path / "objects")
    with pytest.raises(PermanentError, match=r"^k8s\.source\.file: cannot read"):
        K8sTrigger(cfg, TriggerContext(kube=kube))
    unread = K8sTrigger(cfg, TriggerContext(kube=kube, read_files=False))
    assert unread.source.static is None


async def test_file_is_read_when_built(ctx: TriggerContext, tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(OBJ))
    src = source(file={"path": str(path)})
    path.unlink()  # already read
    assert await src.load(ctx, NS) == OBJ


async def test_k8s_trigger_creates_from_a_file(ctx: TriggerContext, tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(OBJ))
    cfg = K8sTriggerConfig.model_validate({"source": {"file": {"path": str(path)}}})
    result = await K8sTrigger(cfg, ctx).execute(invocation())
    assert result.action == "created" and result.detail["name"].startswith("made-")
    assert isinstance(ctx.kube, FileKube)
    [made] = [o for o in ctx.kube.list_objects() if o["kind"] == "ConfigMap"]
    assert made["data"] == {"k": "v"}


# --------------------------------------------------------------------------- url


async def test_url_is_fetched_once_and_cached(server: RecordingServer, ctx: TriggerContext) -> None:
    server.routes["/wf.yaml"] = Reply(body=yaml.safe_dump(OBJ).encode())
    loc = {"url": {"path": server.url + "/wf.yaml", "verifyCert": False}}
    assert await source(**loc).load(ctx, NS) == OBJ
    # a trigger rebuilt per firing shares the context's cache
    assert await source(**loc).load(ctx, NS) == OBJ
    assert len(server.requests) == 1


async def test_url_failures(server: RecordingServer, ctx: TriggerContext) -> None:
    server.routes["/missing"] = Reply(status=404)
    with pytest.raises(PermanentError, match="answered 404, expected 200"):
        await source(url={"path": server.url + "/missing"}).load(ctx, NS)
    server.routes["/big"] = Reply(body=b"a: " + b"x" * URL_MAX_BYTES)
    with pytest.raises(PermanentError, match="larger than"):
        await source(url={"path": server.url + "/big"}).load(ctx, NS)
    server.routes["/list"] = Reply(body=b"[1, 2]")
    with pytest.raises(PermanentError, match="not a YAML/JSON object"):
        await source(url={"path": server.url + "/list"}).load(ctx, NS)
    with pytest.raises(TransientError):
        await source(url={"path": f"http://127.0.0.1:{free_port()}/x"}).load(ctx, NS)
    with pytest.raises(PermanentError, match="only http and https"):
        await source(url={"path": "file:///etc/passwd"}).load(ctx, NS)
    # failures are not cached: the document appears, the next firing gets it
    server.routes["/missing"] = Reply(body=json.dumps(OBJ).encode())
    assert await source(url={"path": server.url + "/missing"}).load(ctx, NS) == OBJ


# --------------------------------------------------------------------------- configmap


@pytest.fixture
async def kube(kube_api: KubeApi) -> AsyncIterator[ApiKube]:
    kube_api.create_namespace(NS)
    api = ApiKube.from_settings(KubeSettings(kubeconfig=str(kube_api.kubeconfig)))
    assert api is not None
    try:
        yield api
    finally:
        await api.close()


async def test_configmap_source_through_the_api(kube: ApiKube) -> None:
    await kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "workflow-cm", "namespace": NS},
                       "data": {"wf": yaml.safe_dump(OBJ)}}, NS)  # fmt: skip
    ctx = TriggerContext(kube=kube)
    try:
        cfg = K8sTriggerConfig.model_validate(
            {"source": {"configmap": {"name": "workflow-cm", "key": "wf"}}}
        )
        result = await K8sTrigger(cfg, ctx).execute(invocation())
        assert result.action == "created"
        made = await kube.get("v1", "ConfigMap", result.detail["name"], NS)
        assert made is not None and made["data"] == {"k": "v"}
        with pytest.raises(PermanentError, match=f"configmap {NS}/workflow-cm has no key 'nope'"):
            await source(configmap={"name": "workflow-cm", "key": "nope"}).load(ctx, NS)
        with pytest.raises(PermanentError, match=f"configmap {NS}/ghost not found"):
            await source(configmap={"name": "ghost", "key": "wf"}).load(ctx, NS)
    finally:
        await ctx.shared.aclose()


def test_k8s_sources_pass_the_support_table() -> None:
    for loc in ({"configmap": {"name": "c", "key": "k"}}, {"file": {"path": "/w.yaml"}},
                {"url": {"path": "https://example.test/w.yaml"}}):  # fmt: skip
        doc = {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Sensor",
            "metadata": {"name": "s", "namespace": NS},
            "spec": {
                "dependencies": [{"name": "a", "eventSourceName": "e", "eventName": "a"}],
                "triggers": [{"template": {"name": "t", "k8s": {"source": loc}}}],
            },
        }
        _obj, lines = check_one(doc)
        assert lines == [], (loc, lines)


# --------------------------------------------------------------------------- the cache


async def test_shared_cache_creates_once_and_does_not_cache_failures() -> None:
    cache = SharedCache()
    calls = 0
    gate = asyncio.Event()

    async def slow() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return calls

    waiting = [asyncio.create_task(cache.get("k", slow)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == [1] * 5

    async def boom() -> int:
        raise TransientError("down")

    with pytest.raises(TransientError):
        await cache.get("f", boom)

    async def fine() -> int:
        return 7

    assert await cache.get("f", fine) == 7


async def test_shared_cache_ttl_eviction_and_close() -> None:
    cache = SharedCache(max_entries=2)
    values = iter(range(100))

    async def next_value() -> int:
        return next(values)

    assert await cache.get("ttl", next_value, ttl_seconds=0) == 0
    assert await cache.get("ttl", next_value, ttl_seconds=0) == 1  # expired at once

    class Closeable:
        closed = False

        async def close(self) -> None:
            self.closed = True

    async def closeable() -> Closeable:
        return Closeable()

    c = await cache.get("session", closeable)
    await cache.get("a", next_value)
    await cache.get("b", next_value)  # over the limit: the oldest plain value goes
    assert await cache.get("session", closeable) is c  # closeable values are kept
    await cache.aclose()
    assert c.closed


def invocation() -> Invocation:
    ev = Event(id=new_event_id(), source="hook", subject="a", type="webhook", data={})
    return Invocation("s1", NS, "t1", {"a": ev}, "9" * 32)
