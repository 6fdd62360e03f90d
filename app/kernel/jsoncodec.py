"""JSON encoding that can write back everything the JSON parser accepted.

orjson parses documents nested up to :data:`PARSER_MAX_DEPTH` levels but serialises only
up to about 254, so a deeply nested webhook body that parsed fine used to fail when its
CloudEvent envelope was encoded (a 500 after the client's request had been read). Every
encoder of event data goes through :func:`dumps`: orjson as before (the hot path pays
nothing), and only when orjson reports its recursion limit, a slow path that encodes the
tree in slabs of at most :data:`_SLAB` levels, each slab by orjson with its deeper
subtrees embedded as already encoded :class:`orjson.Fragment` s. The output is the same
bytes orjson would write without a limit; no Python recursion is involved, so the
interpreter's recursion limit does not apply either.

:func:`depth` measures nesting without recursion, for the webhook's check that a body
still fits the parser's limit once it is wrapped in the envelope.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

PARSER_MAX_DEPTH: Final = 1024
"""Deepest nesting (arrays + objects) ``orjson.loads`` accepts; 1025 levels is an error."""

_SLAB: Final = 128
"""Levels encoded by one orjson call on the slow path (well under orjson's 254)."""

_CONTAINERS: Final = (dict, list, tuple)


def dumps(obj: Any) -> bytes:
    """``orjson.dumps(obj)``, also for values nested deeper than orjson's encoder allows.

    Raises ``orjson.JSONEncodeError`` (a ``TypeError``) for values JSON cannot hold, as
    orjson does.
    """
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError as e:
        if "recursion" not in str(e).lower():
            raise
    return orjson.dumps(_flatten(obj))


def depth(obj: Any) -> int:
    """Nesting depth of a JSON value: 0 for a scalar, 1 for ``[]`` or ``{}``, ..."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((c, level + 1) for c in children if isinstance(c, _CONTAINERS))
    return deepest


class _Frame:
    """One container being rebuilt on the slow path (an explicit stack, no recursion)."""

    __slots__ = ("height", "items", "key", "out")

    def __init__(self, node: Any, key: Any) -> None:
        self.key = key
        self.height = 0
        self.out: dict[Any, Any] | list[Any]
        if isinstance(node, dict):
            self.items: Any = iter(node.items())
            self.out = {}
        else:
            self.items = enumerate(node)
            self.out = []

    def put(self, key: Any, value: Any, height: int) -> None:
        if isinstance(self.out, dict):
            self.out[key] = value
        else:
            self.out.append(value)
        self.height = max(self.height, height)


def _flatten(obj: Any) -> Any:
    """``obj`` rebuilt so that no part is more than :data:`_SLAB` levels deep: every
    subtree that reaches that height is replaced by its encoding (a Fragment)."""
    if not isinstance(obj, _CONTAINERS):
        return obj
    stack = [_Frame(obj, None)]
    while True:
        frame = stack[-1]
        for key, child in frame.items:
            if isinstance(child, _CONTAINERS):
                stack.append(_Frame(child, key))
                break
            frame.put(key, child, 0)
        else:
            stack.pop()
            value: Any = frame.out
            height = frame.height + 1
            if height >= _SLAB:
                value, height = orjson.Fragment(orjson.dumps(value)), 0
            if not stack:
                return value
            stack[-1].put(frame.key, value, height)
