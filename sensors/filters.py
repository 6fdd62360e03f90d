"""Event filters: a dependency's ``filters`` (Sensor), compiled when the manifest loads.

Why a module of its own: Argo decides whether an event reaches a sensor's conditions
with five filter kinds and three and/or switches, and manifests written for Argo rely on
the exact outcome, quirks included. The sensor runner calls
:meth:`CompiledFilters.evaluate` for each event of a dependency (before conditions) and
gets a :class:`FilterVerdict`: pass or not, plus one human line per filter so a dropped
event can be explained in logs and the API. Everything that can be checked without an
event (gjson paths, regexes, numbers, bools, templates, expressions) is compiled by
:meth:`CompiledFilters.compile`, which raises ``ValueError`` naming the field
(``filters.data[0].value[1]: ...``), so a bad manifest fails at apply time.

Semantics (Argo's ``pkg/sensors/dependencies/filter.go``):

* **data** (``filters.data[]``): the gjson ``path`` must exist (else that filter fails);
  ``template``, when set, renders with ``.Input`` = the found value as text, and an
  empty or ``<no value>`` result fails the filter; the value is then read as ``type``:

  - ``string``: each ``value`` is an *unanchored* Go regex (``"v"`` matches ``"very"``)
    searched in the value's text (gjson ``String()``: numbers without a fraction when
    integral, objects/arrays as JSON); comparator ``=``/empty passes when some value
    matches, ``!=`` when some value does not match; any other comparator never passes
    a string filter (as in Argo);
  - ``number``: gjson ``Float()``: numbers as they are, strings parsed (``"2.0"`` → 2;
    unparsable text → 0), ``true`` → 1, anything else 0; compared with each value by
    the comparator (empty = ``=``); some value passing passes;
  - ``bool``: gjson ``Bool()``: ``true``; strings ``1 t true`` in any case; non-zero
    numbers; compared for equality with each value (the comparator is ignored);

  ``dataLogicalOperator``: ``and`` (default) needs every data filter, ``or`` one.
* **exprs** (``filters.exprs[]``): each ``fields`` entry binds ``name`` to the value at
  its gjson ``path`` (numbers as floats; a missing path fails the filter); ``expr`` is a
  govaluate expression (:mod:`app.languages.expr`) that passes only when it yields ``true``;
  errors fail it. ``exprLogicalOperator`` as for data.
* Data and expr filters pass when the event has no data at all (``data`` is null).
* **context**: equality on ``type``, ``subject``, ``source``, ``datacontenttype`` where
  the filter sets them (``id``, ``specversion``, ``time`` are not compared, as in Argo).
* **time**: the *event's* time (its CloudEvents ``time``, not the time of arrival) must
  fall in ``[start, stop)`` on the event's day in ``timezone`` (UTC by default); when
  stop is not after start the window wraps past midnight (``[start, 24:00)`` or
  ``[00:00, stop)``). Where the clocks change, a wall time is placed as Go's
  ``time.Date`` places it (see :func:`_go_wall_time`). An event time without an offset
  is UTC; an event without a readable time is checked at ``now``.
* **script** (``filters.script``): a Lua script (:mod:`app.languages.lua`: sandboxed,
  bounded in instructions and memory) run with the event's data as the global
  ``event``; it passes only when its last returned value is ``true`` (any other value
  fails it). An event without data passes; data that is not a JSON object, a runtime
  error or a limit reached is an error, and an error fails the whole filter whatever
  ``filtersLogicalOperator`` says (Argo's rule). Scripts run once per event, so the
  runner evaluates a dependency with a script filter in a worker thread.
* ``filtersLogicalOperator``: ``and`` (default) needs every kind that is set; ``or``
  needs one of the kinds that are *set* (an unset kind never passes an ``or``, Argo's
  rule). Filters with no kind set pass (Argo would reject every event under ``or``).

Deliberate differences: bad regexes, numbers and bools in ``value`` and template or
expression syntax errors, and Lua syntax errors, fail at load time, where Argo fails each
event.

The EventSource ``filter.expression`` lives in :mod:`app.languages.source_filter`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as dt_time
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.kernel.errors import ScriptError
from app.languages.expr import (
    EvalError,
    Expression,
    compile_go_regex,
    compile_govaluate,
    go_parse_float,
    show_value,
)
from app.languages.gjson_values import GO_BOOLS, gjson_bool, gjson_float, gjson_value
from app.languages.gotemplate import Template, TemplateExecError, compile_template
from app.languages.lua import LuaScript
from app.languages.paths import GetPath, compile_get, to_string

if TYPE_CHECKING:
    from app.kernel.events import Event
    from sensors.spec import DataFilter, EventDependencyFilter, ExprFilter, TimeFilter

__all__ = [
    "CompiledFilters",
    "FilterVerdict",
]


@dataclass(frozen=True, slots=True)
class FilterVerdict:
    """Whether an event passed a dependency's filters, and why: one line per filter in
    Argo's evaluation order (exprs, data, context, time, script)."""

    passed: bool
    reasons: list[str]

    def __str__(self) -> str:
        if not self.reasons:
            return "passed (no filters)" if self.passed else "failed"
        return "; ".join(self.reasons)


