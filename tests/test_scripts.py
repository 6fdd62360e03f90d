"""A dependency's ``transform`` (jq, Lua) and ``filters.script`` (Lua), as Argo runs them.

The tables port Argo's own tests (pkg/sensors/dependencies/transform_test.go,
filter_script_test.go); the sandbox and limit tables show what a script cannot reach
and that a runaway script fails with a clear error instead of running on; the property
tests check jq and the Lua value conversion against Python references.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.compose.manifests import check_one
from app.kernel.errors import ScriptError
from app.kernel.events import Event
from app.languages.jq import JqLimits, JqProgram
from app.languages.lua import LuaLimits, LuaScript
from sensors.filters import CompiledFilters
from sensors.spec import DataFilter, EventDependencyFilter, EventDependencyTransformer
from sensors.transform import CompiledTransform


def ev(data: Any) -> Event:
    return Event(id="1", source="webhook", subject="example", type="webhook", data=data)


def transform(jq: str = "", script: str = "") -> CompiledTransform:
    compiled = CompiledTransform.compile(EventDependencyTransformer(jq=jq, script=script))
    assert compiled is not None
    return compiled


# --------------------------------------------------------------------------- transform


@pytest.mark.parametrize(
    ("kind", "source", "data", "expected"),
    [
        # Argo's TestApplyJQTransform
        ("jq", ".a += 1 | .b *= 2", {"a": 1, "b": "2"}, {"a": 2, "b": "22"}),
        # Argo's TestApplyScriptTransform
        ("script", "event.c.d[1]=4\nreturn event", {"a": 1, "b": "2", "c": {"d": [3]}},
         {"a": 1, "b": "2", "c": {"d": [4]}}),
        ("script", "event.env = setmetatable({}, { __is_array = true })\nreturn event",
         {"env": 123}, {"env": []}),
        # the corpus example (sensors/transform.yaml)
        ("script", "event.body.message='updated'\nreturn event",
         {"body": {"message": "hi"}}, {"body": {"message": "updated"}}),
        ("jq", ".body.message *= 2", {"body": {"message": "hi"}}, {"body": {"message": "hihi"}}),
        # a sequence table is an array (Argo accepts it too); an empty table an object
        ("script", "return {event.a, 2}", {"a": 1}, [1, 2]),
        ("script", "return {}", {"a": 1}, {}),
        # numbers: integral values are integers, as Go's encoder prints them
        ("script", "event.a = event.a / 2 return event", {"a": 4}, {"a": 2}),
        ("script", "event.a = event.a / 2 return event", {"a": 3}, {"a": 1.5}),
        ("script", "event.s = tostring(event.n) return event", {"n": 2.0}, {"n": 2, "s": "2"}),
        # null values are dropped on the way into Lua, as in Argo
        ("script", "return event", {"a": None, "b": [1, None, 2]}, {"b": [1, 2]}),
        # the last returned value counts (Argo reads the top of the stack)
        ("script", "return 1, event", {"a": 1}, {"a": 1}),
        # jq keeps the first output
        ("jq", ".a, {x: 1}", {"a": {"y": 2}}, {"y": 2}),
    ],
)  # fmt: skip
def test_transform_table(kind: str, source: str, data: Any, expected: Any) -> None:
    t = transform(**{kind: source})
    out = t.apply(ev(data))
    assert out.data == expected
    assert out.datacontenttype == "application/json"


SCRIPT, JQ = "transform script", "transform jq"


@pytest.mark.parametrize(
    ("kind", "source", "data", "message"),
    [
        ("script", 'return "hello"', {"a": 1}, f"{SCRIPT}: the script must return a Lua table"),
        ("script", "return", {"a": 1}, f"{SCRIPT}: the script must return a Lua table"),
        ("script", "return a.b", {"a": 1},
         "transform script: script:1: attempt to index a nil value (global 'a')"),
        ("jq", ".a", {"a": 1}, "transform jq: the output must be a JSON object"),
        ("jq", ".[]", {"a": [1]}, "transform jq: the output must be a JSON object"),
        ("jq", "empty", {"a": 1}, f"{JQ}: no output available from the jq command execution"),
        ("jq", '.a + "x"', {"a": 1}, "transform jq: number (1) and string (\"x\") cannot be added"),
        ("jq", ".", [1, 2], "transform jq: the event's data is not a JSON object"),
        ("script", "return event", "text", f"{SCRIPT}: the event's data is not a JSON object"),
    ],
)  # fmt: skip
def test_transform_failures_name_the_language(
    kind: str, source: str, data: Any, message: str
) -> None:
    with pytest.raises(ScriptError) as info:
        transform(**{kind: source}).apply(ev(data))
    assert str(info.value) == message


def test_transform_leaves_an_event_without_data_alone_and_prefers_jq() -> None:
    e = ev(None)
    assert transform(jq=".x").apply(e) is e
    both = transform(jq="{a: 1}", script="return {b = 2}")
    assert both.language == "jq"
    assert both.apply(ev({})).data == {"a": 1}
    assert CompiledTransform.compile(EventDependencyTransformer()) is None
    assert CompiledTransform.compile(None) is None


# --------------------------------------------------------------------------- filters.script


def script_filter(script: str, operator: str = "", **more: Any) -> CompiledFilters:
    return CompiledFilters.compile(EventDependencyFilter(script=script, **more), operator)


@pytest.mark.parametrize(
    ("script", "data", "passed", "reason"),
    [
        # Argo's TestScriptFilter
        ('if event.a == "hello" then return true else return false end', {"a": "hello"},
         True, "script: returned true"),
        ('if event.a == "hello" and event.b == "world" then return false else return true end',
         {"a": "hello", "b": "world"}, False, "script: returned false (passes only on true)"),
        ('if a.a == "hello" then return true else return false end', {"a": "hello"}, False,
         "script: error: script:1: attempt to index a nil value (global 'a')"),
        # only true passes
        ("return 1", {}, False, "script: returned 1 (passes only on true)"),
        ("return 'true'", {}, False, 'script: returned "true" (passes only on true)'),
        ("local x = 1", {}, False, "script: returned null (passes only on true)"),
        # the corpus example (sensors/filter-script.yaml)
        ('if event.body.a == "b" and event.body.d.e == "z" then return true else return false end',
         {"body": {"a": "b", "c": 10, "d": {"e": "z"}}}, True, "script: returned true"),
        # no data passes, as in Argo; data that is no object is an error
        ("return false", None, True, "script: the event has no data (passes, as in Argo)"),
        ("return true", [1], False, "script: error: the event's data is not a JSON object"),
    ],
)  # fmt: skip
def test_script_filter_table(script: str, data: Any, passed: bool, reason: str) -> None:
    verdict = script_filter(script).evaluate(ev(data))
    assert (verdict.passed, verdict.reasons) == (passed, [reason])


NO_MATCH = [DataFilter(path="a", type="string", value=["nope"])]
MATCH = [DataFilter(path="a", type="string", value=["yes"])]


@pytest.mark.parametrize(
    ("operator", "data_filters", "script", "passed"),
    [
        ("", MATCH, "return true", True),
        ("", MATCH, "return false", False),
        ("", NO_MATCH, "return true", False),
        ("or", NO_MATCH, "return true", True),
        ("or", MATCH, "return false", True),
        ("or", NO_MATCH, "return false", False),
        # a script error fails the filters whatever the operator (Argo's rule)
        ("or", MATCH, "error('boom')", False),
        ("and", MATCH, "error('boom')", False),
    ],
)
def test_script_filter_with_filters_logical_operator(
    operator: str, data_filters: list[DataFilter], script: str, passed: bool
) -> None:
    filters = script_filter(script, operator, data=data_filters)
    verdict = filters.evaluate(ev({"a": "yes"}))
    assert verdict.passed is passed
    assert verdict.reasons[-1].startswith("script: ")


# --------------------------------------------------------------------------- sandbox, limits


@pytest.mark.parametrize(
    "name",
    ["os", "io", "require", "load", "loadfile", "dofile", "debug", "package",
     "collectgarbage", "python", "string.dump", "('').dump", "_G.os", "_ENV.io"],
)  # fmt: skip
def test_the_sandbox_has_no_way_out(name: str) -> None:
    assert LuaScript.compile(f"return {name} == nil").run({}) is True


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("while true do end", "the script ran past its limit of 100000 instructions"),
        # pcall cannot swallow the limit: every instruction past it raises again
        ("while true do pcall(function() while true do end end) end",
         "the script ran past its limit of 100000 instructions"),
        ("local n = 0 while true do n = n + 1 end",
         "the script ran past its limit of 100000 instructions"),
        # coroutines get the same budget
        ("coroutine.wrap(function() while true do end end)()",
         "the script ran past its limit of 100000 instructions"),
        ("local co = coroutine.create(function() while true do end end) "
         "local ok, err = coroutine.resume(co) error(err, 0)",
         "the script ran past its limit of 100000 instructions"),
        ("local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end",
         "the script ran past its memory limit of 4194304 bytes"),
        ("return string.rep('x', 1e9)", "the script ran past its memory limit of 4194304 bytes"),
        # pattern matching runs in C, out of the hook's reach: the time limit ends it
        ("return ('a'):rep(400):find('.-.-.-.-b')",
         "the script ran past its time limit of 2 s"),
        ("return setmetatable({}, {__gc = function() while true do end end})",
         "__gc metamethods are not allowed in a sensor script"),
        ("local t = {} t.t = t return t",
         "the script's result is nested too deeply (a table that holds itself?)"),
        ("return 0/0", "the script returned nan (not a JSON number)"),
        ("return function() end", "the script returned a function, which has no JSON form"),
        # converting the result runs no metamethod past the budget
        ("local k = setmetatable({}, {__tostring = function() while true do end end}) "
         "return {[k] = 1}", "the script ran past its limit of 100000 instructions"),
    ],
)  # fmt: skip
def test_a_runaway_script_fails_with_a_clear_error(source: str, message: str) -> None:
    limits = LuaLimits(max_instructions=100_000, max_memory_bytes=4 << 20)
    script = LuaScript.compile(source, limits)
    with pytest.raises(ScriptError) as info:
        script.run({"a": 1})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("source", "limits", "message"),
    [
        ("last(range(1e18))", JqLimits(time_seconds=1.0),
         "the jq program ran past its time limit of 1 s"),
        ('reduce range(40) as $i ("x"; . + .)',
         JqLimits(time_seconds=120.0, max_memory_bytes=64 << 20),
         "the jq program ran past its memory limit of 67108864 bytes"),
    ],
)  # fmt: skip
def test_a_runaway_jq_program_fails_with_a_clear_error(
    source: str, limits: JqLimits, message: str
) -> None:
    program = JqProgram.compile(f"if .run then {source} else {{ok: true}} end", limits)
    with pytest.raises(ScriptError) as info:
        program.first({"run": True})
    assert str(info.value) == message
    # the worker that ran it was ended; the next call gets a fresh one
    assert program.first({"run": False}) == {"ok": True}


def test_a_runaway_jq_program_holds_up_no_other_thread() -> None:
    """libjq keeps the GIL while it runs: run in the caller's process, a program that
    never ends would stop every thread until it did."""
    other = JqProgram.compile(".a")
    assert other.first({"a": 0}) == 0  # its worker is ready
    runaway = JqProgram.compile("last(range(1e18))", JqLimits(time_seconds=5.0))
    failures: list[str] = []

    def run() -> None:
        try:
            runaway.first({})
        except ScriptError as e:
            failures.append(str(e))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert [other.first({"a": n}) for n in range(20)] == list(range(20))
        assert LuaScript.compile("return event.a + 1").run({"a": 1}) == 2
        assert thread.is_alive() and not failures  # the runaway is still running
    finally:
        thread.join()
    assert failures == ["the jq program ran past its time limit of 5 s"]


def test_each_call_starts_from_a_fresh_state() -> None:
    script = LuaScript.compile("counter = (counter or 0) + 1 return counter")
    assert [script.run({}), script.run({})] == [1, 1]


@pytest.mark.parametrize(
    ("field", "source", "message"),
    [
        ("transform", {"jq": ".a |||"}, "spec.dependencies[0].transform.jq: syntax error, "
         "unexpected '|' at <top-level>, line 1, column 5"),
        ("transform", {"script": "return = 1"},
         "spec.dependencies[0].transform.script: Lua syntax error: script:1: "
         "unexpected symbol near '='"),
        ("filters", {"script": 'if event.a == "hello" return false else return true end'},
         "spec.dependencies[0].filters.script: Lua syntax error: script:1: "
         "'then' expected near 'return'"),
    ],
)  # fmt: skip
def test_a_syntax_error_fails_at_load_with_the_field_path(
    field: str, source: dict[str, str], message: str
) -> None:
    doc = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": "s", "namespace": "ns"},
        "spec": {
            "dependencies": [
                {"name": "d", "eventSourceName": "w", "eventName": "e", field: source}
            ],
            "triggers": [{"template": {"name": "t", "log": {}}}],
        },
    }
    _, problems = check_one(doc)
    assert problems == [message]


# --------------------------------------------------------------------------- properties

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
)
_keys = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10)
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=20,
)
_objects = st.dictionaries(_keys, _json, max_size=5)


@settings(max_examples=60, deadline=None)
@given(_objects)
def test_jq_identity_is_the_input(data: dict[str, Any]) -> None:
    assert JqProgram.compile(".").first(data) == data


@settings(max_examples=60, deadline=None)
@given(_objects, _keys)
def test_jq_field_access_is_a_dict_lookup(data: dict[str, Any], key: str) -> None:
    program = JqProgram.compile(".[$k]".replace("$k", _jq_string(key)))
    assert program.first(data) == data.get(key)


def _jq_string(text: str) -> str:
    return json.dumps(text)


def _through_lua(value: Any) -> Any:
    """What Argo's Lua round trip makes of JSON data: nulls dropped, an empty array
    (an empty table) comes back as an object, integral numbers as integers."""
    if isinstance(value, dict):
        return {k: _through_lua(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        items = [_through_lua(v) for v in value if v is not None]
        return items if items else {}
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


@settings(max_examples=60, deadline=None)
@given(_objects)
def test_lua_returns_the_event_as_argo_converts_it(data: dict[str, Any]) -> None:
    assert LuaScript.compile("return event").run(data) == _through_lua(data)


@settings(max_examples=60, deadline=None)
@given(_objects, _keys)
def test_lua_field_access_matches_the_dict(data: dict[str, Any], key: str) -> None:
    source = f"return event[{_lua_string(key)}] == nil"
    expected = data.get(key) is None
    assert LuaScript.compile(source).run(data) is expected


def _lua_string(text: str) -> str:
    return '"' + "".join(f"\\{b}" for b in text.encode()) + '"'


BAD_SENSOR = """\
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {name: bad}
spec:
  dependencies:
    - name: d
      eventSourceName: webhook
      eventName: e
      transform: {script: "event.x = = 1"}
  triggers:
    - template: {name: t, log: {}}
"""


def test_validate_shows_a_script_syntax_error_and_run_refuses_the_sensor(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(BAD_SENSOR)
    line = "spec.dependencies[0].transform.script: Lua syntax error: script:1: "
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIGGERFISH_", "KUBE"))}
    env["HOME"] = str(tmp_path)
    for command, code in (
        (["validate", "-f"], 1),
        (["run", "--state-dir", str(tmp_path / "s"), "-f"], 2),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "app.compose.cli", *command, str(manifest)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == code, (command, proc.stdout, proc.stderr)
        assert line in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=-(2**53), max_value=2**53),
    st.integers(min_value=-1000, max_value=1000),
    st.sampled_from(["", "and", "or"]),
)
def test_a_script_filter_decides_as_its_python_equivalent(n: int, k: int, operator: str) -> None:
    filters = script_filter(f"return event.n > {k}", operator)
    verdict = filters.evaluate(ev({"n": n}))
    assert verdict.passed is (n > k)
