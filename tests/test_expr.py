"""The expression evaluator (app.languages.expr): govaluate as Argo's ``exprs`` filters use it,
the expr-lang subset EventSource filters use, Go regexes, compile errors with positions.

Expected values follow govaluate's and expr-lang's documented semantics (and Argo's own
filter tests, ported in test_filters.py); a property test checks and/or/not against
Python's own boolean evaluation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.languages.expr import (
    EvalError,
    ExprSyntaxError,
    compile_expr,
    compile_go_regex,
    compile_govaluate,
    go_equal,
    go_parse_float,
)


def gv(source: str, **env: Any) -> Any:
    return compile_govaluate(source).evaluate(env)


def ex(source: str, env: dict[str, Any] | None = None) -> Any:
    return compile_expr(source).evaluate(env or {})


# --------------------------------------------------------------------------- govaluate


@pytest.mark.parametrize(
    ("source", "env", "expected"),
    [
        # comparisons and strings in both quote styles
        ('a == "b"', {"a": "b"}, True),
        ("a == 'b'", {"a": "b"}, True),
        ('a != "b"', {"a": "c"}, True),
        ("b == 2", {"b": 2.0}, True),
        ("b < 1", {"b": 2.0}, False),
        ("b >= 2 && b <= 2", {"b": 2.0}, True),
        ('"abc" < "abd"', {}, True),
        # regex operators: unanchored, Go syntax
        ('b =~ "start"', {"b": "start long string"}, True),
        ('b =~ "long"', {"b": "start long string"}, True),
        ('b !~ "start"', {"b": "long string"}, True),
        ('b =~ "^s.*g$"', {"b": "start long string"}, True),
        ("b =~ pattern", {"b": "xyz", "pattern": "y"}, True),
        # logic, precedence, short-circuit (the unbound e is never read)
        ('b == "b" || (d == true && e == 2)', {"b": "b", "d": False}, True),
        ('b != "b" && e == 2', {"b": "b"}, False),
        ("true || false && false", {}, True),
        ("(true || false) && false", {}, False),
        ("!a == false", {"a": True}, True),  # prefix binds tightest: (!a) == false
        ("!(a == false)", {"a": True}, True),
        # arithmetic: float64, left associative (also **), C precedence
        ("1 + 2 * 3", {}, 7.0),
        ("(1 + 2) * 3", {}, 9.0),
        ("10 - 2 - 3", {}, 5.0),
        ("2 ** 3 ** 2", {}, 64.0),
        ("7 % 3", {}, 1.0),
        ("-7 % 3", {}, -1.0),
        ("1 / 2", {}, 0.5),
        ("1 / 0", {}, math.inf),
        ("-x", {"x": 3.0}, -3.0),
        ("0x1F + 1", {}, 32.0),
        ("(mem_used / total_mem) * 100", {"mem_used": 512.0, "total_mem": 1024.0}, 50.0),
        # + concatenates Go's %v texts when either side is a string
        ('"a" + 1', {}, "a1"),
        ('"a" + 1.5 + true', {}, "a1.5true"),
        # bitwise (int64), comparators bind looser than them
        ("(1 | 2) << 2", {}, 12.0),
        ("6 & 3 == 2", {}, True),
        ("5 ^ 1", {}, 4.0),
        ("~0", {}, -1.0),
        # membership: arrays in parentheses, or an array parameter
        ("x in (1, 2, 3)", {"x": 2.0}, True),
        ('x in ("a", "b")', {"x": "c"}, False),
        ("x IN list", {"x": "b", "list": ["a", "b"]}, True),
        ("1 in (true, 1)", {}, True),
        # equality: no conversions, deep for arrays and maps
        ('1 == "1"', {}, False),
        ("true == 1", {}, False),
        ("m == n", {"m": {"a": [1.0]}, "n": {"a": [1.0]}}, True),
        ("m == n", {"m": {"a": [True]}, "n": {"a": [1.0]}}, False),
        # ternary and null coalescence
        ("true ? 1 : 2", {}, 1.0),
        ("false ? 1 : 2", {}, 2.0),
        ("n ?? 5", {"n": None}, 5.0),
        ("n ?? 5", {"n": 0.0}, 0.0),
        # names with dashes: [brackets] or backslash escapes
        ("[my-field] > 3 && my\\-field < 10", {"my-field": 5.0}, True),
        ("[a b] == 1", {"a b": 1.0}, True),
        # backslash escapes the next character literally inside strings
        ('a == "it\\"s"', {"a": 'it"s'}, True),
        ('a =~ "\\\\d+"', {"a": "v12"}, True),
        ('a =~ "\\d"', {"a": "d"}, True),
        # date literals are Unix seconds, as in govaluate
        ('ts > "2024-01-01"', {"ts": 1704067201.0}, True),
        ('ts == "2024-01-01T00:00:00Z"', {"ts": 1704067200.0}, True),
        ('"2014-01-02" > "2014-01-01 23:59:59"', {}, True),
        ('s == "2024-01-01"', {"s": "2024-01-01"}, False),  # the literal is a number
    ],
)
def test_govaluate(source: str, env: dict[str, Any], expected: Any) -> None:
    assert gv(source, **env) == expected


@pytest.mark.parametrize(
    ("source", "env", "message"),
    [
        ("a == b", {"a": 1.0}, "no parameter 'b' found"),
        ('a > "x"', {"a": 1.0}, "cannot apply '>'"),
        ("a && true", {"a": "yes"}, "'&&' needs a bool"),
        ("!a", {"a": 1.0}, "'!' needs a bool"),
        ("-a", {"a": "x"}, "'-' needs a number"),
        ('a =~ "x"', {"a": 1.0}, "'=~' needs a string"),
        ("a - 1", {"a": "x"}, "cannot apply '-'"),
        ("a in 1", {"a": 1.0}, "must be an array"),
        ("a =~ p", {"a": "x", "p": "("}, "invalid regular expression"),
        ("true + 1", {}, "cannot apply '+'"),
    ],
)
def test_govaluate_eval_errors(source: str, env: dict[str, Any], message: str) -> None:
    with pytest.raises(EvalError, match=re.escape(message)):
        gv(source, **env)


@pytest.mark.parametrize(
    ("source", "pos", "message"),
    [
        ("a ==", 4, "unexpected end of expression"),
        ("a === b", 4, "invalid token"),
        ('k !== "x"', 4, "invalid token"),  # Argo's own "invalid expression" case
        ("(a == 1", 7, "expected ')'"),
        ("a == 1)", 6, "unexpected ')'"),
        ('a == "b', 5, "unclosed string literal"),
        ("[a == 1", 0, "unclosed parameter bracket"),
        ("a.b == 1", 0, "accessor"),
        ("strlen(a) > 1", 0, "unknown function 'strlen'"),
        ('a =~ "("', 5, "invalid regular expression"),
        ("1.2.3 > a", 0, "invalid number"),
        ("a @ b", 2, "invalid token '@'"),
        ("1, 2", 1, "unexpected ','"),
        ("", 0, "empty expression"),
        ("   ", 0, "empty expression"),
        ("a == 1 2", 7, "unexpected '2'"),
    ],
)
def test_govaluate_compile_errors_have_positions(source: str, pos: int, message: str) -> None:
    with pytest.raises(ExprSyntaxError) as info:
        compile_govaluate(source)
    assert info.value.pos == pos
    assert message in str(info.value)
    assert f"at position {pos}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_deep_nesting_is_a_compile_error_not_a_crash() -> None:
    with pytest.raises(ExprSyntaxError, match="nests too deeply"):
        compile_govaluate("(" * 500 + "1" + ")" * 500)


def test_names_lists_the_parameters_read() -> None:
    assert compile_govaluate("a == 1 || [b-c] in (d, 2)").names == {"a", "b-c", "d"}


# --------------------------------------------------------------------------- expr-lang

WEBHOOK: dict[str, Any] = {
    "header": {"X-Type": ["push"], "Content-Type": ["application/json"]},
    "body": {
        "action": "opened",
        "id": 4.0,
        "name": "Joe",
        "labels": ["bug", "ui"],
        "repo": {"owner": {"login": "octo"}},
        "draft": False,
    },
    "metadata": None,
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('body.action == "opened"', True),
        ('header["X-Type"][0] == "push"', True),
        ("header['Content-Type'][0] contains 'json'", True),
        ("(body.id == 4) && (body.name != 'Joe')", False),  # Argo's documented example
        ("body.id == 4 and body.name == 'Joe'", True),
        ("body.id == 4.0", True),
        ("body.repo.owner.login == 'octo'", True),
        ('body["repo"]["owner"]["login"] startsWith "oc"', True),
        ("body.labels[-1] == 'ui'", True),
        ("'bug' in body.labels", True),
        ("'feature' not in body.labels", True),
        ("'action' in body", True),
        ("len(body.labels) == 2 and len(body.action) == 6", True),
        ("body.missing == nil", True),
        ("body.missing?.deeper == nil", True),
        ("metadata?.x?.y ?? 'none'", "none"),
        ("not body.draft", True),
        ("!body.draft && body.action endsWith 'ed'", True),
        ("body.action matches '^op.n'", True),
        ("body.action not matches 'clos'", True),
        ("body.action not startsWith 'x'", True),
        ("body.id > 3 ? 'big' : 'small'", "big"),
        ("upper(body.name) == 'JOE' && lower('A') == 'a' && trim('  x ') == 'x'", True),
        ("1 + 2 * 3 ** 2", 19.0),
        ("2 ** 3 ** 2", 512.0),  # right associative in expr
        ("7 % 2 == 1 and 7 / 2 == 3.5", True),
        ("-2 ** 2", -4.0),
        ("not true == false", True),  # (not true) == false
        ("int('42') + 1 == 43 and float('1.5') == 1.5 and asInt(2.9) == 2", True),
        ("string(1.5) == '1.5' and abs(-3) == 3", True),
        ("[1, 2] == [1, 2]", True),
        ("body.labels == ['bug', 'ui']", True),
        ("0x10 + 0b11 + 0o7 + 1_000 == 1026", True),
        (r'"tab\there" == `tab\there`', False),  # raw strings keep the backslash
        ("'\\u00e9' == 'é'", True),
        ("body.action == 'opened' // trailing comment", True),
        ("/* leading */ true", True),
    ],
)
def test_expr_lang(source: str, expected: Any) -> None:
    assert ex(source, WEBHOOK) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("body.missing.deeper == 1", 'cannot fetch "deeper" from nil'),
        ("body.labels[5] == 'x'", "index out of range"),
        ("body.id % 2 == 0", "cannot apply '%'"),  # JSON numbers are floats, as in Go
        ("7 % 0", "integer divide by zero"),
        ("body.name < 3", "cannot apply '<'"),
        ("body.name and true", "'and' needs a bool"),
        ("len(body.id)", "invalid argument for len"),
        ("body.labels.x", 'cannot index array with "x"'),
        ("body[1]", "as a map key"),
        ("1 in 'abc'", "'in' needs an array or a map"),
        ("int('x')", "invalid syntax for int"),
        ("body.action matches body.id", "needs a pattern string"),
    ],
)
def test_expr_lang_eval_errors(source: str, message: str) -> None:
    with pytest.raises(EvalError, match=re.escape(message)):
        ex(source, WEBHOOK)


@pytest.mark.parametrize(
    ("source", "pos", "message"),
    [
        ("body.action ==", 14, "unexpected end of expression"),
        ("1..3", 1, "ranges"),
        ("body.labels[0:1]", 13, "slices are not supported"),
        ("body | len()", 5, "pipes"),
        ("let x = 1; x", 0, "'let' is not supported"),
        ("foo(1)", 0, "unknown function 'foo'"),
        ("len(1, 2)", 0, "len() takes 1 argument(s), got 2"),
        ("body.trim()", 9, "method calls are not supported"),
        ("'abc", 0, "unclosed string literal"),
        ("'\\q'", 1, "invalid escape \\q"),
        ("body.action matches '('", 20, "invalid regular expression"),
        ("{a: 1}", 0, "map literals"),
        ("a ? b", 5, "expected ':'"),
        ("1 2", 2, "unexpected '2'"),
        ("12abc", 0, "invalid number"),
        ("a @ b", 2, "unexpected character '@'"),
    ],
)
def test_expr_lang_compile_errors_have_positions(source: str, pos: int, message: str) -> None:
    with pytest.raises(ExprSyntaxError) as info:
        compile_expr(source)
    assert info.value.pos == pos, str(info.value)
    assert message in str(info.value)


# --------------------------------------------------------------------------- Go regexes


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("v", "very", True),  # unanchored
        ("^v$", "v\n", False),  # $ is the end of text without (?m)
        ("(?m)^v$", "v\nw", True),
        ("v\\z", "v", True),
        ("\\d+", "٣", False),  # Perl classes are ASCII in RE2
        ("\\w", "é", False),
        ("[\\W]", "é", True),
        ("[^a\\W]", "b", True),
        ("[^a\\W]", "a", False),
        ("\\s", "\v", False),
        ("\\bv\\b", "éve", False),
        ("(?i)é", "É", True),
        ("[[:alpha:]]+", "abc", True),
        ("^[[:digit:][:upper:]]+$", "A1", True),
        ("[[:^alpha:]]", "1", None),  # refused: negated POSIX classes
        ("\\x{41}\\x42\\101", "ABA", True),
        ("\\Q.*\\E", "a.*b", True),
        ("\\Q.*\\E", "ab", False),
        ("a{,3}", "a{,3}", True),  # not a repeat in RE2
        ("a{2}", "aa", True),
        ("[a&&b]", "&", True),
        ("(?P<n>x)(?<m>y)", "xy", True),
        ("(?s:.)", "\n", True),
        ("(?=x)", "x", None),  # look-around: not RE2
        ("(?<!x)y", "y", None),
        ("(a)\\1", "aa", None),  # backreference
        ("\\18", "", None),  # \1 then 8: a backreference in RE2's eyes
        ("a\\12b", "a\nb", True),  # octal
        ("a*+", "a", None),  # possessive
        ("\\pL", "a", None),  # Unicode classes: not reproduced
        ("(?U)a+", "a", None),
        ("\\Z", "", None),
        ("a{1001}", "", None),
        ("(", "", None),
        ("[a", "", None),
    ],
)
def test_go_regex(pattern: str, text: str, matches: bool | None) -> None:
    if matches is None:
        with pytest.raises(ValueError, match="invalid regular expression"):
            compile_go_regex(pattern)
    else:
        assert (compile_go_regex(pattern).search(text) is not None) is matches


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1.0),
        ("1.0", 1.0),
        ("-2.5e3", -2500.0),
        (".5", 0.5),
        ("1.", 1.0),
        ("+Inf", math.inf),
        ("infinity", math.inf),
        ("0x1p4", 16.0),
        ("1e400", math.inf),
        ("", None),
        (" 1", None),
        ("1_000", None),
        ("abc", None),
        ("0x10", None),  # a hex mantissa needs a p exponent
    ],
)
def test_go_parse_float(text: str, value: float | None) -> None:
    assert go_parse_float(text) == value


def test_go_equal_distinguishes_types_like_deep_equal() -> None:
    assert go_equal(1, 1.0)
    assert not go_equal(True, 1)
    assert not go_equal([1], [1.0])  # nested: same type all the way down
    assert go_equal({"a": [None, "x"]}, {"a": [None, "x"]})
    assert not go_equal(math.nan, math.nan)


# --------------------------------------------------------------------------- properties


@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class Not:
    arg: Any


@dataclass(frozen=True)
class And:
    left: Any
    right: Any


@dataclass(frozen=True)
class Or:
    left: Any
    right: Any


NAMES = ["a", "b", "c", "d", "e"]

trees = st.recursive(
    st.sampled_from([Var(n) for n in NAMES]),
    lambda sub: st.one_of(st.builds(Not, sub), st.builds(And, sub, sub), st.builds(Or, sub, sub)),
    max_leaves=12,
)


def reference(t: Any, env: dict[str, bool]) -> bool:
    if isinstance(t, Var):
        return env[t.name]
    if isinstance(t, Not):
        return not reference(t.arg, env)
    if isinstance(t, And):
        return reference(t.left, env) and reference(t.right, env)
    return reference(t.left, env) or reference(t.right, env)


# precedence of each node for minimal parenthesisation: or < and < not/var
PREC = {Or: 1, And: 2, Not: 3, Var: 3}


def render(t: Any, ops: tuple[str, str, str], minimal: bool) -> str:
    not_, and_, or_ = ops

    def wrap(child: Any, need: int) -> str:
        text = render(child, ops, minimal)
        return f"({text})" if not minimal or PREC[type(child)] < need else text

    if isinstance(t, Var):
        return t.name
    if isinstance(t, Not):
        # a prefix operator takes a single operand in both dialects: parenthesise
        # anything that is not a name or another negation
        inner = render(t.arg, ops, minimal)
        return f"{not_}{inner}" if isinstance(t.arg, Var | Not) else f"{not_}({inner})"
    if isinstance(t, And):
        return f"{wrap(t.left, 2)} {and_} {wrap(t.right, 3)}"
    return f"{wrap(t.left, 1)} {or_} {wrap(t.right, 2)}"


DIALECTS = [
    (compile_govaluate, ("!", "&&", "||")),
    (compile_expr, ("!", "&&", "||")),
    (compile_expr, ("not ", "and", "or")),
]


@settings(max_examples=300, deadline=None)
@given(
    tree=trees,
    values=st.fixed_dictionaries({n: st.booleans() for n in NAMES}),
    minimal=st.booleans(),
)
def test_and_or_not_agree_with_python(tree: Any, values: dict[str, bool], minimal: bool) -> None:
    expected = reference(tree, values)
    for compile_fn, ops in DIALECTS:
        source = render(tree, ops, minimal)
        assert compile_fn(source).evaluate(values) is expected, source


@settings(max_examples=200, deadline=None)
@given(
    x=st.floats(allow_nan=False, allow_infinity=False, width=32),
    y=st.floats(allow_nan=False, allow_infinity=False, width=32),
)
def test_comparisons_agree_with_python(x: float, y: float) -> None:
    for op in ("==", "!=", "<", "<=", ">", ">="):
        py = {"==": x == y, "!=": x != y, "<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}
        assert compile_govaluate(f"x {op} y").evaluate({"x": x, "y": y}) is py[op]
        assert compile_expr(f"x {op} y").evaluate({"x": x, "y": y}) is py[op]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_compiling_arbitrary_text_never_crashes(text: str) -> None:
    for compile_fn in (compile_govaluate, compile_expr):
        try:
            compile_fn(text)
        except ExprSyntaxError as e:
            assert 0 <= e.pos <= len(text)
