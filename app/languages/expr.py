"""One safe evaluator for the user expressions Argo manifests carry, compiled at load.

Argo filters events with expressions in two languages, and a manifest written for Argo
must keep its meaning here:

* ``spec.dependencies[].filters.exprs[].expr`` (Sensor) is **govaluate**, evaluated over
  the named ``fields`` (values read from the event data by gjson paths);
* ``spec.<source>.<name>.filter.expression`` (EventSource) is **expr-lang**, evaluated
  over the event data itself (``body.action == "opened"``).

Both front-ends tokenize and parse (precedence climbing) into one small AST when the
manifest loads (:func:`compile_govaluate`, :func:`compile_expr`); the AST is then turned
into nested closures, so evaluating is a few Python calls per node. User text never
reaches ``eval``/``exec``: an expression can only read the variables it is handed and
call the few functions listed below. Syntax errors raise :class:`ExprSyntaxError` (a
``ValueError``) with the 0-based position; type mismatches, missing parameters and bad
indexes raise :class:`EvalError` when evaluated, which callers treat as "filter failed".

govaluate (what Argo's ``exprs`` accept):

* ``== != < <= > >= =~ !~ in`` (``x in (1, 2)``), ``&& ||`` (short-circuit), prefix
  ``! - ~``, ``+ - * / % **``, bitwise ``& | ^ << >>``, ``?`` / ``:`` / ``??``,
  parentheses and parenthesised arrays; precedence and (left) associativity as
  govaluate's planner gives them, so a prefix operator binds tightest (``!a == b`` is
  ``(!a) == b``) and comparisons bind looser than bitwise operators;
* literals: numbers (all float64, ``0x`` hex too), ``true``/``false``, strings in
  ``'...'`` or ``"..."`` which end at the first unescaped quote of *either* kind and
  where ``\\`` escapes the next character literally (``"\\d"`` is ``d``; write
  ``"\\\\d"`` for a regex ``\\d``); a string literal that reads as a date (RFC 3339,
  ``2006-01-02``, ``2006-01-02 15:04``, ANSIC, ...) becomes its Unix time in seconds, as
  in govaluate (a zone-less date is taken as UTC, the local zone of a container);
* names: a letter then letters, digits, ``_``; ``[any text]`` or ``\\`` escapes for
  names such as ``my-field`` (plain ``my-field`` is ``my - field``, as in govaluate).
  A ``.`` in a name is a govaluate accessor, which can only ever fail on JSON values,
  so it is refused at compile time;
* ``+`` adds numbers or, when either side is a string, concatenates Go's ``%v`` texts;
  ``< <= > >=`` need two numbers or two strings; ``==`` is deep equality with no
  conversions (``1 == "1"`` is false); an unknown parameter is an :class:`EvalError`
  when (and only when) evaluation reaches it. No functions (Argo registers none).

expr-lang subset (what EventSource filters commonly use):

* member access ``a.b``, ``a["b-c"]``, ``a[0]``, ``a[-1]``, optional ``a?.b``;
  a missing map key reads as ``nil``; fetching from ``nil`` is an :class:`EvalError`;
* ``== != < <= > >=``, ``and or not && || !``, ``in`` / ``not in`` (arrays and map
  keys), ``matches contains startsWith endsWith`` (and their ``not`` forms), ``+ - * /
  % ** ^``, ``??``, ``cond ? a : b``; literals: ints (``0x``/``0o``/``0b``/``_``),
  floats, ``"..."``/``'...'`` with Go escapes, raw backtick strings, ``true false
  nil``, arrays ``[1, 2]``; functions ``len lower upper trim abs int float string``
  (``asInt``/``asFloat`` as aliases, as Argo registers them). ``/`` divides as floats,
  ``%`` needs integers (JSON numbers are floats, as in Go). Not supported (compile
  error): ranges, slices, pipes, ``let``, closures, map literals, method calls.

Regular expressions (``=~``, ``matches``, and data filters) use Go's RE2 syntax; they
are compiled with Python's :mod:`re` after :func:`compile_go_regex` translates the
differences (``\\z``, ``$`` without ``(?m)``, ASCII ``\\d \\w \\s \\b``, POSIX classes,
``\\x{...}``, ``\\Q...\\E``) and refuses what RE2 refuses (look-around, backreferences,
possessive quantifiers) or we cannot reproduce (``\\pL`` Unicode classes, ``(?U)``).
Python's engine backtracks where RE2 does not, so a pathological pattern can be slow;
patterns come from manifests, not from events.
"""

from __future__ import annotations

import abc
import functools
import json
import math
import operator
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from app.languages.gotemplate import go_sprint

__all__ = [
    "EvalError",
    "ExprSyntaxError",
    "Expression",
    "compile_expr",
    "compile_go_regex",
    "compile_govaluate",
    "go_equal",
    "go_parse_float",
    "show_value",
]

Env = Mapping[str, Any]
_Fn = Callable[[Env], Any]


class ExprSyntaxError(ValueError):
    """An expression that does not compile; ``pos`` is the 0-based offset in ``source``."""

    def __init__(self, message: str, source: str, pos: int) -> None:
        self.message = message
        self.source = source
        self.pos = pos
        super().__init__(f"{message} at position {pos}")


class EvalError(Exception):
    """An expression failed on the values it was given (types, missing names, ...)."""


