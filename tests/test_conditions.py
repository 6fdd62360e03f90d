"""Trigger conditions: table cases and a property test against Python's own booleans."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.conditions import Condition

DEPS = ["dep-a", "dep_b", "c.1", "d"]


@pytest.mark.parametrize(
    ("text", "present", "fires"),
    [
        (None, {"dep-a", "dep_b", "c.1"}, False),
        (None, set(DEPS), True),
        ("dep-a", {"dep-a"}, True),
        ("dep-a && dep_b", {"dep-a"}, False),
        ("dep-a || dep_b", {"dep_b"}, True),
        ("(dep-a && dep_b) || d", {"d"}, True),
        ("dep-a && (dep_b || d)", {"dep-a", "d"}, True),
        ("dep-a && dep_b || d", {"dep-a"}, False),  # && binds tighter than ||
        ("  dep-a   &&dep_b ", {"dep-a", "dep_b"}, True),
        ("c.1", {"c.1"}, True),
    ],
)
def test_condition_table(text: str | None, present: set[str], fires: bool) -> None:
    assert Condition.compile(text, DEPS).satisfied(present) is fires


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dep-a &&", "ends too early"),
        ("(dep-a || d", "missing ')'"),
        ("dep-a d", "unexpected 'd'"),
        ("dep-a && x", "'x' names no dependency"),
        ("|| d", "unexpected '||'"),
        ("dep-a & d", "unexpected"),
    ],
)
def test_condition_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        Condition.compile(text, DEPS)
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dep-a &&", "expression ends too early"),
        ("(dep-a || d", "missing ')'"),
        ("&& d", "unexpected '&&'"),
        (") d", "unexpected ')'"),
        ("x && dep-a", "'x' names no dependency of this sensor"),
        ("dep-a || y && x", "'x', 'y' names no dependency of this sensor"),
        # the offending text is quoted, cut at 20 characters
        ("dep-a & " + "b" * 30, "unexpected '& bbbbbbbbbbbbbbbbbb' at position 5"),
    ],
)
def test_condition_error_messages_are_exact(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        Condition.compile(text, DEPS)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("text", "names", "shown"),
    [
        (None, set(DEPS), "dep-a && dep_b && c.1 && d"),
        ("  ", set(DEPS), "dep-a && dep_b && c.1 && d"),
        ("dep-a", {"dep-a"}, "dep-a"),
        ("(dep-a && dep_b) || d", {"dep-a", "dep_b", "d"}, "(dep-a && dep_b) || d"),
        ("c.1 || dep-a && d", {"c.1", "dep-a", "d"}, "c.1 || dep-a && d"),
    ],
)
def test_condition_names_every_dependency_and_keeps_its_text(
    text: str | None, names: set[str], shown: str
) -> None:
    # names() decides which dependencies' events are stored for a trigger; text is
    # what the trace shows for a trigger still waiting
    c = Condition.compile(text, DEPS)
    assert c.names() == names
    assert c.text == shown


Ref = Callable[[set[str]], bool]


def _exprs() -> st.SearchStrategy[tuple[str, Ref]]:
    """(condition text, reference evaluation) pairs; unparenthesised chains are built
    with the reference's precedence (``&&`` before ``||``) from flat lists."""
    leaf = st.sampled_from(DEPS).map(lambda d: (d, lambda p, d=d: d in p))

    def group(children: st.SearchStrategy[tuple[str, Ref]]) -> st.SearchStrategy[tuple[str, Ref]]:
        def build(terms: list[list[tuple[str, Ref]]]) -> tuple[str, Ref]:
            # an OR of ANDs, written without parentheses, wrapped as one group
            text = " || ".join(" && ".join(t for t, _ in conj) for conj in terms)
            refs = [[r for _, r in conj] for conj in terms]
            return f"({text})", lambda p: any(all(r(p) for r in conj) for conj in refs)

        return st.lists(st.lists(children, min_size=1, max_size=3), min_size=1, max_size=3).map(
            build
        )

    return st.recursive(leaf, group, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_exprs(), st.sets(st.sampled_from(DEPS)))
def test_condition_agrees_with_reference_booleans(pair: tuple[str, Ref], present: set[str]) -> None:
    text, reference = pair
    assert Condition.compile(text, DEPS).satisfied(present) is reference(present)
