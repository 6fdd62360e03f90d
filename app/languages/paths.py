"""gjson-style reads and sjson-style writes on parsed JSON, compiled once per path.

Argo addresses event data with gjson paths (``dataKey``, ``contextKey``, data filter
``path``) and writes parameters with sjson paths (``dest``). Users' manifests rely on
that exact syntax, so it is reproduced here, but on parsed Python values instead of
JSON text: values are read from and set into dicts and lists, never spliced into text.

Why compile: parsing a path per event costs far more than walking a dict (DESIGN §7),
so :func:`compile_get` and :func:`compile_set` parse a path once, when the manifest is
loaded, into small closures; evaluating them is a few dict/list look-ups. Invalid paths
(empty, unsupported modifiers, sjson query syntax) raise ``ValueError`` at compile time.

gjson read (``GetPath.get(doc) -> (found, value)``):

* dotted keys and numeric array indexes (``body.items.0.name``, ``header.X-Run.0``);
  ``|`` as an alternative separator (it differs from ``.`` after ``#`` queries);
* ``\\`` escapes (``fav\\.movie``); ``*`` / ``?`` wildcards in object keys;
* ``#`` (array length), ``#.key`` (map over elements), ``#(key==v)`` (first match),
  ``#(key==v)#`` (all matches), operators ``== = != < <= > >= % !%`` and the ``~true``
  ``~false`` ``~null`` ``~*`` conversions, nested queries; the old ``#[...]`` form;
* multipaths ``[a,b.c]`` and ``{a,"name":b.c}``; literals ``!true``, ``!"text"``, ``!{...}``;
* modifiers ``@this @reverse @keys @values @flatten @join @ugly @valid @tostr @fromstr``.
  ``@pretty``, ``@group`` and ``@dig`` raise ``ValueError`` at compile time; JSON lines
  (``..``) is not supported.

gjson renders a found value two ways, reproduced by :func:`to_string` (``Result.String()``:
strings unquoted, integral numbers without a fraction, ``null`` as ``""``, objects and
arrays as compact JSON) and :func:`raw` (``Result.Raw``: compact JSON text).

sjson write (``SetPath.set(doc, value) -> doc``): dotted keys, ``\\`` escapes, numeric
indexes (an index past the end pads the array with ``null``), ``-1`` appends, a leading
``:`` forces an object key (``users.:2313``); missing intermediate containers are
created (an array when the next key is numeric or ``-1``, else an object) and scalars in
the way are replaced. Containers are changed in place; the (possibly new) root is
returned.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

import orjson

from app.kernel import jsoncodec

__all__ = [
    "GetPath",
    "SetPath",
    "compile_get",
    "compile_set",
    "raw",
    "to_string",
]


def _closing_quote(text: str, i: int) -> int:
    """From the opening quote at ``i``: the index of its closing quote (``len(text)``
    when unterminated), stepping over backslash escapes."""
    n = len(text)
    i += 1
    while i < n:
        if text[i] == "\\":
            i += 1
        elif text[i] == '"':
            break
        i += 1
    return i


class _NotFound:
    """Sentinel for "the path matched nothing" (``None`` is JSON ``null``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not found>"


_NF: Final = _NotFound()

Getter = Callable[[Any], Any]
"""A compiled path step: value in, value or ``_NF`` out."""


# --------------------------------------------------------------------------- rendering


def _format_float_fixed(f: float) -> str:
    """Go's ``strconv.FormatFloat(f, 'f', -1, 64)``: shortest digits, never an exponent."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    s = format(Decimal(repr(f)), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def to_string(value: Any) -> str:
    """Render a found value as gjson's ``Result.String()`` does.

    Strings as they are, ``true``/``false``, numbers in Go's shortest fixed notation
    (``5`` for both ``5`` and ``5.0``), ``null`` as the empty string, objects and arrays
    as compact JSON text.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _format_float_fixed(value)
    return raw(value)


def raw(value: Any) -> str:
    """Render a value as compact JSON text, as gjson's ``Result.Raw`` holds it."""
    try:
        return jsoncodec.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        # Integers beyond 64 bits and other values orjson refuses.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


# --------------------------------------------------------------------------- helpers

# Every modifier gjson knows; a known name after a dot makes the dot act as a pipe.
_GJSON_MODIFIERS: Final = frozenset(
    {
        "pretty",
        "ugly",
        "reverse",
        "this",
        "flatten",
        "join",
        "valid",
        "keys",
        "values",
        "tostr",
        "fromstr",
        "group",
        "dig",
    }
)
_UNSUPPORTED_MODIFIERS: Final = frozenset({"pretty", "group", "dig"})


def _is_dot_piper(s: str) -> bool:
    """After a ``.``: does the rest start a modifier or multipath (the dot then pipes)?"""
    if not s:
        return False
    c = s[0]
    if c == "@":
        i = 1
        while i < len(s) and s[i] not in ".|:":
            i += 1
        return s[1:i] in _GJSON_MODIFIERS
    return c in "[{"


def _gtrim(s: str) -> str:
    """gjson's trim: strip every byte at or below the space character."""
    i, j = 0, len(s)
    while i < j and s[i] <= " ":
        i += 1
    while j > i and s[j - 1] <= " ":
        j -= 1
    return s[i:j]


def _parse_uint(s: str) -> int | None:
    if not s or not s.isascii() or not s.isdigit():
        return None
    return int(s)


def _compile_pattern(chars: list[tuple[str, bool]]) -> re.Pattern[str]:
    """A wildcard pattern (``*`` any run, ``?`` any one character) as an anchored regex.

    ``chars`` pairs each character with whether it was escaped (escaped wildcards are
    literal).
    """
    out: list[str] = []
    for c, escaped in chars:
        if not escaped and c == "*":
            out.append(".*")
        elif not escaped and c == "?":
            out.append(".")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL)