# --------------------------------------------------------------------------- values


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def show_value(v: Any, limit: int = 60) -> str:
    """A short, JSON-like rendering of a value for error messages and filter reasons
    (strings quoted, integral floats without a fraction, long text cut)."""
    if isinstance(v, str):
        s = json.dumps(v, ensure_ascii=False)
    elif v is None:
        s = "null"
    elif isinstance(v, bool | int | float):
        s = go_sprint(v)
    else:
        try:
            s = json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)
        except (TypeError, ValueError):
            s = repr(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _type_name(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "map"
    return type(v).__name__


def go_equal(a: Any, b: Any) -> bool:
    """``==`` of both dialects: numbers compare by value (``1 == 1.0``); anything else is
    Go's ``reflect.DeepEqual`` on JSON values: same type all the way down, so ``true``
    is not ``1``, ``"1"`` is not ``1`` and ``[1]`` is not ``[1.0]``."""
    if _is_num(a) and _is_num(b):
        return bool(a == b)
    return _deep_equal(a, b)


def _deep_equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_deep_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    return bool(a == b)


_GO_FLOAT: Final = re.compile(
    r"[+-]?(?:[0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
)
_GO_HEX_FLOAT: Final = re.compile(
    r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+"
)
_GO_SPECIAL_FLOAT: Final = re.compile(r"[+-]?(?:inf|infinity)|nan", re.IGNORECASE)


def go_parse_float(s: str) -> float | None:
    """Go's ``strconv.ParseFloat(s, 64)``: ``None`` where Go reports a syntax error; a
    value out of range becomes ±Inf, as Go returns it (with an error gjson ignores)."""
    if _GO_FLOAT.fullmatch(s) or _GO_SPECIAL_FLOAT.fullmatch(s):
        return float(s)
    if _GO_HEX_FLOAT.fullmatch(s):
        try:
            return float.fromhex(s)
        except OverflowError:
            return -math.inf if s.startswith("-") else math.inf
    return None


def _go_fdiv(a: float, b: float) -> float:
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(1.0, a) * math.copysign(1.0, b) * math.inf
    return a / b


def _go_fmod(a: float, b: float) -> float:
    if b == 0 or math.isinf(a) or math.isnan(a) or math.isnan(b):
        return math.nan
    return math.fmod(a, b)


def _odd_integer(y: float) -> bool:
    return y.is_integer() and int(y) % 2 == 1


def _go_pow(a: float, b: float) -> float:
    if a == 0 and b < 0:
        return math.copysign(math.inf, a) if _odd_integer(b) else math.inf
    try:
        return math.pow(a, b)
    except ValueError:
        return math.nan
    except OverflowError:
        return -math.inf if a < 0 and _odd_integer(b) else math.inf


_I64_MIN: Final = -(2**63)
_U64_MASK: Final = 2**64 - 1


def _wrap64(i: int) -> int:
    """Go's int64 wrap-around (also keeps Python's big ints out of hot paths)."""
    i &= _U64_MASK
    return i - 2**64 if i >= 2**63 else i


def _to_i64(f: float) -> int:
    if not math.isfinite(f) or not -(2.0**63) <= f < 2.0**63:
        return _I64_MIN
    return int(f)


def _to_u64(f: float) -> int:
    if not math.isfinite(f):
        return 2**63
    return int(f) & _U64_MASK


# --------------------------------------------------------------------------- Go RE2

_POSIX_CLASSES: Final = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
# Perl classes are ASCII in RE2; Python's are Unicode unless told otherwise.
_PERL_OUTSIDE: Final = {
    "d": "[0-9]",
    "D": "[^0-9]",
    "w": "[0-9A-Za-z_]",
    "W": "[^0-9A-Za-z_]",
    "s": "[\\t\\n\\f\\r ]",
    "S": "[^\\t\\n\\f\\r ]",
    "b": "(?a:\\b)",
    "B": "(?a:\\B)",
}
_PERL_INSIDE: Final = {"d": "0-9", "w": "0-9A-Za-z_", "s": "\\t\\n\\f\\r "}
_SIMPLE_ESCAPES: Final = frozenset("aftnrv")
_REPEAT: Final = re.compile(r"\{([0-9]+)(,([0-9]*))?\}")
_GROUP_FLAGS: Final = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])")


def _char(code: int) -> str:
    return f"\\U{code:08x}"


