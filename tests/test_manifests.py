"""Manifest models and the loader: what loads, what fails, and the lines users see."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.compose.manifests import LoadResult, ManifestInvalid, load_file, load_one, load_paths
from app.kernel.argo import parse_go_duration
from app.kernel.eventbus import EventBus
from app.kernel.spec import SpecModel, dump
from eventsources.spec import EventSource
from eventsources.webhook import WebhookConfig
from sensors.spec import ARGO_TRIGGER_TYPES, Backoff, Sensor
from sensors.triggers.base import Invocation, Trigger, TriggerResult
from sensors.triggers.k8s import K8sTriggerConfig
from sensors.triggers.log import LogTriggerConfig
from sensors.triggers.registry import TRIGGERS

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "seed-manifests"

# Copies of the seed walkthrough's manifests, so these tests run without the shared tree.
EVENTBUS_YAML = """\
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  nats:
    native:
      # minimum3.
      replicas: 3
      auth: token
"""

EVENTSOURCE_YAML = """\
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: webhook
  namespace: argo-events
spec:
  service:
    ports:
      - port: 12000
        targetPort: 12000
  webhook:
    trigger:
      port: "12000"
      endpoint: /trigger
      method: POST
"""

SENSOR_YAML = """\
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: ml-pipeline-sensor
  namespace: argo-events
spec:
  template:
    serviceAccountName: operate-workflow-sa
  dependencies:
    - name: training-event
      eventSourceName: webhook
      eventName: trigger
  triggers:
    - template:
        name: trigger-ml-pipeline
        k8s:
          operation: create
          source:
            resource:
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              metadata:
                generateName: ml-pipeline-run-
              spec:
                workflowTemplateRef:
                  name: ml-pipeline-template
                arguments:
                  parameters:
                    - name: model
                      value: default-model
                    - name: dataset
                      value: default-dataset
          parameters:
            - src:
                dependencyName: training-event
                dataKey: body.model
              dest: spec.arguments.parameters.0.value
            - src:
                dependencyName: training-event
                dataKey: body.dataset
              dest: spec.arguments.parameters.1.value
"""

SERVICEACCOUNT_YAML = """\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: operate-workflow-sa
  namespace: argo-events
