"""Dependency filters and EventSource filters (sensors.filters), as Argo evaluates them.

The tables port Argo's own tests (pkg/sensors/dependencies/filter_data_test.go,
filter_expr_test.go, filter_ctx_test.go, filter_time_test.go, filter_test.go,
filter_event_test.go): same filters, same event data, same expected outcome. Argo's
"error" outcomes are "not passed" here (Argo drops those events too), except where a
case can be refused when the manifest loads, which the compile tests cover.
"""

from __future__ import annotations

import time as time_module
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from app.kernel.events import Event
from app.languages.source_filter import event_source_filter
from sensors.filters import CompiledFilters, FilterVerdict
from sensors.spec import (
    DataFilter,
    EventContextFilter,
    EventDependencyFilter,
    ExprFilter,
    PayloadField,
    TimeFilter,
)

DAY = "2024-07-15"


def make_event(
    data: Any = None,
    *,
    time: str = f"{DAY}T16:36:34Z",
    type: str = "webhook",
    source: str = "webhook-gateway",
    subject: str = "example-1",
    datacontenttype: str = "application/json",
) -> Event:
    return Event(
        id="1",
        source=source,
        subject=subject,
        type=type,
        data=data,
        time=time,
        datacontenttype=datacontenttype,
    )


def run(
    spec: dict[str, Any] | None, data: Any = None, operator: str = "", **event: Any
) -> FilterVerdict:
    model = None if spec is None else EventDependencyFilter.model_validate(spec)
    return CompiledFilters.compile(model, operator).evaluate(make_event(data, **event))


def passes(spec: dict[str, Any] | None, data: Any = None, operator: str = "", **ev: Any) -> bool:
    return run(spec, data, operator, **ev).passed


def d(
    path: str, type: str, *values: str, comparator: str = "", template: str = ""
) -> dict[str, Any]:
    out: dict[str, Any] = {"path": path, "type": type, "value": list(values)}
    if comparator:
        out["comparator"] = comparator
    if template:
        out["template"] = template
    return out


def x(expr: str, **fields: str) -> dict[str, Any]:
    return {"expr": expr, "fields": [{"name": n, "path": p} for n, p in fields.items()]}


# --------------------------------------------------------------------------- data
# filter_data_test.go, case by case (its "nil event" / invalid-filter cases are in
# test_compile_errors_name_the_field).

NESTED = {"k": True, "k1": {"k": 3.14, "k2": "hello, world"}}


@pytest.mark.parametrize(
    ("filters", "operator", "data", "expected"),
    [
        pytest.param([d("k", "string", "v")], "", "a", False, id="data not an object"),
        pytest.param([d("k", "string", "v")], "", None, True, id="empty data"),
        pytest.param([d("k", "string", "v")], "", {"k": "v"}, True, id="string"),
        pytest.param([d("k", "string", "v", comparator="=")], "", {"k": "v"}, True, id="string ="),
        pytest.param(
            [d("k", "string", "b", comparator="!=")], "", {"k": "v"}, True, id="string !="
        ),
        pytest.param([d("k", "number", "1.0")], "", {"k": "1.0"}, True, id="number in string"),
        pytest.param([d("k", "number", "1.0", comparator=">")], "", {"k": "2.0"}, True, id="str >"),
        pytest.param(
            [d("k", "number", "1.0", comparator="<=")], "", {"k": "2.0"}, False, id="str <="
        ),
        pytest.param(
            [d("k", "number", "1.0", comparator="!=")], "", {"k": "1.0"}, False, id="str !="
        ),
        pytest.param([d("k", "number", "5.0", comparator="=")], "", {"k": "5.0"}, True, id="str ="),
        pytest.param([d("k", "number", "10.0")], "", {"k": "10.0"}, True, id="str empty"),
        pytest.param([d("k", "number", "1.0")], "", {"k": 1.0}, True, id="number"),
        pytest.param([d("k", "number", "1.0", comparator=">")], "", {"k": 2.0}, True, id="num >"),
        pytest.param(
            [d("k", "number", "1.0", comparator="<=")], "", {"k": 2.0}, False, id="num <="
        ),
        pytest.param(
            [d("k", "number", "1.0", comparator="!=")], "", {"k": 1.0}, False, id="num !="
        ),
        pytest.param([d("k", "number", "5.0", comparator="=")], "", {"k": 5}, True, id="num ="),
        pytest.param([d("k", "number", "10.0")], "", {"k": 10.0}, True, id="num empty"),
        pytest.param(
            [
                d("k", "string", "v"),
                d("k1.k", "number", "2.14"),
                d("k1.k2", "string", "hello,world", "hello there"),
            ],
            "",
            NESTED,
            False,
            id="multiple, empty operator",
        ),
        pytest.param(
            [
                d("k", "bool", "true"),
                d("k1.k", "number", "3.14"),
                d("k1.k2", "string", "hello,world", "hello, world", "hello there"),
            ],
            "and",
            NESTED,
            True,
            id="multiple, and",
        ),
        pytest.param(
            [
                d("k", "bool", "false"),
                d("k1.k", "number", "3.14"),
                d("k1.k2", "string", "hello,world", "hello there"),
            ],
            "or",
            NESTED,
            True,
            id="multiple, or",
        ),
        pytest.param(
            [d('[k,k1.a.#(k2=="v2").k2]', "string", r"\bv\b.*\bv2\b", comparator="=")],
            "",
            {"k": "v", "k1": {"a": [{"k2": "v2"}]}},
            True,
            id="regex over a multipath",
        ),
        pytest.param(
            [
                d(
                    '[k,k1.a.#(k2=="v2").k2,,k1.a.#(k2=="v3").k2]',
                    "string",
                    r"(\bz\b.*\bv2\b)|(\bv\b.*(\bv2\b.*\bv3\b))",
                )
            ],
            "",
            {"k": "v", "k1": {"a": [{"k2": "v2"}, {"k2": "v3"}]}},
            True,
            id="regex over a multipath 2",
        ),
        pytest.param(
            [d("k", "string", "HELLO WORLD", template="{{ b64dec .Input | upper }}")],
            "",
            {"k": "aGVsbG8gd29ybGQ="},
            True,
            id="template b64dec upper",
        ),
        pytest.param(
            [d("k", "number", "3.13", comparator=">", template="{{ b64dec .Input }}")],
            "",
            {"k": "My4xNA=="},
            True,
            id="template number",
        ),
        pytest.param(
            [d("k", "string", "hello world", comparator="!=", template="{{ b64dec .Input }}")],
            "",
            {"k": "aGVsbG8gd29ybGQ"},  # bad base64: b64dec renders an error text
            True,
            id="template !=",
        ),
        pytest.param(
            [d("k", "string", "world$", template="{{ b64dec .Input }}")],
            "",
            {"k": "aGVsbG8gd29ybGQ="},
            True,
            id="template regex",
        ),
    ],
)
def test_data_filters_ported_from_argo(
    filters: list[dict[str, Any]], operator: str, data: Any, expected: bool
) -> None:
    spec: dict[str, Any] = {"data": filters}
    if operator:
        spec["dataLogicalOperator"] = operator
    assert passes(spec, data) is expected