def _match_pattern_text(pattern: str) -> re.Pattern[str]:
    """A ``%`` (like) query pattern: ``*``, ``?`` and ``\\`` escapes, as tidwall/match."""
    chars: list[tuple[str, bool]] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            chars.append((pattern[i + 1], True))
            i += 2
            continue
        chars.append((c, False))
        i += 1
    return _compile_pattern(chars)


def _go_parse_float(s: str) -> float:
    """``strconv.ParseFloat`` as gjson uses it: unparsable text compares as 0."""
    try:
        return float(s)
    except ValueError:
        return 0.0


def _parse_bool(s: str) -> bool | None:
    """``strconv.ParseBool`` on a lower-cased string."""
    if s in ("1", "t", "true"):
        return True
    if s in ("0", "f", "false"):
        return False
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- queries


class _Query:
    """One ``#(path op value)`` condition, tested against an array element's result."""

    __slots__ = ("num", "op", "pattern", "rpv", "tilde")

    def __init__(self, op: str, value: str) -> None:
        self.op = op
        self.tilde: str | None = None
        if value.startswith("~"):
            t = value[1:]
            self.tilde = t if t in ("*", "null", "true", "false") else ""
        self.rpv = value
        self.num = _go_parse_float(value)
        self.pattern = _match_pattern_text(value) if op in ("%", "!%") else None

    def matches(self, value: Any) -> bool:
        rpv = self.rpv
        num = self.num
        if self.tilde is not None:
            t = self.tilde
            if t == "":
                return False
            if t == "*":
                ish = value is not _NF
            elif t == "null":
                ish = value is _NF or value is None
            elif t == "true":
                ish = _trueish(value)
            else:
                ish = _falseish(value)
            value = ish
            rpv = "true"
        if value is _NF:
            return False
        op = self.op
        if op == "":
            return True
        if isinstance(value, str):
            if op == "=":
                return value == rpv
            if op == "!=":
                return value != rpv
            if op == "<":
                return value < rpv
            if op == "<=":
                return value <= rpv
            if op == ">":
                return value > rpv
            if op == ">=":
                return value >= rpv
            if op == "%":
                return self.pattern is not None and self.pattern.fullmatch(value) is not None
            if op == "!%":
                return self.pattern is not None and self.pattern.fullmatch(value) is None
            return False
        if value is True:
            if op == "=":
                return rpv == "true"
            if op == "!=":
                return rpv != "true"
            if op == ">":
                return rpv == "false"
            return op == ">="
        if value is False:
            if op == "=":
                return rpv == "false"
            if op == "!=":
                return rpv != "false"
            if op == "<":
                return rpv == "true"
            return op == "<="
        if _is_number(value):
            f = float(value)
            if op == "=":
                return f == num
            if op == "!=":
                return f != num
            if op == "<":
                return f < num
            if op == "<=":
                return f <= num
            if op == ">":
                return f > num
            if op == ">=":
                return f >= num
        return False


