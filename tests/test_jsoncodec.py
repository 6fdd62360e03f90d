"""``app.kernel.jsoncodec``: orjson's output at any depth the parser accepts."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.kernel.jsoncodec import PARSER_MAX_DEPTH, depth, dumps

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


def _wrap(value: object, levels: int) -> object:
    for i in range(levels):
        value = {"k": value, "i": i} if i % 2 else [i, value]
    return value


@given(json_values)
def test_shallow_values_are_orjson_itself(value: object) -> None:
    assert dumps(value) == orjson.dumps(value)


@given(json_values, st.integers(260, PARSER_MAX_DEPTH - 10))
def test_deep_values_give_what_orjson_would_write_without_a_limit(
    value: object, levels: int
) -> None:
    deep = _wrap(value, levels)
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(deep)
    encoded = dumps(deep)
    expected = orjson.dumps(value)
    for i in range(levels):  # _wrap's levels, written as orjson writes them
        i_ = str(i).encode()
        expected = (
            b'{"k":' + expected + b',"i":' + i_ + b"}"
            if i % 2
            else b"[" + i_ + b"," + expected + b"]"
        )
    assert encoded == expected
    assert depth(orjson.loads(encoded)) == levels + depth(value)


def test_values_json_cannot_hold_still_raise() -> None:
    with pytest.raises(TypeError):
        dumps({"x": object()})
    with pytest.raises(TypeError):
        dumps(_wrap(object(), 300))


@pytest.mark.parametrize(
    ("value", "expected"), [(1, 0), ("x", 0), ([], 1), ({}, 1), ([[]], 2), ({"a": [1, {}]}, 3)]
)
def test_depth(value: object, expected: int) -> None:
    assert depth(value) == expected