@pytest.mark.parametrize(
    ("filter", "data", "expected"),
    [
        # string values are unanchored regexes over the value's text
        pytest.param(d("a", "string", "v"), {"a": "very"}, True, id="unanchored"),
        pytest.param(d("a", "string", "^v$"), {"a": "very"}, False, id="anchored by user"),
        pytest.param(d("a", "string", "^v$"), {"a": "v\n"}, False, id="$ is end of text"),
        pytest.param(d("a", "string", "resnet", "bert"), {"a": "bert"}, True, id="values ORed"),
        pytest.param(d("a", "string", "^5$"), {"a": 5.0}, True, id="number as text"),
        pytest.param(d("a", "string", "^true$"), {"a": True}, True, id="bool as text"),
        pytest.param(d("a", "string", '"x":1'), {"a": {"x": 1}}, True, id="object as JSON"),
        pytest.param(d("a", "string", "^$"), {"a": None}, True, id="null as empty text"),
        pytest.param(d("a", "string", "b", comparator=">"), {"a": "b"}, False, id="string > never"),
        pytest.param(
            d("a", "string", "a", "b", comparator="!="), {"a": "a"}, True, id="!= some value"
        ),
        # numbers: gjson Float()
        pytest.param(d("a", "number", "0"), {"a": "abc"}, True, id="unparsable text is 0"),
        pytest.param(d("a", "number", "1"), {"a": True}, True, id="true is 1"),
        pytest.param(d("a", "number", "0"), {"a": [1]}, True, id="array is 0"),
        pytest.param(d("a", "number", "1e3"), {"a": "1000"}, True, id="exponent"),
        pytest.param(d("a", "number", "2", "3", comparator="<"), {"a": 2.5}, True, id="any <"),
        pytest.param(d("a", "number", "2", comparator=">="), {"a": 2}, True, id=">="),
        pytest.param(d("a", "number", "2", comparator="<"), {"a": 2}, False, id="<"),
        # bools: gjson Bool(), comparator ignored
        pytest.param(d("a", "bool", "true"), {"a": "TRUE"}, True, id="string TRUE"),
        pytest.param(d("a", "bool", "true"), {"a": "t"}, True, id="string t"),
        pytest.param(d("a", "bool", "true"), {"a": "yes"}, False, id="string yes"),
        pytest.param(d("a", "bool", "true"), {"a": 2}, True, id="non-zero number"),
        pytest.param(d("a", "bool", "false"), {"a": None}, True, id="null is false"),
        pytest.param(d("a", "bool", "False", comparator="!="), {"a": False}, True, id="no !="),
        # templates see the value as text
        pytest.param(
            d("a", "number", "6", template="{{ len .Input }}"), {"a": "abcdef"}, True, id="tpl"
        ),
        pytest.param(
            d("a", "string", ".", template="{{ .Missing }}"), {"a": "x"}, False, id="no value"
        ),
        pytest.param(
            d("a", "string", ".", template="{{ if false }}x{{ end }}"),
            {"a": "x"},
            False,
            id="empty template output",
        ),
        pytest.param(
            d("a", "string", ".", template="{{ .Input.x }}"), {"a": "x"}, False, id="tpl error"
        ),
        # a path that is not there fails the filter
        pytest.param(d("b", "string", "."), {"a": "x"}, False, id="missing path"),
        pytest.param(d("b", "bool", "false"), {"a": "x"}, False, id="missing path, bool"),
    ],
)
def test_data_filter_edges(filter: dict[str, Any], data: Any, expected: bool) -> None:
    assert passes({"data": [filter]}, data) is expected


@pytest.mark.parametrize(
    ("operator", "data", "expected"),
    [
        ("", {"a": "x"}, False),  # and: the missing path fails the whole kind
        ("and", {"a": "x", "b": "y"}, True),
        ("or", {"a": "x"}, True),  # or: the other filter is enough
        ("or", {"c": "x"}, False),
    ],
)
def test_missing_path_under_and_or(operator: str, data: Any, expected: bool) -> None:
    spec = {
        "data": [d("a", "string", "x"), d("b", "string", "y")],
        "dataLogicalOperator": operator,
    }
    assert passes(spec, data) is expected