def _trueish(v: Any) -> bool:
    if v is True:
        return True
    if isinstance(v, str):
        return _parse_bool(v.lower()) is True
    if _is_number(v):
        return bool(v != 0)
    return False


def _falseish(v: Any) -> bool:
    if v is _NF or v is None or v is False:
        return True
    if isinstance(v, str):
        return _parse_bool(v.lower()) is False
    if _is_number(v):
        return bool(v == 0)
    return False


def _parse_query(q: str) -> tuple[str, str, str, int, bool] | None:
    """Split ``#(path op value)...``: returns (path, op, value, index after ``)``, escaped).

    ``None`` when the brackets do not balance.
    """
    if len(q) < 2 or q[0] != "#" or q[1] not in "([":
        return None
    i = 2
    j = 0
    depth = 1
    vesc = False
    n = len(q)
    while i < n:
        c = q[i]
        if depth == 1 and j == 0 and c in "!=<>%":
            j = i
            i += 1
            continue
        if c == "\\":
            i += 1
        elif c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
            if depth == 0:
                break
        elif c == '"':
            i += 1
            while i < n:
                if q[i] == "\\":
                    vesc = True
                    i += 1
                elif q[i] == '"':
                    break
                i += 1
        i += 1
    if depth > 0:
        return None
    if j > 0:
        path = _gtrim(q[2:j])
        value = _gtrim(q[j:i])
        if len(value) == 1:
            opsz = 1
        elif value[:2] in ("!=", "!%", "<=", ">="):
            opsz = 2
        elif value[:2] == "==":
            value = value[1:]
            opsz = 1
        else:
            opsz = 1 if value[0] in "<>=%" else 0
        op = value[:opsz]
        value = _gtrim(value[opsz:])
    else:
        path = _gtrim(q[2:i])
        op = ""
        value = ""
    return path, op, value, i + 1, vesc


def _split_possible_pipe(path: str) -> tuple[str, str] | None:
    """Split ``left|right`` at a top-level pipe (not inside ``.#(...)`` queries)."""
    if "|" not in path:
        return None
    if path.startswith("{"):
        end = _squash_end(path, 0)
        if end is not None and end < len(path) and path[end] == "|":
            return path[:end], path[end + 1 :]
        return None
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c == "\\":
            i += 1
        elif c == ".":
            if i == n - 1:
                return None
            if path[i + 1] == "#":
                i += 2
                if i == n:
                    return None
                if path[i] in "[(":
                    open_ch, close_ch = ("[", "]") if path[i] == "[" else ("(", ")")
                    i += 1
                    depth = 1
                    while i < n:
                        ch = path[i]
                        if ch == "\\":
                            i += 1
                        elif ch == open_ch:
                            depth += 1
                        elif ch == close_ch:
                            depth -= 1
                            if depth == 0:
                                break
                        elif ch == '"':
                            i = _closing_quote(path, i)
                        i += 1
                    # i is at the closing bracket (or the end); step past it
        elif c == "|":
            return path[:i], path[i + 1 :]
        i += 1
    return None


def _squash_end(s: str, i: int) -> int | None:
    """Index just past the bracketed (``{[(``) block or string starting at ``s[i]``.

    ``None`` when it is not closed.
    """
    depth = 0
    n = len(s)
    if i < n and s[i] == '"':
        j = i + 1
        while j < n:
            if s[j] == "\\":
                j += 2
                continue
            if s[j] == '"':
                return j + 1
            j += 1
        return None
    while i < n:
        c = s[i]
        if c == '"':
            i = _closing_quote(s, i)
        elif c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


# --------------------------------------------------------------------------- modifiers


