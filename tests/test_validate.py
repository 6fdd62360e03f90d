"""``triggerfish validate``: one line per manifest, exit 0 / 1 / 2."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import yaml

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
        f"ok   {tmp_path}/bus.yaml EventBus default",
        f"ok   {tmp_path}/sa.yaml ServiceAccount argo-events/operate-workflow-sa",
        f"ok   {tmp_path}/sensor.yaml Sensor argo-events/ml-pipeline-sensor",
        f"ok   {tmp_path}/source.yaml EventSource argo-events/webhook",
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
    assert lines[0] == f"ok   {p}#1 EventSource argo-events/webhook"
    prefix = f"error {p}#2 Sensor argo-events/ml-pipeline-sensor: "
    assert all(line.startswith(prefix) for line in lines[1:])
    assert f"{prefix}spec.dependecies: unknown field" in lines
    assert any(
        line.startswith(f"{prefix}spec.triggers[0].template.k8s.operation: ") for line in lines
    )


def test_unsupported_type_is_exactly_one_line(tmp_path: Path) -> None:
    p = tmp_path / "pulsar.yaml"
    p.write_text(SENSOR_YAML.replace("k8s:", "pulsar:", 1))
    code, lines = run([str(p)])
    assert code == 1
    assert lines == [
        f"error {p} Sensor argo-events/ml-pipeline-sensor: "
        "spec.triggers[0].template.pulsar: trigger type 'pulsar' is not supported"
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


# --- validate compiles what run compiles ------------------------------------------------


def _sensor_with(tmp_path: Path, old: str, new: str) -> Path:
    assert old in SENSOR_YAML
    p = tmp_path / "sensor.yaml"
    p.write_text(SENSOR_YAML.replace(old, new))
    return p


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "      eventName: trigger\n",
            "      eventName: trigger\n      filters:\n        exprs:\n"
            "          - expr: 'a == '\n            fields: [{name: a, path: body.model}]\n",
            "spec.dependencies[0].filters.exprs[0].expr: unexpected end of expression",
        ),
        (
            "      eventName: trigger\n",
            "      eventName: trigger\n      filters:\n        data:\n"
            "          - {path: body.model, type: string, value: ['res(net']}\n",
            "spec.dependencies[0].filters.data[0].value[0]: invalid regular expression",
        ),
        (
            "dataKey: body.model",
            'dataTemplate: "{{ .Input.body.model "',
            "spec.triggers[0].template.k8s.parameters[0].src.dataTemplate: invalid template",
        ),
    ],
)
def test_validate_rejects_what_run_rejects(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    p = _sensor_with(tmp_path, old, new)
    code, lines = run([str(p)])
    assert code == 1
    [line] = lines
    assert line.startswith(f"error {p} Sensor argo-events/ml-pipeline-sensor: {expected}")
    from app.compose.loading import load_for_run
    from app.kernel.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_for_run([str(p)])


def test_a_file_source_is_not_read_when_validating(tmp_path: Path) -> None:
    """The file lives in the sensor's pod; validating elsewhere must not fail on it."""
    doc = yaml.safe_load(SENSOR_YAML)
    doc["spec"]["triggers"][0]["template"]["k8s"]["source"] = {
        "file": {"path": "/nowhere/workflow.yaml"}
    }
    p = tmp_path / "sensor.yaml"
    p.write_text(yaml.safe_dump(doc))
    code, lines = run([str(p)])
    assert (code, [line.split(" ")[0] for line in lines]) == (0, ["ok", "warning"])


def test_unknown_argoproj_kind_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "typo.yaml"
    p.write_text(SENSOR_YAML.replace("kind: Sensor", "kind: Sensr"))
    code, lines = run([str(p)])
    assert code == 1
    assert lines == [
        f"error {p} Sensr argo-events/ml-pipeline-sensor: kind: unknown argoproj.io kind 'Sensr' "
        "(Triggerfish runs EventBus, EventSource, Sensor; other Argo kinds such as Workflow "
        "and WorkflowTemplate are applied as they are)"
    ]


def test_other_argo_kinds_pass(tmp_path: Path) -> None:
    p = tmp_path / "wt.yaml"
    p.write_text("apiVersion: argoproj.io/v1alpha1\nkind: WorkflowTemplate\nmetadata: {name: t}\n")
    assert run([str(p)]) == (0, [f"ok   {p} WorkflowTemplate t"])


def test_unserved_dependency_warns_and_strict_makes_it_an_error(tmp_path: Path) -> None:
    (tmp_path / "sensor.yaml").write_text(SENSOR_YAML)
    code, lines = run([str(tmp_path)])
    warning = (
        f"{tmp_path}/sensor.yaml Sensor argo-events/ml-pipeline-sensor: spec.dependencies[0]: "
        "no EventSource 'webhook' in the given manifests: this dependency would never fire here"
    )
    assert (code, lines[1:]) == (0, [f"warning {warning}"])
    out = io.StringIO()
    assert validate_paths([str(tmp_path)], out, strict=True) == 1
    assert out.getvalue().splitlines()[1:] == [f"error {warning}"]
    (tmp_path / "source.yaml").write_text(EVENTSOURCE_YAML)
    assert run([str(tmp_path)])[0] == 0
    out = io.StringIO()
    assert validate_paths([str(tmp_path)], out, strict=True) == 0


def test_a_dependency_on_a_missing_event_names_the_events_there(tmp_path: Path) -> None:
    (tmp_path / "source.yaml").write_text(EVENTSOURCE_YAML)
    (tmp_path / "sensor.yaml").write_text(
        SENSOR_YAML.replace("eventName: trigger", "eventName: trigerr")
    )
    _code, lines = run([str(tmp_path)])
    assert lines[-1].endswith(
        "spec.dependencies[0]: EventSource 'webhook' has no event 'trigerr' (it has trigger): "
        "this dependency would never fire here"
    )


def test_two_event_sources_on_one_port_warn_here_and_stop_run(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(EVENTSOURCE_YAML)
    (tmp_path / "b.yaml").write_text(EVENTSOURCE_YAML.replace("name: webhook", "name: other"))
    code, lines = run([str(tmp_path)])
    assert code == 0
    assert any(
        line.startswith(f"warning {tmp_path}/b.yaml EventSource argo-events/other: ")
        and ": spec.webhook.trigger.port:" in line
        and "also bound by EventSource 'webhook'" in line
        for line in lines
    )
    from app.compose.loading import load_for_run
    from app.kernel.errors import ConfigError

    with pytest.raises(ConfigError, match="port 12000 is also bound"):
        load_for_run([str(tmp_path)])


def test_every_compose_stack_loads_strictly() -> None:
    """Each Triggerfish service of docker-compose.yml runs manifests that validate with
    --strict: every Sensor dependency is served by an EventSource of the same stack."""
    repo = Path(__file__).resolve().parents[1]
    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())
    stacks = [svc["command"] for svc in compose["services"].values() if svc.get("build") == "."]
    assert len(stacks) >= 2
    for command in stacks:
        files = [
            command[i + 1].replace("/app/", f"{repo}/")
            for i, arg in enumerate(command)
            if arg == "-f"
        ]
        out = io.StringIO()
        assert validate_paths(files, out, strict=True) == 0, out.getvalue()