class _Re2Translator:
    """Rewrites an RE2 pattern into an equivalent Python ``re`` pattern, or refuses it."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0
        self.out: list[str] = []
        self.multiline = any("m" in (m[1] or "") for m in _GROUP_FLAGS.finditer(pattern))
        self.excluded: list[str] = []  # the ASCII sets a \D, \W or \S in a class negates

    def fail(self, msg: str) -> ValueError:
        return ValueError(f"invalid regular expression {self.p!r}: {msg}")

    def run(self) -> str:
        p = self.p
        quantified = False
        while self.i < len(p):
            c = p[self.i]
            if c == "\\":
                self.out.append(self.escape(in_class=False))
                quantified = False
            elif c == "[":
                self.char_class()
                quantified = False
            elif c == "(":
                self.group()
                quantified = False
            elif c == "$" and not self.multiline:
                self.out.append("\\Z")
                self.i += 1
                quantified = False
            elif c in "*+?":
                if c == "+" and quantified:
                    raise self.fail("invalid nested repetition operator")
                self.out.append(c)
                self.i += 1
                quantified = True
            elif c == "{" and (m := _REPEAT.match(p, self.i)):
                if quantified:
                    raise self.fail("invalid nested repetition operator")
                if int(m[1]) > 1000 or (m[3] and int(m[3]) > 1000):
                    raise self.fail("invalid repeat count")
                self.out.append(m[0])
                self.i = m.end()
                quantified = True
            elif c == "{":
                self.out.append("\\{")  # not a repeat in RE2 (Python reads {,3} as one)
                self.i += 1
                quantified = False
            else:
                self.out.append(c)
                self.i += 1
                quantified = False
        return "".join(self.out)

    def escape(self, in_class: bool) -> str:
        p, i = self.p, self.i
        if i + 1 >= len(p):
            raise self.fail("trailing backslash at end of expression")
        d = p[i + 1]
        self.i = i + 2
        if d == "Q":
            end = p.find("\\E", i + 2)
            lit = p[i + 2 :] if end < 0 else p[i + 2 : end]
            self.i = len(p) if end < 0 else end + 2
            return "".join("\\" + ch if not ch.isalnum() else ch for ch in lit)
        if d in "pP":
            raise self.fail("Unicode character classes (\\p, \\P) are not supported")
        if d == "x":
            if p.startswith("{", self.i):
                end = p.find("}", self.i)
                digits = p[self.i + 1 : end] if end > 0 else ""
                if not digits or not all(ch in "0123456789abcdefABCDEF" for ch in digits):
                    raise self.fail("invalid escape sequence \\x{")
                code = int(digits, 16)
                if code > 0x10FFFF:
                    raise self.fail("invalid escape sequence \\x{")
                self.i = end + 1
                return _char(code)
            digits = p[self.i : self.i + 2]
            if len(digits) != 2 or not all(ch in "0123456789abcdefABCDEF" for ch in digits):
                raise self.fail("invalid escape sequence \\x")
            self.i += 2
            return _char(int(digits, 16))
        if d in "01234567":
            # RE2: \0 and \1.. followed by an octal digit are octal; \1 alone would be a
            # backreference, which RE2 does not have.
            if d != "0" and not (self.i < len(p) and p[self.i] in "01234567"):
                raise self.fail(f"backreferences (\\{d}) are not supported by RE2")
            j = self.i
            while j < len(p) and j < self.i + 2 and p[j] in "01234567":
                j += 1
            code = int(d + p[self.i : j], 8)
            self.i = j
            return _char(code)
        if d in "89":
            raise self.fail(f"invalid escape sequence \\{d}")
        if d in _SIMPLE_ESCAPES:
            return "\\" + d
        if in_class:
            if d in _PERL_INSIDE:
                return _PERL_INSIDE[d]
            if d in "DWS":
                self.excluded.append(_PERL_INSIDE[d.lower()])
                return ""
            if d.isascii() and d.isalnum():
                raise self.fail(f"invalid escape sequence \\{d} in a character class")
        else:
            if d in _PERL_OUTSIDE:
                return _PERL_OUTSIDE[d]
            if d == "A":
                return "\\A"
            if d == "z":
                return "\\Z"
            if d.isascii() and d.isalnum():
                raise self.fail(f"invalid escape sequence \\{d}")
        if not d.isascii():
            raise self.fail(f"invalid escape sequence \\{d}")
        return "\\" + d

    def char_class(self) -> None:
        p = self.p
        self.i += 1
        negated = p.startswith("^", self.i)
        if negated:
            self.i += 1
        pieces: list[str] = []
        if p.startswith("]", self.i):
            pieces.append("\\]")
            self.i += 1
        self.excluded = []
        while True:
            if self.i >= len(p):
                raise self.fail("missing closing ]")
            c = p[self.i]
            if c == "]":
                self.i += 1
                break
            if c == "\\":
                pieces.append(self.escape(in_class=True))
            elif c == "[" and p.startswith("[:", self.i):
                end = p.find(":]", self.i + 2)
                name = p[self.i + 2 : end] if end > 0 else ""
                if name not in _POSIX_CLASSES:
                    raise self.fail(f"invalid character class range [:{name}:]")
                pieces.append(_POSIX_CLASSES[name])
                self.i = end + 2
            elif c in "[&~|":
                pieces.append("\\" + c)  # literal in RE2; set syntax (or a warning) in Python
                self.i += 1
            else:
                pieces.append(c)
                self.i += 1
        body = "".join(pieces)
        if not self.excluded:
            self.out.append(f"[{'^' if negated else ''}{body}]")
            return
        # \D \W \S inside a class: Python's are Unicode-aware, so spell the class as
        # "one of these, or anything outside that ASCII set" instead.
        if not negated:
            alts = ([f"[{body}]"] if body else []) + [f"[^{x}]" for x in self.excluded]
            self.out.append("(?:" + "|".join(alts) + ")")
            return
        guard = f"(?![{body}])" if body else ""
        within = "".join(f"(?=[{x}])" for x in self.excluded)
        self.out.append(f"(?:{guard}{within}(?s:.))")

    def group(self) -> None:
        p, i = self.p, self.i
        if not p.startswith("(?", i):
            self.out.append("(")
            self.i += 1
            return
        rest = p[i + 2 : i + 4]
        if rest.startswith(("=", "!", "<=", "<!")):
            raise self.fail("look-around assertions are not supported by RE2")
        if rest.startswith(("P=", "P>", "#", ">", "(")):
            raise self.fail(f"invalid or unsupported group syntax (?{rest[:2]}")
        if rest.startswith(("P<", "<")):
            skip = 4 if rest.startswith("P<") else 3
            end = p.find(">", i + skip)
            name = p[i + skip : end] if end > 0 else ""
            if not name or not all(ch.isalnum() or ch == "_" for ch in name):
                raise self.fail("invalid named capture")
            self.out.append(f"(?P<{name}>")
            self.i = end + 1
            return
        m = _GROUP_FLAGS.match(p, i)
        if m is None:
            raise self.fail("invalid or unsupported Perl syntax (?")
        flags = (m[1] or "") + (m[2] or "")
        bad = set(flags) - set("ims")
        if bad:
            raise self.fail(f"unsupported flag {''.join(sorted(bad))!r} (RE2 flags: i, m, s)")
        self.out.append(m[0])
        self.i = m.end()


@functools.lru_cache(maxsize=512)
def compile_go_regex(pattern: str) -> re.Pattern[str]:
    """Compile a Go (RE2) regular expression with Python's ``re``; ``ValueError`` for
    syntax RE2 rejects or this translation cannot reproduce. Use ``.search`` for Go's
    unanchored ``MatchString``."""
    translated = _Re2Translator(pattern).run()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(translated)
    except re.error as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e.msg}") from e


# --------------------------------------------------------------------------- govaluate dates

_MONTHS: Final = {
    m: i + 1
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    )
}
_WD: Final = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MON: Final = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_FRAC: Final = r"(?:[.,][0-9]+)?"
_YMD: Final = r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
_HMS: Final = r"([0-9]{1,2}):([0-9]{2}):([0-9]{2})" + _FRAC
# (regex, group roles) for the layouts govaluate tries, in its order. Roles: Y M D h m s
# (numbers), b (month name), z (zone offset text), k (AM/PM).
_DATE_LAYOUTS: Final[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
    (re.compile(rx), roles)
    for rx, roles in (
        (_WD + " " + _MON + " ?([0-9]{1,2}) " + _HMS + " ([0-9]{4})", "bDhmsY"),
        (_WD + " " + _MON + " ?([0-9]{1,2}) " + _HMS + " [A-Z][A-Za-z]{2,4} ([0-9]{4})", "bDhmsY"),
        (_WD + " " + _MON + " ([0-9]{2}) " + _HMS + " ([+-][0-9]{4}) ([0-9]{4})", "bDhmszY"),
        (r"([0-9]{1,2}):([0-9]{2})(AM|PM)", "hmk"),
        (
            _YMD + "T([0-9]{2}):([0-9]{2}):([0-9]{2})" + _FRAC + "(Z|[+-][0-9]{2}:[0-9]{2})",
            "YMDhmsz",
        ),
        (_YMD, "YMD"),
        (_YMD + " ([0-9]{1,2}):([0-9]{2})", "YMDhm"),
        (_YMD + " " + _HMS, "YMDhms"),
        (_YMD + " " + _HMS + "([+-][0-9]{2}:[0-9]{2})", "YMDhmsz"),
        (_YMD + "T([0-9]{1,2})(Z|[+-][0-9]{4})", "YMDhz"),
        (_YMD + "T([0-9]{1,2}):([0-9]{2})(Z|[+-][0-9]{4})", "YMDhmz"),
        (_YMD + "T" + _HMS + "(Z|[+-][0-9]{4})", "YMDhmsz"),
    )
)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (any year, even 0)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _go_time_literal(s: str) -> float | None:
    """govaluate's date literal: the Unix time (whole seconds) of a string that parses
    with one of its layouts, else ``None``."""
    for rx, roles in _DATE_LAYOUTS:
        m = rx.fullmatch(s)
        if m is None:
            continue
        f = {"Y": 0, "M": 1, "D": 1, "h": 0, "m": 0, "s": 0}
        offset = 0
        for role, text in zip(roles, m.groups(), strict=True):
            if role == "b":
                f["M"] = _MONTHS[text]
            elif role == "z":
                if text != "Z":
                    digits = text[1:].replace(":", "")
                    offset = (int(digits[:2]) * 60 + int(digits[2:])) * 60
                    offset = -offset if text[0] == "-" else offset
            elif role == "k":
                h = f["h"]
                if h > 12:
                    return None
                f["h"] = (h % 12) + (12 if text == "PM" else 0)
            else:
                f[role] = int(text)
        if not (1 <= f["M"] <= 12 and 1 <= f["D"] <= _days_in_month(f["Y"], f["M"])):
            return None
        if f["h"] > 23 or f["m"] > 59 or f["s"] > 59:
            return None
        days = _days_from_civil(f["Y"], f["M"], f["D"])
        return float(days * 86400 + f["h"] * 3600 + f["m"] * 60 + f["s"] - offset)
    return None


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "lit" | "name" | "op" | "end"
    value: Any
    pos: int
    text: str


_DIGITS: Final = frozenset("0123456789")
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")

_GV_OPS: Final = (
    "**", "==", "!=", ">=", "<=", "=~", "!~", "&&", "||", "??", "<<", ">>",
    ">", "<", "+", "-", "*", "/", "%", "&", "|", "^", "!", "~", "?", ":", ",", "(", ")",
)  # fmt: skip
_GV_NUMBER: Final = re.compile(r"[0-9]+\.?[0-9]*|\.[0-9]+")


def _lex_govaluate(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
            continue
        start = i
        if c in _DIGITS or c == ".":
            if src.startswith("0x", i):
                j = i + 2
                while j < n and src[j] in _HEX_DIGITS:
                    j += 1
                value = int(src[i + 2 : j], 16) if j > i + 2 else -1
                if not 0 <= value <= _U64_MASK:
                    raise ExprSyntaxError(f"invalid hex number {src[i:j]!r}", src, start)
                toks.append(_Tok("lit", float(value), start, src[i:j]))
                i = j
                continue
            j = i
            while j < n and (src[j] in _DIGITS or src[j] == "."):
                j += 1
            text = src[i:j]
            if not _GV_NUMBER.fullmatch(text):
                raise ExprSyntaxError(f"invalid number {text!r}", src, start)
            toks.append(_Tok("lit", float(text), start, text))
            i = j
        elif c == "[":
            j, buf = i + 1, []
            while j < n and src[j] != "]":
                if src[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(src[j])
                j += 1
            if j >= n:
                raise ExprSyntaxError("unclosed parameter bracket", src, start)
            toks.append(_Tok("name", "".join(buf), start, src[i : j + 1]))
            i = j + 1
        elif c.isalpha():
            j, buf = i, []
            while j < n:
                ch = src[j]
                if ch == "\\" and j + 1 < n:
                    buf.append(src[j + 1])
                    j += 2
                elif ch.isalnum() or ch in "_.":
                    buf.append(ch)
                    j += 1
                else:
                    break
            word = "".join(buf)
            if word in ("true", "false"):
                toks.append(_Tok("lit", word == "true", start, word))
            elif word in ("in", "IN"):
                toks.append(_Tok("op", "in", start, word))
            elif "." in word:
                raise ExprSyntaxError(
                    f"{word!r}: '.' makes a govaluate accessor, which cannot read JSON "
                    f"values; give the field a name without dots or write [{word}]",
                    src,
                    start,
                )
            else:
                toks.append(_Tok("name", word, start, src[i:j]))
            i = j
        elif c in "'\"":
            j, buf = i + 1, []
            while j < n and src[j] not in "'\"":
                if src[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(src[j])
                j += 1
            if j >= n:
                raise ExprSyntaxError("unclosed string literal", src, start)
            s = "".join(buf)
            when = _go_time_literal(s)
            toks.append(_Tok("lit", s if when is None else when, start, src[i : j + 1]))
            i = j + 1
        else:
            for op in _GV_OPS:
                if src.startswith(op, i):
                    toks.append(_Tok("op", op, start, op))
                    i += len(op)
                    break
            else:
                raise ExprSyntaxError(f"invalid token {c!r}", src, start)
    toks.append(_Tok("end", None, n, ""))
    return toks


_EX_OPS: Final = (
    "?.", "??", "...", "..", "**", "==", "!=", ">=", "<=", "&&", "||",
    ">", "<", "+", "-", "*", "/", "%", "^", "!", "?", ":", ".", ",",
    "(", ")", "[", "]", "{", "}", "|", "#", ";",
)  # fmt: skip
_EX_WORD_OPS: Final = frozenset(
    {"and", "or", "not", "in", "matches", "contains", "startsWith", "endsWith"}
)
_EX_NUMBER: Final = re.compile(
    r"0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+"
    r"|(?:[0-9][0-9_]*(?:\.(?!\.)[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9_]+)?"
)
_EX_ESCAPES: Final = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", "'": "'", '"': '"', "`": "`",
}  # fmt: skip


def _expr_number(text: str) -> int | float | None:
    t = text.replace("_", "")
    if text.startswith("_") or "__" in text or text.endswith("_"):
        return None
    try:
        if t[:2].lower() in ("0x", "0o", "0b"):
            return int(t, 0)
        if "." in t or "e" in t or "E" in t:
            return float(t)
        if len(t) > 1 and t.startswith("0"):
            return int(t, 8)
        return int(t)
    except ValueError:
        return None


def _expr_string(src: str, i: int) -> tuple[str, int]:
    """Read a quoted expr-lang string at ``src[i]``; returns (value, end)."""
    quote, j, n, buf = src[i], i + 1, len(src), []
    while j < n and src[j] != quote:
        ch = src[j]
        if ch == "\n":
            break
        if ch != "\\":
            buf.append(ch)
            j += 1
            continue
        e = src[j + 1 : j + 2]
        if e in _EX_ESCAPES:
            buf.append(_EX_ESCAPES[e])
            j += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}.get(e)
        if width is not None:
            digits = src[j + 2 : j + 2 + width]
            if len(digits) != width or not all(d in _HEX_DIGITS for d in digits):
                raise ExprSyntaxError(f"invalid escape \\{e}", src, j)
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ExprSyntaxError(f"invalid escape \\{e}", src, j)
            buf.append(chr(code))
            j += 2 + width
            continue
        if e and e in "01234567":
            digits = src[j + 1 : j + 4]
            if len(digits) != 3 or not all(d in "01234567" for d in digits):
                raise ExprSyntaxError("invalid octal escape", src, j)
            buf.append(chr(int(digits, 8)))
            j += 4
            continue
        raise ExprSyntaxError(f"invalid escape \\{e}", src, j)
    if j >= n or src[j] != quote:
        raise ExprSyntaxError("unclosed string literal", src, i)
    return "".join(buf), j + 1


def _lex_expr(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
            continue
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            j = src.find("*/", i + 2)
            if j < 0:
                raise ExprSyntaxError("unclosed comment", src, i)
            i = j + 2
            continue
        start = i
        if c in _DIGITS or (c == "." and i + 1 < n and src[i + 1] in _DIGITS):
            m = _EX_NUMBER.match(src, i)
            assert m is not None  # a digit always matches
            j = m.end()
            value = _expr_number(m[0])
            if value is None or (j < n and (src[j].isalnum() or src[j] == "_")):
                raise ExprSyntaxError(f"invalid number {src[i : j + 1]!r}", src, start)
            toks.append(_Tok("lit", value, start, m[0]))
            i = j
        elif c in "'\"":
            s, j = _expr_string(src, i)
            toks.append(_Tok("lit", s, start, src[i:j]))
            i = j
        elif c == "`":
            j = src.find("`", i + 1)
            if j < 0:
                raise ExprSyntaxError("unclosed string literal", src, start)
            toks.append(_Tok("lit", src[i + 1 : j], start, src[i : j + 1]))
            i = j + 1
        elif c.isalpha() or c in "_$":
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] in "_$"):
                j += 1
            word = src[i:j]
            if word in ("true", "false"):
                toks.append(_Tok("lit", word == "true", start, word))
            elif word == "nil":
                toks.append(_Tok("lit", None, start, word))
            elif word in _EX_WORD_OPS:
                toks.append(_Tok("op", word, start, word))
            elif word in ("let", "if", "else"):
                raise ExprSyntaxError(f"'{word}' is not supported", src, start)
            else:
                toks.append(_Tok("name", word, start, word))
            i = j
        else:
            for op in _EX_OPS:
                if src.startswith(op, i):
                    toks.append(_Tok("op", op, start, op))
                    i += len(op)
                    break
            else:
                raise ExprSyntaxError(f"unexpected character {c!r}", src, start)
    toks.append(_Tok("end", None, n, ""))
    return toks


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True, slots=True)
class _Lit:
    value: Any
    pos: int


@dataclass(frozen=True, slots=True)
class _Name:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Unary:
    op: str
    operand: _Node
    pos: int


@dataclass(frozen=True, slots=True)
class _Binary:
    op: str
    left: _Node
    right: _Node
    pos: int


@dataclass(frozen=True, slots=True)
class _Cond:
    test: _Node
    then: _Node
    other: _Node
    pos: int


@dataclass(frozen=True, slots=True)
class _Array:
    items: tuple[_Node, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class _Member:
    obj: _Node
    key: _Node
    optional: bool
    pos: int


@dataclass(frozen=True, slots=True)
class _Chain:
    """Where an optional chain (``a?.b.c``) stops short-circuiting to ``nil``."""

    node: _Node
    pos: int


@dataclass(frozen=True, slots=True)
class _Call:
    name: str
    args: tuple[_Node, ...]
    pos: int


_Node = _Lit | _Name | _Unary | _Binary | _Cond | _Array | _Member | _Chain | _Call


# --------------------------------------------------------------------------- parser


@dataclass(frozen=True)
class _Grammar:
    """What one dialect's parser accepts; precedences: higher binds tighter."""

    binary: Mapping[str, tuple[int, bool]]  # operator -> (precedence, right-associative)
    unary: Mapping[str, int]  # prefix operator -> precedence its operand is parsed at
    negatable: frozenset[str]  # binary operators that may follow "not" (expr: not in)
    paren_arrays: bool  # (a, b) is an array (govaluate)
    bracket_arrays: bool  # [a, b] is an array (expr)
    postfix: bool  # .name ?.name [index]
    ternary: bool  # cond ? a : b at the lowest level (expr)
    functions: Mapping[str, tuple[int, int]]  # name -> (min, max) arguments
    no_functions_hint: str = ""