def _mod_reverse(v: Any, arg: str) -> Any:
    if isinstance(v, list):
        return v[::-1]
    if isinstance(v, dict):
        return dict(reversed(list(v.items())))
    return v


def _mod_keys(v: Any, arg: str) -> Any:
    if isinstance(v, dict):
        return list(v.keys())
    if isinstance(v, list):
        return [None] * len(v)
    return [None]


def _mod_values(v: Any, arg: str) -> Any:
    if isinstance(v, dict):
        return list(v.values())
    if isinstance(v, list):
        return v
    return [v]


def _arg_flag(arg: str, name: str) -> bool:
    if not arg:
        return False
    try:
        obj = json.loads(arg)
    except ValueError:
        return False
    return isinstance(obj, dict) and _trueish(obj.get(name, _NF))


def _mod_flatten(v: Any, arg: str) -> Any:
    if not isinstance(v, list):
        return v
    deep = _arg_flag(arg, "deep")
    out: list[Any] = []
    for e in v:
        if isinstance(e, list):
            out.extend(_mod_flatten(e, arg) if deep else e)
        else:
            out.append(e)
    return out


def _mod_join(v: Any, arg: str) -> Any:
    if not isinstance(v, list):
        return v
    out: dict[str, Any] = {}
    for e in v:
        if isinstance(e, dict):
            out.update(e)
    return out


def _mod_this(v: Any, arg: str) -> Any:
    return v


def _mod_tostr(v: Any, arg: str) -> Any:
    return raw(v)


def _mod_fromstr(v: Any, arg: str) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return _NF
    return v


_MODIFIERS: Final[dict[str, Callable[[Any, str], Any]]] = {
    "this": _mod_this,
    "reverse": _mod_reverse,
    "keys": _mod_keys,
    "values": _mod_values,
    "flatten": _mod_flatten,
    "join": _mod_join,
    "ugly": _mod_this,
    "valid": _mod_this,
    "tostr": _mod_tostr,
    "fromstr": _mod_fromstr,
}


# --------------------------------------------------------------------------- compiler


def _not_found(v: Any) -> Any:
    return _NF