# --------------------------------------------------------------------------- helpers


def _combine(results: Sequence[bool], use_or: bool) -> bool:
    return any(results) if use_or else all(results)


def _logical(value: str, field: str) -> bool:
    """``True`` for ``or``; ``and`` and empty mean and."""
    if value not in ("", "and", "or"):
        raise ValueError(f"{field}: {value!r} is not a logical operator (and, or)")
    return value == "or"


# --------------------------------------------------------------------------- data

_NUMBER_OPS: Final[dict[str, Callable[[float, float], bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# How a comparator reads in a reason, and how its failure reads.
_SHOWN: Final = {"=": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_NEGATED: Final = {"=": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}


def _targets(shown: list[str]) -> str:
    return shown[0] if len(shown) == 1 else "all of [" + ", ".join(shown) + "]"


@dataclass(frozen=True, slots=True)
class _DataCheck:
    index: int
    path: GetPath
    type: str
    comparator: str
    values: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    numbers: tuple[float, ...]
    bools: tuple[bool, ...]
    template: Template | None

    @classmethod
    def compile(cls, index: int, f: DataFilter) -> _DataCheck:
        loc = f"filters.data[{index}]"
        try:
            path = compile_get(f.path)
        except ValueError as e:
            raise ValueError(f"{loc}.path: {e}") from e
        if not f.value:
            raise ValueError(f"{loc}.value: no values specified")
        comparator = f.comparator or "="
        if comparator not in _NUMBER_OPS:
            raise ValueError(f"{loc}.comparator: {f.comparator!r} is not supported")
        patterns: list[re.Pattern[str]] = []
        numbers: list[float] = []
        bools: list[bool] = []
        for j, raw in enumerate(f.value):
            vloc = f"{loc}.value[{j}]"
            if f.type == "string":
                try:
                    patterns.append(compile_go_regex(raw))
                except ValueError as e:
                    raise ValueError(f"{vloc}: {e}") from e
            elif f.type == "number":
                number = go_parse_float(raw)
                if number is None:
                    raise ValueError(f"{vloc}: {raw!r} is not a number")
                numbers.append(number)
            elif f.type == "bool":
                if raw not in GO_BOOLS:
                    raise ValueError(f"{vloc}: {raw!r} is not a bool (true or false)")
                bools.append(GO_BOOLS[raw])
            else:
                raise ValueError(f"{loc}.type: unsupported JSON type {f.type!r}")
        template = None
        if f.template:
            try:
                template = compile_template(f.template)
            except ValueError as e:
                raise ValueError(f"{loc}.template: {e}") from e
        return cls(
            index,
            path,
            f.type,
            comparator,
            tuple(f.value),
            tuple(patterns),
            tuple(numbers),
            tuple(bools),
            template,
        )

    def evaluate(self, data: Any) -> tuple[bool, str]:
        label = f"data[{self.index}] {self.path.path}"
        found, value = self.path.get(data)
        if not found:
            return False, f"{label}: path not found"
        if self.template is not None:
            try:
                out = self.template.render({"Input": to_string(value)})
            except TemplateExecError as e:
                return False, f"{label}: template failed: {e}"
            if out in ("", "<no value>"):
                return False, f"{label}: template produced no value ({out!r})"
            value = out
            label += " | template"
        if self.type == "string":
            return self._string(label, to_string(value))
        if self.type == "number":
            return self._number(label, gjson_float(value))
        return self._bool(label, gjson_bool(value))

    def _string(self, label: str, text: str) -> tuple[bool, str]:
        shown = show_value(text)
        if self.comparator not in ("=", "!="):
            return False, (
                f"{label}: comparator {self.comparator!r} never matches a string filter "
                f"(as in Argo), value {shown}"
            )
        want_match = self.comparator == "="
        for raw, pattern in zip(self.values, self.patterns, strict=True):
            if (pattern.search(text) is not None) == want_match:
                return True, f"{label}: {shown} {'=~' if want_match else '!~'} {show_value(raw)}"
        targets = _targets([show_value(v) for v in self.values])
        return False, f"{label}: {shown} {'!~' if want_match else '=~'} {targets}"

    def _number(self, label: str, x: float) -> tuple[bool, str]:
        compare = _NUMBER_OPS[self.comparator]
        shown = show_value(x)
        for number in self.numbers:
            if compare(x, number):
                return True, f"{label}: {shown} {_SHOWN[self.comparator]} {show_value(number)}"
        targets = _targets([show_value(n) for n in self.numbers])
        return False, f"{label}: {shown} {_NEGATED[self.comparator]} {targets}"

    def _bool(self, label: str, b: bool) -> tuple[bool, str]:
        shown = show_value(b)
        if b in self.bools:
            return True, f"{label}: {shown} == {shown}"
        return False, f"{label}: {shown} != {_targets([show_value(v) for v in self.bools])}"


# --------------------------------------------------------------------------- exprs


@dataclass(frozen=True, slots=True)
class _ExprCheck:
    index: int
    fields: tuple[tuple[str, GetPath], ...]
    expression: Expression

    @classmethod
    def compile(cls, index: int, f: ExprFilter) -> _ExprCheck:
        loc = f"filters.exprs[{index}]"
        if not f.fields:
            raise ValueError(f"{loc}.fields: at least one field is required")
        fields: list[tuple[str, GetPath]] = []
        for j, fld in enumerate(f.fields):
            if not fld.name:
                raise ValueError(f"{loc}.fields[{j}].name: must not be empty")
            try:
                fields.append((fld.name, compile_get(fld.path)))
            except ValueError as e:
                raise ValueError(f"{loc}.fields[{j}].path: {e}") from e
        try:
            expression = compile_govaluate(f.expr)
        except ValueError as e:
            raise ValueError(f"{loc}.expr: {e}") from e
        return cls(index, tuple(fields), expression)

    def evaluate(self, data: Any) -> tuple[bool, str]:
        label = f"exprs[{self.index}]"
        params: dict[str, Any] = {}
        for name, path in self.fields:
            found, value = path.get(data)
            if not found:
                return False, f"{label}: path {path.path!r} not found"
            params[name] = gjson_value(value)
        try:
            result = self.expression.evaluate(params)
        except EvalError as e:
            return False, f"{label}: error: {e}"
        if isinstance(result, bool):
            return result, f"{label}: {'true' if result else 'false'}"
        return False, f"{label}: result {show_value(result)} is not a bool"


# --------------------------------------------------------------------------- context, time

_CONTEXT_FIELDS: Final = ("type", "subject", "source", "datacontenttype")


@dataclass(frozen=True, slots=True)
class _ContextCheck:
    expected: tuple[tuple[str, str], ...]

    def evaluate(self, context: dict[str, str]) -> tuple[bool, str]:
        wrong = [
            f"{key} {show_value(context.get(key, ''))} != {show_value(want)}"
            for key, want in self.expected
            if context.get(key, "") != want
        ]
        if wrong:
            return False, "context: " + ", ".join(wrong)
        return True, "context: " + ", ".join(f"{k} == {show_value(v)}" for k, v in self.expected)


def _hhmmss(text: str, field: str) -> dt_time:
    parts = text.split(":")
    if len(parts) == 3 and all(p.isascii() and p.isdigit() for p in parts):
        h, m, s = (int(p) for p in parts)
        if len(parts[1]) == 2 and len(parts[2]) == 2 and h < 24 and m < 60 and s < 60:
            return dt_time(h, m, s)
    raise ValueError(f"{field}: invalid time {text!r}, expected hh:mm:ss")


@dataclass(frozen=True, slots=True)
class _TimeCheck:
    start: dt_time
    stop: dt_time
    start_text: str
    stop_text: str
    zone: tzinfo
    zone_name: str

    @classmethod
    def compile(cls, f: TimeFilter) -> _TimeCheck:
        start = _hhmmss(f.start, "filters.time.start")
        stop = _hhmmss(f.stop, "filters.time.stop")
        if start == stop:
            raise ValueError(f"filters.time.stop: {f.stop!r} is equal to start {f.start!r}")
        zone: tzinfo = UTC
        if f.timezone:
            try:
                zone = ZoneInfo(f.timezone)
            except (ZoneInfoNotFoundError, ValueError) as e:
                raise ValueError(f"filters.time.timezone: invalid timezone {f.timezone!r}") from e
        return cls(start, stop, f.start, f.stop, zone, f.timezone or "UTC")

    def evaluate(self, when: datetime, note: str) -> tuple[bool, str]:
        local = when.astimezone(self.zone)
        day = local.date()
        start = _go_wall_time(day, self.start, self.zone)
        stop = _go_wall_time(day, self.stop, self.zone)
        t = when.astimezone(UTC)
        inside = start <= t < stop if start < stop else (t >= start or t < stop)
        where = "inside" if inside else "outside"
        window = f"[{self.start_text}, {self.stop_text}) {self.zone_name}"
        return inside, f"time: {local:%H:%M:%S} {where} {window}{note}"


def _go_wall_time(day: date, at: dt_time, zone: tzinfo) -> datetime:
    """The instant (UTC) of wall time ``at`` on ``day`` in ``zone``, chosen as Go's
    ``time.Date`` (so Argo's ``time.ParseInLocation``) chooses it where the clocks change:
    the offset in force at the wall time read as UTC, corrected once if the instant
    that gives lies outside it. Python's ``fold=0`` differs in the skipped hour (Go:
    02:30 in New York's spring gap is 06:30Z, not 07:30Z) and in the repeated hour east
    of UTC (Go: 02:30 on Paris's autumn night is the second one, 01:30Z)."""
    as_utc = datetime.combine(day, at, tzinfo=UTC)
    guess = as_utc - _offset(as_utc, zone)
    return as_utc - _offset(guess, zone)


def _offset(instant: datetime, zone: tzinfo) -> timedelta:
    return instant.astimezone(zone).utcoffset() or timedelta(0)


def _event_time(event: Event, now: datetime | None) -> tuple[datetime, str]:
    """The event's CloudEvents time; ``now`` (or the clock) when it has none."""
    if event.time:
        try:
            when = datetime.fromisoformat(event.time)
        except ValueError:
            pass
        else:
            return (when if when.tzinfo else when.replace(tzinfo=UTC)), ""
    fallback = now if now is not None else datetime.now(UTC)
    if fallback.tzinfo is None:
        fallback = fallback.replace(tzinfo=UTC)
    return fallback, " (the event has no readable time; checked at the current time)"


# --------------------------------------------------------------------------- script


@dataclass(frozen=True, slots=True)
class _ScriptCheck:
    script: LuaScript

    @classmethod
    def compile(cls, source: str) -> _ScriptCheck:
        try:
            return cls(LuaScript.compile(source))
        except ValueError as e:
            raise ValueError(f"filters.script: {e}") from e

    def evaluate(self, data: Any) -> tuple[bool | None, str]:
        """``(True|False, reason)``, or ``(None, reason)`` when the script failed."""
        if not isinstance(data, dict):
            return None, "script: error: the event's data is not a JSON object"
        try:
            result = self.script.run(data)
        except ScriptError as e:
            return None, f"script: error: {e}"
        if result is True:
            return True, "script: returned true"
        return False, f"script: returned {show_value(result)} (passes only on true)"


# --------------------------------------------------------------------------- the filters


class CompiledFilters:
    """A dependency's ``filters`` and ``filtersLogicalOperator``, compiled once.

    Build with :meth:`compile` when the Sensor loads; :meth:`evaluate` is pure (no I/O,
    no state) and safe to call from any task.
    """

    __slots__ = (
        "_context",
        "_data",
        "_data_or",
        "_expr_or",
        "_exprs",
        "_or",
        "_script",
        "_time",
    )

    def __init__(
        self,
        *,
        exprs: tuple[_ExprCheck, ...] = (),
        expr_or: bool = False,
        data: tuple[_DataCheck, ...] = (),
        data_or: bool = False,
        context: _ContextCheck | None = None,
        time: _TimeCheck | None = None,
        script: _ScriptCheck | None = None,
        use_or: bool = False,
    ) -> None:
        self._exprs = exprs
        self._expr_or = expr_or
        self._data = data
        self._data_or = data_or
        self._context = context
        self._time = time
        self._script = script
        self._or = use_or

    @classmethod
    def compile(
        cls, filters: EventDependencyFilter | None, logical_operator: str = ""
    ) -> CompiledFilters:
        """Compile ``dependencies[].filters`` (``None`` = no filters) with the
        dependency's ``filtersLogicalOperator``; ``ValueError`` naming the field
        (``filters.data[0].path: ...``) when something cannot work."""
        use_or = _logical(logical_operator, "filtersLogicalOperator")
        if filters is None:
            return cls(use_or=use_or)
        context = None
        if filters.context is not None:
            expected = tuple(
                (key, str(getattr(filters.context, key)))
                for key in _CONTEXT_FIELDS
                if getattr(filters.context, key)
            )
            if not expected:
                raise ValueError(
                    "filters.context: no fields specified (all events would be discarded)"
                )
            context = _ContextCheck(expected)
        return cls(
            exprs=tuple(_ExprCheck.compile(i, f) for i, f in enumerate(filters.exprs)),
            expr_or=_logical(filters.expr_logical_operator, "filters.exprLogicalOperator"),
            data=tuple(_DataCheck.compile(i, f) for i, f in enumerate(filters.data)),
            data_or=_logical(filters.data_logical_operator, "filters.dataLogicalOperator"),
            context=context,
            time=_TimeCheck.compile(filters.time) if filters.time is not None else None,
            script=_ScriptCheck.compile(filters.script) if filters.script else None,
            use_or=use_or,
        )

    @property
    def empty(self) -> bool:
        """No filter kind is set: every event passes."""
        return not (self._exprs or self._data or self._context or self._time or self._script)

    @property
    def scripted(self) -> bool:
        """A Lua script filter is set (evaluate it off the event loop)."""
        return self._script is not None

    def evaluate(self, event: Event, now: datetime | None = None) -> FilterVerdict:
        """Filter one event. ``now`` is only used for an event without a readable time
        (default: the clock)."""
        if self.empty:
            return FilterVerdict(True, [])
        reasons: list[str] = []
        kinds: list[bool] = []
        data = event.data
        for name, checks, use_or in (
            ("exprs", self._exprs, self._expr_or),
            ("data", self._data, self._data_or),
        ):
            if not checks:
                continue
            if data is None:
                kinds.append(True)
                reasons.append(f"{name}: the event has no data (passes, as in Argo)")
                continue
            results: list[bool] = []
            for check in checks:
                ok, reason = check.evaluate(data)
                results.append(ok)
                reasons.append(reason)
            kinds.append(_combine(results, use_or))
        if self._context is not None:
            ok, reason = self._context.evaluate(event.context())
            kinds.append(ok)
            reasons.append(reason)
        if self._time is not None:
            ok, reason = self._time.evaluate(*_event_time(event, now))
            kinds.append(ok)
            reasons.append(reason)
        if self._script is not None:
            if data is None:
                kinds.append(True)
                reasons.append("script: the event has no data (passes, as in Argo)")
            else:
                verdict, reason = self._script.evaluate(data)
                reasons.append(reason)
                if verdict is None:  # Argo: a script error fails the filters outright
                    return FilterVerdict(False, reasons)
                kinds.append(verdict)
        return FilterVerdict(_combine(kinds, self._or), reasons)

    def __repr__(self) -> str:
        kinds = [
            name
            for name, on in (
                ("exprs", self._exprs),
                ("data", self._data),
                ("context", self._context),
                ("time", self._time),
                ("script", self._script),
            )
            if on
        ]
        return f"CompiledFilters({'|'.join(kinds) or 'none'}, {'or' if self._or else 'and'})"
