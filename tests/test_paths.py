"""gjson reads and sjson writes (app.languages.paths): the syntax Argo manifests rely on.

The expected values of the gjson tables are the ones the gjson path syntax document
gives for its example document; the sjson tables follow sjson's documented behaviour.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.languages.paths import compile_get, compile_set, raw, to_string

DOC: dict[str, Any] = {
    "name": {"first": "Tom", "last": "Anderson"},
    "age": 37,
    "children": ["Sara", "Alex", "Jack"],
    "fav.movie": "Deer Hunter",
    "friends": [
        {"first": "Dale", "last": "Murphy", "age": 44, "nets": ["ig", "fb", "tw"]},
        {"first": "Roger", "last": "Craig", "age": 68, "nets": ["fb", "tw"]},
        {"first": "Jane", "last": "Murphy", "age": 47, "nets": ["ig", "tw"]},
    ],
}
DALE = DOC["friends"][0]

MISSING = object()


def get(path: str, doc: Any = DOC) -> Any:
    found, value = compile_get(path).get(doc)
    return value if found else MISSING


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # basic
        ("name.last", "Anderson"),
        ("age", 37),
        ("children", ["Sara", "Alex", "Jack"]),
        ("children.0", "Sara"),
        ("children.1", "Alex"),
        ("friends.1.first", "Roger"),
        # wildcards and escapes
        ("child*.2", "Jack"),
        ("c?ildren.0", "Sara"),
        ("fav\\.movie", "Deer Hunter"),
        ("n*.l*", "Anderson"),
        # arrays
        ("friends.#", 3),
        ("friends.#.age", [44, 68, 47]),
        ("friends.#.nets.#", [3, 2, 2]),
        ("children.#", 3),
        # queries
        ('friends.#(last=="Murphy").first', "Dale"),
        ('friends.#(last=="Murphy")#.first', ["Dale", "Jane"]),
        ("friends.#(age>45)#.last", ["Craig", "Murphy"]),
        ("friends.#(age>=47)#.first", ["Roger", "Jane"]),
        ("friends.#(age<45).first", "Dale"),
        ("friends.#(age<=44)#.first", ["Dale"]),
        ("friends.#(age!=44)#.first", ["Roger", "Jane"]),
        ("friends.#(age==68).first", "Roger"),
        ('friends.#(first%"D*").last', "Murphy"),
        ('friends.#(first!%"D*").last', "Craig"),
        ('children.#(!%"*a*")', "Alex"),
        ('children.#(%"*a*")#', ["Sara", "Jack"]),
        ('friends.#(nets.#(=="fb"))#.first', ["Dale", "Roger"]),
        ("friends.#(last==Murphy)#.first", ["Dale", "Jane"]),
        ('friends.#[last=="Murphy"].first', "Dale"),
        ("friends.#(nets)#.first", ["Dale", "Roger", "Jane"]),
        ('friends.#(last=="Nobody")#', []),
        # dot vs pipe
        ("friends|0.first", "Dale"),
        ("friends.0|first", "Dale"),
        ("friends|0|first", "Dale"),
        ("friends|#", 3),
        ('friends.#(last="Murphy")#', [DALE, DOC["friends"][2]]),
        ('friends.#(last="Murphy")#.0', []),
        ('friends.#(last="Murphy")#|0', DALE),
        ('friends.#(last="Murphy")#.#', []),
        ('friends.#(last="Murphy")#|#', 2),
        ("friends.#.first|1", "Roger"),
        ("friends.#(last==Murphy)|first", "Dale"),
        ("friend?", DOC["friends"]),
        # modifiers
        ("children.@reverse", ["Jack", "Alex", "Sara"]),
        ("children.@reverse.0", "Jack"),
        ("children|@reverse|0", "Jack"),
        ("@this.age", 37),
        ("name.@keys", ["first", "last"]),
        ("name.@values", ["Tom", "Anderson"]),
        ("name.@reverse", {"last": "Anderson", "first": "Tom"}),
        ("friends.#.nets|@flatten", ["ig", "fb", "tw", "fb", "tw", "ig", "tw"]),
        ('[name,{"x":1}]|@join', {"first": "Tom", "last": "Anderson"}),
        ("name.first.@tostr", '"Tom"'),
        ("children.@ugly", ["Sara", "Alex", "Jack"]),
        ("children.@valid.1", "Alex"),
        # multipaths and literals
        (
            '{name.first,age,"the_murphys":friends.#(last="Murphy")#.first}',
            {"first": "Tom", "age": 37, "the_murphys": ["Dale", "Jane"]},
        ),
        ("[age,name.first,nope]", [37, "Tom"]),
        (
            '{name.first,age,"company":!"Happysoft","employed":!true}',
            {"first": "Tom", "age": 37, "company": "Happysoft", "employed": True},
        ),
        ("{first:name.first,friends.#}", {"first": "Tom", "_": 3}),
        ("[age,children.0].1", "Sara"),
        ("!null", None),
        ('!{"a":[1,2]}.a.1', 2),
    ],
)
def test_gjson_syntax(path: str, expected: Any) -> None:
    assert get(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "nope",
        "name.middle",
        "children.3",
        "children.-1",
        "children.x",
        "age.x",
        "name.first.x",
        "friends.#(age>100).first",
        'friends.#(last="Murphy")#|first',
        "friends.0.nets.5",
        "friend?x",
        "#",
        "name.#",
    ],
)
def test_missing_paths_are_not_found(path: str) -> None:
    assert compile_get(path).get(DOC) == (False, None)


@pytest.mark.parametrize("doc", [None, {}, [], "text", 5, True, {"body": None}])
def test_empty_or_scalar_data_finds_nothing(doc: Any) -> None:
    assert compile_get("body.model").get(doc) == (False, None)
    assert compile_get("body").get({"body": None}) == (True, None)


def test_webhook_shaped_data() -> None:
    data = {
        "header": {"X-Run": ["42"], "Content-Type": ["application/json"]},
        "body": {"model": "resnet", "items": [{"name": "a"}, {"name": "b"}], "n": "5"},
    }
    assert get("header.X-Run.0", data) == "42"
    assert get("header.Content-Type", data) == ["application/json"]
    assert get("body.items.1.name", data) == "b"
    assert get("body.items.#.name", data) == ["a", "b"]
    assert get("body.n", data) == "5"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ('vals.#(n=="5")#.id', [1, 2]),
        ("vals.#(n==5)#.id", [1, 2]),
        ("vals.#(n>3)#.id", [1, 2, 3]),
        ("vals.#(n<3)#.id", [4]),
    ],
)
def test_numbers_as_strings_compare_as_gjson_does(path: str, expected: list[int]) -> None:
    # a string value compares as text ("9" > "3"), a number numerically
    data = {
        "vals": [{"id": 1, "n": "5"}, {"id": 2, "n": 5}, {"id": 3, "n": "9"}, {"id": 4, "n": 2}]
    }
    assert get(path, data) == expected


def test_tilde_queries() -> None:
    vals = {
        "vals": [
            {"a": 1, "b": "data"},
            {"a": 2, "b": True},
            {"a": 3, "b": False},
            {"a": 4, "b": "0"},
            {"a": 5, "b": 0},
            {"a": 6, "b": "1"},
            {"a": 7, "b": 1},
            {"a": 8, "b": "true"},
            {"a": 9, "b": False},
            {"a": 10, "b": None},
            {"a": 11},
        ]
    }
    assert get("vals.#(b==~true)#.a", vals) == [2, 6, 7, 8]
    assert get("vals.#(b==~false)#.a", vals) == [3, 4, 5, 9, 10, 11]
    assert get("vals.#(b==~null)#.a", vals) == [10, 11]
    assert get("vals.#(b==~*)#.a", vals) == list(range(1, 11))
    assert get("vals.#(b!=~*)#.a", vals) == [11]


def test_keys_with_special_characters() -> None:
    data = {"a*b": 1, "axb": 2, "#": 3, "x.y": {"z": 4}, "@this": 5, "q?": 6}
    assert get("a\\*b", data) == 1
    assert get("a*b", data) in (1, 2)  # wildcard: the first key that matches
    assert get("\\#", data) == 3
    assert get("#", data) == 3  # '#' is only special inside arrays
    assert get("x\\.y.z", data) == 4
    assert get("\\@this", data) == 5
    assert get("q\\?", data) == 6


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "empty"),
        ("..0", "JSON-lines"),
        ("friends.@pretty", "@pretty"),
        ("@group", "@group"),
        ("@dig:name", "@dig"),
        ("[a,b", "unterminated multipath"),
        ("{a}x", "after multipath"),
    ],
)
def test_invalid_gjson_paths_fail_at_compile(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_get(path)


def test_unknown_modifier_is_a_plain_key() -> None:
    assert get("@foo", {"@foo": 1}) == 1


@pytest.mark.parametrize(
    ("value", "string", "raw_text"),
    [
        ("text", "text", '"text"'),
        (5, "5", "5"),
        (5.0, "5", "5.0"),
        (-0.5, "-0.5", "-0.5"),
        (1.5e-7, "0.00000015", "1.5e-7"),
        (1e21, "1000000000000000000000", "1e+21"),
        (10**30, "1" + "0" * 30, "1" + "0" * 30),
        (True, "true", "true"),
        (False, "false", "false"),
        (None, "", "null"),
        ({"a": [1, "x"]}, '{"a":[1,"x"]}', '{"a":[1,"x"]}'),
        ([], "[]", "[]"),
        ("héllo <&>", "héllo <&>", '"héllo <&>"'),
    ],
)
def test_result_rendering(value: Any, string: str, raw_text: str) -> None:
    assert to_string(value) == string
    assert raw(value) == raw_text


# --------------------------------------------------------------------------- sjson


@pytest.mark.parametrize(
    ("doc", "path", "value", "expected"),
    [
        (None, "name", "Tom", {"name": "Tom"}),
        ({}, "name.last", "Anderson", {"name": {"last": "Anderson"}}),
        (
            {"name": {"last": "Anderson"}},
            "name.first",
            "Sara",
            {"name": {"last": "Anderson", "first": "Sara"}},
        ),
        ({"name": {"last": "Anderson"}}, "name.last", "Smith", {"name": {"last": "Smith"}}),
        (
            {"friends": ["Andy", "Carol"]},
            "friends.2",
            "Sara",
            {"friends": ["Andy", "Carol", "Sara"]},
        ),
        (
            {"friends": ["Andy", "Carol"]},
            "friends.-1",
            "Sara",
            {"friends": ["Andy", "Carol", "Sara"]},
        ),
        (
            {"friends": ["Andy", "Carol"]},
            "friends.4",
            "Sara",
            {"friends": ["Andy", "Carol", None, None, "Sara"]},
        ),
        ({"friends": ["Andy", "Carol"]}, "friends.0", "Sara", {"friends": ["Sara", "Carol"]}),
        ({}, "friends.-1", "Sara", {"friends": ["Sara"]}),
        ({}, "a.2.b", 1, {"a": [None, None, {"b": 1}]}),
        ({}, "a.0.1", 1, {"a": [[None, 1]]}),
        ({}, "users.:2313.name", "Sara", {"users": {"2313": {"name": "Sara"}}}),
        ({"users": {}}, "users.2313", "x", {"users": {"2313": "x"}}),
        ({}, "fav\\.movie", "Deer Hunter", {"fav.movie": "Deer Hunter"}),
        ({}, "a\\#b\\:c", 1, {"a#b:c": 1}),
        ({"a": "scalar"}, "a.b", 1, {"a": {"b": 1}}),
        ({"a": 5}, "a.1", "x", {"a": [None, "x"]}),
        ({"a": {"b": 1}}, "a", {"new": True}, {"a": {"new": True}}),
        (
            {"spec": {"arguments": {"parameters": [{"name": "model", "value": "x"}]}}},
            "spec.arguments.parameters.0.value",
            "resnet",
            {"spec": {"arguments": {"parameters": [{"name": "model", "value": "resnet"}]}}},
        ),
        ([1, 2], "-1", 3, [1, 2, 3]),
        (None, "0", "x", ["x"]),
    ],
)
def test_sjson_set(doc: Any, path: str, value: Any, expected: Any) -> None:
    assert compile_set(path).set(doc, value) == expected


def test_sjson_set_changes_containers_in_place() -> None:
    doc: dict[str, Any] = {"a": {"b": [1]}}
    inner = doc["a"]
    out = compile_set("a.b.-1").set(doc, 2)
    assert out is doc
    assert inner == {"b": [1, 2]}


def test_sjson_set_non_numeric_key_into_array_fails() -> None:
    with pytest.raises(ValueError, match="non-numeric key 'x'"):
        compile_set("a.x").set({"a": [1]}, 2)


@pytest.mark.parametrize("path", ["", "a..b", "a.", "a.*", "a.b?", "a.#", "a|b", "@this"])
def test_invalid_sjson_paths_fail_at_compile(path: str) -> None:
    with pytest.raises(ValueError):
        compile_set(path)


def test_set_path_reads_what_it_addresses() -> None:
    p = compile_set("a.1.b")
    assert p.get({"a": [0, {"b": "x"}]}) == (True, "x")
    assert p.get({"a": [0]}) == (False, None)
    assert compile_set("a.-1").get({"a": [1]}) == (False, None)


# --------------------------------------------------------------------------- properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
json_keys = st.text(min_size=1, max_size=6)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=4)
    ),
    max_leaves=20,
)
json_docs = st.dictionaries(json_keys, json_values, min_size=1, max_size=5)

Component = str | int


def escape(key: str) -> str:
    """A path component naming ``key`` literally in both gjson and sjson syntax."""
    return "".join(c if c.isalnum() else "\\" + c for c in key)


def path_text(parts: tuple[Component, ...]) -> str:
    return ".".join(str(p) if isinstance(p, int) else escape(p) for p in parts)


def all_paths(doc: Any, prefix: tuple[Component, ...] = ()) -> list[tuple[Component, ...]]:
    out: list[tuple[Component, ...]] = []
    if isinstance(doc, dict):
        items: list[tuple[Component, Any]] = list(doc.items())
    elif isinstance(doc, list):
        items = list(enumerate(doc))
    else:
        return out
    for k, v in items:
        here = (*prefix, k)
        out.append(here)
        out.extend(all_paths(v, here))
    return out


def lookup(doc: Any, parts: tuple[Component, ...]) -> Any:
    for p in parts:
        doc = doc[p]
    return doc


@settings(max_examples=300, deadline=None)
@given(doc=json_docs, value=json_values, data=st.data())
def test_get_after_set_returns_the_value(doc: dict[str, Any], value: Any, data: Any) -> None:
    parts = data.draw(st.sampled_from(all_paths(doc)))
    path = path_text(parts)
    out = compile_set(path).set(copy.deepcopy(doc), value)
    assert compile_get(path).get(out) == (True, value)
    assert compile_set(path).get(out) == (True, value)


@settings(max_examples=300, deadline=None)
@given(doc=json_docs, value=json_values, data=st.data())
def test_set_leaves_other_paths_unchanged(doc: dict[str, Any], value: Any, data: Any) -> None:
    paths = all_paths(doc)
    target = data.draw(st.sampled_from(paths))
    out = compile_set(path_text(target)).set(copy.deepcopy(doc), value)
    for other in paths:
        related = other[: len(target)] == target or target[: len(other)] == other
        if not related:
            assert compile_get(path_text(other)).get(out) == (True, lookup(doc, other))


@settings(max_examples=200, deadline=None)
@given(doc=json_docs, data=st.data())
def test_get_finds_every_present_path(doc: dict[str, Any], data: Any) -> None:
    parts = data.draw(st.sampled_from(all_paths(doc)))
    path = path_text(parts)
    expected = lookup(doc, parts)
    assert compile_get(path).get(doc) == (True, expected)
    # the same path behind '@this|' goes through the general engine
    assert compile_get("@this|" + path).get(doc) == (True, expected)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_strings_round_trip(f: float) -> None:
    text = to_string(f)
    assert "e" not in text
    assert float(text) == f or (f == 0 and float(text) == 0)
    assert not math.isnan(float(raw(f)))