class _GetCompiler:
    """Compiles gjson paths into closures; sub-paths are memoised per compile."""

    def __init__(self) -> None:
        self._tops: dict[str, Getter] = {}
        self._walks: dict[str, Getter] = {}

    # A "top" path is what gjson's Get() sees: it may start with a modifier, a literal
    # or a multipath. Pipes, query sub-paths and multipath members are top paths.
    def top(self, path: str) -> Getter:
        fn = self._tops.get(path)
        if fn is None:
            fn = self._compile_top(path)
            self._tops[path] = fn
        return fn

    # A "walk" path is evaluated component by component inside an object or array; how
    # the next component splits depends on which of the two the value is.
    def walk(self, path: str) -> Getter:
        fn = self._walks.get(path)
        if fn is None:
            fn = self._compile_walk(path)
            self._walks[path] = fn
        return fn

    def _compile_top(self, path: str) -> Getter:
        if len(path) > 1:
            c = path[0]
            if c == "@":
                fn = self._modifier(path)
                if fn is not None:
                    return fn
            elif c == "!":
                fn = self._literal(path)
                if fn is not None:
                    return fn
            elif c in "[{":
                fn = self._multipath(path)
                if fn is not None:
                    return fn
        return self.walk(path)

    def _then(self, first: Callable[[Any], Any], rest: str) -> Getter:
        """``first`` then, when ``rest`` starts with ``.`` or ``|``, the rest as a top path."""
        if rest and rest[0] in ".|":
            nxt = self.top(rest[1:])

            def chained(v: Any) -> Any:
                r = first(v)
                return _NF if r is _NF else nxt(r)

            return chained
        return first

    def _modifier(self, path: str) -> Getter | None:
        i = 1
        name = path[1:]
        rest = ""
        has_args = False
        while i < len(path):
            c = path[i]
            if c == ":":
                name = path[1:i]
                rest = path[i + 1 :]
                has_args = bool(rest)
                break
            if c in "|.":
                name = path[1:i]
                rest = path[i:]
                break
            i += 1
        if name not in _GJSON_MODIFIERS:
            return None
        if name in _UNSUPPORTED_MODIFIERS:
            raise ValueError(f"gjson modifier @{name} is not supported")
        arg = ""
        if has_args:
            end: int | None = None
            if rest[0] in '{["':
                try:
                    _, end = json.JSONDecoder().raw_decode(rest)
                except ValueError:
                    end = None
            if end is None:
                # A plain argument runs to the next pipe, skipping bracketed blocks.
                j = 0
                while j < len(rest) and rest[j] != "|":
                    if rest[j] in '{[("':
                        e = _squash_end(rest, j)
                        if e is not None:
                            j = e - 1
                    j += 1
                end = j
            arg, rest = rest[:end], rest[end:]
        mod = _MODIFIERS[name]

        def apply(v: Any) -> Any:
            return mod(v, arg)

        return self._then(apply, rest)

    def _literal(self, path: str) -> Getter | None:
        body = path[1:]
        value: Any
        if body and body[0] in '{["+-0123456789':
            try:
                value, end = json.JSONDecoder().raw_decode(body)
            except ValueError as e:
                raise ValueError(f"invalid JSON literal in {path!r}: {e}") from e
            rest = body[end:]
        else:
            i = 0
            while i < len(body) and body[i] not in "|.":
                i += 1
            name, rest = body[:i], body[i:]
            literals: dict[str, Any] = {
                "true": True,
                "false": False,
                "null": None,
                "nan": math.nan,
                "inf": math.inf,
            }
            if name.lower() not in literals:
                return None
            value = literals[name.lower()]

        def const(v: Any) -> Any:
            return value

        return self._then(const, rest)

    def _multipath(self, path: str) -> Getter | None:
        kind = path[0]
        parsed = _parse_subselectors(path)
        if parsed is None:
            raise ValueError(f"unterminated multipath in {path!r}")
        sels, rest = parsed
        if rest and rest[0] not in ".|":
            raise ValueError(f"unexpected {rest!r} after multipath in {path!r}")
        members: list[tuple[str, Getter]] = []
        for name, sub in sels:
            key = name
            if kind == "{":
                if name:
                    if name.startswith('"'):
                        try:
                            decoded = json.loads(name)
                        except ValueError:
                            decoded = name
                        key = decoded if isinstance(decoded, str) else name
                else:
                    last = _name_of_last(sub)
                    key = last if _is_simple_name(last) else "_"
            members.append((key, self.top(sub)))

        if kind == "[":

            def build(v: Any) -> Any:
                out: list[Any] = []
                for _, fn in members:
                    r = fn(v)
                    if r is not _NF:
                        out.append(r)
                return out

        else:

            def build(v: Any) -> Any:
                obj: dict[str, Any] = {}
                for k, fn in members:
                    r = fn(v)
                    if r is not _NF:
                        obj[k] = r
                return obj

        return self._then(build, rest)

    def _compile_walk(self, path: str) -> Getter:
        obj_fn = self._object_step(path)
        arr_fn = self._array_step(path)

        def walk(v: Any) -> Any:
            if isinstance(v, dict):
                return obj_fn(v)
            if isinstance(v, list):
                return arr_fn(v)
            return _NF

        return walk

    # -- object components -------------------------------------------------------------

    def _object_step(self, path: str) -> Getter:
        chars: list[tuple[str, bool]] = []
        wild = False
        kind = "end"
        rest = ""
        i = 0
        n = len(path)
        while i < n:
            c = path[i]
            if c == "|":
                kind, rest = "pipe", path[i + 1 :]
                break
            if c == ".":
                if i < n - 1 and _is_dot_piper(path[i + 1 :]):
                    kind, rest = "pipe", path[i + 1 :]
                else:
                    kind, rest = "more", path[i + 1 :]
                break
            if c == "\\":
                if i + 1 < n:
                    chars.append((path[i + 1], True))
                i += 2
                continue
            if c in "*?":
                wild = True
            chars.append((c, False))
            i += 1
        part = "".join(c for c, _ in chars)
        nxt: Getter | None = None
        if kind == "more":
            nxt = self.walk(rest)
        elif kind == "pipe":
            nxt = self.top(rest)

        if wild:
            pattern = _compile_pattern(chars)
            if kind == "more":
                assert nxt is not None
                walk_next = nxt

                def wild_more(v: Any) -> Any:
                    for k, child in v.items():
                        if pattern.fullmatch(k) is not None:
                            r = walk_next(child)
                            if r is not _NF:
                                return r
                    return _NF

                return wild_more

            def wild_first(v: Any) -> Any:
                for k, child in v.items():
                    if pattern.fullmatch(k) is not None:
                        return child if nxt is None else nxt(child)
                return _NF

            return wild_first

        if nxt is None:

            def key_end(v: Any) -> Any:
                return v.get(part, _NF)

            return key_end

        follow = nxt

        def key_next(v: Any) -> Any:
            child = v.get(part, _NF)
            return _NF if child is _NF else follow(child)

        return key_next

    # -- array components --------------------------------------------------------------

    def _array_step(self, path: str) -> Getter:
        kind = "end"
        rest = ""
        part = path
        arrch = False
        alog = False
        query: tuple[str, str, str, bool] | None = None  # path, op, value, all
        bad_query = False
        i = 0
        n = len(path)
        while i < n:
            c = path[i]
            if c == "|":
                part, kind, rest = path[:i], "pipe", path[i + 1 :]
                break
            if c == ".":
                part = path[:i]
                if not arrch and i < n - 1 and _is_dot_piper(path[i + 1 :]):
                    kind, rest = "pipe", path[i + 1 :]
                else:
                    kind, rest = "more", path[i + 1 :]
                break
            if c == "#":
                arrch = True
                if i == 0 and n > 1:
                    if path[1] == ".":
                        alog = True
                    elif path[1] in "([":
                        parsed = _parse_query(path)
                        if parsed is None:
                            bad_query = True
                            break
                        qpath, op, value, fi, vesc = parsed
                        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                            if vesc:
                                try:
                                    decoded = json.loads(value)
                                    value = decoded if isinstance(decoded, str) else value[1:-1]
                                except ValueError:
                                    value = value[1:-1]
                            else:
                                value = value[1:-1]
                        i = fi - 1
                        all_ = i + 1 < n and path[i + 1] == "#"
                        query = (qpath, op, value, all_)
            i += 1
        if bad_query:
            return _not_found

        if query is not None:
            return self._query_step(query, kind, rest)
        if arrch:
            if part != "#":
                return _not_found
            if alog:
                return self._map_step(rest)
            count_then = self.top(rest) if kind == "pipe" else None

            def count(v: Any) -> Any:
                r = len(v)
                return r if count_then is None else count_then(r)

            return count

        idx = _parse_uint(part)
        if idx is None:
            return _not_found
        if kind == "end":

            def index_end(v: Any) -> Any:
                return v[idx] if idx < len(v) else _NF

            return index_end
        follow = self.walk(rest) if kind == "more" else self.top(rest)

        def index_next(v: Any) -> Any:
            return follow(v[idx]) if idx < len(v) else _NF

        return index_next

    def _map_step(self, key: str) -> Getter:
        split = _split_possible_pipe(key)
        left, right = split if split is not None else (key, "")
        each = self.top(left)
        after = self.top(right) if split is not None else None

        def mapped(v: Any) -> Any:
            out: list[Any] = []
            for e in v:
                r = each(e)
                if r is not _NF:
                    out.append(r)
            return out if after is None else after(out)

        return mapped

    def _query_step(self, query: tuple[str, str, str, bool], kind: str, rest: str) -> Getter:
        qpath, op, value, all_ = query
        cond = _Query(op, value)
        sub = self.top(qpath)
        left_fn: Getter | None = None
        pipe_fn: Getter | None = None
        if kind == "more":
            split = _split_possible_pipe(rest)
            if split is not None:
                left_fn, pipe_fn = self.top(split[0]), self.top(split[1])
            else:
                left_fn = self.top(rest)
        elif kind == "pipe":
            pipe_fn = self.top(rest)
        has_qpath = qpath != ""

        def probe(e: Any) -> bool:
            if isinstance(e, (dict, list)):
                return cond.matches(sub(e))
            if has_qpath:
                return False
            return cond.matches(e)

        if all_:

            def query_all(v: Any) -> Any:
                out: list[Any] = []
                for e in v:
                    if probe(e):
                        r = e if left_fn is None else left_fn(e)
                        if r is not _NF:
                            out.append(r)
                return out if pipe_fn is None else pipe_fn(out)

            return query_all

        def query_first(v: Any) -> Any:
            for e in v:
                if probe(e):
                    r = e if left_fn is None else left_fn(e)
                    if pipe_fn is not None and r is not _NF:
                        r = pipe_fn(r)
                    return r
            return _NF

        return query_first