def test_data_reasons() -> None:
    verdict = run(
        {
            "data": [
                d("body.model", "string", "resnet"),
                d("body.model", "string", "resnet", "vgg"),
                d("body.size", "number", "2", comparator=">"),
                d("body.size", "number", "5", comparator=">"),
                d("body.gone", "string", "."),
                d("body.ok", "bool", "true"),
                d("body.model", "string", "b.rt", template="{{ .Input | upper }}"),
            ],
            "dataLogicalOperator": "or",
        },
        {"body": {"model": "bert", "size": 3, "ok": False}},
    )
    assert verdict.passed
    assert verdict.reasons == [
        'data[0] body.model: "bert" !~ "resnet"',
        'data[1] body.model: "bert" !~ all of ["resnet", "vgg"]',
        "data[2] body.size: 3 > 2",
        "data[3] body.size: 3 <= 5",
        "data[4] body.gone: path not found",
        "data[5] body.ok: false != true",
        'data[6] body.model | template: "BERT" !~ "b.rt"',
    ]


# --------------------------------------------------------------------------- exprs
# filter_expr_test.go


AB = {"a": {"b": "x", "d": "y"}}


@pytest.mark.parametrize(
    ("exprs", "operator", "data", "expected"),
    [
        pytest.param([x('a == "b"', a="a")], "", "a", False, id="data not an object"),
        pytest.param([x('a == "b"', a="a")], "", None, True, id="empty data"),
        pytest.param([x('a == "b"', a="a")], "", {"a": "b"}, True, id="string equal"),
        pytest.param([x('a != "b"', a="a")], "", {"a": "c"}, True, id="string different"),
        pytest.param([x('b == "b"', b="a.b")], "", {"a": {"b": "c"}}, False, id="nested"),
        pytest.param([x("b == 2", b="a.b")], "", {"a": {"b": 2}}, True, id="number equal"),
        pytest.param([x("b < 1", b="a.b")], "", {"a": {"b": 2}}, False, id="number less"),
        pytest.param(
            [x('b =~ "start"', b="a.b")], "", {"a": {"b": "start long string"}}, True, id="=~"
        ),
        pytest.param([x('b !~ "start"', b="a.b")], "", {"a": {"b": "long string"}}, True, id="!~"),
        pytest.param([x('b == "x"', b="a.b"), x('d == "y"', d="a.d")], "", AB, True, id="multiple"),
        pytest.param([x('b == "x"', b="a.b"), x('d == "d"', d="a.d")], "and", AB, False, id="and"),
        pytest.param([x('b == "x"', b="a.b"), x('d == "d"', d="a.d")], "or", AB, True, id="or"),
        pytest.param(
            [x('b == "b"', b="a.b"), x('c == "c"', c="a.c")],
            "or",
            AB,
            False,
            id="or, one field missing",
        ),
        pytest.param(
            [x('b == "x"', b="a.b"), x('c == "c"', c="a.c"), x("e == true", e="a.d.e")],
            "or",
            {"a": {"b": "x", "d": {"e": True}}},
            True,
            id="or, missing field not needed",
        ),
        pytest.param(
            [x('b == "b"', b="a.b"), x('c == "c"', c="a.c")],
            "",
            AB,
            False,
            id="and, first false",
        ),
        pytest.param(
            [x('b == "x"', b="a.b"), x('c == "c"', c="a.c")],
            "",
            AB,
            False,
            id="and, one field missing",
        ),
        pytest.param(
            [x('b == "x"', b="a.b"), x('c == "c"', c="a.c"), x("e == true", e="a.d.e")],
            "and",
            {"a": {"b": "x", "d": {"e": True}}},
            False,
            id="and, field missing",
        ),
        pytest.param(
            [x('b != "b" && d == true', b="a.b", d="a.d")],
            "",
            {"a": {"b": "x", "c": {"d": True}}},
            False,
            id="&& inside, field missing",
        ),
        pytest.param(
            [x('b != "b" && d == true', b="a.b", d="a.c.d")],
            "or",
            {"a": {"b": "x", "c": {"d": True}}},
            True,
            id="&& inside",
        ),
        pytest.param(
            [x('b == "b" || d == true', b="a.b", d="a.c.d")],
            "",
            {"a": {"b": "b", "c": {"d": False}}},
            True,
            id="|| inside",
        ),
        pytest.param(
            # e is not bound, but || never reaches it
            [x('b == "b" || (d == true && e == 2)', b="a.b", d="a.c.d")],
            "",
            {"a": {"b": "b", "c": {"d": False}, "e": 2}},
            True,
            id="short-circuit",
        ),
    ],
)
def test_expr_filters_ported_from_argo(
    exprs: list[dict[str, Any]], operator: str, data: Any, expected: bool
) -> None:
    spec: dict[str, Any] = {"exprs": exprs}
    if operator:
        spec["exprLogicalOperator"] = operator
    assert passes(spec, data) is expected


def test_expr_values_are_gjson_values() -> None:
    data = {"n": 2, "list": [1, 2], "obj": {"k": [True]}, "none": None}
    assert passes({"exprs": [x("n == 2.0 && n / 4 == 0.5", n="n")]}, data)
    assert passes({"exprs": [x("2 in l", l="list")]}, data)
    assert passes({"exprs": [x("z == nil", z="none")]}, data) is False  # no nil literal
    assert passes({"exprs": [x("n + 1", n="n")]}, data) is False  # not a bool


def test_expr_reasons() -> None:
    verdict = run(
        {
            "exprs": [
                x('a == "b"', a="a"),
                x("a == 1", a="a"),
                x("c == 1", c="missing"),
                x("a && true", a="a"),
                x("a + 1", a="a"),
            ],
            "exprLogicalOperator": "or",
        },
        {"a": "b"},
    )
    assert verdict.passed
    assert verdict.reasons == [
        "exprs[0]: true",
        "exprs[1]: false",
        "exprs[2]: path 'missing' not found",
        "exprs[3]: error: '&&' needs a bool, got string \"b\"",
        'exprs[4]: result "b1" is not a bool',
    ]