_GOVALUATE: Final = _Grammar(
    binary={
        "?": (1, False),
        ":": (1, False),
        "??": (1, False),
        "||": (2, False),
        "&&": (3, False),
        **dict.fromkeys(("==", "!=", "<", "<=", ">", ">=", "=~", "!~", "in"), (4, False)),
        **dict.fromkeys(("&", "|", "^"), (5, False)),
        **dict.fromkeys(("<<", ">>"), (6, False)),
        **dict.fromkeys(("+", "-"), (7, False)),
        **dict.fromkeys(("*", "/", "%"), (8, False)),
        "**": (9, False),
    },
    unary={"-": 100, "!": 100, "~": 100},
    negatable=frozenset(),
    paren_arrays=True,
    bracket_arrays=False,
    postfix=False,
    ternary=False,
    functions={},
    no_functions_hint=" (Argo's expression filters have no functions)",
)

_EX_NEGATABLE: Final = frozenset({"in", "matches", "contains", "startsWith", "endsWith"})
_EX_FUNCTIONS: Final = {
    "len": (1, 1),
    "lower": (1, 1),
    "upper": (1, 1),
    "trim": (1, 2),
    "abs": (1, 1),
    "int": (1, 1),
    "float": (1, 1),
    "string": (1, 1),
    "asInt": (1, 1),
    "asFloat": (1, 1),
}
_EXPR: Final = _Grammar(
    binary={
        "or": (10, False),
        "||": (10, False),
        "and": (15, False),
        "&&": (15, False),
        **dict.fromkeys(("==", "!=", "<", ">", "<=", ">="), (20, False)),
        **dict.fromkeys(_EX_NEGATABLE, (20, False)),
        **dict.fromkeys((f"not {op}" for op in _EX_NEGATABLE), (20, False)),
        **dict.fromkeys(("+", "-"), (30, False)),
        **dict.fromkeys(("*", "/", "%"), (60, False)),
        **dict.fromkeys(("**", "^"), (100, True)),
        "??": (500, False),
    },
    unary={"not": 50, "!": 50, "-": 90, "+": 90},
    negatable=_EX_NEGATABLE,
    paren_arrays=False,
    bracket_arrays=True,
    postfix=True,
    ternary=True,
    functions=_EX_FUNCTIONS,
)