def _parse_subselectors(path: str) -> tuple[list[tuple[str, str]], str] | None:
    """Split ``[a,b]`` / ``{"n":a,b}`` into (name, path) members and the remaining path."""
    sels: list[tuple[str, str]] = []
    modifier = 0
    depth = 1
    colon = 0
    start = 1
    i = 1
    n = len(path)

    def push(at: int) -> None:
        nonlocal colon, modifier, start
        if colon == 0:
            sels.append(("", path[start:at]))
        else:
            sels.append((path[start:colon], path[colon + 1 : at]))
        colon = 0
        modifier = 0
        start = at + 1

    while i < n:
        c = path[i]
        if c == "\\":
            i += 1
        elif c == "@":
            if modifier == 0 and i > 0 and path[i - 1] in ".|":
                modifier = i
        elif c == ":":
            if modifier == 0 and colon == 0 and depth == 1:
                colon = i
        elif c == ",":
            if depth == 1:
                push(i)
        elif c == '"':
            i = _closing_quote(path, i)
        elif c in "[({":
            depth += 1
        elif c in "])}":
            depth -= 1
            if depth == 0:
                push(i)
                return sels, path[i + 1 :]
        i += 1
    return None


def _name_of_last(path: str) -> str:
    for i in range(len(path) - 1, -1, -1):
        if path[i] in "|.":
            if i > 0 and path[i - 1] == "\\":
                continue
            return path[i + 1 :]
    return path