# --------------------------------------------------------------------------- context
# filter_ctx_test.go


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({"type": "webhook"}, True),
        ({"type": "calendar"}, False),
        ({"type": "webhook", "source": "webhook-gateway"}, True),
        ({"type": "webhook", "source": "webhook-fake"}, False),
        ({"subject": "example-1", "datacontenttype": "application/json"}, True),
        ({"datacontenttype": "text/plain"}, False),
        ({"source": "webhook-gateway", "id": "other", "specversion": "0.3"}, True),
    ],
)
def test_context_filter(context: dict[str, str], expected: bool) -> None:
    assert passes({"context": context}, {"k": "v"}) is expected


def test_context_reasons() -> None:
    verdict = run({"context": {"type": "webhook", "source": "webhook"}}, source="gh")
    assert not verdict.passed
    assert verdict.reasons == ['context: source "gh" != "webhook"']
    ok = run({"context": {"type": "webhook"}})
    assert ok.reasons == ['context: type == "webhook"']


# --------------------------------------------------------------------------- time
# filter_time_test.go

TIMES = ["00:00:00", "04:05:06", "08:09:10", "12:13:14", "16:17:18", "20:21:22"]


@pytest.mark.parametrize(
    ("start", "stop", "expected"),
    [
        ("08:09:10", "16:17:18", [False, False, True, True, False, False]),  # [start, stop)
        ("16:17:18", "08:09:10", [True, True, False, False, True, True]),  # wraps midnight
    ],
)
def test_time_window(start: str, stop: str, expected: list[bool]) -> None:
    spec = {"time": {"start": start, "stop": stop}}
    got = [passes(spec, {"k": "v"}, time=f"{DAY}T{t}Z") for t in TIMES]
    assert got == expected


@pytest.mark.parametrize(
    ("event_time", "start", "stop", "zone", "expected"),
    [
        ("2024-07-15T10:00:00Z", "09:00:00", "17:00:00", "", True),
        ("2024-07-15T14:00:00Z", "09:00:00", "17:00:00", "America/New_York", True),  # 10 EDT
        ("2024-07-15T12:00:00Z", "09:00:00", "17:00:00", "America/New_York", False),  # 8 EDT
        ("2024-07-15T22:00:00Z", "09:00:00", "17:00:00", "America/New_York", False),  # 18 EDT
        ("2024-07-15T10:00:00Z", "10:00:00", "18:00:00", "Europe/London", True),  # 11 BST
        ("2024-07-15T01:00:00Z", "09:00:00", "17:00:00", "Asia/Tokyo", True),  # 10 JST
        ("2024-07-15T02:00:00Z", "22:00:00", "06:00:00", "America/New_York", True),  # 22 EDT
        ("2024-01-15T15:00:00Z", "09:00:00", "17:00:00", "America/New_York", True),  # 10 EST
        # edges: start inclusive, stop exclusive, offsets in the event time
        ("2024-07-15T09:00:00Z", "09:00:00", "17:00:00", "", True),
        ("2024-07-15T17:00:00Z", "09:00:00", "17:00:00", "", False),
        ("2024-07-15T11:00:00+02:00", "09:00:00", "10:00:00", "", True),  # 09:00 UTC
        ("2024-07-15T23:30:00Z", "22:00:00", "06:00:00", "Europe/Paris", True),  # 01:30 CEST
        ("2024-07-15T04:30:00Z", "22:00:00", "06:00:00", "Europe/Paris", False),  # 06:30
    ],
)
def test_time_window_with_timezone(
    event_time: str, start: str, stop: str, zone: str, expected: bool
) -> None:
    spec = {"time": {"start": start, "stop": stop, "timezone": zone}}
    assert passes(spec, {"k": "v"}, time=event_time) is expected


def test_time_reason_and_the_time_used() -> None:
    spec = {"time": {"start": "09:00:00", "stop": "12:00:00", "timezone": "Europe/Paris"}}
    verdict = run(spec, time="2024-07-15T11:05:00Z")
    assert verdict.reasons == ["time: 13:05:00 outside [09:00:00, 12:00:00) Europe/Paris"]
    # the event's own time counts, not the time it is filtered at
    late = datetime(2024, 7, 15, 23, 0, tzinfo=UTC)
    compiled = CompiledFilters.compile(EventDependencyFilter.model_validate(spec))
    assert compiled.evaluate(make_event(time="2024-07-15T08:00:00Z"), now=late).passed
    # an event without a readable time is checked at now
    no_time = make_event(time="")
    assert compiled.evaluate(no_time, now=datetime(2024, 7, 15, 8, 0, tzinfo=UTC)).passed
    verdict = compiled.evaluate(no_time, now=late)
    assert not verdict.passed
    assert "no readable time" in verdict.reasons[0]


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 86399),
    stop=st.integers(0, 86399),
    at=st.integers(0, 86399),
    day=st.dates(min_value=datetime(2000, 1, 1).date(), max_value=datetime(2100, 1, 1).date()),
)
def test_time_window_matches_the_wall_clock_rule(start: int, stop: int, at: int, day: Any) -> None:
    if start == stop:
        return

    def hms(s: int) -> str:
        return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"

    when = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=at)
    spec = {"time": {"start": hms(start), "stop": hms(stop)}}
    expected = start <= at < stop if start < stop else (at >= start or at < stop)
    assert passes(spec, time=when.isoformat()) is expected


# --------------------------------------------------------------------------- all kinds
# filter_test.go and filter_event_test.go

KV = {"k": "v"}
ABC = {"a": "x", "b": 10, "c": {"d": "hello world", "e": False}}