_MAX_DEPTH: Final = 100
_UNSUPPORTED_OPS: Final = {
    "..": "ranges",
    "...": "spread",
    "|": "pipes",
    "{": "map literals and closures",
    "#": "closures",
    ";": "statements",
}


class _Parser:
    def __init__(self, src: str, toks: list[_Tok], grammar: _Grammar) -> None:
        self.src = src
        self.toks = toks
        self.g = grammar
        self.i = 0
        self.depth = 0

    def peek(self, k: int = 0) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def fail(self, msg: str, tok: _Tok) -> ExprSyntaxError:
        return ExprSyntaxError(msg, self.src, tok.pos)

    @staticmethod
    def is_op(tok: _Tok, *ops: str) -> bool:
        return tok.kind == "op" and tok.value in ops

    def unexpected(self, tok: _Tok) -> ExprSyntaxError:
        if tok.kind == "end":
            return self.fail("unexpected end of expression", tok)
        if tok.kind == "op" and tok.value in _UNSUPPORTED_OPS and tok.value not in self.g.binary:
            return self.fail(f"{_UNSUPPORTED_OPS[tok.value]} ({tok.text!r}) are not supported", tok)
        return self.fail(f"unexpected {tok.text!r}", tok)

    def expect(self, op: str) -> _Tok:
        tok = self.next()
        if not self.is_op(tok, op):
            if tok.kind == "end":
                raise self.fail(f"expected {op!r} before the end of the expression", tok)
            raise self.fail(f"expected {op!r}, found {tok.text!r}", tok)
        return tok

    def parse(self) -> _Node:
        if self.peek().kind == "end":
            raise self.fail("empty expression", self.peek())
        node = self.expression(0)
        tok = self.peek()
        if tok.kind != "end":
            raise self.unexpected(tok)
        return node

    def binary_op(self) -> tuple[str | None, int]:
        tok = self.peek()
        if tok.kind != "op":
            return None, 0
        if tok.value == "not" and self.g.negatable:
            nxt = self.peek(1)
            if self.is_op(nxt, *self.g.negatable):
                return f"not {nxt.value}", 2
            return None, 0
        if tok.value in self.g.binary:
            return str(tok.value), 1
        return None, 0

    def expression(self, min_prec: int) -> _Node:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail("expression nests too deeply", self.peek())
        try:
            left = self.unary()
            while True:
                tok = self.peek()
                op, width = self.binary_op()
                if op is None:
                    break
                prec, right_assoc = self.g.binary[op]
                if prec < min_prec:
                    break
                for _ in range(width):
                    self.next()
                rhs = self.expression(prec if right_assoc else prec + 1)
                left = _Binary(op, left, rhs, tok.pos)
            if self.g.ternary and min_prec == 0 and self.is_op(self.peek(), "?"):
                tok = self.next()
                then = self.expression(0)
                self.expect(":")
                other = self.expression(0)
                left = _Cond(left, then, other, tok.pos)
            return left
        finally:
            self.depth -= 1

    def unary(self) -> _Node:
        tok = self.peek()
        if tok.kind == "op" and tok.value in self.g.unary:
            self.next()
            operand = self.expression(self.g.unary[tok.value])
            return _Unary(str(tok.value), operand, tok.pos)
        return self.postfix(self.primary())

    def arguments(self, close: str) -> tuple[_Node, ...]:
        items: list[_Node] = []
        if self.is_op(self.peek(), close):
            self.next()
            return ()
        while True:
            items.append(self.expression(0))
            tok = self.next()
            if self.is_op(tok, close):
                return tuple(items)
            if not self.is_op(tok, ","):
                if tok.kind == "end":
                    raise self.fail(f"expected ',' or {close!r} before the end", tok)
                raise self.fail(f"expected ',' or {close!r}, found {tok.text!r}", tok)
            if self.is_op(self.peek(), close):
                self.next()
                return tuple(items)

    def primary(self) -> _Node:
        tok = self.next()
        if tok.kind == "lit":
            return _Lit(tok.value, tok.pos)
        if tok.kind == "name":
            if self.is_op(self.peek(), "("):
                name = str(tok.value)
                if name not in self.g.functions:
                    raise self.fail(f"unknown function {name!r}{self.g.no_functions_hint}", tok)
                self.next()
                args = self.arguments(")")
                lo, hi = self.g.functions[name]
                if not lo <= len(args) <= hi:
                    want = str(lo) if lo == hi else f"{lo} to {hi}"
                    raise self.fail(f"{name}() takes {want} argument(s), got {len(args)}", tok)
                return _Call(name, args, tok.pos)
            return _Name(str(tok.value), tok.pos)
        if self.is_op(tok, "("):
            first = self.expression(0)
            if self.g.paren_arrays and self.is_op(self.peek(), ","):
                items = [first]
                while self.is_op(self.peek(), ","):
                    self.next()
                    items.append(self.expression(0))
                self.expect(")")
                return _Array(tuple(items), tok.pos)
            self.expect(")")
            return first
        if self.g.bracket_arrays and self.is_op(tok, "["):
            return _Array(self.arguments("]"), tok.pos)
        raise self.unexpected(tok)

    def member_name(self) -> _Lit:
        tok = self.next()
        if tok.kind == "name" or (tok.kind in ("op", "lit") and tok.text.isidentifier()):
            return _Lit(tok.text if tok.kind != "name" else tok.value, tok.pos)
        raise self.fail("expected a field name after '.'", tok)

    def postfix(self, node: _Node) -> _Node:
        if not self.g.postfix:
            return node
        optional = False
        while True:
            tok = self.peek()
            if self.is_op(tok, ".", "?."):
                self.next()
                is_opt = tok.value == "?."
                optional |= is_opt
                if is_opt and self.is_op(self.peek(), "["):
                    self.next()
                    key: _Node = self.index()
                else:
                    key = self.member_name()
                if self.is_op(self.peek(), "("):
                    raise self.fail("method calls are not supported", self.peek())
                node = _Member(node, key, is_opt, tok.pos)
            elif self.is_op(tok, "["):
                self.next()
                node = _Member(node, self.index(), False, tok.pos)
            else:
                break
        return _Chain(node, node.pos) if optional else node

    def index(self) -> _Node:
        if self.is_op(self.peek(), ":"):
            raise self.fail("slices are not supported", self.peek())
        idx = self.expression(0)
        if self.is_op(self.peek(), ":"):
            raise self.fail("slices are not supported", self.peek())
        self.expect("]")
        return idx


