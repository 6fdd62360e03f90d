"""``triggerfish test``: a Sensor run offline against events, and every example Sensor."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from app.compose.cli import main
from app.compose.offline import run_offline_sync

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _sensor_files() -> list[Path]:
    out = []
    for f in sorted(EXAMPLES.glob("*/*.yaml")):
        if "kind: Sensor" in f.read_text():
            out.append(f)
    return out


OFFLINE_TRIGGERS = {"k8s", "argoWorkflow", "log"}
"""Trigger types ``triggerfish test`` records instead of performing; the others (an HTTP
call, a Lambda invocation) would reach their service, so their examples are run against
a local peer by their own tests and only validated here."""


def _trigger_types(sensor: Path) -> set[str]:
    doc = next(d for d in yaml.safe_load_all(sensor.read_text()) if d and d["kind"] == "Sensor")
    return {
        k for t in doc["spec"]["triggers"] for k in t["template"] if k not in {"name", "conditions"}
    }


@pytest.mark.parametrize("sensor", _sensor_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_sensor_fires_on_its_sample_events(
    sensor: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = sorted((sensor.parent / "events").glob("*.event.json"))
    assert events, f"{sensor.parent}/events: no sample event (*.event.json)"
    if not _trigger_types(sensor) & OFFLINE_TRIGGERS:
        manifests = sorted(str(f) for f in sensor.parent.glob("*.yaml"))
        assert main(["validate", "--strict", *(a for f in manifests for a in ("-f", f))]) == 0
        assert "error" not in capsys.readouterr().out
        return
    out = io.StringIO()
    code = run_offline_sync(str(sensor), [str(e) for e in events], out)
    assert code == 0, out.getvalue()
    assert (
        "would create" in out.getvalue()
        or "would patch" in out.getvalue()
        or "logged" in out.getvalue()
    )


def test_seed_sensor_prints_trace_and_object(capsys: pytest.CaptureFixture[str]) -> None:
    example = EXAMPLES / "ml-pipeline"
    code = main(["test", str(example / "sensor.yaml"),
                 "--event", str(example / "events" / "resnet.event.json")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "dependency training-event" in out
    assert 'spec.arguments.parameters.0.value = "resnet" (from dataKey)' in out
    assert "kind: Workflow" in out and "generateName" not in out
    assert "name: ml-pipeline-run-" in out
    assert "value: imagenet" in out


def test_nothing_fires_exits_non_zero_and_says_why(tmp_path: Path) -> None:
    ev = tmp_path / "ev.json"
    ev.write_text(json.dumps({"dataset": "imagenet"}))
    out = io.StringIO()
    code = run_offline_sync(str(EXAMPLES / "ml-pipeline" / "sensor.yaml"), [str(ev)], out)
    assert code == 1
    assert "dataKey 'body.model' not found" in out.getvalue()
    assert "0 trigger firing(s)" in out.getvalue()


def test_cloudevent_input_and_and_condition(tmp_path: Path) -> None:
    sensor = tmp_path / "s.yaml"
    sensor.write_text(
        """
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {name: two, namespace: ns}
spec:
  dependencies:
    - {name: a, eventSourceName: src, eventName: a}
    - {name: b, eventSourceName: src, eventName: b}
  triggers:
    - template:
        name: both
        log: {}
"""
    )
    ce = {"specversion": "1.0", "id": "e1", "source": "src", "subject": "b", "type": "webhook",
          "datacontenttype": "application/json", "data": {"body": {}}}  # fmt: skip
    (tmp_path / "b.json").write_text(json.dumps(ce))
    (tmp_path / "a.json").write_text(json.dumps({"x": 1}))
    out = io.StringIO()
    assert run_offline_sync(str(sensor), [str(tmp_path / "b.json")], out) == 1
    out = io.StringIO()
    code = run_offline_sync(
        str(sensor), [str(tmp_path / "b.json"), f"a={tmp_path / 'a.json'}"], out
    )
    assert code == 0, out.getvalue()
    assert "dependency b" in out.getvalue() and "dependency a" in out.getvalue()
    assert "trigger both: succeeded (logged" in out.getvalue()


FILTERED_SENSOR = """
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {name: only-resnet, namespace: ns}
spec:
  dependencies:
    - name: train
      eventSourceName: webhook
      eventName: trigger
      filters:
        data:
          - {path: body.model, type: string, value: ["^resnet$"]}
  triggers:
    - template:
        name: go
        log: {}
"""


def test_a_filtered_event_shows_every_verdict_and_why_nothing_fired(tmp_path: Path) -> None:
    sensor = tmp_path / "s.yaml"
    sensor.write_text(FILTERED_SENSOR)
    (tmp_path / "vgg.json").write_text(json.dumps({"model": "vgg"}))
    out = io.StringIO()
    assert run_offline_sync(str(sensor), [str(tmp_path / "vgg.json")], out) == 1
    lines = out.getvalue().splitlines()
    assert lines[1] == "  filters: rejected"
    assert lines[2].startswith("    - ") and "body.model" in lines[2]
    assert "  no trigger fired: the event did not pass the filters of dependency train" in lines


def test_waiting_conditions_are_explained(tmp_path: Path) -> None:
    sensor = tmp_path / "s.yaml"
    sensor.write_text(
        "apiVersion: argoproj.io/v1alpha1\nkind: Sensor\nmetadata: {name: two}\nspec:\n"
        "  dependencies:\n    - {name: a, eventSourceName: src, eventName: a}\n"
        "    - {name: b, eventSourceName: src, eventName: b}\n"
        "  triggers:\n    - template: {name: both, conditions: a && b, log: {}}\n"
    )
    (tmp_path / "a.json").write_text("{}")
    out = io.StringIO()
    assert run_offline_sync(str(sensor), [f"a={tmp_path / 'a.json'}"], out) == 1
    assert "  no trigger fired: conditions not met yet: trigger both waits for 'a && b'" in (
        out.getvalue().splitlines()
    )


def test_json_output_for_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sensor = tmp_path / "s.yaml"
    sensor.write_text(FILTERED_SENSOR)
    (tmp_path / "ok.json").write_text(json.dumps({"model": "resnet"}))
    (tmp_path / "no.json").write_text(json.dumps({"model": "vgg"}))
    code = main(["test", str(sensor), "--event", str(tmp_path / "ok.json"),
                 "--event", str(tmp_path / "no.json"), "--output", "json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["sensor"] == "ns/only-resnet" and doc["firings"] == 1
    first, second = doc["events"]
    assert first["fired"] and first["triggers"][0]["status"] == "succeeded"
    assert second["filtered"] and "notFired" in second and second["filters"]
