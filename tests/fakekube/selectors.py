"""Label and field selectors with the real server's grammar and matching rules.

Label selectors: ``k=v``, ``k==v``, ``k!=v`` (true when ``k`` is absent), ``k in (a,b)``,
``k notin (a,b)`` (true when absent), ``k`` (exists), ``!k`` (absent), ``k>n``/``k<n``;
comma means AND. Field selectors: ``path=v``, ``path==v``, ``path!=v`` over the dotted
paths a kind supports (unsupported paths are a 400, as in Kubernetes).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.fakekube.errors import bad_request

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$")
_CMP = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|=|!=|>|<)\s*(?P<value>{_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*$")

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            return not has or value not in self.values
        if not has:
            return False
        try:
            got, want = int(str(value)), int(self.values[0])
        except ValueError:
            return False
        return got > want if self.op == ">" else got < want


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse a ``labelSelector`` query value; raises a 400 ``ApiError`` on bad syntax."""
    if not text or not text.strip():
        return []
    reqs: list[Requirement] = []
    for part in _split_top_level(text):
        if m := _SET.match(part):
            values = tuple(v.strip() for v in m["values"].split(",") if v.strip())
            reqs.append(Requirement(m["key"], m["op"], values))
        elif m := _CMP.match(part):
            op = "=" if m["op"] == "==" else m["op"]
            if op in (">", "<") and not m["value"].lstrip("-").isdigit():
                raise bad_request(
                    f"unable to parse requirement: for 'gt', 'lt' operators, exactly one "
                    f"value is required: {part.strip()!r}"
                )
            reqs.append(Requirement(m["key"], op, (m["value"],)))
        elif m := _EXISTS.match(part):
            reqs.append(Requirement(m["key"], "!" if m["neg"] else "exists"))
        else:
            raise bad_request(f"unable to parse requirement: found '{part.strip()}'")
    return reqs


def labels_match(reqs: list[Requirement], labels: Labels | None) -> bool:
    return all(r.matches(labels or {}) for r in reqs)


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    negate: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        got = field_value(obj, self.path)
        return (got != self.value) if self.negate else (got == self.value)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form a field selector compares against (missing fields are ``""``)."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, Mapping):  # events' ``source`` selects on source.component
        return str(cur.get("component", ""))
    return str(cur)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_field_selector(text: str | None, supported: tuple[str, ...]) -> list[FieldRequirement]:
    """Parse a ``fieldSelector``; paths outside ``supported`` are a 400 like the real server."""
    if not text or not text.strip():
        return []
    reqs: list[FieldRequirement] = []
    for part in _split_unescaped(text, ","):
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(==|!=|=)(.*)$", part)
        if not m:
            raise bad_request(f"invalid field selector: {part!r}")
        path, op, value = m[1], m[2], _unescape(m[3].strip())
        if path not in supported:
            raise bad_request(f"field label not supported: {path}")
        reqs.append(FieldRequirement(path, op == "!=", value))
    return reqs


def fields_match(reqs: list[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    return all(r.matches(obj) for r in reqs)


Matcher = Callable[[Mapping[str, Any]], bool]


def matcher(labels: list[Requirement], fields: list[FieldRequirement]) -> Matcher:
    """One predicate over whole objects for LIST and WATCH filtering."""

    def match(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return labels_match(labels, meta.get("labels")) and fields_match(fields, obj)

    return match