def combo(
    data: list[dict[str, Any]] | None = None,
    data_op: str = "",
    exprs: list[dict[str, Any]] | None = None,
    expr_op: str = "",
    context: dict[str, str] | None = None,
    time: tuple[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if data is not None:
        spec["data"] = data
        spec["dataLogicalOperator"] = data_op
    if exprs is not None:
        spec["exprs"] = exprs
        spec["exprLogicalOperator"] = expr_op
    if context is not None:
        spec["context"] = context
    if time is not None:
        spec["time"] = {"start": time[0], "stop": time[1]}
    return spec


GATEWAY = {"type": "webhook", "source": "webhook-gateway"}


@pytest.mark.parametrize(
    ("spec", "operator", "data", "expected"),
    [
        pytest.param({}, "and", KV, True, id="empty"),
        pytest.param(combo(data=[d("k", "string", "v")]), "and", KV, True, id="passing"),
        pytest.param(combo(data=[d("z", "string", "v")]), "and", KV, False, id="not passing"),
        pytest.param(combo(context=GATEWAY, data=[d("k", "string", "z")]), "", KV, False),
        pytest.param(combo(context=GATEWAY, data=[d("z", "string", "v")]), "", KV, False),
        pytest.param(
            combo(
                context={"type": "webhook", "source": "webhook-fake"}, data=[d("k", "string", "v")]
            ),
            "and",
            KV,
            False,
            id="and",
        ),
        pytest.param(combo(context=GATEWAY, data=[d("z", "string", "v")]), "or", KV, True, id="or"),
        pytest.param(
            combo(
                data=[d("a", "string", "x"), d("b", "number", "10")],
                exprs=[x('d == "hello world"', d="c.d"), x("e == false", e="c.e")],
            ),
            "",
            ABC,
            True,
            id="(A && B) && (C && D)",
        ),
        pytest.param(
            combo(
                data=[d("z", "string", "x"), d("b", "number", "10")],
                exprs=[x('d == "hello world"', d="c.d"), x("e == false", e="c.e")],
            ),
            "",
            ABC,
            False,
            id="(A && B) && (C && D), missing path",
        ),
        pytest.param(
            combo(
                data=[d("a", "string", "x"), d("b", "number", "10")],
                data_op="and",
                exprs=[x('d == "hello world"', d="c.d"), x("e == true", e="c.e")],
                expr_op="and",
            ),
            "or",
            ABC,
            True,
            id="(A && B) || (C && D)",
        ),
        pytest.param(
            combo(
                data=[d("a", "string", "x"), d("b", "number", "11")],
                data_op="or",
                exprs=[x('d == "hello world"', d="c.d"), x("e == true", e="c.e")],
                expr_op="or",
            ),
            "and",
            ABC,
            True,
            id="(A || B) && (C || D)",
        ),
        pytest.param(
            combo(
                data=[d("a.d.e.f", "string", "not-valid"), d("a.h.i", "string", "not-valid")],
                exprs=[x('A == "not-valid"', A="a.b")],
            ),
            "or",
            {"a": {"b": "valid", "d": {"e": {"f": "valid"}}, "h": {"i": "valid"}}},
            False,
            id="or with only a subset of kinds set",
        ),
        pytest.param(
            combo(
                data=[d("a", "string", "y"), d("b", "number", "11")],
                data_op="or",
                exprs=[x('d == "hello world"', d="c.d"), x("e == false", e="c.e")],
                expr_op="or",
            ),
            "or",
            ABC,
            True,
            id="(A || B) || (C || D)",
        ),
        pytest.param(
            combo(
                data=[d("a", "string", "x"), d("b", "number", "10")],
                data_op="and",
                exprs=[x('d == "hello everybody"', d="c.d"), x("e == true", e="c.e")],
                expr_op="or",
            ),
            "or",
            ABC,
            True,
            id="(A && B) || (C || D)",
        ),
        pytest.param(
            combo(
                data=[d("a", "string", "x"), d("b", "number", "11")],
                data_op="or",
                exprs=[x('d == "hello everybody"', d="c.d"), x("e == false", e="c.e")],
                expr_op="and",
            ),
            "or",
            ABC,
            True,
            id="(A || B) || (C && D)",
        ),
        pytest.param(
            combo(
                data=[d("a", "string", "x"), d("b", "number", "11")],
                data_op="and",
                exprs=[x('d == "hello everybody"', d="c.d"), x("e == true", e="c.e")],
                expr_op="or",
            ),
            "and",
            ABC,
            False,
            id="(A && B) && (C || D)",
        ),
        pytest.param(
            combo(
                data=[d("a", "string", "x"), d("b", "number", "10")],
                data_op="or",
                exprs=[x('f == "hello world"', f="c.f"), x("e == false", e="c.e")],
                expr_op="and",
            ),
            "and",
            ABC,
            False,
            id="(A || B) && (C && D), missing path",
        ),
        # filter_event_test.go: time + context + data + exprs under and
        pytest.param(
            combo(
                time=("09:09:09", "19:19:19"),
                context=GATEWAY,
                data=[d("k", "string", "v")],
                exprs=[x('k != "x"', k="k")],
            ),
            "and",
            KV,
            True,
            id="all kinds pass",
        ),
        pytest.param(
            combo(
                time=("09:09:09", "10:10:10"),
                context=GATEWAY,
                data=[d("k", "string", "v")],
                exprs=[x('k != "x"', k="k")],
            ),
            "and",
            KV,
            False,
            id="time fails",
        ),
        pytest.param(
            combo(
                time=("09:09:09", "19:19:19"),
                context=GATEWAY,
                data=[d("k", "string", "v")],
                exprs=[x('k != "v"', k="k")],
            ),
            "and",
            KV,
            False,
            id="expr fails",
        ),
        pytest.param(
            combo(time=("09:09:09", "10:10:10")), "or", KV, False, id="or, time alone fails"
        ),
        pytest.param(
            combo(time=("09:09:09", "10:10:10"), context=GATEWAY), "or", KV, True, id="or, ctx"
        ),
    ],
)
def test_filters_ported_from_argo(
    spec: dict[str, Any], operator: str, data: Any, expected: bool
) -> None:
    assert passes(spec, data, operator) is expected


def test_no_filters_pass_whatever_the_operator() -> None:
    assert passes(None, KV, "or")
    assert passes({}, KV, "or")
    assert passes({"dataLogicalOperator": "or"}, KV, "or")
    verdict = run(None, KV)
    assert verdict.passed and verdict.reasons == [] and str(verdict) == "passed (no filters)"


def test_verdict_reasons_follow_argos_order() -> None:
    verdict = run(
        combo(
            time=("09:09:09", "10:10:10"),
            context=GATEWAY,
            data=[d("k", "string", "v")],
            exprs=[x('k == "v"', k="k")],
        ),
        KV,
        "or",
    )
    assert verdict.passed
    assert [r.split(":")[0].split("[")[0].split(" ")[0] for r in verdict.reasons] == [
        "exprs",
        "data",
        "context",
        "time",
    ]
    assert str(verdict) == "; ".join(verdict.reasons)


def test_no_data_passes_data_and_expr_filters() -> None:
    verdict = run(combo(data=[d("k", "string", "v")], exprs=[x("k", k="k")]), None)
    assert verdict.passed
    assert verdict.reasons == [
        "exprs: the event has no data (passes, as in Argo)",
        "data: the event has no data (passes, as in Argo)",
    ]


@pytest.mark.parametrize(
    ("spec", "data", "passed", "reason"),
    [
        # the reason names the value that decided
        pytest.param(d("a", "string", "x", "b"), {"a": "b"}, True, 'data[0] a: "b" =~ "b"',
                     id="= matched by the second value"),
        pytest.param(d("a", "string", "a", "b", comparator="!="), {"a": "a"}, True,
                     'data[0] a: "a" !~ "b"', id="!= passed by the second value"),
        pytest.param(d("a", "string", "a", comparator="!="), {"a": "a"}, False,
                     'data[0] a: "a" =~ "a"', id="!= failed"),
        pytest.param(d("a", "string", "a", comparator="<"), {"a": "a"}, False,
                     "data[0] a: comparator '<' never matches a string filter (as in Argo), "
                     'value "a"', id="string <"),
        # an empty template output fails even a filter it would pass (Argo: "template
        # evaluated to empty string or no value")
        pytest.param(d("a", "string", "^$", template="{{ if false }}x{{ end }}"), {"a": "x"},
                     False, "data[0] a: template produced no value ('')", id="empty output"),
        pytest.param(d("a", "string", "^$", template="{{ .Missing }}"), {"a": "x"}, False,
                     "data[0] a: template produced no value ('<no value>')", id="no value"),
    ],
)  # fmt: skip
def test_data_reason_lines(spec: dict[str, Any], data: Any, passed: bool, reason: str) -> None:
    verdict = run({"data": [spec]}, data)
    assert (verdict.passed, verdict.reasons) == (passed, [reason])


def test_context_reason_lists_every_field() -> None:
    both = {"type": "calendar", "source": "cron"}
    assert run({"context": both}).reasons == [
        'context: type "webhook" != "calendar", source "webhook-gateway" != "cron"'
    ]
    ok = run({"context": {"type": "webhook", "source": "webhook-gateway"}})
    assert ok.reasons == ['context: type == "webhook", source == "webhook-gateway"']


def test_repr_names_the_kinds_and_the_operator() -> None:
    spec = combo(
        time=("09:09:09", "10:10:10"),
        context=GATEWAY,
        data=[d("k", "string", "v")],
        exprs=[x('k == "v"', k="k")],
    )
    model = EventDependencyFilter.model_validate(spec)
    assert (
        repr(CompiledFilters.compile(model, "or")) == "CompiledFilters(exprs|data|context|time, or)"
    )
    assert repr(CompiledFilters.compile(None, "or")) == "CompiledFilters(none, or)"
    assert repr(CompiledFilters.compile(None)) == "CompiledFilters(none, and)"


# --------------------------------------------------------------------------- time, further
# The machine's own zone never counts: naive times are UTC, and a window without a
# timezone is in UTC. The tests run with the process in Tokyo time to show it.


@pytest.fixture
def tokyo_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time_module.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time_module.tzset()


WINDOW = {"time": {"start": "09:00:00", "stop": "12:00:00"}}


@pytest.mark.usefixtures("tokyo_local_time")
@pytest.mark.parametrize(
    ("event_time", "expected"),
    [
        ("2024-07-15T10:00:00", True),  # no offset: UTC
        ("2024-07-15T10:00:00Z", True),
        ("2024-07-15T10:00:00+09:00", False),  # 01:00 UTC
        ("2024-07-15T01:00:00", False),
    ],
)
def test_time_window_ignores_the_machines_zone(event_time: str, expected: bool) -> None:
    verdict = run(WINDOW, time=event_time)
    assert verdict.passed is expected
    assert verdict.reasons[0].endswith("[09:00:00, 12:00:00) UTC")


@pytest.mark.usefixtures("tokyo_local_time")
def test_event_without_time_is_checked_at_now_in_utc() -> None:
    compiled = CompiledFilters.compile(EventDependencyFilter.model_validate(WINDOW))
    no_time = make_event(time="not a time")
    inside = compiled.evaluate(no_time, now=datetime(2024, 7, 15, 10, 0))  # naive: UTC
    assert inside.passed
    assert inside.reasons == [
        "time: 10:00:00 inside [09:00:00, 12:00:00) UTC"
        " (the event has no readable time; checked at the current time)"
    ]
    # an aware now keeps its own offset: 10:00+02:00 is 08:00 UTC
    paris_summer = timezone(timedelta(hours=2))
    assert not compiled.evaluate(
        no_time, now=datetime(2024, 7, 15, 10, 0, tzinfo=paris_summer)
    ).passed
    # without now, the clock (in UTC, not the machine's zone)
    clock = datetime.now(UTC)
    around = {"time": {"start": f"{(clock - timedelta(hours=1)):%H:%M:%S}",
                       "stop": f"{(clock + timedelta(hours=1)):%H:%M:%S}"}}  # fmt: skip
    assert (
        CompiledFilters.compile(EventDependencyFilter.model_validate(around))
        .evaluate(no_time)
        .passed
    )


@pytest.mark.parametrize(
    ("start", "stop", "zone", "event_time", "expected"),
    [
        # New York skips 02:00-03:00 on 2024-03-10: Go places 02:30 at 06:30Z (01:30 EST)
        ("02:30:00", "03:30:00", "America/New_York", "2024-03-10T06:45:00Z", True),
        ("02:30:00", "03:30:00", "America/New_York", "2024-03-10T08:00:00Z", False),
        ("02:30:00", "09:00:00", "America/New_York", "2024-03-10T06:30:00Z", True),
        ("02:30:00", "09:00:00", "America/New_York", "2024-03-10T06:29:59Z", False),
        # 01:30 and 02:30 are then the same instant: stop is not after start, so the
        # window wraps and the whole day passes (Argo's rule for stop <= start)
        ("01:30:00", "02:30:00", "America/New_York", "2024-03-10T20:00:00Z", True),
        # Paris repeats 02:00-03:00 on 2024-10-27: Go takes the second 02:30 (01:30Z)
        ("02:30:00", "04:00:00", "Europe/Paris", "2024-10-27T00:45:00Z", False),
        ("02:30:00", "04:00:00", "Europe/Paris", "2024-10-27T01:30:00Z", True),
        # New York repeats 01:00-02:00 on 2024-11-03: Go takes the first 01:30 (05:30Z)
        ("01:30:00", "05:00:00", "America/New_York", "2024-11-03T05:30:00Z", True),
        ("01:30:00", "05:00:00", "America/New_York", "2024-11-03T05:29:59Z", False),
    ],
)
def test_time_window_where_the_clocks_change(
    start: str, stop: str, zone: str, event_time: str, expected: bool
) -> None:
    """Argo parses ``start``/``stop`` with Go's ``time.ParseInLocation`` on the event's
    day; where a wall time is skipped or repeated, it lands where Go puts it."""
    spec = {"time": {"start": start, "stop": stop, "timezone": zone}}
    assert passes(spec, time=event_time) is expected


# --------------------------------------------------------------------------- compiling


def data_model(**kw: Any) -> EventDependencyFilter:
    base: dict[str, Any] = {
        "path": "k",
        "type": "string",
        "value": ["v"],
        "comparator": "",
        "template": "",
    }
    base.update(kw)
    return EventDependencyFilter.model_construct(
        data=[DataFilter.model_construct(**base)],
        exprs=[],
        time=None,
        context=None,
        script="",
        data_logical_operator="",
        expr_logical_operator="",
    )


def filters_model(**kw: Any) -> EventDependencyFilter:
    base: dict[str, Any] = {
        "data": [],
        "exprs": [],
        "time": None,
        "context": None,
        "script": "",
        "data_logical_operator": "",
        "expr_logical_operator": "",
    }
    base.update(kw)
    return EventDependencyFilter.model_construct(**base)


def time_model(start: str, stop: str, timezone: str = "") -> EventDependencyFilter:
    return filters_model(time=TimeFilter.model_construct(start=start, stop=stop, timezone=timezone))


def expr_model(expr: str, path: str = "a", name: str = "a") -> EventDependencyFilter:
    return EventDependencyFilter.model_construct(
        data=[],
        exprs=[
            ExprFilter.model_construct(
                expr=expr, fields=[PayloadField.model_construct(path=path, name=name)]
            )
        ],
        time=None,
        context=None,
        script="",
        data_logical_operator="",
        expr_logical_operator="",
    )


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (data_model(path=""), "filters.data[0].path: path is empty"),
        (data_model(path="a|@pretty"), "filters.data[0].path: "),
        (data_model(type=""), "filters.data[0].type: unsupported JSON type ''"),
        (data_model(value=[]), "filters.data[0].value: no values specified"),
        (data_model(value=["ok", "("]), "filters.data[0].value[1]: invalid regular expression"),
        (data_model(value=["(?=x)"]), "filters.data[0].value[0]: invalid regular expression"),
        (data_model(type="number", value=["ten"]), "filters.data[0].value[0]: 'ten' is not a"),
        (data_model(type="bool", value=["yes"]), "filters.data[0].value[0]: 'yes' is not a bool"),
        (data_model(comparator="=="), "filters.data[0].comparator: '==' is not supported"),
        (data_model(template="{{ .Input "), "filters.data[0].template: "),
        (data_model(template="{{ env .Input }}"), "filters.data[0].template: "),
        (expr_model('k !== "x"'), "filters.exprs[0].expr: invalid token '=' at position 4"),
        (expr_model("a == "), "filters.exprs[0].expr: unexpected end of expression at position 5"),
        (expr_model("a == 1", path=""), "filters.exprs[0].fields[0].path: path is empty"),
        (expr_model("a == 1", name=""), "filters.exprs[0].fields[0].name: must not be empty"),
        (filters_model(exprs=[ExprFilter.model_construct(expr="a", fields=[])]),
         "filters.exprs[0].fields: at least one field is required"),
        (filters_model(expr_logical_operator="xor"),
         "filters.exprLogicalOperator: 'xor' is not a logical operator (and, or)"),
        (filters_model(data_logical_operator="AND"),
         "filters.dataLogicalOperator: 'AND' is not a logical operator (and, or)"),
        (filters_model(context=EventContextFilter.model_construct(id="1", specversion="1.0",
                                                                  time="", type="", source="",
                                                                  subject="", datacontenttype="")),
         "filters.context: no fields specified (all events would be discarded)"),
        (time_model("09:00:00", "9:00"),
         "filters.time.stop: invalid time '9:00', expected hh:mm:ss"),
        (time_model("09:00:00", "09:00:00"),
         "filters.time.stop: '09:00:00' is equal to start '09:00:00'"),
        (time_model("09:00:00", "10:00:00", "Mars/Olympus"),
         "filters.time.timezone: invalid timezone 'Mars/Olympus'"),
        # hh:mm:ss as Go's time.Parse("15:04:05") reads it: hours below 24, two-digit
        # minutes and seconds below 60
        *[(time_model(bad, "10:00:00"), f"filters.time.start: invalid time {bad!r}")
          for bad in ("24:00:00", "23:60:00", "23:59:60", "09:09", "09:0a:00", "09:5:00",
                      "09:00:5", "09:00:00:00", "٠٩:00:00")],
    ],
)  # fmt: skip
def test_compile_errors_name_the_field(model: EventDependencyFilter, message: str) -> None:
    with pytest.raises(ValueError) as info:
        CompiledFilters.compile(model)
    assert str(info.value).startswith(message), str(info.value)