def _is_simple_name(component: str) -> bool:
    return not any(c < " " or c in "[]{}()#|!" for c in component)


# Characters that make a path need the general engine rather than the plain key walk.
_SPECIAL: Final = frozenset("\\*?#@|[]{}()!")


def _simple_parts(path: str) -> list[tuple[str, int | None]] | None:
    """The parts of a path of plain keys/indexes only, or None when it needs more."""
    if not path or any(c in _SPECIAL for c in path):
        return None
    parts = path.split(".")
    if any(p == "" for p in parts):
        return None
    return [(p, _parse_uint(p)) for p in parts]


class GetPath:
    """A gjson path compiled once; :meth:`get` evaluates it against parsed JSON."""

    __slots__ = ("_fn", "path")

    def __init__(self, path: str, fn: Getter) -> None:
        self.path = path
        self._fn = fn

    def get(self, doc: Any) -> tuple[bool, Any]:
        """``(True, value)`` when the path matches, ``(False, None)`` when it does not."""
        r = self._fn(doc)
        if r is _NF:
            return False, None
        return True, r

    def __repr__(self) -> str:
        return f"GetPath({self.path!r})"


def _plain_walker(parts: list[tuple[str, int | None]]) -> Getter:
    """The fast path: a loop of dict look-ups / list indexes."""

    def plain(v: Any) -> Any:
        for key, idx in parts:
            if isinstance(v, dict):
                v = v.get(key, _NF)
                if v is _NF:
                    return _NF
            elif isinstance(v, list) and idx is not None and idx < len(v):
                v = v[idx]
            else:
                return _NF
        return v

    return plain


def compile_get(path: str) -> GetPath:
    """Compile a gjson path; ``ValueError`` when it is empty or uses unsupported syntax."""
    if not isinstance(path, str) or path == "":
        raise ValueError("path is empty")
    if path.startswith(".."):
        raise ValueError(f"JSON-lines paths ('..') are not supported: {path!r}")
    parts = _simple_parts(path)
    if parts is not None:
        return GetPath(path, _plain_walker(parts))
    return GetPath(path, _GetCompiler().top(path))


