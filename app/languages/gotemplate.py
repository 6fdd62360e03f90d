"""A Go ``text/template`` subset with the sprig functions Argo sensors use, compiled once.

Argo evaluates ``dataTemplate`` / ``contextTemplate`` with Go's ``text/template`` plus
sprig, with ``.Input`` bound to the event data (or the CloudEvent context). Manifests
written for Argo must render the same here, so this module reproduces that language's
syntax and printing rules. Templates are parsed into a small tree when the manifest is
loaded (:func:`compile_template`); rendering walks the tree. User text is never passed
to ``eval``.

Supported:

* text and actions, ``{{-`` / ``-}}`` whitespace trimming, ``{{/* comments */}}``;
* pipelines ``{{ .Input.x | upper }}``, parenthesised pipelines, field chains on ``.``,
  variables (``$``, ``$x := ...``, ``$x = ...``) and on ``(...)`` results;
* ``if`` / ``else if`` / ``else`` / ``end``, ``with`` (and ``else with``), ``range``
  over lists, maps (sorted keys) and integers with ``$i, $e :=``, ``else``, ``break``,
  ``continue``;
* string (``"..."``, raw ``\\`...\\```), number, char, ``true``/``false``/``nil`` literals;
* Go builtins ``and or not len index slice print printf println eq ne lt le gt ge
  html urlquery``;
* sprig ``upper lower title trim trimAll trimPrefix trimSuffix replace contains
  hasPrefix hasSuffix split splitList join quote squote cat repeat substr trunc
  nospace default empty coalesce ternary toString toJson toRawJson toPrettyJson
  fromJson b64enc b64dec sha256sum int int64 float64 atoi add add1 sub mul div mod max
  min list dict hasKey get uuidv4 now date dateInZone unixEpoch``.

Rendering follows Go: a missing map key prints ``<no value>`` (Argo leaves
``missingkey`` at its default), ``null`` prints ``<no value>`` at the top and ``<nil>``
inside lists and maps, lists print as ``[a b]``, maps as ``map[k:v]`` with sorted keys,
floats in Go's shortest form (``1.5``, ``5``, ``1e+06``). Field access on a ``null``
value, wrong argument types (``upper`` of a number) and non-comparable operands are
errors, as in Go. Deliberate differences: integers from JSON print as integers (Go sees
every JSON number as a float64 and prints ``1e+06`` for 1000000), integer and float
operands compare numerically in ``eq``/``lt``/..., and integral floats are accepted
where an ``int`` argument is expected.

Unknown functions, unsupported sprig functions (``env`` deliberately: it would expose the
process environment), ``define``/``template``/``block`` and syntax errors raise
:class:`TemplateSyntaxError` (a ``ValueError``) with the line and column; failures while
rendering raise :class:`TemplateExecError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "Template",
    "TemplateExecError",
    "TemplateSyntaxError",
    "compile_template",
    "go_sprint",
]


class TemplateSyntaxError(ValueError):
    """The template text does not parse; ``line`` and ``col`` are 1-based."""

    def __init__(self, message: str, line: int, col: int) -> None:
        super().__init__(f"{line}:{col}: {message}")
        self.message = message
        self.line = line
        self.col = col


class TemplateExecError(Exception):
    """Rendering failed (wrong types, nil field access, bad index, ...)."""


class _Missing:
    """Go's invalid ``reflect.Value``: what a missing map key evaluates to."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<no value>"


MISSING: Final = _Missing()
_NO_FINAL: Final = object()  # no value piped in from a previous command

# --------------------------------------------------------------------------- printing


def _float_digits(f: float) -> tuple[bool, str, int]:
    """Shortest round-trip digits of a finite non-zero float: (negative, digits, dp)
    where the value is 0.digits * 10**dp."""
    d = Decimal(repr(f)).normalize()
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    ds = "".join(map(str, digits))
    return bool(sign), ds, len(ds) + exp


def _go_float_g(f: float, eprec: int = 6) -> str:
    """Go's ``%v`` / shortest ``%g`` of a float64 (exponent form from 1e+06 on)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    neg, ds, dp = _float_digits(f)
    x = dp - 1
    if x < -4 or x >= eprec:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        body = f"{mant}e{'+' if x >= 0 else '-'}{abs(x):02d}"
    elif dp <= 0:
        body = "0." + "0" * (-dp) + ds
    elif dp >= len(ds):
        body = ds + "0" * (dp - len(ds))
    else:
        body = ds[:dp] + "." + ds[dp:]
    return ("-" if neg else "") + body


def _go_json_float(f: float) -> str:
    """encoding/json's float64 text: fixed unless tiny or huge, ``1e-7`` not ``1e-07``."""
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    neg, ds, dp = _float_digits(f)
    a = abs(f)
    if a < 1e-6 or a >= 1e21:
        x = dp - 1
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        body = f"{mant}e{'+' if x >= 0 else '-'}{abs(x):02d}"
        if len(body) >= 4 and body[-4] == "e" and body[-3] == "-" and body[-2] == "0":
            body = body[:-2] + body[-1]
    elif dp <= 0:
        body = "0." + "0" * (-dp) + ds
    elif dp >= len(ds):
        body = ds + "0" * (dp - len(ds))
    else:
        body = ds[:dp] + "." + ds[dp:]
    return ("-" if neg else "") + body


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _go_type(v: Any) -> str:
    if v is MISSING or v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    if isinstance(v, datetime):
        return "time.Time"
    return type(v).__name__


def go_sprint(v: Any) -> str:
    """Format a value as Go's ``fmt`` ``%v`` does (``<nil>`` for null)."""
    if v is None or v is MISSING:
        return "<nil>"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float_g(v)
    if isinstance(v, list):
        return "[" + " ".join(go_sprint(e) for e in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_sprint(v[k])}" for k in sorted(v, key=str)) + "]"
    if isinstance(v, datetime):
        return _go_time_format(v, "2006-01-02 15:04:05.999999999 -0700 MST")
    return str(v)


def _print_top(v: Any) -> str:
    """What an action prints: ``<no value>`` for missing keys and nulls."""
    if v is None or v is MISSING:
        return "<no value>"
    return go_sprint(v)