# --------------------------------------------------------------------------- evaluation


class _NilChain(Exception):
    """``a?.b`` met nil: the enclosing chain evaluates to nil."""


def _need_bool(v: Any, op: str) -> bool:
    if not isinstance(v, bool):
        raise EvalError(f"{op!r} needs a bool, got {_type_name(v)} {show_value(v)}")
    return v


def _need_num(v: Any, op: str) -> int | float:
    if not _is_num(v):
        raise EvalError(f"{op!r} needs a number, got {_type_name(v)} {show_value(v)}")
    return v  # type: ignore[no-any-return]


def _need_str(v: Any, op: str) -> str:
    if not isinstance(v, str):
        raise EvalError(f"{op!r} needs a string, got {_type_name(v)} {show_value(v)}")
    return v


def _mismatch(op: str, a: Any, b: Any) -> EvalError:
    return EvalError(
        f"cannot apply {op!r} to {_type_name(a)} {show_value(a)} and {_type_name(b)} "
        f"{show_value(b)}"
    )


_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _ordered(op: str) -> Callable[[Any, Any], bool]:
    cmp = _ORDER[op]

    def compare(a: Any, b: Any) -> bool:
        if (_is_num(a) and _is_num(b)) or (isinstance(a, str) and isinstance(b, str)):
            return cmp(a, b)
        raise _mismatch(op, a, b)

    return compare


def _dynamic_regex(pattern: str) -> re.Pattern[str]:
    try:
        return compile_go_regex(pattern)
    except ValueError as e:
        raise EvalError(str(e)) from e