def test_other_compile_errors() -> None:
    script = EventDependencyFilter.model_validate({"script": "return = true"})
    with pytest.raises(ValueError, match=r"^filters\.script: Lua syntax error: script:1: "):
        CompiledFilters.compile(script)
    with pytest.raises(
        ValueError, match=r"^filtersLogicalOperator: 'OR' is not a logical operator"
    ):
        CompiledFilters.compile(None, "OR")
    bad_time = EventDependencyFilter.model_construct(
        time=TimeFilter.model_construct(start="09:09:0", stop="19:19:19", timezone=""),
        data=[],
        exprs=[],
        context=None,
        script="",
        data_logical_operator="",
        expr_logical_operator="",
    )
    with pytest.raises(ValueError, match=r"^filters\.time\.start: invalid time '09:09:0'"):
        CompiledFilters.compile(bad_time)


def test_compiled_filters_are_reusable_and_pure() -> None:
    compiled = CompiledFilters.compile(
        EventDependencyFilter.model_validate({"data": [d("k", "string", "^v")]})
    )
    event = make_event({"k": "v"})
    assert [compiled.evaluate(event).passed for _ in range(3)] == [True] * 3
    assert event.data == {"k": "v"}
    assert not compiled.evaluate(make_event({"k": "w"})).passed
    assert repr(compiled) == "CompiledFilters(data, and)"


