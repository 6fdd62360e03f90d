"""``triggerfish validate``: one line per manifest, exit 0 / 1 / 2."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from app.compose.validate import validate_paths
from tests.test_manifests import (
    EVENTBUS_YAML,
    EVENTSOURCE_YAML,
    SEED_DIR,
    SENSOR_YAML,
    SERVICEACCOUNT_YAML,
)


def run(paths: list[str]) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = validate_paths(paths, out)
    return code, out.getvalue().splitlines()


def test_valid_manifests_print_ok_lines(tmp_path: Path) -> None:
    (tmp_path / "bus.yaml").write_text(EVENTBUS_YAML)
    (tmp_path / "source.yaml").write_text(EVENTSOURCE_YAML)
    (tmp_path / "sensor.yaml").write_text(SENSOR_YAML)
    (tmp_path / "sa.yaml").write_text(SERVICEACCOUNT_YAML)
    code, lines = run([str(tmp_path)])
    assert code == 0
    assert lines == [
        f"ok   {tmp_path}/bus.yaml EventBus/default",
        f"ok   {tmp_path}/sa.yaml ServiceAccount/operate-workflow-sa",
        f"ok   {tmp_path}/sensor.yaml Sensor/ml-pipeline-sensor",
        f"ok   {tmp_path}/source.yaml EventSource/webhook",
    ]


@pytest.mark.skipif(not SEED_DIR.is_dir(), reason="seed manifests not present")
def test_seed_manifests_validate() -> None:
    code, lines = run([str(SEED_DIR)])
    assert code == 0
    assert len(lines) == 7
    assert all(line.startswith("ok   ") for line in lines)


def test_errors_name_file_document_kind_name_and_path(tmp_path: Path) -> None:
    bad = SENSOR_YAML.replace("dependencies:", "dependecies:").replace(
        "operation: create", "operation: craete"
    )
    p = tmp_path / "all.yaml"
    p.write_text(EVENTSOURCE_YAML + "---\n" + bad)
    code, lines = run([str(p)])
    assert code == 1
    assert lines[0] == f"ok   {p}#1 EventSource/webhook"
    prefix = f"error {p}#2 Sensor/ml-pipeline-sensor: "
    assert all(line.startswith(prefix) for line in lines[1:])
    assert f"{prefix}spec.dependecies: unknown field" in lines
    assert any(
        line.startswith(f"{prefix}spec.triggers[0].template.k8s.operation: ") for line in lines
    )


def test_unsupported_type_is_exactly_one_line(tmp_path: Path) -> None:
    p = tmp_path / "slack.yaml"
    p.write_text(SENSOR_YAML.replace("k8s:", "slack:", 1))
    code, lines = run([str(p)])
    assert code == 1
    assert lines == [
        f"error {p} Sensor/ml-pipeline-sensor: "
        "spec.triggers[0].template.slack: trigger type 'slack' is not supported"
    ]


def test_yaml_syntax_error_is_a_line_not_a_traceback(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n")
    code, lines = run([str(p)])
    assert code == 1
    [line] = lines
    assert line.startswith(f"error {p}: invalid YAML at line ")


def test_nothing_found_exits_2(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# nothing here\n")
    (tmp_path / "empty.yaml").write_text("---\n# only a comment\n")
    code, lines = run([str(tmp_path)])
    assert code == 2
    assert lines == [f"error no manifests found in {tmp_path}"]


def test_missing_path_exits_1(tmp_path: Path) -> None:
    code, lines = run([str(tmp_path / "nope")])
    assert code == 1
    assert lines == [f"error {tmp_path / 'nope'}: no such file or directory"]
