"""Trigger parameters (sensors.parameters): Argo's resolution order, typing and operations,
with a missing key always an error unless a default is given."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.kernel.errors import ConfigError, ParameterError
from app.kernel.events import Event
from sensors.parameters import (
    CompiledParameter,
    ParameterSpecError,
    Resolved,
    apply_parameters,
    compile_parameters,
    construct_payload,
)
from sensors.spec import TriggerParameter

DATA: dict[str, Any] = {
    "header": {"X-Run": ["7"]},
    "body": {
        "model": "resnet",
        "dataset": "imagenet",
        "epochs": 10,
        "lr": 0.5,
        "whole": 3.0,
        "flag": True,
        "nothing": None,
        "config": {"layers": [1, 2], "name": "x"},
        "tags": ["a", "b"],
        "empty": "",
    },
}


def _event(data: Any = DATA) -> Event:
    return Event(
        id="0123456789abcdef0123456789abcdef",
        source="webhook",
        subject="example",
        type="webhook",
        data=copy.deepcopy(data),
        time="2024-03-05T07:08:09.000000Z",
    )


EVENTS = {"training-event": _event()}


def param(
    dest: str = "x", operation: str = "", dep: str = "training-event", **src: Any
) -> TriggerParameter:
    return TriggerParameter.model_validate(
        {"src": {"dependencyName": dep, **src}, "dest": dest, "operation": operation}
    )


@dataclass
class RawSource:
    """A parameter source that no pydantic model checked (the ParameterLike shape)."""

    dependency_name: str = "training-event"
    data_key: str | None = None
    data_template: str | None = None
    context_key: str | None = None
    context_template: str | None = None
    value: str | None = None
    use_raw_data: bool = False


@dataclass
class RawParam:
    src: RawSource = field(default_factory=RawSource)
    dest: str = "x"
    operation: str = ""


def resolve(events: Any = None, **src: Any) -> Any:
    return CompiledParameter.compile(param(**src)).resolve(EVENTS if events is None else events)


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    ("src", "value", "source"),
    [
        ({"dataKey": "body.model"}, "resnet", "dataKey"),
        ({"dataKey": "header.X-Run.0"}, "7", "dataKey"),
        ({"dataKey": "body.tags.#"}, "2", "dataKey"),
        ({"dataTemplate": "{{ .Input.body.model }}"}, "resnet", "template"),
        ({"dataTemplate": "{{ .Input.body.model | upper }}-x"}, "RESNET-x", "template"),
        # template first, then key
        (
            {"dataTemplate": "t-{{ .Input.body.model }}", "dataKey": "body.dataset"},
            "t-resnet",
            "template",
        ),
        # a template rendering <no value> or "" or failing falls back to the key
        ({"dataTemplate": "{{ .Input.body.nope }}", "dataKey": "body.model"}, "resnet", "dataKey"),
        ({"dataTemplate": "{{ .Input.body.empty }}", "dataKey": "body.model"}, "resnet", "dataKey"),
        (
            {"dataTemplate": "{{ .Input.body.nothing.x }}", "dataKey": "body.model"},
            "resnet",
            "dataKey",
        ),
        # ... and then to the default
        ({"dataTemplate": "{{ .Input.body.nope }}", "value": "dflt"}, "dflt", "default"),
        ({"dataKey": "body.nope", "value": "dflt"}, "dflt", "default"),
        (
            {
                "dataTemplate": "{{ upper .Input.body.epochs }}",
                "dataKey": "body.nope",
                "value": "d",
            },
            "d",
            "default",
        ),
        # a found key wins over the default
        ({"dataKey": "body.model", "value": "dflt"}, "resnet", "dataKey"),
        # data selectors take precedence over context selectors
        ({"dataKey": "body.model", "contextKey": "subject"}, "resnet", "dataKey"),
        (
            {"dataTemplate": "{{ .Input.body.model }}", "contextTemplate": "{{ .Input.type }}"},
            "resnet",
            "template",
        ),
        # only a default: the default
        ({"value": "only"}, "only", "default"),
    ],
)
def test_resolution_order(src: dict[str, Any], value: Any, source: str) -> None:
    r = resolve(**src)
    assert (r.value, r.source) == (value, source)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("type", "webhook"),
        ("source", "webhook"),
        ("subject", "example"),
        ("id", "0123456789abcdef0123456789abcdef"),
        ("time", "2024-03-05T07:08:09.000000Z"),
        ("datacontenttype", "application/json"),
        ("specversion", "1.0"),
    ],
)
def test_context_key(key: str, expected: str) -> None:
    r = resolve(contextKey=key)
    assert (r.value, r.source) == (expected, "contextKey")


def test_context_template() -> None:
    r = resolve(contextTemplate="{{ .Input.subject | title }}/{{ .Input.type }}")
    assert (r.value, r.source) == ("Example/webhook", "template")


def test_notes_record_what_failed_before_the_fallback() -> None:
    r = resolve(dataTemplate="{{ .Input.body.nope }}", dataKey="body.nope", value="d")
    assert r.source == "default"
    assert r.notes == (
        "dataTemplate rendered <no value>",
        "dataKey 'body.nope' not found in event data",
    )


def test_missing_key_without_default_names_parameter_dependency_and_path() -> None:
    with pytest.raises(ParameterError) as info:
        resolve(dataKey="body.modle")
    assert str(info.value) == (
        "parameter 0 (training-event): dataKey 'body.modle' not found in event data, "
        "and no default value"
    )


def test_missing_context_key_without_default() -> None:
    with pytest.raises(ParameterError, match="contextKey 'nope' not found in event context"):
        resolve(contextKey="nope")


def test_failing_template_without_key_or_default_is_an_error() -> None:
    with pytest.raises(ParameterError) as info:
        resolve(dataTemplate="{{ .Input.body.nothing.x }}")
    msg = str(info.value)
    assert msg.startswith("parameter 0 (training-event): dataTemplate failed:")
    assert "nil pointer evaluating" in msg
    assert msg.endswith("and no default value")


def test_template_and_key_both_failing_are_both_reported() -> None:
    with pytest.raises(ParameterError, match="dataTemplate rendered <no value>; dataKey 'b' not"):
        resolve(dataTemplate="{{ .Input.a }}", dataKey="b")


def test_error_names_the_list_it_belongs_to() -> None:
    p = CompiledParameter.compile(param(dataKey="nope"), 3, where="k8s.parameters")
    with pytest.raises(ParameterError, match=r"^parameter 3 \(training-event\) in k8s.parameters:"):
        p.resolve(EVENTS)


def test_absent_dependency_is_skipped_or_defaulted() -> None:
    other = {"other-dep": _event()}
    assert resolve(other, dataKey="body.model") is None
    r = resolve(other, dataKey="body.model", value="dflt")
    assert (r.value, r.source) == ("dflt", "default")


NO_VALUE = "dataTemplate rendered <no value>"


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ({"dataKey": "body.model"}, Resolved("resnet", "resnet", "dataKey")),
        ({"dataKey": "body.model", "useRawData": True}, Resolved("resnet", "resnet", "dataKey")),
        ({"dataKey": "body.epochs"}, Resolved("10", "10", "dataKey")),
        ({"dataKey": "body.epochs", "useRawData": True}, Resolved(10, "10", "dataKey", True)),
        ({"dataKey": "body.nothing", "useRawData": True}, Resolved(None, "null", "dataKey", True)),
        ({"contextKey": "type"}, Resolved("webhook", "webhook", "contextKey")),
        (
            {"dataTemplate": "{{ .Input.body.nope }}", "dataKey": "body.model"},
            Resolved("resnet", "resnet", "dataKey", False, (NO_VALUE,)),
        ),
        (
            {"dataTemplate": "{{ .Input.body.nope }}", "dataKey": "body.tags", "useRawData": True},
            Resolved(["a", "b"], '["a","b"]', "dataKey", True, (NO_VALUE,)),
        ),
        (
            {"dataTemplate": "{{ .Input.body.nope }}", "dataKey": "body.flag"},
            Resolved("true", "true", "dataKey", False, (NO_VALUE,)),
        ),
        (
            {"dataTemplate": "{{ .Input.body.empty }}", "value": "d"},
            Resolved("d", "d", "default", False, ("dataTemplate rendered an empty string",)),
        ),
        (
            {"dataKey": "body.nope", "value": "d", "useRawData": True},
            Resolved("d", "d", "default", False, ("dataKey 'body.nope' not found in event data",)),
        ),
        ({"value": "d"}, Resolved("d", "d", "default")),
    ],
)
def test_resolved_value_text_source_rawness_and_notes(
    src: dict[str, Any], expected: Resolved
) -> None:
    # text is what append/prepend use; raw says the value kept its JSON type
    assert resolve(**src) == expected


def test_no_key_no_template_gives_the_whole_event() -> None:
    r = resolve()
    assert r.source == "event" and r.text == r.value and not r.raw
    assert r.value.startswith('{"context":{"id":"0123456789abcdef0123456789abcdef"')
    assert '"data":{"header":{"X-Run":["7"]}' in r.value


# --------------------------------------------------------------------------- typing


@pytest.mark.parametrize(
    ("key", "plain", "raw_value"),
    [
        ("body.model", "resnet", "resnet"),
        ("body.epochs", "10", 10),
        ("body.lr", "0.5", 0.5),
        ("body.whole", "3", 3.0),
        ("body.flag", "true", True),
        ("body.nothing", "null", None),
        ("body.config", '{"layers":[1,2],"name":"x"}', {"layers": [1, 2], "name": "x"}),
        ("body.tags", '["a","b"]', ["a", "b"]),
        ("body.empty", "", ""),
    ],
)
def test_use_raw_data_typing(key: str, plain: str, raw_value: Any) -> None:
    assert resolve(dataKey=key).value == plain
    r = resolve(dataKey=key, useRawData=True)
    assert r.value == raw_value
    assert type(r.value) is type(raw_value)


def test_templates_and_defaults_stay_strings_with_use_raw_data() -> None:
    assert resolve(dataTemplate="{{ .Input.body.epochs }}", useRawData=True).value == "10"
    assert resolve(dataKey="nope", value="5", useRawData=True).value == "5"


def test_raw_values_are_copies_of_the_event_data() -> None:
    event = _event()
    p = CompiledParameter.compile(param(dest="spec.config", dataKey="body.config", useRawData=True))
    q = CompiledParameter.compile(param(dest="spec.config.name", value="changed"))
    out, _ = apply_parameters({}, [p, q], {"training-event": event})
    assert out == {"spec": {"config": {"layers": [1, 2], "name": "changed"}}}
    assert event.data["body"]["config"]["name"] == "x"


# --------------------------------------------------------------------------- application


WORKFLOW: dict[str, Any] = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"generateName": "ml-pipeline-run-"},
    "spec": {
        "workflowTemplateRef": {"name": "ml-pipeline-template"},
        "arguments": {
            "parameters": [{"name": "model", "value": "x"}, {"name": "dataset", "value": "y"}]
        },
    },
}


def test_apply_parameters_to_a_workflow() -> None:
    params = compile_parameters(
        [
            param(dest="spec.arguments.parameters.0.value", dataKey="body.model"),
            param(dest="spec.arguments.parameters.1.value", dataKey="body.dataset"),
            param(
                dest="metadata.generateName",
                operation="append",
                dataTemplate="{{ .Input.body.model }}-",
            ),
        ]
    )
    before = copy.deepcopy(WORKFLOW)
    out, records = apply_parameters(WORKFLOW, params, EVENTS)
    assert before == WORKFLOW  # the input is never modified
    assert out["spec"]["arguments"]["parameters"] == [
        {"name": "model", "value": "resnet"},
        {"name": "dataset", "value": "imagenet"},
    ]
    assert out["metadata"]["generateName"] == "ml-pipeline-run-resnet-"
    assert [(r["index"], r["dest"], r["source"], r["value"]) for r in records] == [
        (0, "spec.arguments.parameters.0.value", "dataKey", "resnet"),
        (1, "spec.arguments.parameters.1.value", "dataKey", "imagenet"),
        (2, "metadata.generateName", "template", "ml-pipeline-run-resnet-"),
    ]
    assert records[2]["operation"] == "append"


@pytest.mark.parametrize(
    ("operation", "start", "expected"),
    [
        ("", {"name": "faker"}, {"name": "resnet"}),
        ("overwrite", {"name": "faker"}, {"name": "resnet"}),
        ("append", {"name": "faker"}, {"name": "fakerresnet"}),
        ("prepend", {"name": "faker"}, {"name": "resnetfaker"}),
        ("append", {}, {"name": "resnet"}),
        ("prepend", {}, {"name": "resnet"}),
        ("append", {"name": 5}, {"name": "5resnet"}),
        ("append", {"name": None}, {"name": "resnet"}),
        ("append", {"name": {"a": 1}}, {"name": '{"a":1}resnet'}),
    ],
)
def test_operations(operation: str, start: dict[str, Any], expected: dict[str, Any]) -> None:
    p = CompiledParameter.compile(param(dest="name", operation=operation, dataKey="body.model"))
    assert apply_parameters(start, [p], EVENTS)[0] == expected


def test_append_of_raw_values_on_absent_and_present_dest() -> None:
    # Argo's own example: raw values keep their type on an absent dest, and become
    # strings when concatenated with an existing value.
    params = compile_parameters(
        [
            param(dest="age", dataKey="body.epochs", useRawData=True),
            param(dest="ageWithYears", operation="append", dataKey="body.epochs", useRawData=True),
            param(dest="tags", operation="append", dataKey="body.tags", useRawData=True),
        ]
    )
    out, _ = apply_parameters({"age": "overwritten", "ageWithYears": "Years: "}, params, EVENTS)
    assert out == {"age": 10, "ageWithYears": "Years: 10", "tags": ["a", "b"]}


def test_dest_paths_create_and_append() -> None:
    params = compile_parameters(
        [
            param(dest="email.to.-1", dataKey="body.model"),
            param(dest="email.to.-1", dataKey="body.dataset"),
            param(dest="spec.templates.0.container.args.2", dataKey="body.epochs"),
        ]
    )
    out, _ = apply_parameters({"email": {"to": ["ops@example.com"]}}, params, EVENTS)
    assert out["email"]["to"] == ["ops@example.com", "resnet", "imagenet"]
    assert out["spec"] == {"templates": [{"container": {"args": [None, None, "10"]}}]}


def test_skipped_parameters_are_recorded() -> None:
    params = compile_parameters(
        [param(dest="a", dataKey="body.model"), param(dest="b", dep="other", dataKey="x")]
    )
    out, records = apply_parameters({}, params, EVENTS)
    assert out == {"a": "resnet"}
    assert records[1]["source"] == "skipped"
    assert records[1]["dependency"] == "other"


def test_records_say_what_each_parameter_did() -> None:
    params = compile_parameters(
        [
            param(dest="a", dep="other", dataKey="x"),  # skipped, and the next still applies
            param(dest="b", dataTemplate="{{ .Input.body.nope }}", dataKey="body.epochs",
                  useRawData=True),
            param(dest="b", operation="append", value="-x"),
        ],
        where="k8s.parameters",
    )  # fmt: skip
    out, records = apply_parameters({}, params, EVENTS)
    assert out == {"b": "10-x"}
    common = {"where": "k8s.parameters"}
    assert records == [
        {**common, "index": 0, "dependency": "other", "dest": "a", "operation": "overwrite",
         "source": "skipped", "value": None, "notes": []},
        {**common, "index": 1, "dependency": "training-event", "dest": "b",
         "operation": "overwrite", "source": "dataKey", "value": 10, "notes": [NO_VALUE]},
        {**common, "index": 2, "dependency": "training-event", "dest": "b",
         "operation": "append", "source": "default", "value": "10-x", "notes": []},
    ]  # fmt: skip


def test_parameter_compiled_with_an_empty_dest_cannot_be_applied() -> None:
    p = CompiledParameter.compile(RawParam(RawSource(value="v"), dest=""), allow_empty_dest=True)
    with pytest.raises(ParameterError) as info:
        apply_parameters({}, [p], EVENTS)
    assert str(info.value) == "parameter 0 (training-event): dest is empty"


def test_unsettable_dest_is_a_parameter_error() -> None:
    p = CompiledParameter.compile(param(dest="list.name", dataKey="body.model"))
    with pytest.raises(ParameterError, match="cannot set dest"):
        apply_parameters({"list": [1, 2]}, [p], EVENTS)


def test_construct_payload() -> None:
    params = compile_parameters(
        [
            param(dest="model", dataKey="body.model"),
            param(dest="epochs", dataKey="body.epochs", useRawData=True),
            param(dest="meta.tags", dataKey="body.tags", useRawData=True),
        ]
    )
    body, records = construct_payload(params, EVENTS)
    assert body == b'{"model":"resnet","epochs":10,"meta":{"tags":["a","b"]}}'
    assert len(records) == 3
    assert construct_payload([], EVENTS)[0] == b""


def test_construct_payload_ignores_operation_skips_absent_events_and_records() -> None:
    params = compile_parameters(
        [
            param(dest="skipped", dep="other", dataKey="x"),
            param(dest="a", dataKey="body.model"),
            param(dest="a", operation="append", dataKey="body.dataset"),  # Argo: overwrite
        ]
    )
    body, records = construct_payload(params, EVENTS)
    assert body == b'{"a":"imagenet"}'
    assert [(r["source"], r["value"]) for r in records] == [
        ("skipped", None),
        ("dataKey", "resnet"),
        ("dataKey", "imagenet"),
    ]


def test_construct_payload_with_an_empty_dest_sends_the_value_as_the_body() -> None:
    params = compile_parameters(
        [
            RawParam(RawSource(data_key="body.config"), dest=""),
            param(dest="never", dataKey="body.model"),
        ],
        allow_empty_dest=True,
    )
    body, records = construct_payload(params, EVENTS)
    assert body == b'{"layers":[1,2],"name":"x"}'
    assert len(records) == 1
    assert (records[0]["source"], records[0]["value"]) == ("dataKey", '{"layers":[1,2],"name":"x"}')


# --------------------------------------------------------------------------- compile errors


@pytest.mark.parametrize(
    ("src", "dest", "field"),
    [
        ({"dataKey": "friends.@pretty"}, "x", "parameters[0].src.dataKey"),
        ({"contextKey": "@dig:x"}, "x", "parameters[0].src.contextKey"),
        ({"dataTemplate": "{{ nope }}"}, "x", "parameters[0].src.dataTemplate"),
        ({"contextTemplate": "{{ if }}"}, "x", "parameters[0].src.contextTemplate"),
        ({"dataKey": "a"}, "a.*", "parameters[0].dest"),
        ({"dataKey": "a"}, "a..b", "parameters[0].dest"),
    ],
)
def test_compile_errors_name_the_field(src: dict[str, Any], dest: str, field: str) -> None:
    with pytest.raises(ParameterSpecError) as info:
        CompiledParameter.compile(param(dest=dest, **src))
    err = info.value
    assert err.path == field
    assert str(err).startswith(field + ": ")
    assert isinstance(err, ValueError)
    assert isinstance(err, ConfigError)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (RawParam(RawSource(data_key="a"), operation="bogus"),
         "parameters[0].operation: unsupported operation 'bogus'"),
        (RawParam(RawSource(dependency_name="", data_key="a")),
         "parameters[0].src.dependencyName: dependency name can't be empty"),
        (RawParam(RawSource(data_key="a"), dest=""),
         "parameters[0].dest: destination can't be empty"),
        (RawParam(RawSource(data_key="friends.@pretty")),
         "parameters[0].src.dataKey: invalid path 'friends.@pretty': "),
        (RawParam(RawSource(context_template="{{ nope }}")),
         "parameters[0].src.contextTemplate: invalid template: "),
        (RawParam(RawSource(data_key="a"), dest="a..b"), "parameters[0].dest: invalid path: "),
    ],
)  # fmt: skip
def test_compile_error_messages(spec: RawParam, message: str) -> None:
    # the same message from the constructor, compile() and compile_parameters() defaults
    for compile_one in (CompiledParameter, CompiledParameter.compile, _compile_first):
        with pytest.raises(ParameterSpecError) as info:
            compile_one(spec)
        text = str(info.value)
        if message.endswith(": "):  # the parser's own reason follows
            assert text.startswith(message) and len(text) > len(message), text
        else:
            assert text == message


def _compile_first(p: RawParam) -> CompiledParameter:
    return compile_parameters([p])[0]


def test_empty_dest_is_allowed_only_when_asked() -> None:
    spec = RawParam(RawSource(value="v"), dest="")
    assert compile_parameters([spec], allow_empty_dest=True)[0].dest == ""
    p = CompiledParameter.compile(spec, allow_empty_dest=True)
    assert p.dest == "" and p.label == "parameter 0 (training-event)"
    assert CompiledParameter(spec, allow_empty_dest=True).dest == ""


def test_compile_parameters_uses_list_positions() -> None:
    with pytest.raises(ParameterSpecError) as info:
        compile_parameters([param(dataKey="a"), param(dataKey="@pretty")], where="k8s.parameters")
    assert info.value.path == "k8s.parameters[1].src.dataKey"


# --------------------------------------------------------------------------- properties

plain_keys = st.text(alphabet="abcdefgh", min_size=1, max_size=4)
scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=5)


@given(
    body=st.dictionaries(plain_keys, scalars, min_size=1, max_size=6),
    data=st.data(),
)
def test_data_key_to_dest_round_trip(body: dict[str, Any], data: Any) -> None:
    key = data.draw(st.sampled_from(sorted(body)))
    events = {"dep": _event({"body": body})}
    p = CompiledParameter.compile(
        param(dest=f"spec.args.{key}", dep="dep", dataKey=f"body.{key}", useRawData=True)
    )
    out, records = apply_parameters({"spec": {"other": 1}}, [p], events)
    # with useRawData every found value keeps its JSON type
    assert out == {"spec": {"other": 1, "args": {key: body[key]}}}
    assert records[0]["value"] == body[key]
    # without it, the string form gjson gives
    q = CompiledParameter.compile(param(dest="v", dep="dep", dataKey=f"body.{key}"))
    assert apply_parameters({}, [q], events)[0]["v"] == _as_gjson_string(body[key])


def _as_gjson_string(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