CORPUS = Path(__file__).resolve().parents[2] / "shared" / "argo-examples"


def corpus_filters() -> list[tuple[str, dict[str, Any], str]]:
    found = []
    for path in sorted(CORPUS.rglob("*.yaml")) if CORPUS.is_dir() else []:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Sensor":
                for dep in doc["spec"].get("dependencies", []):
                    if "filters" in dep:
                        rel = path.relative_to(CORPUS).as_posix()
                        found.append((rel, dep["filters"], dep.get("filtersLogicalOperator", "")))
    return found


@pytest.mark.skipif(not CORPUS.is_dir(), reason="argo examples not present")
def test_every_example_filter_compiles() -> None:
    examples = corpus_filters()
    assert len(examples) >= 15
    for rel, spec, operator in examples:
        model = EventDependencyFilter.model_validate(spec)
        assert not CompiledFilters.compile(model, operator).empty, rel


# --------------------------------------------------------------------------- event sources


@pytest.mark.parametrize(
    ("expression", "data", "expected"),
    [
        ('body.action == "opened"', {"body": {"action": "opened"}}, True),
        ('body.action == "opened"', {"body": {"action": "closed"}}, False),
        ('header["X-Type"][0] == "push"', {"header": {"X-Type": ["push"]}}, True),
        ("(body.id == 4) && (body.name != 'Joe')", {"body": {"id": 4, "name": "John"}}, True),
        ("(body.id == 4) && (body.name != 'Joe')", {"body": {"id": 2, "name": "John"}}, False),
        ("x_y == 1", {"x-y": 1}, True),  # top-level '-' becomes '_'
        ("a.b == 1 && a.c == 2", {"a.b": 1, "a.c": 2}, True),  # dotted keys expand
        ("a.b == 1", {"a": 5, "a.b": 1}, True),  # the less specific key loses
        ("body.n % 2 == 0", {"body": {"n": 4}}, False),  # JSON numbers are floats
        ("body.missing.x == 1", {"body": {}}, False),  # error: dropped
        ("body.n", {"body": {"n": 1}}, False),  # not a bool: dropped
        ("true", ["not", "an", "object"], False),
        ("true", "text", False),
    ],
)
def test_event_source_filter(expression: str, data: Any, expected: bool) -> None:
    assert event_source_filter(expression)(data) is expected


def test_event_source_filter_explains_and_compiles_once() -> None:
    source_filter = event_source_filter("body.n > 1")
    assert source_filter.check({"body": {"n": 2}}) == (True, "true")
    assert source_filter.check({"body": {"n": "x"}})[1].startswith("error: cannot apply '>'")
    assert source_filter.check([]) == (False, "the event data is not a JSON object")
    with pytest.raises(ValueError, match="at position"):
        event_source_filter("body.n >")
    with pytest.raises(ValueError, match="empty expression"):
        event_source_filter("")