# --------------------------------------------------------------------------- sjson set


class _SetPart:
    """One sjson path component: ``key`` (text), ``index`` when numeric, ``append`` for -1."""

    __slots__ = ("append", "force", "index", "key")

    def __init__(self, key: str, force: bool) -> None:
        self.key = key
        self.force = force
        self.index = None if force else _parse_uint(key)
        self.append = not force and key == "-1"

    def new_container(self) -> Any:
        """The container sjson creates for this component: an array for indexes and -1."""
        if self.index is not None or self.append:
            return []
        return {}


def _parse_set_path(path: str) -> list[_SetPart]:
    if path == "":
        raise ValueError("path is empty")
    parts: list[_SetPart] = []
    i = 0
    n = len(path)
    while True:
        force = False
        if i < n and path[i] == ":":
            force = True
            i += 1
        buf: list[str] = []
        ended = True
        while i < n:
            c = path[i]
            if c == ".":
                i += 1
                ended = False
                break
            if c == "\\":
                if i + 1 < n:
                    buf.append(path[i + 1])
                i += 2
                continue
            if c in "|#@*?":
                raise ValueError(
                    f"{path!r}: {c!r} is query syntax, which cannot address a value to set "
                    f"(escape it as '\\{c}' for a literal key)"
                )
            buf.append(c)
            i += 1
        key = "".join(buf)
        if key == "" and not force:
            raise ValueError(f"{path!r}: empty path component")
        parts.append(_SetPart(key, force))
        if ended:
            return parts


class SetPath:
    """An sjson path compiled once; :meth:`set` writes a value into parsed JSON."""

    __slots__ = ("_parts", "path")

    def __init__(self, path: str, parts: list[_SetPart]) -> None:
        self.path = path
        self._parts = parts

    def get(self, doc: Any) -> tuple[bool, Any]:
        """Read the value this path addresses (as gjson would), ``(False, None)`` if absent."""
        v = doc
        for p in self._parts:
            if isinstance(v, dict):
                if p.key not in v:
                    return False, None
                v = v[p.key]
            elif isinstance(v, list):
                if p.index is None or p.index >= len(v):
                    return False, None
                v = v[p.index]
            else:
                return False, None
        return True, v

    def set(self, doc: Any, value: Any) -> Any:
        """Set ``value`` at this path, in place; returns the root (new if ``doc`` was not
        a container). ``ValueError`` when a non-numeric key meets an existing array."""
        parts = self._parts
        if not isinstance(doc, (dict, list)):
            doc = parts[0].new_container()
        cur: Any = doc
        last = len(parts) - 1
        for n, p in enumerate(parts):
            is_last = n == last
            nxt = None if is_last else parts[n + 1]
            if isinstance(cur, dict):
                if is_last:
                    cur[p.key] = value
                    return doc
                child = cur.get(p.key)
                if not isinstance(child, (dict, list)):
                    assert nxt is not None
                    child = nxt.new_container()
                    cur[p.key] = child
                cur = child
                continue
            # cur is a list
            if p.append:
                slot = len(cur)
            elif p.index is not None:
                slot = p.index
            else:
                raise ValueError(
                    f"{self.path!r}: cannot set array element for non-numeric key {p.key!r}"
                )
            if slot >= len(cur):
                cur.extend([None] * (slot - len(cur)))
                if is_last:
                    cur.append(value)
                    return doc
                assert nxt is not None
                child = nxt.new_container()
                cur.append(child)
                cur = child
                continue
            if is_last:
                cur[slot] = value
                return doc
            child = cur[slot]
            if not isinstance(child, (dict, list)):
                assert nxt is not None
                child = nxt.new_container()
                cur[slot] = child
            cur = child
        return doc

    def __repr__(self) -> str:
        return f"SetPath({self.path!r})"


def compile_set(path: str) -> SetPath:
    """Compile an sjson path; ``ValueError`` when it is empty or uses query syntax."""
    if not isinstance(path, str):
        raise ValueError("path must be a string")
    return SetPath(path, _parse_set_path(path))