def _go_quote(s: str) -> str:
    """``strconv.Quote``: a double-quoted Go string literal."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def _go_json(v: Any, escape_html: bool = True, indent: str | None = None, level: int = 0) -> str:
    """``encoding/json`` output: sorted map keys, Go float text, HTML-safe by default."""
    if v is None or v is MISSING:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise TemplateExecError(f"json: unsupported value: {_go_float_g(v)}")
        return _go_json_float(v)
    if isinstance(v, str):
        return _json_string(v, escape_html)
    if isinstance(v, datetime):
        return _json_string(v.isoformat().replace("+00:00", "Z"), escape_html)
    nl = "" if indent is None else "\n" + indent * (level + 1)
    end = "" if indent is None else "\n" + indent * level
    colon = ":" if indent is None else ": "
    if isinstance(v, list):
        if not v:
            return "[]"
        items = [_go_json(e, escape_html, indent, level + 1) for e in v]
        return "[" + nl + ("," + nl).join(items) + end + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = [
            _json_string(str(k), escape_html)
            + colon
            + _go_json(v[k], escape_html, indent, level + 1)
            for k in sorted(v, key=str)
        ]
        return "{" + nl + ("," + nl).join(items) + end + "}"
    return _json_string(str(v), escape_html)


def _json_string(s: str, escape_html: bool) -> str:
    out = json.dumps(s, ensure_ascii=False)
    out = out.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    if escape_html:
        out = out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return out


# --------------------------------------------------------------------------- Go time


_MONTHS: Final = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAYS: Final = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _starts_lower(s: str) -> bool:
    return bool(s) and "a" <= s[0] <= "z"


def _go_time_format(t: datetime, layout: str) -> str:
    """``time.Time.Format`` with Go's reference-time layout (``2006-01-02T15:04:05``)."""
    out: list[str] = []
    i = 0
    n = len(layout)
    while i < n:
        rest = layout[i:]
        c = layout[i]
        if c == "J" and rest.startswith("Jan"):
            if rest.startswith("January"):
                out.append(_MONTHS[t.month - 1])
                i += 7
                continue
            if not _starts_lower(rest[3:]):
                out.append(_MONTHS[t.month - 1][:3])
                i += 3
                continue
        elif c == "M" and rest.startswith("Mon"):
            if rest.startswith("Monday"):
                out.append(_DAYS[t.weekday()])
                i += 6
                continue
            if not _starts_lower(rest[3:]):
                out.append(_DAYS[t.weekday()][:3])
                i += 3
                continue
        elif c == "M" and rest.startswith("MST"):
            name = t.tzname()
            out.append(name if name else _zone_offset(t, "-0700"))
            i += 3
            continue
        elif c == "0":
            if rest.startswith("002"):
                out.append(f"{t.timetuple().tm_yday:03d}")
                i += 3
                continue
            if len(rest) >= 2 and "1" <= rest[1] <= "6":
                h12 = t.hour % 12 or 12
                out.append(
                    {
                        "1": f"{t.month:02d}",
                        "2": f"{t.day:02d}",
                        "3": f"{h12:02d}",
                        "4": f"{t.minute:02d}",
                        "5": f"{t.second:02d}",
                        "6": f"{t.year % 100:02d}",
                    }[rest[1]]
                )
                i += 2
                continue
        elif c == "1":
            if rest.startswith("15"):
                out.append(f"{t.hour:02d}")
                i += 2
            else:
                out.append(str(t.month))
                i += 1
            continue
        elif c == "2":
            if rest.startswith("2006"):
                out.append(f"{t.year:04d}")
                i += 4
            else:
                out.append(str(t.day))
                i += 1
            continue
        elif c == "_":
            if rest.startswith("_2"):
                if rest.startswith("_2006"):
                    out.append("_")
                    i += 1
                    continue
                out.append(f"{t.day:2d}")
                i += 2
                continue
            if rest.startswith("__2"):
                out.append(f"{t.timetuple().tm_yday:3d}")
                i += 3
                continue
        elif c in "345":
            val = {"3": t.hour % 12 or 12, "4": t.minute, "5": t.second}[c]
            out.append(str(val))
            i += 1
            continue
        elif c == "P" and rest.startswith("PM"):
            out.append("PM" if t.hour >= 12 else "AM")
            i += 2
            continue
        elif c == "p" and rest.startswith("pm"):
            out.append("pm" if t.hour >= 12 else "am")
            i += 2
            continue
        elif c in "-Z":
            for std in ("070000", "07:00:00", "0700", "07:00", "07"):
                if rest[1:].startswith(std):
                    out.append(_zone_offset(t, c + std))
                    i += 1 + len(std)
                    break
            else:
                out.append(c)
                i += 1
            continue
        elif c in ".," and len(rest) >= 2 and rest[1] in "09":
            d = rest[1]
            j = 1
            while j < len(rest) and rest[j] == d:
                j += 1
            if not (j < len(rest) and rest[j].isdigit()):
                digits = j - 1
                frac = f"{t.microsecond:06d}000"[:digits]
                if d == "9":
                    frac = frac.rstrip("0")
                    out.append(c + frac if frac else "")
                else:
                    out.append(c + frac)
                i += j
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _zone_offset(t: datetime, std: str) -> str:
    off = t.utcoffset() or timedelta(0)
    secs = int(off.total_seconds())
    if std[0] == "Z" and secs == 0:
        return "Z"
    sign = "-" if secs < 0 else "+"
    secs = abs(secs)
    hh, mm, ss = secs // 3600, (secs // 60) % 60, secs % 60
    body = std[1:]
    if body == "070000":
        return f"{sign}{hh:02d}{mm:02d}{ss:02d}"
    if body == "07:00:00":
        return f"{sign}{hh:02d}:{mm:02d}:{ss:02d}"
    if body == "0700":
        return f"{sign}{hh:02d}{mm:02d}"
    if body == "07:00":
        return f"{sign}{hh:02d}:{mm:02d}"
    return f"{sign}{hh:02d}"


def _local_tz() -> tzinfo:
    tz = datetime.now().astimezone().tzinfo
    return tz if tz is not None else UTC


def _as_time(v: Any) -> datetime:
    """sprig's date argument: a time, or Unix seconds; anything else means now."""
    if isinstance(v, datetime):
        return v if v.tzinfo is not None else v.replace(tzinfo=_local_tz())
    if _is_num(v):
        return datetime.fromtimestamp(float(v), tz=UTC)
    return datetime.now(UTC)


# --------------------------------------------------------------------------- Go fmt