class _Compiler(abc.ABC):
    """AST → closures; the dialects override the operators whose meaning differs."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.names: set[str] = set()

    def compile(self, node: _Node) -> _Fn:
        if isinstance(node, _Lit):
            value = node.value
            return lambda env: value
        if isinstance(node, _Name):
            self.names.add(node.name)
            return self.name(node.name)
        if isinstance(node, _Array):
            fns = [self.compile(item) for item in node.items]
            return lambda env: [f(env) for f in fns]
        if isinstance(node, _Unary):
            return self.unary(node.op, self.compile(node.operand))
        if isinstance(node, _Binary):
            return self.binary(node)
        if isinstance(node, _Cond):
            return self.cond(node)
        if isinstance(node, _Member):
            return self.member(node)
        if isinstance(node, _Chain):
            inner = self.compile(node.node)

            def chain(env: Env) -> Any:
                try:
                    return inner(env)
                except _NilChain:
                    return None

            return chain
        return self.call(node)

    @abc.abstractmethod
    def name(self, name: str) -> _Fn:
        """The dialect's meaning of this node."""

    @abc.abstractmethod
    def unary(self, op: str, f: _Fn) -> _Fn:
        """The dialect's meaning of this node."""

    @abc.abstractmethod
    def binary(self, node: _Binary) -> _Fn:
        """The dialect's meaning of this node."""

    def cond(self, node: _Cond) -> _Fn:
        test, then, other = (self.compile(n) for n in (node.test, node.then, node.other))
        return lambda env: then(env) if _need_bool(test(env), "?") else other(env)

    def member(self, node: _Member) -> _Fn:
        raise ExprSyntaxError("member access is not supported", self.src, node.pos)

    def call(self, node: _Call) -> _Fn:
        raise ExprSyntaxError(f"unknown function {node.name!r}", self.src, node.pos)

    def regex(self, node: _Binary, negate: bool) -> _Fn:
        left = self.compile(node.left)
        if isinstance(node.right, _Lit) and isinstance(node.right.value, str):
            try:
                pattern = compile_go_regex(node.right.value)
            except ValueError as e:
                raise ExprSyntaxError(str(e), self.src, node.right.pos) from e

            def fixed(env: Env) -> bool:
                s = _need_str(left(env), node.op)
                return (pattern.search(s) is not None) != negate

            return fixed
        right = self.compile(node.right)

        def dynamic(env: Env) -> bool:
            s = _need_str(left(env), node.op)
            r = right(env)
            if not isinstance(r, str):
                raise EvalError(f"{node.op!r} needs a pattern string, got {show_value(r)}")
            return (_dynamic_regex(r).search(s) is not None) != negate

        return dynamic


# govaluate ----------------------------------------------------------------------------


def _gv_add(a: Any, b: Any) -> Any:
    if isinstance(a, str) or isinstance(b, str):
        return go_sprint(a) + go_sprint(b)
    if _is_num(a) and _is_num(b):
        return float(a) + float(b)
    raise _mismatch("+", a, b)


def _gv_arith(op: str) -> Callable[[Any, Any], Any]:
    fn: Callable[[float, float], float] = {
        "-": operator.sub,
        "*": operator.mul,
        "/": _go_fdiv,
        "%": _go_fmod,
        "**": _go_pow,
    }[op]

    def arith(a: Any, b: Any) -> float:
        if not (_is_num(a) and _is_num(b)):
            raise _mismatch(op, a, b)
        return fn(float(a), float(b))

    return arith


def _gv_bits(op: str) -> Callable[[Any, Any], Any]:
    def bits(a: Any, b: Any) -> float:
        if not (_is_num(a) and _is_num(b)):
            raise _mismatch(op, a, b)
        x, y = float(a), float(b)
        if op in ("<<", ">>"):
            u, s = _to_u64(x), _to_u64(y)
            if s >= 64:
                return 0.0
            return float((u << s) & _U64_MASK if op == "<<" else u >> s)
        i, j = _to_i64(x), _to_i64(y)
        r = {"&": i & j, "|": i | j, "^": i ^ j}[op]
        return float(_wrap64(r))

    return bits


def _gv_in(a: Any, b: Any) -> bool:
    if not isinstance(b, list):
        raise EvalError(
            f"the right side of 'in' must be an array such as (1, 2), got {show_value(b)}"
        )
    return any(go_equal(a, x) for x in b)


_GV_BINARY: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "==": go_equal,
    "!=": lambda a, b: not go_equal(a, b),
    **{op: _ordered(op) for op in _ORDER},
    "in": _gv_in,
    "+": _gv_add,
    **{op: _gv_arith(op) for op in ("-", "*", "/", "%", "**")},
    **{op: _gv_bits(op) for op in ("&", "|", "^", "<<", ">>")},
}


class _GovaluateCompiler(_Compiler):
    def name(self, name: str) -> _Fn:
        def param(env: Env) -> Any:
            try:
                return env[name]
            except KeyError:
                raise EvalError(f"no parameter {name!r} found") from None

        return param

    def unary(self, op: str, f: _Fn) -> _Fn:
        if op == "!":
            return lambda env: not _need_bool(f(env), op)
        if op == "-":
            return lambda env: -float(_need_num(f(env), op))
        return lambda env: float(_wrap64(~_to_i64(float(_need_num(f(env), op)))))

    def binary(self, node: _Binary) -> _Fn:
        op = node.op
        if op in ("=~", "!~"):
            return self.regex(node, negate=op == "!~")
        left, right = self.compile(node.left), self.compile(node.right)
        if op == "&&":

            def and_(env: Env) -> bool:
                a = left(env)
                if a is False:
                    return False
                b = right(env)
                _need_bool(a, op)
                return _need_bool(b, op)

            return and_
        if op == "||":

            def or_(env: Env) -> bool:
                a = left(env)
                if a is True:
                    return True
                b = right(env)
                _need_bool(a, op)
                return _need_bool(b, op)

            return or_
        if op == "?":
            return lambda env: right(env) if _need_bool(left(env), op) else None
        if op in (":", "??"):

            def otherwise(env: Env) -> Any:
                a = left(env)
                return a if a is not None else right(env)

            return otherwise
        fn = _GV_BINARY[op]
        return lambda env: fn(left(env), right(env))


# expr-lang ----------------------------------------------------------------------------


def _ex_num(op: str, a: Any, b: Any) -> None:
    if not (_is_num(a) and _is_num(b)):
        raise _mismatch(op, a, b)


def _ex_add(a: Any, b: Any) -> Any:
    if isinstance(a, str) and isinstance(b, str):
        return a + b
    _ex_num("+", a, b)
    if isinstance(a, int) and isinstance(b, int):
        return _wrap64(a + b)
    return float(a) + float(b)


def _ex_int_or_float(op: str, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def arith(a: Any, b: Any) -> Any:
        _ex_num(op, a, b)
        if isinstance(a, int) and isinstance(b, int):
            return _wrap64(fn(a, b))
        return fn(float(a), float(b))

    return arith


def _ex_div(a: Any, b: Any) -> float:
    _ex_num("/", a, b)
    return _go_fdiv(float(a), float(b))


def _ex_mod(a: Any, b: Any) -> int:
    if not (_is_num(a) and _is_num(b) and isinstance(a, int) and isinstance(b, int)):
        raise _mismatch("%", a, b)
    if b == 0:
        raise EvalError("integer divide by zero")
    r = abs(a) % abs(b)
    return -r if a < 0 else r


def _ex_pow(a: Any, b: Any) -> float:
    _ex_num("**", a, b)
    return _go_pow(float(a), float(b))


def _ex_in(a: Any, b: Any) -> bool:
    if b is None:
        return False
    if isinstance(b, list):
        return any(go_equal(x, a) for x in b)
    if isinstance(b, dict):
        if not isinstance(a, str):
            raise EvalError(f"cannot use {_type_name(a)} {show_value(a)} as a map key")
        return a in b
    raise EvalError(f"'in' needs an array or a map on the right, got {_type_name(b)}")


def _ex_strings(op: str, fn: Callable[[str, str], bool]) -> Callable[[Any, Any], bool]:
    def check(a: Any, b: Any) -> bool:
        if not (isinstance(a, str) and isinstance(b, str)):
            raise _mismatch(op, a, b)
        return fn(a, b)

    return check


def _negated(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], bool]:
    return lambda a, b: not fn(a, b)


