"""``/metrics``: Argo's series with Argo's names and labels (the namespace included),
Triggerfish's own, and no ``*_created`` twins; read from a real ``triggerfish run``."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from app import __version__
from app.compose.dryrun import OfflineMessage, offline_runner
from app.compose.manifests import load_one
from app.kernel.events import Event, new_event_id
from tests.support.net import free_port, wait_for
from tests.support.proc import Triggerfish

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "ml-pipeline"


def _value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` (labels in any order; others may be present)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
def test_metrics_of_a_seed_run(tmp_path: Path) -> None:
    port = free_port()
    tf = Triggerfish(
        files=[str(SEED)],
        state_dir=tmp_path / "state",
        port_map={12000: port},
        extra_env={"TRIGGERFISH_BUS__LAG_POLL_SECONDS": "0.1"},
    ).start()
    try:
        url = f"http://127.0.0.1:{port}/trigger"
        assert (
            httpx.post(url, json={"model": "resnet", "dataset": "x"}, timeout=10).status_code == 200
        )
        bad = httpx.post(url, content=b"{", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400

        def scrape() -> str:
            return httpx.get(f"http://127.0.0.1:{tf.api_port}/metrics", timeout=5).text

        wait_for(lambda: _value(scrape(), "argo_events_action_triggered_total") == 1.0, timeout=15)
        text = scrape()
        src = {"namespace": "argo-events", "eventsource_name": "webhook", "event_name": "trigger"}
        sen = {"namespace": "argo-events", "sensor_name": "ml-pipeline-sensor"}
        assert _value(text, "argo_events_events_sent_total", **src) == 1.0
        assert _value(text, "argo_events_event_processing_duration_milliseconds_count", **src) == 1
        assert _value(text, "argo_events_event_service_running_total",
                      namespace="argo-events", eventsource_name="webhook") == 1.0  # fmt: skip
        assert _value(text, "argo_events_action_triggered_total", **sen,
                      trigger_name="trigger-ml-pipeline") == 1.0  # fmt: skip
        assert _value(text, "argo_events_action_duration_milliseconds_count", **sen) == 1.0
        assert _value(text, "build_info", version=__version__) == 1.0
        web = {"namespace": "argo-events", "eventsource_name": "webhook"}
        assert _value(text, "triggerfish_webhook_requests_total", **web, code="200") == 1.0
        assert _value(text, "triggerfish_webhook_requests_total", **web, code="400") == 1.0
        dep = {**sen, "dependency": "training-event"}
        assert _value(text, "triggerfish_sensor_events_received_total", **dep) == 1.0
        assert _value(text, "triggerfish_bus_connected") == 1.0
        wait_for(lambda: _value(scrape(), "triggerfish_sensor_consumer_pending", **dep) == 0.0,
                 timeout=10)  # fmt: skip
        assert _value(scrape(), "triggerfish_sensor_consumer_ack_pending", **dep) == 0.0
        assert not re.search(r"^\w+_created\{", text, re.M), "no *_created series"
        assert 'namespace=""' not in text
    finally:
        assert tf.stop() == 0, tf.log()


def test_failed_attempts_retries_and_dead_letters_are_counted() -> None:
    doc = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s", "namespace": "ns"},
        "spec": {
            "dependencies": [{"name": "d", "eventSourceName": "e", "eventName": "x"}],
            "triggers": [{
                "template": {"name": "t", "k8s": {
                    "operation": "create",
                    "source": {"resource": {"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": {"generateName": "c-"}}},
                    "parameters": [{"src": {"dependencyName": "d", "dataKey": "body.nope"},
                                    "dest": "data.x"}],
                }},
            }],
        },
    }  # fmt: skip
    runner = offline_runner(load_one(doc))  # type: ignore[arg-type]
    ev = Event(id=new_event_id(), source="e", subject="x", type="webhook", data={"body": {}})

    async def go() -> None:
        await runner.prepare()
        await runner.handle("d", OfflineMessage(ev))

    asyncio.run(go())
    text = runner.metrics.render().decode()
    labels = {"namespace": "ns", "sensor_name": "s", "trigger_name": "t"}
    assert _value(text, "argo_events_action_failed_total", **labels) == 1.0
    assert _value(text, "argo_events_action_retries_failed_total", **labels) == 1.0
    assert _value(text, "triggerfish_dead_lettered_total", **labels) == 1.0
    assert _value(text, "argo_events_action_triggered_total", **labels) is None


def test_the_dashboard_reads_only_series_that_exist() -> None:
    import json

    from app.adapters.metrics import Metrics

    families = {fam.name for fam in Metrics().registry.collect()}
    dash = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    used = {
        name
        for panel in dash["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(?:argo_events|triggerfish)_\w+", target["expr"])
    }
    assert used
    base = {n: re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    missing = sorted(n for n, b in base.items() if b not in families and n not in families)
    assert missing == []


def test_recent_counts_of_several_processes_add_up_within_the_window() -> None:
    """What the controller does with the pods' reports: buckets add up, buckets older
    than the window do not count (a pod gone long ago), totals add, the newest error
    wins, and malformed entries are skipped."""
    import time

    from app.adapters.metrics import RecentCounts

    key = ("trigger", "ns", "s", "t")
    a, b = RecentCounts(60, 5), RecentCounts(60, 5)
    a.inc(key, "fired", 2)
    b.inc(key, "fired", 3)
    b.note_error(key, "Forbidden")
    old = b.snapshot()
    for item in old:  # as if b had counted them ten minutes ago
        item["buckets"] = {
            w: [[s - 600, n] for s, n in ring] for w, ring in item["buckets"].items()
        }
    merged = RecentCounts(60, 5)
    merged.merge(a.snapshot())
    merged.merge(b.snapshot())
    merged.merge([{"key": ["x"], "buckets": {"fired": [["soon", 1]]}}, {"nothing": 1}])
    got = merged.get(key)
    assert got["window"] == {"fired": 5} and got["total"] == {"fired": 5}
    assert got["lastError"] == "Forbidden"
    assert got["lastTime"] is not None and got["lastTime"] <= time.time()
    stale = RecentCounts(60, 5)
    stale.merge(a.snapshot())
    stale.merge(old)
    assert stale.get(key)["window"] == {"fired": 2}
    assert stale.get(key)["total"] == {"fired": 5}
