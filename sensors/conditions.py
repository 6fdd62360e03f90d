"""``template.conditions``: boolean expressions over dependency names, compiled once.

Grammar (Argo's): dependency names (letters, digits, ``-``, ``_``, ``.``), ``&&``,
``||``, ``!``? (not in Argo; rejected), parentheses; ``&&`` binds tighter than ``||``.
An absent condition means every dependency is required (AND of all). A name that is not
a dependency of the sensor is a load-time error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Set
from dataclasses import dataclass

_TOKEN = re.compile(r"\s*(?:(\|\|)|(&&)|(\()|(\))|([A-Za-z0-9_.\-]+))")


@dataclass(frozen=True)
class _Name:
    name: str


@dataclass(frozen=True)
class _And:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class _Or:
    parts: tuple[Node, ...]


Node = _Name | _And | _Or


def _tokenize(text: str) -> list[str]:
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"unexpected {text[pos:].strip()[:20]!r} at position {pos}")
        out.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> str:
        tok = self.t[self.i]
        self.i += 1
        return tok

    def parse_or(self) -> Node:
        parts = [self.parse_and()]
        while self.peek() == "||":
            self.take()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else _Or(tuple(parts))

    def parse_and(self) -> Node:
        parts = [self.parse_atom()]
        while self.peek() == "&&":
            self.take()
            parts.append(self.parse_atom())
        return parts[0] if len(parts) == 1 else _And(tuple(parts))

    def parse_atom(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise ValueError("expression ends too early")
        if tok == "(":
            self.take()
            node = self.parse_or()
            if self.peek() != ")":
                raise ValueError("missing ')'")
            self.take()
            return node
        if tok in ("&&", "||", ")"):
            raise ValueError(f"unexpected {tok!r}")
        return _Name(self.take())


class Condition:
    """A compiled condition; ``satisfied(present)`` says whether it fires."""

    def __init__(self, node: Node, text: str) -> None:
        self._node = node
        self.text = text

    @classmethod
    def compile(cls, text: str | None, dependencies: Iterable[str]) -> Condition:
        deps = list(dependencies)
        if not text or not text.strip():
            return cls(_And(tuple(_Name(d) for d in deps)), " && ".join(deps))
        p = _Parser(_tokenize(text))
        node = p.parse_or()
        if p.peek() is not None:
            raise ValueError(f"unexpected {p.peek()!r} after the expression")
        unknown = sorted(n for n in _names(node) if n not in deps)
        if unknown:
            names = ", ".join(repr(n) for n in unknown)
            raise ValueError(f"{names} names no dependency of this sensor")
        return cls(node, text)

    def names(self) -> set[str]:
        return _names(self._node)

    def satisfied(self, present: Set[str]) -> bool:
        return _eval(self._node, present)


def _names(node: Node) -> set[str]:
    if isinstance(node, _Name):
        return {node.name}
    out: set[str] = set()
    for p in node.parts:
        out |= _names(p)
    return out


def _eval(node: Node, present: Set[str]) -> bool:
    if isinstance(node, _Name):
        return node.name in present
    if isinstance(node, _And):
        return all(_eval(p, present) for p in node.parts)
    return any(_eval(p, present) for p in node.parts)
