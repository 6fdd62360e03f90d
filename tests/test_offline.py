"""``triggerfish test``: a Sensor run offline against events, and every example Sensor."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("sensor", _sensor_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_sensor_fires_on_its_sample_events(sensor: Path) -> None:
    events = sorted((sensor.parent / "events").glob("*.event.json"))
    assert events, f"{sensor.parent}/events: no sample event (*.event.json)"
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