def _go_sprintf(fmt: str, args: Sequence[Any]) -> str:
    """``fmt.Sprintf`` for the verbs templates use: v s d f F e E g G t q x X o b c T %."""
    out: list[str] = []
    argi = 0
    i = 0
    n = len(fmt)
    while i < n:
        c = fmt[i]
        if c != "%":
            j = fmt.find("%", i)
            j = n if j < 0 else j
            out.append(fmt[i:j])
            i = j
            continue
        i += 1
        flags = ""
        while i < n and fmt[i] in "+-# 0":
            flags += fmt[i]
            i += 1
        width = ""
        if i < n and fmt[i] == "*":
            if argi < len(args) and isinstance(args[argi], int):
                width = str(args[argi])
            argi += 1
            i += 1
        while i < n and fmt[i].isdigit():
            width += fmt[i]
            i += 1
        prec: str | None = None
        if i < n and fmt[i] == ".":
            i += 1
            prec = ""
            if i < n and fmt[i] == "*":
                if argi < len(args) and isinstance(args[argi], int):
                    prec = str(args[argi])
                argi += 1
                i += 1
            while i < n and fmt[i].isdigit():
                prec += fmt[i]
                i += 1
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        out.append(_format_one(verb, flags, width, prec, arg))
    if argi < len(args):
        extra = ", ".join(f"{_go_type(a)}={go_sprint(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _pad(s: str, flags: str, width: str, numeric: bool = False) -> str:
    if not width:
        return s
    w = int(width)
    if len(s) >= w:
        return s
    if "-" in flags:
        return s.ljust(w)
    if "0" in flags and numeric:
        sign = s[0] if s[:1] in ("-", "+") else ""
        return sign + s[len(sign) :].rjust(w - len(sign), "0")
    return s.rjust(w)


def _bad_verb(verb: str, arg: Any) -> str:
    if arg is None or arg is MISSING:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({_go_type(arg)}={go_sprint(arg)})"


def _format_one(verb: str, flags: str, width: str, prec: str | None, arg: Any) -> str:
    if verb == "v":
        return _pad(go_sprint(arg), flags, width)
    if verb == "T":
        return _pad(_go_type(arg), flags, width)
    if verb == "s":
        if arg is None or arg is MISSING or _is_num(arg) or isinstance(arg, bool):
            return _bad_verb(verb, arg)
        s = go_sprint(arg)
        if prec is not None and prec != "":
            s = s[: int(prec)]
        return _pad(s, flags, width)
    if verb == "q":
        if isinstance(arg, str):
            return _pad(_go_quote(arg), flags, width)
        if isinstance(arg, int) and not isinstance(arg, bool):
            return _pad("'" + _go_quote(chr(arg))[1:-1].replace("'", "\\'") + "'", flags, width)
        return _bad_verb(verb, arg)
    if verb == "t":
        if isinstance(arg, bool):
            return _pad("true" if arg else "false", flags, width)
        return _bad_verb(verb, arg)
    if verb in "dxXobc":
        iv: int | None = None
        if isinstance(arg, int) and not isinstance(arg, bool):
            iv = arg
        elif isinstance(arg, float) and arg.is_integer():
            iv = int(arg)
        if verb in "xX" and isinstance(arg, str):
            h = arg.encode().hex()
            return _pad(h.upper() if verb == "X" else h, flags, width)
        if iv is None:
            return _bad_verb(verb, arg)
        if verb == "c":
            return _pad(chr(iv), flags, width)
        spec = {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb]
        body = format(abs(iv), spec)
        if "#" in flags and verb in "xX":
            body = ("0X" if verb == "X" else "0x") + body
        elif "#" in flags and verb == "o":
            body = "0" + body
        sign = "-" if iv < 0 else ("+" if "+" in flags else (" " if " " in flags else ""))
        return _pad(sign + body, flags, width, numeric=True)
    if verb in "fFeEgG":
        if not _is_num(arg):
            return _bad_verb(verb, arg)
        f = float(arg)
        if verb in "gG" and (prec is None or prec == ""):
            body = _go_float_g(f)
            if verb == "G":
                body = body.upper()
        else:
            p = 6 if prec is None or prec == "" else int(prec)
            if math.isnan(f) or math.isinf(f):
                body = _go_float_g(f)
            else:
                pyverb = "f" if verb == "F" else verb
                body = format(f, f".{p}{pyverb}")
        if "+" in flags and not body.startswith("-"):
            body = "+" + body
        return _pad(body, flags, width, numeric=True)
    return _bad_verb(verb, arg)


def _go_sprint_args(args: Sequence[Any]) -> str:
    """``fmt.Sprint``: a space between operands when neither is a string."""
    out: list[str] = []
    for k, a in enumerate(args):
        if k > 0 and not isinstance(a, str) and not isinstance(args[k - 1], str):
            out.append(" ")
        out.append(go_sprint(a))
    return "".join(out)


# --------------------------------------------------------------------------- truth, compare


def _truth(v: Any) -> bool:
    """Go's ``isTrue``: zero values (false, 0, "", empty list/map, nil) are false."""
    if v is MISSING or v is None:
        return False
    if isinstance(v, bool):
        return v
    if _is_num(v):
        return bool(v != 0)
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def _kind(v: Any) -> str:
    if v is MISSING or v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if _is_num(v):
        return "num"
    if isinstance(v, str):
        return "str"
    return "other"


def _eq(a: Any, *bs: Any) -> bool:
    if not bs:
        raise TemplateExecError("missing argument for comparison")
    ka = _kind(a)
    for b in bs:
        kb = _kind(b)
        if ka != kb:
            if ka == "nil" or kb == "nil":
                truth = False
            else:
                raise TemplateExecError("incompatible types for comparison")
        elif ka == "nil":
            truth = True
        elif ka == "other":
            raise TemplateExecError(f"non-comparable type {_go_type(a)}")
        else:
            truth = a == b
        if truth:
            return True
    return False


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _lt(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka not in ("num", "str") or kb not in ("num", "str"):
        raise TemplateExecError("invalid type for comparison")
    if ka != kb:
        raise TemplateExecError("incompatible types for comparison")
    return bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return _lt(a, b) or _eq(a, b)


def _gt(a: Any, b: Any) -> bool:
    return not _le(a, b)


def _ge(a: Any, b: Any) -> bool:
    return not _lt(a, b)


# --------------------------------------------------------------------------- builtins


def _len(v: Any) -> int:
    if v is MISSING or v is None:
        raise TemplateExecError("len of nil pointer")
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, (list, dict)):
        return len(v)
    raise TemplateExecError(f"len of type {_go_type(v)}")


def _int_index(x: Any) -> int:
    if isinstance(x, int) and not isinstance(x, bool):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    raise TemplateExecError(f"cannot index slice/array with type {_go_type(x)}")


def _index(item: Any, *indexes: Any) -> Any:
    for x in indexes:
        if item is MISSING or item is None:
            raise TemplateExecError("index of untyped nil")
        if isinstance(item, dict):
            if not isinstance(x, str):
                raise TemplateExecError(f"value has type {_go_type(x)}; should be string")
            item = item.get(x)
        elif isinstance(item, (list, str)):
            i = _int_index(x)
            seq: Sequence[Any] = item.encode() if isinstance(item, str) else item
            if i < 0 or i >= len(seq):
                raise TemplateExecError(f"index out of range: {i}")
            item = seq[i]
        else:
            raise TemplateExecError(f"can't index item of type {_go_type(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if item is MISSING or item is None:
        raise TemplateExecError("slice of untyped nil")
    if not isinstance(item, (list, str)):
        raise TemplateExecError(f"can't slice item of type {_go_type(item)}")
    if len(indexes) > 2:
        raise TemplateExecError("too many slice indexes")
    idx = [_int_index(x) for x in indexes]
    start = idx[0] if idx else 0
    end = idx[1] if len(idx) > 1 else len(item)
    if not 0 <= start <= end <= len(item):
        raise TemplateExecError(f"index out of range: {start}:{end}")
    return item[start:end]


def _html(*args: Any) -> str:
    s = _go_sprint_args(args)
    return (
        s.replace("&", "&amp;")
        .replace("'", "&#39;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("\x00", "\ufffd")
    )


def _urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(_go_sprint_args(args), safe="")


# --------------------------------------------------------------------------- sprig


def _strval(v: Any) -> str:
    if isinstance(v, str):
        return v
    return go_sprint(v)


def _empty(v: Any) -> bool:
    if v is MISSING or v is None:
        return True
    if isinstance(v, (str, list, dict)):
        return len(v) == 0
    if isinstance(v, bool):
        return not v
    if _is_num(v):
        return bool(v == 0)
    return False


def _default(d: Any, *given: Any) -> Any:
    if not given or _empty(given[0]):
        return d
    return given[0]


def _coalesce(*vs: Any) -> Any:
    for v in vs:
        if not _empty(v):
            return v
    return None


def _ternary(vt: Any, vf: Any, cond: bool) -> Any:
    return vt if cond else vf


def _title(s: str) -> str:
    """``strings.Title``: upper-case the first letter of each word."""
    out: list[str] = []
    prev_sep = True
    for ch in s:
        out.append(ch.upper() if prev_sep and len(ch.upper()) == 1 else ch)
        if ch.isascii():
            prev_sep = not (ch.isalnum() or ch == "_")
        elif ch.isalpha() or ch.isdigit():
            prev_sep = False
        else:
            prev_sep = ch.isspace()
    return "".join(out)


def _quote(*vs: Any) -> str:
    return " ".join(_go_quote(_strval(v)) for v in vs if v is not None)


def _squote(*vs: Any) -> str:
    return " ".join(f"'{_strval(v)}'" for v in vs if v is not None)


def _cat(*vs: Any) -> str:
    return " ".join(go_sprint(v) for v in vs if v is not None)


def _split(sep: str, s: str) -> dict[str, str]:
    return {f"_{i}": p for i, p in enumerate(_go_split(s, sep))}


def _go_split(s: str, sep: str) -> list[str]:
    if sep == "":
        return list(s)
    return s.split(sep)


def _strslice(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [_strval(e) for e in v if e is not None]
    return [_strval(v)]


def _join(sep: str, v: Any) -> str:
    return sep.join(_strslice(v))


def _substr(start: int, end: int, s: str) -> str:
    if start < 0:
        return s[:end]
    if end < 0 or end > len(s):
        return s[start:]
    return s[start:end]


def _trunc(c: int, s: str) -> str:
    if c < 0 and len(s) + c > 0:
        return s[len(s) + c :]
    if c >= 0 and len(s) > c:
        return s[:c]
    return s


def _repeat(count: int, s: str) -> str:
    return s * max(count, 0)


def _b64dec(s: str) -> str:
    try:
        return base64.b64decode(s, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError) as e:
        return f"illegal base64 data: {e}"


def _to_int(v: Any) -> int:
    """cast.ToInt as sprig uses it: unparsable values become 0."""
    if v is None or v is MISSING:
        return 0
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return 0 if math.isnan(v) or math.isinf(v) else int(v)
    if isinstance(v, str):
        s = v.strip()
        if "." in s:
            head, _, tail = s.partition(".")
            if tail.strip("0") == "":
                s = head
        try:
            if len(s) > 1 and s.lstrip("+-").startswith("0") and s.lstrip("+-")[1:].isdigit():
                return int(s, 8)
            return int(s, 0)
        except ValueError:
            return 0
    return 0


def _to_float(v: Any) -> float:
    if v is None or v is MISSING:
        return 0.0
    if isinstance(v, bool):
        return float(v)
    if _is_num(v):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return 0.0
    return 0.0


def _atoi(s: str) -> int:
    """``strconv.Atoi`` with the error dropped: 0 for anything but a plain integer."""
    body = s[1:] if s[:1] in "+-" else s
    if not body or not body.isascii() or not body.isdigit():
        return 0
    return int(s)


def _add(*vs: Any) -> int:
    return sum(_to_int(v) for v in vs)


def _div(a: Any, b: Any) -> int:
    x, y = _to_int(a), _to_int(b)
    if y == 0:
        raise TemplateExecError("integer divide by zero")
    q = abs(x) // abs(y)
    return q if (x >= 0) == (y >= 0) else -q


def _mod(a: Any, b: Any) -> int:
    x, y = _to_int(a), _to_int(b)
    if y == 0:
        raise TemplateExecError("integer divide by zero")
    return x - _div(x, y) * y


def _max(a: Any, *vs: Any) -> int:
    return max([_to_int(a), *(_to_int(v) for v in vs)])


def _min(a: Any, *vs: Any) -> int:
    return min([_to_int(a), *(_to_int(v) for v in vs)])


def _dict(*vs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    items = list(vs)
    if len(items) % 2:
        items.append("")
    for k in range(0, len(items), 2):
        out[_strval(items[k])] = items[k + 1]
    return out


def _has_key(d: Any, key: str) -> bool:
    return isinstance(d, dict) and key in d


def _get(d: Any, key: str) -> Any:
    if isinstance(d, dict) and key in d:
        return d[key]
    return ""


def _from_json(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        return None


def _now() -> datetime:
    return datetime.now(_local_tz())


def _date(layout: str, when: Any) -> str:
    return _go_time_format(_as_time(when).astimezone(_local_tz()), layout)


def _date_in_zone(layout: str, when: Any, zone: str) -> str:
    tz: tzinfo
    if zone == "Local":
        tz = _local_tz()
    else:
        try:
            tz = ZoneInfo(zone) if zone not in ("", "UTC") else UTC
        except (ZoneInfoNotFoundError, ValueError):
            tz = UTC
    return _go_time_format(_as_time(when).astimezone(tz), layout)


def _unix_epoch(when: datetime) -> str:
    return str(int(when.timestamp()))


def _nospace(s: str) -> str:
    return "".join(ch for ch in s if not ch.isspace())


# Parameter kinds: "val" (raw, may be MISSING), "any" (MISSING becomes None),
# "str", "int", "float", "bool", "time".
@dataclass(frozen=True, slots=True)
class _Func:
    fn: Callable[..., Any]
    params: tuple[str, ...]
    variadic: str | None = None


_FUNCS: Final[dict[str, _Func]] = {
    # Go builtins
    "not": _Func(lambda v: not _truth(v), ("val",)),
    "len": _Func(_len, ("val",)),
    "index": _Func(_index, ("val",), "val"),
    "slice": _Func(_slice, ("val",), "val"),
    "print": _Func(lambda *a: _go_sprint_args(a), (), "any"),
    "println": _Func(lambda *a: " ".join(go_sprint(x) for x in a) + "\n", (), "any"),
    "printf": _Func(lambda f, *a: _go_sprintf(f, a), ("str",), "any"),
    "eq": _Func(_eq, ("val",), "val"),
    "ne": _Func(_ne, ("val", "val")),
    "lt": _Func(_lt, ("val", "val")),
    "le": _Func(_le, ("val", "val")),
    "gt": _Func(_gt, ("val", "val")),
    "ge": _Func(_ge, ("val", "val")),
    "html": _Func(_html, (), "any"),
    "urlquery": _Func(_urlquery, (), "any"),
    # sprig: strings
    "upper": _Func(str.upper, ("str",)),
    "lower": _Func(str.lower, ("str",)),
    "title": _Func(_title, ("str",)),
    "trim": _Func(str.strip, ("str",)),
    "trimAll": _Func(lambda cut, s: s.strip(cut), ("str", "str")),
    "trimPrefix": _Func(lambda p, s: s.removeprefix(p), ("str", "str")),
    "trimSuffix": _Func(lambda p, s: s.removesuffix(p), ("str", "str")),
    "replace": _Func(lambda old, new, s: s.replace(old, new), ("str", "str", "str")),
    "contains": _Func(lambda sub, s: sub in s, ("str", "str")),
    "hasPrefix": _Func(lambda p, s: s.startswith(p), ("str", "str")),
    "hasSuffix": _Func(lambda p, s: s.endswith(p), ("str", "str")),
    "split": _Func(_split, ("str", "str")),
    "splitList": _Func(lambda sep, s: _go_split(s, sep), ("str", "str")),
    "join": _Func(_join, ("str", "any")),
    "quote": _Func(_quote, (), "any"),
    "squote": _Func(_squote, (), "any"),
    "cat": _Func(_cat, (), "any"),
    "repeat": _Func(_repeat, ("int", "str")),
    "substr": _Func(_substr, ("int", "int", "str")),
    "trunc": _Func(_trunc, ("int", "str")),
    "nospace": _Func(_nospace, ("str",)),
    # sprig: defaults and conversions
    "default": _Func(_default, ("any",), "any"),
    "empty": _Func(_empty, ("any",)),
    "coalesce": _Func(_coalesce, (), "any"),
    "ternary": _Func(_ternary, ("any", "any", "bool")),
    "toString": _Func(_strval, ("any",)),
    "toJson": _Func(lambda v: _go_json(v), ("any",)),
    "toRawJson": _Func(lambda v: _go_json(v, escape_html=False), ("any",)),
    "toPrettyJson": _Func(lambda v: _go_json(v, indent="  "), ("any",)),
    "fromJson": _Func(_from_json, ("str",)),
    "b64enc": _Func(lambda s: base64.b64encode(s.encode()).decode(), ("str",)),
    "b64dec": _Func(_b64dec, ("str",)),
    "sha256sum": _Func(lambda s: hashlib.sha256(s.encode()).hexdigest(), ("str",)),
    "int": _Func(_to_int, ("any",)),
    "int64": _Func(_to_int, ("any",)),
    "float64": _Func(_to_float, ("any",)),
    "atoi": _Func(_atoi, ("str",)),
    # sprig: integer math
    "add": _Func(_add, (), "any"),
    "add1": _Func(lambda v: _to_int(v) + 1, ("any",)),
    "sub": _Func(lambda a, b: _to_int(a) - _to_int(b), ("any", "any")),
    "mul": _Func(lambda *vs: math.prod(_to_int(v) for v in vs), ("any",), "any"),
    "div": _Func(_div, ("any", "any")),
    "mod": _Func(_mod, ("any", "any")),
    "max": _Func(_max, ("any",), "any"),
    "min": _Func(_min, ("any",), "any"),
    # sprig: collections
    "list": _Func(lambda *vs: list(vs), (), "any"),
    "dict": _Func(_dict, (), "any"),
    "hasKey": _Func(_has_key, ("any", "str")),
    "get": _Func(_get, ("any", "str")),
    # sprig: misc and time
    "uuidv4": _Func(lambda: str(uuid.uuid4()), ()),
    "now": _Func(_now, ()),
    "date": _Func(_date, ("str", "any")),
    "dateInZone": _Func(_date_in_zone, ("str", "any", "str")),
    "unixEpoch": _Func(_unix_epoch, ("time",)),
}

_LAZY: Final = frozenset({"and", "or"})

# Functions Go or sprig define that this subset does not, for a precise error message.
_UNSUPPORTED_NAMES: Final = """
    call js ago date_in_zone date_modify dateModify duration durationRound htmlDate
    htmlDateInZone must_date_modify mustDateModify mustToDate toDate abbrev abbrevboth
    untitle initials randAlphaNum randNumeric randAscii randAlpha swapcase shuffle
    snakecase camelcase kebabcase wrap wrapWith indent nindent plural sha1sum adler32sum
    seq toDecimal splitn toStrings until untilStep randInt add1f addf subf divf mulf
    biggest maxf minf ceil floor round sortAlpha all any compact mustCompact mustFromJson
    mustToJson mustToPrettyJson mustToRawJson deepCopy mustDeepCopy typeOf typeIs
    typeIsLike kindOf kindIs deepEqual env expandenv getHostByName base dir clean ext
    isAbs osBase osClean osDir osExt osIsAbs b32enc b32dec tuple set unset pluck keys
    pick omit merge mergeOverwrite mustMerge mustMergeOverwrite values append push
    mustAppend mustPush prepend mustPrepend first mustFirst rest mustRest last mustLast
    initial mustInitial reverse mustReverse uniq mustUniq without mustWithout has mustHas
    mustSlice concat dig chunk mustChunk bcrypt htpasswd genPrivateKey derivePassword
    buildCustomCert genCA genCAWithKey genSelfSignedCert genSelfSignedCertWithKey
    genSignedCert genSignedCertWithKey encryptAES decryptAES randBytes semver
    semverCompare fail regexMatch mustRegexMatch regexFindAll mustRegexFindAll regexFind
    mustRegexFind regexReplaceAll mustRegexReplaceAll regexReplaceAllLiteral
    mustRegexReplaceAllLiteral regexSplit mustRegexSplit regexQuoteMeta urlParse urlJoin
    hello"""
_KNOWN_UNSUPPORTED: Final = frozenset(_UNSUPPORTED_NAMES.split())


def _convert(v: Any, kind: str) -> Any:
    if kind == "val":
        return v
    if kind == "any":
        return None if v is MISSING else v
    if v is MISSING or v is None:
        raise TemplateExecError(f"invalid value; expected {_KIND_NAMES[kind]}")
    if kind == "str":
        if isinstance(v, str):
            return v
    elif kind == "int":
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
    elif kind == "float":
        if _is_num(v):
            return float(v)
    elif kind == "bool":
        if isinstance(v, bool):
            return v
    elif kind == "time" and isinstance(v, datetime):
        return v
    raise TemplateExecError(
        f"wrong type for value; expected {_KIND_NAMES[kind]}; got {_go_type(v)}"
    )


_KIND_NAMES: Final = {
    "str": "string",
    "int": "int",
    "float": "float64",
    "bool": "bool",
    "time": "time.Time",
}


# --------------------------------------------------------------------------- lexer

_SPACE: Final = " \t\r\n"


@dataclass(slots=True)
class _Tok:
    kind: (
        str  # text ldelim rdelim ident field var dot string number bool nil pipe ( ) , := = kw eof
    )
    value: Any
    pos: int
    space: bool = False  # whitespace precedes it inside an action


_KEYWORDS: Final = frozenset(
    {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}
)


def _line_col(src: str, pos: int) -> tuple[int, int]:
    line = src.count("\n", 0, pos) + 1
    col = pos - (src.rfind("\n", 0, pos) + 1) + 1
    return line, col


class _Lexer:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks: list[_Tok] = []

    def error(self, msg: str, pos: int) -> TemplateSyntaxError:
        line, col = _line_col(self.src, pos)
        return TemplateSyntaxError(msg, line, col)

    def run(self) -> list[_Tok]:
        src = self.src
        n = len(src)
        pos = 0
        trim_next = False
        while pos <= n:
            idx = src.find("{{", pos)
            text = src[pos:] if idx < 0 else src[pos:idx]
            if trim_next:
                text = text.lstrip(_SPACE)
                trim_next = False
            if idx < 0:
                if text:
                    self.toks.append(_Tok("text", text, pos))
                break
            after = idx + 2
            if src.startswith("-", after) and after + 1 < n and src[after + 1] in _SPACE:
                text = text.rstrip(_SPACE)
                after += 2
            if text:
                self.toks.append(_Tok("text", text, pos))
            # comments: {{/* ... */}}, right after the delimiter (and trim marker)
            if src.startswith("/*", after):
                close = src.find("*/", after + 2)
                if close < 0:
                    raise self.error("unclosed comment", idx)
                end = close + 2
                if src.startswith("}}", end):
                    pos = end + 2
                elif end < n and src[end] in _SPACE and src.startswith("-}}", end + 1):
                    pos = end + 4
                    trim_next = True
                else:
                    raise self.error("comment ends before closing delimiter", close)
                continue
            self.toks.append(_Tok("ldelim", None, idx))
            pos, trim_next = self.lex_action(after)
        self.toks.append(_Tok("eof", None, n))
        return self.toks

    def lex_action(self, pos: int) -> tuple[int, bool]:
        src = self.src
        n = len(src)
        space = False
        depth = 0
        while True:
            if pos >= n:
                raise self.error("unclosed action", pos)
            c = src[pos]
            if src.startswith("}}", pos):
                if depth:
                    raise self.error("unclosed left paren", pos)
                self.toks.append(_Tok("rdelim", None, pos))
                return pos + 2, False
            if c in _SPACE:
                j = pos
                while j < n and src[j] in _SPACE:
                    j += 1
                if src.startswith("-}}", j):
                    if depth:
                        raise self.error("unclosed left paren", j)
                    self.toks.append(_Tok("rdelim", None, j))
                    return j + 3, True
                pos = j
                space = True
                continue
            start = pos
            if c == "|":
                self.toks.append(_Tok("pipe", None, pos, space))
                pos += 1
            elif c == "(":
                depth += 1
                self.toks.append(_Tok("(", None, pos, space))
                pos += 1
            elif c == ")":
                depth -= 1
                if depth < 0:
                    raise self.error("unexpected right paren", pos)
                self.toks.append(_Tok(")", None, pos, space))
                pos += 1
            elif c == ",":
                self.toks.append(_Tok(",", None, pos, space))
                pos += 1
            elif src.startswith(":=", pos):
                self.toks.append(_Tok(":=", None, pos, space))
                pos += 2
            elif c == "=":
                self.toks.append(_Tok("=", None, pos, space))
                pos += 1
            elif c == '"':
                text, pos = self.lex_quote(pos)
                self.toks.append(_Tok("string", text, start, space))
            elif c == "`":
                end = src.find("`", pos + 1)
                if end < 0:
                    raise self.error("unterminated raw quoted string", pos)
                self.toks.append(_Tok("string", src[pos + 1 : end], start, space))
                pos = end + 1
            elif c == "'":
                code, pos = self.lex_char(pos)
                self.toks.append(_Tok("number", code, start, space))
            elif c == "$":
                j = pos + 1
                while j < n and (src[j].isalnum() or src[j] == "_"):
                    j += 1
                self.toks.append(_Tok("var", src[pos:j], start, space))
                pos = j
            elif c == "." and pos + 1 < n and src[pos + 1].isdigit():
                num, pos = self.lex_number(pos)
                self.toks.append(_Tok("number", num, start, space))
            elif c == ".":
                j = pos + 1
                while j < n and (src[j].isalnum() or src[j] == "_"):
                    j += 1
                if j == pos + 1:
                    self.toks.append(_Tok("dot", None, start, space))
                else:
                    self.toks.append(_Tok("field", src[pos + 1 : j], start, space))
                pos = j
            elif c.isdigit() or (
                c in "+-" and pos + 1 < n and (src[pos + 1].isdigit() or src[pos + 1] == ".")
            ):
                num, pos = self.lex_number(pos)
                self.toks.append(_Tok("number", num, start, space))
            elif c.isalpha() or c == "_":
                j = pos
                while j < n and (src[j].isalnum() or src[j] == "_"):
                    j += 1
                word = src[pos:j]
                if word in ("true", "false"):
                    self.toks.append(_Tok("bool", word == "true", start, space))
                elif word == "nil":
                    self.toks.append(_Tok("nil", None, start, space))
                elif word in _KEYWORDS:
                    self.toks.append(_Tok("kw", word, start, space))
                else:
                    self.toks.append(_Tok("ident", word, start, space))
                pos = j
            else:
                raise self.error(f"unrecognized character in action: {c!r}", pos)
            space = False

    def lex_quote(self, pos: int) -> tuple[str, int]:
        src = self.src
        j = pos + 1
        while j < len(src):
            ch = src[j]
            if ch == "\\":
                j += 2
                continue
            if ch == "\n":
                break
            if ch == '"':
                return _go_unquote(src[pos : j + 1], lambda m: self.error(m, pos)), j + 1
            j += 1
        raise self.error("unterminated quoted string", pos)

    def lex_char(self, pos: int) -> tuple[int, int]:
        src = self.src
        j = pos + 1
        while j < len(src) and src[j] not in "'\n":
            j += 2 if src[j] == "\\" else 1
        if j >= len(src) or src[j] != "'":
            raise self.error("unterminated character constant", pos)
        body = _go_unquote('"' + src[pos + 1 : j].replace('"', '\\"') + '"', self._err(pos))
        if len(body) != 1:
            raise self.error(f"malformed character constant: {src[pos : j + 1]}", pos)
        return ord(body), j + 1

    def _err(self, pos: int) -> Callable[[str], TemplateSyntaxError]:
        return lambda m: self.error(m, pos)

    def lex_number(self, pos: int) -> tuple[int | float, int]:
        src = self.src
        j = pos
        if src[j] in "+-":
            j += 1
        while j < len(src) and (src[j].isalnum() or src[j] in "._" or src[j] in "+-"):
            if src[j] in "+-" and src[j - 1] not in "eEpP":
                break
            j += 1
        text = src[pos:j]
        value = _parse_go_number(text)
        if value is None:
            raise self.error(f"bad number syntax: {text!r}", pos)
        return value, j


def _parse_go_number(text: str) -> int | float | None:
    t = text.replace("_", "")
    sign = -1 if t.startswith("-") else 1
    body = t.lstrip("+-")
    if not body:
        return None
    low = body.lower()
    try:
        if low.startswith(("0x", "0o", "0b")) and "p" not in low:
            return sign * int(body, 0)
        if any(ch in low for ch in ".e"):
            return sign * float(body)
        if len(body) > 1 and body.startswith("0"):
            return sign * int(body, 8)
        return sign * int(body)
    except ValueError:
        return None


def _go_unquote(lit: str, error: Callable[[str], TemplateSyntaxError]) -> str:
    """Decode a Go interpreted string literal (with its quotes)."""
    body = lit[1:-1]
    out: list[str] = []
    i = 0
    n = len(body)
    simple = {
        "a": "\a",
        "b": "\b",
        "f": "\f",
        "n": "\n",
        "r": "\r",
        "t": "\t",
        "v": "\v",
        "\\": "\\",
        '"': '"',
        "'": "'",
    }
    while i < n:
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:
            raise error("invalid syntax in quoted string")
        e = body[i + 1]
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e in "xuU":
            size = {"x": 2, "u": 4, "U": 8}[e]
            hexs = body[i + 2 : i + 2 + size]
            if len(hexs) != size or any(h not in "0123456789abcdefABCDEF" for h in hexs):
                raise error("invalid escape in quoted string")
            out.append(chr(int(hexs, 16)))
            i += 2 + size
        elif e in "01234567":
            octs = body[i + 1 : i + 4]
            if len(octs) != 3 or any(o not in "01234567" for o in octs):
                raise error("invalid escape in quoted string")
            out.append(chr(int(octs, 8)))
            i += 4
        else:
            raise error(f"invalid escape \\{e} in quoted string")
    return "".join(out)


# --------------------------------------------------------------------------- tree


@dataclass(slots=True)
class _Arg:
    """An operand: kind is dot|field|var|lit|nil|func|pipe; ``fields`` chain after it."""

    kind: str
    pos: int
    value: Any = None
    fields: tuple[str, ...] = ()


@dataclass(slots=True)
class _Cmd:
    args: list[_Arg]
    pos: int


@dataclass(slots=True)
class _Pipe:
    cmds: list[_Cmd]
    decl: tuple[str, ...] = ()
    assign: bool = False
    pos: int = 0


@dataclass(slots=True)
class _Text:
    text: str


@dataclass(slots=True)
class _Action:
    pipe: _Pipe


@dataclass(slots=True)
class _If:
    kind: str  # "if" or "with"
    pipe: _Pipe
    body: list[Any]
    orelse: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Range:
    pipe: _Pipe
    body: list[Any]
    orelse: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Jump:
    kind: str  # "break" or "continue"


class _Parser:
    def __init__(self, src: str, toks: list[_Tok]) -> None:
        self.src = src
        self.toks = toks
        self.i = 0
        self.scopes: list[list[str]] = [["$"]]
        self.range_depth = 0

    def error(self, msg: str, pos: int) -> TemplateSyntaxError:
        line, col = _line_col(self.src, pos)
        return TemplateSyntaxError(msg, line, col)

    def peek(self, k: int = 0) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, kind: str, context: str) -> _Tok:
        t = self.next()
        if t.kind != kind:
            raise self.error(f"unexpected {self.describe(t)} in {context}", t.pos)
        return t

    @staticmethod
    def describe(t: _Tok) -> str:
        if t.kind == "eof":
            return "EOF"
        if t.kind == "rdelim":
            return '"}}"'
        if t.value is not None:
            return f"<{t.value}>"
        return f'"{t.kind}"'

    def parse(self) -> list[Any]:
        nodes, term = self.parse_list()
        if term is not None:
            raise self.error(f"unexpected {{{{{term.value}}}}}", term.pos)
        return nodes

    def parse_list(self) -> tuple[list[Any], _Tok | None]:
        """Nodes up to EOF or an ``else``/``end`` action (returned, past its keyword)."""
        nodes: list[Any] = []
        while True:
            t = self.next()
            if t.kind == "eof":
                self.i -= 1
                return nodes, None
            if t.kind == "text":
                nodes.append(_Text(t.value))
                continue
            # ldelim
            k = self.peek()
            if k.kind == "kw":
                word = k.value
                if word in ("else", "end"):
                    self.next()
                    return nodes, k
                self.next()
                if word in ("if", "with"):
                    nodes.append(self.parse_if(word, k))
                elif word == "range":
                    nodes.append(self.parse_range(k))
                elif word in ("break", "continue"):
                    if self.range_depth == 0:
                        raise self.error(f"{{{{{word}}}}} outside {{{{range}}}}", k.pos)
                    self.expect("rdelim", word)
                    nodes.append(_Jump(word))
                else:
                    raise self.error(f"{{{{{word}}}}} is not supported", k.pos)
                continue
            pipe = self.parse_pipeline("command", allow_decl=True)
            self.expect("rdelim", "command")
            nodes.append(_Action(pipe))

    def push_scope(self) -> None:
        self.scopes.append([])

    def pop_scope(self) -> None:
        self.scopes.pop()

    def declared(self, name: str) -> bool:
        return any(name in s for s in self.scopes)

    def parse_if(self, kind: str, kw: _Tok) -> _If:
        self.push_scope()
        pipe = self.parse_pipeline(kind, allow_decl=True)
        self.expect("rdelim", kind)
        body, term = self.parse_list()
        if term is None:
            raise self.error(f"unexpected EOF in {{{{{kind}}}}}", kw.pos)
        node = _If(kind, pipe, body)
        if term.value == "else":
            nxt = self.peek()
            if nxt.kind == "kw" and nxt.value in ("if", "with"):
                self.next()
                # "else if" shares the enclosing "end".
                node.orelse = [self.parse_if(nxt.value, nxt)]
            else:
                self.expect("rdelim", "else")
                node.orelse, term2 = self.parse_list()
                if term2 is None or term2.value != "end":
                    raise self.error(f"expected {{{{end}}}} for {{{{{kind}}}}}", kw.pos)
                self.expect("rdelim", "end")
        else:
            self.expect("rdelim", "end")
        self.pop_scope()
        return node

    def parse_range(self, kw: _Tok) -> _Range:
        self.push_scope()
        pipe = self.parse_pipeline("range", allow_decl=True, range_decl=True)
        self.expect("rdelim", "range")
        self.range_depth += 1
        body, term = self.parse_list()
        self.range_depth -= 1
        if term is None:
            raise self.error("unexpected EOF in {{range}}", kw.pos)
        node = _Range(pipe, body)
        if term.value == "else":
            self.expect("rdelim", "else")
            node.orelse, term2 = self.parse_list()
            if term2 is None or term2.value != "end":
                raise self.error("expected {{end}} for {{range}}", kw.pos)
        self.expect("rdelim", "end")
        self.pop_scope()
        return node

    def parse_pipeline(
        self, context: str, allow_decl: bool = False, range_decl: bool = False
    ) -> _Pipe:
        start = self.peek()
        decl: tuple[str, ...] = ()
        assign = False
        if allow_decl and start.kind == "var":
            t1 = self.peek(1)
            if t1.kind in (":=", "="):
                decl = (start.value,)
                assign = t1.kind == "="
                self.i += 2
            elif (
                range_decl
                and t1.kind == ","
                and self.peek(2).kind == "var"
                and self.peek(3).kind in (":=", "=")
            ):
                decl = (start.value, self.peek(2).value)
                assign = self.peek(3).kind == "="
                self.i += 4
        for name in decl:
            if assign and not self.declared(name):
                raise self.error(f"undefined variable: {name}", start.pos)
        cmds: list[_Cmd] = []
        while True:
            cmds.append(self.parse_command(context, final=bool(cmds)))
            if self.peek().kind == "pipe":
                self.next()
                continue
            break
        if not assign:
            self.scopes[-1].extend(decl)
        return _Pipe(cmds, decl, assign, start.pos)

    def parse_command(self, context: str, final: bool) -> _Cmd:
        args: list[_Arg] = []
        first = self.peek()
        while True:
            t = self.peek()
            if t.kind in ("rdelim", "pipe", ")", "eof"):
                break
            if args and not t.space and t.kind not in ("(",):
                raise self.error(f"missing space before {self.describe(t)}", t.pos)
            args.append(self.parse_operand(context))
        if not args:
            raise self.error(f"missing value for {context}", first.pos)
        head = args[0]
        if head.kind == "func" and not head.fields:
            name = head.value
            if name not in _LAZY:
                spec = _FUNCS[name]
                got = len(args) - 1 + (1 if final else 0)
                need = len(spec.params)
                if spec.variadic is None and got != need:
                    raise self.error(
                        f"wrong number of args for {name}: want {need} got {got}", head.pos
                    )
                if spec.variadic is not None and got < need:
                    raise self.error(
                        f"wrong number of args for {name}: want at least {need} got {got}",
                        head.pos,
                    )
            elif len(args) - 1 + (1 if final else 0) < 1:
                raise self.error(
                    f"wrong number of args for {name}: want at least 1 got 0", head.pos
                )
        else:
            if head.kind == "nil":
                raise self.error("nil is not a command", head.pos)
            if len(args) > 1 or final:
                raise self.error(
                    f"can't give argument to non-function {self.src_of(head)}", head.pos
                )
        return _Cmd(args, first.pos)

    def src_of(self, a: _Arg) -> str:
        if a.kind == "field":
            return "." + ".".join(a.fields)
        if a.kind == "dot":
            return "."
        if a.kind == "var":
            return str(a.value) + "".join("." + f for f in a.fields)
        return repr(a.value) if a.kind == "lit" else a.kind

    def parse_operand(self, context: str) -> _Arg:
        t = self.next()
        arg: _Arg
        if t.kind == "field":
            names = [t.value]
            while self.peek().kind == "field" and not self.peek().space:
                names.append(self.next().value)
            return _Arg("field", t.pos, None, tuple(names))
        if t.kind == "dot":
            arg = _Arg("dot", t.pos)
        elif t.kind == "var":
            if not self.declared(t.value):
                raise self.error(f"undefined variable {t.value!r}", t.pos)
            arg = _Arg("var", t.pos, t.value)
        elif t.kind in ("string", "number", "bool"):
            arg = _Arg("lit", t.pos, t.value)
        elif t.kind == "nil":
            arg = _Arg("nil", t.pos)
        elif t.kind == "ident":
            name = t.value
            if name not in _FUNCS and name not in _LAZY:
                if name in _KNOWN_UNSUPPORTED:
                    raise self.error(f'function "{name}" is not supported', t.pos)
                raise self.error(f'function "{name}" not defined', t.pos)
            arg = _Arg("func", t.pos, name)
        elif t.kind == "(":
            inner = self.parse_pipeline("parenthesized pipeline", allow_decl=True)
            self.expect(")", "parenthesized pipeline")
            arg = _Arg("pipe", t.pos, inner)
        else:
            raise self.error(f"unexpected {self.describe(t)} in {context}", t.pos)
        names = []
        while self.peek().kind == "field" and not self.peek().space:
            if arg.kind in ("lit", "nil", "dot"):
                raise self.error("unexpected . after term", self.peek().pos)
            names.append(self.next().value)
        arg.fields = tuple(names)
        return arg


# --------------------------------------------------------------------------- execution


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _field(recv: Any, name: str) -> Any:
    if recv is MISSING:
        return MISSING
    if recv is None:
        raise TemplateExecError(f"nil pointer evaluating interface {{}}.{name}")
    if isinstance(recv, dict):
        return recv.get(name, MISSING)
    raise TemplateExecError(f"can't evaluate field {name} in type {_go_type(recv)}")


class _State:
    __slots__ = ("out", "src", "vars")

    def __init__(self, src: str, root: Any) -> None:
        self.src = src
        self.vars: list[tuple[str, Any]] = [("$", root)]
        self.out: list[str] = []

    def fail(self, pos: int, msg: str) -> TemplateExecError:
        line, col = _line_col(self.src, pos)
        return TemplateExecError(f"{line}:{col}: {msg}")

    def lookup(self, name: str) -> Any:
        for k in range(len(self.vars) - 1, -1, -1):
            if self.vars[k][0] == name:
                return self.vars[k][1]
        raise TemplateExecError(f"undefined variable: {name}")

    def assign(self, name: str, value: Any) -> None:
        for k in range(len(self.vars) - 1, -1, -1):
            if self.vars[k][0] == name:
                self.vars[k] = (name, value)
                return
        raise TemplateExecError(f"undefined variable: {name}")

    def run(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            t = type(node)
            if t is _Text:
                self.out.append(node.text)
            elif t is _Action:
                v = self.pipeline(node.pipe, dot)
                if not node.pipe.decl:
                    self.out.append(_print_top(v))
            elif t is _If:
                self.run_if(node, dot)
            elif t is _Range:
                self.run_range(node, dot)
            elif t is _Jump:
                raise _Break() if node.kind == "break" else _Continue()

    def run_if(self, node: _If, dot: Any) -> None:
        mark = len(self.vars)
        v = self.pipeline(node.pipe, dot)
        try:
            if _truth(v):
                self.run(node.body, v if node.kind == "with" else dot)
            else:
                self.run(node.orelse, dot)
        finally:
            del self.vars[mark:]

    def run_range(self, node: _Range, dot: Any) -> None:
        mark = len(self.vars)
        pipe = node.pipe
        v = self.eval_cmds(pipe, dot)
        items: list[tuple[Any, Any]]
        if v is MISSING or v is None:
            items = []
        elif isinstance(v, list):
            items = list(enumerate(v))
        elif isinstance(v, dict):
            items = [(k, v[k]) for k in sorted(v, key=str)]
        elif isinstance(v, int) and not isinstance(v, bool):
            items = [(k, k) for k in range(v)]
        else:
            raise self.fail(pipe.pos, f"range can't iterate over {go_sprint(v)}")
        try:
            if not items:
                self.run(node.orelse, dot)
                return
            for key, elem in items:
                del self.vars[mark:]
                if len(pipe.decl) == 1:
                    self.vars.append((pipe.decl[0], elem))
                elif len(pipe.decl) == 2:
                    self.vars.append((pipe.decl[0], key))
                    self.vars.append((pipe.decl[1], elem))
                try:
                    self.run(node.body, elem)
                except _Continue:
                    continue
                except _Break:
                    break
        finally:
            del self.vars[mark:]

    def pipeline(self, pipe: _Pipe, dot: Any) -> Any:
        v = self.eval_cmds(pipe, dot)
        for name in pipe.decl:
            if pipe.assign:
                self.assign(name, v)
            else:
                self.vars.append((name, v))
        return v

    def eval_cmds(self, pipe: _Pipe, dot: Any) -> Any:
        v: Any = _NO_FINAL
        for cmd in pipe.cmds:
            v = self.command(cmd, dot, v)
        return v

    def command(self, cmd: _Cmd, dot: Any, final: Any) -> Any:
        head = cmd.args[0]
        if head.kind == "func" and not head.fields:
            return self.call(head, cmd.args[1:], dot, final)
        return self.arg(head, dot)

    def arg(self, a: _Arg, dot: Any) -> Any:
        k = a.kind
        if k == "field":
            v = dot
        elif k == "dot":
            return dot
        elif k == "lit":
            return a.value
        elif k == "nil":
            return None
        elif k == "var":
            v = self.lookup(a.value)
        elif k == "func":
            v = self.call(a, [], dot, _NO_FINAL)
        else:  # parenthesised pipeline
            mark = len(self.vars)
            v = self.pipeline(a.value, dot)
            del self.vars[mark:]
        try:
            for name in a.fields:
                v = _field(v, name)
        except TemplateExecError as e:
            raise self.fail(a.pos, str(e)) from None
        return v

    def call(self, head: _Arg, arg_nodes: list[_Arg], dot: Any, final: Any) -> Any:
        name: str = head.value
        if name in _LAZY:
            # and/or short-circuit: the first falsy (and) / truthy (or) operand, else
            # the last one, which may be the value piped in.
            want = name == "or"
            v: Any = None
            for node in arg_nodes:
                v = self.arg(node, dot)
                if _truth(v) == want:
                    return v
            if final is not _NO_FINAL:
                v = final
            return v
        args = [self.arg(n, dot) for n in arg_nodes]
        if final is not _NO_FINAL:
            args.append(final)
        spec = _FUNCS[name]
        try:
            conv = [_convert(v, kind) for v, kind in zip(args, spec.params, strict=False)]
            if spec.variadic is not None:
                conv.extend(_convert(v, spec.variadic) for v in args[len(spec.params) :])
            return spec.fn(*conv)
        except TemplateExecError as e:
            raise self.fail(head.pos, f"error calling {name}: {e}") from None


class Template:
    """A parsed template; :meth:`render` executes it against a data value (``.``)."""

    __slots__ = ("_nodes", "source")

    def __init__(self, source: str, nodes: list[Any]) -> None:
        self.source = source
        self._nodes = nodes

    def render(self, data: Any) -> str:
        """Execute with ``.`` (and ``$``) bound to ``data``; ``TemplateExecError`` on failure."""
        state = _State(self.source, data)
        try:
            state.run(self._nodes, data)
        except RecursionError as e:
            raise TemplateExecError("template nesting too deep") from e
        return "".join(state.out)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def compile_template(source: str) -> Template:
    """Parse Go template text once; :class:`TemplateSyntaxError` (a ``ValueError``) with
    the line and column when it does not parse or uses an unsupported function."""
    toks = _Lexer(source).run()
    nodes = _Parser(source, toks).parse()
    return Template(source, nodes)