_EX_BINARY: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "==": go_equal,
    "!=": lambda a, b: not go_equal(a, b),
    **{op: _ordered(op) for op in _ORDER},
    "in": _ex_in,
    "not in": lambda a, b: not _ex_in(a, b),
    "contains": _ex_strings("contains", lambda a, b: b in a),
    "startsWith": _ex_strings("startsWith", str.startswith),
    "endsWith": _ex_strings("endsWith", str.endswith),
    "+": _ex_add,
    "-": _ex_int_or_float("-", operator.sub),
    "*": _ex_int_or_float("*", operator.mul),
    "/": _ex_div,
    "%": _ex_mod,
    "**": _ex_pow,
    "^": _ex_pow,
}
_EX_BINARY.update(
    {f"not {op}": _negated(_EX_BINARY[op]) for op in ("contains", "startsWith", "endsWith")}
)


def _fetch(obj: Any, key: Any) -> Any:
    if isinstance(obj, dict):
        if not isinstance(key, str):
            raise EvalError(f"cannot use {_type_name(key)} {show_value(key)} as a map key")
        return obj.get(key)
    if isinstance(obj, list | str):
        if not _is_num(key):
            raise EvalError(f"cannot index {_type_name(obj)} with {show_value(key)}")
        seq: list[Any] | bytes = obj if isinstance(obj, list) else obj.encode()
        i = int(key)
        j = i + len(seq) if i < 0 else i
        if not 0 <= j < len(seq):
            raise EvalError(f"index out of range: {i} (length {len(seq)})")
        return seq[j]
    if obj is None:
        raise EvalError(f"cannot fetch {show_value(key)} from nil")
    raise EvalError(f"cannot fetch {show_value(key)} from {_type_name(obj)}")


def _fn_len(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, list | dict):
        return len(v)
    raise EvalError(f"invalid argument for len (type {_type_name(v)})")


def _fn_int(v: Any) -> int:
    if isinstance(v, bool):
        raise EvalError("invalid argument for int (type bool)")
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return _to_i64(v)
    if isinstance(v, str):
        t = v[1:] if v[:1] in "+-" else v
        if t.isascii() and t.isdigit():
            return _wrap64(int(v))
        raise EvalError(f"invalid syntax for int: {show_value(v)}")
    raise EvalError(f"invalid argument for int (type {_type_name(v)})")


def _fn_float(v: Any) -> float:
    if _is_num(v):
        return float(v)
    if isinstance(v, str):
        f = go_parse_float(v)
        if f is None:
            raise EvalError(f"invalid syntax for float: {show_value(v)}")
        return f
    raise EvalError(f"invalid argument for float (type {_type_name(v)})")


def _fn_abs(v: Any) -> int | float:
    n = _need_num(v, "abs")
    return abs(n)


def _fn_trim(s: Any, chars: Any = None) -> str:
    text = _need_str(s, "trim")
    return text.strip() if chars is None else text.strip(_need_str(chars, "trim"))


_EX_CALLS: Final[dict[str, Callable[..., Any]]] = {
    "len": _fn_len,
    "lower": lambda s: _need_str(s, "lower").lower(),
    "upper": lambda s: _need_str(s, "upper").upper(),
    "trim": _fn_trim,
    "abs": _fn_abs,
    "int": _fn_int,
    "asInt": _fn_int,
    "float": _fn_float,
    "asFloat": _fn_float,
    "string": go_sprint,
}


class _ExprCompiler(_Compiler):
    def name(self, name: str) -> _Fn:
        return lambda env: env.get(name)

    def unary(self, op: str, f: _Fn) -> _Fn:
        if op in ("not", "!"):
            return lambda env: not _need_bool(f(env), op)
        if op == "+":
            return lambda env: _need_num(f(env), op)

        def neg(env: Env) -> int | float:
            v = _need_num(f(env), op)
            return _wrap64(-v) if isinstance(v, int) else -v

        return neg

    def binary(self, node: _Binary) -> _Fn:
        op = node.op
        if op in ("matches", "not matches"):
            return self.regex(node, negate=op == "not matches")
        left, right = self.compile(node.left), self.compile(node.right)
        if op in ("and", "&&"):
            return lambda env: _need_bool(left(env), op) and _need_bool(right(env), op)
        if op in ("or", "||"):
            return lambda env: _need_bool(left(env), op) or _need_bool(right(env), op)
        if op == "??":

            def coalesce(env: Env) -> Any:
                a = left(env)
                return a if a is not None else right(env)

            return coalesce
        fn = _EX_BINARY[op]
        return lambda env: fn(left(env), right(env))

    def member(self, node: _Member) -> _Fn:
        obj = self.compile(node.obj)
        key = self.compile(node.key)
        optional = node.optional

        def fetch(env: Env) -> Any:
            o = obj(env)
            if o is None and optional:
                raise _NilChain
            return _fetch(o, key(env))

        return fetch

    def call(self, node: _Call) -> _Fn:
        fn = _EX_CALLS[node.name]
        args = [self.compile(a) for a in node.args]
        return lambda env: fn(*(a(env) for a in args))


# --------------------------------------------------------------------------- public API


class Expression:
    """A compiled expression; :meth:`evaluate` runs it against a variables mapping."""

    __slots__ = ("_fn", "dialect", "names", "source")

    def __init__(self, source: str, dialect: str, fn: _Fn, names: frozenset[str]) -> None:
        self.source = source
        self.dialect = dialect
        self.names = names
        """The variable names the expression reads (top-level names only)."""
        self._fn = fn

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """The expression's value; :class:`EvalError` when the values do not fit it."""
        try:
            return self._fn(variables)
        except RecursionError as e:
            raise EvalError("expression nests too deeply") from e

    def __repr__(self) -> str:
        return f"Expression({self.dialect}, {self.source!r})"


def _compile(source: str, dialect: str) -> Expression:
    if not isinstance(source, str) or not source.strip():
        raise ExprSyntaxError("empty expression", str(source), 0)
    compiler: _Compiler
    if dialect == "govaluate":
        toks, grammar, compiler = _lex_govaluate(source), _GOVALUATE, _GovaluateCompiler(source)
    else:
        toks, grammar, compiler = _lex_expr(source), _EXPR, _ExprCompiler(source)
    node = _Parser(source, toks, grammar).parse()
    try:
        fn = compiler.compile(node)
    except RecursionError as e:
        raise ExprSyntaxError("expression nests too deeply", source, 0) from e
    return Expression(source, dialect, fn, frozenset(compiler.names))


def compile_govaluate(source: str) -> Expression:
    """Compile a govaluate expression (Argo ``filters.exprs[].expr``);
    :class:`ExprSyntaxError` with the position when it does not parse."""
    return _compile(source, "govaluate")


def compile_expr(source: str) -> Expression:
    """Compile an expr-lang expression (Argo EventSource ``filter.expression``, the
    subset in the module docstring); :class:`ExprSyntaxError` with the position."""
    return _compile(source, "expr")