"""


def sensor_doc() -> dict[str, Any]:
    doc = yaml.safe_load(SENSOR_YAML)
    assert isinstance(doc, dict)
    return doc


def source_doc() -> dict[str, Any]:
    doc = yaml.safe_load(EVENTSOURCE_YAML)
    assert isinstance(doc, dict)
    return doc


def problems(doc: dict[str, Any]) -> list[str]:
    """The ``path: message`` lines for one object (empty when it loads)."""
    try:
        load_one(doc)
    except ManifestInvalid as e:
        return e.lines
    return []


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


# --- the seed walkthrough ------------------------------------------------------------


def check_seed(result: LoadResult) -> None:
    assert result.errors == []
    assert [b.obj.name for b in result.event_buses] == ["default"]
    bus = result.event_buses[0].obj
    assert bus.spec.nats is not None and bus.spec.nats.native is not None
    assert bus.spec.nats.native.replicas == 3
    assert bus.auth() == "token"

    [es] = [e.obj for e in result.event_sources]
    assert es.name == "webhook"
    assert es.metadata.namespace == "argo-events"
    assert es.spec.event_bus_name == "default"
    assert es.spec.service is not None and es.spec.service.ports[0].port == 12000
    webhook = es.spec.sources()["webhook"]["trigger"]
    assert isinstance(webhook, WebhookConfig)
    assert (webhook.port, webhook.endpoint, webhook.method) == ("12000", "/trigger", "POST")

    [sensor] = [s.obj for s in result.sensors]
    assert sensor.name == "ml-pipeline-sensor"
    assert sensor.spec.event_bus_name == "default"
    assert sensor.spec.template is not None
    assert sensor.spec.template.service_account_name == "operate-workflow-sa"
    dep = sensor.spec.dependencies[0]
    assert (dep.name, dep.event_source_name, dep.event_name) == (
        "training-event",
        "webhook",
        "trigger",
    )
    tpl = sensor.spec.triggers[0].template
    assert tpl.trigger_type == "k8s"
    k8s = tpl.trigger_config
    assert isinstance(k8s, K8sTriggerConfig)
    assert k8s.operation == "create"
    assert k8s.source.resource is not None
    assert k8s.source.resource["metadata"]["generateName"] == "ml-pipeline-run-"
    assert [(p.src.data_key, p.dest) for p in k8s.parameters] == [
        ("body.model", "spec.arguments.parameters.0.value"),
        ("body.dataset", "spec.arguments.parameters.1.value"),
    ]


@pytest.mark.skipif(not SEED_DIR.is_dir(), reason="seed manifests not present")
def test_seed_manifests_load_unchanged() -> None:
    result = load_paths([str(SEED_DIR)])
    check_seed(result)
    kinds = sorted(o.kind for o in result.others)
    assert kinds == ["Role", "RoleBinding", "ServiceAccount", "WorkflowTemplate"]


@pytest.mark.skipif(not SEED_DIR.is_dir(), reason="seed manifests not present")
def test_seed_manifests_round_trip() -> None:
    """Dumping a loaded model gives back the manifest as written."""
    for name, model in (
        ("sensor.yaml", Sensor),
        ("event-source.yaml", EventSource),
        ("eventbus.yaml", EventBus),
    ):
        doc = yaml.safe_load((SEED_DIR / name).read_text())
        assert dump(model.model_validate(doc)) == doc


def test_seed_copies_load(tmp_path: Path) -> None:
    for name, text in (
        ("eventbus.yaml", EVENTBUS_YAML),
        ("event-source.yaml", EVENTSOURCE_YAML),
        ("sensor.yaml", SENSOR_YAML),
        ("serviceaccount.yaml", SERVICEACCOUNT_YAML),
    ):
        write(tmp_path, name, text)
    result = load_paths([str(tmp_path)])
    check_seed(result)
    assert [o.obj["kind"] for o in result.others] == ["ServiceAccount"]
    for text, model in (
        (SENSOR_YAML, Sensor),
        (EVENTSOURCE_YAML, EventSource),
        (EVENTBUS_YAML, EventBus),
    ):
        doc = yaml.safe_load(text)
        assert dump(model.model_validate(doc)) == doc


def test_load_one_returns_models_and_other_kinds_as_mappings() -> None:
    assert isinstance(load_one(sensor_doc()), Sensor)
    assert isinstance(load_one(source_doc()), EventSource)
    assert isinstance(load_one(yaml.safe_load(EVENTBUS_YAML)), EventBus)
    other = load_one(yaml.safe_load(SERVICEACCOUNT_YAML))
    assert other == yaml.safe_load(SERVICEACCOUNT_YAML)


def test_load_one_accepts_objects_read_from_the_api() -> None:
    doc = sensor_doc()
    doc["metadata"].update(uid="1234", resourceVersion="7", generation=2)
    doc["status"] = {"conditions": [{"type": "Deployed", "status": "True"}]}
    assert isinstance(load_one(doc), Sensor)


# --- field paths in errors -----------------------------------------------------------


def test_misspelled_field_is_reported_as_unknown() -> None:
    doc = sensor_doc()
    doc["spec"]["dependecies"] = doc["spec"].pop("dependencies")
    lines = problems(doc)
    assert "spec.dependecies: unknown field" in lines
    assert "spec.dependencies: required field is missing" in lines


def test_bad_k8s_operation_names_its_path() -> None:
    doc = sensor_doc()
    doc["spec"]["triggers"][0]["template"]["k8s"]["operation"] = "craete"
    [line] = problems(doc)
    assert line.startswith("spec.triggers[0].template.k8s.operation: ")
    assert "create" in line


def test_empty_operation_means_create() -> None:
    doc = sensor_doc()
    doc["spec"]["triggers"][0]["template"]["k8s"]["operation"] = ""
    sensor = load_one(doc)
    assert isinstance(sensor, Sensor)
    config = sensor.spec.triggers[0].template.trigger_config
    assert isinstance(config, K8sTriggerConfig) and config.operation == "create"


def test_unsupported_trigger_type_is_one_line() -> None:
    doc = sensor_doc()
    tpl = doc["spec"]["triggers"][0]["template"]
    del tpl["k8s"]
    tpl["pulsar"] = {"topic": "t", "url": "pulsar://x:6650", "whatever": {"x": 1}}
    assert problems(doc) == [
        "spec.triggers[0].template.pulsar: trigger type 'pulsar' is not supported"
    ]


def test_every_argo_trigger_key_is_known() -> None:
    assert {
        "k8s", "argoWorkflow", "http", "awsLambda", "custom", "kafka", "nats", "slack",
        "openWhisk", "log", "azureEventHubs", "pulsar", "azureServiceBus", "email",
    } == ARGO_TRIGGER_TYPES  # fmt: skip
    assert set(TRIGGERS) <= ARGO_TRIGGER_TYPES


def test_unknown_trigger_key_is_an_unknown_field() -> None:
    doc = sensor_doc()
    doc["spec"]["triggers"][0]["template"]["webhookz"] = {}
    assert problems(doc) == ["spec.triggers[0].template.webhookz: unknown field"]


def test_template_without_trigger_type_fails_clearly() -> None:
    doc = sensor_doc()
    del doc["spec"]["triggers"][0]["template"]["k8s"]
    [line] = problems(doc)
    assert line.startswith("spec.triggers[0].template: no trigger type given (one of ")


def test_two_trigger_types_in_one_template_fail() -> None:
    doc = sensor_doc()
    doc["spec"]["triggers"][0]["template"]["log"] = {"intervalSeconds": 1}
    [line] = problems(doc)
    assert line == "spec.triggers[0].template: only one trigger type may be given, found k8s, log"


def test_at_least_once_under_template_is_unknown() -> None:
    doc = sensor_doc()
    doc["spec"]["triggers"][0]["template"]["atLeastOnce"] = True
    assert problems(doc) == ["spec.triggers[0].template.atLeastOnce: unknown field"]


def test_at_least_once_on_the_trigger_loads() -> None:
    doc = sensor_doc()
    doc["spec"]["triggers"][0]["atLeastOnce"] = True
    sensor = load_one(doc)
    assert isinstance(sensor, Sensor) and sensor.spec.triggers[0].at_least_once


def test_unsupported_source_type_is_one_line() -> None:
    doc = source_doc()
    del doc["spec"]["webhook"]
    doc["spec"]["kafka"] = {"example": {"url": "k:9092", "topic": "t", "bogus": 1}}
    assert problems(doc) == ["spec.kafka: event source type 'kafka' is not supported"]


def test_unknown_source_key_is_an_unknown_field() -> None:
    doc = source_doc()
    doc["spec"]["webhok"] = {"x": {}}
    assert problems(doc) == ["spec.webhok: unknown field"]


def test_source_config_errors_keep_their_paths() -> None:
    doc = source_doc()
    doc["spec"]["webhook"]["trigger"]["port"] = "http"
    doc["spec"]["webhook"]["trigger"]["endpont"] = "/x"
    lines = problems(doc)
    assert any(line.startswith("spec.webhook.trigger.port: ") for line in lines)
    assert "spec.webhook.trigger.endpont: unknown field" in lines


def test_event_source_needs_a_source() -> None:
    doc = source_doc()
    del doc["spec"]["webhook"]
    [line] = problems(doc)
    assert line.startswith("spec: no event source given")


def test_duplicate_dependency_names() -> None:
    doc = sensor_doc()
    doc["spec"]["dependencies"].append(copy.deepcopy(doc["spec"]["dependencies"][0]))
    assert problems(doc) == [
        "spec.dependencies[1].name: duplicate dependency name 'training-event'"
    ]


def test_parameter_must_name_a_dependency() -> None:
    doc = sensor_doc()
    params = doc["spec"]["triggers"][0]["template"]["k8s"]["parameters"]
    params[1]["src"]["dependencyName"] = "trainig-event"
    doc["spec"]["triggers"][0]["parameters"] = [
        {"src": {"dependencyName": "nope", "dataKey": "body"}, "dest": "k8s.source.resource.x"}
    ]
    assert problems(doc) == [
        "spec.triggers[0].parameters[0].src.dependencyName: "
        "'nope' names no dependency of this sensor",
        "spec.triggers[0].template.k8s.parameters[1].src.dependencyName: "
        "'trainig-event' names no dependency of this sensor",
    ]


def test_parameter_dest_must_not_be_empty() -> None:
    doc = sensor_doc()
    doc["spec"]["triggers"][0]["template"]["k8s"]["parameters"][0]["dest"] = ""
    assert problems(doc) == ["spec.triggers[0].template.k8s.parameters[0].dest: must not be empty"]


def test_duplicate_trigger_names() -> None:
    doc = sensor_doc()
    doc["spec"]["triggers"].append(copy.deepcopy(doc["spec"]["triggers"][0]))
    assert problems(doc) == [
        "spec.triggers[1].template.name: duplicate trigger name 'trigger-ml-pipeline'"
    ]


def test_dlq_trigger_requires_at_least_once() -> None:
    doc = sensor_doc()
    trigger = doc["spec"]["triggers"][0]
    trigger["dlqTrigger"] = {"template": {"name": "dlq", "log": {}}, "atLeastOnce": True}
    [line] = problems(doc)
    assert line == "spec.triggers[0]: to use dlqTrigger, atLeastOnce must be set to true"


def test_missing_name_and_empty_lists() -> None:
    doc = sensor_doc()
    doc["metadata"] = {"namespace": "x"}
    assert problems(doc) == ["metadata.name: required field is missing"]
    doc = sensor_doc()
    doc["spec"]["dependencies"] = []
    assert problems(doc) == ["spec.dependencies: no event dependencies found"]


def test_conditions_must_name_dependencies() -> None:
    doc = sensor_doc()
    doc["spec"]["triggers"][0]["template"]["conditions"] = "training-event && other"
    assert problems(doc) == [
        "spec.triggers[0].template.conditions: 'other' names no dependency of this sensor"
    ]


def test_filters_are_validated_as_argo_does() -> None:
    doc = sensor_doc()
    doc["spec"]["dependencies"][0]["filters"] = {
        "data": [{"path": "body.x", "type": "integr", "value": ["1"]}],
        "time": {"start": "25:00:00", "stop": "01:00:00"},
    }
    lines = problems(doc)
    assert any(line.startswith("spec.dependencies[0].filters.data[0].type: ") for line in lines)
    assert any(line.startswith("spec.dependencies[0].filters.time: ") for line in lines)


# --- durations and amounts -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(2_000_000_000, 2.0), ("1s", 1.0), ("1m30s", 90.0), ("300ms", 0.3), ("0", 0.0)],
)
def test_retry_duration_forms(value: int | str, seconds: float) -> None:
    backoff = Backoff.model_validate({"duration": value, "steps": 3, "factor": 2, "jitter": 0.1})
    assert backoff.duration_seconds == pytest.approx(seconds)
    assert (backoff.factor_value, backoff.jitter_value, backoff.steps_value) == (2.0, 0.1, 3)


def test_backoff_defaults_are_argos() -> None:
    b = Backoff()
    assert (b.duration_seconds, b.factor_value, b.jitter_value, b.steps_value) == (1.0, 1.0, 1.0, 5)


@pytest.mark.parametrize("value", ["abc", "10", 1.5, True])
def test_bad_retry_duration_names_its_path(value: object) -> None:
    doc = sensor_doc()
    doc["spec"]["triggers"][0]["retryStrategy"] = {"steps": 3, "duration": value}
    [line] = problems(doc)
    assert line.startswith("spec.triggers[0].retryStrategy.duration: ")


def test_go_durations() -> None:
    assert parse_go_duration("1h2m3s") == 3723.0
    assert parse_go_duration("1.5h") == 5400.0
    with pytest.raises(ValueError):
        parse_go_duration("5 minutes")


# --- the support table ---------------------------------------------------------------


def test_valid_but_unimplemented_fields_fail_with_one_line_each() -> None:
    doc = sensor_doc()
    doc["spec"]["dependencies"][0]["filters"] = {"context": {"source": "webhook"}}
    trigger = doc["spec"]["triggers"][0]
    trigger["template"]["k8s"]["source"] = {
        "git": {"url": "https://x.test/r.git", "cloneDirectory": "/tmp/r", "filePath": "w.yaml"}
    }
    doc["spec"]["errorOnFailedRound"] = True
    assert problems(doc) == [
        "spec.triggers[0].template.k8s.source.git: not supported yet",
        "spec.errorOnFailedRound: not supported yet",
    ]


def test_conditions_and_several_dependencies_load() -> None:
    doc = sensor_doc()
    doc["spec"]["dependencies"].append(
        {"name": "other", "eventSourceName": "webhook", "eventName": "other"}
    )
    assert isinstance(load_one(copy.deepcopy(doc)), Sensor)
    doc["spec"]["triggers"][0]["template"]["conditions"] = "training-event || other"
    assert problems(doc) == []
    doc["spec"]["triggers"][0]["template"]["conditions"] = "training-event ||"
    assert problems(doc) == ["spec.triggers[0].template.conditions: expression ends too early"]


def test_supported_trigger_features_load() -> None:
    doc = sensor_doc()
    trigger = doc["spec"]["triggers"][0]
    trigger["retryStrategy"] = {"steps": 3, "duration": "2s", "factor": 2, "jitter": 0.2}
    trigger["atLeastOnce"] = True
    trigger["parameters"] = [
        {
            "src": {"dependencyName": "training-event", "dataKey": "body.name", "value": "x"},
            "dest": "k8s.source.resource.metadata.name",
            "operation": "append",
        }
    ]
    k8s = trigger["template"]["k8s"]
    k8s["parameters"][0]["src"].update(useRawData=True)
    k8s["parameters"].append(
        {"src": {"dependencyName": "training-event", "contextKey": "id"}, "dest": "metadata.uid"}
    )
    assert isinstance(load_one(doc), Sensor)


def test_inline_source_and_other_operations_load() -> None:
    doc = sensor_doc()
    k8s = doc["spec"]["triggers"][0]["template"]["k8s"]
    k8s["source"] = {"inline": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"}
    for op in ("update", "patch", "delete"):
        k8s["operation"] = op
        assert isinstance(load_one(copy.deepcopy(doc)), Sensor)
    k8s["source"] = {
        "git": {
            "url": "https://example.invalid/r.git",
            "cloneDirectory": "/w",
            "filePath": "wf.yaml",
        }
    }
    assert problems(doc) == ["spec.triggers[0].template.k8s.source.git: not supported yet"]


def test_log_trigger_loads() -> None:
    doc = sensor_doc()
    doc["spec"]["triggers"][0]["template"] = {"name": "log", "log": {"intervalSeconds": 10}}
    sensor = load_one(doc)
    assert isinstance(sensor, Sensor)
    config = sensor.spec.triggers[0].template.trigger_config
    assert isinstance(config, LogTriggerConfig) and config.interval_seconds == 10


def test_webhook_filter_is_compiled_at_load() -> None:
    doc = source_doc()
    doc["spec"]["webhook"]["trigger"]["filter"] = {"expression": "body.x == 1"}
    assert problems(doc) == []
    doc["spec"]["webhook"]["trigger"]["filter"] = {"expression": "body.x =="}
    [line] = problems(doc)
    assert line.startswith("spec.webhook.trigger.filter.expression: ")


def test_source_plugin_cross_event_checks_run() -> None:
    doc = source_doc()
    doc["spec"]["webhook"]["again"] = dict(doc["spec"]["webhook"]["trigger"])
    [line] = problems(doc)
    assert line.startswith("spec.webhook.again")


class _PulsarConfig(SpecModel):
    topic: str
    url: str = ""


class _PulsarTrigger(Trigger):
    type_name = "pulsar"
    config_model = _PulsarConfig

    async def execute(self, inv: Invocation) -> TriggerResult:
        return TriggerResult(action="posted")


def test_registering_a_trigger_type_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TRIGGERS._entries, "pulsar", f"{__name__}:_PulsarTrigger")
    doc = sensor_doc()
    doc["spec"]["triggers"][0]["template"] = {"name": "s", "pulsar": {"topic": "t"}}
    sensor = load_one(doc)
    assert isinstance(sensor, Sensor)
    assert sensor.spec.triggers[0].template.trigger_type == "pulsar"
    doc["spec"]["triggers"][0]["template"]["pulsar"] = {"topik": "t"}
    assert "spec.triggers[0].template.pulsar.topik: unknown field" in problems(doc)


# --- EventBus ------------------------------------------------------------------------


def bus_doc(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventBus",
        "metadata": {"name": "default"},
        "spec": spec,
    }


def test_jetstream_bus_stream_limits() -> None:
    bus = load_one(
        bus_doc(
            {
                "jetstream": {
                    "version": "latest",
                    "replicas": 3,
                    "streamConfig": "maxMsgs: 1000\nmaxAge: 72h\nmaxBytes: -1\n"
                    "duplicates: 300s\nretention: 0\nDiscard: 1\n",
                }
            }
        )
    )
    assert isinstance(bus, EventBus)
    limits = bus.stream_limits()
    assert limits.max_msgs == 1000
    assert limits.max_age_seconds == 72 * 3600
    assert limits.max_bytes == -1
    assert limits.duplicates_seconds == 300
    assert (limits.retention, limits.discard) == (0, 1)


def test_exotic_jetstream_bus_loads() -> None:
    bus = load_one(
        bus_doc({"jetstreamExotic": {"url": "nats://nats:4222", "streamConfig": "duplicates: 1m"}})
    )
    assert isinstance(bus, EventBus)
    assert bus.stream_limits().duplicates_seconds == 60


def test_bad_bus_specs() -> None:
    [line] = problems(bus_doc({"jetstream": {"version": "x", "streamConfig": "maxAge: soon"}}))
    assert line.startswith("spec.jetstream.streamConfig: ")
    [line] = problems(bus_doc({"jetstream": {"version": "x", "replicas": 2}}))
    assert line.startswith("spec.jetstream.replicas: ")
    [line] = problems(bus_doc({}))
    assert line.startswith("spec: either ")
    [line] = problems(bus_doc({"nats": {"native": {"auth": "tokn"}}}))
    assert line.startswith("spec.nats.native.auth: ")


def test_unsupported_bus_kinds() -> None:
    assert problems(bus_doc({"kafka": {"url": "kafka:9092"}})) == ["spec.kafka: not supported yet"]
    exotic = {"nats": {"exotic": {"url": "nats://x:4222", "clusterID": "c"}}}
    assert problems(bus_doc(exotic)) == ["spec.nats.exotic: not supported yet"]


# --- the loader ----------------------------------------------------------------------


def test_multi_document_file(tmp_path: Path) -> None:
    text = "---\n" + EVENTSOURCE_YAML + "---\n---\n" + SENSOR_YAML + "---\n"
    p = write(tmp_path, "all.yaml", text)
    result = load_file(p)
    assert result.errors == []
    assert [(str(d.origin), d.kind) for d in result.documents] == [
        (f"{p}#1", "EventSource"),
        (f"{p}#3", "Sensor"),
    ]
    assert result.sensors[0].origin.doc == 3
    assert result.sensors[0].origin.file == str(p)


def test_single_document_origin_has_no_number(tmp_path: Path) -> None:
    p = write(tmp_path, "s.yaml", SENSOR_YAML)
    assert str(load_file(p).sensors[0].origin) == str(p)


def test_directory_loading_is_recursive_and_sorted(tmp_path: Path) -> None:
    write(tmp_path, "b/sensor.yml", SENSOR_YAML)
    write(tmp_path, "a/source.yaml", EVENTSOURCE_YAML)
    write(tmp_path, "c/bus.json", json.dumps(yaml.safe_load(EVENTBUS_YAML)))
    write(tmp_path, "a/notes.txt", "not a manifest: [")
    write(tmp_path, ".hidden/bad.yaml", "kind: [")
    result = load_paths([str(tmp_path)])
    assert result.errors == []
    assert [Path(f).relative_to(tmp_path).as_posix() for f in result.files] == [
        "a/source.yaml",
        "b/sensor.yml",
        "c/bus.json",
    ]
    assert (len(result.event_sources), len(result.sensors), len(result.event_buses)) == (1, 1, 1)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [x\n")
    result = load_file(p)
    [err] = result.errors
    assert err.origin.file == str(p)
    assert err.message.startswith("invalid YAML at line ")
    assert str(err).startswith(f"{p}: invalid YAML at line ")


def test_documents_before_a_syntax_error_still_load(tmp_path: Path) -> None:
    p = write(tmp_path, "two.yaml", SENSOR_YAML + "---\nkind: : :\n")
    result = load_file(p)
    assert len(result.sensors) == 1
    [err] = result.errors
    assert "invalid YAML" in err.message


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    p = write(tmp_path, "dup.yaml", SENSOR_YAML + "  eventBusName: a\n  eventBusName: b\n")
    [err] = load_file(p).errors
    assert "duplicate key 'eventBusName'" in err.message


def test_document_without_api_version_or_kind(tmp_path: Path) -> None:
    p = write(tmp_path, "x.yaml", "metadata:\n  name: x\n---\n- 1\n- 2\n")
    result = load_file(p)
    assert [e.message for e in result.errors] == [
        "required field is missing",
        "required field is missing",
        "a manifest must be a mapping, got list",
    ]
    assert [e.path for e in result.errors[:2]] == ["apiVersion", "kind"]


def test_other_argo_api_version_is_an_error() -> None:
    doc = sensor_doc()
    doc["apiVersion"] = "argoproj.io/v1beta1"
    [line] = problems(doc)
    assert line.startswith("apiVersion: Sensor must be argoproj.io/v1alpha1")


def test_timestamps_stay_text(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  day: 2024-01-01\n",
    )
    [other] = load_file(p).others
    assert other.obj["data"]["day"] == "2024-01-01"


def test_kind_list_is_expanded(tmp_path: Path) -> None:
    items = [yaml.safe_load(SENSOR_YAML), yaml.safe_load(SERVICEACCOUNT_YAML)]
    p = write(
        tmp_path, "list.yaml", yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    )
    result = load_file(p)
    assert (len(result.sensors), len(result.others)) == (1, 1)


def test_missing_path_is_an_error() -> None:
    result = load_paths(["/nonexistent/manifests"])
    [err] = result.errors
    assert err.message == "no such file or directory"
