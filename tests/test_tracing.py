"""OpenTelemetry: a request's trace context is continued (or started), travels in the
CloudEvent, and spans cover receive → publish → sensor (filters) → trigger → API call;
the created object carries the trace id. Checked with the SDK's in-memory exporter
in-process, and over OTLP/HTTP against a local receiver from a real ``triggerfish run``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.adapters import tracing
from app.adapters.natsserver import EmbeddedNats
from app.compose.loading import load_for_run
from app.compose.runtime import Standalone
from app.kernel.events import Event
from app.kernel.settings import Settings
from app.kernel.tracecontext import child_of, parse_traceparent
from tests.support.net import free_port, wait_for
from tests.support.otlp import OtlpReceiver
from tests.support.proc import Triggerfish

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "ml-pipeline"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


# --------------------------------------------------------------------------- trace context


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (PARENT, True),
        (PARENT.upper(), True),
        (f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra", False),  # version 00 has no extras
        (f"01-{TRACE_ID}-00f067aa0ba902b7-01-extra", True),  # later versions may
        (f"ff-{TRACE_ID}-00f067aa0ba902b7-01", False),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", False),
        (f"00-{TRACE_ID}-{'0' * 16}-01", False),
        ("00-xyz", False),
        ("", False),
    ],
)
def test_traceparent_parsing(value: str, ok: bool) -> None:
    assert (parse_traceparent(value) is not None) is ok


def test_a_child_continues_the_trace_or_starts_one() -> None:
    child = child_of(PARENT)
    assert child.trace_id == TRACE_ID and child.span_id != "00f067aa0ba902b7"
    fresh = child_of("garbage")
    assert len(fresh.trace_id) == 32 and fresh.trace_id != TRACE_ID and fresh.flags == "01"


def test_the_cloudevent_carries_the_trace_context() -> None:
    ev = Event(id="e", source="s", subject="x", type="webhook", data={}, traceparent=PARENT)
    assert b'"traceparent":"' + PARENT.encode() + b'"' in ev.to_json()
    assert Event.from_json(ev.to_json()).traceparent == PARENT
    plain = Event(id="e", source="s", subject="x", type="webhook", data={})
    assert b"traceparent" not in plain.to_json()


def test_without_export_spans_still_carry_context() -> None:
    assert not tracing.enabled()
    with tracing.span("outer", parent=PARENT) as outer:
        assert outer.trace_id == TRACE_ID
        with tracing.span("inner") as inner:
            assert inner.trace_id == TRACE_ID
            assert tracing.current_traceparent() == inner.traceparent
    assert tracing.current_traceparent() == ""


# --------------------------------------------------------------------------- in-memory export


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure("triggerfish-test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


async def test_seed_event_as_spans(
    tmp_path: Path, nats_server: EmbeddedNats, exported: InMemorySpanExporter
) -> None:
    port = free_port()
    settings = Settings(state_dir=tmp_path / "state", bind_host="127.0.0.1", api_port=0)
    settings.bus.nats_url = nats_server.url
    settings.kube.disabled = True
    settings.port_map[12000] = port
    rt = Standalone(load_for_run([str(SEED)]), settings)
    stop = asyncio.Event()
    task = asyncio.create_task(rt.run(stop))
    try:
        await asyncio.wait_for(rt.ready.wait(), 30)
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"http://127.0.0.1:{port}/trigger",
                json={"model": "resnet", "dataset": "imagenet"},
                headers={"traceparent": PARENT},
            )
        assert r.status_code == 200
        objects = tmp_path / "state" / "objects" / "argo-events" / "Workflow"

        async def created() -> list[Path]:
            for _ in range(200):
                found = sorted(objects.glob("*.yaml")) if objects.is_dir() else []
                if found and any(
                    s.name.startswith("trigger ") for s in exported.get_finished_spans()
                ):
                    return found
                await asyncio.sleep(0.05)
            raise AssertionError("no Workflow created")

        [wf_file] = await created()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    wf = yaml.safe_load(wf_file.read_text())
    assert wf["metadata"]["annotations"]["events.triggerfish.io/trace-id"] == TRACE_ID
    spans = {s.name: s for s in exported.get_finished_spans()}
    expected = [
        "webhook trigger",
        "publish webhook/trigger",
        "sensor ml-pipeline-sensor",
        "filters",
        "trigger trigger-ml-pipeline",
        "k8s create Workflow",
    ]
    assert set(expected) <= set(spans), sorted(spans)
    for name in expected:
        assert f"{spans[name].context.trace_id:032x}" == TRACE_ID, name
    # each step is a child of the one before it: one tree from the request down
    assert f"{spans['webhook trigger'].parent.span_id:016x}" == "00f067aa0ba902b7"
    chain = [(expected[i], expected[i + 1]) for i in range(len(expected) - 1)]
    chain[2] = ("sensor ml-pipeline-sensor", "filters")
    chain[3] = ("sensor ml-pipeline-sensor", "trigger trigger-ml-pipeline")
    for parent, child in chain:
        assert spans[child].parent.span_id == spans[parent].context.span_id, (parent, child)
    assert spans["webhook trigger"].kind.name == "SERVER"
    assert spans["publish webhook/trigger"].kind.name == "PRODUCER"
    assert spans["sensor ml-pipeline-sensor"].kind.name == "CONSUMER"
    assert spans["k8s create Workflow"].kind.name == "CLIENT"


# --------------------------------------------------------------------------- OTLP over HTTP


@pytest.mark.slow
def test_a_real_run_exports_over_otlp_http(tmp_path: Path) -> None:
    with OtlpReceiver() as otlp:
        port = free_port()
        tf = Triggerfish(
            files=[str(SEED)],
            state_dir=tmp_path / "state",
            port_map={12000: port},
            extra_env=otlp.env,
        ).start()
        try:
            r = httpx.post(
                f"http://127.0.0.1:{port}/trigger",
                json={"model": "resnet", "dataset": "x"},
                timeout=10,
            )
            assert r.status_code == 200

            def names() -> dict[str, str]:
                return {s.name: s.trace_id.hex() for s in otlp.spans()}

            try:
                wait_for(lambda: "k8s create Workflow" in names(), timeout=20)
            except TimeoutError:
                raise AssertionError(f"spans received: {sorted(names())}\n{tf.log()}") from None
            got = names()
            steps = ("webhook trigger", "sensor ml-pipeline-sensor", "trigger trigger-ml-pipeline")
            trace_ids = {got[n] for n in (*steps, "k8s create Workflow")}
            assert len(trace_ids) == 1
            [wf] = (tmp_path / "state" / "objects" / "argo-events" / "Workflow").glob("*.yaml")
            annotations = yaml.safe_load(wf.read_text())["metadata"]["annotations"]
            assert annotations["events.triggerfish.io/trace-id"] == trace_ids.pop()
        finally:
            assert tf.stop() == 0, tf.log()
